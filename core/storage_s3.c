/*
 * storage_s3.c — the storage interface's S3 backend: it fills the table of
 * operations of core/storage_int.h with S3 REST calls made through the
 * project's curl-multi wrapper (core/curl.h) on the loop, signed with SigV4
 * (core/sigv4.h, SL_SIGV4_S3: only the headers that are sent are signed, the
 * payload's SHA-256 is sent as x-amz-content-sha256).
 *
 * Writing: the writer fills one part buffer (part_size, 8 MiB by default). An
 * object smaller than one part is one PutObject at commit. The first time the
 * buffer fills, CreateMultipartUpload starts an upload and each full buffer
 * goes out as UploadPart while the next one fills; commit sends the rest as
 * the last part and CompleteMultipartUpload. One request at a time per
 * writer; while a part is in flight and the next buffer is full, the bytes
 * the writer accepts are not reported written, so sl_store_pending() climbs
 * past SL_STORE_HIGH_WATER and the producer pauses until the part is done:
 * the fs backend's backpressure contract, with memory per upload bounded by
 * about two parts (the buffer and curl's copy of the part in flight), never
 * by the object's size. SHA-256 (whole object) and the first 64 KiB (for
 * libmagic, sniffed on the worker pool) are taken as bytes arrive; each part
 * also carries x-amz-checksum-sha256 (the upload is created with
 * x-amz-checksum-algorithm SHA256).
 *
 * All or nothing: an aborted writer, or a failed commit, ends with
 * AbortMultipartUpload (a CreateMultipartUpload in flight is waited for, not
 * cancelled, so its upload id is known and aborted). If that abort cannot be
 * sent (S3 down), the upload is left for a sweeper (not written yet).
 *
 * Reading: ranged GET (<= 1 MiB per sl_store_read), HEAD for stat, DELETE
 * for delete, and fetch_local streams 8 MiB ranged GETs into a file.
 *
 * Errors: no connection, a timeout or a 5xx are SL_EUNAVAIL (uploads answer
 * 503 with Retry-After); 404 is SL_ENOTFOUND; anything else SL_EIO, logged.
 */
#include "crypto.h"
#include "curl.h"
#include "err.h"
#include "log.h"
#include "sniff.h"
#include "storage_int.h"

#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S3_HEAD_MAX (64 * 1024)         /* bytes libmagic sees, as fs */
#define S3_READ_MAX (1024 * 1024)       /* one sl_store_read returns at most this, as fs */
#define S3_FETCH_STEP (8 * 1024 * 1024) /* fetch_local's ranged GETs */
#define S3_URL_MAX 2048
#define S3_ID_MAX 1024 /* an UploadId */
#define S3_ETAG_MAX 128
#define S3_PART_TIMEOUT_MS 120000L /* one part, PutObject or ranged GET: >= 70 KB/s for 8 MiB */
#define S3_SMALL_TIMEOUT_MS 30000L /* everything else */
#define S3_MAX_PARTS 10000         /* S3's limit */
#define S3_FETCH_WAIT_MS (10L * 60 * 1000) /* a local copy waits this long for S3 to come back */
#define S3_RETRY_FIRST_MS 250L             /* then doubling ... */
#define S3_RETRY_MAX_MS 15000L             /* ... up to this */

typedef struct s3_store_s {
    sl_store_t base;
    sl_curl_t *curl;        /* owned: storage's transfers have a multi handle of their own */
    struct event_base *evb; /* borrowed */
    char scheme_host[512];  /* "http://127.0.0.1:4568" (no trailing '/') */
    char host_only[300];    /* virtual host: "host[:port]" */
    char scheme[8];
    char *bucket;
    int path_style;
    size_t part_size;
    char region[64];
    char *akid, *secret, *token; /* owned */
    sl_sniff_t *sniff;           /* owned: libmagic cookies, used on the pool (core/sniff.h) */
    struct s3_writer_s *live; /* loop: open writers (the sweeper spares their uploads) */
    char prefixes[SL_STORE_PREFIXES_MAX][64]; /* own key prefixes: the sweeper's scope */
    int nprefixes;
    long stale_after_s;       /* sweeper: abort uploads older than this; < 0: off */
    struct event *sweep_ev;   /* owned: the periodic sweep, or NULL */
    struct s3_sweep_s *sweep; /* the sweep running, or NULL */
    struct s3_op_s *waiting;  /* loop: fetch_local copies waiting to retry (S3 down) */
    int jobs;                 /* loop: pool jobs (hash, sniff) whose done callback has not run */
    int closing; /* s3_free ran while jobs > 0: the last done callback frees the store */
} s3_store_t;

typedef struct s3_part_s {
    char etag[S3_ETAG_MAX];
    char cksum[48]; /* base64 SHA-256 */
} s3_part_t;

enum { X_NONE, X_CREATE, X_PART, X_PUT, X_COMPLETE };

/*
 * A part on its way out. ship_part() moves the full buffer here and queues
 * hash_work() on the pool; from then until hash_done() runs on the loop the
 * job owns `buf` and the writer's `sha`: the loop neither reads nor writes
 * them (it fills a fresh buffer meanwhile, and nothing else uses `sha`
 * before commit, which waits for the job). hash_done() hands `buf` to curl
 * (which copies it) and frees it.
 */
typedef struct s3_ship_s {
    char *buf; /* owned by the job while hashing, then by hash_done */
    size_t len;
    int whole;            /* PutObject (no upload) rather than UploadPart */
    int err;              /* worker: a digest failed */
    unsigned char md[32]; /* worker: SHA-256 of buf */
} s3_ship_t;

typedef struct s3_writer_s {
    sl_store_writer_t base;
    s3_store_t *st;
    struct s3_writer_s *live_prev, *live_next; /* st->live */
    char key[SL_STORE_KEY_MAX + 1];
    char *buf; /* loop: the part being filled; cap grows past part_size only by what one write
                  brings */
    size_t len, cap;
    EVP_MD_CTX *sha; /* whole object: updated by hash_work on the pool, one part at a time */
    s3_ship_t ship;  /* the part being hashed (hashing != 0) */
    int hashing;     /* loop: hash_work is queued or running; counts as a request in flight */
    uint64_t size;
    char *head; /* first S3_HEAD_MAX bytes */
    size_t head_len;
    char upload_id[S3_ID_MAX];
    s3_part_t *parts;
    int nparts, parts_cap;
    sl_curl_xfer_t *xfer; /* the request in flight, or NULL */
    int xkind;            /* X_* of xfer */
    size_t unreported;    /* bytes accepted and not yet reported written */
    int blocked;          /* buffer full while a request is in flight: hold the report */
    struct event *report_ev;
    int err; /* sticky */
    int committing, sniffing, aborted;
    int finalized; /* sha finalised into info.sha256_hex */
    int orphaned;  /* the store was freed first (a pool job was pending): no more requests */
    sl_store_info_t info;
} s3_writer_t;

/* ---- helpers ---- */

static void writer_kick(s3_writer_t *w);
static void commit_step(s3_writer_t *w);
static void abort_step(s3_writer_t *w);

static int map_result(const sl_curl_result_t *res)
{
    if (res->err == SL_ECANCELED)
        return SL_ECANCELED;
    if (res->err)
        return SL_EUNAVAIL; /* refused, timed out, reset: S3 is down for us */
    if (res->status >= 200 && res->status < 300)
        return 0;
    if (res->status == 404)
        return SL_ENOTFOUND;
    if (res->status >= 500 || res->status == 429)
        return SL_EUNAVAIL;
    return SL_EIO;
}

static void log_failure(const char *what, const char *key, const sl_curl_result_t *res)
{
    char snippet[200];
    size_t n = res->body_len < sizeof snippet - 1 ? res->body_len : sizeof snippet - 1;
    memcpy(snippet, res->body, n);
    snippet[n] = '\0';
    sl_log(SL_LOG_WARN, "s3_request_failed", "{s:s, s:s, s:i, s:s, s:s}", "op", what, "key",
           key ? key : "", "status", (int)res->status, "error", res->errmsg, "body", snippet);
}

static const char *header_value(const sl_curl_result_t *res, const char *name)
{
    for (size_t i = 0; i < res->n_headers; i++)
        if (strcasecmp(res->headers[i].name, name) == 0)
            return res->headers[i].value;
    return NULL;
}

/* The text of the first <tag>...</tag> in body, copied into out[cap]. */
static int xml_text(const char *body, const char *tag, char *out, size_t cap)
{
    char open[64], close[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *a = strstr(body, open);
    if (!a)
        return SL_EPROTO;
    a += strlen(open);
    const char *b = strstr(a, close);
    if (!b || (size_t)(b - a) >= cap)
        return SL_EPROTO;
    memcpy(out, a, (size_t)(b - a));
    out[b - a] = '\0';
    return 0;
}

/* Percent-encodes s (RFC 3986 unreserved kept) for a query value. */
static int query_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_' || c == '.' || c == '~';
        if (o + 4 > cap)
            return SL_ETOOBIG;
        if (keep) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

/* The object's URL, with an optional query ("uploads", "partNumber=1&..."). Keys
 * are [A-Za-z0-9/_.-] (sl_store_key_valid), so the path needs no escaping. */
static int object_url(const s3_store_t *st, const char *key, const char *query, char *out,
                      size_t cap)
{
    int n;
    if (st->path_style)
        n = snprintf(out, cap, "%s/%s/%s%s%s", st->scheme_host, st->bucket, key, query ? "?" : "",
                     query ? query : "");
    else
        n = snprintf(out, cap, "%s://%s.%s/%s%s%s", st->scheme, st->bucket, st->host_only, key,
                     query ? "?" : "", query ? query : "");
    return (n < 0 || (size_t)n >= cap) ? SL_ETOOBIG : 0;
}

/* payload_hex: the body's hex SHA-256 when the caller has it (hashed on the
 * pool), else NULL (curl hashes a memory body: small ones only). */
static int s3_request(s3_store_t *st, const char *method, const char *url,
                      const char *const *headers, size_t n_headers, const void *body,
                      size_t body_len, const char *payload_hex, long timeout_ms, size_t max_resp,
                      sl_curl_cb cb, void *arg, sl_curl_xfer_t **out)
{
    sl_sigv4_creds_t creds = {.access_key_id = st->akid,
                              .secret_access_key = st->secret,
                              .session_token = st->token,
                              .region = st->region,
                              .service = "s3"};
    if (!st->curl)
        return SL_ECLOSED; /* the store is being freed */
    sl_curl_req_opts_t o = {.method = method,
                            .url = url,
                            .headers = headers,
                            .n_headers = n_headers,
                            .body = body,
                            .body_len = body_len,
                            .timeout_ms = timeout_ms,
                            .max_response_bytes = max_resp,
                            .sigv4 = &creds,
                            .sigv4_flags = SL_SIGV4_S3,
                            .sigv4_payload_sha256 = payload_hex};
    return sl_curl_request(st->curl, &o, cb, arg, out);
}

/* ---- writer: reporting bytes written (backpressure) ---- */

/* On a later loop turn: bytes accepted while the buffer had room count as
 * written (they left the producer's hands into bounded memory). */
static void report_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s3_writer_t *w = arg;
    if (w->blocked && !w->err)
        return;
    size_t n = w->unreported;
    w->unreported = 0;
    if (n)
        sl_store__written(&w->base, n);
}

static void schedule_report(s3_writer_t *w)
{
    if (w->unreported && (!w->blocked || w->err))
        event_active(w->report_ev, 0, 0);
}

/* ---- writer: requests ---- */

static void writer_free(s3_writer_t *w)
{
    if (!w->orphaned) { /* (an orphan is in no list: s3_free emptied it) */
        if (w->live_prev)
            w->live_prev->live_next = w->live_next;
        else if (w->st->live == w)
            w->st->live = w->live_next;
        if (w->live_next)
            w->live_next->live_prev = w->live_prev;
    }
    if (w->report_ev)
        event_free(w->report_ev);
    if (w->sha)
        EVP_MD_CTX_free(w->sha);
    free(w->buf);
    free(w->ship.buf);
    free(w->head);
    free(w->parts);
    free(w);
}

/* A fire-and-forget AbortMultipartUpload (it outlives the writer). */
typedef struct abort_op_s {
    char key[SL_STORE_KEY_MAX + 1];
} abort_op_t;

static void abort_sent_cb(const sl_curl_result_t *res, void *arg)
{
    abort_op_t *op = arg;
    int err = map_result(res);
    if (err && err != SL_ENOTFOUND)
        log_failure("AbortMultipartUpload", op->key, res);
    free(op);
}

static void send_abort(s3_store_t *st, const char *key, const char *upload_id)
{
    char q[S3_ID_MAX * 3 + 16], id[S3_ID_MAX * 3];
    char url[S3_URL_MAX];
    abort_op_t *op = calloc(1, sizeof *op);
    if (!op || query_escape(upload_id, id, sizeof id) != 0)
        goto fail;
    snprintf(op->key, sizeof op->key, "%s", key);
    snprintf(q, sizeof q, "uploadId=%s", id);
    if (object_url(st, key, q, url, sizeof url) != 0)
        goto fail;
    if (s3_request(st, "DELETE", url, NULL, 0, NULL, 0, NULL, S3_SMALL_TIMEOUT_MS, 0, abort_sent_cb,
                   op, NULL) != 0)
        goto fail;
    return;
fail:
    sl_log(SL_LOG_WARN, "s3_abort_not_sent", "{s:s, s:s}", "key", key, "upload_id", upload_id);
    free(op);
}

static void xfer_done_cb(const sl_curl_result_t *res, void *arg)
{
    s3_writer_t *w = arg;
    int kind = w->xkind;
    w->xfer = NULL;
    w->xkind = X_NONE;
    int err = map_result(res);
    if (err == 0 && kind == X_CREATE &&
        xml_text(res->body, "UploadId", w->upload_id, sizeof w->upload_id) != 0)
        err = SL_EPROTO;
    if (err == 0 && kind == X_PART) {
        const char *etag = header_value(res, "ETag");
        if (!etag || strlen(etag) >= S3_ETAG_MAX)
            err = SL_EPROTO;
        else
            snprintf(w->parts[w->nparts - 1].etag, S3_ETAG_MAX, "%s", etag);
    }
    /* CompleteMultipartUpload can answer 200 with an <Error> body. */
    if (err == 0 && kind == X_COMPLETE && strstr(res->body, "<Error>"))
        err = SL_EIO;
    if (err && err != SL_ECANCELED) {
        static const char *const names[] = {"", "CreateMultipartUpload", "UploadPart", "PutObject",
                                            "CompleteMultipartUpload"};
        log_failure(names[kind], w->key, res);
    }
    if (err && !w->err)
        w->err = err == SL_ENOTFOUND ? SL_EIO : err; /* a 404 on a write: bucket gone */
    if (w->aborted) {
        abort_step(w);
        return;
    }
    if (kind == X_PUT || kind == X_COMPLETE) {
        commit_step(w); /* finishes */
        return;
    }
    writer_kick(w);
    if (w->committing && !w->sniffing)
        commit_step(w);
}

static int start_create(s3_writer_t *w)
{
    char url[S3_URL_MAX];
    const char *hdr[] = {"x-amz-checksum-algorithm: SHA256"};
    int err = object_url(w->st, w->key, "uploads", url, sizeof url);
    if (err == 0)
        err = s3_request(w->st, "POST", url, hdr, 1, NULL, 0, NULL, S3_SMALL_TIMEOUT_MS, 0,
                         xfer_done_cb, w, &w->xfer);
    if (err == 0)
        w->xkind = X_CREATE;
    return err;
}

/*
 * Ships the buffer as part nparts+1 (UploadPart) or as the whole object
 * (PutObject when there is no upload): the buffer moves to w->ship (a fresh
 * one fills meanwhile) and the pool hashes it, since ~8 MiB of SHA-256 twice
 * (the part's digest and the object's running one) is 10+ ms the loop must
 * not spend. hash_done() sends it. The job counts as the request in flight.
 */
static void hash_work(void *arg);
static void hash_done(void *arg);
static void hash_step(s3_writer_t *w);

static int ship_part(s3_writer_t *w)
{
    int whole = w->upload_id[0] == '\0';
    if (!whole && w->nparts >= S3_MAX_PARTS)
        return SL_ETOOBIG;
    if (!whole && w->nparts == w->parts_cap) {
        int cap = w->parts_cap ? w->parts_cap * 2 : 16;
        s3_part_t *p = realloc(w->parts, (size_t)cap * sizeof *p);
        if (!p)
            return SL_ENOMEM;
        w->parts = p;
        w->parts_cap = cap;
    }
    w->ship.buf = w->buf; /* taken by the job until hash_done */
    w->ship.len = w->len;
    w->ship.whole = whole;
    w->ship.err = 0;
    /* Serial key w: the object's SHA-256 takes the parts in order (and after
     * the commit's sniff job, which does not touch sha). */
    int err = sl_workq_submit(w->st->base.wq, w, hash_work, hash_done, w);
    if (err) {
        w->ship.buf = NULL;
        return err; /* the buffer stays the loop's */
    }
    w->buf = NULL; /* the next write allocates a fresh buffer */
    w->len = w->cap = 0;
    w->hashing = 1;
    w->st->jobs++;
    return 0;
}

/* Pool: the part's digest and the object's running one. Touches only
 * w->ship and w->sha (see s3_ship_t). */
static void hash_work(void *arg)
{
    s3_writer_t *w = arg;
    const char *b = w->ship.buf ? w->ship.buf : "";
    if (EVP_DigestUpdate(w->sha, b, w->ship.len) != 1 ||
        EVP_Digest(b, w->ship.len, w->ship.md, NULL, EVP_sha256(), NULL) != 1)
        w->ship.err = SL_ENOMEM;
}

/* Loop: the part is hashed; send it with its digest as both the payload hash
 * (x-amz-content-sha256, signed) and x-amz-checksum-sha256. curl copies the
 * body, so the part's buffer is freed here. */
static int send_part(s3_writer_t *w)
{
    char url[S3_URL_MAX], q[S3_ID_MAX * 3 + 64], id[S3_ID_MAX * 3];
    char cks[96], hex[65];
    unsigned char b64[48];
    int err;

    if (w->ship.err)
        return w->ship.err;
    /* x-amz-checksum-sha256: base64 of the part's SHA-256; S3 checks it and
     * keeps it (the payload hash in the signature is checked as well). */
    EVP_EncodeBlock(b64, w->ship.md, 32);
    sl_hex(w->ship.md, 32, hex);
    snprintf(cks, sizeof cks, "x-amz-checksum-sha256: %s", (const char *)b64);
    const char *hdr[] = {cks};
    if (w->ship.whole) {
        err = object_url(w->st, w->key, NULL, url, sizeof url);
    } else {
        if ((err = query_escape(w->upload_id, id, sizeof id)) != 0)
            return err;
        snprintf(q, sizeof q, "partNumber=%d&uploadId=%s", w->nparts + 1, id);
        err = object_url(w->st, w->key, q, url, sizeof url);
    }
    if (err)
        return err;
    err = s3_request(w->st, "PUT", url, hdr, 1, w->ship.buf ? w->ship.buf : "", w->ship.len, hex,
                     S3_PART_TIMEOUT_MS, 0, xfer_done_cb, w, &w->xfer);
    if (err)
        return err;
    w->xkind = w->ship.whole ? X_PUT : X_PART;
    if (!w->ship.whole) {
        s3_part_t *p = &w->parts[w->nparts++];
        p->etag[0] = '\0';
        snprintf(p->cksum, sizeof p->cksum, "%s", (const char *)b64);
    }
    return 0;
}

static void store_job_done(s3_store_t *st);

static void hash_done(void *arg)
{
    s3_writer_t *w = arg;
    s3_store_t *st = w->st; /* alive until store_job_done */
    hash_step(w);
    store_job_done(st);
}

static void hash_step(s3_writer_t *w)
{
    w->hashing = 0;
    int err = w->orphaned ? SL_ECANCELED : 0; /* the store (and its curl) is gone */
    if (!err && !w->aborted && !w->err)
        err = send_part(w);
    free(w->ship.buf); /* curl has its copy */
    w->ship.buf = NULL;
    w->ship.len = 0;
    if (err && !w->err)
        w->err = err;
    if (w->aborted) {
        abort_step(w);
        return;
    }
    if (w->xfer)
        return; /* xfer_done_cb carries on */
    writer_kick(w);
    commit_step(w);
}

/* What the writer does next when nothing is in flight: ship a full buffer
 * (creating the upload first), then let held bytes count as written. */
static void writer_kick(s3_writer_t *w)
{
    if (w->xfer || w->hashing || w->err || w->aborted)
        goto report;
    if (w->len >= w->st->part_size) {
        int err = w->upload_id[0] ? ship_part(w) : start_create(w);
        if (err && !w->err)
            w->err = err;
    }
report:
    /* Held while a full buffer waits for the request in flight. */
    w->blocked = !w->err && w->len >= w->st->part_size && (w->xfer || w->hashing);
    schedule_report(w);
}

/* ---- writer: ops ---- */

static int s3_put_begin(sl_store_t *base, const char *key, sl_store_writer_t **out)
{
    s3_store_t *st = (s3_store_t *)base;
    s3_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return SL_ENOMEM;
    w->st = st;
    snprintf(w->key, sizeof w->key, "%s", key);
    w->base.st = base;
    w->base.state = SL_STORE__W_OPEN;
    if (!(w->sha = EVP_MD_CTX_new()) || EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1 ||
        !(w->head = malloc(S3_HEAD_MAX)) ||
        !(w->report_ev = event_new(st->evb, -1, 0, report_cb, w))) {
        writer_free(w);
        return SL_ENOMEM;
    }
    w->live_next = st->live;
    if (st->live)
        st->live->live_prev = w;
    st->live = w;
    *out = &w->base;
    return 0;
}

static int s3_write(sl_store_writer_t *base, const void *data, size_t len)
{
    s3_writer_t *w = (s3_writer_t *)base;
    if (w->err)
        return w->err;
    if (w->len + len > w->cap) {
        /* Normally the part size; more only by what one write brings past it. */
        size_t cap = w->st->part_size;
        if (cap < w->len + len)
            cap = w->len + len;
        char *b = realloc(w->buf, cap);
        if (!b)
            return SL_ENOMEM;
        w->buf = b;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, data, len); /* hashed on the pool when it ships */
    w->len += len;
    if (w->head_len < S3_HEAD_MAX) {
        size_t n = S3_HEAD_MAX - w->head_len < len ? S3_HEAD_MAX - w->head_len : len;
        memcpy(w->head + w->head_len, data, n);
        w->head_len += n;
    }
    w->size += len;
    w->unreported += len;
    writer_kick(w);
    return 0;
}

static void sniff_work(void *arg)
{
    s3_writer_t *w = arg;
    s3_store_t *st = w->st;
    if (w->base.mime[0]) { /* the caller's type (sl_store_put_mime): no sniff */
        snprintf(w->info.mime, sizeof w->info.mime, "%s", w->base.mime);
        return;
    }
    sl_sniff_mime(st->sniff, w->head, w->size == 0 ? 0 : w->head_len, w->info.mime,
                  sizeof w->info.mime);
}

static void sniff_done(void *arg)
{
    s3_writer_t *w = arg;
    s3_store_t *st = w->st; /* alive until store_job_done */
    w->sniffing = 0;
    commit_step(w);
    store_job_done(st);
}

/* The object's SHA-256, once every byte went through hash_work (no job runs:
 * the loop owns sha again). One final block: cheap. */
static int finalize_sha(s3_writer_t *w)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (w->finalized)
        return 0;
    if (EVP_DigestFinal_ex(w->sha, md, &mdlen) != 1)
        return SL_ENOMEM;
    sl_hex(md, 32, w->info.sha256_hex);
    w->finalized = 1;
    return 0;
}

/* Complete's body: one <Part> per part, bounded by S3_MAX_PARTS. */
static char *complete_xml(const s3_writer_t *w, size_t *len)
{
    size_t cap = 128 + (size_t)w->nparts * (S3_ETAG_MAX + 160);
    char *x = malloc(cap);
    if (!x)
        return NULL;
    size_t o = (size_t)snprintf(x, cap, "<CompleteMultipartUpload>");
    for (int i = 0; i < w->nparts; i++)
        o += (size_t)snprintf(x + o, cap - o,
                              "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag>"
                              "<ChecksumSHA256>%s</ChecksumSHA256></Part>",
                              i + 1, w->parts[i].etag, w->parts[i].cksum);
    o += (size_t)snprintf(x + o, cap - o, "</CompleteMultipartUpload>");
    *len = o;
    return x;
}

static int start_complete(s3_writer_t *w)
{
    char url[S3_URL_MAX], q[S3_ID_MAX * 3 + 16], id[S3_ID_MAX * 3];
    size_t len;
    int err = query_escape(w->upload_id, id, sizeof id);
    if (err)
        return err;
    snprintf(q, sizeof q, "uploadId=%s", id);
    if ((err = object_url(w->st, w->key, q, url, sizeof url)) != 0)
        return err;
    char *x = complete_xml(w, &len);
    if (!x)
        return SL_ENOMEM;
    const char *hdr[] = {"Content-Type: application/xml"};
    err = s3_request(w->st, "POST", url, hdr, 1, x, len, NULL, S3_PART_TIMEOUT_MS, 0, xfer_done_cb,
                     w, &w->xfer);
    free(x);
    if (err == 0)
        w->xkind = X_COMPLETE;
    return err;
}

/* Drives a commit once nothing is in flight: send what is left (PutObject
 * for a small object, else the last part), then Complete (phase 2); when
 * that came back, or on the first error, report and free. */
static void commit_step(s3_writer_t *w)
{
    if (!w->committing || w->xfer || w->hashing || w->sniffing)
        return;
    if (w->orphaned && !w->err)
        w->err = SL_ECANCELED;
    if (!w->err && w->committing == 1) {
        int err;
        if (!w->upload_id[0]) {
            err = ship_part(w); /* PutObject: the whole object */
            w->committing = 2;
        } else if (w->len > 0) {
            err = ship_part(w); /* the last part; back here when it is done */
        } else {
            err = finalize_sha(w);
            if (err == 0)
                err = start_complete(w);
            w->committing = 2;
        }
        if (err == 0)
            return;
        w->err = err;
    }
    if (!w->err)
        w->err = finalize_sha(w); /* after the PutObject: every byte was hashed */
    if (w->err && w->upload_id[0] && !w->orphaned)
        send_abort(w->st, w->key, w->upload_id); /* nothing left behind */
    w->info.size = w->size;
    sl_store__commit_done(&w->base, w->err, &w->info);
    writer_free(w);
}

static int s3_commit(sl_store_writer_t *base)
{
    s3_writer_t *w = (s3_writer_t *)base;
    if (w->err)
        return w->err;
    /* libmagic on the pool (it reads files of its own, and takes time). */
    int err = sl_workq_submit(w->st->base.wq, w, sniff_work, sniff_done, w);
    if (err)
        return err; /* the digest is final: the caller can only abort now */
    w->st->jobs++;
    w->committing = 1;
    w->sniffing = 1;
    w->blocked = 0;
    return 0;
}

/* Waits for a CreateMultipartUpload in flight (to learn its id), cancels any
 * other request, then aborts the upload and frees the writer. */
static void abort_step(s3_writer_t *w)
{
    if (w->hashing)
        return; /* a pool job owns the part and sha: hash_done comes back here */
    if (w->xfer) {
        if (w->xkind != X_CREATE)
            sl_curl_cancel(w->xfer); /* xfer_done_cb comes back here */
        return;
    }
    if (w->upload_id[0] && !w->orphaned)
        send_abort(w->st, w->key, w->upload_id); /* else the sweeper's, later */
    writer_free(w);
}

static void s3_abort(sl_store_writer_t *base)
{
    s3_writer_t *w = (s3_writer_t *)base;
    w->aborted = 1;
    abort_step(w);
}

/* ---- read, stat, delete, fetch_local ---- */

typedef struct s3_op_s {
    s3_store_t *st;
    char key[SL_STORE_KEY_MAX + 1];
    uint64_t offset;
    size_t len;
    union {
        sl_store_read_cb read;
        sl_store_stat_cb stat;
        sl_store_done_cb done;
        sl_store_local_cb local;
    } cb;
    void *arg;
    int fd;          /* fetch_local */
    char path[4096]; /* fetch_local */
    /* fetch_local, S3 unavailable: the retry timer (owned), the next delay,
     * the monotonic deadline (ms), and the link in st->waiting while it waits */
    struct event *retry_ev;
    long backoff_ms;
    int64_t deadline_ms;
    struct s3_op_s *wprev, *wnext;
} s3_op_t;

static s3_op_t *op_new(s3_store_t *st, const char *key, void *arg)
{
    s3_op_t *op = calloc(1, sizeof *op);
    if (op) {
        op->st = st;
        op->arg = arg;
        op->fd = -1;
        snprintf(op->key, sizeof op->key, "%s", key);
    }
    return op;
}

/* A ranged GET of [offset, offset+len). */
static int ranged_get(s3_op_t *op, size_t len, sl_curl_cb cb)
{
    char url[S3_URL_MAX], range[80];
    int err = object_url(op->st, op->key, NULL, url, sizeof url);
    if (err)
        return err;
    snprintf(range, sizeof range, "Range: bytes=%llu-%llu", (unsigned long long)op->offset,
             (unsigned long long)(op->offset + len - 1));
    const char *hdr[] = {range};
    return s3_request(op->st, "GET", url, hdr, 1, NULL, 0, NULL, S3_PART_TIMEOUT_MS, len + 65536,
                      cb, op, NULL);
}

/* The bytes of a ranged GET's answer: 206 (the range), 200 (a server that
 * ignored Range: the whole object, sliced here), 416 (past the end: none). */
static int range_body(const s3_op_t *op, const sl_curl_result_t *res, size_t want,
                      const char **data, size_t *n)
{
    *data = "";
    *n = 0;
    if (res->err == 0 && res->status == 416)
        return 0;
    int err = map_result(res);
    if (err)
        return err;
    if (res->status == 200) {
        if (op->offset >= res->body_len)
            return 0;
        *data = res->body + op->offset;
        *n = res->body_len - (size_t)op->offset;
    } else {
        *data = res->body;
        *n = res->body_len;
    }
    if (*n > want)
        *n = want;
    return 0;
}

static void read_done_cb(const sl_curl_result_t *res, void *arg)
{
    s3_op_t *op = arg;
    const char *data;
    size_t n;
    int err = range_body(op, res, op->len, &data, &n);
    if (err && err != SL_ENOTFOUND && err != SL_ECANCELED)
        log_failure("GetObject", op->key, res);
    if (err)
        op->cb.read(err, NULL, 0, op->arg);
    else
        op->cb.read(0, data, n, op->arg);
    free(op);
}

static int s3_read(sl_store_t *base, const char *key, uint64_t offset, size_t len,
                   sl_store_read_cb cb, void *arg)
{
    s3_op_t *op = op_new((s3_store_t *)base, key, arg);
    if (!op)
        return SL_ENOMEM;
    op->offset = offset;
    op->len = len > S3_READ_MAX ? S3_READ_MAX : len;
    op->cb.read = cb;
    int err;
    /* len 0: no bytes, but SL_ENOTFOUND for a missing object, as fs: a
     * one-byte range answers both (the byte is dropped: want is 0). */
    if ((err = ranged_get(op, op->len ? op->len : 1, read_done_cb)) != 0)
        free(op);
    return err;
}

static void stat_done_cb(const sl_curl_result_t *res, void *arg)
{
    s3_op_t *op = arg;
    int err = map_result(res);
    uint64_t size = 0;
    if (err == 0) {
        const char *cl = header_value(res, "Content-Length");
        char *end = NULL;
        errno = 0;
        unsigned long long v = cl ? strtoull(cl, &end, 10) : 0;
        if (!cl || errno || end == cl || *end)
            err = SL_EPROTO;
        else
            size = v;
    } else if (err != SL_ENOTFOUND && err != SL_ECANCELED) {
        log_failure("HeadObject", op->key, res);
    }
    op->cb.stat(err, err ? 0 : size, op->arg);
    free(op);
}

static int s3_stat(sl_store_t *base, const char *key, sl_store_stat_cb cb, void *arg)
{
    s3_store_t *st = (s3_store_t *)base;
    char url[S3_URL_MAX];
    s3_op_t *op = op_new(st, key, arg);
    if (!op)
        return SL_ENOMEM;
    op->cb.stat = cb;
    int err = object_url(st, key, NULL, url, sizeof url);
    if (err == 0)
        err = s3_request(st, "HEAD", url, NULL, 0, NULL, 0, NULL, S3_SMALL_TIMEOUT_MS, 0,
                         stat_done_cb, op, NULL);
    if (err)
        free(op);
    return err;
}

static void del_done_cb(const sl_curl_result_t *res, void *arg)
{
    s3_op_t *op = arg;
    int err = map_result(res);
    if (err == SL_ENOTFOUND)
        err = 0; /* a missing key is not an error */
    if (err && err != SL_ECANCELED)
        log_failure("DeleteObject", op->key, res);
    if (op->cb.done)
        op->cb.done(err, op->arg);
    free(op);
}

static int s3_del(sl_store_t *base, const char *key, sl_store_done_cb cb, void *arg)
{
    s3_store_t *st = (s3_store_t *)base;
    char url[S3_URL_MAX];
    s3_op_t *op = op_new(st, key, arg);
    if (!op)
        return SL_ENOMEM;
    op->cb.done = cb;
    int err = object_url(st, key, NULL, url, sizeof url);
    if (err == 0)
        err = s3_request(st, "DELETE", url, NULL, 0, NULL, 0, NULL, S3_SMALL_TIMEOUT_MS, 0,
                         del_done_cb, op, NULL);
    if (err)
        free(op);
    return err;
}

static void fetch_finish(s3_op_t *op, int err)
{
    if (op->retry_ev)
        event_free(op->retry_ev);
    if (op->fd >= 0)
        close(op->fd);
    if (err)
        unlink(op->path); /* nothing left behind */
    op->cb.local(err, err ? NULL : op->path, 1, op->arg);
    free(op);
}

static void fetch_cb(const sl_curl_result_t *res, void *arg);

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wait_unlink(s3_op_t *op)
{
    if (op->wprev)
        op->wprev->wnext = op->wnext;
    else if (op->st->waiting == op)
        op->st->waiting = op->wnext;
    if (op->wnext)
        op->wnext->wprev = op->wprev;
    op->wprev = op->wnext = NULL;
}

/* The retry timer: ask for the same range again (nothing of the failed one
 * was written, so the file's position is still op->offset). */
static void fetch_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s3_op_t *op = arg;
    wait_unlink(op);
    int err = ranged_get(op, S3_FETCH_STEP, fetch_cb);
    if (err)
        fetch_finish(op, err);
}

/*
 * S3 is unavailable (refused, timed out, 5xx): a run's copy waits for it
 * rather than fail, retrying the range with backoff (250 ms doubling to
 * 15 s) for up to S3_FETCH_WAIT_MS; the run stays busy (and leased)
 * meanwhile. Returns 1 when a retry was scheduled.
 */
static int fetch_wait(s3_op_t *op)
{
    int64_t now = mono_ms();
    if (!op->backoff_ms) {
        op->backoff_ms = S3_RETRY_FIRST_MS;
        op->deadline_ms = now + S3_FETCH_WAIT_MS;
        sl_log(SL_LOG_WARN, "s3_fetch_waiting", "{s:s, s:i}", "key", op->key, "max_wait_s",
               (int)(S3_FETCH_WAIT_MS / 1000));
    }
    if (now + op->backoff_ms > op->deadline_ms)
        return 0;
    if (!op->retry_ev && !(op->retry_ev = evtimer_new(op->st->evb, fetch_retry_cb, op)))
        return 0;
    struct timeval tv = {op->backoff_ms / 1000, (op->backoff_ms % 1000) * 1000};
    if (evtimer_add(op->retry_ev, &tv) != 0)
        return 0;
    op->backoff_ms = op->backoff_ms * 2 > S3_RETRY_MAX_MS ? S3_RETRY_MAX_MS : op->backoff_ms * 2;
    op->wnext = op->st->waiting;
    if (op->wnext)
        op->wnext->wprev = op;
    op->st->waiting = op;
    return 1;
}

/* One 8 MiB range at a time into the file (the write is to the page cache,
 * on the loop: 8 MiB of memcpy per step). */
static void fetch_cb(const sl_curl_result_t *res, void *arg)
{
    s3_op_t *op = arg;
    const char *data;
    size_t n;
    int err = range_body(op, res, S3_FETCH_STEP, &data, &n);
    if (err) {
        if (err != SL_ENOTFOUND && err != SL_ECANCELED && !op->backoff_ms)
            log_failure("GetObject", op->key, res); /* once per outage */
        if (err == SL_EUNAVAIL && fetch_wait(op))
            return;
        fetch_finish(op, err);
        return;
    }
    if (op->backoff_ms) {
        sl_log(SL_LOG_INFO, "s3_fetch_resumed", "{s:s}", "key", op->key);
        op->backoff_ms = 0; /* a later outage waits its own full time */
    }
    for (size_t o = 0; o < n;) {
        ssize_t k = write(op->fd, data + o, n - o);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            fetch_finish(op, SL_EIO);
            return;
        }
        o += (size_t)k;
    }
    op->offset += n;
    if (n < S3_FETCH_STEP) {
        fetch_finish(op, 0);
        return;
    }
    if ((err = ranged_get(op, S3_FETCH_STEP, fetch_cb)) != 0)
        fetch_finish(op, err); /* called from a callback: not synchronous to the caller */
}

static int s3_fetch_local(sl_store_t *base, const char *key, const char *dir, sl_store_local_cb cb,
                          void *arg)
{
    if (!dir)
        return SL_EINVAL;
    s3_op_t *op = op_new((s3_store_t *)base, key, arg);
    if (!op)
        return SL_ENOMEM;
    op->cb.local = cb;
    /* The key's last component names the copy (tools look at extensions). */
    const char *name = strrchr(key, '/');
    name = name ? name + 1 : key;
    int n = snprintf(op->path, sizeof op->path, "%s/%s", dir, name);
    int err = SL_ETOOBIG;
    if (n < 0 || (size_t)n >= sizeof op->path)
        goto fail;
    /* 0644 as fs objects are: confined tools reopen it through /proc/self/fd */
    op->fd = open(op->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (op->fd < 0) {
        err = errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
        goto fail;
    }
    if ((err = ranged_get(op, S3_FETCH_STEP, fetch_cb)) != 0) {
        close(op->fd);
        unlink(op->path);
        goto fail;
    }
    return 0;
fail:
    free(op);
    return err;
}

/* ---- the stale multipart upload sweeper ---- */

/*
 * A crash mid-upload (or an abort that could not be sent) leaves a multipart
 * upload whose parts S3 keeps, and bills, until it is completed or aborted.
 * The sweeper lists the uploads under each of the store's own prefixes
 * (ListMultipartUploads, max 1000 per page, paged with key-marker and
 * upload-id-marker) and aborts those initiated more than stale_after_s ago.
 * The age is taken on S3's clock (the answer's Date header against each
 * upload's Initiated), so a skewed local clock cannot make a fresh upload
 * look old. Uploads of this process's open writers are never aborted; other
 * instances' uploads in progress are safe as long as the age is well above
 * the longest upload. One sweep at a time per store; one request at a time.
 */
#define S3_LIST_MAX_BYTES (4u * 1024 * 1024) /* one page of 1000 uploads is ~400 KiB */
#define S3_SWEEP_PAGE 1000

typedef struct sweep_item_s {
    char key[SL_STORE_KEY_MAX + 1];
    char id[S3_ID_MAX];
} sweep_item_t;

typedef struct s3_sweep_s {
    s3_store_t *st;
    int prefix_i; /* st->prefixes[prefix_i] is being listed */
    char key_marker[SL_STORE_KEY_MAX + 1], id_marker[S3_ID_MAX]; /* next page; "" = first */
    int truncated;
    sweep_item_t *items; /* owned: the stale uploads of the page, aborted one by one */
    int n_items, next_item;
    int aborted, err;
    sl_store_sweep_cb cb;
    void *arg;
} s3_sweep_t;

static int sweep_list(s3_sweep_t *sw);
static int sweep_abort_next(s3_sweep_t *sw);

static void sweep_finish(s3_sweep_t *sw, int err)
{
    s3_store_t *st = sw->st;
    if (!sw->err)
        sw->err = err;
    if (sw->aborted || (sw->err && sw->err != SL_ECANCELED))
        sl_log(sw->err ? SL_LOG_WARN : SL_LOG_INFO, "s3_stale_uploads_swept", "{s:i, s:s}",
               "aborted", sw->aborted, "error", sw->err ? sl_strerror(sw->err) : "");
    st->sweep = NULL;
    if (sw->cb)
        sw->cb(sw->err, sw->aborted, sw->arg);
    free(sw->items);
    free(sw);
}

/* The bucket's URL with a query (no escaping: the query is built escaped). */
static int bucket_url(const s3_store_t *st, const char *query, char *out, size_t cap)
{
    int n;
    if (st->path_style)
        n = snprintf(out, cap, "%s/%s?%s", st->scheme_host, st->bucket, query);
    else
        n = snprintf(out, cap, "%s://%s.%s/?%s", st->scheme, st->bucket, st->host_only, query);
    return (n < 0 || (size_t)n >= cap) ? SL_ETOOBIG : 0;
}

/* The text of <tag>...</tag> between p and end (XML entities decoded:
 * &amp; &lt; &gt; &quot; &apos;), or SL_EPROTO. */
static int xml_field(const char *p, const char *end, const char *tag, char *out, size_t cap)
{
    char open[64], close[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *a = strstr(p, open);
    if (!a || a >= end)
        return SL_EPROTO;
    a += strlen(open);
    const char *b = strstr(a, close);
    if (!b || b > end)
        return SL_EPROTO;
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    size_t o = 0;
    while (a < b) {
        char c = *a++;
        if (c == '&') {
            size_t k;
            for (k = 0; k < sizeof ents / sizeof ents[0]; k++) {
                size_t l = strlen(ents[k].ent);
                if ((size_t)(b - a + 1) >= l && strncmp(a - 1, ents[k].ent, l) == 0) {
                    c = ents[k].c;
                    a += l - 1;
                    break;
                }
            }
            if (k == sizeof ents / sizeof ents[0])
                return SL_EPROTO; /* numeric references: not in anything of ours */
        }
        if (o + 1 >= cap)
            return SL_EPROTO;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

/* "2026-12-03T17:31:24.000Z" (Initiated) -> seconds, or -1. */
static time_t parse_iso8601(const char *s)
{
    struct tm tm = {0};
    const char *e = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!e)
        return -1;
    return timegm(&tm);
}

/* The Date header (RFC 7231 IMF-fixdate), else our clock. */
static time_t s3_now(const sl_curl_result_t *res)
{
    const char *d = header_value(res, "Date");
    struct tm tm = {0};
    if (d && strptime(d, "%a, %d %b %Y %H:%M:%S GMT", &tm))
        return timegm(&tm);
    return time(NULL);
}

static int writer_owns(const s3_store_t *st, const char *upload_id)
{
    for (const s3_writer_t *w = st->live; w; w = w->live_next)
        if (w->upload_id[0] && strcmp(w->upload_id, upload_id) == 0)
            return 1;
    return 0;
}

static void sweep_next_step(s3_sweep_t *sw)
{
    int err = 0;
    if (sw->next_item < sw->n_items) {
        err = sweep_abort_next(sw);
    } else if (sw->truncated) {
        err = sweep_list(sw);
    } else if (++sw->prefix_i < sw->st->nprefixes) {
        sw->key_marker[0] = sw->id_marker[0] = '\0';
        err = sweep_list(sw);
    } else {
        sweep_finish(sw, 0);
        return;
    }
    if (err)
        sweep_finish(sw, err); /* from a callback: never synchronous to the caller */
}

static void sweep_abort_cb(const sl_curl_result_t *res, void *arg)
{
    s3_sweep_t *sw = arg;
    const sweep_item_t *it = &sw->items[sw->next_item++];
    int err = map_result(res);
    if (err == SL_ECANCELED) {
        sweep_finish(sw, err);
        return;
    }
    if (err == 0) {
        sw->aborted++;
        sl_log(SL_LOG_INFO, "s3_stale_upload_aborted", "{s:s, s:s}", "key", it->key, "upload_id",
               it->id);
    } else if (err != SL_ENOTFOUND) { /* 404: gone meanwhile (another instance) */
        log_failure("AbortMultipartUpload", it->key, res);
        if (!sw->err)
            sw->err = err;
    }
    sweep_next_step(sw);
}

static int sweep_abort_next(s3_sweep_t *sw)
{
    const sweep_item_t *it = &sw->items[sw->next_item];
    char q[S3_ID_MAX * 3 + 16], id[S3_ID_MAX * 3], url[S3_URL_MAX];
    int err = query_escape(it->id, id, sizeof id);
    if (err)
        return err;
    snprintf(q, sizeof q, "uploadId=%s", id);
    if ((err = object_url(sw->st, it->key, q, url, sizeof url)) != 0)
        return err;
    return s3_request(sw->st, "DELETE", url, NULL, 0, NULL, 0, NULL, S3_SMALL_TIMEOUT_MS, 0,
                      sweep_abort_cb, sw, NULL);
}

static void sweep_list_cb(const sl_curl_result_t *res, void *arg)
{
    s3_sweep_t *sw = arg;
    s3_store_t *st = sw->st;
    const char *prefix = st->prefixes[sw->prefix_i];
    int err = map_result(res);
    if (err) {
        if (err != SL_ECANCELED)
            log_failure("ListMultipartUploads", prefix, res);
        sweep_finish(sw, err == SL_ENOTFOUND ? SL_EIO : err);
        return;
    }
    time_t now = s3_now(res);
    char trunc[8] = "";
    xml_text(res->body, "IsTruncated", trunc, sizeof trunc);
    sw->truncated = strcmp(trunc, "true") == 0;
    if (sw->truncated) {
        /* The next page starts after these; a truncated page without them, or
         * with the ones we sent, would loop: stop there. */
        char km[sizeof sw->key_marker], um[sizeof sw->id_marker];
        const char *bend = res->body + res->body_len;
        if (xml_field(res->body, bend, "NextKeyMarker", km, sizeof km) != 0 ||
            xml_field(res->body, bend, "NextUploadIdMarker", um, sizeof um) != 0 ||
            (strcmp(km, sw->key_marker) == 0 && strcmp(um, sw->id_marker) == 0)) {
            sweep_finish(sw, SL_EPROTO);
            return;
        }
        memcpy(sw->key_marker, km, sizeof km);
        memcpy(sw->id_marker, um, sizeof um);
    }
    sw->n_items = sw->next_item = 0;
    const char *p = res->body;
    while (sw->n_items < S3_SWEEP_PAGE && (p = strstr(p, "<Upload>")) != NULL) {
        const char *end = strstr(p, "</Upload>");
        if (!end)
            break;
        sweep_item_t *it = &sw->items[sw->n_items];
        char when[64];
        int ok = xml_field(p, end, "Key", it->key, sizeof it->key) == 0 &&
                 xml_field(p, end, "UploadId", it->id, sizeof it->id) == 0 &&
                 xml_field(p, end, "Initiated", when, sizeof when) == 0;
        p = end + 9;
        if (!ok)
            continue;
        time_t t = parse_iso8601(when);
        /* Ours only: under the prefix asked for, a key Sluice could have
         * written, not an upload this process is writing, old enough. */
        if (strncmp(it->key, prefix, strlen(prefix)) != 0 || !sl_store_key_valid(it->key) ||
            writer_owns(st, it->id) || t < 0 || now - t < st->stale_after_s)
            continue;
        sw->n_items++;
    }
    sweep_next_step(sw);
}

static int sweep_list(s3_sweep_t *sw)
{
    char q[4 * (SL_STORE_KEY_MAX + S3_ID_MAX) + 256], a[3 * SL_STORE_KEY_MAX + 4], b[3 * S3_ID_MAX],
        c[3 * 64 + 4], url[S3_URL_MAX + sizeof q];
    int err = query_escape(sw->st->prefixes[sw->prefix_i], c, sizeof c);
    if (err)
        return err;
    /* Parameters in canonical (sorted) order; "uploads" is the subresource. */
    if (sw->key_marker[0]) {
        if ((err = query_escape(sw->key_marker, a, sizeof a)) != 0 ||
            (err = query_escape(sw->id_marker, b, sizeof b)) != 0)
            return err;
        snprintf(q, sizeof q, "key-marker=%s&max-uploads=%d&prefix=%s&upload-id-marker=%s&uploads",
                 a, S3_SWEEP_PAGE, c, b);
    } else {
        snprintf(q, sizeof q, "max-uploads=%d&prefix=%s&uploads", S3_SWEEP_PAGE, c);
    }
    if ((err = bucket_url(sw->st, q, url, sizeof url)) != 0)
        return err;
    return s3_request(sw->st, "GET", url, NULL, 0, NULL, 0, NULL, S3_SMALL_TIMEOUT_MS,
                      S3_LIST_MAX_BYTES, sweep_list_cb, sw, NULL);
}

static int s3_sweep(sl_store_t *base, sl_store_sweep_cb cb, void *arg)
{
    s3_store_t *st = (s3_store_t *)base;
    if (st->sweep)
        return SL_EAGAIN;
    if (st->stale_after_s < 0 || st->nprefixes == 0)
        return SL_EINVAL;
    s3_sweep_t *sw = calloc(1, sizeof *sw);
    if (!sw || !(sw->items = calloc(S3_SWEEP_PAGE, sizeof *sw->items))) {
        free(sw);
        return SL_ENOMEM;
    }
    sw->st = st;
    sw->cb = cb;
    sw->arg = arg;
    int err = sweep_list(sw);
    if (err) {
        free(sw->items);
        free(sw);
        return err;
    }
    st->sweep = sw;
    return 0;
}

/* At open (first turn of the loop), then every stale_after_s / 4 (1 s..1 h). */
static struct timeval sweep_interval(const s3_store_t *st)
{
    long s = st->stale_after_s / 4;
    struct timeval tv = {s < 1 ? 1 : s > 3600 ? 3600 : s, 0};
    return tv;
}

static void sweep_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s3_store_t *st = arg;
    int err = st->sweep ? 0 : s3_sweep(&st->base, NULL, NULL);
    if (err)
        sl_log(SL_LOG_WARN, "s3_sweep_not_started", "{s:s}", "error", sl_strerror(err));
    struct timeval tv = sweep_interval(st);
    evtimer_add(st->sweep_ev, &tv);
}

/* ---- the store ---- */

static void store_final_free(s3_store_t *st);

static void store_job_done(s3_store_t *st)
{
    if (--st->jobs == 0 && st->closing)
        store_final_free(st);
}

static void s3_free(sl_store_t *base)
{
    s3_store_t *st = (s3_store_t *)base;
    if (st->sweep_ev)
        event_free(st->sweep_ev);
    while (st->waiting) { /* copies waiting for S3: cancelled, as the ones in flight */
        s3_op_t *op = st->waiting;
        wait_unlink(op);
        fetch_finish(op, SL_ECANCELED);
    }
    sl_curl_free(st->curl); /* in-flight reads, aborts, a sweep end with SL_ECANCELED */
    /* Writers still alive (a hash or sniff job pending on the pool, whose
     * done callback comes in sl_workq_free, or one its owner has not closed)
     * must not touch the store from now on: they end with SL_ECANCELED and
     * send nothing (an upload left behind is the sweeper's). */
    for (s3_writer_t *w = st->live, *next; w; w = next) {
        next = w->live_next;
        w->orphaned = 1;
        w->live_prev = w->live_next = NULL;
    }
    st->live = NULL;
    st->curl = NULL;
    if (st->jobs > 0) {
        st->closing = 1; /* a pool job reads st (magic, part size): the last one frees */
        return;
    }
    store_final_free(st);
}

/* Pool jobs pin the store: a sniff job uses its libmagic cookie. */
static void store_final_free(s3_store_t *st)
{
    sl_sniff_free(st->sniff);
    if (st->secret)
        sl_secure_zero(st->secret, strlen(st->secret));
    free(st->secret);
    free(st->akid);
    free(st->token);
    free(st->bucket);
    free(st);
}

static const sl_store_ops_t s3_ops = {
    .name = "s3",
    .put_begin = s3_put_begin,
    .write = s3_write,
    .commit = s3_commit,
    .abort = s3_abort,
    .read = s3_read,
    .stat = s3_stat,
    .del = s3_del,
    .local_path = NULL, /* no local file: callers use fetch_local */
    .fetch_local = s3_fetch_local,
    .sweep = s3_sweep,
    .free = s3_free,
};

static char *dup_or_env(const char *v, const char *env)
{
    if (!v || !*v)
        v = getenv(env);
    return v && *v ? strdup(v) : NULL;
}

int sl_store_s3_open(const sl_store_conf_t *conf, sl_workq_t *wq, struct event_base *evb,
                     sl_store_t **out)
{
    int err = SL_ECONFIG;
    if (!conf || !wq || !evb || !out)
        return SL_EINVAL;
    if (!conf->endpoint || !conf->bucket || !*conf->bucket)
        return SL_ECONFIG;
    s3_store_t *st = calloc(1, sizeof *st);
    if (!st)
        return SL_ENOMEM;
    if (!(st->sniff = sl_sniff_new())) {
        free(st);
        return SL_ENOMEM;
    }
    st->base.ops = &s3_ops;
    st->base.wq = wq;
    st->evb = evb;
    st->path_style = conf->path_style;
    st->part_size = conf->part_size ? conf->part_size : SL_STORE_S3_PART_DEFAULT;
    if (st->part_size < SL_STORE_S3_PART_MIN || st->part_size > SL_STORE_S3_PART_MAX)
        goto fail;

    /* endpoint: "http(s)://host[:port]" with nothing after but an optional '/'. */
    const char *e = conf->endpoint, *h;
    if (strncmp(e, "http://", 7) == 0) {
        snprintf(st->scheme, sizeof st->scheme, "http");
        h = e + 7;
    } else if (strncmp(e, "https://", 8) == 0) {
        snprintf(st->scheme, sizeof st->scheme, "https");
        h = e + 8;
    } else {
        goto fail;
    }
    size_t hl = strcspn(h, "/");
    if (hl == 0 || hl >= sizeof st->host_only || (h[hl] == '/' && h[hl + 1] != '\0'))
        goto fail;
    memcpy(st->host_only, h, hl);
    st->host_only[hl] = '\0';
    snprintf(st->scheme_host, sizeof st->scheme_host, "%s://%s", st->scheme, st->host_only);
    /* Bucket names: [a-z0-9.-], 3..63 (S3's rules, loosely). */
    for (const char *b = conf->bucket; *b; b++)
        if (!((*b >= 'a' && *b <= 'z') || (*b >= '0' && *b <= '9') || *b == '.' || *b == '-'))
            goto fail;
    snprintf(st->region, sizeof st->region, "%s",
             conf->region && *conf->region ? conf->region : "us-east-1");

    err = SL_ENOMEM;
    if (!(st->bucket = strdup(conf->bucket)))
        goto fail;
    st->akid = dup_or_env(conf->access_key_id, "AWS_ACCESS_KEY_ID");
    st->secret = dup_or_env(conf->secret_access_key, "AWS_SECRET_ACCESS_KEY");
    st->token = dup_or_env(NULL, "AWS_SESSION_TOKEN");
    if (!st->akid || !st->secret) {
        sl_log(SL_LOG_ERROR, "s3_no_credentials", "{s:s}", "hint",
               "storage.access_key_id/secret_access_key or AWS_ACCESS_KEY_ID/"
               "AWS_SECRET_ACCESS_KEY");
        err = SL_ECONFIG;
        goto fail;
    }
    st->stale_after_s = conf->abort_stale_uploads_after_s ? conf->abort_stale_uploads_after_s
                                                          : SL_STORE_S3_STALE_DEFAULT_S;
    static const char *const own[] = SL_STORE_OWN_PREFIXES;
    const char *const *pf = conf->own_prefixes ? conf->own_prefixes : own;
    err = SL_ECONFIG;
    for (; *pf; pf++) {
        size_t n = strlen(*pf);
        if (st->nprefixes == SL_STORE_PREFIXES_MAX || n == 0 || n >= sizeof st->prefixes[0])
            goto fail;
        memcpy(st->prefixes[st->nprefixes++], *pf, n + 1);
    }
    err = SL_ENOMEM;
    if ((err = sl_curl_new(evb, &st->curl)) != 0)
        goto fail;
    /* A batch of 2,000 small files made 2,000 PUTs at once, one connection
     * each (a SYN flood at the test front; fds without bound): past this many
     * they wait for a connection inside libcurl, which reuses them; and as
     * many stay open between batches (core/curl.h sl_curl_max_connects). */
    if ((err = sl_curl_max_host_connections(st->curl, SL_STORE_S3_MAX_CONNECTIONS)) != 0 ||
        (err = sl_curl_max_connects(st->curl, SL_STORE_S3_MAX_CONNECTIONS)) != 0) {
        sl_curl_free(st->curl);
        goto fail;
    }
    if (st->stale_after_s > 0) {
        struct timeval now = {0, 0};
        if (!(st->sweep_ev = evtimer_new(evb, sweep_timer_cb, st))) {
            sl_curl_free(st->curl);
            err = SL_ENOMEM;
            goto fail;
        }
        evtimer_add(st->sweep_ev, &now);
    }
    *out = &st->base;
    return 0;
fail:
    free(st->bucket);
    free(st->akid);
    free(st->secret);
    free(st->token);
    sl_sniff_free(st->sniff);
    free(st);
    return err;
}

const char *sl_store_s3_bucket(const sl_store_t *st)
{
    if (!st || strcmp(sl_store_backend(st), "s3") != 0)
        return NULL;
    return ((const s3_store_t *)st)->bucket;
}

int sl_store_presign_get(const sl_store_t *base, const char *key, const char *content_type,
                         long expires_s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!base || !key || !out || !sl_store_key_valid(key))
        return SL_EINVAL;
    if (strcmp(sl_store_backend(base), "s3") != 0)
        return SL_EINVAL; /* the filesystem has no URL of its own */
    const s3_store_t *st = (const s3_store_t *)base;
    /* response-content-type: S3 answers with the artifact's type, not the object's */
    char query[512], url[2048];
    size_t n = 0;
    n += (size_t)snprintf(query, sizeof query, "response-content-type=");
    for (const unsigned char *p = (const unsigned char *)(content_type ? content_type : "");
         *p; p++) {
        if (n + 4 > sizeof query)
            return SL_ETOOBIG;
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            query[n++] = (char)*p;
        } else {
            query[n++] = '%';
            query[n++] = hex[*p >> 4];
            query[n++] = hex[*p & 15];
        }
    }
    query[n] = '\0';
    int err = object_url(st, key, content_type && *content_type ? query : NULL, url, sizeof url);
    if (err)
        return err;
    sl_sigv4_creds_t creds = {.access_key_id = st->akid,
                              .secret_access_key = st->secret,
                              .session_token = st->token,
                              .region = st->region,
                              .service = "s3"};
    return sl_sigv4_presign(&creds, "GET", url, expires_s, time(NULL), 0, out, cap);
}
