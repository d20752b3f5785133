/*
 * records.c — a dataset as a table: the records the `record` step made.
 *
 *   GET /v1/datasets/{id}/records[?format=json|csv][&limit=N]
 *     json (default): {"records": [{"id","file_id","data","created_at",
 *                                   "version","provenance"}]}
 *     csv: text/csv; charset=utf-8, header "file_id,file_name,<property>...",
 *          one column per record_schema property in schema order.
 *   Each file's latest record version only (records.latest, migration 011),
 *   oldest first; limit defaults to 1000, at most 10000.
 *
 *   GET /v1/files/{id}/records -> {"records": [...]}: every version of the
 *   file's record, newest first (404 for another tenant's file).
 *
 * The record's shape is sluice_record_json (db/functions/provenance.sql).
 *
 * CSV cells follow RFC 4180: a field containing a comma, a double quote, CR or
 * LF is quoted and its quotes doubled; lines end with CRLF. Strings are
 * written as they are, numbers and booleans as their JSON text, null or a
 * missing property as an empty cell, objects and arrays as compact JSON.
 *
 * CSV formula injection (OWASP "CSV Injection"): a spreadsheet runs a cell that
 * starts with '=', '+', '-' or '@' (also TAB or CR) as a formula. Such text
 * cells — record strings, file names, header names — get a leading single
 * quote ('), which spreadsheets show as text. JSON numbers are never prefixed
 * ("-12.5" stays a number): they cannot carry a formula.
 */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/err.h"

#define SL_RECORDS_LIMIT_DEFAULT 1000
#define SL_RECORDS_LIMIT_MAX 10000
#define SL_RECORDS_CSV_MAX (64u * 1024 * 1024) /* bytes of one CSV answer */

typedef struct rec_ctx_s {
    sl_app_t *app;
    sl_http_req_t *req;
    int csv;
} rec_ctx_t;

/* ---- a bounded growing buffer (curl's dynbuf idea) ---- */

typedef struct buf_s {
    char *p;
    size_t len, cap, max;
    int err; /* sticky: SL_ENOMEM or SL_ETOOBIG */
} buf_t;

static void buf_add(buf_t *b, const char *s, size_t n)
{
    if (b->err != 0)
        return;
    if (n > b->max - b->len) {
        b->err = SL_ETOOBIG;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->err = SL_ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_str(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* ---- CSV cells ---- */

/* Writes one RFC 4180 field; `text` marks string data that gets the formula guard. */
static void csv_cell(buf_t *b, const char *s, size_t n, int text)
{
    int guard =
        text && n > 0 &&
        (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@' || s[0] == '\t' || s[0] == '\r');
    int quote = 0;
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n';
    if (quote)
        buf_add(b, "\"", 1);
    if (guard)
        buf_add(b, "'", 1);
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            buf_add(b, s + start, i + 1 - start); /* up to and including the quote */
            buf_add(b, "\"", 1);                  /* doubled */
            start = i + 1;
        }
    }
    buf_add(b, s + start, n - start);
    if (quote)
        buf_add(b, "\"", 1);
}

/* Writes a JSON value as a cell (see the file comment for the mapping). */
static void csv_value(buf_t *b, const json_t *v)
{
    if (v == NULL || json_is_null(v))
        return;
    if (json_is_string(v)) {
        csv_cell(b, json_string_value(v), json_string_length(v), 1);
        return;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (s == NULL) {
        b->err = SL_ENOMEM;
        return;
    }
    /* Objects and arrays start with '{' or '['; numbers and booleans need no guard. */
    csv_cell(b, s, strlen(s), 0);
    free(s);
}

/*
 * Builds the CSV from the dataset's schema text and rows (file_id, file_name,
 * data). Returns 0 with b filled, or an error.
 */
static int build_csv(buf_t *b, const char *schema_text, PGresult *rows)
{
    json_error_t jerr;
    json_t *schema = json_loads(schema_text, 0, &jerr);
    json_t *props = json_object_get(schema, "properties");
    const char *name;
    json_t *unused;
    int err = 0;

    if (!json_is_object(props))
        props = NULL; /* only file_id, file_name */

    buf_str(b, "file_id,file_name");
    if (props != NULL) {
        /* jansson (>= 2.8) iterates objects in insertion order: schema order. */
        json_object_foreach(props, name, unused)
        {
            buf_add(b, ",", 1);
            csv_cell(b, name, strlen(name), 1);
        }
    }
    buf_add(b, "\r\n", 2);

    for (int i = 0; i < PQntuples(rows) && b->err == 0; i++) {
        json_t *data = json_loads(PQgetvalue(rows, i, 2), 0, &jerr);
        csv_cell(b, PQgetvalue(rows, i, 0), (size_t)PQgetlength(rows, i, 0), 1);
        buf_add(b, ",", 1);
        csv_cell(b, PQgetvalue(rows, i, 1), (size_t)PQgetlength(rows, i, 1), 1);
        if (props != NULL) {
            json_object_foreach(props, name, unused)
            {
                buf_add(b, ",", 1);
                csv_value(b, json_is_object(data) ? json_object_get(data, name) : NULL);
            }
        }
        buf_add(b, "\r\n", 2);
        json_decref(data);
    }
    err = b->err;
    json_decref(schema);
    return err;
}

/* ---- the route ---- */

static void records_cb(const sl_pg_result_t *r, void *arg)
{
    rec_ctx_t *ctx = arg;
    sl_http_req_t *req = ctx->req;
    buf_t b = {.max = SL_RECORDS_CSV_MAX};

    if (r->err != 0) {
        sl_api_db_error(req, r);
        goto out;
    }
    if (PQntuples(r->res[0]) != 1) {
        sl_http_respond_error(req, 404, "not_found", "no such dataset", -1);
        goto out;
    }
    PGresult *rows = r->res[1];
    if (!ctx->csv) {
        sl_api_json_etag(req, PQgetvalue(rows, 0, 0), (size_t)PQgetlength(rows, 0, 0), NULL);
        goto out;
    }
    int err = build_csv(&b, PQgetvalue(r->res[0], 0, 0), rows);
    if (err == SL_ETOOBIG)
        sl_http_respond_error(req, 400, "invalid_request",
                              "the CSV would exceed 64 MiB: ask for fewer rows with ?limit=", -1);
    else if (err != 0)
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
    else
        sl_api_respond_etag(req, "text/csv; charset=utf-8", b.p, b.len, NULL);
out:
    free(b.p);
    free(ctx);
}

static void records_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    sl_http_params_t params;
    char format[256], limit_s[32], limit[16];
    long n = SL_RECORDS_LIMIT_DEFAULT;
    int csv = 0;
    (void)arg;

    if (sl_api_route_params(app, req, &params) != 0 || params.n < 1 ||
        !sl_is_uuid(params.values[0])) {
        sl_http_respond_error(req, 404, "not_found", "no such dataset", -1);
        return;
    }
    if (sl_http_req_query_param(req, "format", format, sizeof format) >= 0) {
        if (strcmp(format, "csv") == 0) {
            csv = 1;
        } else if (strcmp(format, "json") != 0) {
            sl_http_respond_error(req, 400, "invalid_format", "format must be json or csv", -1);
            return;
        }
    }
    if (sl_http_req_query_param(req, "limit", limit_s, sizeof limit_s) >= 0) {
        char *end = NULL;
        n = strtol(limit_s, &end, 10);
        if (limit_s[0] < '0' || limit_s[0] > '9' || end == NULL || *end != '\0' || n < 1 ||
            n > SL_RECORDS_LIMIT_MAX) {
            sl_http_respond_error(req, 400, "invalid_request",
                                  "limit must be an integer from 1 to 10000", -1);
            return;
        }
    }
    snprintf(limit, sizeof limit, "%ld", n);

    rec_ctx_t *ctx = calloc(1, sizeof *ctx);
    sl_pg_batch_t *b = NULL;
    int err = SL_ENOMEM;
    if (ctx == NULL || (b = sl_pg_batch_new(app->pg)) == NULL)
        goto fail;
    ctx->app = app;
    ctx->req = req;
    ctx->csv = csv;
    const char *p2[2] = {params.values[0], tenant_id};
    const char *p3[3] = {params.values[0], tenant_id, limit};
    if ((err = sl_pg_batch_add(b,
                               "SELECT record_schema FROM datasets "
                               "WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
                               2, p2)) < 0)
        goto fail;
    if (csv)
        err = sl_pg_batch_add(b,
                              "SELECT r.file_id, coalesce(f.name, ''), r.data::text "
                              "FROM records r LEFT JOIN files f ON f.id = r.file_id "
                              "WHERE r.dataset_id = $1 AND r.tenant_id = $2 AND r.latest "
                              "ORDER BY r.created_at, r.id LIMIT $3::int",
                              3, p3);
    else
        err = sl_pg_batch_add(
            b,
            "SELECT json_build_object('records', coalesce(json_agg(sluice_record_json(r) "
            "ORDER BY r.created_at, r.id), '[]'::json)) "
            "FROM (SELECT * FROM records WHERE dataset_id = $1 AND tenant_id = $2 AND latest "
            "ORDER BY created_at, id LIMIT $3::int) r",
            3, p3);
    if (err < 0)
        goto fail;
    err = sl_pg_batch_exec(b, records_cb, ctx);
    b = NULL; /* taken */
    if (err != 0)
        goto fail;
    return;
fail:
    if (b != NULL)
        sl_pg_batch_free(b);
    free(ctx);
    sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
    sl_api_db_error(req, &r);
}

static void records_list(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, records_auth_cb, NULL);
}

/* ---- GET /v1/files/{id}/records: every version, newest first ---- */

static void file_records_cb(const sl_pg_result_t *r, void *arg)
{
    sl_http_req_t *req = arg;

    if (r->err != 0)
        sl_api_db_error(req, r);
    else if (PQntuples(r->res[0]) != 1 || PQntuples(r->res[1]) != 1)
        sl_http_respond_error(req, 404, "not_found", "no such file", -1);
    else
        sl_api_json_etag(req, PQgetvalue(r->res[1], 0, 0), (size_t)PQgetlength(r->res[1], 0, 0),
                         NULL);
}

static void file_records_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id,
                                 void *arg)
{
    sl_http_params_t params;
    sl_pg_batch_t *b = NULL;
    int err = SL_ENOMEM;
    (void)arg;

    if (sl_api_route_params(app, req, &params) != 0 || params.n < 1 ||
        !sl_is_uuid(params.values[0])) {
        sl_http_respond_error(req, 404, "not_found", "no such file", -1);
        return;
    }
    const char *p2[2] = {params.values[0], tenant_id};
    if ((b = sl_pg_batch_new(app->pg)) == NULL)
        goto fail;
    if ((err = sl_pg_batch_add(b, "SELECT 1 FROM files WHERE id = $1 AND tenant_id = $2"
                               " AND NOT sluice_dataset_gone(dataset_id)", /* retention */
                               2, p2)) < 0)
        goto fail;
    /* records_file_version (file_id, version) serves the order */
    if ((err = sl_pg_batch_add(b,
                               "SELECT json_build_object('records', coalesce(json_agg("
                               "sluice_record_json(r) ORDER BY r.version DESC), '[]'::json)) "
                               "FROM records r WHERE r.file_id = $1 AND r.tenant_id = $2",
                               2, p2)) < 0)
        goto fail;
    err = sl_pg_batch_exec(b, file_records_cb, req);
    b = NULL; /* taken */
    if (err != 0)
        goto fail;
    return;
fail:
    if (b != NULL)
        sl_pg_batch_free(b);
    sl_pg_result_t r = {.err = err, .errmsg = sl_strerror(err), .sqlstate = ""};
    sl_api_db_error(req, &r);
}

static void file_records(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, file_records_auth_cb, NULL);
}

void sl_api_register_records(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/v1/datasets/{id}/records", "records_list",
                       records_list, app);
    sl_http_router_add(app->router, "GET", "/v1/files/{id}/records", "files_records",
                       file_records, app);
}
