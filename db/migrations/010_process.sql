-- 010_process: upload without processing, and the pipelines a dataset allows
-- (issue 13; API.md "Lifecycle and access"; docs/lifecycle.md "Upload without
-- processing").
--
-- datasets.auto_process: false makes an upload store its files without runs
-- unless the request says ?process=true. datasets.pipelines: the names of the
-- pipelines that may run on the dataset's files, at upload and at
-- POST /v1/files/{id}/process; NULL is every pipeline (that matches the file).
-- A name is checked against the configured pipelines when the dataset is
-- made; one removed from the config later simply matches nothing.
ALTER TABLE datasets ADD COLUMN auto_process boolean NOT NULL DEFAULT true;
ALTER TABLE datasets ADD COLUMN pipelines text[];

-- files.awaiting_process: stored by an upload that did not process it, and
-- not processed since; its status is 'uploaded' (sluice_file_status) until
-- POST /v1/files/{id}/process clears it. files.reason: why no pipeline took
-- the file ("no pipeline matches application/zip"), set when an upload or a
-- process found none for it, cleared when one does; NULL otherwise.
ALTER TABLE files ADD COLUMN awaiting_process boolean NOT NULL DEFAULT false;
ALTER TABLE files ADD COLUMN reason text;
