/*
 * app.c — one serving process: its parts opened in order, run, closed (app.h).
 *
 * One event loop per process, and each process has a role (core/supervise.h,
 * docs/internals/engine.md). With `engine: {process: separate}` (the default)
 * the first process is a small supervisor: it forks one engine process (the
 * scheduler, run actors, flow VM: no listener) and `workers` HTTP processes
 * (the API, SSE, /metrics: no Lua), restarts the engine when it dies and
 * stops everything on SIGTERM. The HTTP processes talk to the engine by
 * messages (core/engine_link.h). With `process: inline` each process is both,
 * as before: `workers: N` forks N of them and restarts none.
 * Both roles call sl_app_serve() with their role; it builds what the role needs.
 * Start-up never waits for Postgres: migrations run on the worker pool and are
 * retried with backoff, and until they are done /readyz and /v1 answer 503.
 */
#include "app.h"

#include "actors/flow_check.h"
#include "api/auth.h"
#include "api/pipelines.h" /* issue 14: pipelines through the API */
#include "core/fault.h"
#include "core/crypto.h"
#include "core/engine_link.h"
#include "core/err.h"
#include "core/exec.h" /* sl_exec_live: the drain waits for children (issue 12) */
#include "core/log.h"
#include "core/looplag.h"
#include "core/supervise.h"

#include <errno.h>
#include <event2/event.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DRAIN_GRACE_S 10 /* after shutdown.drain_timeout_s: complete requests get this long */
#define SNAPSHOT_MS 250 /* the engine's heartbeat and metrics snapshot */
#define SL_CURL_CONNECTS_SPARE 16 /* idle connections kept beyond the services' concurrency */

static sl_app_t g_app;
static char g_instance[128];

/* ---- request dispatch ---- */

/* A request held until the limiter answers (the router's params copied). */
typedef struct limited_req_s {
    sl_http_req_t *req;
    sl_http_route_cb cb;
    void *cb_arg;
    sl_http_params_t params;
} limited_req_t;

static void request_limit_cb(int err, double retry_after_s, void *arg)
{
    limited_req_t *lr = arg;
    if (err == 0) {
        lr->cb(lr->req, &lr->params, lr->cb_arg);
    } else if (err == SL_EAGAIN) {
        int secs = (int)ceil(retry_after_s);
        sl_http_respond_error(lr->req, 429, "rate_limited",
                              "too many requests for this API key; retry after Retry-After seconds",
                              secs < 1 ? 1 : secs);
    } else {
        sl_http_respond_error(lr->req, 503, "unavailable", "shutting down", 1);
    }
    free(lr);
}

/*
 * Per API key request limits (rate_limits.requests_per_s): uploads and every
 * other /v1 request ("reads") have separate budgets. The key is the sha256 of
 * the bearer token (or ?access_token=), so no database lookup is needed and
 * a bad key costs the same as a good one. Returns 1 if the request now waits
 * for the limiter (which then routes or answers it), 0 to route it at once.
 */
static int limit_request(sl_app_t *app, sl_http_req_t *req, const char *route,
                         sl_http_route_cb cb, void *cb_arg, const sl_http_params_t *params)
{
    const sl_config_t *cfg = app->cfg;
    int upload = route && strcmp(route, "files_upload") == 0;
    sl_rl_limit_t lim = {upload ? cfg->rl_uploads_per_s : cfg->rl_reads_per_s, 0};
    if (!app->ratelimit || lim.rate <= 0)
        return 0;
    lim.burst = cfg->rl_requests_burst > 0 ? cfg->rl_requests_burst : lim.rate;
    char token[SL_API_KEY_MAX];
    int tlen = sl_api_credentials(req, 1, token, sizeof token);
    if (tlen <= 0)
        return 0; /* no (well-formed) key: authentication answers 401 */
    /* issue 13: an access token counts as its API key id, not as a new string per token. */
    char who[80], key[128];
    sl_auth_rate_id(app->auth, token, (size_t)tlen, who, sizeof who);
    explicit_bzero(token, sizeof token);
    snprintf(key, sizeof key, "req:%s:%s", upload ? "uploads" : "reads", who);
    limited_req_t *lr = malloc(sizeof *lr);
    if (!lr)
        return 0;
    lr->req = req;
    lr->cb = cb;
    lr->cb_arg = cb_arg;
    lr->params = *params;
    if (sl_ratelimit_check(app->ratelimit, upload ? "uploads" : "reads", key, &lim, 1, 0,
                           request_limit_cb, lr, NULL) != 0) {
        free(lr);
        return 0;
    }
    return 1;
}

static void dispatch_cb(sl_http_req_t *req, void *arg)
{
    sl_app_t *app = arg;
    sl_http_route_cb cb;
    void *cb_arg;
    sl_http_params_t params;
    const char *name = NULL;
    const char *path = sl_http_req_path(req);
    int m = sl_http_router_match(app->router, sl_http_req_method(req), path, &cb, &cb_arg, &params,
                                 &name);
    if (m == 0) {
        sl_http_req_set_route(req, "not_found");
        sl_http_respond_error(req, 404, "not_found", "no such endpoint", -1);
        return;
    }
    if (m < 0) {
        sl_http_req_set_route(req, "method_not_allowed");
        sl_http_respond_error(req, 405, "method_not_allowed", "method not allowed here", -1);
        return;
    }
    sl_http_req_set_route(req, name);
    /* Until the schema is in place only the process-level endpoints answer. */
    if (!app->schema_ready && strncmp(path, "/v1/", 4) == 0) {
        sl_http_respond_error(req, 503, "database_unavailable",
                              "the database is not reachable yet", 2);
        return;
    }
    if (strncmp(path, "/v1/", 4) == 0 && limit_request(app, req, name, cb, cb_arg, &params))
        return;
    cb(req, &params, cb_arg);
}

static void finish_cb(sl_http_req_t *req, int status, double duration_s, void *arg)
{
    sl_app_t *app = arg;
    const char *route = sl_http_req_route(req);
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    if (!route)
        route = "unrouted";
    sl_metrics_add(app->m_requests, 1, route, code);
    sl_metrics_observe(app->m_latency, duration_s, route);
    /* The request log, one line per request: built without jansson or malloc
     * and buffered (core/log.h), so it costs no syscall of its own. */
    sl_log_line_t line;
    if (sl_log_line_begin(&line, status >= 500 ? SL_LOG_WARN : SL_LOG_INFO, "http_request")) {
        sl_log_line_str(&line, "request_id", sl_http_req_id(req));
        sl_log_line_str(&line, "method", sl_http_req_method(req));
        sl_log_line_str(&line, "path", sl_http_req_path(req));
        sl_log_line_str(&line, "route", route);
        sl_log_line_int(&line, "status", status);
        sl_log_line_num(&line, "duration_s", duration_s);
        sl_log_line_int(&line, "body_bytes", (long long)sl_http_req_body_bytes(req));
        sl_log_line_str(&line, "peer", sl_http_req_peer(req));
        sl_log_line_end(&line);
    }
}

/* ---- database start-up: migrate on the worker pool, retry until it works ---- */

typedef struct migrate_job_s {
    sl_app_t *app;
    int err;
    sl_pg_bootstrap_t b; /* the keys, and errbuf; issue 13: the JWT key too (api/auth.h) */
    struct event *retry;
    int delay_ms;
} migrate_job_t;

/* On the worker pool: migrations, shared keys, tenants (db/pg.h). */
static void migrate_work(void *arg)
{
    migrate_job_t *job = arg;
    const sl_config_t *cfg = job->app->cfg;
    job->b.conninfo = cfg->database_url;
    job->b.tenants = cfg->tenants;
    job->b.ntenants = cfg->ntenants;
    /* Without auth.token_keys, the key every instance shares through settings. */
    job->b.token_key_name = sl_auth_configured_keys(job->app->auth) ? NULL : SL_AUTH_SETTINGS_KEY;
    job->err = sl_pg_bootstrap(&job->b);
}

static void migrate_done(void *arg);

static void migrate_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    migrate_job_t *job = arg;
    (void)fd;
    (void)what;
    if (sl_workq_submit(job->app->wq, NULL, migrate_work, migrate_done, job) != 0)
        event_add(job->retry, &(struct timeval){1, 0});
}

static void migrate_done(void *arg)
{
    migrate_job_t *job = arg;
    sl_app_t *app = job->app;
    if (job->err) {
        sl_log(SL_LOG_WARN, "migrate_failed", "{s:s, s:i}", "error", job->b.errbuf, "retry_ms",
               job->delay_ms);
        struct timeval tv = {job->delay_ms / 1000, (job->delay_ms % 1000) * 1000};
        event_add(job->retry, &tv);
        job->delay_ms = job->delay_ms * 2 > 5000 ? 5000 : job->delay_ms * 2;
        return;
    }
    snprintf(app->signing_key, sizeof app->signing_key, "%s", job->b.url_signing_key);
    /* Without auth.token_keys, the key every instance shares through settings. */
    if (!sl_auth_configured_keys(app->auth) && job->b.token_signing_key[0] &&
        sl_auth_use_stored_key(app->auth, job->b.token_signing_key) != 0)
        sl_log(SL_LOG_ERROR, "token_key_invalid", NULL);
    explicit_bzero(job->b.token_signing_key, sizeof job->b.token_signing_key);
    app->schema_ready = 1;
    sl_log(SL_LOG_INFO, "schema_ready", "{s:i}", "migrations", sl_pg_nmigrations);
    sl_api_pipelines_start(app); /* issue 14: API pipelines first, then sl_sched_start */
    sl_retention_start(app->retention); /* retention: resumes purges; the sweep (not HTTP) */
    event_free(job->retry);
    free(job);
}

static int start_migrations(sl_app_t *app)
{
    migrate_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return SL_ENOMEM;
    job->app = app;
    job->delay_ms = 200;
    job->retry = evtimer_new(app->base, migrate_retry_cb, job);
    if (!job->retry || sl_workq_submit(app->wq, NULL, migrate_work, migrate_done, job) != 0) {
        if (job->retry)
            event_free(job->retry);
        free(job);
        return SL_ENOMEM;
    }
    return 0;
}

/* ---- the engine process: messages in, snapshots out (docs/internals/engine.md) ---- */

static struct event *g_snapshot;
static pid_t g_supervisor;
static int g_stopping; /* a stop signal came: the scheduler (whose gauges render) is gone */

/* {"pipeline": {"steps", "version", "start", "graph"}} of the loaded flows (sl_flow_describe):
 * what /v1/pipelines shows. Owned. */
static char *steps_json(const sl_app_t *app)
{
    json_t *all = json_object();
    for (int i = 0; all && i < app->npipelines; i++)
        if (app->pipelines[i].flow)
            json_object_set(all, app->pipelines[i].name, app->pipelines[i].flow);
    char *text = all ? json_dumps(all, JSON_COMPACT) : NULL;
    json_decref(all);
    return text;
}

/* Heartbeat, steps and metrics into the shared page the HTTP processes read. */
static void publish_snapshot(sl_app_t *app)
{
    size_t len = 0;
    char *metrics = sl_metrics_render(&len);
    char *steps = steps_json(app);
    sl_elink_publish(app->link, steps ? steps : "{}", metrics ? metrics : "", metrics ? len : 0);
    free(metrics);
    free(steps);
}

static void snapshot_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_app_t *app = arg;
    (void)fd;
    (void)what;
    if (g_stopping)
        return; /* the page keeps the last snapshot; the heartbeat ages: "stalled" while draining */
    /* PR_SET_PDEATHSIG is the first line; this is the second. */
    if (getppid() != g_supervisor) {
        sl_log(SL_LOG_ERROR, "supervisor_gone", NULL);
        raise(SIGTERM);
    }
    publish_snapshot(app);
    struct timeval tv = {0, SNAPSHOT_MS * 1000};
    evtimer_add(g_snapshot, &tv);
}

/* A message from an HTTP process: "metrics" is ours, the rest the scheduler's. */
static void engine_message_cb(const char *msg, void *arg)
{
    sl_app_t *app = arg;
    if (strcmp(msg, "metrics") == 0) {
        struct timeval now = {0, 0};
        if (g_stopping)
            return;
        evtimer_add(g_snapshot, &now); /* coalesces: one render for a burst */
    } else if (app->sched) {
        sl_sched_message(app->sched, msg);
    }
}

/* Engine: a status event its pubsub could not send to Redis goes to the HTTP processes. */
static void forward_event_cb(const char *channel, const char *msg, size_t len, void *arg)
{
    sl_elink_forward_event(arg, channel, msg, len);
}

/* HTTP: such an event, for this process's SSE clients only. */
static void deliver_event_cb(const char *channel, const char *msg, size_t len, void *arg)
{
    sl_app_t *app = arg;
    sl_cache_on_message(app->cache, channel, msg, len); /* the file caches too */
    sl_pubsub_deliver_local(app->pubsub, channel, msg, len);
}

/* Listens for messages and publishes the first snapshot (which makes the engine "ready"). */
static int start_engine_link(sl_app_t *app)
{
    int err;
    g_supervisor = getppid();
    if ((err = sl_elink_listen(app->link, app->base, engine_message_cb, app)) != 0)
        return err;
    if (!(g_snapshot = evtimer_new(app->base, snapshot_cb, app)))
        return SL_ENOMEM;
    snapshot_cb(-1, 0, app);
    return 0;
}

/* ---- flows: load at start, reload on SIGHUP ---- */

/*
 * Loads every pipeline's flow; on success hands them to the scheduler and
 * fills the steps /v1/pipelines shows. At start a bad flow is fatal (errors at
 * load time); on reload a bad flow is logged and the old version stays.
 */
static int load_flows(sl_app_t *app, int reload)
{
    sl_flow_t *flows[SL_CONFIG_MAX_PIPELINES] = {0};
    int err = 0;
    for (int i = 0; i < app->npipelines; i++) {
        const char *path = NULL;
        char def[256];
        if (app->pipelines[i].origin != SL_PIPE_CONFIG)
            continue; /* issue 14: API pipelines are the store's (api/pipelines.h) */
        for (int k = 0; k < app->cfg->npipelines; k++)
            if (strcmp(app->cfg->pipelines[k].name, app->pipelines[i].name) == 0)
                path = app->cfg->pipelines[k].flow;
        if (!path) {
            snprintf(def, sizeof def, "lua-flows/%s.lua", app->pipelines[i].name);
            path = def;
        }
        char msg[8192]; /* every error of the flow, one per line (actors/flow_check.h) */
        if ((err = sl_flow_load(app->vm, app->pipelines[i].name, path, &flows[i], msg,
                                sizeof msg)) != 0) {
            sl_log(SL_LOG_ERROR, reload ? "flow_reload_failed" : "flow_load_failed",
                   "{s:s, s:s}", "pipeline", app->pipelines[i].name, "error", msg);
            if (!reload)
                fprintf(stderr, "sluice: %s\n", msg);
            goto out;
        }
    }
    for (int i = 0; i < app->npipelines; i++) {
        sl_pipeline_def_t *p = &app->pipelines[i];
        if (!flows[i])
            continue; /* issue 14: not the config's */
        sl_sched_set_flow(app->sched, p->name, flows[i]);
        json_t *flow = sl_flow_describe(flows[i]); /* steps, version, graph (issue 14) */
        if (flow) {
            json_decref(p->flow);
            p->flow = flow;
        }
        sl_log(SL_LOG_INFO, reload ? "flow_reloaded" : "flow_loaded", "{s:s, s:s, s:i}", "pipeline",
               p->name, "version", sl_flow_version(flows[i]), "steps", sl_flow_nsteps(flows[i]));
    }
    if (app->link)
        publish_snapshot(app); /* the HTTP processes show the new steps */
out:
    for (int i = 0; i < app->npipelines; i++)
        if (flows[i])
            sl_flow_unref(flows[i]);
    return err;
}

static void sighup_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    load_flows(arg, 1);
}

/* ---- metrics read at render time ---- */

static double gauge_connections(void *arg)
{
    sl_app_t *app = arg;
    return app->http ? (double)sl_http_server_connections(app->http) : 0;
}
static double gauge_uploads(void *arg)
{
    return ((sl_app_t *)arg)->active_uploads;
}
static double gauge_pg_up(void *arg)
{
    int total, up, busy, queued;
    sl_pg_stats(((sl_app_t *)arg)->pg, &total, &up, &busy, &queued);
    return up;
}
static double gauge_pg_busy(void *arg)
{
    int total, up, busy, queued;
    sl_pg_stats(((sl_app_t *)arg)->pg, &total, &up, &busy, &queued);
    return busy;
}
static double gauge_pg_queued(void *arg)
{
    int total, up, busy, queued;
    sl_pg_stats(((sl_app_t *)arg)->pg, &total, &up, &busy, &queued);
    return queued;
}
static double gauge_workq(void *arg)
{
    return (double)sl_workq_pending(((sl_app_t *)arg)->wq);
}

static double gauge_engine_up(void *arg)
{
    return strcmp(sl_api_engine_state(arg), "down") != 0;
}

static void register_metrics(sl_app_t *app)
{
    static const double latency[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,  0.5,   1,    2.5,   5,    10};
    if (app->role != SL_ROLE_ENGINE) {
        app->m_requests = sl_metrics_counter("sluice_http_requests_total",
                                             "HTTP requests by route and status", "route,status");
        app->m_latency = sl_metrics_histogram("sluice_http_request_duration_seconds",
                                              "HTTP request latency by route", "route", latency,
                                              (int)(sizeof latency / sizeof latency[0]));
        app->m_upload_bytes =
            sl_metrics_counter("sluice_upload_bytes_total", "Request body bytes of uploads", NULL);
        app->m_upload_files =
            sl_metrics_counter("sluice_upload_files_total", "Files stored by uploads", NULL);
        sl_metrics_gauge_fn("sluice_http_open_connections", "Open HTTP connections",
                            gauge_connections, app);
        sl_metrics_gauge_fn("sluice_uploads_in_progress", "Uploads being received",
                            gauge_uploads, app);
    }
    if (app->role == SL_ROLE_HTTP)
        sl_metrics_gauge_fn("sluice_engine_up",
                            "1 while this instance's engine process runs (0: down or restarting)",
                            gauge_engine_up, app);
    /* Both roles: the engine's samples get role="engine" (docs/internals/engine.md). */
    sl_metrics_gauge_fn("sluice_pg_connections_up", "Postgres pool connections up", gauge_pg_up,
                        app);
    sl_metrics_gauge_fn("sluice_pg_connections_busy", "Postgres pool connections running a batch",
                        gauge_pg_busy, app);
    sl_metrics_gauge_fn("sluice_pg_batches_queued", "Postgres batches waiting for a connection",
                        gauge_pg_queued, app);
    sl_metrics_gauge_fn("sluice_workq_jobs", "Jobs queued or running on the worker pool",
                        gauge_workq, app);
}

/* ---- shutdown ---- */

static struct event *g_sigterm, *g_sigint, *g_sighup, *g_drain, *g_announce;
static int g_drain_ticks;

/*
 * After a stop signal (issue 12, docs/deploy.md), every 50 ms: exit once
 * nothing is in flight — no connection left (every answer sent), no upload,
 * no query, no job, no child process. At shutdown.drain_timeout_s the
 * connections still receiving a body are cut (those uploads keep nothing and
 * are never answered); complete requests get DRAIN_GRACE_S more to be answered.
 */
static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_app_t *app = arg;
    int total, up, busy, queued;
    int deadline = app->cfg->shutdown_drain_timeout_s * 20;
    (void)fd;
    (void)what;
    sl_pg_stats(app->pg, &total, &up, &busy, &queued);
    ++g_drain_ticks;
    if (g_drain_ticks == deadline + 1 && app->http) {
        size_t cut = sl_http_server_cut(app->http);
        sl_log(SL_LOG_WARN, "drain_deadline", "{s:i, s:i, s:i}", "drain_timeout_s",
               app->cfg->shutdown_drain_timeout_s, "connections_cut", (int)cut, "uploads",
               app->active_uploads);
    }
    if ((app->active_uploads == 0 && app->metrics_waits == 0 && busy == 0 && queued == 0 &&
         sl_workq_pending(app->wq) == 0 && sl_exec_live() == 0 &&
         (!app->http || sl_http_server_connections(app->http) == 0)) ||
        g_drain_ticks > deadline + DRAIN_GRACE_S * 20)
        event_base_loopbreak(app->base);
}

/* Closes the listener and drains what is in flight (drain_cb decides when to exit). */
static void begin_drain(sl_app_t *app)
{
    /* stop accepting; idle connections close; in-flight requests finish */
    if (app->http)
        sl_http_server_drain(app->http);
    if (app->pubsub)
        sl_pubsub_shutdown(app->pubsub); /* ends the SSE streams: clients reconnect elsewhere */
    g_drain = event_new(app->base, -1, EV_PERSIST, drain_cb, app);
    struct timeval tv = {0, 50000};
    if (!g_drain || event_add(g_drain, &tv) != 0)
        event_base_loopbreak(app->base);
}

static void announced_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    begin_drain(arg);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    sl_app_t *app = arg;
    (void)what;
    /*
     * The events stay registered, so a second signal lands here, not in
     * SIG_DFL. Apart (app->link), the supervisor forwards what the process
     * group may get too, so a child takes the second one as a duplicate; the
     * supervisor itself stops at once on a second signal (core/supervise.h).
     * Inline, a second signal is the operator's: exit now (the leases lapse).
     */
    if (g_stopping++) {
        if (!app->link) {
            sl_log(SL_LOG_WARN, "shutdown_now", "{s:i}", "signal", (int)sig);
            sl_log_flush();
            _exit(1);
        }
        return;
    }
    int announce_s = app->http ? app->cfg->shutdown_announce_s : 0;
    sl_log(SL_LOG_INFO, "shutdown", "{s:i, s:i, s:i}", "signal", (int)sig, "announce_s",
           announce_s, "drain_timeout_s", app->cfg->shutdown_drain_timeout_s);
    app->stopping = 1; /* /readyz: 503 from now on */
    /* retention: no new batches; a purge cut short resumes at the next start */
    sl_retention_free(app->retention);
    app->retention = NULL;
    sl_api_pipelines_close(app); /* issue 14: before the scheduler it loads flows into */
    if (app->sched) {
        /* Hand this instance's runs back at once instead of letting leases lapse. */
        sl_sched_stop(app->sched, NULL, NULL);
        app->sched = NULL;
    }
    /* shutdown.announce_s: keep serving while the load balancer sees /readyz 503 */
    struct timeval tv = {announce_s, 0};
    if (announce_s > 0 && (g_announce = evtimer_new(app->base, announced_cb, app)) != NULL &&
        evtimer_add(g_announce, &tv) == 0)
        return;
    begin_drain(app);
}


/* ---- serving: what each role builds ---- */

/* retention: a purged file's actors stop (here, or by a message to the engine). */
static void retention_cancel_cb(const char *file_id, void *arg)
{
    sl_api_engine_cancel_file(arg, file_id);
}

/* retention: every role purges; the sweep runs where background work does (not HTTP). */
static int start_retention(sl_app_t *app, int role)
{
    const sl_config_t *cfg = app->cfg;
    sl_retention_opts_t ro = {0};
    ro.base = app->base;
    ro.pg = app->pg;
    ro.store = app->store;
    ro.pubsub = app->pubsub;
    ro.instance_id = app->instance_id;
    ro.sweep = role != SL_ROLE_HTTP;
    ro.interval_s = cfg->retention_interval_s;
    ro.idempotency_hours = cfg->retention_idempotency_hours;
    ro.files_days = cfg->retention_files_days;
    ro.batch = cfg->retention_batch;
    ro.pause_ms = cfg->retention_pause_ms;
    ro.lock_timeout_ms = cfg->retention_lock_timeout_ms;
    ro.cancel_file = retention_cancel_cb;
    ro.cancel_arg = app;
    return sl_retention_new(&ro, &app->retention);
}

int sl_app_open_backends(sl_app_t *app)
{
    const sl_config_t *cfg = app->cfg;
    int role = app->role;
    int err;
    if ((err = sl_workq_new(app->base, 4, &app->wq)) != 0)
        return err;
    /* s3 (issue 12): the store is opened from the storage section, whichever backend. */
    sl_store_conf_t sc = {.backend = cfg->storage_backend,
                          .path = cfg->storage_path,
                          .endpoint = cfg->s3_endpoint,
                          .bucket = cfg->s3_bucket,
                          .region = cfg->s3_region,
                          .access_key_id = cfg->s3_access_key_id,
                          .secret_access_key = cfg->s3_secret_access_key,
                          .path_style = cfg->s3_path_style && strcmp(cfg->s3_path_style, "true") == 0,
                          .part_size = cfg->s3_part_size,
                          /* config 0 (never) is the store's "off" (< 0) */
                          .abort_stale_uploads_after_s =
                              cfg->s3_abort_stale_after_s > 0 ? (long)cfg->s3_abort_stale_after_s
                                                              : -1};
    if ((err = sl_store_open(&sc, app->wq, app->base, &app->store)) != 0) {
        sl_log(SL_LOG_ERROR, "storage_open_failed", "{s:s, s:s, s:s}", "backend",
               cfg->storage_backend, "path", cfg->storage_path, "error", sl_strerror(err));
        return err;
    }
    if ((err = sl_pg_new(app->base, cfg->database_url, cfg->database_pool,
                         cfg->database_statement_timeout_ms, &app->pg)) != 0)
        return err;
    if (cfg->redis_url && (err = sl_redis_new(app->base, cfg->redis_url, &app->redis)) != 0) {
        sl_log(SL_LOG_ERROR, "redis_url_invalid", "{s:s}", "redis_url", cfg->redis_url);
        return err;
    }
    /* Before the flow VM: its service registry borrows the limiter (sl_flow_host_t). */
    if ((err = sl_ratelimit_new(app->base, app->redis, &app->ratelimit)) != 0)
        return err;
    /* Service holds set by other instances arrive at once (docs/internals/ratelimit.md). */
    if (cfg->redis_url && (err = sl_ratelimit_listen(app->ratelimit, cfg->redis_url)) != 0)
        return err;
    /*
     * Status events: local fan-out, bridged through Redis when it is configured.
     * The engine only publishes (its SSE readers are in the HTTP processes).
     */
    if ((err = sl_pubsub_new(app->base, app->redis,
                             role == SL_ROLE_ENGINE ? NULL : cfg->redis_url,
                             SL_RUN_EVENT_PATTERN, app->instance_id, &app->pubsub)) != 0)
        return err;
    /* Run events that could not go through Redis reach this instance's SSE clients anyway. */
    if (role == SL_ROLE_ENGINE)
        sl_pubsub_set_forward(app->pubsub, forward_event_cb, app->link);
    if (role == SL_ROLE_HTTP &&
        (err = sl_elink_listen_events(app->link, app->base, deliver_event_cb, app)) != 0)
        return err;
    /* The read caches of api/cache.h (docs/internals/caching.md); none in the engine. */
    if (role != SL_ROLE_ENGINE &&
        (err = sl_cache_new(app->base, app->redis, cfg->redis_url, &app->cache)) != 0)
        return err;
    if ((err = sl_api_load_pipelines(app)) != 0)
        return err;
    if ((err = sl_auth_new(cfg, &app->auth)) != 0) /* issue 13: token keys, scopes */
        return err;
    if ((err = start_retention(app, role)) != 0)
        return err;
    return 0;
}

void sl_app_close_backends(sl_app_t *app)
{
    sl_retention_free(app->retention); /* before the pool: its batches end with it */
    app->retention = NULL;
    sl_ratelimit_free(app->ratelimit); /* before Redis: its pending checks end with it */
    app->ratelimit = NULL;
    sl_auth_free(app->auth);
    app->auth = NULL;
    sl_cache_free(app->cache);         /* its publishes in flight end with app->redis */
    app->cache = NULL;
    if (app->pubsub)
        sl_pubsub_set_publisher(app->pubsub, NULL); /* it borrows app->redis */
    if (app->redis)
        sl_redis_free(app->redis);
    app->redis = NULL;
    if (app->pg)
        sl_pg_free(app->pg);
    app->pg = NULL;
    /* let cancelled operations deliver their callbacks (they free their state) */
    for (int i = 0; i < 3; i++)
        event_base_loop(app->base, EVLOOP_NONBLOCK);
    if (app->pubsub) /* after those callbacks: they may publish or unsubscribe */
        sl_pubsub_free(app->pubsub);
    app->pubsub = NULL;
    if (app->store)
        sl_store_free(app->store);
    app->store = NULL;
    if (app->wq)
        sl_workq_free(app->wq);
    app->wq = NULL;
}

/* The engine: curl, the flow VM, the scheduler, the flows (and, apart, its link). */
int sl_app_open_flows(sl_app_t *app)
{
    const sl_config_t *cfg = app->cfg;
    int err;
    /*
     * Scratch space for runs, absolute: steps run their tools with the run's
     * scratch dir as working directory, so relative paths would break.
     */
    static char tmp_root[600];
    char cwd[512];
    if ((err = sl_curl_new(app->base, &app->curl)) != 0)
        return err;
    /* Room for every service's calls in flight to stay open between bursts
     * (core/curl.h sl_curl_max_connects), and some for the flows' sl.http. */
    long conns = SL_CURL_CONNECTS_SPARE;
    for (int i = 0; i < cfg->nservices; i++)
        conns += cfg->services[i].configured ? cfg->services[i].concurrency : 0;
    if ((err = sl_curl_max_connects(app->curl, conns)) != 0)
        return err;
    if (!getcwd(cwd, sizeof cwd))
        return SL_EIO;
    snprintf(tmp_root, sizeof tmp_root, "%s/var", cwd);
    mkdir(tmp_root, 0755);
    snprintf(tmp_root, sizeof tmp_root, "%s/var/tmp", cwd);
    if (mkdir(tmp_root, 0700) != 0 && errno != EEXIST) {
        sl_log(SL_LOG_ERROR, "tmp_dir_failed", "{s:s}", "path", tmp_root);
        return SL_EIO;
    }
    sl_flow_host_t host = {0};
    host.base = app->base;
    host.curl = app->curl;
    host.store = app->store;
    host.pg = app->pg;
    host.wq = app->wq;
    host.cfg = cfg;
    host.lib_dir = "lua-flows/lib";
    host.tmp_root = tmp_root;
    host.ratelimit = app->ratelimit; /* service limits and holds; freed after the VM */
    char msg[512];
    if ((err = sl_flowvm_new(&host, &app->vm, msg, sizeof msg)) != 0) {
        sl_log(SL_LOG_ERROR, "flowvm_failed", "{s:s}", "error", msg);
        return err;
    }
    sl_sched_opts_t so = {0};
    so.base = app->base;
    so.pg = app->pg;
    so.store = app->store;
    so.wq = app->wq;
    so.vm = app->vm;
    so.pubsub = app->pubsub;
    so.instance_id = app->instance_id;
    so.tmp_root = tmp_root;
    so.max_in_flight = cfg->max_runs_in_flight;
    so.max_active = cfg->max_runs_active;
    so.lease_s = cfg->engine_lease_s; /* the heartbeat is a third of it */
    so.max_in_flight_per_tenant = cfg->max_runs_per_tenant;
    so.no_shares = cfg->fairness_shares && strcmp(cfg->fairness_shares, "false") == 0;
    json_t *weights = json_object();
    for (int i = 0; weights && i < cfg->nweights; i++)
        json_object_set_new(weights, cfg->weights[i].tenant, json_integer(cfg->weights[i].weight));
    char *weights_txt = weights ? json_dumps(weights, JSON_COMPACT) : NULL;
    json_decref(weights);
    so.weights_json = weights_txt; /* copied by the scheduler */
    err = sl_sched_new(&so, &app->sched);
    free(weights_txt);
    if (err)
        return err;
    if ((err = load_flows(app, 0)) != 0)
        return err;
    return app->role == SL_ROLE_ENGINE ? start_engine_link(app) : 0;
}

void sl_app_close_flows(sl_app_t *app)
{
    if (g_snapshot)
        event_free(g_snapshot);
    g_snapshot = NULL;
    if (app->link)
        sl_elink_unlisten(app->link); /* its event is on app->base */
    sl_api_pipelines_close(app); /* issue 14 */
    if (app->sched)
        sl_sched_free(app->sched);
    app->sched = NULL;
    if (app->vm)
        sl_flowvm_free(app->vm);
    app->vm = NULL;
    if (app->curl)
        sl_curl_free(app->curl);
    app->curl = NULL;
}

/*
 * Every route, into app->router. Also run by `sluice routes` (main.c),
 * with a config and nothing else: a register function only adds routes (and
 * metrics families), it never connects to anything.
 */
void sl_app_register_routes(sl_app_t *app)
{
    sl_api_register_ops(app);
    sl_api_register_pipelines(app);
    sl_api_register_tenants(app);
    sl_api_register_datasets(app);
    sl_api_register_upload(app);
    sl_api_register_files(app);
    sl_api_register_records(app);
    sl_api_register_artifacts(app);
    sl_api_register_events(app);
    sl_api_register_retention(app);
    sl_api_register_openapi(app); /* issue 13 (openapi) */
    sl_api_register_auth(app); /* issue 13 */
    sl_api_register_keys(app);
}

/* HTTP: the router with every route, and the listener. */
int sl_app_open_http(sl_app_t *app)
{
    const sl_config_t *cfg = app->cfg;
    int err;
    app->router = sl_http_router_new();
    if (!app->router)
        return SL_ENOMEM;
    sl_app_register_routes(app);

    sl_http_limits_t limits;
    sl_http_limits_default(&limits);
    limits.max_header_bytes = cfg->max_header_bytes;
    limits.max_connections = (size_t)cfg->max_connections;
    limits.max_connections_per_ip = (size_t)cfg->max_connections_per_ip;
    limits.header_timeout_ms = cfg->header_timeout_ms;
    limits.idle_timeout_ms = cfg->idle_timeout_ms;
    limits.body_timeout_ms = cfg->body_timeout_ms;
    /* Enforced on the bytes as they arrive, chunked bodies included; the
     * upload route also refuses a declared Content-Length over it at once. */
    limits.max_body_bytes = cfg->max_request_bytes > 0 ? (uint64_t)cfg->max_request_bytes : 0;
    if ((err = sl_http_server_new(app->base, cfg->listen, &limits, dispatch_cb, app,
                                  &app->http)) != 0) {
        sl_log(SL_LOG_ERROR, "listen_failed", "{s:s, s:s}", "listen", cfg->listen, "error",
               sl_strerror(err));
        return err;
    }
    sl_http_server_on_finish(app->http, finish_cb, app);
    return 0;
}

void sl_app_close_http(sl_app_t *app)
{
    if (app->http) /* unless a stop signal freed it already (stop_cb) */
        sl_http_server_free(app->http);
    app->http = NULL;
    if (app->router)
        sl_http_router_free(app->router);
    app->router = NULL;
}

/* SIGTERM/SIGINT stop (stop_cb); SIGHUP reloads the flows, except in an HTTP process. */
static void open_signals(sl_app_t *app)
{
    g_sigterm = evsignal_new(app->base, SIGTERM, stop_cb, app);
    g_sigint = evsignal_new(app->base, SIGINT, stop_cb, app);
    event_add(g_sigterm, NULL);
    event_add(g_sigint, NULL);
    if (app->role != SL_ROLE_HTTP) { /* an HTTP process ignores SIGHUP: reload is the engine's */
        g_sighup = evsignal_new(app->base, SIGHUP, sighup_cb, app);
        event_add(g_sighup, NULL);
    }
}

/* The signal events, and the drain timer a stop signal started. */
static void close_signals(void)
{
    if (g_sigterm)
        event_free(g_sigterm);
    if (g_sigint)
        event_free(g_sigint);
    if (g_drain)
        event_free(g_drain);
    if (g_announce)
        event_free(g_announce);
    if (g_sighup)
        event_free(g_sighup);
    g_sigterm = g_sigint = g_drain = g_announce = g_sighup = NULL;
}

/*
 * Runs one process of the given role until it is stopped (SIGTERM/SIGINT).
 * What every role needs comes first (worker pool, storage, Postgres, Redis,
 * limiter, pubsub, pipelines: sl_app_open_backends); then the engine's pieces
 * unless the role is HTTP (sl_app_open_flows), the migrations, the listener
 * unless it is the engine (sl_app_open_http), the signals. `link` is
 * borrowed (NULL inline).
 */
int sl_app_serve(sl_config_t *cfg, int role, sl_elink_t *link)
{
    sl_app_t *app = &g_app;
    sl_looplag_t *lag = NULL;
    int err;
    char pid[32];
    char rnd[9];
    unsigned char rb[4];
    sl_random_bytes(rb, sizeof rb);
    sl_hex(rb, sizeof rb, rnd);
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    char hostname[64] = "host";
    gethostname(hostname, sizeof hostname - 1);
    snprintf(g_instance, sizeof g_instance, "%s-%s-%s", hostname, pid, rnd);

    memset(app, 0, sizeof *app);
    app->cfg = cfg;
    app->role = role;
    app->link = role == SL_ROLE_INLINE ? NULL : link;
    app->instance_id = g_instance;
    app->base = event_base_new();
    if (!app->base)
        return SL_ENOMEM;
    register_metrics(app);
    /* no probe (out of memory) only means no lag metrics */
    (void)sl_looplag_start(app->base, SL_LOOPLAG_PERIOD_MS, &lag);
    sl_fault_init(); /* SL_FAULTS builds: logs the seed; otherwise nothing */

    if ((err = sl_app_open_backends(app)) != 0)
        goto out;
    if (role != SL_ROLE_HTTP && (err = sl_app_open_flows(app)) != 0)
        goto out;
    if ((err = sl_api_pipelines_open(app)) != 0) /* issue 14 */
        goto out;
    if ((err = start_migrations(app)) != 0)
        goto out;
    if (role != SL_ROLE_ENGINE && (err = sl_app_open_http(app)) != 0)
        goto out;
    open_signals(app);

    if (app->http)
        sl_log(SL_LOG_INFO, "listening", "{s:s, s:i, s:s, s:s}", "listen", cfg->listen, "port",
               sl_http_server_port(app->http), "instance", g_instance, "version", SLUICE_VERSION);
    else
        sl_log(SL_LOG_INFO, "engine_running", "{s:s, s:s}", "instance", g_instance, "version",
               SLUICE_VERSION);
    event_base_dispatch(app->base);
    err = 0;

out:
    /*
     * The order of the callbacks that run while closing is the one of the
     * callers: the listener, the engine (scheduler, VM, curl), the backends.
     * The router and the signal events are only memory.
     */
    sl_app_close_http(app);
    close_signals();
    sl_app_close_flows(app);
    sl_app_close_backends(app);
    sl_metrics_reset();
    sl_looplag_free(lag); /* after the reset: its gauge reads it until then */
    event_base_free(app->base);
    return err;
}

/* Forks `n` serving children; returns in each child (1) or after they all exit (0). */
static int fork_workers(int n, int *status)
{
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0)
            return 1;
        if (p < 0) {
            perror("fork");
            break;
        }
    }
    signal(SIGTERM, SIG_IGN); /* the process group gets it; children shut down on their own */
    signal(SIGINT, SIG_IGN);
    int st, worst = 0;
    while (wait(&st) > 0)
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            worst = 1;
    *status = worst;
    return 0;
}

/*
 * engine.process: separate. The supervisor returns here in each child it
 * forks (engine or HTTP), which serves its role; in itself once all are gone.
 */
static int run_separate(sl_config_t *cfg)
{
    sl_elink_t *link = NULL;
    int role, status = 0, rc;
    if (sl_elink_new(cfg->workers, &link) != 0) {
        fprintf(stderr, "sluice: cannot create the engine link\n");
        return 1;
    }
    sl_sup_opts_t so = {.nhttp = cfg->workers, .link = link};
    if (sl_supervise(&so, &role, &status))
        rc = sl_app_serve(cfg, role, link) ? 1 : 0;
    else
        rc = status;
    sl_elink_free(link);
    return rc;
}


int sl_app_run(sl_config_t *cfg)
{
    int rc;
    if (strcmp(cfg->engine_process, "separate") == 0) {
        rc = run_separate(cfg);
    } else {
        sl_log_set_role("inline");
        int status = 0;
        if (cfg->workers > 1 && !fork_workers(cfg->workers, &status))
            rc = status;
        else
            rc = sl_app_serve(cfg, SL_ROLE_INLINE, NULL);
    }
    return rc ? 1 : 0;
}
