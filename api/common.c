/*
 * common.c — what every route file shares: API-key authentication, the admin
 * check, JSON answers and JSON bodies, database error mapping, MIME pattern
 * matching, the pipeline list, Idempotency-Key reservations and signed blob
 * URLs.
 *
 * Everything asynchronous here follows the callback contract of STYLE.md: the
 * caller's callback runs on a later loop turn, at most once, and not at all
 * when this file has answered the request itself (401, 400, 409, 503...).
 * State that must survive the gap to a database reply is copied into a small
 * heap context first: route params and header values are borrowed.
 */
#include "api/api.h"
#include "api/auth.h"
#include "api/validate.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"

#define SL_IDEM_KEY_MAX 255 /* Idempotency-Key length limit */
#define SL_IDEM_ENDPOINT_MAX 256
#define SL_IDEM_MAX_ATTEMPTS 4 /* reservation races retried at most this often */
#define SL_DEFAULT_JSON_MAX (1024 * 1024)

/* nginx's "client closed request": used only to finish a request whose client
 * is gone (nobody reads the answer; the status shows in logs and metrics). */
#define SL_STATUS_CLIENT_CLOSED 499

/* ------------------------------------------------------------------------ */
/* small helpers                                                             */

/* Finishes a request whose client went away, so the http layer can free it. */
static void finish_closed(sl_http_req_t *req)
{
    sl_http_respond_error(req, SL_STATUS_CLIENT_CLOSED, "client_closed", "client went away", -1);
}

int sl_api_credentials(sl_http_req_t *req, int allow_query_token, char *out, size_t outlen)
{
    const char *h = sl_http_req_header(req, "Authorization");
    if (h != NULL)
        return sl_http_bearer_token(h, out, outlen);
    if (!allow_query_token)
        return -1;
    int n = sl_http_req_query_param(req, "access_token", out, outlen);
    return n > 0 ? n : -1;
}

/* ------------------------------------------------------------------------ */
/* authentication                                                            */

/*
 * The head (first member) of every context of the async helpers here: the
 * caller's app and request (borrowed) and its argument with the function that
 * gives it back (release may be NULL).
 */
typedef struct ctx_head_s {
    sl_app_t *app;
    sl_http_req_t *req;
    void *arg;
    sl_api_release_fn release;
} ctx_head_t;

/*
 * Authentication state across the gap to the database (or to the next loop
 * turn on a cache hit). An API key is looked up by its sha256 (`id`); an
 * access token (issue 13, api/auth.h) was verified locally and its family
 * and key are checked for revocation under their cache ids (`id`, `key_cid`).
 */
typedef struct auth_ctx_s {
    ctx_head_t h;
    sl_api_auth_cb cb;
    uint64_t ticket;        /* api/cache.h fill ticket, taken before the query */
    char id[65];            /* the key's SHA-256 hex; a token's family cache id */
    char key_cid[65];       /* a token's key cache id */
    int jwt;                /* the credential is an access token (tok) */
    sl_auth_token_t tok;
    unsigned need;          /* the scope the route needs (sl_auth_route_scope) */
    uint64_t rev_ticket;    /* sl_cache_auth_ticket when the check began (revocations since?) */
    sl_cache_cred_t cred;   /* who it is: tenant, key id, scopes */
} auth_ctx_t;

/* The context whose callback is running (loop thread only), else NULL. */
static const auth_ctx_t *g_authed;

static void release_arg(sl_api_release_fn release, void *arg)
{
    if (release != NULL)
        release(arg);
}

/*
 * A new zeroed context of size bytes (a struct whose first member is a
 * ctx_head_t) with its head filled in, owned by the caller (free()); on
 * failure answers 500 "out of memory", gives arg back and returns NULL.
 */
static void *ctx_new(size_t size, sl_app_t *app, sl_http_req_t *req, void *arg,
                     sl_api_release_fn release)
{
    ctx_head_t *h = calloc(1, size);
    if (h == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        release_arg(release, arg);
        return NULL;
    }
    h->app = app;
    h->req = req;
    h->arg = arg;
    h->release = release;
    return h;
}

static void touch_done_cb(const sl_pg_result_t *r, void *arg)
{
    (void)r;
    (void)arg; /* best effort: a lost last_used_at write is retried a minute later */
}

/*
 * The credential is good: check the route's scope (403), note the key's use
 * (one UPDATE a minute at most, not waited for), and call back.
 */
static void auth_finish(auth_ctx_t *ctx)
{
    sl_app_t *app = ctx->h.app;
    sl_http_req_t *req = ctx->h.req;
    if (!(ctx->cred.scopes & ctx->need)) {
        sl_http_respond_error(req, 403, "forbidden",
                              "this API key or token lacks the scope this request needs", -1);
        release_arg(ctx->h.release, ctx->h.arg);
        free(ctx);
        return;
    }
    if (ctx->cred.key_id[0] && sl_auth_touch_due(app->auth, ctx->cred.key_id)) {
        const char *p[1] = {ctx->cred.key_id};
        sl_pg_query(app->pg, "SELECT sluice_key_touch($1)", 1, p, touch_done_cb, NULL);
    }
    g_authed = ctx; /* sl_api_auth_revocation_ids, during the callback only */
    ctx->cb(app, req, ctx->cred.tenant_id, ctx->h.arg);
    g_authed = NULL;
    free(ctx);
}

int sl_api_auth_revocation_ids(sl_app_t *app, uint64_t ids[2])
{
    const auth_ctx_t *ctx = g_authed;
    ids[0] = ids[1] = 0;
    if (!ctx)
        return 0;
    ids[0] = sl_cache_revoke_tag(ctx->id);
    if (ctx->jwt)
        ids[1] = sl_cache_revoke_tag(ctx->key_cid);
    return ctx->rev_ticket == sl_cache_auth_ticket(app->cache);
}

static void auth_done_cb(const sl_pg_result_t *r, void *arg)
{
    auth_ctx_t *ctx = arg;
    sl_http_req_t *req = ctx->h.req;
    sl_app_t *app = ctx->h.app;

    if (r->err != 0) {
        sl_api_db_error(req, r);
        goto fail;
    }
    if (sl_http_req_closed(req)) {
        finish_closed(req);
        goto fail;
    }
    PGresult *res = r->res[0];
    if (r->n < 1 || PQntuples(res) != 1) {
        sl_http_respond_error(req, 401, "unauthorized",
                              ctx->jwt ? "this access token is revoked"
                                       : "missing or invalid API key",
                              -1);
        goto fail;
    }
    /* Copied: the PGresult is freed once this callback returns. */
    snprintf(ctx->cred.tenant_id, sizeof ctx->cred.tenant_id, "%s",
             PQgetvalue(res, 0, PQfnumber(res, "tenant_id")));
    if (ctx->jwt) {
        /* The token's scopes are its own (a key's scopes never change). */
        if (strcmp(ctx->cred.tenant_id, ctx->tok.tenant_id) != 0) {
            sl_http_respond_error(req, 401, "unauthorized", "invalid access token", -1);
            goto fail;
        }
        memcpy(ctx->cred.key_id, ctx->tok.key_id, sizeof ctx->cred.key_id);
        ctx->cred.scopes = SL_SCOPE_ALL;
        sl_cache_cred_put(app->cache, ctx->id, &ctx->cred, ctx->ticket);
        sl_cache_cred_put(app->cache, ctx->key_cid, &ctx->cred, ctx->ticket);
        ctx->cred.scopes = ctx->tok.scopes;
    } else {
        snprintf(ctx->cred.key_id, sizeof ctx->cred.key_id, "%s",
                 PQgetvalue(res, 0, PQfnumber(res, "id")));
        ctx->cred.scopes =
            (unsigned)strtol(PQgetvalue(res, 0, PQfnumber(res, "scopes")), NULL, 10) &
            SL_SCOPE_ALL;
        sl_cache_cred_put(app->cache, ctx->id, &ctx->cred, ctx->ticket);
    }
    auth_finish(ctx);
    return;
fail:
    release_arg(ctx->h.release, ctx->h.arg);
    free(ctx);
}

/* A cache hit, on the loop turn after sl_api_auth_owned. */
static void auth_hit_cb(evutil_socket_t fd, short what, void *arg)
{
    auth_ctx_t *ctx = arg;
    sl_http_req_t *req = ctx->h.req;
    (void)fd;
    (void)what;
    if (sl_http_req_closed(req)) {
        finish_closed(req);
        release_arg(ctx->h.release, ctx->h.arg);
        free(ctx);
        return;
    }
    auth_finish(ctx);
}

void sl_api_auth(sl_app_t *app, sl_http_req_t *req, int allow_query_token, sl_api_auth_cb cb,
                 void *arg)
{
    sl_api_auth_owned(app, req, allow_query_token, cb, arg, NULL);
}

/*
 * An access token: verified here (signature, kid, exp), then its family and
 * key must be live: from the cache (both entries, same tenant), else one query
 * whose answer fills both. 1 if the context was handed on, 0 if the request
 * was answered (401) and ctx freed.
 */
static int auth_token(auth_ctx_t *ctx, const char *tok, size_t len)
{
    sl_app_t *app = ctx->h.app;
    sl_cache_cred_t fam, key;
    int rc = sl_auth_verify(app->auth, tok, len, &ctx->tok);
    if (rc != 0) {
        if (rc == SL_ETIMEDOUT)
            sl_http_respond_error(ctx->h.req, 401, "token_expired", "the access token has expired",
                                  -1);
        else
            sl_http_respond_error(ctx->h.req, 401, "unauthorized", "invalid access token", -1);
        release_arg(ctx->h.release, ctx->h.arg);
        free(ctx);
        return 0;
    }
    ctx->jwt = 1;
    sl_auth_cache_id("family", ctx->tok.family_id, ctx->id);
    sl_auth_cache_id("key", ctx->tok.key_id, ctx->key_cid);
    if (sl_cache_cred_get(app->cache, ctx->id, &fam) &&
        sl_cache_cred_get(app->cache, ctx->key_cid, &key) &&
        strcmp(fam.tenant_id, ctx->tok.tenant_id) == 0 &&
        strcmp(key.tenant_id, ctx->tok.tenant_id) == 0) {
        memcpy(ctx->cred.tenant_id, ctx->tok.tenant_id, sizeof ctx->tok.tenant_id);
        memcpy(ctx->cred.key_id, ctx->tok.key_id, sizeof ctx->cred.key_id);
        ctx->cred.scopes = ctx->tok.scopes;
    }
    return 1;
}

void sl_api_auth_owned(sl_app_t *app, sl_http_req_t *req, int allow_query_token, sl_api_auth_cb cb,
                       void *arg, sl_api_release_fn release)
{
    char key[SL_API_KEY_MAX];
    int n = sl_api_credentials(req, allow_query_token, key, sizeof key);

    if (n <= 0) {
        sl_http_respond_error(req, 401, "unauthorized", "missing or invalid API key", -1);
        release_arg(release, arg);
        return;
    }
    auth_ctx_t *ctx = ctx_new(sizeof *ctx, app, req, arg, release);
    if (ctx == NULL) {
        explicit_bzero(key, sizeof key);
        return;
    }
    ctx->cb = cb;
    ctx->rev_ticket = sl_cache_auth_ticket(app->cache); /* before any lookup */
    /* The router named the route before dispatch (main.c): its scope (issue 13). */
    ctx->need = sl_auth_route_scope(sl_http_req_route(req), sl_http_req_method(req));
    if (sl_auth_is_jwt(key, (size_t)n)) {
        int handed = auth_token(ctx, key, (size_t)n);
        explicit_bzero(key, sizeof key);
        if (!handed)
            return;
    } else {
        sl_sha256_hex(key, (size_t)n, ctx->id);
        explicit_bzero(key, sizeof key);
        /* A cached key (api/cache.h: revocations reach every instance at once). */
        sl_cache_cred_get(app->cache, ctx->id, &ctx->cred);
    }
    if (ctx->cred.tenant_id[0]) {
        static const struct timeval zero = {0, 0};
        if (event_base_once(app->base, -1, EV_TIMEOUT, auth_hit_cb, ctx, &zero) == 0)
            return;
    }
    ctx->ticket = sl_cache_auth_ticket(app->cache);
    int err;
    if (ctx->jwt) {
        const char *params[2] = {ctx->tok.family_id, ctx->tok.key_id};
        err = sl_pg_query_prepared(app->pg, "sl_auth_token",
                                   "SELECT tenant_id FROM sluice_auth_token_live($1, $2)", 2,
                                   params, auth_done_cb, ctx);
    } else {
        const char *params[1] = {ctx->id};
        err = sl_pg_query_prepared(app->pg, "sl_auth_key",
                                   "SELECT tenant_id, id, sluice_scope_bits(scopes) AS scopes "
                                   "FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                                   1, params, auth_done_cb, ctx);
    }
    if (err != 0) {
        free(ctx);
        sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
        sl_api_db_error(req, &r);
        release_arg(release, arg);
    }
}

int sl_api_new_secret(const char prefix[4], size_t nrandom, char *out, char hash[65])
{
    unsigned char rnd[64];
    if (nrandom > sizeof rnd || sl_random_bytes(rnd, nrandom) != 0)
        return SL_EIO;
    memcpy(out, prefix, 3);
    sl_hex(rnd, nrandom, out + 3);
    explicit_bzero(rnd, nrandom);
    sl_sha256_hex(out, 3 + 2 * nrandom, hash);
    return 0;
}

int sl_api_is_admin(const sl_app_t *app, sl_http_req_t *req)
{
    char key[SL_API_KEY_MAX];
    char a[65], b[65];
    const char *admin = app->cfg != NULL ? app->cfg->admin_key : NULL;

    if (admin == NULL || admin[0] == '\0')
        return 0;
    int n = sl_http_bearer_token(sl_http_req_header(req, "Authorization"), key, sizeof key);
    if (n <= 0)
        return 0;
    /* Comparing the digests keeps the comparison constant-time whatever the
     * lengths of the two keys. */
    sl_sha256_hex(key, (size_t)n, a);
    sl_sha256_hex(admin, strlen(admin), b);
    explicit_bzero(key, sizeof key);
    return sl_consttime_eq(a, b, 64);
}

/* ------------------------------------------------------------------------ */
/* responses                                                                 */

void sl_api_json_text(sl_http_req_t *req, int status, const char *text, size_t len)
{
    sl_http_respond(req, status, "application/json", text, len);
}

void sl_api_json_etag(sl_http_req_t *req, const char *text, size_t len, const char *etag)
{
    sl_api_respond_etag(req, "application/json", text, len, etag);
}

void sl_api_respond_etag(sl_http_req_t *req, const char *content_type, const char *text,
                         size_t len, const char *etag)
{
    char buf[SL_CACHE_ETAG_LEN];
    if (etag == NULL) {
        sl_cache_etag(text, len, buf);
        etag = buf;
    }
    sl_http_resp_header(req, "ETag", etag);
    /* Stored, but asked again each time: If-None-Match makes that cheap. */
    sl_http_resp_header(req, "Cache-Control", "private, no-cache");
    if (sl_cache_etag_match(sl_http_req_header(req, "If-None-Match"), etag)) {
        sl_http_respond(req, 304, NULL, NULL, 0);
        return;
    }
    sl_http_respond(req, 200, content_type, text, len);
}

void sl_api_json(sl_http_req_t *req, int status, json_t *v)
{
    char *s =
        v != NULL ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY) : NULL;
    json_decref(v);
    if (s == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "could not encode the response", -1);
        return;
    }
    sl_api_json_text(req, status, s, strlen(s));
    free(s);
}

void sl_api_db_error(sl_http_req_t *req, const sl_pg_result_t *r)
{
    /* SL_ECANCELED means the pool is shutting down: also "try again". */
    if (r->err == SL_EUNAVAIL || r->err == SL_EAGAIN || r->err == SL_ECANCELED) {
        sl_http_respond_error(req, 503, "database_unavailable", "the database is unavailable", 2);
        return;
    }
    /*
     * 503, with the same request worth sending again: a race the database
     * settled by aborting this transaction (db/pg.c has already re-run it, up
     * to its bound), or an overloaded database — a statement cancelled by
     * database_statement_timeout_ms (57014, lock waits included), a lock
     * timeout (55P03), no connection slot (53300). Nothing was written; a 500
     * told clients it never would be.
     */
    static const struct {
        const char *sqlstate, *event, *message;
        int retry_after_s;
    } transient[] = {
        {"40001", "db_conflict", "a concurrent change got in the way; retry", 1},
        {"40P01", "db_conflict", "a concurrent change got in the way; retry", 1},
        {"57014", "db_busy", "the database did not answer in time; retry", 2},
        {"55P03", "db_busy", "the database did not answer in time; retry", 2},
        {"53300", "db_busy", "the database did not answer in time; retry", 2},
    };
    for (size_t i = 0; r->err == SL_EDB && r->sqlstate && i < sizeof transient / sizeof *transient;
         i++) {
        if (strcmp(r->sqlstate, transient[i].sqlstate) != 0)
            continue;
        sl_log(SL_LOG_WARN, transient[i].event, "{s:s, s:s, s:s}", "request_id",
               sl_http_req_id(req) ? sl_http_req_id(req) : "", "errmsg",
               r->errmsg ? r->errmsg : "", "sqlstate", r->sqlstate);
        sl_http_respond_error(req, 503, "database_busy", transient[i].message,
                              transient[i].retry_after_s);
        return;
    }
    sl_log(SL_LOG_ERROR, "db_error", "{s:s, s:s, s:s, s:s}", "request_id",
           sl_http_req_id(req) ? sl_http_req_id(req) : "", "error", sl_strerror(r->err), "errmsg",
           r->errmsg ? r->errmsg : "", "sqlstate", r->sqlstate ? r->sqlstate : "");
    sl_http_respond_error(req, 500, "internal_error", "internal error", -1);
}

/* ------------------------------------------------------------------------ */
/* JSON bodies                                                               */

typedef struct body_ctx_s {
    ctx_head_t h;
    sl_api_json_body_cb cb;
} body_ctx_t;

static void json_body_cb(sl_http_req_t *req, int err, const char *body, size_t len, void *arg)
{
    body_ctx_t *ctx = arg;
    sl_api_verr_t e;
    json_t *v = NULL;

    if (err == SL_ETOOBIG || err == SL_EPROTO)
        goto out; /* the http layer answered 413 / 400 itself */
    if (err != 0) {
        finish_closed(req); /* client gone or stalled: nobody reads this */
        goto out;
    }
    if (sl_api_json_object(body, len, &v, &e) != 0) {
        sl_http_respond_error(req, e.status, e.code, e.msg, -1);
        goto out;
    }
    ctx->cb(ctx->h.app, req, v, ctx->h.arg);
    json_decref(v);
    free(ctx);
    return;
out:
    release_arg(ctx->h.release, ctx->h.arg);
    json_decref(v);
    free(ctx);
}

void sl_api_read_json(sl_app_t *app, sl_http_req_t *req, sl_api_json_body_cb cb, void *arg)
{
    sl_api_read_json_owned(app, req, cb, arg, NULL);
}

void sl_api_read_json_owned(sl_app_t *app, sl_http_req_t *req, sl_api_json_body_cb cb, void *arg,
                            sl_api_release_fn release)
{
    size_t max = app->cfg != NULL && app->cfg->max_json_bytes > 0 ? app->cfg->max_json_bytes
                                                                  : SL_DEFAULT_JSON_MAX;
    body_ctx_t *ctx = ctx_new(sizeof *ctx, app, req, arg, release);
    if (ctx == NULL)
        return;
    ctx->cb = cb;
    if (sl_http_req_read_body(req, max, json_body_cb, ctx) != 0) {
        free(ctx);
        sl_http_respond_error(req, 500, "internal_error", "could not read the body", -1);
        release_arg(release, arg);
    }
}

/* ------------------------------------------------------------------------ */
/* pipelines                                                                 */

int sl_api_mime_match(const char *pattern, const char *mime)
{
    if (pattern == NULL || mime == NULL)
        return 0;
    /* The mime's parameters ("; charset=...") and surrounding blanks do not count. */
    while (*mime == ' ' || *mime == '\t')
        mime++;
    size_t mlen = strcspn(mime, ";");
    while (mlen > 0 && (mime[mlen - 1] == ' ' || mime[mlen - 1] == '\t'))
        mlen--;
    if (mlen == 0)
        return 0;
    if (strcmp(pattern, "*/*") == 0 || strcmp(pattern, "*") == 0)
        return 1;
    size_t plen = strlen(pattern);
    if (plen >= 2 && pattern[plen - 2] == '/' && pattern[plen - 1] == '*') {
        size_t tlen = plen - 1; /* "image/" */
        return mlen > tlen && strncasecmp(pattern, mime, tlen) == 0;
    }
    return plen == mlen && strncasecmp(pattern, mime, mlen) == 0;
}

/* The shipped pipelines (DESIGN.md "The pipelines that ship"). */
static char m_pdf[] = "application/pdf";
static char m_image[] = "image/*";
static char m_text[] = "text/*";
/* runlife (issue 13): Office documents, as libmagic names them (docs/flows.md) */
static char m_docx[] = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
static char m_xlsx[] = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
static char m_pptx[] = "application/vnd.openxmlformats-officedocument.presentationml.presentation";
static char m_odt[] = "application/vnd.oasis.opendocument.text";
static char m_ods[] = "application/vnd.oasis.opendocument.spreadsheet";
static char m_odp[] = "application/vnd.oasis.opendocument.presentation";
#define SL_OFFICE_MATCH m_docx, m_xlsx, m_pptx, m_odt, m_ods, m_odp

static const struct {
    const char *name;
    char *match[12];
    const char *steps[8];
} shipped[] = {
    {"ai_record",
     {m_pdf, m_image, m_text, SL_OFFICE_MATCH, NULL},
     {"tika", "ocr", "textract", "record", NULL}},
    {"file_view", {m_pdf, m_image, SL_OFFICE_MATCH, NULL}, {"preview", "thumbnail", NULL}},
};
#define NSHIPPED ((int)(sizeof shipped / sizeof shipped[0]))

/* {"steps": [...]}: the documented steps of a shipped pipeline, until its flow is loaded. */
static void shipped_steps(sl_pipeline_def_t *p)
{
    p->flow = NULL;
    for (int i = 0; i < NSHIPPED; i++) {
        json_t *steps;
        if (strcmp(shipped[i].name, p->name) != 0 || (steps = json_array()) == NULL)
            continue;
        for (int s = 0; shipped[i].steps[s] != NULL; s++)
            json_array_append_new(steps, json_string(shipped[i].steps[s]));
        p->flow = json_pack("{s:o}", "steps", steps);
    }
}

int sl_api_load_pipelines(sl_app_t *app)
{
    sl_pipeline_def_t defs[SL_CONFIG_MAX_PIPELINES];
    int n = 0;
    const sl_config_t *cfg = app->cfg;

    memset(defs, 0, sizeof defs);
    if (cfg != NULL && cfg->has_pipelines) {
        if (cfg->npipelines < 0 || cfg->npipelines > SL_CONFIG_MAX_PIPELINES)
            return SL_EINVAL;
        for (int i = 0; i < cfg->npipelines; i++) {
            const sl_config_pipeline_t *cp = &cfg->pipelines[i];
            sl_pipeline_def_t *p = &defs[n++];
            if (cp->name == NULL || strlen(cp->name) >= sizeof p->name) {
                for (int k = 0; k < n; k++)
                    json_decref(defs[k].flow);
                return SL_EINVAL;
            }
            snprintf(p->name, sizeof p->name, "%s", cp->name);
            for (int m = 0; m < SL_CONFIG_MAX_MATCH && cp->match[m] != NULL; m++)
                p->match[m] = cp->match[m];
            /* A flow's steps are only known once flows are loaded; the two
             * shipped names keep their documented steps. */
            shipped_steps(p);
        }
    } else {
        for (int i = 0; i < NSHIPPED; i++) {
            sl_pipeline_def_t *p = &defs[n++];
            snprintf(p->name, sizeof p->name, "%s", shipped[i].name);
            for (int m = 0; shipped[i].match[m] != NULL; m++)
                p->match[m] = shipped[i].match[m];
            shipped_steps(p);
        }
    }
    for (int i = 0; i < app->npipelines; i++)
        json_decref(app->pipelines[i].flow);
    memcpy(app->pipelines, defs, sizeof defs);
    app->npipelines = n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* idempotency                                                               */

/*
 * The reservation is a small state machine, one batch per step:
 *   RESERVE: INSERT ... ON CONFLICT DO NOTHING RETURNING key, then (same batch,
 *            a fresh snapshot in read committed) SELECT the row as it stands.
 *   REPLACE: an expired (> 24 h) row: delete it and insert ours, one batch.
 *   TAKEOVER: an abandoned reservation (no response after 10 min): claim it.
 * A step that loses a race goes back to RESERVE, at most SL_IDEM_MAX_ATTEMPTS.
 */
enum { IDEM_RESERVE, IDEM_REPLACE, IDEM_TAKEOVER };

typedef struct idem_ctx_s {
    ctx_head_t h;
    sl_api_idem_cb cb;
    int step;
    int attempts;
    char tenant_id[64];
    char key[SL_IDEM_KEY_MAX + 1];
    char endpoint[SL_IDEM_ENDPOINT_MAX];
    /* This request's mark on its reservation: kept in `body` while status is
     * NULL (the response overwrites it), so a reservation whose outcome is
     * unknown can be given back without touching another request's. */
    char owner[33];
} idem_ctx_t;

static void idem_db_cb(const sl_pg_result_t *r, void *arg);
static void idem_release_owned(sl_app_t *app, const char *tenant_id, const char *key,
                               const char *owner);

static int idem_send(idem_ctx_t *ctx, int step)
{
    const char *p3[4] = {ctx->tenant_id, ctx->key, ctx->endpoint, ctx->owner};
    sl_pg_batch_t *b = sl_pg_batch_new(ctx->h.app->pg);
    int err = SL_ENOMEM;

    if (b == NULL)
        return SL_ENOMEM;
    ctx->step = step;
    ctx->attempts++;
    if (step == IDEM_REPLACE) {
        if ((err = sl_pg_batch_add(b,
                                   "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 "
                                   "AND created_at < now() - interval '24 hours'",
                                   2, p3)) < 0)
            goto fail;
    }
    if (step == IDEM_TAKEOVER) {
        if ((err = sl_pg_batch_add(b,
                                   "UPDATE idempotency_keys SET created_at = clock_timestamp(), "
                                   "body = $4 "
                                   "WHERE tenant_id = $1 AND key = $2 AND endpoint = $3 "
                                   "AND status IS NULL "
                                   "AND created_at < now() - interval '10 minutes' RETURNING key",
                                   4, p3)) < 0)
            goto fail;
    } else {
        if ((err = sl_pg_batch_add(b,
                                   "INSERT INTO idempotency_keys (tenant_id, key, endpoint, body) "
                                   "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING key",
                                   4, p3)) < 0)
            goto fail;
    }
    if ((err = sl_pg_batch_add(b,
                               "SELECT status, body, endpoint, "
                               "created_at < now() - interval '24 hours', "
                               "created_at < now() - interval '10 minutes' "
                               "FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
                               2, p3)) < 0)
        goto fail;
    return sl_pg_batch_exec(b, idem_db_cb, ctx);
fail:
    sl_pg_batch_free(b);
    return err;
}

/* Goes on with another step, or answers when that fails to start. 1 if sent. */
static int idem_next(idem_ctx_t *ctx, int step)
{
    int err;
    if (ctx->attempts >= SL_IDEM_MAX_ATTEMPTS) {
        sl_http_respond_error(ctx->h.req, 409, "idempotency_in_progress",
                              "a request with this Idempotency-Key is in progress", -1);
        return 0;
    }
    if ((err = idem_send(ctx, step)) != 0) {
        sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
        sl_api_db_error(ctx->h.req, &r);
        return 0;
    }
    return 1;
}

static void idem_db_cb(const sl_pg_result_t *r, void *arg)
{
    idem_ctx_t *ctx = arg;
    sl_http_req_t *req = ctx->h.req;

    if (r->err != 0) {
        /* SL_EUNAVAIL: the connection went away, maybe after the claim
         * committed. Give back a claim of ours, or every retry of this
         * request would hear "in progress" until the 10-minute takeover. */
        if (r->err == SL_EUNAVAIL)
            idem_release_owned(ctx->h.app, ctx->tenant_id, ctx->key, ctx->owner);
        sl_api_db_error(req, r);
        goto done;
    }
    /* The claiming statement is the second to last one; the SELECT is last. */
    PGresult *claim = r->res[r->n - 2];
    PGresult *row = r->res[r->n - 1];
    if (PQntuples(claim) == 1) {
        if (sl_http_req_closed(req)) {
            /* Nobody will get the answer: give the key back at once. */
            sl_api_idem_release(ctx->h.app, ctx->tenant_id, ctx->key);
            finish_closed(req);
            goto done;
        }
        ctx->cb(ctx->h.app, req, SL_IDEM_NEW, ctx->h.arg);
        free(ctx);
        return;
    }
    if (PQntuples(row) != 1) {
        /* Released between our two statements: try again. */
        if (idem_next(ctx, IDEM_RESERVE))
            return;
        goto done;
    }
    int expired = PQgetvalue(row, 0, 3)[0] == 't';
    int stale = PQgetvalue(row, 0, 4)[0] == 't';
    if (expired) {
        if (idem_next(ctx, IDEM_REPLACE))
            return;
        goto done;
    }
    if (strcmp(PQgetvalue(row, 0, 2), ctx->endpoint) != 0) {
        sl_http_respond_error(req, 409, "idempotency_key_reused",
                              "this Idempotency-Key was used for another request", -1);
        goto done;
    }
    if (PQgetisnull(row, 0, 0)) {
        if (stale) {
            if (idem_next(ctx, IDEM_TAKEOVER))
                return;
            goto done;
        }
        sl_http_respond_error(req, 409, "idempotency_in_progress",
                              "a request with this Idempotency-Key is in progress", -1);
        goto done;
    }
    long status = strtol(PQgetvalue(row, 0, 0), NULL, 10);
    if (status < 100 || status > 599)
        status = 500;
    /*
     * The replay. The caller's callback runs first, while `req` is certainly
     * still valid (it must only drop its own state); the stored response
     * finishes the request right after.
     */
    ctx->cb(ctx->h.app, req, SL_IDEM_REPLAYED, ctx->h.arg);
    sl_http_resp_header(req, "Idempotent-Replayed", "true");
    if (PQgetisnull(row, 0, 1))
        sl_api_json_text(req, (int)status, "{}", 2);
    else
        sl_api_json_text(req, (int)status, PQgetvalue(row, 0, 1), (size_t)PQgetlength(row, 0, 1));
    free(ctx);
    return;
done:
    release_arg(ctx->h.release, ctx->h.arg);
    free(ctx);
}

static void idem_none_cb(evutil_socket_t fd, short what, void *arg)
{
    idem_ctx_t *ctx = arg;
    (void)fd;
    (void)what;
    ctx->cb(ctx->h.app, ctx->h.req, SL_IDEM_NONE, ctx->h.arg);
    free(ctx);
}

void sl_api_idem_begin(sl_app_t *app, sl_http_req_t *req, const char *tenant_id,
                       const char *endpoint, sl_api_idem_cb cb, void *arg,
                       sl_api_release_fn release)
{
    const char *key = sl_http_req_header(req, "Idempotency-Key");
    idem_ctx_t *ctx;

    if (key != NULL && (key[0] == '\0' || strlen(key) > SL_IDEM_KEY_MAX)) {
        sl_http_respond_error(req, 400, "invalid_idempotency_key",
                              "Idempotency-Key must be 1 to 255 bytes", -1);
        release_arg(release, arg);
        return;
    }
    if (strlen(tenant_id) >= sizeof ctx->tenant_id || strlen(endpoint) >= sizeof ctx->endpoint) {
        sl_http_respond_error(req, 500, "internal_error", "internal error", -1);
        release_arg(release, arg);
        return;
    }
    if ((ctx = ctx_new(sizeof *ctx, app, req, arg, release)) == NULL)
        return;
    ctx->cb = cb;
    snprintf(ctx->tenant_id, sizeof ctx->tenant_id, "%s", tenant_id);
    snprintf(ctx->endpoint, sizeof ctx->endpoint, "%s", endpoint);
    if (key == NULL) {
        /* No header: answer SL_IDEM_NONE on the next loop turn, never inside this call. */
        struct timeval zero = {0, 0};
        if (event_base_once(app->base, -1, EV_TIMEOUT, idem_none_cb, ctx, &zero) != 0) {
            free(ctx);
            sl_http_respond_error(req, 500, "internal_error", "internal error", -1);
            release_arg(release, arg);
        }
        return;
    }
    snprintf(ctx->key, sizeof ctx->key, "%s", key);
    unsigned char rnd[16];
    if (sl_random_bytes(rnd, sizeof rnd) != 0) {
        free(ctx);
        sl_http_respond_error(req, 500, "internal_error", "no randomness", -1);
        release_arg(release, arg);
        return;
    }
    sl_hex(rnd, sizeof rnd, ctx->owner);
    if (!idem_next(ctx, IDEM_RESERVE)) {
        free(ctx);
        release_arg(release, arg);
    }
}

int sl_api_idem_store_stmt(sl_pg_batch_t *b, const char *tenant_id, const char *key, int status,
                           const char *body)
{
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    const char *params[4] = {tenant_id, key, st, body};
    int idx = sl_pg_batch_add(b,
                              "UPDATE idempotency_keys SET status = $3::int, body = $4 "
                              "WHERE tenant_id = $1 AND key = $2",
                              4, params);
    return idx < 0 ? idx : 0;
}

/*
 * Giving a reservation back is retried: a release lost to a dropped
 * connection would leave the key "in progress" for 10 minutes (until the
 * takeover), answering 409 to every retry of the request meanwhile. The
 * retry is sent from the callback itself (no timer that could outlive the
 * pool at shutdown: a freed pool answers SL_ECANCELED, which ends it).
 */
#define SL_IDEM_RELEASE_ATTEMPTS 5

typedef struct idem_rel_s {
    sl_app_t *app;
    int attempts;
    char tenant_id[64];
    char key[SL_IDEM_KEY_MAX + 1];
    char owner[33]; /* "" = whatever reservation is in flight */
} idem_rel_t;

static void idem_rel_send(idem_rel_t *rel);

static void idem_release_cb(const sl_pg_result_t *r, void *arg)
{
    idem_rel_t *rel = arg;
    if (r->err == 0 || r->err == SL_ECANCELED) {
        free(rel);
        return;
    }
    if (rel->attempts < SL_IDEM_RELEASE_ATTEMPTS && r->err != SL_EDB) {
        idem_rel_send(rel); /* frees rel when it cannot send */
        return;
    }
    sl_log(SL_LOG_WARN, "idempotency_release_failed", "{s:s, s:i}", "errmsg",
           r->errmsg ? r->errmsg : "", "attempts", rel->attempts);
    free(rel);
}

static void idem_rel_send(idem_rel_t *rel)
{
    const char *params[3] = {rel->tenant_id, rel->key, rel->owner};
    int err;
    rel->attempts++;
    if (rel->owner[0] != '\0')
        err = sl_pg_query(rel->app->pg,
                          "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 "
                          "AND status IS NULL AND body = $3",
                          3, params, idem_release_cb, rel);
    else
        err = sl_pg_query(rel->app->pg,
                          "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 "
                          "AND status IS NULL",
                          2, params, idem_release_cb, rel);
    if (err != 0) {
        sl_log(SL_LOG_WARN, "idempotency_release_failed", "{s:s}", "errmsg", sl_strerror(err));
        free(rel);
    }
}

static void idem_release_owned(sl_app_t *app, const char *tenant_id, const char *key,
                               const char *owner)
{
    idem_rel_t *rel = calloc(1, sizeof *rel);
    if (rel == NULL)
        return; /* the 10-minute takeover still frees the key */
    rel->app = app;
    snprintf(rel->tenant_id, sizeof rel->tenant_id, "%s", tenant_id);
    snprintf(rel->key, sizeof rel->key, "%s", key);
    snprintf(rel->owner, sizeof rel->owner, "%s", owner ? owner : "");
    idem_rel_send(rel);
}

void sl_api_idem_release(sl_app_t *app, const char *tenant_id, const char *key)
{
    /* If this fails every time the reservation is taken over after 10 minutes. */
    idem_release_owned(app, tenant_id, key, NULL);
}

/* ------------------------------------------------------------------------ */
/* signed blob URLs                                                          */

/* The signature is HMAC-SHA256(signing_key, "<artifact_id>\n<expires>")
 * (api/validate.c). A key that fills its buffer is refused, never truncated. */
static size_t signing_key_len(const sl_app_t *app)
{
    size_t klen = strnlen(app->signing_key, sizeof app->signing_key);
    return klen >= sizeof app->signing_key ? 0 : klen;
}

static int blob_sig(const sl_app_t *app, const char *artifact_id, long long expires, char out[65])
{
    return sl_api_blob_sig(app->signing_key, signing_key_len(app), artifact_id, expires, out);
}

int sl_api_sign_blob_url(const sl_app_t *app, const char *artifact_id, long ttl_s, char *out,
                         size_t outlen, char *expires_at_rfc3339, size_t exlen)
{
    char sig[65];
    long long expires = (long long)time(NULL) + ttl_s;
    int err = blob_sig(app, artifact_id, expires, sig);
    if (err != 0)
        return err;
    int n = snprintf(out, outlen, "/v1/blobs/%s?expires=%lld&sig=%s", artifact_id, expires, sig);
    if (n < 0 || (size_t)n >= outlen)
        return SL_ETOOBIG;
    if (expires_at_rfc3339 != NULL && exlen > 0) {
        struct tm tm;
        time_t t = (time_t)expires;
        if (gmtime_r(&t, &tm) == NULL ||
            strftime(expires_at_rfc3339, exlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
            return SL_ETOOBIG;
    }
    return 0;
}

int sl_api_check_blob_sig(const sl_app_t *app, const char *artifact_id, const char *expires,
                          const char *sig)
{
    return sl_api_blob_sig_verify(app->signing_key, signing_key_len(app), artifact_id, expires, sig,
                                  time(NULL));
}

/* ------------------------------------------------------------------------ */
/* route params                                                              */

int sl_api_route_params(sl_app_t *app, sl_http_req_t *req, sl_http_params_t *out)
{
    sl_http_route_cb cb = NULL;
    void *arg = NULL;
    const char *name = NULL;
    memset(out, 0, sizeof *out);
    if (sl_http_router_match(app->router, sl_http_req_method(req), sl_http_req_path(req), &cb, &arg,
                             out, &name) != 1)
        return SL_ENOTFOUND;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* request parameters shared by the route files                              */

int sl_api_route_uuid(sl_app_t *app, sl_http_req_t *req, char out[37])
{
    sl_http_params_t params;
    out[0] = '\0';
    if (sl_api_route_params(app, req, &params) != 0)
        return -1;
    for (int i = 0; i < params.n && i < 8; i++) {
        if (params.names[i] && strcmp(params.names[i], "id") == 0) {
            if (!sl_is_uuid(params.values[i]))
                return -1;
            memcpy(out, params.values[i], 36);
            out[36] = '\0';
            return 0;
        }
    }
    return -1;
}

int sl_api_query_param(sl_http_req_t *req, const char *name, char *buf, size_t buflen)
{
    int n = sl_http_req_query_param(req, name, buf, buflen);
    if (n >= 0)
        return n;
    size_t nl = strlen(name);
    for (const char *q = sl_http_req_query(req); q && *q;) {
        if (strncmp(q, name, nl) == 0 && (q[nl] == '=' || q[nl] == '&' || q[nl] == '\0'))
            return -2;
        const char *amp = strchr(q, '&');
        if (!amp)
            break;
        q = amp + 1;
    }
    return -1;
}

int sl_api_parse_long(const char *s, long min, long max, long *out)
{
    if (!s || !*s || strlen(s) > 18)
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (errno != 0 || !end || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

size_t sl_api_utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* ---- the engine: direct calls inline, messages to the engine process otherwise ---- */

void sl_api_engine_kick(sl_app_t *app)
{
    if (app->sched)
        sl_sched_kick(app->sched);
    else if (app->link && sl_elink_send(app->link, "kick") != 0)
        sl_log(SL_LOG_DEBUG, "engine_message_dropped", "{s:s}", "message", "kick");
}

void sl_api_engine_cancel_file(sl_app_t *app, const char *file_id)
{
    char msg[SL_ELINK_MSG_MAX];
    if (app->sched) {
        sl_sched_cancel_file(app->sched, file_id);
        return;
    }
    if (!app->link)
        return;
    snprintf(msg, sizeof msg, "cancel %s", file_id);
    /* Dropped: the actors notice at their next commit that the file is gone. */
    if (sl_elink_send(app->link, msg) != 0)
        sl_log(SL_LOG_WARN, "engine_message_dropped", "{s:s, s:s}", "message", "cancel",
               "file_id", file_id);
}

void sl_api_engine_refresh_steps(sl_app_t *app)
{
    char *text = NULL;
    if (app->sched || !app->link || sl_elink_read(app->link, &text, NULL, NULL) != 0)
        return;
    /* {"pipeline": {"steps", "version", "start", "graph"}} (main.c steps_json) */
    json_t *all = json_loads(text, 0, NULL);
    free(text);
    for (int i = 0; json_is_object(all) && i < app->npipelines; i++) {
        sl_pipeline_def_t *p = &app->pipelines[i];
        if (p->origin != SL_PIPE_CONFIG)
            continue; /* issue 14: an API pipeline's flow comes from Postgres (api/pipelines.c) */
        json_t *flow = json_object_get(all, p->name);
        if (!json_is_object(flow) || !json_is_array(json_object_get(flow, "steps")))
            continue;
        json_decref(p->flow);
        p->flow = json_incref(flow);
    }
    json_decref(all);
}

const char *sl_api_engine_state(const sl_app_t *app)
{
    int pid, ready;
    double age;
    if (!app->link)
        return app->sched ? "ok" : "down";
    sl_elink_engine_state(app->link, &pid, &age, &ready);
    if (pid == 0 || !ready)
        return "down";
    return age > 2.0 ? "stalled" : "ok";
}
