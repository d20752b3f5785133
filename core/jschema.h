/*
 * jschema.h — a dataset's record schema (JSON Schema) in the form OpenAI's
 * Structured Outputs accept with "strict": true.
 *
 * One translator, used where a dataset is created (api/datasets.c refuses a
 * schema it cannot translate, so a dataset never holds one OpenAI would answer
 * 400 to) and by the flow that calls OpenAI (sl.schema.openai, through
 * actors/lua_schema.c). It knows nothing of datasets, flows or HTTP.
 *
 * What it does (OpenAI, "Structured Outputs", section "Supported schemas"; the
 * rules and limits are the constants in jschema.c, each with the rule it
 * follows; docs/flows.md "Record schemas and OpenAI" has the user's view):
 *   - the root must be an object schema and stays a plain "type": "object";
 *   - every object gets "additionalProperties": false and all its properties
 *     in "required", in the schema's own property order;
 *   - every property below the root becomes nullable ("type": [T, "null"],
 *     null added to an enum, a {"type": "null"} branch added to an anyOf), so
 *     a value the text does not give comes back as null, not invented;
 *   - the keywords OpenAI supports pass; value constraints it does not
 *     (minLength, uniqueItems, default, ...) and annotations are dropped;
 *   - structure it cannot express (allOf, not, if/then/else, tuples,
 *     patternProperties, ...) and schemas over OpenAI's size limits are
 *     refused with a message naming the keyword and its JSON Pointer path.
 * Linear in the size of the input; recursion is bounded by a depth limit
 * checked before each descent, so no input can exhaust the stack.
 */
#ifndef SL_JSCHEMA_H
#define SL_JSCHEMA_H

#include <stddef.h>

#include <jansson.h>

/**
 * Translates record_schema (borrowed; not modified) to OpenAI's strict form.
 * Returns 0 and sets *out to a new schema (returns owned: json_decref it), or
 * SL_EINVAL with a one-line message in err (always NUL-terminated when
 * errlen > 0), e.g. `"allOf" at /properties/items/items: not supported by
 * OpenAI structured outputs`, or SL_ENOMEM. *out is NULL on failure.
 * Object members keep their order (jansson keeps insertion order).
 */
int sl_jschema_openai(const json_t *record_schema, json_t **out, char *err, size_t errlen);

/** sl_jschema_openai with the result discarded: 0 when record_schema can be translated. */
int sl_jschema_check(const json_t *record_schema, char *err, size_t errlen);

#endif
