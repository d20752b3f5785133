-- test_schema.lua — schema.shape, schema.names.
-- (The OpenAI strict form is made in C by sl.schema.openai: tests/unit/test_jschema.c
-- tests the translator; tests/unit/test_flow.c's lua_schema check the binding.)
local schema = require "schema"

return function(t)
  local s = {
    type = "object",
    properties = {
      title = { type = "string" },
      total = { type = "number" },
      count = { type = "integer" },
      paid = { type = "boolean" },
      tags = { type = "array", items = { type = "string" } },
      addr = { type = "object", properties = { city = { type = "string" } } },
      maybe = { type = { "string", "null" } },
    },
  }

  -- shape: unknown keys dropped, types coerced, nulls and misfits absent
  local got = schema.shape({
    title = 42, total = "185.52", count = "7", paid = "yes", tags = { "a", 1 },
    addr = { city = "Leeds", zip = "LS1" }, maybe = sl.json.null, extra = "x",
  }, s)
  t.eq(got, {
    title = "42", total = 185.52, count = 7, paid = true, tags = { "a", "1" },
    addr = { city = "Leeds" },
  }, "shape coerces and drops")
  t.eq(math.type(got.count), "integer", "integer stays an integer")

  t.eq(schema.shape({ total = "about 12", count = 1.5, paid = "maybe" }, s), {},
    "values that cannot fit are left out")
  t.eq(schema.shape({ total = 3 }, s), { total = 3 }, "a number stays a number")
  t.eq(schema.shape({ title = 1.0 }, s), { title = "1" }, "integral float prints as an integer")
  t.eq(schema.shape("not an object", s), nil, "a scalar does not fit an object")
  t.eq(schema.shape({}, s), {}, "empty object")
  t.eq(schema.shape({ maybe = "x" }, s), { maybe = "x" }, "nullable type keeps a value")
  t.eq(schema.shape({ a = 1 }, nil), { a = 1 }, "no schema: kept as is")
  t.eq(schema.shape({ x = "1" }, { type = "object", properties = { x = { type = { "number", "string" } } } }),
    { x = "1" }, "a string stays a string when string is allowed")

  -- names: sorted, stable
  t.eq(schema.names(s), { "addr", "count", "maybe", "paid", "tags", "title", "total" }, "names sorted")
  t.eq(schema.names({}), {}, "no properties")

  -- the Lua translator is gone: one translator, in C
  t.eq(schema.strict, nil, "no schema.strict")
end
