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
 * Event inserts take a per-dataset advisory lock (see docs/internals/sse.md),
 * so a dataset's seqs become visible in order and "seq <= last replayed"
 * means "was in the replay". The id line carries the seq only when it is
 * above the last one sent; a live message that arrives late (seq below one
 * already sent, e.g. from a slower instance) is still delivered, without an
 * id line, so the browser's Last-Event-ID never goes backwards and a
 * reconnect repeats nothing.
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
#define REORDER_MS 25 /* the reorder window for live messages */
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
    struct event *reorder;  /* flushes held live messages in seq order */
    char tenant_id[37];
    char dataset_id[37];
    long long last_sent;    /* highest seq sent with an id line */
    long long replay_after; /* replay seq > this; -1: live only */
    size_t limit;           /* client buffer bytes */
    int started;            /* the 200 and headers are out */
    int holding;            /* live messages are held (until the replay is done) */
    int pg_busy;            /* a query of ours is in flight */
    int finished;           /* the request is finished; free when !pg_busy */
    held_t *held, *held_tail;
    size_t held_bytes;
    struct peer_s *peer; /* its address's stream count, while subscribed; NULL if none */
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
    if (c->reorder)
        event_free(c->reorder);
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
    int with_id = seq > c->last_sent;
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
 * Commits of one dataset are serialised (an advisory lock), but their result
 * callbacks come back over different pool connections, so messages can reach
 * us out of seq order (10, 11, 8, 9). Held messages are kept sorted by seq and
 * live ones are sent after a short window: a reorder buffer. A message later
 * than the window still goes out, without an id line (see send_event).
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

/*
 * Sends every held message in seq order; skip_replayed drops run events the
 * replay sent. Returns 0, or -1 when a send finished the client: then c may be
 * freed already and the caller must not touch it.
 */
static int flush_held(client_t *c, int skip_replayed)
{
    held_t *h = c->held;
    c->held = c->held_tail = NULL;
    c->held_bytes = 0;
    int alive = 1;
    while (h) {
        held_t *n = h->next;
        if (alive && (!skip_replayed || h->is_file || h->seq > c->last_sent))
            alive = send_event(c, h->seq, h->is_file, h->data, h->len, 1) == 0;
        free(h);
        h = n;
    }
    return alive ? 0 : -1;
}

static void reorder_cb(evutil_socket_t fd, short what, void *arg)
{
    client_t *c = arg;
    (void)fd;
    (void)what;
    if (!c->finished && !c->holding)
        flush_held(c, 0);
}

/* The replay is complete: send what was held (skipping what the replay sent), go live. */
static void go_live(client_t *c)
{
    c->holding = 0;
    /* Run events up to last_sent were in the replay; file events never are. */
    flush_held(c, 1);
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
    if (!c->holding && c->held_bytes + len > c->limit / 4) {
        /* A burst: send what the window holds now (in order); the output limit judges the client. */
        evtimer_del(c->reorder);
        if (flush_held(c, 0) != 0)
            return; /* the client was finished (and may be freed) */
    }
    if (c->held_bytes + len > c->limit) {
        client_drop(c, "held_messages_over_limit");
        return;
    }
    held_t *h = malloc(sizeof *h + len);
    if (!h) {
        client_drop(c, "out_of_memory");
        return;
    }
    h->next = NULL;
    h->seq = seq;
    h->is_file = is_file;
    h->len = len;
    memcpy(h->data, msg, len);
    held_insert_sorted(c, h);
    c->held_bytes += len;
    if (!c->holding && !evtimer_pending(c->reorder, NULL)) {
        static const struct timeval window = {0, REORDER_MS * 1000};
        evtimer_add(c->reorder, &window);
    }
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

/* Sends a page of replay rows; returns the number of rows, or -1 if the client was finished. */
static int send_rows(client_t *c, PGresult *res)
{
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        const char *v[SL_RUN_EVENT_NCOLS];
        for (int k = 0; k < SL_RUN_EVENT_NCOLS; k++)
            v[k] = PQgetisnull(res, i, k) ? NULL : PQgetvalue(res, i, k);
        long long seq = strtoll(v[0], NULL, 10);
        sl_run_event_t ev = {"run", seq, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
        char *data = sl_run_event_json(&ev);
        if (!data) {
            client_finish(c, 0, NULL, NULL);
            return -1;
        }
        int rc = seq > c->last_sent ? send_event(c, seq, 0, data, strlen(data), 0) : 0;
        free(data);
        if (rc)
            return -1;
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
    (void)arg;
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
        !(c->reorder = evtimer_new(app->base, reorder_cb, c))) {
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
    sl_http_req_on_close(req, close_cb, c);

    char after_s[24];
    snprintf(after_s, sizeof after_s, "%lld", after);
    const char *p1[] = {c->tenant_id, c->dataset_id};
    const char *p2[] = {c->dataset_id, c->tenant_id, after_s};
    sl_pg_batch_t *b = sl_pg_batch_new(app->pg);
    if (!b ||
        sl_pg_batch_add(b, "SELECT 1 FROM datasets WHERE tenant_id = $1 AND id = $2"
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
}
