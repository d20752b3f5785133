-- test_schema.lua — schema.shape, schema.strict, schema.names.
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

  -- strict: everything required, nullable, no additional properties
  local st = schema.strict({
    type = "object",
    properties = {
      a = { type = "string", minLength = 3, description = "A" },
      b = { type = "number" },
      c = { type = { "integer", "null" } },
      d = { type = "object", properties = { e = { type = "boolean" } } },
      f = { type = "array", items = { type = "string" } },
      g = { enum = { "x", "y" }, type = "string" },
      h = {},
    },
  })
  t.eq(st.type, { "object", "null" }, "root type nullable")
  t.eq(st.additionalProperties, false, "root additionalProperties false")
  t.eq(st.required, { "a", "b", "c", "d", "f", "g", "h" }, "all required, sorted")
  t.eq(st.properties.a, { type = { "string", "null" }, description = "A" }, "unsupported keywords dropped")
  t.eq(st.properties.b.type, { "number", "null" }, "number nullable")
  t.eq(st.properties.c.type, { "integer", "null" }, "already nullable not doubled")
  t.eq(st.properties.d.required, { "e" }, "nested object required")
  t.eq(st.properties.d.additionalProperties, false, "nested object closed")
  t.eq(st.properties.d.properties.e.type, { "boolean", "null" }, "nested nullable")
  t.eq(st.properties.f.items.type, { "string", "null" }, "array items strict")
  t.eq(st.properties.g.enum, { "x", "y", sl.json.null }, "enum allows null")
  t.eq(st.properties.h.type, { "string", "null" }, "untyped becomes nullable string")

  -- the strict schema encodes as JSON with arrays where JSON Schema wants them
  local enc = sl.json.decode(sl.json.encode(schema.strict(schema.DEFAULT)))
  t.eq(enc.required, { "currency", "date", "email", "reference", "title", "total" }, "encoded required")
  t.eq(enc.properties.total.type, { "number", "null" }, "encoded type list")

  -- strict of an object without properties has no empty "required"
  local empty = schema.strict({ type = "object" })
  t.eq(empty.required, nil, "no required on an empty object")

  -- input not modified
  local orig = { type = "object", properties = { a = { type = "string" } } }
  schema.strict(orig)
  t.eq(orig, { type = "object", properties = { a = { type = "string" } } }, "strict does not modify")
end
