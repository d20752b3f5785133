-- json: the API's JSON documents, built by Postgres in one place.
-- Every endpoint that returns a file (upload, get, list, process) calls
-- sluice_file_json(), so the shape in API.md lives here once. Migrations 002,
-- 005 and 007 each defined these functions in their day; this file holds
-- their current bodies, which a fresh and an upgraded database both end with
-- (db/functions/ is applied after the migrations, at every migrate).
-- Names, signatures and output are a contract: API.md, and
-- ../shared/bench/fastapi_peer.py calls sluice_file_json(files) directly.
--
-- sluice_file_status and sluice_file_json are PL/pgSQL: a LANGUAGE sql
-- function that cannot be inlined (a FROM, an aggregate) is parsed and
-- planned at each call; PL/pgSQL keeps its queries' plans per session. One
-- file's document: 1.7 ms -> 0.4 ms (the same text), about a tenth of an
-- upload's transaction for one small file (bench/latency_bench.py).

-- STABLE, as to_char(timestamp, text) is: a sql function is inlined into
-- the query that calls it only when its body is no more volatile than it is
-- declared, so the IMMUTABLE one ran as a function call every time (1.6 µs
-- against 0.6 µs inlined, 200,000 calls in psql); it formats every event
-- the group commit returns and every timestamp of a file's document.
CREATE OR REPLACE FUNCTION sluice_ts(t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- status: done when every run succeeded (or there is none), failed when every
-- run ended and one failed or was cancelled, processing when any run has
-- started or some ended while others wait, queued when all are queued.
-- 010_process: uploaded when the file has no run and waits for
-- POST /v1/files/{id}/process (files.awaiting_process).
-- sluice_status_of is the rule, over a file's runs counted and tested
-- (bool_and over no run is null: the count decides first); one file's
-- status and the documents of many files (sluice_files_json) both use it.
CREATE OR REPLACE FUNCTION sluice_status_of(p_runs bigint, p_succeeded boolean,
                                            p_ended boolean, p_queued boolean,
                                            p_awaiting boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_runs = 0 AND coalesce(p_awaiting, false) THEN 'uploaded'
        WHEN p_runs = 0 OR p_succeeded THEN 'done'
        WHEN p_ended THEN 'failed'
        WHEN p_queued THEN 'queued'
        ELSE 'processing'
    END
$$;

CREATE OR REPLACE FUNCTION sluice_file_status(fid uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT sluice_status_of(s.n, s.succeeded, s.ended, s.queued, f.awaiting_process)
    FROM (SELECT count(*) AS n, bool_and(state = 'succeeded') AS succeeded,
                 bool_and(state IN ('succeeded','failed','cancelled')) AS ended,
                 bool_and(state = 'queued') AS queued
          FROM runs WHERE file_id = fid) s
    LEFT JOIN files f ON f.id = fid);
END
$$;

-- 010_process: auto_process (bool) and pipelines (array of names, or null:
-- every pipeline that matches).
CREATE OR REPLACE FUNCTION sluice_dataset_json(d datasets) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', d.id, 'name', d.name, 'record_schema', d.record_schema,
        'created_at', sluice_ts(d.created_at),
        'auto_process', d.auto_process, 'pipelines', to_json(d.pipelines))
$$;

-- A file with its runs (each with its artifacts and, while queued, its place
-- in the tenant's queue: see migration 005) and its record. A run's note
-- (migration 007) says why a run that succeeded has no output. Provenance
-- (migration 011): runs show flow_version, artifacts sha256, and record is the
-- file's latest record version (record_version its number). The file's
-- reason (migration 010) says why no pipeline took it, or is null.
--
-- queue_position: a queued run's place among its tenant's queued runs, in
-- the claim's order within a tenant (fair_rank, created_at, id: claim.sql),
-- 1 = next. One file's document counts the runs ahead of it; a document of
-- many files at once takes p_pos, their runs' places numbered in one pass
-- over the queue (sluice_queue_positions): the upload's response counted the
-- head of the queue again for every file, O(files x queue) (0.74 ms a file,
-- 813 ms per 1,000 files in bench/flow_bench.py).
--
-- The count stops at sluice_queue_position_cap() (10,000) runs ahead: a run
-- further back shows cap + 1 (10001), "more than 10,000 ahead". Counted in
-- full, one file's document at the back of a tenant's 100,000 queued runs
-- took 35-40 ms of Postgres, and every upload's response numbered the whole
-- queue: every read and every upload of a tenant with a backlog cost in
-- proportion to the backlog. Capped, both read at most 10,000 index entries.
CREATE OR REPLACE FUNCTION sluice_queue_position_cap() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 10000::bigint $$;

CREATE OR REPLACE FUNCTION sluice_file_json(f files) RETURNS json
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN sluice_file_json(f, NULL);
END
$$;

-- The queue places of the queued runs of p_files ({run id: place}), from one
-- numbering of p_tenant's queue (runs_claim_queued, in order: no sort); {}
-- without a look at the queue when none of them is queued (a page of files
-- that are done).
--
-- SET enable_nestloop = off: the planner saw the head of the queue as one
-- row (a runs table that grew since its last analyze) and joined it to the
-- files with a nested loop that walked the whole unnest for every queued run:
-- an upload of 1,000 files with 1,349 runs queued removed 1,348,000 rows in
-- its join filter, 175 ms of each upload's response (flow_bench, auto_explain).
-- A hash join reads each side once.
CREATE OR REPLACE FUNCTION sluice_queue_positions(p_tenant uuid, p_files uuid[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SET enable_nestloop = off AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM runs r WHERE r.file_id = ANY (p_files) AND r.state = 'queued') THEN
        RETURN '{}'::jsonb;
    END IF;
    -- the head of the queue only: a queued run of p_files not in the result
    -- is further back (sluice_file_json shows it as cap + 1)
    RETURN (
    SELECT coalesce(jsonb_object_agg(q.id, q.pos), '{}'::jsonb)
    FROM (SELECT h.id, h.file_id,
                 row_number() OVER (ORDER BY h.fair_rank, h.created_at, h.id) AS pos
          FROM (SELECT r.id, r.file_id, r.fair_rank, r.created_at FROM runs r
                WHERE r.tenant_id = p_tenant AND r.state = 'queued'
                ORDER BY r.fair_rank, r.created_at, r.id
                LIMIT sluice_queue_position_cap()) h) q
    JOIN unnest(p_files) AS x(id) ON x.id = q.file_id);
END
$$;

-- The shape of a file's document, once: an artifact's, a run's and a file's
-- object. LANGUAGE sql functions of one SELECT with no FROM, so the planner
-- inlines them into the query that calls them (no function call per row)
-- when their arguments hold no subquery: callers compute the parts (a run's
-- artifacts, its queue place, the file's status and runs, its record) in
-- joins and pass them in. sluice_file_json (one file) and sluice_files_json
-- (many at once) build the same text with them.
CREATE OR REPLACE FUNCTION sluice_artifact_obj(a artifacts) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', a.id, 'kind', a.kind, 'mime', a.mime, 'size', a.size,
        'sha256', a.sha256,                                 -- provenance (011)
        'url', '/v1/artifacts/' || a.id)
$$;

-- p_artifacts: the run's artifact objects in (created_at, id) order, null
-- for none; p_position: its place in its tenant's queue, read only while
-- the run is queued.
CREATE OR REPLACE FUNCTION sluice_run_obj(r runs, p_artifacts json, p_position bigint)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', r.id, 'pipeline', r.pipeline, 'state', r.state, 'step', r.step,
        'attempt', r.attempt, 'error', r.error, 'note', r.note,
        'started_at', sluice_ts(r.started_at), 'finished_at', sluice_ts(r.finished_at),
        'flow_version', r.flow_version,                     -- provenance (011)
        'artifacts', coalesce(p_artifacts, '[]'::json),
        'queue_position', CASE WHEN r.state = 'queued' THEN p_position END)
$$;

-- p_runs: the file's run objects in (created_at, pipeline) order, null for
-- none; p_record, p_record_version: its latest record version (011), or null.
CREATE OR REPLACE FUNCTION sluice_file_obj(f files, p_status text, p_runs json,
                                           p_record jsonb, p_record_version integer)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', f.id,
        'dataset_id', f.dataset_id,
        'name', f.name,
        'size', f.size,
        'sha256', f.sha256,
        'mime', f.mime,
        'status', p_status,
        'created_at', sluice_ts(f.created_at),
        'runs', coalesce(p_runs, '[]'::json),
        'reason', f.reason, -- 010_process
        'text_source', f.text_source,
        -- provenance (011): the latest version; GET /v1/files/{id}/records has them all
        'record', p_record,
        'record_version', p_record_version)
$$;

-- One file's document. A queued run's place comes from p_pos when given,
-- else from a count of the runs ahead of it (the LATERAL's own filter keeps
-- that count from running for a run that is not queued).
CREATE OR REPLACE FUNCTION sluice_file_json(f files, p_pos jsonb) RETURNS json
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT sluice_file_obj(f, sluice_file_status(f.id), ru.j, rec.data, rec.version)
    FROM (SELECT json_agg(sluice_run_obj(r, art.j,
                     CASE WHEN p_pos IS NOT NULL
                          THEN coalesce((p_pos ->> r.id::text)::bigint,
                                        sluice_queue_position_cap() + 1)
                          ELSE ahead.n END) ORDER BY r.created_at, r.pipeline) AS j
          FROM runs r
          LEFT JOIN LATERAL (
              SELECT json_agg(sluice_artifact_obj(a) ORDER BY a.created_at, a.id) AS j
              FROM artifacts a WHERE a.run_id = r.id) art ON true
          LEFT JOIN LATERAL (
              SELECT count(*) + 1 AS n FROM (
                  SELECT 1 FROM runs q
                  WHERE r.state = 'queued' AND p_pos IS NULL
                    AND q.tenant_id = r.tenant_id AND q.state = 'queued'
                    AND (q.fair_rank, q.created_at, q.id) < (r.fair_rank, r.created_at, r.id)
                  LIMIT sluice_queue_position_cap()) x) ahead ON true
          WHERE r.file_id = f.id) ru
    LEFT JOIN records rec ON rec.file_id = f.id AND rec.latest);
END
$$;

-- The documents of many files at once: a JSON array, in the order of
-- p_files (ids of p_tenant's files; one that is not is left out), whose
-- elements are the text json_agg(sluice_file_json(f, sluice_queue_positions(
-- p_tenant, p_files))) gives, in one query: a file's runs (and a run's
-- artifacts) are a LATERAL aggregate over its index entries, not a PL/pgSQL
-- call per file that starts a query of its own (sluice_file_json). The
-- upload's response: 104-167 ms per 1,000 files file by file
-- (bench/flow_bench.py, pg_stat_statements), on the critical path of every
-- upload.
--
-- Written as nested index lookups on purpose: the planner sees unnest() of
-- a parameter as 10 rows, and a join of the files to their runs grouped
-- apart (one GROUP BY over all of them) became a nested loop that grouped
-- the runs again for every file (2.8 s for 1,000 files, auto_explain).
CREATE OR REPLACE FUNCTION sluice_files_json(p_tenant uuid, p_files uuid[]) RETURNS json
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_pos jsonb := sluice_queue_positions(p_tenant, p_files);
BEGIN
    RETURN (
    SELECT coalesce(json_agg(
               sluice_file_obj(f, sluice_status_of(ru.n, ru.succeeded, ru.ended, ru.queued,
                                                   f.awaiting_process),
                               ru.j, rec.data, rec.version)
               ORDER BY x.ord), '[]'::json)
    FROM unnest(p_files) WITH ORDINALITY AS x(id, ord)
    JOIN files f ON f.id = x.id AND f.tenant_id = p_tenant
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, bool_and(r.state = 'succeeded') AS succeeded,
               bool_and(r.state IN ('succeeded','failed','cancelled')) AS ended,
               bool_and(r.state = 'queued') AS queued,
               json_agg(sluice_run_obj(r, art.j,
                            coalesce((v_pos ->> r.id::text)::bigint,
                                     sluice_queue_position_cap() + 1))
                        ORDER BY r.created_at, r.pipeline) AS j
        FROM runs r
        LEFT JOIN LATERAL (
            SELECT json_agg(sluice_artifact_obj(a) ORDER BY a.created_at, a.id) AS j
            FROM artifacts a WHERE a.run_id = r.id) art ON true
        WHERE r.file_id = f.id) ru
    LEFT JOIN records rec ON rec.file_id = f.id AND rec.latest);
END
$$;

CREATE OR REPLACE FUNCTION sluice_event_json(e run_events) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'seq', e.seq, 'at', sluice_ts(e.at), 'run_id', e.run_id, 'pipeline', e.pipeline,
        'step', e.step, 'kind', e.kind, 'state', e.state, 'detail', e.detail)
$$;
