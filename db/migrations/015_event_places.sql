-- 015_event_places: every status event of a dataset gets its place in one
-- dense per-dataset series, allocated in the commit that makes it (issue 10;
-- docs/internals/sse.md "Places"). It replaces the global run_events.seq
-- sequence and the per-dataset advisory lock that ordered its commits.
--
-- datasets.event_seq is the last place given. sluice_event_places
-- (db/functions/run_transition.sql) bumps it; the bump's row lock, held to
-- the commit, makes a dataset's places commit in order, and a rolled-back
-- transaction gives its places back. So within a dataset the places are
-- 1, 2, 3 ... with no holes, and a receiver that has place N knows whether it
-- misses one.
--
-- The old numbers stay what they were (increasing per dataset, with holes),
-- and every dataset continues above the last value the old sequence gave, so
-- an id a client holds from before the upgrade (a file event's too) is never
-- above the places that follow it.
ALTER TABLE datasets ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

DO $$
DECLARE
    s text := pg_get_serial_sequence('run_events', 'seq');
    last bigint;
BEGIN
    IF s IS NOT NULL THEN
        EXECUTE format('SELECT last_value FROM %s', s) INTO last;
        UPDATE datasets SET event_seq = last;
        ALTER TABLE run_events ALTER COLUMN seq DROP DEFAULT;
        EXECUTE format('DROP SEQUENCE %s', s);
    END IF;
END
$$;

-- A place is unique per dataset only; the replay reads (dataset_id, seq).
ALTER TABLE run_events DROP CONSTRAINT run_events_pkey;
DROP INDEX run_events_dataset;
ALTER TABLE run_events ADD CONSTRAINT run_events_pkey PRIMARY KEY (dataset_id, seq);
