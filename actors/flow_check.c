/*
 * flow_check.c — validation of a flow source, all its errors at once, and the
 * graph of a loaded flow (actors/flow_check.h).
 *
 * flow.c evaluates the source in the sandbox (sl_flow__eval) and hands the
 * table the file returned to sl_flow__check_def here, which checks its shape,
 * each step's options, then the graph: transitions, reachability from start,
 * and that the run can end from every step. A check never stops at the first
 * error: each rule goes on with what it can still check, so an author sees
 * every mistake in one pass. The errors are sorted by line at the end.
 */
#include "actors/lua_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

#define DEFAULT_RETRY_ATTEMPTS 3
#define DEFAULT_RETRY_BASE_MS 500
#define DEFAULT_RETRY_MAX_MS 30000

/* ---- errors ---- */

void sl_flow__check_fail(sl_flow_check_t *c, int line, const char *fmt, ...)
{
    char msg[SL_FLOW_CHECK_ERROR_MAX], *text;
    va_list ap;
    int n;

    if (line <= 0)
        line = c->flow_line > 0 ? c->flow_line : 1;
    if (c->nerrors >= SL_FLOW_CHECK_MAX_ERRORS) {
        c->dropped++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    n = snprintf(NULL, 0, "%s:%d: %s", c->label, line, msg);
    if (n < 0 || (text = malloc((size_t)n + 1)) == NULL) {
        c->dropped++;
        return;
    }
    snprintf(text, (size_t)n + 1, "%s:%d: %s", c->label, line, msg);
    c->errors[c->nerrors].line = line;
    c->errors[c->nerrors].seq = c->nerrors;
    c->errors[c->nerrors].text = text;
    c->nerrors++;
}

static int err_cmp(const void *a, const void *b)
{
    const sl_flow_check_err_t *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* ---- lines ---- */

/*
 * The line a step's table starts on when its run is not a function: the first
 * line reading `name = {` or `["name"] = {`. Lua keeps no lines for tables.
 */
static int find_key_line(const sl_flow_check_t *c, const char *name)
{
    const char *buf = c->src;
    size_t len = c->len, nl = strlen(name);
    int line = 1;

    for (size_t i = 0; i < len; line++) {
        size_t j = i;
        while (j < len && (buf[j] == ' ' || buf[j] == '\t'))
            j++;
        if (j < len && buf[j] == '[')
            j += (j + 2 < len && (buf[j + 1] == '"' || buf[j + 1] == '\'')) ? 2 : 1;
        if (j + nl <= len && memcmp(buf + j, name, nl) == 0) {
            j += nl;
            while (j < len && (buf[j] == '"' || buf[j] == '\'' || buf[j] == ']' || buf[j] == ' ' ||
                               buf[j] == '\t'))
                j++;
            if (j < len && buf[j] == '=')
                return line;
        }
        while (i < len && buf[i] != '\n')
            i++;
        i++;
    }
    return c->flow_line;
}

/* ---- one step ---- */

/* Seconds at t[k] as ms into *out; absent keeps *out. In (0, max] or, with allow0, [0, max]. */
static void get_seconds(lua_State *L, sl_flow_check_t *c, int t, const char *k, const char *what,
                        int line, const char *step, int allow0, int max_s, int *out)
{
    int ty = lua_getfield(L, t, k);
    double v = lua_tonumber(L, -1);

    if (ty == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (ty != LUA_TNUMBER || !(v >= 0) || (!allow0 && v == 0) || v > max_s)
        sl_flow__check_fail(c, line,
                            "step '%s': %s must be a number of seconds, %s 0 and at most %d", step,
                            what, allow0 ? ">=" : ">", max_s);
    else
        *out = (int)(v * 1000);
    lua_pop(L, 1);
}

static void check_retry(lua_State *L, sl_flow_check_t *c, int r, int line, sl_flow_step_t *st)
{
    lua_pushnil(L);
    while (lua_next(L, r) != 0) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (k == NULL ||
            (strcmp(k, "attempts") != 0 && strcmp(k, "base") != 0 && strcmp(k, "max") != 0))
            sl_flow__check_fail(c, line, "step '%s': retry: unknown key '%s'", st->name,
                                k ? k : luaL_typename(L, -2));
        lua_pop(L, 1);
    }
    if (lua_getfield(L, r, "attempts") != LUA_TNIL) {
        lua_Integer a = lua_tointeger(L, -1);
        if (!lua_isinteger(L, -1) || a < SL_FLOW_RETRY_ATTEMPTS_MIN ||
            a > SL_FLOW_RETRY_ATTEMPTS_MAX)
            sl_flow__check_fail(c, line, "step '%s': retry.attempts must be an integer %d..%d",
                                st->name, SL_FLOW_RETRY_ATTEMPTS_MIN, SL_FLOW_RETRY_ATTEMPTS_MAX);
        else
            st->retry_attempts = (int)a;
    }
    lua_pop(L, 1);
    get_seconds(L, c, r, "base", "retry.base", line, st->name, 1, SL_FLOW_RETRY_DELAY_MAX_S,
                &st->retry_base_ms);
    get_seconds(L, c, r, "max", "retry.max", line, st->name, 1, SL_FLOW_RETRY_DELAY_MAX_S,
                &st->retry_max_ms);
    if (st->retry_max_ms < st->retry_base_ms)
        sl_flow__check_fail(c, line, "step '%s': retry.max is below retry.base", st->name);
}

/* Checks the step table at index t; fills cs (its name is set). */
static void check_step(lua_State *L, sl_flow_check_t *c, int t, sl_flow_check_step_t *cs)
{
    static const char *const known[] = {"run",     "next",  "fallback", "always",
                                        "timeout", "retry", NULL};
    static const char *const trans[] = {"next", "fallback", "always"};
    sl_flow_step_t *st = &cs->st;
    const char **dst[] = {&st->next, &st->fallback, &st->always};
    const char *name = st->name;
    int line, ty;

    if (lua_getfield(L, t, "run") == LUA_TFUNCTION) {
        lua_Debug ar;
        lua_pushvalue(L, -1);
        lua_getinfo(L, ">S", &ar);
        line = ar.linedefined > 0 ? ar.linedefined : find_key_line(c, name);
    } else {
        line = find_key_line(c, name);
    }
    st->line = line;
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        sl_flow__check_fail(c, line, "step '%s': run must be a function", name);
        lua_pop(L, 1);
    } else {
        cs->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }

    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        int ok = 0;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (int i = 0; known[i]; i++)
                ok = ok || strcmp(lua_tostring(L, -2), known[i]) == 0;
        if (!ok && lua_type(L, -2) == LUA_TSTRING)
            sl_flow__check_fail(c, line, "step '%s': unknown key '%s'", name, lua_tostring(L, -2));
        else if (!ok)
            sl_flow__check_fail(c, line, "step '%s': unknown key of type %s", name,
                                luaL_typename(L, -2));
        lua_pop(L, 1);
    }
    for (int i = 0; i < 3; i++) {
        ty = lua_getfield(L, t, trans[i]);
        if (ty == LUA_TSTRING) {
            char *v = strdup(lua_tostring(L, -1));
            if (v == NULL)
                luaL_error(L, "not enough memory");
            *dst[i] = v;
        } else if (ty != LUA_TNIL) {
            sl_flow__check_fail(c, line, "step '%s': %s must be a step name", name, trans[i]);
        }
        lua_pop(L, 1);
    }
    get_seconds(L, c, t, "timeout", "timeout", line, name, 0, SL_FLOW_TIMEOUT_MAX_S,
                &st->timeout_ms);
    ty = lua_getfield(L, t, "retry");
    if (ty == LUA_TTABLE)
        check_retry(L, c, lua_gettop(L), line, st);
    else if (ty != LUA_TNIL)
        sl_flow__check_fail(c, line, "step '%s': retry must be a table {attempts, base, max}",
                            name);
    lua_pop(L, 1);
}

/* ---- the graph ---- */

static int step_cmp(const void *a, const void *b)
{
    const sl_flow_check_step_t *x = a, *y = b;
    if (x->st.line != y->st.line)
        return x->st.line < y->st.line ? -1 : 1;
    return strcmp(x->st.name, y->st.name);
}

static int step_index(const sl_flow_check_t *c, const char *name)
{
    for (int i = 0; name != NULL && i < c->nsteps; i++)
        if (strcmp(c->steps[i].st.name, name) == 0)
            return i;
    return -1;
}

/*
 * Where a step can go. Declared: next, fallback and always as written (what
 * "reachable" follows, and what the graph shows). Taken: what the runtime
 * does — `always` overrides both others.
 */
static int edges_of(const sl_flow_check_t *c, int i, int taken, int out[3])
{
    const sl_flow_step_t *st = &c->steps[i].st;
    const char *tv[] = {st->next, st->fallback, st->always};
    int n = 0;
    for (int j = 0; j < 3; j++) {
        int k;
        if (taken && st->always != NULL && j < 2)
            continue;
        if ((k = step_index(c, tv[j])) >= 0)
            out[n++] = k;
    }
    return n;
}

/* A run can end at step i: on success with no next, or on failure with no fallback. */
static int can_end_here(const sl_flow_step_t *st)
{
    return st->always == NULL && (st->next == NULL || st->fallback == NULL);
}

static void check_graph(sl_flow_check_t *c)
{
    static const char *const tn[] = {"next", "fallback", "always"};
    int seen[SL_FLOW_MAX_STEPS] = {0}, ends[SL_FLOW_MAX_STEPS] = {0};
    int queue[SL_FLOW_MAX_STEPS], qh = 0, qt = 0, s0 = step_index(c, c->start), changed;

    for (int i = 0; i < c->nsteps; i++) {
        const sl_flow_step_t *st = &c->steps[i].st;
        const char *tv[] = {st->next, st->fallback, st->always};
        for (int j = 0; j < 3; j++)
            if (tv[j] != NULL && step_index(c, tv[j]) < 0)
                sl_flow__check_fail(c, st->line, "step '%s': %s '%s' is not a step", st->name,
                                    tn[j], tv[j]);
    }
    /* every step reachable from start (when there is one) */
    if (s0 >= 0) {
        seen[s0] = 1;
        queue[qt++] = s0;
        while (qh < qt) {
            int to[3], n = edges_of(c, queue[qh++], 0, to);
            for (int j = 0; j < n; j++)
                if (!seen[to[j]]) {
                    seen[to[j]] = 1;
                    queue[qt++] = to[j];
                }
        }
        for (int i = 0; i < c->nsteps; i++)
            if (!seen[i])
                sl_flow__check_fail(c, c->steps[i].st.line,
                                    "step '%s': unreachable from start '%s'", c->steps[i].st.name,
                                    c->start);
    }
    /* the run can end from every step: a fixed point over the transitions taken */
    for (int i = 0; i < c->nsteps; i++)
        ends[i] = can_end_here(&c->steps[i].st);
    do {
        changed = 0;
        for (int i = 0; i < c->nsteps; i++) {
            int to[3], n;
            if (ends[i])
                continue;
            n = edges_of(c, i, 1, to);
            for (int j = 0; j < n && !ends[i]; j++)
                if (ends[to[j]])
                    ends[i] = changed = 1;
        }
    } while (changed);
    for (int i = 0; i < c->nsteps; i++) {
        const sl_flow_step_t *st = &c->steps[i].st;
        int to[3];
        /* a dangling transition is already an error: it is not a loop */
        if (!ends[i] && edges_of(c, i, 1, to) == (st->always ? 1 : 2))
            sl_flow__check_fail(c, st->line,
                                "step '%s': the run can never end from here: every path from it "
                                "loops back (a cycle needs a step without next or fallback)",
                                st->name);
    }
}

/* ---- the flow table ---- */

static void check_steps(lua_State *L, sl_flow_check_t *c, int steps)
{
    lua_pushnil(L);
    while (lua_next(L, steps) != 0) {
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        sl_flow_check_step_t *cs;
        if (name == NULL) {
            sl_flow__check_fail(c, c->flow_line, "flow: step names must be strings (got a %s)",
                                luaL_typename(L, -2));
            lua_pop(L, 1);
            continue;
        }
        if (c->nsteps >= SL_FLOW_MAX_STEPS) {
            sl_flow__check_fail(c, c->flow_line, "flow: more than %d steps", SL_FLOW_MAX_STEPS);
            lua_pop(L, 2);
            break;
        }
        cs = &c->steps[c->nsteps];
        memset(cs, 0, sizeof *cs);
        cs->ref = LUA_NOREF;
        cs->st.timeout_ms = SL_FLOW_TIMEOUT_DEFAULT_S * 1000;
        cs->st.retry_attempts = DEFAULT_RETRY_ATTEMPTS;
        cs->st.retry_base_ms = DEFAULT_RETRY_BASE_MS;
        cs->st.retry_max_ms = DEFAULT_RETRY_MAX_MS;
        if ((cs->st.name = strdup(name)) == NULL)
            luaL_error(L, "not enough memory");
        c->nsteps++;
        if (!sl_flow__name_ok(name, SL_FLOW_STEP_NAME_MAX)) {
            cs->st.line = find_key_line(c, name);
            sl_flow__check_fail(c, cs->st.line,
                                "step '%s': names are 1..%d characters of [a-z0-9_]", name,
                                SL_FLOW_STEP_NAME_MAX - 1);
        } else if (lua_type(L, -1) != LUA_TTABLE) {
            cs->st.line = find_key_line(c, name);
            sl_flow__check_fail(c, cs->st.line, "step '%s': must be a table", name);
        } else {
            check_step(L, c, lua_gettop(L), cs);
        }
        lua_pop(L, 1);
    }
}

void sl_flow__check_def(lua_State *L, int def, sl_flow_check_t *c)
{
    int ty;

    lua_pushnil(L);
    while (lua_next(L, def) != 0) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (k == NULL || (strcmp(k, "start") != 0 && strcmp(k, "steps") != 0))
            sl_flow__check_fail(c, c->flow_line, "flow: unknown key '%s'",
                                k ? k : luaL_typename(L, -2));
        lua_pop(L, 1);
    }
    if (lua_getfield(L, def, "steps") != LUA_TTABLE)
        sl_flow__check_fail(c, c->flow_line, "flow: steps must be a table of steps");
    else
        check_steps(L, c, lua_gettop(L));
    lua_pop(L, 1);
    if (c->nsteps > 0)
        qsort(c->steps, (size_t)c->nsteps, sizeof c->steps[0], step_cmp);

    ty = lua_getfield(L, def, "start");
    if (ty == LUA_TSTRING) {
        if ((c->start = strdup(lua_tostring(L, -1))) == NULL)
            luaL_error(L, "not enough memory");
    } else if (ty == LUA_TNIL) {
        sl_flow__check_fail(c, c->flow_line, "flow: start is missing (the name of the first step)");
    } else {
        sl_flow__check_fail(c, c->flow_line, "flow: start must be the name of a step");
    }
    lua_pop(L, 1);
    if (c->nsteps == 0) {
        sl_flow__check_fail(c, c->flow_line, "flow: no steps");
        return;
    }
    if (c->start != NULL && step_index(c, c->start) < 0)
        sl_flow__check_fail(c, c->flow_line, "flow: start '%s' is not a step", c->start);
    check_graph(c);
}

/* ---- the public side ---- */

int sl_flow_check_source(sl_flowvm_t *vm, const char *label, const char *src, size_t len,
                         sl_flow_check_t **out)
{
    sl_flow_check_t *c;

    *out = NULL;
    if ((c = calloc(1, sizeof *c)) == NULL)
        return SL_ENOMEM;
    if ((c->label = strdup(label != NULL ? label : "flow")) == NULL) {
        free(c);
        return SL_ENOMEM;
    }
    c->vm = vm;
    c->env_ref = LUA_NOREF;
    c->src = src;
    c->len = len;
    sl_flow__eval(vm, c);
    c->src = NULL;
    qsort(c->errors, (size_t)c->nerrors, sizeof c->errors[0], err_cmp);
    if (c->dropped > 0) {
        /* the last error kept makes room for the count of those left out */
        sl_flow_check_err_t *e = &c->errors[c->nerrors - 1];
        int n =
            snprintf(NULL, 0, "%s:%d: ... and %d more errors", c->label, e->line, c->dropped + 1);
        char *text = n > 0 ? malloc((size_t)n + 1) : NULL;
        if (text != NULL) {
            snprintf(text, (size_t)n + 1, "%s:%d: ... and %d more errors", c->label, e->line,
                     c->dropped + 1);
            free(e->text);
            e->text = text;
        }
    }
    *out = c;
    return c->nerrors > 0 ? SL_EINVAL : 0;
}

int sl_flow_check_file(sl_flowvm_t *vm, const char *path, sl_flow_check_t **out)
{
    char *buf = NULL, err[SL_FLOW_CHECK_ERROR_MAX];
    size_t len = 0;
    int rc = sl_flow__read_file(path, &buf, &len, err, sizeof err);

    *out = NULL;
    if (rc != 0) {
        sl_flow_check_t *c = calloc(1, sizeof *c);
        if (c == NULL || (c->label = strdup(path)) == NULL) {
            free(c);
            return SL_ENOMEM;
        }
        c->vm = vm;
        c->env_ref = LUA_NOREF;
        c->flow_line = 1;
        /* err reads "path: why"; the error reads "path:1: why" */
        sl_flow__check_fail(c, 1, "%s",
                            strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':'
                                ? err + strlen(path) + 2
                                : err);
        *out = c;
        return rc;
    }
    rc = sl_flow_check_source(vm, path, buf, len, out);
    free(buf);
    return rc;
}

int sl_flow_check_nerrors(const sl_flow_check_t *c)
{
    return c->nerrors;
}

const char *sl_flow_check_error(const sl_flow_check_t *c, int i)
{
    return i >= 0 && i < c->nerrors ? c->errors[i].text : NULL;
}

const char *sl_flow_check_errors_text(const sl_flow_check_t *c, char *buf, size_t buflen)
{
    size_t off = 0;

    if (buflen == 0)
        return buf;
    buf[0] = '\0';
    for (int i = 0; i < c->nerrors && off < buflen; i++) {
        int n = snprintf(buf + off, buflen - off, "%s%s", i ? "\n" : "", c->errors[i].text);
        if (n < 0)
            break;
        off += (size_t)n;
    }
    return buf;
}

void sl_flow_check_free(sl_flow_check_t *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->nsteps; i++) {
        free((char *)c->steps[i].st.name);
        free((char *)c->steps[i].st.next);
        free((char *)c->steps[i].st.fallback);
        free((char *)c->steps[i].st.always);
        if (c->vm != NULL)
            luaL_unref(c->vm->L, LUA_REGISTRYINDEX, c->steps[i].ref);
    }
    if (c->vm != NULL)
        luaL_unref(c->vm->L, LUA_REGISTRYINDEX, c->env_ref);
    for (int i = 0; i < c->nerrors; i++)
        free(c->errors[i].text);
    free(c->start);
    free(c->label);
    free(c);
}

/* ---- the graph of a loaded flow ---- */

json_t *sl_flow_graph(const sl_flow_t *f)
{
    static const char *const on[] = {"next", "fallback", "always"};
    json_t *nodes = json_array(), *edges = json_array();
    int n = sl_flow_nsteps(f), bad = nodes == NULL || edges == NULL;

    for (int i = 0; !bad && i < n; i++) {
        const sl_flow_step_t *st = sl_flow_step_at(f, i);
        const char *to[] = {st->next, st->fallback, st->always};
        bad = json_array_append_new(nodes, json_pack("{s:s}", "id", st->name)) != 0;
        for (int j = 0; !bad && j < 3; j++)
            if (to[j] != NULL)
                bad = json_array_append_new(edges, json_pack("{s:s, s:s, s:s}", "from", st->name,
                                                             "to", to[j], "on", on[j])) != 0;
    }
    if (bad) {
        json_decref(nodes);
        json_decref(edges);
        return NULL;
    }
    return json_pack("{s:o, s:o}", "nodes", nodes, "edges", edges);
}

json_t *sl_flow_describe(const sl_flow_t *f)
{
    json_t *steps = json_array(), *graph = sl_flow_graph(f);
    int bad = steps == NULL || graph == NULL;

    for (int i = 0; !bad && i < sl_flow_nsteps(f); i++)
        bad = json_array_append_new(steps, json_string(sl_flow_step_at(f, i)->name)) != 0;
    if (bad) {
        json_decref(steps);
        json_decref(graph);
        return NULL;
    }
    return json_pack("{s:o, s:s, s:s, s:o}", "steps", steps, "version", sl_flow_version(f), "start",
                     sl_flow_start(f), "graph", graph);
}
