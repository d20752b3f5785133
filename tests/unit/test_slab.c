/*
 * test_slab.c — core/slab.c under lua_Alloc's contract: random allocations,
 * resizes (within a class, across classes, across SL_SLAB_MAX both ways) and
 * frees, each block filled with a pattern checked at every step, so a block
 * handed out twice or a copy that loses bytes fails; freed blocks are reused
 * (reserved memory stays at its peak, not growing per cycle); a real Lua state
 * runs on the pool and closes cleanly. Under ASan the pool passes through to
 * malloc and the same checks run against it.
 */
#include "core/slab.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define N 4000

typedef struct {
    unsigned char *p;
    size_t n;
    unsigned char tag;
} blk_t;

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static size_t rand_size(void)
{
    uint64_t r = next_rand() % 100;
    if (r < 80)
        return 1 + next_rand() % SL_SLAB_MAX; /* small */
    return SL_SLAB_MAX + 1 + next_rand() % 2000; /* large */
}

static int intact(const blk_t *b)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->p[i] != (unsigned char)(b->tag + i))
            return 0;
    return 1;
}

static void fill(blk_t *b)
{
    for (size_t i = 0; i < b->n; i++)
        b->p[i] = (unsigned char)(b->tag + i);
}

static void test_random(void)
{
    sl_slab_t *p = sl_slab_new();
    CHECK(p != NULL);
    static blk_t blk[N];
    memset(blk, 0, sizeof blk);
    int bad = 0;
    size_t peak = 0;
    for (int round = 0; round < 6; round++) {
        for (int op = 0; op < 60000; op++) {
            blk_t *b = &blk[next_rand() % N];
            if (b->p && !intact(b))
                bad++;
            uint64_t what = next_rand() % 3;
            if (!b->p) {
                b->n = rand_size();
                b->p = sl_slab_realloc(p, NULL, 7 /* a type tag, as Lua passes */, b->n);
                if (!b->p) {
                    bad++;
                    continue;
                }
                b->tag = (unsigned char)next_rand();
                fill(b);
            } else if (what == 0) {
                CHECK(sl_slab_realloc(p, b->p, b->n, 0) == NULL);
                b->p = NULL;
            } else {
                size_t nn = what == 1 ? rand_size() : (b->n > 1 ? b->n - 1 : 2);
                unsigned char *q = sl_slab_realloc(p, b->p, b->n, nn);
                if (!q) {
                    bad++;
                    continue;
                }
                size_t keep = nn < b->n ? nn : b->n;
                b->p = q;
                for (size_t i = 0; i < keep; i++)
                    if (q[i] != (unsigned char)(b->tag + i)) {
                        bad++;
                        break;
                    }
                b->n = nn;
                fill(b);
            }
        }
        if (round == 1)
            peak = sl_slab_reserved(p);
    }
    CHECK_EQ(bad, 0);
    for (int i = 0; i < N; i++) {
        if (blk[i].p && !intact(&blk[i]))
            bad++;
        if (blk[i].p)
            sl_slab_realloc(p, blk[i].p, blk[i].n, 0);
    }
    CHECK_EQ(bad, 0);
    /* the same workload for four more rounds reuses freed blocks: at most a
     * few more slabs than after the first two rounds, not four times as many */
    CHECK(sl_slab_reserved(p) <= peak + 8 * SL_SLAB_BYTES || peak == 0);
    sl_slab_free(p);
}

static void test_classes(void)
{
    sl_slab_t *p = sl_slab_new();
    /* two live blocks of one class never overlap; a freed one comes back */
    char *a = sl_slab_realloc(p, NULL, 0, 24), *b = sl_slab_realloc(p, NULL, 0, 20);
    CHECK(a && b && (a + 24 <= b || b + 24 <= a));
    sl_slab_realloc(p, a, 24, 0);
    char *c = sl_slab_realloc(p, NULL, 0, 17);
    if (sl_slab_pooling())
        CHECK(c == a);
    /* within a class a resize keeps the block; across, it moves */
    char *c2 = sl_slab_realloc(p, c, 17, 23);
    CHECK(c2 != NULL);
    if (sl_slab_pooling())
        CHECK(c2 == c);
    c = c2;
    memset(c, 'x', 23);
    char *d = sl_slab_realloc(p, c, 23, 300); /* to malloc */
    CHECK(d != NULL && d != c && memcmp(d, "xxxxxxxxxxxxxxxxxxxxxxx", 23) == 0);
    char *e = sl_slab_realloc(p, d, 300, 9); /* back to the pool */
    CHECK(e != NULL && memcmp(e, "xxxxxxxxx", 9) == 0);
    sl_slab_realloc(p, e, 9, 0);
    sl_slab_realloc(p, b, 20, 0);
    sl_slab_free(p);
    sl_slab_free(NULL);
}

static void *lalloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    return sl_slab_realloc(ud, ptr, osize, nsize);
}

static void test_lua(void)
{
    sl_slab_t *p = sl_slab_new();
    lua_State *L = lua_newstate(lalloc, p);
    CHECK(L != NULL);
    if (!L) {
        sl_slab_free(p);
        return;
    }
    luaL_openlibs(L);
    const char *code = "local t = {}\n"
                       "for i = 1, 20000 do t[i] = {s = ('x'):rep(i % 300), n = i} end\n"
                       "local n = 0\n"
                       "for i = 1, #t, 7 do t[i] = nil end\n"
                       "collectgarbage()\n"
                       "for _, v in pairs(t) do n = n + #v.s end\n"
                       "local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end)\n"
                       "assert(co(1) == 2 and co(21) == 42)\n"
                       "return n";
    CHECK(luaL_dostring(L, code) == LUA_OK);
    CHECK(lua_tointeger(L, -1) > 0);
    lua_close(L);
    sl_slab_free(p);
}

int main(void)
{
    test_classes();
    test_random();
    test_lua();
    return check_summary();
}
