-- thumbnail.lua — a small JPEG for lists and tables: 256 pixels on the long side.
--
--   local id = thumbnail.make(file, ctx) -- the artifact id, or nil, err, detail
--
-- Images: libvips' `vips thumbnail` straight from the file (it shrinks while
-- decoding, so even a huge photo costs little), never enlarging a small one.
-- PDFs: vips cannot be relied on to render PDFs (that depends on how libvips
-- was built), so poppler's pdftoppm first renders page 1 at 512 pixels — twice
-- the final size, for a sharp downscale — and vips makes the JPEG from that.
-- Office documents: the PDF LibreOffice made for the preview (office.lua),
-- then as a PDF; without soffice, true, "no_preview", detail (as preview.lua).
-- The JPEG is stored as this run's "thumbnail" artifact. An image over
-- limits.max_image_pixels is refused by its header ("too_large", image.lua).

local text = require "text"
local image = require "image"
local office = require "office"

local M = {}

local SIZE = "256"
local RENDER_SIZE = "512"
local TIMEOUT = 60

--- Renders and stores the thumbnail; returns the artifact id or nil, err, detail.
function M.make(file, ctx)
  local dir = sl.tmpdir()
  local out = text.join(dir, "thumb.jpg")
  local src = file.path
  local pdf = text.is_pdf(file.mime) and file.path or nil
  if office.kind(file.mime) then
    local perr, pdetail
    pdf, perr, pdetail = office.to_pdf("thumbnail", file, ctx)
    if not pdf then
      if perr == "no_converter" then
        return true, "no_preview", pdetail
      end
      return nil, perr, pdetail
    end
  end
  if pdf then
    local prefix = text.join(dir, "thumb-page")
    local res, err, detail = text.exec("thumbnail", {
      argv = { "pdftoppm", "-png", "-f", "1", "-l", "1", "-scale-to", RENDER_SIZE,
        "-singlefile", pdf, prefix },
      input = pdf,
      timeout = TIMEOUT,
    })
    if not res then
      return nil, err, detail -- truncated.pdf ends here: bad_input, poppler's message
    end
    src = prefix .. ".png"
  elseif not text.is_image(file.mime) then
    return text.fail("thumbnail", "unsupported", "no thumbnail for " .. tostring(file.mime))
  else
    -- the declared size first: a decompression bomb is too_large here
    local ok, cerr, cdetail = image.check("thumbnail", src)
    if not ok then
      return nil, cerr, cdetail
    end
  end
  local res, err, detail = text.exec("thumbnail", {
    argv = { "vips", "thumbnail", src, out, SIZE, "--size", "down" },
    input = src,
    timeout = TIMEOUT,
  })
  if not res then
    return nil, err, detail
  end
  return sl.artifact { kind = "thumbnail", mime = "image/jpeg", path = out }
end

return M
