/*
 * flow_offline.c — a flow run without Postgres, Redis or a server (see
 * flow_offline.h): the offline host behind the effects seam, the cassettes,
 * and the driver that moves the run with transition.c as run.c does.
 *
 * Cassettes (docs/flows.md "Testing a flow offline"): a directory of JSON
 * files, read in name order, each one interaction:
 *   {"kind": "http",
 *    "request": {"method": "POST", "service": "openai" | "url": "http://...",
 *                "path": "/v1/chat/completions",
 *                "body_sha256": "<hex>" | "body_contains": "text"},   (optional)
 *    "response": {"status": 200, "headers": {"content-type": "..."},
 *                 "body": "..." | "body_json": {...}}}
 *   {"kind": "exec",
 *    "request": {"argv": ["pdftotext", "-layout", "{sha256:<hex>}", "-"]},
 *    "response": {"status": 0, "signal": 0, "stdout": "...", "stderr": ""}}
 * In argv an input file stands as {sha256:<hex of its bytes>} and the run's
 * scratch dir as {tmp}. The first cassette that matches answers, as often as
 * it is asked (a retried call gets the same answer).
 *
 * Blocking file reads (the sample, input hashes, cassettes) are fine here: it
 * is a command-line run, not the server's loop.
 */
#include "actors/flow_offline.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "actors/lua_api.h"
#include "actors/transition.h"
#include "core/crypto.h"
#include "core/err.h"

#define OFF_TENANT "00000000-0000-4000-8000-000000000001"
#define OFF_DATASET "00000000-0000-4000-8000-000000000002"
#define OFF_FILE "00000000-0000-4000-8000-000000000003"
#define OFF_RUN "00000000-0000-4000-8000-000000000004"
#define CASSETTE_MAX (16u * 1024 * 1024)
#define DETAIL_SHOWN 300

typedef struct off_s {
    struct event_base *base;
    const sl_offline_opts_t *o;
    json_t *cassettes; /* [{file, doc}] in name order */
    sl_curl_t *curl;   /* live calls (no replay), created on first use */
    int seq;           /* cassettes written */
    char tmpdir[1024]; /* the run's scratch dir ({tmp} in argv) */
    /* rows */
    json_t *artifacts; /* kind -> {id, kind, mime, size, sha256, key} */
    json_t *record, *prov;
    long long record_version;
    char text_source[64];
    /* what happened */
    json_t *calls, *unrecorded;
} offhost_t;

/* ------------------------------------------------------------------------ */
/* deferred callbacks: the effects never call back from inside the call      */
/* ------------------------------------------------------------------------ */

typedef enum { L_ROW, L_HTTP, L_EXEC } later_kind_t;

/* A call's handle (what cancel gets) is a later_t or a live_t: `live` tells which. */
typedef struct later_s {
    int live; /* 0 */
    later_kind_t kind;
    struct event *ev;
    int cancelled;
    void *arg;
    sl_flow_fx_cb row_cb;
    sl_flow_fx_res_t row;
    char id[37];
    char key[256];
    char replaced[256]; /* artifact_put: the key of the row's bytes before a rewrite */
    sl_curl_cb http_cb;
    sl_exec_cb exec_cb;
    json_t *resp; /* the cassette's response (a reference) */
} later_t;

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    later_t *l = arg;
    (void)fd;
    (void)what;
    if (l->kind == L_ROW) {
        l->row_cb(&l->row, l->arg);
    } else if (l->kind == L_HTTP) {
        sl_curl_result_t r = {0};
        sl_curl_header_t hs[SL_CURL_MAX_REQ_HEADERS];
        json_t *h = json_object_get(l->resp, "headers");
        json_t *bj = json_object_get(l->resp, "body_json");
        char *bjs = bj ? json_dumps(bj, JSON_COMPACT) : NULL;
        const char *k;
        json_t *v;
        r.errmsg = "";
        if (l->cancelled) {
            r.err = SL_ECANCELED;
        } else {
            r.status = (long)json_integer_value(json_object_get(l->resp, "status"));
            json_object_foreach(h, k, v)
            {
                if (json_is_string(v) && r.n_headers < SL_CURL_MAX_REQ_HEADERS) {
                    hs[r.n_headers].name = k;
                    hs[r.n_headers].value = json_string_value(v);
                    r.n_headers++;
                }
            }
            r.headers = hs;
        }
        r.body = bjs ? bjs : json_string_value(json_object_get(l->resp, "body"));
        if (r.body == NULL || l->cancelled)
            r.body = "";
        r.body_len = strlen(r.body);
        l->http_cb(&r, l->arg);
        free(bjs);
    } else {
        sl_exec_result_t r = {0};
        if (l->cancelled) {
            r.err = SL_ECANCELED;
        } else {
            json_t *sig = json_object_get(l->resp, "signal");
            r.exit_status = (int)json_integer_value(json_object_get(l->resp, "status"));
            r.term_signal = json_is_integer(sig) ? (int)json_integer_value(sig) : 0;
            if (r.term_signal != 0)
                r.exit_status = -1;
            r.stdout_data = json_string_value(json_object_get(l->resp, "stdout"));
            r.stdout_len = r.stdout_data ? strlen(r.stdout_data) : 0;
            r.stderr_data = json_string_value(json_object_get(l->resp, "stderr"));
            if (r.stderr_data == NULL)
                r.stderr_data = "";
            r.stderr_len = strlen(r.stderr_data);
        }
        l->exec_cb(NULL, &r, l->arg);
    }
    event_free(l->ev);
    json_decref(l->resp);
    free(l);
}

static later_t *later_new(offhost_t *off, later_kind_t kind, void *arg)
{
    later_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->kind = kind;
    l->arg = arg;
    if ((l->ev = evtimer_new(off->base, later_cb, l)) == NULL) {
        free(l);
        return NULL;
    }
    return l;
}

static int later_post(later_t *l)
{
    struct timeval tv = {0, 0};
    return evtimer_add(l->ev, &tv) == 0 ? 0 : SL_ENOMEM;
}

/* Posts a recorded answer (borrowed; the later holds a reference) for a later
 * loop turn; *handle is the later. On failure the later is freed. */
static int post_recorded(later_t *l, json_t *resp, void **handle)
{
    int rc;
    l->resp = json_incref(resp);
    if ((rc = later_post(l)) != 0) {
        event_free(l->ev);
        json_decref(l->resp);
        free(l);
        return rc;
    }
    *handle = l;
    return 0;
}

static int row_later(offhost_t *off, int err, const char *id, const char *key, long long n,
                     const char *replaced, sl_flow_fx_cb cb, void *arg)
{
    later_t *l = later_new(off, L_ROW, arg);
    if (l == NULL)
        return SL_ENOMEM;
    l->row_cb = cb;
    l->row.err = err;
    snprintf(l->id, sizeof l->id, "%s", id ? id : "");
    snprintf(l->key, sizeof l->key, "%s", key ? key : "");
    l->row.id = l->id;
    l->row.key = l->key;
    l->row.n = n;
    if (replaced != NULL) {
        snprintf(l->replaced, sizeof l->replaced, "%s", replaced);
        l->row.replaced = l->replaced;
    }
    return later_post(l);
}

/* ------------------------------------------------------------------------ */
/* rows, in memory                                                           */
/* ------------------------------------------------------------------------ */

static int rows_ready(void *self)
{
    (void)self;
    return 1;
}

static int artifact_put(void *self, const sl_flow_fx_ids_t *ids, const sl_flow_fx_artifact_t *a,
                        sl_flow_fx_cb cb, void *arg)
{
    offhost_t *off = self;
    json_t *old = json_object_get(off->artifacts, a->kind);
    const char *id = old ? json_string_value(json_object_get(old, "id")) : a->id;
    json_t *row = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s}", "id", id, "kind", a->kind, "mime",
                            a->mime ? a->mime : "", "size", (json_int_t)a->size, "sha256",
                            a->sha256_hex, "key", a->key);
    (void)ids;
    if (row == NULL)
        return SL_ENOMEM;
    char idc[37], replaced[256] = "";
    const char *was = old ? json_string_value(json_object_get(old, "key")) : NULL;
    snprintf(idc, sizeof idc, "%s", id);
    if (was != NULL && (a->key == NULL || strcmp(was, a->key) != 0))
        snprintf(replaced, sizeof replaced, "%s", was); /* its file goes, as in the engine */
    json_object_set_new(off->artifacts, a->kind, row); /* old (and id) may be freed here */
    return row_later(off, 0, idc, NULL, 0, replaced[0] ? replaced : NULL, cb, arg);
}

static int artifact_get(void *self, const sl_flow_fx_ids_t *ids, const char *kind, sl_flow_fx_cb cb,
                        void *arg)
{
    offhost_t *off = self;
    json_t *row = json_object_get(off->artifacts, kind);
    (void)ids;
    if (row == NULL)
        return row_later(off, SL_ENOTFOUND, NULL, NULL, 0, NULL, cb, arg);
    return row_later(off, 0, NULL, json_string_value(json_object_get(row, "key")),
                     (long long)json_integer_value(json_object_get(row, "size")), NULL, cb, arg);
}

static int record_put(void *self, const sl_flow_fx_ids_t *ids, const char *record_json,
                      const char *prov_json, sl_flow_fx_cb cb, void *arg)
{
    offhost_t *off = self;
    json_t *rec = json_loads(record_json, 0, NULL), *prov = json_loads(prov_json, 0, NULL);
    (void)ids;
    if (rec == NULL || prov == NULL) {
        json_decref(rec);
        json_decref(prov);
        return SL_EINVAL;
    }
    json_object_set_new(prov, "run_id", json_string(OFF_RUN));
    json_object_set_new(prov, "text_source",
                        off->text_source[0] ? json_string(off->text_source) : json_null());
    json_decref(off->record);
    json_decref(off->prov);
    off->record = rec;
    off->prov = prov;
    /* one version per run in the engine: a step that runs again replaces it */
    off->record_version = 1;
    return row_later(off, 0, NULL, NULL, off->record_version, NULL, cb, arg);
}

static int text_source(void *self, const sl_flow_fx_ids_t *ids, const char *name, sl_flow_fx_cb cb,
                       void *arg)
{
    offhost_t *off = self;
    (void)ids;
    snprintf(off->text_source, sizeof off->text_source, "%s", name);
    return row_later(off, 0, NULL, NULL, 0, NULL, cb, arg);
}

/* ------------------------------------------------------------------------ */
/* cassettes                                                                 */
/* ------------------------------------------------------------------------ */

/* The whole file at path (at most max bytes), NUL-terminated; *len set. NULL on error. */
static char *slurp(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (f == NULL)
        return NULL;
    for (;;) {
        if (cap - n < 65536) {
            if (cap >= max + 65536)
                goto fail;
            char *nb = realloc(buf, cap + 65536 + 1);
            if (nb == NULL)
                goto fail;
            buf = nb;
            cap += 65536;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f) || n > max)
        goto fail;
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

static int file_sha256(const char *path, char hex[65])
{
    size_t n;
    char *b = slurp(path, SL_OFFLINE_MAX_SAMPLE, &n);
    if (b == NULL)
        return SL_EIO;
    sl_sha256_hex(b, n, hex);
    free(b);
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads every *.json of dir into off->cassettes, in name order. */
static int load_cassettes(offhost_t *off, const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char *names[1024];
    int n = 0, rc = 0;

    if (d == NULL) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return SL_EIO;
    }
    while ((e = readdir(d)) != NULL && n < 1024) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0 && (names[n] = strdup(e->d_name)))
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], name_cmp);
    for (int i = 0; i < n; i++) {
        char path[2048];
        json_error_t je;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        json_t *doc = rc == 0 ? json_load_file(path, 0, &je) : NULL;
        const char *kind = json_string_value(json_object_get(doc, "kind"));
        if (rc == 0 && (doc == NULL || kind == NULL ||
                        (strcmp(kind, "http") != 0 && strcmp(kind, "exec") != 0) ||
                        !json_is_object(json_object_get(doc, "request")) ||
                        !json_is_object(json_object_get(doc, "response")))) {
            snprintf(err, errlen, "%s: %s", path,
                     doc == NULL ? je.text
                                 : "a cassette needs kind (http|exec), request and response");
            rc = SL_EINVAL;
        }
        if (rc == 0)
            json_array_append_new(off->cassettes,
                                  json_pack("{s:s, s:o}", "file", names[i], "doc", doc));
        else
            json_decref(doc);
        free(names[i]);
    }
    return rc;
}

/* The path of url: after scheme://host[:port], before ? or #. */
static void url_path(const char *url, char *out, size_t outlen)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 + strcspn(p + 3, "/?#") : url;
    size_t n = strcspn(p, "?#");
    snprintf(out, outlen, "%.*s", (int)n, *p == '/' ? p : "/");
    if (*p != '/')
        snprintf(out, outlen, "/");
}

/* What an HTTP request is matched on; body (borrowed) is the bytes sent, or NULL. */
typedef struct http_key_s {
    const char *method, *service, *url;
    char path[1024];
    const char *body;
    size_t body_len;
    char body_sha[65];
} http_key_t;

static int http_match(const json_t *req, const http_key_t *k)
{
    const char *m = json_string_value(json_object_get(req, "method"));
    const char *svc = json_string_value(json_object_get(req, "service"));
    const char *url = json_string_value(json_object_get(req, "url"));
    const char *path = json_string_value(json_object_get(req, "path"));
    const char *sha = json_string_value(json_object_get(req, "body_sha256"));
    const char *has = json_string_value(json_object_get(req, "body_contains"));

    if (m && strcasecmp(m, k->method) != 0)
        return 0;
    if (svc && (k->service == NULL || strcmp(svc, k->service) != 0))
        return 0;
    if (url && strcmp(url, k->url) != 0)
        return 0;
    if (path && strcmp(path, k->path) != 0)
        return 0;
    if (sha && strcasecmp(sha, k->body_sha) != 0)
        return 0;
    if (has && (k->body == NULL || strstr(k->body, has) == NULL))
        return 0;
    return 1;
}

static int argv_match(const json_t *req, json_t *argv)
{
    return json_equal(json_object_get(req, "argv"), argv);
}

/* The first cassette of kind that matches, or NULL; notes the call. */
static json_t *find(offhost_t *off, const char *kind, const http_key_t *hk, json_t *argv,
                    const char *what)
{
    size_t i;
    json_t *c;
    json_array_foreach(off->cassettes, i, c)
    {
        json_t *doc = json_object_get(c, "doc");
        const char *k = json_string_value(json_object_get(doc, "kind"));
        json_t *req = json_object_get(doc, "request");
        if (strcmp(k, kind) != 0)
            continue;
        if (hk ? http_match(req, hk) : argv_match(req, argv)) {
            char line[1200];
            snprintf(line, sizeof line, "%s <- %s", what,
                     json_string_value(json_object_get(c, "file")));
            json_array_append_new(off->calls, json_string(line));
            return json_object_get(doc, "response");
        }
    }
    return NULL;
}

static void unrecorded(offhost_t *off, const char *what)
{
    char line[1300];
    snprintf(line, sizeof line, "no recorded answer for %.1200s", what);
    json_array_append_new(off->unrecorded, json_string(line));
}

/* Writes a cassette (doc taken) as NN-<name>.json in the record dir. */
static void write_cassette(offhost_t *off, const char *name, json_t *doc)
{
    char path[2048], safe[64];
    size_t j = 0;
    for (size_t i = 0; name[i] && j + 1 < sizeof safe; i++)
        safe[j++] = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
                            name[i] == '_' || name[i] == '-'
                        ? name[i]
                        : '_';
    safe[j] = '\0';
    mkdir(off->o->record_dir, 0755);
    snprintf(path, sizeof path, "%s/%02d-%s.json", off->o->record_dir, ++off->seq, safe);
    if (json_dump_file(doc, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        fprintf(stderr, "sluice flow test: cannot write %s\n", path);
    json_decref(doc);
}

/* ------------------------------------------------------------------------ */
/* sl.http                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct live_s {
    int live; /* 1 */
    sl_curl_xfer_t *xfer;
    sl_exec_t *x;
    offhost_t *off;
    sl_curl_cb cb;
    sl_exec_cb xcb;
    void *arg;
    json_t *req; /* the cassette's request, for --record */
    char name[64];
} live_t;

static void live_http_cb(const sl_curl_result_t *res, void *arg)
{
    live_t *lv = arg;
    if (lv->off->o->record_dir && res->err == 0) {
        json_t *h = json_object();
        for (size_t i = 0; i < res->n_headers; i++) {
            char lower[256];
            size_t n = strlen(res->headers[i].name);
            if (n >= sizeof lower)
                n = sizeof lower - 1;
            for (size_t k = 0; k < n; k++) {
                char c = res->headers[i].name[k];
                lower[k] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
            }
            lower[n] = '\0';
            json_object_set_new(h, lower, json_string(res->headers[i].value));
        }
        json_t *body = json_stringn(res->body, res->body_len);
        json_t *resp = json_pack("{s:I, s:o}", "status", (json_int_t)res->status, "headers", h);
        if (body != NULL)
            json_object_set_new(resp, "body", body);
        else
            fprintf(stderr,
                    "sluice flow test: %s: the answer is not UTF-8, recorded without "
                    "its body\n",
                    lv->name);
        write_cassette(
            lv->off, lv->name,
            json_pack("{s:s, s:O, s:o}", "kind", "http", "request", lv->req, "response", resp));
    }
    lv->cb(res, lv->arg);
    json_decref(lv->req);
    free(lv);
}

static int http(void *self, const char *service, const sl_curl_req_opts_t *o, sl_curl_cb cb,
                void *arg, void **handle)
{
    offhost_t *off = self;
    http_key_t k = {0};
    char what[1200];
    char *file_body = NULL;
    size_t flen = 0;
    int rc;

    *handle = NULL;
    k.method = o->method ? o->method : "GET";
    k.service = service;
    k.url = o->url;
    url_path(o->url, k.path, sizeof k.path);
    if (o->body_path != NULL) {
        if ((file_body = slurp(o->body_path, SL_OFFLINE_MAX_SAMPLE, &flen)) == NULL)
            return SL_EIO;
        k.body = file_body;
        k.body_len = flen;
    } else if (o->body != NULL) {
        k.body = o->body;
        k.body_len = o->body_len;
    }
    sl_sha256_hex(k.body ? k.body : "", k.body_len, k.body_sha);
    snprintf(what, sizeof what, "%s %s %s", k.method, service ? service : o->url, k.path);

    if (off->o->replay_dir != NULL) {
        json_t *resp = find(off, "http", &k, NULL, what);
        free(file_body);
        if (resp == NULL) {
            unrecorded(off, what);
            return SL_ENOTFOUND;
        }
        later_t *l = later_new(off, L_HTTP, arg);
        if (l == NULL)
            return SL_ENOMEM;
        l->http_cb = cb;
        return post_recorded(l, resp, handle);
    }
    /* live: the real transfer, recorded when asked */
    if (off->curl == NULL && (rc = sl_curl_new(off->base, &off->curl)) != 0) {
        free(file_body);
        return rc;
    }
    live_t *lv = calloc(1, sizeof *lv);
    if (lv == NULL) {
        free(file_body);
        return SL_ENOMEM;
    }
    lv->off = off;
    lv->cb = cb;
    lv->arg = arg;
    snprintf(lv->name, sizeof lv->name, "%s", service ? service : "http");
    lv->req = json_pack("{s:s, s:s, s:s}", "method", k.method, service ? "service" : "url",
                        service ? service : o->url, "path", k.path);
    if (k.body != NULL)
        json_object_set_new(lv->req, "body_sha256", json_string(k.body_sha));
    free(file_body);
    json_array_append_new(off->calls, json_string(what));
    lv->live = 1;
    if ((rc = sl_curl_request(off->curl, o, live_http_cb, lv, &lv->xfer)) != 0) {
        json_decref(lv->req);
        free(lv);
        return rc;
    }
    *handle = lv;
    return 0;
}

static void http_cancel(void *self, void *handle)
{
    (void)self;
    if (handle != NULL && *(int *)handle)
        sl_curl_cancel(((live_t *)handle)->xfer); /* its callback frees it */
    else if (handle != NULL)
        ((later_t *)handle)->cancelled = 1;
}

/* ------------------------------------------------------------------------ */
/* sl.exec                                                                   */
/* ------------------------------------------------------------------------ */

/* argv as cassettes name it: inputs as {sha256:<hex>}, the scratch dir as {tmp}. */
static json_t *argv_key(offhost_t *off, const sl_exec_opts_t *o)
{
    json_t *a = json_array();
    size_t tl = strlen(off->tmpdir);
    for (int i = 0; o->argv[i] != NULL; i++) {
        const char *s = o->argv[i];
        char buf[4096];
        int fd;
        char tail;
        if (sscanf(s, "/proc/self/fd/%d%c", &fd, &tail) == 1 && fd >= 3 && o->inputs) {
            int k;
            for (k = 0; k < fd - 3 && o->inputs[k]; k++)
                ;
            char hex[65] = "unreadable";
            if (k == fd - 3 && o->inputs[k] && file_sha256(o->inputs[k], hex) != 0)
                snprintf(hex, sizeof hex, "unreadable");
            snprintf(buf, sizeof buf, "{sha256:%s}", hex);
        } else if (tl > 0 && strncmp(s, off->tmpdir, tl) == 0) {
            snprintf(buf, sizeof buf, "{tmp}%s", s + tl);
        } else {
            snprintf(buf, sizeof buf, "%s", s);
        }
        json_array_append_new(a, json_string(buf));
    }
    return a;
}

static void live_exec_cb(sl_exec_t *x, const sl_exec_result_t *res, void *arg)
{
    live_t *lv = arg;
    if (lv->off->o->record_dir && res->err == 0) {
        json_t *resp =
            json_pack("{s:i, s:i}", "status", res->exit_status, "signal", res->term_signal);
        json_t *out = res->stdout_data ? json_stringn(res->stdout_data, res->stdout_len) : NULL;
        json_t *errs = json_stringn(res->stderr_data ? res->stderr_data : "", res->stderr_len);
        if (out)
            json_object_set_new(resp, "stdout", out);
        if (errs)
            json_object_set_new(resp, "stderr", errs);
        write_cassette(
            lv->off, lv->name,
            json_pack("{s:s, s:O, s:o}", "kind", "exec", "request", lv->req, "response", resp));
    }
    lv->xcb(x, res, lv->arg);
    json_decref(lv->req);
    free(lv);
}

static int exec_start(void *self, const sl_exec_opts_t *o, sl_exec_cb cb, void *arg, void **handle)
{
    offhost_t *off = self;
    json_t *argv = argv_key(off, o);
    char *txt = json_dumps(argv, JSON_COMPACT);
    char what[1200];
    int rc;

    *handle = NULL;
    snprintf(what, sizeof what, "exec %s", txt ? txt : o->argv[0]);
    free(txt);
    if (off->o->replay_dir != NULL && off->o->replay_exec) {
        json_t *resp = find(off, "exec", NULL, argv, what);
        json_decref(argv);
        if (resp == NULL) {
            unrecorded(off, what);
            return SL_ENOTFOUND;
        }
        later_t *l = later_new(off, L_EXEC, arg);
        if (l == NULL)
            return SL_ENOMEM;
        l->exec_cb = cb;
        return post_recorded(l, resp, handle);
    }
    live_t *lv = calloc(1, sizeof *lv);
    if (lv == NULL) {
        json_decref(argv);
        return SL_ENOMEM;
    }
    lv->off = off;
    lv->xcb = cb;
    lv->arg = arg;
    snprintf(lv->name, sizeof lv->name, "exec-%s", o->argv[0]);
    lv->req = json_pack("{s:o}", "argv", argv);
    json_array_append_new(off->calls, json_string(what));
    lv->live = 1;
    if ((rc = sl_exec_start(off->base, o, live_exec_cb, lv, &lv->x)) != 0) {
        json_decref(lv->req);
        free(lv);
        return rc;
    }
    *handle = lv;
    return 0;
}

static void exec_cancel(void *self, void *handle)
{
    (void)self;
    if (handle != NULL && *(int *)handle)
        sl_exec_cancel(((live_t *)handle)->x); /* its callback frees it */
    else if (handle != NULL)
        ((later_t *)handle)->cancelled = 1;
}

/* inline_max 0: every artifact is a file in the scratch store, which the
 * report names (its "path"). */
static const sl_flow_effects_t offline_fx = {
    rows_ready, artifact_put, artifact_get, record_put,  text_source,
    http,       http_cancel,  exec_start,   exec_cancel, 0,
};

/* ------------------------------------------------------------------------ */
/* the driver                                                                */
/* ------------------------------------------------------------------------ */

typedef struct drv_s {
    offhost_t *off;
    sl_flowvm_t *vm;
    sl_flow_t *f;
    sl_run_pos_t pos;
    char *ctx_json;
    const char *file_json;
    struct event *timer;
    int attempts;
    json_t *path;
    const char *outcome;
    char error[64], note[64];
    int done;
} drv_t;

static void drv_end(drv_t *d, const char *outcome, const char *error, const char *note)
{
    d->outcome = outcome;
    snprintf(d->error, sizeof d->error, "%s", error ? error : "");
    snprintf(d->note, sizeof d->note, "%s", note ? note : "");
    d->done = 1;
}

static void step_cb(sl_step_t *s, const sl_step_result_t *res, void *arg);

static void attempt_cb(evutil_socket_t fd, short what, void *arg)
{
    drv_t *d = arg;
    sl_step_input_t in = {0};
    sl_step_t *s;
    (void)fd;
    (void)what;
    if (++d->attempts > SL_OFFLINE_MAX_ATTEMPTS) {
        drv_end(d, "failed", "too_many_attempts", NULL);
        return;
    }
    in.run_id = OFF_RUN;
    in.tenant_id = OFF_TENANT;
    in.dataset_id = OFF_DATASET;
    in.file_id = OFF_FILE;
    in.pipeline = sl_flow_name(d->f);
    in.step = d->pos.step;
    in.attempt = d->pos.attempt;
    in.ctx_json = d->ctx_json;
    in.file_json = d->file_json;
    in.tmpdir = d->off->tmpdir;
    if (sl_step_start(d->vm, d->f, &in, step_cb, d, &s) != 0)
        drv_end(d, "failed", "internal_error", "the step could not start");
}

static void next_attempt(drv_t *d, int delay_ms)
{
    if (delay_ms > SL_OFFLINE_MAX_DELAY_MS)
        delay_ms = SL_OFFLINE_MAX_DELAY_MS;
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(d->timer, &tv);
}

static void step_cb(sl_step_t *s, const sl_step_result_t *res, void *arg)
{
    drv_t *d = arg;
    sl_transition_t tr;
    size_t unrec = json_array_size(d->off->unrecorded);
    json_t *e;
    (void)s;

    if (res->ctx_json) {
        char *c = strdup(res->ctx_json);
        if (c) {
            free(d->ctx_json);
            d->ctx_json = c;
        }
    }
    e = json_pack("{s:s, s:i, s:s, s:I}", "step", d->pos.step, "attempt", d->pos.attempt, "outcome",
                  res->ok ? "ok" : (res->err ? res->err : "failed"), "duration_ms",
                  (json_int_t)(res->duration_s * 1000.0 + 0.5));
    if (res->ok && res->note)
        json_object_set_new(e, "note", json_string(res->note));
    if (res->detail) {
        char cut[DETAIL_SHOWN + 1];
        snprintf(cut, sizeof cut, "%s", res->detail);
        json_object_set_new(e, "detail", json_string(cut));
    }
    if (unrec > 0) {
        /* A call nobody recorded: the step fails with that, and the run with it. */
        json_object_set_new(e, "outcome", json_string("not_recorded"));
        json_object_set_new(e, "detail", json_incref(json_array_get(d->off->unrecorded, 0)));
        json_array_append_new(d->path, e);
        drv_end(d, "failed", "not_recorded", NULL);
        return;
    }
    json_array_append_new(d->path, e);
    sl_transition_decide(d->f, &d->pos, res, &tr);
    switch (tr.kind) {
    case SL_TR_NEXT:
    case SL_TR_FALLBACK:
        next_attempt(d, 0);
        break;
    case SL_TR_RETRY:
        next_attempt(d, tr.delay_ms);
        break;
    case SL_TR_SUCCEEDED:
        drv_end(d, "succeeded", NULL, res->note);
        break;
    case SL_TR_HELD:
    case SL_TR_WAITING:
        drv_end(d, "waiting", tr.err, NULL);
        break;
    case SL_TR_FAILED:
        drv_end(d, "failed", tr.err, NULL);
        break;
    }
}

/* Runs the loop until d->done (or nothing is left to wait for). */
static void loop_until(struct event_base *base, const int *done)
{
    while (!*done)
        if (event_base_loop(base, EVLOOP_ONCE) != 0)
            break;
}

/* ---- the sample, stored as an upload is ---- */

typedef struct put_s {
    int done, err;
    sl_store_info_t info;
} put_t;

static void put_cb(int err, const sl_store_info_t *info, void *arg)
{
    put_t *p = arg;
    p->err = err;
    if (err == 0)
        p->info = *info;
    p->done = 1;
}

static int store_sample(struct event_base *base, sl_store_t *st, const char *path, put_t *p,
                        char *err, size_t errlen)
{
    size_t n;
    char *b = slurp(path, SL_OFFLINE_MAX_SAMPLE, &n);
    sl_store_writer_t *w;
    int rc;
    if (b == NULL) {
        snprintf(err, errlen, "%s: cannot read (or over %u bytes)", path, SL_OFFLINE_MAX_SAMPLE);
        return SL_EIO;
    }
    rc = sl_store_put_begin(st, "files/" OFF_TENANT "/" OFF_FILE, &w);
    if (rc == 0 && (rc = sl_store_write(w, b, n)) != 0)
        sl_store_put_abort(w);
    else if (rc == 0 && (rc = sl_store_put_commit(w, put_cb, p)) == 0)
        loop_until(base, &p->done);
    free(b);
    if (rc == 0)
        rc = p->err;
    if (rc != 0)
        snprintf(err, errlen, "%s: cannot store the sample: %s", path, sl_strerror(rc));
    return rc;
}

static json_t *report(drv_t *d)
{
    offhost_t *off = d->off;
    json_t *arts = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(off->artifacts, k, v)
    {
        json_array_append_new(arts, json_pack("{s:s, s:O, s:O, s:O}", "kind", k, "mime",
                                              json_object_get(v, "mime"), "size",
                                              json_object_get(v, "size"), "sha256",
                                              json_object_get(v, "sha256")));
    }
    return json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:O, s:o, s:O, s:O, s:s?, s:O, s:O}", "pipeline",
                     sl_flow_name(d->f), "flow_version", sl_flow_version(d->f), "outcome",
                     d->outcome ? d->outcome : "failed", "error", d->error[0] ? d->error : NULL,
                     "note", d->note[0] ? d->note : NULL, "path", d->path, "artifacts", arts,
                     "record", off->record ? off->record : json_null(), "provenance",
                     off->prov ? off->prov : json_null(), "text_source",
                     off->text_source[0] ? off->text_source : NULL, "calls", off->calls,
                     "unrecorded", off->unrecorded);
}

int sl_offline_run(const sl_offline_opts_t *o, json_t **out, char *err, size_t errlen)
{
    offhost_t off = {0};
    drv_t d = {0};
    sl_workq_t *wq = NULL;
    sl_store_t *st = NULL;
    sl_flow_host_t host = {0};
    put_t put = {0};
    char root[1024], tmp_root[1024], pbuf[256], lpath[1024];
    const char *pipeline = o->pipeline;
    json_t *file = NULL;
    int rc = SL_ENOMEM;

    *out = NULL;
    err[0] = '\0';
    off.o = o;
    off.artifacts = json_object();
    off.cassettes = json_array();
    off.calls = json_array();
    off.unrecorded = json_array();
    d.off = &off;
    d.path = json_array();
    if ((off.base = event_base_new()) == NULL || !off.artifacts || !off.cassettes || !off.calls ||
        !off.unrecorded || !d.path)
        goto out;
    if (o->replay_dir && (rc = load_cassettes(&off, o->replay_dir, err, errlen)) != 0)
        goto out;
    snprintf(root, sizeof root, "%.900s/store", o->work_dir);
    snprintf(tmp_root, sizeof tmp_root, "%.900s/tmp", o->work_dir);
    snprintf(off.tmpdir, sizeof off.tmpdir, "%.900s/run", tmp_root);
    if ((rc = sl_scratch_make(root)) != 0 || (rc = sl_scratch_make(off.tmpdir)) != 0) {
        snprintf(err, errlen, "%s: cannot create the scratch dirs", o->work_dir);
        goto out;
    }
    if ((rc = sl_workq_new(off.base, 2, &wq)) != 0 || (rc = sl_store_fs_open(wq, root, &st)) != 0) {
        snprintf(err, errlen, "cannot open the scratch store: %s", sl_strerror(rc));
        goto out;
    }
    if ((rc = store_sample(off.base, st, o->sample_path, &put, err, errlen)) != 0)
        goto out;

    host.base = off.base;
    host.store = st;
    host.wq = wq;
    host.cfg = o->cfg;
    host.lib_dir = o->lib_dir ? o->lib_dir : "lua-flows/lib";
    host.tmp_root = tmp_root;
    host.fx = &offline_fx;
    host.fx_self = &off;
    if ((rc = sl_flowvm_new(&host, &d.vm, err, errlen)) != 0)
        goto out;
    if (pipeline == NULL) {
        const char *b = strrchr(o->flow_path, '/');
        b = b ? b + 1 : o->flow_path;
        size_t n = strcspn(b, ".");
        snprintf(pbuf, sizeof pbuf, "%.*s", (int)n, b);
        pipeline = pbuf;
    }
    if ((rc = sl_flow_load(d.vm, pipeline, o->flow_path, &d.f, err, errlen)) != 0)
        goto out;

    /* the file document a step sees, as run.c builds it from the claim */
    const char *base = strrchr(o->sample_path, '/');
    if (sl_store_local_path(st, "files/" OFF_TENANT "/" OFF_FILE, lpath, sizeof lpath) != 0) {
        rc = SL_EIO;
        snprintf(err, errlen, "the scratch store has no local path");
        goto out;
    }
    file = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s}", "id", OFF_FILE, "name",
                     base ? base + 1 : o->sample_path, "mime", o->mime ? o->mime : put.info.mime,
                     "size", (json_int_t)put.info.size, "sha256", put.info.sha256_hex, "path",
                     lpath, "dataset_id", OFF_DATASET);
    if (file && o->schema)
        json_object_set(file, "schema", (json_t *)o->schema);
    char *ftxt = file ? json_dumps(file, JSON_COMPACT) : NULL;
    d.file_json = ftxt;
    d.ctx_json = strdup("{}");
    d.timer = evtimer_new(off.base, attempt_cb, &d);
    rc = SL_ENOMEM;
    if (!ftxt || !d.ctx_json || !d.timer) {
        free(ftxt);
        goto out;
    }
    snprintf(d.pos.step, sizeof d.pos.step, "%s", sl_flow_start(d.f));
    d.pos.attempt = 1;
    next_attempt(&d, 0);
    loop_until(off.base, &d.done);
    if (!d.done)
        drv_end(&d, "failed", "internal_error", "the loop ran dry");
    *out = report(&d);
    free(ftxt);
    d.file_json = NULL;
    rc = *out ? 0 : SL_ENOMEM;
out:
    if (d.timer)
        event_free(d.timer);
    if (d.f)
        sl_flow_unref(d.f);
    if (d.vm)
        sl_flowvm_free(d.vm);
    /* let detached operations (the store's, a cancelled call's) finish */
    if (off.base)
        event_base_loop(off.base, EVLOOP_NONBLOCK);
    if (off.curl)
        sl_curl_free(off.curl);
    if (st)
        sl_store_free(st);
    if (wq)
        sl_workq_free(wq);
    if (off.base)
        event_base_free(off.base);
    free(d.ctx_json);
    json_decref(file);
    json_decref(d.path);
    json_decref(off.artifacts);
    json_decref(off.cassettes);
    json_decref(off.calls);
    json_decref(off.unrecorded);
    json_decref(off.record);
    json_decref(off.prov);
    return rc;
}
