-- claim: the scheduler's claim of runnable runs (actors/scheduler.c,
-- docs/internals/scheduler.md "The claim" and "Shares").
--
-- A run is runnable when it is queued, waiting and its time has come, or
-- running under a lease that ended (its instance died, or handed it back).
--
-- Shares, work-conserving: every tenant's share of the engine is its weight
-- (p_weights, by tenant name or id; default 1) over the weights of the
-- tenants that have runnable runs. The claim takes runs in order of their
-- start tag (start-time fair queuing): the cost the tenant has in flight now
-- (runs.cost of its runs under a live lease, on any instance), plus the cost
-- of its runs ahead of this one in this claim, divided by its weight. So a
-- tenant alone takes every slot offered; a newcomer's first run (tag 0) goes
-- ahead of a busy tenant's next one; a tenant above its share keeps what it
-- holds (no preemption) but gets new slots only once the others caught up.
-- p_per_tenant > 0 is a hard ceiling on the runs p_owner holds for a tenant
-- (x its weight); 0: none. p_shares false (fairness.shares: false) takes the
-- oldest first instead: no shares, for comparison (bench/fairness_bench.py).
--
-- Within a tenant: resumable runs (waiting whose time came, running whose
-- lease ended) first, then queued runs by fair_rank (migration 014: upload
-- batches round-robin), then age.
--
-- Cost: each tenant's queue is read through runs_claim_queued, at most
-- p_limit rows per tenant, so the claim costs about (tenants with queued
-- runs) x p_limit rows plus the runs in flight, not the queue's length.
--
-- Window functions cannot share a SELECT with FOR UPDATE, so `pick` ranks and
-- `c` locks (FOR UPDATE SKIP LOCKED: instances sharing the database never
-- claim the same run); a run another instance locked meanwhile is skipped.
--
-- The picked runs are locked by their primary key. Written `state IN
-- ('queued','running','waiting')`, the condition matched the predicate of the
-- partial index runs_one_active, and a generic plan made from a small runs
-- table went through that index and filtered every active run by id
-- (flow_bench, auto_explain: 985 rows removed to lock 10, 7.3 ms of a 10.6 ms
-- claim); `state NOT IN` the finished states is the same set (the column's
-- CHECK) and no partial index implies it.
--
-- Returns one row per claimed run: what the run actor needs to resume it,
-- with the state and owner it had before (old_state: queued, running,
-- waiting; old_owner: the instance whose lease ended, or null) and `file`,
-- the file's document for the flow (with its storage_key and the dataset's
-- record schema), null if the file went away meanwhile. Callers read the
-- columns by name.
--
-- PL/pgSQL, not LANGUAGE sql: a sql function's body is parsed and planned
-- at every call (3-4 ms here, even on an empty queue), PL/pgSQL keeps the
-- plan per session (0.17 ms on an empty queue). The output columns are
-- variables in PL/pgSQL; every column reference is qualified, and
-- variable_conflict says a bare name is the column.
--
-- SET plan_cache_mode = force_generic_plan: PL/pgSQL keeps a statement's
-- plan, but Postgres's plan cache plans the first five calls for their
-- parameters' values and then keeps planning each call anew whenever the
-- generic plan's estimated cost is well above those custom plans' (here the
-- LIMITs by parameter tip it): the claim was planned at every call. In
-- flow_bench a call took 3.354 ms against 2.131 for its one statement, with
-- the generic plan 1.866-1.934 against 1.384-1.430 (pg_stat_statements);
-- test_claim's claim of 200 with 100,000 queued 8.4-9.4 ms against 9.1-11.5
-- (after the first call). Every
-- statement here finds its rows by index whatever the values
-- (enable_seqscan = off), and test_claim checks the plan that is kept.

-- A run's weight in flight from its file's size: 1 under 1 MiB, then one more
-- per doubling (1 MiB: 2, 2 MiB: 3, 100 MiB: 8), at most 16.
CREATE OR REPLACE FUNCTION sluice_run_cost(p_size bigint) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_size IS NULL OR p_size < 1048576 THEN 1
                ELSE least(16, 2 + floor(log(2, p_size / 1048576.0))::int) END
$$;

-- The trigger runs_before_insert (014): a new run's cost, and a queued run's
-- fair_rank: one after its batch's last queued run, never before its
-- tenant's head. Both reads are one index probe (runs_queued_batch,
-- runs_claim_queued), written as ORDER BY ... LIMIT 1: max() over the batch
-- was planned as an aggregate over every row of the batch (the table's
-- statistics say it is small), so an upload of n files read n²/2 index
-- entries (10,000 files: 10 s of a 20 s transaction, pg_stat_statements).
CREATE OR REPLACE FUNCTION sluice_runs_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.cost := sluice_run_cost((SELECT f.size FROM files f WHERE f.id = NEW.file_id));
    IF NEW.state = 'queued' THEN
        NEW.fair_rank := greatest(
            coalesce((SELECT r.fair_rank FROM runs r
                      WHERE r.batch_id = NEW.batch_id AND r.state = 'queued'
                      ORDER BY r.fair_rank DESC LIMIT 1), 0) + 1,
            coalesce((SELECT r.fair_rank FROM runs r
                      WHERE r.tenant_id = NEW.tenant_id AND r.state = 'queued'
                      ORDER BY r.fair_rank LIMIT 1), 0));
    END IF;
    RETURN NEW;
END
$$;

-- sluice_queue_runs: an upload's runs, queued in one statement with the cost
-- and fair_rank the trigger would give them one row at a time (a PL/pgSQL
-- call, a files probe and two runs probes per row: 141 ms of each 1,000-file
-- upload's transaction in bench/flow_bench.py, pg_stat_statements). The
-- trigger's rule, row after row, is rank = greatest(the batch's last + 1,
-- the tenant's head); after the first row the batch's last is the row before
-- and the head no higher, so row k (1-based, in p_runs order) ranks
-- greatest(last, head - 1) + k, both read once. The trigger skips rows that
-- come with a rank (its WHEN, migration 019). p_runs: [{id, file_id,
-- pipeline, size}], size the file's bytes (the run's cost).
CREATE OR REPLACE FUNCTION sluice_queue_runs(p_tenant uuid, p_dataset uuid, p_batch uuid,
                                             p_runs json)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_base int;
BEGIN
    v_base := greatest(
        coalesce((SELECT r.fair_rank FROM runs r
                  WHERE r.batch_id = p_batch AND r.state = 'queued'
                  ORDER BY r.fair_rank DESC LIMIT 1), 0),
        coalesce((SELECT r.fair_rank FROM runs r
                  WHERE r.tenant_id = p_tenant AND r.state = 'queued'
                  ORDER BY r.fair_rank LIMIT 1), 0) - 1);
    INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, cost, fair_rank)
    SELECT x.id, p_tenant, p_dataset, x.file_id, p_batch, x.pipeline, sluice_run_cost(x.size),
           v_base + x.k::int
    FROM ROWS FROM (json_to_recordset(p_runs) AS (id uuid, file_id uuid, pipeline text,
                                                   size bigint))
         WITH ORDINALITY AS x(id, file_id, pipeline, size, k)
    ORDER BY x.k;
END
$$;

CREATE OR REPLACE FUNCTION sluice_claim_runs(p_owner text, p_limit int, p_lease_s int,
                                             p_per_tenant int, p_weights json,
                                             p_shares boolean DEFAULT true)
RETURNS TABLE (id uuid, tenant_id uuid, dataset_id uuid, file_id uuid, pipeline text,
               step text, attempt int, ctx jsonb, chain_start text, chain_transient boolean,
               wait_count int, flow_version text, old_state text, old_owner text, file json)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH w AS (
        SELECT t.id AS tenant_id, max(x.value::int) AS weight FROM tenants t
        JOIN json_each_text(p_weights) x ON x.key = t.id::text OR x.key = t.name
        GROUP BY t.id),
    -- in flight: runs under a live lease, any instance (runs_running_lease)
    held AS (
        SELECT r.tenant_id, sum(r.cost) AS cost,
               count(*) FILTER (WHERE r.lease_owner = p_owner) AS mine
        FROM runs r WHERE r.state = 'running' AND r.lease_until >= now()
        GROUP BY r.tenant_id),
    -- resumable: waiting runs whose time came (runs_waiting_due), running runs
    -- handed back (runs_running_unleased) or whose lease ended (runs_running_lease)
    resumable AS (
        (SELECT r.id, r.tenant_id, r.dataset_id, r.cost, 0 AS pri, 0 AS fair_rank, r.created_at
         FROM runs r WHERE r.state = 'waiting' AND r.next_attempt_at <= now()
         ORDER BY r.next_attempt_at LIMIT p_limit)
        UNION ALL
        (SELECT r.id, r.tenant_id, r.dataset_id, r.cost, 0, 0, r.created_at
         FROM runs r WHERE r.state = 'running' AND r.lease_until IS NULL
           AND r.next_attempt_at <= now() LIMIT p_limit)
        UNION ALL
        (SELECT r.id, r.tenant_id, r.dataset_id, r.cost, 0, 0, r.created_at
         FROM runs r WHERE r.state = 'running' AND r.lease_until < now()
           AND r.next_attempt_at <= now() ORDER BY r.lease_until LIMIT p_limit)),
    -- queued: the head of each tenant's queue (runs_claim_queued)
    queued AS (
        SELECT q.* FROM tenants t CROSS JOIN LATERAL (
            SELECT r.id, r.tenant_id, r.dataset_id, r.cost, 1 AS pri, r.fair_rank, r.created_at
            FROM runs r
            WHERE r.tenant_id = t.id AND r.state = 'queued' AND r.next_attempt_at <= now()
              AND (r.lease_until IS NULL OR r.lease_until < now())
              -- retention: a deleted dataset's runs are never claimed (its files are being purged)
              AND NOT EXISTS (SELECT 1 FROM datasets d
                              WHERE d.id = r.dataset_id AND d.deleted_at IS NOT NULL)
            ORDER BY r.fair_rank, r.created_at, r.id LIMIT p_limit) q),
    cand AS (
        SELECT u.id, u.tenant_id, u.pri, u.created_at,
               row_number() OVER t AS n,
               coalesce(sum(u.cost) OVER (t ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS ahead
        FROM (SELECT * FROM resumable r
              WHERE NOT EXISTS (SELECT 1 FROM datasets d
                                WHERE d.id = r.dataset_id AND d.deleted_at IS NOT NULL)
              UNION ALL SELECT * FROM queued) u
        WINDOW t AS (PARTITION BY u.tenant_id ORDER BY u.pri, u.fair_rank, u.created_at, u.id)),
    pick AS (
        SELECT k.id FROM cand k
        LEFT JOIN held h ON h.tenant_id = k.tenant_id
        LEFT JOIN w ON w.tenant_id = k.tenant_id
        WHERE p_per_tenant <= 0
           OR coalesce(h.mine, 0) + k.n <= p_per_tenant::bigint * coalesce(w.weight, 1)
        ORDER BY CASE WHEN p_shares
                      THEN (coalesce(h.cost, 0) + k.ahead)::float8 / coalesce(w.weight, 1) END,
                 k.pri, k.created_at, k.id
        LIMIT p_limit),
    c AS (
        SELECT r.id, r.state AS old_state, r.lease_owner AS old_owner FROM runs r
        WHERE r.id = ANY (ARRAY(SELECT pick.id FROM pick))
          -- not finished, written so that no partial index on the active runs
          -- matches it: only the primary key can find the picked rows
          AND r.state NOT IN ('succeeded','failed','cancelled') AND r.next_attempt_at <= now()
          AND (r.lease_until IS NULL OR r.lease_until < now())
        FOR UPDATE SKIP LOCKED)
    UPDATE runs r SET lease_owner = p_owner,
        lease_until = now() + make_interval(secs => p_lease_s),
        state = 'running', started_at = coalesce(r.started_at, now())
    FROM c WHERE r.id = c.id
    RETURNING r.id, r.tenant_id, r.dataset_id, r.file_id, r.pipeline, r.step, r.attempt,
        r.ctx, r.chain_start, r.chain_transient, r.wait_count, r.flow_version,
        c.old_state, c.old_owner,
        (SELECT json_build_object('id', f.id, 'name', f.name, 'mime', f.mime, 'size', f.size,
             'sha256', f.sha256, 'storage_key', f.storage_key, 'dataset_id', f.dataset_id,
             'schema', d.record_schema)
         FROM files f JOIN datasets d ON d.id = f.dataset_id WHERE f.id = r.file_id);
END
$$;
