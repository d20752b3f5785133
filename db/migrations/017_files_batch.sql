-- 017_files_batch: an upload finds its own files by batch (api/upload.c: the
-- 'uploaded' events, the response, the idempotent replay), and nothing
-- indexed files.batch_id, so each of those statements read the whole files
-- table: an upload's cost grew with every file stored before it, in every
-- dataset of every tenant. With the index it is the batch's own rows.
CREATE INDEX files_batch ON files (batch_id);
