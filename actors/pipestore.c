/*
 * pipestore.c — the API's pipelines in every process (see pipestore.h).
 *
 * One read at a time: sluice_pipelines_state() (db/functions/pipelines.sql)
 * into a staged table; with a scheduler, the sources of the versions it does
 * not run yet come in a second query and are loaded before anything is
 * applied, so the scheduler and app->pipelines change on the same loop turn.
 * A reload asked while a read is in flight runs once more after it (the read
 * in flight may have started before the caller's commit). Queries in flight
 * point at the store: freeing it while they are pending marks it and the
 * last callback frees it (as scheduler.c does).
 */
#include "actors/pipestore.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"

#define FAILED_MAX 16 /* versions that did not load, not tried again */

typedef struct waiter_s {
    sl_pipestore_done_cb done;
    void *arg;
    struct waiter_s *next;
} waiter_t;

struct sl_pipestore_s {
    struct event_base *base;
    sl_pg_t *pg;
    sl_redis_t *pub; /* borrowed */
    sl_redis_t *sub; /* owned */
    sl_sched_t *sched;
    sl_flowvm_t *vm;
    int reread_ms;
    sl_pipestore_change_cb on_change;
    void *arg;
    void (*ready)(void *);
    void *ready_arg;
    int started, readied, closing;
    int loading, again;
    int queries, free_pending;
    waiter_t *next_waiters; /* for the next read */
    waiter_t *cur_waiters;  /* for the read in flight */
    struct event *timer;
    int n;
    sl_pipestore_entry_t ent[SL_PIPESTORE_MAX];
    int nstaged;
    sl_pipestore_entry_t staged[SL_PIPESTORE_MAX];
    char failed[FAILED_MAX][65];
    int nfailed_next;
};

static void read_state(sl_pipestore_t *ps);

static void entry_clear(sl_pipestore_entry_t *e)
{
    for (int m = 0; m < SL_CONFIG_MAX_MATCH && e->match[m] != NULL; m++)
        free(e->match[m]);
    json_decref(e->describe);
    memset(e, 0, sizeof *e);
}

static void destroy(sl_pipestore_t *ps)
{
    for (int i = 0; i < ps->n; i++)
        entry_clear(&ps->ent[i]);
    for (int i = 0; i < ps->nstaged; i++)
        entry_clear(&ps->staged[i]);
    free(ps);
}

/* Every query callback starts here: 1 if the store is gone and the callback must stop. */
static int query_done(sl_pipestore_t *ps)
{
    ps->queries--;
    if (ps->free_pending) {
        if (ps->queries == 0)
            destroy(ps);
        return 1;
    }
    return 0;
}

static int send_query(sl_pipestore_t *ps, const char *sql, int n, const char *const *params,
                      sl_pg_cb cb)
{
    ps->queries++;
    if (sl_pg_query(ps->pg, sql, n, params, cb, ps) != 0) {
        ps->queries--;
        return SL_ENOMEM;
    }
    return 0;
}

static void call_waiters(waiter_t *w, int err)
{
    while (w) {
        waiter_t *next = w->next;
        if (w->done)
            w->done(err, w->arg);
        free(w);
        w = next;
    }
}

/* The read in flight is over (err 0: applied). */
static void read_finished(sl_pipestore_t *ps, int err)
{
    waiter_t *w = ps->cur_waiters;
    ps->cur_waiters = NULL;
    ps->loading = 0;
    for (int i = 0; i < ps->nstaged; i++)
        entry_clear(&ps->staged[i]);
    ps->nstaged = 0;
    if (err == 0 && !ps->readied) {
        ps->readied = 1;
        if (ps->ready)
            ps->ready(ps->ready_arg);
    }
    call_waiters(w, err);
    if (ps->closing)
        return;
    if (ps->again || (ps->next_waiters && err == 0)) {
        ps->again = 0;
        read_state(ps);
    }
}

static int failed_before(const sl_pipestore_t *ps, const char *version)
{
    for (int i = 0; i < FAILED_MAX; i++)
        if (strcmp(ps->failed[i], version) == 0)
            return 1;
    return 0;
}

/* Did the staged table change anything a reader sees? */
static int staged_differs(const sl_pipestore_t *ps)
{
    if (ps->n != ps->nstaged)
        return 1;
    for (int i = 0; i < ps->n; i++) {
        const sl_pipestore_entry_t *a = &ps->ent[i], *b = &ps->staged[i];
        if (strcmp(a->name, b->name) != 0 || a->revision != b->revision ||
            a->deleted != b->deleted || strcmp(a->version, b->version) != 0)
            return 1;
    }
    return 0;
}

/* The staged table becomes the current one; the scheduler forgets deleted pipelines. */
static void apply(sl_pipestore_t *ps)
{
    int changed = staged_differs(ps) || !ps->readied;

    for (int i = 0; ps->sched && i < ps->nstaged; i++)
        if (ps->staged[i].deleted && sl_sched_flow(ps->sched, ps->staged[i].name) != NULL) {
            sl_sched_drop_flow(ps->sched, ps->staged[i].name);
            sl_log(SL_LOG_INFO, "pipeline_deleted", "{s:s}", "pipeline", ps->staged[i].name);
        }
    if (!changed) {
        /* the same: the current entries stay (app->pipelines borrows their strings) */
        read_finished(ps, 0); /* clears the staged ones */
        return;
    }
    for (int i = 0; i < ps->n; i++)
        entry_clear(&ps->ent[i]);
    memcpy(ps->ent, ps->staged, sizeof(ps->staged[0]) * (size_t)ps->nstaged);
    ps->n = ps->nstaged;
    memset(ps->staged, 0, sizeof(ps->staged[0]) * (size_t)ps->nstaged);
    ps->nstaged = 0;
    if (ps->on_change)
        ps->on_change(ps, ps->arg);
    read_finished(ps, 0);
}

/* Does the scheduler need this staged entry's flow loaded? */
static int needs_load(const sl_pipestore_t *ps, const sl_pipestore_entry_t *e)
{
    sl_flow_t *cur;
    if (!ps->sched || e->deleted || e->version[0] == '\0' || failed_before(ps, e->version))
        return 0;
    cur = sl_sched_flow(ps->sched, e->name);
    return cur == NULL || strcmp(sl_flow_version(cur), e->version) != 0;
}

static void sources_cb(const sl_pg_result_t *r, void *arg)
{
    sl_pipestore_t *ps = arg;
    if (query_done(ps))
        return;
    if (ps->closing) {
        read_finished(ps, SL_ECLOSED);
        return;
    }
    if (r->err) {
        sl_log(SL_LOG_WARN, "pipelines_read_failed", "{s:s}", "error", r->errmsg);
        read_finished(ps, r->err);
        return;
    }
    PGresult *res = r->res[0];
    for (int i = 0; i < ps->nstaged; i++) {
        sl_pipestore_entry_t *e = &ps->staged[i];
        if (!needs_load(ps, e))
            continue;
        int found = 0;
        for (int k = 0; k < PQntuples(res) && !found; k++) {
            sl_flow_t *f = NULL;
            char err[2048];
            if (strcmp(PQgetvalue(res, k, 0), e->version) != 0)
                continue;
            found = 1;
            /* the label is the pipeline's name, as the check at PUT used */
            if (sl_flow_load_source(ps->vm, e->name, e->name, PQgetvalue(res, k, 1),
                                    (size_t)PQgetlength(res, k, 1), &f, err, sizeof err) != 0 ||
                sl_sched_set_flow(ps->sched, e->name, f) != 0) {
                sl_log(SL_LOG_ERROR, "pipeline_load_failed", "{s:s, s:s, s:s}", "pipeline", e->name,
                       "version", e->version, "error", f ? "too many pipelines" : err);
                snprintf(ps->failed[ps->nfailed_next], 65, "%s", e->version);
                ps->nfailed_next = (ps->nfailed_next + 1) % FAILED_MAX;
            } else {
                sl_log(SL_LOG_INFO, "pipeline_loaded", "{s:s, s:s, s:i}", "pipeline", e->name,
                       "version", e->version, "revision", e->revision);
            }
            if (f)
                sl_flow_unref(f); /* the scheduler holds its own reference */
        }
    }
    apply(ps);
}

/* Fetches the sources the scheduler needs, or applies at once. */
static void load_sources(sl_pipestore_t *ps)
{
    char *list = NULL;
    size_t off = 0;
    int n = 0;

    for (int i = 0; i < ps->nstaged; i++)
        n += needs_load(ps, &ps->staged[i]);
    if (n == 0) {
        apply(ps);
        return;
    }
    /* "{v1,v2}": a text[] literal of sha256 hex strings */
    if ((list = malloc((size_t)n * 66 + 3)) == NULL) {
        read_finished(ps, SL_ENOMEM);
        return;
    }
    list[off++] = '{';
    for (int i = 0; i < ps->nstaged; i++) {
        if (!needs_load(ps, &ps->staged[i]))
            continue;
        if (off > 1)
            list[off++] = ',';
        memcpy(list + off, ps->staged[i].version, 64);
        off += 64;
    }
    list[off++] = '}';
    list[off] = '\0';
    const char *params[] = {list};
    int err =
        send_query(ps, "SELECT version, source FROM flow_versions WHERE version = ANY ($1::text[])",
                   1, params, sources_cb);
    free(list);
    if (err)
        read_finished(ps, err);
}

/* A row of sluice_pipelines_state() into e. 0, or -1 for a row not to keep. */
static int parse_row(PGresult *res, int i, sl_pipestore_entry_t *e)
{
    const char *name = PQgetvalue(res, i, 0);
    memset(e, 0, sizeof *e);
    if (strlen(name) >= sizeof e->name)
        return -1;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->revision = (int)strtol(PQgetvalue(res, i, 1), NULL, 10);
    e->deleted = PQgetvalue(res, i, 2)[0] == 't';
    if (!PQgetisnull(res, i, 3) && PQgetlength(res, i, 3) == 64)
        memcpy(e->version, PQgetvalue(res, i, 3), 65);
    if (!PQgetisnull(res, i, 6))
        snprintf(e->created_at, sizeof e->created_at, "%s", PQgetvalue(res, i, 6));
    if (!PQgetisnull(res, i, 4)) {
        json_t *m = json_loads(PQgetvalue(res, i, 4), 0, NULL), *v;
        size_t k;
        int n = 0;
        json_array_foreach(m, k, v)
        {
            if (n < SL_CONFIG_MAX_MATCH && json_is_string(v))
                e->match[n++] = strdup(json_string_value(v));
        }
        json_decref(m);
    }
    if (!PQgetisnull(res, i, 5))
        e->describe = json_loads(PQgetvalue(res, i, 5), 0, NULL);
    if (!e->deleted && (e->version[0] == '\0' || e->match[0] == NULL)) {
        entry_clear(e); /* a live row without a readable version: not ours to guess */
        return -1;
    }
    return 0;
}

static void state_cb(const sl_pg_result_t *r, void *arg)
{
    sl_pipestore_t *ps = arg;
    if (query_done(ps))
        return;
    if (ps->closing) {
        read_finished(ps, SL_ECLOSED);
        return;
    }
    if (r->err) {
        sl_log(SL_LOG_WARN, "pipelines_read_failed", "{s:s}", "error", r->errmsg);
        read_finished(ps, r->err);
        return;
    }
    PGresult *res = r->res[0];
    if (PQnfields(res) != 7) {
        read_finished(ps, SL_EDB);
        return;
    }
    for (int i = 0; i < PQntuples(res) && ps->nstaged < SL_PIPESTORE_MAX; i++)
        if (parse_row(res, i, &ps->staged[ps->nstaged]) == 0)
            ps->nstaged++;
    load_sources(ps);
}

static void read_state(sl_pipestore_t *ps)
{
    if (ps->closing || !ps->started)
        return;
    if (ps->loading) {
        ps->again = 1;
        return;
    }
    ps->loading = 1;
    ps->cur_waiters = ps->next_waiters;
    ps->next_waiters = NULL;
    if (send_query(ps, "SELECT * FROM sluice_pipelines_state()", 0, NULL, state_cb) != 0)
        read_finished(ps, SL_ENOMEM);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pipestore_t *ps = arg;
    struct timeval tv = {ps->reread_ms / 1000, (ps->reread_ms % 1000) * 1000};
    (void)fd;
    (void)what;
    read_state(ps);
    evtimer_add(ps->timer, &tv);
}

static void message_cb(const char *channel, const char *data, size_t len, void *arg)
{
    (void)channel;
    (void)data;
    (void)len;
    read_state(arg);
}

int sl_pipestore_new(const sl_pipestore_opts_t *o, sl_pipestore_t **out)
{
    sl_pipestore_t *ps;
    if (!o || !o->base || !o->pg || (o->sched && !o->vm))
        return SL_EINVAL;
    if ((ps = calloc(1, sizeof *ps)) == NULL)
        return SL_ENOMEM;
    ps->base = o->base;
    ps->pg = o->pg;
    ps->pub = o->publisher;
    ps->sched = o->sched;
    ps->vm = o->vm;
    ps->reread_ms = o->reread_ms > 0 ? o->reread_ms : SL_PIPESTORE_REREAD_MS;
    ps->on_change = o->on_change;
    ps->arg = o->arg;
    if ((ps->timer = evtimer_new(o->base, timer_cb, ps)) == NULL ||
        (o->redis_url && sl_redis_new_subscriber(o->base, o->redis_url, SL_PIPESTORE_CHANNEL,
                                                 message_cb, ps, &ps->sub) != 0)) {
        if (ps->timer)
            event_free(ps->timer);
        free(ps);
        return SL_ENOMEM;
    }
    *out = ps;
    return 0;
}

void sl_pipestore_start(sl_pipestore_t *ps, void (*ready)(void *arg), void *arg)
{
    struct timeval tv = {ps->reread_ms / 1000, (ps->reread_ms % 1000) * 1000};
    if (ps->started)
        return;
    ps->started = 1;
    ps->ready = ready;
    ps->ready_arg = arg;
    read_state(ps);
    evtimer_add(ps->timer, &tv); /* also retries a failed first read */
}

int sl_pipestore_reload(sl_pipestore_t *ps, sl_pipestore_done_cb done, void *arg)
{
    waiter_t *w = calloc(1, sizeof *w);
    if (!w)
        return SL_ENOMEM;
    w->done = done;
    w->arg = arg;
    w->next = ps->next_waiters;
    ps->next_waiters = w;
    if (ps->loading)
        ps->again = 1;
    else if (ps->started && !ps->closing)
        read_state(ps); /* the query's callback comes on a later turn */
    return 0;
}

void sl_pipestore_notify(sl_pipestore_t *ps, const char *name)
{
    const char *argv[] = {"PUBLISH", SL_PIPESTORE_CHANNEL, name};
    size_t lens[] = {7, strlen(SL_PIPESTORE_CHANNEL), strlen(name)};
    if (!ps->pub || sl_redis_command(ps->pub, 3, argv, lens) != 0)
        sl_log(SL_LOG_WARN, "pipelines_notify_failed", "{s:s}", "pipeline", name);
}

int sl_pipestore_count(const sl_pipestore_t *ps)
{
    return ps ? ps->n : 0;
}

const sl_pipestore_entry_t *sl_pipestore_at(const sl_pipestore_t *ps, int i)
{
    return ps && i >= 0 && i < ps->n ? &ps->ent[i] : NULL;
}

const sl_pipestore_entry_t *sl_pipestore_find(const sl_pipestore_t *ps, const char *name)
{
    for (int i = 0; ps && i < ps->n; i++)
        if (strcmp(ps->ent[i].name, name) == 0)
            return &ps->ent[i];
    return NULL;
}

void sl_pipestore_detach_sched(sl_pipestore_t *ps)
{
    if (ps)
        ps->sched = NULL;
}

void sl_pipestore_free(sl_pipestore_t *ps)
{
    waiter_t *w;
    if (!ps)
        return;
    ps->closing = 1;
    ps->sched = NULL;
    if (ps->timer)
        event_free(ps->timer);
    ps->timer = NULL;
    if (ps->sub)
        sl_redis_free(ps->sub);
    ps->sub = NULL;
    w = ps->next_waiters;
    ps->next_waiters = NULL;
    call_waiters(w, SL_ECLOSED);
    w = ps->cur_waiters;
    ps->cur_waiters = NULL;
    call_waiters(w, SL_ECLOSED);
    if (ps->queries > 0)
        ps->free_pending = 1; /* the last query callback frees ps */
    else
        destroy(ps);
}
