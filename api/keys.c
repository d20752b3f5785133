/*
 * keys.c — a tenant manages its own API keys (scope admin-of-tenant).
 *
 *   GET    /v1/keys       -> {"keys": [{"id", "prefix", "name", "created_at",
 *                             "last_used_at", "revoked_at", "scopes"}]}
 *   POST   /v1/keys       {"scopes": [...], "name": "..."} (both optional)
 *                          -> 201 {"id", "api_key", "prefix", "created_at", "scopes", ...}
 *   DELETE /v1/keys/{id}  -> 204; 404 for another tenant's key
 *
 * A key is "sk_" + 48 hex characters, as the admin route makes them
 * (api/tenants.c); its first 11 characters are kept as the prefix a person
 * recognises it by, and only its sha256 is stored. Revocation: the SQL
 * function sluice_key_revoke marks the key and its token families revoked,
 * then this file publishes on sluice:auth the key's hash (its API-key cache
 * entries) and the key's token cache id (sl_auth_cache_id("key", id): every
 * access token made from it), and answers 204 once Redis has them, so the
 * key and its tokens are refused on every instance from then on.
 */
#include "api/api.h"
#include "api/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/err.h"

#define KEY_RANDOM 24 /* bytes -> 48 hex characters */
#define KEY_LEN (3 + 2 * KEY_RANDOM)
#define KEY_PREFIX_LEN 11 /* "sk_" + 8 hex */
#define KEY_NAME_MAX 100

typedef struct key_ctx_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char tenant[64];
    char id[37];
    char api_key[KEY_LEN + 1];
    char cache_id[65]; /* the second revocation to publish */
} key_ctx_t;

static key_ctx_t *key_ctx_new(sl_app_t *app, sl_http_req_t *req, const char *tenant_id)
{
    key_ctx_t *k = calloc(1, sizeof *k);
    if (!k) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return NULL;
    }
    k->app = app;
    k->req = req;
    snprintf(k->tenant, sizeof k->tenant, "%s", tenant_id);
    return k;
}

static void key_ctx_free(void *arg)
{
    key_ctx_t *k = arg;
    explicit_bzero(k->api_key, sizeof k->api_key);
    free(k);
}

static void respond_err(sl_http_req_t *req, int err)
{
    sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
    sl_api_db_error(req, &r);
}

/* ---- GET /v1/keys ---- */

static void list_done_cb(const sl_pg_result_t *r, void *arg)
{
    key_ctx_t *k = arg;
    if (r->err != 0)
        sl_api_db_error(k->req, r);
    else
        sl_api_json_text(k->req, 200, PQgetvalue(r->res[0], 0, 0),
                         (size_t)PQgetlength(r->res[0], 0, 0));
    key_ctx_free(k);
}

static void list_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    key_ctx_t *k = key_ctx_new(app, req, tenant_id);
    if (!k)
        return;
    const char *p[1] = {k->tenant};
    int err = sl_pg_query(app->pg, "SELECT sluice_keys_json($1)", 1, p, list_done_cb, k);
    if (err != 0) {
        key_ctx_free(k);
        respond_err(req, err);
    }
}

static void route_list(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, list_auth_cb, NULL);
}

/* ---- POST /v1/keys ---- */

static void create_done_cb(const sl_pg_result_t *r, void *arg)
{
    key_ctx_t *k = arg;
    json_t *v = NULL;
    if (r->err != 0) {
        sl_api_db_error(k->req, r);
        goto out;
    }
    v = json_loadb(PQgetvalue(r->res[0], 0, 0), (size_t)PQgetlength(r->res[0], 0, 0), 0, NULL);
    if (!v || json_object_set_new(v, "api_key", json_string(k->api_key)) != 0) {
        json_decref(v);
        respond_err(k->req, SL_ENOMEM);
        goto out;
    }
    sl_http_resp_header(k->req, "Cache-Control", "no-store"); /* the key is shown once */
    sl_api_json(k->req, 201, v);
out:
    key_ctx_free(k);
}

/*
 * Validates the body (NULL: none) into a Postgres array literal of scope
 * names (scopes; "" when absent: every scope) and name (NULL when absent).
 * 0, or answers 400 itself and returns -1.
 */
static int create_body(sl_http_req_t *req, json_t *body, char *scopes, size_t slen,
                       const char **name)
{
    const char *field;
    json_t *v;
    *name = NULL;
    scopes[0] = '\0';
    if (!body)
        return 0;
    json_object_foreach(body, field, v) {
        if (strcmp(field, "scopes") == 0) {
            unsigned seen = 0;
            size_t i, o = 0;
            json_t *s;
            if (json_is_null(v))
                continue;
            if (!json_is_array(v) || json_array_size(v) == 0)
                goto bad_scopes;
            json_array_foreach(v, i, s) {
                unsigned bit = sl_auth_scope_bit(json_string_value(s));
                if (!bit || (seen & bit))
                    goto bad_scopes;
                seen |= bit;
                int n = snprintf(scopes + o, slen - o, "%s%s", o ? "," : "{",
                                 json_string_value(s));
                if (n < 0 || (size_t)n >= slen - o)
                    goto bad_scopes;
                o += (size_t)n;
            }
            if (o + 2 > slen)
                goto bad_scopes;
            scopes[o++] = '}';
            scopes[o] = '\0';
        } else if (strcmp(field, "name") == 0) {
            if (json_is_null(v))
                continue;
            if (!json_is_string(v) || json_string_length(v) > KEY_NAME_MAX) {
                sl_http_respond_error(req, 400, "invalid_request",
                                      "name must be a string of at most 100 bytes", -1);
                return -1;
            }
            *name = json_string_value(v);
        } else {
            sl_http_respond_error(req, 400, "invalid_request",
                                  "unknown field (allowed: scopes, name)", -1);
            return -1;
        }
    }
    return 0;
bad_scopes:
    sl_http_respond_error(req, 400, "invalid_scopes",
                          "scopes must be a non-empty list of distinct names among read, upload, "
                          "admin-of-tenant",
                          -1);
    return -1;
}

/* Creates the key for k->tenant with the body (borrowed; NULL: none); takes k. */
static void create_key(key_ctx_t *k, json_t *body)
{
    char scopes[64], hash[65], prefix[KEY_PREFIX_LEN + 1];
    const char *name;
    sl_http_req_t *req = k->req;
    int err;
    if (create_body(k->req, body, scopes, sizeof scopes, &name) != 0) {
        key_ctx_free(k);
        return;
    }
    if ((err = sl_uuid_v4(k->id)) != 0 ||
        (err = sl_api_new_secret("sk_", KEY_RANDOM, k->api_key, hash)) != 0)
        goto fail;
    memcpy(prefix, k->api_key, KEY_PREFIX_LEN);
    prefix[KEY_PREFIX_LEN] = '\0';
    const char *p[6] = {k->id, k->tenant, hash, prefix, name, scopes[0] ? scopes : NULL};
    err = sl_pg_query(k->app->pg, "SELECT sluice_key_create($1, $2, $3, $4, $5, $6)", 6, p,
                      create_done_cb, k);
    if (err == 0)
        return;
fail:
    key_ctx_free(k);
    respond_err(req, err);
}

static void create_body_cb(sl_app_t *app, sl_http_req_t *req, json_t *body, void *arg)
{
    (void)app;
    (void)req;
    create_key(arg, body);
}

static void create_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    key_ctx_t *k = key_ctx_new(app, req, tenant_id);
    if (!k)
        return;
    if (!sl_http_req_has_body(req)) {
        create_key(k, NULL);
        return;
    }
    sl_api_read_json_owned(app, req, create_body_cb, k, key_ctx_free);
}

static void route_create(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, create_auth_cb, NULL);
}

/* ---- DELETE /v1/keys/{id} ---- */

static void revoke_second_cb(void *arg)
{
    key_ctx_t *k = arg;
    sl_http_respond(k->req, 204, NULL, NULL, 0);
    key_ctx_free(k);
}

static void revoke_first_cb(void *arg)
{
    key_ctx_t *k = arg;
    if (sl_cache_publish_revoke(k->app->cache, k->cache_id, revoke_second_cb, k) != 0)
        revoke_second_cb(k);
}

static void revoke_done_cb(const sl_pg_result_t *r, void *arg)
{
    key_ctx_t *k = arg;
    char key_hash[65];
    if (r->err != 0) {
        sl_api_db_error(k->req, r);
        key_ctx_free(k);
        return;
    }
    if (PQntuples(r->res[0]) != 1) {
        sl_http_respond_error(k->req, 404, "not_found", "no such key", -1);
        key_ctx_free(k);
        return;
    }
    snprintf(key_hash, sizeof key_hash, "%s", PQgetvalue(r->res[0], 0, 0));
    sl_auth_cache_id("key", k->id, k->cache_id);
    /* Two messages: the key's own cache entries, then its tokens'. */
    if (sl_cache_publish_revoke(k->app->cache, key_hash, revoke_first_cb, k) != 0)
        revoke_first_cb(k);
}

static void revoke_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37];
    if (sl_api_route_uuid(app, req, id) != 0) {
        sl_http_respond_error(req, 404, "not_found", "no such key", -1);
        return;
    }
    key_ctx_t *k = key_ctx_new(app, req, tenant_id);
    if (!k)
        return;
    memcpy(k->id, id, sizeof k->id);
    const char *p[2] = {k->tenant, k->id};
    int err = sl_pg_query(app->pg, "SELECT key_hash FROM sluice_key_revoke($1, $2)", 2, p,
                          revoke_done_cb, k);
    if (err != 0) {
        key_ctx_free(k);
        respond_err(req, err);
    }
}

static void route_delete(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, revoke_auth_cb, NULL);
}

void sl_api_register_keys(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/v1/keys", "keys_list", route_list, app);
    sl_http_router_add(app->router, "POST", "/v1/keys", "keys_create", route_create, app);
    sl_http_router_add(app->router, "DELETE", "/v1/keys/{id}", "keys_delete", route_delete, app);
}
