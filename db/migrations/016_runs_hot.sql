-- 016_runs_hot: a run's row is updated at every transition of its actor
-- (db/functions/run_transition.sql), most of them changing no indexed column
-- (step, attempt, ctx, chain_*). Such an update can be HOT (heap-only: no
-- new entry in any index) when the row's page has room for the new version;
-- at the default fillfactor of 100 the pages are full, so 2 of 3 updates
-- inserted into every index of runs (flow_bench: 7,999 HOT of 23,927).
-- New pages of runs are filled to 50 %; the rest is room for updates, and
-- page pruning gives the dead versions' space back as the actor moves on.
ALTER TABLE runs SET (fillfactor = 50);

-- Two indexes nothing reads any more, kept up to date at every transition
-- that changed state: runs_runnable (001; the claim reads one partial index
-- per kind of runnable run since 014) and runs_queued_tenant (005; queue
-- places are numbered in the claim's order, runs_claim_queued, since
-- stop 22).
DROP INDEX IF EXISTS runs_runnable;
DROP INDEX IF EXISTS runs_queued_tenant;
