/*
 * test_service.c — unit tests for actors/service.c's backpressure from
 * downstream: the Retry-After and x-ratelimit duration parsers, holds (from
 * Retry-After and from rate-limit headers, seen by a second registry with its
 * own limiter on the same Redis: two "instances"), AIMD on the concurrency
 * cap, and token charges corrected after the answer.
 *
 * Redis: SL_TEST_REDIS_URL (scripts/test starts one), else a redis-server
 * this test starts on a free port; without either the Redis cases are
 * skipped (the rest still runs). Time is only ever bounded from below.
 */
#include "actors/service.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/redis.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "looptest.h"
#include "redistmp.h"

static struct event_base *base;
static char uniq[32]; /* keeps service names (and so Redis keys) apart between runs */

static void spin(double secs)
{
    int never = 0;
    looptest_run_until(base, &never, 1, secs);
}

static const char *name_of(char *buf, size_t n, const char *what)
{
    snprintf(buf, n, "%s-%s", what, uniq);
    return buf;
}

/* ---- acquiring ---- */

typedef struct {
    sl_svc_wait_t w;
    int done, err;
    double at;
} call_t;

static void ready_cb(sl_svc_wait_t *w, int err, void *arg)
{
    call_t *c = arg;
    (void)w;
    c->done++;
    c->err = err;
    c->at = looptest_now_s();
}

/* Acquires and waits for the answer: 0 granted (the slot is held), or the error. */
static int acquire(sl_svc_t *s, call_t *c, int wait_ms, double est)
{
    memset(c, 0, sizeof *c);
    int rc = sl_svc_acquire_est(s, &c->w, wait_ms, est, ready_cb, c);
    if (rc == 1) {
        c->at = looptest_now_s();
        return 0;
    }
    if (rc < 0)
        return rc;
    looptest_run_until(base, &c->done, 1, wait_ms / 1000.0 + 10);
    CHECK(c->done == 1);
    return c->done == 1 ? c->err : SL_ETIMEDOUT;
}

static int metric_has(const char *needle)
{
    size_t len = 0;
    char *m = sl_metrics_render(&len);
    int found = m && strstr(m, needle) != NULL;
    free(m);
    return found;
}

/* ---- parsers ---- */

static void test_retry_after(void)
{
    const double t94 = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
    double s = -1;

    CHECK(sl_svc_parse_retry_after("120", 0, &s) == 0 && s == 120);
    CHECK(sl_svc_parse_retry_after(" 5\t", 0, &s) == 0 && s == 5);
    CHECK(sl_svc_parse_retry_after("0", 0, &s) == 0 && s == 0);
    CHECK(sl_svc_parse_retry_after("3600", 0, &s) == 0 && s == 3600);
    CHECK(sl_svc_parse_retry_after("3601", 0, &s) == 0 && s == SL_SVC_HOLD_MAX_S);
    CHECK(sl_svc_parse_retry_after("99999999999999999999999999", 0, &s) == 0 &&
          s == SL_SVC_HOLD_MAX_S);
    /* delay-seconds is 1*DIGIT: no sign, fraction, unit or trailing junk */
    s = -1;
    CHECK(sl_svc_parse_retry_after("-1", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("+1", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("1.5", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("1s", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("1 2", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("   ", 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after(NULL, 0, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("soon", 0, &s) == SL_EINVAL);
    CHECK(s == -1); /* untouched on error */

    /* the three HTTP-date forms, 30 s after `now` */
    CHECK(sl_svc_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t94 - 30, &s) == 0 && s == 30);
    CHECK(sl_svc_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", t94 - 30, &s) == 0 && s == 30);
    CHECK(sl_svc_parse_retry_after("Sun Nov  6 08:49:37 1994", t94 - 30, &s) == 0 && s == 30);
    CHECK(sl_svc_parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800.0 - 7, &s) == 0 &&
          s == 7);
    /* a date in the past is no wait; one far ahead is bounded */
    CHECK(sl_svc_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", t94 + 100, &s) == 0 && s == 0);
    CHECK(sl_svc_parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", t94, &s) == 0 &&
          s == SL_SVC_HOLD_MAX_S);
    /* rfc850's two-digit year: from 2026, "94" is 1994 (2094 is > 50 years ahead) */
    CHECK(sl_svc_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 1764720000, &s) == 0 &&
          s == 0);
    /* garbage dates */
    s = -1;
    CHECK(sl_svc_parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT x", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 31 Feb 1994 08:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 29 Feb 1900 08:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 06 Nov 1994 24:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 6 Nov 1994 08:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun 06 Nov 1994 08:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Xyz, 06 Nov 1994 08:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun Nov 6 08:49:37 1994", t94, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT                                 "
                                   "          tail",
                                   t94, &s) == SL_EINVAL);
    CHECK(s == -1);
}

static void test_duration(void)
{
    double s = -1;
    CHECK(sl_svc_parse_duration("1s", &s) == 0 && s == 1);
    CHECK(sl_svc_parse_duration("6m0s", &s) == 0 && s == 360);
    CHECK(sl_svc_parse_duration("20ms", &s) == 0 && fabs(s - 0.02) < 1e-12);
    CHECK(sl_svc_parse_duration("1m30.5s", &s) == 0 && fabs(s - 90.5) < 1e-9);
    CHECK(sl_svc_parse_duration("1h2m3s", &s) == 0 && s == 3723);
    CHECK(sl_svc_parse_duration("2h", &s) == 0 && s == 7200);
    CHECK(sl_svc_parse_duration("1s500ms", &s) == 0 && fabs(s - 1.5) < 1e-12);
    CHECK(sl_svc_parse_duration("250us", &s) == 0 && fabs(s - 250e-6) < 1e-15);
    CHECK(sl_svc_parse_duration("7ns", &s) == 0 && fabs(s - 7e-9) < 1e-18);
    CHECK(sl_svc_parse_duration("0", &s) == 0 && s == 0);
    CHECK(sl_svc_parse_duration("0s", &s) == 0 && s == 0);
    CHECK(sl_svc_parse_duration(".5s", &s) == 0 && s == 0.5);
    CHECK(sl_svc_parse_duration(" 3s ", &s) == 0 && s == 3);
    CHECK(sl_svc_parse_duration("24h", &s) == 0 && s == 86400);
    s = -1;
    CHECK(sl_svc_parse_duration("", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration(NULL, &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("s", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("1", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("1x", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("-1s", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("1s1m", &s) == SL_EINVAL);  /* out of order */
    CHECK(sl_svc_parse_duration("1m1m", &s) == SL_EINVAL);  /* a unit twice */
    CHECK(sl_svc_parse_duration("1ms1s", &s) == SL_EINVAL); /* out of order */
    CHECK(sl_svc_parse_duration("1.2.3s", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration(".s", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("1 s", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("1s ms", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("25h", &s) == SL_EINVAL); /* over a day */
    CHECK(sl_svc_parse_duration("9999999999999999h", &s) == SL_EINVAL);
    CHECK(sl_svc_parse_duration("1h1m1s1ms1us1ns1h1m1s1ms1us1ns1s", &s) == SL_EINVAL); /* long */
    CHECK(s == -1);
}

/* ---- holds on one instance (local limiter) ---- */

static void test_hold_local(void)
{
    sl_ratelimit_t *rl;
    sl_svcs_t *r;
    char name[64], reason[SL_SVC_REASON_MAX];
    call_t c;
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_svcs_new(base, NULL, rl, 0, &r) == 0);

    /* Retry-After on a 429 holds an unlimited service */
    sl_svc_t *s = sl_svcs_get(r, name_of(name, sizeof name, "ra"));
    CHECK(s != NULL);
    CHECK(sl_svc_hold_remaining_s(s, reason, sizeof reason) == 0 && reason[0] == '\0');
    double t0 = looptest_now_s();
    sl_svc_observe(s, 429, "1", NULL);
    double left = sl_svc_hold_remaining_s(s, reason, sizeof reason);
    CHECK(left > 0.5 && left <= 1.0);
    char want[SL_SVC_REASON_MAX];
    snprintf(want, sizeof want, "%s: rate limited", name);
    CHECK(strcmp(reason, want) == 0);
    /* the hold is a pause in the limiter the registry was given, and only there */
    char key[96];
    snprintf(key, sizeof key, "hold:%s", name);
    CHECK(sl_ratelimit_pause_state(rl, key, NULL, NULL, 0) == SL_RL_PAUSED);
    sl_svcs_t *unlimited;
    CHECK(sl_svcs_new(base, NULL, NULL, 0, &unlimited) == 0);
    sl_svc_t *u = sl_svcs_get(unlimited, name);
    CHECK(u != NULL && sl_svc_hold_remaining_s(u, NULL, 0) == 0);
    sl_svc_observe(u, 429, "5", NULL); /* no limiter: nothing to hold with */
    CHECK(sl_svc_hold_remaining_s(u, NULL, 0) == 0);
    sl_svcs_free(unlimited);
    /* a shorter budget than the hold: refused at once, no callback */
    memset(&c, 0, sizeof c);
    CHECK(sl_svc_acquire(s, &c.w, 100, ready_cb, &c) == SL_EAGAIN);
    CHECK(sl_svc_in_flight(s) == 0);
    /* a budget that covers it: granted, not before the hold ends */
    CHECK(acquire(s, &c, 3000, 0) == 0);
    CHECK(c.at - t0 >= 1.0);
    sl_svc_release(&c.w, "ok", 0.01);
    CHECK(sl_svc_hold_remaining_s(s, NULL, 0) == 0);
    snprintf(want, sizeof want,
             "sluice_service_holds_total{service=\"%s\",source=\"retry_after\"} 1", name);
    CHECK(metric_has(want));

    /* 503 + HTTP-date: held as "unavailable" */
    s = sl_svcs_get(r, name_of(name, sizeof name, "date"));
    char date[64];
    time_t when = time(NULL) + 20;
    struct tm tm;
    gmtime_r(&when, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    sl_svc_observe(s, 503, date, NULL);
    left = sl_svc_hold_remaining_s(s, reason, sizeof reason);
    CHECK(left > 15 && left <= 20);
    snprintf(want, sizeof want, "%s: unavailable", name);
    CHECK(strcmp(reason, want) == 0);

    /* no hold: Retry-After on a 200, garbage Retry-After, 0 */
    s = sl_svcs_get(r, name_of(name, sizeof name, "nohold"));
    sl_svc_observe(s, 200, "30", NULL);
    sl_svc_observe(s, 429, "soon", NULL);
    sl_svc_observe(s, 429, "0", NULL);
    sl_svc_observe(s, 500, "30", NULL);
    CHECK(sl_svc_hold_remaining_s(s, NULL, 0) == 0);
    CHECK(acquire(s, &c, 10, 0) == 0);
    sl_svc_release(&c.w, "ok", 0.01);

    /* remaining requests at 0 holds until the reset (headers as curl gives them) */
    s = sl_svcs_get(r, name_of(name, sizeof name, "rem0"));
    sl_curl_header_t h[] = {{"Content-Type", "application/json"},
                            {"X-RateLimit-Limit-Requests", "500"},
                            {"x-ratelimit-remaining-requests", "0"},
                            {"x-ratelimit-reset-requests", "1s"}};
    t0 = looptest_now_s();
    sl_svc_observe_headers(s, 200, h, 4);
    left = sl_svc_hold_remaining_s(s, reason, sizeof reason);
    CHECK(left > 0.5 && left <= 1.0);
    snprintf(want, sizeof want, "%s: rate limit reached", name);
    CHECK(strcmp(reason, want) == 0);
    CHECK(acquire(s, &c, 50, 0) == SL_EAGAIN);
    CHECK(acquire(s, &c, 3000, 0) == 0);
    CHECK(c.at - t0 >= 1.0);
    sl_svc_release(&c.w, "ok", 0.01);

    /* remaining tokens under one call's estimate: held until the tokens reset */
    s = sl_svcs_get(r, name_of(name, sizeof name, "tok0"));
    sl_svc_rl_headers_t rlh = {0};
    rlh.remaining_tokens = "999"; /* the default estimate is 1000 */
    rlh.reset_tokens = "6m0s";
    sl_svc_observe(s, 200, NULL, &rlh);
    left = sl_svc_hold_remaining_s(s, NULL, 0);
    CHECK(left > 350 && left <= 360);

    /* a low remaining paces: limit 100 over 10 s is one call per 100 ms */
    s = sl_svcs_get(r, name_of(name, sizeof name, "pace"));
    memset(&rlh, 0, sizeof rlh);
    rlh.limit_requests = "100";
    rlh.remaining_requests = "10";
    rlh.reset_requests = "10s";
    sl_svc_observe(s, 200, NULL, &rlh);
    left = sl_svc_hold_remaining_s(s, NULL, 0);
    CHECK(left > 0.05 && left <= 0.1);
    /* without the limit header: the remaining 4 spread over 2 s */
    s = sl_svcs_get(r, name_of(name, sizeof name, "pace2"));
    memset(&rlh, 0, sizeof rlh);
    rlh.remaining_requests = "4";
    rlh.reset_requests = "2s";
    sl_svc_observe(s, 200, NULL, &rlh);
    left = sl_svc_hold_remaining_s(s, NULL, 0);
    CHECK(left > 0.4 && left <= 0.5);
    /* plenty left: no hold at all */
    s = sl_svcs_get(r, name_of(name, sizeof name, "plenty"));
    memset(&rlh, 0, sizeof rlh);
    rlh.limit_requests = "500";
    rlh.remaining_requests = "499";
    rlh.reset_requests = "120ms";
    rlh.limit_tokens = "200000";
    rlh.remaining_tokens = "199000";
    rlh.reset_tokens = "300ms";
    sl_svc_observe(s, 200, NULL, &rlh);
    CHECK(sl_svc_hold_remaining_s(s, NULL, 0) == 0);
    /* malformed headers are ignored */
    memset(&rlh, 0, sizeof rlh);
    rlh.remaining_requests = "0";
    rlh.reset_requests = "soon";
    sl_svc_observe(s, 200, NULL, &rlh);
    rlh.remaining_requests = "-1";
    rlh.reset_requests = "10s";
    sl_svc_observe(s, 200, NULL, &rlh);
    CHECK(sl_svc_hold_remaining_s(s, NULL, 0) == 0);

    sl_svcs_free(r);
    sl_ratelimit_free(rl);
}

/* ---- AIMD ---- */

static void test_aimd(void)
{
    sl_ratelimit_t *rl;
    sl_svcs_t *r;
    char name[64], want[256];
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_svcs_new(base, NULL, rl, 0, &r) == 0);
    sl_svcs_set_aimd(r, 0, 3);
    sl_svc_t *s = sl_svcs_get(r, name_of(name, sizeof name, "aimd"));
    CHECK(sl_svc_concurrency_limit(s) == SL_SVC_DEFAULT_CONCURRENCY); /* 8 */
    sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 4);
    sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 2);
    sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1);
    sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1); /* never below 1 */
    snprintf(want, sizeof want, "sluice_service_concurrency_limit{service=\"%s\"} 1", name);
    CHECK(metric_has(want));

    /* the cap is enforced: one call in, the next queues until it is released */
    call_t a, b;
    CHECK(acquire(s, &a, 1000, 0) == 0);
    memset(&b, 0, sizeof b);
    CHECK(sl_svc_acquire(s, &b.w, 5000, ready_cb, &b) == 0);
    spin(0.05);
    CHECK(b.done == 0);
    sl_svc_release(&a.w, "ok", 0.01);
    looptest_run_until(base, &b.done, 1, 5);
    CHECK(b.done == 1 && b.err == 0);
    sl_svc_release(&b.w, "ok", 0.01);

    /* 5xx answers are not successes; 2 + 1 (a 4xx) are not yet 3 */
    sl_svc_observe(s, 500, NULL, NULL);
    sl_svc_observe(s, 503, NULL, NULL);
    sl_svc_observe(s, 200, NULL, NULL);
    sl_svc_observe(s, 200, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1);
    sl_svc_observe(s, 404, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 2); /* +1 per 3 successes */
    /* a 429 in between starts the count again */
    sl_svc_observe(s, 200, NULL, NULL);
    sl_svc_observe(s, 200, NULL, NULL);
    sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1);
    for (int i = 0; i < 2; i++)
        sl_svc_observe(s, 200, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1);
    for (int i = 0; i < 100; i++)
        sl_svc_observe(s, 200, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == SL_SVC_DEFAULT_CONCURRENCY); /* up to the cap, no more */

    /* with the cooldown, the 429s of one burst halve once */
    sl_svcs_set_aimd(r, 60000, 3);
    s = sl_svcs_get(r, name_of(name, sizeof name, "burst429"));
    sl_svc_observe(s, 429, NULL, NULL);
    sl_svc_observe(s, 429, NULL, NULL);
    sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 4);

    sl_svcs_free(r);
    sl_ratelimit_free(rl);
}

/* ---- token charges ---- */

static void test_tokens(sl_ratelimit_t *rl, const char *tag)
{
    sl_svcs_t *r;
    sl_config_t *cfg = NULL;
    char name[64], yaml[256], err[256];
    call_t c;
    name_of(name, sizeof name, tag);
    /* 1000 tokens/s, burst 10,000 (ten seconds' worth) */
    snprintf(
        yaml, sizeof yaml,
        "database_url: x\nservices:\n  %s: {url: \"http://127.0.0.1\", tokens_per_min: 60000}\n",
        name);
    CHECK(sl_config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err) == 0);
    CHECK(sl_svcs_new(base, cfg, rl, 0, &r) == 0);
    sl_svc_t *s = sl_svcs_get(r, name);

    /* without an estimate: the default */
    CHECK(acquire(s, &c, 1000, 0) == 0);
    CHECK(sl_svc_wait_tokens(&c.w) == SL_SVC_DEFAULT_TOKEN_ESTIMATE);
    sl_svc_release(&c.w, "ok", 0.01);
    sl_svc_charge_tokens(s, 0, SL_SVC_DEFAULT_TOKEN_ESTIMATE); /* refunded: the bucket is full */

    /* the whole burst as the estimate */
    CHECK(acquire(s, &c, 1000, 10000) == 0);
    CHECK(sl_svc_wait_tokens(&c.w) == 10000);
    sl_svc_release(&c.w, "ok", 0.01);
    /* it used twice that: 10,000 tokens of debt, ten seconds before anything passes */
    sl_svc_charge_tokens(s, 20000, 10000);
    CHECK(acquire(s, &c, 500, 100) == SL_EAGAIN);
    CHECK(sl_svc_hold_remaining_s(s, NULL, 0) == 0); /* busy, not held */
    /* the answer said it used nothing: refunded, the next call passes at once */
    sl_svc_charge_tokens(s, 0, 20000);
    CHECK(acquire(s, &c, 500, 100) == 0);
    sl_svc_release(&c.w, "ok", 0.01);
    /* an estimate above the burst is charged as the burst */
    sl_svc_charge_tokens(s, 0, 100);
    CHECK(acquire(s, &c, 1000, 50000) == 0);
    CHECK(sl_svc_wait_tokens(&c.w) == 10000);
    sl_svc_release(&c.w, "ok", 0.01);
    /* nonsense corrections change nothing: another full-burst call must wait */
    sl_svc_charge_tokens(s, -5, 10000);
    CHECK(acquire(s, &c, 100, 5000) == SL_EAGAIN);

    sl_svcs_free(r);
    sl_config_free(cfg);
}

/* ---- Redis: two instances ---- */

static void wait_up(sl_redis_t *r, double secs)
{
    double deadline = looptest_now_s() + secs;
    while (!sl_redis_up(r) && looptest_now_s() < deadline)
        spin(0.02);
}

static void ping_cb(void *reply, void *arg)
{
    (void)reply;
    (*(int *)arg)++;
}

/* Waits until Redis has run every command sent on `r` so far (it runs a connection's in order). */
static void barrier(sl_redis_t *r)
{
    int n = 0;
    const char *argv[] = {"PING"};
    const size_t lens[] = {4};
    spin(0); /* let queued ops send */
    CHECK(sl_redis_request(r, ping_cb, &n, 1, argv, lens) == 0);
    looptest_run_until(base, &n, 1, 10);
    CHECK(n == 1);
}

/*
 * Instance A sees a 429 with Retry-After: 2; instance B (its own registry
 * and limiter, same Redis) must not be granted a call before the hold ends.
 */
static void test_two_instances(const char *url)
{
    sl_redis_t *redis_a, *redis_b;
    sl_ratelimit_t *la, *lb;
    sl_svcs_t *ra, *rb;
    sl_config_t *cfg = NULL;
    char unl[64], lim[64], lis[64], yaml[256], err[256], reason[SL_SVC_REASON_MAX], want[160];
    call_t c;

    CHECK(sl_redis_new(base, url, &redis_a) == 0);
    CHECK(sl_redis_new(base, url, &redis_b) == 0);
    wait_up(redis_a, 20);
    wait_up(redis_b, 20);
    CHECK(sl_redis_up(redis_a) && sl_redis_up(redis_b));
    CHECK(sl_ratelimit_new(base, redis_a, &la) == 0);
    CHECK(sl_ratelimit_new(base, redis_b, &lb) == 0);
    name_of(unl, sizeof unl, "unlimited");
    name_of(lim, sizeof lim, "limited");
    name_of(lis, sizeof lis, "listened");
    snprintf(yaml, sizeof yaml,
             "database_url: x\nservices:\n  %s: {url: \"http://127.0.0.1\", rate_per_s: 1000}\n",
             lim);
    CHECK(sl_config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err) == 0);
    CHECK(sl_svcs_new(base, cfg, la, 0, &ra) == 0);
    CHECK(sl_svcs_new(base, cfg, lb, 0, &rb) == 0);

    /* one call through A loads the script into Redis, so the barrier below
     * is not overtaken by a NOSCRIPT -> SCRIPT LOAD -> EVALSHA round */
    CHECK(acquire(sl_svcs_get(ra, lim), &c, 1000, 0) == 0);
    sl_svc_release(&c.w, "ok", 0.01);
    /* A is told to hold both services; B has asked Redis about neither yet */
    for (int i = 0; i < 2; i++) {
        sl_svc_t *s = sl_svcs_get(ra, i ? lim : unl);
        sl_svc_observe(s, 429, "2", NULL);
    }
    double t0 = looptest_now_s();
    barrier(redis_a);
    for (int i = 0; i < 2; i++) {
        const char *n = i ? lim : unl;
        sl_svc_t *sb = sl_svcs_get(rb, n);
        /* B knows nothing locally: it asks (the unlimited one through a
         * pause-only check, the limited one in its GCRA script) */
        CHECK(acquire(sb, &c, 200, 0) == SL_EAGAIN);
        double left = sl_svc_hold_remaining_s(sb, reason, sizeof reason);
        CHECK(left > 1.0 && left <= 2.0);
        snprintf(want, sizeof want, "%s: rate limited", n);
        CHECK(strcmp(reason, want) == 0);
        /* now B knows: refused at once, without a callback */
        memset(&c, 0, sizeof c);
        CHECK(sl_svc_acquire(sb, &c.w, 200, ready_cb, &c) == SL_EAGAIN);
    }
    /* with a budget that covers the hold: granted, not before it ends */
    for (int i = 0; i < 2; i++) {
        sl_svc_t *sb = sl_svcs_get(rb, i ? lim : unl);
        CHECK(acquire(sb, &c, 5000, 0) == 0);
        CHECK(c.at - t0 >= 1.99); /* the hold's ms on Redis's clock round down by < 1 ms */
        sl_svc_release(&c.w, "ok", 0.01);
    }

    /* pub/sub: B listens, has just been told "not held" (so it would not ask
     * for a while), and still learns of A's hold at once */
    CHECK(sl_ratelimit_listen(lb, url) == 0);
    CHECK(sl_ratelimit_listen(lb, url) == 0); /* once is enough */
    double deadline = looptest_now_s() + 20;
    while (!sl_ratelimit_listening(lb) && looptest_now_s() < deadline)
        spin(0.02);
    CHECK(sl_ratelimit_listening(lb) == 1);
    sl_svc_t *sb = sl_svcs_get(rb, lis);
    CHECK(acquire(sb, &c, 1000, 0) == 0); /* asks Redis: not held */
    sl_svc_release(&c.w, "ok", 0.01);
    memset(&c, 0, sizeof c);
    CHECK(sl_svc_acquire(sb, &c.w, 1000, ready_cb, &c) == 1); /* fresh: no round trip */
    sl_svc_release(&c.w, "ok", 0.01);
    sl_svc_observe(sl_svcs_get(ra, lis), 429, "30", NULL);
    deadline = looptest_now_s() + 5;
    while (sl_svc_hold_remaining_s(sb, NULL, 0) == 0 && looptest_now_s() < deadline)
        spin(0.01);
    CHECK(sl_svc_hold_remaining_s(sb, NULL, 0) > 25);
    memset(&c, 0, sizeof c);
    CHECK(sl_svc_acquire(sb, &c.w, 1000, ready_cb, &c) == SL_EAGAIN);

    /* token corrections go through Redis too */
    test_tokens(la, "tokens-redis");

    sl_svcs_free(ra);
    sl_svcs_free(rb);
    sl_config_free(cfg);
    sl_ratelimit_free(la);
    sl_ratelimit_free(lb);
    sl_redis_free(redis_a);
    sl_redis_free(redis_b);
}

static void test_redis(void)
{
    const char *url = getenv("SL_TEST_REDIS_URL");
    char own[64];
    pid_t pid = -1;
    if (!url || !*url) {
        pid = redistmp_open(own, sizeof own, NULL);
        if (pid == 0) {
            fprintf(stderr, "test_service: no SL_TEST_REDIS_URL and no redis-server; "
                            "Redis tests skipped\n");
            return;
        }
        CHECK(pid > 0);
        url = own;
    }
    test_two_instances(url);
    redistmp_stop(pid);
}

/* Issue 10: a freed slot goes to the tenants' queues in turn, not FIFO over all. */
static void test_tenant_turns(void)
{
    sl_ratelimit_t *rl;
    sl_svcs_t *r;
    char name[64];
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_svcs_new(base, NULL, rl, 0, &r) == 0);
    sl_svcs_set_aimd(r, 0, 1000000); /* the cap stays 1: releases are no increase */
    sl_svc_t *s = sl_svcs_get(r, name_of(name, sizeof name, "turns"));
    for (int i = 0; i < 4; i++)
        sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1);

    call_t first, a[5], b;
    CHECK(acquire(s, &first, 1000, 0) == 0);
    memset(a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    for (int i = 0; i < 5; i++) /* tenant A's five calls queue first */
        CHECK(sl_svc_acquire_for(s, &a[i].w, "tenant-a", 5000, 0, ready_cb, &a[i]) == 0);
    CHECK(sl_svc_acquire_for(s, &b.w, "tenant-b", 5000, 0, ready_cb, &b) == 0);
    spin(0.02);
    CHECK(a[0].done == 0 && b.done == 0);

    /* the slot passes: A's first call, then B's (its turn), then A's others */
    sl_svc_release(&first.w, "ok", 0.01);
    looptest_run_until(base, &a[0].done, 1, 5);
    CHECK(a[0].done == 1 && b.done == 0);
    sl_svc_release(&a[0].w, "ok", 0.01);
    looptest_run_until(base, &b.done, 1, 5);
    CHECK(b.done == 1 && b.err == 0);
    CHECK(a[1].done == 0); /* FIFO over every call would have granted A's second */
    sl_svc_release(&b.w, "ok", 0.01);
    for (int i = 1; i < 5; i++) {
        looptest_run_until(base, &a[i].done, 1, 5);
        CHECK(a[i].done == 1 && a[i].err == 0);
        for (int j = i + 1; j < 5; j++)
            CHECK(a[j].done == 0); /* one at a time, in A's order */
        sl_svc_release(&a[i].w, "ok", 0.01);
    }
    /* a cancelled queued call leaves the turns intact */
    CHECK(acquire(s, &first, 1000, 0) == 0);
    memset(&a[0], 0, sizeof a[0]);
    memset(&b, 0, sizeof b);
    CHECK(sl_svc_acquire_for(s, &a[0].w, "tenant-a", 5000, 0, ready_cb, &a[0]) == 0);
    CHECK(sl_svc_acquire_for(s, &b.w, "tenant-b", 5000, 0, ready_cb, &b) == 0);
    sl_svc_cancel_wait(&a[0].w);
    sl_svc_release(&first.w, "ok", 0.01);
    looptest_run_until(base, &b.done, 1, 5);
    CHECK(b.done == 1 && b.err == 0);
    sl_svc_release(&b.w, "ok", 0.01);
    spin(0.02);
    CHECK(a[0].done == 0); /* cancelled: never called back */
    sl_svcs_free(r);
    sl_ratelimit_free(rl);
}

/*
 * Queued calls have no timer each (issue 10): the service's one deadline
 * timer serves them in deadline order, whatever their queue order, and a
 * call cancelled after its grant but before its wake-up passes the slot on.
 */
static void test_wait_deadlines(void)
{
    sl_ratelimit_t *rl;
    sl_svcs_t *r;
    char name[64];
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_svcs_new(base, NULL, rl, 0, &r) == 0);
    sl_svcs_set_aimd(r, 0, 1000000);
    sl_svc_t *s = sl_svcs_get(r, name_of(name, sizeof name, "deadlines"));
    for (int i = 0; i < 4; i++)
        sl_svc_observe(s, 429, NULL, NULL);
    CHECK(sl_svc_concurrency_limit(s) == 1);

    call_t first, a, b, c, d;
    CHECK(acquire(s, &first, 1000, 0) == 0);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    memset(&d, 0, sizeof d);
    double t0 = looptest_now_s();
    CHECK(sl_svc_acquire(s, &a.w, 5000, ready_cb, &a) == 0);
    CHECK(sl_svc_acquire(s, &b.w, 100, ready_cb, &b) == 0); /* queued after a, due first */
    CHECK(sl_svc_acquire(s, &c.w, 300, ready_cb, &c) == 0);
    CHECK(sl_svc_acquire(s, &d.w, 5000, ready_cb, &d) == 0);
    looptest_run_until(base, &b.done, 1, 5);
    CHECK(b.done == 1 && b.err == SL_EAGAIN && a.done == 0 && c.done == 0);
    CHECK(b.at - t0 >= 0.09 && b.at - t0 < 0.25);
    looptest_run_until(base, &c.done, 1, 5);
    CHECK(c.done == 1 && c.err == SL_EAGAIN && a.done == 0 && d.done == 0);
    CHECK(c.at - t0 >= 0.29 && c.at - t0 < 0.5);

    /* a is granted, then cancelled before its wake-up: d gets the slot */
    sl_svc_release(&first.w, "ok", 0.01);
    sl_svc_cancel_wait(&a.w);
    looptest_run_until(base, &d.done, 1, 5);
    CHECK(d.done == 1 && d.err == 0 && a.done == 0);
    sl_svc_release(&d.w, "ok", 0.01);
    spin(0.02);
    CHECK(a.done == 0);
    sl_svcs_free(r);
    sl_ratelimit_free(rl);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    sl_log_set_level(getenv("TEST_LOG") ? getenv("TEST_LOG") : "error");
    snprintf(uniq, sizeof uniq, "%d-%ld", (int)getpid(), (long)time(NULL));
    base = event_base_new();
    test_retry_after();
    test_duration();
    test_hold_local();
    test_aimd();
    test_tenant_turns();
    test_wait_deadlines();
    sl_ratelimit_t *rl;
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    test_tokens(rl, "tokens-local");
    sl_ratelimit_free(rl);
    test_redis();
    for (int i = 0; i < 3; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    sl_metrics_reset();
    return check_summary_prefixed("test_service: ");
}
