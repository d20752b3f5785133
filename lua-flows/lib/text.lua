-- text.lua — small helpers shared by the flows' service modules.
--
-- Two kinds of helper live here:
--   * pure string functions (trim, blank checks, UTF-8 safe truncation, MIME
--     tests) that the unit tests in tests/lua/ run under plain lua5.4;
--   * thin wrappers over sl.exec / sl.http.request results that turn what a
--     tool or a server answered into the short error words of docs/flows.md
--     ("bad_input", "server_error", "rate_limited", ...), so every module maps
--     failures the same way and the runtime's transient/permanent split works.
--
-- Functions that touch `sl` look it up when called, never at load time, so the
-- pure ones work without a runtime.

local M = {}

-- ---------------------------------------------------------------- strings

--- The string without leading and trailing whitespace.
function M.trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

--- True when s is nil, empty, or only whitespace (pdftotext prints a lone form
--- feed for a page without a text layer: that is blank too).
function M.is_blank(s)
  return s == nil or not s:find("%S")
end

--- Runs of whitespace collapsed to one space, trimmed (pdftotext -layout pads
--- columns with many spaces).
function M.squeeze(s)
  return M.trim((s:gsub("%s+", " ")))
end

--- s cut to at most max_bytes bytes without splitting a UTF-8 sequence.
function M.truncate_utf8(s, max_bytes)
  if #s <= max_bytes then
    return s
  end
  local cut = max_bytes
  -- Step back over continuation bytes (10xxxxxx) to a character start, and
  -- cut before that character: it may not fit whole.
  while cut > 0 do
    local b = s:byte(cut + 1)
    if b == nil or b < 0x80 or b >= 0xC0 then
      break
    end
    cut = cut - 1
  end
  return s:sub(1, cut)
end

--- s as valid UTF-8: returned unchanged when it already is, else read as
--- Latin-1 (the usual encoding of "plain text" that is not UTF-8) and
--- converted, so a text artifact labelled charset=utf-8 never lies.
function M.to_utf8(s)
  if utf8.len(s) then
    return s
  end
  -- Latin-1 byte N is code point N: only bytes >= 0x80 change.
  return (s:gsub("[\128-\255]", function(c)
    return utf8.char(c:byte())
  end))
end

--- The lines of s (without their end-of-line characters), as an array.
function M.lines(s)
  local out = {}
  for line in (s .. "\n"):gmatch("(.-)\r?\n") do
    out[#out + 1] = line
  end
  return out
end

-- ---------------------------------------------------------------- MIME types

--- The MIME type without parameters, lowercased: "Text/Plain; charset=x" -> "text/plain".
function M.base_mime(mime)
  if type(mime) ~= "string" then
    return ""
  end
  return M.trim((mime:match("^[^;]*"))):lower()
end

function M.is_pdf(mime)
  return M.base_mime(mime) == "application/pdf"
end

function M.is_image(mime)
  return M.base_mime(mime):sub(1, 6) == "image/"
end

-- Types whose bytes are the text (read as they are). JSON/XML/CSV sometimes
-- come with an application/ type.
local TEXTUAL = {
  ["application/json"] = true,
  ["application/xml"] = true,
  ["application/csv"] = true,
}

function M.is_text(mime)
  local m = M.base_mime(mime)
  return m:sub(1, 5) == "text/" or TEXTUAL[m] == true
end

-- ---------------------------------------------------------------- paths

--- dir .. "/" .. name, without doubling the slash.
function M.join(dir, name)
  if dir:sub(-1) == "/" then
    return dir .. name
  end
  return dir .. "/" .. name
end

--- A base URL without its trailing slashes ("http://h:1/v1/" -> "http://h:1/v1").
function M.strip_slash(url)
  return (url:gsub("/+$", ""))
end

-- ---------------------------------------------------------------- JSON

--- The value of JSON text s, or nil when s is not JSON (whether the
--- runtime's decoder raises or returns nil, err on bad input).
function M.decode_json(s)
  if type(s) ~= "string" then
    return nil
  end
  local ok, v = pcall(sl.json.decode, s)
  if ok then
    return v
  end
  return nil
end

-- ---------------------------------------------------------------- failures

--- Logs why a call failed and returns nil, err, detail — the shape a step's
--- run() returns. `what` names the module ("ocr", "tika"...).
function M.fail(what, err, detail, fields)
  local f = { module = what, error = err }
  if detail then
    f.detail = detail
  end
  for k, v in pairs(fields or {}) do
    f[k] = v
  end
  sl.log("warn", what .. ": " .. err .. (detail and (": " .. detail) or ""), f)
  return nil, err, detail
end

--- The first few lines of a tool's stderr, for a log line or a timeline detail.
function M.short(s, max)
  if s == nil then
    return nil
  end
  s = M.trim(s)
  if s == "" then
    return nil
  end
  return M.truncate_utf8(s, max or 300)
end

--- Runs a command with sl.exec and maps the outcome:
---   command not installed       -> "unavailable" (transient: the tool may be
---                                  installed, the path fixed, the run waits)
---   timeout / circuit_open      -> passed through (transient)
---   a confinement limit hit     -> "too_large" (CPU seconds or file size of
---                                  exec.*: this file needs more than a tool
---                                  may take; retrying will not help)
---   killed by another signal    -> "bad_input" (e.g. out of address space:
---                                  this file, not the service)
---   exit status != 0            -> "bad_input", with stderr as the detail
--- Returns the result table {status, signal, stdout, stderr} on exit 0.
function M.exec(what, spec)
  local res, err, why = sl.exec(spec)
  if not res then
    if err == "not_found" then
      return M.fail(what, "unavailable", spec.argv[1] .. " not found")
    end
    return M.fail(what, err or "unavailable", spec.argv[1] .. (why and (": " .. why) or ""))
  end
  if res.limit then
    return M.fail(what, "too_large", spec.argv[1] .. " exceeded its " .. res.limit .. " limit",
      { stderr = M.short(res.stderr) })
  end
  if res.signal ~= nil and res.signal ~= 0 and res.signal ~= false then
    return M.fail(what, "bad_input", spec.argv[1] .. " killed by signal " .. tostring(res.signal),
      { stderr = M.short(res.stderr) })
  end
  if res.status ~= 0 then
    local detail = spec.argv[1] .. " exited " .. tostring(res.status)
    local why2 = M.short(res.stderr, 200)
    if why2 then
      detail = detail .. ": " .. why2
    end
    return M.fail(what, "bad_input", detail)
  end
  return res
end

--- The error word for an HTTP answer that is not a success:
---   429 -> rate_limited, 5xx -> server_error, 408 -> timeout (transient);
---   401/403 -> unauthorized, 413 -> too_large, other 4xx -> bad_input.
function M.http_error_word(status)
  if status == 429 then
    return "rate_limited"
  elseif status >= 500 then
    return "server_error"
  elseif status == 408 then
    return "timeout"
  elseif status == 401 or status == 403 then
    return "unauthorized"
  elseif status == 413 then
    return "too_large"
  end
  return "bad_input"
end

--- Logs and returns nil, word, detail for a non-success HTTP answer.
function M.http_fail(what, res)
  local word = M.http_error_word(res.status)
  local fields = { status = res.status }
  local ra = res.headers and res.headers["retry-after"]
  if ra then
    -- The runtime honours it (the service is held back on every instance
    -- until it has passed, and the run waits); logged for the operator too.
    fields.retry_after = ra
  end
  return M.fail(what, word, "HTTP " .. tostring(res.status) .. (M.short(res.body, 200) and
    (": " .. M.short(res.body, 200)) or ""), fields)
end

return M
