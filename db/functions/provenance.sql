-- provenance: record versions (migration 011; API.md "Lifecycle and access").
--
-- sluice_record_put is the one writer of records (sl.record in
-- actors/lua_run.c); sluice_record_json the one shape of a record in the API
-- (GET /v1/datasets/{id}/records, GET /v1/files/{id}/records).

-- A record as the API shows it.
CREATE OR REPLACE FUNCTION sluice_record_json(r records) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', r.id, 'file_id', r.file_id, 'data', r.data,
        'created_at', sluice_ts(r.created_at), 'version', r.version,
        'provenance', r.provenance)
$$;

-- Stores run p_run's record for file p_file and returns its version, or null
-- when the file is gone (deleted meanwhile: nothing is written).
--
-- A run has one version: a second call for the same run (its step ran again
-- after a crash, or called sl.record twice) replaces that version's data and
-- provenance and keeps its number. Any other run adds version max + 1 and
-- becomes the file's latest.
--
-- Versions of one file are numbered under the file row's lock (FOR NO KEY
-- UPDATE: it waits for DELETE /v1/files/{id}, which holds FOR UPDATE, and for
-- another run's sluice_record_put, but not for run transitions, which take
-- KEY SHARE). Lock order is the file's row first, as everywhere
-- (db/functions/run_transition.sql). plpgsql runs each statement on a fresh
-- snapshot under READ COMMITTED, so the max(version) after the lock sees a
-- version committed while this call waited.
--
-- p_prov holds extractor, model, pipeline, flow_version (checked and filled
-- by the caller); run_id and text_source (the file's, now) are added here.
CREATE OR REPLACE FUNCTION sluice_record_put(
    p_id uuid, p_tenant uuid, p_dataset uuid, p_file uuid, p_run uuid, p_data jsonb,
    p_prov jsonb)
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_source text;
    v_version int;
    v_mine int;
    v_prov jsonb;
BEGIN
    SELECT f.text_source INTO v_source FROM files f
    WHERE f.id = p_file AND f.tenant_id = p_tenant FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM sluice_commit_lazily(); -- durable with the run's next transition
    v_prov := jsonb_build_object(
        'extractor', p_prov->'extractor', 'model', p_prov->'model',
        'pipeline', p_prov->'pipeline', 'flow_version', p_prov->'flow_version',
        'run_id', p_run, 'text_source', v_source);

    -- the file's newest version and this run's, in one pass over its
    -- versions; a file's first record (the usual case) then only inserts
    -- (three statements in all: five until stop 31)
    SELECT coalesce(max(r.version), 0), max(r.version) FILTER (WHERE r.run_id = p_run)
    INTO v_version, v_mine FROM records r WHERE r.file_id = p_file;
    IF v_mine IS NOT NULL THEN
        UPDATE records SET data = p_data, provenance = v_prov
        WHERE run_id = p_run AND file_id = p_file;
        RETURN v_mine;
    END IF;
    IF v_version > 0 THEN
        UPDATE records SET latest = false WHERE file_id = p_file AND latest;
    END IF;
    v_version := v_version + 1;
    INSERT INTO records (id, tenant_id, dataset_id, file_id, run_id, data, version, latest,
                         provenance)
    VALUES (p_id, p_tenant, p_dataset, p_file, p_run, p_data, v_version, true, v_prov);
    RETURN v_version;
END
$$;

-- The file's text_source (sl.set_text_source: which extractor gave its text),
-- committed lazily as the step's other rows (sluice_commit_lazily). Returns
-- 1, or null when the file is gone.
CREATE OR REPLACE FUNCTION sluice_text_source_put(p_file uuid, p_tenant uuid, p_name text)
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE files SET text_source = p_name WHERE id = p_file AND tenant_id = p_tenant;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM sluice_commit_lazily();
    RETURN 1;
END
$$;
