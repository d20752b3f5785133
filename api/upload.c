/*
 * upload.c — POST /v1/datasets/{id}/files: a streamed, all-or-nothing batch upload.
 *
 * The body flows socket -> http (de-chunked) -> multipart parser -> one storage
 * writer per part, which hashes and writes it on the worker pool. Nothing of
 * the body is held beyond the storage writer's bounded queue: when the current
 * writer has SL_STORE_HIGH_WATER bytes queued, the request is paused (the socket
 * is not read) until the writer drains. So memory per upload is constant.
 *
 * All or nothing: blobs are written under fresh server-made keys, and the rows
 * (files, runs, timeline events, the idempotency response) are inserted in one
 * batch — one transaction — only after every part is durable (its bytes by its
 * commit, the names of all of them by one shared directory sync after the
 * last commit: sl_store_sync). Any failure before that (a limit, a truncated
 * body, a client that goes away, the database) deletes the blobs this request
 * wrote; no row ever points at them.
 *
 * Runs: one per pipeline that matches a file's sniffed MIME type and that its
 * dataset allows (datasets.pipelines), unless the upload does not process:
 * ?process=false, or a dataset with auto_process false and no ?process=true.
 * Such a file is 'uploaded' until POST /v1/files/{id}/process; a file no
 * pipeline takes records why (api/pipesel.h, docs/lifecycle.md).
 *
 * Lifetime: the upload state is refcounted: one reference for the request and
 * one per outstanding storage commit, directory sync or database batch; it is
 * freed by the last release, never inside a callback chain that still uses it.
 */
#include "api/api.h"
#include "api/pipesel.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "core/multipart.h"
#include "core/utf8.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define UPLOAD_NAME_MAX 255

typedef struct upload_part_s {
    char file_id[37];
    char key[SL_STORE_KEY_MAX];
    char name[UPLOAD_NAME_MAX * 3 + 1]; /* sanitised UTF-8 display name */
    int committed;                       /* blob is durable at `key` */
    sl_store_info_t info;
} upload_part_t;

typedef struct upload_s {
    sl_app_t *app;
    sl_http_req_t *req;       /* NULL once the request is finished */
    int refs;
    char tenant_id[37];
    char dataset_id[37];
    char batch_id[37];
    char idem_key[256];
    int idem_reserved;        /* we hold an idempotency reservation to release on failure */
    char boundary[SL_MULTIPART_MAX_BOUNDARY + 1];
    sl_multipart_t *mp;

    upload_part_t *parts;     /* owned array */
    int nparts, cap;
    sl_store_writer_t *writer; /* the part being written, or NULL */
    int in_file_part;         /* current part has a filename (else its data is ignored) */
    int commits_pending;
    int synced;               /* the parts' names: 0 not synced, 1 sync in flight, 2 durable */
    int body_done;            /* end_cb(0) seen */
    int failed;               /* a response was (or will be) an error */
    int fail_status;
    const char *fail_code;
    const char *fail_msg;
    uint64_t bytes;
    int tenant_held;          /* holds one of the tenant's limits.max_uploads_per_tenant */
    double byte_credit;       /* upload bytes charged to the tenant's rate and not yet read */
    sl_rl_op_t *rl_op;        /* a bytes charge in progress (the request is paused; holds a ref) */
    int process_param;        /* ?process=: 1, 0, or -1 when absent (the dataset decides) */
    int process;              /* start runs now: ?process= if given, else datasets.auto_process */
    sl_pipeset_t allowed;     /* the pipelines the dataset allows (datasets.pipelines) */
} upload_t;

static void upload_release(upload_t *up);
static void upload_fail(upload_t *up, int status, const char *code, const char *msg);
static void upload_maybe_finish(upload_t *up);
static void synced_cb(int err, void *arg);

/* ---- helpers ---- */

/*
 * A display name from the client's filename: the last path component (some
 * browsers send "C:\dir\name"), at most UPLOAD_NAME_MAX bytes. Every byte
 * that does not start a well-formed UTF-8 sequence (sl_utf8_seq_len: RFC 3629,
 * so overlongs, surrogates and code points past U+10FFFF too) becomes '_', as
 * control characters do: a bad name is cleaned, never refused, and the rest
 * of it is kept. Postgres rejects invalid UTF-8, and the name ends up in HTML
 * and CSV, so it is cleaned here once.
 */
static void sanitize_name(const char *in, char *out, size_t outlen)
{
    const char *base = in;
    for (const char *p = in; *p; p++)
        if (*p == '/' || *p == '\\')
            base = p + 1;
    size_t o = 0;
    const unsigned char *s = (const unsigned char *)base;
    size_t left = strlen(base);
    while (left > 0 && o + 5 < outlen && o < UPLOAD_NAME_MAX) {
        size_t n = sl_utf8_seq_len(s, left);
        if (n == 0 || (n == 1 && (*s < 0x20 || *s == 0x7f))) {
            out[o++] = '_';
            s++;
            left--;
            continue;
        }
        memcpy(out + o, s, n);
        o += n;
        s += n;
        left -= n;
    }
    out[o] = '\0';
    if (o == 0 || strcmp(out, ".") == 0 || strcmp(out, "..") == 0)
        snprintf(out, outlen, "unnamed");
}

static upload_part_t *cur_part(upload_t *up)
{
    return up->nparts ? &up->parts[up->nparts - 1] : NULL;
}

/* ---- cleanup: delete every blob this request wrote ---- */

static void delete_done_cb(int err, void *arg)
{
    upload_t *up = arg;
    if (err)
        sl_log(SL_LOG_WARN, "upload_blob_delete_failed", "{s:s, s:s}", "batch_id", up->batch_id,
               "error", sl_strerror(err));
    upload_release(up);
}

static void discard_blobs(upload_t *up)
{
    if (up->writer) {
        sl_store_put_abort(up->writer);
        up->writer = NULL;
    }
    for (int i = 0; i < up->nparts; i++) {
        if (!up->parts[i].committed)
            continue;
        up->parts[i].committed = 0;
        up->refs++;
        if (sl_store_delete(up->app->store, up->parts[i].key, delete_done_cb, up) != 0)
            up->refs--;
    }
}

/* ---- multipart callbacks ---- */

static void writer_drain_cb(sl_store_writer_t *w, void *arg)
{
    upload_t *up = arg;
    (void)w;
    if (up->req && !up->failed && !up->rl_op) /* else the bytes charge resumes it */
        sl_http_req_resume(up->req);
}

static int part_begin_cb(void *arg, const sl_multipart_part_t *part)
{
    upload_t *up = arg;
    sl_config_t *cfg = up->app->cfg;
    up->in_file_part = part->filename != NULL;
    if (!up->in_file_part)
        return 0; /* a plain form field: ignored */
    if (up->nparts >= cfg->max_files_per_request) {
        upload_fail(up, 413, "too_many_files", "more files than limits.max_files_per_request");
        return 1;
    }
    if (up->nparts == up->cap) {
        int ncap = up->cap ? up->cap * 2 : 1; /* most uploads carry one file */
        upload_part_t *np = realloc(up->parts, (size_t)ncap * sizeof *np);
        if (!np) {
            upload_fail(up, 500, "internal_error", "out of memory");
            return 1;
        }
        up->parts = np;
        up->cap = ncap;
    }
    upload_part_t *p = &up->parts[up->nparts];
    memset(p, 0, sizeof *p);
    if (sl_uuid_v4(p->file_id) != 0) {
        upload_fail(up, 500, "internal_error", "no randomness");
        return 1;
    }
    snprintf(p->key, sizeof p->key, "files/%s/%s", up->tenant_id, p->file_id);
    sanitize_name(part->filename, p->name, sizeof p->name);
    up->nparts++;
    int err = sl_store_put_begin(up->app->store, p->key, &up->writer);
    if (err) {
        upload_fail(up, 503, "storage_unavailable", "cannot write to storage");
        return 1;
    }
    /* Its name is made durable with the others', once, before the rows (upload_maybe_finish). */
    (void)sl_store_put_defer_sync(up->writer);
    sl_store_on_drain(up->writer, writer_drain_cb, up);
    return 0;
}

static int part_data_cb(void *arg, const char *data, size_t len)
{
    upload_t *up = arg;
    if (!up->in_file_part || len == 0)
        return 0;
    upload_part_t *p = cur_part(up);
    p->info.size += len;
    up->bytes += len;
    if ((int64_t)p->info.size > up->app->cfg->max_file_bytes) {
        upload_fail(up, 413, "file_too_large", "a file is larger than limits.max_file_bytes");
        return 1;
    }
    if (sl_store_write(up->writer, data, len) != 0) {
        upload_fail(up, 503, "storage_unavailable", "cannot write to storage");
        return 1;
    }
    if (sl_store_pending(up->writer) >= SL_STORE_HIGH_WATER && up->req)
        sl_http_req_pause(up->req); /* backpressure: resumed by writer_drain_cb */
    return 0;
}

typedef struct commit_ctx_s {
    upload_t *up;
    int index;
} commit_ctx_t;

static void commit_cb(int err, const sl_store_info_t *info, void *arg)
{
    commit_ctx_t *cc = arg;
    upload_t *up = cc->up;
    upload_part_t *p = &up->parts[cc->index];
    free(cc);
    up->commits_pending--;
    if (err) {
        upload_fail(up, 503, "storage_unavailable", "cannot write to storage");
    } else {
        p->committed = 1;
        p->info = *info;
        if (up->failed) /* the request failed while this part was being made durable */
            discard_blobs(up);
    }
    upload_maybe_finish(up);
    upload_release(up);
}

static int part_end_cb(void *arg)
{
    upload_t *up = arg;
    if (!up->in_file_part)
        return 0;
    up->in_file_part = 0;
    commit_ctx_t *cc = malloc(sizeof *cc);
    if (!cc) {
        upload_fail(up, 500, "internal_error", "out of memory");
        return 1;
    }
    cc->up = up;
    cc->index = up->nparts - 1;
    sl_store_writer_t *w = up->writer;
    up->writer = NULL;
    up->refs++;
    up->commits_pending++;
    if (sl_store_put_commit(w, commit_cb, cc) != 0) {
        up->refs--;
        up->commits_pending--;
        free(cc);
        upload_fail(up, 503, "storage_unavailable", "cannot write to storage");
        return 1;
    }
    if (up->req)
        sl_http_req_resume(up->req); /* the next part gets a fresh writer */
    return 0;
}

/* ---- lifecycle ---- */

static void upload_free(upload_t *up)
{
    if (up->tenant_held)
        sl_ratelimit_unhold(up->app->ratelimit, up->tenant_id);
    sl_multipart_free(up->mp);
    free(up->parts);
    free(up);
}

static void upload_release(upload_t *up)
{
    if (--up->refs == 0)
        upload_free(up);
}

/*
 * Finishes the HTTP request with the recorded error (once). Returns 1 if it
 * did, and then the caller drops the request's reference.
 */
static int answer_failure(upload_t *up)
{
    if (!up->req)
        return 0;
    sl_http_req_t *req = up->req;
    up->req = NULL;
    if (up->idem_reserved) {
        sl_api_idem_release(up->app, up->tenant_id, up->idem_key);
        up->idem_reserved = 0;
    }
    up->app->active_uploads--;
    int retry = (up->fail_status == 503) ? 2 : -1;
    sl_http_respond_error(req, up->fail_status, up->fail_code, up->fail_msg, retry);
    return 1;
}

static void respond_failure(upload_t *up)
{
    if (answer_failure(up))
        upload_release(up);
}

static void deferred_failure_cb(evutil_socket_t fd, short what, void *arg)
{
    upload_t *up = arg;
    (void)fd;
    (void)what;
    if (answer_failure(up))
        up->refs--; /* the request's reference; the deferred call still holds one */
    upload_release(up);
}

/*
 * Records the first failure and throws away what was written. The answer goes
 * out on a later loop turn: failures are found deep inside the http body
 * callbacks, which must not see their request finished under them. The http
 * layer closes the connection when a response precedes the end of the body.
 */
static void upload_fail(upload_t *up, int status, const char *code, const char *msg)
{
    if (up->failed)
        return;
    up->failed = 1;
    up->fail_status = status;
    up->fail_code = code;
    up->fail_msg = msg;
    discard_blobs(up);
    if (up->rl_op) {
        /* the request's reference keeps up alive past the charge's */
        sl_ratelimit_cancel(up->rl_op);
        up->rl_op = NULL;
        up->refs--;
    }
    static const struct timeval now = {0, 0};
    up->refs++;
    if (event_base_once(up->app->base, -1, EV_TIMEOUT, deferred_failure_cb, up, &now) != 0) {
        up->refs--;
        respond_failure(up);
    }
}

static void batch_done_cb(const sl_pg_result_t *r, void *arg)
{
    upload_t *up = arg;
    sl_app_t *app = up->app;
    if (r->err) {
        /*
         * SL_EUNAVAIL: the connection went away, maybe after the batch
         * committed (pg.h: "unknown"). Its files may then exist and a retry
         * with the Idempotency-Key replays them: their blobs must stay (an
         * orphan blob costs space; a file without its blob is lost data).
         */
        if (r->err != SL_EUNAVAIL)
            discard_blobs(up);
        if (up->req) {
            if (up->idem_reserved)
                sl_api_idem_release(app, up->tenant_id, up->idem_key);
            up->idem_reserved = 0;
            app->active_uploads--;
            sl_http_req_t *req = up->req;
            up->req = NULL;
            sl_api_db_error(req, r);
            up->refs--; /* the request's reference; the batch's is released below */
        }
        upload_release(up);
        return;
    }
    PGresult *resp = r->res[r->n - 3]; /* RESPONSE_SQL, before the two event statements */
    const char *body = PQgetvalue(resp, 0, 0);
    /* Its runs are queued: the engine claims them now. First, before the
     * events and the response (syscalls that wake their readers), and even
     * if the client went away meanwhile (it used to wait for the poll then). */
    sl_api_engine_kick(app);
    /* What the batch committed, in seq order: one "file" event per file (the
     * batch's statement n-2), then the runs' 'queued' events (n-1). */
    sl_run_event_publish_rows(app->pubsub, "file", r->res[r->n - 2]);
    sl_run_event_publish_rows(app->pubsub, "run", r->res[r->n - 1]);
    sl_metrics_add(app->m_upload_files, (double)up->nparts);
    sl_log(SL_LOG_INFO, "upload_stored", "{s:s, s:s, s:s, s:i, s:I}", "tenant_id", up->tenant_id,
           "dataset_id", up->dataset_id, "batch_id", up->batch_id, "files", up->nparts, "bytes",
           (json_int_t)up->bytes);
    if (up->req) {
        sl_http_req_t *req = up->req;
        up->req = NULL;
        app->active_uploads--;
        sl_api_json_text(req, 202, body, strlen(body));
        up->refs--; /* the request's reference; the batch's is released below */
    }
    upload_release(up);
}

/* The JSON response: every file of this batch in part order, built set-wise
 * by sluice_files_json (json.sql; their queued runs' places numbered in one
 * pass over the queue). */
static const char RESPONSE_SQL[] =
    "SELECT json_build_object('files', sluice_files_json($1, ARRAY(SELECT f.id FROM files f"
    "   WHERE f.tenant_id = $1 AND f.batch_id = $2 ORDER BY f.seq)))::text";

/*
 * The batch's rows travel as two JSON documents (built by jansson), so the
 * transaction has the same five statements for one file or for a thousand.
 */
static json_t *rows_json(upload_t *up, json_t **runs_out)
{
    sl_app_t *app = up->app;
    json_t *files = json_array(), *runs = json_array();
    if (!files || !runs)
        goto fail;
    for (int i = 0; i < up->nparts; i++) {
        upload_part_t *p = &up->parts[i];
        /* A run per pipeline that matches and the dataset allows; none when not processing
         * (the file awaits /process), and a file no pipeline takes says why (pipesel.h). */
        sl_pipeset_t set = up->process ? sl_pipesel_matching(app, p->info.mime) & up->allowed : 0;
        char reason[SL_PIPESEL_REASON_MAX] = "";
        if (up->process && set == 0)
            sl_pipesel_reason(app, p->info.mime, up->allowed, reason, sizeof reason);
        if (json_array_append_new(
                files, json_pack("{s:s, s:i, s:s, s:I, s:s, s:s, s:s, s:b, s:s?}", "id", p->file_id,
                                 "ord", i, "name", p->name, "size", (json_int_t)p->info.size,
                                 "sha256", p->info.sha256_hex, "mime", p->info.mime,
                                 "storage_key", p->key, "awaiting", !up->process, "reason",
                                 reason[0] ? reason : NULL)) != 0)
            goto fail;
        for (int k = 0; k < app->npipelines && k < SL_CONFIG_MAX_PIPELINES; k++) {
            char run_id[37];
            if (!(set & ((sl_pipeset_t)1 << k)))
                continue;
            if (sl_uuid_v4(run_id) != 0 ||
                json_array_append_new(runs, json_pack("{s:s, s:s, s:s, s:I}", "id", run_id,
                                                      "file_id", p->file_id, "pipeline",
                                                      app->pipelines[k].name, "size",
                                                      (json_int_t)p->info.size)) != 0)
                goto fail;
        }
    }
    *runs_out = runs;
    return files;
fail:
    json_decref(files);
    json_decref(runs);
    return NULL;
}

static const char INSERT_FILES_SQL[] =
    "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
    "storage_key, awaiting_process, reason) SELECT x.id, $1, $2, $3, x.name, x.size, x.sha256, "
    "x.mime, x.storage_key, x.awaiting, x.reason "
    "FROM json_to_recordset($4::json) AS x(id uuid, ord int, name text, size bigint, "
    "sha256 text, mime text, storage_key text, awaiting boolean, reason text) ORDER BY x.ord";

/*
 * The batch's "file" events (SSE): not timeline rows (a file's timeline is its
 * runs'), but they take places in the dataset's event series as timeline
 * events do (sluice_event_places), so the stream's ids stay one dense series:
 * the files' places first, in part order, then their runs' 'queued' events
 * (RUN_EVENTS_SQL). The places' row lock, held to the commit, orders them
 * before any later commit of the dataset (docs/internals/sse.md). A file no
 * pipeline took is "done" (its document says why); one stored without
 * processing is "uploaded". A file has runs when the batch's runs (inserted
 * before, INSERT_RUNS_SQL) name it: an index lookup per file, not a scan of
 * the runs' JSON per file (153 ms for 2,000 files under the place lock).
 */
static const char FILE_EVENTS_SQL[] =
    "WITH fs AS (SELECT f.id, f.dataset_id, f.awaiting_process,"
    "                   row_number() OVER (ORDER BY f.seq) AS k"
    "            FROM files f WHERE f.tenant_id = $1 AND f.batch_id = $3),"
    " pl AS (SELECT sluice_event_places($2::uuid, (SELECT count(*) FROM fs)) AS first)"
    " SELECT pl.first + fs.k - 1, fs.dataset_id, fs.id, NULL, NULL, NULL, 'uploaded',"
    " CASE WHEN EXISTS (SELECT 1 FROM runs r WHERE r.file_id = fs.id) THEN 'queued'"
    "      WHEN fs.awaiting_process THEN 'uploaded' ELSE 'done' END,"
    " sluice_ts(clock_timestamp())"
    " FROM fs, pl ORDER BY fs.k";

/* The batch's runs (in the runs' JSON order), queued with their cost and rank
 * in one statement (sluice_queue_runs, claim.sql); their events come last
 * (RUN_EVENTS_SQL). */
static const char INSERT_RUNS_SQL[] = "SELECT sluice_queue_runs($1, $2, $3, $4::json)";

/* The runs' 'queued' events, placed after the files' (in the runs' JSON
 * order), made from the same JSON that INSERT_RUNS_SQL inserted a moment
 * before in this transaction ($3). They joined that JSON to the batch's runs
 * rows once: the planner, blind to the JSON's size, chose a nested loop, so
 * 1,000 runs compared 500,000 pairs (47 ms) while the files' places held the
 * dataset's lock, and every transition of the dataset waited for it. */
static const char RUN_EVENTS_SQL[] =
    "WITH x AS (SELECT * FROM ROWS FROM (json_to_recordset($3::json)"
    "           AS (id uuid, file_id uuid, pipeline text)) WITH ORDINALITY AS x(id, file_id,"
    "           pipeline, k)),"
    " pl AS (SELECT sluice_event_places($2::uuid, (SELECT count(*) FROM x)) AS first)"
    " INSERT INTO run_events (seq, tenant_id, dataset_id, file_id, run_id, pipeline, kind, state)"
    " SELECT pl.first + x.k - 1, $1, $2, x.file_id, x.id, x.pipeline,"
    " 'queued', 'queued' FROM x, pl ORDER BY x.k"
    " RETURNING " SL_RUN_EVENT_COLUMNS;

/* Every part is durable: record the whole batch in one transaction (prepared
 * statements: parsing and planning them was about a third of the upload's
 * SQL time for one small file, bench/latency_bench.py). */
static void store_rows(upload_t *up)
{
    json_t *runs = NULL;
    json_t *files = rows_json(up, &runs);
    char *files_txt = files ? json_dumps(files, JSON_COMPACT) : NULL;
    char *runs_txt = runs ? json_dumps(runs, JSON_COMPACT) : NULL;
    sl_pg_batch_t *b = sl_pg_batch_new(up->app->pg);
    if (!files_txt || !runs_txt || !b)
        goto fail;
    const char *fp[] = {up->tenant_id, up->dataset_id, up->batch_id, files_txt};
    const char *rp[] = {up->tenant_id, up->dataset_id, up->batch_id, runs_txt};
    const char *ep[] = {up->tenant_id, up->dataset_id, runs_txt};
    if (sl_pg_batch_add_prepared(b, "upload_files", INSERT_FILES_SQL, 4, fp) < 0 ||
        sl_pg_batch_add_prepared(b, "upload_runs", INSERT_RUNS_SQL, 4, rp) < 0)
        goto fail;
    const char *params[] = {up->tenant_id, up->batch_id, up->idem_key};
    if (up->idem_reserved) {
        /* The stored first response is the very document we answer with. */
        char sql[1024];
        snprintf(sql, sizeof sql,
                 "UPDATE idempotency_keys SET status = 202, body = (%s) "
                 "WHERE tenant_id = $1 AND key = $3",
                 RESPONSE_SQL);
        if (sl_pg_batch_add(b, sql, 3, params) < 0)
            goto fail;
    }
    /* The events last: their places lock the dataset's row until the commit,
     * and every transition of the dataset waits for it, so nothing slow (the
     * runs' trigger, the response's documents: 0.2 s for 500 files) comes
     * after them (the SSE tail of bench/sse_bench.py was that wait). */
    if (sl_pg_batch_add_prepared(b, "upload_response", RESPONSE_SQL, 2, params) < 0 ||
        sl_pg_batch_add_prepared(b, "upload_file_events", FILE_EVENTS_SQL, 3, rp) < 0 ||
        sl_pg_batch_add_prepared(b, "upload_run_events", RUN_EVENTS_SQL, 3, ep) < 0)
        goto fail;
    json_decref(files);
    json_decref(runs);
    free(files_txt);
    free(runs_txt);
    up->refs++;
    if (sl_pg_batch_exec(b, batch_done_cb, up) != 0) {
        up->refs--;
        upload_fail(up, 500, "internal_error", "could not record the upload");
    }
    return;
fail:
    sl_pg_batch_free(b);
    json_decref(files);
    json_decref(runs);
    free(files_txt);
    free(runs_txt);
    upload_fail(up, 500, "internal_error", "could not record the upload");
}

/* Called after each commit and at body end: proceeds once both are done. */
static void upload_maybe_finish(upload_t *up)
{
    if (up->failed)
        return; /* answered by upload_fail's deferred response */
    if (!up->body_done || up->commits_pending > 0 || !up->req)
        return;
    if (sl_http_req_closed(up->req)) {
        upload_fail(up, 400, "truncated_body", "the client went away");
        return;
    }
    if (up->nparts == 0) {
        upload_fail(up, 400, "no_files", "the body has no part with a filename");
        return;
    }
    if (up->synced == 0) {
        /*
         * The parts were committed with their names' sync deferred: one sync
         * of their directory (every key is files/<tenant>/<id>), shared with
         * the tenant's other uploads committing now, makes them all durable
         * before any row points at them (core/storage.h, sl_store_sync).
         */
        up->synced = 1;
        up->refs++;
        if (sl_store_sync(up->app->store, up->parts[0].key, synced_cb, up) != 0) {
            up->refs--;
            upload_fail(up, 503, "storage_unavailable", "cannot write to storage");
        }
        return;
    }
    if (up->synced == 2)
        store_rows(up);
}

static void synced_cb(int err, void *arg)
{
    upload_t *up = arg;
    if (err) {
        upload_fail(up, 503, "storage_unavailable", "cannot write to storage");
    } else {
        up->synced = 2;
        upload_maybe_finish(up);
    }
    upload_release(up);
}

/* ---- http body callbacks ---- */

/*
 * rate_limits.upload_bytes_per_s: the body is charged to the tenant as it
 * streams, in quanta (1/20 s of the rate, 16 KiB..1 MiB, at most the burst),
 * after the bytes were read. While a charge waits for the limiter the socket
 * is not read, so an upload over its tenant's rate slows down instead of
 * failing; only a wait past BYTES_MAX_WAIT_MS answers 429.
 */
#define BYTES_MAX_WAIT_MS 30000

static double bytes_quantum(const sl_config_t *cfg, double burst)
{
    double q = cfg->rl_upload_bytes_per_s / 20;
    q = q < 16384 ? 16384 : q > 1048576 ? 1048576 : q;
    return q > burst ? burst : q;
}

static void charge_bytes(upload_t *up);

static void bytes_charged_cb(int err, double retry_after_s, void *arg)
{
    upload_t *up = arg;
    const sl_config_t *cfg = up->app->cfg;
    double burst = cfg->rl_upload_bytes_burst > 0 ? cfg->rl_upload_bytes_burst
                                                   : cfg->rl_upload_bytes_per_s;
    up->rl_op = NULL;
    if (err == 0 && !up->failed && up->req) {
        up->byte_credit += bytes_quantum(cfg, burst < 1 ? 1 : burst);
        if (up->byte_credit < 0)
            charge_bytes(up); /* a chunk bigger than a quantum: charge on */
        else if (!up->writer || sl_store_pending(up->writer) < SL_STORE_HIGH_WATER)
            sl_http_req_resume(up->req); /* else the writer's drain resumes it */
    } else if (err != 0 && !up->failed) {
        (void)retry_after_s;
        upload_fail(up, err == SL_EAGAIN ? 429 : 503, err == SL_EAGAIN ? "rate_limited" : "unavailable",
                    err == SL_EAGAIN ? "the tenant's upload bytes per second are used up"
                                     : "shutting down");
    }
    upload_release(up);
}

/* Pauses the body and charges one quantum of bytes to the tenant. */
static void charge_bytes(upload_t *up)
{
    const sl_config_t *cfg = up->app->cfg;
    double burst = cfg->rl_upload_bytes_burst > 0 ? cfg->rl_upload_bytes_burst
                                                   : cfg->rl_upload_bytes_per_s;
    sl_rl_limit_t lim = {cfg->rl_upload_bytes_per_s, burst < 1 ? 1 : burst};
    char key[64];
    snprintf(key, sizeof key, "bytes:%s", up->tenant_id);
    sl_http_req_pause(up->req);
    up->refs++;
    if (sl_ratelimit_check(up->app->ratelimit, "upload_bytes", key, &lim,
                           bytes_quantum(cfg, lim.burst), BYTES_MAX_WAIT_MS, bytes_charged_cb, up,
                           &up->rl_op) != 0) {
        up->refs--;
        up->rl_op = NULL;
        up->byte_credit = 0; /* the limiter cannot answer: let the body through */
        sl_http_req_resume(up->req);
    }
}

static int body_data_cb(sl_http_req_t *req, const char *data, size_t len, void *arg)
{
    upload_t *up = arg;
    (void)req;
    if (up->failed || !up->req)
        return 1;
    sl_metrics_add(up->app->m_upload_bytes, (double)len);
    int err = sl_multipart_feed(up->mp, data, len);
    if (err == SL_EPROTO)
        upload_fail(up, 400, "malformed_multipart", "the multipart body is malformed");
    if (err) {
        /* The body is abandoned (no end_cb will come); upload_fail answers. */
        up->body_done = 1;
        return 1;
    }
    if (up->app->ratelimit && up->app->cfg->rl_upload_bytes_per_s > 0 && !up->failed) {
        up->byte_credit -= (double)len;
        if (up->byte_credit < 0 && !up->rl_op)
            charge_bytes(up);
    }
    return 0;
}

static void body_end_cb(sl_http_req_t *req, int err, void *arg)
{
    upload_t *up = arg;
    (void)req;
    if (up->body_done)
        return;
    up->body_done = 1;
    if (!up->failed) {
        if (err == SL_ETIMEDOUT)
            upload_fail(up, 408, "request_timeout", "the upload stalled");
        else if (err == SL_EPROTO)
            upload_fail(up, 400, "bad_request", "malformed request body framing");
        else if (err == SL_ETOOBIG) /* counted as received: chunked bodies too */
            upload_fail(up, 413, "request_too_large",
                        "the body is larger than limits.max_request_bytes");
        else if (err)
            upload_fail(up, 400, "truncated_body", "the body ended early or the client went away");
        else if (!sl_multipart_done(up->mp))
            upload_fail(up, 400, "malformed_multipart",
                        "the body ended before the closing multipart boundary");
    }
    upload_maybe_finish(up);
}

static void start_streaming(upload_t *up)
{
    static const sl_multipart_cbs_t cbs = {part_begin_cb, part_data_cb, part_end_cb};
    up->mp = sl_multipart_new(up->boundary, &cbs, up);
    if (!up->mp || sl_http_req_stream_body(up->req, body_data_cb, body_end_cb, up) != 0) {
        upload_fail(up, 500, "internal_error", "cannot start the upload");
        return;
    }
    sl_http_req_resume(up->req);
}

/*
 * The request was answered by someone else (a replay, or a refusal of the
 * Idempotency-Key) before a byte of the body was read: give back the upload
 * slot and drop the request's reference (the tenant's hold goes with the
 * last reference).
 */
static void answered_elsewhere(upload_t *up)
{
    up->req = NULL;
    up->app->active_uploads--;
    upload_release(up);
}

/* sl_api_idem_begin's release: it refused the key (400/409/503) and answered. */
static void idem_refused(void *arg)
{
    answered_elsewhere(arg);
}

static void idem_cb(sl_app_t *app, sl_http_req_t *req, int outcome, void *arg)
{
    upload_t *up = arg;
    (void)app;
    (void)req;
    if (outcome == SL_IDEM_REPLAYED) {
        answered_elsewhere(up); /* with the first response */
        return;
    }
    up->idem_reserved = outcome == SL_IDEM_NEW;
    start_streaming(up);
}

static void dataset_cb(const sl_pg_result_t *r, void *arg)
{
    upload_t *up = arg;
    if (r->err) {
        sl_http_req_t *req = up->req;
        up->req = NULL;
        up->app->active_uploads--;
        sl_api_db_error(req, r);
        upload_release(up);
        return;
    }
    if (PQntuples(r->res[0]) != 1) {
        upload_fail(up, 404, "not_found", "no such dataset");
        return;
    }
    /* ?process= wins over the dataset's auto_process (docs/lifecycle.md). */
    up->process = up->process_param >= 0 ? up->process_param
                                         : strcmp(PQgetvalue(r->res[0], 0, 0), "t") == 0;
    up->allowed = sl_pipesel_allowed(
        up->app, PQgetisnull(r->res[0], 0, 1) ? NULL : PQgetvalue(r->res[0], 0, 1));
    const char *key = sl_http_req_header(up->req, "Idempotency-Key");
    if (key) {
        snprintf(up->idem_key, sizeof up->idem_key, "%s", key);
        sl_api_idem_begin(up->app, up->req, up->tenant_id, "POST /v1/datasets/{id}/files", idem_cb,
                          up, idem_refused);
        return;
    }
    start_streaming(up);
}

/* The dataset id of "/v1/datasets/{id}/files" (checked by the router and route_upload). */
static void dataset_id_from_path(const char *path, char out[37])
{
    const char *p = path + strlen("/v1/datasets/");
    snprintf(out, 37, "%.36s", p);
}

/*
 * Authenticated: now the upload gets its state. It is not made earlier
 * because sl_api_auth answers failures itself and never calls back.
 */
static void auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    int process_param;
    if (sl_pipesel_process_param(req, &process_param) != 0) {
        sl_http_respond_error(req, 400, "invalid_request", "process must be true, false, 1 or 0",
                              -1);
        return;
    }
    upload_t *up = calloc(1, sizeof *up);
    if (!up || sl_uuid_v4(up->batch_id) != 0) {
        free(up);
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    up->app = app;
    up->req = req;
    up->refs = 1;
    up->process_param = process_param;
    snprintf(up->tenant_id, sizeof up->tenant_id, "%s", tenant_id);
    dataset_id_from_path(sl_http_req_path(req), up->dataset_id);
    if (sl_multipart_boundary(sl_http_req_header(req, "Content-Type"), up->boundary,
                              sizeof up->boundary) < 0) {
        free(up);
        sl_http_respond_error(req, 415, "unsupported_media_type", "not multipart", -1);
        return;
    }
    /* Overload: past the caps an upload is refused before a byte of it is read. */
    if (app->cfg->max_uploads_in_flight > 0 &&
        app->active_uploads >= app->cfg->max_uploads_in_flight) {
        free(up);
        sl_http_respond_error(req, 503, "overloaded", "too many uploads in progress; retry later",
                              1);
        return;
    }
    if (app->ratelimit && app->cfg->max_uploads_per_tenant > 0) {
        if (sl_ratelimit_hold(app->ratelimit, up->tenant_id, app->cfg->max_uploads_per_tenant) !=
            0) {
            free(up);
            sl_http_respond_error(req, 429, "rate_limited",
                                  "too many uploads in progress for this tenant", 1);
            return;
        }
        up->tenant_held = 1;
    }
    app->active_uploads++;
    const char *params[] = {up->tenant_id, up->dataset_id};
    if (sl_pg_query_prepared(app->pg, "upload_dataset",
                    "SELECT auto_process, to_json(pipelines)::text FROM datasets"
                    " WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL", /* retention */
                    2, params, dataset_cb, up) != 0) {
        upload_fail(up, 503, "database_unavailable", "database unavailable");
    }
}

static void route_upload(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    /* Nothing of the body is read until the caller and the dataset are known. */
    sl_http_req_pause(req);
    if (!sl_is_uuid(params->values[0])) {
        sl_http_respond_error(req, 404, "not_found", "no such dataset", -1);
        return;
    }
    const char *ct = sl_http_req_header(req, "Content-Type");
    char boundary[SL_MULTIPART_MAX_BOUNDARY + 1];
    if (!ct || sl_multipart_boundary(ct, boundary, sizeof boundary) < 0) {
        sl_http_respond_error(req, 415, "unsupported_media_type",
                              "the body must be multipart/form-data with a boundary", -1);
        return;
    }
    int64_t clen = sl_http_req_content_length(req);
    int64_t max_total = app->cfg->max_request_bytes;
    if (max_total > 0 && clen > max_total) {
        sl_http_respond_error(req, 413, "request_too_large",
                              "the body is larger than limits.max_request_bytes", -1);
        return;
    }
    sl_api_auth(app, req, 0, auth_cb, NULL);
}

void sl_api_register_upload(sl_app_t *app)
{
    sl_http_router_add(app->router, "POST", "/v1/datasets/{id}/files", "files_upload",
                       route_upload, app);
}
