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

#include "core/err.h"
#include "core/exec.h"

#define MAX_ARGS 256

typedef struct exec_op_s {
    sl_flow_svcop_t so; /* first */
    sl_exec_t *x;       /* running */
    char *argv[MAX_ARGS + 1];
    int argc;
    char *stdin_path, *stdout_path, *cwd;
    unsigned timeout_ms;
    uint64_t cpu_s, memory;
} exec_op_t;

static void op_free(sl_flow_svcop_t *so)
{
    exec_op_t *op = (exec_op_t *)so;
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
        lua_pushstring(L, sl_strerror(r->err));
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

    (void)x;
    op->x = NULL;
    sl_flow__svcop_done(&op->so, res->err ? sl_strerror(res->err) : "ok", push_result,
                        (void *)res);
}

static int start(sl_flow_svcop_t *so)
{
    exec_op_t *op = (exec_op_t *)so;
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
    rc = sl_exec_start(op->so.vm->host.base, &o, exec_done, op, &op->x);
    if (rc != 0)
        op->x = NULL;
    return rc;
}

static int abort_exec(sl_flow_svcop_t *so)
{
    sl_exec_cancel(((exec_op_t *)so)->x); /* the callback (ECANCELED) frees the op */
    return 0;
}

static const sl_flow_svcop_ops_t exec_ops = {start, abort_exec, op_free};

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

    sl_flow__check_fields(L, t, known, "sl.exec");
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
    op->stdin_path = sl_flow__opt_str(L, t, "stdin", "sl.exec");
    op->stdout_path = sl_flow__opt_str(L, t, "stdout", "sl.exec");
    op->timeout_ms = (unsigned)opt_num(L, t, "timeout", 1000, 86400);
    op->cpu_s = opt_num(L, t, "cpu", 1, 86400);
    op->memory = opt_num(L, t, "memory", 1, 1e15);
    if (lua_getfield(L, t, "service") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING ||
            (op->so.svc = sl_svcs_get(op->so.vm->svcs, lua_tostring(L, -1))) == NULL)
            luaL_error(L, "sl.exec: bad service name");
    }
    lua_pop(L, 1);
}

static int l_exec(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    sl_flow_svcop_t **box;
    exec_op_t *op;
    sl_step_t *s;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    s = sl_flow__check_step(L, "sl.exec");
    box = sl_flow__svcop_box(L, sizeof(*op), &exec_ops, vm, "sl.exec");
    op = (exec_op_t *)*box;
    parse(L, op);
    if (s->tmpdir != NULL && (op->cwd = strdup(s->tmpdir)) == NULL)
        return luaL_error(L, "sl.exec: out of memory");
    *box = NULL;
    lua_settop(L, 1);

    if (op->timeout_ms == 0 && op->so.svc != NULL)
        op->timeout_ms = (unsigned)sl_svc_timeout_ms(op->so.svc);
    /* waiting for a slot is bounded by the call's timeout (else the service's) */
    int wait_ms = op->timeout_ms || op->so.svc == NULL ? (int)op->timeout_ms
                                                       : sl_svc_timeout_ms(op->so.svc);
    return sl_flow__svcop_begin(L, s, &op->so, wait_ms);
}

void sl_lua_inject_exec(lua_State *L, sl_flowvm_t *vm)
{
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_exec, 1);
    lua_setfield(L, -2, "exec");
}
