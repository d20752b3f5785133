-- artifacts: the one writer of a run's artifact rows (sl.artifact in
-- actors/lua_run.c, through actors/flow_effects.c).
--
-- sluice_artifact_put writes run p_run's artifact of kind p_kind: its bytes
-- are in the store under p_key (p_data null) or in the row itself (p_data,
-- p_key null: migration 018). Returns the row's id (a rewrite keeps the
-- row's id) and `replaced`: the store key the row pointed at before and no
-- longer does, which the caller deletes once this commits (a retried step,
-- or a later step of the run, writing the same kind again). Every write to
-- the store has a key of its own (artifacts/<tenant>/<run>/<kind>.<uuid>),
-- so a replaced key is never written again and its delete cannot meet a
-- newer blob.
--
-- The first write of a kind is one INSERT (the usual case: one text per
-- run). A rewrite takes the file's row first (KEY SHARE, as the insert's
-- foreign key check does; DELETE /v1/files/{id} holds FOR UPDATE, and its
-- purge reads the artifacts' keys after taking it: so the delete either sees
-- this rewrite's key or went first and this call finds no row), then the
-- artifact's row (FOR UPDATE: two writes of one kind, a stale attempt's and
-- its retry's, take turns, and each learns the key the other left).
-- PL/pgSQL: one plan per session, and each statement on a fresh snapshot.
CREATE OR REPLACE FUNCTION sluice_artifact_put(
    p_id uuid, p_tenant uuid, p_file uuid, p_run uuid, p_kind text, p_mime text,
    p_size bigint, p_sha256 text, p_key text, p_data bytea)
RETURNS TABLE (id uuid, replaced text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id uuid;
    v_old text;
BEGIN
    INSERT INTO artifacts AS a (id, tenant_id, file_id, run_id, kind, mime, size, sha256,
                                storage_key, data)
    VALUES (p_id, p_tenant, p_file, p_run, p_kind, p_mime, p_size, p_sha256, p_key, p_data)
    ON CONFLICT (run_id, kind) DO NOTHING
    RETURNING a.id INTO v_id;
    IF v_id IS NOT NULL THEN
        -- a first write with its bytes in the row: durable with the run's
        -- next transition (sluice_commit_lazily). With its bytes in the
        -- store it stays durable by itself: lost, its blob would be left
        -- with no row.
        IF p_key IS NULL THEN
            PERFORM sluice_commit_lazily();
        END IF;
        RETURN QUERY SELECT v_id, NULL::text;
        RETURN;
    END IF;
    -- a rewrite: the caller deletes the replaced blob once this commits, so
    -- the commit must be durable before that
    PERFORM sluice_commit_durably();
    PERFORM 1 FROM files f WHERE f.id = p_file FOR KEY SHARE;
    SELECT a.id, a.storage_key INTO v_id, v_old FROM artifacts a
    WHERE a.run_id = p_run AND a.kind = p_kind FOR UPDATE;
    IF v_id IS NULL THEN
        RETURN; -- gone since the INSERT with its file (deleted): no row, the caller's error
    END IF;
    UPDATE artifacts a SET mime = p_mime, size = p_size, sha256 = p_sha256,
        storage_key = p_key, data = p_data, created_at = clock_timestamp()
    WHERE a.id = v_id;
    RETURN QUERY SELECT v_id, CASE WHEN v_old IS DISTINCT FROM p_key THEN v_old END;
END
$$;
