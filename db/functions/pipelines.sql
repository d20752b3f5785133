-- pipelines: pipelines put through the API (013_pipelines; api/pipelines.c
-- stores, actors/pipestore.c loads). Re-applied at every migrate.

-- PUT /v1/admin/pipelines/{name}: a new revision of name. The flow source
-- goes into flow_versions under its sha256 (p_version, computed by the
-- caller from the same bytes). Returns {"revision", "created_at"}.
CREATE OR REPLACE FUNCTION sluice_pipeline_put(p_name text, p_match jsonb, p_version text,
                                               p_source text, p_describe jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_rev int;
    v_at timestamptz;
BEGIN
    INSERT INTO flow_versions (version, pipeline, source) VALUES (p_version, p_name, p_source)
        ON CONFLICT (version) DO NOTHING;
    INSERT INTO pipelines (name) VALUES (p_name) ON CONFLICT (name) DO NOTHING;
    -- the row lock orders concurrent PUTs of one name: revisions never collide
    SELECT p.revision + 1 INTO v_rev FROM pipelines p WHERE p.name = p_name FOR UPDATE;
    INSERT INTO pipeline_versions (name, revision, version, match, describe)
        VALUES (p_name, v_rev, p_version, p_match, p_describe)
        RETURNING created_at INTO v_at;
    UPDATE pipelines SET revision = v_rev, deleted_at = NULL, changed_at = clock_timestamp()
        WHERE name = p_name;
    RETURN json_build_object('revision', v_rev, 'created_at', sluice_ts(v_at))::text;
END
$$;

-- DELETE /v1/admin/pipelines/{name}: true when a live pipeline was deleted.
-- p_seed: the name is a config seed (which has no row until it is deleted).
CREATE OR REPLACE FUNCTION sluice_pipeline_delete(p_name text, p_seed boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF p_seed THEN
        INSERT INTO pipelines (name, deleted_at) VALUES (p_name, clock_timestamp())
            ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            RETURN true;
        END IF;
    END IF;
    UPDATE pipelines SET deleted_at = clock_timestamp(), changed_at = clock_timestamp()
        WHERE name = p_name AND deleted_at IS NULL;
    RETURN FOUND;
END
$$;

-- Every process's view (actors/pipestore.c): one row per name, current
-- revision, deleted or not. Small: at most a few dozen rows.
CREATE OR REPLACE FUNCTION sluice_pipelines_state()
RETURNS TABLE (name text, revision int, deleted boolean, version text, match text,
               describe text, created_at text)
LANGUAGE sql STABLE AS $$
    SELECT p.name, p.revision, p.deleted_at IS NOT NULL, v.version, v.match::text,
           v.describe::text, sluice_ts(v.created_at)
    FROM pipelines p
    LEFT JOIN pipeline_versions v ON v.name = p.name AND v.revision = p.revision
    ORDER BY p.name
$$;

-- GET /v1/pipelines/{name}: its versions, newest first (at most 100).
CREATE OR REPLACE FUNCTION sluice_pipeline_versions_json(p_name text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(json_build_object('version', v.version, 'revision', v.revision,
                                               'created_at', sluice_ts(v.created_at),
                                               'source', 'api')
                             ORDER BY v.revision DESC), '[]'::json)::text
    FROM (SELECT * FROM pipeline_versions WHERE name = p_name
          ORDER BY revision DESC LIMIT 100) v
$$;
