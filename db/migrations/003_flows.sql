-- 003_flows: what the flow runtime's primitives rely on.
-- sl.artifact records one artifact per run and kind: a retried step replaces
-- its row (INSERT ... ON CONFLICT (run_id, kind) DO UPDATE) instead of adding one.
CREATE UNIQUE INDEX artifacts_run_kind ON artifacts (run_id, kind);
