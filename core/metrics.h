/*
 * metrics.h — a small Prometheus registry the rest of Sluice registers into.
 *
 * Counters, gauges and histograms, each with up to four labels. Single-threaded:
 * call only from the loop thread. Families are created once at start and live
 * until sl_metrics_reset(); series are created on first use. Rendering follows
 * the Prometheus text exposition format 0.0.4 (HELP, TYPE, escaped label values,
 * histogram _bucket{le=...}/_sum/_count).
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stddef.h>

typedef struct sl_metric_s sl_metric_t;

#define SL_METRICS_MAX_LABELS 4

/**
 * Registers a family. `name`, `help` and the label names are borrowed (copied).
 * `labels` is a comma-separated list ("route,status") or NULL/"" for none.
 * Registering the same name twice returns the existing family (NULL if it has
 * another type). Names follow Prometheus rules; "le" is reserved on histograms.
 * Returns a pointer owned by the registry (valid until sl_metrics_reset), or NULL.
 */
sl_metric_t *sl_metrics_counter(const char *name, const char *help, const char *labels);
sl_metric_t *sl_metrics_gauge(const char *name, const char *help, const char *labels);
/** `buckets` (copied, ascending, n <= 32) are the upper bounds; +Inf is implicit. */
sl_metric_t *sl_metrics_histogram(const char *name, const char *help, const char *labels,
                                  const double *buckets, int n);

/**
 * Updates the series with the given label values (as many as the family has
 * labels, in order; borrowed). Wrong arity is ignored.
 */
void sl_metrics_add(sl_metric_t *m, double delta, ...);      /* counter or gauge: += delta */
void sl_metrics_set(sl_metric_t *m, double value, ...);      /* gauge: = value */
void sl_metrics_observe(sl_metric_t *m, double value, ...);  /* histogram */

/*
 * C varargs carry no count, so the three calls above read label values up to a
 * NULL sentinel. These macros append it, which is what makes "wrong arity is
 * ignored" safe: sl_metrics_add(m, 1, "GET", "200") becomes
 * (sl_metrics_add)(m, 1, "GET", "200", NULL). Calling the functions directly
 * (parenthesised name or through a pointer) requires passing the NULL yourself.
 * A NULL label value therefore ends the list.
 */
#define sl_metrics_add(...) (sl_metrics_add)(__VA_ARGS__, (const char *)NULL)
#define sl_metrics_set(...) (sl_metrics_set)(__VA_ARGS__, (const char *)NULL)
#define sl_metrics_observe(...) (sl_metrics_observe)(__VA_ARGS__, (const char *)NULL)

/**
 * A gauge whose value is read at render time: fn(arg) for an unlabelled family.
 * `arg` is borrowed until reset.
 */
typedef double (*sl_metrics_read_fn)(void *arg);
sl_metric_t *sl_metrics_gauge_fn(const char *name, const char *help, sl_metrics_read_fn fn,
                                 void *arg);

/**
 * Renders every family into a malloc'd NUL-terminated string (returned owned;
 * free() it), length in *len. NULL on no memory.
 */
char *sl_metrics_render(size_t *len);

/** Frees every family (tests; shutdown). */
void sl_metrics_reset(void);

#endif
