-- image.lua — size checks before a decoder sees an untrusted image or page.
--
--   local ok, err, detail = image.check("ocr", path)   -- true, or nil, err, detail
--   local dpi, err, detail = image.pdf_dpi("ocr", page_w_pts, page_h_pts, 200)
--
-- A decompression bomb is a small file that declares a huge image: a PNG of a
-- few kilobytes can claim 50000 x 50000 pixels (7.5 GB decoded). The tools run
-- under memory and CPU limits (sl.exec), but failing there costs a process,
-- seconds and a vague "killed by signal". So the declared size is read first
-- (sl.image_info parses PNG, JPEG, GIF, WebP, TIFF and BMP headers without
-- decoding; other formats ask `vipsheader`, itself confined) and anything over
-- limits.max_image_pixels (sl.max_image_pixels; 0: no cap) fails with the
-- permanent "too_large" and a detail naming the size and the cap.

local text = require "text"

local M = {}

local HEADER_TIMEOUT = 20
local MIN_DPI = 30 -- below this a page's text is unreadable: refuse rather than OCR noise

local function cap()
  return sl.max_image_pixels or 0
end

local function over(what, w, h, limit)
  return text.fail(what, "too_large", string.format(
    "image is %dx%d (%d pixels), over limits.max_image_pixels (%d)", w, h, w * h, limit))
end

-- Width and height from vipsheader ("path: 640x480 uchar, 3 bands, ..."), for
-- the formats sl.image_info does not parse (HEIF, JPEG 2000, ...).
local function vips_size(what, path)
  local res, err, detail = text.exec(what, {
    argv = { "vipsheader", path }, input = path, timeout = HEADER_TIMEOUT,
  })
  if not res then
    return nil, err, detail
  end
  local w, h = (res.stdout or ""):match(":%s*(%d+)x(%d+)")
  if not w then
    return text.fail(what, "bad_input", "vipsheader printed no size")
  end
  return tonumber(w), tonumber(h)
end

--- true when the image at path may be decoded; else nil, err, detail
--- ("too_large", "bad_input" for a damaged header, or what vipsheader met).
function M.check(what, path)
  local limit = cap()
  if limit <= 0 then
    return true
  end
  local info, err = sl.image_info(path)
  local w, h
  if info then
    w, h = info.width, info.height
  elseif err == "unsupported" then
    local detail
    w, h, detail = vips_size(what, path)
    if not w then
      return nil, h, detail
    end
  elseif err == "bad_input" then
    return text.fail(what, "bad_input", "damaged image header")
  else
    return text.fail(what, "unavailable", "cannot read the image: " .. tostring(err))
  end
  if w * h > limit then
    return over(what, w, h, limit)
  end
  return true
end

--- The resolution to rasterise a page of w x h points (1/72 inch) at: `dpi`,
--- or less so the page stays within the pixel cap; nil, "too_large", detail
--- when even MIN_DPI would be over it.
function M.pdf_dpi(what, w_pts, h_pts, dpi)
  local limit = cap()
  if limit <= 0 or not w_pts or not h_pts or w_pts <= 0 or h_pts <= 0 then
    return dpi
  end
  local function pixels(d)
    return math.ceil(w_pts / 72 * d) * math.ceil(h_pts / 72 * d)
  end
  if pixels(dpi) <= limit then
    return dpi
  end
  local fit = math.floor(72 * math.sqrt(limit / (w_pts * h_pts)))
  while fit >= MIN_DPI and pixels(fit) > limit do
    fit = fit - 1
  end
  if fit < MIN_DPI then
    return text.fail(what, "too_large", string.format(
      "page is %.0fx%.0f pts: %d pixels at %d dpi, over limits.max_image_pixels (%d)",
      w_pts, h_pts, pixels(MIN_DPI), MIN_DPI, limit))
  end
  return fit
end

return M
