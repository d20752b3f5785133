-- run_lib_tests.lua — unit tests of the pure-Lua flow modules (lua-flows/lib).
--
--   lua5.4 tests/lua/run_lib_tests.lua
--
-- Runs tests/lua/test_text.lua, test_schema.lua, test_local_extract.lua and test_office.lua with a tiny stand-in for the
-- runtime's `sl` table (only sl.json, backed by lua-cjson — the modules under
-- test do no I/O), prints one line per failed check and a last line
-- "N passed, M failed"; exits non-zero when a check failed.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local repo = here .. "/../.."
package.path = repo .. "/lua-flows/lib/?.lua;" .. here .. "/?.lua;" .. package.path

local cjson = require "cjson"


-- The fake runtime: what schema.lua / local_extract.lua may touch.
sl = {
  json = {
    null = cjson.null,
    encode = cjson.encode,
    decode = cjson.decode,
  },
  log = function() end,
}

local passed, failed = 0, 0

local function show(v)
  if type(v) == "table" then
    local ok, s = pcall(cjson.encode, v)
    return ok and s or tostring(v)
  end
  return string.format("%q", v)
end

local function deep_eq(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not deep_eq(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

-- The checks every test file gets.
local t = {}

function t.check(cond, what)
  local info = debug.getinfo(2, "Sl")
  if cond then
    passed = passed + 1
  else
    failed = failed + 1
    print(string.format("%s:%d: FAILED: %s", info.short_src, info.currentline, what or "check"))
  end
end

function t.eq(got, want, what)
  local info = debug.getinfo(2, "Sl")
  if deep_eq(got, want) then
    passed = passed + 1
  else
    failed = failed + 1
    print(string.format("%s:%d: FAILED: %s: got %s, want %s", info.short_src, info.currentline,
      what or "eq", show(got), show(want)))
  end
end

-- Runs a shell command and returns its stdout, or nil when it failed (used
-- to test on the real samples' real tool output when the tools are there).
function t.run(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  if not p then
    return nil
  end
  local out = p:read("a")
  local ok = p:close()
  if not ok then
    return nil
  end
  return out
end

t.samples = os.getenv("SLUICE_SAMPLES") or (repo .. "/../shared/samples")

local files = { "test_text", "test_schema", "test_local_extract", "test_office" }
for _, name in ipairs(files) do
  local ok, err = pcall(function()
    require(name)(t)
  end)
  if not ok then
    failed = failed + 1
    print(name .. ": ERROR: " .. tostring(err))
  end
end

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
