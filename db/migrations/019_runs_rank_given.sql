-- 019_runs_rank_given: the trigger that gives a new run its cost and queue
-- rank (014) runs only for rows that come without a rank. An upload's runs
-- come with both, computed for the whole batch at once
-- (db/functions/claim.sql, sluice_queue_runs); any other insert (the
-- /process route, tests) leaves fair_rank at its default 0 and is ranked
-- row by row as before. With WHEN, Postgres does not even call the
-- PL/pgSQL function for a row that has its rank.
DROP TRIGGER runs_before_insert ON runs;
CREATE TRIGGER runs_before_insert BEFORE INSERT ON runs
    FOR EACH ROW WHEN (NEW.fair_rank = 0) EXECUTE FUNCTION sluice_runs_before_insert();
