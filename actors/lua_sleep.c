/*
 * lua_sleep.c — sl.sleep(seconds): parks the step on a loop timer (0..86400 s);
 * resumes with true. Cancelled with the step (the timer is freed).
 */
#include "actors/lua_api.h"

#include <stdlib.h>

typedef struct sleep_op_s {
    sl_flow_op_t hdr;
    struct event *ev;
    sl_flowvm_t *vm; /* borrowed: its parked count holds this sleep */
} sleep_op_t;

static void sleep_cancel(sl_flow_op_t *op)
{
    sleep_op_t *so = (sleep_op_t *)op;
    so->vm->parked--;
    event_free(so->ev);
    free(so);
}

static void sleep_cb(evutil_socket_t fd, short what, void *arg)
{
    sleep_op_t *so = arg;
    sl_step_t *s = sl_flow__op_take(&so->hdr);
    so->vm->parked--;
    event_free(so->ev);
    free(so);
    if (s != NULL)
        sl_flow__resume_with(s, sl_flow__push_true, NULL);
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
    so->vm = vm;
    vm->parked++;
    sl_flow__set_op(s, &so->hdr, sleep_cancel);
    return lua_yield(L, 0);
}

void sl_lua_inject_sleep(lua_State *L, sl_flowvm_t *vm)
{
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_sleep, 1);
    lua_setfield(L, -2, "sleep");
}
