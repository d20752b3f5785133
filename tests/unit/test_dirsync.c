/*
 * test_dirsync.c — unit tests for core/dirsync (shared directory syncs).
 * The sync is a stand-in that sleeps and records when it started and ended
 * on a shared tick counter, so each check is about order, not about time:
 *   - every caller returns only after a sync that started after it was
 *     called had ended, and 16 callers at once share a few syncs;
 *   - a failed sync fails every caller it covered (the one that ran it and
 *     the ones that waited for it), and the next caller's sync is new;
 *   - two directories do not share syncs.
 */
#include "core/dirsync.h"
#include "core/err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define MAX_SYNCS 64

static atomic_long ticks;
static long tick(void)
{
    return atomic_fetch_add(&ticks, 1) + 1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The stand-in sync: what it was asked, in order. */
static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    long start, end;
    char dir[16];
} syncs[MAX_SYNCS];
static int nsyncs;
static int sync_ms = 50;  /* how long one takes */
static int fail_call = 0; /* the 1-based call that fails (0: none) */
static atomic_int calls;  /* calls started */

static int fake_sync(const char *dir, void *arg)
{
    (void)arg;
    int call = atomic_fetch_add(&calls, 1) + 1;
    long start = tick();
    sleep_ms(sync_ms);
    long end = tick();
    pthread_mutex_lock(&rec_mu);
    if (nsyncs < MAX_SYNCS) {
        syncs[nsyncs].start = start;
        syncs[nsyncs].end = end;
        snprintf(syncs[nsyncs].dir, sizeof syncs[nsyncs].dir, "%s", dir);
        nsyncs++;
    }
    pthread_mutex_unlock(&rec_mu);
    return call == fail_call ? SL_EIO : 0;
}

static void reset(int ms, int fail)
{
    nsyncs = 0;
    sync_ms = ms;
    fail_call = fail;
    atomic_store(&calls, 0);
}

typedef struct caller_s {
    sl_dirsync_t *ds;
    const char *dir;
    pthread_t th;
    long called, returned;
    int rc;
} caller_t;

static void *caller_main(void *arg)
{
    caller_t *c = arg;
    c->called = tick();
    c->rc = sl_dirsync_wait(c->ds, c->dir);
    c->returned = tick();
    return NULL;
}

/* A sync of c's directory started after c was called and ended before it returned. */
static int covered(const caller_t *c)
{
    for (int i = 0; i < nsyncs; i++)
        if (strcmp(syncs[i].dir, c->dir) == 0 && syncs[i].start > c->called &&
            syncs[i].end < c->returned)
            return 1;
    return 0;
}

static void test_callers_share_syncs_that_started_after_them(void)
{
    enum { N = 16 };
    sl_dirsync_t *ds = NULL;
    CHECK_EQ(sl_dirsync_new(fake_sync, NULL, &ds), 0);
    reset(50, 0);
    caller_t c[N];
    for (int i = 0; i < N; i++) {
        c[i] = (caller_t){.ds = ds, .dir = "/d"};
        pthread_create(&c[i].th, NULL, caller_main, &c[i]);
    }
    for (int i = 0; i < N; i++)
        pthread_join(c[i].th, NULL);
    int all_ok = 1, all_covered = 1;
    for (int i = 0; i < N; i++) {
        all_ok &= c[i].rc == 0;
        all_covered &= covered(&c[i]);
    }
    CHECK(all_ok);
    CHECK(all_covered);
    CHECK(nsyncs >= 1);
    CHECK(nsyncs < N); /* shared: 2 or 3 when the threads start together */
    CHECK_EQ(sl_dirsync_count(ds), nsyncs);
    /* A caller after all that gets a sync of its own (nothing is cached). */
    caller_t late = {.ds = ds, .dir = "/d"};
    caller_main(&late);
    CHECK_EQ(late.rc, 0);
    CHECK(covered(&late));
    sl_dirsync_free(ds);
}

static void test_a_failed_sync_fails_every_caller_it_covered(void)
{
    sl_dirsync_t *ds = NULL;
    CHECK_EQ(sl_dirsync_new(fake_sync, NULL, &ds), 0);
    reset(300, 2);
    /* A runs the first sync (it succeeds); B and C are called while it runs, so
     * neither is covered by it, and one of them runs the second, which fails. */
    caller_t a = {.ds = ds, .dir = "/d"}, b = a, cc = a;
    pthread_create(&a.th, NULL, caller_main, &a);
    while (atomic_load(&calls) < 1)
        sleep_ms(1);
    pthread_create(&b.th, NULL, caller_main, &b);
    pthread_create(&cc.th, NULL, caller_main, &cc);
    pthread_join(a.th, NULL);
    pthread_join(b.th, NULL);
    pthread_join(cc.th, NULL);
    CHECK_EQ(a.rc, 0);
    CHECK_EQ(b.rc, SL_EIO);
    CHECK_EQ(cc.rc, SL_EIO);
    CHECK_EQ(nsyncs, 2);
    /* The next caller is not answered by the failure: its own sync succeeds. */
    reset(1, 0);
    caller_t d = {.ds = ds, .dir = "/d"};
    caller_main(&d);
    CHECK_EQ(d.rc, 0);
    CHECK(covered(&d));
    sl_dirsync_free(ds);
}

static void test_directories_do_not_share(void)
{
    sl_dirsync_t *ds = NULL;
    CHECK_EQ(sl_dirsync_new(fake_sync, NULL, &ds), 0);
    reset(100, 0);
    caller_t a = {.ds = ds, .dir = "/a"}, b = {.ds = ds, .dir = "/b"};
    pthread_create(&a.th, NULL, caller_main, &a);
    pthread_create(&b.th, NULL, caller_main, &b);
    pthread_join(a.th, NULL);
    pthread_join(b.th, NULL);
    CHECK_EQ(a.rc, 0);
    CHECK_EQ(b.rc, 0);
    CHECK(covered(&a));
    CHECK(covered(&b));
    CHECK_EQ(nsyncs, 2);
    sl_dirsync_free(ds);
}

int main(void)
{
    test_callers_share_syncs_that_started_after_them();
    test_a_failed_sync_fails_every_caller_it_covered();
    test_directories_do_not_share();
    CHECK_EQ(sl_dirsync_new(NULL, NULL, &(sl_dirsync_t *){NULL}), SL_EINVAL);
    /* A second reference keeps it usable after the first owner let go. */
    sl_dirsync_t *ds = NULL;
    CHECK_EQ(sl_dirsync_new(fake_sync, NULL, &ds), 0);
    CHECK(sl_dirsync_ref(ds) == ds);
    sl_dirsync_free(ds);
    reset(1, 0);
    caller_t c = {.ds = ds, .dir = "/r"};
    caller_main(&c);
    CHECK_EQ(c.rc, 0);
    sl_dirsync_free(ds);
    return check_summary_prefixed("test_dirsync: ");
}
