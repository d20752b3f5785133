-- claim: the scheduler's claim of runnable runs (actors/scheduler.c,
-- docs/internals/scheduler.md).
--
-- A run is runnable when it is queued, waiting and its time has come, or
-- running under a lease that ended (its instance died). The claim ranks the
-- runnable runs round-robin, first across the upload batches of a tenant (rb:
-- a run's rank in its batch), then across tenants (rt: its rank in its
-- tenant, plus the runs p_owner already holds for the tenant, divided by the
-- tenant's weight), takes none past p_per_tenant x weight held by p_owner,
-- locks up to p_limit of them (FOR UPDATE SKIP LOCKED: instances sharing the
-- database never claim the same run), and leases them to p_owner for
-- p_lease_s seconds.
--
-- Window functions cannot share a SELECT with FOR UPDATE, so `pick` ranks and
-- `c` locks; a run another instance locked meanwhile is skipped.
--
-- Returns one row per claimed run: what the run actor needs to resume it,
-- with the state and owner it had before (old_state: queued, running,
-- waiting; old_owner: the instance whose lease ended, or null) and `file`,
-- the file's document for the flow (with its storage_key and the dataset's
-- record schema), null if the file went away meanwhile. Callers read the
-- columns by name.
CREATE OR REPLACE FUNCTION sluice_claim_runs(p_owner text, p_limit int, p_lease_s int,
                                             p_per_tenant int, p_weights json)
RETURNS TABLE (id uuid, tenant_id uuid, dataset_id uuid, file_id uuid, pipeline text,
               step text, attempt int, ctx jsonb, chain_start text, chain_transient boolean,
               wait_count int, flow_version text, old_state text, old_owner text, file json)
LANGUAGE sql VOLATILE AS $$
    WITH mine AS (
        SELECT r.tenant_id, count(*) AS n FROM runs r
        WHERE r.lease_owner = p_owner AND r.state = 'running' GROUP BY r.tenant_id),
    w AS (
        SELECT t.id AS tenant_id, max(x.value::int) AS weight FROM tenants t
        JOIN json_each_text(p_weights) x ON x.key = t.id::text OR x.key = t.name
        GROUP BY t.id),
    cand AS (
        SELECT r.id, r.tenant_id, r.created_at, row_number() OVER (
            PARTITION BY r.tenant_id, r.batch_id ORDER BY r.created_at, r.id) AS rb
        FROM runs r
        WHERE r.state IN ('queued','running','waiting') AND r.next_attempt_at <= now()
          AND (r.lease_until IS NULL OR r.lease_until < now())
          -- retention: a deleted dataset's runs are never claimed (its files are being purged)
          AND NOT EXISTS (SELECT 1 FROM datasets d
                          WHERE d.id = r.dataset_id AND d.deleted_at IS NOT NULL)),
    ranked AS (
        SELECT c.id, c.tenant_id, c.created_at, row_number() OVER (
            PARTITION BY c.tenant_id ORDER BY c.rb, c.created_at, c.id) AS rt
        FROM cand c),
    pick AS (
        SELECT k.id FROM ranked k
        LEFT JOIN mine m ON m.tenant_id = k.tenant_id
        LEFT JOIN w ON w.tenant_id = k.tenant_id
        WHERE k.rt + coalesce(m.n, 0) <= p_per_tenant * coalesce(w.weight, 1)
        ORDER BY (k.rt + coalesce(m.n, 0))::float8 / coalesce(w.weight, 1), k.created_at
        LIMIT p_limit),
    c AS (
        SELECT r.id, r.state AS old_state, r.lease_owner AS old_owner FROM runs r
        WHERE r.id IN (SELECT pick.id FROM pick)
          AND r.state IN ('queued','running','waiting') AND r.next_attempt_at <= now()
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
         FROM files f JOIN datasets d ON d.id = f.dataset_id WHERE f.id = r.file_id)
$$;
