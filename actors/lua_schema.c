/*
 * lua_schema.c — sl.schema.openai(schema): a dataset's record schema in the
 * form OpenAI's strict structured outputs accept, through the one translator
 * in core/jschema.c (the same one api/datasets.c checks schemas with).
 *
 *   local strict, text = sl.schema.openai(schema)  -- or nil, message
 *
 * `schema` is a Lua table, or the schema's JSON text. `strict` is the
 * translated schema as a table (its arrays carry the array metatable, so an
 * empty "required" encodes as []); `text` is the same as compact JSON text,
 * with the properties in order.
 *
 * Property order. OpenAI's model writes the properties in the schema's
 * order, and a stable schema lets OpenAI reuse its processed form; but a Lua
 * table has no order (neither has the JSON sl.json.encode makes of it). So a
 * table equal to the running step's file.schema (the dataset's schema as the
 * flow received it, parsed in the client's order) is translated from that
 * parsed copy; any other table with its keys sorted; JSON text in its own
 * order. A request that must keep the order sends `text` (openai.lua does).
 */
#include "actors/lua_api.h"

#include <stdlib.h>

#include "core/jschema.h"

#define SCHEMABOX_MT "sl.schemabox"

/* The JSON values of one call, freed by the box's finalizer if pushing raises. */
typedef struct schemabox_s {
    json_t *in, *out;
    char *text;
} schemabox_t;

static void box_clear(schemabox_t *box)
{
    json_decref(box->in);
    json_decref(box->out);
    free(box->text);
    box->in = box->out = NULL;
    box->text = NULL;
}

static int schemabox_gc(lua_State *L)
{
    box_clear(luaL_checkudata(L, 1, SCHEMABOX_MT));
    return 0;
}

/* j (taken) in a known order: the step's parsed file.schema when equal, else keys sorted. */
static json_t *in_order(lua_State *L, json_t *j)
{
    sl_step_t *s = sl_flow__step(L);
    json_t *written = s != NULL ? sl_flow__step_schema(s) : NULL;
    json_t *sorted;
    char *text;

    if (written != NULL && json_equal(j, written)) {
        json_decref(j);
        return json_incref(written);
    }
    if ((text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS)) == NULL)
        return j;
    sorted = json_loads(text, 0, NULL);
    free(text);
    if (sorted == NULL)
        return j;
    json_decref(j);
    return sorted;
}

static int l_schema_openai(lua_State *L)
{
    char err[320];
    schemabox_t *box;

    luaL_checkany(L, 1);
    lua_settop(L, 1);
    if (lua_type(L, 1) != LUA_TTABLE && lua_type(L, 1) != LUA_TSTRING)
        return luaL_argerror(L, 1, "a schema table or JSON text expected");
    box = lua_newuserdatauv(L, sizeof(*box), 0);
    box->in = box->out = NULL;
    box->text = NULL;
    luaL_setmetatable(L, SCHEMABOX_MT);

    if (lua_type(L, 1) == LUA_TSTRING) {
        size_t len;
        const char *text = lua_tolstring(L, 1, &len);
        json_error_t jerr;
        if ((box->in = json_loadb(text, len, 0, &jerr)) == NULL) {
            lua_pushnil(L);
            lua_pushfstring(L, "the schema is not JSON: %s", jerr.text);
            return 2;
        }
    } else {
        if ((box->in = sl_flow__to_json(L, 1, err, sizeof(err))) == NULL) {
            lua_pushnil(L);
            lua_pushfstring(L, "the schema cannot be made JSON: %s", err);
            return 2;
        }
        box->in = in_order(L, box->in);
    }
    if (sl_jschema_openai(box->in, &box->out, err, sizeof(err)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    if ((box->text = json_dumps(box->out, JSON_COMPACT)) == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    sl_flow__push_json(L, box->out);
    lua_pushstring(L, box->text);
    box_clear(box); /* now, rather than at the next collection */
    return 2;
}

void sl_lua_inject_schema(lua_State *L, sl_flowvm_t *vm)
{
    if (luaL_newmetatable(L, SCHEMABOX_MT)) {
        lua_pushcfunction(L, schemabox_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_schema_openai, 1);
    lua_setfield(L, -2, "openai");
    lua_setfield(L, -2, "schema");
}
