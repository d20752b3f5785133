-- 004_runs: what the run actor needs to resume a run anywhere.
-- chain_start / chain_transient describe the chain of steps that failed into
-- each other (tika -> ocr -> textract): where a waiting run starts again, and
-- whether any link failed for a reason that may pass (a service down).
ALTER TABLE runs ADD COLUMN chain_start text;
ALTER TABLE runs ADD COLUMN chain_transient boolean NOT NULL DEFAULT false;
ALTER TABLE runs ADD COLUMN wait_count int NOT NULL DEFAULT 0;
CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE state = 'running';
