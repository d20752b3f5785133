/*
 * dirsync.c — shared directory syncs (see dirsync.h).
 *
 * Per directory with callers inside sl_dirsync_wait, one entry counts
 * requests: `want` is the number of the last request registered, `done` the
 * last one a successful sync covers, `failed` the last one a failed sync
 * covers. A sync that starts takes `target = want` at that moment: every
 * request up to it registered after its change, so the sync covers them.
 * Requests that register while it runs get numbers past `target` and need
 * the next round, which the first of them to see no sync running starts.
 * So a caller waits for at most the sync in progress and one more. The entry
 * is freed when its last caller leaves.
 */
#include "dirsync.h"
#include "err.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry_s {
    struct entry_s *next;
    uint64_t want, done, failed;
    int err;     /* the error of the sync that set `failed` */
    int running; /* a caller is running the sync now */
    int users;   /* callers inside sl_dirsync_wait for this directory */
    char dir[];
} entry_t;

struct sl_dirsync_s {
    sl_dirsync_fn fn;
    void *arg;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;  /* a sync finished */
    entry_t *entries;
    uint64_t syncs;
    int refs;
};

int sl_dirsync_new(sl_dirsync_fn fn, void *arg, sl_dirsync_t **out)
{
    if (!fn || !out)
        return SL_EINVAL;
    sl_dirsync_t *ds = calloc(1, sizeof *ds);
    if (!ds)
        return SL_ENOMEM;
    if (pthread_mutex_init(&ds->mu, NULL) != 0) {
        free(ds);
        return SL_ENOMEM;
    }
    if (pthread_cond_init(&ds->cv, NULL) != 0) {
        pthread_mutex_destroy(&ds->mu);
        free(ds);
        return SL_ENOMEM;
    }
    ds->fn = fn;
    ds->arg = arg;
    ds->refs = 1;
    *out = ds;
    return 0;
}

sl_dirsync_t *sl_dirsync_ref(sl_dirsync_t *ds)
{
    pthread_mutex_lock(&ds->mu);
    ds->refs++;
    pthread_mutex_unlock(&ds->mu);
    return ds;
}

void sl_dirsync_free(sl_dirsync_t *ds)
{
    if (!ds)
        return;
    pthread_mutex_lock(&ds->mu);
    int last = --ds->refs == 0;
    pthread_mutex_unlock(&ds->mu);
    if (!last)
        return;
    while (ds->entries) { /* none: every caller frees its entry on the way out */
        entry_t *next = ds->entries->next;
        free(ds->entries);
        ds->entries = next;
    }
    pthread_cond_destroy(&ds->cv);
    pthread_mutex_destroy(&ds->mu);
    free(ds);
}

/* Under mu. */
static entry_t *entry_get(sl_dirsync_t *ds, const char *dir)
{
    for (entry_t *e = ds->entries; e; e = e->next)
        if (strcmp(e->dir, dir) == 0)
            return e;
    size_t n = strlen(dir);
    entry_t *e = calloc(1, sizeof *e + n + 1);
    if (!e)
        return NULL;
    memcpy(e->dir, dir, n + 1);
    e->next = ds->entries;
    ds->entries = e;
    return e;
}

/* Under mu. */
static void entry_put(sl_dirsync_t *ds, entry_t *e)
{
    if (--e->users > 0)
        return;
    for (entry_t **p = &ds->entries; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    free(e);
}

int sl_dirsync_wait(sl_dirsync_t *ds, const char *dir)
{
    if (!ds || !dir)
        return SL_EINVAL;
    pthread_mutex_lock(&ds->mu);
    entry_t *e = entry_get(ds, dir);
    if (!e) {
        ds->syncs++;
        pthread_mutex_unlock(&ds->mu);
        return ds->fn(dir, ds->arg); /* no memory to share with: its own sync */
    }
    e->users++;
    uint64_t me = ++e->want;
    int err;
    for (;;) {
        if (e->done >= me) {
            err = 0;
            break;
        }
        if (e->failed >= me) {
            err = e->err;
            break;
        }
        if (e->running) {
            pthread_cond_wait(&ds->cv, &ds->mu);
            continue;
        }
        uint64_t target = e->want; /* all registered after their change: covered */
        e->running = 1;
        ds->syncs++;
        pthread_mutex_unlock(&ds->mu);
        int r = ds->fn(dir, ds->arg);
        pthread_mutex_lock(&ds->mu);
        e->running = 0;
        if (r == 0) {
            if (target > e->done)
                e->done = target;
        } else if (target > e->failed) {
            e->failed = target;
            e->err = r;
        }
        pthread_cond_broadcast(&ds->cv);
    }
    entry_put(ds, e);
    pthread_mutex_unlock(&ds->mu);
    return err;
}

uint64_t sl_dirsync_count(sl_dirsync_t *ds)
{
    pthread_mutex_lock(&ds->mu);
    uint64_t n = ds->syncs;
    pthread_mutex_unlock(&ds->mu);
    return n;
}
