/*
 * retention.c — batched purges and the automatic retention sweep (see
 * retention.h for the model, docs/lifecycle.md "Retention" for the rules).
 *
 * Three kinds of work, all on the event loop, all driven by Postgres batches:
 *   - a row loop (loop_t): calls one batch function of
 *     db/functions/retention.sql until it returns fewer rows than a batch,
 *     each call its own transaction with lock_timeout set; a batch that hit
 *     the lock timeout (or a deadlock) is tried again after a pause;
 *   - the blob drainer: claims queued blobs, deletes them through the storage
 *     API (the unlinks run on the worker pool), then removes their queue rows;
 *   - the sweep: takes the lease, purges expired idempotency keys, then
 *     refresh-token families whose tokens all expired (docs/auth.md), then
 *     expired files (when configured), then kicks a purge pass, and gives the
 *     lease back.
 * Every operation in flight holds a reference on the module, so freeing it
 * while a batch is out only marks it closing; the last completion frees it.
 */
#include "actors/retention.h"
#include "actors/run_event.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RETRY_PAUSE_MS 200 /* after a batch that met the lock timeout */
#define MAX_RETRIES 20
#define BLOB_CLAIM_S 300  /* a claimed blob is taken again after this */
#define SWEEP_LEASE_S 600 /* renewed between the sweep's phases */
#define FIRST_SWEEP_MS 1000

struct sl_retention_s {
    sl_retention_opts_t o;
    char instance_id[128];
    struct event *sweep_timer;
    int refs;    /* operations in flight, plus one for the owner */
    int closing; /* sl_retention_free was called */
    int started;
    int purging, purge_again;
    int draining, drain_again;
    int sweeping;
    struct loop_s *loops; /* live row loops: closing ends those paused on a timer */
    sl_metric_t *m_files, *m_bytes, *m_batches, *m_blobs, *m_keys, *m_families;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void ref(sl_retention_t *r)
{
    r->refs++;
}

/* Drops a reference; frees the module when it was the last of a closing one. 1 if freed. */
static int unref(sl_retention_t *r)
{
    if (--r->refs > 0)
        return 0;
    free(r);
    return 1;
}

static void purge_pass(sl_retention_t *r);
static void drain_start(sl_retention_t *r);
static void sweep_arm(sl_retention_t *r, int ms);

/* ---- row loops ---- */

typedef enum { L_DATASETS, L_CLEANUP, L_EXPIRE, L_IDEM, L_TOKENS } loop_kind_t;

typedef struct loop_s loop_t;
typedef void (*loop_end_fn)(loop_t *l, int err);

struct loop_s {
    sl_retention_t *r;
    loop_kind_t kind;
    const char *reason; /* metrics label and log field: static string */
    char cutoff[64];
    char tenant[37]; /* "" for every tenant */
    sl_retention_counts_t c;
    int retries;
    int dropping; /* L_DATASETS: the last statement (dataset rows) is out */
    double t0, tb;
    struct event *timer;
    loop_end_fn end;
    sl_retention_cleanup_cb cb; /* L_CLEANUP: the caller's */
    void *cb_arg;
    struct loop_s *prev, *next; /* in r->loops */
};

static const char *const LOOP_SQL[] = {
    [L_DATASETS] = "SELECT p.file_id, p.dataset_id, p.tenant_id, p.size, p.active"
                   " FROM sluice_purge_datasets_batch($1::int) p",
    /* Each deleted file's "deleted" event takes a place in its dataset's series,
     * the datasets in id order (the lock order of sluice_run_transitions). */
    [L_CLEANUP] = "SELECT p.file_id, p.dataset_id, p.tenant_id, p.size, p.active,"
                  " sluice_event_places(p.dataset_id, 1) AS seq,"
                  " sluice_ts(clock_timestamp()) AS at"
                  " FROM (SELECT * FROM sluice_cleanup_batch($2::timestamptz, $3::uuid, $1::int)"
                  "       ORDER BY dataset_id OFFSET 0) p",
    [L_EXPIRE] =
        "SELECT p.file_id, p.dataset_id, p.tenant_id, p.size, p.active,"
        " sluice_event_places(p.dataset_id, 1) AS seq,"
        " sluice_ts(clock_timestamp()) AS at"
        " FROM (SELECT * FROM sluice_cleanup_batch(now() - make_interval(days => $2::int), NULL,"
        "       $1::int) ORDER BY dataset_id OFFSET 0) p",
    [L_IDEM] = "SELECT sluice_purge_idempotency($2::int, $1::int) AS n",
    [L_TOKENS] = "SELECT sluice_purge_token_families($1::int) AS n",
};

static void loop_done_cb(const sl_pg_result_t *res, void *arg);

static void loop_finish(loop_t *l, int err)
{
    sl_retention_t *r = l->r;
    l->c.duration_ms = now_ms() - l->t0;
    if (l->c.files > 0 || err)
        sl_log(err ? SL_LOG_WARN : SL_LOG_INFO, "retention_batches",
               "{s:s, s:I, s:I, s:I, s:f, s:f, s:s}", "reason", l->reason, "rows",
               (json_int_t)l->c.files, "bytes", (json_int_t)l->c.bytes, "batches",
               (json_int_t)l->c.batches, "longest_batch_ms", l->c.longest_ms, "duration_ms",
               l->c.duration_ms, "error", err ? sl_strerror(err) : "");
    if (l->timer)
        event_free(l->timer);
    if (l->prev)
        l->prev->next = l->next;
    else if (r->loops == l)
        r->loops = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->end(l, r->closing && !err ? SL_ECANCELED : err);
    free(l);
    unref(r);
}

static int loop_send(loop_t *l)
{
    sl_retention_t *r = l->r;
    char lock[32], batch[16], days[16];
    snprintf(lock, sizeof lock, "%dms", r->o.lock_timeout_ms);
    snprintf(batch, sizeof batch, "%d", r->o.batch);
    const char *p0[] = {lock};
    const char *p[3] = {batch, NULL, NULL};
    int np = 1;
    if (l->kind == L_CLEANUP) {
        p[1] = l->cutoff;
        p[2] = l->tenant[0] ? l->tenant : NULL;
        np = 3;
    } else if (l->kind == L_EXPIRE || l->kind == L_IDEM) {
        snprintf(days, sizeof days, "%d",
                 l->kind == L_EXPIRE ? r->o.files_days : r->o.idempotency_hours);
        p[1] = days;
        np = 2;
    }
    sl_pg_batch_t *b = sl_pg_batch_new(r->o.pg);
    if (!b)
        return SL_ENOMEM;
    if (sl_pg_batch_add(b, "SELECT set_config('lock_timeout', $1, true)", 1, p0) < 0 ||
        (l->dropping ? sl_pg_batch_add(b, "SELECT sluice_purge_datasets_drop() AS n", 0, NULL)
                     : sl_pg_batch_add(b, LOOP_SQL[l->kind], np, p)) < 0) {
        sl_pg_batch_free(b);
        return SL_ENOMEM;
    }
    l->tb = now_ms();
    return sl_pg_batch_exec(b, loop_done_cb, l);
}

static void loop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    loop_t *l = arg;
    int err;
    (void)fd;
    (void)what;
    if (l->r->closing)
        loop_finish(l, SL_ECANCELED);
    else if ((err = loop_send(l)) != 0)
        loop_finish(l, err);
}

/* The next batch after ms (0: at once, from this callback). */
static void loop_next(loop_t *l, int ms)
{
    int err;
    if (ms <= 0) {
        if ((err = loop_send(l)) != 0)
            loop_finish(l, err);
        return;
    }
    if (!l->timer && !(l->timer = evtimer_new(l->r->o.base, loop_timer_cb, l))) {
        loop_finish(l, SL_ENOMEM);
        return;
    }
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(l->timer, &tv);
}

static const char *col(PGresult *res, int row, const char *name)
{
    int c = PQfnumber(res, name);
    return c < 0 || PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

/* The files a batch deleted: metrics, actors to stop, "deleted" events. Returns how many. */
static int loop_files(loop_t *l, PGresult *res)
{
    sl_retention_t *r = l->r;
    int n = PQntuples(res);
    long long bytes = 0;
    for (int i = 0; i < n; i++) {
        const char *size = col(res, i, "size"), *active = col(res, i, "active");
        const char *fid = col(res, i, "file_id");
        bytes += size ? strtoll(size, NULL, 10) : 0;
        if (active && active[0] == 't' && fid && r->o.cancel_file)
            r->o.cancel_file(fid, r->o.cancel_arg);
        if (l->kind != L_DATASETS && r->o.pubsub && col(res, i, "seq")) {
            /* As DELETE /v1/files/{id}: a live-only event (the timeline went with the file). */
            const char *v[SL_RUN_EVENT_NCOLS] = {
                col(res, i, "seq"), col(res, i, "dataset_id"), fid, NULL, NULL, NULL, "deleted",
                "deleted",          col(res, i, "at")};
            sl_run_event_publish_values(r->o.pubsub, "file", v);
        }
    }
    l->c.files += n;
    l->c.bytes += bytes;
    sl_metrics_add(r->m_files, n, l->reason);
    sl_metrics_add(r->m_bytes, (double)bytes, l->reason);
    return n;
}

static void loop_done_cb(const sl_pg_result_t *res, void *arg)
{
    loop_t *l = arg;
    sl_retention_t *r = l->r;
    double ms = now_ms() - l->tb;
    if (r->closing) {
        loop_finish(l, SL_ECANCELED);
        return;
    }
    if (res->err) {
        /* lock_not_available (the lock timeout), deadlock, serialization: try again soon */
        int transient = strcmp(res->sqlstate, "55P03") == 0 ||
                        strcmp(res->sqlstate, "40P01") == 0 || strcmp(res->sqlstate, "40001") == 0;
        if (transient && ++l->retries <= MAX_RETRIES) {
            loop_next(l, RETRY_PAUSE_MS);
            return;
        }
        sl_log(SL_LOG_WARN, "retention_batch_failed", "{s:s, s:s, s:s}", "reason", l->reason,
               "error", res->errmsg, "sqlstate", res->sqlstate);
        loop_finish(l, res->err);
        return;
    }
    l->retries = 0;
    l->c.batches++;
    if (ms > l->c.longest_ms)
        l->c.longest_ms = ms;
    sl_metrics_add(r->m_batches, 1, l->reason);
    PGresult *rows = res->res[1];
    if (l->dropping) {
        loop_finish(l, 0);
        return;
    }
    int n;
    if (l->kind == L_IDEM || l->kind == L_TOKENS) {
        const char *v = col(rows, 0, "n");
        n = v ? (int)strtol(v, NULL, 10) : 0;
        l->c.files += n;
        sl_metrics_add(l->kind == L_IDEM ? r->m_keys : r->m_families, n);
    } else {
        n = loop_files(l, rows);
        if (n > 0)
            drain_start(r); /* their blobs, while the next batch runs */
    }
    if (n >= r->o.batch) {
        loop_next(l, r->o.pause_ms);
    } else if (l->kind == L_DATASETS) {
        l->dropping = 1; /* the emptied datasets' own rows */
        loop_next(l, 0);
    } else {
        loop_finish(l, 0);
    }
}

/* A started loop joins r->loops (loop_finish takes it out). */
static void loop_link(loop_t *l)
{
    l->prev = NULL;
    l->next = l->r->loops;
    if (l->next)
        l->next->prev = l;
    l->r->loops = l;
}

/* Starts a loop; on failure calls nothing and returns the error. */
static int loop_start(sl_retention_t *r, loop_kind_t kind, const char *reason, loop_end_fn end,
                      loop_t **out)
{
    loop_t *l = calloc(1, sizeof *l);
    int err;
    if (!l)
        return SL_ENOMEM;
    l->r = r;
    l->kind = kind;
    l->reason = reason;
    l->end = end;
    l->t0 = now_ms();
    if (out)
        *out = l; /* the caller fills cutoff/tenant before the first send: see cleanup */
    ref(r);
    if (kind == L_CLEANUP)
        return 0; /* sent by sl_retention_cleanup once filled (and linked then) */
    if ((err = loop_send(l)) != 0) {
        free(l);
        r->refs--;
        return err;
    }
    loop_link(l);
    return 0;
}

/* ---- purge pass: deleted datasets' files, then queued blobs ---- */

static void purge_end(loop_t *l, int err)
{
    sl_retention_t *r = l->r;
    (void)err;
    r->purging = 0;
    if (r->closing)
        return;
    drain_start(r);
    if (r->purge_again) {
        r->purge_again = 0;
        purge_pass(r);
    }
}

static void purge_pass(sl_retention_t *r)
{
    if (r->closing)
        return;
    if (r->purging || !r->started) {
        r->purge_again = 1;
        return;
    }
    r->purging = 1;
    if (loop_start(r, L_DATASETS, "dataset_delete", purge_end, NULL) != 0) {
        r->purging = 0;
        drain_start(r);
    }
}

void sl_retention_kick(sl_retention_t *r)
{
    if (r)
        purge_pass(r);
}

/* ---- the blob drainer ---- */

typedef struct drain_s {
    sl_retention_t *r;
    int n, pending, claimed;
    char **keys; /* owned */
    char (*ids)[24];
    int *ok;
} drain_t;

static void drain_claim(sl_retention_t *r);

static void drain_free(drain_t *d)
{
    for (int i = 0; i < d->n; i++)
        free(d->keys[i]);
    free(d->keys);
    free(d->ids);
    free(d->ok);
    free(d);
}

/* The drainer stops (or goes again when blobs were queued meanwhile). */
static void drain_stop(sl_retention_t *r)
{
    r->draining = 0;
    if (!r->closing && r->drain_again) {
        r->drain_again = 0;
        drain_start(r);
    }
}

static void drain_done_cb(const sl_pg_result_t *res, void *arg)
{
    drain_t *d = arg;
    sl_retention_t *r = d->r;
    int more = d->claimed >= r->o.batch;
    if (res->err)
        sl_log(SL_LOG_WARN, "retention_blobs_failed", "{s:s}", "error", res->errmsg);
    drain_free(d);
    if (r->closing || res->err) {
        r->draining = 0;
        unref(r);
        return;
    }
    if (more)
        drain_claim(r);
    else
        drain_stop(r);
    unref(r);
}

/* Every delete answered: the queue rows of those that worked go. */
static void drain_deleted(drain_t *d)
{
    sl_retention_t *r = d->r;
    size_t cap = (size_t)d->n * 24 + 3, len = 0;
    char *arr = malloc(cap);
    int k = 0;
    if (!arr || r->closing) { /* closing: the pool may be gone; the rows are taken again */
        free(arr);
        drain_free(d);
        r->draining = 0;
        unref(r);
        return;
    }
    arr[len++] = '{';
    for (int i = 0; i < d->n; i++) {
        if (!d->ok[i])
            continue;
        len += (size_t)snprintf(arr + len, cap - len, "%s%s", k++ ? "," : "", d->ids[i]);
    }
    snprintf(arr + len, cap - len, "}");
    sl_metrics_add(r->m_blobs, k);
    const char *p[] = {arr};
    int err = sl_pg_query(r->o.pg, "DELETE FROM purge_blobs WHERE id = ANY ($1::bigint[])", 1, p,
                          drain_done_cb, d);
    free(arr);
    if (err) {
        drain_free(d);
        r->draining = 0;
        unref(r);
    }
}

typedef struct blob_del_s {
    drain_t *d;
    int i;
} blob_del_t;

static void blob_deleted_cb(int err, void *arg)
{
    blob_del_t *bd = arg;
    drain_t *d = bd->d;
    if (err)
        sl_log(SL_LOG_WARN, "blob_delete_failed", "{s:s, s:s}", "storage_key", d->keys[bd->i],
               "error", sl_strerror(err)); /* stays queued: taken again once the claim lapses */
    else
        d->ok[bd->i] = 1;
    free(bd);
    if (--d->pending == 0)
        drain_deleted(d);
}

static void drain_claim_cb(const sl_pg_result_t *res, void *arg)
{
    sl_retention_t *r = arg;
    drain_t *d = NULL;
    if (r->closing || res->err) {
        if (res->err && !r->closing)
            sl_log(SL_LOG_WARN, "retention_blobs_failed", "{s:s}", "error", res->errmsg);
        r->draining = 0;
        unref(r);
        return;
    }
    PGresult *rows = res->res[0];
    int n = PQntuples(rows);
    if (n == 0) {
        drain_stop(r);
        unref(r);
        return;
    }
    if (!(d = calloc(1, sizeof *d)) || !(d->keys = calloc((size_t)n, sizeof *d->keys)) ||
        !(d->ids = calloc((size_t)n, sizeof *d->ids)) ||
        !(d->ok = calloc((size_t)n, sizeof *d->ok)))
        goto oom;
    d->r = r;
    d->claimed = n;
    for (int i = 0; i < n; i++) {
        snprintf(d->ids[i], sizeof d->ids[i], "%s", col(rows, i, "id"));
        if (!(d->keys[i] = strdup(col(rows, i, "storage_key"))))
            goto oom;
        d->n++;
    }
    d->pending = 1; /* held until every delete is started */
    for (int i = 0; i < d->n; i++) {
        blob_del_t *bd = malloc(sizeof *bd);
        if (!bd)
            break;
        bd->d = d;
        bd->i = i;
        d->pending++;
        if (sl_store_delete(r->o.store, d->keys[i], blob_deleted_cb, bd) != 0) {
            sl_log(SL_LOG_WARN, "blob_delete_failed", "{s:s, s:s}", "storage_key", d->keys[i],
                   "error", "not started");
            free(bd);
            d->pending--;
        }
    }
    if (--d->pending == 0)
        drain_deleted(d); /* the reference passes to the delete query */
    return;
oom:
    if (d)
        drain_free(d);
    r->draining = 0;
    unref(r);
}

static void drain_claim(sl_retention_t *r)
{
    char batch[16], claim[16];
    snprintf(batch, sizeof batch, "%d", r->o.batch);
    snprintf(claim, sizeof claim, "%d", BLOB_CLAIM_S);
    const char *p[] = {batch, claim};
    ref(r);
    if (sl_pg_query(r->o.pg,
                    "SELECT id, storage_key, size FROM sluice_purge_blobs_claim($1::int, $2::int)",
                    2, p, drain_claim_cb, r) != 0) {
        r->draining = 0;
        r->refs--;
    }
}

static void drain_start(sl_retention_t *r)
{
    if (r->closing || !r->started)
        return;
    if (r->draining) {
        r->drain_again = 1;
        return;
    }
    r->draining = 1;
    drain_claim(r);
}

/* ---- cleanup ---- */

static void cleanup_end(loop_t *l, int err)
{
    l->cb(err, &l->c, l->cb_arg);
}

typedef struct count_s {
    sl_retention_t *r;
    double t0;
    sl_retention_cleanup_cb cb;
    void *arg;
} count_t;

static void count_done_cb(const sl_pg_result_t *res, void *arg)
{
    count_t *ct = arg;
    sl_retention_t *r = ct->r;
    sl_retention_counts_t c = {0};
    int err = r->closing ? SL_ECANCELED : res->err;
    if (!err) {
        const char *f = col(res->res[0], 0, "files"), *b = col(res->res[0], 0, "bytes");
        c.files = f ? strtoll(f, NULL, 10) : 0;
        c.bytes = b ? strtoll(b, NULL, 10) : 0;
        c.batches = 1;
        c.longest_ms = c.duration_ms = now_ms() - ct->t0;
    }
    ct->cb(err, &c, ct->arg);
    free(ct);
    unref(r);
}

int sl_retention_cleanup(sl_retention_t *r, const char *cutoff, const char *tenant_id, int dry_run,
                         sl_retention_cleanup_cb cb, void *arg)
{
    int err;
    if (!r || !cutoff || !cb || strlen(cutoff) >= 64 || (tenant_id && strlen(tenant_id) >= 37))
        return SL_EINVAL;
    if (dry_run) {
        count_t *ct = calloc(1, sizeof *ct);
        const char *p[] = {cutoff, tenant_id};
        if (!ct)
            return SL_ENOMEM;
        ct->r = r;
        ct->t0 = now_ms();
        ct->cb = cb;
        ct->arg = arg;
        ref(r);
        if ((err = sl_pg_query(r->o.pg,
                               "SELECT files, bytes FROM sluice_cleanup_count($1::timestamptz, "
                               "$2::uuid)",
                               2, p, count_done_cb, ct)) != 0) {
            r->refs--;
            free(ct);
        }
        return err;
    }
    loop_t *l = NULL;
    if ((err = loop_start(r, L_CLEANUP, "cleanup", cleanup_end, &l)) != 0)
        return err;
    snprintf(l->cutoff, sizeof l->cutoff, "%s", cutoff);
    snprintf(l->tenant, sizeof l->tenant, "%s", tenant_id ? tenant_id : "");
    l->cb = cb;
    l->cb_arg = arg;
    if ((err = loop_send(l)) != 0) {
        free(l);
        r->refs--;
        return err;
    }
    loop_link(l);
    return 0;
}

/* ---- the sweep ---- */

static void sweep_end(sl_retention_t *r);

static void sweep_released_cb(const sl_pg_result_t *res, void *arg)
{
    sl_retention_t *r = arg;
    if (res->err && !r->closing)
        sl_log(SL_LOG_WARN, "retention_lease_failed", "{s:s}", "error", res->errmsg);
    r->sweeping = 0;
    if (!r->closing)
        sweep_arm(r, r->o.interval_s * 1000);
    unref(r);
}

/* Gives the lease back: the next sweep (anywhere) is due interval_s from now. */
static void sweep_end(sl_retention_t *r)
{
    const char *p[] = {r->instance_id};
    if (r->closing) {
        r->sweeping = 0;
        return;
    }
    purge_pass(r); /* deleted datasets and queued blobs, which need no lease */
    ref(r);
    if (sl_pg_query(r->o.pg, "SELECT sluice_retention_release('sweep', $1)", 1, p,
                    sweep_released_cb, r) != 0) {
        r->refs--;
        r->sweeping = 0;
        sweep_arm(r, r->o.interval_s * 1000);
    }
}

static void sweep_expired_end(loop_t *l, int err)
{
    (void)err;
    sweep_end(l->r);
}

static void sweep_tokens_end(loop_t *l, int err);

static void sweep_idem_end(loop_t *l, int err)
{
    sl_retention_t *r = l->r;
    (void)err; /* logged by the loop; the next phase goes on */
    if (r->closing) {
        r->sweeping = 0;
        return;
    }
    if (loop_start(r, L_TOKENS, "token_families", sweep_tokens_end, NULL) == 0)
        return;
    sweep_tokens_end(l, 0);
}

static void sweep_tokens_end(loop_t *l, int err)
{
    sl_retention_t *r = l->r;
    (void)err; /* logged by the loop; the next phase goes on */
    if (r->closing) {
        r->sweeping = 0;
        return;
    }
    if (r->o.files_days > 0 && loop_start(r, L_EXPIRE, "expired", sweep_expired_end, NULL) == 0)
        return;
    sweep_end(r);
}

static void sweep_lease_cb(const sl_pg_result_t *res, void *arg)
{
    sl_retention_t *r = arg;
    const char *ok = res->err ? NULL : col(res->res[0], 0, "ok");
    if (r->closing) {
        r->sweeping = 0;
        unref(r);
        return;
    }
    if (!ok || ok[0] != 't') { /* another instance sweeps, or the last sweep is recent */
        r->sweeping = 0;
        sweep_arm(r, r->o.interval_s * 1000);
        unref(r);
        return;
    }
    if (loop_start(r, L_IDEM, "idempotency", sweep_idem_end, NULL) != 0)
        sweep_end(r);
    unref(r);
}

static void sweep_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_retention_t *r = arg;
    char lease[16], interval[16];
    (void)fd;
    (void)what;
    if (r->closing || r->sweeping)
        return;
    snprintf(lease, sizeof lease, "%d", SWEEP_LEASE_S);
    snprintf(interval, sizeof interval, "%d", r->o.interval_s);
    const char *p[] = {r->instance_id, lease, interval};
    r->sweeping = 1;
    ref(r);
    if (sl_pg_query(r->o.pg, "SELECT sluice_retention_lease('sweep', $1, $2::int, $3::int) AS ok",
                    3, p, sweep_lease_cb, r) != 0) {
        r->refs--;
        r->sweeping = 0;
        sweep_arm(r, r->o.interval_s * 1000);
    }
}

static void sweep_arm(sl_retention_t *r, int ms)
{
    if (!r->sweep_timer || r->closing)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->sweep_timer, &tv);
}

/* ---- life ---- */

int sl_retention_new(const sl_retention_opts_t *opts, sl_retention_t **out)
{
    if (!opts || !opts->base || !opts->pg || !opts->store || !out)
        return SL_EINVAL;
    sl_retention_t *r = calloc(1, sizeof *r);
    if (!r)
        return SL_ENOMEM;
    r->o = *opts;
    snprintf(r->instance_id, sizeof r->instance_id, "%s",
             opts->instance_id ? opts->instance_id : "sluice");
    r->o.instance_id = r->instance_id;
    if (r->o.interval_s <= 0)
        r->o.interval_s = 3600;
    if (r->o.idempotency_hours <= 0)
        r->o.idempotency_hours = 24;
    if (r->o.batch <= 0)
        r->o.batch = 500;
    if (r->o.lock_timeout_ms <= 0)
        r->o.lock_timeout_ms = 2000;
    if (r->o.sweep && !(r->sweep_timer = evtimer_new(r->o.base, sweep_timer_cb, r))) {
        free(r);
        return SL_ENOMEM;
    }
    r->refs = 1;
    r->m_files =
        sl_metrics_counter("sluice_retention_files_total",
                           "Files purged, by reason (dataset_delete, cleanup, expired)", "reason");
    r->m_bytes =
        sl_metrics_counter("sluice_retention_bytes_total",
                           "Bytes of the files purged (their originals), by reason", "reason");
    r->m_batches = sl_metrics_counter("sluice_retention_batches_total",
                                      "Retention transactions, by reason", "reason");
    r->m_blobs = sl_metrics_counter("sluice_retention_blobs_deleted_total",
                                    "Blobs deleted from storage after their rows", NULL);
    r->m_keys = sl_metrics_counter("sluice_retention_idempotency_keys_total",
                                   "Expired idempotency keys purged", NULL);
    r->m_families = sl_metrics_counter("sluice_retention_token_families_total",
                                       "Refresh-token families purged once every token of "
                                       "theirs expired (docs/auth.md)", NULL);
    *out = r;
    return 0;
}

void sl_retention_start(sl_retention_t *r)
{
    if (!r || r->started)
        return;
    r->started = 1;
    r->purge_again = 0;
    purge_pass(r);
    sweep_arm(r, FIRST_SWEEP_MS);
}

void sl_retention_free(sl_retention_t *r)
{
    if (!r)
        return;
    r->closing = 1;
    if (r->sweep_timer) {
        event_free(r->sweep_timer);
        r->sweep_timer = NULL;
    }
    /*
     * A loop paused between batches (batch_pause_ms, or the retry pause after a
     * lock timeout) ends now: its timer might not fire before the event base
     * goes, and the loop and this module would leak. Loops with a query out end
     * in its callback (the pool delivers one when it closes).
     */
    for (loop_t *l = r->loops, *next; l; l = next) { /* the owner's reference holds r */
        next = l->next;
        if (l->timer && evtimer_pending(l->timer, NULL)) {
            evtimer_del(l->timer);
            loop_finish(l, SL_ECANCELED);
        }
    }
    unref(r);
}
