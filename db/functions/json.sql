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
CREATE OR REPLACE FUNCTION sluice_file_status(fid uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT CASE
        WHEN count(*) = 0 AND coalesce((SELECT f.awaiting_process FROM files f
                                        WHERE f.id = fid), false) THEN 'uploaded'
        WHEN count(*) = 0 OR bool_and(state = 'succeeded') THEN 'done'
        WHEN bool_and(state IN ('succeeded','failed','cancelled')) THEN 'failed'
        WHEN bool_and(state = 'queued') THEN 'queued'
        ELSE 'processing'
    END
    FROM runs WHERE file_id = fid);
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

CREATE OR REPLACE FUNCTION sluice_file_json(f files, p_pos jsonb) RETURNS json
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT json_build_object(
        'id', f.id,
        'dataset_id', f.dataset_id,
        'name', f.name,
        'size', f.size,
        'sha256', f.sha256,
        'mime', f.mime,
        'status', sluice_file_status(f.id),
        'created_at', sluice_ts(f.created_at),
        'runs', coalesce((
            SELECT json_agg(json_build_object(
                'id', r.id, 'pipeline', r.pipeline, 'state', r.state, 'step', r.step,
                'attempt', r.attempt, 'error', r.error, 'note', r.note,
                'started_at', sluice_ts(r.started_at), 'finished_at', sluice_ts(r.finished_at),
                'flow_version', r.flow_version,                    -- provenance (011)
                'artifacts', coalesce((
                    SELECT json_agg(json_build_object(
                        'id', a.id, 'kind', a.kind, 'mime', a.mime, 'size', a.size,
                        'sha256', a.sha256,                         -- provenance (011)
                        'url', '/v1/artifacts/' || a.id) ORDER BY a.created_at, a.id)
                    FROM artifacts a WHERE a.run_id = r.id), '[]'::json),
                'queue_position', CASE WHEN r.state = 'queued' THEN
                    CASE WHEN p_pos IS NOT NULL
                         THEN coalesce((p_pos ->> r.id::text)::bigint,
                                       sluice_queue_position_cap() + 1)
                         ELSE (SELECT count(*) + 1 FROM (
                                   SELECT 1 FROM runs q
                                   WHERE q.tenant_id = r.tenant_id AND q.state = 'queued'
                                     AND (q.fair_rank, q.created_at, q.id)
                                         < (r.fair_rank, r.created_at, r.id)
                                   LIMIT sluice_queue_position_cap()) ahead) END END
            ) ORDER BY r.created_at, r.pipeline)
            FROM runs r WHERE r.file_id = f.id), '[]'::json),
        'reason', f.reason, -- 010_process
        'text_source', f.text_source,
        -- provenance (011): the latest version; GET /v1/files/{id}/records has them all
        'record', (SELECT rec.data FROM records rec WHERE rec.file_id = f.id AND rec.latest),
        'record_version', (SELECT rec.version FROM records rec
                           WHERE rec.file_id = f.id AND rec.latest)));
END
$$;

CREATE OR REPLACE FUNCTION sluice_event_json(e run_events) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'seq', e.seq, 'at', sluice_ts(e.at), 'run_id', e.run_id, 'pipeline', e.pipeline,
        'step', e.step, 'kind', e.kind, 'state', e.state, 'detail', e.detail)
$$;
