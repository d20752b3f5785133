/* Loop helpers for the unit tests that drive a libevent loop by hand
 * (test_ratelimit, test_service). Header-only, like check.h.
 *
 *     looptest_run_until(base, &n, 3, 5.0);   // loop until n >= 3, at most 5 s
 */
#ifndef SL_TESTS_UNIT_LOOPTEST_H
#define SL_TESTS_UNIT_LOOPTEST_H

#include <event2/event.h>
#include <time.h>

/* Monotonic seconds. */
static double looptest_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void looptest_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until *counter reaches target or `secs` pass (a 10 ms tick
 * keeps it turning when nothing else is pending). */
static void looptest_run_until(struct event_base *base, const int *counter, int target, double secs)
{
    double deadline = looptest_now_s() + secs;
    struct event *tick = event_new(base, -1, EV_PERSIST, looptest_tick_cb, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    while (*counter < target && looptest_now_s() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
}

#endif
