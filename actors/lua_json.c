/*
 * lua_json.c — sl.json.encode, sl.json.decode, sl.json.array and sl.json.null; and the
 * JSON <-> Lua conversion the runtime uses for ctx, file and results.
 *
 * JSON mapping: objects <-> tables with string keys; arrays <-> sequences
 * (decoded arrays carry a metatable so an empty one encodes back as []);
 * null <-> sl.json.null (a light userdata); integers stay integers.
 */
#include "actors/lua_api.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char null_sentinel = 'n';
#define JSON_NULL ((void *)&null_sentinel)
#define JSONBOX_MT "sl.jsonbox"

/* ---- JSON -> Lua ---- */

void sl_flow__push_json(lua_State *L, json_t *v)
{
    luaL_checkstack(L, 4, "JSON nested too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *e;
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach(v, k, e)
        {
            sl_flow__push_json(L, e);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            sl_flow__push_json(L, json_array_get(v, i));
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        lua_rawgetp(L, LUA_REGISTRYINDEX, sl_flow__array_mt_key());
        lua_setmetatable(L, -2);
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(v));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        lua_pushlightuserdata(L, JSON_NULL);
        break;
    }
}

/* ---- Lua -> JSON ---- */

static json_t *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen);

static int is_array_mt(lua_State *L, int idx)
{
    int r = 0;
    if (lua_getmetatable(L, idx)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, sl_flow__array_mt_key());
        r = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    return r;
}

static json_t *table_to_json(lua_State *L, int t, int depth, char *err, size_t errlen)
{
    lua_Unsigned n = lua_rawlen(L, t);
    lua_Unsigned count = 0;
    int seq = 1;
    json_t *out;

    if (depth > SL_FLOW_JSON_DEPTH) {
        snprintf(err, errlen, "tables nested more than %d deep (a cycle?)", SL_FLOW_JSON_DEPTH);
        return NULL;
    }
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "out of Lua stack");
        return NULL;
    }
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        count++;
        if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1 ||
            (lua_Unsigned)lua_tointeger(L, -2) > n)
            seq = 0;
        lua_pop(L, 1);
    }
    if (count == 0 && !is_array_mt(L, t))
        return json_object();
    if (seq && count == n) {
        if ((out = json_array()) == NULL)
            goto oom;
        for (lua_Unsigned i = 1; i <= n; i++) {
            lua_rawgeti(L, t, (lua_Integer)i);
            json_t *e = to_json(L, lua_gettop(L), depth + 1, err, errlen);
            lua_pop(L, 1);
            if (e == NULL || json_array_append_new(out, e) != 0) {
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    if ((out = json_object()) == NULL)
        goto oom;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        char kbuf[32];
        const char *k;
        size_t klen;
        if (lua_type(L, -2) == LUA_TSTRING) {
            k = lua_tolstring(L, -2, &klen);
        } else if (lua_isinteger(L, -2)) {
            snprintf(kbuf, sizeof(kbuf), "%lld", (long long)lua_tointeger(L, -2));
            k = kbuf;
            klen = strlen(kbuf);
        } else {
            snprintf(err, errlen, "a table key of type %s (JSON keys are strings)",
                     luaL_typename(L, -2));
            lua_pop(L, 2);
            json_decref(out);
            return NULL;
        }
        json_t *e = to_json(L, lua_gettop(L), depth + 1, err, errlen);
        if (e == NULL || json_object_setn_new(out, k, klen, e) != 0) {
            if (e != NULL)
                snprintf(err, errlen, "a key that is not UTF-8");
            lua_pop(L, 2);
            json_decref(out);
            return NULL;
        }
        lua_pop(L, 1);
    }
    return out;
oom:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

static json_t *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
    json_t *j = NULL;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        j = json_null();
        break;
    case LUA_TBOOLEAN:
        j = json_boolean(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            j = json_integer((json_int_t)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) {
                snprintf(err, errlen, "a number that is NaN or infinite");
                return NULL;
            }
            j = json_real(d);
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if ((j = json_stringn(s, len)) == NULL) {
            snprintf(err, errlen, "a string that is not UTF-8");
            return NULL;
        }
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == JSON_NULL) {
            j = json_null();
            break;
        }
        /* fall through */
    default:
        if (lua_type(L, idx) == LUA_TTABLE)
            return table_to_json(L, idx, depth, err, errlen);
        snprintf(err, errlen, "a %s value", luaL_typename(L, idx));
        return NULL;
    }
    if (j == NULL)
        snprintf(err, errlen, "out of memory");
    return j;
}

json_t *sl_flow__to_json(lua_State *L, int idx, char *err, size_t errlen)
{
    return to_json(L, lua_absindex(L, idx), 0, err, errlen);
}

/* ---- Lua == JSON ---- */

/* A table's entries against j's (an object's members or an array's elements):
 * every key finds its own member and is the same, and there are as many. */
static int same_json(lua_State *L, int idx, const json_t *j, int depth);

static int same_entries(lua_State *L, int t, const json_t *j, int depth)
{
    int arr = json_is_array(j);
    size_t want = arr ? json_array_size(j) : json_object_size(j), count = 0;

    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        const json_t *e = NULL;
        if (!arr && lua_type(L, -2) == LUA_TSTRING) {
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen); /* a string already: no conversion */
            e = json_object_getn(j, k, klen);
        } else if (arr && lua_isinteger(L, -2)) {
            lua_Integer i = lua_tointeger(L, -2);
            if (i >= 1 && (lua_Unsigned)i <= want)
                e = json_array_get(j, (size_t)i - 1);
        }
        if (e == NULL || ++count > want || !same_json(L, lua_gettop(L), e, depth + 1)) {
            lua_pop(L, 2);
            return 0;
        }
        lua_pop(L, 1);
    }
    return count == want; /* distinct keys, each found: one entry each */
}

static int same_json(lua_State *L, int idx, const json_t *j, int depth)
{
    int t = lua_type(L, idx);
    switch (json_typeof(j)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
        if (t != LUA_TTABLE || depth > SL_FLOW_JSON_DEPTH || !lua_checkstack(L, 4))
            return 0;
        if (json_is_array(j) ? !is_array_mt(L, idx) : lua_getmetatable(L, idx)) {
            if (!json_is_array(j))
                lua_pop(L, 1);
            return 0;
        }
        return same_entries(L, idx, j, depth);
    case JSON_STRING: {
        size_t len;
        const char *s;
        if (t != LUA_TSTRING)
            return 0;
        s = lua_tolstring(L, idx, &len);
        return len == json_string_length(j) && memcmp(s, json_string_value(j), len) == 0;
    }
    case JSON_INTEGER:
        return t == LUA_TNUMBER && lua_isinteger(L, idx) &&
               lua_tointeger(L, idx) == (lua_Integer)json_integer_value(j);
    case JSON_REAL:
        return t == LUA_TNUMBER && !lua_isinteger(L, idx) &&
               lua_tonumber(L, idx) == json_real_value(j);
    case JSON_TRUE:
    case JSON_FALSE:
        return t == LUA_TBOOLEAN && lua_toboolean(L, idx) == json_is_true(j);
    default: /* null */
        return t == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == JSON_NULL;
    }
}

int sl_flow__json_same(lua_State *L, int idx, const json_t *j)
{
    return same_json(L, lua_absindex(L, idx), j, 0);
}

/* ---- sl.json ---- */

static int jsonbox_gc(lua_State *L)
{
    json_t **box = luaL_checkudata(L, 1, JSONBOX_MT);
    json_decref(*box);
    *box = NULL;
    return 0;
}

static int l_json_encode(lua_State *L)
{
    char err[160];
    json_t **box;
    json_t *j;
    luaL_Buffer b;
    size_t len;
    char *p;

    luaL_checkany(L, 1);
    lua_settop(L, 1);
    /* j lives in a box with a finalizer: the buffer below may raise (memory). */
    box = lua_newuserdatauv(L, sizeof(*box), 0);
    *box = NULL;
    luaL_setmetatable(L, JSONBOX_MT);
    if ((j = sl_flow__to_json(L, 1, err, sizeof(err))) == NULL)
        return luaL_error(L, "sl.json.encode: cannot encode %s", err);
    *box = j;
    if ((len = json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY)) == 0)
        return luaL_error(L, "sl.json.encode: cannot encode");
    p = luaL_buffinitsize(L, &b, len);
    json_dumpb(j, p, len, JSON_COMPACT | JSON_ENCODE_ANY);
    luaL_pushresultsize(&b, len);
    json_decref(j);
    *box = NULL;
    return 1;
}

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    json_error_t jerr;
    json_t **box;
    json_t *j;

    /* j lives in a box with a finalizer, so a memory error while pushing does not leak it. */
    box = lua_newuserdatauv(L, sizeof(*box), 0);
    *box = NULL;
    luaL_setmetatable(L, JSONBOX_MT);
    if ((j = json_loadb(s, len, JSON_DECODE_ANY, &jerr)) == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, "bad_json");
        lua_pushstring(L, jerr.text);
        return 3;
    }
    *box = j;
    sl_flow__push_json(L, j);
    json_decref(j);
    *box = NULL;
    return 1;
}

/* sl.json.array([t]): t (or a new table) marked as a JSON array, so it encodes
 * as [] even when empty. */
static int l_json_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, sl_flow__array_mt_key());
    lua_setmetatable(L, 1);
    return 1;
}

void sl_lua_inject_json(lua_State *L, sl_flowvm_t *vm)
{
    static const luaL_Reg json_fns[] = {{"encode", l_json_encode},
                                        {"decode", l_json_decode},
                                        {"array", l_json_array},
                                        {NULL, NULL}};

    (void)vm;
    if (luaL_newmetatable(L, JSONBOX_MT)) {
        lua_pushcfunction(L, jsonbox_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_setfuncs(L, json_fns, 0);
    lua_pushlightuserdata(L, JSON_NULL);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
}
