-- parked.lua — steps that park on sl.sleep (test_flow_park.c measures what a
-- parked step holds) and steps that read or change file.schema.
return flow {
  start = "park",
  steps = {
    -- Reads the file like the tika step does, then waits on I/O.
    park = {
      run = function(ctx, file)
        ctx.mime = file.mime
        ctx.props = type(file.schema) == "table" and #file.schema.required or -1
        sl.sleep(3600)
        return true
      end,
      timeout = 7200,
      next = "look",
    },
    -- What the flow sees of file.schema: its values, pairs, raw access, JSON.
    look = {
      run = function(ctx, file)
        local s = file.schema
        ctx.kind = type(s)
        if type(s) == "table" then
          ctx.type = s.type
          ctx.title = s.properties.title.type
          ctx.required = s.required
          ctx.raw = rawget(s, "type")
          local n = 0
          for _ in pairs(s.properties) do n = n + 1 end
          ctx.nprops = n
          ctx.json = sl.json.encode(s)
          local strict, text = sl.schema.openai(s)
          ctx.openai = text
        end
        ctx.name = file.name
        sl.sleep(0)
        ctx.after = file.schema == s
        return true
      end,
      next = "poke",
    },
    -- Changes the shared schema: refused (the dataset's runs share it).
    poke = {
      run = function(ctx, file)
        file.schema.properties.title.type = "number"
        sl.sleep(0)
        return true
      end,
      next = "add",
    },
    add = {
      run = function(ctx, file)
        file.schema.extra = 1
        return true
      end,
      next = "drop",
    },
    -- More changes, each refused: deep, a removal, an order, a metatable, a
    -- table put in an array's place (equal values, but not the shared table's).
    drop = {
      run = function(ctx, file) file.schema.properties.email = nil return true end,
      next = "swap",
    },
    swap = {
      run = function(ctx, file)
        local r = file.schema.required
        r[1], r[2] = r[2], r[1]
        return true
      end,
      next = "meta",
    },
    meta = {
      run = function(ctx, file) setmetatable(file.schema.properties.date, {}) return true end,
      next = "copy",
    },
    copy = {
      run = function(ctx, file)
        file.schema.required = { "title", "reference" }
        return true
      end,
    },
  },
}
