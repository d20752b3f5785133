/*
 * test_lua_string.c — actors/lua_string.c: the budgeted string.find, match,
 * gmatch, gsub and rep.
 *
 *  1. Differential: the same Lua chunk (fixed cases plus generated patterns
 *     and subjects) runs in a plain Lua 5.4 state with the stock string
 *     library and in the flow VM's main state (our functions); every result,
 *     error message included, must be identical.
 *  2. Hostile inputs of 200 KB (runs of one letter, digits, '@', '.', spaces,
 *     mixed) against backtracking patterns, each as a step: it either succeeds
 *     or fails with budget_exceeded, and the step's counter stays within the
 *     budget (what bounds the time; no wall-clock asserts).
 *  3. A killed step cannot pcall its way around the budget, s:method() calls
 *     are budgeted too, string.rep refuses a result over the memory budget,
 *     a flow file whose top level backtracks fails to load, and another step
 *     in the same VM runs fine afterwards.
 */
#include "actors/flow.h"
#include "actors/lua_api.h"
#include "core/config.h"

#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "check.h"

#define BUDGET 20000000L

static struct event_base *base;
static sl_flowvm_t *vm;
static char tmpdir[64];

/* ------------------------------------------------------------------------ */
/* 1. differential                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Defines cases() -> a list of lines "<case> => <results>". Results are the
 * pcall'd call's values with their types, so that 1 and "1", 1 and 1.0 differ.
 */
static const char diff_chunk[] =
    "local function ser(...)\n"
    "  local n, out = select('#', ...), {}\n"
    "  for i = 1, n do\n"
    "    local v = select(i, ...)\n"
    "    out[#out + 1] = (math.type(v) or type(v)) .. ':' .. tostring(v)\n"
    "  end\n"
    "  return table.concat(out, '|')\n"
    "end\n"
    "local function q(v)\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  if type(v) == 'function' or type(v) == 'table' then return type(v) end\n"
    "  return tostring(v)\n"
    "end\n"
    "local lines = {}\n"
    "local function case(name, ...)\n"
    "  local args = table.pack(...)\n"
    "  local shown = {}\n"
    "  for i = 1, args.n do shown[i] = q(args[i]) end\n"
    "  local res\n"
    "  if name == 'gmatch' then\n"
    "    local ok, err = pcall(function()\n"
    "      local t = {}\n"
    "      for _ = 1, 200 do\n"
    "        local r = table.pack(args[4](table.unpack(args, 1, 3)))\n"
    "        if r[1] == nil then break end\n"
    "        t[#t + 1] = ser(table.unpack(r, 1, r.n))\n"
    "      end\n"
    "      return table.concat(t, ' ; ')\n"
    "    end)\n"
    "    res = ser(ok, err)\n"
    "  else\n"
    "    res = ser(pcall(string[name], table.unpack(args, 1, args.n)))\n"
    "  end\n"
    "  lines[#lines + 1] = name .. '(' .. table.concat(shown, ', ') .. ') => ' .. res\n"
    "end\n"
    "local function gm(s, p, init)\n"
    "  local it = string.gmatch(s, p, init)\n"
    "  case('gmatch', s, p, init, function() return it() end)\n"
    "end\n"
    "local subjects = {'', 'a', 'hello world', 'aaa', 'abcabc', 'x = (a(b)c) + [d]',\n"
    "  'THE (quick) fox', 'john@example.com, mary@test.org', '  padded  ', 'a.b-c_d',\n"
    "  '123 456 7890', 'key=val; k2=v2', 'f(a(b)c)d(e)', '\\0a\\0b', 'abba baab', '%%%d',\n"
    "  '\\n\\tx y\\r', 'caf\\195\\169', 'THE END'}\n"
    "local patterns = {'', 'a', '^a', 'a$', '^$', '.', '.-', '.*', 'a*', 'a+', 'a-', 'a?',\n"
    "  '%a+', '%d+', '%s*$', '^%s*', '%w+', '(%w+)@(%w+)%.(%w+)', '%p', '%u%l*', '%x+',\n"
    "  '[aeiou]', '[^aeiou ]+', '[a-c]+', '[%d.]+', '[]]', '[^]]', '[%]]', '[a-]', '[%a-]',\n"
    "  '()', '()a()', '(a)(b)', '(a*(.)%w(%s*))', '%b()', '%b[]', '%f[%w]%w+', '%f[%a]',\n"
    "  '%f[%z]', '%f[^%z]', '(a)%1', '(%a)%1', '((%a)%2)', '(.-)%s', '^(.-)=(.-)$',\n"
    "  '(%w+)=(%w+)', '[%w_]+', '%.', '%%', '%-', '[+-]?%d+', 'x*$', 'b*', '$$', 'a$b',\n"
    "  '^^', '%A+', '%S+', '%D', '%W', '%C', '%G', '%L+', '%U', '%P', '%X', '[%D]', '[^%s]',\n"
    "  '%f[%s]', '(()a)', '%z', '%Z', '%bxy', '%b%%', '%baa', '(h)(e)(l)(l)(o)', '\\0',\n"
    "  '[\\0-\\10]', '[\\195-\\255]+', '.-$', '(.)%1', 'a.-b', '(a+)b?', '%s', '[a%-z]'}\n"
    "local inits = {nil, 1, 2, 0, -1, -3, -100, 100, 5}\n"
    "for _, s in ipairs(subjects) do\n"
    "  for _, p in ipairs(patterns) do\n"
    "    case('match', s, p)\n"
    "    case('find', s, p)\n"
    "    gm(s, p)\n"
    "    case('gsub', s, p, '<%0>')\n"
    "    for _, i in ipairs(inits) do case('find', s, p, i); case('match', s, p, i) end\n"
    "    case('find', s, p, 1, true)\n"
    "    case('find', s, p, -2, true)\n"
    "    gm(s, p, 2)\n"
    "    gm(s, p, -2)\n"
    "  end\n"
    "end\n"
    "-- gsub: replacements of every kind, and the count limit\n"
    "local reps = {'x', '', '%%', '%0%0', '[%1]', '%2-%1', '%1%9', '%x', '%', 7, 1.5,\n"
    "  {a = 'A', hello = 1, b = false, ['1'] = 'one', world = 2.5, c = {}},\n"
    "  function(...) return table.concat({...}, ',') end,\n"
    "  function(a) if a == 'a' then return nil end return '<' .. tostring(a) .. '>' end,\n"
    "  function() return false end, function() return {} end, function(a) return a end}\n"
    "local gpats = {'a', '(a)', '%w+', '(%w+)', '(%w)(%w)', '()', '(%w)()', '', '^', '^a', '%s*',\n"
    "  'x*', '(h)(e)', '$', '.', '%f[%w]', '(b)', '[ab]', '^(%w+)', '(.)%1'}\n"
    "local gsubs = {'', 'a', 'hello world', 'abcabc', 'abba baab', 'aaa', 'a b c', '1 22 333'}\n"
    "for _, s in ipairs(gsubs) do\n"
    "  for _, p in ipairs(gpats) do\n"
    "    for _, r in ipairs(reps) do\n"
    "      case('gsub', s, p, r)\n"
    "      case('gsub', s, p, r, 1)\n"
    "      case('gsub', s, p, r, 0)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for _, a in ipairs({{'ab', 3}, {'ab', 3, ','}, {'', 5, ''}, {'', 5, '-'}, {'x', 0},\n"
    "    {'x', -1}, {'x', 1, ','}, {'x', 2, ''}, {'abc', 7, '<>'}, {12, 2}, {'x', 2.0},\n"
    "    {'abc', 1e12}, {'x', 1.5}, {'ab', 1 << 40, 'c'}, {'a\\0b', 3, '\\0'}}) do\n"
    "  case('rep', table.unpack(a, 1, 3))\n"
    "end\n"
    "case('gsub', 'abc', 'b', true)\n"
    "case('gsub', 'abc', 'b')\n"
    "case('gsub', 'abc', 'b', 'x', 'y')\n"
    "case('find', 'abc')\n"
    "case('find', 'abc', 'b', 'x')\n"
    "case('match', 12345, 3)\n"
    "case('find', 12345, 34, 1, true)\n"
    "case('match', {}, 'a')\n"
    "-- errors the stock matcher raises while matching, for well-formed patterns\n"
    "case('match', 'a', '(a')\n"
    "case('match', ('a'):rep(300), ('a?'):rep(300))\n"
    "case('match', ('a'):rep(300), ('(a'):rep(30) .. (')'):rep(30))\n"
    "case('match', 'a', ('()'):rep(33))\n"
    "case('match', ('a'):rep(16), ('a?'):rep(16) .. ('a'):rep(16) .. 'b')\n"
    "case('gsub', 'abc', '%w', '%1')\n"
    "case('gsub', 'abc', '(%w)', '%2')\n"
    "case('gsub', 'abc', '()', '%1')\n"
    "case('gsub', 'abc', '(b)', {b = true})\n"
    "-- generated: patterns from pieces, subjects from a small alphabet\n"
    "local seed = 12345\n"
    "local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 "
    "end\n"
    "local atoms = {'a', 'b', '.', '%a', '%d', '%s', '%w', '%p', '%A', '[ab]', '[^a]', '[a-c]',\n"
    "  '[%d_]', '[]a]', '%.', '%%', ' ', '1', '%(', 'x'}\n"
    "local quants = {'', '', '', '*', '+', '-', '?'}\n"
    "local alpha = {'a', 'b', 'c', ' ', '1', '2', '.', '(', ')', '_', '%', 'x', '\\n'}\n"
    "for _ = 1, 4000 do\n"
    "  local parts, open, closed = {}, 0, 0\n"
    "  if rnd(4) == 1 then parts[#parts + 1] = '^' end\n"
    "  for _ = 1, rnd(6) do\n"
    "    local k = rnd(12)\n"
    "    if k == 1 and open + closed < 9 then parts[#parts + 1] = '('; open = open + 1\n"
    "    elseif k == 2 and open > 0 then parts[#parts + 1] = ')'; open = open - 1; closed = closed "
    "+ 1\n"
    "    elseif k == 3 and closed > 0 then parts[#parts + 1] = '%' .. rnd(closed)\n"
    "    elseif k == 4 then parts[#parts + 1] = '%b()'\n"
    "    elseif k == 5 then parts[#parts + 1] = '%f[%w]'\n"
    "    elseif k == 6 then parts[#parts + 1] = '()'\n"
    "    else parts[#parts + 1] = atoms[rnd(#atoms)] .. quants[rnd(#quants)] end\n"
    "  end\n"
    "  for _ = 1, open do parts[#parts + 1] = ')' end\n"
    "  if rnd(4) == 1 then parts[#parts + 1] = '$' end\n"
    "  local p = table.concat(parts)\n"
    "  local sp = {}\n"
    "  for i = 1, rnd(24) - 1 do sp[i] = alpha[rnd(#alpha)] end\n"
    "  local s = table.concat(sp)\n"
    "  case('find', s, p)\n"
    "  case('match', s, p, rnd(5) - 2)\n"
    "  gm(s, p)\n"
    "  case('gsub', s, p, '<%0>')\n"
    "  case('gsub', s, p, function(...) return select('#', ...) .. '' end)\n"
    "end\n"
    "return lines\n";

/* Runs diff_chunk in L and returns its lines as one malloc'd string (NUL-separated). */
static char *run_chunk(lua_State *L, int *nlines, size_t *len)
{
    char *out = NULL;
    size_t off = 0, cap = 0;
    if (luaL_loadstring(L, diff_chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "chunk: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return NULL;
    }
    *nlines = (int)luaL_len(L, -1);
    for (int i = 1; i <= *nlines; i++) {
        size_t l;
        lua_rawgeti(L, -1, i);
        const char *s = lua_tolstring(L, -1, &l);
        if (off + l + 1 > cap) { /* geometric: ASan's realloc always copies */
            cap = (off + l + 1) * 2;
            char *grown = realloc(out, cap);
            if (grown == NULL)
                abort();
            out = grown;
        }
        memcpy(out + off, s, l);
        out[off + l] = '\0';
        off += l + 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *len = off;
    return out;
}

static void test_differential(const sl_flow_host_t *host)
{
    lua_State *ref = luaL_newstate();
    sl_flow_host_t big = *host;
    sl_flowvm_t *dvm = NULL;
    char err[256];
    lua_State *L;

    /* the whole chunk runs as one "load" here: a budget that never runs out */
    big.step_instructions = 1L << 50;
    if (sl_flowvm_new(&big, &dvm, err, sizeof(err)) != 0) {
        CHECK(!"differential vm");
        return;
    }
    L = dvm->L;
    int nref = 0, nours = 0, diffs = 0;
    size_t lref = 0, lours = 0;

    luaL_openlibs(ref);
    /* the VM's main state has only the base library as globals: expose the (ours) libraries */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    const char *libs[] = {LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME};
    for (int i = 0; i < 3; i++) {
        lua_getfield(L, -1, libs[i]);
        lua_setglobal(L, libs[i]);
    }
    lua_pop(L, 1);
    /* the sanity of the comparison: ours are not the stock functions */
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "match");
    lua_getglobal(ref, "string");
    lua_getfield(ref, -1, "match");
    CHECK(lua_tocfunction(L, -1) != lua_tocfunction(ref, -1));
    lua_pop(L, 2);
    lua_pop(ref, 2);

    char *a = run_chunk(ref, &nref, &lref);
    char *b = run_chunk(L, &nours, &lours);
    CHECK(a != NULL && b != NULL);
    CHECK_EQ(nref, nours);
    fprintf(stderr, "info: differential: %d cases, %ld steps charged to the load counter\n", nref,
            dvm->load_instr);
    CHECK(dvm->load_instr > 0);
    CHECK(nref > 40000);
    if (a != NULL && b != NULL && nref == nours) {
        const char *x = a, *y = b;
        for (int i = 0; i < nref; i++) {
            if (strcmp(x, y) != 0 && diffs++ < 15)
                fprintf(stderr, "  differs:\n    lua:  %s\n    ours: %s\n", x, y);
            x += strlen(x) + 1;
            y += strlen(y) + 1;
        }
    }
    CHECK_EQ(diffs, 0);
    free(a);
    free(b);
    lua_close(ref);
    sl_flowvm_free(dvm);
}

/* Sample lines of what the comparison covers must be there (a vacuous chunk would pass). */
static void test_differential_covers(void)
{
    lua_State *L = luaL_newstate();
    int n = 0;
    size_t len = 0;
    luaL_openlibs(L);
    char *a = run_chunk(L, &n, &len);
    int seen_gsub_fn = 0, seen_gmatch = 0, seen_err = 0, seen_pos = 0;
    for (const char *x = a; a != NULL && x < a + len; x += strlen(x) + 1) {
        seen_gsub_fn |= strncmp(x, "gsub(", 5) == 0 && strstr(x, ", function") != NULL;
        seen_gmatch |= strncmp(x, "gmatch(", 7) == 0 && strstr(x, "string:") != NULL;
        seen_err |= strstr(x, "pattern too complex") != NULL;
        seen_pos |= strstr(x, "integer:") != NULL;
    }
    CHECK(seen_gsub_fn && seen_gmatch && seen_err && seen_pos);
    free(a);
    lua_close(L);
}

/* ------------------------------------------------------------------------ */
/* steps                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct res_s {
    int called, ok;
    long instr;
    char err[64];
    char detail[2048];
    char ctx[4096];
} res_t;

static void step_cb(sl_step_t *s, const sl_step_result_t *r, void *arg)
{
    res_t *res = arg;
    res->called++;
    res->ok = r->ok;
    res->instr = s->instr;
    snprintf(res->err, sizeof(res->err), "%s", r->err ? r->err : "");
    snprintf(res->detail, sizeof(res->detail), "%s", r->detail ? r->detail : "");
    snprintf(res->ctx, sizeof(res->ctx), "%s", r->ctx_json ? r->ctx_json : "");
}

static double now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000.0 + tv.tv_usec / 1000.0;
}

static void run_step(sl_flow_t *f, const char *step, const char *ctx, res_t *res)
{
    sl_step_input_t in = {.run_id = "r",
                          .tenant_id = "t",
                          .dataset_id = "d",
                          .file_id = "f",
                          .pipeline = "strings",
                          .step = step,
                          .attempt = 1,
                          .ctx_json = ctx,
                          .file_json = "{\"id\":\"f\",\"name\":\"x.txt\"}",
                          .tmpdir = tmpdir};
    sl_step_t *s = NULL;
    memset(res, 0, sizeof(*res));
    CHECK(sl_step_start(vm, f, &in, step_cb, res, &s) == 0);
    double end = now_ms() + 120000; /* a safety net for a broken build, not an assert on time */
    while (res->called == 0 && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_EQ(res->called, 1);
}

static const char flow_src[] =
    "local kinds = {\n"
    "  letters = function(n) return ('a'):rep(n) end,\n"
    "  digits = function(n) return ('7'):rep(n) end,\n"
    "  ats = function(n) return ('@'):rep(n) end,\n"
    "  dots = function(n) return ('.'):rep(n) end,\n"
    "  spaces = function(n) return (' '):rep(n) end,\n"
    "  mixed = function(n)\n"
    "    local unit = ('a'):rep(500) .. '@' .. ('9'):rep(500) .. '.' .. (' '):rep(500) .. 'x.y'\n"
    "    return unit:rep(n // #unit + 1):sub(1, n)\n"
    "  end,\n"
    "}\n"
    "return flow {\n"
    "  start = 'hostile',\n"
    "  steps = {\n"
    "    hostile = {\n"
    "      run = function(ctx)\n"
    "        local s = kinds[ctx.kind](ctx.n)\n"
    "        local fn = ctx.fn\n"
    "        local r\n"
    "        if fn == 'gmatch' then\n"
    "          r = 0\n"
    "          for _ in s:gmatch(ctx.pattern) do r = r + 1 end\n"
    "        elseif fn == 'gsub' then\n"
    "          local _, k = string.gsub(s, ctx.pattern, '%0')\n"
    "          r = k\n"
    "        elseif fn == 'method' then\n"
    "          r = s:find(ctx.pattern) or false\n"
    "        else\n"
    "          r = string[fn](s, ctx.pattern) or false\n"
    "          if type(r) == 'string' then r = #r end\n"
    "        end\n"
    "        ctx.result = r\n"
    "        return true\n"
    "      end,\n"
    "      next = 'dodge',\n"
    "    },\n"
    "    dodge = {\n"
    "      run = function(ctx)\n"
    "        local s = ('a'):rep(200000)\n"
    "        for _ = 1, 3 do ctx.caught = pcall(string.match, s, '.-b') end\n"
    "        ctx.survived = true\n"
    "        return true\n"
    "      end,\n"
    "      next = 'rep',\n"
    "    },\n"
    "    rep = {\n"
    "      run = function(ctx)\n"
    "        ctx.caught = pcall(string.rep, ctx.s or 'x', ctx.n, ctx.sep)\n"
    "        ctx.len = #string.rep(ctx.s or 'x', ctx.n, ctx.sep)\n"
    "        return true\n"
    "      end,\n"
    "      next = 'fine',\n"
    "    },\n"
    "    fine = {\n"
    "      run = function(ctx)\n"
    "        local u, d, t = ('write to john@example.com today'):match('(%w+)@(%w+)%.(%w+)')\n"
    "        ctx.user, ctx.domain, ctx.tld = u, d, t\n"
    "        ctx.words = select(2, string.gsub('one two  three', '%a+', '%0'))\n"
    "        return true\n"
    "      end,\n"
    "    },\n"
    "  },\n"
    "}\n";

static sl_flow_t *load_src(const char *name, const char *src, char *err, size_t errlen)
{
    char path[128];
    sl_flow_t *f = NULL;
    snprintf(path, sizeof(path), "%s/%s.lua", tmpdir, name);
    FILE *fp = fopen(path, "w");
    if (fp == NULL)
        return NULL;
    fputs(src, fp);
    fclose(fp);
    if (sl_flow_load(vm, name, path, &f, err, errlen) != 0)
        return NULL;
    return f;
}

/* The step ended within its budget: success, or budget_exceeded with the counter at the cap. */
static void check_bounded(const res_t *r, const char *what)
{
    int ok = r->ok || strcmp(r->err, "budget_exceeded") == 0;
    /* the hook may add up to one tick past the cap before it notices */
    int within = r->instr <= BUDGET + SL_FLOW_HOOK_EVERY + 1;
    if (!ok || !within)
        fprintf(stderr, "  %s: ok=%d err=%s instr=%ld detail=%.200s\n", what, r->ok, r->err,
                r->instr, r->detail);
    CHECK(ok);
    CHECK(within);
}

static void test_hostile(sl_flow_t *f)
{
    static const char *const kinds[] = {"letters", "digits", "ats", "dots", "spaces", "mixed"};
    static const struct {
        const char *fn, *pattern;
    } cases[] = {
        {"match", "(%w+)@(%w+)%.(%w+)"},
        {"find", "%w+@%w+%.%w+"},
        {"match", ".-b"},
        {"find", "a*a*a*b"},
        {"match", "%s*$"},
        {"gmatch", "%s*$"},
        {"gsub", "%s+$"},
        {"gmatch", "(%w+)@"},
        {"method", "a-b"},
        {"find", "%d+%.%d+%.%d+x"},
        {"match", "%b()"},
        {"gsub", "[%w.]+@"},
    };
    res_t r;
    char ctx[256], what[128];
    int exceeded = 0, finished = 0;

    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            snprintf(ctx, sizeof(ctx),
                     "{\"kind\":\"%s\",\"n\":200000,\"fn\":\"%s\",\"pattern\":\"%s\"}", kinds[k],
                     cases[c].fn, cases[c].pattern);
            snprintf(what, sizeof(what), "%s %s %s", kinds[k], cases[c].fn, cases[c].pattern);
            run_step(f, "hostile", ctx, &r);
            check_bounded(&r, what);
            if (r.ok)
                finished++;
            else
                exceeded++;
        }
    fprintf(stderr, "info: hostile: %d finished, %d budget_exceeded\n", finished, exceeded);

    /* the known quadratic ones are refused; the linear ones finish with the right answer */
    run_step(f, "hostile",
             "{\"kind\":\"letters\",\"n\":200000,\"fn\":\"match\",\"pattern\":\".-b\"}", &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    CHECK(strstr(r.detail, "string.match") != NULL);
    run_step(f, "hostile",
             "{\"kind\":\"letters\",\"n\":200000,\"fn\":\"find\",\"pattern\":\"%w+@%w+%.%w+\"}",
             &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    run_step(f, "hostile",
             "{\"kind\":\"letters\",\"n\":200000,\"fn\":\"method\",\"pattern\":\"a-b\"}", &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0); /* s:find() is ours too */
    CHECK(strstr(r.detail, "string.find") != NULL);
    run_step(f, "hostile",
             "{\"kind\":\"spaces\",\"n\":200000,\"fn\":\"match\",\"pattern\":\"%s*$\"}", &r);
    CHECK(r.ok == 1 && strstr(r.ctx, "\"result\":200000") != NULL);
    CHECK(r.instr < 2000000); /* linear: a few steps per character */
    run_step(f, "hostile",
             "{\"kind\":\"dots\",\"n\":200000,\"fn\":\"gsub\",\"pattern\":\"[%w.]+@\"}", &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    run_step(f, "hostile",
             "{\"kind\":\"ats\",\"n\":200000,\"fn\":\"gmatch\",\"pattern\":\"(%w+)@\"}", &r);
    CHECK(r.ok == 1 && strstr(r.ctx, "\"result\":0") != NULL);

    /* a small budget-bound input still finishes: the budget is not a size limit */
    run_step(f, "hostile", "{\"kind\":\"letters\",\"n\":2000,\"fn\":\"match\",\"pattern\":\".-b\"}",
             &r);
    CHECK(r.ok == 1 && strstr(r.ctx, "\"result\":false") != NULL);
}

static void test_kill_and_after(sl_flow_t *f)
{
    res_t r;

    /* pcall cannot catch the budget: the step fails, and never reaches `survived` */
    run_step(f, "dodge", "{}", &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    CHECK(strstr(r.ctx, "survived") == NULL);
    CHECK(r.instr <= BUDGET + SL_FLOW_HOOK_EVERY + 1);

    /* rep over the memory budget is refused before it allocates */
    run_step(f, "rep", "{\"n\":1000000000}", &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    CHECK(strstr(r.detail, "string.rep") != NULL);
    run_step(f, "rep", "{\"n\":100000000, \"sep\":\",\"}", &r);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    /* Lua's own rep would loop 1e18 times over nothing */
    run_step(f, "rep", "{\"n\":1e18, \"s\":\"\", \"sep\":\"\"}", &r);
    CHECK(r.ok == 1 && strstr(r.ctx, "\"len\":0") != NULL);
    CHECK(r.instr < 100000);
    run_step(f, "rep", "{\"n\":1000, \"sep\":\",\"}", &r);
    CHECK(r.ok == 1 && strstr(r.ctx, "\"len\":1999") != NULL);

    /* the same VM runs other steps fine */
    run_step(f, "fine", "{}", &r);
    CHECK(r.ok == 1);
    CHECK(strstr(r.ctx, "\"user\":\"john\"") != NULL && strstr(r.ctx, "\"tld\":\"com\"") != NULL);
    CHECK(strstr(r.ctx, "\"words\":3") != NULL);
}

/* The other C functions whose work grows with their input (actors/lua_cost.c). */
static const char cost_src[] =
    "local ops = {\n"
    "  upper = function() local s = ('a'):rep(1000000)\n"
    "    for _ = 1, 1000 do s:upper() end end,\n"
    "  move = function() table.move({}, 1, 1e12, 1) end,\n"
    "  insert = function() local t = {}\n"
    "    for i = 1, 200000 do table.insert(t, 1, i) end end,\n"
    "  concat = function() local t = {} for i = 1, 100000 do t[i] = 'x' end\n"
    "    for _ = 1, 10000 do table.concat(t) end end,\n"
    "  sort = function() local t = {} for i = 1, 100000 do t[i] = -i end\n"
    "    for _ = 1, 1000 do table.sort(t) end end,\n"
    "  dodge = function() local s = ('a'):rep(1000000)\n"
    "    for _ = 1, 1000 do pcall(string.reverse, s) end end,\n"
    "  honest = function() local s = ('a'):rep(1000000)\n"
    "    local n = 0\n"
    "    for i = 1, 1000 do n = n + #s:sub(i, i + 9) + s:byte(i, i) - 96 end\n"
    "    local t = {} for i = 1, 1000 do table.insert(t, i) end\n"
    "    table.sort(t, function(a, b) return a > b end)\n"
    "    return n == 10000 + 1000 * 1 and t[1] == 1000 and ('%s-%d'):format('x', 1) == 'x-1'\n"
    "      and ('Abc'):upper() == 'ABC' and utf8.len('h\\u{e9}') == 2 end,\n"
    "}\n"
    "return flow { start = 'op', steps = { op = { run = function(ctx)\n"
    "  local r = ops[ctx.op]() ctx.r = r == nil or r return true end } } }\n";

static void test_costs(void)
{
    static const char *const refused[] = {"upper", "move", "insert", "concat", "sort", "dodge"};
    char err[512], ctx[64];
    res_t r;
    sl_flow_t *f = load_src("costs", cost_src, err, sizeof(err));
    CHECK(f != NULL);
    if (f == NULL) {
        fprintf(stderr, "load: %s\n", err);
        return;
    }
    for (size_t k = 0; k < sizeof refused / sizeof refused[0]; k++) {
        snprintf(ctx, sizeof ctx, "{\"op\":\"%s\"}", refused[k]);
        run_step(f, "op", ctx, &r);
        CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
        CHECK(r.instr <= BUDGET + SL_FLOW_HOOK_EVERY + 1);
        if (r.ok || strcmp(r.err, "budget_exceeded") != 0)
            fprintf(stderr, "costs: %s: %s %s\n", refused[k], r.err, r.detail);
    }
    /* a step that uses them as flows do stays well within it, with Lua's results */
    run_step(f, "op", "{\"op\":\"honest\"}", &r);
    CHECK(r.ok == 1 && strstr(r.ctx, "\"r\":true") != NULL);
    if (!r.ok || strstr(r.ctx, "\"r\":true") == NULL)
        fprintf(stderr, "costs: honest: %s %s %s\n", r.err, r.detail, r.ctx);
    CHECK(r.instr < BUDGET / 10);
    sl_flow_unref(f);
}

static void test_load_time(void)
{
    char err[1024];
    sl_flow_t *f = load_src("toplevel",
                            "local s = ('a'):rep(200000)\n"
                            "for _ = 1, 1000 do pcall(string.find, s, '%w+@%w+') end\n"
                            "return flow { start = 'a', steps = { a = { run = function() "
                            "return true end } } }\n",
                            err, sizeof(err));
    CHECK(f == NULL);
    CHECK(strstr(err, "budget exceeded") != NULL);
    if (f != NULL)
        sl_flow_unref(f);
    f = load_src("toplevel2",
                 "local x = ('a'):rep(200000):find('%w+@%w+')\n"
                 "return flow { start = 'a', steps = { a = { run = function() "
                 "return true end } } }\n",
                 err, sizeof(err));
    CHECK(f == NULL);
    CHECK(strstr(err, "budget exceeded (string.find)") != NULL);
    if (f != NULL)
        sl_flow_unref(f);
}

int main(void)
{
    char err[512];
    sl_config_t *cfg = NULL;
    static const char yaml[] = "database_url: x\n";

    snprintf(tmpdir, sizeof tmpdir, "/tmp/sl_lua_string_XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    base = event_base_new();
    CHECK(sl_config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err) == 0);
    sl_flow_host_t host = {
        .base = base,
        .cfg = cfg,
        .lib_dir = tmpdir,
        .tmp_root = tmpdir,
        .step_instructions = BUDGET,
        .step_memory = 32u * 1024 * 1024,
    };
    if (sl_flowvm_new(&host, &vm, err, sizeof err) != 0) {
        fprintf(stderr, "vm: %s\n", err);
        return 1;
    }
    test_differential_covers();
    test_differential(&host);

    sl_flow_t *f = load_src("strings", flow_src, err, sizeof(err));
    CHECK(f != NULL);
    if (f == NULL)
        fprintf(stderr, "load: %s\n", err);
    else {
        test_hostile(f);
        test_kill_and_after(f);
        sl_flow_unref(f);
        test_costs();
    }
    test_load_time();

    sl_flowvm_free(vm);
    sl_config_free(cfg);
    event_base_free(base);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_summary();
}
