/*
 * lua_log.c — sl.log(level, msg, fields): one JSON log line, with the run's
 * ids (run, tenant, file, pipeline, step, attempt) when called inside a step.
 */
#include "actors/lua_api.h"

#include "core/log.h"

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

void sl_lua_inject_log(lua_State *L, sl_flowvm_t *vm)
{
    (void)vm;
    lua_pushcfunction(L, l_log);
    lua_setfield(L, -2, "log");
}
