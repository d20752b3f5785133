/*
 * lua_exec.c — sl.exec{argv = {...}, ...}: run a tool (tesseract, pdftoppm,
 * vips) from a step through core/exec (no shell, own process group, timeout
 * and rlimits), under the named service's policy when `service` is given.
 *
 * The tools read untrusted files, so every child is confined (the policy is
 * here, the mechanism in core/exec):
 *   - rlimits from the config's exec section (defaults SL_CONFIG_EXEC_* in
 *     core/config.h): address space, CPU seconds, file size, open files, and
 *     no core dumps. A call's `memory` and `cpu` options may lower the
 *     address-space and CPU limits, never raise them past the config;
 *   - a clean environment built here (PATH, LANG, HOME and TMPDIR = the run's
 *     scratch dir, thread caps): nothing of Sluice's (admin key, database URL);
 *   - when Sluice runs as root, the tool runs as exec.user (default nobody):
 *     the scratch dir is handed to that user before the call, the scratch
 *     root is made traversable (mode o+x, not readable), and files named in
 *     `input` (and the run's own file, whenever argv names it) are opened
 *     before the drop and passed as /proc/self/fd/N, so the tool needs no
 *     right on the storage directory. A user that cannot be
 *     resolved, or is root, refuses every call ("unavailable").
 * The child's working directory is the run's scratch dir when there is one,
 * so tools that write relative paths write there.
 */
#include "actors/lua_api.h"

#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/err.h"
#include "core/exec.h"
#include "core/log.h"

#define MAX_ARGS 256
/* The tools' PATH: system directories only, never the server's PATH. */
#define EXEC_PATH "PATH=/usr/local/bin:/usr/bin:/bin"
#define MAX_ENV 10
#define FD_PATH_MAX 32 /* "/proc/self/fd/NN" */

/* The confinement every call of one VM gets (a userdata upvalue of sl.exec). */
typedef struct exec_policy_s {
    uint64_t memory, cpu_s, file_bytes, open_files;
    int drop;        /* Sluice runs as root: switch to uid/gid */
    int drop_broken; /* ...but exec.user is unknown or root: refuse every call */
    uid_t uid;
    gid_t gid;
} exec_policy_t;

typedef struct exec_op_s {
    sl_flow_svcop_t so; /* first */
    void *x;            /* running: the effects' handle (an sl_exec_t in the engine) */
    const exec_policy_t *pol; /* borrowed: the closure's upvalue outlives the op (VM) */
    char *argv[MAX_ARGS + 1];
    int argc;
    char *inputs[SL_EXEC_MAX_INPUTS + 1];
    int ninputs;
    char *env[MAX_ENV + 1]; /* owned strings */
    int nenv;
    char *stdin_path, *stdout_path, *cwd;
    unsigned timeout_ms;
    uint64_t cpu_s, memory;
    size_t max_stdout; /* 0: SL_EXEC_DEFAULT_MAX_STDOUT; a call may only lower it */
} exec_op_t;

static void op_free(sl_flow_svcop_t *so)
{
    exec_op_t *op = (exec_op_t *)so;
    for (int i = 0; i < op->argc; i++)
        free(op->argv[i]);
    for (int i = 0; i < op->ninputs; i++)
        free(op->inputs[i]);
    for (int i = 0; i < op->nenv; i++)
        free(op->env[i]);
    free(op->stdin_path);
    free(op->stdout_path);
    free(op->cwd);
    free(op);
}

/* Which limit a signal death means, or NULL: SIGXCPU at the CPU soft limit
 * (SIGKILL a second later if ignored), SIGXFSZ past the file size limit. */
static const char *limit_hit(const sl_exec_result_t *r)
{
    if (r->term_signal == SIGXCPU)
        return "cpu";
    if (r->term_signal == SIGXFSZ)
        return "file_size";
    return NULL;
}

static int push_result(lua_State *L)
{
    const sl_exec_result_t *r = lua_touserdata(L, 1);
    if (r->err != 0) {
        lua_pushnil(L);
        /* A failed privilege drop is the operator's to fix: the tool never ran. */
        if (r->failed_step != NULL && strcmp(r->failed_step, "user") == 0)
            lua_pushstring(L, "unavailable");
        else
            lua_pushstring(L, sl_strerror(r->err));
        if (r->failed_step == NULL)
            return 2;
        lua_pushfstring(L, "%s: %s", r->failed_step, strerror(r->sys_errno));
        return 3;
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, r->exit_status);
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, r->term_signal);
    lua_setfield(L, -2, "signal");
    if (limit_hit(r) != NULL) {
        lua_pushstring(L, limit_hit(r));
        lua_setfield(L, -2, "limit");
    }
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
    const exec_policy_t *pol = op->pol;
    sl_exec_opts_t o;
    int rc;

    memset(&o, 0, sizeof(o));
    o.argv = (const char *const *)op->argv;
    o.cwd = op->cwd;
    o.stdin_path = op->stdin_path;
    o.stdout_path = op->stdout_path;
    o.timeout_ms = op->timeout_ms;
    o.max_stdout = op->max_stdout;
    o.clear_env = 1;
    o.env = (const char *const *)op->env;
    o.inputs = op->ninputs ? (const char *const *)op->inputs : NULL;
    /* a call may lower the memory and CPU limits, never raise them */
    o.rlimit_cpu_s = op->cpu_s && op->cpu_s < pol->cpu_s ? op->cpu_s : pol->cpu_s;
    o.rlimit_as_bytes = op->memory && op->memory < pol->memory ? op->memory : pol->memory;
    o.rlimit_fsize_bytes = pol->file_bytes;
    o.rlimit_nofile = pol->open_files;
    o.no_core = 1;
    o.drop_privileges = pol->drop;
    o.uid = pol->uid;
    o.gid = pol->gid;
    const sl_flow_host_t *h = &op->so.vm->host;
    rc = h->fx->exec(h->fx_self, &o, exec_done, op, &op->x);
    if (rc != 0)
        op->x = NULL;
    return rc;
}

static int abort_exec(sl_flow_svcop_t *so)
{
    const sl_flow_host_t *h = &so->vm->host;
    h->fx->exec_cancel(h->fx_self, ((exec_op_t *)so)->x); /* the callback (ECANCELED) frees it */
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

/* Adds an input file (a copy of the string at the top, popped). */
static void add_input(lua_State *L, exec_op_t *op)
{
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        luaL_error(L, "sl.exec: input must be a path or an array of paths");
    if (op->ninputs == SL_EXEC_MAX_INPUTS)
        luaL_error(L, "sl.exec: at most %d inputs", SL_EXEC_MAX_INPUTS);
    if ((op->inputs[op->ninputs] = strdup(lua_tostring(L, -1))) == NULL)
        luaL_error(L, "sl.exec: out of memory");
    op->ninputs++;
    lua_pop(L, 1);
}

/* The run's own file is always an input when argv names it: it is the one
 * stored file a tool has business reading, and flows (tika's pdftotext,
 * textract's base64) name it without saying so. */
static void add_run_file(lua_State *L, exec_op_t *op, const sl_step_t *s)
{
    const char *path = s->file_path;
    if (path == NULL || path[0] == '\0')
        return;
    for (int i = 0; i < op->ninputs; i++)
        if (strcmp(op->inputs[i], path) == 0)
            return;
    for (int a = 0; a < op->argc; a++)
        if (strstr(op->argv[a], path) != NULL) {
            lua_pushstring(L, path);
            add_input(L, op);
            return;
        }
}

/* Every argv occurrence of input i (a whole argument or inside one, as in
 * "--in=PATH") becomes /proc/self/fd/(3 + i): core/exec opens the file
 * before the privilege drop and hands the descriptor down. */
static void rewrite_inputs(lua_State *L, exec_op_t *op)
{
    for (int i = 0; i < op->ninputs; i++) {
        char fdp[FD_PATH_MAX];
        snprintf(fdp, sizeof fdp, "/proc/self/fd/%d", 3 + i);
        size_t il = strlen(op->inputs[i]), fl = strlen(fdp);
        for (int a = 0; a < op->argc; a++) {
            char *hit = strstr(op->argv[a], op->inputs[i]);
            if (hit == NULL)
                continue;
            size_t pre = (size_t)(hit - op->argv[a]), post = strlen(hit + il);
            char *n = malloc(pre + fl + post + 1);
            if (n == NULL)
                luaL_error(L, "sl.exec: out of memory");
            memcpy(n, op->argv[a], pre);
            memcpy(n + pre, fdp, fl);
            memcpy(n + pre + fl, hit + il, post + 1);
            free(op->argv[a]);
            op->argv[a] = n;
        }
    }
}

static void parse(lua_State *L, exec_op_t *op)
{
    static const char *const known[] = {"argv",   "stdin",   "stdout", "timeout",    "cpu",
                                        "memory", "service", "input",  "max_stdout", NULL};
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
    int it = lua_getfield(L, t, "input");
    if (it == LUA_TTABLE) {
        lua_Unsigned ni = lua_rawlen(L, -1);
        for (lua_Unsigned i = 1; i <= ni; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            add_input(L, op);
        }
        lua_pop(L, 1);
    } else if (it != LUA_TNIL) {
        add_input(L, op);
    } else {
        lua_pop(L, 1);
    }
    op->stdin_path = sl_flow__opt_str(L, t, "stdin", "sl.exec");
    op->stdout_path = sl_flow__opt_str(L, t, "stdout", "sl.exec");
    op->timeout_ms = (unsigned)opt_num(L, t, "timeout", 1000, 86400);
    op->cpu_s = opt_num(L, t, "cpu", 1, 86400);
    op->memory = opt_num(L, t, "memory", 1, 1e15);
    /* captured stdout past this kills the tool: nil, "too_large" (lowers the default only) */
    op->max_stdout = (size_t)opt_num(L, t, "max_stdout", 1, SL_EXEC_DEFAULT_MAX_STDOUT);
    if (lua_getfield(L, t, "service") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING ||
            (op->so.svc = sl_svcs_get(op->so.vm->svcs, lua_tostring(L, -1))) == NULL)
            luaL_error(L, "sl.exec: bad service name");
    }
    lua_pop(L, 1);
}

/* The child's whole environment. HOME and TMPDIR point into the scratch dir
 * (the only place the tool may write); one OpenMP thread for tesseract (its
 * default is one per core, for one page: contention and memory, no gain) and
 * two malloc arenas (each arena reserves 64 MiB of address space, which
 * RLIMIT_AS counts, whether used or not). */
static void build_env(lua_State *L, exec_op_t *op, const char *dir)
{
    const char *fixed[] = {EXEC_PATH,          "LANG=C.UTF-8",      "LC_ALL=C.UTF-8",
                           "OMP_THREAD_LIMIT=1", "MALLOC_ARENA_MAX=2", NULL};
    for (int i = 0; fixed[i]; i++)
        if ((op->env[op->nenv++] = strdup(fixed[i])) == NULL)
            luaL_error(L, "sl.exec: out of memory");
    if (dir == NULL)
        dir = "/nonexistent"; /* no scratch dir: nowhere to write */
    const char *names[] = {"HOME=", "TMPDIR=", NULL};
    for (int i = 0; names[i]; i++) {
        size_t nl = strlen(names[i]), dl = strlen(dir);
        char *e = malloc(nl + dl + 1);
        if (e == NULL)
            luaL_error(L, "sl.exec: out of memory");
        memcpy(e, names[i], nl);
        memcpy(e + nl, dir, dl + 1);
        op->env[op->nenv++] = e;
    }
    op->env[op->nenv] = NULL;
}

static int l_exec(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    const exec_policy_t *pol = lua_touserdata(L, lua_upvalueindex(2));
    sl_flow_svcop_t **box;
    exec_op_t *op;
    sl_step_t *s;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    s = sl_flow__check_step(L, "sl.exec");
    box = sl_flow__svcop_box(L, sizeof(*op), &exec_ops, vm, "sl.exec");
    op = (exec_op_t *)*box;
    op->pol = pol;
    parse(L, op);
    add_run_file(L, op, s);
    rewrite_inputs(L, op);
    /* the scratch dir is made at the run's first need of it: here, or sl.tmpdir.
     * One that cannot be made refuses the tool (it used to fail its chdir):
     * it never runs in the server's own directory. */
    const char *dir = NULL;
    if (s->tmpdir != NULL && s->tmpdir[0] && (dir = sl_flow__scratch(s)) == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "unavailable");
        lua_pushfstring(L, "scratch dir: %s", strerror(errno));
        return 3; /* the box still owns the op: freed with it */
    }
    if (dir != NULL && (op->cwd = strdup(dir)) == NULL)
        return luaL_error(L, "sl.exec: out of memory");
    build_env(L, op, dir);
    if (pol->drop_broken) {
        lua_pushnil(L);
        lua_pushliteral(L, "unavailable");
        lua_pushliteral(L, "exec.user cannot be used: tools will not run as root");
        return 3; /* the box still owns the op: freed with it */
    }
    /* The scratch dir becomes the tool user's (a metadata syscall: done on the
     * loop). Its files written by the server stay readable through `input`. */
    if (pol->drop && dir != NULL && chown(dir, pol->uid, pol->gid) != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "unavailable");
        lua_pushfstring(L, "chown scratch dir: %s", strerror(errno));
        return 3;
    }
    *box = NULL;
    lua_settop(L, 1);

    if (op->timeout_ms == 0 && op->so.svc != NULL)
        op->timeout_ms = (unsigned)sl_svc_timeout_ms(op->so.svc);
    /* waiting for a slot is bounded by the call's timeout (else the service's) */
    int wait_ms = op->timeout_ms || op->so.svc == NULL ? (int)op->timeout_ms
                                                       : sl_svc_timeout_ms(op->so.svc);
    return sl_flow__svcop_begin(L, s, &op->so, wait_ms);
}

/* Resolves the policy once per VM. getpwnam may read /etc/passwd: done at
 * start, never on a step's path. */
static void policy_init(exec_policy_t *pol, const sl_flow_host_t *host)
{
    const sl_config_t *cfg = host->cfg;
    pol->memory = (uint64_t)(cfg ? cfg->exec_memory_bytes : SL_CONFIG_EXEC_MEMORY_BYTES);
    pol->cpu_s = (uint64_t)(cfg ? cfg->exec_cpu_s : SL_CONFIG_EXEC_CPU_S);
    pol->file_bytes = (uint64_t)(cfg ? cfg->exec_file_bytes : SL_CONFIG_EXEC_FILE_BYTES);
    pol->open_files = (uint64_t)(cfg ? cfg->exec_open_files : SL_CONFIG_EXEC_OPEN_FILES);
    if (geteuid() != 0)
        return; /* tools run as the server's own (unprivileged) user */
    const char *user = cfg && cfg->exec_user ? cfg->exec_user : SL_CONFIG_EXEC_USER;
    const struct passwd *pw = getpwnam(user);
    pol->drop = 1;
    if (pw == NULL || pw->pw_uid == 0 || pw->pw_gid == 0) {
        pol->drop_broken = 1;
        sl_log(SL_LOG_ERROR, "exec_user_unusable", "{s:s, s:s}", "user", user, "reason",
               pw == NULL ? "no such user" : "root");
        return;
    }
    pol->uid = pw->pw_uid;
    pol->gid = pw->pw_gid;
    /* The scratch dirs live under tmp_root (0700): let the tool user traverse
     * it to its own run's dir without listing it. */
    struct stat st;
    if (host->tmp_root != NULL && stat(host->tmp_root, &st) == 0 && (st.st_mode & 0001) == 0 &&
        chmod(host->tmp_root, (st.st_mode & 07777) | 0011) != 0)
        sl_log(SL_LOG_WARN, "exec_tmp_root_chmod", "{s:s, s:s}", "path", host->tmp_root, "error",
               strerror(errno));
}

void sl_lua_inject_exec(lua_State *L, sl_flowvm_t *vm)
{
    lua_pushlightuserdata(L, vm);
    exec_policy_t *pol = lua_newuserdatauv(L, sizeof *pol, 0);
    memset(pol, 0, sizeof *pol);
    policy_init(pol, &vm->host);
    lua_pushcclosure(L, l_exec, 2);
    lua_setfield(L, -2, "exec");
}
