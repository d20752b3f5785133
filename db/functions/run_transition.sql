-- run_transition: every transition of a run actor, in one statement
-- (actors/run.c, docs/internals/scheduler.md).
--
-- Writes the run's row, guarded by its lease (id = p_run AND lease_owner =
-- p_owner), and inserts the timeline events p_events ([{step, kind, detail}],
-- in order) from the row it updated: the events are written only if the guard
-- held, and a transition whose guard finds no row (lease lost, file deleted)
-- returns no rows and has no effect.
--
-- p_state is the run's new state. Leaving 'running' ends the lease. p_word is
-- the run's word: its error, or once it succeeded the note of its last step
-- (`return true, "no_text"`: done, and why there is no output). p_wait_s is how
-- long a 'waiting' run waits. A null p_step or p_flow_version keeps the row's.
--
-- The per-dataset advisory lock taken before the events get their seqs makes
-- a dataset's seqs commit in order, so an SSE replay of "seq > last id" never
-- skips one that commits later (docs/internals/sse.md).
--
-- Lock order: the file's row first, then the run's. DELETE /v1/files/{id}
-- (api/files.c) locks the file row FOR UPDATE, then deletes the runs by
-- cascade; a transition that took the run's row first (the UPDATE) and the
-- file's after (the run_events foreign key check, KEY SHARE) closed a cycle
-- with it, and Postgres aborted one of the two with 40P01. So the first
-- statement takes the file row's KEY SHARE lock — the one the foreign key
-- check takes anyway, so it waits only for a delete of the file (or a change
-- of its id), not for updates of its other columns. When the delete commits
-- first the row is gone, the lock finds nothing, the UPDATE finds no run (the
-- cascade took it) and the transition returns no rows, as for a lost lease.
-- Artifacts and records (actors/lua_run.c) take the file's row before the
-- run's too: their file_id key comes before run_id.
--
-- Returns the inserted run_events rows, in seq order.
CREATE OR REPLACE FUNCTION sluice_run_transition(
    p_run uuid, p_owner text, p_step text, p_attempt int, p_ctx jsonb, p_state text,
    p_chain_start text, p_chain_transient boolean, p_wait_count int, p_word text,
    p_wait_s double precision, p_flow_version text, p_events json)
RETURNS SETOF run_events
LANGUAGE sql VOLATILE AS $$
    SELECT 1 FROM files f WHERE f.id = (SELECT r.file_id FROM runs r WHERE r.id = p_run)
    FOR KEY SHARE OF f;
    WITH u AS (
        UPDATE runs SET step = coalesce(p_step, step), attempt = p_attempt, ctx = p_ctx,
            state = p_state, chain_start = p_chain_start, chain_transient = p_chain_transient,
            wait_count = p_wait_count,
            error = CASE WHEN p_state = 'succeeded' THEN NULL ELSE p_word END,
            note = CASE WHEN p_state = 'succeeded' THEN p_word ELSE note END,
            flow_version = coalesce(p_flow_version, flow_version),
            finished_at = CASE WHEN p_state IN ('succeeded','failed','cancelled') THEN now()
                          ELSE finished_at END,
            next_attempt_at = CASE WHEN p_state = 'waiting'
                              THEN now() + make_interval(secs => p_wait_s)
                              ELSE next_attempt_at END,
            lease_owner = CASE WHEN p_state = 'running' THEN lease_owner END,
            lease_until = CASE WHEN p_state = 'running' THEN lease_until END
        WHERE id = p_run AND lease_owner = p_owner
        RETURNING id, tenant_id, dataset_id, file_id, pipeline, state)
    INSERT INTO run_events (tenant_id, dataset_id, file_id, run_id, pipeline, step, kind,
                            state, detail)
    SELECT u.tenant_id, u.dataset_id, u.file_id, u.id, u.pipeline, e.step, e.kind, u.state,
           coalesce(e.detail, '{}'::json)::jsonb
    FROM u CROSS JOIN LATERAL
        (SELECT pg_advisory_xact_lock(hashtextextended(u.dataset_id::text, 0))) lk,
        ROWS FROM (json_to_recordset(p_events) AS (step text, kind text, detail json))
        WITH ORDINALITY AS e(step, kind, detail, n)
    ORDER BY e.n
    RETURNING *
$$;
