/*
 * test_ratelimit.c — unit tests for core/ratelimit.c: the GCRA arithmetic,
 * the local limiter (callbacks on a later turn, exactly once, waits,
 * cancellation), concurrency counters, and the Redis path against a real
 * redis-server this test starts on a free port: shared state between two
 * limiters, recovery from a flushed script cache (NOSCRIPT), and the switch
 * to local limits when Redis goes away. Pauses (local, and set by one limiter
 * and honoured by another) and debt/refund charges.
 */
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

/* ---- results ---- */

#define MAX_RES 64
typedef struct {
    int n, allowed, denied, cancelled;
    int err[MAX_RES];
    double retry[MAX_RES];
    double at[MAX_RES];
} results_t;

static void res_cb(int err, double retry_after_s, void *arg)
{
    results_t *r = arg;
    if (r->n < MAX_RES) {
        r->err[r->n] = err;
        r->retry[r->n] = retry_after_s;
        r->at[r->n] = looptest_now_s();
    }
    r->n++;
    if (err == 0)
        r->allowed++;
    else if (err == SL_EAGAIN)
        r->denied++;
    else
        r->cancelled++;
}

/* ---- GCRA arithmetic ---- */

static void test_gcra_math(void)
{
    double tat = 0, retry = -1;
    int ok = 0;
    /* 10/s with a burst of 5: five at once, then one every 100 ms */
    for (int i = 0; i < 5; i++)
        ok += sl_ratelimit_gcra(&tat, 100.0, 10, 5, 1, &retry);
    CHECK(ok == 5);
    CHECK(sl_ratelimit_gcra(&tat, 100.0, 10, 5, 1, &retry) == 0);
    CHECK(fabs(retry - 0.1) < 1e-9);
    CHECK(sl_ratelimit_gcra(&tat, 100.05, 10, 5, 1, &retry) == 0);
    CHECK(fabs(retry - 0.05) < 1e-9);
    CHECK(sl_ratelimit_gcra(&tat, 100.1, 10, 5, 1, &retry) == 1);
    CHECK(sl_ratelimit_gcra(&tat, 100.1, 10, 5, 1, &retry) == 0);

    /* over 10 simulated seconds at 1 ms steps: exactly burst + rate * t pass */
    tat = 0;
    ok = 0;
    for (int ms = 0; ms < 10000; ms++)
        while (sl_ratelimit_gcra(&tat, 500.0 + ms / 1000.0, 10, 5, 1, &retry))
            ok++;
    CHECK(ok == 5 + 99); /* 5 at t=0, then one at each 100 ms step from 0.1 s to 9.9 s */

    /* a cost: 1000 bytes/s, burst 500: 500 at once, then 250 after 250 ms */
    tat = 0;
    CHECK(sl_ratelimit_gcra(&tat, 10.0, 1000, 500, 500, &retry) == 1);
    CHECK(sl_ratelimit_gcra(&tat, 10.0, 1000, 500, 250, &retry) == 0);
    CHECK(fabs(retry - 0.25) < 1e-9);
    CHECK(sl_ratelimit_gcra(&tat, 10.25, 1000, 500, 250, &retry) == 1);

    /* a cost above the burst is charged as the burst (else it could never pass) */
    tat = 0;
    CHECK(sl_ratelimit_gcra(&tat, 10.0, 1, 3, 100, &retry) == 1);
    CHECK(sl_ratelimit_gcra(&tat, 10.0, 1, 3, 1, &retry) == 0);
    CHECK(fabs(retry - 1.0) < 1e-9);

    /* an idle key forgets: after a long pause the full burst is back */
    tat = 0;
    for (int i = 0; i < 5; i++)
        sl_ratelimit_gcra(&tat, 1.0, 10, 5, 1, &retry);
    ok = 0;
    for (int i = 0; i < 7; i++)
        ok += sl_ratelimit_gcra(&tat, 60.0, 10, 5, 1, &retry);
    CHECK(ok == 5);
}

/* ---- one limiter: a burst of `n` checks on `key` ---- */

static void burst(sl_ratelimit_t *rl, const char *key, const sl_rl_limit_t *lim, int n,
                  results_t *r)
{
    for (int i = 0; i < n; i++)
        CHECK(sl_ratelimit_check(rl, "test", key, lim, 1, 0, res_cb, r, NULL) == 0);
}

static void test_local(void)
{
    sl_ratelimit_t *rl;
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_ratelimit_shared(rl) == 0);
    sl_rl_limit_t lim = {10, 3};
    results_t r = {0};
    burst(rl, "k1", &lim, 5, &r);
    CHECK(r.n == 0); /* never synchronous */
    looptest_run_until(base, &r.n, 5, 5);
    CHECK(r.n == 5);
    CHECK(r.allowed == 3);
    CHECK(r.denied == 2);
    for (int i = 0; i < 5; i++)
        if (r.err[i] == SL_EAGAIN)
            CHECK(r.retry[i] > 0.05 && r.retry[i] <= 0.1 + 1e-6);

    /* another key has its own budget */
    results_t r2 = {0};
    burst(rl, "k2", &lim, 3, &r2);
    looptest_run_until(base, &r2.n, 3, 5);
    CHECK(r2.allowed == 3);

    /* waiting: 4 checks on a fresh 20/s burst-1 key with max_wait pass over ~150 ms */
    sl_rl_limit_t slow = {20, 1};
    results_t w = {0};
    double t0 = looptest_now_s();
    for (int i = 0; i < 4; i++)
        CHECK(sl_ratelimit_check(rl, "test", "k3", &slow, 1, 2000, res_cb, &w, NULL) == 0);
    looptest_run_until(base, &w.n, 4, 5);
    CHECK(w.allowed == 4);
    CHECK(w.at[3] - t0 >= 0.14);
    /* a wait that cannot fit in max_wait is refused at once */
    results_t w2 = {0};
    CHECK(sl_ratelimit_check(rl, "test", "k3", &slow, 1, 10, res_cb, &w2, NULL) == 0);
    looptest_run_until(base, &w2.n, 1, 5);
    CHECK(w2.denied == 1);

    /* cancel: no callback, before or while waiting */
    results_t c = {0};
    sl_rl_op_t *op1, *op2;
    CHECK(sl_ratelimit_check(rl, "test", "k4", &slow, 1, 0, res_cb, &c, &op1) == 0);
    sl_ratelimit_cancel(op1);
    CHECK(sl_ratelimit_check(rl, "test", "k3", &slow, 1, 5000, res_cb, &c, &op2) == 0);
    int spin = 0;
    struct event *t = evtimer_new(base, looptest_tick_cb, NULL);
    struct timeval tv = {0, 50000};
    evtimer_add(t, &tv);
    event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    sl_ratelimit_cancel(op2);
    looptest_run_until(base, &spin, 1, 0.2);
    CHECK(c.n == 0);

    /* unlimited: allowed, still on a later turn */
    sl_rl_limit_t none = {0, 0};
    results_t u = {0};
    for (int i = 0; i < 10; i++)
        CHECK(sl_ratelimit_check(rl, "test", "k5", &none, 1, 0, res_cb, &u, NULL) == 0);
    CHECK(u.n == 0);
    looptest_run_until(base, &u.n, 10, 5);
    CHECK(u.allowed == 10);

    /* too long a key */
    char longkey[SL_RL_KEY_MAX + 10];
    memset(longkey, 'x', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    CHECK(sl_ratelimit_check(rl, "test", longkey, &lim, 1, 0, res_cb, &u, NULL) == SL_EINVAL);

    /* free with an op waiting: it gets SL_ECANCELED inside the free */
    results_t f = {0};
    CHECK(sl_ratelimit_check(rl, "test", "k3", &slow, 1, 5000, res_cb, &f, NULL) == 0);
    sl_ratelimit_free(rl);
    CHECK(f.n == 1 && f.cancelled == 1);
}

static void test_holds(void)
{
    sl_ratelimit_t *rl;
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_ratelimit_hold(rl, "t1", 2) == 0);
    CHECK(sl_ratelimit_hold(rl, "t1", 2) == 0);
    CHECK(sl_ratelimit_hold(rl, "t1", 2) == SL_EAGAIN);
    CHECK(sl_ratelimit_hold(rl, "t2", 2) == 0);
    sl_ratelimit_unhold(rl, "t1");
    CHECK(sl_ratelimit_hold(rl, "t1", 2) == 0);
    CHECK(sl_ratelimit_hold(rl, "t1", 2) == SL_EAGAIN);
    CHECK(sl_ratelimit_hold(rl, "t3", 0) == 0); /* 0: no limit */
    sl_ratelimit_unhold(rl, "nobody");          /* harmless */
    sl_ratelimit_free(rl);
}

/* ---- pauses and charges, local ---- */

static void check_paused(sl_ratelimit_t *rl, const char *key, const char *pause,
                         const sl_rl_limit_t *lim, int max_wait_ms, results_t *r)
{
    sl_rl_check_t c = {0};
    c.name = "test";
    c.key = key;
    if (lim)
        c.lim = *lim;
    c.cost = 1;
    c.pause_key = pause;
    c.max_wait_ms = max_wait_ms;
    CHECK(sl_ratelimit_check_ex(rl, &c, res_cb, r, NULL) == 0);
}

static void test_pause_local(void)
{
    sl_ratelimit_t *rl;
    char why[SL_RL_PAUSE_WHY_MAX];
    double left = -1;
    CHECK(sl_ratelimit_new(base, NULL, &rl) == 0);
    CHECK(sl_ratelimit_pause_state(rl, "p1", &left, why, sizeof why) == SL_RL_CLEAR);
    CHECK(left == 0 && why[0] == '\0');
    double t0 = looptest_now_s();
    CHECK(sl_ratelimit_pause(rl, "p1", 0.3, "rate limited") == 0);
    CHECK(sl_ratelimit_pause_state(rl, "p1", &left, why, sizeof why) == SL_RL_PAUSED);
    CHECK(left > 0.2 && left <= 0.3 && strcmp(why, "rate limited") == 0);
    /* a shorter pause does not shorten it, nor change its reason */
    CHECK(sl_ratelimit_pause(rl, "p1", 0.1, "other") == 0);
    CHECK(sl_ratelimit_pause_state(rl, "p1", &left, why, sizeof why) == SL_RL_PAUSED);
    CHECK(left > 0.2 && strcmp(why, "rate limited") == 0);
    CHECK(sl_ratelimit_pause(rl, "p1", 0, "x") == SL_EINVAL);
    CHECK(sl_ratelimit_pause(rl, "p1", -1, "x") == SL_EINVAL);

    /* denied while paused (with and without a rate), nothing charged; retry = the pause */
    sl_rl_limit_t lim = {1, 1};
    results_t r = {0};
    check_paused(rl, "k-p1", "p1", &lim, 0, &r);
    check_paused(rl, NULL, "p1", NULL, 0, &r);
    looptest_run_until(base, &r.n, 2, 5);
    CHECK(r.denied == 2);
    CHECK(r.retry[0] > 0.1 && r.retry[0] <= 0.3);
    /* another pause key is not held */
    results_t o = {0};
    check_paused(rl, NULL, "p2", NULL, 0, &o);
    looptest_run_until(base, &o.n, 1, 5);
    CHECK(o.allowed == 1);
    /* waited out when it fits max_wait; the key's one unit was not spent above */
    results_t w = {0};
    check_paused(rl, "k-p1", "p1", &lim, 2000, &w);
    looptest_run_until(base, &w.n, 1, 5);
    CHECK(w.allowed == 1);
    CHECK(w.at[0] - t0 >= 0.3);
    CHECK(sl_ratelimit_pause_state(rl, "p1", NULL, NULL, 0) == SL_RL_CLEAR);

    /* debt: 10/s burst 1; a charge of 5 pushes the next unit out ~0.5 s */
    sl_rl_limit_t ten = {10, 1};
    results_t d = {0};
    CHECK(sl_ratelimit_charge(rl, "debt", &ten, 5) == 0);
    CHECK(sl_ratelimit_check(rl, "test", "debt", &ten, 1, 0, res_cb, &d, NULL) == 0);
    looptest_run_until(base, &d.n, 1, 5);
    CHECK(d.denied == 1 && d.retry[0] > 0.4);
    /* a refund brings it back, never before now */
    CHECK(sl_ratelimit_charge(rl, "debt", &ten, -1000) == 0);
    results_t f = {0};
    CHECK(sl_ratelimit_check(rl, "test", "debt", &ten, 1, 0, res_cb, &f, NULL) == 0);
    CHECK(sl_ratelimit_check(rl, "test", "debt", &ten, 1, 0, res_cb, &f, NULL) == 0);
    looptest_run_until(base, &f.n, 2, 5);
    CHECK(f.allowed == 1 && f.denied == 1); /* the burst of 1, not 1000 banked units */
    sl_rl_limit_t none = {0, 0};
    CHECK(sl_ratelimit_charge(rl, "debt", &none, 5) == SL_EINVAL);
    sl_ratelimit_free(rl);
}

/* ---- Redis ---- */

static void wait_up(sl_redis_t *r, int want, double secs)
{
    double deadline = looptest_now_s() + secs;
    struct event *t = evtimer_new(base, looptest_tick_cb, NULL);
    while (sl_redis_up(r) != want && looptest_now_s() < deadline) {
        struct timeval tv = {0, 20000};
        evtimer_add(t, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(t);
}

static void flush_cb(void *reply, void *arg)
{
    (void)reply;
    (*(int *)arg)++;
}

static void test_redis(void)
{
    char url[64];
    int port = -1;
    pid_t pid = redistmp_open(url, sizeof url, &port);
    if (pid == 0) {
        CHECK_SKIPPED("redis-server not installed: the Redis tests did not run");
        return;
    }
    CHECK(pid > 0);
    sl_redis_t *redis;
    CHECK(sl_redis_new(base, url, &redis) == 0);
    wait_up(redis, 1, 20);
    CHECK(sl_redis_up(redis) == 1);

    /* two limiters (two instances) on one Redis share the budget */
    sl_ratelimit_t *a, *b;
    CHECK(sl_ratelimit_new(base, redis, &a) == 0);
    CHECK(sl_ratelimit_new(base, redis, &b) == 0);
    char key[64];
    snprintf(key, sizeof key, "shared-%d", (int)getpid());
    sl_rl_limit_t lim = {1, 4}; /* 4 at once, then 1/s: nothing refills during the test */
    results_t ra = {0}, rb = {0};
    burst(a, key, &lim, 3, &ra);
    burst(b, key, &lim, 3, &rb);
    looptest_run_until(base, &ra.n, 3, 5);
    looptest_run_until(base, &rb.n, 3, 5);
    CHECK(ra.allowed + rb.allowed == 4);
    CHECK(ra.denied + rb.denied == 2);
    CHECK(sl_ratelimit_shared(a) == 1);
    for (int i = 0; i < ra.n && i < MAX_RES; i++)
        if (ra.err[i] == SL_EAGAIN)
            CHECK(ra.retry[i] > 0.5 && ra.retry[i] <= 1.0 + 1e-6);

    /* the script cache flushed: NOSCRIPT -> SCRIPT LOAD -> the check still answers */
    int flushed = 0;
    const char *flush[] = {"SCRIPT", "FLUSH"};
    const size_t flush_lens[] = {6, 5};
    CHECK(sl_redis_request(redis, flush_cb, &flushed, 2, flush, flush_lens) == 0);
    looptest_run_until(base, &flushed, 1, 5);
    results_t rc = {0};
    snprintf(key, sizeof key, "flushed-%d", (int)getpid());
    burst(a, key, &lim, 5, &rc);
    looptest_run_until(base, &rc.n, 5, 5);
    CHECK(rc.allowed == 4 && rc.denied == 1);
    CHECK(sl_ratelimit_shared(a) == 1);

    /* waiting through Redis: 3 checks at 10/s burst 1 pass over ~200 ms */
    sl_rl_limit_t slow = {10, 1};
    results_t w = {0};
    snprintf(key, sizeof key, "wait-%d", (int)getpid());
    double t0 = looptest_now_s();
    for (int i = 0; i < 3; i++)
        CHECK(sl_ratelimit_check(a, "test", key, &slow, 1, 3000, res_cb, &w, NULL) == 0);
    looptest_run_until(base, &w.n, 3, 5);
    CHECK(w.allowed == 3);
    CHECK(w.at[2] - t0 >= 0.18);

    /* a pause set through one limiter holds checks of the other */
    char pkey[64];
    snprintf(pkey, sizeof pkey, "pause-%d", (int)getpid());
    CHECK(sl_ratelimit_pause_state(b, pkey, NULL, NULL, 0) == SL_RL_ASK);
    t0 = looptest_now_s();
    CHECK(sl_ratelimit_pause(a, pkey, 0.5, "rate limited") == 0);
    int pinged = 0;
    const char *ping[] = {"PING"};
    const size_t ping_lens[] = {4};
    CHECK(sl_redis_request(redis, flush_cb, &pinged, 1, ping, ping_lens) == 0);
    looptest_run_until(base, &pinged, 1, 5); /* the pause went before it on the same connection */
    results_t pb = {0};
    check_paused(b, NULL, pkey, NULL, 0, &pb);
    looptest_run_until(base, &pb.n, 1, 5);
    CHECK(pb.denied == 1 && pb.retry[0] > 0.2 && pb.retry[0] <= 0.5);
    char why[SL_RL_PAUSE_WHY_MAX];
    CHECK(sl_ratelimit_pause_state(b, pkey, NULL, why, sizeof why) == SL_RL_PAUSED);
    CHECK(strcmp(why, "rate limited") == 0);
    results_t pw = {0};
    snprintf(key, sizeof key, "paused-rate-%d", (int)getpid());
    check_paused(b, key, pkey, &lim, 3000, &pw);
    looptest_run_until(base, &pw.n, 1, 5);
    CHECK(pw.allowed == 1 && pw.at[0] - t0 >= 0.49);
    /* Redis said "not paused": trusted for a while, no round trip */
    results_t pc = {0};
    check_paused(b, NULL, pkey, NULL, 0, &pc);
    looptest_run_until(base, &pc.n, 1, 5);
    CHECK(pc.allowed == 1);
    CHECK(sl_ratelimit_pause_state(b, pkey, NULL, NULL, 0) == SL_RL_CLEAR);

    /* a debt charged through one limiter delays the other */
    sl_rl_limit_t tenr = {10, 1};
    snprintf(key, sizeof key, "debt-%d", (int)getpid());
    CHECK(sl_ratelimit_charge(a, key, &tenr, 5) == 0);
    pinged = 0;
    CHECK(sl_redis_request(redis, flush_cb, &pinged, 1, ping, ping_lens) == 0);
    looptest_run_until(base, &pinged, 1, 5);
    results_t db = {0};
    CHECK(sl_ratelimit_check(b, "test", key, &tenr, 1, 0, res_cb, &db, NULL) == 0);
    looptest_run_until(base, &db.n, 1, 5);
    CHECK(db.denied == 1 && db.retry[0] > 0.4);

    /* an op cancelled while its command is out never calls back */
    results_t c = {0};
    sl_rl_op_t *op;
    CHECK(sl_ratelimit_check(a, "test", "cancelled", &lim, 1, 0, res_cb, &c, &op) == 0);
    event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE); /* the command goes out */
    sl_ratelimit_cancel(op);
    int spin = 0;
    looptest_run_until(base, &spin, 1, 0.2);
    CHECK(c.n == 0);

    /* Redis stops: checks go on with local limits */
    redistmp_stop(pid);
    wait_up(redis, 0, 10);
    results_t rl = {0};
    burst(a, "after-stop", &lim, 6, &rl);
    looptest_run_until(base, &rl.n, 6, 5);
    CHECK(rl.n == 6);
    CHECK(rl.allowed == 4 && rl.denied == 2);
    CHECK(sl_ratelimit_shared(a) == 0);

    /* and back to Redis once it is up again */
    pid = redistmp_start(port);
    wait_up(redis, 1, 20);
    results_t back = {0};
    burst(a, "after-start", &lim, 1, &back);
    looptest_run_until(base, &back.n, 1, 5);
    CHECK(back.allowed == 1);
    CHECK(sl_ratelimit_shared(a) == 1);

    /* freed with a command out: the callback comes once, with SL_ECANCELED */
    results_t f = {0};
    CHECK(sl_ratelimit_check(b, "test", "freeing", &lim, 1, 0, res_cb, &f, NULL) == 0);
    event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
    sl_ratelimit_free(b);
    looptest_run_until(base, &f.n, 1, 5);
    CHECK(f.n == 1);

    sl_ratelimit_free(a);
    sl_redis_free(redis);
    redistmp_stop(pid);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    sl_log_set_level("error");
    base = event_base_new();
    test_gcra_math();
    test_local();
    test_holds();
    test_pause_local();
    test_redis();
    for (int i = 0; i < 3; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    sl_metrics_reset();
    return check_summary_prefixed("test_ratelimit: ");
}
