-- preview.lua — the in-app preview of a document or an image: one PNG.
--
--   local id = preview.make(file, ctx) -- the artifact id, or nil, err, detail
--                                      -- (true, "no_preview", detail: see below)
--
-- PDFs: the first page rendered by poppler's pdftoppm, its long side 1024
-- pixels (-scale-to rather than a fixed dpi, so a poster-sized page cannot
-- turn into a gigapixel image). Images: libvips' `vips thumbnail`, which
-- shrinks while decoding (fast and small in memory even for huge photos),
-- to 1024 pixels on the long side, never enlarging a smaller image.
-- Office documents (DOCX, XLSX, PPTX, ODT/ODS/ODP): converted to PDF by
-- LibreOffice (office.lua; `soffice` is optional), then page 1 as for a PDF.
-- Without soffice the step succeeds with the note "no_preview" and says why:
-- nothing failed, there is just no converter on this machine.
-- Other types have no preview ("unsupported"). An image over
-- limits.max_image_pixels is refused by its header ("too_large", image.lua).
--
-- The PNG is stored as this run's "preview" artifact; a retried step
-- replaces it (sl.artifact keeps one per run and kind).

local text = require "text"
local image = require "image"
local office = require "office"

local M = {}

local SIZE = "1024"
local TIMEOUT = 60

--- Renders and stores the preview; returns the artifact id or nil, err, detail.
function M.make(file, ctx)
  local out = text.join(sl.tmpdir(), "preview.png")
  local argv
  local input = file.path
  if office.kind(file.mime) then
    local pdf, perr, pdetail = office.to_pdf("preview", file, ctx)
    if not pdf then
      if perr == "no_converter" then
        return true, "no_preview", pdetail
      end
      return nil, perr, pdetail
    end
    input = pdf
    argv = { "pdftoppm", "-png", "-f", "1", "-l", "1", "-scale-to", SIZE, "-singlefile",
      pdf, out:sub(1, -5) }
  elseif text.is_pdf(file.mime) then
    -- -singlefile: write <prefix>.png, without a page number in the name.
    argv = { "pdftoppm", "-png", "-f", "1", "-l", "1", "-scale-to", SIZE, "-singlefile",
      file.path, out:sub(1, -5) }
  elseif text.is_image(file.mime) then
    -- the declared size first: a decompression bomb is too_large here
    local ok, cerr, cdetail = image.check("preview", file.path)
    if not ok then
      return nil, cerr, cdetail
    end
    argv = { "vips", "thumbnail", file.path, out, SIZE, "--size", "down" }
  else
    return text.fail("preview", "unsupported", "no preview for " .. tostring(file.mime))
  end
  -- A damaged file makes the tool exit non-zero: bad_input, with its message.
  local res, err, detail = text.exec("preview", { argv = argv, input = input,
    timeout = TIMEOUT })
  if not res then
    return nil, err, detail
  end
  return sl.artifact { kind = "preview", mime = "image/png", path = out }
end

return M
