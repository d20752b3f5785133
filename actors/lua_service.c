/*
 * lua_service.c — sl.service(name): what a flow may know of a configured
 * service, to decide whether and how to call it.
 *
 *   { configured = bool, name = "openai", timeout = seconds,
 *     url = ..., region = ..., model = ..., command = {argv...},
 *     credentials = bool }
 *
 * Secrets (api_key, access_key_id, secret_access_key) never reach Lua:
 * `credentials` only says whether the section has what its calls need, and
 * sl.http.request{service = name} adds them in C (actors/lua_http.c: a
 * bearer token for api_key, an AWS SigV4 signature for the AWS keys).
 */
#include "actors/lua_api.h"

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

    /* Sized to its fields: a flow keeps it in a local while it calls the
     * service, i.e. for as long as a run is parked on it (issue 10), and a
     * hash part of 9 rounds up to 16 nodes (384 bytes) where 5 fields use 8. */
    int nf = 4;
    if (c != NULL)
        nf += (c->url != NULL) + (c->region != NULL) + (c->model != NULL) + (c->command[0] != NULL);
    lua_createtable(L, 0, nf);
    lua_pushboolean(L, c != NULL && c->configured);
    lua_setfield(L, -2, "configured");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushnumber(L,
                   (c && c->timeout_ms > 0 ? c->timeout_ms : SL_SVC_DEFAULT_TIMEOUT_MS) / 1000.0);
    lua_setfield(L, -2, "timeout");
    lua_pushboolean(L, sl_flow__svc_auth(c) != SL_FLOW_AUTH_NONE);
    lua_setfield(L, -2, "credentials");
    if (c != NULL) {
        set_str(L, "url", c->url);
        set_str(L, "region", c->region);
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

void sl_lua_inject_service(lua_State *L, sl_flowvm_t *vm)
{
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_service, 1);
    lua_setfield(L, -2, "service");
}
