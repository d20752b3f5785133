-- basic.lua — the steps test_flow.c runs one by one (chained by next so that
-- every step is reachable, as the loader requires).
local helper = require "helper"

return flow {
  start = "ok",
  steps = {
    ok = {
      run = function(ctx, file)
        ctx.a = 1
        ctx.list = {1, 2, 3}
        ctx.nested = {x = "y", f = 1.5}
        ctx.seen = ctx.input
        ctx.file_name = file.name
        ctx.greeting = helper.greet("flow")
        ctx.empty_arr = ctx.arr_in
        ctx.null_kept = ctx.null_in == sl.json.null
        return true
      end,
      next = "no_text",
    },
    no_text = { run = function(ctx) return nil, "no_text" end, next = "falsy" },
    falsy = { run = function(ctx) return false end, next = "boom" },
    boom = {
      run = function(ctx)
        ctx.before_boom = true
        error("kaboom")
      end,
      next = "loop",
    },
    loop = { run = function() while true do end end, next = "pcall_loop" },
    pcall_loop = {
      run = function()
        while true do pcall(function() while true do end end) end
      end,
      next = "hog",
    },
    hog = {
      run = function()
        local t = {}
        for i = 1, 1e7 do t[i] = string.rep("x", 1e5) .. i end
        return true
      end,
      next = "hog_pcall",
    },
    hog_pcall = {
      run = function()
        local t = {}
        local ok = pcall(function()
          for i = 1, 1e7 do t[i] = string.rep("y", 1e5) .. i end
        end)
        t = nil
        return true
      end,
      next = "small",
    },
    small = { run = function(ctx) ctx.small = string.rep("z", 10) return true end, next = "os_execute" },
    os_execute = { run = function() os.execute("true") return true end, next = "io_open" },
    io_open = { run = function() io.open("/etc/passwd") return true end, next = "use_load" },
    use_load = { run = function() load("return 1")() return true end, next = "new_global" },
    new_global = { run = function() leaked = 1 return true end, next = "string_dump" },
    string_dump = { run = function() return string.dump(function() end) end, next = "gc_meta" },
    gc_meta = { run = function() setmetatable({}, {__gc = function() end}) return true end, next = "bad_ctx" },
    bad_ctx = { run = function(ctx) ctx.f = function() end return true end, next = "echo" },
    echo = {
      run = function(ctx)
        local r, err = sl.exec{argv = {"echo", "hello", "world"}}
        if not r then return nil, err end
        ctx.out = r.stdout
        ctx.status = r.status
        return true
      end,
      next = "no_such_tool",
    },
    no_such_tool = {
      run = function(ctx)
        local r, err = sl.exec{argv = {"sl-no-such-tool-xyz"}}
        if not r then return nil, err end
        return true
      end,
      next = "nap",
    },
    nap = { run = function(ctx) sl.sleep(0.05) ctx.napped = true return true end, next = "long_nap" },
    long_nap = { run = function(ctx) ctx.started = true sl.sleep(5) return true end, timeout = 0.2, next = "http" },
    http = {
      run = function(ctx)
        local r, err = sl.http.request{url = ctx.url, service = ctx.service, timeout = ctx.timeout,
                                       headers = {["X-Req"] = "1"}}
        if not r then return nil, err end
        ctx.status = r.status
        ctx.body = r.body
        ctx.hdr = r.headers["x-test"]
        if r.status >= 500 then return nil, "server_error" end
        return true
      end,
      next = "pcall_sleep",
    },
    pcall_sleep = {
      run = function(ctx)
        local ok, v = pcall(function() sl.sleep(0.01) return "inside" end)
        ctx.pcall_ok = ok
        ctx.pcall_v = v
        local ok2, e = pcall(error, "caught")
        ctx.caught = e
        return ok and ok2 == false
      end,
      next = "util",
    },
    util = {
      run = function(ctx)
        ctx.sha = sl.sha256("abc")
        ctx.hmac = sl.hmac_sha256("key", "The quick brown fox jumps over the lazy dog")
        local v = sl.json.decode('{"a":[1,2,{"b":null}],"c":"d"}')
        ctx.dec_null = v.a[3].b == sl.json.null
        ctx.enc = sl.json.encode({1, 2, 3})
        ctx.enc_empty = sl.json.encode(sl.json.decode('[]'))
        local bad, why = sl.json.decode("{nope")
        ctx.bad_json = why
        ctx.svc = sl.service("capped").configured
        ctx.svc_missing = sl.service("nope").configured
        ctx.tmp = sl.tmpdir()
        sl.log("info", "hello from a flow", {k = "v"})
        return true
      end,
      next = "late_require",
    },
    late_require = {
      run = function(ctx)
        ctx.cached = require("helper").greet("again")  -- loaded with the flow: fine
        require "other"                                -- a new module inside a step: refused
        return true
      end,
      next = "artifact",
    },
    artifact = {
      run = function(ctx)
        local id, err = sl.artifact{kind = ctx.kind or "text", mime = "text/plain", data = ctx.data, path = ctx.path}
        if not id then return nil, err end
        ctx.artifact_id = id
        return true
      end,
      next = "read_back",
    },
    read_back = {
      run = function(ctx)
        local b, err = sl.read_artifact(ctx.kind or "text")
        if not b then return nil, err end
        ctx.read_len = #b
        ctx.read_sha = sl.sha256(b)
        return true
      end,
      next = "record",
    },
    record = {
      run = function(ctx)
        -- ctx.prov: sl.record's provenance options (extractor, model), if any
        local ok, err = sl.record({title = ctx.title, n = 3, tags = {"a", "b"}}, ctx.prov)
        if not ok then return nil, err end
        ctx.version = ok
        local ok2, err2 = sl.set_text_source(ctx.source or "tika")
        if not ok2 then return nil, err2 end
        return true
      end,
    },
  },
}
