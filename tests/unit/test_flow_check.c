/*
 * test_flow_check.c — actors/flow_check.c: each rule refusing a broken flow
 * with its "name:line: message", several errors reported at once, the
 * shipped flows valid, and the graph of a loaded flow.
 *
 * Flows are written inline (their lines are the test's to see); the shipped
 * ones are read from lua-flows/ (run from the repository root, as ctest does).
 */
#include "actors/flow_check.h"
#include "core/err.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static sl_flowvm_t *vm;

/* A one-line valid step, for filling flows. */
#define RUN "run = function() return true end"

/* Checks src as "t.lua"; returns the errors joined by '\n' (static buffer) and the count. */
static const char *check(const char *src, int *nerr)
{
    static char text[8192];
    sl_flow_check_t *c = NULL;
    int rc = sl_flow_check_source(vm, "t.lua", src, strlen(src), &c);
    text[0] = '\0';
    *nerr = -1;
    if (c == NULL)
        return "(no result)";
    *nerr = sl_flow_check_nerrors(c);
    CHECK((rc == 0) == (*nerr == 0));
    sl_flow_check_errors_text(c, text, sizeof text);
    sl_flow_check_free(c);
    return text;
}

/* src must fail with an error containing want (and exactly n errors when n > 0). */
static void expect(int lineno, const char *src, int n, const char *want)
{
    int nerr;
    const char *got = check(src, &nerr);
    if (nerr <= 0 || strstr(got, want) == NULL || (n > 0 && nerr != n)) {
        failed++;
        fprintf(stderr, "%s:%d: want %d error(s) with \"%s\", got %d:\n%s\n", __FILE__, lineno, n,
                want, nerr, got);
    } else {
        passed++;
    }
}
#define EXPECT(src, n, want) expect(__LINE__, src, n, want)

static void expect_valid(int lineno, const char *src)
{
    int nerr;
    const char *got = check(src, &nerr);
    if (nerr != 0) {
        failed++;
        fprintf(stderr, "%s:%d: want valid, got %d error(s):\n%s\n", __FILE__, lineno, nerr, got);
    } else {
        passed++;
    }
}
#define EXPECT_VALID(src) expect_valid(__LINE__, src)

static void test_rules(void)
{
    /* the start step */
    EXPECT("return flow {\n"
           "  steps = { a = { " RUN " } },\n"
           "}\n",
           1, "t.lua:1: flow: start is missing");
    EXPECT("return flow {\n"
           "  start = \"x\",\n"
           "  steps = { a = { " RUN " } },\n"
           "}\n",
           1, "t.lua:1: flow: start 'x' is not a step");
    /* a dangling transition, at the step's line */
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = {\n"
           "    a = {\n"
           "      " RUN ",\n"
           "      fallback = \"ocrr\",\n"
           "    },\n"
           "  },\n"
           "}\n",
           1, "t.lua:5: step 'a': fallback 'ocrr' is not a step");
    /* an unreachable step */
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = {\n"
           "    a = { " RUN " },\n"
           "    b = { " RUN " },\n"
           "  },\n"
           "}\n",
           1, "t.lua:5: step 'b': unreachable from start 'a'");
    /* a cycle with no exit: both steps, each at its line */
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = {\n"
           "    a = { " RUN ", always = \"b\" },\n"
           "    b = { " RUN ", next = \"a\", fallback = \"a\" },\n"
           "  },\n"
           "}\n",
           2, "t.lua:4: step 'a': the run can never end from here");
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = {\n"
           "    a = { " RUN ", always = \"b\" },\n"
           "    b = { " RUN ", next = \"a\", fallback = \"a\" },\n"
           "  },\n"
           "}\n",
           2, "t.lua:5: step 'b': the run can never end from here");
    /* always overrides next: a step with always and no way out loops */
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = { a = { " RUN ", next = \"a\", always = \"a\" } },\n"
           "}\n",
           1, "step 'a': the run can never end from here");
    /* cycles that can end are allowed: a retry loop, a loop with a way out */
    EXPECT_VALID("return flow {\n"
                 "  start = \"a\",\n"
                 "  steps = {\n"
                 "    a = { " RUN ", next = \"b\", fallback = \"a\" },\n"
                 "    b = { " RUN " },\n"
                 "  },\n"
                 "}\n");
    EXPECT_VALID("return flow {\n"
                 "  start = \"a\",\n"
                 "  steps = {\n"
                 "    a = { " RUN ", always = \"b\" },\n"
                 "    b = { " RUN ", next = \"a\" },\n"
                 "  },\n"
                 "}\n");
    /* a missing module, at the line of its require; the rest is still checked */
    EXPECT("local nope = require \"no_such_module\"\n"
           "local x = nope.anything()\n"
           "return flow {\n"
           "  start = \"a\",\n"
           "  steps = { a = { " RUN ", next = \"zz\" } },\n"
           "}\n",
           2, "t.lua:1: require 'no_such_module': no module lua-flows/lib/no_such_module.lua");
    EXPECT("local nope = require \"no_such_module\"\n"
           "return flow {\n"
           "  start = \"a\",\n"
           "  steps = { a = { " RUN ", next = \"zz\" } },\n"
           "}\n",
           2, "t.lua:4: step 'a': next 'zz' is not a step");
    EXPECT("local m = require \"Bad-Name\"\n"
           "return flow { start = \"a\", steps = { a = { " RUN " } } }\n",
           1, "t.lua:1: require 'Bad-Name': bad module name");
    /* options out of range, each named with its range */
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = { a = { " RUN ", timeout = 100000 } },\n"
           "}\n",
           1, "t.lua:3: step 'a': timeout must be a number of seconds, > 0 and at most 86400");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN ", timeout = 0 } } }\n", 1,
           "timeout must be a number of seconds, > 0");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN ", timeout = \"10\" } } }\n", 1,
           "timeout must be a number of seconds");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN ", retry = { attempts = 0 } } } }\n",
           1, "step 'a': retry.attempts must be an integer 1..100");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN
           ", retry = { attempts = 101 } } } }\n",
           1, "retry.attempts must be an integer 1..100");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN ", retry = { base = -1 } } } }\n", 1,
           "retry.base must be a number of seconds, >= 0 and at most 86400");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN
           ", retry = { base = 5, max = 1 } } } }\n",
           1, "retry.max is below retry.base");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN ", retry = { tries = 2 } } } }\n", 1,
           "retry: unknown key 'tries'");
    EXPECT_VALID("return flow { start = \"a\", steps = { a = { " RUN ", timeout = 86400,"
                 " retry = { attempts = 100, base = 0, max = 86400 } } } }\n");
    /* a syntax error, with its line */
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = {\n"
           "    a = { run = function() return true end end },\n"
           "  },\n"
           "}\n",
           1, "t.lua:4: ");
    /* the shape */
    EXPECT("return { start = \"a\", steps = { a = { " RUN " } } }\n", 1,
           "t.lua:1: the file must return flow{...}");
    EXPECT("return flow {\n"
           "  start = \"a\",\n"
           "  steps = {\n"
           "    a = {\n"
           "      run = 42,\n"
           "    },\n"
           "  },\n"
           "}\n",
           1, "t.lua:4: step 'a': run must be a function");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN ", nxt = \"a\" } } }\n", 1,
           "step 'a': unknown key 'nxt'");
    EXPECT("return flow { start = \"a\", stepz = {}, steps = { a = { " RUN " } } }\n", 1,
           "flow: unknown key 'stepz'");
    EXPECT("return flow { start = \"a\", steps = { a = { " RUN " }, [\"B c\"] = { " RUN " } } }\n",
           0, "step 'B c': names are 1..63 characters of [a-z0-9_]");
    EXPECT("leaked = 1\nreturn flow { start = \"a\", steps = { a = { " RUN " } } }\n", 1,
           "t.lua:1: assignment to undeclared global 'leaked'");
}

/* Several errors in one file: all of them, in line order. */
static void test_all_at_once(void)
{
    const char *src = "local m = require \"missing_one\"\n"         /* 1 */
                      "return flow {\n"                             /* 2 */
                      "  start = \"a\",\n"                          /* 3 */
                      "  steps = {\n"                               /* 4 */
                      "    a = {\n"                                 /* 5 */
                      "      " RUN ",\n"                            /* 6 */
                      "      next = \"b\", fallback = \"ghost\",\n" /* 7 */
                      "      timeout = -3,\n"                       /* 8 */
                      "    },\n"                                    /* 9 */
                      "    b = { " RUN ", always = \"b\" },\n"      /* 10 */
                      "    lost = { " RUN " },\n"                   /* 11 */
                      "  },\n"
                      "}\n";
    const char *want[] = {
        "t.lua:1: require 'missing_one': no module",
        "t.lua:6: step 'a': timeout must be a number of seconds", /* a step's own, then */
        "t.lua:6: step 'a': fallback 'ghost' is not a step",      /* the graph's */
        "t.lua:10: step 'b': the run can never end from here",
        "t.lua:11: step 'lost': unreachable from start 'a'",
    };
    sl_flow_check_t *c = NULL;
    int rc = sl_flow_check_source(vm, "t.lua", src, strlen(src), &c);
    CHECK(rc == SL_EINVAL);
    CHECK(c != NULL);
    if (c == NULL)
        return;
    CHECK_EQ(sl_flow_check_nerrors(c), 5);
    for (int i = 0; i < 5 && i < sl_flow_check_nerrors(c); i++) {
        const char *e = sl_flow_check_error(c, i);
        if (strncmp(e, want[i], strlen(want[i])) != 0) {
            failed++;
            fprintf(stderr, "error %d: got \"%s\", want \"%s...\"\n", i, e, want[i]);
        } else {
            passed++;
        }
    }
    sl_flow_check_free(c);

    /* sl_flow_load refuses it with every error, one per line */
    {
        char path[] = "/tmp/test_flow_check_XXXXXX", err[4096];
        sl_flow_t *f = NULL;
        int fd = mkstemp(path);
        FILE *fp = fd >= 0 ? fdopen(fd, "w") : NULL;
        CHECK(fp != NULL);
        if (fp == NULL)
            return;
        fputs(src, fp);
        fclose(fp);
        CHECK(sl_flow_load(vm, "t", path, &f, err, sizeof err) == SL_EINVAL);
        CHECK(f == NULL);
        int lines = 1;
        for (const char *p = err; *p; p++)
            lines += *p == '\n';
        CHECK_EQ(lines, 5);
        CHECK(strstr(err, "unreachable from start 'a'") != NULL);
        CHECK(strncmp(err, path, strlen(path)) == 0); /* name = the file */
        unlink(path);
    }
}

/* Lua shortens long chunk names ("...tail"): errors still carry the whole name. */
static void test_long_name(void)
{
    const char *label = "some/rather/long/directory/of/flows/for/a/team/with/a/long/name/x.lua";
    const char *src = "return flow {\n  start = = \"a\",\n}\n";
    sl_flow_check_t *c = NULL;
    sl_flow_check_source(vm, label, src, strlen(src), &c);
    CHECK(c != NULL && sl_flow_check_nerrors(c) == 1);
    if (c != NULL && sl_flow_check_nerrors(c) == 1) {
        char want[256];
        snprintf(want, sizeof want, "%s:2: ", label);
        CHECK(strncmp(sl_flow_check_error(c, 0), want, strlen(want)) == 0);
    }
    sl_flow_check_free(c);
}

static void test_files(void)
{
    const char *shipped[] = {"lua-flows/ai_record.lua", "lua-flows/file_view.lua"};
    sl_flow_check_t *c = NULL;
    char text[2048];

    for (int i = 0; i < 2; i++) {
        int rc = sl_flow_check_file(vm, shipped[i], &c);
        if (rc != 0)
            fprintf(stderr, "%s:\n%s\n", shipped[i],
                    c ? sl_flow_check_errors_text(c, text, sizeof text) : "?");
        CHECK(rc == 0);
        CHECK(c != NULL && sl_flow_check_nerrors(c) == 0);
        sl_flow_check_free(c);
    }
    CHECK(sl_flow_check_file(vm, "tests/unit/no_such_flow.lua", &c) == SL_ENOTFOUND);
    CHECK(c != NULL && sl_flow_check_nerrors(c) == 1);
    if (c != NULL && sl_flow_check_nerrors(c) == 1)
        CHECK(strncmp(sl_flow_check_error(c, 0), "tests/unit/no_such_flow.lua:1: ", 31) == 0);
    sl_flow_check_free(c);
}

static int has_edge(json_t *edges, const char *from, const char *to, const char *on)
{
    size_t i;
    json_t *e;
    json_array_foreach(edges, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "from")), from) == 0 &&
            strcmp(json_string_value(json_object_get(e, "to")), to) == 0 &&
            strcmp(json_string_value(json_object_get(e, "on")), on) == 0)
            return 1;
    }
    return 0;
}

static void test_graph(void)
{
    char err[2048];
    sl_flow_t *f = NULL;
    json_t *g, *d;

    CHECK(sl_flow_load(vm, "ai_record", "lua-flows/ai_record.lua", &f, err, sizeof err) == 0);
    if (f == NULL) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    g = sl_flow_graph(f);
    CHECK(g != NULL);
    json_t *nodes = json_object_get(g, "nodes"), *edges = json_object_get(g, "edges");
    CHECK_EQ(json_array_size(nodes), 4);
    const char *order[] = {"tika", "ocr", "textract", "record"};
    for (size_t i = 0; i < 4 && i < json_array_size(nodes); i++)
        CHECK(strcmp(json_string_value(json_object_get(json_array_get(nodes, i), "id")),
                     order[i]) == 0);
    CHECK_EQ(json_array_size(edges), 5);
    CHECK(has_edge(edges, "tika", "record", "next"));
    CHECK(has_edge(edges, "tika", "ocr", "fallback"));
    CHECK(has_edge(edges, "ocr", "record", "next"));
    CHECK(has_edge(edges, "ocr", "textract", "fallback"));
    CHECK(has_edge(edges, "textract", "record", "next"));
    CHECK(!has_edge(edges, "record", "tika", "next"));
    json_decref(g);

    d = sl_flow_describe(f);
    CHECK(d != NULL);
    CHECK(strcmp(json_string_value(json_object_get(d, "version")), sl_flow_version(f)) == 0);
    CHECK_EQ(json_array_size(json_object_get(d, "steps")), 4);
    CHECK(json_is_object(json_object_get(d, "graph")));
    json_decref(d);
    sl_flow_unref(f);

    CHECK(sl_flow_load(vm, "file_view", "lua-flows/file_view.lua", &f, err, sizeof err) == 0);
    if (f != NULL) {
        g = sl_flow_graph(f);
        CHECK(has_edge(json_object_get(g, "edges"), "preview", "thumbnail", "always"));
        CHECK_EQ(json_array_size(json_object_get(g, "edges")), 1);
        json_decref(g);
        sl_flow_unref(f);
    }
}

int main(void)
{
    struct event_base *base = event_base_new();
    sl_flow_host_t host = {0};
    char err[512];

    host.base = base;
    host.lib_dir = "lua-flows/lib";
    host.tmp_root = "/tmp";
    if (sl_flowvm_new(&host, &vm, err, sizeof err) != 0) {
        fprintf(stderr, "flow VM: %s\n", err);
        return 1;
    }
    test_rules();
    test_all_at_once();
    test_long_name();
    test_files();
    test_graph();
    sl_flowvm_free(vm);
    event_base_free(base);
    return check_summary();
}
