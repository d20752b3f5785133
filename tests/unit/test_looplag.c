/*
 * test_looplag.c — core/looplag.c: the probe wakes at its period on an idle
 * loop, and a callback that holds the loop shows as a lag at least as long as
 * the part of the hold after the probe fell due (a lower bound: a slower
 * machine only adds to it), in the histogram and in the max.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "core/err.h"
#include "core/looplag.h"
#include "core/metrics.h"

#define CHECK_STREAM stdout
#include "check.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The value of the sample line that starts with `head` in text, or -1. */
static double sample(const char *text, const char *head)
{
    const char *p = text ? strstr(text, head) : NULL;
    return p ? strtod(p + strlen(head), NULL) : -1;
}

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
    double until = now_s() + *(const double *)arg;
    (void)fd;
    (void)what;
    while (now_s() < until)
        ; /* a callback that keeps the loop: what the probe is for */
}

static void test_probe(void)
{
    struct event_base *base = event_base_new();
    sl_looplag_t *l = NULL;
    CHECK(sl_looplag_start(base, 0, &l) == SL_EINVAL && l == NULL);
    CHECK(sl_looplag_start(NULL, 20, &l) == SL_EINVAL);
    CHECK(sl_looplag_start(base, 10, &l) == 0 && l != NULL);
    CHECK(sl_looplag_count(l) == 0 && sl_looplag_max_s(l) == 0);

    /* idle: it keeps waking (0.3 s at 10 ms: about 30 times) */
    struct timeval tv = {0, 300000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    unsigned long long idle = sl_looplag_count(l);
    CHECK(idle >= 10);

    /* a 100 ms hold: the probe, due within 10 ms of its start, is late by 90 ms or more */
    double hold = 0.1;
    struct event *h = evtimer_new(base, hold_cb, &hold);
    struct timeval soon = {0, 1000};
    evtimer_add(h, &soon);
    tv.tv_usec = 250000;
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    CHECK(sl_looplag_count(l) > idle);
    CHECK(sl_looplag_max_s(l) >= 0.09);

    size_t len = 0;
    char *text = sl_metrics_render(&len);
    CHECK(text != NULL);
    CHECK(text && strstr(text, "# TYPE sluice_event_loop_lag_seconds histogram") != NULL);
    /* the hold's wake-up is counted, but not in the 50 ms bucket */
    double under = sample(text, "sluice_event_loop_lag_seconds_bucket{le=\"0.05\"} ");
    double count = sample(text, "sluice_event_loop_lag_seconds_count ");
    CHECK(under >= 0 && count == (double)sl_looplag_count(l) && under < count);
    CHECK(text && strstr(text, "sluice_event_loop_lag_max_seconds ") != NULL);
    free(text);

    event_free(h);
    sl_metrics_reset();
    sl_looplag_free(l);
    sl_looplag_free(NULL);
    event_base_free(base);
}

int main(void)
{
    test_probe();
    return check_summary_prefixed("test_looplag: ");
}
