-- 013_pipelines: pipelines put through the API (issue 14; api/pipelines.c,
-- actors/pipestore.c, docs/flows.md "Pipelines through the API").
-- The config file's pipelines are the seed; a row here overrides the seed of
-- the same name. Every PUT adds an immutable pipeline_versions row (revision
-- 1, 2, ... per name) whose flow source is in flow_versions (008), so a run
-- pinned to runs.flow_version can always load it again. A DELETE keeps the
-- history and marks the name deleted (a tombstone, config seeds too): no new
-- run of it starts until a later PUT, which takes the next revision.
CREATE TABLE pipelines (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9_]{1,63}$'),
    revision    int NOT NULL DEFAULT 0,  -- the current (or last) revision; 0: none yet
    deleted_at  timestamptz,             -- set by DELETE, cleared by PUT
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE pipeline_versions (
    name        text NOT NULL REFERENCES pipelines (name) ON DELETE CASCADE,
    revision    int NOT NULL CHECK (revision > 0),
    version     text NOT NULL REFERENCES flow_versions (version), -- sha256 hex of the source
    match       jsonb NOT NULL,          -- ["application/pdf", "text/*"]
    describe    jsonb,                   -- sl_flow_describe at PUT: steps, version, start, graph
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (name, revision)
);
