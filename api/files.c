/*
 * files.c — one file and its timeline: get, list a dataset's files, events,
 * delete, original content, and (re)process.
 *
 * Every handler authenticates first, then runs one parameterised batch that
 * filters on the caller's tenant_id, so another tenant's file is a 404 just
 * like a missing one (and so is a malformed id). The JSON documents come from
 * the SQL functions of db/migrations/002_json.sql and are passed through as
 * text; lists are aggregated in SQL too, so no JSON is re-encoded here.
 *
 * State is allocated only after sl_api_auth calls back, because it answers
 * failures itself and never calls back then; the path's {id} is read again
 * from the router at that point (route params are borrowed for the route call
 * only).
 */
#include "api/api.h"
#include "api/pipesel.h"
#include "api/validate.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define LIST_LIMIT_DEFAULT 50
#define LIST_LIMIT_MAX 1000
#define IDEM_KEY_MAX 255
#define PROCESS_ENDPOINT "POST /v1/files/{id}/process"

/* Per-request state of the simple read/delete handlers. */
typedef struct file_req_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char tenant_id[37];
    char id[37];
    uint64_t ticket; /* GET: the file cache's fill ticket (api/cache.h) */
} file_req_t;

/* ---- small helpers ---- */


static void respond_not_found(sl_http_req_t *req, const char *what)
{
    sl_http_respond_error(req, 404, "not_found", what, -1);
}

static void respond_unavailable(sl_http_req_t *req)
{
    sl_http_respond_error(req, 503, "database_unavailable", "the database is unavailable", 2);
}

static file_req_t *file_req_new(sl_app_t *app, sl_http_req_t *req, const char *tenant_id,
                                const char *id)
{
    file_req_t *fr = calloc(1, sizeof *fr);
    if (!fr) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return NULL;
    }
    fr->app = app;
    fr->req = req;
    snprintf(fr->tenant_id, sizeof fr->tenant_id, "%s", tenant_id);
    snprintf(fr->id, sizeof fr->id, "%s", id);
    return fr;
}

/*
 * Sends batch b with fr as the callback argument; on a send failure (no
 * callback will come) answers 503 and frees fr. Takes b.
 */
static void exec_or_fail(sl_pg_batch_t *b, sl_pg_cb cb, file_req_t *fr)
{
    if (!b) {
        sl_http_respond_error(fr->req, 500, "internal_error", "out of memory", -1);
        free(fr);
        return;
    }
    if (sl_pg_batch_exec(b, cb, fr) != 0) {
        respond_unavailable(fr->req);
        free(fr);
    }
}

/* Adds every statement of sqls (all with the same params) to a new batch. */
static sl_pg_batch_t *batch_of(sl_pg_t *pg, const char *const *sqls, int nsql, int nparams,
                               const char *const *params)
{
    sl_pg_batch_t *b = sl_pg_batch_new(pg);
    if (!b)
        return NULL;
    for (int i = 0; i < nsql; i++) {
        if (sl_pg_batch_add(b, sqls[i], nparams, params) < 0) {
            sl_pg_batch_free(b);
            return NULL;
        }
    }
    return b;
}

/* A single-file handler: its statements (all with params tenant_id, id) and their callback. */
typedef struct file_query_s {
    const char *const *sql;
    int nsql;
    sl_pg_cb cb;
} file_query_t;

/*
 * The sl_api_auth callback of the single-file handlers (arg: a static
 * file_query_t, borrowed): reads the route's {id} (404 "no such file" when
 * malformed), allocates the request state and sends the handler's statements
 * with its callback and the state as argument. Answers every failure itself
 * (then no callback).
 */
static void file_query_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id,
                               void *arg)
{
    const file_query_t *q = arg;
    char id[37];
    if (sl_api_route_uuid(app, req, id) != 0) {
        respond_not_found(req, "no such file");
        return;
    }
    file_req_t *fr = file_req_new(app, req, tenant_id, id);
    if (!fr)
        return;
    const char *params[] = {fr->tenant_id, fr->id};
    exec_or_fail(batch_of(app->pg, q->sql, q->nsql, 2, params), q->cb, fr);
}

/* Answers with column 0 of row 0 of res as JSON text, or 404 when there is no row. */
static void respond_first_json(sl_http_req_t *req, int status, PGresult *res, const char *what)
{
    if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
        respond_not_found(req, what);
        return;
    }
    sl_api_json_text(req, status, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
}

/* ---- GET /v1/files/{id} ---- */

/*
 * Served from the file cache when it holds the document (api/cache.h: every
 * instance forgets it on every event of the file and on every write), else
 * from Postgres, then kept. Both answer with the document's ETag, or 304.
 */
static const char GET_SQL[] =
    "SELECT sluice_file_json(f)::text FROM files f WHERE f.tenant_id = $1 AND f.id = $2"
    " AND NOT sluice_dataset_gone(f.dataset_id)"; /* retention */

static void get_done_cb(const sl_pg_result_t *r, void *arg)
{
    file_req_t *fr = arg;
    PGresult *res = r->err ? NULL : r->res[0];
    if (r->err) {
        sl_api_db_error(fr->req, r);
    } else if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
        respond_not_found(fr->req, "no such file"); /* never cached */
    } else {
        const char *body = PQgetvalue(res, 0, 0);
        size_t len = (size_t)PQgetlength(res, 0, 0);
        char etag[SL_CACHE_ETAG_LEN];
        sl_cache_etag(body, len, etag);
        sl_cache_file_put(fr->app->cache, fr->tenant_id, fr->id, body, len, etag, fr->ticket);
        sl_api_json_etag(fr->req, body, len, etag);
    }
    free(fr);
}

static void get_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37];
    const char *body, *etag;
    size_t len;
    if (sl_api_route_uuid(app, req, id) != 0) {
        respond_not_found(req, "no such file");
        return;
    }
    if (sl_cache_file_get(app->cache, tenant_id, id, &body, &len, &etag)) {
        sl_api_json_etag(req, body, len, etag);
        return;
    }
    file_req_t *fr = file_req_new(app, req, tenant_id, id);
    if (!fr)
        return;
    fr->ticket = sl_cache_file_ticket(app->cache); /* before the query is sent */
    const char *params[] = {fr->tenant_id, fr->id};
    if (sl_pg_query_prepared(app->pg, "sl_file_get", GET_SQL, 2, params, get_done_cb, fr) != 0) {
        respond_unavailable(req);
        free(fr);
    }
}

static void route_get(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, get_auth_cb, NULL);
}

/* ---- GET /v1/datasets/{id}/files?limit=&cursor=&status= ---- */

/*
 * Newest first by files.seq. The cursor is "c<seq>" of the last file of the
 * page; the next page holds files with a smaller seq. limit+1 rows are read to
 * know whether there is a next page; the page and next_cursor are built in
 * one JSON document by Postgres.
 */
static const char LIST_SQL[] =
    "WITH page AS ("
    "  SELECT f FROM files f"
    "  WHERE f.tenant_id = $1 AND f.dataset_id = $2"
    "    AND ($3::bigint IS NULL OR f.seq < $3::bigint)"
    "    AND ($4::text IS NULL OR sluice_file_status(f.id) = $4::text)"
    "  ORDER BY f.seq DESC LIMIT $5::int + 1),"
    /* the page's queued runs numbered in one pass (json.sql), not one count each */
    " pos AS MATERIALIZED (SELECT sluice_queue_positions($1,"
    "                             ARRAY(SELECT (page.f).id FROM page)) AS p),"
    " numbered AS (SELECT (page.f).seq AS seq, sluice_file_json(page.f, pos.p) AS j,"
    "                     row_number() OVER (ORDER BY (page.f).seq DESC) AS rn FROM page, pos)"
    " SELECT json_build_object("
    "  'files', coalesce(json_agg(j ORDER BY seq DESC) FILTER (WHERE rn <= $5::int), '[]'::json),"
    "  'next_cursor', CASE WHEN count(*) > $5::int"
    "                 THEN 'c' || min(seq) FILTER (WHERE rn <= $5::int) END)::text"
    " FROM numbered";

/*
 * Answers a two-statement batch whose first statement checks that the parent
 * row exists (404 `what` without a row) and whose second returns the JSON
 * document; frees fr.
 */
static void respond_checked_json(const sl_pg_result_t *r, file_req_t *fr, const char *what)
{
    if (r->err)
        sl_api_db_error(fr->req, r);
    else if (PQntuples(r->res[0]) < 1)
        respond_not_found(fr->req, what);
    else
        respond_first_json(fr->req, 200, r->res[1], what);
    free(fr);
}

static void list_done_cb(const sl_pg_result_t *r, void *arg)
{
    file_req_t *fr = arg;
    PGresult *res = r->err ? NULL : r->res[1];
    if (r->err || PQntuples(r->res[0]) < 1 || PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
        respond_checked_json(r, fr, "no such dataset");
        return;
    }
    sl_api_json_etag(fr->req, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0), NULL);
    free(fr);
}

static void list_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37], buf[64];
    if (sl_api_route_uuid(app, req, id) != 0) {
        respond_not_found(req, "no such dataset");
        return;
    }
    long limit = LIST_LIMIT_DEFAULT;
    int n = sl_api_query_param(req, "limit", buf, sizeof buf);
    if (n != -1 && (n < 0 || sl_api_parse_long(buf, 1, LIST_LIMIT_MAX, &limit) != 0)) {
        sl_http_respond_error(req, 400, "invalid_request", "limit must be an integer in 1..1000",
                              -1);
        return;
    }
    char cursor[32] = "";
    n = sl_api_query_param(req, "cursor", buf, sizeof buf);
    if (n != -1) {
        long seq;
        if (n < 2 || buf[0] != 'c' || sl_api_parse_long(buf + 1, 1, 999999999999999999L, &seq) != 0) {
            sl_http_respond_error(req, 400, "invalid_cursor", "the cursor is not one we made", -1);
            return;
        }
        snprintf(cursor, sizeof cursor, "%ld", seq);
    }
    const char *status = NULL; /* static string */
    n = sl_api_query_param(req, "status", buf, sizeof buf);
    if (n != -1) {
        static const char *const ok[] = {"uploaded", "queued", "processing", "done", "failed"};
        for (size_t i = 0; n >= 0 && i < sizeof ok / sizeof ok[0]; i++)
            if (strcmp(buf, ok[i]) == 0)
                status = ok[i];
        if (!status) {
            sl_http_respond_error(req, 400, "invalid_request",
                                  "status must be uploaded, queued, processing, done or failed",
                                  -1);
            return;
        }
    }
    file_req_t *fr = file_req_new(app, req, tenant_id, id);
    if (!fr)
        return;
    char lim[16];
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *params[] = {fr->tenant_id, fr->id, cursor[0] ? cursor : NULL, status, lim};
    sl_pg_batch_t *b = sl_pg_batch_new(app->pg);
    if (b && (sl_pg_batch_add(b, "SELECT 1 FROM datasets WHERE tenant_id = $1 AND id = $2"
                              " AND deleted_at IS NULL", 2, params) < 0 || /* retention */
              sl_pg_batch_add(b, LIST_SQL, 5, params) < 0)) {
        sl_pg_batch_free(b);
        b = NULL;
    }
    exec_or_fail(b, list_done_cb, fr);
}

static void route_list(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, list_auth_cb, NULL);
}

/* ---- GET /v1/files/{id}/events?after=SEQ ---- */

static void events_done_cb(const sl_pg_result_t *r, void *arg)
{
    respond_checked_json(r, arg, "no such file");
}

static void events_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37], buf[32], after[32] = "";
    if (sl_api_route_uuid(app, req, id) != 0) {
        respond_not_found(req, "no such file");
        return;
    }
    int n = sl_api_query_param(req, "after", buf, sizeof buf);
    if (n != -1) {
        long seq;
        if (n < 0 || sl_api_parse_long(buf, 0, 999999999999999999L, &seq) != 0) {
            sl_http_respond_error(req, 400, "invalid_request",
                                  "after must be a non-negative integer", -1);
            return;
        }
        snprintf(after, sizeof after, "%ld", seq);
    }
    file_req_t *fr = file_req_new(app, req, tenant_id, id);
    if (!fr)
        return;
    const char *params[] = {fr->tenant_id, fr->id, after[0] ? after : NULL};
    sl_pg_batch_t *b = sl_pg_batch_new(app->pg);
    if (b && (sl_pg_batch_add(b, "SELECT 1 FROM files WHERE tenant_id = $1 AND id = $2"
                              " AND NOT sluice_dataset_gone(dataset_id)", 2, params) < 0 ||
              sl_pg_batch_add(b,
                              "SELECT json_build_object('events', coalesce("
                              "json_agg(sluice_event_json(e) ORDER BY e.seq), '[]'::json))::text"
                              " FROM run_events e WHERE e.tenant_id = $1 AND e.file_id = $2"
                              " AND ($3::bigint IS NULL OR e.seq > $3::bigint)",
                              3, params) < 0)) {
        sl_pg_batch_free(b);
        b = NULL;
    }
    exec_or_fail(b, events_done_cb, fr);
}

static void route_events(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, events_auth_cb, NULL);
}

/* ---- status events (SSE) ---- */

/* ---- DELETE /v1/files/{id} ---- */

static void delete_published_cb(void *arg)
{
    file_req_t *fr = arg;
    sl_http_respond(fr->req, 204, NULL, NULL, 0);
    free(fr);
}

/*
 * Rows first, blobs after: once the rows are gone nothing points at the blobs,
 * so a blob left behind by a failed delete is harmless, while a row pointing at
 * a missing blob would not be.
 */
static void delete_done_cb(const sl_pg_result_t *r, void *arg)
{
    file_req_t *fr = arg;
    if (r->err) {
        sl_api_db_error(fr->req, r);
        free(fr);
        return;
    }
    PGresult *arts = r->res[1], *files = r->res[2];
    if (PQntuples(files) < 1) {
        respond_not_found(fr->req, "no such file");
        free(fr);
        return;
    }
    /*
     * Its timeline went with it (cascade), so the "deleted" event has a place
     * in the dataset's series but no row: it is live only, a replay cannot
     * show it.
     */
    const char *v[SL_RUN_EVENT_NCOLS] = {
        PQgetvalue(files, 0, 2), PQgetvalue(files, 0, 1), fr->id, NULL, NULL, NULL,
        "deleted",               "deleted",               PQgetvalue(files, 0, 3)};
    sl_run_event_publish_values(fr->app->pubsub, "file", v);
    sl_log(SL_LOG_INFO, "file_deleted", "{s:s, s:s, s:i}", "tenant_id", fr->tenant_id, "file_id",
           fr->id, "artifacts", PQntuples(arts));
    for (int i = 0; i < PQntuples(files); i++)
        sl_store_delete_bg(fr->app->store, PQgetvalue(files, i, 0), "blob_delete_failed");
    for (int i = 0; i < PQntuples(arts); i++)
        sl_store_delete_bg(fr->app->store, PQgetvalue(arts, i, 0), "blob_delete_failed");
    /* Actors of this file on this instance stop now; elsewhere at their next commit. */
    sl_api_engine_cancel_file(fr->app, fr->id);
    /* Answered once every instance's file cache has been told (api/cache.h). */
    if (sl_cache_publish_file(fr->app->cache, fr->id, delete_published_cb, fr) == 0)
        return;
    delete_published_cb(fr);
}

static void route_delete(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    /*
     * One transaction. Locking the file row first keeps a run from adding an
     * artifact (its foreign key needs a share lock on the row) between reading
     * the artifact keys and the delete; runs, events, artifacts and the record
     * go with the file by ON DELETE CASCADE.
     */
    static const char *const sql[] = {
        "SELECT 1 FROM files WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        "SELECT storage_key FROM artifacts WHERE tenant_id = $1 AND file_id = $2"
        " AND storage_key IS NOT NULL", /* small ones have their bytes in the row (018) */
        "WITH d AS (DELETE FROM files WHERE tenant_id = $1 AND id = $2"
        "           AND NOT sluice_dataset_gone(dataset_id) RETURNING storage_key, dataset_id)"
        " SELECT d.storage_key, d.dataset_id, sluice_event_places(d.dataset_id, 1),"
        " sluice_ts(clock_timestamp()) FROM d",
    };
    static file_query_t q = {sql, 3, delete_done_cb};
    sl_api_auth(arg, req, 0, file_query_auth_cb, &q);
}

/* ---- GET /v1/files/{id}/content ---- */

static void content_done_cb(const sl_pg_result_t *r, void *arg)
{
    file_req_t *fr = arg;
    if (r->err) {
        sl_api_db_error(fr->req, r);
    } else if (PQntuples(r->res[0]) < 1) {
        respond_not_found(fr->req, "no such file");
    } else {
        PGresult *res = r->res[0];
        uint64_t size = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
        sl_api_stream_blob(fr->app, fr->req, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), size);
    }
    free(fr);
}

static void route_content(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    static const char *const sql[] = {
        "SELECT storage_key, mime, size FROM files WHERE tenant_id = $1 AND id = $2"
        " AND NOT sluice_dataset_gone(dataset_id)"};
    static file_query_t q = {sql, 1, content_done_cb};
    sl_api_auth(arg, req, 0, file_query_auth_cb, &q);
}

/* ---- POST /v1/files/{id}/process ---- */

typedef struct process_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char tenant_id[37];
    char id[37];
    char idem_key[IDEM_KEY_MAX + 1];
    int idem_reserved; /* we hold a reservation: store the response or release it */
    int explicit_list; /* the body named the pipelines */
    int npipelines;
    char pipelines[SL_CONFIG_MAX_PIPELINES][SL_API_PIPELINE_NAME_MAX];
    char reason[SL_PIPESEL_REASON_MAX]; /* why no pipeline takes the file, or "" */
    char *body; /* owned: the 202's document, while the cache invalidation is published */
    size_t body_len;
} process_t;

/* Finishes with an error, releasing an idempotency reservation first. */
static void process_fail(process_t *pr, int status, const char *code, const char *msg)
{
    if (pr->idem_reserved)
        sl_api_idem_release(pr->app, pr->tenant_id, pr->idem_key);
    sl_http_respond_error(pr->req, status, code, msg, status == 503 ? 2 : -1);
    free(pr);
}

static int pipeline_listed(const process_t *pr, const char *name)
{
    for (int i = 0; i < pr->npipelines; i++)
        if (strcmp(pr->pipelines[i], name) == 0)
            return 1;
    return 0;
}

static void nothing_cb(void *arg)
{
    (void)arg;
}

static void process_published_cb(void *arg)
{
    process_t *pr = arg;
    sl_api_json_text(pr->req, 202, pr->body, pr->body_len);
    free(pr->body);
    free(pr);
}

static void process_done_cb(const sl_pg_result_t *r, void *arg)
{
    process_t *pr = arg;
    if (r->err) {
        if (pr->idem_reserved)
            sl_api_idem_release(pr->app, pr->tenant_id, pr->idem_key);
        sl_api_db_error(pr->req, r);
        free(pr);
        return;
    }
    PGresult *last = r->res[r->n - 1];
    if (PQntuples(last) < 1) {
        process_fail(pr, 404, "not_found", "no such file");
        return;
    }
    /* Statement 0 marks the file (PROCESS_FILE_SQL); then one per run and their
     * events (RUN_EVENTS_SQL), or when no run was started the file's event
     * (PROCESS_FILE_EVENT_SQL); then the response. */
    if (pr->npipelines > 0 && r->n == pr->npipelines + 3)
        sl_run_event_publish_rows(pr->app->pubsub, "run", r->res[pr->npipelines + 1]);
    if (pr->npipelines == 0 && r->n == 3)
        sl_run_event_publish_rows(pr->app->pubsub, "file", r->res[1]);
    sl_api_engine_kick(pr->app);
    /* Answered once every instance's file cache has been told (api/cache.h). */
    pr->body_len = (size_t)PQgetlength(last, 0, 0);
    if ((pr->body = malloc(pr->body_len + 1)) != NULL) {
        memcpy(pr->body, PQgetvalue(last, 0, 0), pr->body_len);
        if (sl_cache_publish_file(pr->app->cache, pr->id, process_published_cb, pr) == 0)
            return;
        process_published_cb(pr);
        return;
    }
    sl_cache_publish_file(pr->app->cache, pr->id, nothing_cb, NULL); /* out of memory: no wait */
    sl_api_json_text(pr->req, 202, PQgetvalue(last, 0, 0), (size_t)PQgetlength(last, 0, 0));
    free(pr);
}

/*
 * One run per pipeline unless one is active already (the partial unique index
 * runs_one_active makes the check atomic; a run in flight makes the insert
 * wait for its transition's commit), then RUN_EVENTS_SQL, then the response.
 * With an idempotency reservation the response document is stored by the
 * same statement that returns it, so the replay is byte for byte what was
 * answered, and commits with the runs.
 */
static const char RUN_SQL[] =
    "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline)"
    " SELECT $3::uuid, f.tenant_id, f.dataset_id, f.id, $4::uuid, $5::text FROM files f"
    " WHERE f.tenant_id = $1 AND f.id = $2 AND NOT sluice_dataset_gone(f.dataset_id)"
    " ON CONFLICT (file_id, pipeline) WHERE state IN ('queued','running','waiting') DO NOTHING";

/*
 * A 'queued' timeline event for each run the batch ($2) inserted, in the
 * request's pipeline order ($3, a JSON array of names), at places taken last
 * (docs/internals/sse.md "Places": every writer of events takes its dataset's
 * places last, after the runs, as sluice_run_transitions does).
 */
static const char RUN_EVENTS_SQL[] =
    "WITH rk AS (SELECT r.tenant_id, r.dataset_id, r.file_id, r.id, r.pipeline,"
    "                   row_number() OVER (ORDER BY p.k) AS k"
    "            FROM runs r JOIN json_array_elements_text($3::json) WITH ORDINALITY"
    "                 AS p(name, k) ON p.name = r.pipeline"
    "            WHERE r.tenant_id = $1 AND r.batch_id = $2::uuid),"
    " pl AS (SELECT sluice_event_places((SELECT rk.dataset_id FROM rk LIMIT 1),"
    "                                   (SELECT count(*) FROM rk)) AS first)"
    " INSERT INTO run_events (seq, tenant_id, dataset_id, file_id, run_id, pipeline, kind, state)"
    " SELECT pl.first + rk.k - 1, rk.tenant_id, rk.dataset_id, rk.file_id, rk.id, rk.pipeline,"
    " 'queued', 'queued' FROM rk, pl ORDER BY rk.k"
    " RETURNING " SL_RUN_EVENT_COLUMNS;

/*
 * The file is processed now (no longer 'uploaded'), and says why when no
 * pipeline takes it and it has no run at all ($3: the reason, or NULL when
 * runs start). First in the batch: the file's row, then the runs', then the
 * dataset's places (the lock order of DELETE /v1/files/{id} and of
 * sluice_run_transitions).
 */
static const char PROCESS_FILE_SQL[] =
    "UPDATE files f SET awaiting_process = false,"
    " reason = CASE WHEN NOT EXISTS (SELECT 1 FROM runs r WHERE r.file_id = f.id) THEN $3::text END"
    " WHERE f.tenant_id = $1 AND f.id = $2 RETURNING f.dataset_id";

/*
 * A process that starts no run changes the file (from 'uploaded' to 'done'
 * with its reason) without a run event: a "file" event (kind 'processed',
 * state its status) tells SSE clients, numbered as upload.c's file events are.
 */
static const char PROCESS_FILE_EVENT_SQL[] =
    "SELECT sluice_event_places(f.dataset_id, 1), f.dataset_id, f.id, NULL,"
    " NULL, NULL, 'processed', sluice_file_status(f.id), sluice_ts(clock_timestamp())"
    " FROM files f WHERE f.tenant_id = $1 AND f.id = $2";

static const char PROCESS_RESPONSE_SQL[] =
    "WITH j AS (SELECT sluice_file_json(f)::text AS body FROM files f"
    "           WHERE f.tenant_id = $1 AND f.id = $2 AND NOT sluice_dataset_gone(f.dataset_id)),"
    " u AS (UPDATE idempotency_keys k SET status = 202, body = j.body FROM j"
    "       WHERE k.tenant_id = $1 AND k.key = $3 RETURNING 1)"
    " SELECT body FROM j";

static void process_run(process_t *pr)
{
    char batch_id[37], run_id[37];
    sl_pg_batch_t *b = sl_pg_batch_new(pr->app->pg);
    if (!b || sl_uuid_v4(batch_id) != 0)
        goto fail;
    const char *fp[] = {pr->tenant_id, pr->id, pr->npipelines == 0 ? pr->reason : NULL};
    if (sl_pg_batch_add(b, PROCESS_FILE_SQL, 3, fp) < 0)
        goto fail;
    for (int i = 0; i < pr->npipelines; i++) {
        if (sl_uuid_v4(run_id) != 0)
            goto fail;
        const char *rp[] = {pr->tenant_id, pr->id, run_id, batch_id, pr->pipelines[i]};
        if (sl_pg_batch_add(b, RUN_SQL, 5, rp) < 0)
            goto fail;
    }
    if (pr->npipelines > 0) {
        json_t *names = json_array();
        int ok = names != NULL;
        for (int i = 0; ok && i < pr->npipelines; i++)
            ok = json_array_append_new(names, json_string(pr->pipelines[i])) == 0;
        char *names_txt = ok ? json_dumps(names, JSON_COMPACT) : NULL;
        json_decref(names);
        const char *ep[] = {pr->tenant_id, batch_id, names_txt};
        int rc = names_txt ? sl_pg_batch_add(b, RUN_EVENTS_SQL, 3, ep) : -1;
        free(names_txt);
        if (rc < 0)
            goto fail;
    }
    if (pr->npipelines == 0 && sl_pg_batch_add(b, PROCESS_FILE_EVENT_SQL, 2, fp) < 0)
        goto fail;
    const char *params[] = {pr->tenant_id, pr->id, pr->idem_reserved ? pr->idem_key : NULL};
    if (sl_pg_batch_add(b, PROCESS_RESPONSE_SQL, 3, params) < 0)
        goto fail;
    if (sl_pg_batch_exec(b, process_done_cb, pr) != 0) {
        process_fail(pr, 503, "database_unavailable", "the database is unavailable");
        return;
    }
    return;
fail:
    sl_pg_batch_free(b);
    process_fail(pr, 500, "internal_error", "could not start the runs");
}

/*
 * The file's mime and its dataset's pipelines are known. An explicit list
 * must name only pipelines the dataset allows (else 400
 * "pipeline_not_allowed"); without one, every pipeline whose match fits the
 * sniffed mime and that the dataset allows, and when there is none, the
 * reason the file will show.
 */
static void process_mime_cb(const sl_pg_result_t *r, void *arg)
{
    process_t *pr = arg;
    if (r->err) {
        if (pr->idem_reserved)
            sl_api_idem_release(pr->app, pr->tenant_id, pr->idem_key);
        sl_api_db_error(pr->req, r);
        free(pr);
        return;
    }
    if (PQntuples(r->res[0]) < 1) {
        process_fail(pr, 404, "not_found", "no such file");
        return;
    }
    const char *mime = PQgetvalue(r->res[0], 0, 0);
    const sl_app_t *app = pr->app;
    sl_pipeset_t allowed =
        sl_pipesel_allowed(app, PQgetisnull(r->res[0], 0, 1) ? NULL : PQgetvalue(r->res[0], 0, 1));
    if (pr->explicit_list) {
        for (int i = 0; i < pr->npipelines; i++) {
            int k = sl_pipesel_index(app, pr->pipelines[i]);
            if (k < 0 || !(allowed & ((sl_pipeset_t)1 << k))) {
                char msg[SL_API_PIPELINE_NAME_MAX + 64];
                snprintf(msg, sizeof msg, "the file's dataset does not allow pipeline %s",
                         pr->pipelines[i]);
                process_fail(pr, 400, "pipeline_not_allowed", msg);
                return;
            }
        }
        process_run(pr);
        return;
    }
    sl_pipeset_t set = sl_pipesel_matching(app, mime) & allowed;
    pr->npipelines = 0;
    for (int i = 0; i < app->npipelines && pr->npipelines < SL_CONFIG_MAX_PIPELINES; i++) {
        const sl_pipeline_def_t *pl = &app->pipelines[i];
        if ((set & ((sl_pipeset_t)1 << i)) && !pipeline_listed(pr, pl->name))
            snprintf(pr->pipelines[pr->npipelines++], sizeof pr->pipelines[0], "%s", pl->name);
    }
    if (pr->npipelines == 0)
        sl_pipesel_reason(app, mime, allowed, pr->reason, sizeof pr->reason);
    process_run(pr);
}

static void process_start(process_t *pr)
{
    const char *params[] = {pr->tenant_id, pr->id};
    if (sl_pg_query(pr->app->pg,
                    "SELECT f.mime, to_json(d.pipelines)::text FROM files f"
                    " JOIN datasets d ON d.id = f.dataset_id"
                    " WHERE f.tenant_id = $1 AND f.id = $2 AND d.deleted_at IS NULL", /* retention */
                    2, params, process_mime_cb, pr) != 0)
        process_fail(pr, 503, "database_unavailable", "the database is unavailable");
}

static void process_idem_cb(sl_app_t *app, sl_http_req_t *req, int outcome, void *arg)
{
    process_t *pr = arg;
    (void)app;
    (void)req;
    if (outcome == SL_IDEM_REPLAYED) { /* the first response was sent again */
        free(pr);
        return;
    }
    pr->idem_reserved = outcome == SL_IDEM_NEW;
    process_start(pr);
}

/*
 * The body: empty, or {"pipelines": ["name", ...]} with known names. Returns 0,
 * or answers 400 itself and returns -1.
 */
static int process_parse_body(process_t *pr, const char *body, size_t len)
{
    const char *known[SL_CONFIG_MAX_PIPELINES];
    int nknown = 0;
    sl_api_verr_t e;
    for (int i = 0; i < pr->app->npipelines && i < SL_CONFIG_MAX_PIPELINES; i++)
        if (pr->app->pipelines[i].origin != SL_PIPE_GONE) /* issue 14: deleted ones are unknown */
            known[nknown++] = pr->app->pipelines[i].name;
    if (sl_api_process_body(body, len, known, nknown, pr->pipelines, &pr->npipelines,
                            &pr->explicit_list, &e) != 0) {
        sl_http_respond_error(pr->req, e.status, e.code, e.msg, -1);
        return -1;
    }
    return 0;
}

/* Body parsed: take the idempotency reservation (if any), then do the work. */
static void process_after_body(process_t *pr)
{
    const char *key = sl_http_req_header(pr->req, "Idempotency-Key");
    if (!key) {
        process_start(pr);
        return;
    }
    /* An over-long key is answered 400 by sl_api_idem_begin (pr released). */
    snprintf(pr->idem_key, sizeof pr->idem_key, "%.*s", IDEM_KEY_MAX, key);
    sl_api_idem_begin(pr->app, pr->req, pr->tenant_id, PROCESS_ENDPOINT, process_idem_cb, pr, free);
}

static void process_body_cb(sl_http_req_t *req, int err, const char *body, size_t len, void *arg)
{
    process_t *pr = arg;
    if (err == SL_ETOOBIG || err == SL_EPROTO) { /* the server answered 413 / 400 itself */
        free(pr);
        return;
    }
    if (err) { /* client gone or stalled: this answer is discarded */
        sl_http_respond_error(req, 400, "bad_request", "the body did not arrive", -1);
        free(pr);
        return;
    }
    if (process_parse_body(pr, body, len) != 0) {
        free(pr);
        return;
    }
    process_after_body(pr);
}

static void process_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    (void)arg;
    char id[37];
    if (sl_api_route_uuid(app, req, id) != 0) {
        respond_not_found(req, "no such file");
        return;
    }
    process_t *pr = calloc(1, sizeof *pr);
    if (!pr) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return;
    }
    pr->app = app;
    pr->req = req;
    snprintf(pr->tenant_id, sizeof pr->tenant_id, "%s", tenant_id);
    snprintf(pr->id, sizeof pr->id, "%s", id);
    if (!sl_http_req_has_body(req)) {
        process_after_body(pr);
        return;
    }
    size_t max = app->cfg && app->cfg->max_json_bytes ? app->cfg->max_json_bytes : 1024 * 1024;
    if (sl_http_req_read_body(req, max, process_body_cb, pr) != 0) {
        sl_http_respond_error(req, 500, "internal_error", "cannot read the body", -1);
        free(pr);
    }
}

static void route_process(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, process_auth_cb, NULL);
}

void sl_api_register_files(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/v1/files/{id}", "files_get", route_get, app);
    sl_http_router_add(app->router, "DELETE", "/v1/files/{id}", "files_delete", route_delete, app);
    sl_http_router_add(app->router, "GET", "/v1/files/{id}/events", "files_events", route_events,
                       app);
    sl_http_router_add(app->router, "GET", "/v1/files/{id}/content", "files_content", route_content,
                       app);
    sl_http_router_add(app->router, "POST", "/v1/files/{id}/process", "files_process",
                       route_process, app);
    sl_http_router_add(app->router, "GET", "/v1/datasets/{id}/files", "files_list", route_list,
                       app);
}
