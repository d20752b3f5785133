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

-- run_transitions: a group of transitions of many runs (all leased by
-- p_owner), in one statement and so one transaction and one durable commit
-- (actors/commit.c, docs/internals/scheduler.md "Commits").
--
-- p_batch is a JSON array of transitions, each an object with the parameters
-- of sluice_run_transition by name: {run, step, attempt, ctx (the ctx as JSON
-- text, a string), state, chain_start, chain_transient, wait_count, word,
-- wait_s, flow_version, events}; a missing or null step or flow_version keeps
-- the row's. A run appears at most once in a group (an actor has one commit in
-- flight at a time).
--
-- Each transition is guarded by its own lease, as in sluice_run_transition:
-- one whose guard finds no row (lease lost, file deleted) writes nothing and
-- returns no rows, and the others commit. The caller tells them apart by the
-- run_id of the rows returned.
--
-- Locks, always in the same order so that concurrent groups cannot wait on
-- each other in a cycle: the files' rows (KEY SHARE, by file id, before any
-- run row, as sluice_run_transition and for the same reason), then the runs'
-- rows (the UPDATE; the runs of two groups are disjoint: a run has one
-- leaseholder), then one advisory lock per dataset that has events in the
-- group, in the order of the lock keys, taken before any event gets its seq.
-- The advisory locks keep sse.md's rule — a dataset's seqs commit in order —
-- for a group as for a single transition. The events are inserted in group
-- order, each transition's in its own order, so a run's seqs follow its
-- transitions.
--
-- PL/pgSQL rather than SQL for its plan cache: a LANGUAGE sql function's
-- statements are parsed and planned again at every call (about 1 ms for this
-- one), PL/pgSQL's once per session: a group of 1 runs in 0.45 ms instead of
-- 1.4, a group of 8 in 0.8 instead of 2.0 (docs/internals/scheduler.md).
--
-- Returns the inserted run_events rows.
CREATE OR REPLACE FUNCTION sluice_run_transitions(p_owner text, p_batch json)
RETURNS SETOF run_events
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM files f
    WHERE f.id IN (SELECT r.file_id FROM runs r
                   WHERE r.id IN (SELECT (t->>'run')::uuid FROM json_array_elements(p_batch) t))
    ORDER BY f.id
    FOR KEY SHARE OF f;
    RETURN QUERY WITH b AS (
        SELECT t.n, (t.v->>'run')::uuid AS run, t.v->>'step' AS step,
               (t.v->>'attempt')::int AS attempt, (t.v->>'ctx')::jsonb AS ctx,
               t.v->>'state' AS state, t.v->>'chain_start' AS chain_start,
               coalesce((t.v->>'chain_transient')::boolean, false) AS chain_transient,
               coalesce((t.v->>'wait_count')::int, 0) AS wait_count, t.v->>'word' AS word,
               coalesce((t.v->>'wait_s')::double precision, 0) AS wait_s,
               t.v->>'flow_version' AS flow_version, t.v->'events' AS events
        FROM json_array_elements(p_batch) WITH ORDINALITY AS t(v, n)
    ), u AS (
        UPDATE runs SET step = coalesce(b.step, runs.step), attempt = b.attempt, ctx = b.ctx,
            state = b.state, chain_start = b.chain_start, chain_transient = b.chain_transient,
            wait_count = b.wait_count,
            error = CASE WHEN b.state = 'succeeded' THEN NULL ELSE b.word END,
            note = CASE WHEN b.state = 'succeeded' THEN b.word ELSE runs.note END,
            flow_version = coalesce(b.flow_version, runs.flow_version),
            finished_at = CASE WHEN b.state IN ('succeeded','failed','cancelled') THEN now()
                          ELSE runs.finished_at END,
            next_attempt_at = CASE WHEN b.state = 'waiting'
                              THEN now() + make_interval(secs => b.wait_s)
                              ELSE runs.next_attempt_at END,
            lease_owner = CASE WHEN b.state = 'running' THEN runs.lease_owner END,
            lease_until = CASE WHEN b.state = 'running' THEN runs.lease_until END
        FROM b
        WHERE runs.id = b.run AND runs.lease_owner = p_owner
        RETURNING runs.id, runs.tenant_id, runs.dataset_id, runs.file_id, runs.pipeline,
                  runs.state, b.n, b.events
    ), lk AS MATERIALIZED (
        SELECT count(pg_advisory_xact_lock(k.key)) AS held
        FROM (SELECT DISTINCT hashtextextended(dataset_id::text, 0) AS key FROM u
              ORDER BY 1) k
    )
    INSERT INTO run_events (tenant_id, dataset_id, file_id, run_id, pipeline, step, kind,
                            state, detail)
    SELECT u.tenant_id, u.dataset_id, u.file_id, u.id, u.pipeline, e.step, e.kind, u.state,
           coalesce(e.detail, '{}'::json)::jsonb
    FROM lk, u CROSS JOIN LATERAL
        ROWS FROM (json_to_recordset(u.events) AS (step text, kind text, detail json))
        WITH ORDINALITY AS e(step, kind, detail, n)
    WHERE lk.held >= 0
    ORDER BY u.n, e.n
    RETURNING *;
END
$$;
