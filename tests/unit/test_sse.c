/*
 * test_sse.c — unit tests for core/sse.c (event formatting: ids, event names,
 * multi-line data, truncation) and for the local half of core/pubsub.c
 * (fan-out by channel, never synchronous, order, unsubscribing during a
 * delivery, the shutdown notice), which the SSE endpoint is built on; with a
 * redis-server of its own, the batch envelope (sl_pubsub_publish_many) across
 * two instances. The rest of the Redis half is covered by
 * tests/blackbox/test_sse.py against real servers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "core/err.h"
#include "core/pubsub.h"
#include "core/redis.h"
#include "core/sse.h"

#define CHECK_STREAM stdout
#include "check.h"
#include "looptest.h"
#include "redistmp.h"

/* Formats and compares with the exact expected text. */
static int fmt_is(const char *id, const char *event, const char *data, const char *want)
{
    char buf[512];
    int n = sl_sse_format(buf, sizeof buf, id, event, data, data ? strlen(data) : 0);
    if (n < 0 || (size_t)n != strlen(want) || strcmp(buf, want) != 0) {
        fprintf(stdout, "  got %d: [%s]\n  want:  [%s]\n", n, n >= 0 ? buf : "", want);
        return 0;
    }
    return 1;
}

static void test_format(void)
{
    CHECK(fmt_is("42", "run", "{\"seq\":42}", "id: 42\nevent: run\ndata: {\"seq\":42}\n\n"));
    CHECK(fmt_is(NULL, "file", "x", "event: file\ndata: x\n\n"));
    CHECK(fmt_is("7", NULL, "x", "id: 7\ndata: x\n\n"));
    CHECK(fmt_is(NULL, NULL, "", "data: \n\n"));
    /* every line break style starts a new data line */
    CHECK(fmt_is("1", "run", "a\nb\nc", "id: 1\nevent: run\ndata: a\ndata: b\ndata: c\n\n"));
    CHECK(fmt_is(NULL, NULL, "a\r\nb", "data: a\ndata: b\n\n"));
    CHECK(fmt_is(NULL, NULL, "a\rb", "data: a\ndata: b\n\n"));
    CHECK(fmt_is(NULL, NULL, "a\n\nb", "data: a\ndata: \ndata: b\n\n"));
    /* a trailing break is an empty last line, so the payload round-trips */
    CHECK(fmt_is(NULL, NULL, "a\n", "data: a\ndata: \n\n"));
    CHECK(fmt_is(NULL, NULL, "a\r\n", "data: a\ndata: \n\n"));
    /* data is length-delimited: an embedded NUL ends nothing */
    char out[64];
    int n = sl_sse_format(out, sizeof out, NULL, NULL, "a\0b", 3);
    CHECK(n == 11 && memcmp(out, "data: a\0b\n\n", 11) == 0);

    /* id and event lines cannot carry line breaks */
    CHECK(sl_sse_format(out, sizeof out, "1\n2", "run", "x", 1) == SL_EINVAL);
    CHECK(sl_sse_format(out, sizeof out, "1", "r\run", "x", 1) == SL_EINVAL);
    CHECK(sl_sse_format(out, sizeof out, "1", "run", NULL, 3) == SL_EINVAL);

    /* snprintf semantics: the needed length, the prefix that fits, always NUL-terminated */
    char small[8];
    memset(small, 'Z', sizeof small);
    n = sl_sse_format(small, sizeof small, "123", "run", "data", 4);
    CHECK(n == (int)strlen("id: 123\nevent: run\ndata: data\n\n"));
    CHECK(strcmp(small, "id: 123") == 0);
    CHECK(sl_sse_format(NULL, 0, "1", NULL, "x", 1) == (int)strlen("id: 1\ndata: x\n\n"));

    /* comments */
    CHECK(sl_sse_format_comment(out, sizeof out, "keepalive") == 13);
    CHECK(strcmp(out, ": keepalive\n\n") == 0);
    CHECK(sl_sse_format_comment(out, sizeof out, "a\nb") == SL_EINVAL);
}

/* ---- pubsub, local only ---- */

typedef struct rec_s {
    int calls;
    int closed;
    char last[128];
    uint64_t ids[16];
    sl_pubsub_t *ps;
    sl_pubsub_sub_t *sub;
    sl_pubsub_sub_t *victim; /* unsubscribed from inside the callback */
} rec_t;

static void rec_cb(const char *channel, const char *msg, size_t len, uint64_t msg_id, void *arg)
{
    rec_t *r = arg;
    (void)channel;
    if (!msg) {
        r->closed++;
        sl_pubsub_unsubscribe(r->ps, r->sub);
        r->sub = NULL;
        return;
    }
    if (r->calls < 16)
        r->ids[r->calls] = msg_id;
    r->calls++;
    snprintf(r->last, sizeof r->last, "%.*s", (int)len, msg);
    if (r->victim) {
        sl_pubsub_unsubscribe(r->ps, r->victim);
        r->victim = NULL;
    }
}

static void test_pubsub_local(void)
{
    struct event_base *base = event_base_new();
    sl_pubsub_t *ps = NULL;
    /* a Redis bridge needs a pattern to subscribe to */
    CHECK(sl_pubsub_new(base, NULL, "redis://127.0.0.1:1", NULL, "inst-a", &ps) == SL_EINVAL);
    CHECK(sl_pubsub_new(base, NULL, "redis://127.0.0.1:1", "", "inst-a", &ps) == SL_EINVAL);
    CHECK(ps == NULL);
    CHECK(sl_pubsub_new(base, NULL, NULL, NULL, "inst-a", &ps) == 0);
    rec_t a = {0}, b = {0}, other = {0};
    a.ps = b.ps = other.ps = ps;
    CHECK(sl_pubsub_subscribe(ps, "sluice:ds:1", rec_cb, &a, &a.sub) == 0);
    CHECK(sl_pubsub_subscribe(ps, "sluice:ds:1", rec_cb, &b, &b.sub) == 0);
    CHECK(sl_pubsub_subscribe(ps, "sluice:ds:2", rec_cb, &other, &other.sub) == 0);
    CHECK(sl_pubsub_subscribers(ps) == 3);
    CHECK(sl_pubsub_redis_up(ps) == 0);

    /* never delivered inside the call */
    CHECK(sl_pubsub_publish(ps, "sluice:ds:1", "one", 3) == 0);
    CHECK(sl_pubsub_publish(ps, "sluice:ds:1", "two", 3) == 0);
    CHECK(sl_pubsub_publish(ps, "sluice:ds:9", "nobody", 6) == 0);
    CHECK(a.calls == 0 && b.calls == 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(a.calls == 2 && b.calls == 2 && other.calls == 0);
    CHECK(strcmp(a.last, "two") == 0);
    /* one id per message, shared by its subscribers */
    CHECK(a.ids[0] == b.ids[0] && a.ids[1] == b.ids[1] && a.ids[0] != a.ids[1]);

    /* a subscriber unsubscribes the next one in the middle of a delivery */
    b.victim = a.sub; /* newest first: b is called before a */
    a.sub = NULL;
    CHECK(sl_pubsub_publish(ps, "sluice:ds:1", "three", 5) == 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(b.calls == 3);
    CHECK(a.calls == 2); /* unsubscribed before its turn: not called */
    CHECK(sl_pubsub_subscribers(ps) == 2);
    CHECK(sl_pubsub_publish(ps, "sluice:ds:1", "four", 4) == 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(b.calls == 4 && a.calls == 2);
    CHECK(strcmp(b.last, "four") == 0);

    /* bad channels */
    CHECK(sl_pubsub_publish(ps, "", "x", 1) == SL_EINVAL);
    char longch[300];
    memset(longch, 'c', sizeof longch - 1);
    longch[sizeof longch - 1] = '\0';
    CHECK(sl_pubsub_publish(ps, longch, "x", 1) == SL_EINVAL);

    /* shutdown: every subscriber is told once, new ones are refused */
    sl_pubsub_shutdown(ps);
    sl_pubsub_shutdown(ps);
    CHECK(a.closed == 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(b.closed == 1 && other.closed == 1 && a.closed == 0);
    CHECK(sl_pubsub_subscribers(ps) == 0);
    sl_pubsub_sub_t *late = NULL;
    CHECK(sl_pubsub_subscribe(ps, "sluice:ds:1", rec_cb, &a, &late) == SL_ECLOSED);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(b.closed == 1 && other.closed == 1);
    sl_pubsub_free(ps);
    event_base_free(base);
}

/* ---- pubsub over Redis: batches ---- */

typedef struct seq_s {
    int calls;
    char log[1024]; /* every message, "[len:msg]" each, in arrival order */
} seq_t;

static void seq_cb(const char *channel, const char *msg, size_t len, uint64_t msg_id, void *arg)
{
    seq_t *r = arg;
    (void)channel;
    (void)msg_id;
    if (!msg)
        return;
    r->calls++;
    size_t at = strlen(r->log);
    snprintf(r->log + at, sizeof r->log - at, "[%zu:%.*s]", len, (int)len, msg);
}

static void run_until_both(struct event_base *base, seq_t *a, seq_t *b, int target)
{
    int both = 0;
    double deadline = looptest_now_s() + 10;
    while (looptest_now_s() < deadline) {
        both = a->calls < b->calls ? a->calls : b->calls;
        if (both >= target)
            break;
        looptest_run_until(base, &both, target, 0.05);
    }
}

static void wait_up(struct event_base *base, sl_pubsub_t *a, sl_pubsub_t *b)
{
    int up = 0;
    for (int i = 0; i < 400 && !up; i++) {
        looptest_run_until(base, &up, 1, 0.05);
        up = sl_pubsub_redis_up(a) && sl_pubsub_redis_up(b);
    }
}

static void test_pubsub_batches(void)
{
    char url[64];
    pid_t pid = redistmp_open(url, sizeof url, NULL);
    if (pid == 0) {
        CHECK_SKIPPED("redis-server not installed: the Redis tests did not run");
        return;
    }
    CHECK(pid > 0);
    struct event_base *base = event_base_new();
    sl_redis_t *ra = NULL, *rb = NULL, *raw = NULL;
    sl_pubsub_t *a = NULL, *b = NULL;
    CHECK(sl_redis_new(base, url, &ra) == 0 && sl_redis_new(base, url, &rb) == 0 &&
          sl_redis_new(base, url, &raw) == 0);
    CHECK(sl_pubsub_new(base, ra, url, "sluice:ds:*", "inst-a", &a) == 0);
    CHECK(sl_pubsub_new(base, rb, url, "sluice:ds:*", "inst-b", &b) == 0);
    seq_t sa = {0}, sb = {0};
    sl_pubsub_sub_t *suba, *subb;
    CHECK(sl_pubsub_subscribe(a, "sluice:ds:1", seq_cb, &sa, &suba) == 0);
    CHECK(sl_pubsub_subscribe(b, "sluice:ds:1", seq_cb, &sb, &subb) == 0);
    wait_up(base, a, b);
    CHECK(sl_pubsub_redis_up(a) && sl_pubsub_redis_up(b));

    /* single, batch, single: both instances see every message once, in order;
     * a message may be empty or hold newlines and digits (frames are counted) */
    const char *msgs[] = {"two", "", "3\n4\nfive"};
    size_t lens[] = {3, 0, 8};
    CHECK(sl_pubsub_publish(a, "sluice:ds:1", "one", 3) == 0);
    CHECK(sl_pubsub_publish_many(a, "sluice:ds:1", msgs, lens, 3) == 0);
    CHECK(sl_pubsub_publish(a, "sluice:ds:1", "six", 3) == 0);
    CHECK(sa.calls == 0); /* never inside the call */
    run_until_both(base, &sa, &sb, 5);
    const char *want = "[3:one][3:two][0:][8:3\n4\nfive][3:six]";
    CHECK(strcmp(sa.log, want) == 0);
    CHECK(strcmp(sb.log, want) == 0);
    if (strcmp(sb.log, want) != 0)
        printf("  b got %s\n", sb.log);
    /* B's batch interleaved with A's singles: one order for both */
    sa.calls = sb.calls = 0;
    sa.log[0] = sb.log[0] = '\0';
    const char *bm[] = {"b1", "b2"};
    size_t bl[] = {2, 2};
    CHECK(sl_pubsub_publish(a, "sluice:ds:1", "a1", 2) == 0);
    CHECK(sl_pubsub_publish_many(b, "sluice:ds:1", bm, bl, 2) == 0);
    CHECK(sl_pubsub_publish(a, "sluice:ds:1", "a2", 2) == 0);
    run_until_both(base, &sa, &sb, 4);
    CHECK(sa.calls == 4 && strcmp(sa.log, sb.log) == 0);

    /* a foreign batch cut short: the whole frames before the cut are delivered, no more */
    sa.calls = sb.calls = 0;
    sa.log[0] = sb.log[0] = '\0';
    const char *bad = "inst-c 1:3\n3\nabc9\nxy";
    const char *argv[] = {"PUBLISH", "sluice:ds:1", bad};
    size_t argl[] = {7, 11, strlen(bad)};
    CHECK(sl_redis_command(raw, 3, argv, argl) == 0);
    CHECK(sl_pubsub_publish(a, "sluice:ds:1", "after", 5) == 0);
    run_until_both(base, &sa, &sb, 2);
    CHECK(strcmp(sa.log, "[3:abc][5:after]") == 0 && strcmp(sb.log, "[3:abc][5:after]") == 0);

    /* limits */
    CHECK(sl_pubsub_publish_many(a, "sluice:ds:1", msgs, lens, 0) == 0);
    CHECK(sl_pubsub_publish_many(a, "sluice:ds:1", msgs, lens, SL_PUBSUB_MAX_BATCH + 1) ==
          SL_EINVAL);
    const char *nullmsg[] = {NULL};
    size_t one = 1;
    CHECK(sl_pubsub_publish_many(a, "sluice:ds:1", nullmsg, &one, 1) == SL_EINVAL);

    sl_pubsub_unsubscribe(a, suba);
    sl_pubsub_unsubscribe(b, subb);
    sl_pubsub_free(a);
    sl_pubsub_free(b);
    sl_redis_free(ra);
    sl_redis_free(rb);
    sl_redis_free(raw);
    event_base_free(base);
    redistmp_stop(pid);
}

int main(void)
{
    test_format();
    test_pubsub_local();
    test_pubsub_batches();
    return check_summary_prefixed("test_sse: ");
}
