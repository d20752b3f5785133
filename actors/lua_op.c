/*
 * lua_op.c — the shared path of a yielding primitive that runs under a
 * service's policy (sl.exec, sl.http.request; sl.artifact with none): the op's box while arguments
 * are parsed, acquiring the service slot, recording the pending op, yielding,
 * and releasing the slot with the call's outcome (see lua_api.h).
 */
#include "actors/lua_api.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"

double sl_flow__now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Starts the operation; 0 or an SL_E* code (then the slot is given back). */
static int svcop_start(sl_flow_svcop_t *op)
{
    int rc;

    op->t0 = sl_flow__now_s();
    rc = op->ops->start(op);
    if (rc != 0) {
        op->running = 0;
        sl_svc_release(&op->wait, "cancelled", 0);
        return rc;
    }
    op->running = 1;
    op->vm->parked++;
    return 0;
}

static void svcop_cancel(sl_flow_op_t *hdr)
{
    sl_flow_svcop_t *op = (sl_flow_svcop_t *)hdr;
    if (op->running) {
        op->running = 0;
        op->vm->parked--;
        /* the completion still fires (ECANCELED) and frees the op */
        sl_svc_release(&op->wait, "cancelled", sl_flow__now_s() - op->t0);
        if (op->ops->abort(op))
            op->ops->free(op); /* nothing was outstanding */
        return;
    }
    if (op->svc != NULL)
        sl_svc_cancel_wait(&op->wait);
    op->ops->free(op);
}

const char *sl_flow__note_hold(sl_step_t *s, const sl_svc_t *svc, const char *otherwise)
{
    char reason[SL_SVC_REASON_MAX];
    s->held_s = sl_svc_hold_remaining_s(svc, reason, sizeof reason);
    /* The reason is kept only while held: a step carries a pointer, not the
     * buffer (issue 10). Without memory for it the wait has no reason text. */
    free(s->held_reason);
    s->held_reason = s->held_s > 0 ? strdup(reason) : NULL;
    return s->held_s > 0 ? "rate_limited" : otherwise;
}

static void slot_cb(sl_svc_wait_t *w, int err, void *arg)
{
    sl_flow_svcop_t *op = arg;
    const char *word;
    int rc;

    (void)w;
    if (err == 0) {
        if (op->hdr.step != NULL)
            op->hdr.step->held_s = 0;
        if ((rc = svcop_start(op)) == 0)
            return;
        word = sl_strerror(rc);
    } else if (err == SL_EAGAIN && op->hdr.step != NULL) {
        word = sl_flow__note_hold(op->hdr.step, op->svc, "busy");
    } else {
        word = err == SL_EAGAIN ? "busy" : err == SL_EUNAVAIL ? "circuit_open" : "cancelled";
    }
    sl_step_t *s = sl_flow__op_take(&op->hdr);
    op->ops->free(op);
    if (s != NULL)
        sl_flow__resume_err(s, word);
}

/* The registry key (its address) of the boxes' metatable. */
static const char box_mt_key = 'b';

/* The op lives in a box until it is handed to the step, so a raise frees it. */
static int box_gc(lua_State *L)
{
    sl_flow_svcop_t **box = lua_touserdata(L, 1);
    if (*box != NULL)
        (*box)->ops->free(*box);
    *box = NULL;
    return 0;
}

sl_flow_svcop_t **sl_flow__svcop_box(lua_State *L, size_t size, const sl_flow_svcop_ops_t *ops,
                                     sl_flowvm_t *vm, const char *what)
{
    sl_flow_svcop_t *op, **box;

    box = lua_newuserdatauv(L, sizeof(*box), 0);
    *box = NULL;
    /* One metatable per VM, made at the first call (a new one per call was
     * garbage that a parked run's memory figure carried until collected). */
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &box_mt_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &box_mt_key);
    }
    lua_setmetatable(L, -2);
    if ((op = calloc(1, size)) == NULL)
        luaL_error(L, "%s: out of memory", what);
    op->ops = ops;
    op->vm = vm;
    *box = op;
    return box;
}

int sl_flow__svcop_begin(lua_State *L, sl_step_t *s, sl_flow_svcop_t *op, int wait_ms)
{
    int rc;

    if (op->svc != NULL) {
        rc = sl_svc_acquire_for(op->svc, &op->wait, s->tenant_id, wait_ms, op->est_tokens,
                                slot_cb, op);
        if (rc == 0) {
            sl_flow__set_op(s, &op->hdr, svcop_cancel);
            return lua_yield(L, 0);
        }
        if (rc < 0) {
            const char *word = rc == SL_EUNAVAIL ? "circuit_open"
                               : rc == SL_EAGAIN ? sl_flow__note_hold(s, op->svc, "busy")
                                                 : sl_strerror(rc);
            op->ops->free(op);
            lua_pushnil(L);
            lua_pushstring(L, word);
            return 2;
        }
        s->held_s = 0;
    }
    if ((rc = svcop_start(op)) != 0) {
        op->ops->free(op);
        lua_pushnil(L);
        lua_pushstring(L, sl_strerror(rc));
        return 2;
    }
    sl_flow__set_op(s, &op->hdr, svcop_cancel);
    return lua_yield(L, 0);
}

void sl_flow__svcop_done(sl_flow_svcop_t *op, const char *outcome, lua_CFunction push, void *ud)
{
    sl_step_t *s;

    if (op->running)
        op->vm->parked--;
    op->running = 0;
    sl_svc_release(&op->wait, outcome, sl_flow__now_s() - op->t0);
    s = sl_flow__op_take(&op->hdr);
    if (s != NULL)
        sl_flow__resume_with(s, push, ud);
    op->ops->free(op);
}

void sl_flow__check_fields(lua_State *L, int t, const char *const *known, const char *what)
{
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        int ok = 0;
        for (int i = 0; lua_type(L, -2) == LUA_TSTRING && known[i]; i++)
            ok = ok || strcmp(lua_tostring(L, -2), known[i]) == 0;
        if (!ok)
            luaL_error(L, "%s: unknown field '%s'", what,
                       lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
        lua_pop(L, 1);
    }
}

char *sl_flow__opt_str(lua_State *L, int t, const char *k, const char *what)
{
    char *v = NULL;
    int ty = lua_getfield(L, t, k);
    if (ty == LUA_TSTRING) {
        if ((v = strdup(lua_tostring(L, -1))) == NULL)
            luaL_error(L, "%s: out of memory", what);
    } else if (ty != LUA_TNIL) {
        luaL_error(L, "%s: %s must be a string", what, k);
    }
    lua_pop(L, 1);
    return v;
}

int sl_flow__push_true(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

sl_flow_auth_t sl_flow__svc_auth(const sl_config_service_t *c)
{
    if (c == NULL || !c->configured)
        return SL_FLOW_AUTH_NONE;
    if (c->access_key_id && c->access_key_id[0] && c->secret_access_key && c->secret_access_key[0])
        return SL_FLOW_AUTH_SIGV4;
    if (c->api_key && c->api_key[0])
        return SL_FLOW_AUTH_BEARER;
    return SL_FLOW_AUTH_NONE;
}
