-- 014_claim: work-conserving weighted shares (issue 10; db/functions/claim.sql,
-- docs/internals/scheduler.md "Shares").
--
-- runs.cost: what a run weighs while it is in flight (sluice_run_cost of its
-- file's size: 1 under 1 MiB, one more per doubling, at most 16). The claim
-- orders tenants by the cost they have in flight divided by their weight.
--
-- runs.fair_rank: a queued run's place in its tenant's queue, given at insert:
-- one after the last queued run of its upload batch, and never before the
-- tenant's head (its smallest queued rank). So the batches of a tenant are
-- served round-robin from where the tenant stands, without ranking the whole
-- queue at every claim (the claim reads each tenant's queue through
-- runs_claim_queued, in (fair_rank, created_at, id) order).
--
-- The trigger function's body is in db/functions/claim.sql (re-applied at
-- every migrate, after the migrations); this one is a placeholder so the
-- trigger can be created before that file is applied.
ALTER TABLE runs ADD COLUMN cost int NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN fair_rank int NOT NULL DEFAULT 0;

UPDATE runs r SET cost = CASE WHEN f.size < 1048576 THEN 1
                              ELSE least(16, 2 + floor(log(2, f.size / 1048576.0))::int) END
FROM files f WHERE f.id = r.file_id AND r.state IN ('queued', 'running', 'waiting');
UPDATE runs r SET fair_rank = x.n
FROM (SELECT id, row_number() OVER (PARTITION BY batch_id ORDER BY created_at, id) AS n
      FROM runs WHERE state = 'queued') x
WHERE r.id = x.id;

CREATE INDEX runs_claim_queued ON runs (tenant_id, fair_rank, created_at, id)
    WHERE state = 'queued';
CREATE INDEX runs_queued_batch ON runs (batch_id, fair_rank) WHERE state = 'queued';
CREATE INDEX runs_waiting_due ON runs (next_attempt_at) WHERE state = 'waiting';
CREATE INDEX runs_running_lease ON runs (lease_until) INCLUDE (tenant_id, cost, lease_owner)
    WHERE state = 'running';
-- running runs handed back (lease cleared by a graceful stop): almost always empty
CREATE INDEX runs_running_unleased ON runs (next_attempt_at)
    WHERE state = 'running' AND lease_until IS NULL;

-- The claim gains p_shares (db/functions/claim.sql creates it again, with
-- the argument defaulted, so a call with five arguments still works).
DROP FUNCTION IF EXISTS sluice_claim_runs(text, int, int, int, json);

CREATE OR REPLACE FUNCTION sluice_runs_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER runs_before_insert BEFORE INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION sluice_runs_before_insert();
