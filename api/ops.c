/*
 * ops.c — operational endpoints and the static web UI (the pipelines are in
 * api/pipelines.c).
 *
 *   GET /healthz       -> 200 {"status":"ok"} while the process lives
 *   GET /readyz        -> {"postgres":"ok"|"down","redis":"ok"|"down",
 *                          "engine":"ok"|"down"|"stalled"};
 *                         200, or 503 with Retry-After when Postgres is down
 *                         (or the schema is not migrated yet: "postgres":"down").
 *                         503 {"status":"draining"} once SIGTERM came (issue 12).
 *                         The engine's state is a field only: an HTTP process
 *                         takes uploads while its engine restarts (runs wait
 *                         in Postgres, and other instances claim them).
 *   GET /metrics       -> Prometheus text format 0.0.4; in an HTTP process
 *                         this process's families merged with the engine
 *                         process's snapshot (docs/internals/engine.md)
 *   GET /, /index.html, /ui/<file>, /ui/<dir>/<file> -> files under cfg->web_root
 *
 * Static files are small and rarely fetched, so they are simply read whole —
 * on the worker pool, never on the loop. Paths are checked against a short
 * whitelist of characters (no "..", no backslash, no NUL, no percent
 * escapes, no hidden files) before they touch the filesystem.
 */
#include "api/api.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/redis.h"

#define SL_STATIC_MAX (1024 * 1024) /* bytes of one static file */
#define SL_STATIC_PATH_MAX 1024

/* ---- GET /healthz ---- */

static void healthz(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    (void)arg;
    static const char body[] = "{\"status\":\"ok\"}";
    sl_api_json_text(req, 200, body, sizeof body - 1);
}

/* ---- GET /readyz ---- */

typedef struct ready_ctx_s {
    sl_app_t *app;
    sl_http_req_t *req;
} ready_ctx_t;

static void ready_answer(sl_app_t *app, sl_http_req_t *req, int pg_ok)
{
    /* With the pubsub: both of its connections (publisher up, subscriber subscribed). */
    int redis_ok = app->pubsub ? sl_pubsub_redis_up(app->pubsub)
                               : app->redis_up || (app->redis != NULL && sl_redis_up(app->redis));
    json_t *v = json_pack("{s:s, s:s, s:s}", "postgres", pg_ok ? "ok" : "down", "redis",
                          redis_ok ? "ok" : "down", "engine", sl_api_engine_state(app));
    if (!pg_ok)
        sl_http_resp_header(req, "Retry-After", "2");
    sl_api_json(req, pg_ok ? 200 : 503, v);
}

static void ready_probe_cb(const sl_pg_result_t *r, void *arg)
{
    ready_ctx_t *ctx = arg;
    ready_answer(ctx->app, ctx->req, r->err == 0);
    free(ctx);
}

static void readyz(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    ready_ctx_t *ctx;
    (void)params;

    /* Stopping (SIGTERM, issue 12): a load balancer must stop sending here. */
    if (app->stopping || sl_http_server_draining(app->http)) {
        json_t *v = json_pack("{s:s, s:b}", "status", "draining", "draining", 1);
        sl_http_resp_header(req, "Retry-After", "1");
        sl_api_json(req, 503, v);
        return;
    }
    /* Not ready until the schema is migrated: /v1 answers 503 before that. */
    if (app->pg == NULL || !app->schema_ready || !sl_pg_ready(app->pg)) {
        ready_answer(app, req, 0);
        return;
    }
    /* A live connection is not proof: run a trivial statement through the pool. */
    if ((ctx = calloc(1, sizeof *ctx)) == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    ctx->app = app;
    ctx->req = req;
    if (sl_pg_query(app->pg, "SELECT 1", 0, NULL, ready_probe_cb, ctx) != 0) {
        free(ctx);
        ready_answer(app, req, 0);
    }
}

/* ---- GET /metrics ---- */

static void metrics_answer(sl_app_t *app, sl_http_req_t *req)
{
    size_t len = 0;
    char *text = sl_metrics_render(&len);
    char *engine = NULL;
    size_t elen = 0;
    if (text != NULL && app->link != NULL &&
        sl_elink_read(app->link, NULL, &engine, &elen) == 0) {
        size_t mlen = 0;
        char *merged = sl_elink_merge_metrics(text, len, engine, elen, &mlen);
        free(text);
        text = merged;
        len = mlen;
    }
    free(engine);
    if (text == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    sl_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/*
 * In an HTTP process: ask the engine for a fresh snapshot and wait for it a
 * little (METRICS_WAIT_MS at most, checking every METRICS_TICK_MS), so a
 * counter read right after a run ended includes it. A stuck or absent engine
 * only delays the answer by that much: its last snapshot is used.
 */
#define METRICS_TICK_MS 5
#define METRICS_WAIT_MS 200

typedef struct metrics_wait_s {
    sl_app_t *app;
    sl_http_req_t *req;
    struct event *ev;
    uint64_t gen;
    int ticks;
} metrics_wait_t;

static void metrics_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    metrics_wait_t *w = arg;
    (void)fd;
    (void)what;
    if (sl_elink_generation(w->app->link) == w->gen &&
        ++w->ticks < METRICS_WAIT_MS / METRICS_TICK_MS) {
        struct timeval tv = {0, METRICS_TICK_MS * 1000};
        evtimer_add(w->ev, &tv);
        return;
    }
    metrics_answer(w->app, w->req);
    w->app->metrics_waits--;
    event_free(w->ev);
    free(w);
}

static void metrics(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    metrics_wait_t *w;
    int pid = 0;
    (void)params;
    if (app->link != NULL)
        sl_elink_engine_state(app->link, &pid, NULL, NULL);
    if (pid == 0 || (w = calloc(1, sizeof *w)) == NULL) {
        metrics_answer(app, req);
        return;
    }
    w->app = app;
    w->req = req;
    w->gen = sl_elink_generation(app->link);
    struct timeval tv = {0, METRICS_TICK_MS * 1000};
    if (sl_elink_send(app->link, "metrics") != 0 ||
        (w->ev = evtimer_new(app->base, metrics_tick_cb, w)) == NULL ||
        evtimer_add(w->ev, &tv) != 0) {
        if (w->ev)
            event_free(w->ev);
        free(w);
        metrics_answer(app, req);
        return;
    }
    app->metrics_waits++; /* the drain at shutdown waits for it */
}

/* ---- static files ---- */

typedef struct static_job_s {
    sl_http_req_t *req;
    char path[SL_STATIC_PATH_MAX];
    const char *content_type;
    char *data;
    size_t len;
    int err; /* 0, SL_ENOTFOUND, SL_ETOOBIG, SL_EIO, SL_ENOMEM */
} static_job_t;

static const struct {
    const char *ext;
    const char *type;
} content_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".json", "application/json"},
    {".ico", "image/x-icon"},
};

static const char *content_type_for(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (dot == NULL || strchr(dot, '/') != NULL)
        return NULL;
    for (size_t i = 0; i < sizeof content_types / sizeof content_types[0]; i++)
        if (strcasecmp(dot, content_types[i].ext) == 0)
            return content_types[i].type;
    return NULL;
}

/* 1 if rel (a path relative to web_root) is safe to open. */
static int static_path_ok(const char *rel)
{
    if (rel[0] == '\0' || rel[0] == '/' || strstr(rel, "..") != NULL)
        return 0;
    for (const char *s = rel; *s != '\0'; s++) {
        char c = *s;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == '/';
        if (!ok) /* rejects '\\', '%', NUL escapes and everything unusual */
            return 0;
        if (c == '.' && (s == rel || s[-1] == '/')) /* hidden files */
            return 0;
        if (c == '/' && s[1] == '/')
            return 0;
    }
    return 1;
}

/* Worker thread: reads the whole file. Touches only the job. */
static void static_read_work(void *arg)
{
    static_job_t *job = arg;
    struct stat st;
    int fd = open(job->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        job->err = (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) ? SL_ENOTFOUND : SL_EIO;
        return;
    }
    if (fstat(fd, &st) != 0) {
        job->err = SL_EIO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        job->err = SL_ENOTFOUND;
        goto out;
    }
    if (st.st_size > SL_STATIC_MAX) {
        job->err = SL_ETOOBIG;
        goto out;
    }
    job->data = malloc((size_t)st.st_size + 1);
    if (job->data == NULL) {
        job->err = SL_ENOMEM;
        goto out;
    }
    while (job->len < (size_t)st.st_size) {
        ssize_t n = read(fd, job->data + job->len, (size_t)st.st_size - job->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            job->err = SL_EIO;
            break;
        }
        if (n == 0)
            break; /* shrank meanwhile: serve what was there */
        job->len += (size_t)n;
    }
out:
    close(fd);
}

/* Loop thread: answers. */
static void static_read_done(void *arg)
{
    static_job_t *job = arg;
    sl_http_req_t *req = job->req;
    if (job->err == SL_ENOTFOUND) {
        sl_http_respond_error(req, 404, "not_found", "no such file", -1);
    } else if (job->err != 0) {
        sl_http_respond_error(req, 500, "internal_error", "could not read the file", -1);
    } else {
        sl_http_resp_header(req, "Cache-Control", "no-cache");
        sl_http_resp_header(req, "X-Content-Type-Options", "nosniff");
        sl_http_respond(req, 200, job->content_type, job->data, job->len);
    }
    free(job->data);
    free(job);
}

static void serve_static(sl_app_t *app, sl_http_req_t *req, const char *rel)
{
    const char *root = app->cfg != NULL && app->cfg->web_root != NULL && app->cfg->web_root[0]
                           ? app->cfg->web_root
                           : "web";
    const char *type = content_type_for(rel);
    static_job_t *job;

    if (!static_path_ok(rel) || type == NULL) {
        sl_http_respond_error(req, 404, "not_found", "no such file", -1);
        return;
    }
    if ((job = calloc(1, sizeof *job)) == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    job->req = req;
    job->content_type = type;
    int n = snprintf(job->path, sizeof job->path, "%s/%s", root, rel);
    if (n < 0 || (size_t)n >= sizeof job->path) {
        free(job);
        sl_http_respond_error(req, 404, "not_found", "no such file", -1);
        return;
    }
    if (sl_workq_submit(app->wq, NULL, static_read_work, static_read_done, job) != 0) {
        free(job);
        sl_http_respond_error(req, 503, "unavailable", "server busy", 1);
    }
}

static void ui_index(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    serve_static(arg, req, "index.html");
}

static void ui_file(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    char rel[SL_STATIC_PATH_MAX];
    size_t off = 0;
    /* Rebuild "<dir>/<file>" from the route's segments (one or two). */
    for (int i = 0; i < params->n; i++) {
        int n = snprintf(rel + off, sizeof rel - off, "%s%s", i ? "/" : "", params->values[i]);
        if (n < 0 || (size_t)n >= sizeof rel - off) {
            sl_http_respond_error(req, 404, "not_found", "no such file", -1);
            return;
        }
        off += (size_t)n;
    }
    serve_static(arg, req, rel);
}

void sl_api_register_ops(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/healthz", "healthz", healthz, app);
    sl_http_router_add(app->router, "GET", "/readyz", "readyz", readyz, app);
    sl_http_router_add(app->router, "GET", "/metrics", "metrics", metrics, app);
    sl_http_router_add(app->router, "GET", "/", "ui", ui_index, app);
    sl_http_router_add(app->router, "GET", "/index.html", "ui", ui_index, app);
    sl_http_router_add(app->router, "GET", "/ui/{file}", "ui", ui_file, app);
    sl_http_router_add(app->router, "GET", "/ui/{dir}/{file}", "ui", ui_file, app);
}
