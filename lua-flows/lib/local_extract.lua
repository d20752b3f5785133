-- local_extract.lua — the built-in, deterministic record extractor.
--
-- Used by the `record` step when no OpenAI service is configured (API.md:
-- "without openai, the record step uses a built-in deterministic local
-- extractor"). It reads a document's text and fills the dataset's schema by
-- looking at each property's name and type:
--
--   a "Key: value" line whose key is the property name   (any property)
--   title / subject / heading   the first non-empty line
--   *date*                      the first date, as YYYY-MM-DD
--   total / amount / sum ...    the number on the "Total due:" style line
--   *currency*                  the currency next to that total (ISO code)
--   reference / *number* / id   an identifier like INV-2026-0042 or DLV-77813
--   *email*                     the first e-mail address
--
-- then shapes the result to the schema (schema.lua): declared properties
-- only, with their declared types; what it cannot find is left out.
--
-- Same text, same schema -> same record: no randomness, no I/O. Everything
-- here is pure Lua, unit-tested by tests/lua/test_local_extract.lua.
--
-- Linear time, always: a string.find/match with an unanchored pattern is one
-- C call that retries from every start position, so a pattern whose attempt
-- can run on (like "[%w.]+@" over 200 KB of letters) costs quadratic time
-- where no Lua instruction budget fires. So every scan of the whole text is
-- either a plain find, or a pattern that starts with a frontier (%f[...]:
-- attempts begin only at word or number boundaries, each attempt confined to
-- its own run), and the expensive patterns run anchored (^) on a bounded
-- window around a candidate found that way (an "@", a digit, a ":").

local text = require "text"
local schema_lib = require "schema"

local M = {}

-- Bounds the work on huge texts (the instruction budget of a step is finite):
-- what a record needs is near the top of a document.
local MAX_SCAN = 200000
local MAX_VALUE = 500 -- bytes of a string value
local MAX_TITLE = 200

-- ---------------------------------------------------------------- names

-- "Invoice_Number" / "invoice-number" / "Invoice  number" -> "invoice number"
local function norm(s)
  return text.squeeze((s:lower():gsub("[_%-]+", " ")))
end

-- The words of a normalised name, as a set.
local function words(name)
  local set = {}
  for w in name:gmatch("%a+") do
    set[w] = true
  end
  return set
end

local function any_word(set, list)
  for _, w in ipairs(list) do
    if set[w] then
      return true
    end
  end
  return false
end

-- The first non-null type a schema node declares ("string" when none).
local function main_type(node)
  local t = type(node) == "table" and node.type or nil
  if type(t) == "table" then
    for _, ty in ipairs(t) do
      if ty ~= "null" then
        return ty
      end
    end
    return "string"
  end
  return t or "string"
end

-- Which heuristic a property name calls for (nil: only "Key: value" lines).
local function family(name)
  local w = words(name)
  if any_word(w, { "title", "subject", "heading", "headline" }) then
    return "title"
  elseif w.date then
    return "date"
  elseif any_word(w, { "currency" }) then
    return "currency"
  elseif any_word(w, { "email", "mail" }) or name:find("e mail", 1, true) then
    return "email"
  elseif any_word(w, { "total", "amount", "sum", "balance", "price", "cost" }) then
    return "total"
  elseif any_word(w, { "reference", "ref", "invoice", "order", "tracking", "delivery", "document" })
    or name == "id" or name == "number" or name == "no" then
    return "reference"
  end
  return nil
end

-- ---------------------------------------------------------------- values

--- The first number in s as a Lua number. Both "1,234.56" and "1.234,56"
--- read as 1234.56: when both separators appear, the last one is the decimal
--- point; a lone comma followed by exactly three digits groups thousands.
local NUMBER_MAX = 64 -- bytes of a number with its separators; longer is not an amount

function M.parse_number(s)
  if s == nil then
    return nil
  end
  local d = s:find("%d")
  if d == nil then
    return nil
  end
  local neg = d > 1 and s:sub(d - 1, d - 1) == "-" and "-" or ""
  local raw = s:sub(d, d + NUMBER_MAX - 1):match("^%d[%d.,]*")
  raw = raw:gsub("[.,]+$", "")
  local last_dot = raw:match(".*()%.")
  local last_comma = raw:match(".*(),")
  local _, ndots = raw:gsub("%.", "")
  local _, ncommas = raw:gsub(",", "")
  local num
  if last_dot and last_comma then
    if last_dot > last_comma then
      num = raw:gsub(",", "")
    else
      num = raw:gsub("%.", ""):gsub(",", ".")
    end
  elseif last_comma then
    if ncommas == 1 and #raw - last_comma ~= 3 then
      num = raw:gsub(",", ".") -- 12,5 -> 12.5
    else
      num = raw:gsub(",", "") -- 1,234 / 1,234,567
    end
  elseif last_dot then
    if ndots > 1 then
      num = raw:gsub("%.", "") -- 1.234.567
    else
      num = raw
    end
  else
    num = raw
  end
  local n = tonumber(num)
  if n ~= nil and neg == "-" then
    n = -n
  end
  return n
end

local MONTHS = {
  january = 1, february = 2, march = 3, april = 4, may = 5, june = 6, july = 7,
  august = 8, september = 9, october = 10, november = 11, december = 12,
  jan = 1, feb = 2, mar = 3, apr = 4, jun = 6, jul = 7, aug = 8, sep = 9, sept = 9,
  oct = 10, nov = 11, dec = 12,
}

local DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function iso(y, m, d)
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if not (y and m and d) or m < 1 or m > 12 or d < 1 or d > DAYS[m] or y < 1000 then
    return nil
  end
  return string.format("%04d-%02d-%02d", y, m, d)
end

-- A finder returns the position and ISO date of the first valid date of its
-- format at or after `init`, or nil. `to_iso` turns the pattern's captures
-- into an ISO date, or nil when they are no valid date (then the scan goes on).
local function finder(pattern, to_iso)
  return function(s, init)
    while true do
      local found = { s:find(pattern, init) }
      if not found[1] then
        return nil
      end
      local v = to_iso(table.unpack(found, 3))
      if v then
        return found[1], v
      end
      init = found[2] + 1
    end
  end
end

local function month_iso(mon, d, y)
  local m = MONTHS[mon:lower()]
  return m and iso(y, m, d)
end

local DATE_FINDERS = {
  -- 2026-03-14
  finder("%f[%d](%d%d%d%d)%-(%d%d?)%-(%d%d?)%f[%D]", function(y, m, d)
    return iso(y, m, d)
  end),
  -- 14.03.2026 and 14/03/2026 (day first, as in Europe; 03/14/2026 is read
  -- month first because 14 cannot be a month)
  finder("%f[%d](%d%d?)([./])(%d%d?)%2(%d%d%d%d)%f[%D]", function(x, sep, y2, y)
    return iso(y, y2, x) or (sep == "/" and iso(y, x, y2)) or nil
  end),
  -- March 5, 2026 / Mar. 5 2026
  finder("%f[%a](%a+)%.?%s+(%d%d?),?%s+(%d%d%d%d)%f[%D]", function(mon, d, y)
    return month_iso(mon, d, y)
  end),
  -- 5 March 2026 / 5. March 2026
  finder("%f[%d](%d%d?)%.?%s+(%a+)%.?,?%s+(%d%d%d%d)%f[%D]", function(d, mon, y)
    return month_iso(mon, d, y)
  end),
}

--- The first date in s (any supported format) as "YYYY-MM-DD", or nil.
function M.find_date(s)
  local best_pos, best
  for _, finder in ipairs(DATE_FINDERS) do
    local pos, v = finder(s, 1)
    if pos and (best_pos == nil or pos < best_pos) then
      best_pos, best = pos, v
    end
  end
  return best
end

local CODES = { "EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "CZK" }
local SYMBOLS = { ["€"] = "EUR", ["£"] = "GBP", ["$"] = "USD", ["¥"] = "JPY" }

--- The ISO code of the first currency code or symbol in s, or nil.
function M.find_currency(s)
  local best_pos, best
  for _, code in ipairs(CODES) do
    local pos = s:find("%f[%a]" .. code .. "%f[%A]")
    if pos and (best_pos == nil or pos < best_pos) then
      best_pos, best = pos, code
    end
  end
  for sym, code in pairs(SYMBOLS) do
    local pos = s:find(sym, 1, true)
    if pos and (best_pos == nil or pos < best_pos or (pos == best_pos and code < best)) then
      best_pos, best = pos, code
    end
  end
  return best
end

local REFERENCE_MAX = 64 -- bytes; a longer run is not an identifier

--- The first identifier like INV-2026-0042 / DLV-77813 in s: 2 to 5 capital
--- letters, a dash, then capitals, digits and dashes with at least one digit,
--- at most 64 bytes in all.
function M.find_reference(s)
  local init = 1
  while true do
    local a, b, pre, rest = s:find("%f[%w](%u+)%-([%d%u][%d%u%-]*)", init)
    if not a then
      return nil
    end
    -- trailing dashes dropped; one greedy pass (rest starts with [%d%u])
    rest = rest:sub(1, rest:match("^.*[%d%u]()") - 1)
    if #pre >= 2 and #pre <= 5 and #rest < REFERENCE_MAX - #pre and rest:find("%d") then
      return pre .. "-" .. rest
    end
    init = b + 1
  end
end

-- RFC 5321 §4.5.3.1: a local part has at most 64 bytes, a domain 255.
local EMAIL_LOCAL_MAX = 64
local EMAIL_DOMAIN_MAX = 255

--- The first e-mail address in s, or nil: local@domain.tld, where the local
--- part is the run of [%w._%+-] before the "@" (its last 64 bytes at most)
--- and the domain has a dot and ends in a letter. Each "@" is a candidate,
--- expanded on both sides within those bounds only.
function M.find_email(s)
  local init = 1
  while true do
    local at = s:find("@", init, true)
    if at == nil then
      return nil
    end
    if at > 1 and s:sub(at - 1, at - 1):find("[%w%._%%%+%-]") then
      local lo = at - EMAIL_LOCAL_MAX
      local loc = s:sub(lo < 1 and 1 or lo, at - 1):reverse():match("^[%w%._%%%+%-]+")
      local dom = s:sub(at + 1, at + EMAIL_DOMAIN_MAX):match("^[%w%-]+%.[%w%.%-]*%a")
      if loc and dom then
        return loc:reverse() .. "@" .. dom
      end
    end
    init = at + 1
  end
end

-- ---------------------------------------------------------------- lines

-- "Key: value" lines as {key = normalised key, value = squeezed value}, in
-- order. Keys are short (a sentence with a colon in it is not a field).
-- (Found by a plain search for the ":" and trimmed with %S searches: the one
-- pattern "^%s*([^:]+):%s*(.-)%s*$" backtracks quadratically on a long blank
-- line.)
local function key_values(lines)
  local out = {}
  for _, line in ipairs(lines) do
    local colon = line:find(":", 1, true)
    local ks = colon and line:find("%S")
    if ks and ks < colon and colon - ks <= 40 then
      local k = line:sub(ks, colon - 1)
      local vs = line:find("%S", colon + 1)
      if vs and k:find("%a") then
        local ve = line:match(".*%S()", vs) -- one greedy pass: a non-blank exists
        out[#out + 1] = { key = norm(k), value = text.squeeze(line:sub(vs, ve - 1)) }
      end
    end
  end
  return out
end

--- The first non-empty line, whitespace squeezed, at most 200 bytes.
function M.find_title(lines)
  for _, line in ipairs(lines) do
    if not text.is_blank(line) then
      return text.truncate_utf8(text.squeeze(line), MAX_TITLE)
    end
  end
  return nil
end

-- What may follow the word "total" on a total line ("Total due", "Total
-- (EUR)"); "Total weight: 41.5 kg" is not an amount.
local AFTER_TOTAL = {
  due = true, amount = true, payable = true, incl = true, including = true, gross = true,
  to = true, price = true, cost = true, invoice = true, value = true, sum = true,
  eur = true, usd = true, gbp = true, chf = true,
}

-- Keywords of a total line, strongest first. A later line beats an earlier one
-- of the same strength: totals follow subtotals.
local TOTAL_KEYS = {
  { pat = "amount due", score = 3 }, { pat = "total due", score = 3 },
  { pat = "balance due", score = 3 }, { pat = "grand total", score = 3 },
  { pat = "total amount", score = 3 }, { pat = "total payable", score = 3 },
  { pat = "amount payable", score = 3 },
  { pat = "total", score = 2 },
  { pat = "sum", score = 1 }, { pat = "amount", score = 1 },
}

--- The invoice total: (number, the line it is on), or nil.
function M.find_total(lines)
  local best_score, best, best_line = 0, nil, nil
  for _, line in ipairs(lines) do
    local l = line:lower()
    for _, k in ipairs(TOTAL_KEYS) do
      local a, b = l:find("%f[%a]" .. k.pat .. "%f[%A]")
      if a then
        local ok = true
        if k.pat == "total" then
          local nxt = l:sub(b + 1):match("^%s*(%a+)")
          ok = (nxt == nil or AFTER_TOTAL[nxt]) and not l:sub(1, a - 1):find("sub[%s%-]*$")
        end
        if ok then
          local rest = line:sub(b + 1)
          -- "Total (incl. VAT 20%): 185.52": the amount is after the colon.
          local after_colon = rest:match(":(.*)$")
          local n = M.parse_number(after_colon or rest)
          if n ~= nil and k.score >= best_score then
            best_score, best, best_line = k.score, n, line
          end
          break -- a line counts once, under its strongest keyword
        end
      end
    end
  end
  return best, best_line
end

-- ---------------------------------------------------------------- extract

-- The value of property `name` (type `ty`, heuristic family `fam`) from a
-- "Key: value" line's value.
local function from_value(v, ty, fam)
  if fam == "date" then
    return M.find_date(v) or v
  elseif fam == "total" or ty == "number" or ty == "integer" then
    return M.parse_number(v)
  elseif fam == "currency" then
    return M.find_currency(v) or v
  elseif fam == "reference" then
    return M.find_reference(v) or v
  elseif fam == "email" then
    return M.find_email(v)
  elseif ty == "boolean" then
    return v -- schema.shape reads yes/no/true/false
  end
  return text.truncate_utf8(v, MAX_VALUE)
end

-- Words that do not narrow which date a "date" property means.
local GENERIC_DATE = { date = true, document = true, invoice = true, letter = true, issue = true,
  issued = true, doc = true }

-- Keys of "Key: value" lines that hold an identifier.
local ID_KEYS = { "reference", "ref", "number", "no", "nr", "id", "invoice", "order", "tracking" }

--- A record for `schema` (a JSON Schema object; schema.DEFAULT when nil)
--- from the text `txt`. Returns a table holding only schema properties.
function M.extract(txt, schema)
  schema = schema or schema_lib.DEFAULT
  txt = txt or ""
  if #txt > MAX_SCAN then
    txt = text.truncate_utf8(txt, MAX_SCAN)
  end
  local lines = text.lines(txt)
  local kvs = key_values(lines)
  local total, total_line = M.find_total(lines)
  local props = type(schema.properties) == "table" and schema.properties or {}

  local rec = {}
  for _, name in ipairs(schema_lib.names(schema)) do
    local node = props[name]
    local ty = main_type(node)
    local n = norm(name)
    local fam = family(n)
    local v

    -- 1. A line "Name: value" for this very property wins: the document
    --    labels the value itself.
    for _, kv in ipairs(kvs) do
      if kv.key == n then
        v = from_value(kv.value, ty, fam)
        break
      end
    end

    -- 2. The heuristic of the property's family.
    if v == nil then
      if fam == "title" then
        v = M.find_title(lines)
      elseif fam == "date" then
        -- "date" / "invoice_date": the document's first date. "due_date":
        -- only a date on a line whose key says "due" — the first date of an
        -- invoice is its issue date, not when it is due.
        local quals = {}
        for w in n:gmatch("%a+") do
          if not GENERIC_DATE[w] then
            quals[#quals + 1] = w
          end
        end
        if #quals == 0 then
          v = M.find_date(txt)
        else
          for _, kv in ipairs(kvs) do
            local kw = words(kv.key)
            local all = true
            for _, q in ipairs(quals) do
              all = all and kw[q] == true
            end
            v = all and M.find_date(kv.value) or nil
            if v then
              break
            end
          end
        end
      elseif fam == "total" then
        v = total
      elseif fam == "currency" then
        v = (total_line and M.find_currency(total_line)) or M.find_currency(txt)
      elseif fam == "email" then
        v = M.find_email(txt)
      elseif fam == "reference" then
        for _, kv in ipairs(kvs) do
          if any_word(words(kv.key), ID_KEYS) then
            v = M.find_reference(kv.value)
            if v == nil and kv.value:find("%d") and not kv.value:find("%s") then
              v = kv.value -- "Invoice number: 12345"
            end
            if v then
              break
            end
          end
        end
        v = v or M.find_reference(txt)
      end
    end
    rec[name] = v
  end
  return schema_lib.shape(rec, schema) or {}
end

return M
