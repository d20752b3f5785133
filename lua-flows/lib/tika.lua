-- tika.lua — a file's own text: Apache Tika when configured, else the local text layer.
--
--   local text, source, extractor = tika.extract(file)
--       -- source "tika" or "text_layer"; extractor: what read it ("tika",
--       -- "pdftotext", "plain_text": a text file as it is), the record's
--       -- provenance.extractor
--   local nil_, err, detail = ...              -- on failure
--
-- With `services.tika.url` set, the file is sent to Tika's plain-text
-- endpoint (PUT {url}/tika, the bytes as the body; Tika answers the text).
-- Without it (API.md: "without tika, the tika step reads the file's own text
-- layer"), PDFs go through poppler's pdftotext and text files are read as
-- they are, and Office documents (DOCX, XLSX, PPTX, ODT/ODS/ODP) are read by
-- office.lua (unzip and a walk over their XML; docs/flows.md "Office
-- documents"). With Tika, Office documents go to it like any other file (the
-- Content-Type is the type libmagic sniffed). Neither path does OCR: a scan or
-- a photo has no text here, and the flow falls back to the ocr step.
--
-- Errors: "no_text" (nothing readable), "bad_input" (a damaged file, a 4xx
-- from Tika), "unsupported" (a type with no text layer we can read), and the
-- transient "server_error" / "rate_limited" / "timeout" / "unavailable".

local text = require "text"
local office = require "office"

local M = {}

-- Tika's answer is the document's text; anything bigger is not worth keeping
-- in a step's memory (the step's budget is 64 MiB by default).
local MAX_TEXT_BYTES = 32 * 1024 * 1024

-- pdftotext on a big PDF can take a while, but never minutes.
local PDFTOTEXT_TIMEOUT = 60

-- Through the Tika server: PUT {url}/tika.
local function via_tika(file, svc)
  local res, err = sl.http.request {
    method = "PUT",
    url = text.strip_slash(svc.url) .. "/tika",
    headers = {
      ["Accept"] = "text/plain",
      -- The sniffed type, so Tika does not have to guess (it would, from
      -- the bytes, but a hint is cheaper and matches what we matched on).
      ["Content-Type"] = file.mime or "application/octet-stream",
    },
    body_file = file.path,
    max_bytes = MAX_TEXT_BYTES,
    service = "tika", -- the service's timeout, concurrency cap and circuit breaker
  }
  if not res then
    return text.fail("tika", err or "unavailable")
  end
  -- Real Tika answers 200 with an empty body for a file without text (a
  -- scan, a photo), and 204 on some versions: both mean "no text".
  if res.status == 204 or (res.status == 200 and text.is_blank(res.body)) then
    return nil, "no_text"
  end
  if res.status ~= 200 then
    -- 415 (unsupported type) and 422 (damaged file) are the file's fault.
    return text.http_fail("tika", res)
  end
  return text.to_utf8(res.body), "tika", "tika"
end

-- The local text layer: pdftotext for PDFs, the bytes themselves for text.
local function via_text_layer(file)
  if text.is_pdf(file.mime) then
    -- -layout keeps table columns apart ("Qty Price" stays readable);
    -- "-" writes to stdout. A damaged PDF makes pdftotext exit 1 with
    -- "Syntax Error: ..." on stderr: text.exec turns that into bad_input
    -- with the message as the detail.
    local res, err, detail = text.exec("tika", {
      argv = { "pdftotext", "-layout", "-enc", "UTF-8", file.path, "-" },
      timeout = PDFTOTEXT_TIMEOUT,
    })
    if not res then
      return nil, err, detail
    end
    if text.is_blank(res.stdout) then
      return nil, "no_text" -- a scan wrapped in a PDF: OCR's job
    end
    return text.to_utf8(res.stdout), "text_layer", "pdftotext"
  elseif text.is_text(file.mime) then
    -- The sandbox has no io library: the runtime's exec reads the file.
    local res, err, detail = text.exec("tika", { argv = { "cat", file.path }, timeout = 30 })
    if not res then
      return nil, err, detail
    end
    if text.is_blank(res.stdout) then
      return nil, "no_text"
    end
    return text.to_utf8(res.stdout), "text_layer", "plain_text"
  elseif office.kind(file.mime) then
    local txt, err, detail = office.extract(file)
    if not txt then
      return nil, err, detail
    end
    if text.is_blank(txt) then
      return nil, "no_text" -- an empty document (or only pictures)
    end
    return txt, "text_layer", "unzip"
  elseif text.is_image(file.mime) then
    return nil, "no_text" -- pixels only: OCR's job
  end
  return text.fail("tika", "unsupported", "no text layer reader for " .. tostring(file.mime))
end

--- The file's text, where it came from ("tika" or "text_layer") and what
--- read it (see the top), or nil, err, detail. Never returns blank text
--- (that is "no_text").
function M.extract(file)
  if (file.size or 0) == 0 then
    return nil, "no_text" -- an empty upload: nothing to ask anyone about
  end
  local svc = sl.service("tika")
  if svc and svc.configured and svc.url then
    return via_tika(file, svc)
  end
  return via_text_layer(file)
end

return M
