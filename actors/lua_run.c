/*
 * lua_run.c — what a step records about its run: sl.artifact{kind, mime,
 * data | path}, sl.read_artifact(kind), sl.record(tbl [, {extractor, model}]),
 * sl.set_text_source(name), sl.tmpdir().
 *
 * Artifacts: the bytes go to storage under
 * "artifacts/<tenant>/<run>/<kind>.<uuid>", a key of this write's own (no
 * other write, of this run or another, ever uses it), then the row is
 * upserted through the effects seam (actors/flow_effects.h: one statement in
 * the engine, unique on run_id, kind; in memory under `sluice flow test`).
 * A rewrite of the kind (a retried step, or a later step writing it again)
 * names the key the row pointed at before: deleted once the row no longer
 * points at it, in the background (a failure leaves an unreferenced blob,
 * never a row without its bytes). A
 * `path` is read on the worker pool in chunks and fed to the store writer
 * with its backpressure, so neither the loop nor memory sees the whole file.
 * Small `data` with a mime (at most the host's inline_max, 32 KiB in the
 * engine) skips the store: the bytes go in the row's own statement
 * (migration 018), durable with it, and sl.read_artifact gets them back with
 * the row.
 *
 * Every op copies what it needs from the host (store, effects, workq) and the step
 * (ids), so once detached (step timed out or cancelled) its pending callback
 * can clean up without touching the VM.
 */
#include "actors/lua_api.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/crypto.h"
#include "core/err.h"

#define READ_CHUNK (256 * 1024)
#define READ_ARTIFACT_MAX (16u * 1024 * 1024)
#define STORE_READ_MAX (1024 * 1024)
#define KIND_MAX 64

static int kind_ok(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n >= KIND_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((k[i] >= 'a' && k[i] <= 'z') || (k[i] >= '0' && k[i] <= '9') || k[i] == '_'))
            return 0;
    return 1;
}

typedef struct bytes_s {
    const char *p;
    size_t n;
} bytes_t;

static int push_bytes(lua_State *L)
{
    const bytes_t *b = lua_touserdata(L, 1);
    lua_pushlstring(L, b->p, b->n);
    return 1;
}

/* ------------------------------------------------------------------------ */
/* sl.artifact                                                               */
/* ------------------------------------------------------------------------ */

enum { A_READ, A_DRAIN, A_COMMIT, A_DB };

/*
 * One sl.artifact call, on the shared primitive path (lua_op.c; no service
 * policy): start() opens the store writer and feeds it, the phases below run
 * on the loop, and every end goes through art_end -> sl_flow__svcop_done.
 */
typedef struct art_op_s {
    sl_flow_svcop_t so; /* first; so.svc stays NULL */
    sl_store_t *store;
    const sl_flow_effects_t *fx; /* the row goes there (borrowed: outlives the op) */
    void *fx_self;
    sl_workq_t *wq;
    int phase;
    sl_store_writer_t *w;
    /* data source: borrowed from the Lua stack, valid only during start() */
    const char *data;
    size_t dlen;
    /* path source (worker side) */
    char *path;
    int fd;
    char *buf;
    size_t n;
    int eof, rerr;
    uint64_t off;
    /* row */
    char id[37];
    char key[SL_STORE_KEY_MAX + 1];
    char kind[KIND_MAX];
    char *mime;
    char *tenant_id, *file_id, *run_id;
    const char *word; /* the error word of a failed end */
} art_op_t;

static void art_free(sl_flow_svcop_t *so)
{
    art_op_t *op = (art_op_t *)so;
    if (op->w != NULL)
        sl_store_put_abort(op->w);
    if (op->fd >= 0)
        close(op->fd);
    free(op->path);
    free(op->buf);
    free(op->mime);
    free(op->tenant_id);
    free(op->file_id);
    free(op->run_id);
    free(op);
}

static int push_art_result(lua_State *L)
{
    const art_op_t *op = lua_touserdata(L, 1);
    if (op->word != NULL) {
        lua_pushnil(L);
        lua_pushstring(L, op->word);
        return 2;
    }
    lua_pushstring(L, op->id);
    return 1;
}

/* The one end of every sl.artifact: word NULL = stored (op->id), else the error word. */
static void art_end(art_op_t *op, const char *word)
{
    op->word = word;
    sl_flow__svcop_done(&op->so, word ? word : "ok", push_art_result, op);
}

/* Detached (step timed out or cancelled): ends at the next completion. */
static int art_detached(art_op_t *op)
{
    if (op->so.hdr.step != NULL)
        return 0;
    art_end(op, "cancelled");
    return 1;
}

static int art_abort(sl_flow_svcop_t *so)
{
    art_op_t *op = (art_op_t *)so;
    /* Waiting for a drain has nothing in flight once the writer is aborted; the
     * other phases have a callback pending, which sees the op detached. */
    return op->phase == A_DRAIN;
}

static void art_db_cb(const sl_flow_fx_res_t *r, void *arg)
{
    art_op_t *op = arg;
    if (r->err != 0) {
        art_end(op, sl_strerror(r->err));
        return;
    }
    if (r->replaced != NULL && op->store != NULL)
        sl_store_delete_bg(op->store, r->replaced, "artifact_blob_delete_failed");
    snprintf(op->id, sizeof(op->id), "%s", r->id);
    art_end(op, NULL);
}

static void art_commit_cb(int err, const sl_store_info_t *info, void *arg)
{
    art_op_t *op = arg;
    int rc;

    op->w = NULL; /* the store frees the writer after this returns */
    if (art_detached(op))
        return;
    if (err != 0) {
        art_end(op, sl_strerror(err));
        return;
    }
    sl_flow_fx_ids_t ids = {op->tenant_id, NULL, op->file_id, op->run_id, NULL};
    sl_flow_fx_artifact_t a = {.id = op->id,
                               .kind = op->kind,
                               .mime = op->mime && *op->mime ? op->mime : info->mime,
                               .sha256_hex = info->sha256_hex,
                               .key = op->key,
                               .size = info->size};
    op->phase = A_DB;
    if ((rc = op->fx->artifact_put(op->fx_self, &ids, &a, art_db_cb, op)) != 0)
        art_end(op, sl_strerror(rc));
}

static int art_commit(art_op_t *op)
{
    op->phase = A_COMMIT;
    return sl_store_put_commit(op->w, art_commit_cb, op);
}

static void art_read_work(void *arg);
static void art_read_done(void *arg);

static int art_read_next(art_op_t *op)
{
    op->phase = A_READ;
    return sl_workq_submit(op->wq, NULL, art_read_work, art_read_done, op);
}

static void art_drain_cb(sl_store_writer_t *w, void *arg)
{
    art_op_t *op = arg;
    int rc;
    (void)w;
    if (op->phase != A_DRAIN)
        return;
    if (art_detached(op))
        return;
    if ((rc = art_read_next(op)) != 0)
        art_end(op, sl_strerror(rc));
}

/* Worker thread: open once, then one chunk per job. Touches only op's source fields. */
static void art_read_work(void *arg)
{
    art_op_t *op = arg;
    ssize_t r;

    op->n = 0;
    if (op->fd < 0 && (op->fd = open(op->path, O_RDONLY | O_CLOEXEC)) < 0) {
        op->rerr = errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
        return;
    }
    do
        r = pread(op->fd, op->buf, READ_CHUNK, (off_t)op->off);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        op->rerr = SL_EIO;
        return;
    }
    op->n = (size_t)r;
    op->off += (uint64_t)r;
    op->eof = r == 0;
}

static void art_read_done(void *arg)
{
    art_op_t *op = arg;
    int rc = op->rerr;

    if (art_detached(op))
        return;
    if (rc == 0 && op->n > 0)
        rc = sl_store_write(op->w, op->buf, op->n);
    if (rc == 0 && op->eof)
        rc = art_commit(op);
    else if (rc == 0 && sl_store_pending(op->w) >= SL_STORE_HIGH_WATER)
        op->phase = A_DRAIN; /* art_drain_cb goes on */
    else if (rc == 0)
        rc = art_read_next(op);
    if (rc != 0)
        art_end(op, sl_strerror(rc));
}

/*
 * Small data with a type: the row holds the bytes (no writer, no sniff, no
 * fsync). The digest is taken here, on the loop: at most
 * SL_ARTIFACT_INLINE_MAX bytes, tens of microseconds.
 */
static int art_inline(art_op_t *op)
{
    char sha[65];
    sl_sha256_hex(op->data, op->dlen, sha);
    sl_flow_fx_ids_t ids = {op->tenant_id, NULL, op->file_id, op->run_id, NULL};
    sl_flow_fx_artifact_t a = {.id = op->id,
                               .kind = op->kind,
                               .mime = op->mime,
                               .sha256_hex = sha,
                               .data = op->data,
                               .size = op->dlen};
    op->data = NULL; /* the statement copied it */
    op->phase = A_DB;
    return op->fx->artifact_put(op->fx_self, &ids, &a, art_db_cb, op);
}

/* Opens the writer and feeds it the first bytes; 0 or an SL_E* code (nothing left running). */
static int art_start(sl_flow_svcop_t *so)
{
    art_op_t *op = (art_op_t *)so;
    int rc;

    if (op->path == NULL && op->mime && *op->mime && op->dlen <= op->fx->inline_max)
        return art_inline(op);
    if ((rc = sl_store_put_begin(op->store, op->key, &op->w)) != 0) {
        op->w = NULL;
        return rc;
    }
    sl_store_on_drain(op->w, art_drain_cb, op);
    if (op->mime && *op->mime)
        (void)sl_store_put_mime(op->w, op->mime); /* the row says op->mime: no sniff */
    if (op->path == NULL) {
        /* the writer copies; its queue is bounded by the step's own data */
        rc = sl_store_write(op->w, op->data, op->dlen);
        op->data = NULL;
        if (rc == 0)
            rc = art_commit(op);
    } else {
        rc = art_read_next(op);
    }
    if (rc != 0) {
        sl_store_put_abort(op->w);
        op->w = NULL;
    }
    return rc;
}

static const sl_flow_svcop_ops_t art_ops = {art_start, art_abort, art_free};

static char *field_str(lua_State *L, int t, const char *k, int required)
{
    char *v = NULL;
    int ty = lua_getfield(L, t, k);
    if (ty == LUA_TSTRING) {
        if ((v = strdup(lua_tostring(L, -1))) == NULL)
            luaL_error(L, "sl.artifact: out of memory");
    } else if (ty != LUA_TNIL || required) {
        luaL_error(L, "sl.artifact: %s must be a string", k);
    }
    lua_pop(L, 1);
    return v;
}

static int l_artifact(lua_State *L)
{
    static const char *const known[] = {"kind", "mime", "data", "path", NULL};
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    sl_flow_svcop_t **box;
    art_op_t *op;
    sl_step_t *s;
    const char *word = NULL;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    s = sl_flow__check_step(L, "sl.artifact");
    sl_flow__check_fields(L, 1, known, "sl.artifact");
    box = sl_flow__svcop_box(L, sizeof(*op), &art_ops, vm, "sl.artifact"); /* index 2 */
    op = (art_op_t *)*box;
    op->fd = -1;
    if (lua_getfield(L, 1, "data") == LUA_TSTRING) /* stays on the stack (index 3) */
        op->data = lua_tolstring(L, -1, &op->dlen);
    else if (!lua_isnil(L, -1))
        return luaL_error(L, "sl.artifact: data must be a string");
    op->mime = field_str(L, 1, "mime", 0);
    op->path = field_str(L, 1, "path", 0);
    char *kind = field_str(L, 1, "kind", 1);
    int kok = kind_ok(kind);
    snprintf(op->kind, sizeof(op->kind), "%s", kind);
    free(kind);
    if (!kok)
        return luaL_error(L, "sl.artifact: kind must be 1..63 characters of [a-z0-9_]");
    if ((op->data == NULL) == (op->path == NULL))
        return luaL_error(L, "sl.artifact: give exactly one of data and path");
    if ((op->tenant_id = strdup(s->tenant_id)) == NULL ||
        (op->file_id = strdup(s->file_id)) == NULL || (op->run_id = strdup(s->run_id)) == NULL)
        return luaL_error(L, "sl.artifact: out of memory");
    if (op->path != NULL && (op->buf = malloc(READ_CHUNK)) == NULL)
        return luaL_error(L, "sl.artifact: out of memory");
    *box = NULL; /* ours from here on */

    op->store = vm->host.store;
    op->fx = vm->host.fx;
    op->fx_self = vm->host.fx_self;
    op->wq = vm->host.wq;
    /* op->id: the row's id if the row is new, and this write's own part of the key */
    if (op->store == NULL || !op->fx->rows_ready(op->fx_self) ||
        (op->path != NULL && op->wq == NULL))
        word = "not_configured";
    else if (sl_uuid_v4(op->id) != 0 ||
             snprintf(op->key, sizeof(op->key), "artifacts/%s/%s/%s.%s", s->tenant_id, s->run_id,
                      op->kind, op->id) >= (int)sizeof(op->key) ||
             !sl_store_key_valid(op->key))
        word = "bad_input";
    if (word != NULL) {
        art_free(&op->so);
        lua_pushnil(L);
        lua_pushstring(L, word);
        return 2;
    }
    return sl_flow__svcop_begin(L, s, &op->so, 0);
}

/* ------------------------------------------------------------------------ */
/* sl.read_artifact                                                          */
/* ------------------------------------------------------------------------ */

typedef struct rd_op_s {
    sl_flow_op_t hdr;
    sl_store_t *store;
    char key[SL_STORE_KEY_MAX + 1];
    char *buf;
    size_t len, size;
} rd_op_t;

static void rd_cancel(sl_flow_op_t *hdr)
{
    (void)hdr; /* an effects or store callback is always pending: it frees the op */
}

static void rd_free(rd_op_t *op)
{
    free(op->buf);
    free(op);
}

static void rd_fail(rd_op_t *op, const char *word)
{
    sl_step_t *s = sl_flow__op_take(&op->hdr);
    rd_free(op);
    if (s != NULL)
        sl_flow__resume_err(s, word);
}

static void rd_read_cb(int err, const char *data, size_t n, void *arg);

static void rd_next(rd_op_t *op)
{
    size_t want = op->size - op->len;
    int rc;
    if (want > STORE_READ_MAX)
        want = STORE_READ_MAX;
    if (want == 0) {
        sl_step_t *s = sl_flow__op_take(&op->hdr);
        bytes_t b = {op->buf, op->len};
        if (s != NULL)
            sl_flow__resume_with(s, push_bytes, &b);
        rd_free(op);
        return;
    }
    if ((rc = sl_store_read(op->store, op->key, op->len, want, rd_read_cb, op)) != 0)
        rd_fail(op, sl_strerror(rc));
}

static void rd_read_cb(int err, const char *data, size_t n, void *arg)
{
    rd_op_t *op = arg;
    if (op->hdr.step == NULL) {
        rd_free(op);
        return;
    }
    if (err != 0) {
        rd_fail(op, sl_strerror(err));
        return;
    }
    if (n > op->size - op->len)
        n = op->size - op->len;
    memcpy(op->buf + op->len, data, n);
    op->len += n;
    if (n == 0)
        op->size = op->len; /* shorter than the row said */
    rd_next(op);
}

static void rd_db_cb(const sl_flow_fx_res_t *r, void *arg)
{
    rd_op_t *op = arg;
    long long size = r->n;

    if (op->hdr.step == NULL) {
        rd_free(op);
        return;
    }
    if (r->err != 0) {
        rd_fail(op, sl_strerror(r->err)); /* SL_ENOTFOUND: "not_found" */
        return;
    }
    if (r->data != NULL) { /* the row holds the bytes (borrowed until we return) */
        sl_step_t *s = sl_flow__op_take(&op->hdr);
        bytes_t b = {r->data, (size_t)size};
        if (s != NULL)
            sl_flow__resume_with(s, push_bytes, &b);
        rd_free(op);
        return;
    }
    snprintf(op->key, sizeof(op->key), "%s", r->key);
    if ((unsigned long long)size > READ_ARTIFACT_MAX) {
        rd_fail(op, "too_large");
        return;
    }
    op->size = (size_t)size;
    if ((op->buf = malloc(op->size + 1)) == NULL) {
        rd_fail(op, "out_of_memory");
        return;
    }
    rd_next(op);
}

static int l_read_artifact(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *kind = luaL_checkstring(L, 1);
    sl_step_t *s;
    rd_op_t *op;
    int rc;

    luaL_argcheck(L, kind_ok(kind), 1, "kind must be 1..63 characters of [a-z0-9_]");
    s = sl_flow__check_step(L, "sl.read_artifact");
    if (vm->host.store == NULL || !vm->host.fx->rows_ready(vm->host.fx_self)) {
        lua_pushnil(L);
        lua_pushliteral(L, "not_configured");
        return 2;
    }
    if ((op = calloc(1, sizeof(*op))) == NULL)
        return luaL_error(L, "sl.read_artifact: out of memory");
    op->store = vm->host.store;
    sl_flow_fx_ids_t ids = {s->tenant_id, s->dataset_id, s->file_id, s->run_id, s->pipeline};
    if ((rc = vm->host.fx->artifact_get(vm->host.fx_self, &ids, kind, rd_db_cb, op)) != 0) {
        rd_free(op);
        lua_pushnil(L);
        lua_pushstring(L, sl_strerror(rc));
        return 2;
    }
    sl_flow__set_op(s, &op->hdr, rd_cancel);
    return lua_yield(L, 0);
}

/* ------------------------------------------------------------------------ */
/* sl.record and sl.set_text_source: one statement each                     */
/* ------------------------------------------------------------------------ */

typedef struct db_op_s {
    sl_flow_op_t hdr;
} db_op_t;

static void db_cancel(sl_flow_op_t *hdr)
{
    (void)hdr; /* the effects callback is pending: it frees the op */
}

static void db_cb(const sl_flow_fx_res_t *r, void *arg)
{
    db_op_t *op = arg;
    sl_step_t *s = sl_flow__op_take(&op->hdr);
    free(op);
    if (s == NULL)
        return;
    if (r->err != 0)
        sl_flow__resume_err(s, sl_strerror(r->err)); /* SL_ENOTFOUND: "not_found" */
    else
        sl_flow__resume_with(s, sl_flow__push_true, NULL);
}

/* sl.set_text_source's row, through the effects seam. */
static int db_start(lua_State *L, sl_step_t *s, sl_flowvm_t *vm, const char *name)
{
    db_op_t *op = calloc(1, sizeof(*op));
    sl_flow_fx_ids_t ids = {s->tenant_id, s->dataset_id, s->file_id, s->run_id, s->pipeline};
    int rc;
    if (op == NULL)
        return luaL_error(L, "out of memory");
    if ((rc = vm->host.fx->text_source(vm->host.fx_self, &ids, name, db_cb, op)) != 0) {
        free(op);
        lua_pushnil(L);
        lua_pushstring(L, sl_strerror(rc));
        return 2;
    }
    sl_flow__set_op(s, &op->hdr, db_cancel);
    return lua_yield(L, 0);
}

/*
 * sl.record(data [, {extractor = "...", model = "..."}]): the run's version of
 * the file's record (migration 011, db/functions/provenance.sql). Provenance:
 * run_id, pipeline and flow_version come from the step (the run the engine
 * claimed: Lua cannot forge them), text_source from the file's row; only
 * extractor (what made the text) and model (what made the record) come from
 * the flow, checked here: strings of 1..PROV_MAX printable ASCII bytes.
 * Resumes with the version number (an integer: truthy), or nil, "not_found"
 * when the file was deleted meanwhile.
 */
#define PROV_MAX 128

/* Returns 1 if v is 1..PROV_MAX bytes of printable ASCII (space to '~'). */
static int prov_ok(const char *v, size_t n)
{
    if (n == 0 || n > PROV_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return 0;
    return 1;
}

/* Copies field k of the options table at t into buf (PROV_MAX + 1 bytes), checked; "" when
 * absent (or no table). Raises on a bad value: a flow bug, like a bad argument. */
static void prov_field(lua_State *L, int t, const char *k, char *buf)
{
    size_t n = 0;
    buf[0] = '\0';
    if (!lua_istable(L, t))
        return;
    int ty = lua_getfield(L, t, k);
    const char *v = ty == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (ty != LUA_TNIL && (v == NULL || !prov_ok(v, n)))
        luaL_error(L, "sl.record: %s must be a string of 1..%d printable ASCII characters", k,
                   PROV_MAX);
    if (v != NULL)
        memcpy(buf, v, n + 1);
    lua_pop(L, 1);
}

/* A JSON string, or null for "" (absent). */
static json_t *prov_value(const char *v)
{
    return v != NULL && v[0] != '\0' ? json_string(v) : json_null();
}

typedef struct rec_op_s {
    sl_flow_op_t hdr;
    lua_Integer version;
} rec_op_t;

static int push_version(lua_State *L)
{
    const rec_op_t *op = lua_touserdata(L, 1);
    lua_pushinteger(L, op->version);
    return 1;
}

static void rec_cb(const sl_flow_fx_res_t *r, void *arg)
{
    rec_op_t *op = arg;
    sl_step_t *s = sl_flow__op_take(&op->hdr);

    if (s == NULL)
        goto out;
    if (r->err != 0) {
        sl_flow__resume_err(s, sl_strerror(r->err)); /* SL_ENOTFOUND: the file is gone */
        goto out;
    }
    op->version = r->n;
    sl_flow__resume_with(s, push_version, op);
out:
    free(op);
}

static int l_record(lua_State *L)
{
    static const char *const known[] = {"extractor", "model", NULL};
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    char err[160], extractor[PROV_MAX + 1], model[PROV_MAX + 1];
    char *text = NULL, *ptext = NULL;
    json_t *j, *prov;
    sl_step_t *s;
    rec_op_t *op = NULL;
    int rc;

    /* Everything that raises comes before anything is allocated. */
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    s = sl_flow__check_step(L, "sl.record");
    if (lua_istable(L, 2))
        sl_flow__check_fields(L, 2, known, "sl.record");
    prov_field(L, 2, "extractor", extractor);
    prov_field(L, 2, "model", model);
    if (!vm->host.fx->rows_ready(vm->host.fx_self)) {
        lua_pushnil(L);
        lua_pushliteral(L, "not_configured");
        return 2;
    }
    if ((j = sl_flow__to_json(L, 1, err, sizeof(err))) == NULL)
        return luaL_error(L, "sl.record: cannot encode %s", err);
    text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (text == NULL)
        return luaL_error(L, "sl.record: out of memory");

    /* From the run, not from Lua: the step's pipeline and the flow version it runs on. */
    const char *fv = s->flow != NULL ? sl_flow_version(s->flow) : NULL;
    prov = json_pack("{s:o, s:o, s:o, s:o}", "extractor", prov_value(extractor), "model",
                     prov_value(model), "pipeline", prov_value(s->pipeline), "flow_version",
                     prov_value(fv));
    ptext = prov != NULL ? json_dumps(prov, JSON_COMPACT) : NULL;
    json_decref(prov);
    rc = SL_ENOMEM;
    if (ptext == NULL || (op = calloc(1, sizeof(*op))) == NULL)
        goto fail;
    sl_flow_fx_ids_t ids = {s->tenant_id, s->dataset_id, s->file_id, s->run_id, s->pipeline};
    /* the effects copy what they keep */
    if ((rc = vm->host.fx->record_put(vm->host.fx_self, &ids, text, ptext, rec_cb, op)) != 0)
        goto fail;
    free(text);
    free(ptext);
    sl_flow__set_op(s, &op->hdr, db_cancel);
    return lua_yield(L, 0);
fail:
    free(op);
    free(text);
    free(ptext);
    lua_pushnil(L);
    lua_pushstring(L, sl_strerror(rc));
    return 2;
}

static int l_set_text_source(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    sl_step_t *s;

    luaL_argcheck(L, strlen(name) > 0 && strlen(name) < 64, 1, "1..63 characters");
    s = sl_flow__check_step(L, "sl.set_text_source");
    if (!vm->host.fx->rows_ready(vm->host.fx_self)) {
        lua_pushnil(L);
        lua_pushliteral(L, "not_configured");
        return 2;
    }
    return db_start(L, s, vm, name);
}

/* ---- sl.tmpdir(): the run's scratch directory ---- */

static int l_tmpdir(lua_State *L)
{
    sl_step_t *s = sl_flow__step(L);
    if (s == NULL)
        return luaL_error(L, "sl.tmpdir can only be called inside a step");
    if (s->tmpdir == NULL || !s->tmpdir[0])
        return luaL_error(L, "sl.tmpdir: this run has no scratch directory");
    const char *dir = sl_flow__scratch(s); /* made here, at the first call */
    if (dir == NULL)
        return luaL_error(L, "sl.tmpdir: cannot make the scratch directory: %s",
                          strerror(errno));
    lua_pushstring(L, dir);
    return 1;
}

void sl_lua_inject_run(lua_State *L, sl_flowvm_t *vm)
{
    static const luaL_Reg fns[] = {{"artifact", l_artifact},
                                   {"read_artifact", l_read_artifact},
                                   {"record", l_record},
                                   {"set_text_source", l_set_text_source},
                                   {"tmpdir", l_tmpdir},
                                   {NULL, NULL}};
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, fns, 1);
}
