-- office.lua — the text of Office documents (DOCX, XLSX, PPTX, and the
-- OpenDocument ODT/ODS/ODP) without Tika, and their conversion to PDF for a
-- preview where LibreOffice is installed.
--
--   office.kind(mime)                 -- "docx" | "xlsx" | "pptx" | "odf" | nil
--   local txt = office.extract(file)  -- or nil, err, detail
--   local pdf = office.to_pdf(what, file) -- a PDF path, or nil, err, detail
--                                        -- (err "no_converter": no soffice)
--
-- Every one of these formats is a zip container of XML parts, so one
-- Debian-packaged tool reads them all: Info-ZIP's `unzip` (docs/flows.md,
-- "Office documents", says why not docx2txt, odt2txt or catdoc). `unzip -Z1`
-- lists the parts (and rejects a damaged container: bad_input, with unzip's
-- words), `unzip -p` writes one part to stdout, and the XML is turned into
-- text here by a walk over its tags (xml_text below), never by a parser that
-- expands entities: a "billion laughs" document has nothing to expand.
--
-- Bounds, for a zip bomb or a huge XML (a small upload that inflates to
-- gigabytes): unzip runs through sl.exec, confined (CPU seconds, address
-- space, no shell), with a timeout, and its captured stdout is capped at what
-- is left of MAX_XML_BYTES for the whole document: past it the tool is
-- killed and the step fails with the permanent "too_large". The walk over at
-- most that much XML is charged to the step's instruction and memory budgets
-- (budget_exceeded past them). At most MAX_PARTS slides or sheets are read.

local text = require "text"

local M = {}

-- The XML of one document, all parts together, at most (once unzipped).
M.MAX_XML_BYTES = 8 * 1024 * 1024
-- The listing of a container (one name a line) at most.
local MAX_LIST_BYTES = 1024 * 1024
local MAX_PARTS = 100
local UNZIP_TIMEOUT = 30
local UNZIP_CPU = 20
local SOFFICE_TIMEOUT = 120

local KINDS = {
  ["application/vnd.openxmlformats-officedocument.wordprocessingml.document"] = "docx",
  ["application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"] = "xlsx",
  ["application/vnd.openxmlformats-officedocument.presentationml.presentation"] = "pptx",
  ["application/vnd.oasis.opendocument.text"] = "odf",
  ["application/vnd.oasis.opendocument.spreadsheet"] = "odf",
  ["application/vnd.oasis.opendocument.presentation"] = "odf",
}

-- The file name extension LibreOffice picks its import filter by.
local EXTENSIONS = {
  ["application/vnd.openxmlformats-officedocument.wordprocessingml.document"] = "docx",
  ["application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"] = "xlsx",
  ["application/vnd.openxmlformats-officedocument.presentationml.presentation"] = "pptx",
  ["application/vnd.oasis.opendocument.text"] = "odt",
  ["application/vnd.oasis.opendocument.spreadsheet"] = "ods",
  ["application/vnd.oasis.opendocument.presentation"] = "odp",
}

--- "docx", "xlsx", "pptx" or "odf" for an Office MIME type, else nil.
function M.kind(mime)
  return KINDS[text.base_mime(mime)]
end

-- ---------------------------------------------------------------- XML to text

local ENTITIES = { lt = "<", gt = ">", amp = "&", quot = '"', apos = "'" }

local function entity(name)
  local e = ENTITIES[name]
  if e then
    return e
  end
  local n = name:match("^#x(%x+)$")
  n = n and tonumber(n, 16) or tonumber(name:match("^#(%d+)$") or "")
  if n and n >= 0 and n <= 0x10FFFF and not (n >= 0xD800 and n <= 0xDFFF) then
    return utf8.char(n)
  end
  return "&" .. name .. ";" -- not a character reference: kept as written
end

--- The character data s of an XML text node with its references decoded.
function M.unescape(s)
  if not s:find("&", 1, true) then
    return s
  end
  return (s:gsub("&(#?[%w]+);", entity))
end

-- Per format: which elements' text counts (text), what an element's start
-- (or empty-element tag) or end adds to the text (open, close), and the table
-- cell element, inside which a paragraph's end is a space (a cell stays on
-- its row's line).
local PARA_END = "\n"
local RULES = {
  docx = {
    cell = "w:tc",
    text = { ["w:t"] = true },
    open = { ["w:tab"] = "\t", ["w:br"] = "\n", ["w:cr"] = "\n" },
    close = { ["w:p"] = "\n", ["w:tc"] = "\t", ["w:tr"] = "\n" },
  },
  pptx = {
    cell = "a:tc",
    text = { ["a:t"] = true },
    open = { ["a:br"] = "\n" },
    close = { ["a:p"] = "\n", ["a:tc"] = "\t", ["a:tr"] = "\n" },
  },
  odf = {
    cell = "table:table-cell",
    text = { ["text:p"] = true, ["text:h"] = true, ["text:span"] = true, ["text:a"] = true },
    open = { ["text:tab"] = "\t", ["text:line-break"] = "\n", ["text:s"] = " " },
    close = { ["text:p"] = "\n", ["text:h"] = "\n", ["table:table-cell"] = "\t",
      ["table:table-row"] = "\n" },
  },
}

--- The text of one XML part of a docx/pptx/odf document (pure: no I/O).
--- Text counts only inside the format's text elements; a start tag, an
--- empty-element tag or an end tag may add a tab or a line break.
function M.xml_text(xml, kind)
  local rules = RULES[kind]
  local out, n = {}, 0
  local depth = 0 -- inside how many text elements
  local cells = 0 -- inside how many table cells
  for tag, chars in xml:gmatch("(<[^>]*>)([^<]*)") do
    local slash, name = tag:match("^<(/?)([^%s/>]+)")
    if name then
      if slash == "/" then
        if rules.text[name] and depth > 0 then
          depth = depth - 1
        end
        if name == rules.cell and cells > 0 then
          cells = cells - 1
        end
        local add = rules.close[name]
        if add == PARA_END and cells > 0 and name ~= rules.cell then
          add = " "
        end
        if add then
          n = n + 1
          out[n] = add
        end
      else
        if name == rules.cell and tag:sub(-2) ~= "/>" then
          cells = cells + 1
        end
        local add = rules.open[name]
        if add then
          n = n + 1
          out[n] = add
        end
        if tag:sub(-2) ~= "/>" then
          if rules.text[name] then
            depth = depth + 1
          end
        elseif rules.close[name] then -- <text:p/>: an empty paragraph still ends a line
          n = n + 1
          out[n] = rules.close[name]
        end
      end
    end
    if depth > 0 and chars ~= "" then
      n = n + 1
      out[n] = M.unescape(chars)
    end
  end
  return table.concat(out)
end

--- The strings of xl/sharedStrings.xml, in order (index 0 is [1]).
--- Phonetic runs (<rPh>) are not the cell's text.
function M.xlsx_strings(xml)
  local strings, cur, n = {}, nil, 0
  local in_t, in_rph = false, false
  for tag, chars in xml:gmatch("(<[^>]*>)([^<]*)") do
    local slash, name = tag:match("^<(/?)([^%s/>]+)")
    local empty = tag:sub(-2) == "/>"
    if name == "si" then
      if slash == "/" then
        n = n + 1
        strings[n] = table.concat(cur or {})
        cur = nil
      else
        cur = {}
        if empty then
          n = n + 1
          strings[n] = ""
          cur = nil
        end
      end
    elseif name == "rPh" then
      in_rph = slash ~= "/" and not empty
    elseif name == "t" then
      in_t = slash ~= "/" and not empty
    end
    if in_t and not in_rph and cur and chars ~= "" then
      cur[#cur + 1] = M.unescape(chars)
    end
  end
  return strings
end

--- The text of one worksheet: a line per row, cells separated by tabs;
--- shared strings looked up in `strings`; formulas left out (their values
--- are in <v>).
function M.xlsx_sheet(xml, strings)
  local out, n = {}, 0
  local row, ctype, val = nil, nil, nil
  local in_v, in_t = false, false
  for tag, chars in xml:gmatch("(<[^>]*>)([^<]*)") do
    local slash, name = tag:match("^<(/?)([^%s/>]+)")
    local empty = tag:sub(-2) == "/>"
    if name == "row" then
      if slash == "/" or empty then
        if row and #row > 0 then
          n = n + 1
          out[n] = table.concat(row, "\t") .. "\n"
        end
        row = nil
      else
        row = {}
      end
    elseif name == "c" then
      if slash == "/" or empty then
        local v = val or ""
        if ctype == "s" then
          v = strings[(tonumber(v) or -1) + 1] or ""
        elseif ctype == "b" then
          v = v == "1" and "TRUE" or (v == "0" and "FALSE" or v)
        end
        if row then
          row[#row + 1] = v
        end
        ctype, val = nil, nil
      else
        ctype = tag:match('%st="([^"]*)"')
        val = nil
      end
    elseif name == "v" then
      in_v = slash ~= "/" and not empty
    elseif name == "t" then
      in_t = slash ~= "/" and not empty
    end
    if (in_v or in_t) and chars ~= "" then
      val = (val or "") .. M.unescape(chars)
    end
  end
  return table.concat(out)
end

-- ---------------------------------------------------------------- unzip

-- Runs unzip with at most max_out bytes of stdout: the result, or nil, err, detail.
local function unzip(file, args, max_out)
  local argv = { "unzip" }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  local res, err, why = sl.exec {
    argv = argv,
    input = file.path,
    timeout = UNZIP_TIMEOUT,
    cpu = UNZIP_CPU,
    max_stdout = max_out,
  }
  if not res then
    if err == "not_found" then
      return text.fail("office", "unavailable", "unzip is not installed")
    elseif err == "too_large" then
      return text.fail("office", "too_large", string.format(
        "the document's XML is over %d bytes once unzipped (a zip bomb?)", M.MAX_XML_BYTES))
    end
    return text.fail("office", err or "unavailable", "unzip" .. (why and (": " .. why) or ""))
  end
  if res.limit then
    return text.fail("office", "too_large", "unzip exceeded its " .. res.limit .. " limit")
  end
  if res.signal ~= nil and res.signal ~= 0 and res.signal ~= false then
    return text.fail("office", "bad_input", "unzip killed by signal " .. tostring(res.signal))
  end
  -- 1 is "warnings" (e.g. extra bytes before the archive): the data came out.
  if res.status ~= 0 and res.status ~= 1 then
    -- unzip prints why on stdout (listing) or stderr: the first line that says something
    local why2 = text.short((res.stderr or "") .. "\n" .. (res.stdout or ""), 200)
    return text.fail("office", "bad_input", "not a readable " ..
      "Office document (unzip exited " .. tostring(res.status) .. ")" ..
      (why2 and (": " .. text.squeeze(why2)) or ""))
  end
  return res
end

-- The numbered parts under `prefix` (ppt/slides/slide, xl/worksheets/sheet), by number.
local function numbered(names, prefix)
  local found = {}
  for _, name in ipairs(names) do
    local num = name:sub(1, #prefix) == prefix and name:sub(#prefix + 1):match("^(%d+)%.xml$")
    if num then
      found[#found + 1] = { n = tonumber(num), name = name }
    end
  end
  table.sort(found, function(a, b) return a.n < b.n end)
  local out = {}
  for i = 1, math.min(#found, MAX_PARTS) do
    out[i] = found[i].name
  end
  return out
end

--- The text of an Office document (file.mime one of M.kind's), read locally;
--- or nil, err, detail: "bad_input" (a damaged or incomplete container),
--- "too_large" (over MAX_XML_BYTES unzipped), "unavailable" (no unzip),
--- "unsupported". The text may be blank (an empty document): the caller
--- decides what that means.
function M.extract(file)
  local kind = M.kind(file.mime)
  if not kind then
    return text.fail("office", "unsupported", "not an Office type: " .. tostring(file.mime))
  end
  local res, err, detail = unzip(file, { "-Z1", file.path }, MAX_LIST_BYTES)
  if not res then
    return nil, err, detail
  end
  local names, have = {}, {}
  for name in (res.stdout or ""):gmatch("[^\n]+") do
    names[#names + 1] = name
    have[name] = true
  end
  local left = M.MAX_XML_BYTES
  -- One part's XML (counted against what is left), or nil, err, detail.
  local function part(name)
    -- "-p": the part to stdout. unzip takes the name as a wildcard pattern:
    -- the names asked for hold no wildcard character (checked).
    if name:find("[%[%]%*%?\\]") then
      return nil, "bad_input", "odd part name " .. name
    end
    local r, e, d = unzip(file, { "-p", file.path, name }, left + 1)
    if not r then
      return nil, e, d
    end
    left = left - #(r.stdout or "")
    if left < 0 then
      return text.fail("office", "too_large", string.format(
        "the document's XML is over %d bytes once unzipped (a zip bomb?)", M.MAX_XML_BYTES))
    end
    return r.stdout or ""
  end

  local out = {}
  if kind == "docx" or kind == "odf" then
    local name = kind == "docx" and "word/document.xml" or "content.xml"
    if not have[name] then
      return text.fail("office", "bad_input", "not a " .. kind .. " document: no " .. name)
    end
    local xml, e, d = part(name)
    if not xml then
      return nil, e, d
    end
    out[1] = M.xml_text(xml, kind)
  elseif kind == "pptx" then
    local slides = numbered(names, "ppt/slides/slide")
    if #slides == 0 and not have["ppt/presentation.xml"] then
      return text.fail("office", "bad_input", "not a pptx document: no ppt/presentation.xml")
    end
    for i, name in ipairs(slides) do
      local xml, e, d = part(name)
      if not xml then
        return nil, e, d
      end
      out[i] = M.xml_text(xml, "pptx")
    end
  else -- xlsx
    local sheets = numbered(names, "xl/worksheets/sheet")
    if #sheets == 0 then
      return text.fail("office", "bad_input", "not an xlsx document: no xl/worksheets/sheet*.xml")
    end
    local strings = {}
    if have["xl/sharedStrings.xml"] then
      local xml, e, d = part("xl/sharedStrings.xml")
      if not xml then
        return nil, e, d
      end
      strings = M.xlsx_strings(xml)
    end
    for i, name in ipairs(sheets) do
      local xml, e, d = part(name)
      if not xml then
        return nil, e, d
      end
      out[i] = M.xlsx_sheet(xml, strings)
    end
  end
  return text.to_utf8(table.concat(out, "\n"))
end

-- ---------------------------------------------------------------- to PDF

-- ": " and the start of soffice's stderr, or "" (a failure's detail).
local function soffice_says(res)
  local err = text.short(res.stderr, 200)
  return err and (": " .. err) or ""
end

--- The document converted to PDF by LibreOffice (`soffice --headless`) in
--- this run's scratch dir: the PDF's path, or nil, err, detail. err is
--- "no_converter" when soffice is not installed (LibreOffice is optional:
--- the caller shows that as a note, not a failure). One conversion per
--- scratch dir: the preview and the thumbnail step share it.
function M.to_pdf(what, file, ctx)
  local ext = EXTENSIONS[text.base_mime(file.mime)]
  if not ext then
    return text.fail(what, "unsupported", "not an Office type: " .. tostring(file.mime))
  end
  local dir = sl.tmpdir()
  local pdf = text.join(dir, "office.pdf")
  if ctx and ctx.office_pdf == pdf then
    return pdf -- converted by the step before, in this same scratch dir
  end
  -- A copy under a plain name with the right extension: soffice names its
  -- output after the input and picks the import filter by the extension.
  local src = text.join(dir, "office." .. ext)
  local res, err, detail = text.exec(what, { argv = { "cp", "--", file.path, src },
    timeout = 30 })
  if not res then
    return nil, err, detail
  end
  res, err, detail = sl.exec {
    argv = { "soffice", "--headless", "--norestore", "--nologo", "--nolockcheck",
      "--convert-to", "pdf", "--outdir", dir, src },
    -- no `input`: it would become /proc/self/fd/N, and soffice needs the
    -- name (the copy is the tool user's own file in the scratch dir)
    timeout = SOFFICE_TIMEOUT,
  }
  if not res and err == "not_found" then
    return nil, "no_converter", "LibreOffice (soffice) is not installed: no preview of " ..
      ext .. " documents"
  end
  if not res then
    return text.fail(what, err or "unavailable", "soffice" .. (detail and (": " .. detail) or ""))
  end
  if res.limit or res.status ~= 0 or (res.signal and res.signal ~= 0) then
    return text.fail(what, res.limit and "too_large" or "bad_input",
      "soffice could not convert the document" .. soffice_says(res))
  end
  -- soffice exits 0 when it cannot load the document: it then prints
  -- "Error: source file could not be loaded" and writes no PDF. Only its
  -- "convert SRC -> PDF" line on stdout says a PDF was written.
  if not (res.stdout or ""):find(" -> ", 1, true) then
    return text.fail(what, "bad_input", "soffice could not load the document" .. soffice_says(res))
  end
  if ctx then
    ctx.office_pdf = pdf
  end
  return pdf
end

return M
