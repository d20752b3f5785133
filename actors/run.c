/*
 * run.c — the run actor (see run.h for the state machine).
 *
 * Invariant: an actor has at most one operation in progress (`busy`): a
 * commit, a step attempt, or a retry timer. Its completion is the message that
 * moves the actor on. Cancelling marks the actor and cancels that operation;
 * the actor ends when the operation reports back, never inside the cancel.
 *
 * Commits go through the group committer (actors/commit.h): the transitions
 * of many actors in one statement, sluice_run_transitions() (db/functions/
 * run_transition.sql), each an UPDATE of its runs row guarded by lease_owner
 * with its timeline events inserted from the row it updated — so events are
 * written only if the guard held, and an actor whose guard finds no row
 * (lease lost, file deleted) ends without effects while the rest of its group
 * commits. Every transition goes through it, the failure of a run whose
 * pipeline is gone included.
 */
#include "actors/run.h"
#include "actors/commit.h"
#include "actors/run_event.h"
#include "actors/service.h"
#include "actors/transition.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pubsub.h"
#include "core/rmtree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

/*
 * The lifecycle log (docs/flows.md, "Lifecycle logs"): one JSON line per run
 * transition that matters, written once its commit held — never for a
 * transition that was lost. The decision code fills a lifelog_t on its stack
 * (fixed-size fields) and hands it to commit(), which copies it into the
 * commit's own record; commit_cb writes the line with sl_log_line_* once the
 * commit held. Not in the actor: a parked run (issue 10) has no commit in
 * flight, and the 496 bytes are only needed between a decision and its commit.
 */
typedef enum {
    LL_NONE = 0,
    LL_STARTED,   /* debug */
    LL_RESUMED,   /* info */
    LL_RETRY,     /* warn */
    LL_FALLBACK,  /* warn after a transient failure, else info */
    LL_WAITING,   /* warn */
    LL_SUCCEEDED, /* info */
    LL_FAILED,    /* error */
} ll_kind_t;

static const char *const ll_events[] = {
    NULL,          "run.started", "run.resumed",   "run.retry",
    "run.fallback", "run.waiting", "run.succeeded", "run.failed",
};

typedef struct lifelog_s {
    ll_kind_t kind;
    int level;
    char step[64];         /* the step the transition comes from (or starts at) */
    char to[64];           /* fallback: its target; waiting: the step it resumes at */
    char via[16];          /* fallback: "fallback" or "always"; resumed: the old state */
    char error[64];        /* the error word; for run.succeeded its note, if any */
    char detail[256];      /* the step's message, cut */
    int attempt;           /* the attempt that ended (retry: the next one) */
    long long duration_ms; /* that attempt's duration; -1: no attempt */
    long long delay_ms;    /* retry: the delay; waiting: how long it waits; -1: none */
} lifelog_t;

/*
 * Strings many actors hold the same (the lease owner's name, pipeline and
 * step names, a dataset's record schema as JSON text): one refcounted copy
 * each, in a small hash table. An actor outlives its scheduler once detached,
 * so it cannot borrow the scheduler's copies; a copy per actor cost a parked
 * run 128 bytes for the owner, 3 x 64 for the names and the schema's text
 * (most of the file document it keeps for its next attempt; issue 10). The
 * flow VM shares the decoded schema table the same way (sl_flow_schema_t).
 */
typedef struct shared_s {
    struct shared_s *next;
    int refs;
    char s[]; /* NUL-terminated */
} shared_t;

#define SHARED_BUCKETS 256
static shared_t *shared_tab[SHARED_BUCKETS];

static unsigned shared_hash(const char *s)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % SHARED_BUCKETS;
}

/* A reference on the shared copy of s (borrowed), or NULL (no memory). */
static const char *shared_get(const char *s)
{
    shared_t **b = &shared_tab[shared_hash(s)], *e;
    for (e = *b; e; e = e->next)
        if (strcmp(e->s, s) == 0)
            break;
    if (!e) {
        size_t len = strlen(s);
        if ((e = malloc(sizeof *e + len + 1)) == NULL)
            return NULL;
        memcpy(e->s, s, len + 1);
        e->refs = 0;
        e->next = *b;
        *b = e;
    }
    e->refs++;
    return e->s;
}

/* Drops a reference taken with shared_get (NULL: none). */
static void shared_put(const char *s)
{
    if (!s)
        return;
    shared_t *e = (shared_t *)(void *)(s - offsetof(shared_t, s));
    if (--e->refs > 0)
        return;
    for (shared_t **pp = &shared_tab[shared_hash(s)]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    free(e);
}

/* *dst = a reference on v's shared copy, the old one dropped; SL_ENOMEM: unchanged. */
static int shared_set(const char **dst, const char *v)
{
    const char *n = shared_get(v);
    if (!n)
        return SL_ENOMEM;
    shared_put(*dst);
    *dst = n;
    return 0;
}

struct sl_run_s {
    sl_sched_t *sched;  /* NULL once detached */
    struct run_node_s *sched_node; /* the scheduler's (sl_sched__add), handed back at the end */
    sl_sched_ctx_t ctx; /* a copy: valid after the scheduler is gone (instance_id: shared) */
    int cancelled;
    int busy; /* an operation is in progress */
    char id[37], file_id[37];
    /* shared (shared_get): never NULL once started; step "" for no step */
    const char *tenant_id, *dataset_id, *pipeline, *step, *chain_start;
    int attempt;
    char *ctx_json;  /* owned */
    char *file_json;    /* owned; without path, schema and (doc_ids) the ids: see file_text */
    char *path;         /* owned: file.path, the blob's local file (the step borrows it for
                           sl.exec), or NULL: none */
    const char *schema; /* shared: the file document's "schema" (compact JSON), or NULL */
    int doc_ids;        /* file_json's "id" and "dataset_id" are file_id and dataset_id: kept
                           once, put back by file_text */
    int chain_transient;
    int wait_count;
    sl_flow_t *flow;     /* a reference, for the life of the actor */
    sl_step_t *cur;      /* the running attempt, or NULL */
    struct event *timer; /* retry delay, made at the first retry (NULL before) */
    char *tmpdir;           /* this actor's scratch dir's path (in tmpdir_buf) */
    int tmpdir_made;        /* 1 once the dir was made: at a step's first need of it
                               (sl_flow__scratch) or for the blob's fetch; removed at the
                               end only then */
    char *blob_key;         /* owned; s3 (issue 12): a blob with no local path, fetched into
                               tmpdir before the flow starts; NULL otherwise (heap, not fixed
                               buffers: a parked run keeps only what it needs, issue 10) */
    sl_pubsub_t *pubsub;    /* borrowed from the scheduler's opts (outlives every actor) */
    sl_commit_t *committer; /* a reference: the group committer of ctx.pg */
    char tmpdir_buf[];      /* tmpdir: allocated with the actor (one block) */
};

/* What a commit does once it holds. */
typedef enum { NEXT_ATTEMPT, NEXT_TIMER, NEXT_END } next_t;

typedef struct commit_s {
    sl_run_t *run;
    next_t next;
    int delay_ms;
    lifelog_t ll; /* the lifecycle line to write once it held (kind LL_NONE: none) */
} commit_t;

static sl_metric_t *m_step_seconds, *m_transitions, *m_retries, *m_fallbacks;

static void metrics_init(void)
{
    static const double buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
    if (m_step_seconds)
        return;
    m_step_seconds = sl_metrics_histogram(
        "sluice_step_duration_seconds", "Step attempt duration by pipeline, step and outcome",
        "pipeline,step,outcome", buckets, (int)(sizeof buckets / sizeof buckets[0]));
    m_transitions = sl_metrics_counter("sluice_run_transitions_total",
                                       "Timeline events written by run actors", "pipeline,kind");
    m_retries =
        sl_metrics_counter("sluice_step_retries_total", "Step attempts retried", "pipeline,step");
    m_fallbacks = sl_metrics_counter("sluice_fallbacks_total", "Fallback transitions taken",
                                     "pipeline,from,to");
}

static void run_attempt(sl_run_t *r);
static void run_end(sl_run_t *r);
static void retry_timer_cb(evutil_socket_t fd, short what, void *arg);

const char *sl_run__file_id(const sl_run_t *r)
{
    return r->file_id;
}

const char *sl_run__id(const sl_run_t *r)
{
    return r->id;
}

/* ---- ending ---- */

static void run_free(sl_run_t *r)
{
    if (r->timer)
        event_free(r->timer);
    if (r->flow)
        sl_flow_unref(r->flow);
    sl_commit_release(r->committer);
    shared_put(r->ctx.instance_id);
    shared_put(r->tenant_id);
    shared_put(r->dataset_id);
    shared_put(r->pipeline);
    shared_put(r->step);
    shared_put(r->chain_start);
    free(r->ctx_json);
    free(r->file_json);
    free(r->path);
    shared_put(r->schema);
    free(r->blob_key);
    free(r);
}

/* ---- scratch dirs: removed on the worker pool (core/rmtree.h) ---- */

typedef struct rm_job_s {
    int err;      /* set on the worker */
    char path[];  /* the dir, or (sweep) tmp_root */
} rm_job_t;

static void rm_work(void *arg)
{
    rm_job_t *j = arg;
    j->err = sl_rmtree_at(AT_FDCWD, j->path);
}

static void rm_done(void *arg)
{
    rm_job_t *j = arg;
    if (j->err)
        sl_log(SL_LOG_WARN, "scratch_dir_left", "{s:s, s:s}", "path", j->path, "error",
               strerror(j->err));
    free(j);
}

/* Is `name` a scratch dir of a process that is gone? "<run id>.<pid>.<seq>",
 * as sl_run__start names them; anything else under tmp_root (flows/) stays. */
static int stale_scratch_name(const char *name)
{
    const char *dot = strchr(name, '.');
    if (!dot || dot - name != 36)
        return 0;
    char *end;
    errno = 0;
    long pid = strtol(dot + 1, &end, 10);
    if (errno || pid <= 0 || *end != '.' || pid == (long)getpid())
        return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static void sweep_work(void *arg)
{
    rm_job_t *j = arg;
    DIR *d = opendir(j->path);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!stale_scratch_name(e->d_name))
            continue;
        int rc = sl_rmtree_at(dirfd(d), e->d_name);
        if (rc && !j->err)
            j->err = rc;
    }
    closedir(d);
}

void sl_run__sweep_scratch(const sl_sched_ctx_t *ctx)
{
    size_t len = strlen(ctx->tmp_root);
    rm_job_t *j = ctx->wq ? calloc(1, sizeof *j + len + 1) : NULL;
    if (!j)
        return;
    memcpy(j->path, ctx->tmp_root, len + 1);
    if (sl_workq_submit(ctx->wq, NULL, sweep_work, rm_done, j) != 0)
        free(j);
}

/* The actor is done: its scratch dir goes on a worker, the scheduler is told. */
static void run_end(sl_run_t *r)
{
    if (r->tmpdir_made && r->ctx.wq) {
        size_t len = strlen(r->tmpdir);
        rm_job_t *j = calloc(1, sizeof *j + len + 1);
        if (j) {
            memcpy(j->path, r->tmpdir, len + 1);
            if (sl_workq_submit(r->ctx.wq, NULL, rm_work, rm_done, j) != 0)
                free(j);
        }
    }
    if (r->sched)
        sl_sched__remove(r->sched, r->sched_node);
    run_free(r);
}

static void end_later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run_end(arg);
}

void sl_run__cancel(sl_run_t *r)
{
    if (r->cancelled)
        return;
    r->cancelled = 1;
    if (r->cur) {
        sl_step_cancel(r->cur); /* its callback ends the actor */
    } else if (r->timer && evtimer_pending(r->timer, NULL)) {
        evtimer_del(r->timer);
        r->busy = 0;
        event_base_once(r->ctx.base, -1, EV_TIMEOUT, end_later_cb, r, &(struct timeval){0, 0});
    }
    /* a commit in flight: its callback sees `cancelled` and ends the actor */
}

void sl_run__detach(sl_run_t *r)
{
    r->sched = NULL;
    sl_run__cancel(r);
}

/* ---- the lifecycle log ---- */

/* Fills g for the commit about to be made. Strings are copied (cut to fit). */
static void ll_set(lifelog_t *g, ll_kind_t kind, int level, const char *step, const char *error,
                   const char *detail, int attempt, double duration_s)
{
    g->kind = kind;
    g->level = level;
    snprintf(g->step, sizeof g->step, "%s", step ? step : "");
    snprintf(g->error, sizeof g->error, "%s", error ? error : "");
    snprintf(g->detail, sizeof g->detail, "%s", detail ? detail : "");
    g->to[0] = g->via[0] = '\0';
    g->attempt = attempt;
    g->duration_ms = duration_s >= 0 ? (long long)(duration_s * 1000.0 + 0.5) : -1;
    g->delay_ms = -1;
}

static void ll_opt_str(sl_log_line_t *l, const char *key, const char *v)
{
    if (v[0])
        sl_log_line_str(l, key, v);
}

/* Writes g, the line of r's commit that held. */
static void ll_emit(const sl_run_t *r, const lifelog_t *g)
{
    sl_log_line_t l;
    if (g->kind == LL_NONE || !sl_log_line_begin(&l, g->level, ll_events[g->kind]))
        return;
    sl_log_line_str(&l, "run_id", r->id);
    sl_log_line_str(&l, "file_id", r->file_id);
    sl_log_line_str(&l, "tenant_id", r->tenant_id);
    sl_log_line_str(&l, "dataset_id", r->dataset_id);
    sl_log_line_str(&l, "pipeline", r->pipeline);
    sl_log_line_str(&l, "step", g->step[0] ? g->step : NULL);
    if (g->kind == LL_SUCCEEDED) {
        sl_log_line_str(&l, "error", NULL);
        ll_opt_str(&l, "note", g->error);
    } else {
        sl_log_line_str(&l, "error", g->error[0] ? g->error : NULL);
    }
    ll_opt_str(&l, "detail", g->detail);
    ll_opt_str(&l, "to", g->to);
    ll_opt_str(&l, g->kind == LL_RESUMED ? "from" : "via", g->via);
    sl_log_line_int(&l, "attempt", g->attempt);
    if (g->duration_ms >= 0)
        sl_log_line_int(&l, "duration_ms", g->duration_ms);
    if (g->delay_ms >= 0)
        sl_log_line_int(&l, g->kind == LL_RETRY ? "delay_ms" : "wait_ms", g->delay_ms);
    sl_log_line_end(&l);
}

/* ---- commits ---- */

static void lease_given_back_cb(const sl_pg_result_t *res, void *arg)
{
    (void)res; /* if this is lost too, the lease lapses by itself (not renewed) */
    (void)arg;
}

/* The transition's outcome (commit.h); its events were published if it held,
 * even if the actor was cancelled meanwhile. */
static void commit_cb(int err, int held, const char *errmsg, void *arg)
{
    commit_t *c = arg;
    sl_run_t *r = c->run;
    next_t next = c->next;
    int delay = c->delay_ms;
    if (!err && held)
        ll_emit(r, &c->ll); /* the transition happened (a lost one logs run_commit_lost below) */
    free(c);
    r->busy = 0;
    if (r->cancelled) {
        run_end(r);
        return;
    }
    if (err || !held) {
        /*
         * Not committed (database down) or not ours any more (lease lost, file
         * deleted): stop here. If the run still exists its lease lapses and
         * it resumes from its last committed step.
         */
        sl_log(SL_LOG_WARN, "run_commit_lost", "{s:s, s:s, s:s}", "run_id", r->id, "step", r->step,
               "error", err ? errmsg : "lease lost or run deleted");
        if (err) {
            /* Give the lease back now rather than in lease_s: the run is
             * claimed again at once and resumes from its last committed step. */
            const char *params[] = {r->id, r->ctx.instance_id};
            sl_pg_query(r->ctx.pg,
                        "UPDATE runs SET lease_until = now() "
                        "WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                        2, params, lease_given_back_cb, NULL);
        }
        run_end(r);
        return;
    }
    switch (next) {
    case NEXT_ATTEMPT:
        run_attempt(r);
        break;
    case NEXT_TIMER: {
        struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
        /* Made at the first retry: most runs never need one (issue 10). Without
         * memory the actor ends here, as when a commit cannot be made: the
         * retry was committed, the run resumes once its lease lapses. */
        if (!r->timer && (r->timer = evtimer_new(r->ctx.base, retry_timer_cb, r)) == NULL) {
            run_end(r);
            break;
        }
        r->busy = 1;
        evtimer_add(r->timer, &tv);
        break;
    }
    case NEXT_END:
        run_end(r);
        break;
    }
}

/* Adds a timeline event {step, kind, detail} to events (detail taken; step may be NULL). */
static void add_event(sl_run_t *r, json_t *events, const char *step, const char *kind,
                      json_t *detail)
{
    json_array_append_new(events, json_pack("{s:s?, s:s, s:o}", "step", step, "kind", kind,
                                            "detail", detail ? detail : json_object()));
    sl_metrics_add(m_transitions, 1, r->pipeline, kind);
}

/*
 * Commits the actor's current fields with `state` and the events (taken),
 * then continues with `next`. `error` is the run's word (its error, or the
 * note of a run that succeeded); an empty step or no flow keeps the row's.
 * ll (borrowed, copied; NULL: none) is the lifecycle line to write if it holds.
 */
static void commit(sl_run_t *r, const char *state, const char *error, double wait_s, json_t *events,
                   next_t next, int delay_ms, const lifelog_t *ll)
{
    char *ev = json_dumps(events, JSON_COMPACT);
    json_decref(events);
    commit_t *c = malloc(sizeof *c);
    if (!ev || !c) {
        free(ev);
        free(c);
        run_end(r);
        return;
    }
    c->run = r;
    c->next = next;
    c->delay_ms = delay_ms;
    if (ll)
        c->ll = *ll;
    else
        c->ll.kind = LL_NONE;
    sl_commit_tr_t t = {.run_id = r->id,
                        .tenant_id = r->tenant_id,
                        .dataset_id = r->dataset_id,
                        .step = r->step && r->step[0] ? r->step : NULL,
                        .attempt = r->attempt,
                        .ctx_json = r->ctx_json,
                        .state = state,
                        .chain_start = r->chain_start && r->chain_start[0] ? r->chain_start : NULL,
                        .chain_transient = r->chain_transient,
                        .wait_count = r->wait_count,
                        .word = error,
                        .wait_s = wait_s,
                        .flow_version = r->flow ? sl_flow_version(r->flow) : NULL,
                        .events_json = ev};
    r->busy = 1;
    if (sl_commit_submit(r->committer, &t, r->pubsub, commit_cb, c) != 0) {
        r->busy = 0;
        free(c);
        free(ev);
        run_end(r);
        return;
    }
    free(ev);
}

/* ---- steps ---- */

static json_t *fail_detail(const sl_step_result_t *res, int attempt)
{
    json_t *d =
        json_pack("{s:s, s:b, s:i, s:f}", "error", res->err ? res->err : "failed", "transient",
                  res->transient, "attempt", attempt, "duration_s", res->duration_s);
    if (d && res->detail)
        json_object_set_new(d, "detail", json_string(res->detail));
    return d;
}

static void step_done_cb(sl_step_t *s, const sl_step_result_t *res, void *arg)
{
    lifelog_t ll = {0}; /* the lifecycle line of the commit below (LL_NONE: none) */
    sl_run_t *r = arg;
    (void)s;
    r->cur = NULL;
    r->busy = 0;
    sl_metrics_observe(m_step_seconds, res->duration_s, r->pipeline, r->step,
                       res->ok ? "ok" : "failed");
    if (r->cancelled) {
        run_end(r);
        return;
    }
    if (res->ctx_json) {
        char *c = strdup(res->ctx_json);
        if (c) {
            free(r->ctx_json);
            r->ctx_json = c;
        }
    }
    /* Where to go is transition.c's (shared with `sluice flow test`); what
     * to write about it is here. */
    sl_run_pos_t pos;
    sl_transition_t tr;
    snprintf(pos.step, sizeof pos.step, "%s", r->step);
    pos.attempt = r->attempt;
    snprintf(pos.chain_start, sizeof pos.chain_start, "%s", r->chain_start);
    pos.chain_transient = r->chain_transient;
    pos.wait_count = r->wait_count;
    int attempt = r->attempt; /* the attempt that ended */
    sl_transition_decide(r->flow, &pos, res, &tr);
    if (shared_set(&r->step, pos.step) != 0 || shared_set(&r->chain_start, pos.chain_start) != 0) {
        /* No memory: end without committing, as when a commit cannot be
         * made; the lease lapses and the run resumes from its last commit. */
        run_end(r);
        return;
    }
    r->attempt = pos.attempt;
    r->chain_transient = pos.chain_transient;
    r->wait_count = pos.wait_count;

    json_t *events = json_array();
    const char *from = tr.from;
    const char *err = tr.err;

    switch (tr.kind) {
    case SL_TR_NEXT:
    case SL_TR_SUCCEEDED: {
        json_t *d = json_pack("{s:f, s:i}", "duration_s", res->duration_s, "attempt", attempt);
        if (d && res->note) {
            json_object_set_new(d, "note", json_string(res->note));
            if (res->detail)
                json_object_set_new(d, "detail", json_string(res->detail));
        }
        add_event(r, events, from, "step_succeeded", d);
        if (tr.kind == SL_TR_NEXT) {
            add_event(r, events, r->step, "step_started", json_pack("{s:i}", "attempt", 1));
            commit(r, "running", NULL, 0, events, NEXT_ATTEMPT, 0, &ll);
        } else {
            add_event(r, events, from, "succeeded",
                      res->note ? json_pack("{s:s, s:s?}", "note", res->note, "detail", res->detail)
                                : NULL);
            ll_set(&ll, LL_SUCCEEDED, SL_LOG_INFO, from, res->note, NULL, attempt, res->duration_s);
            commit(r, "succeeded", res->note, 0, events, NEXT_END, 0, &ll);
        }
        return;
    }
    case SL_TR_HELD: {
        /* Held back by a service: not a failure of the step (transition.c). */
        char reason[192];
        snprintf(reason, sizeof reason, "waiting for %s, %.0f s",
                 res->wait_reason[0] ? res->wait_reason : from, ceil(tr.wait_s));
        add_event(r, events, from, "waiting",
                  json_pack("{s:s, s:s, s:f, s:s, s:i, s:b}", "reason", reason, "error", err,
                            "retry_in_s", tr.wait_s, "resume_step", r->step, "attempt", r->attempt,
                            "held", 1));
        ll_set(&ll, LL_WAITING, SL_LOG_WARN, from, err, reason, r->attempt, res->duration_s);
        snprintf(ll.to, sizeof ll.to, "%s", r->step);
        ll.delay_ms = (long long)(tr.wait_s * 1000.0);
        commit(r, "waiting", err, tr.wait_s, events, NEXT_END, 0, &ll);
        return;
    }
    default:
        break;
    }
    if (res->detail && strcmp(err, "lua_error") == 0)
        sl_log(SL_LOG_WARN, "step_lua_error", "{s:s, s:s, s:s, s:s}", "run_id", r->id, "file_id",
               r->file_id, "step", from, "detail", res->detail);
    add_event(r, events, from, "step_failed", fail_detail(res, attempt));

    switch (tr.kind) {
    case SL_TR_RETRY:
        ll_set(&ll, LL_RETRY, SL_LOG_WARN, from, err, res->detail, r->attempt, res->duration_s);
        ll.delay_ms = tr.delay_ms;
        sl_metrics_add(m_retries, 1, r->pipeline, r->step);
        add_event(r, events, from, "retry",
                  json_pack("{s:i, s:i, s:s}", "attempt", r->attempt, "delay_ms", tr.delay_ms,
                            "error", err));
        commit(r, "running", NULL, 0, events, NEXT_TIMER, tr.delay_ms, &ll);
        return;
    case SL_TR_FALLBACK:
        ll_set(&ll, LL_FALLBACK, res->transient ? SL_LOG_WARN : SL_LOG_INFO, from, err, res->detail,
               attempt, res->duration_s);
        snprintf(ll.to, sizeof ll.to, "%s", r->step);
        snprintf(ll.via, sizeof ll.via, "%s", tr.via);
        sl_metrics_add(m_fallbacks, 1, r->pipeline, from, r->step);
        add_event(r, events, from, tr.via,
                  json_pack("{s:s, s:s, s:s}", "from", from, "to", r->step, "error", err));
        add_event(r, events, r->step, "step_started", json_pack("{s:i}", "attempt", 1));
        commit(r, "running", NULL, 0, events, NEXT_ATTEMPT, 0, &ll);
        return;
    case SL_TR_WAITING: {
        char reason[128];
        snprintf(reason, sizeof reason, "waiting for %s", from);
        ll_set(&ll, LL_WAITING, SL_LOG_WARN, from, err, reason, attempt, res->duration_s);
        ll.delay_ms = (long long)(tr.wait_s * 1000.0);
        add_event(r, events, from, "waiting",
                  json_pack("{s:s, s:s, s:f, s:s}", "reason", reason, "error", err, "retry_in_s",
                            tr.wait_s, "resume_step", r->step));
        snprintf(ll.to, sizeof ll.to, "%s", r->step);
        commit(r, "waiting", err, tr.wait_s, events, NEXT_END, 0, &ll);
        return;
    }
    default:
        add_event(r, events, from, "failed", json_pack("{s:s}", "error", err));
        ll_set(&ll, LL_FAILED, SL_LOG_ERROR, from, err, res->detail, attempt, res->duration_s);
        commit(r, "failed", err, 0, events, NEXT_END, 0, &ll);
    }
}

/*
 * The file document the step sees: r->file_json with what file_doc took out
 * of it put back ("id" and "dataset_id", the actor's own ids, "path", and the
 * shared "schema"). Returns owned (the step copies it: freed once it
 * started), or NULL.
 */
static char *file_text(const sl_run_t *r)
{
    size_t dl = strlen(r->file_json);
    json_t *js = r->path ? json_string(r->path) : NULL; /* escaped as JSON */
    char *path = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
    json_decref(js);
    size_t extra = (r->doc_ids ? strlen(r->file_id) + strlen(r->dataset_id) + 32 : 0) +
                   (r->schema ? strlen(r->schema) + 16 : 0) + (path ? strlen(path) + 16 : 0);
    char *out;
    if (dl < 2 || r->file_json[dl - 1] != '}' || (r->path && !path)) {
        free(path);
        return NULL; /* file_doc made it: always an object */
    }
    if ((out = malloc(dl + extra + 1)) == NULL) {
        free(path);
        return NULL;
    }
    size_t n = dl - 1, cap = dl + extra + 1;
    memcpy(out, r->file_json, n);
    int first = dl == 2;
    if (r->doc_ids) {
        n += (size_t)snprintf(out + n, cap - n, "%s\"id\":\"%s\",\"dataset_id\":\"%s\"",
                              first ? "" : ",", r->file_id, r->dataset_id);
        first = 0;
    }
    if (path) {
        n += (size_t)snprintf(out + n, cap - n, "%s\"path\":%s", first ? "" : ",", path);
        first = 0;
        free(path);
    }
    if (r->schema)
        n += (size_t)snprintf(out + n, cap - n, "%s\"schema\":%s", first ? "" : ",", r->schema);
    out[n++] = '}';
    out[n] = '\0';
    return out;
}

static void run_attempt(sl_run_t *r)
{
    lifelog_t ll = {0}; /* the lifecycle line of the commit below (LL_NONE: none) */
    sl_step_input_t in = {0};
    char *file = file_text(r);
    in.run_id = r->id;
    in.tenant_id = r->tenant_id;
    in.dataset_id = r->dataset_id;
    in.file_id = r->file_id;
    in.pipeline = r->pipeline;
    in.step = r->step;
    in.attempt = r->attempt;
    in.ctx_json = r->ctx_json;
    in.file_json = file;
    in.tmpdir = r->tmpdir;
    in.tmpdir_made = &r->tmpdir_made;
    in.file_path = r->path;
    in.borrow = 1; /* the actor's fields: unchanged until the step's callback */
    r->busy = 1;
    int rc = file ? sl_step_start(r->ctx.vm, r->flow, &in, step_done_cb, r, &r->cur) : SL_ENOMEM;
    free(file);
    if (rc != 0) {
        r->busy = 0;
        r->cur = NULL;
        json_t *events = json_array();
        add_event(r, events, r->step, "failed",
                  json_pack("{s:s}", "error", "the step could not start"));
        ll_set(&ll, LL_FAILED, SL_LOG_ERROR, r->step, "internal_error", "the step could not start",
               r->attempt, -1);
        commit(r, "failed", "internal_error", 0, events, NEXT_END, 0, &ll);
    }
}

static void retry_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_run_t *r = arg;
    (void)fd;
    (void)what;
    r->busy = 0;
    if (r->cancelled) {
        run_end(r);
        return;
    }
    run_attempt(r);
}

/* ---- start ---- */

/* The file document of the claim plus `path`, the blob's local file. */
static char *file_doc(sl_run_t *r, const char *json_text)
{
    json_t *f = json_loads(json_text, 0, NULL);
    if (!f)
        return NULL;
    const char *key = json_string_value(json_object_get(f, "storage_key"));
    char path[1024];
    if (key && sl_store_local_path(r->ctx.store, key, path, sizeof path) == 0) {
        if ((r->path = strdup(path)) == NULL) { /* kept apart: see file_text */
            json_decref(f);
            return NULL;
        }
    } else if (key && sl_store_key_valid(key) && /* s3 (issue 12): fetched at the start */
             (r->blob_key = strdup(key)) == NULL) {
        json_decref(f);
        return NULL;
    }
    const char *bucket = sl_store_s3_bucket(r->ctx.store);
    if (key && bucket) /* file.s3: where Textract's asynchronous API reads it */
        json_object_set_new(f, "s3", json_pack("{s:s, s:s}", "bucket", bucket, "key", key));
    json_object_del(f, "storage_key");
    json_t *schema = json_object_get(f, "schema");
    if (json_is_object(schema)) { /* kept apart, shared (see shared_t) */
        char *text = json_dumps(schema, JSON_COMPACT);
        r->schema = text ? shared_get(text) : NULL;
        free(text);
        if (!r->schema) {
            json_decref(f);
            return NULL;
        }
        json_object_del(f, "schema");
    }
    /* The ids are the actor's own (uuids: nothing to escape when put back). */
    const char *fid = json_string_value(json_object_get(f, "id"));
    const char *did = json_string_value(json_object_get(f, "dataset_id"));
    if (fid && did && strcmp(fid, r->file_id) == 0 && strcmp(did, r->dataset_id) == 0 &&
        strspn(fid, "0123456789abcdefABCDEF-") == strlen(fid) &&
        strspn(did, "0123456789abcdefABCDEF-") == strlen(did)) {
        json_object_del(f, "id");
        json_object_del(f, "dataset_id");
        r->doc_ids = 1;
    }
    char *out = json_dumps(f, JSON_COMPACT);
    json_decref(f);
    return out;
}

/* What the start needs from the claim once the flow is known (copies: a fetch outlives it). */
typedef struct resume_s {
    sl_run_t *run;
    int has_step;
    char step[64];
    char old_state[16];
    char old_owner[128];
    char version[65]; /* the version being fetched */
    int has_version;  /* s3 (issue 12): version holds the claim's flow_version */
} resume_t;

static void start_flow(sl_sched_t *s, sl_run_t *r, resume_t *rs, const char *flow_version);
static void blob_fetched_cb(int err, const char *path, int is_copy, void *arg);

/*
 * The actor has its flow (or none): writes the first transition (started,
 * resumed, or failed for a pipeline that is gone) and goes on. rs is borrowed.
 */
static void run_begin(sl_run_t *r, const resume_t *rs)
{
    lifelog_t ll = {0}; /* the lifecycle line of the commit below (LL_NONE: none) */
    json_t *events = json_array();
    if (!r->flow) {
        /*
         * No flow for this pipeline (config changed): the run cannot go on. It
         * fails where it stands (its step, attempt and ctx as claimed).
         */
        if (shared_set(&r->step, rs->has_step ? rs->step : "") != 0) {
            json_decref(events);
            run_end(r);
            return;
        }
        add_event(r, events, rs->has_step ? rs->step : NULL, "failed",
                  json_pack("{s:s}", "error", "unknown_pipeline"));
        ll_set(&ll, LL_FAILED, SL_LOG_ERROR, r->step, "unknown_pipeline", NULL, r->attempt, -1);
        commit(r, "failed", "unknown_pipeline", 0, events, NEXT_END, 0, &ll);
        return;
    }
    const char *step = rs->has_step ? rs->step : NULL;
    if (step && !sl_flow_step(r->flow, step))
        step = NULL; /* the flow changed under a waiting run: start over */
    if (!step) {
        if (shared_set(&r->step, sl_flow_start(r->flow)) != 0) {
            json_decref(events);
            run_end(r);
            return;
        }
        r->attempt = 1;
        if (strcmp(rs->old_state, "queued") == 0) {
            add_event(r, events, r->step, "started", NULL);
            ll_set(&ll, LL_STARTED, SL_LOG_DEBUG, r->step, NULL, NULL, r->attempt, -1);
        } else {
            add_event(r, events, r->step, "resumed", json_pack("{s:s}", "from", rs->old_state));
            ll_set(&ll, LL_RESUMED, SL_LOG_INFO, r->step, NULL, NULL, r->attempt, -1);
            snprintf(ll.via, sizeof ll.via, "%s", rs->old_state);
        }
    } else {
        if (shared_set(&r->step, step) != 0) {
            json_decref(events);
            run_end(r);
            return;
        }
        if (r->attempt < 1)
            r->attempt = 1;
        add_event(r, events, r->step, "resumed",
                  json_pack("{s:s, s:s}", "from", rs->old_state, "previous_owner", rs->old_owner));
        ll_set(&ll, LL_RESUMED, SL_LOG_INFO, r->step, NULL, NULL, r->attempt, -1);
        snprintf(ll.via, sizeof ll.via, "%s", rs->old_state);
    }
    add_event(r, events, r->step, "step_started", json_pack("{s:i}", "attempt", r->attempt));
    commit(r, "running", NULL, 0, events, NEXT_ATTEMPT, 0, &ll);
}

/* The pinned version's source came back (or not): load it, or fall back to the current flow. */
static void flow_fetched_cb(const sl_pg_result_t *res, void *arg)
{
    resume_t *rs = arg;
    sl_run_t *r = rs->run;
    sl_flow_t *f = NULL;

    r->busy = 0;
    if (r->cancelled || !r->sched) {
        free(rs);
        run_end(r);
        return;
    }
    int col = res->err ? -1 : PQfnumber(res->res[0], "source");
    if (col >= 0 && PQntuples(res->res[0]) == 1)
        sl_sched__load_flow_version(r->sched, r->pipeline, rs->version,
                                    PQgetvalue(res->res[0], 0, col),
                                    (size_t)PQgetlength(res->res[0], 0, col), &f);
    if (!f) {
        sl_log(SL_LOG_WARN, "flow_version_unavailable", "{s:s, s:s, s:s, s:s}", "run_id", r->id,
               "pipeline", r->pipeline, "version", rs->version, "error",
               res->err ? res->errmsg : "not in flow_versions or does not load");
        f = sl_sched__flow_for(r->sched, r->pipeline);
    }
    r->flow = f;
    if (r->flow)
        sl_flow_ref(r->flow);
    run_begin(r, rs);
    free(rs);
}

int sl_run__start(sl_sched_t *s, const sl_run_claim_t *c)
{
    metrics_init();
    if (!c->file)
        return SL_ENOTFOUND; /* its file went away meanwhile */
    if (!c->id || !c->tenant_id || !c->dataset_id || !c->file_id || !c->pipeline || !c->ctx ||
        !c->old_state)
        return SL_EINVAL;
    /* One scratch dir per actor, not per run: an actor that lost its commit
     * removes its dir (on a worker) while the run may already run again
     * here, in a new actor that must not share it (found by the faults pass). */
    static unsigned actor_seq;
    const char *tmp_root = sl_sched__ctx(s)->tmp_root;
    unsigned seq = ++actor_seq;
    int tlen = snprintf(NULL, 0, "%s/%.36s.%ld.%u", tmp_root, c->id, (long)getpid(), seq);
    if (tlen < 0)
        return SL_EINVAL;
    sl_run_t *r = calloc(1, sizeof *r + (size_t)tlen + 1);
    resume_t *rs = calloc(1, sizeof *rs);
    if (!r || !rs) {
        free(r);
        free(rs);
        return SL_ENOMEM;
    }
    r->sched = s;
    r->ctx = *sl_sched__ctx(s);
    r->pubsub = sl_sched_pubsub(s);
    r->ctx.instance_id = shared_get(r->ctx.instance_id);
    r->tenant_id = shared_get(c->tenant_id);
    r->dataset_id = shared_get(c->dataset_id);
    r->pipeline = shared_get(c->pipeline);
    r->step = shared_get("");
    r->chain_start = shared_get(c->chain_start ? c->chain_start : "");
    if (!r->ctx.instance_id || !r->tenant_id || !r->dataset_id || !r->pipeline || !r->step ||
        !r->chain_start) {
        free(rs);
        run_free(r);
        return SL_ENOMEM;
    }
    snprintf(r->id, sizeof r->id, "%s", c->id);
    snprintf(r->file_id, sizeof r->file_id, "%s", c->file_id);
    r->attempt = c->attempt;
    r->ctx_json = strdup(c->ctx);
    r->chain_transient = c->chain_transient;
    r->wait_count = c->wait_count;
    r->file_json = file_doc(r, c->file);
    r->committer = sl_commit_acquire(r->ctx.base, r->ctx.pg, r->ctx.instance_id);
    r->tmpdir = r->tmpdir_buf;
    snprintf(r->tmpdir, (size_t)tlen + 1, "%s/%.36s.%ld.%u", tmp_root, c->id, (long)getpid(), seq);
    if (!r->ctx_json || !r->file_json || !r->committer) {
        free(rs);
        run_free(r);
        return SL_ENOMEM;
    }
    rs->run = r;
    rs->has_step = c->step != NULL;
    snprintf(rs->step, sizeof rs->step, "%s", c->step ? c->step : "");
    snprintf(rs->old_state, sizeof rs->old_state, "%s", c->old_state);
    snprintf(rs->old_owner, sizeof rs->old_owner, "%s", c->old_owner ? c->old_owner : "");
    r->sched_node = sl_sched__add(s, r);

    /* s3 (issue 12): the blob has no local file (S3): copy it into the scratch
     * dir first (made here: a metadata syscall, like opening a socket, not worth
     * a thread hop; other runs make theirs only if a step asks for it);
     * blob_fetched_cb goes on. */
    if (r->blob_key && sl_scratch_make(r->tmpdir) == 0) {
        r->tmpdir_made = 1;
        rs->has_version = c->flow_version != NULL;
        snprintf(rs->version, sizeof rs->version, "%s", c->flow_version ? c->flow_version : "");
        r->busy = 1;
        if (sl_store_fetch_local(r->ctx.store, r->blob_key, r->tmpdir, blob_fetched_cb, rs) == 0)
            return 0;
        r->busy = 0; /* the flow runs without a path, as before */
    }
    start_flow(s, r, rs, c->flow_version);
    return 0;
}

/* The actor's flow: the current one, or the version a taken-over run started
 * with (fetched from Postgres if this process does not have it), then
 * run_begin. Takes rs. flow_version may be NULL or rs->version. */
static void start_flow(sl_sched_t *s, sl_run_t *r, resume_t *rs, const char *flow_version)
{
    sl_flow_t *cur = sl_sched__flow_for(s, r->pipeline);
    r->flow = cur;
    /* issue 14: a run that began goes on with the version it started with,
     * whether taken over ('running', its lease lapsed) or back from 'waiting';
     * also when the pipeline was deleted since (cur NULL): in flight, it finishes.
     * Only a queued run (it never ran a step) takes the current flow. */
    if (flow_version && strcmp(rs->old_state, "queued") != 0 &&
        (!cur || strcmp(flow_version, sl_flow_version(cur)) != 0)) {
        r->flow = sl_sched__flow_version(s, r->pipeline, flow_version);
        if (!r->flow) {
            if (flow_version != rs->version)
                snprintf(rs->version, sizeof rs->version, "%s", flow_version);
            const char *params[] = {rs->version};
            r->busy = 1;
            if (sl_pg_query(r->ctx.pg, "SELECT source FROM flow_versions WHERE version = $1", 1,
                            params, flow_fetched_cb, rs) == 0)
                return; /* flow_fetched_cb goes on */
            r->busy = 0;
            r->flow = cur;
        }
    }
    if (r->flow)
        sl_flow_ref(r->flow);
    run_begin(r, rs);
    free(rs);
}

/* s3 (issue 12): the blob's copy is in the scratch dir (or not): its path goes
 * into the file document the flow sees, then the flow starts. */
static void blob_fetched_cb(int err, const char *path, int is_copy, void *arg)
{
    resume_t *rs = arg;
    sl_run_t *r = rs->run;

    (void)is_copy; /* the copy lives in r->tmpdir, removed with it at the end */
    r->busy = 0;
    if (r->cancelled || !r->sched) {
        free(rs);
        run_end(r);
        return;
    }
    char *p = err ? NULL : strdup(path);
    if (p) {
        free(r->path);
        r->path = p;
    } else {
        sl_log(SL_LOG_WARN, "blob_fetch_failed", "{s:s, s:s, s:s}", "run_id", r->id, "storage_key",
               r->blob_key, "error", sl_strerror(err ? err : SL_ENOMEM));
    }
    start_flow(r->sched, r, rs, rs->has_version ? rs->version : NULL);
}
