/*
 * scheduler.c — claims runs from Postgres with leases and holds their actors.
 *
 * One claim query at a time: when there is room (in_flight < max_in_flight,
 * and fewer than max_active of the runs held have work to do now, i.e. are
 * not parked on a call or a timer: admission) it claims up to claim_batch
 * runnable runs (queued, waiting whose time has come,
 * or running under an expired lease — a dead instance's) with FOR UPDATE SKIP
 * LOCKED, so instances sharing the database never claim the same run. A full
 * batch claims again at once; an empty one sleeps poll_ms (uploads kick it).
 * The claim itself is the SQL function sluice_claim_runs()
 * (db/functions/claim.sql); its rows are read by column name into an
 * sl_run_claim_t. docs/internals/scheduler.md walks through it all.
 *
 * Fairness: work-conserving weighted shares, decided by the claim. Runs are
 * taken in order of their tenant's cost in flight (runs.cost under a live
 * lease, every instance) plus the cost of its runs ahead in the same claim,
 * divided by its weight (fairness.weights): start-time fair queuing. A tenant
 * alone fills every slot (max_in_flight); a newcomer's first run goes ahead
 * of a busy tenant's next; nothing is preempted. Within a tenant, resumable
 * runs first, then its upload batches round-robin (runs.fair_rank).
 * max_in_flight_per_tenant > 0 adds a hard ceiling per tenant (x weight) on
 * the runs this instance holds. The queue itself stays in Postgres.
 * A heartbeat renews the leases of this instance's live actors (only
 * theirs: a run whose actor ended without committing — the database went
 * away — must see its lease lapse, to be claimed again), in chunks of 256
 * runs, one statement after the other; and a slower tick refreshes the run
 * gauges of /metrics from the database.
 */
#include "actors/scheduler.h"
#include "actors/run.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_PIPELINES 32
#define MAX_PINNED 32                 /* older flow versions held for taken-over runs */
#define ADMIT_RECHECK_MS 5            /* admission full: when to look at the parked count again */
#define CLAIM_LOW_WATER_DIV 4         /* busy: claim once max_active / 4 places are free (claim()) */

typedef struct pipeline_flow_s {
    char name[64];
    sl_flow_t *flow; /* a reference */
    int stored;      /* its source is in flow_versions (or was sent there) */
} pipeline_flow_t;

typedef struct run_node_s {
    sl_run_t *run;
    struct run_node_s *prev, *next;
} run_node_t;

struct sl_sched_s {
    sl_sched_ctx_t ctx;
    char instance_id[128];
    char tmp_root[512];
    int max_in_flight, claim_batch, lease_s, heartbeat_s, poll_ms;
    int max_active;   /* admission: runs held that are not parked (claim()) */
    int started, stopping;
    int claiming;     /* a claim query is in flight */
    int asked;        /* the in-flight claim's limit */
    /* The last claim found fewer runnable runs than it asked for: the queue
     * was empty then, so an actor ending does not claim again (each empty
     * claim cost Postgres ~3 ms: 1,600 of them for 3,000 runs in
     * flow_bench). Work that arrives later kicks (uploads, /process: the
     * engine link) or is found by the poll (waits coming due, leases of a
     * dead instance). Cleared by a kick, a full claim or a claim cut by room. */
    int drained;
    int kicked;       /* a kick came while the claim was in flight: claim again */
    /* New work arrived (a kick) since the last claim went out: the next claim
     * goes at once, whatever room there is, not at the low-water mark. */
    int urgent;
    /* A claim's outcome is unknown (its answer was lost, or unreadable): it
     * may have leased runs to this instance that no actor holds. They are
     * released (release_orphans) before the next claim, not left to wait out
     * their lease. */
    int orphans;
    int queries;      /* claim/heartbeat/gauge queries in flight (they point at s) */
    char *hb_ids;     /* owned: the heartbeat's snapshot of live run ids (live_ids)
                         while its chunks go out, else NULL */
    int hb_n, hb_next; /* ids in it; the first not sent yet */
    int free_pending; /* sl_sched_free ran: the last query callback frees s */
    int in_flight;
    run_node_t *runs; /* live actors (unordered list) */
    struct event *claim_timer, *heartbeat_timer, *gauge_timer;
    int npipelines;
    pipeline_flow_t pipelines[MAX_PIPELINES];
    sl_metric_t *m_runs; /* sluice_runs{pipeline,state} from the database */
    sl_metric_t *m_claimed;
    sl_pubsub_t *pubsub;  /* borrowed */
    int per_tenant;       /* ceiling on runs held per tenant (x its weight); 0: none */
    int no_shares;        /* claim oldest first (fairness.shares: false) */
    char *weights_json;   /* owned; {"tenant name or id": weight} */
    sl_metric_t *m_queue; /* sluice_queue_depth{tenant} */
    int nqueue_tenants;   /* tenants with a queue_depth series, to zero when they empty */
    char queue_tenants[256][37];
    sl_flow_t *pinned[MAX_PINNED]; /* references: versions loaded from flow_versions */
    int npinned_next;              /* the slot the next one takes (oldest evicted) */
};

/*
 * The claim is sluice_claim_runs() in db/functions/claim.sql (shares,
 * SKIP LOCKED, lease). $1 instance, $2 batch size, $3 lease seconds, $4 the
 * per-tenant ceiling (0: none), $5 weights, $6 shares on.
 */
static const char CLAIM_SQL[] = "SELECT * FROM sluice_claim_runs($1, $2, $3, $4, $5, $6)";

/* Where each column of a claim result is (PQfnumber, once per result). */
typedef struct claim_cols_s {
    int id, tenant_id, dataset_id, file_id, pipeline, step, attempt, ctx, chain_start,
        chain_transient, wait_count, flow_version, old_state, old_owner, file;
} claim_cols_t;

/* 0, or -1 if the result lacks a column (a database whose claim function is not ours). */
static int claim_cols(const PGresult *res, claim_cols_t *k)
{
    static const struct {
        const char *name;
        size_t off;
    } cols[] = {
        {"id", offsetof(claim_cols_t, id)},
        {"tenant_id", offsetof(claim_cols_t, tenant_id)},
        {"dataset_id", offsetof(claim_cols_t, dataset_id)},
        {"file_id", offsetof(claim_cols_t, file_id)},
        {"pipeline", offsetof(claim_cols_t, pipeline)},
        {"step", offsetof(claim_cols_t, step)},
        {"attempt", offsetof(claim_cols_t, attempt)},
        {"ctx", offsetof(claim_cols_t, ctx)},
        {"chain_start", offsetof(claim_cols_t, chain_start)},
        {"chain_transient", offsetof(claim_cols_t, chain_transient)},
        {"wait_count", offsetof(claim_cols_t, wait_count)},
        {"flow_version", offsetof(claim_cols_t, flow_version)},
        {"old_state", offsetof(claim_cols_t, old_state)},
        {"old_owner", offsetof(claim_cols_t, old_owner)},
        {"file", offsetof(claim_cols_t, file)},
    };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) {
        int n = PQfnumber(res, cols[i].name);
        if (n < 0) {
            sl_log(SL_LOG_ERROR, "claim_column_missing", "{s:s}", "column", cols[i].name);
            return -1;
        }
        *(int *)((char *)k + cols[i].off) = n;
    }
    return 0;
}

/* A value of row i, NULL for SQL null (borrowed from res). */
static const char *claim_val(const PGresult *res, int i, int col)
{
    return PQgetisnull(res, i, col) ? NULL : PQgetvalue(res, i, col);
}

static int claim_int(const PGresult *res, int i, int col)
{
    const char *v = claim_val(res, i, col);
    return v ? (int)strtol(v, NULL, 10) : 0;
}

/* Row i of a claim result into c (strings borrowed from res). */
static void claim_row(const PGresult *res, const claim_cols_t *k, int i, sl_run_claim_t *c)
{
    const char *ct = claim_val(res, i, k->chain_transient);

    c->id = claim_val(res, i, k->id);
    c->tenant_id = claim_val(res, i, k->tenant_id);
    c->dataset_id = claim_val(res, i, k->dataset_id);
    c->file_id = claim_val(res, i, k->file_id);
    c->pipeline = claim_val(res, i, k->pipeline);
    c->step = claim_val(res, i, k->step);
    c->attempt = claim_int(res, i, k->attempt);
    c->ctx = claim_val(res, i, k->ctx);
    c->chain_start = claim_val(res, i, k->chain_start);
    c->chain_transient = ct && ct[0] == 't';
    c->wait_count = claim_int(res, i, k->wait_count);
    c->flow_version = claim_val(res, i, k->flow_version);
    c->old_state = claim_val(res, i, k->old_state);
    c->old_owner = claim_val(res, i, k->old_owner);
    c->file = claim_val(res, i, k->file);
}

static void sched_destroy(sl_sched_t *s);

/*
 * Every query callback starts with this: it accounts for the query and, once
 * the scheduler was freed while queries were in flight, frees it with the last
 * one. Returns 1 if the callback must not touch s any further.
 */
static int query_done(sl_sched_t *s)
{
    s->queries--;
    if (s->free_pending) {
        if (s->queries == 0)
            sched_destroy(s);
        return 1;
    }
    return 0;
}

/* `name`: a prepared statement's (a literal), or NULL for an unnamed one. */
static int send_named(sl_sched_t *s, const char *name, const char *sql, int n,
                      const char *const *params, sl_pg_cb cb)
{
    s->queries++;
    int rc = name ? sl_pg_query_prepared(s->ctx.pg, name, sql, n, params, cb, s)
                  : sl_pg_query(s->ctx.pg, sql, n, params, cb, s);
    if (rc != 0) {
        s->queries--;
        return -1;
    }
    return 0;
}

static int send_query(sl_sched_t *s, const char *sql, int n, const char *const *params, sl_pg_cb cb)
{
    return send_named(s, NULL, sql, n, params, cb);
}

static void schedule_claim(sl_sched_t *s, int ms)
{
    if (!s->started || s->stopping)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(s->claim_timer, &tv);
}

#define RELEASE_SQL                                                                                \
    "UPDATE runs SET lease_owner = NULL, lease_until = NULL "                                      \
    "WHERE lease_owner = $1 AND state = 'running'"

static void late_released_cb(const sl_pg_result_t *r, void *arg)
{
    (void)arg;
    if (r->err)
        sl_log(SL_LOG_WARN, "lease_release_failed", "{s:s, s:b}", "error", r->errmsg, "late", 1);
    else
        sl_log(SL_LOG_INFO, "leases_released", "{s:i, s:b}", "runs",
               (int)strtol(PQcmdTuples(r->res[r->n - 1]), NULL, 10), "late", 1);
}

/* The live actors' run ids, 36 bytes each, packed (malloc'ed: the caller
 * frees it; at least 1 byte), *n of them; NULL without memory. */
static char *live_ids(const sl_sched_t *s, int *n)
{
    int k = 0;
    for (run_node_t *rn = s->runs; rn; rn = rn->next)
        k++;
    char *ids = malloc(k > 0 ? (size_t)k * 36 : 1);
    if (!ids)
        return NULL;
    int i = 0;
    for (run_node_t *rn = s->runs; rn && i < k; rn = rn->next)
        memcpy(ids + (size_t)i++ * 36, sl_run__id(rn->run), 36);
    *n = i;
    return ids;
}

/* Writes "{id,id,...}", a uuid[] literal of the k packed ids ("{}" for none),
 * into out (k * 37 + 3 bytes at least). */
static void uuid_array(char *out, const char *ids, int k)
{
    size_t off = 0;
    out[off++] = '{';
    for (int i = 0; i < k; i++) {
        if (i)
            out[off++] = ',';
        memcpy(out + off, ids + (size_t)i * 36, 36);
        off += 36;
    }
    out[off++] = '}';
    out[off] = '\0';
}

static void claim(sl_sched_t *s);

static void orphans_released_cb(const sl_pg_result_t *r, void *arg)
{
    sl_sched_t *s = arg;
    s->claiming = 0;
    if (query_done(s) || s->stopping)
        return;
    if (r->err) {
        sl_log(SL_LOG_WARN, "lease_release_failed", "{s:s, s:b}", "error", r->errmsg, "orphans", 1);
        schedule_claim(s, 1000); /* s->orphans stays: tried again before the next claim */
        return;
    }
    s->orphans = 0;
    int n = (int)strtol(PQcmdTuples(r->res[r->n - 1]), NULL, 10);
    if (n > 0)
        sl_log(SL_LOG_INFO, "leases_released", "{s:i, s:b}", "runs", n, "orphans", 1);
    claim(s);
}

/*
 * After a claim whose outcome is unknown: hands back this instance's running
 * runs that no live actor holds, so they are claimed again now rather than
 * when their lease lapses (lease_s; the heartbeat renews only live actors').
 * Runs one at a time with the claims (s->claiming): no claim is in flight, so
 * every run leased to this instance and not live is such an orphan (an actor
 * whose commit was lost ended and gave its lease back already, or tries to).
 */
static void release_orphans(sl_sched_t *s)
{
    int n = 0;
    char *live = live_ids(s, &n), *ids = live ? malloc((size_t)n * 37 + 3) : NULL;
    if (!ids) {
        free(live);
        schedule_claim(s, 1000);
        return;
    }
    uuid_array(ids, live, n);
    free(live);
    const char *params[] = {s->instance_id, ids};
    s->claiming = 1;
    if (send_query(s,
                   "UPDATE runs SET lease_owner = NULL, lease_until = NULL "
                   "WHERE lease_owner = $1 AND state = 'running' AND NOT (id = ANY ($2::uuid[]))",
                   2, params, orphans_released_cb) != 0) {
        s->claiming = 0;
        schedule_claim(s, 1000);
    }
    free(ids);
}

static void claim_cb(const sl_pg_result_t *r, void *arg)
{
    sl_sched_t *s = arg;
    s->claiming = 0;
    if (s->stopping && !r->err && PQntuples(r->res[0]) > 0) {
        /*
         * A claim that was out when the graceful stop handed the leases back:
         * its runs were leased to this instance after (or while) the hand-back
         * ran, and no actor will take them. Hand them back too, or they wait
         * out the whole lease (test_instances' rolling restart caught it).
         */
        const char *params[] = {s->instance_id};
        sl_pg_query(s->ctx.pg, RELEASE_SQL, 1, params, late_released_cb, NULL);
    }
    if (query_done(s) || s->stopping)
        return;
    if (r->err) {
        sl_log(SL_LOG_WARN, "claim_failed", "{s:s}", "error", r->errmsg);
        /* SL_EDB: the statement failed, nothing was claimed. Otherwise (the
         * connection dropped) it may have committed. */
        s->orphans |= r->err != SL_EDB;
        schedule_claim(s, s->orphans ? 0 : 1000);
        return;
    }
    PGresult *res = r->res[0];
    int n = PQntuples(res);
    claim_cols_t cols;
    if (n > 0 && claim_cols(res, &cols) != 0) {
        /* Claimed, but unreadable: hand the runs back, claim again later. */
        s->orphans = 1;
        schedule_claim(s, 1000);
        return;
    }
    for (int i = 0; i < n; i++) {
        sl_run_claim_t c;
        claim_row(res, &cols, i, &c);
        if (sl_run__start(s, &c) != 0)
            sl_log(SL_LOG_WARN, "run_start_failed", "{s:s}", "run_id", c.id ? c.id : "");
    }
    if (n)
        sl_metrics_add(s->m_claimed, n);
    /* a full batch: there may be more, claim again at once */
    /* (a per-tenant ceiling also cuts a claim short: then its tenant's actors
     * ending must claim again, as before) */
    s->drained = n < s->asked && !s->kicked && s->per_tenant <= 0;
    schedule_claim(s, s->drained ? s->poll_ms : 0);
}

static void claim(sl_sched_t *s)
{
    if (s->claiming || s->stopping || !s->started)
        return;
    if (s->orphans) {
        release_orphans(s); /* then claims */
        return;
    }
    int room = s->max_in_flight - s->in_flight;
    /*
     * Admission: the runs held that are not parked on a call or a timer have
     * work to do now (a step, a commit, a turn in a service's queue). Beyond
     * max_active, a claimed run would only wait in memory, where the claim's
     * order no longer acts, and add its first step to a burst every tenant
     * waits behind (docs/internals/scheduler.md, "Admission").
     */
    int active_room = s->max_active - (s->in_flight - sl_flowvm_parked(s->ctx.vm));
    if (active_room < room) {
        room = active_room;
        if (room <= 0) {
            /* runs parking make room without ending: look again soon (no query) */
            s->drained = 0;
            schedule_claim(s, ADMIT_RECHECK_MS);
            return;
        }
    }
    if (room <= 0) {
        s->drained = 0; /* full: an actor ending claims again */
        return;
    }
    /*
     * The low-water mark: while admission is what bounds the claim and many
     * runs are active (work for the cores), wait until a quarter of
     * max_active is free rather than claim the one or two places each ending
     * actor frees. A claim costs Postgres about the same for 2 runs as for
     * 16 (its fixed part is reading the tenants' heads and what each holds):
     * claimed at every ending, 6,000 runs took 517 claims of 2.96 ms
     * (flow_bench, pg_stat_statements). Not when work just arrived (a kick:
     * another tenant's first file goes out at once, fairness_bench) nor when
     * few runs are active (the latency of a lone file).
     */
    int active = s->in_flight - sl_flowvm_parked(s->ctx.vm);
    int low_water = s->max_active / CLAIM_LOW_WATER_DIV;
    if (room < low_water && room == active_room && active >= low_water && !s->urgent) {
        schedule_claim(s, ADMIT_RECHECK_MS); /* runs that park make room without ending */
        return;
    }
    if (room > s->claim_batch)
        room = s->claim_batch;
    char limit[16], lease[16], per_tenant[16];
    snprintf(limit, sizeof limit, "%d", room);
    snprintf(lease, sizeof lease, "%d", s->lease_s);
    snprintf(per_tenant, sizeof per_tenant, "%d", s->per_tenant);
    const char *params[] = {s->instance_id, limit, lease, per_tenant,
                            s->weights_json ? s->weights_json : "{}",
                            s->no_shares ? "false" : "true"};
    s->claiming = 1;
    s->asked = room;
    s->kicked = 0;
    s->urgent = 0;
    if (send_named(s, "sched_claim", CLAIM_SQL, 6, params, claim_cb) != 0) {
        s->claiming = 0;
        schedule_claim(s, 1000);
    }
}

static void claim_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    claim(arg);
}

/* ---- heartbeat: renew the leases of this instance's live actors ---- */

/*
 * In chunks of HB_CHUNK runs, one statement after the other: one UPDATE of
 * every live run (10,000 of them) held their row locks for ~450 ms every
 * heartbeat, and every group commit of those runs waited for it
 * (bench/fairness_bench.py with SLUICE_PG_STATEMENTS=1). A chunk holds at most
 * HB_CHUNK rows, for a few ms, and leaves the pool's other connections free.
 * The ids are a snapshot taken at the tick: a run that ends meanwhile is not
 * renewed (the statement's guard: still this owner's and running). The rows
 * are locked by id (ORDER BY id FOR NO KEY UPDATE), the order a group commit
 * takes them in (db/functions/run_transition.sql): in the UPDATE's own order
 * the two met in a cycle, and Postgres broke it only after deadlock_timeout,
 * 1 s, with a group's runs or the renewal standing still meanwhile.
 */
#define HB_CHUNK 256

static void heartbeat_end(sl_sched_t *s)
{
    free(s->hb_ids);
    s->hb_ids = NULL;
    s->hb_n = s->hb_next = 0;
}

static void heartbeat_chunk(sl_sched_t *s);

static void heartbeat_done(const sl_pg_result_t *r, void *arg)
{
    sl_sched_t *s = arg;
    if (query_done(s))
        return;
    if (r->err) {
        sl_log(SL_LOG_WARN, "lease_renew_failed", "{s:s}", "error", r->errmsg);
        heartbeat_end(s); /* the next tick tries again, well within the lease */
        return;
    }
    if (s->hb_next < s->hb_n && !s->stopping)
        heartbeat_chunk(s);
    else
        heartbeat_end(s);
}

static void heartbeat_chunk(sl_sched_t *s)
{
    int k = s->hb_n - s->hb_next < HB_CHUNK ? s->hb_n - s->hb_next : HB_CHUNK;
    char ids[HB_CHUNK * 37 + 3];
    uuid_array(ids, s->hb_ids + (size_t)s->hb_next * 36, k);
    s->hb_next += k;
    char lease[16];
    snprintf(lease, sizeof lease, "%d", s->lease_s);
    const char *params[] = {s->instance_id, lease, ids};
    if (send_named(s, "sched_renew",
                   "UPDATE runs r SET lease_until = now() + make_interval(secs => $2) "
                   "FROM (SELECT id FROM runs WHERE lease_owner = $1 AND state = 'running' "
                   "AND id = ANY ($3::uuid[]) ORDER BY id FOR NO KEY UPDATE) l "
                   "WHERE r.id = l.id",
                   3, params, heartbeat_done) != 0)
        heartbeat_end(s);
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_sched_t *s = arg;
    (void)fd;
    (void)what;
    struct timeval tv = {s->heartbeat_s, 0};
    evtimer_add(s->heartbeat_timer, &tv);
    if (s->hb_ids) {
        /* the last tick's chunks are still going (a slow database): the runs
         * they have not reached yet are renewed by them, the rest next tick */
        sl_log(SL_LOG_WARN, "lease_renew_behind", "{s:i, s:i}", "renewed", s->hb_next, "of",
               s->hb_n);
        return;
    }
    int n = 0;
    if (!s->runs || (s->hb_ids = live_ids(s, &n)) == NULL)
        return;
    s->hb_n = n;
    s->hb_next = 0;
    heartbeat_chunk(s);
}

/* ---- run gauges from the database (every instance sees every run) ---- */

static void gauge_done(const sl_pg_result_t *r, void *arg)
{
    sl_sched_t *s = arg;
    if (query_done(s) || r->err)
        return;
    static const char *states[] = {"queued",    "running", "waiting",
                                   "succeeded", "failed",  "cancelled"};
    /* zero the known series first, so a state that emptied reads 0 */
    for (int p = 0; p < s->npipelines; p++)
        for (size_t k = 0; k < sizeof states / sizeof states[0]; k++)
            sl_metrics_set(s->m_runs, 0, s->pipelines[p].name, states[k]);
    PGresult *res = r->res[0];
    int cp = PQfnumber(res, "pipeline"), cs = PQfnumber(res, "state"), cn = PQfnumber(res, "n");
    if (cp < 0 || cs < 0 || cn < 0)
        return;
    for (int i = 0; i < PQntuples(res); i++)
        sl_metrics_set(s->m_runs, strtod(PQgetvalue(res, i, cn), NULL), PQgetvalue(res, i, cp),
                       PQgetvalue(res, i, cs));
}

/* sluice_queue_depth{tenant}: queued runs per tenant (all instances). */
static void queue_done(const sl_pg_result_t *r, void *arg)
{
    sl_sched_t *s = arg;
    if (query_done(s) || r->err)
        return;
    for (int i = 0; i < s->nqueue_tenants; i++)
        sl_metrics_set(s->m_queue, 0, s->queue_tenants[i]);
    PGresult *res = r->res[0];
    int ct = PQfnumber(res, "tenant_id"), cn = PQfnumber(res, "n");
    if (ct < 0 || cn < 0)
        return;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *tenant = PQgetvalue(res, i, ct);
        int known = 0;
        for (int k = 0; k < s->nqueue_tenants && !known; k++)
            known = strcmp(s->queue_tenants[k], tenant) == 0;
        if (!known && s->nqueue_tenants == 256)
            continue; /* bounded: the first 256 tenants with a queue get a series */
        if (!known)
            snprintf(s->queue_tenants[s->nqueue_tenants++], 37, "%s", tenant);
        sl_metrics_set(s->m_queue, strtod(PQgetvalue(res, i, cn), NULL), tenant);
    }
}

static void gauge_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_sched_t *s = arg;
    (void)fd;
    (void)what;
    send_query(s, "SELECT pipeline, state, count(*) AS n FROM runs GROUP BY 1, 2", 0, NULL,
               gauge_done);
    send_query(s,
               "SELECT tenant_id::text AS tenant_id, count(*) AS n FROM runs "
               "WHERE state = 'queued' GROUP BY 1 ORDER BY 2 DESC LIMIT 256",
               0, NULL, queue_done);
    struct timeval tv = {5, 0};
    evtimer_add(s->gauge_timer, &tv);
}

static double gauge_in_flight(void *arg)
{
    return ((sl_sched_t *)arg)->in_flight;
}

/* ---- public API ---- */

int sl_sched_new(const sl_sched_opts_t *o, sl_sched_t **out)
{
    sl_sched_t *s = calloc(1, sizeof *s);
    if (!s)
        return SL_ENOMEM;
    snprintf(s->instance_id, sizeof s->instance_id, "%s", o->instance_id);
    snprintf(s->tmp_root, sizeof s->tmp_root, "%s", o->tmp_root ? o->tmp_root : "./var/tmp");
    s->ctx.base = o->base;
    s->ctx.pg = o->pg;
    s->ctx.store = o->store;
    s->ctx.wq = o->wq;
    s->ctx.vm = o->vm;
    s->pubsub = o->pubsub;
    s->ctx.instance_id = s->instance_id;
    s->ctx.tmp_root = s->tmp_root;
    s->max_in_flight = o->max_in_flight > 0 ? o->max_in_flight : 10000;
    s->max_active = o->max_active > 0 ? o->max_active : SL_SCHED_MAX_ACTIVE;
    s->claim_batch = o->claim_batch > 0 ? o->claim_batch : 200;
    s->lease_s = o->lease_s > 0 ? o->lease_s : 30;
    s->heartbeat_s = o->heartbeat_s > 0 ? o->heartbeat_s : (s->lease_s >= 3 ? s->lease_s / 3 : 1);
    s->poll_ms = o->poll_ms > 0 ? o->poll_ms : 250;
    s->per_tenant = o->max_in_flight_per_tenant > 0 ? o->max_in_flight_per_tenant : 0;
    s->no_shares = o->no_shares != 0;
    if (o->weights_json && !(s->weights_json = strdup(o->weights_json))) {
        free(s);
        return SL_ENOMEM;
    }
    s->claim_timer = evtimer_new(o->base, claim_timer_cb, s);
    s->heartbeat_timer = evtimer_new(o->base, heartbeat_cb, s);
    s->gauge_timer = evtimer_new(o->base, gauge_cb, s);
    if (!s->claim_timer || !s->heartbeat_timer || !s->gauge_timer) {
        sl_sched_free(s);
        return SL_ENOMEM;
    }
    s->m_runs = sl_metrics_gauge("sluice_runs", "Runs by pipeline and state (all instances)",
                                 "pipeline,state");
    s->m_claimed =
        sl_metrics_counter("sluice_runs_claimed_total", "Runs claimed by this instance", NULL);
    sl_metrics_gauge_fn("sluice_runs_in_flight", "Runs held by actors of this instance",
                        gauge_in_flight, s);
    s->m_queue =
        sl_metrics_gauge("sluice_queue_depth", "Queued runs by tenant (all instances)", "tenant");
    *out = s;
    return 0;
}

sl_pubsub_t *sl_sched_pubsub(const sl_sched_t *s)
{
    return s ? s->pubsub : NULL;
}

/* ---- flow versions: every loaded flow's source, for taken-over runs ---- */

static void flow_stored_cb(const sl_pg_result_t *r, void *arg)
{
    if (query_done(arg))
        return;
    if (r->err)
        sl_log(SL_LOG_WARN, "flow_version_store_failed", "{s:s}", "error", r->errmsg);
}

/*
 * Stores the source of p's flow in flow_versions (once per version: ON
 * CONFLICT DO NOTHING): the bytes sl_flow_load compiled, whose sha256 is the
 * version. A source with a NUL byte can't be a text parameter: not stored,
 * so that version cannot be pinned.
 */
static void store_flow(sl_sched_t *s, pipeline_flow_t *p)
{
    size_t len = 0;
    const char *src;

    if (p->stored || !s->started || s->stopping)
        return;
    p->stored = 1;
    src = sl_flow_source(p->flow, &len);
    if (src && strlen(src) == len) {
        const char *params[] = {sl_flow_version(p->flow), p->name, src};
        send_query(s,
                   "INSERT INTO flow_versions (version, pipeline, source) VALUES ($1, $2, $3) "
                   "ON CONFLICT (version) DO NOTHING",
                   3, params, flow_stored_cb);
    }
}

sl_flow_t *sl_sched__flow_version(sl_sched_t *s, const char *pipeline, const char *version)
{
    sl_flow_t *cur = sl_sched_flow(s, pipeline);

    if (cur && strcmp(sl_flow_version(cur), version) == 0)
        return cur;
    for (int i = 0; i < MAX_PINNED; i++)
        if (s->pinned[i] && strcmp(sl_flow_name(s->pinned[i]), pipeline) == 0 &&
            strcmp(sl_flow_version(s->pinned[i]), version) == 0)
            return s->pinned[i];
    return NULL;
}

int sl_sched__load_flow_version(sl_sched_t *s, const char *pipeline, const char *version,
                                const char *source, size_t len, sl_flow_t **out)
{
    char hash[65], dir[600], path[700], err[512];
    sl_flow_t *f = NULL;
    int fd, rc;

    *out = sl_sched__flow_version(s, pipeline, version);
    if (*out)
        return 0;
    sl_sha256_hex(source, len, hash);
    if (strcmp(hash, version) != 0)
        return SL_EINVAL; /* not that version's bytes */
    /* sl_flow_load reads a file: the version's own, under tmp_root (its name in tracebacks) */
    snprintf(dir, sizeof dir, "%s/flows", s->tmp_root);
    if (sl_scratch_make(dir) != 0)
        return SL_EIO;
    snprintf(path, sizeof path, "%s/%s-%s.lua", dir, pipeline, version);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return SL_EIO;
    rc = write(fd, source, len) == (ssize_t)len ? 0 : SL_EIO;
    close(fd);
    if (rc == 0)
        rc = sl_flow_load(s->ctx.vm, pipeline, path, &f, err, sizeof err);
    if (rc != 0) {
        sl_log(SL_LOG_WARN, "flow_version_load_failed", "{s:s, s:s, s:s}", "pipeline", pipeline,
               "version", version, "error", rc == SL_EIO ? "cannot write the flow file" : err);
        return rc;
    }
    if (strcmp(sl_flow_version(f), version) != 0) { /* the file changed under us */
        sl_flow_unref(f);
        return SL_EINVAL;
    }
    sl_flow_unref(s->pinned[s->npinned_next]); /* the oldest; its runs hold their own refs */
    s->pinned[s->npinned_next] = f;            /* takes the reference */
    s->npinned_next = (s->npinned_next + 1) % MAX_PINNED;
    sl_log(SL_LOG_INFO, "flow_version_loaded", "{s:s, s:s}", "pipeline", pipeline, "version",
           version);
    *out = f;
    return 0;
}

int sl_sched_set_flow(sl_sched_t *s, const char *pipeline, sl_flow_t *f)
{
    pipeline_flow_t *p = NULL;

    for (int i = 0; i < s->npipelines && !p; i++)
        if (strcmp(s->pipelines[i].name, pipeline) == 0)
            p = &s->pipelines[i];
    if (p) {
        sl_flow_ref(f);
        sl_flow_unref(p->flow);
    } else {
        if (s->npipelines == MAX_PIPELINES)
            return SL_ETOOBIG;
        p = &s->pipelines[s->npipelines++];
        snprintf(p->name, sizeof p->name, "%s", pipeline);
        sl_flow_ref(f);
    }
    p->flow = f;
    p->stored = 0;
    store_flow(s, p); /* not before start: the schema may not be there yet */
    return 0;
}

int sl_sched_drop_flow(sl_sched_t *s, const char *pipeline)
{
    for (int i = 0; i < s->npipelines; i++) {
        if (strcmp(s->pipelines[i].name, pipeline) != 0)
            continue;
        sl_flow_unref(s->pipelines[i].flow); /* actors in flight hold their own references */
        s->pipelines[i] = s->pipelines[--s->npipelines];
        return 0;
    }
    return SL_ENOTFOUND;
}

sl_flow_t *sl_sched_flow(const sl_sched_t *s, const char *pipeline)
{
    for (int i = 0; i < s->npipelines; i++)
        if (strcmp(s->pipelines[i].name, pipeline) == 0)
            return s->pipelines[i].flow;
    return NULL;
}

sl_flow_t *sl_sched__flow_for(sl_sched_t *s, const char *pipeline)
{
    return sl_sched_flow(s, pipeline);
}

void sl_sched_start(sl_sched_t *s)
{
    if (s->started)
        return;
    s->started = 1;
    sl_run__sweep_scratch(&s->ctx);
    for (int i = 0; i < s->npipelines; i++)
        store_flow(s, &s->pipelines[i]);
    schedule_claim(s, 0);
    struct timeval hb = {s->heartbeat_s, 0}, g = {0, 0};
    evtimer_add(s->heartbeat_timer, &hb);
    evtimer_add(s->gauge_timer, &g);
}

void sl_sched_kick(sl_sched_t *s)
{
    if (!s)
        return;
    s->drained = 0;
    s->urgent = 1;
    if (s->claiming)
        s->kicked = 1; /* the claim out may have read the queue before this work */
    else
        schedule_claim(s, 0);
}

const sl_sched_ctx_t *sl_sched__ctx(const sl_sched_t *s)
{
    return &s->ctx;
}

run_node_t *sl_sched__add(sl_sched_t *s, sl_run_t *r)
{
    run_node_t *n = calloc(1, sizeof *n);
    if (!n)
        return NULL; /* only bookkeeping: cancel-by-file won't see it */
    n->run = r;
    n->next = s->runs;
    if (s->runs)
        s->runs->prev = n;
    s->runs = n;
    s->in_flight++;
    return n;
}

void sl_sched__remove(sl_sched_t *s, run_node_t *n)
{
    if (n) {
        if (n->prev)
            n->prev->next = n->next;
        else
            s->runs = n->next;
        if (n->next)
            n->next->prev = n->prev;
        free(n);
        s->in_flight--;
    }
    if (!s->stopping && !s->drained && !s->claiming)
        schedule_claim(s, 0);
}

int sl_sched_cancel_file(sl_sched_t *s, const char *file_id)
{
    int n_cancelled = 0;
    if (!s)
        return 0;
    /* collect first: cancelling does not remove synchronously, but be safe */
    for (run_node_t *n = s->runs; n; n = n->next) {
        if (strcmp(sl_run__file_id(n->run), file_id) == 0) {
            sl_run__cancel(n->run);
            n_cancelled++;
        }
    }
    return n_cancelled;
}

int sl_sched_message(sl_sched_t *s, const char *msg)
{
    if (strcmp(msg, "kick") == 0) {
        sl_sched_kick(s);
        return 0;
    }
    /* A file id is a UUID: 36 characters of hex digits and dashes. */
    if (strncmp(msg, "cancel ", 7) == 0 && strlen(msg + 7) == 36 &&
        strspn(msg + 7, "0123456789abcdefABCDEF-") == 36) {
        int n = sl_sched_cancel_file(s, msg + 7);
        sl_log(SL_LOG_INFO, "file_actors_cancelled", "{s:s, s:i}", "file_id", msg + 7, "actors", n);
        return 0;
    }
    sl_log(SL_LOG_WARN, "engine_message_unknown", "{s:s}", "message", msg);
    return SL_EINVAL;
}

int sl_sched_in_flight(const sl_sched_t *s)
{
    return s ? s->in_flight : 0;
}

static void sched_destroy(sl_sched_t *s)
{
    free(s->weights_json);
    free(s->hb_ids);
    for (int i = 0; i < s->npipelines; i++)
        sl_flow_unref(s->pipelines[i].flow);
    for (int i = 0; i < MAX_PINNED; i++)
        if (s->pinned[i])
            sl_flow_unref(s->pinned[i]);
    run_node_t *n = s->runs;
    while (n) {
        run_node_t *next = n->next;
        free(n);
        n = next;
    }
    free(s);
}

void sl_sched_free(sl_sched_t *s)
{
    if (!s)
        return;
    s->stopping = 1;
    /* detached actors finish their cancel without calling back into s */
    for (run_node_t *n = s->runs; n; n = n->next)
        sl_run__detach(n->run);
    if (s->claim_timer)
        event_free(s->claim_timer);
    if (s->heartbeat_timer)
        event_free(s->heartbeat_timer);
    if (s->gauge_timer)
        event_free(s->gauge_timer);
    s->claim_timer = s->heartbeat_timer = s->gauge_timer = NULL;
    if (s->queries > 0)
        s->free_pending = 1; /* the last query callback frees s */
    else
        sched_destroy(s);
}

/* ---- the graceful stop: hand the leases back (issue 12) ---- */

typedef struct stop_ctx_s {
    sl_sched_stopped_cb cb;
    void *arg;
} stop_ctx_t;

static void leases_released_cb(const sl_pg_result_t *r, void *arg)
{
    stop_ctx_t *st = arg;
    int n = 0;
    if (r->err) {
        sl_log(SL_LOG_WARN, "lease_release_failed", "{s:s}", "error", r->errmsg);
    } else {
        PGresult *res = r->res[r->n - 1];
        const char *v = PQcmdTuples(res);
        char *end;
        long k = strtol(v, &end, 10);
        n = (end != v && k >= 0 && k <= INT32_MAX) ? (int)k : 0;
        sl_log(SL_LOG_INFO, "leases_released", "{s:i}", "runs", n);
    }
    if (st->cb)
        st->cb(r->err, n, st->arg);
    free(st);
}

int sl_sched_stop(sl_sched_t *s, sl_sched_stopped_cb cb, void *arg)
{
    char owner[128];
    sl_pg_t *pg;
    int err;
    if (!s)
        return SL_EINVAL;
    stop_ctx_t *st = calloc(1, sizeof *st);
    pg = s->ctx.pg;
    snprintf(owner, sizeof owner, "%s", s->instance_id);
    sl_sched_free(s); /* actors first: none claims or commits after the hand-back is sent */
    if (!st)
        return SL_ENOMEM;
    st->cb = cb;
    st->arg = arg;
    const char *params[] = {owner};
    /* Waiting runs keep no lease (leaving 'running' ends it: run_transition.sql). */
    if ((err = sl_pg_query(pg, RELEASE_SQL, 1, params, leases_released_cb, st)) != 0) {
        free(st);
        return err;
    }
    return 0;
}
