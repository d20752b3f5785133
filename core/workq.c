/*
 * workq.c — the worker pool behind core/workq.h.
 *
 * N pthreads take jobs from one mutex+condvar queue. A finished job moves to a
 * "done" list and the loop is woken through an eventfd watched by a libevent
 * event; the loop then runs the done callbacks in completion order. Only the
 * loop thread touches libevent, so evthread_use_pthreads() is not needed.
 *
 * Serial keys: while a job with key K is ready or running, later jobs with key K
 * wait in K's chain (a FIFO in a small hash table) instead of the ready queue.
 * When the running one finishes, the worker moves the chain's head to the ready
 * queue; when the chain is empty it is removed. So a chain holds no thread while
 * it waits, and never blocks unrelated jobs.
 */
#include "workq.h"
#include "err.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SL_WORKQ_MAX_THREADS 64
#define SERIAL_BUCKETS 64 /* chains exist only while a key has work in flight: few */

typedef struct job_s {
    struct job_s *next;
    const void *serial;
    sl_work_fn work_fn;
    sl_work_done_cb done_cb;
    void *arg;
} job_t;

typedef struct jobq_s {
    job_t *head, *tail;
} jobq_t;

/* A serial key with a job ready or running; `waiting` are the jobs behind it. */
typedef struct chain_s {
    struct chain_s *next; /* bucket link */
    const void *key;
    jobq_t waiting;
} chain_t;

struct sl_workq_s {
    struct event_base *base; /* borrowed */
    struct event *ev;        /* EV_READ on efd, runs on_notify on the loop */
    int efd;

    pthread_mutex_t mu;       /* guards everything below up to `threads` */
    pthread_cond_t work_cond; /* workers: a job is ready or stop is set */
    pthread_cond_t idle_cond; /* sl_workq_free: nbusy reached 0 */
    jobq_t ready;
    jobq_t done;
    chain_t *chains[SERIAL_BUCKETS];
    size_t nbusy; /* jobs submitted whose work_fn has not returned */
    int nidle;    /* workers waiting on work_cond */
    int stop;

    pthread_t *threads;
    int nthreads;
    atomic_size_t pending; /* jobs submitted whose done_cb has not run yet */
};

static void jobq_push(jobq_t *jq, job_t *j)
{
    j->next = NULL;
    if (jq->tail)
        jq->tail->next = j;
    else
        jq->head = j;
    jq->tail = j;
}

static job_t *jobq_pop(jobq_t *jq)
{
    job_t *j = jq->head;
    if (j) {
        jq->head = j->next;
        if (!jq->head)
            jq->tail = NULL;
        j->next = NULL;
    }
    return j;
}

static size_t serial_bucket(const void *key)
{
    uintptr_t v = (uintptr_t)key;
    return (size_t)((v >> 4) ^ (v >> 12)) % SERIAL_BUCKETS;
}

/* Returns the chain of key, or NULL. If unlink is set, removes it from its bucket. */
static chain_t *chain_find(sl_workq_t *q, const void *key, int unlink)
{
    chain_t **pp = &q->chains[serial_bucket(key)];
    for (; *pp; pp = &(*pp)->next) {
        chain_t *c = *pp;
        if (c->key == key) {
            if (unlink)
                *pp = c->next;
            return c;
        }
    }
    return NULL;
}

static void notify_loop(sl_workq_t *q)
{
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(q->efd, &one, sizeof one);
    } while (r < 0 && errno == EINTR);
    /* EAGAIN means the counter is saturated: the loop will wake anyway. */
}

static void *worker_main(void *arg)
{
    sl_workq_t *q = arg;

    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->ready.head && !q->stop) {
            q->nidle++;
            pthread_cond_wait(&q->work_cond, &q->mu);
            q->nidle--;
        }
        job_t *j = jobq_pop(&q->ready);
        if (!j)
            break; /* stop and nothing left */
        pthread_mutex_unlock(&q->mu);

        j->work_fn(j->arg);

        chain_t *dead = NULL;
        int wake = 0;
        pthread_mutex_lock(&q->mu);
        if (j->serial) {
            chain_t *c = chain_find(q, j->serial, 0);
            job_t *next = c ? jobq_pop(&c->waiting) : NULL;
            if (next) {
                jobq_push(&q->ready, next);
                wake = q->nidle > 0;
            } else if (c) {
                dead = chain_find(q, j->serial, 1);
            }
        }
        q->nbusy--;
        int was_empty = q->done.head == NULL;
        jobq_push(&q->done, j);
        if (q->nbusy == 0)
            pthread_cond_broadcast(&q->idle_cond);
        pthread_mutex_unlock(&q->mu);

        /* Signalled after the unlock: a woken worker must not find the mutex
         * still held and go back to sleep on it (a convoy). */
        if (wake)
            pthread_cond_signal(&q->work_cond);
        free(dead);
        /* One wake-up per batch: the loop reads the eventfd before it takes the
         * done list, so a job appended to an empty list always gets its own. */
        if (was_empty)
            notify_loop(q);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* Runs the done callbacks of a detached list, in completion order (loop thread). */
static void run_done(sl_workq_t *q, job_t *j)
{
    while (j) {
        job_t *next = j->next;
        atomic_fetch_sub(&q->pending, 1);
        if (j->done_cb)
            j->done_cb(j->arg);
        free(j);
        j = next;
    }
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    sl_workq_t *q = arg;
    uint64_t v;
    ssize_t r;
    do {
        r = read(fd, &v, sizeof v);
    } while (r < 0 && errno == EINTR);

    pthread_mutex_lock(&q->mu);
    job_t *list = q->done.head;
    q->done.head = q->done.tail = NULL;
    pthread_mutex_unlock(&q->mu);
    run_done(q, list);
}

int sl_workq_new(struct event_base *base, int nthreads, sl_workq_t **out)
{
    int err = 0, mu_ok = 0, wc_ok = 0, ic_ok = 0;
    sl_workq_t *q = NULL;

    if (!base || !out || nthreads <= 0 || nthreads > SL_WORKQ_MAX_THREADS)
        return SL_EINVAL;
    q = calloc(1, sizeof *q);
    if (!q)
        return SL_ENOMEM;
    q->base = base;
    q->efd = -1;
    atomic_init(&q->pending, 0);
    q->threads = calloc((size_t)nthreads, sizeof *q->threads);
    if (!q->threads) {
        err = SL_ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&q->mu, NULL) != 0) {
        err = SL_ENOMEM;
        goto fail;
    }
    mu_ok = 1;
    if (pthread_cond_init(&q->work_cond, NULL) != 0) {
        err = SL_ENOMEM;
        goto fail;
    }
    wc_ok = 1;
    if (pthread_cond_init(&q->idle_cond, NULL) != 0) {
        err = SL_ENOMEM;
        goto fail;
    }
    ic_ok = 1;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0) {
        err = SL_EIO;
        goto fail;
    }
    q->ev = event_new(base, q->efd, EV_READ | EV_PERSIST, on_notify, q);
    if (!q->ev || event_add(q->ev, NULL) != 0) {
        err = SL_ENOMEM;
        goto fail;
    }

    /* Workers block every signal so they are delivered to the loop thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (; q->nthreads < nthreads; q->nthreads++) {
        if (pthread_create(&q->threads[q->nthreads], NULL, worker_main, q) != 0) {
            err = SL_ENOMEM;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        goto fail;

    *out = q;
    return 0;

fail:
    if (q->nthreads > 0) {
        pthread_mutex_lock(&q->mu);
        q->stop = 1;
        pthread_cond_broadcast(&q->work_cond);
        pthread_mutex_unlock(&q->mu);
        for (int i = 0; i < q->nthreads; i++)
            pthread_join(q->threads[i], NULL);
    }
    if (q->ev)
        event_free(q->ev);
    if (q->efd >= 0)
        close(q->efd);
    if (ic_ok)
        pthread_cond_destroy(&q->idle_cond);
    if (wc_ok)
        pthread_cond_destroy(&q->work_cond);
    if (mu_ok)
        pthread_mutex_destroy(&q->mu);
    free(q->threads);
    free(q);
    return err;
}

int sl_workq_submit(sl_workq_t *q, const void *serial, sl_work_fn work_fn, sl_work_done_cb done_cb,
                    void *arg)
{
    job_t *j = NULL;
    chain_t *spare = NULL;

    if (!q || !work_fn)
        return SL_EINVAL;
    j = calloc(1, sizeof *j);
    /* Allocated up front so that nothing under the lock can fail. */
    if (serial)
        spare = calloc(1, sizeof *spare);
    if (!j || (serial && !spare)) {
        free(j);
        free(spare);
        return SL_ENOMEM;
    }
    j->serial = serial;
    j->work_fn = work_fn;
    j->done_cb = done_cb;
    j->arg = arg;

    int wake = 0;
    pthread_mutex_lock(&q->mu);
    chain_t *c = serial ? chain_find(q, serial, 0) : NULL;
    if (c) {
        jobq_push(&c->waiting, j); /* behind the key's running job */
    } else {
        if (serial) {
            spare->key = serial;
            size_t b = serial_bucket(serial);
            spare->next = q->chains[b];
            q->chains[b] = spare;
            spare = NULL;
        }
        jobq_push(&q->ready, j);
        wake = q->nidle > 0; /* else a busy worker takes it when it is done */
    }
    q->nbusy++;
    atomic_fetch_add(&q->pending, 1);
    pthread_mutex_unlock(&q->mu);
    /* After the unlock, and only if a worker sleeps: the woken one gets the
     * mutex at once instead of blocking on it while the loop still holds it. */
    if (wake)
        pthread_cond_signal(&q->work_cond);

    free(spare);
    return 0;
}

size_t sl_workq_pending(const sl_workq_t *q)
{
    return q ? atomic_load(&q->pending) : 0;
}

void sl_workq_free(sl_workq_t *q)
{
    if (!q)
        return;

    /* Drain: wait for every job, run its done_cb here (we are the loop thread),
     * and repeat, since a done_cb may submit more work. */
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->nbusy > 0)
            pthread_cond_wait(&q->idle_cond, &q->mu);
        job_t *list = q->done.head;
        if (!list)
            break;
        q->done.head = q->done.tail = NULL;
        pthread_mutex_unlock(&q->mu);
        run_done(q, list);
        pthread_mutex_lock(&q->mu);
    }
    q->stop = 1;
    pthread_cond_broadcast(&q->work_cond);
    pthread_mutex_unlock(&q->mu);

    for (int i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    event_free(q->ev);
    close(q->efd);
    pthread_cond_destroy(&q->idle_cond);
    pthread_cond_destroy(&q->work_cond);
    pthread_mutex_destroy(&q->mu);
    free(q->threads);
    free(q);
}
