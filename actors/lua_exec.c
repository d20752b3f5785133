/*
 * lua_exec.c — sl.exec{argv = {...}, ...}: run a tool (tesseract, pdftoppm,
 * vips) from a step through core/exec (no shell, own process group, timeout
 * and rlimits), under the named service's policy when `service` is given.
 *
 * The child's working directory is the run's scratch dir when there is one,
 * so tools that write relative paths write there.
 */
#include "actors/lua_api.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/exec.h"

#define MAX_ARGS 256

typedef struct exec_op_s {
    sl_flow_op_t hdr;
    sl_flowvm_t *vm;
    sl_svc_t *svc;
    sl_svc_wait_t wait;
    sl_exec_t *x; /* running */
    char *argv[MAX_ARGS + 1];
    int argc;
    char *stdin_path, *stdout_path, *cwd;
    unsigned timeout_ms;
    uint64_t cpu_s, memory;
    double t0;
} exec_op_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void op_free(exec_op_t *op)
{
    for (int i = 0; i < op->argc; i++)
        free(op->argv[i]);
    free(op->stdin_path);
    free(op->stdout_path);
    free(op->cwd);
    free(op);
}

static int push_result(lua_State *L)
{
    const sl_exec_result_t *r = lua_touserdata(L, 1);
    if (r->err != 0) {
        lua_pushnil(L);
        lua_pushstring(L, sl_flow__errword(r->err));
        return 2;
    }
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, r->exit_status);
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, r->term_signal);
    lua_setfield(L, -2, "signal");
    if (r->stdout_data != NULL) {
        lua_pushlstring(L, r->stdout_data, r->stdout_len);
        lua_setfield(L, -2, "stdout");
    }
    lua_pushlstring(L, r->stderr_data ? r->stderr_data : "", r->stderr_len);
    lua_setfield(L, -2, "stderr");
    return 1;
}

static void exec_done(sl_exec_t *x, const sl_exec_result_t *res, void *arg)
{
    exec_op_t *op = arg;
    sl_step_t *s;

    op->x = NULL;
    sl_svc_release(&op->wait, res->err ? sl_flow__errword(res->err) : "ok", now_s() - op->t0);
    s = sl_flow__op_take(&op->hdr);
    if (s != NULL)
        sl_flow__resume_with(s, push_result, (void *)res);
    op_free(op);
}

static int start(exec_op_t *op)
{
    sl_exec_opts_t o;
    int rc;

    memset(&o, 0, sizeof(o));
    o.argv = (const char *const *)op->argv;
    o.cwd = op->cwd;
    o.stdin_path = op->stdin_path;
    o.stdout_path = op->stdout_path;
    o.timeout_ms = op->timeout_ms;
    o.rlimit_cpu_s = op->cpu_s;
    o.rlimit_as_bytes = op->memory;
    op->t0 = now_s();
    rc = sl_exec_start(op->vm->host.base, &o, exec_done, op, &op->x);
    if (rc != 0) {
        op->x = NULL;
        sl_svc_release(&op->wait, "cancelled", 0);
    }
    return rc;
}

static const char *start_word(int rc)
{
    return rc == SL_EINVAL ? "bad_input" : sl_flow__errword(rc);
}

static void exec_cancel(sl_flow_op_t *hdr)
{
    exec_op_t *op = (exec_op_t *)hdr;
    if (op->x != NULL) {
        sl_svc_release(&op->wait, "cancelled", now_s() - op->t0);
        sl_exec_cancel(op->x); /* the callback (ECANCELED) frees the op */
        return;
    }
    if (op->svc != NULL)
        sl_svc_cancel_wait(&op->wait);
    op_free(op);
}

static void slot_cb(sl_svc_wait_t *w, int err, void *arg)
{
    exec_op_t *op = arg;
    const char *word;
    int rc;

    if (err == 0) {
        if ((rc = start(op)) == 0)
            return;
        word = start_word(rc);
    } else {
        word = err == SL_EAGAIN ? "busy" : err == SL_EUNAVAIL ? "circuit_open" : "cancelled";
    }
    sl_step_t *s = sl_flow__op_take(&op->hdr);
    op_free(op);
    if (s != NULL)
        sl_flow__resume_err(s, word);
}

static char *opt_str(lua_State *L, int t, const char *k)
{
    char *v = NULL;
    int ty = lua_getfield(L, t, k);
    if (ty == LUA_TSTRING) {
        if ((v = strdup(lua_tostring(L, -1))) == NULL)
            luaL_error(L, "sl.exec: out of memory");
    } else if (ty != LUA_TNIL) {
        luaL_error(L, "sl.exec: %s must be a string", k);
    }
    lua_pop(L, 1);
    return v;
}

static uint64_t opt_num(lua_State *L, int t, const char *k, double scale, double max)
{
    double v = 0;
    if (lua_getfield(L, t, k) != LUA_TNIL) {
        v = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || v <= 0 || v > max)
            luaL_error(L, "sl.exec: %s must be a positive number (at most %.0f)", k, max);
    }
    lua_pop(L, 1);
    return (uint64_t)(v * scale);
}

static void parse(lua_State *L, exec_op_t *op)
{
    static const char *const known[] = {"argv", "stdin",  "stdout",  "timeout",
                                        "cpu",  "memory", "service", NULL};
    int t = 1;

    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        int ok = 0;
        for (int i = 0; lua_type(L, -2) == LUA_TSTRING && known[i]; i++)
            ok = ok || strcmp(lua_tostring(L, -2), known[i]) == 0;
        if (!ok)
            luaL_error(L, "sl.exec: unknown field '%s'",
                       lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
        lua_pop(L, 1);
    }
    if (lua_getfield(L, t, "argv") != LUA_TTABLE)
        luaL_error(L, "sl.exec: argv must be an array of strings");
    lua_Unsigned n = lua_rawlen(L, -1);
    if (n == 0 || n > MAX_ARGS)
        luaL_error(L, "sl.exec: argv must have 1..%d strings", MAX_ARGS);
    for (lua_Unsigned i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            luaL_error(L, "sl.exec: argv[%d] is not a string", (int)i);
        if ((op->argv[op->argc] = strdup(lua_tostring(L, -1))) == NULL)
            luaL_error(L, "sl.exec: out of memory");
        op->argc++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    op->stdin_path = opt_str(L, t, "stdin");
    op->stdout_path = opt_str(L, t, "stdout");
    op->timeout_ms = (unsigned)opt_num(L, t, "timeout", 1000, 86400);
    op->cpu_s = opt_num(L, t, "cpu", 1, 86400);
    op->memory = opt_num(L, t, "memory", 1, 1e15);
    if (lua_getfield(L, t, "service") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING ||
            (op->svc = sl_svcs_get(op->vm->svcs, lua_tostring(L, -1))) == NULL)
            luaL_error(L, "sl.exec: bad service name");
    }
    lua_pop(L, 1);
}

static int box_gc(lua_State *L)
{
    exec_op_t **box = lua_touserdata(L, 1);
    if (*box != NULL)
        op_free(*box);
    *box = NULL;
    return 0;
}

static int l_exec(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    exec_op_t *op, **box;
    sl_step_t *s;
    int rc;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    s = sl_flow__check_step(L, "sl.exec");
    box = lua_newuserdatauv(L, sizeof(*box), 0);
    *box = NULL;
    lua_newtable(L);
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if ((op = calloc(1, sizeof(*op))) == NULL)
        return luaL_error(L, "sl.exec: out of memory");
    *box = op;
    op->vm = vm;
    parse(L, op);
    if (s->tmpdir != NULL && (op->cwd = strdup(s->tmpdir)) == NULL)
        return luaL_error(L, "sl.exec: out of memory");
    *box = NULL;
    lua_settop(L, 1);

    if (op->timeout_ms == 0 && op->svc != NULL)
        op->timeout_ms = (unsigned)sl_svc_timeout_ms(op->svc);
    if (op->svc != NULL) {
        /* waiting for a slot is bounded by the call's timeout (else the service's) */
        int wait_ms = op->timeout_ms ? (int)op->timeout_ms : sl_svc_timeout_ms(op->svc);
        rc = sl_svc_acquire(op->svc, &op->wait, wait_ms, slot_cb, op);
        if (rc == 0) {
            sl_flow__set_op(s, &op->hdr, exec_cancel);
            return lua_yield(L, 0);
        }
        if (rc < 0) {
            op_free(op);
            lua_pushnil(L);
            lua_pushstring(L, rc == SL_EUNAVAIL ? "circuit_open" : sl_flow__errword(rc));
            return 2;
        }
    }
    if ((rc = start(op)) != 0) {
        op_free(op);
        lua_pushnil(L);
        lua_pushstring(L, start_word(rc));
        return 2;
    }
    sl_flow__set_op(s, &op->hdr, exec_cancel);
    return lua_yield(L, 0);
}

void sl_lua_inject_exec(lua_State *L, sl_flowvm_t *vm)
{
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_exec, 1);
    lua_setfield(L, -2, "exec");
}
