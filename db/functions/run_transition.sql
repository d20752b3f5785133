-- A step's own rows (sl.record, sl.artifact with its bytes in the row, the
-- file's text_source: actors/flow_effects.c) are committed without waiting
-- for their WAL flush: sluice_commit_lazily() turns synchronous_commit off
-- for the rest of the calling transaction. They need no flush of their own:
-- the run's next transition (sluice_run_transitions) commits durably, and a
-- flush makes durable everything the WAL holds before it, so those rows are
-- on disk before the transition that depends on them is acknowledged. If
-- Postgres crashes first, both are lost together and the step runs again
-- (docs/internals/scheduler.md "Lazy commits"). A statement whose commit
-- must be durable by itself (an artifact rewrite, after which the caller
-- deletes the replaced blob) calls sluice_commit_durably(), which wins over
-- every lazy call of the same transaction, before or after it (step rows
-- share transactions: db/pg.h sl_pg_query_shared). Both return true, for
-- use in a WHERE or a PERFORM.
CREATE OR REPLACE FUNCTION sluice_commit_lazily() RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF coalesce(current_setting('sluice.commit_durably', true), '') <> 'on' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION sluice_commit_durably() RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('sluice.commit_durably', 'on', true);
    -- back to the server's setting (postgresql.conf, the role's, the
    -- database's): not 'on', which would weaken remote_apply
    SET LOCAL synchronous_commit TO DEFAULT;
    RETURN true;
END
$$;

-- sluice_event_places: p_n places in dataset p_dataset's event series
-- (migration 015, docs/internals/sse.md "Places"): returns the first, the
-- others follow it. The row lock of the bump is held to the commit, so the
-- places of a dataset commit in the order they were given; a rollback gives
-- them back. Callers that take places of several datasets in one transaction
-- take them in dataset id order (sluice_run_transitions), so that two of them
-- never wait on each other in a cycle. p_n = 0 takes the lock only.
CREATE OR REPLACE FUNCTION sluice_event_places(p_dataset uuid, p_n bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_first bigint;
BEGIN
    -- PL/pgSQL: its plan is kept per session (a LANGUAGE sql function with
    -- an UPDATE is planned at every call; it runs once per dataset per group)
    UPDATE datasets SET event_seq = event_seq + p_n WHERE id = p_dataset
    RETURNING event_seq - p_n + 1 INTO v_first;
    RETURN v_first;
END
$$;

-- run_transitions: every transition of the run actors, in groups of many
-- runs (all leased by p_owner), in one statement and so one transaction and
-- one durable commit (actors/commit.c, docs/internals/scheduler.md
-- "Commits").
--
-- p_batch is a JSON array of transitions, each an object: {run, step, attempt,
-- ctx (the ctx as JSON text, a string), state, chain_start, chain_transient,
-- wait_count, word, wait_s, flow_version, events}. A missing or null step or
-- flow_version keeps the row's. state is the run's new state; leaving
-- 'running' ends the lease. word is the run's word: its error, or once it
-- succeeded the note of its last step (`return true, "no_text"`: done, and why
-- there is no output). wait_s is how long a 'waiting' run waits. events is
-- [{step, kind, detail}], the transition's timeline events in order. A run
-- appears at most once in a group (an actor has one commit in flight at a
-- time).
--
-- Each transition is guarded by its own lease (id = run AND lease_owner =
-- p_owner): one whose guard finds no row (lease lost, file deleted) writes
-- nothing and returns no rows, and the others commit. The caller tells them
-- apart by the run_id of the rows returned.
--
-- Events get their places from their dataset's series (sluice_event_places,
-- one bump per dataset per group), in group order, each transition's in its
-- own order, so a run's places follow its transitions.
--
-- Locks, always in the same order so that concurrent transactions cannot wait
-- on each other in a cycle:
-- 1. the files' rows, KEY SHARE, by file id. DELETE /v1/files/{id}
--    (api/files.c) locks the file row FOR UPDATE, then deletes the runs by
--    cascade; a transition that took the run's row first (the UPDATE) and the
--    file's after (the run_events foreign key check, KEY SHARE) closed a cycle
--    with it, and Postgres aborted one of the two with 40P01. KEY SHARE is the
--    lock the foreign key check takes anyway: it waits only for a delete of
--    the file, not for updates of its other columns. When the delete commits
--    first the row is gone, the UPDATE finds no run (the cascade took it) and
--    the transition returns no rows, as for a lost lease. Artifacts and
--    records (actors/lua_run.c) take the file's row before the run's too.
-- 2. the runs' rows, by run id, before the UPDATE (which takes them in its
--    plan's order). The runs of two groups are disjoint (a run has one
--    leaseholder), but the heartbeat's lease renewal (actors/scheduler.c)
--    updates many of them at once: while both took them in no particular
--    order they met in a cycle, Postgres found it after deadlock_timeout and
--    aborted one, so a group or a renewal stood still for 1 s (flow_bench:
--    two renewals of 1,018 ms each in 22 s). Both take them by id now.
-- 3. last, the datasets' rows (the places), by dataset id, of the runs the
--    UPDATE changed that have events. Every writer of events takes its places
--    last (docs/internals/sse.md "Places"), so a transaction that holds a
--    dataset's row never waits for another lock but a later dataset's, and
--    the row is held only for the events' insert and the commit. (Until stop
--    21 the group took them before the UPDATE and held them through it: at
--    6,000 files in one dataset, 24 ms of each 55 ms group was that wait.)
--
-- The runs are named by an array (v_runs, `id = ANY`), not by a join with the
-- JSON: the planner estimates a JSON set at 100 rows, and with a runs table of
-- a few thousand rows the cached plans scanned runs and files whole at every
-- group (flow_bench: 8,480 sequential scans of runs, 16 M rows read, for
-- 2,000 runs; Postgres was the bottleneck). What the UPDATE changed travels
-- to the events' insert in arrays (one per column, in group order).
--
-- SET enable_seqscan = off: every statement here finds its rows by key, and
-- PL/pgSQL keeps a generic plan per session, made from the statistics of its
-- first calls. A server that started on small tables kept plans that scanned
-- runs and files whole (flow_bench, auto_explain: a seq scan of 1,000 runs
-- for one row, of 1,000 files for 36 locks, long after the tables grew):
-- 10 ms of Postgres per group, 4.9 without.
--
-- PL/pgSQL rather than SQL for its plan cache: a LANGUAGE sql function's
-- statements are parsed and planned again at every call (about 1 ms for this
-- one), PL/pgSQL's once per session: a group of 1 runs in 0.45 ms instead of
-- 1.4, a group of 8 in 0.8 instead of 2.0 (docs/internals/scheduler.md).
--
-- Returns the inserted run_events rows, in group order.
CREATE OR REPLACE FUNCTION sluice_run_transitions(p_owner text, p_batch json)
RETURNS SETOF run_events
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
DECLARE
    v_runs uuid[] := ARRAY(SELECT t.run FROM json_to_recordset(p_batch) AS t(run uuid));
    v_id uuid[];
    v_tenant uuid[];
    v_dataset uuid[];
    v_file uuid[];
    v_pipeline text[];
    v_state text[];
    v_n bigint[];
    v_events json[];
BEGIN
    PERFORM 1 FROM files f
    WHERE f.id IN (SELECT r.file_id FROM runs r WHERE r.id = ANY (v_runs))
    ORDER BY f.id
    FOR KEY SHARE OF f;
    PERFORM 1 FROM runs r
    WHERE r.id = ANY (v_runs) AND r.lease_owner = p_owner
    ORDER BY r.id
    FOR NO KEY UPDATE OF r;
    WITH b AS (
        -- each transition's object is parsed once, into typed columns (a ->>
        -- on json parses the object again at every field: json_lex was
        -- Postgres's top function in flow_bench)
        SELECT t.n, t.run, t.step, t.attempt, t.ctx::jsonb AS ctx, t.state, t.chain_start,
               coalesce(t.chain_transient, false) AS chain_transient,
               coalesce(t.wait_count, 0) AS wait_count, t.word,
               coalesce(t.wait_s, 0) AS wait_s, t.flow_version, t.events
        FROM ROWS FROM (json_to_recordset(p_batch) AS (
                 run uuid, step text, attempt int, ctx text, state text, chain_start text,
                 chain_transient boolean, wait_count int, word text,
                 wait_s double precision, flow_version text, events json))
             WITH ORDINALITY AS t(run, step, attempt, ctx, state, chain_start, chain_transient,
                                  wait_count, word, wait_s, flow_version, events, n)
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
        WHERE runs.id = ANY (v_runs) AND runs.id = b.run AND runs.lease_owner = p_owner
        RETURNING runs.id, runs.tenant_id, runs.dataset_id, runs.file_id, runs.pipeline,
                  runs.state, b.n, b.events
    )
    SELECT array_agg(u.id ORDER BY u.n), array_agg(u.tenant_id ORDER BY u.n),
           array_agg(u.dataset_id ORDER BY u.n), array_agg(u.file_id ORDER BY u.n),
           array_agg(u.pipeline ORDER BY u.n), array_agg(u.state ORDER BY u.n),
           array_agg(u.n ORDER BY u.n), array_agg(u.events ORDER BY u.n)
    INTO v_id, v_tenant, v_dataset, v_file, v_pipeline, v_state, v_n, v_events
    FROM u;
    IF v_id IS NULL THEN
        RETURN; -- no guard held: nothing changed
    END IF;
    PERFORM 1 FROM datasets d
    WHERE d.id IN (SELECT x.ds FROM unnest(v_dataset, v_events) AS x(ds, ev)
                   WHERE json_array_length(x.ev) > 0)
    ORDER BY d.id
    FOR NO KEY UPDATE OF d;
    RETURN QUERY WITH u AS (
        SELECT * FROM unnest(v_id, v_tenant, v_dataset, v_file, v_pipeline, v_state, v_n, v_events)
            AS u(id, tenant_id, dataset_id, file_id, pipeline, state, n, events)
    ), e AS (
        SELECT u.*, x.step, x.kind, x.detail, x.k,
               row_number() OVER (PARTITION BY u.dataset_id ORDER BY u.n, x.k) AS place
        FROM u CROSS JOIN LATERAL
            ROWS FROM (json_to_recordset(u.events) AS (step text, kind text, detail json))
            WITH ORDINALITY AS x(step, kind, detail, k)
    ), pl AS (
        SELECT c.dataset_id, sluice_event_places(c.dataset_id, c.n) AS first
        FROM (SELECT dataset_id, count(*) AS n FROM e GROUP BY dataset_id) c
    )
    INSERT INTO run_events (seq, tenant_id, dataset_id, file_id, run_id, pipeline, step, kind,
                            state, detail)
    SELECT pl.first + e.place - 1, e.tenant_id, e.dataset_id, e.file_id, e.id, e.pipeline,
           e.step, e.kind, e.state, coalesce(e.detail, '{}'::json)::jsonb
    FROM e JOIN pl ON pl.dataset_id = e.dataset_id
    ORDER BY e.n, e.k
    RETURNING *;
END
$$;

-- run_transition: one transition of a run actor: sluice_run_transitions with
-- a group of one (tests and manual use; the engine sends groups). p_events is
-- [{step, kind, detail}], in order. A transition whose guard finds no row
-- (lease lost, file deleted) returns no rows and has no effect.
CREATE OR REPLACE FUNCTION sluice_run_transition(
    p_run uuid, p_owner text, p_step text, p_attempt int, p_ctx jsonb, p_state text,
    p_chain_start text, p_chain_transient boolean, p_wait_count int, p_word text,
    p_wait_s double precision, p_flow_version text, p_events json)
RETURNS SETOF run_events
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM sluice_run_transitions(p_owner, json_build_array(json_build_object(
        'run', p_run, 'step', p_step, 'attempt', p_attempt, 'ctx', p_ctx::text,
        'state', p_state, 'chain_start', p_chain_start, 'chain_transient', p_chain_transient,
        'wait_count', p_wait_count, 'word', p_word, 'wait_s', p_wait_s,
        'flow_version', p_flow_version, 'events', p_events)))
$$;

