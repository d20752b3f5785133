-- 008_flow_versions: the source of every flow version an engine loaded.
-- runs.flow_version holds the sha256 (hex) of the flow file a run last
-- committed with. A run taken over after a crash (its lease lapsed while it
-- was running) continues with that version, not with whatever file is loaded
-- now: the engine that takes it over loads the version's source from here
-- (actors/scheduler.c, docs/internals/scheduler.md). Every engine stores the
-- flows it loads, at start and at each reload; a version is its bytes' hash,
-- so a row never changes. `require`d modules (lua-flows/lib) are not part of
-- a version: a taken-over run uses the modules loaded now.
CREATE TABLE flow_versions (
    version    text PRIMARY KEY,      -- sha256 hex of source
    pipeline   text NOT NULL,         -- the pipeline that first loaded it (information)
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
