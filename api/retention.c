/*
 * retention.c — the routes that remove data in bulk (API.md "Lifecycle and
 * access"; docs/lifecycle.md "Retention"):
 *
 *   DELETE /v1/datasets/{id}   -> 204; the dataset and everything under it is
 *                                 gone at once for every read, and purged in
 *                                 batches in the background (actors/retention.h)
 *   POST /v1/admin/cleanup     (admin key) {"older_than_days", "dry_run"?,
 *                                 "tenant_id"?} -> 200 {"files", "bytes", ...}
 *
 * Thin, like the other route files: validate, one SQL function call, answer.
 * The work itself is the retention module's (app->retention).
 */
#include "api/api.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLEANUP_MAX_DAYS 36500.0 /* a century: anything above is a mistake */

typedef struct ret_req_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char tenant_id[37]; /* DELETE: the caller; cleanup: the filter ("" = every tenant) */
    char id[37];
    int dry_run;
    char *body; /* owned: the answer, while the cache invalidation is published */
    size_t body_len;
} ret_req_t;

static ret_req_t *ret_req_new(sl_app_t *app, sl_http_req_t *req)
{
    ret_req_t *rr = calloc(1, sizeof *rr);
    if (!rr) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return NULL;
    }
    rr->app = app;
    rr->req = req;
    return rr;
}

/* ---- DELETE /v1/datasets/{id} ---- */

static void ds_published_cb(void *arg)
{
    ret_req_t *rr = arg;
    sl_retention_kick(rr->app->retention); /* the purge starts now, in this process */
    sl_http_respond(rr->req, 204, NULL, NULL, 0);
    free(rr);
}

static void ds_deleted_cb(const sl_pg_result_t *r, void *arg)
{
    ret_req_t *rr = arg;
    if (r->err) {
        sl_api_db_error(rr->req, r);
        free(rr);
        return;
    }
    if (PQntuples(r->res[0]) < 1) {
        sl_http_respond_error(rr->req, 404, "not_found", "no such dataset", -1);
        free(rr);
        return;
    }
    /* Its runs in flight stop now; queued ones are never claimed (db/functions/claim.sql). */
    PGresult *running = r->res[1];
    for (int i = 0; i < PQntuples(running); i++)
        sl_api_engine_cancel_file(rr->app, PQgetvalue(running, i, 0));
    sl_log(SL_LOG_INFO, "dataset_deleted", "{s:s, s:s}", "tenant_id", rr->tenant_id, "dataset_id",
           rr->id);
    /* Every instance forgets every cached file document before we answer (api/cache.h). */
    if (sl_cache_publish_file(rr->app->cache, "*", ds_published_cb, rr) != 0)
        ds_published_cb(rr);
}

static void ds_delete_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37];
    if (sl_api_route_uuid(app, req, id) != 0) {
        sl_http_respond_error(req, 404, "not_found", "no such dataset", -1);
        return;
    }
    ret_req_t *rr = ret_req_new(app, req);
    if (!rr)
        return;
    snprintf(rr->tenant_id, sizeof rr->tenant_id, "%s", tenant_id);
    snprintf(rr->id, sizeof rr->id, "%s", id);
    const char *p[] = {rr->tenant_id, rr->id};
    sl_pg_batch_t *b = sl_pg_batch_new(app->pg);
    if (!b || sl_pg_batch_add(b, "SELECT id FROM sluice_dataset_delete($1, $2)", 2, p) < 0 ||
        sl_pg_batch_add(b,
                        "SELECT DISTINCT r.file_id FROM runs r WHERE r.tenant_id = $1"
                        " AND r.dataset_id = $2 AND r.state = 'running'",
                        2, p) < 0) {
        sl_pg_batch_free(b);
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        free(rr);
        return;
    }
    if (sl_pg_batch_exec(b, ds_deleted_cb, rr) != 0) {
        sl_http_respond_error(req, 503, "database_unavailable", "the database is unavailable", 2);
        free(rr);
    }
}

static void route_dataset_delete(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, ds_delete_auth_cb, NULL);
}

/* ---- POST /v1/admin/cleanup ---- */

static void cleanup_published_cb(void *arg)
{
    ret_req_t *rr = arg;
    sl_api_json_text(rr->req, 200, rr->body, rr->body_len);
    free(rr->body);
    free(rr);
}

/*
 * The rows are gone (or, dry run, counted): answer. The blobs of a real run
 * are being deleted by this process's drainer meanwhile (queued in
 * purge_blobs, so nothing is lost if it dies first).
 */
static void cleanup_done_cb(int err, const sl_retention_counts_t *c, void *arg)
{
    ret_req_t *rr = arg;
    if (err) {
        sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
        sl_api_db_error(rr->req, &r);
        free(rr);
        return;
    }
    json_t *v =
        json_pack("{s:I, s:I, s:b, s:I, s:f, s:f}", "files", (json_int_t)c->files, "bytes",
                  (json_int_t)c->bytes, "dry_run", rr->dry_run, "batches", (json_int_t)c->batches,
                  "longest_batch_ms", c->longest_ms, "duration_ms", c->duration_ms);
    rr->body = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!rr->body) {
        sl_http_respond_error(rr->req, 500, "internal_error", "out of memory", -1);
        free(rr);
        return;
    }
    rr->body_len = strlen(rr->body);
    if (!rr->dry_run) {
        sl_log(SL_LOG_INFO, "cleanup_done", "{s:I, s:I, s:s}", "files", (json_int_t)c->files,
               "bytes", (json_int_t)c->bytes, "tenant_id", rr->tenant_id[0] ? rr->tenant_id : "*");
        if (sl_cache_publish_file(rr->app->cache, "*", cleanup_published_cb, rr) == 0)
            return;
    }
    cleanup_published_cb(rr);
}

/* The cutoff, computed by Postgres (its clock is the one created_at used). */
static void cleanup_cutoff_cb(const sl_pg_result_t *r, void *arg)
{
    ret_req_t *rr = arg;
    if (r->err) {
        sl_api_db_error(rr->req, r);
        free(rr);
        return;
    }
    PGresult *res = r->res[0];
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, PQfnumber(res, "tenant_ok")), "t") != 0) {
        sl_http_respond_error(rr->req, 400, "unknown_tenant", "tenant_id names no tenant", -1);
        free(rr);
        return;
    }
    const char *cutoff = PQgetvalue(res, 0, PQfnumber(res, "cutoff"));
    int err =
        sl_retention_cleanup(rr->app->retention, cutoff, rr->tenant_id[0] ? rr->tenant_id : NULL,
                             rr->dry_run, cleanup_done_cb, rr);
    if (err) {
        sl_http_respond_error(rr->req, 503, "unavailable", sl_strerror(err), 2);
        free(rr);
    }
}

static void bad_body(sl_http_req_t *req, const char *msg)
{
    sl_http_respond_error(req, 400, "invalid_request", msg, -1);
}

static void cleanup_body_cb(sl_app_t *app, sl_http_req_t *req, json_t *body, void *arg)
{
    (void)arg;
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "older_than_days") != 0 && strcmp(key, "dry_run") != 0 &&
            strcmp(key, "tenant_id") != 0) {
            bad_body(req, "unknown field: the body takes older_than_days, dry_run and tenant_id");
            return;
        }
    }
    json_t *days = json_object_get(body, "older_than_days");
    json_t *dry = json_object_get(body, "dry_run");
    json_t *tenant = json_object_get(body, "tenant_id");
    if (!json_is_number(days)) {
        bad_body(req, "older_than_days is required and must be a number");
        return;
    }
    double d = json_number_value(days);
    if (!isfinite(d) || d < 0 || d > CLEANUP_MAX_DAYS) {
        bad_body(req, "older_than_days must be between 0 and 36500");
        return;
    }
    if (dry && !json_is_boolean(dry)) {
        bad_body(req, "dry_run must be true or false");
        return;
    }
    if (tenant && !json_is_null(tenant) &&
        (!json_is_string(tenant) || !sl_is_uuid(json_string_value(tenant)))) {
        bad_body(req, "tenant_id must be a tenant's id");
        return;
    }
    ret_req_t *rr = ret_req_new(app, req);
    if (!rr)
        return;
    rr->dry_run = dry && json_is_true(dry);
    if (json_is_string(tenant))
        snprintf(rr->tenant_id, sizeof rr->tenant_id, "%s", json_string_value(tenant));
    char secs[64];
    snprintf(secs, sizeof secs, "%.6f", d * 86400.0);
    const char *p[] = {secs, rr->tenant_id[0] ? rr->tenant_id : NULL};
    if (sl_pg_query(app->pg,
                    "SELECT (now() - make_interval(secs => $1::float8))::text AS cutoff,"
                    " ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM tenants t WHERE t.id = $2::uuid))"
                    " AS tenant_ok",
                    2, p, cleanup_cutoff_cb, rr) != 0) {
        sl_http_respond_error(req, 503, "database_unavailable", "the database is unavailable", 2);
        free(rr);
    }
}

static void route_cleanup(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    (void)params;
    if (!sl_api_is_admin(app, req)) {
        sl_http_respond_error(req, 401, "unauthorized", "missing or invalid admin key", -1);
        return;
    }
    sl_api_read_json(app, req, cleanup_body_cb, NULL);
}

void sl_api_register_retention(sl_app_t *app)
{
    sl_http_router_add(app->router, "DELETE", "/v1/datasets/{id}", "datasets_delete",
                       route_dataset_delete, app);
    sl_http_router_add(app->router, "POST", "/v1/admin/cleanup", "admin_cleanup", route_cleanup,
                       app);
}
