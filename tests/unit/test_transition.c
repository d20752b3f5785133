/*
 * test_transition.c — actors/transition.c: the decision after a step attempt,
 * shared by the engine's run actor and `sluice flow test`. Each rule is shown
 * taking the right branch, and a wrong one refused (a permanent error is not
 * retried, a transient one is, a chain with a transient link waits instead
 * of failing).
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/transition.h"
#include "check.h"

static const char FLOW[] =
    "return flow {\n"
    "  start = 'a',\n"
    "  steps = {\n"
    "    a = { run = function() return true end, next = 'b', fallback = 'b',\n"
    "          retry = {attempts = 2, base = 1, max = 1} },\n"
    "    b = { run = function() return true end, fallback = 'c',\n"
    "          retry = {attempts = 1} },\n"
    "    c = { run = function() return true end, always = 'd' },\n"
    "    d = { run = function() return true end },\n"
    "  },\n"
    "}\n";

static sl_step_result_t ok(void)
{
    sl_step_result_t r;
    memset(&r, 0, sizeof r);
    r.ok = 1;
    return r;
}

static sl_step_result_t fail(const char *err, int transient)
{
    sl_step_result_t r;
    memset(&r, 0, sizeof r);
    r.err = err;
    r.transient = transient;
    return r;
}

static void at(sl_run_pos_t *p, const char *step, int attempt)
{
    memset(p, 0, sizeof *p);
    snprintf(p->step, sizeof p->step, "%s", step);
    p->attempt = attempt;
}

static void test_decisions(sl_flow_t *f)
{
    sl_run_pos_t p;
    sl_transition_t t;
    sl_step_result_t r;

    /* success goes to next; the last step ends the run */
    at(&p, "a", 1);
    r = ok();
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_NEXT);
    CHECK_STREQ(p.step, "b");
    CHECK_STREQ(t.from, "a");
    at(&p, "d", 1);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_SUCCEEDED);

    /* a transient error with attempts left is retried, with a delay in [base/2, base] */
    at(&p, "a", 1);
    r = fail("timeout", 1);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_RETRY);
    CHECK_EQ(p.attempt, 2);
    CHECK(t.delay_ms >= 500 && t.delay_ms <= 1000);
    CHECK_STREQ(t.err, "timeout");

    /* a permanent one is not: straight to the fallback, which starts the chain */
    at(&p, "a", 1);
    r = fail("bad_input", 0);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_FALLBACK);
    CHECK_STREQ(t.via, "fallback");
    CHECK_STREQ(p.step, "b");
    CHECK_EQ(p.attempt, 1);
    CHECK_STREQ(p.chain_start, "a");
    CHECK_EQ(p.chain_transient, 0);

    /* transient, attempts used up: fallback, and the chain remembers it was transient */
    at(&p, "a", 2);
    r = fail("server_error", 1);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_FALLBACK);
    CHECK_EQ(p.chain_transient, 1);

    /* `always` is taken on failure too */
    at(&p, "c", 1);
    r = fail("bad_input", 0);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_FALLBACK);
    CHECK_STREQ(t.via, "always");
    CHECK_STREQ(p.step, "d");

    /* the end of a chain with a transient link waits, and resumes at the chain's start */
    at(&p, "d", 1);
    snprintf(p.chain_start, sizeof p.chain_start, "a");
    p.chain_transient = 1;
    p.wait_count = 3;
    r = fail("bad_input", 0);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_WAITING);
    CHECK_STREQ(p.step, "a");
    CHECK_EQ(p.wait_count, 4);
    CHECK(t.wait_s == 8.0);
    CHECK_STREQ(p.chain_start, "");

    /* ...and a chain of permanent failures fails */
    at(&p, "d", 1);
    snprintf(p.chain_start, sizeof p.chain_start, "a");
    r = fail("bad_input", 0);
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_FAILED);
    CHECK_STREQ(t.err, "bad_input");

    /* a service hold is not a failure: same step and attempt, no chain */
    at(&p, "a", 2);
    r = fail("rate_limited", 1);
    r.wait_s = 12;
    sl_transition_decide(f, &p, &r, &t);
    CHECK_EQ(t.kind, SL_TR_HELD);
    CHECK_STREQ(p.step, "a");
    CHECK_EQ(p.attempt, 2);
    CHECK(t.wait_s == 12);
    CHECK_STREQ(p.chain_start, "");
}

int main(void)
{
    struct event_base *base = event_base_new();
    sl_flow_host_t host = {0};
    sl_flowvm_t *vm = NULL;
    sl_flow_t *f = NULL;
    char err[512], path[] = "/tmp/test_transition_XXXXXX";
    int fd = mkstemp(path);

    if (fd < 0 || write(fd, FLOW, sizeof FLOW - 1) != (ssize_t)(sizeof FLOW - 1)) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    close(fd);
    host.base = base;
    host.lib_dir = "lua-flows/lib";
    host.tmp_root = "/tmp";
    if (sl_flowvm_new(&host, &vm, err, sizeof err) != 0 ||
        sl_flow_load(vm, "t", path, &f, err, sizeof err) != 0) {
        fprintf(stderr, "flow: %s\n", err);
        unlink(path);
        return 1;
    }
    unlink(path);
    test_decisions(f);
    sl_flow_unref(f);
    sl_flowvm_free(vm);
    event_base_free(base);
    return check_summary();
}
