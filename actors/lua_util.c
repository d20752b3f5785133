/*
 * lua_util.c — the small `sl` functions: sl.json.encode/decode/null,
 * sl.sha256, sl.hmac_sha256, sl.log, sl.sleep, sl.service, sl.tmpdir; and the
 * JSON <-> Lua conversion the runtime uses for ctx and file.
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

#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"

static const char null_sentinel = 'n';
#define JSON_NULL ((void *)&null_sentinel)
#define JSONBOX_MT "sl.jsonbox"

const char *sl_flow__errword(int err)
{
    switch (err) {
    case SL_ETIMEDOUT:
        return "timeout";
    case SL_EUNAVAIL:
        return "unavailable";
    case SL_ETOOBIG:
        return "too_large";
    case SL_ECANCELED:
        return "cancelled";
    case SL_ENOTFOUND:
        return "not_found";
    case SL_EAGAIN:
        return "busy";
    case SL_EINVAL:
        return "bad_input";
    case SL_ENOMEM:
        return "out_of_memory";
    default:
        return "io_error";
    }
}

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

/* ---- hashes ---- */

static int l_sha256(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char hex[65];
    sl_sha256_hex(s, len, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int l_hmac_sha256(lua_State *L)
{
    size_t kl, ml;
    const char *k = luaL_checklstring(L, 1, &kl);
    const char *m = luaL_checklstring(L, 2, &ml);
    char hex[65];
    sl_hmac_sha256_hex(k, kl, m, ml, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* ---- sl.log(level, msg, fields) ---- */

static int l_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    const char *msg = luaL_checkstring(L, 2);
    sl_step_t *s = sl_flow__step(L);
    char err[160];
    json_t *obj;

    if (!sl_log_enabled(level))
        return 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if ((obj = sl_flow__to_json(L, 3, err, sizeof(err))) == NULL)
            return luaL_error(L, "sl.log: fields: %s", err);
        if (!json_is_object(obj)) {
            json_decref(obj);
            obj = json_object();
        }
    } else {
        obj = json_object();
    }
    if (obj == NULL)
        return luaL_error(L, "sl.log: out of memory");
    json_t *msgj = json_string(msg);
    json_object_set_new(obj, "msg", msgj ? msgj : json_string("(not UTF-8)"));
    if (s != NULL) {
        json_object_set_new(obj, "run_id", json_string(s->run_id));
        json_object_set_new(obj, "tenant_id", json_string(s->tenant_id));
        json_object_set_new(obj, "file_id", json_string(s->file_id));
        json_object_set_new(obj, "pipeline", json_string(s->pipeline));
        json_object_set_new(obj, "step", json_string(s->step));
        json_object_set_new(obj, "attempt", json_integer(s->attempt));
    }
    sl_log(level, "flow_log", "o", obj); /* "o" steals obj */
    return 0;
}

/* ---- sl.sleep(seconds) ---- */

typedef struct sleep_op_s {
    sl_flow_op_t hdr;
    struct event *ev;
} sleep_op_t;

static void sleep_cancel(sl_flow_op_t *op)
{
    sleep_op_t *so = (sleep_op_t *)op;
    event_free(so->ev);
    free(so);
}

static int push_true(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

static void sleep_cb(evutil_socket_t fd, short what, void *arg)
{
    sleep_op_t *so = arg;
    sl_step_t *s = sl_flow__op_take(&so->hdr);
    event_free(so->ev);
    free(so);
    if (s != NULL)
        sl_flow__resume_with(s, push_true, NULL);
}

static int l_sleep(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    lua_Number secs = luaL_checknumber(L, 1);
    sl_step_t *s;
    sleep_op_t *so;

    luaL_argcheck(L, secs >= 0 && secs <= 86400, 1, "seconds must be 0..86400");
    s = sl_flow__check_step(L, "sl.sleep");
    if ((so = calloc(1, sizeof(*so))) == NULL ||
        (so->ev = evtimer_new(vm->host.base, sleep_cb, so)) == NULL) {
        free(so);
        return luaL_error(L, "sl.sleep: out of memory");
    }
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (lua_Number)(time_t)secs) * 1e6)};
    evtimer_add(so->ev, &tv);
    sl_flow__set_op(s, &so->hdr, sleep_cancel);
    return lua_yield(L, 0);
}

/* ---- sl.service(name) ---- */

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v != NULL) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, k);
    }
}

static int l_service(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    const sl_config_service_t *c = sl_config_service(vm->host.cfg, name);

    lua_createtable(L, 0, 10);
    lua_pushboolean(L, c != NULL && c->configured);
    lua_setfield(L, -2, "configured");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushnumber(L,
                   (c && c->timeout_ms > 0 ? c->timeout_ms : SL_SVC_DEFAULT_TIMEOUT_MS) / 1000.0);
    lua_setfield(L, -2, "timeout");
    if (c != NULL) {
        set_str(L, "url", c->url);
        set_str(L, "region", c->region);
        set_str(L, "access_key_id", c->access_key_id);
        set_str(L, "secret_access_key", c->secret_access_key);
        set_str(L, "api_key", c->api_key);
        set_str(L, "model", c->model);
        if (c->command[0] != NULL) {
            lua_newtable(L);
            for (int i = 0; i < SL_CONFIG_MAX_ARGV && c->command[i]; i++) {
                lua_pushstring(L, c->command[i]);
                lua_rawseti(L, -2, i + 1);
            }
            lua_setfield(L, -2, "command");
        }
    }
    return 1;
}

/* ---- sl.tmpdir() ---- */

static int l_tmpdir(lua_State *L)
{
    sl_step_t *s = sl_flow__step(L);
    if (s == NULL)
        return luaL_error(L, "sl.tmpdir can only be called inside a step");
    if (s->tmpdir == NULL)
        return luaL_error(L, "sl.tmpdir: this run has no scratch directory");
    lua_pushstring(L, s->tmpdir);
    return 1;
}

void sl_lua_inject_util(lua_State *L, sl_flowvm_t *vm)
{
    static const luaL_Reg fns[] = {
        {"sha256", l_sha256},   {"hmac_sha256", l_hmac_sha256}, {"log", l_log}, {"sleep", l_sleep},
        {"service", l_service}, {"tmpdir", l_tmpdir},           {NULL, NULL}};
    static const luaL_Reg json_fns[] = {
        {"encode", l_json_encode}, {"decode", l_json_decode}, {NULL, NULL}};

    if (luaL_newmetatable(L, JSONBOX_MT)) {
        lua_pushcfunction(L, jsonbox_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, fns, 1);
    lua_newtable(L);
    luaL_setfuncs(L, json_fns, 0);
    lua_pushlightuserdata(L, JSON_NULL);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
}
