-- 018_artifact_inline: a small artifact's bytes live in its row.
--
-- sl.artifact{data = ..., mime = ...} of at most SL_ARTIFACT_INLINE_MAX bytes
-- (actors/flow_effects.h, 32 KiB: the text a step extracted, mostly) writes
-- them to artifacts.data with the row, in the row's one statement, instead of
-- a blob in the store: no file to create, fsync and rename, no directory per
-- run to make and fsync, and no read through the store when a later step or a
-- download reads it back. The bytes are durable when the row is, which is
-- what a blob plus its row had to arrange with two fsyncs before the row
-- (docs/internals/storage.md "Small artifacts in their row"). Larger ones and
-- those given as a path stay in the store, as before.
--
-- Exactly one of storage_key and data says where the bytes are. NOT VALID:
-- every row before this migration has a key and no data, and checking that
-- would read the whole table under the lock the ALTER holds.
ALTER TABLE artifacts ADD COLUMN data bytea;
ALTER TABLE artifacts ALTER COLUMN storage_key DROP NOT NULL;
ALTER TABLE artifacts ADD CONSTRAINT artifacts_bytes_somewhere
    CHECK ((storage_key IS NULL) <> (data IS NULL)) NOT VALID;
