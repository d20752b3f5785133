/*
 * events.c — GET /v1/datasets/{id}/events: a dataset's live status as
 * Server-Sent Events (API.md "Live status").
 *
 *   auth (Bearer or ?access_token=) -> subscribe to "sluice:ds:<id>" and hold
 *   live messages -> one batch: the dataset check (another tenant's: 404)
 *   and, with Last-Event-ID (header or ?last_event_id=, or ?replay=all), the
 *   first replay page from run_events -> headers -> replay pages (each one
 *   after the previous drained to the client) -> the held live messages whose
 *   seq was not replayed -> live.
 *
 * Subscribing before the replay query is what closes the gap: anything
 * committed after the query's snapshot is held in memory (bounded by the
 * client buffer limit) and anything committed before it is in the replay.
 * Every event has its place in its dataset's dense series, and a dataset's
 * places commit in order (docs/internals/sse.md "Places"), so "seq <= last
 * replayed" means "was in the replay", and live, the client knows the place it
 * needs next: in order, an event goes out as soon as it arrives; past a hole
 * it waits for the hole to close, or for a read of the hole from Postgres
 * after GAP_MS. The id line carries the seq only when it is above the last one
 * sent, so the browser's Last-Event-ID never goes backwards and a reconnect
 * repeats nothing.
 *
 * Slow clients: a live event or keepalive finding more than
 * sse.client_buffer_bytes still unsent ends the stream (the client
 * reconnects and replays). Client gone (on_close), pubsub shutting down, or a
 * replay query failing: unsubscribe and finish. The client struct is freed
 * once the request is finished and no query of it is in flight.
 */
#include "api/api.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "core/sse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLAY_PAGE 10000
#define KEEPALIVE_DEFAULT_S 15
#define GAP_MS 1000 /* a hole in the places lasting this long is read from Postgres */
#define CLIENT_BUFFER_DEFAULT (256 * 1024) /* ~1,000 events of backlog; bounds RSS with many clients */
#define RETRY_MS 2000
#define PEER_BUCKETS 256
#define PEER_HOST_MAX 48 /* "[v6 address]" */

typedef struct held_s {
    struct held_s *next;
    long long seq;
    int is_file;
    size_t len;
    char data[];
} held_t;

typedef struct client_s {
    sl_app_t *app;
    sl_http_req_t *req;
    sl_pubsub_sub_t *sub;
    struct event *keepalive;
    struct event *gap;      /* a hole before the held messages: read it from Postgres */
    char tenant_id[37];
    char dataset_id[37];
    long long last_sent;    /* highest seq sent with an id line */
    long long replay_after; /* replay seq > this; -1: live only */
    long long base;         /* the dataset's last place when the stream started */
    long long replay_max;   /* the highest seq the replay sent, or the client's
                               Last-Event-ID if higher (0: none) */
    long long next;         /* live: the place to send next (0 until live) */
    long long gap_upto;     /* a gap read is out for the places below this (0: none) */
    size_t limit;           /* client buffer bytes */
    int started;            /* the 200 and headers are out */
    int holding;            /* live messages are held (until the replay is done) */
    int gap_busy;           /* the query in flight is a gap read */
    int pg_busy;            /* a query of ours is in flight */
    int finished;           /* the request is finished; free when !pg_busy */
    held_t *held, *held_tail;
    size_t held_bytes;
    struct peer_s *peer; /* its address's stream count, while subscribed; NULL if none */
    uint64_t cred[2];    /* its credential's revocation tags (sl_api_auth_revocation_ids) */
    struct client_s *live_prev, *live_next; /* g_live, while subscribed */
} client_t;

/*
 * Open streams per client address (sse.max_streams_per_ip): each costs a
 * subscription, a replay query and a buffer, so one address must not hold
 * them all. Entries exist only for addresses with an open stream.
 */
typedef struct peer_s {
    struct peer_s *next;
    char host[PEER_HOST_MAX];
    int n;
} peer_t;

static peer_t *g_peers[PEER_BUCKETS];
static int g_clients;
static client_t *g_live; /* every subscribed client: a revocation ends its streams */
static sl_metric_t *m_sent, *m_dropped;

/* The address part of "1.2.3.4:5555" or "[::1]:5555". */
static void peer_host(const char *peer, char *out, size_t outlen)
{
    const char *colon = strrchr(peer, ':');
    size_t n = colon && peer[0] != ':' ? (size_t)(colon - peer) : strlen(peer);
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, peer, n);
    out[n] = '\0';
}

static unsigned peer_bucket(const char *host)
{
    unsigned h = 2166136261u;
    for (const char *p = host; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % PEER_BUCKETS;
}

/* Counts one more stream from req's address: the entry, or NULL when the
 * address is at max (*over set) or out of memory (not counted). */
static peer_t *peer_acquire(sl_http_req_t *req, int max, int *over)
{
    char host[PEER_HOST_MAX];
    *over = 0;
    if (max <= 0)
        return NULL;
    peer_host(sl_http_req_peer(req), host, sizeof host);
    peer_t **b = &g_peers[peer_bucket(host)], *e;
    for (e = *b; e; e = e->next)
        if (strcmp(e->host, host) == 0)
            break;
    if (e && e->n >= max) {
        *over = 1;
        return NULL;
    }
    if (!e) {
        if (!(e = calloc(1, sizeof *e)))
            return NULL;
        snprintf(e->host, sizeof e->host, "%s", host);
        e->next = *b;
        *b = e;
    }
    e->n++;
    return e;
}

static void peer_release(peer_t *e)
{
    if (!e || --e->n > 0)
        return;
    for (peer_t **p = &g_peers[peer_bucket(e->host)]; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    free(e);
}

static double gauge_clients(void *arg)
{
    (void)arg;
    return g_clients;
}

static const char REPLAY_SQL[] =
    "SELECT " SL_RUN_EVENT_COLUMNS " FROM run_events"
    " WHERE dataset_id = $1 AND tenant_id = $2 AND seq > $3::bigint ORDER BY seq LIMIT 10000";

static void replay_next(client_t *c);

/* ---- teardown ---- */

static void client_free(client_t *c)
{
    if (c->keepalive)
        event_free(c->keepalive);
    if (c->gap)
        event_free(c->gap);
    for (held_t *h = c->held; h;) {
        held_t *n = h->next;
        free(h);
        h = n;
    }
    free(c);
}

/*
 * Finishes the request: with `status` an error answer (before the stream
 * started), else the end of the stream. Frees c unless a query is in flight
 * (its callback frees it).
 */
static void client_finish(client_t *c, int status, const char *code, const char *msg)
{
    if (c->finished)
        return;
    c->finished = 1;
    if (c->sub) {
        sl_pubsub_unsubscribe(c->app->pubsub, c->sub);
        c->sub = NULL;
        g_clients--;
        if (c->live_prev)
            c->live_prev->live_next = c->live_next;
        else
            g_live = c->live_next;
        if (c->live_next)
            c->live_next->live_prev = c->live_prev;
        c->live_prev = c->live_next = NULL;
        peer_release(c->peer);
        c->peer = NULL;
    }
    if (c->keepalive)
        evtimer_del(c->keepalive);
    sl_http_req_on_close(c->req, NULL, NULL);
    sl_http_resp_on_drain(c->req, NULL, NULL);
    if (c->started || sl_http_req_closed(c->req))
        sl_http_resp_end(c->req);
    else if (status)
        sl_http_respond_error(c->req, status, code, msg, status == 503 ? 2 : -1);
    else
        sl_http_respond_error(c->req, 503, "unavailable", "the event stream could not start", 2);
    c->req = NULL;
    if (!c->pg_busy)
        client_free(c);
}

static void client_drop(client_t *c, const char *why)
{
    sl_metrics_add(m_dropped, 1);
    sl_log(SL_LOG_INFO, "sse_client_dropped", "{s:s, s:s, s:s, s:I, s:I}", "request_id",
           sl_http_req_id(c->req), "dataset_id", c->dataset_id, "reason", why, "pending",
           (json_int_t)sl_http_resp_pending(c->req), "last_event_id", (json_int_t)c->last_sent);
    client_finish(c, 0, NULL, NULL);
}

/*
 * A revocation reached this process (api/cache.h sl_cache_on_revoke): the
 * streams opened with that credential end (tag 0, "*": every stream). A
 * started stream just ends, so EventSource reconnects and authenticates again
 * (a live credential resumes from Last-Event-ID; a revoked one gets 401). One
 * not yet started answers 401, or 503 to retry for "*" (it may be live).
 */
static void revoked_cb(uint64_t tag, void *arg)
{
    (void)arg;
    for (client_t *c = g_live, *n; c; c = n) {
        n = c->live_next;
        if (tag && c->cred[0] != tag && c->cred[1] != tag)
            continue;
        sl_log(SL_LOG_INFO, "sse_stream_revoked", "{s:s, s:s, s:b}", "request_id",
               sl_http_req_id(c->req), "dataset_id", c->dataset_id, "every_credential", !tag);
        if (c->started)
            client_finish(c, 0, NULL, NULL);
        else if (tag)
            client_finish(c, 401, "unauthorized", "this API key or token was revoked");
        else
            client_finish(c, 503, "unavailable", "credentials were revoked: try again");
    }
}

static void close_cb(sl_http_req_t *req, void *arg)
{
    (void)req;
    client_finish(arg, 0, NULL, NULL);
}

/* ---- sending ---- */

/*
 * Writes one event. with_limit: live pushes obey the client buffer limit (past
 * it the client is dropped); replay pages are paced by drain instead.
 * Returns 0, or -1 when the client was finished here.
 */
static int send_event(client_t *c, long long seq, int is_file, const char *data, size_t len,
                      int with_limit)
{
    char id[24];
    int with_id = seq > c->last_sent; /* the browser's Last-Event-ID never goes backwards */
    snprintf(id, sizeof id, "%lld", seq);
    int err = sl_sse_send(c->req, with_limit ? c->limit : (size_t)-1, with_id ? id : NULL,
                          is_file ? "file" : "run", data, len);
    if (err == SL_ETOOBIG) {
        client_drop(c, "slow_client");
        return -1;
    }
    if (err) {
        client_finish(c, 0, NULL, NULL);
        return -1;
    }
    if (with_id)
        c->last_sent = seq;
    sl_metrics_add(m_sent, 1);
    return 0;
}

/*
 * Order. Every event of a dataset has its place in one dense series (1, 2, 3
 * ... with no holes: sluice_event_places, docs/internals/sse.md "Places"), and
 * the places of a dataset commit in order. Messages still reach us out of
 * order (commit results come back over different pool connections; instances
 * publish at their own pace), but a live client knows the place it needs next:
 * a message at that place goes out at once, one past it waits in `held`
 * (sorted) until the hole closes. A hole that lasts GAP_MS is read from
 * Postgres (gap_read): the message after it committed, so every place before
 * it has committed too; the run events found are sent, and the places not
 * found are file events (not timeline rows) or events of a file deleted
 * since, and are passed over.
 */
static void held_insert_sorted(client_t *c, held_t *h)
{
    held_t **pp = &c->held;
    if (c->held_tail && c->held_tail->seq <= h->seq)
        pp = &c->held_tail->next; /* the common case: in order, append */
    else
        while (*pp && (*pp)->seq <= h->seq)
            pp = &(*pp)->next;
    h->next = *pp;
    *pp = h;
    if (!h->next)
        c->held_tail = h;
}

static held_t *held_pop(client_t *c)
{
    held_t *h = c->held;
    c->held = h->next;
    if (!c->held)
        c->held_tail = NULL;
    c->held_bytes -= h->len;
    return h;
}

static void held_free(client_t *c)
{
    while (c->held)
        free(held_pop(c));
}

/*
 * Live, a burst held behind a hole outgrew the client buffer (one upload of
 * thousands of files publishes its events at once, while the engine's earlier
 * places are still on their way): forget what is held and replay from the
 * last place sent in order, paced like any replay. The run events come back
 * from Postgres; the file events that were held are not in a replay (as for
 * any reconnect). While a gap read is out, its callback starts the replay.
 */
static void replay_again(client_t *c)
{
    held_free(c);
    evtimer_del(c->gap);
    c->holding = 1;
    c->replay_after = c->next - 1;
    sl_log(SL_LOG_INFO, "sse_replay_again", "{s:s, s:s, s:I}", "request_id",
           sl_http_req_id(c->req), "dataset_id", c->dataset_id, "after",
           (json_int_t)c->replay_after);
    if (!c->pg_busy && sl_http_resp_pending(c->req) == 0)
        replay_next(c);
    /* else: the gap read's callback, or the drain callback, asks for it */
}

/*
 * Holds a copy of a message (not if its place is held already). 0 (held, or
 * a duplicate), 1 (not held: it overflowed and the client replays again), or
 * -1 when c was finished.
 */
static int hold(client_t *c, long long seq, int is_file, const char *data, size_t len)
{
    for (held_t *h = c->held_tail && c->held_tail->seq < seq ? NULL : c->held; h && h->seq <= seq;
         h = h->next)
        if (h->seq == seq)
            return 0; /* one place, one event: a gap read found what was held, or the reverse */
    if (c->held_bytes + len > c->limit) {
        if (!c->holding) {
            replay_again(c);
            return 1;
        }
        client_drop(c, "held_messages_over_limit");
        return -1;
    }
    held_t *h = malloc(sizeof *h + len);
    if (!h) {
        client_drop(c, "out_of_memory");
        return -1;
    }
    h->next = NULL;
    h->seq = seq;
    h->is_file = is_file;
    h->len = len;
    memcpy(h->data, data, len);
    held_insert_sorted(c, h);
    c->held_bytes += len;
    return 0;
}

/*
 * A message below the place the client needs next: a run event was sent
 * already (live, replayed or read over a gap) unless it is from before the
 * stream started and not replayed; a file event is never replayed nor read
 * over a gap. Those go out without an id line (send_event): they are news to
 * the client but must not move its Last-Event-ID back.
 */
static int late(client_t *c, long long seq, int is_file)
{
    return is_file || (seq <= c->base && seq > c->replay_max);
}

static void gap_read(client_t *c);

/*
 * Sends what is in order from the head of `held`: places up to `next`, and
 * below gap_upto (a gap read passed over the places it did not find). Arms the
 * gap timer if a hole remains. 0, or -1 when c was finished (and may be freed).
 */
static int advance(client_t *c, long long gap_upto)
{
    while (c->held && (c->held->seq <= c->next || c->held->seq < gap_upto)) {
        held_t *h = held_pop(c);
        int rc = 0;
        if (h->seq >= c->next) {
            long long seq = h->seq;
            rc = send_event(c, seq, h->is_file, h->data, h->len, 1);
            if (rc == 0) /* else c may be freed */
                c->next = seq + 1;
        } else if (late(c, h->seq, h->is_file)) {
            rc = send_event(c, h->seq, h->is_file, h->data, h->len, 1);
        }
        free(h);
        if (rc)
            return -1;
    }
    if (c->next < gap_upto)
        c->next = gap_upto;
    if (!c->held || c->gap_busy)
        return 0;
    if (c->held_bytes > c->limit / 4) {
        /* A burst waits behind the hole (one publisher lags, say the engine behind an
         * upload's events): what it waits for has committed, read it now. */
        evtimer_del(c->gap);
        gap_read(c);
    } else if (!evtimer_pending(c->gap, NULL)) {
        static const struct timeval tv = {GAP_MS / 1000, (GAP_MS % 1000) * 1000};
        evtimer_add(c->gap, &tv);
    }
    return 0;
}

/* A live message: at its place it goes out now, past it it waits for the hole to close. */
static void deliver(client_t *c, long long seq, int is_file, const char *data, size_t len)
{
    if (seq < c->next) {
        if (late(c, seq, is_file))
            send_event(c, seq, is_file, data, len, 1);
        return;
    }
    if (seq == c->next && !c->held) {
        if (send_event(c, seq, is_file, data, len, 1) == 0)
            c->next = seq + 1;
        return;
    }
    if (hold(c, seq, is_file, data, len) == 0)
        advance(c, 0);
}

/* The replay is complete: send what was held (skipping what the replay sent), go live. */
static void go_live(client_t *c)
{
    c->holding = 0;
    long long from = (c->base > c->replay_max ? c->base : c->replay_max) + 1;
    if (from > c->next) /* a replay again resumes from where the stream was */
        c->next = from;
    advance(c, 0);
}

static void gap_cb(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    (void)fd;
    (void)what;
    if (!c->finished && !c->holding && !c->pg_busy && c->held)
        gap_read(c);
}

/* Parses a message's seq and event (cached per delivered message: one parse for all clients). */
static int parse_msg(const char *msg, size_t len, uint64_t msg_id, long long *seq, int *is_file)
{
    static uint64_t cached_id;
    static long long cached_seq;
    static int cached_file, cached_ok;
    if (msg_id == 0 || msg_id != cached_id) {
        json_t *o = json_loadb(msg, len, 0, NULL);
        json_t *s = o ? json_object_get(o, "seq") : NULL;
        const char *ev = o ? json_string_value(json_object_get(o, "event")) : NULL;
        cached_ok = json_is_integer(s);
        cached_seq = cached_ok ? (long long)json_integer_value(s) : 0;
        cached_file = ev && strcmp(ev, "file") == 0;
        cached_id = msg_id;
        json_decref(o);
    }
    *seq = cached_seq;
    *is_file = cached_file;
    return cached_ok ? 0 : -1;
}

static void message_cb(const char *channel, const char *msg, size_t len, uint64_t msg_id, void *arg)
{
    client_t *c = arg;
    (void)channel;
    if (c->finished)
        return;
    if (!msg) { /* shutting down */
        client_finish(c, 503, "shutting_down", "the server is shutting down");
        return;
    }
    long long seq;
    int is_file;
    if (parse_msg(msg, len, msg_id, &seq, &is_file) != 0)
        return; /* not a status event */
    if (c->holding) /* until the replay is done (go_live) */
        hold(c, seq, is_file, msg, len);
    else
        deliver(c, seq, is_file, msg, len);
}

static void keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    (void)fd;
    (void)what;
    if (c->finished || !c->started)
        return;
    int err = sl_sse_send_comment(c->req, c->limit, "keepalive");
    if (err == SL_ETOOBIG)
        client_drop(c, "slow_client");
    else if (err)
        client_finish(c, 0, NULL, NULL);
}

/* ---- replay ---- */

/* One replayed or gap-read row (SL_RUN_EVENT_COLUMNS) as its message text, owned; NULL: no
 * memory (or a row without a seq, which the schema rules out). */
static char *row_json(PGresult *res, int i, long long *seq)
{
    const char *v[SL_RUN_EVENT_NCOLS];
    sl_run_event_t ev;
    sl_run_event_row_values(res, i, v);
    if (sl_run_event_from_values("run", v, &ev) != 0)
        return NULL;
    *seq = ev.seq;
    return sl_run_event_json(&ev);
}

/* Sends a page of replay rows; returns the number of rows, or -1 if the client was finished. */
static int send_rows(client_t *c, PGresult *res)
{
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        long long seq;
        char *data = row_json(res, i, &seq);
        if (!data) {
            client_finish(c, 0, NULL, NULL);
            return -1;
        }
        int rc = seq > c->last_sent ? send_event(c, seq, 0, data, strlen(data), 0) : 0;
        free(data);
        if (rc)
            return -1;
        if (seq > c->replay_max)
            c->replay_max = seq;
    }
    return n;
}

static void page_done(client_t *c, int n)
{
    if (n < REPLAY_PAGE) {
        go_live(c);
        return;
    }
    c->replay_after = c->last_sent;
    if (sl_http_resp_pending(c->req) == 0)
        replay_next(c);
    /* else: the drain callback asks for the next page */
}

static void drain_cb(sl_http_req_t *req, void *arg)
{
    client_t *c = arg;
    (void)req;
    if (!c->finished && c->holding && !c->pg_busy && c->started)
        replay_next(c);
}

static void replay_cb(const sl_pg_result_t *r, void *arg)
{
    client_t *c = arg;
    c->pg_busy = 0;
    if (c->finished) {
        client_free(c);
        return;
    }
    if (r->err) {
        sl_log(SL_LOG_WARN, "sse_replay_failed", "{s:s, s:s}", "dataset_id", c->dataset_id, "error",
               r->errmsg);
        client_finish(c, 0, NULL, NULL); /* it reconnects and replays from its last id */
        return;
    }
    int n = send_rows(c, r->res[0]);
    if (n >= 0)
        page_done(c, n);
}

static void replay_next(client_t *c)
{
    char after[24];
    snprintf(after, sizeof after, "%lld", c->replay_after);
    const char *params[] = {c->dataset_id, c->tenant_id, after};
    c->pg_busy = 1;
    if (sl_pg_query(c->app->pg, REPLAY_SQL, 3, params, replay_cb, c) != 0) {
        c->pg_busy = 0;
        client_finish(c, 0, NULL, NULL);
    }
}

/* ---- gap reads ---- */

static const char GAP_SQL[] =
    "SELECT " SL_RUN_EVENT_COLUMNS " FROM run_events"
    " WHERE dataset_id = $1 AND tenant_id = $2 AND seq >= $3::bigint AND seq < $4::bigint"
    " ORDER BY seq";

static void gap_cb_result(const sl_pg_result_t *r, void *arg)
{
    client_t *c = arg;
    c->pg_busy = c->gap_busy = 0;
    if (c->finished) {
        client_free(c);
        return;
    }
    long long upto = c->gap_upto;
    c->gap_upto = 0;
    if (c->holding) { /* it overflowed meanwhile (replay_again) */
        if (sl_http_resp_pending(c->req) == 0)
            replay_next(c);
        return;
    }
    if (r->err) {
        sl_log(SL_LOG_WARN, "sse_gap_read_failed", "{s:s, s:s}", "dataset_id", c->dataset_id,
               "error", r->errmsg);
        client_finish(c, 0, NULL, NULL); /* it reconnects and replays from its last id */
        return;
    }
    PGresult *res = r->res[0];
    for (int i = 0; i < PQntuples(res); i++) {
        long long seq;
        char *data = row_json(res, i, &seq);
        if (!data) {
            client_drop(c, "out_of_memory");
            return;
        }
        int rc = seq >= c->next ? hold(c, seq, 0, data, strlen(data)) : 0;
        free(data);
        if (rc) /* finished, or replaying again */
            return;
    }
    sl_log(SL_LOG_INFO, "sse_gap_read", "{s:s, s:I, s:I, s:i}", "dataset_id", c->dataset_id,
           "from", (json_int_t)c->next, "to", (json_int_t)upto, "found", PQntuples(res));
    advance(c, upto);
}

/* Reads the places from `next` up to the first held message: every one of them has committed. */
static void gap_read(client_t *c)
{
    char from[24], to[24];
    c->gap_upto = c->held->seq;
    snprintf(from, sizeof from, "%lld", c->next);
    snprintf(to, sizeof to, "%lld", c->gap_upto);
    const char *params[] = {c->dataset_id, c->tenant_id, from, to};
    c->pg_busy = c->gap_busy = 1;
    if (sl_pg_query(c->app->pg, GAP_SQL, 4, params, gap_cb_result, c) != 0) {
        c->pg_busy = c->gap_busy = 0;
        c->gap_upto = 0;
        client_finish(c, 0, NULL, NULL);
    }
}

/* ---- start ---- */

static void start_cb(const sl_pg_result_t *r, void *arg)
{
    client_t *c = arg;
    c->pg_busy = 0;
    if (c->finished) {
        client_free(c);
        return;
    }
    if (r->err) {
        if (r->err == SL_EUNAVAIL || r->err == SL_ECANCELED)
            client_finish(c, 503, "database_unavailable", "the database is unavailable");
        else
            client_finish(c, 500, "internal_error", "could not read the dataset");
        return;
    }
    if (PQntuples(r->res[0]) < 1) {
        client_finish(c, 404, "not_found", "no such dataset");
        return;
    }
    /* Committed before this snapshot, so in the replay or before the stream. */
    c->base = strtoll(PQgetvalue(r->res[0], 0, 0), NULL, 10);
    if (strcmp(sl_http_req_method(c->req), "HEAD") == 0) {
        sl_sse_start(c->req);
        c->started = 1;
        client_finish(c, 0, NULL, NULL);
        return;
    }
    sl_sse_start(c->req);
    c->started = 1;
    sl_sse_send_retry(c->req, (size_t)-1, RETRY_MS);
    sl_http_resp_on_drain(c->req, drain_cb, c);
    struct timeval tv = {
        c->app->cfg->sse_keepalive_s > 0 ? c->app->cfg->sse_keepalive_s : KEEPALIVE_DEFAULT_S, 0};
    event_add(c->keepalive, &tv);
    if (c->replay_after < 0) {
        go_live(c);
        return;
    }
    int n = send_rows(c, r->res[1]);
    if (n >= 0)
        page_done(c, n);
}

/* Last-Event-ID (header, else ?last_event_id=), or ?replay=all: 0 with *after set, -1 bad. */
static int parse_last_id(sl_http_req_t *req, long long *after)
{
    char buf[32];
    const char *s = sl_http_req_header(req, "Last-Event-ID");
    *after = -1;
    if (!s || !*s) {
        int n = sl_http_req_query_param(req, "last_event_id", buf, sizeof buf);
        if (n > 0) {
            s = buf;
        } else if (n == 0) {
            s = NULL;
        } else {
            if (sl_http_req_query_param(req, "replay", buf, sizeof buf) > 0 &&
                strcmp(buf, "all") == 0)
                *after = 0;
            return 0;
        }
    }
    if (!s || !*s)
        return 0;
    if (strlen(s) > 18)
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno)
        return -1;
    *after = v;
    return 0;
}

static void auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    /* A revocation that arrived while the credential was checked may be of
     * it: check again (the check then sees it), twice at most. */
    uint64_t cred[2];
    intptr_t rechecks = (intptr_t)arg;
    if (!sl_api_auth_revocation_ids(app, cred) && rechecks < 2) {
        sl_api_auth_owned(app, req, 1, auth_cb, (void *)(rechecks + 1), NULL);
        return;
    }
    sl_http_params_t params;
    const char *id = NULL;
    if (sl_api_route_params(app, req, &params) == 0)
        for (int i = 0; i < params.n && i < 8; i++)
            if (params.names[i] && strcmp(params.names[i], "id") == 0)
                id = params.values[i];
    if (!id || !sl_is_uuid(id)) {
        sl_http_respond_error(req, 404, "not_found", "no such dataset", -1);
        return;
    }
    long long after;
    if (parse_last_id(req, &after) != 0) {
        sl_http_respond_error(req, 400, "invalid_request",
                              "Last-Event-ID must be a non-negative integer", -1);
        return;
    }
    int over;
    peer_t *peer = peer_acquire(req, app->cfg->sse_max_streams_per_ip, &over);
    if (over) {
        sl_http_respond_error(req, 429, "rate_limited",
                              "too many event streams from this address", 5);
        return;
    }
    client_t *c = calloc(1, sizeof *c);
    if (!c || !(c->keepalive = event_new(app->base, -1, EV_PERSIST, keepalive_cb, c)) ||
        !(c->gap = evtimer_new(app->base, gap_cb, c))) {
        if (c && c->keepalive)
            event_free(c->keepalive);
        free(c);
        peer_release(peer);
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    c->app = app;
    c->req = req;
    snprintf(c->tenant_id, sizeof c->tenant_id, "%s", tenant_id);
    memcpy(c->dataset_id, id, 36); /* a UUID: 36 characters */
    c->dataset_id[36] = '\0';
    c->replay_after = after;
    c->last_sent = after < 0 ? 0 : after;
    /* The client has every place up to its Last-Event-ID: one of those that
     * is published only now (committed and replayed by its previous stream,
     * elsewhere, before the engine published it) is not news (late()). */
    c->replay_max = after < 0 ? 0 : after;
    c->limit = app->cfg->sse_client_buffer_bytes ? app->cfg->sse_client_buffer_bytes
                                                 : CLIENT_BUFFER_DEFAULT;
    c->holding = 1;

    /* Subscribe before the replay's snapshot: nothing falls between the two. */
    char channel[SL_PUBSUB_MAX_CHANNEL];
    int err = sl_run_event_channel(c->dataset_id, channel, sizeof channel);
    if (err >= 0)
        err = sl_pubsub_subscribe(app->pubsub, channel, message_cb, c, &c->sub);
    if (err < 0) {
        c->finished = 1;
        client_free(c);
        peer_release(peer);
        sl_http_respond_error(req, 503, "shutting_down", "the server is shutting down", 2);
        return;
    }
    g_clients++;
    c->peer = peer; /* released with the subscription */
    memcpy(c->cred, cred, sizeof c->cred);
    c->live_next = g_live;
    if (g_live)
        g_live->live_prev = c;
    g_live = c;
    sl_http_req_on_close(req, close_cb, c);

    char after_s[24];
    snprintf(after_s, sizeof after_s, "%lld", after);
    const char *p1[] = {c->tenant_id, c->dataset_id};
    const char *p2[] = {c->dataset_id, c->tenant_id, after_s};
    sl_pg_batch_t *b = sl_pg_batch_new(app->pg);
    if (!b ||
        sl_pg_batch_add(b, "SELECT event_seq FROM datasets WHERE tenant_id = $1 AND id = $2"
                           " AND deleted_at IS NULL", 2, p1) < 0 || /* retention */
        (after >= 0 && sl_pg_batch_add(b, REPLAY_SQL, 3, p2) < 0)) {
        sl_pg_batch_free(b);
        client_finish(c, 500, "internal_error", "out of memory");
        return;
    }
    c->pg_busy = 1;
    if (sl_pg_batch_exec(b, start_cb, c) != 0) {
        c->pg_busy = 0;
        client_finish(c, 503, "database_unavailable", "the database is unavailable");
    }
}

static void route_events(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth_owned(arg, req, 1, auth_cb, NULL, NULL);
}

void sl_api_register_events(sl_app_t *app)
{
    m_sent =
        sl_metrics_counter("sluice_sse_events_sent_total", "SSE events written to clients", NULL);
    m_dropped = sl_metrics_counter("sluice_sse_clients_dropped_total",
                                   "SSE clients ended for not reading fast enough", NULL);
    sl_metrics_gauge_fn("sluice_sse_clients", "Open SSE streams", gauge_clients, NULL);
    sl_http_router_add(app->router, "GET", "/v1/datasets/{id}/events", "datasets_events",
                       route_events, app);
    sl_cache_on_revoke(app->cache, revoked_cb, NULL);
}
