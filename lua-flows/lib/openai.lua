-- openai.lua — a dataset record from a document's text with OpenAI chat completions.
--
--   local rec, model = openai.extract(txt, schema)   -- or nil, err, detail
--       -- model: the model asked (services.openai.model), provenance.model
--
-- One request (OpenAI API reference, "Create chat completion", and the
-- "Structured Outputs" guide):
--   POST {base_url}/chat/completions
--   Authorization: Bearer <api_key>   (added by the runtime from the config)
--   {"model": ..., "messages": [system prompt, the text],
--    "response_format": {"type": "json_schema",
--                         "json_schema": {"name": "record", "strict": true,
--                                         "schema": <strict schema>}}}
-- With strict structured outputs the model's answer is guaranteed to parse
-- against the schema, but strict mode accepts only a subset of JSON Schema
-- (a plain object root, every property required, additionalProperties false,
-- ...). sl.schema.openai() makes that form (core/jschema.c, the translator
-- that also checks a schema when its dataset is created) and makes every
-- property below the root nullable, so "the text does not say" comes back
-- as null, not a guess.
-- The answer (choices[1].message.content, a JSON string) is shaped to the
-- dataset's own schema again, which drops the nulls.
--
-- Errors: "not_configured", "rate_limited" (429: the runtime holds every call
-- to openai back until Retry-After has passed, and the run waits),
-- "server_error" (5xx), "timeout", "unavailable", "unauthorized" (bad key),
-- "bad_input" (a schema that cannot be translated, or a 400 from OpenAI: its
-- error.message is logged at error level and returned as the detail, for the
-- step's timeline event), "refused" (the model declined), "bad_response".

local text = require "text"
local schema_lib = require "schema"

local M = {}

local DEFAULT_BASE_URL = "https://api.openai.com/v1"
local DEFAULT_MODEL = "gpt-4o-mini"
-- About 3,000 tokens of text: enough for the fields of a typical document,
-- and it bounds the cost and latency of one call.
local MAX_TEXT_BYTES = 12000
local MAX_ANSWER_BYTES = 4 * 1024 * 1024

local SYSTEM_PROMPT = [[
You extract a structured record from the text of one document (an invoice, a
letter, notes, ...). Fill each field of the JSON schema with what the text
states. Use null when the text does not give a value; never invent one.
Write dates as YYYY-MM-DD, amounts as plain numbers without currency symbols or
thousands separators, and currencies as ISO 4217 codes (EUR, USD, ...).
]]

--- A record for `schema` (schema.DEFAULT when nil) from the text `txt` and
--- the model that made it, or nil, err, detail.
function M.extract(txt, schema)
  local svc = sl.service("openai")
  if not (svc and svc.configured) then
    return nil, "not_configured"
  end
  if not svc.credentials then
    return text.fail("openai", "not_configured", "openai needs api_key")
  end
  schema = schema or schema_lib.DEFAULT
  local strict, strict_json = sl.schema.openai(schema)
  if not strict then
    return text.fail("openai", "bad_input", "record_schema: " .. tostring(strict_json))
  end

  local request = {
    model = svc.model or DEFAULT_MODEL,
    messages = {
      { role = "system", content = SYSTEM_PROMPT },
      { role = "user", content = text.truncate_utf8(txt, MAX_TEXT_BYTES) },
    },
  }
  -- response_format goes in as JSON text: encoded from a Lua table, the
  -- schema would lose its property order, which is the order the model
  -- writes the fields in. strict_json is `strict` in order.
  local body = sl.json.encode(request):sub(1, -2)
    .. ',"response_format":{"type":"json_schema","json_schema":'
    .. '{"name":"record","strict":true,"schema":' .. strict_json .. '}}}'

  local res, err = sl.http.request {
    method = "POST",
    url = text.strip_slash(svc.url or DEFAULT_BASE_URL) .. "/chat/completions",
    headers = { ["Content-Type"] = "application/json" },
    body = body,
    max_bytes = MAX_ANSWER_BYTES,
    service = "openai",
  }
  if not res then
    return text.fail("openai", err or "unavailable")
  end
  if res.status == 400 then
    -- A request OpenAI will not take (a schema it refuses, a model that does
    -- not do structured outputs): retrying cannot help, and the operator
    -- needs OpenAI's own words.
    local edoc = text.decode_json(res.body)
    local emsg = type(edoc) == "table" and type(edoc.error) == "table"
      and type(edoc.error.message) == "string" and edoc.error.message
      or text.short(res.body, 300) or "no error message"
    local detail = "HTTP 400: " .. text.truncate_utf8(emsg, 500)
    sl.log("error", "openai: request refused: " .. detail, {
      module = "openai", error = "bad_input", status = 400, detail = detail,
    })
    return nil, "bad_input", detail
  end
  if res.status ~= 200 then
    -- 429 -> rate_limited and 5xx -> server_error are transient: the step is
    -- retried with backoff, then the run waits; a Retry-After or rate-limit
    -- headers hold every openai call back (actors/service.h).
    return text.http_fail("openai", res)
  end

  local doc = text.decode_json(res.body)
  local choice = type(doc) == "table" and type(doc.choices) == "table" and doc.choices[1] or nil
  local msg = type(choice) == "table" and choice.message or nil
  if type(msg) ~= "table" then
    return text.fail("openai", "bad_response", "no choices[1].message in the answer")
  end
  if type(msg.refusal) == "string" then
    return text.fail("openai", "refused", text.short(msg.refusal, 200))
  end
  local content = text.decode_json(msg.content)
  if type(content) ~= "table" then
    -- finish_reason "length" leaves the JSON cut off.
    return text.fail("openai", "bad_response", "content is not a JSON object (finish_reason "
      .. tostring(choice.finish_reason) .. ")")
  end
  if type(doc.usage) == "table" then
    sl.log("info", "openai: record extracted", {
      model = request.model,
      prompt_tokens = doc.usage.prompt_tokens,
      completion_tokens = doc.usage.completion_tokens,
    })
  end
  return schema_lib.shape(content, schema) or {}, request.model
end

return M
