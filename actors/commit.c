/*
 * commit.c — group commit of run transitions (see commit.h).
 *
 * A committer keeps the transitions that wait (`pending`, oldest first; a
 * group takes each tenant's oldest before the rest: take_group) and counts
 * its groups in flight. pump() sends groups while there is room; a group's
 * callback publishes its rows, tells each member, then pumps again, so what
 * arrived meanwhile leaves together. Members' callbacks may submit again:
 * during the dispatch those submissions only queue (`dispatching`), and go out
 * together in the pump that follows.
 *
 * The committers live in a small list keyed by pool and owner (the scheduler
 * is another helper's file: it does not hold one; its actors each take a
 * reference). A committer whose pool was freed (a group came back with
 * SL_ECANCELED) leaves the list and fails whatever is submitted to it.
 */
#include "actors/commit.h"
#include "actors/run_event.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct member_s member_t;

/* A group lives in its first member (no allocation to send one). */
typedef struct group_s group_t;
struct group_s {
    sl_commit_t *c;
    member_t *head;
    int n;
    int err;            /* for a failure delivered later (fail_later_cb) */
    const char *errmsg; /* static */
    /* in flight: */
    group_t *fly_next; /* the committer's list of groups in flight */
    const char **ds;   /* owned array, borrowed strings (its members'): its datasets, distinct */
    int nds;
    uint64_t ds_mask; /* the OR of their ds_bit */
};

struct member_s {
    member_t *next;
    char run_id[37];
    char tenant[37];  /* whose turn it is; "" when the transition named none */
    char dataset[37]; /* whose places its events take; "" when it named none */
    uint64_t ds_bit;  /* one bit of 64 from the dataset's hash (0 for none) */
    char *json;       /* owned: the transition as a JSON object */
    size_t len;
    int alone; /* sent again by itself after its group failed in a statement */
    int held;
    sl_pubsub_t *ps;
    sl_commit_cb cb;
    void *arg;
    group_t g; /* the group this member leads, if it does */
};

struct sl_commit_s {
    sl_commit_t *next; /* the list of committers */
    struct event_base *base;
    sl_pg_t *pg;
    char owner[128];
    int refs;
    int dead; /* the pool was freed */
    int inflight, max_inflight;
    group_t *flying;    /* the groups in flight */
    uint64_t busy_mask; /* the OR of their ds_mask: most "not in flight" answers in one test */
    int dispatching;
    member_t *pending, **pending_tail;
    int npending;
};

static sl_commit_t *committers;
static sl_metric_t *m_group_size, *m_groups;

/*
 * The group's rows in the columns run_event.h publishes, in seq order. One
 * statement whatever the group's size: prepared once per connection.
 */
static const char GROUP_SQL[] =
    "SELECT " SL_RUN_EVENT_COLUMNS " FROM sluice_run_transitions($1, $2::json) ORDER BY seq";
enum { COL_RUN_ID = 3 }; /* run_id in SL_RUN_EVENT_COLUMNS */

static void pump(sl_commit_t *c);

static void metrics_init(void)
{
    static const double buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    if (m_group_size)
        return;
    m_group_size = sl_metrics_histogram("sluice_commit_group_size",
                                        "Run transitions committed together in one transaction", "",
                                        buckets, (int)(sizeof buckets / sizeof buckets[0]));
    m_groups = sl_metrics_counter("sluice_commit_groups_total",
                                  "Group commits of run transitions by outcome", "outcome");
}

sl_commit_t *sl_commit_acquire(struct event_base *base, sl_pg_t *pg, const char *owner)
{
    metrics_init();
    for (sl_commit_t *c = committers; c; c = c->next)
        if (c->pg == pg && strcmp(c->owner, owner) == 0) {
            c->refs++;
            return c;
        }
    sl_commit_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    int total = 0;
    sl_pg_stats(pg, &total, NULL, NULL, NULL);
    c->base = base;
    c->pg = pg;
    snprintf(c->owner, sizeof c->owner, "%s", owner);
    c->refs = 1;
    c->max_inflight = total / 2 > 1 ? total / 2 : 1;
    c->pending_tail = &c->pending;
    c->next = committers;
    committers = c;
    return c;
}

static void unlist(sl_commit_t *c)
{
    for (sl_commit_t **p = &committers; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            return;
        }
}

static void member_free(member_t *m)
{
    free(m->json);
    free(m);
}

void sl_commit_release(sl_commit_t *c)
{
    if (!c || --c->refs > 0)
        return;
    /* Nothing can wait or be in flight: each member's owner holds a reference
     * until its callback has run. */
    unlist(c);
    free(c);
}

/* One bit of 64 for a dataset id: FNV-1a. */
static uint64_t ds_bit(const char *ds)
{
    uint64_t h = 14695981039346656037ull;
    for (; *ds; ds++)
        h = (h ^ (unsigned char)*ds) * 1099511628211ull;
    return 1ull << (h >> 58);
}

/* Whether m's dataset is in a group in flight (so m's events would wait for
 * that group's commit to take their places). */
static int ds_busy(const sl_commit_t *c, const member_t *m)
{
    if (!(c->busy_mask & m->ds_bit))
        return 0;
    for (const group_t *g = c->flying; g; g = g->fly_next)
        for (int i = 0; i < g->nds; i++)
            if (memcmp(g->ds[i], m->dataset, 36) == 0)
                return 1;
    return 0;
}

/* Puts g (just sent) in the list of groups in flight, with its datasets. */
static void fly(sl_commit_t *c, group_t *g, const char **ds)
{
    g->ds = ds;
    g->nds = 0;
    g->ds_mask = 0;
    for (member_t *m = g->head; m; m = m->next) {
        if (!m->dataset[0])
            continue;
        int seen = 0;
        for (int i = 0; i < g->nds && !seen; i++)
            seen = (g->ds_mask & m->ds_bit) && memcmp(g->ds[i], m->dataset, 36) == 0;
        if (!seen) {
            ds[g->nds++] = m->dataset;
            g->ds_mask |= m->ds_bit;
        }
    }
    g->fly_next = c->flying;
    c->flying = g;
    c->busy_mask |= g->ds_mask;
}

/* Takes g (come back) out of the list of groups in flight. */
static void land(sl_commit_t *c, group_t *g)
{
    c->busy_mask = 0;
    for (group_t **pp = &c->flying; *pp;) {
        if (*pp == g) {
            *pp = g->fly_next;
            continue;
        }
        c->busy_mask |= (*pp)->ds_mask;
        pp = &(*pp)->fly_next;
    }
    free(g->ds);
    g->ds = NULL;
    g->nds = 0;
}

/* ---- sending ---- */

/* Tells each member of g (taken, and gone with its first member) its failure, in order. */
static void group_fail(group_t *g, int err, const char *msg)
{
    for (member_t *m = g->head, *next; m; m = next) {
        next = m->next;
        m->cb(err, 0, msg, m->arg);
        member_free(m);
    }
}

static void fail_later_cb(evutil_socket_t fd, short what, void *arg)
{
    group_t *g = arg;
    sl_commit_t *c = g->c;
    (void)fd;
    (void)what;
    c->refs++; /* the callbacks may drop the last references */
    c->dispatching = 1;
    group_fail(g, g->err, g->errmsg);
    c->dispatching = 0;
    pump(c);
    sl_commit_release(c);
}

/* Fails g on a later loop turn (the callbacks never run inside a submit). msg is static. */
static void fail_later(group_t *g, int err, const char *msg)
{
    g->err = err;
    g->errmsg = msg;
    if (event_base_once(g->c->base, -1, EV_TIMEOUT, fail_later_cb, g, &(struct timeval){0, 0}) != 0)
        group_fail(g, err, msg); /* cannot happen short of memory: then at once */
}

/* Which member a row belongs to: from `*cur` on (rows come in group order), else from the start. */
static member_t *row_member(member_t *head, member_t **cur, const char *run_id)
{
    for (member_t *m = *cur; m; m = m->next)
        if (strcmp(m->run_id, run_id) == 0)
            return *cur = m;
    for (member_t *m = head; m != *cur; m = m->next)
        if (strcmp(m->run_id, run_id) == 0)
            return *cur = m;
    return NULL;
}

static void group_cb(const sl_pg_result_t *res, void *arg)
{
    group_t *g = arg;
    sl_commit_t *c = g->c;

    c->inflight--;
    land(c, g);
    c->refs++; /* the callbacks may drop the last references */
    c->dispatching = 1;
    if (res->err == SL_ECANCELED && !c->dead) {
        c->dead = 1; /* the pool is gone: nothing more goes to it */
        unlist(c);
    }
    if (res->err == SL_EDB && g->n > 1) {
        /* One statement failed, so nothing of the group committed: each member
         * goes again alone, at the head of the queue, so a bad one fails by itself. */
        sl_log(SL_LOG_WARN, "commit_group_split", "{s:i, s:s, s:s}", "members", g->n, "error",
               res->errmsg, "sqlstate", res->sqlstate);
        sl_metrics_add(m_groups, 1, "split");
        member_t *last = g->head;
        for (member_t *m = g->head; m; m = m->next) {
            m->alone = 1;
            last = m;
        }
        if (!c->pending)
            c->pending_tail = &last->next;
        last->next = c->pending;
        c->pending = g->head;
        c->npending += g->n;
    } else if (res->err) {
        sl_metrics_add(m_groups, 1, "failed");
        group_fail(g, res->err, res->errmsg);
    } else {
        sl_metrics_add(m_groups, 1, "committed");
        sl_metrics_observe(m_group_size, g->n);
        /* Published first, all of them in seq order, then each member told. */
        PGresult *r = res->res[0];
        int nrows = PQntuples(r);
        member_t *cur = g->head;
        for (int i = 0; i < nrows; i++) {
            const char *v[SL_RUN_EVENT_NCOLS];
            sl_run_event_row_values(r, i, v);
            member_t *m = v[COL_RUN_ID] ? row_member(g->head, &cur, v[COL_RUN_ID]) : NULL;
            if (!m)
                continue; /* cannot happen: every row is a member's */
            m->held = 1;
            if (m->ps)
                sl_run_event_publish_values(m->ps, "run", v);
        }
        for (member_t *m = g->head, *next; m; m = next) {
            next = m->next;
            m->cb(0, m->held, "", m->arg);
            member_free(m);
        }
    }
    c->dispatching = 0;
    pump(c);
    sl_commit_release(c);
}

/* How far take_group looks for other tenants' transitions (bounds its cost). */
#define FAIR_SCAN 4096

/* Unlinks *pp (a pending member) from the queue and returns it. */
static member_t *unqueue(sl_commit_t *c, member_t **pp)
{
    member_t *m = *pp;
    *pp = m->next;
    if (c->pending_tail == &m->next)
        c->pending_tail = pp;
    c->npending--;
    m->next = NULL;
    return m;
}

/*
 * Takes the next group off the queue: one member sent again alone, or up to
 * the bounds. When more wait than a group holds, each tenant's oldest waiting
 * transition first (among the first FAIR_SCAN), then the oldest. Either way
 * it passes over those whose dataset is in a group in flight (ds_busy): they
 * wait for it. The group lives in its first member; NULL when every waiting
 * transition that it looked at waits for a group in flight.
 */
static group_t *take_group(sl_commit_t *c, size_t *bytes)
{
    member_t *head = NULL, **tail = &head;
    int n = 0;
    *bytes = 2;
    if (c->pending->alone) {
        head = unqueue(c, &c->pending);
        n = 1;
        *bytes += head->len + 1;
    } else {
        if (c->npending > SL_COMMIT_GROUP_MAX) {
            const char *seen[SL_COMMIT_GROUP_MAX];
            int nseen = 0, scanned = 0;
            member_t **pp = &c->pending;
            while (*pp && n < SL_COMMIT_GROUP_MAX && scanned++ < FAIR_SCAN) {
                member_t *m = *pp;
                int known = m->alone; /* sent alone later, at the head */
                for (int i = 0; i < nseen && !known; i++)
                    known = strcmp(seen[i], m->tenant) == 0;
                if (known || (n > 0 && *bytes + m->len > SL_COMMIT_GROUP_BYTES) || ds_busy(c, m)) {
                    pp = &m->next;
                    continue;
                }
                seen[nseen++] = m->tenant;
                *tail = unqueue(c, pp); /* *pp is the next one now */
                tail = &m->next;
                n++;
                *bytes += m->len + 1;
            }
        }
        member_t **pp = &c->pending;
        int scanned = 0;
        while (*pp && n < SL_COMMIT_GROUP_MAX && scanned++ < FAIR_SCAN) {
            member_t *m = *pp;
            if (m->alone || (n > 0 && *bytes + m->len > SL_COMMIT_GROUP_BYTES))
                break;
            if (ds_busy(c, m)) {
                pp = &m->next;
                continue;
            }
            *tail = unqueue(c, pp);
            tail = &m->next;
            n++;
            *bytes += m->len + 1;
        }
    }
    if (!head)
        return NULL;
    group_t *g = &head->g;
    memset(g, 0, sizeof *g);
    g->c = c;
    g->head = head;
    g->n = n;
    return g;
}

static void pump(sl_commit_t *c)
{
    while (!c->dispatching && c->pending && c->inflight < c->max_inflight) {
        size_t bytes;
        group_t *g = take_group(c, &bytes);
        if (!g)
            break; /* what waits, waits for the groups in flight */
        char *batch = c->dead ? NULL : malloc(bytes + 1);
        const char **ds = batch ? malloc((size_t)g->n * sizeof *ds) : NULL;
        if (!ds) {
            free(batch);
            fail_later(g, c->dead ? SL_ECANCELED : SL_ENOMEM,
                       c->dead ? "database pool closed" : "out of memory");
            continue;
        }
        size_t off = 0;
        batch[off++] = '[';
        for (member_t *m = g->head; m; m = m->next) {
            if (m != g->head)
                batch[off++] = ',';
            memcpy(batch + off, m->json, m->len);
            off += m->len;
        }
        batch[off++] = ']';
        batch[off] = '\0';
        const char *params[] = {c->owner, batch};
        int err =
            sl_pg_query_prepared(c->pg, "sl_run_transitions", GROUP_SQL, 2, params, group_cb, g);
        free(batch);
        if (err != 0) {
            free(ds);
            fail_later(g, err, sl_strerror(err));
            continue;
        }
        fly(c, g, ds);
        c->inflight++;
    }
}

/* ---- submitting ---- */

int sl_commit_submit(sl_commit_t *c, const sl_commit_tr_t *t, sl_pubsub_t *ps, sl_commit_cb cb,
                     void *arg)
{
    if (!c || !t || !cb || !t->run_id || strlen(t->run_id) != 36 || !t->ctx_json || !t->state ||
        !t->events_json)
        return SL_EINVAL;
    /* The events go in as they are (JSON text, spliced): a group that fails on
     * a member's bad JSON is split, and only that member fails. */
    json_t *o = json_pack("{s:s, s:s?, s:i, s:s, s:s, s:s?, s:b, s:i, s:s?, s:f, s:s?}", "run",
                          t->run_id, "step", t->step, "attempt", t->attempt, "ctx", t->ctx_json,
                          "state", t->state, "chain_start", t->chain_start, "chain_transient",
                          t->chain_transient, "wait_count", t->wait_count, "word", t->word,
                          "wait_s", t->wait_s, "flow_version", t->flow_version);
    char *head = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    member_t *m = calloc(1, sizeof *m);
    size_t hlen = head ? strlen(head) : 0, elen = strlen(t->events_json);
    char *text = hlen >= 2 ? malloc(hlen + sizeof ",\"events\":" + elen + 1) : NULL;
    if (!m || !text) {
        free(head);
        free(m);
        free(text);
        return SL_ENOMEM;
    }
    /* head is {...}: its closing brace becomes ,"events":<events>} */
    size_t off = hlen - 1;
    memcpy(text, head, off);
    memcpy(text + off, ",\"events\":", sizeof ",\"events\":" - 1);
    off += sizeof ",\"events\":" - 1;
    memcpy(text + off, t->events_json, elen);
    off += elen;
    text[off++] = '}';
    text[off] = '\0';
    free(head);
    m->len = off;
    memcpy(m->run_id, t->run_id, 37);
    if (t->tenant_id)
        snprintf(m->tenant, sizeof m->tenant, "%s", t->tenant_id);
    if (t->dataset_id && strlen(t->dataset_id) == 36) {
        memcpy(m->dataset, t->dataset_id, 37);
        m->ds_bit = ds_bit(m->dataset);
    }
    m->json = text;
    m->ps = ps;
    m->cb = cb;
    m->arg = arg;
    *c->pending_tail = m;
    c->pending_tail = &m->next;
    c->npending++;
    pump(c);
    return 0;
}
