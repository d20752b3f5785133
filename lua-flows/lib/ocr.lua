-- ocr.lua — self-hosted OCR (tesseract by default) of images and scanned PDFs.
--
--   local text, tool = ocr.extract(file)     -- or nil, err, detail
--       -- tool: the OCR program's name ("tesseract"), provenance.extractor
--
-- The command comes from the config (services.ocr.command, default
-- {"tesseract", "{input}", "stdout"}): "{input}" is replaced by the image's
-- path and the command must print the text on stdout. Images are OCRed as
-- they are; PDFs are first rasterised page by page with pdftoppm (the first
-- MAX_PAGES pages at 200 dpi, tesseract's sweet spot for body text, as
-- grayscale TIFF: the configured command gets a .tif for each page) and the
-- pages' texts joined with form feeds, as pdftotext separates pages.
--
-- Untrusted input: an image is checked against limits.max_image_pixels by its
-- header before tesseract decodes it, and a PDF page is rasterised at a lower
-- resolution when 200 dpi would exceed that cap (image.lua); both fail with
-- the permanent "too_large" when they cannot fit.
--
-- Errors: "not_configured" (no ocr section), "unavailable" (the OCR command is
-- not installed: OCR is down, transient — the run falls back to Textract or
-- waits), "timeout", "bad_input" (a damaged file; the tool's message is the
-- detail), "no_text" (OCR read nothing), "unsupported".

local text = require "text"
local image = require "image"

local M = {}

local DEFAULT_COMMAND = { "tesseract", "{input}", "stdout" }
local MAX_PAGES = 5 -- OCR of a page costs seconds: a record needs the first pages
local DPI = 200
local PDF_TOOL_TIMEOUT = 60

-- The configured argv with "{input}" replaced by `path` (in any argument, so
-- {"ocr", "--in={input}"} works too).
local function command_for(svc, path)
  local template = DEFAULT_COMMAND
  if type(svc.command) == "table" and #svc.command > 0 then
    template = svc.command
  end
  local argv = {}
  for i, a in ipairs(template) do
    local s, e = a:find("{input}", 1, true)
    if s then
      a = a:sub(1, s - 1) .. path .. a:sub(e + 1)
    end
    argv[i] = a
  end
  return argv
end

-- OCR of one image file: its text (possibly blank), or nil, err, detail.
local function ocr_image(svc, path)
  local ok, cerr, cdetail = image.check("ocr", path)
  if not ok then
    return nil, cerr, cdetail
  end
  local res, err, detail = text.exec("ocr", {
    argv = command_for(svc, path),
    input = path,
    service = "ocr", -- the service's timeout, concurrency cap and circuit breaker
  })
  if not res then
    return nil, err, detail
  end
  return res.stdout or ""
end

-- The number of pages of a PDF, from pdfinfo's "Pages: N" line, and the
-- sizes in points of the first MAX_PAGES ("Page    1 size:  612 x 792 pts").
local function pdf_pages(path)
  local res, err, detail = text.exec("ocr", {
    argv = { "pdfinfo", "-f", "1", "-l", tostring(MAX_PAGES), path },
    input = path,
    timeout = PDF_TOOL_TIMEOUT,
  })
  if not res then
    return nil, err, detail -- a damaged PDF: bad_input with poppler's message
  end
  local n = tonumber((res.stdout or ""):match("\nPages:%s*(%d+)") or
    (res.stdout or ""):match("^Pages:%s*(%d+)"))
  if not n or n < 1 then
    return text.fail("ocr", "bad_input", "pdfinfo found no pages")
  end
  local sizes = {}
  for p, w, h in (res.stdout or ""):gmatch("Page%s+(%d+) size:%s*([%d.]+) x ([%d.]+)") do
    sizes[tonumber(p)] = { tonumber(w), tonumber(h) }
  end
  return n, sizes
end

-- OCR of the first pages of a PDF.
local function ocr_pdf(svc, file)
  local pages, sizes, detail = pdf_pages(file.path)
  if not pages then
    return nil, sizes, detail
  end
  local dir = sl.tmpdir()
  local texts = {}
  -- Every page is rendered to the same file, so a run holds one page on disk.
  local prefix = text.join(dir, "ocr-page")
  for page = 1, math.min(pages, MAX_PAGES) do
    -- One pdftoppm call per page with -singlefile: the output is exactly
    -- <prefix>.tif. Without it pdftoppm zero-pads the page number to the
    -- width of the page count (page-1.tif, page-01.tif, page-001.tif), a
    -- name we would have to guess. Grayscale (what tesseract reads anyway)
    -- and uncompressed TIFF: poppler's PNG encoder took 9-12 s for a scanned
    -- letter-size page at 200 dpi, the TIFF 0.3 s (~10 MB, one page at a time).
    local size = sizes[page] or {}
    local dpi, derr, ddetail = image.pdf_dpi("ocr", size[1], size[2], DPI)
    if not dpi then
      return nil, derr, ddetail
    end
    local res, perr, pdetail = text.exec("ocr", {
      argv = { "pdftoppm", "-r", tostring(dpi), "-tiff", "-gray", "-f", tostring(page), "-l",
        tostring(page), "-singlefile", file.path, prefix },
      input = file.path,
      timeout = PDF_TOOL_TIMEOUT,
    })
    if not res then
      return nil, perr, pdetail
    end
    local t, oerr, odetail = ocr_image(svc, prefix .. ".tif")
    if not t then
      return nil, oerr, odetail
    end
    texts[#texts + 1] = t
  end
  return table.concat(texts, "\f")
end

-- The OCR program's name: the configured command's first word, without its
-- directory ("/usr/bin/tesseract" -> "tesseract").
local function tool_name(svc)
  local argv0 = command_for(svc, "")[1] or DEFAULT_COMMAND[1]
  return argv0:match("([^/]+)$") or argv0
end

--- The OCR text of an image or a PDF and the OCR program's name, or nil,
--- err, detail. Never blank.
function M.extract(file)
  local svc = sl.service("ocr")
  if not (svc and svc.configured) then
    return nil, "not_configured"
  end
  if (file.size or 0) == 0 then
    return nil, "no_text"
  end
  local t, err, detail
  if text.is_pdf(file.mime) then
    t, err, detail = ocr_pdf(svc, file)
  elseif text.is_image(file.mime) then
    t, err, detail = ocr_image(svc, file.path)
  elseif text.is_text(file.mime) then
    return nil, "no_text" -- a text file with no text: nothing to look at
  else
    return text.fail("ocr", "unsupported", "cannot OCR " .. tostring(file.mime))
  end
  if not t then
    return nil, err, detail
  end
  if text.is_blank(t) then
    return nil, "no_text"
  end
  return text.to_utf8(t), tool_name(svc)
end

return M
