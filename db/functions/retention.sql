-- retention: dataset delete, admin cleanup and the automatic retention
-- (api/retention.c, actors/retention.c, docs/lifecycle.md "Retention").
--
-- Every purge works in batches: each call is one short transaction that
-- locks at most p_limit files, queues their blobs and their
-- artifacts' blobs in purge_blobs, and deletes the rows; runs, timeline
-- events, artifacts and records go with them (ON DELETE CASCADE), as with
-- DELETE /v1/files/{id}. Callers set lock_timeout for the batch so a purge
-- never waits long behind a run's transition. Rows returned: one per file
-- deleted, (file_id, dataset_id, tenant_id, size, active): active is true when
-- the file had a run in flight, whose actor the caller then stops. Callers
-- read columns by name.

-- Marks the caller's dataset deleted: from now on every read treats it (and
-- its files) as gone. Returns its id, or no row (no such dataset, another
-- tenant's, or deleted already).
CREATE OR REPLACE FUNCTION sluice_dataset_delete(p_tenant uuid, p_id uuid)
RETURNS TABLE (id uuid)
LANGUAGE sql VOLATILE AS $$
    UPDATE datasets d SET deleted_at = clock_timestamp()
    WHERE d.tenant_id = p_tenant AND d.id = p_id AND d.deleted_at IS NULL
    RETURNING d.id
$$;

-- True if the dataset is marked deleted (the probe of every read).
CREATE OR REPLACE FUNCTION sluice_dataset_gone(p_dataset uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM datasets d WHERE d.id = p_dataset AND d.deleted_at IS NOT NULL)
$$;

-- Queues the blobs of the given (locked) files and their artifacts, then
-- deletes the files. The caller locked them FOR UPDATE in the same
-- transaction, so no run can add an artifact between the two (the
-- artifact's foreign key needs a share lock on the file row).
CREATE OR REPLACE FUNCTION sluice_purge_file_ids(p_ids uuid[])
RETURNS TABLE (file_id uuid, dataset_id uuid, tenant_id uuid, size bigint, active boolean)
LANGUAGE sql VOLATILE AS $$
    WITH q AS (
        INSERT INTO purge_blobs (storage_key, size)
        SELECT a.storage_key, a.size FROM artifacts a WHERE a.file_id = ANY (p_ids)
            AND a.storage_key IS NOT NULL -- a small one's bytes are in its row (018)
        UNION ALL
        SELECT f.storage_key, f.size FROM files f WHERE f.id = ANY (p_ids))
    DELETE FROM files f WHERE f.id = ANY (p_ids)
    RETURNING f.id, f.dataset_id, f.tenant_id, f.size,
        EXISTS (SELECT 1 FROM runs r WHERE r.file_id = f.id AND r.state IN ('running','waiting'))
$$;

-- One batch of the purge of deleted datasets: up to p_limit of their files.
-- SKIP LOCKED: several processes may purge at once, each on other files; a
-- file skipped now is purged by a later pass (the dataset stays marked, and
-- its row stays, until its last file is gone). Per dataset, newest first:
-- the order of files_dataset_seq, so a batch reads about its own rows and
-- never sorts what is left (an ORDER BY across datasets made every batch
-- sort the whole remainder: 40 s for 100,000 files instead of 14).
CREATE OR REPLACE FUNCTION sluice_purge_datasets_batch(p_limit int)
RETURNS TABLE (file_id uuid, dataset_id uuid, tenant_id uuid, size bigint, active boolean)
LANGUAGE sql VOLATILE AS $$
    SELECT p.* FROM sluice_purge_file_ids(ARRAY(
        SELECT x.id FROM datasets d
        CROSS JOIN LATERAL (
            SELECT f.id FROM files f WHERE f.dataset_id = d.id
            ORDER BY f.seq DESC LIMIT p_limit FOR UPDATE OF f SKIP LOCKED) x
        WHERE d.deleted_at IS NOT NULL
        LIMIT p_limit)) p
$$;

-- Removes the rows of deleted datasets that have no file left; the number
-- removed. The dataset row is locked first (SKIP LOCKED: an upload still
-- inserting into it holds a key-share lock, and its files are purged by a
-- later batch), then its emptiness is checked by a fresh statement, so a
-- file committed meanwhile is never deleted by cascade without its blob.
CREATE OR REPLACE FUNCTION sluice_purge_datasets_drop()
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ids uuid[];
    n bigint;
BEGIN
    SELECT array_agg(d.id) INTO ids FROM (
        SELECT d.id FROM datasets d WHERE d.deleted_at IS NOT NULL
        LIMIT 100 FOR UPDATE SKIP LOCKED) d;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM datasets d WHERE d.id = ANY (ids)
        AND NOT EXISTS (SELECT 1 FROM files f WHERE f.dataset_id = d.id);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The files the admin cleanup (and the expired-files retention) removes:
-- created before p_cutoff, of p_tenant (NULL: every tenant), in a dataset not
-- deleted already (those are being purged anyway).
CREATE OR REPLACE FUNCTION sluice_cleanup_count(p_cutoff timestamptz, p_tenant uuid)
RETURNS TABLE (files bigint, bytes bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*), coalesce(sum(f.size), 0)::bigint FROM files f
    WHERE f.created_at < p_cutoff AND (p_tenant IS NULL OR f.tenant_id = p_tenant)
      AND NOT sluice_dataset_gone(f.dataset_id)
$$;

-- One batch of the cleanup: up to p_limit of those files, oldest first.
-- A plain FOR UPDATE (the caller's lock_timeout bounds the wait), not SKIP
-- LOCKED: a batch that comes back short must mean that no such file is left,
-- not that one was busy (a run adding an artifact holds a share lock on its
-- file). Rows another cleanup deleted meanwhile are skipped by the lock's
-- recheck and the LIMIT fills from the next ones, so concurrent cleanups each
-- count exactly the files they removed.
CREATE OR REPLACE FUNCTION sluice_cleanup_batch(p_cutoff timestamptz, p_tenant uuid, p_limit int)
RETURNS TABLE (file_id uuid, dataset_id uuid, tenant_id uuid, size bigint, active boolean)
LANGUAGE sql VOLATILE AS $$
    SELECT p.* FROM sluice_purge_file_ids(ARRAY(
        SELECT f.id FROM files f
        WHERE f.created_at < p_cutoff AND (p_tenant IS NULL OR f.tenant_id = p_tenant)
          AND NOT sluice_dataset_gone(f.dataset_id)
        ORDER BY f.created_at
        LIMIT p_limit FOR UPDATE OF f)) p
$$;

-- Idempotency keys older than p_hours (their replay window is over), up to
-- p_limit per call; the number removed.
CREATE OR REPLACE FUNCTION sluice_purge_idempotency(p_hours int, p_limit int)
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH d AS (
        DELETE FROM idempotency_keys k USING (
            SELECT i.tenant_id, i.key FROM idempotency_keys i
            WHERE i.created_at < now() - make_interval(hours => p_hours)
            LIMIT p_limit FOR UPDATE SKIP LOCKED) x
        WHERE k.tenant_id = x.tenant_id AND k.key = x.key
        RETURNING 1)
    SELECT count(*) FROM d
$$;

-- Takes up to p_limit queued blobs for p_lease_s seconds (a drainer that dies
-- leaves them to be taken again once the claim lapses).
CREATE OR REPLACE FUNCTION sluice_purge_blobs_claim(p_limit int, p_lease_s int)
RETURNS TABLE (id bigint, storage_key text, size bigint)
LANGUAGE sql VOLATILE AS $$
    UPDATE purge_blobs b SET claimed_until = now() + make_interval(secs => p_lease_s)
    WHERE b.id IN (
        SELECT q.id FROM purge_blobs q
        WHERE q.claimed_until IS NULL OR q.claimed_until < now()
        ORDER BY q.id LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING b.id, b.storage_key, b.size
$$;

-- The retention sweep's lease: p_owner takes it when it is free and the last
-- sweep finished at least p_interval_s ago, or renews it while it holds it.
-- True if p_owner holds it now, for p_lease_s seconds.
CREATE OR REPLACE FUNCTION sluice_retention_lease(p_name text, p_owner text, p_lease_s int,
                                                  p_interval_s int)
RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    WITH u AS (
        UPDATE retention_leases l SET owner = p_owner,
            until = now() + make_interval(secs => p_lease_s)
        WHERE l.name = p_name
          AND ((l.owner = p_owner AND l.until >= now())
               OR (l.until < now() AND l.done_at <= now() - make_interval(secs => p_interval_s)))
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- Ends p_owner's sweep: the lease is free, and the next sweep is due
-- p_interval_s from now (on whichever instance asks first).
CREATE OR REPLACE FUNCTION sluice_retention_release(p_name text, p_owner text)
RETURNS void
LANGUAGE sql VOLATILE AS $$
    UPDATE retention_leases SET until = '-infinity', done_at = now(), owner = NULL
    WHERE name = p_name AND owner = p_owner
$$;

-- Refresh-token families (009_auth.sql) whose every refresh token expired more
-- than a day ago, up to p_limit per call; the number removed (their tokens go
-- by ON DELETE CASCADE). A day past the last expiry is past every access
-- token of the family too (auth.access_ttl_s is at most 86400, and an access
-- token is issued with a refresh token that outlives it), so no token that
-- could still be presented loses the family it is checked against.
CREATE OR REPLACE FUNCTION sluice_purge_token_families(p_limit int)
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH d AS (
        DELETE FROM token_families f USING (
            SELECT t.id FROM token_families t
            WHERE t.created_at < now() - interval '1 day'
              AND NOT EXISTS (SELECT 1 FROM refresh_tokens r
                              WHERE r.family_id = t.id
                                AND r.expires_at > now() - interval '1 day')
            LIMIT p_limit FOR UPDATE SKIP LOCKED) x
        WHERE f.id = x.id
        RETURNING 1)
    SELECT count(*) FROM d
$$;
