/*
 * looplag.h — how late the event loop runs: a probe that asks the loop to wake
 * it every `period_ms` and records how much later than asked it ran.
 *
 * A loop that nothing blocks wakes the probe within about a millisecond (epoll
 * counts in whole ms). A callback that keeps the loop for 40 ms delays the
 * probe by up to 40 ms when the probe falls due meanwhile, so the histogram
 * shows the loop's stalls (sampled: a stall shorter than the period is seen
 * with probability stall / period) and the gauge the worst one since start.
 * Every process of Sluice runs one (the engine's series carry role="engine" in
 * /metrics: core/engine_link.h). docs/internals/http.md, "Loop lag".
 *
 * Single-threaded: the loop thread only.
 */
#ifndef SL_LOOPLAG_H
#define SL_LOOPLAG_H

#include <event2/event.h>

/** The probe's period in every process: 50 wake-ups a second, fine enough for 20 ms stalls. */
#define SL_LOOPLAG_PERIOD_MS 20

typedef struct sl_looplag_s sl_looplag_t;

/**
 * Starts the probe on `base` (borrowed; must outlive the probe) and registers
 * its metrics: the histogram sluice_event_loop_lag_seconds and the gauge
 * sluice_event_loop_lag_max_seconds. Returns owned in *out; SL_EINVAL
 * (period_ms < 1) or SL_ENOMEM.
 */
int sl_looplag_start(struct event_base *base, int period_ms, sl_looplag_t **out);

/** The largest lag seen, in seconds (0 before the first wake-up). */
double sl_looplag_max_s(const sl_looplag_t *l);

/** How many wake-ups were measured. */
unsigned long long sl_looplag_count(const sl_looplag_t *l);

/** Stops the probe and frees it (NULL is a no-op). Its metrics stay registered. */
void sl_looplag_free(sl_looplag_t *l);

#endif
