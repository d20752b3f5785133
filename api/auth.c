/*
 * auth.c — access tokens and refresh families (docs/auth.md).
 *
 *   POST /v1/auth/token    Authorization: Bearer <API key>
 *        -> 200 {"access_token", "token_type": "Bearer", "expires_in",
 *                "refresh_token", "refresh_expires_in", "scope"}
 *   POST /v1/auth/refresh  {"refresh_token"} -> 200, the same shape
 *
 * An access token is an HS256 JWT (core/jwt.h) that sl_api_auth verifies
 * locally; its "fam" names the refresh family it belongs to. A refresh token
 * is 32 random bytes ("rt_" + 64 hex) of which only the sha256 is stored; it
 * is used once: the SQL function sluice_auth_refresh (db/functions/auth.sql)
 * spends it in one UPDATE and makes its child. Using a spent one again
 * revokes the whole family (OAuth 2.0 Security BCP, refresh token rotation),
 * and this file then publishes the family on sluice:auth, so that every
 * instance's auth cache forgets it and the family's access tokens are
 * refused from then on (their liveness is cached under sl_auth_cache_id).
 *
 * The rest is the state behind app->auth: the keyring, the lifetimes, the
 * scope table and the last_used_at throttle.
 */
#include "api/auth.h"
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/crypto.h"
#include "core/err.h"
#include "core/jwt.h"
#include "core/log.h"

#define TOUCH_SETS 256
#define TOUCH_WAYS 4
#define TOUCH_EVERY_S 60 /* last_used_at is written at most this often per key */
#define REFRESH_RANDOM 32
#define REFRESH_LEN (3 + 2 * REFRESH_RANDOM)
#define ACCESS_MAX 1024 /* an access token's length (ours are ~400 bytes) */

typedef struct touch_ent_s {
    char id[37];
    time_t at;
} touch_ent_t;

struct sl_auth_s {
    sl_jwt_keys_t *keys; /* owned */
    int configured;      /* the config listed token_keys */
    int access_ttl_s, refresh_ttl_s;
    touch_ent_t touch[TOUCH_SETS][TOUCH_WAYS];
};

/* ------------------------------------------------------------------------ */
/* state                                                                     */

int sl_auth_new(const sl_config_t *cfg, sl_auth_t **out)
{
    sl_auth_t *a = calloc(1, sizeof *a);
    int err;

    if (!a)
        return SL_ENOMEM;
    a->access_ttl_s = cfg && cfg->auth_access_ttl_s > 0 ? cfg->auth_access_ttl_s
                                                         : SL_CONFIG_ACCESS_TTL_S;
    a->refresh_ttl_s = cfg && cfg->auth_refresh_ttl_s > 0 ? cfg->auth_refresh_ttl_s
                                                           : SL_CONFIG_REFRESH_TTL_S;
    if ((err = sl_jwt_keys_new(&a->keys)) != 0)
        goto fail;
    for (int i = 0; cfg && i < cfg->ntoken_keys; i++) {
        const sl_config_token_key_t *k = &cfg->token_keys[i];
        if ((err = sl_jwt_keys_add(a->keys, k->id, k->secret, strlen(k->secret))) != 0)
            goto fail;
        a->configured = 1;
    }
    *out = a;
    return 0;
fail:
    sl_auth_free(a);
    return err;
}

void sl_auth_free(sl_auth_t *a)
{
    if (!a)
        return;
    sl_jwt_keys_free(a->keys);
    free(a);
}

int sl_auth_use_stored_key(sl_auth_t *a, const char *secret)
{
    if (!a || a->configured)
        return 0;
    if (sl_jwt_keys_count(a->keys) > 0)
        return 0; /* already loaded (migrations re-ran after a failure) */
    return sl_jwt_keys_add(a->keys, SL_AUTH_STORED_KID, secret, strlen(secret));
}

int sl_auth_configured_keys(const sl_auth_t *a)
{
    return a && a->configured;
}

int sl_auth_refresh_ttl(const sl_auth_t *a)
{
    return a ? a->refresh_ttl_s : SL_CONFIG_REFRESH_TTL_S;
}

void sl_auth_cache_id(const char *kind, const char *id, char out[65])
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "sluice:%s:%s", kind, id);
    sl_sha256_hex(buf, n > 0 && (size_t)n < sizeof buf ? (size_t)n : 0, out);
}

/* ---- scopes ---- */

static const struct {
    const char *name;
    unsigned bit;
} SCOPE_NAMES[] = {
    {"read", SL_SCOPE_READ},
    {"upload", SL_SCOPE_UPLOAD},
    {"admin-of-tenant", SL_SCOPE_ADMIN},
};

unsigned sl_auth_scope_bit(const char *name)
{
    for (size_t i = 0; name && i < sizeof SCOPE_NAMES / sizeof SCOPE_NAMES[0]; i++)
        if (strcmp(name, SCOPE_NAMES[i].name) == 0)
            return SCOPE_NAMES[i].bit;
    return 0;
}

/* "read upload admin-of-tenant" (RFC 6749 §3.3 form) into out. */
static void scope_string(unsigned bits, char *out, size_t outlen)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof SCOPE_NAMES / sizeof SCOPE_NAMES[0]; i++) {
        if (!(bits & SCOPE_NAMES[i].bit))
            continue;
        int n = snprintf(out + o, outlen - o, "%s%s", o ? " " : "", SCOPE_NAMES[i].name);
        if (n < 0 || (size_t)n >= outlen - o)
            break;
        o += (size_t)n;
    }
}

/* The bits of a space-separated scope string; SL_EINVAL for an unknown name. */
static int scope_parse(const char *s, unsigned *bits)
{
    char name[32];
    *bits = 0;
    while (*s) {
        const char *e = strchr(s, ' ');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || n >= sizeof name)
            return SL_EINVAL;
        memcpy(name, s, n);
        name[n] = '\0';
        unsigned b = sl_auth_scope_bit(name);
        if (!b)
            return SL_EINVAL;
        *bits |= b;
        s += n;
        if (*s == ' ')
            s++;
    }
    return 0;
}

/*
 * Route name -> scope, for the routes whose method alone does not say it.
 * Everything else: GET/HEAD read, any other method upload (upload, process,
 * delete, dataset create, and the routes other files add later).
 */
static const struct {
    const char *route;
    unsigned scope;
} ROUTE_SCOPES[] = {
    {"keys_list", SL_SCOPE_ADMIN},
    {"keys_create", SL_SCOPE_ADMIN},
    {"keys_delete", SL_SCOPE_ADMIN},
    {"files_upload", SL_SCOPE_UPLOAD},
    {"files_process", SL_SCOPE_UPLOAD},
    {"files_delete", SL_SCOPE_UPLOAD},
    {"datasets_create", SL_SCOPE_UPLOAD},
    {"datasets_delete", SL_SCOPE_UPLOAD},
};

unsigned sl_auth_route_scope(const char *route, const char *method)
{
    for (size_t i = 0; route && i < sizeof ROUTE_SCOPES / sizeof ROUTE_SCOPES[0]; i++)
        if (strcmp(route, ROUTE_SCOPES[i].route) == 0)
            return ROUTE_SCOPES[i].scope;
    if (method && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
        return SL_SCOPE_READ;
    return SL_SCOPE_UPLOAD;
}

/* ---- last_used_at throttle ---- */

static unsigned fnv(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

int sl_auth_touch_due(sl_auth_t *a, const char *key_id)
{
    if (!a || !key_id || strlen(key_id) != 36)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    time_t now = ts.tv_sec;
    touch_ent_t *set = a->touch[fnv(key_id) % TOUCH_SETS], *old = &set[0];
    for (int w = 0; w < TOUCH_WAYS; w++) {
        if (memcmp(set[w].id, key_id, 37) == 0) {
            if (now - set[w].at < TOUCH_EVERY_S)
                return 0;
            set[w].at = now;
            return 1;
        }
        if (set[w].at < old->at)
            old = &set[w];
    }
    /* Not remembered (or evicted): at worst one more idempotent UPDATE. */
    memcpy(old->id, key_id, 37);
    old->at = now;
    return 1;
}

/* ---- tokens ---- */

int sl_auth_is_jwt(const char *cred, size_t len)
{
    return sl_jwt_looks_like(cred, len);
}

int sl_auth_sign(const sl_auth_t *a, const char *tenant_id, const char *key_id,
                 const char *family_id, unsigned scopes, char *out, size_t outlen,
                 int *expires_in)
{
    char jti[37], scope[64];
    if (!a || sl_uuid_v4(jti) != 0)
        return SL_EIO;
    scope_string(scopes, scope, sizeof scope);
    long long now = (long long)time(NULL);
    json_t *c = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:s}", "iss", "sluice", "sub",
                          tenant_id, "key", key_id, "fam", family_id, "scope", scope, "iat", now,
                          "exp", now + a->access_ttl_s, "jti", jti);
    if (!c)
        return SL_ENOMEM;
    int n = sl_jwt_sign(a->keys, c, out, outlen);
    json_decref(c);
    if (n >= 0 && expires_in)
        *expires_in = a->access_ttl_s;
    return n;
}

/* A claim that must be a UUID string, into out[37]. */
static int claim_uuid(json_t *c, const char *name, char out[37])
{
    const char *s = json_string_value(json_object_get(c, name));
    if (!s || !sl_is_uuid(s))
        return SL_EINVAL;
    memcpy(out, s, 37);
    return 0;
}

int sl_auth_verify(const sl_auth_t *a, const char *tok, size_t len, sl_auth_token_t *out)
{
    json_t *c = NULL;
    int err;
    if (!a)
        return SL_EINVAL;
    err = sl_jwt_verify(a->keys, tok, len, SL_API_KEY_MAX, (int64_t)time(NULL), &c);
    if (err == SL_JWT_EXPIRED)
        return SL_ETIMEDOUT;
    if (err != 0)
        return SL_EINVAL;
    const char *iss = json_string_value(json_object_get(c, "iss"));
    const char *scope = json_string_value(json_object_get(c, "scope"));
    err = SL_EINVAL;
    if (!iss || strcmp(iss, "sluice") != 0 || !scope ||
        claim_uuid(c, "sub", out->tenant_id) != 0 || claim_uuid(c, "key", out->key_id) != 0 ||
        claim_uuid(c, "fam", out->family_id) != 0 || scope_parse(scope, &out->scopes) != 0)
        goto out;
    out->exp = json_integer_value(json_object_get(c, "exp"));
    err = 0;
out:
    json_decref(c);
    return err;
}

void sl_auth_rate_id(const sl_auth_t *a, const char *cred, size_t len, char *out, size_t outlen)
{
    sl_auth_token_t t;
    char hash[65];
    if (sl_auth_is_jwt(cred, len) && sl_auth_verify(a, cred, len, &t) == 0) {
        snprintf(out, outlen, "tok:%s", t.key_id);
        return;
    }
    sl_sha256_hex(cred, len, hash);
    snprintf(out, outlen, "key:%s", hash);
}

/* ------------------------------------------------------------------------ */
/* routes                                                                    */

typedef struct grant_ctx_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char refresh[REFRESH_LEN + 1]; /* the new refresh token (shown once) */
    char family[37];               /* a reused token's family, to publish */
} grant_ctx_t;

static void grant_free(grant_ctx_t *g)
{
    explicit_bzero(g->refresh, sizeof g->refresh);
    free(g);
}

static void respond_unauthorized(sl_http_req_t *req, const char *code, const char *msg)
{
    sl_http_respond_error(req, 401, code, msg, -1);
}

static void respond_internal(sl_http_req_t *req, int err)
{
    sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
    sl_api_db_error(req, &r);
}

/* The 200 answer with a new pair: the row's tenant_id, key_id, scopes (and family). */
static void respond_pair(grant_ctx_t *g, PGresult *res, const char *family)
{
    char access[ACCESS_MAX], scope[64];
    int expires_in = 0;
    const char *tenant = PQgetvalue(res, 0, PQfnumber(res, "tenant_id"));
    const char *key = PQgetvalue(res, 0, PQfnumber(res, "key_id"));
    long bits = strtol(PQgetvalue(res, 0, PQfnumber(res, "scopes")), NULL, 10);
    int n = sl_auth_sign(g->app->auth, tenant, key, family, (unsigned)bits & SL_SCOPE_ALL, access,
                         sizeof access, &expires_in);
    if (n < 0) {
        sl_log(SL_LOG_ERROR, "token_sign_failed", "{s:s}", "error", sl_strerror(n));
        respond_internal(g->req, n);
        return;
    }
    scope_string((unsigned)bits & SL_SCOPE_ALL, scope, sizeof scope);
    json_t *v = json_pack("{s:s, s:s, s:i, s:s, s:i, s:s}", "access_token", access, "token_type",
                          "Bearer", "expires_in", expires_in, "refresh_token", g->refresh,
                          "refresh_expires_in", sl_auth_refresh_ttl(g->app->auth), "scope", scope);
    explicit_bzero(access, sizeof access);
    /* RFC 6749 §5.1: token responses are never cached. */
    sl_http_resp_header(g->req, "Cache-Control", "no-store");
    sl_api_json(g->req, 200, v);
}

/* ---- POST /v1/auth/token ---- */

typedef struct token_ctx_s {
    grant_ctx_t g;
    char family[37];
} token_ctx_t;

static void token_done_cb(const sl_pg_result_t *r, void *arg)
{
    token_ctx_t *t = arg;
    if (r->err != 0)
        sl_api_db_error(t->g.req, r);
    else if (PQntuples(r->res[0]) != 1)
        respond_unauthorized(t->g.req, "unauthorized", "missing or invalid API key");
    else
        respond_pair(&t->g, r->res[0], t->family);
    grant_free(&t->g);
}

static void route_token(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    char key[SL_API_KEY_MAX], key_hash[65], rhash[65], token_id[37], ttl[16];
    (void)params;
    /* Only the header: a key never travels in a URL. */
    int n = sl_api_credentials(req, 0, key, sizeof key);
    if (n <= 0) {
        respond_unauthorized(req, "unauthorized", "missing or invalid API key");
        return;
    }
    if (sl_auth_is_jwt(key, (size_t)n)) {
        explicit_bzero(key, sizeof key);
        respond_unauthorized(req, "unauthorized", "an API key is needed here, not a token");
        return;
    }
    sl_sha256_hex(key, (size_t)n, key_hash);
    explicit_bzero(key, sizeof key);
    token_ctx_t *t = calloc(1, sizeof *t);
    if (!t) {
        respond_internal(req, SL_ENOMEM);
        return;
    }
    t->g.app = app;
    t->g.req = req;
    int err;
    if ((err = sl_uuid_v4(t->family)) != 0 || (err = sl_uuid_v4(token_id)) != 0 ||
        (err = sl_api_new_secret("rt_", REFRESH_RANDOM, t->g.refresh, rhash)) != 0)
        goto fail;
    snprintf(ttl, sizeof ttl, "%d", sl_auth_refresh_ttl(app->auth));
    const char *p[5] = {key_hash, t->family, token_id, rhash, ttl};
    err = sl_pg_query(app->pg,
                      "SELECT tenant_id, key_id, scopes FROM sluice_auth_issue($1, $2, $3, $4, $5)",
                      5, p, token_done_cb, t);
    if (err == 0)
        return;
fail:
    grant_free(&t->g);
    respond_internal(req, err);
}

/* ---- POST /v1/auth/refresh ---- */

static void reuse_published_cb(void *arg)
{
    grant_ctx_t *g = arg;
    respond_unauthorized(g->req, "refresh_token_reused",
                         "this refresh token was used already; every token of its family is "
                         "revoked: sign in again");
    grant_free(g);
}

static void refresh_done_cb(const sl_pg_result_t *r, void *arg)
{
    grant_ctx_t *g = arg;
    if (r->err != 0) {
        sl_api_db_error(g->req, r);
        goto out;
    }
    PGresult *res = r->res[0];
    const char *outcome = PQntuples(res) == 1 ? PQgetvalue(res, 0, PQfnumber(res, "outcome")) : "";
    if (strcmp(outcome, "ok") == 0) {
        respond_pair(g, res, PQgetvalue(res, 0, PQfnumber(res, "family_id")));
        goto out;
    }
    if (strcmp(outcome, "reused") == 0) {
        char id[65];
        snprintf(g->family, sizeof g->family, "%s", PQgetvalue(res, 0, PQfnumber(res, "family_id")));
        sl_log(SL_LOG_WARN, "refresh_token_reused", "{s:s, s:s}", "family", g->family, "tenant",
               PQgetvalue(res, 0, PQfnumber(res, "tenant_id")));
        /* The family's access tokens are refused everywhere before we answer. */
        sl_auth_cache_id("family", g->family, id);
        if (sl_cache_publish_revoke(g->app->cache, id, reuse_published_cb, g) != 0)
            reuse_published_cb(g);
        return;
    }
    respond_unauthorized(g->req, "invalid_refresh_token",
                         strcmp(outcome, "revoked") == 0
                             ? "the key or token family of this refresh token is revoked"
                             : "unknown, expired or revoked refresh token");
out:
    grant_free(g);
}

static void refresh_body_cb(sl_app_t *app, sl_http_req_t *req, json_t *body, void *arg)
{
    char old_hash[65], new_hash[65], new_id[37], ttl[16];
    (void)arg;
    json_t *rt = json_object_get(body, "refresh_token");
    const char *s = json_string_value(rt);
    if (!s || json_string_length(rt) == 0 || json_string_length(rt) > 256) {
        sl_http_respond_error(req, 400, "invalid_request",
                              "body must be {\"refresh_token\": \"...\"}", -1);
        return;
    }
    sl_sha256_hex(s, json_string_length(rt), old_hash);
    grant_ctx_t *g = calloc(1, sizeof *g);
    if (!g) {
        respond_internal(req, SL_ENOMEM);
        return;
    }
    g->app = app;
    g->req = req;
    int err;
    if ((err = sl_uuid_v4(new_id)) != 0 || (err = sl_api_new_secret("rt_", REFRESH_RANDOM, g->refresh, new_hash)) != 0)
        goto fail;
    snprintf(ttl, sizeof ttl, "%d", sl_auth_refresh_ttl(app->auth));
    const char *p[4] = {old_hash, new_id, new_hash, ttl};
    err = sl_pg_query(app->pg,
                      "SELECT outcome, tenant_id, key_id, family_id, scopes "
                      "FROM sluice_auth_refresh($1, $2, $3, $4)",
                      4, p, refresh_done_cb, g);
    if (err == 0)
        return;
fail:
    grant_free(g);
    respond_internal(req, err);
}

static void route_refresh(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_read_json(arg, req, refresh_body_cb, NULL);
}

void sl_api_register_auth(sl_app_t *app)
{
    sl_http_router_add(app->router, "POST", "/v1/auth/token", "auth_token", route_token, app);
    sl_http_router_add(app->router, "POST", "/v1/auth/refresh", "auth_refresh", route_refresh,
                       app);
}
