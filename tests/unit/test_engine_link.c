/*
 * test_engine_link.c — core/engine_link: the metrics merge, the shared page
 * across a fork, messages from several senders.
 */
#include "core/engine_link.h"
#include "core/err.h"
#include "tests/unit/check.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_merge(void)
{
    const char *own = "# HELP a_total A\n# TYPE a_total counter\na_total{route=\"x\"} 1\n"
                      "# HELP pg_up Up\n# TYPE pg_up gauge\npg_up 4\n";
    const char *eng = "# HELP pg_up Up\n# TYPE pg_up gauge\npg_up 2\n"
                      "# HELP runs Runs\n# TYPE runs gauge\nruns{state=\"queued\"} 3\n"
                      "# HELP h Hist\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\n";
    const char *want = "# HELP a_total A\n# TYPE a_total counter\na_total{route=\"x\"} 1\n"
                       "# HELP pg_up Up\n# TYPE pg_up gauge\npg_up 4\npg_up{role=\"engine\"} 2\n"
                       "# HELP runs Runs\n# TYPE runs gauge\nruns{state=\"queued\"} 3\n"
                       "# HELP h Hist\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\n";
    size_t len = 0;
    char *got = sl_elink_merge_metrics(own, strlen(own), eng, strlen(eng), &len);
    CHECK_STREQ(got, want);
    CHECK_EQ(len, strlen(want));
    free(got);
    /* a shared histogram: colliding lines labelled, before their other labels */
    const char *own2 = "# HELP h Hist\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_count 0\n";
    const char *eng2 = "# HELP h Hist\n# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_count 5\n";
    got = sl_elink_merge_metrics(own2, strlen(own2), eng2, strlen(eng2), &len);
    CHECK_STREQ(got, "# HELP h Hist\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_count 0\n"
                     "h_bucket{role=\"engine\",le=\"1\"} 5\nh_count{role=\"engine\"} 5\n");
    free(got);
    /* a shared family, series only the engine has: kept as they are */
    const char *own3 = "# HELP d D\n# TYPE d counter\nd{limit=\"reads\"} 7\n";
    const char *eng3 = "# HELP d D\n# TYPE d counter\nd{limit=\"service_tika\"} 3\n"
                       "d{limit=\"reads\"} 1\n";
    got = sl_elink_merge_metrics(own3, strlen(own3), eng3, strlen(eng3), &len);
    CHECK_STREQ(got, "# HELP d D\n# TYPE d counter\nd{limit=\"reads\"} 7\n"
                     "d{limit=\"service_tika\"} 3\nd{role=\"engine\",limit=\"reads\"} 1\n");
    free(got);
    /* nothing from the engine: our text unchanged */
    got = sl_elink_merge_metrics(own, strlen(own), "", 0, &len);
    CHECK_STREQ(got, own);
    free(got);
}

static void test_page_across_fork(void)
{
    sl_elink_t *l = NULL;
    char *steps = NULL, *metrics = NULL;
    size_t mlen = 0;
    int pid = -1, ready = -1;
    double age = 0;
    CHECK_EQ(sl_elink_new(2, &l), 0);
    CHECK_EQ(sl_elink_read(l, &steps, &metrics, &mlen), SL_ENOTFOUND); /* nothing yet */
    sl_elink_engine_state(l, &pid, &age, &ready);
    CHECK_EQ(pid, 0);
    CHECK_EQ(ready, 0);
    pid_t child = fork();
    if (child == 0) { /* the "engine" publishes twice */
        sl_elink_publish(l, "{\"p\":[\"a\"]}", "m 1\n", 4);
        sl_elink_publish(l, "{\"p\":[\"a\",\"b\"]}", "m 2\n", 4);
        _exit(0);
    }
    sl_elink_set_engine_pid(l, (int)child);
    int st;
    waitpid(child, &st, 0);
    CHECK_EQ(sl_elink_generation(l), 2);
    sl_elink_engine_state(l, &pid, &age, &ready);
    CHECK_EQ(pid, (int)child);
    CHECK_EQ(ready, 1);
    CHECK(age >= 0 && age < 5);
    CHECK_EQ(sl_elink_read(l, &steps, &metrics, &mlen), 0);
    CHECK_STREQ(steps, "{\"p\":[\"a\",\"b\"]}");
    CHECK_STREQ(metrics, "m 2\n");
    CHECK_EQ(mlen, 4);
    free(steps);
    free(metrics);
    sl_elink_set_engine_pid(l, 0); /* a restart clears "ready" */
    sl_elink_engine_state(l, &pid, &age, &ready);
    CHECK_EQ(pid, 0);
    CHECK_EQ(ready, 0);
    sl_elink_free(l);
}

static int nmsg;
static char msgs[8][SL_ELINK_MSG_MAX];

static void msg_cb(const char *msg, void *arg)
{
    if (nmsg < 8)
        snprintf(msgs[nmsg++], sizeof msgs[0], "%s", msg);
    if (nmsg == 3)
        event_base_loopbreak(arg);
}

static void test_messages(void)
{
    sl_elink_t *l = NULL;
    struct event_base *base = event_base_new();
    CHECK_EQ(sl_elink_new(2, &l), 0);
    for (int i = 0; i < 2; i++) { /* two "HTTP processes" */
        if (fork() == 0) {
            sl_elink_become(l, 0, i);
            sl_elink_send(l, i ? "cancel 00000000-0000-0000-0000-000000000001" : "kick");
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {
    }
    CHECK_EQ(sl_elink_send(l, "metrics"), 0);
    char big[SL_ELINK_MSG_MAX + 1];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_EQ(sl_elink_send(l, big), SL_EIO); /* too long: refused, not cut */
    CHECK_EQ(sl_elink_listen(l, base, msg_cb, base), 0);
    CHECK_EQ(sl_elink_listen(l, base, msg_cb, base), SL_EINVAL);
    event_base_dispatch(base);
    CHECK_EQ(nmsg, 3);
    int kick = 0, cancel = 0, metrics = 0;
    for (int i = 0; i < nmsg; i++) {
        kick += strcmp(msgs[i], "kick") == 0;
        cancel += strcmp(msgs[i], "cancel 00000000-0000-0000-0000-000000000001") == 0;
        metrics += strcmp(msgs[i], "metrics") == 0;
    }
    CHECK(kick == 1 && cancel == 1 && metrics == 1);
    sl_elink_free(l);
    event_base_free(base);
}

static int nev;

static void event_cb(const char *channel, const char *msg, size_t len, void *arg)
{
    CHECK_STREQ(channel, "sluice:ds:x");
    CHECK(len == 5 && memcmp(msg, "{\"a\"}", 5) == 0);
    nev++;
    event_base_loopbreak(arg);
}

/* Events forwarded by the engine reach every HTTP process. */
static void test_forwarded_events(void)
{
    sl_elink_t *l = NULL;
    CHECK_EQ(sl_elink_new(2, &l), 0);
    CHECK_EQ(sl_elink_listen_events(l, NULL, event_cb, NULL), SL_EINVAL); /* not an HTTP process */
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        if ((kids[i] = fork()) == 0) {
            struct event_base *base = event_base_new();
            sl_elink_become(l, 0, i);
            nev = 0;
            int ok = sl_elink_listen_events(l, base, event_cb, base) == 0;
            event_base_dispatch(base);
            sl_elink_free(l);
            event_base_free(base);
            _exit(ok && nev == 1 && failed == 0 ? 0 : 1);
        }
    }
    sl_elink_become(l, 1, 0);
    sl_elink_forward_event(l, "sluice:ds:x", "{\"a\"}", 5);
    for (int i = 0; i < 2; i++) {
        int st = -1;
        waitpid(kids[i], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    sl_elink_free(l);
}

int main(void)
{
    test_forwarded_events();
    test_merge();
    test_page_across_fork();
    test_messages();
    return check_summary();
}
