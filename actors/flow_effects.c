/*
 * flow_effects.c — the engine's side of the effects seam (flow_effects.h):
 * a step's rows are one Postgres statement each, shared (db/pg.h
 * sl_pg_query_shared: many steps' rows commit together under load), its
 * calls go to libcurl and core/exec. The statements were lua_run.c's; the
 * SQL functions they call are db/functions/provenance.sql
 * (sluice_record_put) and db/functions/artifacts.sql (sluice_artifact_put:
 * one row per run and kind).
 */
#include "actors/flow_effects.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include "actors/flow.h"
#include "core/crypto.h"
#include "core/err.h"

/* What a row statement waits with: the caller's callback and what to read back. */
/* ROW_COUNT: a positive integer (a record's version, a count), null when the file is gone */
typedef enum { ROW_ID, ROW_KEY_SIZE, ROW_COUNT } row_want_t;

typedef struct row_op_s {
    sl_flow_fx_cb cb;
    void *arg;
    row_want_t want;
} row_op_t;

static void row_cb(const sl_pg_result_t *r, void *arg)
{
    row_op_t *op = arg;
    sl_flow_fx_res_t res = {0};
    char *end = NULL;
    PGresult *pr = r->err == 0 && r->n >= 1 ? r->res[0] : NULL;
    unsigned char *bytes = NULL;

    if (r->err != 0) {
        res.err = r->err;
    } else if (pr == NULL || PQntuples(pr) < 1 || PQgetisnull(pr, 0, 0)) {
        /* an upsert that returned nothing is a database fault (or, for
         * sluice_artifact_put, its file deleted meanwhile); a lookup or a
         * record of a file that is gone is "not_found" */
        res.err = op->want == ROW_ID ? SL_EDB : SL_ENOTFOUND;
    } else if (op->want == ROW_ID) {
        res.id = PQgetvalue(pr, 0, 0);
        if (PQnfields(pr) > 1 && !PQgetisnull(pr, 0, 1))
            res.replaced = PQgetvalue(pr, 0, 1);
    } else if (op->want == ROW_KEY_SIZE) { /* size, storage_key, data: one of the last two */
        size_t len = 0;
        res.n = strtoll(PQgetvalue(pr, 0, 0), &end, 10);
        if (!PQgetisnull(pr, 0, 1))
            res.key = PQgetvalue(pr, 0, 1);
        else if (!PQgetisnull(pr, 0, 2) &&
                 (bytes = PQunescapeBytea((const unsigned char *)PQgetvalue(pr, 0, 2), &len)))
            res.data = (const char *)bytes;
        if (*end != '\0' || res.n < 0 || (res.key == NULL && res.data == NULL) ||
            (res.data != NULL && (size_t)res.n != len))
            res.err = SL_EDB;
    } else {
        res.n = strtoll(PQgetvalue(pr, 0, 0), &end, 10);
        if (*end != '\0' || res.n < 1)
            res.err = SL_EDB;
    }
    op->cb(&res, op->arg);
    if (bytes != NULL)
        PQfreemem(bytes);
    free(op);
}

/* One statement of a step, prepared as `name` and shared: under load the
 * statements of many steps wait together for a connection and commit in one
 * transaction (sl_pg_query_shared); each still learns its own result. */
static int row_query(void *self, const char *name, const char *sql, int n,
                     const char *const *params, row_want_t want, sl_flow_fx_cb cb, void *arg)
{
    const sl_flow_host_t *h = self;
    row_op_t *op;
    int rc;

    if (h->pg == NULL)
        return SL_ECONFIG;
    if ((op = malloc(sizeof *op)) == NULL)
        return SL_ENOMEM;
    op->cb = cb;
    op->arg = arg;
    op->want = want;
    if ((rc = sl_pg_query_shared(h->pg, name, sql, n, params, row_cb, op)) != 0)
        free(op);
    return rc;
}

static int rows_ready(void *self)
{
    return ((const sl_flow_host_t *)self)->pg != NULL;
}

static int artifact_put(void *self, const sl_flow_fx_ids_t *ids, const sl_flow_fx_artifact_t *a,
                        sl_flow_fx_cb cb, void *arg)
{
    /* Exactly one of storage_key and data is set (migration 018). A rewrite
     * of the kind names the key it replaced (db/functions/artifacts.sql). */
    static const char sql[] = "SELECT id, replaced FROM sluice_artifact_put($1, $2, $3, $4, $5, "
                              "$6, $7, $8, $9, $10::bytea)";
    char size[32], *hex = NULL;
    int rc;
    snprintf(size, sizeof size, "%llu", (unsigned long long)a->size);
    if (a->data != NULL) { /* bytea's hex input form: \x then two digits a byte */
        if (a->size > SL_ARTIFACT_INLINE_MAX || (hex = malloc(2 * (size_t)a->size + 3)) == NULL)
            return a->size > SL_ARTIFACT_INLINE_MAX ? SL_EINVAL : SL_ENOMEM;
        hex[0] = '\\';
        hex[1] = 'x';
        sl_hex(a->data, (size_t)a->size, hex + 2);
    }
    const char *params[] = {a->id,   ids->tenant_id, ids->file_id,  ids->run_id,
                            a->kind, a->mime,        size,          a->sha256_hex,
                            a->data != NULL ? NULL : a->key,         hex};
    rc = row_query(self, "sl_fx_artifact_put", sql, 10, params, ROW_ID, cb, arg);
    free(hex); /* the statement holds its own copy */
    return rc;
}

static int artifact_get(void *self, const sl_flow_fx_ids_t *ids, const char *kind, sl_flow_fx_cb cb,
                        void *arg)
{
    static const char sql[] = "SELECT size, storage_key, data FROM artifacts "
                              "WHERE run_id = $1 AND kind = $2 AND tenant_id = $3";
    const char *params[] = {ids->run_id, kind, ids->tenant_id};
    return row_query(self, "sl_fx_artifact_get", sql, 3, params, ROW_KEY_SIZE, cb, arg);
}

static int record_put(void *self, const sl_flow_fx_ids_t *ids, const char *record_json,
                      const char *prov_json, sl_flow_fx_cb cb, void *arg)
{
    static const char sql[] = "SELECT sluice_record_put($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)";
    char id[37];
    if (sl_uuid_v4(id) != 0)
        return SL_EIO;
    const char *params[] = {id,          ids->tenant_id, ids->dataset_id, ids->file_id,
                            ids->run_id, record_json,    prov_json};
    return row_query(self, "sl_fx_record_put", sql, 7, params, ROW_COUNT, cb, arg);
}

static int text_source(void *self, const sl_flow_fx_ids_t *ids, const char *name, sl_flow_fx_cb cb,
                       void *arg)
{
    static const char sql[] = "SELECT sluice_text_source_put($1, $2, $3)";
    const char *params[] = {ids->file_id, ids->tenant_id, name};
    return row_query(self, "sl_fx_text_source", sql, 3, params, ROW_COUNT, cb, arg);
}

static int http(void *self, const char *service, const sl_curl_req_opts_t *o, sl_curl_cb cb,
                void *arg, void **handle)
{
    const sl_flow_host_t *h = self;
    sl_curl_xfer_t *x = NULL;
    int rc;
    (void)service;
    if (h->curl == NULL)
        return SL_ECONFIG;
    rc = sl_curl_request(h->curl, o, cb, arg, &x);
    *handle = rc == 0 ? x : NULL;
    return rc;
}

static void http_cancel(void *self, void *handle)
{
    (void)self;
    sl_curl_cancel(handle);
}

static int exec_start(void *self, const sl_exec_opts_t *o, sl_exec_cb cb, void *arg, void **handle)
{
    const sl_flow_host_t *h = self;
    sl_exec_t *x = NULL;
    int rc = sl_exec_start(h->base, o, cb, arg, &x);
    *handle = rc == 0 ? x : NULL;
    return rc;
}

static void exec_cancel(void *self, void *handle)
{
    (void)self;
    sl_exec_cancel(handle);
}

const sl_flow_effects_t sl_flow_effects_engine = {
    rows_ready, artifact_put, artifact_get, record_put,  text_source,
    http,       http_cancel,  exec_start,   exec_cancel, SL_ARTIFACT_INLINE_MAX,
};
