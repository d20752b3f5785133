/*
 * pg.c — asynchronous Postgres pool on libevent (libpq non-blocking + pipeline mode).
 *
 * Each connection is a small state machine (see docs/internals/pg.md):
 *
 *   DOWN --backoff timer--> CONNECTING --PQconnectPoll OK--> IDLE <--> BUSY
 *     ^                         |                              |        |
 *     +------- failed ----------+------------- lost -----------+--------+
 *
 * A batch is one pipeline: every statement sent with PQsendQueryParams, then a
 * single PQpipelineSync, so the server runs them as one implicit transaction.
 * Results are collected as they arrive; the user's callback is always posted
 * to the loop (an event embedded in the batch, made active) so it never runs
 * from inside the call that started the batch, and the batch no longer needs
 * the pool once its completion is posted (that is what makes sl_pg_free safe).
 */
#include "db/pg.h"
#include "core/err.h"
#include "core/fault.h"
#include "core/log.h"

#include <event2/event_struct.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#define SL_PG_QUEUE_MAX 10000      /* batches waiting for a connection */
#define SL_PG_BATCH_MAX_STMTS 1024 /* statements in one batch */
#define SL_PG_MAX_PARAMS 65535     /* the protocol's limit (Int16 count) */
#define SL_PG_BACKOFF_MIN_MS 100
#define SL_PG_BACKOFF_MAX_MS 5000
#define SL_PG_CONNECT_TIMEOUT_MS 10000 /* PQconnectPoll does not enforce connect_timeout */
#define SL_PG_POOL_MAX 256
#define SL_PG_ERRMSG_MAX 1024
#define SL_PG_OPTIONS_MAX 1024
#define SL_PG_PREPARED_MAX 32 /* named statements prepared per connection; more run unnamed */
#define SL_PG_SHARE_MAX 64    /* shared batches carried in one transaction */
#define SL_PG_SHARE_SCAN 1024 /* how far conn_next looks down the queue for them */
#define SL_PG_RETRY_MAX 3     /* re-runs of a batch that lost a deadlock or serialization race */

typedef enum { CONN_DOWN, CONN_CONNECTING, CONN_IDLE, CONN_BUSY } conn_state_t;

typedef struct sl_pg_stmt_s {
    char *sql;
    int nparams;
    char **params;    /* nparams entries; NULL entry = SQL NULL */
    const char *name; /* a prepared statement's name (borrowed for the pool's life), or NULL */
    int prep;         /* 1: a Parse was sent first, whose result comes before the statement's */
} sl_pg_stmt_t;

struct sl_pg_batch_s {
    sl_pg_t *pg;             /* NULL once the completion is posted */
    struct event_base *base; /* kept so completion needs no pool */
    TAILQ_ENTRY(sl_pg_batch_s) link;
    sl_pg_stmt_t *stmts;
    int n, cap;
    sl_pg_cb cb;
    void *arg;
    PGresult **res; /* n slots, filled as results arrive */
    int cur;        /* statement whose results are arriving */
    int first_err;  /* index of the first failing statement, or -1 */
    int err;
    int fault; /* SL_FAULTS: the batch runs, then its answer is lost */
    int retries; /* times re-run after a 40001/40P01 (at most SL_PG_RETRY_MAX) */
    int share;   /* may share its transaction with other shared batches (sl_pg_query_shared) */
    int alone;   /* split from a carrier whose transaction failed: runs by itself */
    /* A carrier (made by conn_next, never queued): the shared batches whose
     * statements it sends in one transaction. Its stmts are copies of theirs
     * (the strings stay theirs); its results go back to them at the end. */
    sl_pg_batch_t **subs;
    int nsubs;
    struct event ev_done;
    char errmsg[SL_PG_ERRMSG_MAX];
};

typedef struct sl_pg_conn_s {
    sl_pg_t *pg;
    int id;
    conn_state_t state;
    PGconn *pc;
    struct event *ev_io;    /* connecting: one-shot per poll step; up: EV_READ|EV_PERSIST */
    struct event *ev_write; /* up: added while PQflush reports unsent data */
    struct event *ev_timer; /* DOWN: backoff; CONNECTING: connect deadline */
    int want_write;
    int backoff_ms;
    int tried;            /* first connection attempt concluded */
    int failures;         /* consecutive failed attempts, to log only transitions */
    sl_pg_batch_t *batch; /* in flight while BUSY */
    const char *prepared[SL_PG_PREPARED_MAX]; /* names prepared on this session (borrowed) */
    int nprepared;
} sl_pg_conn_t;

TAILQ_HEAD(sl_pg_queue_s, sl_pg_batch_s);

struct sl_pg_s {
    struct event_base *base;
    char *conninfo;
    char *options;
    const char *kw[4];
    const char *vals[4];
    sl_pg_conn_t *conns;
    int nconns;
    int up, busy, starting;
    struct sl_pg_queue_s queue;
    int nqueued;
    uint32_t rng;
    unsigned faults; /* SL_FAULTS: faults injected so far */
};

static void conn_start(sl_pg_conn_t *c);
static void conn_next(sl_pg_conn_t *c);

/* ---- helpers ---- */

static char *dup_str(const char *s)
{
    size_t len = strlen(s);
    char *p = malloc(len + 1);
    if (p)
        memcpy(p, s, len + 1);
    return p;
}

/* Copies a libpq message, without its trailing newline, into a bounded buffer. */
static void copy_msg(char *dst, size_t cap, const char *src)
{
    if (!src || !*src)
        src = "unknown error";
    size_t len = strnlen(src, cap - 1);
    memcpy(dst, src, len);
    while (len > 0 && (dst[len - 1] == '\n' || dst[len - 1] == '\r'))
        len--;
    dst[len] = '\0';
}

static uint32_t next_rand(sl_pg_t *pg)
{
    /* xorshift32: jitter only, no security meaning */
    uint32_t x = pg->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    pg->rng = x ? x : 0x9e3779b9u;
    return pg->rng;
}

static void notice_cb(void *arg, const char *message)
{
    char buf[512];
    copy_msg(buf, sizeof buf, message);
    sl_log(SL_LOG_DEBUG, "pg_notice", "{s:s}", "message", buf);
}

/* ---- batches and their completion ---- */

static void batch_destroy(sl_pg_batch_t *b)
{
    for (int i = 0; i < b->n; i++) {
        sl_pg_stmt_t *s = &b->stmts[i];
        if (b->subs) { /* a carrier: the statements are its subs' */
            if (b->res && b->res[i])
                PQclear(b->res[i]);
            continue;
        }
        for (int j = 0; j < s->nparams; j++)
            free(s->params[j]);
        free(s->params);
        free(s->sql);
        if (b->res && b->res[i])
            PQclear(b->res[i]);
    }
    free(b->res);
    free(b->stmts);
    free(b->subs);
    free(b);
}

/* Runs on a later loop turn: the only place the user's callback is called. */
static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pg_batch_t *b = arg;
    sl_pg_result_t r = {.err = b->err, .n = 0, .res = NULL, .errmsg = "", .sqlstate = ""};

    if (b->err == 0) {
        r.n = b->n;
        r.res = b->res;
    } else if (b->err == SL_EDB && b->first_err >= 0 && b->res[b->first_err]) {
        const char *st = PQresultErrorField(b->res[b->first_err], PG_DIAG_SQLSTATE);
        r.errmsg = b->errmsg;
        r.sqlstate = st ? st : "";
    } else {
        r.errmsg = b->errmsg;
    }
    b->cb(&r, b->arg);
    batch_destroy(b);
}

/*
 * Posts the completion. After this the batch belongs to the loop alone: the
 * event is embedded in the batch and made active, so posting cannot fail.
 */
static void batch_finish(sl_pg_batch_t *b, int err, const char *msg)
{
    if (b->subs) {
        /* A carrier: each of its batches gets its own results, or the error. */
        for (int i = 0, off = 0; i < b->nsubs; i++) {
            sl_pg_batch_t *sub = b->subs[i];
            for (int j = 0; j < sub->n; j++, off++) {
                sub->res[j] = b->res[off];
                b->res[off] = NULL;
            }
            batch_finish(sub, err, err == SL_EDB ? b->errmsg : msg);
        }
        batch_destroy(b);
        return;
    }
    b->err = err;
    if (err != 0 && err != SL_EDB)
        copy_msg(b->errmsg, sizeof b->errmsg, msg);
    b->pg = NULL;
    event_assign(&b->ev_done, b->base, -1, 0, done_cb, b);
    event_active(&b->ev_done, EV_TIMEOUT, 1);
}

static void queue_fail_all(sl_pg_t *pg, int err, const char *msg)
{
    sl_pg_batch_t *b;
    while ((b = TAILQ_FIRST(&pg->queue)) != NULL) {
        TAILQ_REMOVE(&pg->queue, b, link);
        pg->nqueued--;
        batch_finish(b, err, msg);
    }
}

/* With no connection up and none still on its first try, nothing can run. */
static void pool_check_down(sl_pg_t *pg)
{
    if (pg->up == 0 && pg->starting == 0)
        queue_fail_all(pg, SL_EUNAVAIL, "database unavailable");
}

/* ---- connection state machine ---- */

static void conn_close(sl_pg_conn_t *c)
{
    if (c->ev_io) {
        event_free(c->ev_io);
        c->ev_io = NULL;
    }
    if (c->ev_write) {
        event_free(c->ev_write);
        c->ev_write = NULL;
    }
    c->want_write = 0;
    c->nprepared = 0; /* a new session prepares again */
    if (c->ev_timer)
        evtimer_del(c->ev_timer);
    if (c->pc) {
        PQfinish(c->pc);
        c->pc = NULL;
    }
}

static void conn_schedule_retry(sl_pg_conn_t *c)
{
    /* Jitter in [backoff/2, backoff] so a restarted server is not hit in lockstep. */
    int half = c->backoff_ms / 2;
    int delay = half + (int)(next_rand(c->pg) % (uint32_t)(half + 1));
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};

    c->backoff_ms *= 2;
    if (c->backoff_ms > SL_PG_BACKOFF_MAX_MS)
        c->backoff_ms = SL_PG_BACKOFF_MAX_MS;
    c->state = CONN_DOWN;
    evtimer_add(c->ev_timer, &tv);
}

/* A connection attempt failed (CONNECTING -> DOWN). */
static void conn_failed(sl_pg_conn_t *c, const char *why)
{
    sl_pg_t *pg = c->pg;
    char msg[SL_PG_ERRMSG_MAX];

    copy_msg(msg, sizeof msg, why);
    if (c->failures++ == 0)
        sl_log(SL_LOG_WARN, "pg_connect_failed", "{s:i, s:s}", "conn", c->id, "error", msg);
    else
        sl_log(SL_LOG_DEBUG, "pg_connect_failed", "{s:i, s:s}", "conn", c->id, "error", msg);
    conn_close(c);
    conn_schedule_retry(c);
    if (!c->tried) {
        c->tried = 1;
        pg->starting--;
    }
    pool_check_down(pg);
}

/* An established connection broke (IDLE/BUSY -> DOWN); its batch fails. */
static void conn_lost(sl_pg_conn_t *c, const char *why)
{
    sl_pg_t *pg = c->pg;
    char msg[SL_PG_ERRMSG_MAX];

    copy_msg(msg, sizeof msg, why);
    sl_log(SL_LOG_WARN, "pg_disconnected", "{s:i, s:s}", "conn", c->id, "error", msg);
    if (c->state == CONN_BUSY) {
        pg->busy--;
        /* It may or may not have committed: the Sync's answer never came. */
        batch_finish(c->batch, SL_EUNAVAIL, msg);
        c->batch = NULL;
    }
    pg->up--;
    c->failures = 1;
    conn_close(c);
    conn_schedule_retry(c);
    pool_check_down(pg);
}

static int conn_flush(sl_pg_conn_t *c)
{
    int r = PQflush(c->pc);
    if (r < 0)
        return -1;
    if (r == 1 && !c->want_write) {
        event_add(c->ev_write, NULL);
        c->want_write = 1;
    } else if (r == 0 && c->want_write) {
        event_del(c->ev_write);
        c->want_write = 0;
    }
    return 0;
}

static int conn_prepared(const sl_pg_conn_t *c, const char *name)
{
    for (int i = 0; i < c->nprepared; i++)
        if (strcmp(c->prepared[i], name) == 0)
            return 1;
    return 0;
}

static void conn_send(sl_pg_conn_t *c, sl_pg_batch_t *b);

/*
 * 1 if the batch failed with a serialization failure (40001) or a deadlock
 * (40P01) and may run again: the server rolled all of it back (a batch is one
 * transaction), and the same statements normally succeed once the other
 * transaction is out of the way.
 */
static int batch_retryable(const sl_pg_batch_t *b)
{
    if (b->retries >= SL_PG_RETRY_MAX || b->first_err < 0 || !b->res[b->first_err])
        return 0;
    const char *st = PQresultErrorField(b->res[b->first_err], PG_DIAG_SQLSTATE);
    return st && (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0);
}

/* Clears a finished batch's results so that it can be sent again. */
static void batch_reset(sl_pg_batch_t *b)
{
    for (int i = 0; i < b->n; i++) {
        PQclear(b->res[i]);
        b->res[i] = NULL;
        b->stmts[i].prep = 0; /* conn_send decides again: the Parse may not have run */
    }
    b->cur = 0;
    b->first_err = -1;
    b->errmsg[0] = '\0';
}

/* The batch is complete (its Sync arrived): post it, take the next one. */
static void conn_batch_done(sl_pg_conn_t *c)
{
    sl_pg_batch_t *b = c->batch;

    c->batch = NULL;
    c->state = CONN_IDLE;
    c->pg->busy--;
    if (!b->fault && batch_retryable(b)) {
        /* Run again at once on this connection: the transaction that won
         * holds its locks until it ends, so the re-run waits for it and
         * then goes through. */
        b->retries++;
        sl_log(SL_LOG_INFO, "pg_retry", "{s:i, s:i, s:s}", "conn", c->id, "retry", b->retries,
               "error", PQresultErrorField(b->res[b->first_err], PG_DIAG_SQLSTATE));
        batch_reset(b);
        conn_send(c, b);
        return;
    }
    if (!b->fault && b->first_err < 0 && b->res[0] && PQntuples(b->res[0]) > 0 &&
        sl_fault_pg_lose(b->stmts[0].sql))
        b->fault = 1; /* SL_FAULT_PG_LOSE: it ran and returned rows; lose them */
    if (b->fault) {
        /* As a connection that drops after the server committed: "unknown". */
        batch_finish(b, SL_EUNAVAIL, "fault injected: connection lost after the batch ran");
    } else if (b->first_err >= 0 && b->subs) {
        /* One statement failed, so nothing of the carrier committed: each of
         * its batches goes again by itself, at the head of the queue, and
         * only the bad one fails. */
        sl_log(SL_LOG_INFO, "pg_shared_split", "{s:i, s:s}", "batches", b->nsubs, "sqlstate",
               PQresultErrorField(b->res[b->first_err], PG_DIAG_SQLSTATE));
        for (int i = b->nsubs - 1; i >= 0; i--) {
            b->subs[i]->alone = 1;
            TAILQ_INSERT_HEAD(&c->pg->queue, b->subs[i], link);
            c->pg->nqueued++;
        }
        batch_destroy(b);
        for (int i = 0; i < c->pg->nconns; i++)
            if (&c->pg->conns[i] != c)
                conn_next(&c->pg->conns[i]); /* idle ones take the others at once */
    } else if (b->first_err >= 0) {
        copy_msg(b->errmsg, sizeof b->errmsg, PQresultErrorMessage(b->res[b->first_err]));
        batch_finish(b, SL_EDB, NULL);
    } else if (b->cur < b->n - 1 || !b->res[b->n - 1]) {
        batch_finish(b, SL_EPROTO, "missing statement result");
    } else {
        batch_finish(b, 0, NULL);
    }
    conn_next(c);
}

/*
 * Collects what results are ready. Each statement yields one PGresult then a
 * NULL; after a failure the rest yield PGRES_PIPELINE_ABORTED; the Sync yields
 * PGRES_PIPELINE_SYNC and ends the batch. A result that arrives while the
 * current slot is already filled also advances, so the NULL separators are not
 * relied upon.
 */
static void conn_collect(sl_pg_conn_t *c)
{
    int nulls = 0;

    while (c->state == CONN_BUSY && !PQisBusy(c->pc)) {
        sl_pg_batch_t *b = c->batch;
        PGresult *r = PQgetResult(c->pc);

        if (PQstatus(c->pc) == CONNECTION_BAD) {
            PQclear(r);
            conn_lost(c, PQerrorMessage(c->pc));
            return;
        }
        if (!r) {
            if (b->res[b->cur] && b->cur < b->n - 1)
                b->cur++;
            if (++nulls > 1)
                break; /* nothing more until the socket is readable */
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            conn_batch_done(c);
            return;
        }
        if (b->res[b->cur] && b->cur < b->n - 1)
            b->cur++;
        if (b->stmts[b->cur].prep == 1) {
            /* The Parse of a statement prepared in this batch: remembered if it
             * worked; a failure is the statement's (the rest is aborted). */
            b->stmts[b->cur].prep = 2;
            if (st == PGRES_COMMAND_OK) {
                if (c->nprepared < SL_PG_PREPARED_MAX && !conn_prepared(c, b->stmts[b->cur].name))
                    c->prepared[c->nprepared++] = b->stmts[b->cur].name;
                PQclear(r);
                continue;
            }
        }
        if (b->res[b->cur]) {
            PQclear(r); /* a surplus result: never expected with one statement per send */
            continue;
        }
        b->res[b->cur] = r;
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && b->first_err < 0)
            b->first_err = b->cur;
    }
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pg_conn_t *c = arg;

    if (!PQconsumeInput(c->pc)) {
        conn_lost(c, PQerrorMessage(c->pc));
        return;
    }
    if (c->want_write && conn_flush(c) < 0) {
        conn_lost(c, PQerrorMessage(c->pc));
        return;
    }
    conn_collect(c);
    if (c->state != CONN_DOWN && PQstatus(c->pc) == CONNECTION_BAD)
        conn_lost(c, PQerrorMessage(c->pc));
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pg_conn_t *c = arg;
    if (conn_flush(c) < 0)
        conn_lost(c, PQerrorMessage(c->pc));
}

/* 1 if a statement before i in b sends the Parse of stmts[i]'s name (a name is parsed once). */
static int parsed_before(const sl_pg_batch_t *b, int i)
{
    for (int j = 0; j < i; j++)
        if (b->stmts[j].prep == 1 && strcmp(b->stmts[j].name, b->stmts[i].name) == 0)
            return 1;
    return 0;
}

/* Sends a batch on an idle connection (IDLE -> BUSY). */
static void conn_send(sl_pg_conn_t *c, sl_pg_batch_t *b)
{
    c->state = CONN_BUSY;
    c->batch = b;
    c->pg->busy++;
    for (int i = 0; i < b->n; i++) {
        sl_pg_stmt_t *s = &b->stmts[i];
        const char *const *params = (const char *const *)s->params;
        int ok;
        if (s->name && (conn_prepared(c, s->name) || parsed_before(b, i))) {
            ok = PQsendQueryPrepared(c->pc, s->name, s->nparams, params, NULL, NULL, 0);
        } else if (s->name && c->nprepared < SL_PG_PREPARED_MAX) {
            s->prep = 1; /* its result is consumed by conn_collect */
            ok = PQsendPrepare(c->pc, s->name, s->sql, s->nparams, NULL) &&
                 PQsendQueryPrepared(c->pc, s->name, s->nparams, params, NULL, NULL, 0);
        } else {
            ok = PQsendQueryParams(c->pc, s->sql, s->nparams, NULL, params, NULL, NULL, 0);
        }
        if (!ok) {
            conn_lost(c, PQerrorMessage(c->pc));
            return;
        }
    }
    if (!PQpipelineSync(c->pc) || conn_flush(c) < 0)
        conn_lost(c, PQerrorMessage(c->pc));
}

static int shareable(const sl_pg_batch_t *b)
{
    return b->share && !b->alone && !b->fault;
}

/*
 * b (shareable, just taken off the queue) and the other shareable batches
 * waiting (up to SL_PG_SHARE_MAX, among the first SL_PG_SHARE_SCAN) in one
 * carrier, in queue order; b itself when none waits or memory is short.
 */
static sl_pg_batch_t *gather(sl_pg_t *pg, sl_pg_batch_t *b)
{
    sl_pg_batch_t *found[SL_PG_SHARE_MAX], *carrier;
    int nfound = 1, nstmts = b->n, scanned = 0;

    found[0] = b;
    for (sl_pg_batch_t *q = TAILQ_FIRST(&pg->queue);
         q && nfound < SL_PG_SHARE_MAX && scanned++ < SL_PG_SHARE_SCAN; q = TAILQ_NEXT(q, link))
        if (shareable(q) && nstmts + q->n <= SL_PG_BATCH_MAX_STMTS) {
            found[nfound++] = q;
            nstmts += q->n;
        }
    if (nfound == 1 || !(carrier = calloc(1, sizeof *carrier)))
        return b;
    carrier->stmts = malloc((size_t)nstmts * sizeof *carrier->stmts);
    carrier->res = calloc((size_t)nstmts, sizeof *carrier->res);
    carrier->subs = malloc((size_t)nfound * sizeof *carrier->subs);
    if (!carrier->stmts || !carrier->res || !carrier->subs) {
        batch_destroy(carrier);
        return b;
    }
    carrier->pg = pg;
    carrier->base = pg->base;
    carrier->first_err = -1;
    for (int i = 0; i < nfound; i++) {
        sl_pg_batch_t *sub = found[i];
        if (i > 0) {
            TAILQ_REMOVE(&pg->queue, sub, link);
            pg->nqueued--;
        }
        memcpy(carrier->stmts + carrier->n, sub->stmts, (size_t)sub->n * sizeof *sub->stmts);
        carrier->n += sub->n;
        carrier->subs[carrier->nsubs++] = sub;
    }
    return carrier;
}

static void conn_next(sl_pg_conn_t *c)
{
    sl_pg_t *pg = c->pg;
    sl_pg_batch_t *b = TAILQ_FIRST(&pg->queue);

    if (c->state != CONN_IDLE || !b)
        return;
    TAILQ_REMOVE(&pg->queue, b, link);
    pg->nqueued--;
    if (shareable(b))
        b = gather(pg, b);
    conn_send(c, b);
}

/* CONNECTING -> IDLE */
static void conn_established(sl_pg_conn_t *c)
{
    sl_pg_t *pg = c->pg;
    evutil_socket_t fd = PQsocket(c->pc);

    if (PQsetnonblocking(c->pc, 1) != 0 || PQenterPipelineMode(c->pc) != 1) {
        conn_failed(c, PQerrorMessage(c->pc));
        return;
    }
    event_free(c->ev_io);
    c->ev_io = event_new(pg->base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
    c->ev_write = event_new(pg->base, fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
    if (!c->ev_io || !c->ev_write || event_add(c->ev_io, NULL) != 0) {
        conn_failed(c, "out of memory");
        return;
    }
    evtimer_del(c->ev_timer);
    if (c->failures > 0 || !c->tried)
        sl_log(SL_LOG_INFO, "pg_connected", "{s:i}", "conn", c->id);
    c->failures = 0;
    c->backoff_ms = SL_PG_BACKOFF_MIN_MS;
    c->state = CONN_IDLE;
    pg->up++;
    if (!c->tried) {
        c->tried = 1;
        pg->starting--;
    }
    conn_next(c);
}

static void conn_poll_cb(evutil_socket_t fd, short what, void *arg);

/*
 * Waits for the socket as PQconnectPoll asked. The socket can change between
 * steps (libpq tries each host/address in turn), so the event is made anew.
 */
static void conn_wait(sl_pg_conn_t *c, PostgresPollingStatusType st)
{
    evutil_socket_t fd = PQsocket(c->pc);

    if (c->ev_io) {
        event_free(c->ev_io);
        c->ev_io = NULL;
    }
    if (fd < 0) {
        conn_failed(c, PQerrorMessage(c->pc));
        return;
    }
    c->ev_io = event_new(c->pg->base, fd, st == PGRES_POLLING_READING ? EV_READ : EV_WRITE,
                         conn_poll_cb, c);
    if (!c->ev_io || event_add(c->ev_io, NULL) != 0)
        conn_failed(c, "out of memory");
}

static void conn_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pg_conn_t *c = arg;

    switch (PQconnectPoll(c->pc)) {
    case PGRES_POLLING_READING:
        conn_wait(c, PGRES_POLLING_READING);
        break;
    case PGRES_POLLING_WRITING:
        conn_wait(c, PGRES_POLLING_WRITING);
        break;
    case PGRES_POLLING_OK:
        conn_established(c);
        break;
    default:
        conn_failed(c, PQerrorMessage(c->pc));
        break;
    }
}

/* DOWN -> CONNECTING */
static void conn_start(sl_pg_conn_t *c)
{
    sl_pg_t *pg = c->pg;
    struct timeval tv = {SL_PG_CONNECT_TIMEOUT_MS / 1000, 0};

    c->state = CONN_CONNECTING;
    c->pc = PQconnectStartParams(pg->kw, pg->vals, 1);
    if (!c->pc) {
        conn_failed(c, "out of memory");
        return;
    }
    if (PQstatus(c->pc) == CONNECTION_BAD) {
        conn_failed(c, PQerrorMessage(c->pc));
        return;
    }
    PQsetNoticeProcessor(c->pc, notice_cb, NULL);
    evtimer_add(c->ev_timer, &tv);
    /* Before the first PQconnectPoll, act as if it returned PGRES_POLLING_WRITING. */
    conn_wait(c, PGRES_POLLING_WRITING);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pg_conn_t *c = arg;

    if (c->state == CONN_DOWN)
        conn_start(c);
    else if (c->state == CONN_CONNECTING)
        conn_failed(c, "connect timeout");
}

/* ---- public API ---- */

/*
 * Builds the options for every connection: -c jit=off, the caller's own
 * "options" (if the conninfo has any), then -c statement_timeout=N. Keywords
 * are processed in order, so "options" after the expanded "dbname" wins;
 * keeping the caller's options after jit=off lets them turn JIT back on.
 *
 * jit=off: Postgres compiles a query's expressions with LLVM when its
 * estimated cost passes jit_above_cost (100,000), at every execution, cached
 * plan or not. Every statement here is short and keyed, but the claim's
 * estimate passes that mark as soon as the planner guesses a few hundred
 * tenants (an unanalysed tenants table says 970): one claim of 16 runs then
 * took 1,251-1,277 ms, 7 ms without JIT (auto_explain, 6,000 queued runs;
 * docs/internals/pg.md "JIT off").
 */
static int build_options(const char *conninfo, int timeout_ms, char **out)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    const char *user = "";
    char buf[SL_PG_OPTIONS_MAX];
    int len;

    *out = NULL;
    if (!opts) {
        if (errmsg)
            sl_log(SL_LOG_ERROR, "pg_bad_conninfo", "{s:s}", "error", errmsg);
        PQfreemem(errmsg);
        return SL_EINVAL;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "options") == 0 && o->val)
            user = o->val;
    if (timeout_ms > 0)
        len = snprintf(buf, sizeof buf, "-c jit=off %s%s-c statement_timeout=%d", user,
                       *user ? " " : "", timeout_ms);
    else
        len = snprintf(buf, sizeof buf, "-c jit=off%s%s", *user ? " " : "", user);
    PQconninfoFree(opts);
    if (len < 0 || (size_t)len >= sizeof buf)
        return SL_EINVAL;
    *out = dup_str(buf);
    return *out ? 0 : SL_ENOMEM;
}

int sl_pg_new(struct event_base *base, const char *conninfo, int pool_size,
              int statement_timeout_ms, sl_pg_t **out)
{
    sl_pg_t *pg = NULL;
    int rc = SL_ENOMEM;

    *out = NULL;
    if (!base || !conninfo || pool_size < 1 || pool_size > SL_PG_POOL_MAX)
        return SL_EINVAL;
    pg = calloc(1, sizeof *pg);
    if (!pg)
        return SL_ENOMEM;
    pg->base = base;
    TAILQ_INIT(&pg->queue);
    pg->rng = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16) ^ (uint32_t)(uintptr_t)pg;
    if (!pg->rng)
        pg->rng = 1;
    rc = build_options(conninfo, statement_timeout_ms, &pg->options);
    if (rc != 0)
        goto fail;
    rc = SL_ENOMEM;
    pg->conninfo = dup_str(conninfo);
    pg->conns = calloc((size_t)pool_size, sizeof *pg->conns);
    if (!pg->conninfo || !pg->conns)
        goto fail;
    pg->kw[0] = "dbname";
    pg->vals[0] = pg->conninfo;
    pg->kw[1] = "options";
    pg->vals[1] = pg->options;
    pg->kw[2] = "fallback_application_name";
    pg->vals[2] = "sluice";
    pg->kw[3] = NULL;
    pg->vals[3] = NULL;
    pg->nconns = pool_size;
    for (int i = 0; i < pool_size; i++) {
        sl_pg_conn_t *c = &pg->conns[i];
        c->pg = pg;
        c->id = i;
        c->state = CONN_DOWN;
        c->backoff_ms = SL_PG_BACKOFF_MIN_MS;
        c->ev_timer = evtimer_new(base, conn_timer_cb, c);
        if (!c->ev_timer)
            goto fail;
    }
    /* The first attempts start on the next loop turn, from each slot's timer. */
    for (int i = 0; i < pool_size; i++) {
        struct timeval now = {0, 0};
        if (evtimer_add(pg->conns[i].ev_timer, &now) != 0)
            goto fail;
        pg->starting++;
    }
    *out = pg;
    return 0;

fail:
    if (pg->conns)
        for (int i = 0; i < pool_size; i++)
            if (pg->conns[i].ev_timer)
                event_free(pg->conns[i].ev_timer);
    free(pg->conns);
    free(pg->conninfo);
    free(pg->options);
    free(pg);
    return rc;
}

void sl_pg_free(sl_pg_t *pg)
{
    if (!pg)
        return;
    for (int i = 0; i < pg->nconns; i++) {
        sl_pg_conn_t *c = &pg->conns[i];
        if (c->state == CONN_BUSY && c->batch) {
            batch_finish(c->batch, SL_ECANCELED, "database pool closed");
            c->batch = NULL;
        }
        conn_close(c);
        if (c->ev_timer)
            event_free(c->ev_timer);
    }
    queue_fail_all(pg, SL_ECANCELED, "database pool closed");
    free(pg->conns);
    free(pg->conninfo);
    free(pg->options);
    free(pg);
}

int sl_pg_ready(const sl_pg_t *pg)
{
    return pg && pg->up > 0;
}

void sl_pg_stats(const sl_pg_t *pg, int *total, int *up, int *busy, int *queued)
{
    if (total)
        *total = pg->nconns;
    if (up)
        *up = pg->up;
    if (busy)
        *busy = pg->busy;
    if (queued)
        *queued = pg->nqueued;
}

sl_pg_batch_t *sl_pg_batch_new(sl_pg_t *pg)
{
    sl_pg_batch_t *b;

    if (!pg)
        return NULL;
    b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->pg = pg;
    b->base = pg->base;
    b->first_err = -1;
    return b;
}

int sl_pg_batch_add(sl_pg_batch_t *b, const char *sql, int nparams, const char *const *params)
{
    sl_pg_stmt_t s = {NULL, 0, NULL, NULL, 0};

    if (!b || !sql || nparams < 0 || nparams > SL_PG_MAX_PARAMS || (nparams > 0 && !params))
        return SL_EINVAL;
    if (b->n >= SL_PG_BATCH_MAX_STMTS)
        return SL_ETOOBIG;
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 4;
        sl_pg_stmt_t *p = realloc(b->stmts, (size_t)cap * sizeof *p);
        if (!p)
            return SL_ENOMEM;
        b->stmts = p;
        b->cap = cap;
    }
    s.sql = dup_str(sql);
    if (!s.sql)
        goto fail;
    if (nparams > 0) {
        s.params = calloc((size_t)nparams, sizeof *s.params);
        if (!s.params)
            goto fail;
        for (s.nparams = 0; s.nparams < nparams; s.nparams++) {
            const char *v = params[s.nparams];
            if (v && !(s.params[s.nparams] = dup_str(v)))
                goto fail;
        }
    }
    b->stmts[b->n] = s;
    return b->n++;

fail:
    for (int j = 0; j < s.nparams; j++)
        free(s.params[j]);
    free(s.params);
    free(s.sql);
    return SL_ENOMEM;
}

void sl_pg_batch_free(sl_pg_batch_t *b)
{
    if (b)
        batch_destroy(b);
}

int sl_pg_batch_exec(sl_pg_batch_t *b, sl_pg_cb cb, void *arg)
{
    sl_pg_t *pg;

    if (!b)
        return SL_EINVAL;
    if (!cb || b->n == 0 || !b->pg) {
        batch_destroy(b);
        return SL_EINVAL;
    }
    pg = b->pg;
    b->res = calloc((size_t)b->n, sizeof *b->res);
    if (!b->res) {
        batch_destroy(b);
        return SL_ENOMEM;
    }
    b->cb = cb;
    b->arg = arg;
    if (sl_fault_hit("pg")) {
        /* Alternately before sending (nothing ran) and after running (the
         * answer is lost): the two ways a dropped connection looks. */
        b->fault = (++pg->faults & 1) == 0;
        if (!b->fault || pg->up == 0) {
            batch_finish(b, SL_EUNAVAIL, "fault injected: connection lost");
            return 0;
        }
    }
    if (pg->up == 0 && pg->starting == 0) {
        batch_finish(b, SL_EUNAVAIL, "database unavailable");
        return 0;
    }
    for (int i = 0; i < pg->nconns && TAILQ_EMPTY(&pg->queue); i++) {
        if (pg->conns[i].state == CONN_IDLE) {
            conn_send(&pg->conns[i], b);
            return 0;
        }
    }
    if (pg->nqueued >= SL_PG_QUEUE_MAX) {
        batch_finish(b, SL_EAGAIN, "database queue full");
        return 0;
    }
    TAILQ_INSERT_TAIL(&pg->queue, b, link);
    pg->nqueued++;
    return 0;
}

int sl_pg_batch_add_prepared(sl_pg_batch_t *b, const char *name, const char *sql, int nparams,
                             const char *const *params)
{
    if (!name || !*name)
        return SL_EINVAL;
    int idx = sl_pg_batch_add(b, sql, nparams, params);
    if (idx >= 0)
        b->stmts[idx].name = name;
    return idx;
}

/* One prepared statement in a batch of its own, shared (sl_pg_query_shared) or not. */
static int query_prepared(sl_pg_t *pg, const char *name, const char *sql, int nparams,
                          const char *const *params, int share, sl_pg_cb cb, void *arg)
{
    sl_pg_batch_t *b = sl_pg_batch_new(pg);
    int rc;

    if (!b)
        return pg ? SL_ENOMEM : SL_EINVAL;
    rc = sl_pg_batch_add_prepared(b, name, sql, nparams, params);
    if (rc < 0) {
        sl_pg_batch_free(b);
        return rc;
    }
    b->share = share;
    return sl_pg_batch_exec(b, cb, arg);
}

int sl_pg_query_prepared(sl_pg_t *pg, const char *name, const char *sql, int nparams,
                         const char *const *params, sl_pg_cb cb, void *arg)
{
    return query_prepared(pg, name, sql, nparams, params, 0, cb, arg);
}

int sl_pg_query_shared(sl_pg_t *pg, const char *name, const char *sql, int nparams,
                       const char *const *params, sl_pg_cb cb, void *arg)
{
    return query_prepared(pg, name, sql, nparams, params, 1, cb, arg);
}

int sl_pg_query(sl_pg_t *pg, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                void *arg)
{
    sl_pg_batch_t *b = sl_pg_batch_new(pg);
    int rc;

    if (!b)
        return pg ? SL_ENOMEM : SL_EINVAL;
    rc = sl_pg_batch_add(b, sql, nparams, params);
    if (rc < 0) {
        sl_pg_batch_free(b);
        return rc;
    }
    return sl_pg_batch_exec(b, cb, arg);
}
