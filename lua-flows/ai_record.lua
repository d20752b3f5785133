-- ai_record.lua — a file's text, then a dataset record made from it.
--
--   tika ──fail──> ocr ──fail──> textract
--    │              │              │
--    └──ok──────────┴──ok──────────┴──ok──> record
--
-- Three ways to get text, cheapest first: the file's own text (Apache Tika,
-- or the local text layer when no Tika is configured: pdftotext, text files,
-- Office documents through unzip), then self-hosted OCR
-- (tesseract), then Amazon Textract. The first that finds text stores it as
-- this run's "text" artifact and goes to `record`, which turns the text into
-- the dataset's record (OpenAI when configured, else the local extractor).
--
-- How failures travel (docs/flows.md): a step returns nil, "word". Transient
-- words (timeout, unavailable, server_error, rate_limited, ...) are retried by
-- the runtime first; then the step's `fallback` runs. When `textract` fails
-- too, the run fails if every failure in the chain was permanent (a damaged
-- PDF), or waits and tries again later if one was transient (every service
-- down).
--
-- A file with no text at all (a photo) is not a failure: the run ends
-- succeeded with the note "no_text" and no record (`return true, "no_text",
-- detail` — the note shows on the run and in its timeline).
--
-- To write a flow like this one: keep each step small, put service calls in
-- lua-flows/lib/ modules, keep big data out of `ctx` (it is saved at every
-- transition) — store it as an artifact and read it back in a later step.

local tika = require "tika"
local ocr = require "ocr"
local textract = require "textract"
local openai = require "openai"
local local_extract = require "local_extract"
local schema = require "schema"
local text = require "text"

-- Stores the text a step found and says where it came from. Both calls are
-- idempotent (one artifact per run and kind, one text_source per file), so a
-- step that runs twice after a crash does no harm. Either can fail (the
-- database went away): the step fails with that error ("unavailable" is
-- transient, so the step is retried) rather than go on without its text.
-- `extractor` (what read the text: "tika", "pdftotext", "tesseract", ...)
-- waits in ctx for the record's provenance.
local function keep_text(ctx, txt, source, extractor)
  if text.is_blank(txt) then
    return nil, "no_text"
  end
  local ok, err = sl.artifact { kind = "text", mime = "text/plain; charset=utf-8", data = txt }
  if not ok then
    return nil, err, "could not store the text"
  end
  ok, err = sl.set_text_source(source)
  if not ok then
    return nil, err, "could not record the text source"
  end
  -- Only small facts go in ctx: later steps read the text back from the artifact.
  ctx.text_source = source
  ctx.extractor = extractor
  ctx.text_bytes = #txt
  ctx.text_error = nil
  ctx.text_detail = nil
  return true
end

-- Remembers why a text step failed, for `textract` to report when it cannot
-- even try (see there), and passes the failure on. A later step that cannot
-- read this type at all ("unsupported": OCR of a DOCX) does not replace the
-- earlier reason: a damaged DOCX fails with tika's "bad_input", not with
-- ocr's "unsupported".
local function failed(ctx, err, detail)
  if not (err == "unsupported" and ctx.text_error) then
    ctx.text_error = err
    ctx.text_detail = detail
  end
  return nil, err, detail
end

return flow {
  start = "tika",
  steps = {
    -- 1. The file's own text: Tika, or the local text layer (pdftotext, or
    --    the bytes of a text file). Nothing for scans and photos: "no_text".
    tika = {
      run = function(ctx, file)
        local txt, source_or_err, detail = tika.extract(file)
        if not txt then
          return failed(ctx, source_or_err, detail)
        end
        -- "tika" or "text_layer"; on success the third value is the extractor
        return keep_text(ctx, txt, source_or_err, detail or source_or_err)
      end,
      timeout = 120,
      next = "record",
      fallback = "ocr",
    },

    -- 2. Self-hosted OCR of images and scanned PDFs.
    ocr = {
      run = function(ctx, file)
        local txt, err_or_tool, detail = ocr.extract(file)
        if not txt then
          return failed(ctx, err_or_tool, detail)
        end
        return keep_text(ctx, txt, "ocr", err_or_tool or "ocr")
      end,
      timeout = 300, -- up to five pages of tesseract
      next = "record",
      fallback = "textract",
    },

    -- 3. Amazon Textract: the last resort, and the only one that costs money.
    textract = {
      run = function(ctx, file)
        local txt, err, detail = textract.extract(file)
        if not txt then
          if err == "no_text" or ((err == "not_configured" or err == "unsupported")
              and ctx.text_error == "no_text") then
            -- Nothing went wrong: the file has no text. Done, without a record.
            ctx.no_text = true
            return true, "no_text", err == "no_text" and "no text found by any extractor"
              or ("no text found (textract " .. (err == "unsupported"
                and ("cannot read it: " .. (detail or "this type") .. ")")
                or "not configured)"))
          end
          if (err == "not_configured" or err == "unsupported") and ctx.text_error then
            -- No Textract to ask: the run's error is why the other steps
            -- found nothing ("no_text" for a photo, "bad_input" for a
            -- damaged PDF), which tells the user more than "not_configured".
            -- A transient earlier failure stays transient: the run waits. The
            -- same when Textract cannot read this type (a DOCX).
            return nil, ctx.text_error, "textract " ..
              (err == "unsupported" and ("cannot read it: " .. (detail or "this type"))
                or "not configured") ..
              "; earlier: " .. ctx.text_error ..
              (ctx.text_detail and (": " .. ctx.text_detail) or "")
          end
          return failed(ctx, err, detail)
        end
        return keep_text(ctx, txt, "textract", "textract")
      end,
      timeout = 720, -- a multi-page document's asynchronous job: up to 10 min of polling
      next = "record",
    },

    -- 4. The dataset record, from the text stored by the step before.
    record = {
      run = function(ctx, file)
        if ctx.no_text then
          return true, "no_text", "the file has no text, so no record"
        end
        local txt, rerr = sl.read_artifact("text")
        if txt == nil and rerr ~= "not_found" then
          return nil, rerr, "could not read the text" -- e.g. "unavailable": retried
        end
        if text.is_blank(txt) then
          return true, "no_text", "the text is blank, so no record"
        end
        -- The dataset's record_schema says which fields the record has.
        local record_schema = type(file.schema) == "table" and file.schema or schema.DEFAULT
        local rec, err, detail
        local model = "local" -- the built-in extractor
        if sl.service("openai").configured then
          rec, err, detail = openai.extract(txt, record_schema)
          model = err -- on success: the model asked
          ctx.record_by = "openai"
        else
          rec = local_extract.extract(txt, record_schema)
          ctx.record_by = "local"
        end
        if not rec then
          return nil, err, detail
        end
        -- A new version of the file's record for this run (a step that runs
        -- again in the same run replaces its own version). run_id, pipeline,
        -- flow_version and text_source are filled in by the runtime.
        local ok, werr = sl.record(rec, { extractor = ctx.extractor, model = model })
        if not ok then
          return nil, werr, "could not store the record"
        end
        return true
      end,
      timeout = 120,
    },
  },
}
