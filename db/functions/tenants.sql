-- tenants: the tenants of the config (`tenants: [{name, api_key}]`), made at
-- start by every instance (main.c).
--
-- sluice_bootstrap_tenant creates the tenant named p_name once (the oldest of
-- that name is the one, when several exist) and gives it the key whose
-- sha256 hex is p_key_hash, unless that key exists already (for any tenant).
-- Idempotent: calling it again, from any instance, changes nothing.
-- Returns the tenant's id.
CREATE OR REPLACE FUNCTION sluice_bootstrap_tenant(p_name text, p_key_hash text)
RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    WITH t AS (
        INSERT INTO tenants (id, name) SELECT gen_random_uuid(), p_name
        WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE name = p_name)
        RETURNING id),
    tid AS (
        SELECT coalesce((SELECT t.id FROM t),
                        (SELECT o.id FROM tenants o WHERE o.name = p_name
                         ORDER BY o.created_at LIMIT 1)) AS id),
    k AS (
        INSERT INTO api_keys (id, tenant_id, key_hash)
        SELECT gen_random_uuid(), tid.id, p_key_hash FROM tid
        ON CONFLICT (key_hash) DO NOTHING)
    SELECT tid.id FROM tid
$$;
