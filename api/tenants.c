/*
 * tenants.c — admin routes: create a tenant with its first API key, and issue
 * more keys for a tenant.
 *
 *   POST /v1/admin/tenants              {"name"} -> 201 {"id","name","api_key","created_at"}
 *   POST /v1/admin/tenants/{id}/keys    -> 201 {"tenant_id","api_key","created_at"}
 *
 * Both need the admin key (config admin_key / SLUICE_ADMIN_KEY). An API key is
 * "sk_" + 48 lowercase hex characters (24 random bytes). It is shown once, in
 * the 201 answer; only its SHA-256 is stored.
 */
#include "api/api.h"
#include "api/validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/err.h"

#define SL_API_KEY_RANDOM 24 /* bytes -> 48 hex characters */
#define SL_API_KEY_LEN (3 + 2 * SL_API_KEY_RANDOM)

typedef struct tenant_ctx_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char id[37];
    char api_key[SL_API_KEY_LEN + 1];
} tenant_ctx_t;

/* A new zeroed context (owned by the caller; tenant_ctx_free), or NULL. */
static tenant_ctx_t *tenant_ctx_new(sl_app_t *app, sl_http_req_t *req)
{
    tenant_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (ctx != NULL) {
        ctx->app = app;
        ctx->req = req;
    }
    return ctx;
}

static void tenant_ctx_free(tenant_ctx_t *ctx)
{
    explicit_bzero(ctx->api_key, sizeof ctx->api_key);
    free(ctx);
}

/* ---- POST /v1/admin/tenants ---- */

static void tenant_created_cb(const sl_pg_result_t *r, void *arg)
{
    tenant_ctx_t *ctx = arg;
    if (r->err != 0) {
        sl_api_db_error(ctx->req, r);
        goto out;
    }
    PGresult *t = r->res[0];
    json_t *v = json_pack("{s:s, s:s, s:s, s:s}", "id", ctx->id, "name", PQgetvalue(t, 0, 0),
                          "api_key", ctx->api_key, "created_at", PQgetvalue(t, 0, 1));
    sl_api_json(ctx->req, 201, v);
out:
    tenant_ctx_free(ctx);
}

static void tenant_body_cb(sl_app_t *app, sl_http_req_t *req, json_t *body, void *arg)
{
    (void)arg;
    const char *name = NULL;
    sl_api_verr_t e;
    char key_id[37], hash[65];
    tenant_ctx_t *ctx = NULL;
    sl_pg_batch_t *b = NULL;
    int err;

    if (sl_api_tenant_body(body, &name, &e) != 0) {
        sl_http_respond_error(req, e.status, e.code, e.msg, -1);
        return;
    }
    if ((ctx = tenant_ctx_new(app, req)) == NULL) {
        err = SL_ENOMEM;
        goto fail;
    }
    if ((err = sl_uuid_v4(ctx->id)) != 0 || (err = sl_uuid_v4(key_id)) != 0 ||
        (err = sl_api_new_secret("sk_", SL_API_KEY_RANDOM, ctx->api_key, hash)) != 0)
        goto fail;
    if ((b = sl_pg_batch_new(app->pg)) == NULL) {
        err = SL_ENOMEM;
        goto fail;
    }
    const char *pt[2] = {ctx->id, name};
    char prefix[12]; /* issue 13: the key's first 11 characters, shown by GET /v1/keys */
    snprintf(prefix, sizeof prefix, "%.11s", ctx->api_key);
    const char *pk[4] = {key_id, ctx->id, hash, prefix};
    if ((err = sl_pg_batch_add(b,
                               "INSERT INTO tenants (id, name) VALUES ($1, $2) "
                               "RETURNING name, sluice_ts(created_at)",
                               2, pt)) < 0 ||
        (err = sl_pg_batch_add(
             b, "INSERT INTO api_keys (id, tenant_id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
             4, pk)) < 0)
        goto fail;
    err = sl_pg_batch_exec(b, tenant_created_cb, ctx);
    b = NULL; /* taken, freed on error too */
    if (err != 0)
        goto fail;
    return;
fail:
    if (b != NULL)
        sl_pg_batch_free(b);
    if (ctx != NULL)
        tenant_ctx_free(ctx);
    sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
    sl_api_db_error(req, &r);
}

static void tenants_create(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    (void)params;
    if (!sl_api_is_admin(app, req)) {
        sl_http_respond_error(req, 401, "unauthorized", "missing or invalid admin key", -1);
        return;
    }
    sl_api_read_json(app, req, tenant_body_cb, NULL);
}

/* ---- POST /v1/admin/tenants/{id}/keys ---- */

static void key_created_cb(const sl_pg_result_t *r, void *arg)
{
    tenant_ctx_t *ctx = arg;
    if (r->err != 0) {
        sl_api_db_error(ctx->req, r);
        goto out;
    }
    if (PQntuples(r->res[0]) != 1) {
        sl_http_respond_error(ctx->req, 404, "not_found", "no such tenant", -1);
        goto out;
    }
    json_t *v = json_pack("{s:s, s:s, s:s}", "tenant_id", ctx->id, "api_key", ctx->api_key,
                          "created_at", PQgetvalue(r->res[0], 0, 0));
    sl_api_json(ctx->req, 201, v);
out:
    tenant_ctx_free(ctx);
}

static void tenant_keys_create(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    const char *tid = params->n > 0 ? params->values[0] : "";
    char key_id[37], hash[65];
    tenant_ctx_t *ctx = NULL;
    int err;

    if (!sl_api_is_admin(app, req)) {
        sl_http_respond_error(req, 401, "unauthorized", "missing or invalid admin key", -1);
        return;
    }
    if (!sl_is_uuid(tid)) {
        sl_http_respond_error(req, 404, "not_found", "no such tenant", -1);
        return;
    }
    if ((ctx = tenant_ctx_new(app, req)) == NULL) {
        err = SL_ENOMEM;
        goto fail;
    }
    memcpy(ctx->id, tid, sizeof ctx->id); /* a UUID: 36 chars + NUL */
    if ((err = sl_uuid_v4(key_id)) != 0 || (err = sl_api_new_secret("sk_", SL_API_KEY_RANDOM, ctx->api_key, hash)) != 0)
        goto fail;
    char prefix[12]; /* issue 13: shown by GET /v1/keys */
    snprintf(prefix, sizeof prefix, "%.11s", ctx->api_key);
    const char *p[4] = {key_id, ctx->id, hash, prefix};
    err = sl_pg_query(app->pg,
                      "INSERT INTO api_keys (id, tenant_id, key_hash, prefix) "
                      "SELECT $1::uuid, t.id, $3::text, $4::text FROM tenants t WHERE t.id = $2 "
                      "RETURNING sluice_ts(created_at)",
                      4, p, key_created_cb, ctx);
    if (err != 0)
        goto fail;
    return;
fail:
    if (ctx != NULL)
        tenant_ctx_free(ctx);
    sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
    sl_api_db_error(req, &r);
}

void sl_api_register_tenants(sl_app_t *app)
{
    sl_http_router_add(app->router, "POST", "/v1/admin/tenants", "tenants_create", tenants_create,
                       app);
    sl_http_router_add(app->router, "POST", "/v1/admin/tenants/{id}/keys", "tenant_keys_create",
                       tenant_keys_create, app);
}
