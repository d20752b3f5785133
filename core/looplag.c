/*
 * looplag.c — the loop lag probe (looplag.h): a one-shot timer, re-armed at
 * every wake-up, and the monotonic clock read when it is armed and when it
 * fires. Re-armed from the wake-up rather than kept on a fixed grid: a long
 * stall then counts once, not once per period it covered.
 */
#include "core/looplag.h"

#include <stdlib.h>
#include <time.h>

#include "core/err.h"
#include "core/metrics.h"

struct sl_looplag_s {
    struct event *timer;
    struct timeval period;
    double period_s;
    double due;    /* monotonic seconds when the timer should fire */
    double max_s;  /* the largest lag seen */
    unsigned long long count;
    sl_metric_t *hist; /* owned by the registry */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void arm(sl_looplag_t *l)
{
    l->due = now_s() + l->period_s;
    evtimer_add(l->timer, &l->period);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_looplag_t *l = arg;
    double lag = now_s() - l->due;
    (void)fd;
    (void)what;
    if (lag < 0)
        lag = 0; /* libevent may fire a timer a little early (it rounds to ms) */
    if (lag > l->max_s)
        l->max_s = lag;
    l->count++;
    if (l->hist)
        sl_metrics_observe(l->hist, lag);
    arm(l);
}

static double read_max(void *arg)
{
    return ((const sl_looplag_t *)arg)->max_s;
}

int sl_looplag_start(struct event_base *base, int period_ms, sl_looplag_t **out)
{
    static const double buckets[] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                                     0.1,   0.25,  0.5,   1,    2.5,  5};
    sl_looplag_t *l;
    *out = NULL;
    if (base == NULL || period_ms < 1)
        return SL_EINVAL;
    if ((l = calloc(1, sizeof *l)) == NULL)
        return SL_ENOMEM;
    if ((l->timer = evtimer_new(base, tick_cb, l)) == NULL) {
        free(l);
        return SL_ENOMEM;
    }
    l->period.tv_sec = period_ms / 1000;
    l->period.tv_usec = (period_ms % 1000) * 1000;
    l->period_s = period_ms / 1000.0;
    l->hist = sl_metrics_histogram("sluice_event_loop_lag_seconds",
                                   "How much later than asked the event loop ran its "
                                   "periodic probe timer: its stalls",
                                   NULL, buckets, (int)(sizeof buckets / sizeof buckets[0]));
    sl_metrics_gauge_fn("sluice_event_loop_lag_max_seconds",
                        "The largest event loop lag since the process started", read_max, l);
    arm(l);
    *out = l;
    return 0;
}

double sl_looplag_max_s(const sl_looplag_t *l)
{
    return l ? l->max_s : 0;
}

unsigned long long sl_looplag_count(const sl_looplag_t *l)
{
    return l ? l->count : 0;
}

void sl_looplag_free(sl_looplag_t *l)
{
    if (l == NULL)
        return;
    event_free(l->timer);
    free(l);
}
