/*
 * artifacts.c — downloading artifacts: by id with an API key, as signed
 * expiring URLs, and through those URLs without a key; plus the streaming
 * helper every download path shares (sl_api_stream_blob, also used for a
 * file's original content).
 *
 * Downloads are streamed from storage with backpressure: a 256 KiB chunk is
 * read, written to the client, and the next read starts only once the client
 * has taken it (the drain callback), so a slow client of a 1 GiB artifact
 * holds one chunk of memory, not the artifact.
 *
 * /v1/blobs/{id} takes no API key: the signature over (id, expires) is the
 * capability, so the artifact is looked up by id alone.
 */
#include "api/api.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "core/sigv4.h"   /* SL_SIGV4_EXPIRES_MAX */
#include "core/storage.h" /* sl_store_presign_get */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* retention: an artifact of a file in a deleted dataset is gone (docs/lifecycle.md). */
#define SL_ARTIFACT_LIVE                                                                           \
    " AND NOT EXISTS (SELECT 1 FROM files f WHERE f.id = artifacts.file_id"                       \
    " AND sluice_dataset_gone(f.dataset_id))"

#define STREAM_CHUNK (256 * 1024)
#define URL_TTL_DEFAULT 3600
#define URL_TTL_MAX 604800
#define SIGNED_URL_MAX 512

/* ---- streaming ---- */

typedef struct blob_stream_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char key[SL_STORE_KEY_MAX];
    char mime[SL_STORE_MIME_MAX];
    uint64_t size;
    uint64_t off;      /* bytes sent so far */
    int started;       /* status line and headers are out */
    int reading;       /* a storage read is in flight (its callback owns the next step) */
    int waiting_drain; /* waiting for the client to take the last chunk */
    int closed;        /* the client went away */
} blob_stream_t;

static void stream_read_next(blob_stream_t *bs);

/* Stored content is the client's own upload: never let a browser sniff or run it. */
static void blob_headers(sl_http_req_t *req)
{
    sl_http_resp_header(req, "X-Content-Type-Options", "nosniff");
    sl_http_resp_header(req, "Content-Security-Policy", "sandbox");
    sl_http_resp_header(req, "Cache-Control", "private, max-age=0");
}

/*
 * Finishes the request exactly once and frees the stream. Before the headers
 * are out a failure is a proper error response; after, the response can only
 * be cut short (the client sees fewer bytes than Content-Length).
 */
static void stream_finish(blob_stream_t *bs, int status, const char *code, const char *msg)
{
    sl_http_req_t *req = bs->req;
    sl_http_resp_on_drain(req, NULL, NULL);
    sl_http_req_on_close(req, NULL, NULL);
    if (!bs->started)
        sl_http_respond_error(req, status, code, msg, status == 503 ? 2 : -1);
    else
        sl_http_resp_end(req);
    free(bs);
}

static void stream_close_cb(sl_http_req_t *req, void *arg)
{
    blob_stream_t *bs = arg;
    (void)req;
    bs->closed = 1;
    if (!bs->reading) /* else the read callback finishes */
        stream_finish(bs, 499, "client_closed", "the client went away");
}

static void stream_drain_cb(sl_http_req_t *req, void *arg)
{
    blob_stream_t *bs = arg;
    (void)req;
    if (!bs->waiting_drain || bs->reading)
        return;
    bs->waiting_drain = 0;
    stream_read_next(bs);
}

static void stream_read_cb(int err, const char *data, size_t n, void *arg)
{
    blob_stream_t *bs = arg;
    bs->reading = 0;
    if (bs->closed) {
        stream_finish(bs, 499, "client_closed", "the client went away");
        return;
    }
    if (err || n == 0) {
        /* n == 0 before size bytes: the object is shorter than its row says. */
        sl_log(SL_LOG_ERROR, "blob_read_failed", "{s:s, s:s, s:s, s:I, s:I}", "request_id",
               sl_http_req_id(bs->req), "storage_key", bs->key, "error",
               err ? sl_strerror(err) : "short object", "offset", (json_int_t)bs->off, "size",
               (json_int_t)bs->size);
        if (err == SL_ENOTFOUND)
            stream_finish(bs, 404, "not_found", "the stored object is missing");
        else if (err)
            stream_finish(bs, 503, "storage_unavailable", "cannot read from storage");
        else
            stream_finish(bs, 500, "internal_error", "the stored object is truncated");
        return;
    }
    if (n > bs->size - bs->off)
        n = (size_t)(bs->size - bs->off);
    if (!bs->started) {
        bs->started = 1;
        blob_headers(bs->req);
        sl_http_resp_start(bs->req, 200, bs->mime, (int64_t)bs->size);
    }
    if (sl_http_resp_write(bs->req, data, n) != 0) {
        stream_finish(bs, 499, "client_closed", "the client went away");
        return;
    }
    bs->off += n;
    if (bs->off >= bs->size) {
        stream_finish(bs, 200, NULL, NULL);
        return;
    }
    if (sl_http_resp_pending(bs->req) == 0) {
        stream_read_next(bs);
        return;
    }
    bs->waiting_drain = 1; /* stream_drain_cb starts the next read */
}

static void stream_read_next(blob_stream_t *bs)
{
    uint64_t left = bs->size - bs->off;
    size_t len = left < STREAM_CHUNK ? (size_t)left : STREAM_CHUNK;
    int err = sl_store_read(bs->app->store, bs->key, bs->off, len, stream_read_cb, bs);
    if (err) {
        sl_log(SL_LOG_ERROR, "blob_read_failed", "{s:s, s:s, s:s}", "request_id",
               sl_http_req_id(bs->req), "storage_key", bs->key, "error", sl_strerror(err));
        stream_finish(bs, 503, "storage_unavailable", "cannot read from storage");
        return;
    }
    bs->reading = 1;
}

void sl_api_stream_blob(sl_app_t *app, sl_http_req_t *req, const char *storage_key,
                        const char *mime, uint64_t size)
{
    if (!storage_key || strlen(storage_key) >= SL_STORE_KEY_MAX) {
        sl_http_respond_error(req, 500, "internal_error", "bad storage key", -1);
        return;
    }
    if (size == 0) {
        sl_http_resp_header(req, "X-Content-Type-Options", "nosniff");
        sl_http_resp_start(req, 200, mime && *mime ? mime : "application/octet-stream", 0);
        sl_http_resp_end(req);
        return;
    }
    blob_stream_t *bs = calloc(1, sizeof *bs);
    if (!bs) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    bs->app = app;
    bs->req = req;
    bs->size = size;
    snprintf(bs->key, sizeof bs->key, "%s", storage_key);
    snprintf(bs->mime, sizeof bs->mime, "%s", mime && *mime ? mime : "application/octet-stream");
    sl_http_req_on_close(req, stream_close_cb, bs);
    sl_http_resp_on_drain(req, stream_drain_cb, bs);
    stream_read_next(bs);
}

/* ---- helpers ---- */

typedef struct art_req_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char id[37];
    long ttl;
    long expires; /* /v1/blobs: the signed URL's end (unix seconds) */
} art_req_t;


static art_req_t *art_req_new(sl_app_t *app, sl_http_req_t *req, const char *id)
{
    art_req_t *ar = calloc(1, sizeof *ar);
    if (!ar) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return NULL;
    }
    ar->app = app;
    ar->req = req;
    size_t n = strnlen(id, sizeof ar->id - 1); /* a checked UUID: 36 bytes */
    memcpy(ar->id, id, n);
    ar->id[n] = '\0';
    return ar;
}

/* One statement with ar as the callback argument; answers 503 and frees ar if it cannot be sent. */
static void art_query(art_req_t *ar, const char *sql, int nparams, const char *const *params,
                      sl_pg_cb cb)
{
    if (sl_pg_query(ar->app->pg, sql, nparams, params, cb, ar) != 0) {
        sl_http_respond_error(ar->req, 503, "database_unavailable", "the database is unavailable",
                              2);
        free(ar);
    }
}

/* The columns every download reads: where the bytes are (a key, or the row's
 * own data: small artifacts, migration 018), their type and size. */
#define ART_COLS "storage_key, mime, size, data"

/* Answers with the bytes row 0 holds itself (column 3, a small artifact). */
static void send_row_bytes(sl_http_req_t *req, const PGresult *res)
{
    size_t n = 0;
    unsigned char *b = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, 3), &n);
    const char *mime = PQgetvalue(res, 0, 1);
    if (!b) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    blob_headers(req);
    sl_http_resp_start(req, 200, *mime ? mime : "application/octet-stream", (int64_t)n);
    if (n > 0)
        (void)sl_http_resp_write(req, b, n); /* a client gone: ended all the same, as a stream */
    sl_http_resp_end(req);
    PQfreemem(b);
}

/* Streams row 0 of (ART_COLS), or 404. */
static void stream_row_cb(const sl_pg_result_t *r, void *arg)
{
    art_req_t *ar = arg;
    if (r->err) {
        sl_api_db_error(ar->req, r);
    } else if (PQntuples(r->res[0]) < 1) {
        sl_http_respond_error(ar->req, 404, "not_found", "no such artifact", -1);
    } else if (!PQgetisnull(r->res[0], 0, 3)) {
        send_row_bytes(ar->req, r->res[0]);
    } else {
        PGresult *res = r->res[0];
        uint64_t size = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
        sl_api_stream_blob(ar->app, ar->req, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), size);
    }
    free(ar);
}

/* ---- GET /v1/artifacts/{id} ---- */

static void get_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37];
    if (sl_api_route_uuid(app, req, id) != 0) {
        sl_http_respond_error(req, 404, "not_found", "no such artifact", -1);
        return;
    }
    art_req_t *ar = art_req_new(app, req, id);
    if (!ar)
        return;
    const char *params[] = {tenant_id, ar->id};
    art_query(ar, "SELECT " ART_COLS " FROM artifacts WHERE tenant_id = $1 AND id = $2"
              SL_ARTIFACT_LIVE,
              2, params, stream_row_cb);
}

static void route_get(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, get_auth_cb, NULL);
}

/* ---- GET /v1/artifacts/{id}/url?ttl= ---- */

static void url_done_cb(const sl_pg_result_t *r, void *arg)
{
    art_req_t *ar = arg;
    char url[SIGNED_URL_MAX], expires_at[64];
    if (r->err) {
        sl_api_db_error(ar->req, r);
    } else if (PQntuples(r->res[0]) < 1) {
        sl_http_respond_error(ar->req, 404, "not_found", "no such artifact", -1);
    } else if (sl_api_sign_blob_url(ar->app, ar->id, ar->ttl, url, sizeof url, expires_at,
                                    sizeof expires_at) != 0) {
        sl_http_respond_error(ar->req, 500, "internal_error", "cannot sign the URL", -1);
    } else {
        json_t *v = json_pack("{s:s, s:s}", "url", url, "expires_at", expires_at);
        if (v)
            sl_api_json(ar->req, 200, v);
        else
            sl_http_respond_error(ar->req, 500, "internal_error", "out of memory", -1);
    }
    free(ar);
}

static void url_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37], buf[32];
    if (sl_api_route_uuid(app, req, id) != 0) {
        sl_http_respond_error(req, 404, "not_found", "no such artifact", -1);
        return;
    }
    long ttl = URL_TTL_DEFAULT;
    int n = sl_api_query_param(req, "ttl", buf, sizeof buf);
    if (n != -1 && (n < 0 || sl_api_parse_long(buf, 1, URL_TTL_MAX, &ttl) != 0)) {
        sl_http_respond_error(req, 400, "invalid_request", "ttl must be an integer in 1..604800",
                              -1);
        return;
    }
    art_req_t *ar = art_req_new(app, req, id);
    if (!ar)
        return;
    ar->ttl = ttl;
    const char *params[] = {tenant_id, ar->id};
    art_query(ar, "SELECT 1 FROM artifacts WHERE tenant_id = $1 AND id = $2" SL_ARTIFACT_LIVE, 2, params,
              url_done_cb);
}

static void route_url(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, url_auth_cb, NULL);
}

/* ---- GET /v1/blobs/{id}?expires=&sig= (no API key) ---- */

/*
 * storage.presigned_redirects: a valid signed URL answers 307 to a presigned
 * S3 URL of the blob that ends when the signed URL does (at most 7 days, SigV4's
 * limit), so the bytes go from S3 to the client without passing through here.
 * An artifact whose row holds its bytes (migration 018) has no object there:
 * it is answered here, 200 with the bytes.
 */
static void redirect_row_cb(const sl_pg_result_t *r, void *arg)
{
    art_req_t *ar = arg;
    char url[4096];
    long left = ar->expires - (long)time(NULL);
    if (left > SL_SIGV4_EXPIRES_MAX)
        left = SL_SIGV4_EXPIRES_MAX;
    if (r->err) {
        sl_api_db_error(ar->req, r);
    } else if (PQntuples(r->res[0]) < 1) {
        sl_http_respond_error(ar->req, 404, "not_found", "no such artifact", -1);
    } else if (left < 1) {
        sl_http_respond_error(ar->req, 403, "url_expired", "the signed URL has expired", -1);
    } else if (!PQgetisnull(r->res[0], 0, 3)) {
        send_row_bytes(ar->req, r->res[0]); /* no object in S3 to send the client to */
    } else if (sl_store_presign_get(ar->app->store, PQgetvalue(r->res[0], 0, 0),
                                    PQgetvalue(r->res[0], 0, 1), left, url, sizeof url) != 0) {
        sl_log(SL_LOG_ERROR, "presign_failed", "{s:s}", "artifact_id", ar->id);
        sl_http_respond_error(ar->req, 500, "internal_error", "cannot presign the blob's URL",
                              -1);
    } else {
        sl_http_resp_header(ar->req, "Location", url);
        sl_http_resp_header(ar->req, "Cache-Control", "private, no-store");
        sl_http_respond(ar->req, 307, NULL, NULL, 0);
    }
    free(ar);
}

static void route_blob(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    char expires[32], sig[160];
    const char *id = params->n > 0 ? params->values[0] : "";
    int ne = sl_http_req_query_param(req, "expires", expires, sizeof expires);
    int ns = sl_http_req_query_param(req, "sig", sig, sizeof sig);
    if (ne <= 0 || ns <= 0 || !sl_api_check_blob_sig(app, id, expires, sig)) {
        /*
         * Tell an expired link from a forged one so a client knows to ask for
         * a fresh URL; both are 403 and neither reveals whether the id exists.
         */
        long exp;
        int expired = ne > 0 && ns == 64 &&
                      sl_api_parse_long(expires, 0, 999999999999999999L, &exp) == 0 &&
                      (time_t)exp <= time(NULL);
        if (expired)
            sl_http_respond_error(req, 403, "url_expired", "the signed URL has expired", -1);
        else
            sl_http_respond_error(req, 403, "invalid_signature", "the URL signature is invalid",
                                  -1);
        return;
    }
    if (!sl_is_uuid(id)) {
        sl_http_respond_error(req, 404, "not_found", "no such artifact", -1);
        return;
    }
    art_req_t *ar = art_req_new(app, req, id);
    if (!ar)
        return;
    const char *qp[] = {ar->id};
    const char *ps = app->cfg->s3_presigned_redirects;
    int redirect = ps && strcmp(ps, "true") == 0 &&
                   sl_api_parse_long(expires, 0, 999999999999999999L, &ar->expires) == 0;
    art_query(ar, "SELECT " ART_COLS " FROM artifacts WHERE id = $1" SL_ARTIFACT_LIVE, 1, qp,
              redirect ? redirect_row_cb : stream_row_cb);
}

void sl_api_register_artifacts(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/v1/artifacts/{id}", "artifacts_get", route_get, app);
    sl_http_router_add(app->router, "GET", "/v1/artifacts/{id}/url", "artifacts_url", route_url,
                       app);
    sl_http_router_add(app->router, "GET", "/v1/blobs/{id}", "blobs_get", route_blob, app);
}
