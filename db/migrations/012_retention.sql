-- 012_retention: dataset delete, admin cleanup and the automatic retention
-- (actors/retention.c, api/retention.c, docs/lifecycle.md "Retention").
--
-- A deleted dataset is marked (deleted_at) and invisible at once; its files
-- are purged afterwards in short batches, and the dataset row goes with its
-- last file. Blob keys of purged rows are queued in purge_blobs in the same
-- transaction as the rows' delete, so a blob is removed only after nothing
-- points at it, and a crash between the two loses nothing (the queue is
-- drained again after a restart).

ALTER TABLE datasets ADD COLUMN deleted_at timestamptz;
-- The purge's work list, and the "is this dataset deleted" probe every read
-- makes: tiny, since deleted datasets disappear once purged.
CREATE INDEX datasets_deleted ON datasets (id) WHERE deleted_at IS NOT NULL;

-- The admin cleanup and the expired-files retention pick the oldest files first.
CREATE INDEX files_created ON files (created_at);

-- Blobs (files' and artifacts') whose rows are gone, waiting to be deleted
-- from storage. claimed_until: a drainer took the row and deletes the blob;
-- if it dies, the row is taken again once the claim lapses.
CREATE TABLE purge_blobs (
    id            bigserial PRIMARY KEY,
    storage_key   text NOT NULL,
    size          bigint NOT NULL DEFAULT 0,
    queued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_until timestamptz
);

-- One row per background job that only one instance may run at a time (the
-- retention sweep): who holds it, until when, and when it last finished.
CREATE TABLE retention_leases (
    name     text PRIMARY KEY,
    owner    text,
    until    timestamptz NOT NULL DEFAULT '-infinity',
    done_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO retention_leases (name) VALUES ('sweep') ON CONFLICT DO NOTHING;
