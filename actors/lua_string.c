/*
 * lua_string.c — string.find, match, gmatch, gsub and rep with a budget.
 *
 * The instruction count hook cannot fire inside a C function, so Lua's own
 * pattern functions run unbounded inside one call: an unanchored pattern that
 * backtracks (`("a"):rep(200000):match("a-b")`) is O(n^2) or worse and held the
 * loop for minutes. These replacements implement Lua patterns (Lua 5.4 manual
 * §6.4.1) with a matcher of our own that counts steps — every attempt at a
 * pattern item, every single-character test, every backtrack — against the
 * running step's instruction budget (the same counter the count hook adds to,
 * step_instructions, default 50M: string work and Lua work share one budget).
 * Past it the call raises and marks the step killed, exactly like the hook
 * does: the sandbox's pcall re-raises and the step fails with
 * `budget_exceeded`. At load time (a flow file's top level) the work is charged
 * to the load's counter, which the hook then enforces.
 *
 * The matcher compiles the pattern into items first (single-character items
 * become 256-bit sets), then backtracks over the items. Its recursion — at
 * most one C frame per capture, optional or repeated item, as in Lua — is
 * bounded to SL_STR_MAX_DEPTH frames ("pattern too complex", as Lua). Results
 * equal Lua's own functions (tests/unit/test_lua_string.c compares them); the
 * one difference is that malformed patterns (a lone '%', a missing ']', a bad
 * back-reference, ...) are refused before matching starts, also when Lua would
 * have failed to match before reaching the bad part.
 *
 * string.rep refuses (budget exceeded) a result larger than what is left of
 * the step's memory budget before allocating it, and builds by doubling (Lua's
 * loops once per repetition: rep("", 1e18) never ends). gsub's output grows through
 * the capped allocator like every other string. string.format needs nothing:
 * Lua caps its widths and precisions at two digits.
 *
 * sl_lua_inject_string is called on the VM's string library table itself
 * (actors/flow.c, sl_flowvm_new), which is both the string metatable's
 * __index (`s:match(p)`) and the table every sandbox copies as `string`.
 */
#include "actors/lua_api.h"

#include <ctype.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SL_STR_MAX_CAPTURES 32 /* as Lua's LUA_MAXCAPTURES */
#define SL_STR_MAX_DEPTH 200   /* nested matcher frames, as Lua's MAXCCALLS */
#define SL_STR_STACK_ITEMS 32  /* patterns of up to this many items compile on the C stack */

/* ------------------------------------------------------------------------ */
/* The budget                                                                */
/* ------------------------------------------------------------------------ */

/*
 * A call takes what is left of the counter when it starts (`left`) and writes
 * back what it used (`settle`) before it returns, raises or calls back into
 * Lua (a gsub replacement function runs under the hook and adds to the same
 * counter).
 */
typedef struct budget_s {
    lua_State *L;
    sl_flowvm_t *vm;
    sl_step_t *s;     /* NULL at load time */
    long *used;       /* s->instr, or vm->load_instr */
    long left;        /* steps left */
    long taken;       /* what `left` was when last taken from *used */
    const char *kill; /* the step's killed message for this function (static) */
} budget_t;

static void budget_take(budget_t *b)
{
    long max = b->vm->host.step_instructions;
    b->left = *b->used < max ? max - *b->used : 0;
    b->taken = b->left;
}

static void budget_settle(budget_t *b)
{
    *b->used += b->taken - b->left;
    b->taken = b->left;
}

/* what: "find", "match", ... — kill: the message the step is killed with (static). */
static void budget_begin(budget_t *b, lua_State *L, const char *kill)
{
    b->L = L;
    b->vm = lua_touserdata(L, lua_upvalueindex(1));
    b->s = sl_flow__step(L);
    b->used = b->s != NULL ? &b->s->instr : &b->vm->load_instr;
    b->kill = kill;
    if (b->s != NULL && b->s->killed != NULL)
        luaL_error(L, "%s", b->s->killed);
    budget_take(b);
}

/* The budget ran out: charge all of it, mark the step killed, raise. */
static void budget_over(budget_t *b)
{
    long max = b->vm->host.step_instructions;
    if (*b->used <= max)
        *b->used = max + 1; /* the count hook refuses from now on too */
    b->taken = b->left = 0;
    if (b->s != NULL)
        b->s->killed = b->kill;
    luaL_error(b->L, "%s", b->kill);
}

#define CHARGE(b, n)                                                                               \
    do {                                                                                           \
        if (((b)->left -= (long)(n)) < 0)                                                          \
            budget_over(b);                                                                        \
    } while (0)

/* Raises msg after writing back what was used (luaL_error's formats). */
static void budget_error(budget_t *b, const char *fmt, int arg)
{
    budget_settle(b);
    luaL_error(b->L, fmt, arg);
}

/* ------------------------------------------------------------------------ */
/* Compiling a pattern                                                       */
/* ------------------------------------------------------------------------ */

enum {
    IT_SET,      /* one character out of a set, with a quantifier */
    IT_OPEN,     /* '(' : capture a starts */
    IT_POSITION, /* '()': capture a is the position */
    IT_CLOSE,    /* ')' : capture a ends */
    IT_END,      /* '$' as the pattern's last character */
    IT_BALANCE,  /* %bxy */
    IT_FRONTIER, /* %f[set] */
    IT_BACKREF   /* %1-%9: the text of capture a again */
};

enum { Q_ONE, Q_OPT, Q_STAR, Q_PLUS, Q_MIN };

typedef struct item_s {
    uint8_t kind, quant;
    uint8_t a, b;    /* capture index; %b's open and close characters */
    uint8_t set[32]; /* IT_SET, IT_FRONTIER: bit c is set when c belongs */
} item_t;

typedef struct pattern_s {
    item_t *it;
    int n;
    int ncap; /* captures the pattern opens */
} pattern_t;

#define IN_SET(set, c) (((set)[(unsigned char)(c) >> 3] >> ((unsigned char)(c)&7)) & 1)

static void set_add(uint8_t *set, int c)
{
    set[c >> 3] |= (uint8_t)(1u << (c & 7));
}

/* Bit sets of %a, %c, ... by class letter (both cases), filled once. */
static uint8_t class_sets[128][32];
static int class_sets_ready;

static int class_test(int cl, int c)
{
    switch (tolower(cl)) {
    case 'a':
        return isalpha(c);
    case 'c':
        return iscntrl(c);
    case 'd':
        return isdigit(c);
    case 'g':
        return isgraph(c);
    case 'l':
        return islower(c);
    case 'p':
        return ispunct(c);
    case 's':
        return isspace(c);
    case 'u':
        return isupper(c);
    case 'w':
        return isalnum(c);
    case 'x':
        return isxdigit(c);
    case 'z': /* deprecated in the manual, still in Lua 5.4's library */
        return c == 0;
    default:
        return -1;
    }
}

static void class_sets_init(void)
{
    for (int cl = 0; cl < 128; cl++) {
        memset(class_sets[cl], 0, 32);
        for (int c = 0; c < 256; c++) {
            int r = class_test(cl, c);
            /* an upper-case class letter is the complement; a non-class is itself */
            if (r < 0 ? c == cl : (isupper(cl) ? !r : r != 0))
                set_add(class_sets[cl], c);
        }
    }
    class_sets_ready = 1;
}

/* Adds the characters of "%<cl>" to set. */
static void set_add_class(uint8_t *set, int cl)
{
    if (cl >= 128) {
        set_add(set, cl);
        return;
    }
    if (!class_sets_ready)
        class_sets_init();
    for (int i = 0; i < 32; i++)
        set[i] |= class_sets[cl][i];
}

/*
 * Parses the set "[...]" that starts at p[i] into set; returns the index just
 * past its ']'. Rules of §6.4.1: a '^' first complements; the first character
 * after '[' (or "[^") is always a member, so "[]]" holds ']'; "%x" is a class
 * or the character x; "x-y" is a range unless the '-' is followed by the
 * closing ']'.
 */
static size_t parse_set(budget_t *b, const char *p, size_t lp, size_t i, uint8_t *set)
{
    size_t q = i + 1, ec, k;
    int neg = 0;

    if (q < lp && p[q] == '^') {
        neg = 1;
        q++;
    }
    /* find the closing ']' (escapes skip the character after '%') */
    do {
        if (q >= lp)
            budget_error(b, "malformed pattern (missing ']')", 0);
        if (p[q++] == '%' && q < lp)
            q++;
    } while (q >= lp || p[q] != ']');
    ec = q;
    memset(set, 0, 32);
    for (k = i + 1 + (size_t)neg; k < ec; k++) {
        unsigned char c = (unsigned char)p[k];
        CHARGE(b, 1);
        if (c == '%') {
            k++;
            set_add_class(set, (unsigned char)p[k]);
        } else if (p[k + 1] == '-' && k + 2 < ec) {
            for (int x = c; x <= (unsigned char)p[k + 2]; x++)
                set_add(set, x);
            k += 2;
        } else {
            set_add(set, c);
        }
    }
    if (neg)
        for (k = 0; k < 32; k++)
            set[k] = (uint8_t)~set[k];
    return ec + 1;
}

/*
 * Compiles p (without the leading '^' of an anchored find/match/gsub) into
 * pat->it, which has room for lp items (an item takes at least one byte).
 */
static void compile(budget_t *b, const char *p, size_t lp, pattern_t *pat)
{
    int open[SL_STR_MAX_CAPTURES], closed[SL_STR_MAX_CAPTURES];
    int nopen = 0, n = 0;
    size_t i = 0;

    pat->ncap = 0;
    while (i < lp) {
        item_t *it = &pat->it[n++];
        unsigned char c = (unsigned char)p[i];
        CHARGE(b, 1);
        it->quant = Q_ONE;
        if (c == '(') {
            if (pat->ncap >= SL_STR_MAX_CAPTURES)
                budget_error(b, "too many captures", 0);
            it->a = (uint8_t)pat->ncap;
            if (i + 1 < lp && p[i + 1] == ')') {
                it->kind = IT_POSITION;
                closed[pat->ncap++] = 1;
                i += 2;
            } else {
                it->kind = IT_OPEN;
                open[nopen++] = pat->ncap;
                closed[pat->ncap++] = 0;
                i++;
            }
            continue;
        }
        if (c == ')') {
            if (nopen == 0)
                budget_error(b, "invalid pattern capture", 0);
            it->kind = IT_CLOSE;
            it->a = (uint8_t)open[--nopen];
            closed[it->a] = 1;
            i++;
            continue;
        }
        if (c == '$' && i + 1 == lp) {
            it->kind = IT_END;
            i++;
            continue;
        }
        if (c == '%' && i + 1 < lp) {
            unsigned char d = (unsigned char)p[i + 1];
            if (d == 'b') {
                if (i + 3 >= lp)
                    budget_error(b, "malformed pattern (missing arguments to '%%b')", 0);
                it->kind = IT_BALANCE;
                it->a = (uint8_t)p[i + 2];
                it->b = (uint8_t)p[i + 3];
                i += 4;
                continue;
            }
            if (d == 'f') {
                i += 2;
                if (i >= lp || p[i] != '[')
                    budget_error(b, "missing '[' after '%%f' in pattern", 0);
                it->kind = IT_FRONTIER;
                i = parse_set(b, p, lp, i, it->set);
                continue;
            }
            if (isdigit(d)) {
                int k = d - '1';
                /* a back-reference must name a capture closed before it */
                if (k < 0 || k >= pat->ncap || !closed[k])
                    budget_error(b, "invalid capture index %%%d", k + 1);
                it->kind = IT_BACKREF;
                it->a = (uint8_t)k;
                i += 2;
                continue;
            }
        }
        /* a single-character item, maybe followed by a quantifier */
        it->kind = IT_SET;
        if (c == '%') {
            if (i + 1 >= lp)
                budget_error(b, "malformed pattern (ends with '%%')", 0);
            memset(it->set, 0, 32);
            set_add_class(it->set, (unsigned char)p[i + 1]);
            i += 2;
        } else if (c == '[') {
            i = parse_set(b, p, lp, i, it->set);
        } else if (c == '.') {
            memset(it->set, 0xff, 32);
            i++;
        } else {
            memset(it->set, 0, 32);
            set_add(it->set, c);
            i++;
        }
        if (i < lp) {
            switch (p[i]) {
            case '?':
                it->quant = Q_OPT;
                break;
            case '*':
                it->quant = Q_STAR;
                break;
            case '+':
                it->quant = Q_PLUS;
                break;
            case '-':
                it->quant = Q_MIN;
                break;
            default:
                continue;
            }
            i++;
        }
    }
    pat->n = n;
}

/* Compiles into `local` when it is big enough, else into a userdata pushed on L. */
static void compile_into(budget_t *b, const char *p, size_t lp, pattern_t *pat, item_t *local,
                         size_t nlocal)
{
    pat->it = local;
    if (lp > nlocal) {
        budget_settle(b); /* the userdata counts against the memory budget and may raise */
        pat->it = lua_newuserdatauv(b->L, lp * sizeof(item_t), 0);
    }
    compile(b, p, lp, pat);
}

/* ------------------------------------------------------------------------ */
/* Matching                                                                  */
/* ------------------------------------------------------------------------ */

#define CAP_OPEN (-1)
#define CAP_POS (-2)

typedef struct match_s {
    budget_t *b;
    const pattern_t *pat;
    const char *src, *end; /* the subject */
    int level;             /* captures opened so far */
    int depth;             /* matcher frames left */
    struct {
        const char *init;
        ptrdiff_t len; /* CAP_OPEN, CAP_POS, or the length */
    } cap[SL_STR_MAX_CAPTURES];
} match_t;

static void match_reset(match_t *m)
{
    m->level = 0;
    m->depth = SL_STR_MAX_DEPTH;
}

/*
 * Matches items i.. of the pattern at s; returns the end of the match or NULL.
 * Recurses where the rest of the pattern must be tried with a way back:
 * captures (to undo them), '?', '*', '+' and '-'. Everything else loops.
 */
static const char *do_match(match_t *m, const char *s, int i)
{
    budget_t *b = m->b;
    const pattern_t *pat = m->pat;
    const char *r = NULL;

    if (m->depth-- == 0)
        budget_error(b, "pattern too complex", 0);
    for (;;) {
        const item_t *it;
        CHARGE(b, 1);
        if (i == pat->n) {
            r = s;
            goto out;
        }
        it = &pat->it[i];
        switch (it->kind) {
        case IT_OPEN:
        case IT_POSITION:
            m->cap[it->a].init = s;
            m->cap[it->a].len = it->kind == IT_OPEN ? CAP_OPEN : CAP_POS;
            m->level = it->a + 1;
            if ((r = do_match(m, s, i + 1)) == NULL)
                m->level--;
            goto out;
        case IT_CLOSE:
            m->cap[it->a].len = s - m->cap[it->a].init;
            if ((r = do_match(m, s, i + 1)) == NULL)
                m->cap[it->a].len = CAP_OPEN;
            goto out;
        case IT_END:
            r = s == m->end ? s : NULL;
            goto out;
        case IT_BALANCE: {
            int depth = 1;
            if (s >= m->end || (unsigned char)*s != it->a)
                goto out;
            /* the close character is tested first: %bxx matches "x...x" */
            while (++s < m->end) {
                CHARGE(b, 1);
                if ((unsigned char)*s == it->b) {
                    if (--depth == 0)
                        break;
                } else if ((unsigned char)*s == it->a) {
                    depth++;
                }
            }
            if (s >= m->end)
                goto out;
            s++;
            i++;
            continue;
        }
        case IT_FRONTIER: {
            int prev = s == m->src ? 0 : (unsigned char)s[-1];
            int cur = s < m->end ? (unsigned char)*s : 0;
            if (IN_SET(it->set, prev) || !IN_SET(it->set, cur))
                goto out;
            i++;
            continue;
        }
        case IT_BACKREF: {
            ptrdiff_t len = m->cap[it->a].len;
            /* a position capture has no text: it never matches (as in Lua) */
            if (len < 0 || m->end - s < len)
                goto out;
            CHARGE(b, len);
            if (memcmp(m->cap[it->a].init, s, (size_t)len) != 0)
                goto out;
            s += len;
            i++;
            continue;
        }
        default: /* IT_SET */
            break;
        }
        int one = s < m->end && IN_SET(it->set, *s);
        switch (it->quant) {
        case Q_ONE:
            if (!one)
                goto out;
            s++;
            i++;
            continue;
        case Q_OPT:
            if (one && (r = do_match(m, s + 1, i + 1)) != NULL)
                goto out;
            i++;
            continue;
        case Q_MIN:
            for (;;) {
                if ((r = do_match(m, s, i + 1)) != NULL)
                    goto out;
                CHARGE(b, 1);
                if (!(s < m->end && IN_SET(it->set, *s)))
                    goto out;
                s++;
            }
        default: { /* Q_STAR, Q_PLUS: the longest run, then give back one at a time */
            ptrdiff_t k = 0;
            if (it->quant == Q_PLUS) {
                if (!one)
                    goto out;
                s++;
            }
            while (s + k < m->end && IN_SET(it->set, s[k])) {
                CHARGE(b, 1);
                k++;
            }
            for (; k >= 0; k--) {
                if ((r = do_match(m, s + k, i + 1)) != NULL)
                    goto out;
                CHARGE(b, 1);
            }
            goto out;
        }
        }
    }
out:
    m->depth++;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Captures                                                                  */
/* ------------------------------------------------------------------------ */

/* Pushes capture k (or the whole match s..e when the pattern has none and k is 0). */
static void push_capture(match_t *m, int k, const char *s, const char *e)
{
    if (k >= m->level) {
        if (k != 0)
            budget_error(m->b, "invalid capture index %%%d", k + 1);
        lua_pushlstring(m->b->L, s, (size_t)(e - s));
        return;
    }
    if (m->cap[k].len == CAP_OPEN)
        budget_error(m->b, "unfinished capture", 0);
    if (m->cap[k].len == CAP_POS)
        lua_pushinteger(m->b->L, (m->cap[k].init - m->src) + 1);
    else
        lua_pushlstring(m->b->L, m->cap[k].init, (size_t)m->cap[k].len);
}

/* Pushes every capture (the whole match when none and s != NULL); returns how many. */
static int push_captures(match_t *m, const char *s, const char *e)
{
    int n = m->level == 0 && s != NULL ? 1 : m->level;
    luaL_checkstack(m->b->L, n, "too many captures");
    for (int k = 0; k < n; k++)
        push_capture(m, k, s, e);
    return n;
}

/* ------------------------------------------------------------------------ */
/* find, match, gmatch, gsub                                                 */
/* ------------------------------------------------------------------------ */

/* Lua's rule for a start position: negative counts from the end; 0 and below -len are 1. */
static size_t start_pos(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (strchr("^$*+?.([%-", p[i]) != NULL && p[i] != '\0')
            return 1;
    return 0;
}

/* Plain search, one step per candidate position and per byte compared. */
static const char *plain_find(budget_t *b, const char *s, size_t ls, const char *p, size_t lp)
{
    if (lp == 0)
        return s;
    if (lp > ls)
        return NULL;
    const char *last = s + (ls - lp);
    while (s <= last) {
        const char *c = memchr(s, p[0], (size_t)(last - s) + 1);
        size_t k = 1;
        if (c == NULL)
            return NULL;
        CHARGE(b, 1);
        while (k < lp && c[k] == p[k])
            k++;
        CHARGE(b, k);
        if (k == lp)
            return c;
        s = c + 1;
    }
    return NULL;
}

static int find_aux(lua_State *L, int find, const char *kill)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_pos(luaL_optinteger(L, 3, 1), ls) - 1;
    item_t local[SL_STR_STACK_ITEMS];
    pattern_t pat;
    budget_t b;
    match_t m;

    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    budget_begin(&b, L, kill);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        const char *r = plain_find(&b, s + init, ls - init, p, lp);
        budget_settle(&b);
        if (r == NULL) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (r - s) + 1);
        lua_pushinteger(L, (lua_Integer)((size_t)(r - s) + lp));
        return 2;
    }
    int anchor = lp > 0 && p[0] == '^';
    compile_into(&b, p + anchor, lp - (size_t)anchor, &pat, local, SL_STR_STACK_ITEMS);
    m.b = &b;
    m.pat = &pat;
    m.src = s;
    m.end = s + ls;
    const char *at = s + init;
    do {
        const char *e;
        match_reset(&m);
        if ((e = do_match(&m, at, 0)) != NULL) {
            int n;
            budget_settle(&b);
            if (find) {
                lua_pushinteger(L, (at - s) + 1);
                lua_pushinteger(L, e - s);
                n = push_captures(&m, NULL, NULL);
                return n + 2;
            }
            return push_captures(&m, at, e);
        }
        CHARGE(&b, 1);
    } while (at++ < m.end && !anchor);
    budget_settle(&b);
    luaL_pushfail(L);
    return 1;
}

static int l_find(lua_State *L)
{
    return find_aux(L, 1, "instruction budget exceeded (string.find)");
}

static int l_match(lua_State *L)
{
    return find_aux(L, 0, "instruction budget exceeded (string.match)");
}

/* gmatch's state: a userdata upvalue of the iterator (the subject is another). */
typedef struct gmatch_s {
    size_t pos;          /* where the next search starts */
    ptrdiff_t lastmatch; /* end of the last match (-1: none); an empty match there is skipped */
    pattern_t pat;
    item_t items[];
} gmatch_t;

static int gmatch_next(lua_State *L)
{
    size_t ls;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
    gmatch_t *g = lua_touserdata(L, lua_upvalueindex(3));
    budget_t b;
    match_t m;

    budget_begin(&b, L, "instruction budget exceeded (string.gmatch)");
    g->pat.it = g->items;
    m.b = &b;
    m.pat = &g->pat;
    m.src = s;
    m.end = s + ls;
    for (const char *at = s + g->pos; at <= m.end; at++) {
        const char *e;
        match_reset(&m);
        if ((e = do_match(&m, at, 0)) != NULL && e - s != g->lastmatch) {
            g->pos = (size_t)(e - s);
            g->lastmatch = e - s;
            budget_settle(&b);
            return push_captures(&m, at, e);
        }
        CHARGE(&b, 1);
    }
    g->pos = ls + 1;
    budget_settle(&b);
    return 0;
}

/* In gmatch a leading '^' is an ordinary character (an anchor would stop the iteration). */
static int l_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *p;
    size_t init;
    gmatch_t *g;
    budget_t b;

    luaL_checklstring(L, 1, &ls);
    p = luaL_checklstring(L, 2, &lp);
    init = start_pos(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls)
        init = ls + 1; /* past the end: no match */
    lua_settop(L, 2);
    budget_begin(&b, L, "instruction budget exceeded (string.gmatch)");
    g = lua_newuserdatauv(L, sizeof(*g) + lp * sizeof(item_t), 0);
    g->pos = init;
    g->lastmatch = -1;
    g->pat.it = g->items;
    compile(&b, p, lp, &g->pat);
    budget_settle(&b);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 3);
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* Appends the replacement of the match s..e to buf; returns whether it changed the text. */
static int add_replacement(match_t *m, luaL_Buffer *buf, const char *s, const char *e, int tr)
{
    lua_State *L = m->b->L;

    if (tr == LUA_TFUNCTION || tr == LUA_TTABLE) {
        budget_settle(m->b); /* Lua code may run: it counts under the hook */
        if (tr == LUA_TFUNCTION) {
            lua_pushvalue(L, 3);
            int n = push_captures(m, s, e);
            lua_call(L, n, 1);
        } else {
            push_capture(m, 0, s, e);
            lua_gettable(L, 3);
        }
        budget_take(m->b);
        if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
            lua_pop(L, 1);
            luaL_addlstring(buf, s, (size_t)(e - s));
            return 0;
        }
        if (!lua_isstring(L, -1)) {
            budget_settle(m->b);
            return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
        }
        luaL_addvalue(buf);
        return 1;
    }
    /* a string (or number): %0-%9 are captures, %% is '%' */
    size_t lr;
    const char *r = lua_tolstring(L, 3, &lr);
    const char *re = r + lr;
    while (r < re) {
        const char *pc = memchr(r, '%', (size_t)(re - r));
        if (pc == NULL) {
            luaL_addlstring(buf, r, (size_t)(re - r));
            break;
        }
        luaL_addlstring(buf, r, (size_t)(pc - r));
        pc++; /* the character after '%' (the string's terminating NUL at the end) */
        if (*pc == '%') {
            luaL_addchar(buf, '%');
        } else if (*pc == '0') {
            luaL_addlstring(buf, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)*pc)) {
            push_capture(m, *pc - '1', s, e);
            luaL_tolstring(L, -1, NULL); /* a position capture is an integer */
            lua_remove(L, -2);
            luaL_addvalue(buf);
        } else {
            budget_settle(m->b);
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        r = pc + 1;
    }
    return 1;
}

static int l_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int tr = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1), n = 0;
    const char *src = s, *lastmatch = NULL;
    int anchor = lp > 0 && p[0] == '^', changed = 0;
    item_t local[SL_STR_STACK_ITEMS];
    pattern_t pat;
    luaL_Buffer buf;
    budget_t b;
    match_t m;

    luaL_argexpected(
        L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
        "string/function/table");
    lua_settop(L, 3);
    budget_begin(&b, L, "instruction budget exceeded (string.gsub)");
    compile_into(&b, p + anchor, lp - (size_t)anchor, &pat, local, SL_STR_STACK_ITEMS);
    m.b = &b;
    m.pat = &pat;
    m.src = s;
    m.end = s + ls;
    luaL_buffinit(L, &buf);
    while (n < max) {
        const char *e;
        match_reset(&m);
        if ((e = do_match(&m, src, 0)) != NULL && e != lastmatch) {
            n++;
            changed |= add_replacement(&m, &buf, src, e, tr);
            src = lastmatch = e;
        } else if (src < m.end) {
            luaL_addchar(&buf, *src++);
        } else {
            break;
        }
        CHARGE(&b, 1);
        if (anchor)
            break;
    }
    budget_settle(&b);
    if (!changed) {
        lua_pushvalue(L, 1); /* nothing replaced: the subject itself */
    } else {
        luaL_addlstring(&buf, src, (size_t)(m.end - src));
        luaL_pushresult(&buf);
    }
    lua_pushinteger(L, n);
    return 2;
}

/* ------------------------------------------------------------------------ */
/* rep                                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Refuses a result larger than what is left of the step's memory budget
 * before anything is allocated. Lua's own rep copies the string once per
 * repetition, so ("").rep("", 1e18) loops for hours with nothing to
 * allocate; this one fills the result by doubling (O(log n) copies) and
 * charges one step per 64 bytes.
 */
static int l_rep(lua_State *L)
{
    size_t l, lsep = 0, unit, body, total;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    long long room;
    luaL_Buffer buf;
    budget_t b;
    char *p;

    if (n <= 0 || l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    unit = l + lsep;
    if (unit < l || unit > (size_t)INT_MAX / (size_t)n) /* Lua's own limit */
        return luaL_error(L, "resulting string too large");
    body = unit * (size_t)(n - 1); /* n-1 times s..sep, then s */
    total = body + l;
    budget_begin(&b, L, "instruction budget exceeded (string.rep)");
    room = (long long)b.vm->host.step_memory - (b.s != NULL ? b.s->mem : 0);
    if ((long long)total > room) {
        if (b.s != NULL)
            b.s->killed = "memory budget exceeded (string.rep)";
        return luaL_error(L, "memory budget exceeded (string.rep of %I bytes)", (lua_Integer)total);
    }
    CHARGE(&b, 1 + total / 64);
    budget_settle(&b);
    p = luaL_buffinitsize(L, &buf, total);
    if (body > 0) {
        size_t filled = unit;
        memcpy(p, s, l);
        memcpy(p + l, sep, lsep);
        while (filled < body) {
            size_t k = filled < body - filled ? filled : body - filled;
            memcpy(p + filled, p, k);
            filled += k;
        }
    }
    memcpy(p + body, s, l);
    luaL_pushresultsize(&buf, total);
    return 1;
}

/* ------------------------------------------------------------------------ */

void sl_lua_inject_string(lua_State *L, sl_flowvm_t *vm)
{
    static const struct {
        const char *name;
        lua_CFunction fn;
    } fns[] = {{"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}};

    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        lua_pushlightuserdata(L, vm);
        lua_pushcclosure(L, fns[i].fn, 1);
        lua_setfield(L, -2, fns[i].name);
    }
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_rep, 1);
    lua_setfield(L, -2, "rep");
}
