-- bench/flows/steps.lua — ai_record's shape (a text step, then a record
-- step: 6 transitions per run) with its work switched on level by level, for
-- `bench/flow_bench.py --flow bench/flows/steps.lua --level N`:
--   0  no I/O at all: the engine's own machinery (claim, actors, commits)
--   1  + the Tika call (tika.extract: the stand-in's HTTP answer)
--   2  + sl.artifact (the text's blob and row) and sl.set_text_source
--   3  + read the text back, the local extractor and sl.record (ai_record's work)
-- The bench writes a copy of this file with LEVEL set and runs that.
local tika = require "tika"
local local_extract = require "local_extract"
local schema = require "schema"
local LEVEL = 3 -- replaced by the bench

return flow {
  start = "text",
  steps = {
    text = {
      run = function(ctx, file)
        if LEVEL < 1 then
          ctx.text_bytes = 0
          return true
        end
        local txt, src, detail = tika.extract(file)
        if not txt then
          return nil, src, detail
        end
        if LEVEL >= 2 then
          local ok, err = sl.artifact { kind = "text", mime = "text/plain; charset=utf-8", data = txt }
          if not ok then
            return nil, err
          end
          ok, err = sl.set_text_source(src)
          if not ok then
            return nil, err
          end
        end
        ctx.extractor = detail or src
        ctx.text_bytes = #txt
        return true
      end,
      next = "record",
    },
    record = {
      run = function(ctx, file)
        if LEVEL < 3 then
          return true
        end
        local txt = sl.read_artifact("text")
        local rec = local_extract.extract(txt, type(file.schema) == "table" and file.schema
          or schema.DEFAULT)
        local ok, err = sl.record(rec, { extractor = ctx.extractor, model = "local" })
        if not ok then
          return nil, err
        end
        return true
      end,
    },
  },
}
