/*
 * workq.h — a small pool of worker threads for blocking work (disk I/O, fsync,
 * libmagic), so the event loop never blocks. Like libuv's threadpool.
 *
 * A job's work_fn runs on a worker thread; its done_cb then runs on the loop
 * thread, always on a later loop turn, exactly once. Jobs submitted to the same
 * sl_workq_serial_t run one at a time in submission order (used for the writes
 * of one stored object); other jobs run in any order.
 */
#ifndef SL_WORKQ_H
#define SL_WORKQ_H

#include <event2/event.h>

typedef struct sl_workq_s sl_workq_t;

/** Runs on a worker thread. Must not touch loop-owned state. */
typedef void (*sl_work_fn)(void *arg);
/** Runs on the loop thread after work_fn returned. */
typedef void (*sl_work_done_cb)(void *arg);

/**
 * Creates a pool of `nthreads` (1..64) threads notifying `base` (borrowed; must
 * outlive the pool). Returns owned in *out. 0, SL_EINVAL, SL_ENOMEM or SL_EIO.
 * Workers block all signals, so signals go to the loop thread.
 */
int sl_workq_new(struct event_base *base, int nthreads, sl_workq_t **out);

/**
 * Queues a job. `arg` is borrowed by the pool until done_cb has run (the caller
 * keeps ownership). `serial` may be NULL; otherwise jobs with the same serial
 * key run in order, one at a time (the key is only compared, never read).
 * done_cb may be NULL. Done callbacks run in the order the jobs finished, so for
 * one serial key they run in submission order. Returns 0, SL_EINVAL (NULL
 * work_fn) or SL_ENOMEM (then no callback).
 */
int sl_workq_submit(sl_workq_t *q, const void *serial, sl_work_fn work_fn,
                    sl_work_done_cb done_cb, void *arg);

/** Jobs queued or running, or finished with their done_cb not yet run. */
size_t sl_workq_pending(const sl_workq_t *q);

/**
 * Waits for every queued job (running their done_cb, and the jobs those submit,
 * on the calling thread), stops threads, frees. Call from the loop thread,
 * never from inside a done_cb. NULL is a no-op.
 */
void sl_workq_free(sl_workq_t *q);

#endif
