/*
 * datasets.c — a tenant's datasets.
 *
 *   POST /v1/datasets        {"name", "record_schema"?, "auto_process"?, "pipelines"?}
 *                            -> 201 dataset
 *   GET  /v1/datasets        -> {"datasets": [dataset, ...]}, newest first
 *   GET  /v1/datasets/{id}   -> dataset, or 404 (also another tenant's)
 *
 * The dataset document is built by sluice_dataset_json() in Postgres. The
 * record schema is stored as json (not jsonb) text so its property order — the
 * CSV column order of records.c — is the order the client wrote. A schema
 * OpenAI's structured outputs cannot express (core/jschema.h) is refused here,
 * so no dataset holds one the ai_record flow would be answered 400 for.
 */
#include "api/api.h"
#include "api/pipesel.h"
#include "api/validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/err.h"
#include "core/jschema.h"

/* Used when a dataset is created without a record_schema. */
static const char default_schema[] = "{\"type\":\"object\",\"properties\":{"
                                     "\"title\":{\"type\":\"string\"},"
                                     "\"reference\":{\"type\":\"string\"},"
                                     "\"date\":{\"type\":\"string\"},"
                                     "\"total\":{\"type\":\"number\"},"
                                     "\"currency\":{\"type\":\"string\"},"
                                     "\"email\":{\"type\":\"string\"}}}";

typedef struct ds_ctx_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char tenant_id[64];
    char id[37];
} ds_ctx_t;

static ds_ctx_t *ds_ctx_new(sl_app_t *app, sl_http_req_t *req, const char *id)
{
    ds_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return NULL;
    }
    ctx->app = app;
    ctx->req = req;
    if (id != NULL)
        memcpy(ctx->id, id, sizeof ctx->id); /* a validated UUID: 36 chars + NUL */
    return ctx;
}

/* Answers a query whose single row, single column is a JSON document; 404 without a row. */
static void json_row_cb(const sl_pg_result_t *r, void *arg)
{
    ds_ctx_t *ctx = arg;
    if (r->err != 0) {
        sl_api_db_error(ctx->req, r);
    } else {
        PGresult *res = r->res[r->n - 1];
        if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
            sl_http_respond_error(ctx->req, 404, "not_found", "no such dataset", -1);
        else
            sl_api_json_text(ctx->req, 200, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    }
    free(ctx);
}

static void created_cb(const sl_pg_result_t *r, void *arg)
{
    ds_ctx_t *ctx = arg;
    if (r->err != 0)
        sl_api_db_error(ctx->req, r);
    else
        sl_api_json_text(ctx->req, 201, PQgetvalue(r->res[0], 0, 0),
                         (size_t)PQgetlength(r->res[0], 0, 0));
    free(ctx);
}

static void run_query(ds_ctx_t *ctx, const char *sql, int n, const char *const *params, sl_pg_cb cb)
{
    int err = sl_pg_query(ctx->app->pg, sql, n, params, cb, ctx);
    if (err != 0) {
        sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
        sl_api_db_error(ctx->req, &r);
        free(ctx);
    }
}

/* ---- POST /v1/datasets ---- */

/*
 * "auto_process" and "pipelines" (migration 010, api/pipesel.h): the names
 * travel as a JSON array and become the text[] column; NULL is every pipeline.
 */
static void create_body_cb(sl_app_t *app, sl_http_req_t *req, json_t *body, void *arg)
{
    ds_ctx_t *ctx = arg;
    const char *name = NULL;
    char *schema_text = NULL, *pipelines_json = NULL;
    int auto_process = 1;
    sl_api_verr_t e;

    if (sl_api_dataset_body(body, &name, &schema_text, &e) != 0 ||
        sl_pipesel_dataset_body(app, body, &auto_process, &pipelines_json, &e) != 0) {
        sl_http_respond_error(req, e.status, e.code, e.msg, -1);
        goto fail;
    }
    if (sl_uuid_v4(ctx->id) != 0) {
        sl_http_respond_error(req, 500, "internal_error", "no randomness", -1);
        goto fail;
    }
    const char *p[6] = {ctx->id,
                        ctx->tenant_id,
                        name,
                        schema_text != NULL ? schema_text : default_schema,
                        auto_process ? "true" : "false",
                        pipelines_json};
    run_query(ctx,
              "INSERT INTO datasets (id, tenant_id, name, record_schema, auto_process, pipelines) "
              "VALUES ($1, $2, $3, $4::json, $5::boolean, CASE WHEN $6::json IS NOT NULL THEN "
              "ARRAY(SELECT x FROM json_array_elements_text($6::json) WITH ORDINALITY AS t(x, n) "
              "ORDER BY n) END) "
              "RETURNING sluice_dataset_json(datasets.*)",
              6, p, created_cb);
    free(schema_text);
    free(pipelines_json);
    return;
fail:
    free(schema_text);
    free(pipelines_json);
    free(ctx);
}

static void create_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    ds_ctx_t *ctx = ds_ctx_new(app, req, NULL);
    (void)arg;
    if (ctx == NULL)
        return;
    snprintf(ctx->tenant_id, sizeof ctx->tenant_id, "%s", tenant_id);
    sl_api_read_json_owned(app, req, create_body_cb, ctx, free);
}

static void datasets_create(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, create_auth_cb, NULL);
}

/* ---- GET /v1/datasets ---- */

static void list_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    ds_ctx_t *ctx = ds_ctx_new(app, req, NULL);
    (void)arg;
    if (ctx == NULL)
        return;
    const char *p[1] = {tenant_id};
    run_query(ctx,
              "SELECT json_build_object('datasets', coalesce(json_agg(sluice_dataset_json(d) "
              "ORDER BY d.created_at DESC, d.id DESC), '[]'::json)) "
              "FROM datasets d WHERE d.tenant_id = $1 AND d.deleted_at IS NULL", /* retention */
              1, p, json_row_cb);
}

static void datasets_list(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, list_auth_cb, NULL);
}

/* ---- GET /v1/datasets/{id} ---- */

static void get_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    sl_http_params_t params;
    ds_ctx_t *ctx;
    (void)arg;
    /* The route's {id} is recovered from the path: nothing is allocated before
     * authentication, which may answer without calling back. */
    if (sl_api_route_params(app, req, &params) != 0 || params.n < 1 ||
        !sl_is_uuid(params.values[0])) {
        sl_http_respond_error(req, 404, "not_found", "no such dataset", -1);
        return;
    }
    if ((ctx = ds_ctx_new(app, req, params.values[0])) == NULL)
        return;
    const char *p[2] = {ctx->id, tenant_id};
    run_query(ctx,
              "SELECT sluice_dataset_json(d) FROM datasets d WHERE d.id = $1 AND d.tenant_id = $2"
              " AND d.deleted_at IS NULL", /* retention: a deleted dataset is gone */
              2, p, json_row_cb);
}

static void datasets_get(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, get_auth_cb, NULL);
}

void sl_api_register_datasets(sl_app_t *app)
{
    sl_http_router_add(app->router, "POST", "/v1/datasets", "datasets_create", datasets_create,
                       app);
    sl_http_router_add(app->router, "GET", "/v1/datasets", "datasets_list", datasets_list, app);
    sl_http_router_add(app->router, "GET", "/v1/datasets/{id}", "datasets_get", datasets_get, app);
}
