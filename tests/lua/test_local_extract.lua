-- test_local_extract.lua — the deterministic local extractor, on fixed texts
-- and (when poppler and tesseract are installed) on the real samples.
local lx = require "local_extract"
local schema = require "schema"

-- pdftotext -layout -enc UTF-8 invoice-acme.pdf - (poppler 22.02)
local INVOICE = [[
INVOICE
Invoice number: INV-2026-0042
Date: 2026-03-14
From: Acme Tools Ltd, 12 Harbour Road, Leeds
Bill to: Northwind Traders


Item             Qty Price
Steel hammer         4 19.90
Safety goggles       10 7.50


Subtotal: 154.60 EUR
VAT 20%: 30.92 EUR
Total due: 185.52 EUR
Payment terms: 30 days
Contact: billing@acme-tools.example
]] .. "\f"

-- tesseract scanned-letter.jpg stdout (tesseract 5.3)
local LETTER = [[
Notice of Delivery

Reference: DLV-77813

Date: 2026-05-02

Dear customer,

your parcel with 3 boxes was delivered to the loading dock
at 10:42 and signed for by J. Moreau.

Total weight: 41.5 kg

Questions: logistics@parcelco.example
]] .. "\f"

local NOTES = [[
Meeting notes 2026-04-01
Attendees: Ana, Ben, Chen
Decision: ship the beta on 2026-04-20
Budget approved: 12000 USD
]]

local function check_invoice(t, txt, label)
  local r = lx.extract(txt, schema.DEFAULT)
  t.eq(r.reference, "INV-2026-0042", label .. ": reference")
  t.eq(r.total, 185.52, label .. ": total")
  t.eq(r.currency, "EUR", label .. ": currency")
  t.eq(r.date, "2026-03-14", label .. ": date")
  t.eq(r.title, "INVOICE", label .. ": title")
  t.eq(r.email, "billing@acme-tools.example", label .. ": email")
end

local function check_letter(t, txt, label)
  local r = lx.extract(txt, schema.DEFAULT)
  t.eq(r.reference, "DLV-77813", label .. ": reference")
  t.check(r.title and r.title:find("Notice of Delivery", 1, true), label .. ": title " .. tostring(r.title))
  t.eq(r.date, "2026-05-02", label .. ": date")
  t.eq(r.total, nil, label .. ": 'Total weight' is not an amount")
  t.eq(r.email, "logistics@parcelco.example", label .. ": email")
end

-- Runs f() with the string library's pattern functions counted: calls, and
-- the bytes each call was handed from its start position on (for a plain find,
-- the bytes up to what it found). A scan that restarts from every candidate
-- (every "@", every digit) over the rest of the text shows as bytes offered
-- growing with the square of the length. Returns f's result, calls, bytes.
local function counted(f)
  local orig = { find = string.find, match = string.match, gmatch = string.gmatch,
    gsub = string.gsub }
  local calls, bytes = 0, 0
  local function offered(s, init)
    init = init or 1
    if init < 0 then
      init = #s + init + 1
    end
    return math.max(#s - init + 1, 0)
  end
  string.find = function(s, p, init, plain)
    calls = calls + 1
    local r = table.pack(orig.find(s, p, init, plain))
    if plain and r[1] then
      bytes = bytes + (r[2] - (init or 1) + 1)
    else
      bytes = bytes + offered(s, init)
    end
    return table.unpack(r, 1, r.n)
  end
  string.match = function(s, p, init)
    calls = calls + 1
    bytes = bytes + offered(s, init)
    return orig.match(s, p, init)
  end
  string.gmatch = function(s, p, init)
    calls = calls + 1
    bytes = bytes + offered(s, init)
    return orig.gmatch(s, p, init)
  end
  string.gsub = function(s, p, r, n)
    calls = calls + 1
    bytes = bytes + #s
    return orig.gsub(s, p, r, n)
  end
  local ok, res = pcall(f)
  for k, v in pairs(orig) do
    string[k] = v
  end
  if not ok then
    error(res, 0)
  end
  return res, calls, bytes
end

-- 200 KB texts built to make an unanchored pattern rescan from every start
-- position (quadratic: minutes inside one C call, where no instruction budget
-- fires). Each must complete with a sane record, the string library handed
-- a linear number of bytes, and the time is printed (not asserted: machines
-- differ). The budget: the whole text is scanned a bounded number of times
-- (currencies, total keywords and date formats each scan once).
local function hostile(t)
  local N = 200000
  local seed = 7
  local function rnd(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n + 1
  end
  local alpha = { "a", "1", "@", ".", " ", "-", ":", "\n", "A", ",", "/" }
  local mix = {}
  for i = 1, N do
    mix[i] = alpha[rnd(#alpha)]
  end
  local cases = {
    { "a", string.rep("a", N) },
    { "digits", string.rep("1", N) },
    { "at signs", string.rep("@", N) },
    { "dots", string.rep(".", N) },
    { "spaces", string.rep(" ", N) },
    { "dashes", string.rep("-", N) },
    { "a@", string.rep("a@", N // 2) },
    { "a.", string.rep("a.", N // 2) },
    { "1.", string.rep("1.", N // 2) },
    { "AB-1", string.rep("AB-1", N // 4) },
    { "dash runs", "INV-1" .. string.rep(string.rep("-", 1000) .. "1", N // 1001) },
    { "key: blanks", "Key:" .. string.rep(" ", N) .. "x" },
    { "blank line", string.rep(" ", N) .. ":" },
    { "long local part", string.rep("a", N - 12) .. "@b.example" },
    { "mixed", table.concat(mix) },
  }
  for _, c in ipairs(cases) do
    local name, txt = c[1], c[2]
    local t0 = os.clock()
    local ok, r, calls, bytes = pcall(counted, function()
      return lx.extract(txt, schema.DEFAULT)
    end)
    local secs = os.clock() - t0
    print(string.format("hostile %-16s %6d bytes: %.3f s, %d string calls, %d bytes offered",
      name, #txt, secs, calls or 0, bytes or 0))
    t.check(ok and type(r) == "table", name .. ": extract returns a record: " .. tostring(r))
    if ok then
      -- a few calls per candidate byte; each call handed at most a window of
      -- 255 bytes (an e-mail domain) per candidate, or the whole text a
      -- bounded number of times. A rescan per candidate would offer ~#txt^2/2
      -- (2e10 here), far above this.
      t.check(calls <= 3 * #txt + 1000, name .. ": string calls linear in the text: " .. calls)
      t.check(bytes <= 512 * #txt, name .. ": bytes offered linear in the text: " .. bytes)
      for k, v in pairs(r) do
        t.check(type(v) ~= "string" or #v <= 500, name .. ": " .. k .. " is bounded")
      end
      t.check(r.reference == nil or #r.reference <= 64, name .. ": a reference is short")
    end
  end
  -- the same answers on the texts that hold something
  local r = lx.extract(string.rep("a", N - 12) .. "@b.example", schema.DEFAULT)
  t.eq(r.email, string.rep("a", 64) .. "@b.example", "a local part is its last 64 bytes")
  t.eq(lx.find_email(string.rep("a@", 1000) .. " x.y@mail.example.org."), "x.y@mail.example.org",
    "the first @ with a domain")
  t.eq(lx.find_email("@@ a@b @c.de me@x-y.example"), "me@x-y.example", "candidates without a domain skipped")
  t.eq(lx.parse_number(string.rep("-", 1000) .. "-42,5"), -42.5, "a number after a run of dashes")
  t.eq(lx.find_reference(string.rep("AB-1", 100) .. " INV-7"), "INV-7", "an over-long identifier is none")
  t.eq(lx.parse_number(string.rep("9", 100)), tonumber(string.rep("9", 64)), "numbers read from 64 bytes")
  t.eq(lx.extract("Key:" .. string.rep(" ", 1000) .. "x  ", { properties = { key = { type = "string" } } }),
    { key = "x" }, "a value after many blanks")
  -- the work grows linearly: 10x the text, at most ~10x the bytes offered
  local _, _, b20 = counted(function() return lx.extract(string.rep("a@a.", 5000), schema.DEFAULT) end)
  local _, _, b200 = counted(function() return lx.extract(string.rep("a@a.", 50000), schema.DEFAULT) end)
  t.check(b200 <= 12 * b20, string.format("bytes offered 20 KB -> 200 KB: %d -> %d", b20, b200))
end

return function(t)
  hostile(t)
  check_invoice(t, INVOICE, "invoice fixture")
  check_letter(t, LETTER, "letter fixture")

  -- the default schema on notes.txt
  local n = lx.extract(NOTES, schema.DEFAULT)
  t.eq(n, { title = "Meeting notes 2026-04-01", date = "2026-04-01", currency = "USD" }, "notes")

  -- a custom schema: "Key: value" lines by property name, types honoured
  local custom = {
    type = "object",
    properties = {
      invoice_number = { type = "string" },
      amount = { type = "number" },
      paid = { type = "boolean" },
      bill_to = { type = "string" },
      payment_terms = { type = "string" },
      due_date = { type = "string" },
      vendor = { type = "string" },
    },
  }
  t.eq(lx.extract(INVOICE, custom), {
    invoice_number = "INV-2026-0042", amount = 185.52, bill_to = "Northwind Traders",
    payment_terms = "30 days",
  }, "custom schema")

  local budget = lx.extract(NOTES, { type = "object", properties = {
    budget_approved = { type = "number" }, attendees = { type = "string" },
    decision = { type = "string" }, count = { type = "integer" } } })
  t.eq(budget, { budget_approved = 12000, attendees = "Ana, Ben, Chen",
    decision = "ship the beta on 2026-04-20" }, "key: value lines")
  t.eq(math.type(lx.extract("Count: 12", { properties = { count = { type = "integer" } } }).count),
    "integer", "integer property")

  -- numbers
  t.eq(lx.parse_number("1,234.56"), 1234.56, "1,234.56")
  t.eq(lx.parse_number("1.234,56"), 1234.56, "1.234,56")
  t.eq(lx.parse_number("EUR 185.52"), 185.52, "with code")
  t.eq(lx.parse_number("€1.234.567,8"), 1234567.8, "euro grouping")
  t.eq(lx.parse_number("12,5"), 12.5, "decimal comma")
  t.eq(lx.parse_number("1,234"), 1234, "thousands comma")
  t.eq(lx.parse_number("-3.5"), -3.5, "negative")
  t.eq(lx.parse_number("185."), 185, "trailing dot")
  t.eq(lx.parse_number("none"), nil, "no number")

  -- totals
  t.eq(lx.extract("Sub-total: 10 EUR\nTotal: 12,00 €\n", schema.DEFAULT).total, 12, "sub-total skipped")
  t.eq(lx.extract("Total (incl. VAT 20%): 1.234,56 EUR", schema.DEFAULT).total, 1234.56, "after the colon")
  t.eq(lx.extract("Total 10 EUR\nAmount due: $ 8.00\nSum 3", schema.DEFAULT).total, 8, "amount due is strongest")
  t.eq(lx.extract("Total: 10\nAmount due: $ 8.00", schema.DEFAULT).total, 10, "a 'Total:' line names the property")
  t.eq(lx.extract("Amount due: £ 8.00", schema.DEFAULT).currency, "GBP", "pound sign")
  t.eq(lx.extract("Total: 8.00 $", schema.DEFAULT).currency, "USD", "dollar sign")
  t.eq(lx.extract("Total due: 8 CHF\nPaid in EUR", schema.DEFAULT).currency, "CHF", "currency of the total line")

  -- dates
  local dd = { properties = { due_date = { type = "string" }, invoice_date = { type = "string" } } }
  t.eq(lx.extract("Issued 1.2.2026\nPayment due: 13.04.2026", dd),
    { due_date = "2026-04-13", invoice_date = "2026-02-01" }, "qualified dates")
  t.eq(lx.find_date("on 05.03.2026"), "2026-03-05", "DD.MM.YYYY")
  t.eq(lx.find_date("on 5/3/2026"), "2026-03-05", "D/M/YYYY")
  t.eq(lx.find_date("on 03/14/2026"), "2026-03-14", "US month first when day > 12")
  t.eq(lx.find_date("March 5, 2026"), "2026-03-05", "Month D, YYYY")
  t.eq(lx.find_date("5 March 2026"), "2026-03-05", "D Month YYYY")
  t.eq(lx.find_date("Sept. 30 2026"), "2026-09-30", "abbreviated month")
  t.eq(lx.find_date("2026-13-40 then 2026-02-28"), "2026-02-28", "invalid ISO date skipped")
  t.eq(lx.find_date("Mayday 12 2026 and 1.2.2027"), "2027-02-01", "not a month name")
  t.eq(lx.find_date("5 March 2026 or 2026-01-01"), "2026-03-05", "the first date wins")
  t.eq(lx.find_date("no date"), nil, "no date")

  -- references
  t.eq(lx.find_reference("see UTF8 and ORDER-A1B2- ok"), "ORDER-A1B2", "trailing dash dropped")
  t.eq(lx.find_reference("A-123 TOOLONG-1 AB-CD"), nil, "2..5 letters and a digit")
  t.eq(lx.extract("Order no: 998877", { properties = { reference = { type = "string" } } }).reference,
    "998877", "a plain number under an id-like key")

  -- titles
  t.eq(lx.find_title({ "", "   ", "  A    spaced   title  " }), "A spaced title", "first non-empty line")
  t.eq(#lx.find_title({ string.rep("é", 300) }), 200, "title capped at 200 bytes on a char boundary")

  -- degenerate input
  t.eq(lx.extract("", schema.DEFAULT), {}, "empty text")
  t.eq(lx.extract("   \n\f", schema.DEFAULT), {}, "blank text")
  t.eq(lx.extract("hello", { type = "object" }), {}, "schema without properties")
  t.eq(lx.extract("Title: x", nil).title, "x", "nil schema means the default")

  -- deterministic
  t.eq(lx.extract(INVOICE, schema.DEFAULT), lx.extract(INVOICE, schema.DEFAULT), "same in, same out")

  -- the real tools on the real samples, when they are here
  local inv = t.run("pdftotext -layout -enc UTF-8 '" .. t.samples .. "/invoice-acme.pdf' -")
  if inv then
    check_invoice(t, inv, "pdftotext invoice-acme.pdf")
  else
    print("skip: pdftotext or samples not available")
  end
  local ocr = t.run("tesseract '" .. t.samples .. "/scanned-letter.jpg' stdout")
  if ocr then
    check_letter(t, ocr, "tesseract scanned-letter.jpg")
  else
    print("skip: tesseract or samples not available")
  end
  local notes = t.run("cat '" .. t.samples .. "/notes.txt'")
  if notes then
    t.eq(lx.extract(notes, schema.DEFAULT).date, "2026-04-01", "notes.txt date")
  end
end
