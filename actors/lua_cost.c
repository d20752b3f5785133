/*
 * lua_cost.c — the rest of the sandbox's C library functions charge their
 * work to the step's budget.
 *
 * The count hook only sees Lua instructions: a C function such as
 * s:upper(), table.concat(t) or table.move(a, 1, 1e12, 1) runs its whole
 * loop inside one instruction, so a flow could turn cheap-looking code into
 * seconds of work on the loop (a hundred s:upper() on a 10 MB string, or one
 * table.insert(t, 1, v) per element of a large table: quadratic). Each such
 * function is wrapped: before it runs, the work it is about to do (the bytes
 * or elements it will touch, known in O(1) from its arguments) is charged to
 * the same counter as instructions and the pattern functions
 * (actors/lua_string.c). Past the budget the step is killed: budget_exceeded,
 * and pcall cannot swallow it.
 *
 * Only functions whose work grows with their input are wrapped; the cost is
 * what they will touch, never the whole input (s:sub(1, 10) of 10 MB costs
 * 10): a common call must cost what it does, or budgets would refuse honest
 * flows. string.find/match/gmatch/gsub/rep are lua_string.c's.
 */
#include "actors/lua_api.h"

#include <math.h>
#include <string.h>

typedef enum {
    C_LEN1,   /* the length of the string at 1 (upper, lower, reverse) */
    C_STRS,   /* the lengths of every string argument (format, pack, unpack) */
    C_RANGE,  /* the i..j range of the string at 1 (sub, byte), defaults i, j */
    C_NARGS,  /* one per argument (char) */
    C_TLEN,   /* the border of the table at 1 (concat, insert, remove) */
    C_MOVE,   /* e - f + 1 of table.move(a1, f, e, t) */
    C_SORT,   /* n log2 n of the table at 1 */
    C_TRANGE, /* the i..j range of table.unpack(t, i, j) */
} cost_t;

typedef struct {
    const char *lib, *name;
    cost_t cost;
    lua_Integer i, j; /* C_RANGE defaults (j -1: the end) */
} wrap_t;

static const wrap_t WRAPS[] = {
    {LUA_STRLIBNAME, "upper", C_LEN1, 0, 0},
    {LUA_STRLIBNAME, "lower", C_LEN1, 0, 0},
    {LUA_STRLIBNAME, "reverse", C_LEN1, 0, 0},
    {LUA_STRLIBNAME, "format", C_STRS, 0, 0},
    {LUA_STRLIBNAME, "pack", C_STRS, 0, 0},
    {LUA_STRLIBNAME, "unpack", C_STRS, 0, 0},
    {LUA_STRLIBNAME, "sub", C_RANGE, 1, -1},
    {LUA_STRLIBNAME, "byte", C_RANGE, 1, 0}, /* j defaults to i */
    {LUA_STRLIBNAME, "char", C_NARGS, 0, 0},
    {LUA_UTF8LIBNAME, "char", C_NARGS, 0, 0},
    {LUA_UTF8LIBNAME, "len", C_RANGE, 1, -1},
    {LUA_UTF8LIBNAME, "codepoint", C_RANGE, 1, 0},
    {LUA_UTF8LIBNAME, "offset", C_LEN1, 0, 0},
    {LUA_TABLIBNAME, "concat", C_TLEN, 0, 0},
    {LUA_TABLIBNAME, "insert", C_TLEN, 0, 0},
    {LUA_TABLIBNAME, "remove", C_TLEN, 0, 0},
    {LUA_TABLIBNAME, "move", C_MOVE, 0, 0},
    {LUA_TABLIBNAME, "sort", C_SORT, 0, 0},
    {LUA_TABLIBNAME, "unpack", C_TRANGE, 0, 0},
};

/* Argument k as Lua's library functions read an integer (2.0 and "2" too), or def. */
static lua_Integer int_arg(lua_State *L, int k, lua_Integer def, int *given)
{
    int ok = 0;
    lua_Integer v = lua_type(L, k) == LUA_TNUMBER ? lua_tointegerx(L, k, &ok) : 0;
    if (given != NULL)
        *given = ok;
    return ok ? v : def;
}

/* A string position as Lua's string functions read it, clamped to 0..len+1. */
static double pos(lua_Integer v, size_t len)
{
    if (v < 0)
        return v < -(lua_Integer)len ? 0 : (double)len + 1 + (double)v;
    return (double)v > (double)len + 1 ? (double)len + 1 : (double)v;
}

/* The work of a call, from its arguments only (never raises, never calls metamethods). */
static double cost_of(lua_State *L, const wrap_t *w)
{
    int n = lua_gettop(L);
    size_t len = 0;
    double c = 0;

    switch (w->cost) {
    case C_LEN1:
        if (lua_type(L, 1) == LUA_TSTRING)
            lua_tolstring(L, 1, &len);
        return (double)len;
    case C_STRS:
        for (int k = 1; k <= n; k++)
            if (lua_type(L, k) == LUA_TSTRING) {
                lua_tolstring(L, k, &len);
                c += (double)len;
            }
        return c;
    case C_RANGE: {
        if (lua_type(L, 1) != LUA_TSTRING)
            return 0;
        lua_tolstring(L, 1, &len);
        lua_Integer i = int_arg(L, 2, w->i, NULL);
        lua_Integer j = int_arg(L, 3, w->j == 0 ? i : w->j, NULL);
        double a = pos(i, len), b = pos(j, len);
        return b >= a ? b - a + 1 : 0;
    }
    case C_NARGS:
        return n;
    case C_TLEN:
        return lua_type(L, 1) == LUA_TTABLE ? (double)lua_rawlen(L, 1) : 0;
    case C_SORT: {
        double m = lua_type(L, 1) == LUA_TTABLE ? (double)lua_rawlen(L, 1) : 0;
        return m > 1 ? m * log2(m) : m;
    }
    case C_MOVE: {
        double f = (double)int_arg(L, 2, 0, NULL), e = (double)int_arg(L, 3, 0, NULL);
        return e >= f ? e - f + 1 : 0;
    }
    case C_TRANGE: {
        int given;
        double i = (double)int_arg(L, 2, 1, NULL);
        double j = (double)int_arg(L, 3, 0, &given);
        if (!given)
            j = lua_type(L, 1) == LUA_TTABLE ? (double)lua_rawlen(L, 1) : 0;
        return j >= i ? j - i + 1 : 0;
    }
    }
    return 0;
}

/* upvalues: the original function, the wrap_t (light userdata). */
static int charged_call(lua_State *L)
{
    const wrap_t *w = lua_touserdata(L, lua_upvalueindex(2));
    sl_flow__charge(L, cost_of(L, w), w->name);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

void sl_lua_inject_costs(lua_State *L, sl_flowvm_t *vm)
{
    (void)vm;
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    for (size_t k = 0; k < sizeof WRAPS / sizeof WRAPS[0]; k++) {
        const wrap_t *w = &WRAPS[k];
        if (lua_getfield(L, -1, w->lib) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        if (lua_getfield(L, -1, w->name) == LUA_TFUNCTION) {
            lua_pushlightuserdata(L, (void *)w);
            lua_pushcclosure(L, charged_call, 2);
            lua_setfield(L, -2, w->name);
        } else {
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}
