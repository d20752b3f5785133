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

return function(t)
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
