-- 009_auth: API keys a tenant manages itself, and refresh-token families
-- (api/keys.c, api/auth.c, docs/auth.md).
--
-- api_keys gains what GET /v1/keys shows: a display prefix of the key (the key
-- itself is still never stored, only its sha256), an optional name, its
-- scopes, and when it was last used (written at most once a minute per key).
-- scopes NULL means every scope: keys made before this migration, and keys
-- created without a list, keep full access.
ALTER TABLE api_keys
    ADD COLUMN prefix       text,
    ADD COLUMN name         text,
    ADD COLUMN scopes       text[],
    ADD COLUMN last_used_at timestamptz,
    ADD CONSTRAINT api_keys_scopes_known CHECK (
        scopes IS NULL OR (cardinality(scopes) > 0
                           AND scopes <@ ARRAY['read', 'upload', 'admin-of-tenant']::text[]));
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

-- A family: every refresh token descended from one POST /v1/auth/token, and
-- the access tokens issued with them (their "fam" claim). Revoking the family
-- (reuse of a spent refresh token, OAuth 2.0 Security BCP §4.14) refuses all
-- of them; an access token checks its family through the auth cache.
CREATE TABLE token_families (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_id     uuid NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX token_families_key ON token_families (key_id);

-- One row per refresh token: only its sha256 (the token is shown once).
-- spent_at is set by the one UPDATE that uses it; a second use finds it spent.
CREATE TABLE refresh_tokens (
    id         uuid PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    family_id  uuid NOT NULL REFERENCES token_families(id) ON DELETE CASCADE,
    parent_id  uuid REFERENCES refresh_tokens(id) ON DELETE SET NULL,
    key_id     uuid NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    tenant_id  uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
