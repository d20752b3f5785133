-- 016_hot_updates: room on each page of runs and datasets for HOT updates
-- (issue 10, docs/internals/scheduler.md "The whole engine, stop 21").
--
-- Most transitions of a run keep it 'running' under the same lease: no
-- indexed column of runs changes, so Postgres can update the row in place on
-- its page (a heap-only tuple) and touch none of runs' ten indexes; so can
-- the places' bump of datasets.event_seq. But a HOT update needs free space on
-- the row's page, and at the default fillfactor (100) the pages are full. The
-- free space applies to pages written from now on (and to existing ones as
-- they are rewritten).
ALTER TABLE runs SET (fillfactor = 70);
ALTER TABLE datasets SET (fillfactor = 50);
