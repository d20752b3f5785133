/* lua_crypto.c — sl.sha256(s) and sl.hmac_sha256(key, msg): lowercase hex digests. */
#include "actors/lua_api.h"

#include "core/crypto.h"

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

void sl_lua_inject_crypto(lua_State *L, sl_flowvm_t *vm)
{
    static const luaL_Reg fns[] = {{"sha256", l_sha256}, {"hmac_sha256", l_hmac_sha256}, {NULL, NULL}};
    (void)vm;
    luaL_setfuncs(L, fns, 0);
}
