/*
 * flow.c — the Lua flow runtime: the VM with its capped allocator and
 * instruction budget, the sandbox, loading flow files (their checks are
 * actors/flow_check.c), and running steps as coroutines on the loop (the one
 * resume path).
 *
 * Design notes: docs/internals/flow.md. The flow author's contract:
 * docs/flows.md. The C contract: actors/flow.h.
 */
#include "actors/lua_api.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/crypto.h"
#include "core/err.h"
#include "core/slab.h"
#include "core/log.h"

/* Registry keys (their addresses). */
static const char key_array_mt = 'a';

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void due_cb(evutil_socket_t fd, short what, void *arg);
static void deadline_cb(evutil_socket_t fd, short what, void *arg);

static char *xstrdup(const char *s)
{
    return strdup(s != NULL ? s : "");
}

/* ------------------------------------------------------------------------ */
/* The allocator: net bytes per VM and per running step                      */
/* ------------------------------------------------------------------------ */

/*
 * Lua calls this for every allocation, resize and free. Growth is refused
 * (NULL) past the VM's cap or, while a step's coroutine runs (vm->cur), past
 * that step's budget; Lua then runs a full collection and tries once more
 * before raising "not enough memory". Frees and shrinks never fail (Lua
 * relies on it). Attribution is by who runs, so a step that triggers a
 * collection is credited with other steps' garbage: the budget is a bound on
 * runaway growth, not an exact per-step account.
 */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sl_flowvm_t *vm = ud;
    size_t old = ptr != NULL ? osize : 0;
    sl_step_t *s = vm->cur;
    void *p;

    if (nsize == 0) {
        sl_slab_realloc(vm->slab, ptr, old, 0);
        vm->mem -= old;
        if (s != NULL)
            s->mem -= (long long)old;
        return NULL;
    }
    if (nsize > old) {
        size_t grow = nsize - old;
        if (vm->mem + grow > vm->mem_cap)
            return NULL;
        if (s != NULL && s->mem + (long long)grow > (long long)vm->host.step_memory)
            return NULL;
    }
    /* small blocks from the VM's pool, without malloc's header (core/slab.h) */
    p = sl_slab_realloc(vm->slab, ptr, old, nsize);
    if (p == NULL)
        return nsize <= old ? ptr : NULL; /* a failed shrink keeps the block */
    vm->mem = vm->mem - old + nsize;
    if (s != NULL)
        s->mem += (long long)nsize - (long long)old;
    return p;
}

static int vm_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    sl_log(SL_LOG_ERROR, "lua_panic", "{s:s}", "message", msg ? msg : "?");
    abort();
}

/* ------------------------------------------------------------------------ */
/* Budgets: instruction hook, and pcall/xpcall that cannot swallow a kill    */
/* ------------------------------------------------------------------------ */

static sl_flowvm_t *vm_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

sl_step_t *sl_flow__step(lua_State *L)
{
    return *(sl_step_t **)lua_getextraspace(L);
}

/* Where "this code is over budget" is recorded: the step, or the flow being loaded. */
static const char **killed_slot(lua_State *L, const char **load_slot)
{
    sl_step_t *s = sl_flow__step(L);
    return s != NULL ? &s->killed : load_slot;
}

static const char *load_killed; /* loading is synchronous: one at a time */

static void count_hook(lua_State *L, lua_Debug *ar)
{
    sl_step_t *s = sl_flow__step(L);
    sl_flowvm_t *vm = vm_of(L);
    long *used = s != NULL ? &s->instr : &vm->load_instr;

    *used += SL_FLOW_HOOK_EVERY;
    if (*used > vm->host.step_instructions) {
        *killed_slot(L, &load_killed) = "instruction budget exceeded";
        luaL_error(L, "instruction budget exceeded");
    }
}

void sl_flow__charge(lua_State *L, double steps, const char *what)
{
    sl_step_t *s = sl_flow__step(L);
    sl_flowvm_t *vm = vm_of(L);
    long *used = s != NULL ? &s->instr : &vm->load_instr;
    const char **killed = killed_slot(L, &load_killed);

    if (*killed != NULL)
        luaL_error(L, "%s", *killed);
    if (steps <= (double)vm->host.step_instructions - (double)*used) {
        *used += (long)steps;
        return;
    }
    *used = vm->host.step_instructions + 1; /* the count hook refuses from now on too */
    *killed = "instruction budget exceeded";
    luaL_error(L, "instruction budget exceeded (%s)", what);
}

static int pcall_k(lua_State *L, int status, lua_KContext extra)
{
    const char **killed = killed_slot(L, &load_killed);

    if (status != LUA_OK && status != LUA_YIELD) {
        if (status == LUA_ERRMEM && *killed == NULL)
            *killed = "memory budget exceeded";
        /* A budget error is not the flow's to catch: it fails the step. */
        if (*killed != NULL)
            return luaL_error(L, "%s", *killed);
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1); /* [true, f, args...] */
    return pcall_k(L, lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, pcall_k), 0);
}

static int sb_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2); /* [f, handler, true, f, args...] */
    return pcall_k(L, lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, pcall_k), 2);
}

/*
 * setmetatable without __gc: a finalizer runs whenever the collector decides,
 * in whatever step (or none) is current, outside every budget.
 */
static int sb_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    lua_pushliteral(L, "__gc");
    if (t == LUA_TTABLE && lua_rawget(L, 2) != LUA_TNIL)
        return luaL_error(L, "__gc metamethods are not allowed in flows");
    lua_settop(L, 2);
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_setmetatable(L, 1);
    return 1;
}

static int sb_refuse_global(lua_State *L)
{
    const char *k = lua_tostring(L, 2);
    return luaL_error(L, "assignment to undeclared global '%s'", k ? k : "?");
}

/* ------------------------------------------------------------------------ */
/* The sandbox: one environment per loaded flow, shared with its modules     */
/* ------------------------------------------------------------------------ */

int sl_flow__read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t n = 0;

    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > SL_FLOW_MAX_FILE) {
        snprintf(err, errlen, "%s: not a regular file of at most %d bytes", path, SL_FLOW_MAX_FILE);
        close(fd);
        return SL_EINVAL;
    }
    if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
        close(fd);
        return SL_ENOMEM;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int sl_flow__name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

static int stub_fn(lua_State *L)
{
    (void)L;
    return 0;
}

static int stub_index(lua_State *L)
{
    lua_pushcfunction(L, stub_fn);
    return 1;
}

/*
 * A require that failed while a flow loads: the check (vm->checking) records
 * it at the line of the flow's own require that led here, and the flow goes
 * on with a stub module (any field is a function that returns nothing), so
 * the rest of the file is checked too. A failed budget, or a require inside
 * a step, raises as before. Pops the message on top of the stack.
 */
static int require_failed(lua_State *L, const char *name, int status)
{
    sl_flowvm_t *vm = vm_of(L);
    sl_flow_check_t *c = vm->checking;
    const char *msg = lua_tostring(L, -1);
    lua_Debug ar;
    int line = 0;

    if (c == NULL || sl_flow__step(L) != NULL || load_killed != NULL || status == LUA_ERRMEM)
        return lua_error(L);
    for (int level = 1; line == 0 && lua_getstack(L, level, &ar); level++)
        if (lua_getinfo(L, "Sl", &ar) && ar.source[0] == '@' &&
            strcmp(ar.source + 1, c->label) == 0)
            line = ar.currentline;
    sl_flow__check_fail(c, line, "require '%s': %s", name, msg ? msg : "cannot load");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_newtable(L);
    lua_pushcfunction(L, stub_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    return 1;
}

/*
 * require "name": lib_dir/name.lua, loaded once per flow environment, as text,
 * with the same _ENV. Upvalues: 1 cache table, 2 env, 3 lib_dir.
 * A module that yields at its top level fails (C call boundary): load modules
 * at the top of the flow file, before steps run.
 */
static int sb_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *dir = lua_tostring(L, lua_upvalueindex(3));
    char path[PATH_MAX], err[PATH_MAX + 64];
    char *buf = NULL;
    size_t len = 0;
    int rc;

    lua_settop(L, 1);
    if (!sl_flow__name_ok(name, 64)) {
        lua_pushfstring(L, "bad module name '%s' ([a-z0-9_]+)", name);
        return require_failed(L, name, LUA_ERRRUN);
    }
    if (lua_getfield(L, lua_upvalueindex(1), name) != LUA_TNIL) {
        if (lua_toboolean(L, -1) == 0 && lua_isboolean(L, -1))
            return luaL_error(L, "require: loop while loading '%s'", name);
        return 1;
    }
    lua_pop(L, 1);
    /* Reading a file inside a step would block the loop: modules load with the flow. */
    if (sl_flow__step(L) != NULL)
        return luaL_error(L,
                          "require '%s': modules must be required when the flow loads "
                          "(at the top of the file), not inside a step",
                          name);
    if (snprintf(path, sizeof(path), "%s/%s.lua", dir, name) >= (int)sizeof(path))
        return luaL_error(L, "require: path too long");
    if ((rc = sl_flow__read_file(path, &buf, &len, err, sizeof(err))) != 0) {
        if (rc == SL_ENOTFOUND)
            lua_pushfstring(L, "no module %s", path);
        else
            lua_pushstring(L, rc == SL_ENOMEM ? "out of memory" : err);
        return require_failed(L, name, rc == SL_ENOMEM ? LUA_ERRMEM : LUA_ERRRUN);
    }
    lua_pushfstring(L, "@%s", path);
    rc = luaL_loadbufferx(L, buf, len, lua_tostring(L, -1), "t");
    free(buf);
    if (rc != LUA_OK)
        return require_failed(L, name, rc);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_setupvalue(L, -2, 1);
    lua_pushboolean(L, 0); /* "loading": a cycle finds false */
    lua_setfield(L, lua_upvalueindex(1), name);
    if ((rc = lua_pcall(L, 0, 1, 0)) != LUA_OK) {
        lua_pushnil(L); /* not "loading" any more: a later require tries again */
        lua_setfield(L, lua_upvalueindex(1), name);
        return require_failed(L, name, rc);
    }
    if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, lua_upvalueindex(1), name);
    return 1;
}

/* flow{...}: upvalue 1 is the load's state table ({def =, line =}). */
static int sb_flow(lua_State *L)
{
    lua_Debug ar;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_pushvalue(L, 1);
    lua_setfield(L, lua_upvalueindex(1), "def");
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) {
        lua_pushinteger(L, ar.currentline);
        lua_setfield(L, lua_upvalueindex(1), "line");
    }
    return 1;
}

/* Copies the listed fields of the table at src into a new table left on top. */
static void copy_fields(lua_State *L, int src, const char *const *names)
{
    lua_newtable(L);
    for (int i = 0; names[i] != NULL; i++) {
        lua_getfield(L, src, names[i]);
        lua_setfield(L, -2, names[i]);
    }
}

/* Copies every field of the library table `lib` (in the loaded table) into a new table. */
static void copy_lib(lua_State *L, const char *lib)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, lib);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, -3) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/*
 * Pushes a new environment for one flow: a proxy (empty; __index = the base
 * table, __newindex refuses, metatable protected) and leaves the load state
 * table below it. Stack effect: +2 (state, env).
 */
static void push_env(lua_State *L, sl_flowvm_t *vm)
{
    static const char *const base_names[] = {
        "assert", "error",  "ipairs",   "next",     "pairs",        "rawequal", "rawget", "rawlen",
        "rawset", "select", "tonumber", "tostring", "getmetatable", "type",     NULL};
    static const char *const os_names[] = {"time", "clock", "date", NULL};
    int base_t, env_t;

    lua_newtable(L); /* the load state */
    lua_pushglobaltable(L);
    copy_fields(L, lua_gettop(L), base_names);
    lua_remove(L, -2);
    base_t = lua_gettop(L);
    lua_pushcfunction(L, sb_pcall);
    lua_setfield(L, base_t, "pcall");
    lua_pushcfunction(L, sb_xpcall);
    lua_setfield(L, base_t, "xpcall");
    lua_pushcfunction(L, sb_setmetatable);
    lua_setfield(L, base_t, "setmetatable");
    copy_lib(L, LUA_STRLIBNAME);
    lua_setfield(L, base_t, "string");
    copy_lib(L, LUA_TABLIBNAME);
    lua_setfield(L, base_t, "table");
    copy_lib(L, LUA_MATHLIBNAME);
    lua_setfield(L, base_t, "math");
    copy_lib(L, LUA_UTF8LIBNAME);
    lua_setfield(L, base_t, "utf8");
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, LUA_OSLIBNAME);
    copy_fields(L, lua_gettop(L), os_names);
    lua_setfield(L, base_t, "os");
    lua_pop(L, 2);

    /* sl: built per flow, so a flow that scribbles on it hurts only itself */
    lua_newtable(L);
    sl_lua_inject_json(L, vm);
    sl_lua_inject_crypto(L, vm);
    sl_lua_inject_log(L, vm);
    sl_lua_inject_sleep(L, vm);
    sl_lua_inject_service(L, vm);
    sl_lua_inject_http(L, vm);
    sl_lua_inject_exec(L, vm);
    sl_lua_inject_image(L, vm);
    sl_lua_inject_run(L, vm);
    sl_lua_inject_schema(L, vm);
    lua_setfield(L, base_t, "sl");

    lua_pushvalue(L, base_t - 1);
    lua_pushcclosure(L, sb_flow, 1);
    lua_setfield(L, base_t, "flow");

    /* the proxy */
    lua_newtable(L);
    env_t = lua_gettop(L);
    lua_newtable(L);
    lua_pushvalue(L, base_t);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sb_refuse_global);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, env_t);

    lua_newtable(L); /* module cache */
    lua_pushvalue(L, env_t);
    lua_pushstring(L, vm->lib_dir);
    lua_pushcclosure(L, sb_require, 3);
    lua_setfield(L, base_t, "require");

    lua_remove(L, base_t); /* [state, env] */
}

/* ------------------------------------------------------------------------ */
/* The VM                                                                    */
/* ------------------------------------------------------------------------ */

int sl_flowvm_new(const sl_flow_host_t *host, sl_flowvm_t **out, char *err, size_t errlen)
{
    sl_flowvm_t *vm = calloc(1, sizeof(*vm));
    int rc = SL_ENOMEM;

    if (vm == NULL) {
        snprintf(err, errlen, "out of memory");
        return SL_ENOMEM;
    }
    if (host == NULL || host->base == NULL) {
        snprintf(err, errlen, "flow host needs an event base");
        free(vm);
        return SL_EINVAL;
    }
    vm->host = *host;
    if (vm->host.step_instructions <= 0)
        vm->host.step_instructions = SL_FLOW_DEFAULT_INSTRUCTIONS;
    if (vm->host.step_memory == 0)
        vm->host.step_memory = SL_FLOW_DEFAULT_STEP_MEMORY;
    if (vm->host.fx == NULL) { /* the engine's effects, on this VM's copy of the host */
        vm->host.fx = &sl_flow_effects_engine;
        vm->host.fx_self = &vm->host;
    }
    vm->mem_cap = SL_FLOW_VM_MEMORY_CAP;
    vm->lib_dir = xstrdup(host->lib_dir ? host->lib_dir : "lua-flows/lib");
    vm->tmp_root = xstrdup(host->tmp_root ? host->tmp_root : "./var/tmp");
    if (vm->lib_dir == NULL || vm->tmp_root == NULL)
        goto fail;
    vm->host.lib_dir = vm->lib_dir;
    vm->host.tmp_root = vm->tmp_root;
    if ((rc = sl_svcs_new(host->base, host->cfg, host->ratelimit, host->circuit_open_ms,
                          &vm->svcs)) != 0)
        goto fail;
    rc = SL_ENOMEM;
    if ((vm->slab = sl_slab_new()) == NULL || (vm->L = lua_newstate(vm_alloc, vm)) == NULL)
        goto fail;
    lua_atpanic(vm->L, vm_panic);
    *(sl_step_t **)lua_getextraspace(vm->L) = NULL;

    /* Only the libraries the sandbox copies from; no io, os.execute, package, debug. */
    luaL_requiref(vm->L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(vm->L, LUA_STRLIBNAME, luaopen_string, 0);
    /* string.dump turns functions into bytecode; strings index this table directly */
    lua_pushnil(vm->L);
    lua_setfield(vm->L, -2, "dump");
    /* pattern functions and rep that count against the step's budget (s:match() too) */
    sl_lua_inject_string(vm->L, vm);
    luaL_requiref(vm->L, LUA_TABLIBNAME, luaopen_table, 0);
    luaL_requiref(vm->L, LUA_MATHLIBNAME, luaopen_math, 0);
    luaL_requiref(vm->L, LUA_UTF8LIBNAME, luaopen_utf8, 0);
    luaL_requiref(vm->L, LUA_OSLIBNAME, luaopen_os, 0);
    lua_settop(vm->L, 0);
    /* the other C functions whose work grows with their input: charged too */
    sl_lua_inject_costs(vm->L, vm);
    /* getmetatable("") must not hand out the shared string metatable */
    lua_pushliteral(vm->L, "");
    lua_getmetatable(vm->L, -1);
    lua_pushboolean(vm->L, 0);
    lua_setfield(vm->L, -2, "__metatable");
    lua_settop(vm->L, 0);
    /* the metatable of decoded JSON arrays (so an empty one stays []) */
    lua_newtable(vm->L);
    lua_pushliteral(vm->L, "array");
    lua_setfield(vm->L, -2, "__name");
    lua_rawsetp(vm->L, LUA_REGISTRYINDEX, &key_array_mt);
    if ((vm->due_ev = evtimer_new(host->base, due_cb, vm)) == NULL ||
        (vm->dl_ev = evtimer_new(host->base, deadline_cb, vm)) == NULL)
        goto fail;
    *out = vm;
    return 0;

fail:
    snprintf(err, errlen, "cannot create the flow VM: %s", sl_strerror(rc));
    if (vm->L)
        lua_close(vm->L);
    sl_slab_free(vm->slab);
    sl_svcs_free(vm->svcs);
    if (vm->due_ev)
        event_free(vm->due_ev);
    free(vm->lib_dir);
    free(vm->tmp_root);
    free(vm);
    return rc;
}

const void *sl_flow__array_mt_key(void)
{
    return &key_array_mt;
}

size_t sl_flowvm_memory(const sl_flowvm_t *vm)
{
    return vm->mem;
}

int sl_flowvm_running(const sl_flowvm_t *vm)
{
    return vm->nsteps;
}

int sl_flowvm_parked(const sl_flowvm_t *vm)
{
    return vm ? vm->parked : 0;
}

static void flow_drop_lua(sl_flow_t *f)
{
    sl_flowvm_t *vm = f->vm;
    if (vm == NULL)
        return;
    for (int i = 0; i < f->nsteps; i++)
        luaL_unref(vm->L, LUA_REGISTRYINDEX, f->run_refs[i]);
    luaL_unref(vm->L, LUA_REGISTRYINDEX, f->env_ref);
    if (f->prev)
        f->prev->next = f->next;
    else
        vm->flows = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
    f->vm = NULL;
}

static void finish(sl_step_t *s, int ok, const char *err, const char *detail);
static void deliver(sl_step_t *s);

void sl_flowvm_free(sl_flowvm_t *vm)
{
    if (vm == NULL)
        return;
    vm->freeing = 1;
    /* Every step reports now (cancelled, or its result if it had one). */
    while (vm->steps != NULL) {
        sl_step_t *s = vm->steps;
        if (s->state != SL_STEP_DONE)
            finish(s, 0, "cancelled", "the flow VM is shutting down");
        deliver(s); /* (off the due list first) */
    }
    while (vm->dlqs != NULL) {
        sl_flow_dlq_t *q = vm->dlqs;
        vm->dlqs = q->next;
        free(q);
    }
    event_free(vm->due_ev);
    event_free(vm->dl_ev);
    while (vm->flows != NULL)
        flow_drop_lua(vm->flows);
    lua_close(vm->L);
    sl_slab_free(vm->slab); /* after lua_close: every Lua block is back */
    sl_svcs_free(vm->svcs);
    free(vm->lib_dir);
    free(vm->tmp_root);
    free(vm);
}

/* ------------------------------------------------------------------------ */
/* Loading and checking a flow                                               */
/* ------------------------------------------------------------------------ */

/*
 * A message Lua made for an error in the chunk "@label" starts with the
 * chunk's short name (maybe shortened to "...tail") and ":line:". Returns the
 * line and sets *rest past "line: ", or returns 0 when the message is not
 * about this chunk.
 */
static int chunk_line(const char *label, const char *msg, const char **rest)
{
    const char *p = msg, *colon;
    size_t pre, ll = strlen(label);
    long line;
    char *end;

    for (;;) {
        if ((colon = strchr(p, ':')) == NULL)
            return 0;
        line = strtol(colon + 1, &end, 10);
        if (end != colon + 1 && *end == ':' && line > 0 && line < INT_MAX)
            break;
        p = colon + 1;
    }
    pre = (size_t)(colon - msg);
    if (!(pre == ll && memcmp(msg, label, ll) == 0) &&
        !(pre > 3 && memcmp(msg, "...", 3) == 0 && pre - 3 <= ll &&
          memcmp(msg + 3, label + ll - (pre - 3), pre - 3) == 0))
        return 0;
    *rest = end[1] == ' ' ? end + 2 : end + 1;
    return (int)line;
}

/* Records the error message on top of L for c: at its own line when it has one. */
static void eval_error(lua_State *L, sl_flow_check_t *c, const char *what)
{
    const char *m = lua_tostring(L, -1), *rest = NULL;
    int line = m != NULL ? chunk_line(c->label, m, &rest) : 0;

    if (line > 0)
        sl_flow__check_fail(c, line, "%s", rest);
    else
        sl_flow__check_fail(c, 1, "%s%s", what, m != NULL ? m : "error while loading the flow");
}

/* Runs in protected mode on the main thread: compile, run the top level, check the result. */
static int eval_protected(lua_State *L)
{
    sl_flow_check_t *c = lua_touserdata(L, 1);
    sl_flowvm_t *vm = c->vm;
    int state, env, def, rc;

    lua_settop(L, 0);
    push_env(L, vm);
    state = 1;
    env = 2;
    lua_pushfstring(L, "@%s", c->label);
    rc = luaL_loadbufferx(L, c->src, c->len, lua_tostring(L, -1), "t");
    if (rc != LUA_OK) {
        eval_error(L, c, ""); /* a syntax error: "label:line: message" */
        return 0;
    }
    lua_pushvalue(L, env);
    lua_setupvalue(L, -2, 1);
    vm->load_instr = 0;
    load_killed = NULL;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, SL_FLOW_HOOK_EVERY);
    rc = lua_pcall(L, 0, 1, 0);
    lua_sethook(L, NULL, 0, 0);
    if (rc != LUA_OK) {
        eval_error(L, c, "");
        return 0;
    }
    def = lua_gettop(L);
    lua_getfield(L, state, "line");
    c->flow_line = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, state, "def");
    if (lua_type(L, def) != LUA_TTABLE || !lua_rawequal(L, -1, def)) {
        sl_flow__check_fail(c, c->flow_line, "the file must return flow{...}");
        return 0;
    }
    lua_pop(L, 1);
    sl_flow__check_def(L, def, c);
    lua_pushvalue(L, env);
    c->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

void sl_flow__eval(sl_flowvm_t *vm, sl_flow_check_t *c)
{
    lua_settop(vm->L, 0);
    vm->checking = c;
    lua_pushcfunction(vm->L, eval_protected);
    lua_pushlightuserdata(vm->L, c);
    if (lua_pcall(vm->L, 1, 0, 0) != LUA_OK)
        eval_error(vm->L, c, "");
    vm->checking = NULL;
    lua_settop(vm->L, 0);
}
static void free_step_strings(sl_flow_step_t *st)
{
    free((char *)st->name);
    free((char *)st->next);
    free((char *)st->fallback);
    free((char *)st->always);
}

/* sl_flow_load and sl_flow_load_source: checks and loads buf (len bytes; taken). */
static int load_buf(sl_flowvm_t *vm, const char *name, const char *path, char *buf, size_t len,
                    sl_flow_t **out, char *err, size_t errlen);

int sl_flow_load(sl_flowvm_t *vm, const char *name, const char *path, sl_flow_t **out, char *err,
                 size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc;

    if (vm == NULL || name == NULL || path == NULL || out == NULL) {
        snprintf(err, errlen, "%s: bad arguments", path ? path : "?");
        return SL_EINVAL;
    }
    if ((rc = sl_flow__read_file(path, &buf, &len, err, errlen)) != 0)
        return rc;
    return load_buf(vm, name, path, buf, len, out, err, errlen);
}

/* issue 14 (pipeapi): a flow from Postgres (pipelines put through the API). */
int sl_flow_load_source(sl_flowvm_t *vm, const char *name, const char *label, const char *src,
                        size_t len, sl_flow_t **out, char *err, size_t errlen)
{
    char *buf;

    if (vm == NULL || name == NULL || label == NULL || src == NULL || out == NULL) {
        snprintf(err, errlen, "%s: bad arguments", label ? label : "?");
        return SL_EINVAL;
    }
    if ((buf = malloc(len + 1)) == NULL) {
        snprintf(err, errlen, "%s: out of memory", label);
        return SL_ENOMEM;
    }
    memcpy(buf, src, len);
    buf[len] = '\0';
    return load_buf(vm, name, label, buf, len, out, err, errlen);
}

static int load_buf(sl_flowvm_t *vm, const char *name, const char *path, char *buf, size_t len,
                    sl_flow_t **out, char *err, size_t errlen)
{
    sl_flow_check_t *c = NULL;
    sl_flow_t *f = NULL;
    int rc;

    err[0] = '\0';
    /* The whole check (actors/flow_check.h): every error at once, one per line. */
    if ((rc = sl_flow_check_source(vm, path, buf, len, &c)) != 0) {
        if (c != NULL)
            sl_flow_check_errors_text(c, err, errlen);
        else
            snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }

    rc = SL_ENOMEM;
    if ((f = calloc(1, sizeof(*f))) == NULL || (f->name = strdup(name)) == NULL ||
        (f->path = strdup(path)) == NULL ||
        (f->steps = calloc((size_t)c->nsteps, sizeof(*f->steps))) == NULL ||
        (f->run_refs = calloc((size_t)c->nsteps, sizeof(int))) == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    f->vm = vm;
    f->refs = 1;
    f->start = c->start; /* moved */
    c->start = NULL;
    f->env_ref = c->env_ref;
    c->env_ref = LUA_NOREF;
    sl_sha256_hex(buf, len, f->version);
    f->source = buf; /* moved */
    f->source_len = len;
    buf = NULL;
    f->nsteps = c->nsteps;
    for (int i = 0; i < c->nsteps; i++) {
        f->steps[i] = c->steps[i].st;
        f->run_refs[i] = c->steps[i].ref;
    }
    c->nsteps = 0; /* moved */
    f->next = vm->flows;
    if (vm->flows)
        vm->flows->prev = f;
    vm->flows = f;
    *out = f;
    f = NULL;
    rc = 0;

out:
    if (f != NULL) {
        free(f->name);
        free(f->path);
        free(f->steps);
        free(f->run_refs);
        free(f);
    }
    sl_flow_check_free(c);
    free(buf);
    return rc;
}

void sl_flow_ref(sl_flow_t *f)
{
    if (f != NULL)
        f->refs++;
}

void sl_flow_unref(sl_flow_t *f)
{
    if (f == NULL || --f->refs > 0)
        return;
    flow_drop_lua(f);
    for (int i = 0; i < f->nsteps; i++)
        free_step_strings(&f->steps[i]);
    free(f->steps);
    free(f->run_refs);
    free(f->name);
    free(f->path);
    free(f->start);
    free(f->source);
    free(f);
}

const char *sl_flow_version(const sl_flow_t *f)
{
    return f->version;
}

const char *sl_flow_name(const sl_flow_t *f)
{
    return f->name;
}

const char *sl_flow_path(const sl_flow_t *f)
{
    return f->path;
}

const char *sl_flow_source(const sl_flow_t *f, size_t *len)
{
    *len = f->source_len;
    return f->source;
}

const char *sl_flow_start(const sl_flow_t *f)
{
    return f->start;
}

int sl_flow_nsteps(const sl_flow_t *f)
{
    return f->nsteps;
}

const sl_flow_step_t *sl_flow_step_at(const sl_flow_t *f, int i)
{
    return i >= 0 && i < f->nsteps ? &f->steps[i] : NULL;
}

const sl_flow_step_t *sl_flow_step(const sl_flow_t *f, const char *name)
{
    for (int i = 0; name != NULL && i < f->nsteps; i++)
        if (strcmp(f->steps[i].name, name) == 0)
            return &f->steps[i];
    return NULL;
}

int sl_flow_err_transient(const char *err)
{
    static const char *const t[] = {
        "timeout", "unavailable", "server_error", "rate_limited", "circuit_open", "busy", NULL};
    for (int i = 0; err != NULL && t[i]; i++)
        if (strcmp(err, t[i]) == 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* file.schema: one decoded table per dataset and schema, shared read-only    */
/* ------------------------------------------------------------------------ */

/* 1 when a and b are the same JSON with their objects' members in the same
 * order (the order is the client's, and sl.schema.openai keeps it). */
static int same_ordered(const json_t *a, const json_t *b)
{
    if (json_typeof(a) != json_typeof(b))
        return 0;
    if (json_is_object(a)) {
        void *ia = json_object_iter((json_t *)a), *ib = json_object_iter((json_t *)b);
        if (json_object_size(a) != json_object_size(b))
            return 0;
        for (; ia != NULL && ib != NULL;
             ia = json_object_iter_next((json_t *)a, ia), ib = json_object_iter_next((json_t *)b, ib))
            if (strcmp(json_object_iter_key(ia), json_object_iter_key(ib)) != 0 ||
                !same_ordered(json_object_iter_value(ia), json_object_iter_value(ib)))
                return 0;
        return ia == NULL && ib == NULL;
    }
    if (json_is_array(a)) {
        size_t n = json_array_size(a);
        if (n != json_array_size(b))
            return 0;
        for (size_t i = 0; i < n; i++)
            if (!same_ordered(json_array_get(a, i), json_array_get(b, i)))
                return 0;
        return 1;
    }
    return json_equal(a, b);
}

/* Takes a reference on the entry for s's dataset and this schema (borrowed),
 * made if new. Found by the dataset's id, then by comparing the schemas (it
 * used to build a key of the schema's text: json_dumps at every step's start,
 * 2.6 % of the engine's CPU in flow_bench). */
static int schema_acquire(sl_step_t *s, json_t *schema)
{
    sl_flowvm_t *vm = s->vm;
    sl_flow_schema_t *e;

    for (e = vm->schemas; e != NULL; e = e->next)
        if (strcmp(e->dataset, s->dataset_id) == 0 && same_ordered(e->j, schema))
            break;
    if (e == NULL) {
        if ((e = calloc(1, sizeof(*e))) == NULL || (e->dataset = strdup(s->dataset_id)) == NULL) {
            free(e);
            return SL_ENOMEM;
        }
        e->j = json_incref(schema);
        e->ref = LUA_NOREF;
        e->next = vm->schemas;
        if (vm->schemas != NULL)
            vm->schemas->prev = e;
        vm->schemas = e;
        vm->nschemas++;
    }
    e->refs++;
    s->schema = e;
    return 0;
}

/* Drops a step's reference (e may be NULL); the last one frees the entry and its table. */
static void schema_release(sl_flowvm_t *vm, sl_flow_schema_t *e)
{
    if (e == NULL || --e->refs > 0)
        return;
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        vm->schemas = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    vm->nschemas--;
    luaL_unref(vm->L, LUA_REGISTRYINDEX, e->ref);
    json_decref(e->j);
    free(e->dataset);
    free(e);
}

json_t *sl_flow__step_schema(const sl_step_t *s)
{
    return s->schema != NULL ? s->schema->j : NULL;
}

/*
 * 1 when the shared table no longer holds the schema it was decoded from: the
 * step that just ran changed it (or gave one of its tables a metatable).
 * Checked after every resume, so before any other step runs: one walk of the
 * table against the schema's JSON, allocating nothing (it used to encode the
 * table to JSON and compare the two, 7 % of the engine's CPU in flow_bench:
 * perf, stop 31).
 */
static int schema_changed(sl_step_t *s)
{
    lua_State *L = s->vm->L;
    int same;

    if (s->schema == NULL || s->schema->ref == LUA_NOREF)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->schema->ref);
    same = sl_flow__json_same(L, -1, s->schema->j);
    lua_pop(L, 1);
    return !same;
}

/* Protected: refills the shared table (argument 1: the entry) from the schema, in place. */
static int schema_restore_protected(lua_State *L)
{
    sl_flow_schema_t *e = lua_touserdata(L, 1);
    const char *k;
    json_t *v;

    lua_settop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref); /* 2 */
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) { /* clearing fields while traversing is allowed */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, 2);
    }
    json_object_foreach(e->j, k, v)
    {
        lua_pushstring(L, k);
        sl_flow__push_json(L, v);
        lua_rawset(L, 2);
    }
    lua_pushnil(L);
    lua_setmetatable(L, 2);
    return 0;
}

/*
 * Puts the shared table back as it was, so the other steps (parked with it)
 * never see the change. Without memory for that, the entry gets a new table
 * at its next use instead.
 */
static void schema_restore(sl_step_t *s)
{
    lua_State *L = s->vm->L;
    int top = lua_gettop(L);
    lua_pushcfunction(L, schema_restore_protected);
    lua_pushlightuserdata(L, s->schema);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->schema->ref);
        s->schema->ref = LUA_NOREF;
    }
    lua_settop(L, top);
}

/* ------------------------------------------------------------------------ */
/* Steps                                                                     */
/* ------------------------------------------------------------------------ */

sl_step_t *sl_flow__check_step(lua_State *L, const char *what)
{
    sl_step_t *s = sl_flow__step(L);
    if (s == NULL || s->state != SL_STEP_RUNNING)
        luaL_error(L, "%s can only be called inside a step", what);
    if (!lua_isyieldable(L))
        luaL_error(L, "%s cannot yield here (inside a metamethod or an iterator?)", what);
    return s;
}

void sl_flow__set_op(sl_step_t *s, sl_flow_op_t *op, sl_flow_cancel_fn cancel)
{
    op->cancel = cancel;
    op->step = s;
    s->op = op;
}

sl_step_t *sl_flow__op_take(sl_flow_op_t *op)
{
    sl_step_t *s = op->step;
    if (s == NULL)
        return NULL;
    op->step = NULL;
    s->op = NULL;
    return s;
}

lua_State *sl_flow__co(sl_step_t *s)
{
    return s->co;
}

/* ---- the steps' timing: the due list and the deadline lists (see sl_flowvm_s) ---- */

/* Takes s off the list it is on, if any. */
static void q_unlink(sl_step_t *s)
{
    sl_flowvm_t *vm = s->vm;
    sl_step_t **head, **tail;

    if (s->queued == 0)
        return;
    if (s->queued == 1) {
        head = &vm->due_head;
        tail = &vm->due_tail;
        vm->ndue--;
    } else {
        head = &s->dlq->head;
        tail = &s->dlq->tail;
    }
    if (s->qprev != NULL)
        s->qprev->qnext = s->qnext;
    else
        *head = s->qnext;
    if (s->qnext != NULL)
        s->qnext->qprev = s->qprev;
    else
        *tail = s->qprev;
    s->qprev = s->qnext = NULL;
    s->queued = 0;
    s->dlq = NULL;
}

static void q_append(sl_step_t **head, sl_step_t **tail, sl_step_t *s)
{
    s->qnext = NULL;
    s->qprev = *tail;
    if (*tail != NULL)
        (*tail)->qnext = s;
    else
        *head = s;
    *tail = s;
}

/* Begins (NEW) or delivers (DONE) s on a later turn (due_cb). */
static void post_due(sl_step_t *s)
{
    static const struct timeval zero = {0, 0};
    sl_flowvm_t *vm = s->vm;

    q_unlink(s);
    q_append(&vm->due_head, &vm->due_tail, s);
    s->queued = 1;
    vm->ndue++;
    evtimer_add(vm->due_ev, &zero);
}

/* Arms the deadline timer for the earliest deadline (a list's head), or stops it. */
static void arm_deadline(sl_flowvm_t *vm)
{
    double first = 0;
    int any = 0;

    for (sl_flow_dlq_t *q = vm->dlqs; q != NULL; q = q->next)
        if (q->head != NULL && (!any || q->head->deadline < first)) {
            first = q->head->deadline;
            any = 1;
        }
    if (!any) {
        evtimer_del(vm->dl_ev);
        return;
    }
    double left = first - now_s();
    long us = left > 0 ? (long)(left * 1e6) + 1 : 0;
    struct timeval tv = {us / 1000000, us % 1000000};
    evtimer_add(vm->dl_ev, &tv);
}

/*
 * Puts the running step s on its timeout's list (made at its first use):
 * steps with one timeout that began in order are in deadline order, so the
 * list is a FIFO. The timer moves only for a new head (a later deadline than
 * the armed one needs nothing; a removed head leaves the timer early, and it
 * re-arms). 0 or SL_ENOMEM.
 */
static int deadline_add(sl_step_t *s)
{
    sl_flowvm_t *vm = s->vm;
    sl_flow_dlq_t *q;

    for (q = vm->dlqs; q != NULL; q = q->next)
        if (q->timeout_ms == s->def->timeout_ms)
            break;
    if (q == NULL) {
        if ((q = calloc(1, sizeof(*q))) == NULL)
            return SL_ENOMEM;
        q->timeout_ms = s->def->timeout_ms;
        q->next = vm->dlqs;
        vm->dlqs = q;
    }
    s->deadline = s->t0 + s->def->timeout_ms / 1000.0;
    q_unlink(s);
    q_append(&q->head, &q->tail, s);
    s->queued = 2;
    s->dlq = q;
    if (q->head == s)
        arm_deadline(vm);
    return 0;
}

static void cancel_op(sl_step_t *s)
{
    sl_flow_op_t *op = s->op;
    if (op == NULL)
        return;
    s->op = NULL;
    op->step = NULL;
    op->cancel(op);
}

/* Encodes the step's ctx table; NULL with err set when it holds a non-JSON value. */
static char *encode_ctx(sl_step_t *s, char *err, size_t errlen)
{
    lua_State *L = s->vm->L;
    json_t *j;
    char *out;

    if (s->ctx_ref == LUA_NOREF || s->ctx_ref == LUA_REFNIL)
        return strdup(s->ctx_in);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ctx_ref);
    j = sl_flow__to_json(L, -1, err, errlen);
    lua_pop(L, 1);
    if (j == NULL)
        return NULL;
    if (!json_is_object(j)) {
        snprintf(err, errlen, "ctx is not a table");
        json_decref(j);
        return NULL;
    }
    out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (out == NULL)
        snprintf(err, errlen, "ctx could not be encoded");
    return out;
}

/*
 * Ends the attempt (from the loop, never from inside the coroutine): cancels
 * the pending op, stops the deadline, encodes ctx, unpins the coroutine, and
 * posts the delivery to a later loop turn.
 */
static void finish(sl_step_t *s, int ok, const char *err, const char *detail)
{
    char cerr[256];
    lua_State *L = s->vm->L;

    cancel_op(s);
    q_unlink(s); /* off its deadline's list (or the due list: posted again below) */
    s->ok = ok;
    /* on success err is the step's note (or NULL) */
    /* the word is made when the step ends: a parked step has no buffer for it */
    char word[SL_FLOW_ERR_MAX];
    snprintf(word, sizeof(word), "%s", ok ? (err ? err : "") : (err && *err ? err : "failed"));
    free(s->err);
    s->err = strdup(word);
    free(s->detail);
    s->detail = detail ? strdup(detail) : NULL;
    cerr[0] = '\0';
    s->ctx_out = encode_ctx(s, cerr, sizeof(cerr));
    if (s->ctx_out == NULL) {
        char msg[320];
        snprintf(msg, sizeof(msg), "ctx holds a value that is not JSON: %s", cerr);
        s->ok = 0;
        free(s->err);
        s->err = strdup("lua_error");
        free(s->detail);
        s->detail = strdup(msg);
        s->ctx_out = strdup(s->ctx_in);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, s->ctx_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, s->co_ref);
    s->ctx_ref = s->co_ref = LUA_NOREF;
    s->co = NULL;
    s->state = SL_STEP_DONE;
    post_due(s);
}

/* Frees what a step owns besides its list links and flow reference (both paths of its life). */
static void step_free_fields(sl_step_t *s)
{
    q_unlink(s);
    free(s->ids); /* run_id ... tmpdir (NULL when borrowed) */
    if (!s->borrowed)
        free((char *)s->ctx_in);
    free(s->file_in);
    if (!s->path_borrowed)
        free((char *)s->file_path);
    free(s->held_reason);
    free(s->err);
    json_decref(s->entry_j);
    schema_release(s->vm, s->schema);
    free(s->detail);
    free(s->ctx_out);
    free(s);
}

static void step_free(sl_step_t *s)
{
    sl_flowvm_t *vm = s->vm;
    if (s->prev)
        s->prev->next = s->next;
    else
        vm->steps = s->next;
    if (s->next)
        s->next->prev = s->prev;
    vm->nsteps--;
    sl_flow_unref(s->flow);
    step_free_fields(s);
}

static void deliver(sl_step_t *s)
{
    sl_step_result_t res;
    memset(&res, 0, sizeof(res));
    res.ok = s->ok;
    const char *err = s->err ? s->err : s->ok ? "" : "internal_error"; /* NULL: no memory */
    res.err = s->ok ? NULL : err;
    res.note = s->ok && err[0] ? err : NULL;
    if (!s->ok && s->held_s > 0) {
        res.wait_s = s->held_s;
        snprintf(res.wait_reason, sizeof res.wait_reason, "%s",
                 s->held_reason ? s->held_reason : "");
    }
    res.transient = s->ok ? 0 : sl_flow_err_transient(err);
    res.detail = s->detail;
    res.ctx_json = s->ctx_out ? s->ctx_out : "{}";
    res.duration_s = now_s() - s->t0;
    s->cb(s, &res, s->arg);
    step_free(s);
}

/* The coroutine's body: decode ctx and file, call run(ctx, file), return its results. */
static int step_entry_k(lua_State *L, int status, lua_KContext k)
{
    return lua_gettop(L);
}

/*
 * Decodes the JSON object text (borrowed) into s->entry_j; raises
 * "<what> is not a JSON object" otherwise. The step owns entry_j, so a raise
 * while it is pushed leaks nothing (step_free_fields frees it).
 */
static json_t *parse_input(lua_State *L, sl_step_t *s, const char *text, const char *what)
{
    json_decref(s->entry_j);
    s->entry_j = text != NULL ? json_loads(text, 0, NULL) : NULL;
    if (s->entry_j == NULL || !json_is_object(s->entry_j))
        luaL_error(L, "%s is not a JSON object", what);
    return s->entry_j;
}

static void drop_input(sl_step_t *s)
{
    json_decref(s->entry_j);
    s->entry_j = NULL;
}

/*
 * Pushes the step's `file`: its own table of the document's fields, with
 * file.schema the dataset's shared table (decoded by the first step that
 * needs it). Only the path is kept in C (sl.exec); the document's text goes.
 */
static void push_file(lua_State *L, sl_step_t *s)
{
    json_t *f = parse_input(L, s, s->file_in, "file");
    json_t *schema = json_object_get(f, "schema");
    const char *path = json_string_value(json_object_get(f, "path"));

    if (path != NULL && !s->path_borrowed && (s->file_path = strdup(path)) == NULL)
        luaL_error(L, "out of memory");
    if (json_is_object(schema)) {
        if (schema_acquire(s, schema) != 0)
            luaL_error(L, "out of memory");
        json_object_del(f, "schema"); /* pushed below, shared */
    }
    sl_flow__push_json(L, f);
    if (s->schema != NULL) {
        if (s->schema->ref == LUA_NOREF) {
            sl_flow__push_json(L, s->schema->j);
            s->schema->ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->schema->ref);
        lua_setfield(L, -2, "schema");
    }
    drop_input(s);
    free(s->file_in); /* decoded: the text is not needed again */
    s->file_in = NULL;
}

static int step_entry(lua_State *L)
{
    sl_step_t *s = sl_flow__step(L);
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->flow->run_refs[s->def - s->flow->steps]);
    sl_flow__push_json(L, parse_input(L, s, s->ctx_in, "ctx"));
    drop_input(s);
    lua_pushvalue(L, -1);
    s->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    push_file(L, s);
    lua_callk(L, 2, LUA_MULTRET, 0, step_entry_k);
    return step_entry_k(L, LUA_OK, 0);
}

/* Protected: make the coroutine and pin it. */
static int begin_protected(lua_State *L)
{
    sl_step_t *s = lua_touserdata(L, 1);
    lua_State *co = lua_newthread(L);
    *(sl_step_t **)lua_getextraspace(co) = s;
    lua_sethook(co, count_hook, LUA_MASKCOUNT, SL_FLOW_HOOK_EVERY);
    lua_pushcfunction(co, step_entry);
    s->co = co;
    s->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static void begin(sl_step_t *s)
{
    lua_State *L = s->vm->L;
    s->state = SL_STEP_RUNNING;
    /* the deadline counts from sl_step_start */
    if (deadline_add(s) != 0) {
        finish(s, 0, "lua_error", "out of memory starting the step");
        return;
    }
    lua_pushcfunction(L, begin_protected);
    lua_pushlightuserdata(L, s);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        finish(s, 0, "lua_error", "out of memory starting the step");
        return;
    }
    sl_flow__resume(s, 0);
}

/* Copies src into dst (size n > 0), cut at a UTF-8 character boundary when too long. */
static void utf8_prefix(char *dst, size_t n, const char *src)
{
    size_t len = strlen(src);
    if (len >= n) {
        len = n - 1;
        while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)
            len--; /* src[len] would be a continuation byte: back to its lead byte */
    }
    memcpy(dst, src, len);
    dst[len] = '\0';
}

void sl_flow__resume(sl_step_t *s, int nargs)
{
    sl_flowvm_t *vm = s->vm;
    lua_State *co = s->co;
    int nres = 0, st;

    vm->cur = s;
    st = lua_resume(co, vm->L, nargs, &nres);
    vm->cur = NULL;
    if (schema_changed(s)) {
        schema_restore(s);
        if (st == LUA_YIELD || st == LUA_OK) {
            finish(s, 0, "lua_error",
                   "file.schema is read-only: the runs of a dataset share it "
                   "(copy the values to change them)");
            return;
        }
    }
    if (st == LUA_YIELD) {
        /* Also the yielding primitive's arguments and locals (its request
         * table, ...): its op copied what it needs, and the results of the
         * resume replace the whole frame anyway. */
        lua_settop(co, 0);
        if (s->op == NULL)
            finish(s, 0, "lua_error", "the step yielded outside an sl primitive");
        return;
    }
    if (st == LUA_OK) {
        int first = lua_gettop(co) - nres + 1;
        /* ok, word, detail: `true[, note[, detail]]` or `nil, err[, detail]` */
        int ok = nres >= 1 && lua_toboolean(co, first);
        char word[SL_FLOW_ERR_MAX], detail[SL_FLOW_DETAIL_MAX];
        snprintf(word, sizeof(word), "%s",
                 nres >= 2 && lua_type(co, first + 1) == LUA_TSTRING ? lua_tostring(co, first + 1)
                 : ok                                                ? ""
                                                                     : "failed");
        detail[0] = '\0';
        if (nres >= 3 && lua_type(co, first + 2) == LUA_TSTRING)
            utf8_prefix(detail, sizeof(detail), lua_tostring(co, first + 2));
        lua_settop(co, 0);
        finish(s, ok, word[0] ? word : NULL, detail[0] ? detail : NULL);
        return;
    }
    /* An error: message plus the coroutine's traceback (its stack is still there). */
    const char *msg = lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : NULL;
    char other[96];
    if (st == LUA_ERRMEM)
        msg = "memory budget exceeded (not enough memory)";
    else if (msg == NULL) {
        snprintf(other, sizeof(other), "(error object is a %s value)", luaL_typename(co, -1));
        msg = other;
    }
    luaL_traceback(vm->L, co, msg, 0);
    /* over a budget (instructions, string steps, memory): budget_exceeded */
    finish(s, 0, s->killed != NULL || st == LUA_ERRMEM ? "budget_exceeded" : "lua_error",
           lua_tostring(vm->L, -1));
    lua_pop(vm->L, 1);
}

typedef struct push_call_s {
    lua_CFunction push;
    void *ud;
} push_call_t;

static int push_protected(lua_State *L)
{
    push_call_t *pc = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_pushlightuserdata(L, pc->ud);
    lua_insert(L, 1);
    int n = pc->push(L);
    return n;
}

void sl_flow__resume_with(sl_step_t *s, lua_CFunction push, void *ud)
{
    sl_flowvm_t *vm = s->vm;
    lua_State *L = vm->L;
    push_call_t pc = {push, ud};
    int base = lua_gettop(L), n, rc;

    /* Results count against the step's memory budget, in protected mode. */
    lua_pushcfunction(L, push_protected);
    lua_pushlightuserdata(L, &pc);
    vm->cur = s;
    rc = lua_pcall(L, 1, LUA_MULTRET, 0);
    vm->cur = NULL;
    n = lua_gettop(L) - base;
    if (rc != LUA_OK || !lua_checkstack(s->co, n + LUA_MINSTACK)) {
        lua_settop(L, base);
        s->killed = "memory budget exceeded";
        finish(s, 0, rc == LUA_ERRMEM || rc == LUA_OK ? "budget_exceeded" : "lua_error",
               rc == LUA_ERRMEM || rc == LUA_OK
                   ? "memory budget exceeded (the result of an sl call did not fit)"
                   : "could not hand a result to the step");
        return;
    }
    lua_xmove(L, s->co, n);
    sl_flow__resume(s, n);
}

static int push_err(lua_State *L)
{
    lua_pushnil(L);
    lua_pushstring(L, lua_touserdata(L, 1));
    return 2;
}

void sl_flow__resume_err(sl_step_t *s, const char *err)
{
    sl_flow__resume_with(s, push_err, (void *)err);
}

/*
 * The due list: steps posted to begin (NEW) or to be delivered (DONE) on a
 * later turn. Only the steps due when the turn began are handled: the ones
 * posted meanwhile (a step that ended at once, a callback that started one)
 * re-armed due_ev and wait for the next turn, as with an event each.
 */
static void due_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_flowvm_t *vm = arg;
    int n = vm->ndue;
    (void)fd;
    (void)what;
    while (n-- > 0 && vm->due_head != NULL) {
        sl_step_t *s = vm->due_head;
        q_unlink(s);
        if (s->state == SL_STEP_NEW)
            begin(s);
        else if (s->state == SL_STEP_DONE)
            deliver(s);
    }
}

/* The deadline timer: the running steps whose time is up end with "timeout". */
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_flowvm_t *vm = arg;
    double now = now_s();
    char d[96];
    (void)fd;
    (void)what;
    for (sl_flow_dlq_t *q = vm->dlqs; q != NULL; q = q->next) {
        while (q->head != NULL && q->head->deadline <= now) {
            sl_step_t *s = q->head;
            snprintf(d, sizeof(d), "step '%s' ran past its timeout of %.3g s", s->step,
                     s->def->timeout_ms / 1000.0);
            finish(s, 0, "timeout", d); /* takes it off q */
        }
    }
    arm_deadline(vm);
}

int sl_scratch_make(const char *dir)
{
    if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        return 0; /* the common case: one syscall */
    char buf[PATH_MAX];
    if (errno != ENOENT || snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return SL_EIO;
    for (char *p = buf + 1; *p; p++) /* a parent is missing: make each, as mkdir -p */
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return SL_EIO;
            *p = '/';
        }
    return mkdir(buf, 0700) == 0 || errno == EEXIST ? 0 : SL_EIO;
}

const char *sl_flow__scratch(sl_step_t *s)
{
    if (s->tmpdir == NULL || s->tmpdir[0] == '\0') {
        errno = ENOENT; /* this run has none */
        return NULL;
    }
    if (s->tmpdir_made != NULL && *s->tmpdir_made)
        return s->tmpdir;
    if (sl_scratch_make(s->tmpdir) != 0)
        return NULL;
    if (s->tmpdir_made != NULL)
        *s->tmpdir_made = 1;
    return s->tmpdir;
}

/*
 * Copies the step's names (run_id, tenant_id, dataset_id, file_id, pipeline,
 * step, tmpdir) into one block, s->ids (a parked step keeps one allocation,
 * not seven). tmpdir stays NULL when the input has none; s->ids NULL: no memory.
 */
static void copy_ids(sl_step_t *s, const sl_step_input_t *in, const sl_flow_t *f)
{
    const char *src[7] = {in->run_id, in->tenant_id, in->dataset_id, in->file_id,
                          in->pipeline ? in->pipeline : f->name, in->step, in->tmpdir};
    const char **dst[7] = {&s->run_id, &s->tenant_id, &s->dataset_id, &s->file_id,
                           &s->pipeline, &s->step, &s->tmpdir};
    size_t len[7], total = 0, off = 0;

    s->tmpdir_made = in->tmpdir_made; /* the caller's either way: it outlives the step */
    if (in->borrow) { /* the caller's: they outlive the step */
        for (int i = 0; i < 7; i++)
            *dst[i] = src[i] != NULL || i == 6 ? src[i] : "";
        return;
    }

    for (int i = 0; i < 7; i++) {
        len[i] = src[i] != NULL ? strlen(src[i]) : 0;
        total += len[i] + 1;
    }
    if ((s->ids = malloc(total)) == NULL)
        return;
    for (int i = 0; i < 7; i++) {
        if (src[i] == NULL && i == 6)
            continue; /* no tmpdir */
        memcpy(s->ids + off, src[i] != NULL ? src[i] : "", len[i] + 1);
        *dst[i] = s->ids + off;
        off += len[i] + 1;
    }
}

int sl_step_start(sl_flowvm_t *vm, sl_flow_t *f, const sl_step_input_t *in, sl_step_cb cb,
                  void *arg, sl_step_t **out)
{
    const sl_flow_step_t *def;
    sl_step_t *s;

    if (vm == NULL || f == NULL || in == NULL || cb == NULL || f->vm != vm || vm->freeing)
        return SL_EINVAL;
    if ((def = sl_flow_step(f, in->step)) == NULL)
        return SL_ENOTFOUND;
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return SL_ENOMEM;
    s->vm = vm;
    s->flow = f;
    s->def = def;
    s->co_ref = s->ctx_ref = LUA_NOREF;
    s->attempt = in->attempt;
    s->cb = cb;
    s->arg = arg;
    s->t0 = now_s();
    s->borrowed = in->borrow != 0;
    if (s->borrowed && in->file_path != NULL) {
        s->file_path = in->file_path;
        s->path_borrowed = 1;
    }
    copy_ids(s, in, f);
    if (s->borrowed)
        s->ctx_in = in->ctx_json && *in->ctx_json ? in->ctx_json : "{}";
    else
        s->ctx_in = xstrdup(in->ctx_json && *in->ctx_json ? in->ctx_json : "{}");
    s->file_in = xstrdup(in->file_json && *in->file_json ? in->file_json : "{}");
    /* both decoded when the step begins (step_entry): a bad one fails the step there */
    if ((!s->borrowed && !s->ids) || !s->ctx_in || !s->file_in) {
        step_free_fields(s); /* detail and ctx_out are still NULL here */
        return SL_ENOMEM;
    }
    sl_flow_ref(f);
    s->next = vm->steps;
    if (vm->steps)
        vm->steps->prev = s;
    vm->steps = s;
    vm->nsteps++;
    post_due(s); /* begin() sets the deadline */
    if (out != NULL)
        *out = s;
    return 0;
}

void sl_step_cancel(sl_step_t *s)
{
    if (s == NULL || s->state == SL_STEP_DONE)
        return;
    finish(s, 0, "cancelled", NULL);
}
