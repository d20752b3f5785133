-- auth: API keys a tenant manages, and the refresh-token families of access
-- tokens (api/keys.c, api/auth.c, api/common.c; docs/auth.md). Tables: 009_auth.
--
-- Scopes: a key's scopes column is NULL (every scope) or a non-empty subset of
-- read, upload, admin-of-tenant. The C side sees them as bits (read 1,
-- upload 2, admin-of-tenant 4), the JSON as the list of names.

CREATE OR REPLACE FUNCTION sluice_scope_bits(p_scopes text[]) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_scopes IS NULL THEN 7 ELSE
        (CASE WHEN 'read' = ANY (p_scopes) THEN 1 ELSE 0 END)
        | (CASE WHEN 'upload' = ANY (p_scopes) THEN 2 ELSE 0 END)
        | (CASE WHEN 'admin-of-tenant' = ANY (p_scopes) THEN 4 ELSE 0 END) END
$$;

CREATE OR REPLACE FUNCTION sluice_scope_json(p_scopes text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_jsonb(coalesce(p_scopes, ARRAY['read', 'upload', 'admin-of-tenant']::text[]))
$$;

-- A key as GET /v1/keys shows it (never its hash). prefix is "" for a key
-- made before migration 009 (only its hash was kept: its prefix is unknown).
CREATE OR REPLACE FUNCTION sluice_key_json(k api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', k.id, 'prefix', coalesce(k.prefix, ''), 'name', k.name,
        'created_at', sluice_ts(k.created_at), 'last_used_at', sluice_ts(k.last_used_at),
        'revoked_at', sluice_ts(k.revoked_at), 'scopes', sluice_scope_json(k.scopes))
$$;

-- GET /v1/keys: {"keys": [...]}, oldest first (revoked ones too, with revoked_at).
CREATE OR REPLACE FUNCTION sluice_keys_json(p_tenant uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('keys', coalesce(
        (SELECT jsonb_agg(sluice_key_json(k) ORDER BY k.created_at, k.id)
         FROM api_keys k WHERE k.tenant_id = p_tenant), '[]'::jsonb))::text
$$;

-- POST /v1/keys: the new key's document (the caller adds the key itself).
CREATE OR REPLACE FUNCTION sluice_key_create(p_id uuid, p_tenant uuid, p_hash text,
                                             p_prefix text, p_name text, p_scopes text[])
RETURNS text
LANGUAGE sql VOLATILE AS $$
    INSERT INTO api_keys (id, tenant_id, key_hash, prefix, name, scopes)
    VALUES (p_id, p_tenant, p_hash, p_prefix, p_name, p_scopes)
    RETURNING sluice_key_json(api_keys.*)::text
$$;

-- DELETE /v1/keys/{id}: revokes the tenant's key and every token family made
-- from it. Returns the key's hash (for the auth cache's revocation message),
-- or no row when the tenant has no such key.
CREATE OR REPLACE FUNCTION sluice_key_revoke(p_tenant uuid, p_id uuid)
RETURNS TABLE (key_hash text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
    WHERE k.id = p_id AND k.tenant_id = p_tenant
    RETURNING k.key_hash;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE token_families f SET revoked_at = now() WHERE f.key_id = p_id AND f.revoked_at IS NULL;
    UPDATE refresh_tokens r SET revoked_at = now()
    WHERE r.key_id = p_id AND r.revoked_at IS NULL AND r.spent_at IS NULL;
END
$$;

-- Marks a key used, at most once a minute (api/common.c calls it at most once
-- a minute per key and process; the condition keeps instances from adding more).
CREATE OR REPLACE FUNCTION sluice_key_touch(p_id uuid) RETURNS void
LANGUAGE sql VOLATILE AS $$
    UPDATE api_keys SET last_used_at = now()
    WHERE id = p_id AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
$$;

-- POST /v1/auth/token: for a live key (by hash), a new family with its first
-- refresh token (only its hash is stored). One row (tenant_id, key_id, scopes
-- as bits), or none for an unknown or revoked key.
CREATE OR REPLACE FUNCTION sluice_auth_issue(p_key_hash text, p_family uuid, p_token uuid,
                                             p_token_hash text, p_ttl_s int)
RETURNS TABLE (tenant_id uuid, key_id uuid, scopes int)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k api_keys;
BEGIN
    SELECT * INTO k FROM api_keys a WHERE a.key_hash = p_key_hash AND a.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO token_families (id, tenant_id, key_id) VALUES (p_family, k.tenant_id, k.id);
    INSERT INTO refresh_tokens (id, token_hash, family_id, key_id, tenant_id, expires_at)
    VALUES (p_token, p_token_hash, p_family, k.id, k.tenant_id,
            now() + make_interval(secs => p_ttl_s));
    PERFORM sluice_key_touch(k.id);
    RETURN QUERY SELECT k.tenant_id, k.id, sluice_scope_bits(k.scopes);
END
$$;

-- POST /v1/auth/refresh: rotates the refresh token whose hash is p_hash.
-- outcome:
--   ok       it was live: it is now spent (the one UPDATE below, so of two
--            concurrent uses exactly one wins) and p_new_hash is its child
--   reused   it was spent already: its whole family is revoked now (OAuth 2.0
--            Security BCP, refresh token rotation); family_id says which
--   revoked  its family or key is revoked (it is spent all the same)
--   invalid  unknown, expired, or revoked before use
-- The function never raises for these, so the revocation commits.
CREATE OR REPLACE FUNCTION sluice_auth_refresh(p_hash text, p_new_id uuid, p_new_hash text,
                                               p_ttl_s int)
RETURNS TABLE (outcome text, tenant_id uuid, key_id uuid, family_id uuid, scopes int)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t refresh_tokens;
    bits int;
BEGIN
    UPDATE refresh_tokens r SET spent_at = now()
    WHERE r.token_hash = p_hash AND r.spent_at IS NULL AND r.revoked_at IS NULL
      AND r.expires_at > now()
    RETURNING * INTO t;
    IF NOT FOUND THEN
        SELECT * INTO t FROM refresh_tokens r WHERE r.token_hash = p_hash;
        IF FOUND AND t.spent_at IS NOT NULL THEN
            UPDATE token_families f SET revoked_at = now()
            WHERE f.id = t.family_id AND f.revoked_at IS NULL;
            UPDATE refresh_tokens r SET revoked_at = now()
            WHERE r.family_id = t.family_id AND r.revoked_at IS NULL;
            RETURN QUERY SELECT 'reused'::text, t.tenant_id, t.key_id, t.family_id, 0;
        ELSE
            RETURN QUERY SELECT 'invalid'::text, NULL::uuid, NULL::uuid, NULL::uuid, 0;
        END IF;
        RETURN;
    END IF;
    SELECT sluice_scope_bits(k.scopes) INTO bits
    FROM token_families f JOIN api_keys k ON k.id = f.key_id
    WHERE f.id = t.family_id AND f.revoked_at IS NULL AND k.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'revoked'::text, t.tenant_id, t.key_id, t.family_id, 0;
        RETURN;
    END IF;
    INSERT INTO refresh_tokens (id, token_hash, family_id, parent_id, key_id, tenant_id,
                                expires_at)
    VALUES (p_new_id, p_new_hash, t.family_id, t.id, t.key_id, t.tenant_id,
            now() + make_interval(secs => p_ttl_s));
    PERFORM sluice_key_touch(t.key_id);
    RETURN QUERY SELECT 'ok'::text, t.tenant_id, t.key_id, t.family_id, bits;
END
$$;

-- An access token's family and key, both still live: one row (the tenant) or none.
CREATE OR REPLACE FUNCTION sluice_auth_token_live(p_family uuid, p_key uuid)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE AS $$
    SELECT k.tenant_id FROM token_families f JOIN api_keys k ON k.id = f.key_id
    WHERE f.id = p_family AND k.id = p_key AND f.revoked_at IS NULL AND k.revoked_at IS NULL
$$;
