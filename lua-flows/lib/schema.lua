-- schema.lua — a dataset's record_schema (a JSON Schema object) as the flows use it.
--
--   schema.shape(value, schema)  a value made to fit the schema: unknown keys
--                                dropped, scalars coerced to the declared type
--                                where that is safe ("185.52" -> 185.52), values
--                                that cannot fit (and JSON nulls) left out.
--   schema.names(schema)         the property names, sorted (a stable order).
--   schema.DEFAULT               the schema a dataset gets when it has none
--                                (the same as api/datasets.c).
--
-- The form OpenAI's strict structured outputs need is made in C, by the same
-- translator that checks a schema when its dataset is created:
-- sl.schema.openai(schema) (actors/lua_schema.c, core/jschema.c).
--
-- Pure Lua: the only runtime thing it touches is sl.json.null (the decoded
-- JSON null), looked up when called.

local M = {}

M.DEFAULT = {
  type = "object",
  properties = {
    title = { type = "string" },
    reference = { type = "string" },
    date = { type = "string" },
    total = { type = "number" },
    currency = { type = "string" },
    email = { type = "string" },
  },
}

local function is_null(v)
  return v == nil or (sl ~= nil and sl.json ~= nil and v == sl.json.null)
end

--- The schema's property names in sorted order ({} when it has none).
function M.names(schema)
  local out = {}
  if type(schema) == "table" and type(schema.properties) == "table" then
    for k in pairs(schema.properties) do
      if type(k) == "string" then
        out[#out + 1] = k
      end
    end
  end
  table.sort(out)
  return out
end

-- The declared types of a schema node as a list ({"string"}, {"string","null"}),
-- or {} when it declares none (anything goes).
local function types_of(node)
  local t = type(node) == "table" and node.type or nil
  if type(t) == "string" then
    return { t }
  elseif type(t) == "table" then
    return t
  end
  -- No "type" but "properties": an object.
  if type(node) == "table" and type(node.properties) == "table" then
    return { "object" }
  end
  return {}
end

-- A number from a string that is only a number ("  12.5 " -> 12.5).
local function to_number(v)
  if type(v) == "number" then
    return v
  end
  if type(v) == "string" then
    local s = v:match("^%s*(.-)%s*$")
    if s:match("^[-+]?%d+%.?%d*$") or s:match("^[-+]?%.%d+$") or s:match("^[-+]?%d+%.?%d*[eE][-+]?%d+$") then
      return tonumber(s)
    end
  end
  return nil
end

local function is_array(t)
  if type(t) ~= "table" then
    return false
  end
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n == #t
end

local shape

-- The value coerced to one declared type, or nil when it cannot be.
local function coerce(v, ty, node)
  if ty == "string" then
    if type(v) == "string" then
      return v
    elseif type(v) == "number" then
      -- Integers print without ".0": 42 -> "42".
      if math.type(v) == "float" and v == math.floor(v) and v > -2^53 and v < 2^53 then
        return tostring(math.tointeger(v))
      end
      return tostring(v)
    elseif type(v) == "boolean" then
      return tostring(v)
    end
  elseif ty == "number" then
    return to_number(v)
  elseif ty == "integer" then
    local n = to_number(v)
    if n ~= nil and n == math.floor(n) then
      return math.tointeger(n) or n
    end
  elseif ty == "boolean" then
    if type(v) == "boolean" then
      return v
    elseif type(v) == "string" then
      local s = v:lower():match("^%s*(.-)%s*$")
      if s == "true" or s == "yes" then
        return true
      elseif s == "false" or s == "no" then
        return false
      end
    end
  elseif ty == "array" then
    if type(v) == "table" and is_array(v) then
      -- marked as an array, so an empty one is [] in the record, not {}
      local out = (sl ~= nil and sl.json ~= nil and sl.json.array) and sl.json.array() or {}
      local items = type(node) == "table" and node.items or nil
      for _, item in ipairs(v) do
        local s = shape(item, items)
        if s ~= nil then
          out[#out + 1] = s
        end
      end
      return out
    end
  end
  return nil
end

--- `value` made to fit `schema`, or nil when it cannot (or is null).
--- For an object schema the result holds only the declared properties that
--- have a fitting value; a missing or null property is simply absent.
function shape(value, schema)
  if is_null(value) then
    return nil
  end
  local types = types_of(schema)
  if #types == 0 then
    return value -- no type declared: keep as is
  end
  -- The value's own type first (a string stays a string under
  -- ["number","string"]), then the declared ones in order.
  for _, ty in ipairs(types) do
    if ty ~= "null" then
      local own = (ty == "string" and type(value) == "string")
        or ((ty == "number" or ty == "integer") and type(value) == "number")
        or (ty == "boolean" and type(value) == "boolean")
      if own then
        local c = coerce(value, ty, schema)
        if c ~= nil then
          return c
        end
      end
    end
  end
  for _, ty in ipairs(types) do
    if ty == "object" and type(value) == "table" then
      local out = {}
      local props = type(schema.properties) == "table" and schema.properties or {}
      for _, name in ipairs(M.names(schema)) do
        local s = shape(value[name], props[name])
        if s ~= nil then
          out[name] = s
        end
      end
      return out
    elseif ty ~= "null" and ty ~= "object" then
      local c = coerce(value, ty, schema)
      if c ~= nil then
        return c
      end
    end
  end
  return nil
end

M.shape = shape

return M
