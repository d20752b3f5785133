/*
 * test_workq.c — unit tests for core/workq.c: jobs run on workers, done
 * callbacks on the loop thread on a later turn, serial keys keep order and do
 * not block unrelated jobs, and sl_workq_free drains.
 */
#include "core/err.h"
#include "core/workq.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static struct event_base *base;
static pthread_t loop_thread;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until *counter reaches target or 30 s pass. */
static void run_until(const int *counter, int target)
{
    double deadline = now_s() + 30;
    while (*counter < target && now_s() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
}

/* ---- many jobs ---- */

static atomic_int work_ran, work_on_loop;
static int done_count, done_off_loop;

static void count_work(void *arg)
{
    if (pthread_equal(pthread_self(), loop_thread))
        atomic_fetch_add(&work_on_loop, 1);
    atomic_fetch_add(&work_ran, 1);
}

static void count_done(void *arg)
{
    if (!pthread_equal(pthread_self(), loop_thread))
        done_off_loop++;
    done_count++;
}

static void test_many_jobs(void)
{
    sl_workq_t *q = NULL;
    CHECK(sl_workq_new(base, 4, &q) == 0);
    atomic_store(&work_ran, 0);
    atomic_store(&work_on_loop, 0);
    done_count = done_off_loop = 0;
    for (int i = 0; i < 1000; i++)
        CHECK(sl_workq_submit(q, NULL, count_work, count_done, NULL) == 0);
    CHECK(sl_workq_pending(q) > 0);
    /* Never called back from inside submit, even if the work already finished. */
    usleep(50 * 1000);
    CHECK(done_count == 0);
    run_until(&done_count, 1000);
    CHECK(done_count == 1000);
    CHECK(atomic_load(&work_ran) == 1000);
    CHECK(atomic_load(&work_on_loop) == 0);
    CHECK(done_off_loop == 0);
    CHECK(sl_workq_pending(q) == 0);
    sl_workq_free(q);
}

/* ---- serial keys ---- */

#define NKEYS 3
#define PER_KEY 200

typedef struct serial_job_s {
    int key, seq;
} serial_job_t;

static char serial_keys[NKEYS]; /* their addresses are the keys */
static atomic_int running[NKEYS], overlap;
static atomic_int work_pos[NKEYS];
static int work_order[NKEYS][PER_KEY];
static int done_order[NKEYS][PER_KEY], done_pos[NKEYS], serial_done;

static void serial_work(void *arg)
{
    serial_job_t *sj = arg;
    if (atomic_fetch_add(&running[sj->key], 1) != 0)
        atomic_fetch_add(&overlap, 1);
    if (sj->seq % 7 == 0)
        usleep(200); /* let other workers race for the key */
    int pos = atomic_fetch_add(&work_pos[sj->key], 1);
    if (pos < PER_KEY)
        work_order[sj->key][pos] = sj->seq;
    atomic_fetch_sub(&running[sj->key], 1);
}

static void serial_done_cb(void *arg)
{
    serial_job_t *sj = arg;
    if (done_pos[sj->key] < PER_KEY)
        done_order[sj->key][done_pos[sj->key]++] = sj->seq;
    serial_done++;
}

static void test_serial(void)
{
    static serial_job_t jobs[NKEYS][PER_KEY];
    sl_workq_t *q = NULL;
    CHECK(sl_workq_new(base, 4, &q) == 0);
    /* Interleave the keys and mix in unrelated jobs. */
    done_count = 0;
    for (int i = 0; i < PER_KEY; i++) {
        for (int k = 0; k < NKEYS; k++) {
            jobs[k][i].key = k;
            jobs[k][i].seq = i;
            CHECK(sl_workq_submit(q, &serial_keys[k], serial_work, serial_done_cb, &jobs[k][i]) ==
                  0);
        }
        CHECK(sl_workq_submit(q, NULL, count_work, count_done, NULL) == 0);
    }
    run_until(&serial_done, NKEYS * PER_KEY);
    run_until(&done_count, PER_KEY);
    CHECK(serial_done == NKEYS * PER_KEY);
    CHECK(done_count == PER_KEY);
    CHECK(atomic_load(&overlap) == 0);
    int work_in_order = 1, done_in_order = 1;
    for (int k = 0; k < NKEYS; k++) {
        CHECK(atomic_load(&work_pos[k]) == PER_KEY);
        CHECK(done_pos[k] == PER_KEY);
        for (int i = 0; i < PER_KEY; i++) {
            if (work_order[k][i] != i)
                work_in_order = 0;
            if (done_order[k][i] != i)
                done_in_order = 0;
        }
    }
    CHECK(work_in_order);
    CHECK(done_in_order);
    sl_workq_free(q);
}

/* ---- a waiting serial chain does not block unrelated jobs ---- */

static atomic_int gate, gate_seen_open;
static int unblock_done;

static void blocking_work(void *arg)
{
    double deadline = now_s() + 5;
    while (!atomic_load(&gate) && now_s() < deadline)
        usleep(1000);
    atomic_store(&gate_seen_open, atomic_load(&gate));
}

static void open_gate(void *arg)
{
    atomic_store(&gate, 1);
}

static void unblock_done_cb(void *arg)
{
    unblock_done++;
}

static void test_serial_does_not_block(void)
{
    static char key;
    sl_workq_t *q = NULL;
    CHECK(sl_workq_new(base, 2, &q) == 0);
    unblock_done = 0;
    /* Blocks one worker until the gate opens; the second job of the key waits in
     * its chain, holding no thread, so the unrelated job can open the gate. */
    CHECK(sl_workq_submit(q, &key, blocking_work, unblock_done_cb, NULL) == 0);
    CHECK(sl_workq_submit(q, &key, count_work, unblock_done_cb, NULL) == 0);
    CHECK(sl_workq_submit(q, NULL, open_gate, unblock_done_cb, NULL) == 0);
    run_until(&unblock_done, 3);
    CHECK(unblock_done == 3);
    CHECK(atomic_load(&gate_seen_open) == 1);
    sl_workq_free(q);
}

/* ---- free drains ---- */

static int drained;

static void slow_work(void *arg)
{
    usleep(1000);
}

static void drained_cb(void *arg)
{
    if (pthread_equal(pthread_self(), loop_thread))
        drained++;
}

static void resubmit_cb(void *arg)
{
    sl_workq_t *q = arg;
    drained++;
    /* A done_cb that queues more work while the pool drains. */
    CHECK(sl_workq_submit(q, NULL, slow_work, drained_cb, NULL) == 0);
}

static void test_free_drains(void)
{
    static char key;
    sl_workq_t *q = NULL;
    CHECK(sl_workq_new(base, 3, &q) == 0);
    drained = 0;
    for (int i = 0; i < 100; i++)
        CHECK(sl_workq_submit(q, i % 2 ? &key : NULL, slow_work, drained_cb, NULL) == 0);
    CHECK(sl_workq_submit(q, NULL, slow_work, resubmit_cb, q) == 0);
    CHECK(sl_workq_pending(q) == 101);
    sl_workq_free(q); /* no loop turn ran: free must run all 102 done_cbs */
    CHECK(drained == 102);

    CHECK(sl_workq_submit(NULL, NULL, slow_work, NULL, NULL) == SL_EINVAL);
    CHECK(sl_workq_new(base, 0, &q) == SL_EINVAL);
    sl_workq_free(NULL);
}

int main(void)
{
    loop_thread = pthread_self();
    base = event_base_new();
    if (!base) {
        fprintf(stderr, "event_base_new failed\n");
        return 1;
    }
    /* A ticking timer so EVLOOP_ONCE never sleeps forever if a test is broken. */
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 100 * 1000};
    event_add(tick, &tv);

    test_many_jobs();
    test_serial();
    test_serial_does_not_block();
    test_free_drains();

    event_free(tick);
    event_base_free(base);
    return check_summary();
}
