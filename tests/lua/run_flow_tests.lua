-- run_flow_tests.lua — the shipped flows and lib modules run end to end on the
-- real samples, real tools (poppler, tesseract, vips) and the stand-in
-- services, under a fake `sl` runtime written in plain Lua.
--
--   lua5.4 tests/lua/run_flow_tests.lua
--
-- The fake runtime follows docs/flows.md: sl.exec runs argv (via the shell,
-- quoted, under coreutils' timeout), sl.http.request runs curl's CLI (the
-- same libcurl, including --aws-sigv4, that the server signs with), artifacts
-- and records are kept in tables, and a tiny driver follows next / fallback /
-- always with the documented transient retries. It checks the Lua side
-- against the contract while the C runtime is written; the black-box tests
-- (tests/blackbox/test_pipelines.py) check the real thing.
--
-- Prints "N passed, M failed"; exits non-zero on failure, 77 (ctest's skip)
-- when the samples or a tool it drives are not installed here.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local repo = here .. "/../.."
package.path = repo .. "/lua-flows/lib/?.lua;" .. package.path
local cjson = require "cjson"

local samples = os.getenv("SLUICE_SAMPLES") or (repo .. "/../shared/samples")
local standins_py = repo .. "/tests/standins/standins.py"

local passed, failed = 0, 0
local function check(cond, what)
  local info = debug.getinfo(2, "Sl")
  if cond then
    passed = passed + 1
  else
    failed = failed + 1
    print(string.format("%s:%d: FAILED: %s", info.short_src, info.currentline, what))
  end
end

-- ---------------------------------------------------------------- shell

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

-- What the runs need; without it the test is skipped (77), never passed.
do
  local missing = {}
  local f = io.open(samples .. "/invoice-acme.pdf", "rb")
  if f then
    f:close()
  else
    missing[#missing + 1] = "samples (" .. samples .. ")"
  end
  for _, tool in ipairs({ "pdftotext", "pdftoppm", "tesseract", "vips", "curl", "python3", "timeout" }) do
    if not os.execute("command -v " .. tool .. " >/dev/null 2>&1") then
      missing[#missing + 1] = tool
    end
  end
  if #missing > 0 then
    print("skip: not installed: " .. table.concat(missing, ", "))
    os.exit(77)
  end
end

local scratch = sh("mktemp -d"):gsub("%s+$", "")

-- ---------------------------------------------------------------- fake sl

local run -- the current run's record: artifacts, record, text_source, logs, tmpdir
local services = {}

local TRANSIENT = { timeout = true, unavailable = true, server_error = true, rate_limited = true,
  circuit_open = true, busy = true }

sl = {
  json = { null = cjson.null, encode = cjson.encode, decode = cjson.decode },
  http = {},
}

function sl.log(level, msg, fields)
  run.logs[#run.logs + 1] = level .. " " .. msg
end

function sl.service(name)
  local s = services[name]
  if not s then
    return { configured = false }
  end
  local out = { configured = true }
  for k, v in pairs(s) do
    out[k] = v
  end
  return out
end

function sl.tmpdir()
  return run.tmpdir
end

function sl.exec(spec)
  local argv = spec.argv
  if sh("command -v " .. q(argv[1]) .. " >/dev/null 2>&1 && echo yes") == "" then
    return nil, "not_found"
  end
  local parts = { "timeout", "-s", "KILL", tostring(spec.timeout or 30) }
  for _, a in ipairs(argv) do
    parts[#parts + 1] = q(a)
  end
  local out, err = scratch .. "/exec.out", scratch .. "/exec.err"
  local cmd = table.concat(parts, " ") .. " >" .. q(out) .. " 2>" .. q(err)
  if spec.stdin then
    cmd = cmd .. " <" .. q(spec.stdin)
  end
  local _, _, code = os.execute(cmd)
  if code == 137 then
    return nil, "timeout"
  end
  run.execs[#run.execs + 1] = argv[1]
  return { status = code, signal = 0, stdout = slurp(out) or "", stderr = slurp(err) or "" }
end

function sl.http.request(req)
  local hdr, body = scratch .. "/http.hdr", scratch .. "/http.body"
  local parts = { "curl", "-s", "-X", q(req.method or "GET"), "-D", q(hdr), "-o", q(body),
    "-w", "'%{http_code}'", "--max-time", tostring(req.timeout or 20) }
  for k, v in pairs(req.headers or {}) do
    parts[#parts + 1] = "-H " .. q(k .. ": " .. v)
  end
  if req.body_file then
    parts[#parts + 1] = "--data-binary @" .. q(req.body_file)
  elseif req.body then
    local bf = scratch .. "/http.req"
    local f = io.open(bf, "wb")
    f:write(req.body)
    f:close()
    parts[#parts + 1] = "--data-binary @" .. q(bf)
  end
  if req.aws_sigv4 then
    parts[#parts + 1] = "--aws-sigv4 " .. q(req.aws_sigv4) .. " --user " ..
      q(req.aws_key .. ":" .. req.aws_secret)
  end
  parts[#parts + 1] = q(req.url)
  os.remove(hdr)
  local p = io.popen(table.concat(parts, " "))
  local status = p:read("a")
  local _, _, code = p:close()
  run.calls[#run.calls + 1] = (req.service or "?") .. " " .. req.method .. " " .. req.url
  if code == 28 then
    return nil, "timeout"
  elseif code ~= 0 then
    return nil, "unavailable" -- 7 refused, 52/56 reset
  end
  local headers = {}
  for line in (slurp(hdr) or ""):gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then
      headers[k:lower()] = v
    end
  end
  return { status = tonumber(status), headers = headers, body = slurp(body) or "" }
end

function sl.artifact(a)
  local data = a.data or slurp(a.path)
  assert(data, "artifact without bytes")
  run.artifacts[a.kind] = { mime = a.mime, data = data }
  return "art-" .. a.kind
end

function sl.read_artifact(kind)
  local a = run.artifacts[kind]
  if not a then
    return nil, "not_found"
  end
  return a.data
end

function sl.record(rec)
  run.record = rec
  return true
end

function sl.set_text_source(s)
  run.text_source = s
  return true
end

function sl.sleep()
  return true
end

function flow(f)
  return f
end

-- ---------------------------------------------------------------- driver

local function load_flow(name)
  return dofile(repo .. "/lua-flows/" .. name .. ".lua")
end

local function sample_file(name, schema)
  local path = samples .. "/" .. name
  local mime = sh("file -b --mime-type " .. q(path)):gsub("%s+$", "")
  local size = tonumber((sh("stat -c %s " .. q(path)):gsub("%s+$", "")))
  return { id = "f-" .. name, name = name, mime = mime, size = size, path = path,
    dataset_id = "ds", schema = schema }
end

-- Runs a flow on a file: follows transitions, retries transient failures
-- (3 attempts), and reports what a run would end with.
local function run_flow(fl, file)
  run = { artifacts = {}, logs = {}, calls = {}, execs = {}, steps = {},
    tmpdir = sh("mktemp -d -p " .. q(scratch)):gsub("%s+$", "") }
  local ctx = {}
  local name = fl.start
  local chain_transient = false
  while name do
    local step = fl.steps[name]
    local ok, err
    for attempt = 1, 3 do
      local r1, r2 = step.run(ctx, file)
      ok, err = r1, r2
      run.steps[#run.steps + 1] = name .. (ok and ":ok" or (":" .. tostring(err)))
      if ok or not TRANSIENT[err] then
        break
      end
    end
    if ok then
      chain_transient = false
      name = step.always or step.next
      if not name then
        run.state = "succeeded"
      end
    else
      chain_transient = chain_transient or TRANSIENT[err] or false
      run.error = err
      name = step.always or step.fallback
      if not name then
        run.state = chain_transient and "waiting" or "failed"
      end
    end
  end
  if run.state == "succeeded" then
    run.error = nil
  end
  run.ctx = ctx
  return run
end

local function is_png(s)
  return s and s:sub(1, 8) == "\137PNG\r\n\26\n"
end

local function is_jpeg(s)
  return s and s:sub(1, 3) == "\255\216\255"
end

-- ---------------------------------------------------------------- stand-ins

local procs = {}
local function start_standin(kind, ...)
  local port = tonumber(sh([[python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]))
  local log = scratch .. "/" .. kind .. ".log"
  local extra = table.concat({ ... }, " ")
  local pid = sh("/usr/bin/python3 " .. q(standins_py) .. " " .. kind .. " --port " .. port .. " "
    .. extra .. " >" .. q(log) .. " 2>&1 & echo $!"):gsub("%s+$", "")
  for _ = 1, 100 do
    if (slurp(log) or ""):find("ready") then
      break
    end
    os.execute("sleep 0.05")
  end
  procs[#procs + 1] = pid
  local url = "http://127.0.0.1:" .. port
  return {
    url = url,
    control = function(t)
      sh("curl -s -X POST -d " .. q(cjson.encode(t)) .. " " .. url .. "/_control")
    end,
    stats = function()
      return cjson.decode(sh("curl -s " .. url .. "/_stats"))
    end,
  }
end

-- ---------------------------------------------------------------- tests

local ai, view = load_flow("ai_record"), load_flow("file_view")
check(ai.start == "tika" and ai.steps.tika.fallback == "ocr" and ai.steps.ocr.fallback == "textract"
  and ai.steps.textract.next == "record" and ai.steps.tika.next == "record", "ai_record shape")
check(view.start == "preview" and view.steps.preview.always == "thumbnail", "file_view shape")

-- 1. the shipped config: nothing remote, tesseract for OCR
services = { ocr = { command = { "tesseract", "{input}", "stdout" } } }

local r = run_flow(ai, sample_file("invoice-acme.pdf"))
check(r.state == "succeeded", "invoice: " .. tostring(r.error))
check(r.text_source == "text_layer", "invoice text_source " .. tostring(r.text_source))
check(r.artifacts.text and r.artifacts.text.mime == "text/plain; charset=utf-8", "invoice text artifact")
check(r.record and r.record.reference == "INV-2026-0042", "invoice reference")
check(r.record and r.record.total == 185.52 and r.record.currency == "EUR", "invoice total")
check(r.ctx.text_bytes and not r.ctx.text, "ctx keeps only small facts")

r = run_flow(ai, sample_file("scanned-letter.pdf"))
check(r.state == "succeeded" and r.text_source == "ocr", "scanned pdf via ocr: " .. table.concat(r.steps, " "))
check(r.steps[1] == "tika:no_text", "scanned pdf: text layer empty")
check(r.record and r.record.reference == "DLV-77813", "scanned pdf reference")
check(r.artifacts.text and r.artifacts.text.data:find("Notice of Delivery", 1, true), "scanned pdf text")

r = run_flow(ai, sample_file("scanned-letter.jpg"))
check(r.state == "succeeded" and r.text_source == "ocr", "scanned jpg via ocr")
check(r.record and r.record.reference == "DLV-77813"
  and r.record.title == "Notice of Delivery", "scanned jpg record")

r = run_flow(ai, sample_file("photo.jpg"))
check(r.state == "failed" and r.error == "no_text", "photo: " .. tostring(r.state) .. " " .. tostring(r.error))
check(r.record == nil and r.artifacts.text == nil, "photo: no record, no text")

r = run_flow(ai, sample_file("notes.txt"))
check(r.state == "succeeded" and r.text_source == "text_layer", "notes")
check(r.record and r.record.date == "2026-04-01", "notes record")

r = run_flow(ai, sample_file("truncated.pdf"))
check(r.state == "failed" and r.error == "bad_input", "truncated: " .. tostring(r.error))
local logged = table.concat(r.logs, "\n")
check(logged:find("pdftotext exited 1", 1, true) and logged:find("Syntax Error", 1, true),
  "truncated: the tool's message is logged")

r = run_flow(ai, sample_file("empty.txt"))
check(r.state == "failed" and r.error == "no_text", "empty file fails cleanly: " .. tostring(r.error))

for _, name in ipairs({ "invoice-acme.pdf", "scanned-letter.pdf", "scanned-letter.jpg", "photo.jpg" }) do
  r = run_flow(view, sample_file(name))
  check(r.state == "succeeded", name .. " file_view: " .. tostring(r.error))
  check(r.artifacts.preview and is_png(r.artifacts.preview.data) and #r.artifacts.preview.data > 1000,
    name .. " preview png")
  check(r.artifacts.thumbnail and is_jpeg(r.artifacts.thumbnail.data) and r.artifacts.thumbnail.mime == "image/jpeg",
    name .. " thumbnail jpeg")
end
r = run_flow(view, sample_file("truncated.pdf"))
check(r.state == "failed" and r.error == "bad_input", "truncated file_view fails cleanly")
check(r.steps[1] == "preview:bad_input" and r.steps[2] == "thumbnail:bad_input", "thumbnail tried anyway")
r = run_flow(view, sample_file("notes.txt"))
check(r.state == "failed" and r.error == "unsupported", "no preview of text")

-- 2. Tika first
local tika = start_standin("tika")
services.tika = { url = tika.url }
r = run_flow(ai, sample_file("invoice-acme.pdf"))
check(r.state == "succeeded" and r.text_source == "tika", "tika: invoice")
check(r.record and r.record.reference == "INV-2026-0042", "tika: invoice record")
r = run_flow(ai, sample_file("scanned-letter.pdf"))
check(r.text_source == "ocr" and r.record and r.record.reference == "DLV-77813", "tika -> ocr")
r = run_flow(ai, sample_file("truncated.pdf"))
check(r.steps[1] == "tika:bad_input", "tika 422 is bad_input: " .. r.steps[1])
check(tika.stats().requests == 3, "tika saw three requests")
tika.control({ mode = "fail" })
r = run_flow(ai, sample_file("notes.txt"))
check(r.steps[1] == "tika:server_error" and r.steps[3] == "tika:server_error"
  and r.steps[4] == "ocr:no_text", "tika 500: retried, then ocr: " .. table.concat(r.steps, " "))
tika.control({ mode = "ok" })

-- 3. OCR down -> Textract (signature verified by the stand-in)
local textract = start_standin("textract", "--secret", "secretTEST")
services.textract = { url = textract.url, region = "us-east-1", access_key_id = "AKIDTEST",
  secret_access_key = "secretTEST" }
services.ocr = { command = { "/nonexistent/tesseract", "{input}", "stdout" } }
r = run_flow(ai, sample_file("scanned-letter.jpg"))
check(r.state == "succeeded" and r.text_source == "textract", "ocr down -> textract: " .. table.concat(r.steps, " "))
check(r.steps[2] == "ocr:unavailable", "missing OCR command is unavailable")
check(r.record and r.record.reference == "DLV-77813", "textract record")
textract.control({ mode = "refuse" })
tika.control({ mode = "fail" })
r = run_flow(ai, sample_file("scanned-letter.jpg"))
check(r.state == "waiting", "every path down: the run waits (" .. tostring(r.state) .. ")")
textract.control({ mode = "rate_limit", count = 1 })
tika.control({ mode = "ok" })
services.ocr = { command = { "tesseract", "{input}", "stdout" } }
r = run_flow(ai, sample_file("photo.jpg"))
check(r.state == "failed" and r.error == "no_text", "photo with every service: no_text")
check(table.concat(r.steps, " ") == "tika:no_text ocr:no_text textract:rate_limited textract:no_text",
  "photo steps: " .. table.concat(r.steps, " "))
services.textract.secret_access_key = "wrong"
services.ocr = { command = { "/nonexistent/tesseract", "{input}", "stdout" } }
r = run_flow(ai, sample_file("scanned-letter.jpg"))
check(r.error == "unauthorized", "bad textract keys: unauthorized")
services.textract = nil
services.ocr = { command = { "tesseract", "{input}", "stdout" } }

-- 4. OpenAI for the record
local openai = start_standin("openai")
services.openai = { url = openai.url .. "/v1", api_key = "sk-test", model = "gpt-4o-mini" }
local schema = { type = "object", properties = {
  invoice_number = { type = "string" }, amount = { type = "number" }, paid = { type = "boolean" } } }
r = run_flow(ai, sample_file("invoice-acme.pdf", schema))
check(r.state == "succeeded", "openai record: " .. tostring(r.error) .. " " .. table.concat(r.logs, "; "))
check(r.ctx.record_by == "openai", "record by openai")
check(r.record and r.record.invoice_number == "INV-2026-0042" and r.record.amount == 185.52
  and r.record.paid == false, "openai record fits the schema: " .. cjson.encode(r.record or {}))
openai.control({ mode = "rate_limit", retry_after = 1, count = 1 })
r = run_flow(ai, sample_file("notes.txt"))
check(r.state == "succeeded" and r.steps[2] == "record:rate_limited" and r.steps[3] == "record:ok",
  "openai 429 retried: " .. table.concat(r.steps, " "))
check(table.concat(r.logs, "\n"):find("429", 1, true), "429 logged")
services.openai.api_key = nil
r = run_flow(ai, sample_file("notes.txt"))
check(r.error == "not_configured", "openai without a key")
check(openai.stats().requests == 3, "openai saw three requests")

for _, pid in ipairs(procs) do
  os.execute("kill " .. pid)
end
os.execute("rm -rf " .. q(scratch))
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
