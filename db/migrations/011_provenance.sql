-- 011_provenance: every record is a version, with where it came from.
--
-- Until now a file had one record (records.file_id UNIQUE) and a second run
-- replaced it. Now each run that makes a record adds a version (1, 2, ... per
-- file) and never overwrites an older one; the newest is the file's record
-- (API.md, "Lifecycle and access"). db/functions/provenance.sql has the one
-- writer, sluice_record_put (called by sl.record, actors/lua_run.c).
--
--   version     1, 2, ... per file: unique (file_id, version).
--   latest      true on the file's newest version only (at most one per file:
--               records_one_latest). It keeps the dataset listing (each file's
--               latest) an index range scan on records_latest instead of a
--               DISTINCT ON over every version of a big dataset.
--   provenance  {"extractor", "model", "pipeline", "flow_version", "run_id",
--               "text_source"}: run_id, pipeline and flow_version come from the
--               run (C), text_source from the file, extractor and model from
--               the flow (checked in C). Rows inserted by hand (tests) get all
--               six keys as null.
--
-- A step that runs twice for one run (taken over after a crash) must not make
-- a second version: run_id is unique, and sluice_record_put updates the
-- run's own version instead of adding one.
--
-- Existing records become version 1, latest, with the provenance the database
-- still knows (the run's pipeline and flow_version, the file's text_source).

ALTER TABLE records DROP CONSTRAINT records_file_id_key;
ALTER TABLE records ADD COLUMN version int NOT NULL DEFAULT 1 CHECK (version >= 1);
ALTER TABLE records ADD COLUMN latest boolean NOT NULL DEFAULT true;
ALTER TABLE records ADD COLUMN provenance jsonb NOT NULL DEFAULT
    '{"extractor": null, "model": null, "pipeline": null, "flow_version": null,
      "run_id": null, "text_source": null}'::jsonb;

UPDATE records rec SET provenance = jsonb_build_object(
    'extractor', NULL, 'model', NULL,
    'pipeline', (SELECT r.pipeline FROM runs r WHERE r.id = rec.run_id),
    'flow_version', (SELECT r.flow_version FROM runs r WHERE r.id = rec.run_id),
    'run_id', rec.run_id,
    'text_source', (SELECT f.text_source FROM files f WHERE f.id = rec.file_id));

CREATE UNIQUE INDEX records_file_version ON records (file_id, version);
CREATE UNIQUE INDEX records_one_latest ON records (file_id) WHERE latest;
CREATE UNIQUE INDEX records_run ON records (run_id);
-- GET /v1/datasets/{id}/records: each file's latest, oldest first, LIMIT n.
CREATE INDEX records_latest ON records (dataset_id, created_at, id) WHERE latest;
