/*
 * upload.c — `sluice upload` (see upload.h): walk, upload in batches, follow
 * the live events until every file is final, summarize.
 *
 * Uploading: one multipart POST per batch, every part a curl_mime_filedata()
 * part so libcurl streams the file from disk (a batch of big PDFs never sits
 * in memory). Each batch carries its own Idempotency-Key, so a retry after a
 * lost response (connection reset, 503, 429) replays the stored answer
 * instead of storing the files twice (API.md "Upload").
 *
 * Following: the dataset's SSE stream runs on a curl multi handle; between
 * polls of it, the files the events name are checked with GET /v1/files/{id}
 * (on a second, blocking handle — allowed, it is not the stream's handle).
 * Only a run reaching an end state can make a file final, so only those
 * events cost a request. A sweep — the dataset's queued and processing
 * lists, and a GET of every pending file missing from both — runs when the
 * stream (re)connects, every SWEEP_LIVE_S while it is up (a lost event costs
 * at most that long) and every SWEEP_POLL_S while it is down or the server
 * has no stream: the polling fallback. Reconnects send Last-Event-ID, with
 * backoff.
 */
#include "cli/upload.h"

#include "core/crypto.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URL "http://127.0.0.1:8080"
#define BATCH_DEFAULT 100
#define BATCH_MAX 1000          /* the server's default max_files_per_request */
#define WALK_DEPTH_MAX 64
#define JSON_BODY_MAX (64u << 20) /* one response: a page of 1000 files is ~2 MB */
#define SSE_LINE_MAX (1u << 20)
#define SSE_EVENT_MAX (1u << 20)
#define UPLOAD_TRIES 6
#define SWEEP_LIVE_S 15.0
#define SWEEP_POLL_S 2.0
#define SSE_RETRY_MIN_S 1.0
#define SSE_RETRY_MAX_S 30.0
#define SSE_RETRY_MISSING_S 30.0 /* the server answered 404: it has no stream */
#define LIST_LIMIT 1000
#define ERROR_MAX 512

enum { ST_PENDING = 0, ST_DONE, ST_FAILED };

#define ETAG_MAX 80 /* longer ETags are not kept (then no If-None-Match) */

typedef struct up_file_s {
    char *path;       /* owned */
    const char *name; /* borrows path: the last component */
    uint64_t size;
    char id[64];  /* the server's id, "" until uploaded */
    int status;   /* ST_* */
    int dirty;    /* 1 while queued for a check */
    char *error;  /* owned: why it failed, or NULL */
    char etag[ETAG_MAX]; /* the ETag of the last document read, "" before (sent as If-None-Match) */
} up_file_t;

typedef struct buf_s {
    char *p;
    size_t len, cap, max;
} buf_t;

typedef struct sse_s {
    CURLM *multi;
    CURL *easy;
    struct curl_slist *hdrs;
    int active;    /* the easy handle is in the multi */
    int connected; /* got a 200 on the current connection */
    long status;
    buf_t line;
    buf_t data;
    char ev_id[32];
    char ev_type[16];
    char last_id[32];
    double retry_at;
    double backoff;
    int missing; /* the last answer was 404/405: no stream on this server */
} sse_t;

typedef struct cli_s {
    const char *url;
    char *url_buf; /* owned: url without trailing slashes; url points here */
    const char *key;
    const char *dataset;
    long batch;
    int follow;
    double timeout_s;
    int tty;

    up_file_t *files;
    size_t nfiles, cap;
    size_t *by_id; /* indices sorted by id, for lookups from events */
    size_t nuploaded;
    uint64_t total_bytes;
    uint64_t done_bytes;  /* bytes of the batches already stored */
    uint64_t batch_bytes; /* bytes of the batch in flight */
    size_t batch_files;

    CURL *easy; /* requests other than the stream */
    char auth[1024];
    double t0, t_upload_end, t_last_draw;
    size_t ndone, nfailed;
    int sweep_needed;
    double next_sweep;
    int server_down; /* the last request could not reach the server */
    size_t last_reported_final;
} cli_t;

/* ---------------------------------------------------------------- small helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void fmt_bytes(uint64_t n, char *out, size_t outlen)
{
    static const char *units[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1000.0 && u < 4) {
        v /= 1000.0;
        u++;
    }
    if (u == 0)
        snprintf(out, outlen, "%" PRIu64 " B", n);
    else
        snprintf(out, outlen, "%.1f %s", v, units[u]);
}

static int buf_append(buf_t *b, const char *data, size_t len)
{
    if (len > b->max - b->len)
        return -1;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
    return 0;
}

static void buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static size_t buf_write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
    buf_t *b = arg;
    return buf_append(b, ptr, size * nmemb) == 0 ? size * nmemb : 0;
}

/* Clears the progress line so an ordinary message can be printed. */
static void clear_line(cli_t *c)
{
    if (c->tty)
        fputs("\r\033[K", stderr);
}

static void note(cli_t *c, const char *fmt, ...)
{
    va_list ap;
    clear_line(c);
    fputs("sluice upload: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---------------------------------------------------------------- walking */

static int add_file(cli_t *c, const char *path, uint64_t size)
{
    if (c->nfiles == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        up_file_t *f = realloc(c->files, cap * sizeof *f);
        if (!f)
            return -1;
        c->files = f;
        c->cap = cap;
    }
    up_file_t *f = &c->files[c->nfiles];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path)))
        return -1;
    const char *slash = strrchr(f->path, '/');
    f->name = slash ? slash + 1 : f->path;
    f->size = size;
    c->nfiles++;
    c->total_bytes += size;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Adds the regular files under dir, in name order, depth first. Hidden
 * entries are skipped, and so are symbolic links to directories (no loops).
 */
static int walk(cli_t *c, const char *dir, int depth)
{
    DIR *d = NULL;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;

    if (depth > WALK_DEPTH_MAX) {
        note(c, "%s: too deep, skipped", dir);
        return 0;
    }
    if (!(d = opendir(dir))) {
        note(c, "%s: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **nn = realloc(names, ncap * sizeof *nn);
            if (!nn)
                goto out;
            names = nn;
            cap = ncap;
        }
        if (!(names[n] = strdup(de->d_name)))
            goto out;
        n++;
    }
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        int len = snprintf(path, sizeof path, "%s%s%s", dir,
                           dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", names[i]);
        if (len < 0 || (size_t)len >= sizeof path) {
            note(c, "%s/%s: path too long, skipped", dir, names[i]);
            continue;
        }
        struct stat lst, st;
        if (lstat(path, &lst) != 0 || stat(path, &st) != 0) {
            note(c, "%s: %s, skipped", path, strerror(errno));
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (S_ISLNK(lst.st_mode))
                continue;
            if (walk(c, path, depth + 1) != 0)
                goto out;
        } else if (S_ISREG(st.st_mode)) {
            if (add_file(c, path, (uint64_t)st.st_size) != 0)
                goto out;
        }
    }
    rc = 0;
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

/* ---------------------------------------------------------------- requests */

static void set_common(cli_t *c, CURL *e, const char *path, struct curl_slist *hdrs)
{
    char url[2048];
    snprintf(url, sizeof url, "%s%s", c->url, path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice-upload/1");
}

/* Keeps the ETag response header (arg: a char[ETAG_MAX], "" when absent or too long). */
static size_t etag_header_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
    char *etag = arg;
    size_t n = size * nmemb;
    if (n > 5 && strncasecmp(ptr, "ETag:", 5) == 0) {
        const char *v = ptr + 5;
        size_t vl = n - 5;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < ETAG_MAX) {
            memcpy(etag, v, vl);
            etag[vl] = '\0';
        }
    }
    return n;
}

/*
 * GET path; *out receives the parsed JSON body (or NULL), *status the HTTP
 * status. With `etag` (a char[ETAG_MAX], may be NULL) holding a tag, sends it
 * as If-None-Match (then 304 means "unchanged", with no body), and stores the
 * answer's ETag there. Returns 0 when the server answered, -1 when it could
 * not be reached (err says why).
 */
static int get_json(cli_t *c, const char *path, json_t **out, long *status, char *err,
                    size_t errlen, char *etag)
{
    buf_t body = {.max = JSON_BODY_MAX};
    struct curl_slist *hdrs = NULL;
    char inm[ETAG_MAX + 32], got[ETAG_MAX] = "";
    int rc = -1;
    *out = NULL;
    *status = 0;

    hdrs = curl_slist_append(hdrs, c->auth);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    if (etag && etag[0]) {
        snprintf(inm, sizeof inm, "If-None-Match: %s", etag);
        hdrs = curl_slist_append(hdrs, inm);
    }
    curl_easy_reset(c->easy);
    set_common(c, c->easy, path, hdrs);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, buf_write_cb);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, etag_header_cb);
    curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, got);
    CURLcode cc = curl_easy_perform(c->easy);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, status);
    if (body.len)
        *out = json_loadb(body.p, body.len, 0, NULL);
    if (etag && *status == 200)
        snprintf(etag, ETAG_MAX, "%s", got);
    rc = 0;
out:
    curl_slist_free_all(hdrs);
    buf_free(&body);
    return rc;
}

/* "message (code)" from an API error body, or "HTTP <status>". */
static void api_error(json_t *body, long status, char *out, size_t outlen)
{
    json_t *e = json_object_get(body, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *code = json_string_value(json_object_get(e, "code"));
    if (msg)
        snprintf(out, outlen, "%s (%s, HTTP %ld)", msg, code ? code : "error", status);
    else
        snprintf(out, outlen, "HTTP %ld", status);
}

/* ---------------------------------------------------------------- progress */

static void draw_bar(char *out, size_t width, double frac)
{
    if (frac < 0)
        frac = 0;
    if (frac > 1)
        frac = 1;
    size_t fill = (size_t)(frac * (double)width + 0.5);
    for (size_t i = 0; i < width; i++)
        out[i] = i < fill ? '#' : '-';
    out[width] = '\0';
}

static void draw_upload(cli_t *c, uint64_t in_flight, int force)
{
    double t = now_s();
    if (!c->tty || (!force && t - c->t_last_draw < 0.1))
        return;
    c->t_last_draw = t;
    uint64_t sent = c->done_bytes + in_flight;
    double frac = c->total_bytes ? (double)sent / (double)c->total_bytes
                                 : (double)c->nuploaded / (double)(c->nfiles ? c->nfiles : 1);
    char bar[41], a[32], b[32], rate[32];
    draw_bar(bar, 30, frac);
    fmt_bytes(sent, a, sizeof a);
    fmt_bytes(c->total_bytes, b, sizeof b);
    double el = t - c->t0;
    fmt_bytes(el > 0.2 ? (uint64_t)((double)sent / el) : 0, rate, sizeof rate);
    fprintf(stderr, "\r\033[Kuploading  [%s] %3d%%  %s / %s  %zu/%zu files  %s/s", bar,
            (int)(frac * 100.0), a, b, c->nuploaded, c->nfiles, rate);
    fflush(stderr);
}

static void draw_follow(cli_t *c, int force)
{
    size_t fin = c->ndone + c->nfailed;
    double t = now_s();
    if (c->tty) {
        if (!force && t - c->t_last_draw < 0.1)
            return;
        c->t_last_draw = t;
        char bar[41];
        draw_bar(bar, 30, c->nuploaded ? (double)fin / (double)c->nuploaded : 1.0);
        fprintf(stderr, "\r\033[Kprocessing [%s] %zu/%zu final  done %zu  failed %zu  %.0f s%s",
                bar, fin, c->nuploaded, c->ndone, c->nfailed, t - c->t_upload_end,
                c->server_down ? "  (server unreachable, retrying)" : "");
        fflush(stderr);
        return;
    }
    /* Plain lines: one when the count changes, at most one a second. */
    if (fin != c->last_reported_final && (force || t - c->t_last_draw >= 1.0)) {
        c->t_last_draw = t;
        c->last_reported_final = fin;
        fprintf(stderr, "sluice upload: %zu/%zu final (done %zu, failed %zu)\n", fin,
                c->nuploaded, c->ndone, c->nfailed);
    }
}

/* ---------------------------------------------------------------- uploading */

static int xfer_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                   curl_off_t ulnow)
{
    cli_t *c = arg;
    (void)dltotal;
    (void)dlnow;
    /* ultotal includes the multipart framing; scale to the files' bytes. */
    uint64_t in_flight = 0;
    if (ultotal > 0 && ulnow > 0)
        in_flight = (uint64_t)((double)c->batch_bytes * ((double)ulnow / (double)ultotal));
    draw_upload(c, in_flight, 0);
    return 0;
}

/*
 * One attempt at a batch. Returns 0 with the status and body set when the server
 * answered, -1 when it could not be reached (err says why).
 */
static int post_batch(cli_t *c, size_t first, size_t n, const char *idem, long *status,
                      json_t **body, char *err, size_t errlen, double *retry_after)
{
    curl_mime *mime = NULL;
    struct curl_slist *hdrs = NULL;
    buf_t resp = {.max = JSON_BODY_MAX};
    char hdr[160], path[256];
    int rc = -1;
    *body = NULL;
    *status = 0;
    *retry_after = 0;

    mime = curl_mime_init(c->easy);
    for (size_t i = first; i < first + n; i++) {
        curl_mimepart *part = curl_mime_addpart(mime);
        curl_mime_name(part, "file");
        /* streamed from disk when the request is sent; filename = its basename */
        if (curl_mime_filedata(part, c->files[i].path) != CURLE_OK) {
            snprintf(err, errlen, "%s: cannot read", c->files[i].path);
            goto out;
        }
        curl_mime_type(part, "application/octet-stream");
    }
    hdrs = curl_slist_append(hdrs, c->auth);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", idem);
    hdrs = curl_slist_append(hdrs, hdr);
    snprintf(path, sizeof path, "/v1/datasets/%s/files", c->dataset);

    curl_easy_reset(c->easy);
    set_common(c, c->easy, path, hdrs);
    curl_easy_setopt(c->easy, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, buf_write_cb);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c->easy, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c->easy, CURLOPT_XFERINFOFUNCTION, xfer_cb);
    curl_easy_setopt(c->easy, CURLOPT_XFERINFODATA, c);
    /* no overall timeout (a batch can be big); a stalled one is given up */
    curl_easy_setopt(c->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c->easy, CURLOPT_LOW_SPEED_TIME, 120L);
    CURLcode cc = curl_easy_perform(c->easy);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, status);
    curl_off_t ra = 0;
    if (curl_easy_getinfo(c->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
        *retry_after = (double)ra;
    if (resp.len)
        *body = json_loadb(resp.p, resp.len, 0, NULL);
    rc = 0;
out:
    curl_easy_reset(c->easy); /* drops its pointers to mime and hdrs */
    curl_mime_free(mime);
    curl_slist_free_all(hdrs);
    buf_free(&resp);
    return rc;
}

/* Uploads files [first, first+n); returns 0, or -1 after printing why. */
static int upload_batch(cli_t *c, size_t first, size_t n)
{
    char idem[65], err[ERROR_MAX];
    unsigned char rnd[16];
    double delay = 1.0;
    if (sl_random_bytes(rnd, sizeof rnd) != 0) {
        note(c, "no randomness for an idempotency key");
        return -1;
    }
    sl_hex(rnd, sizeof rnd, idem);
    c->batch_bytes = 0;
    for (size_t i = first; i < first + n; i++)
        c->batch_bytes += c->files[i].size;
    c->batch_files = n;

    for (int attempt = 1;; attempt++) {
        long status;
        json_t *body;
        double retry_after;
        int rc = post_batch(c, first, n, idem, &status, &body, err, sizeof err, &retry_after);
        int transient = rc != 0 || status == 429 || status == 502 || status == 503 ||
                        status == 504 || status == 409; /* 409: our own retry still running */
        if (rc == 0 && status == 202) {
            json_t *files = json_object_get(body, "files");
            if (!json_is_array(files) || json_array_size(files) != n) {
                note(c, "unexpected answer to an upload (%zu files expected)", n);
                json_decref(body);
                return -1;
            }
            for (size_t i = 0; i < n; i++) {
                json_t *f = json_array_get(files, i);
                up_file_t *uf = &c->files[first + i];
                const char *id = json_string_value(json_object_get(f, "id"));
                const char *st = json_string_value(json_object_get(f, "status"));
                snprintf(uf->id, sizeof uf->id, "%s", id ? id : "");
                /* A file with nothing to do is final at once (API.md: no runs -> done). */
                if (st && strcmp(st, "done") == 0) {
                    uf->status = ST_DONE;
                    c->ndone++;
                } else if (st && strcmp(st, "failed") == 0) {
                    uf->status = ST_FAILED;
                    c->nfailed++;
                    uf->dirty = 1;
                }
            }
            json_decref(body);
            return 0;
        }
        if (rc == 0) {
            api_error(body, status, err, sizeof err);
            if (status == 409) {
                const char *code =
                    json_string_value(json_object_get(json_object_get(body, "error"), "code"));
                transient = code && strcmp(code, "idempotency_in_progress") == 0;
            }
        }
        json_decref(body);
        if (!transient || attempt >= UPLOAD_TRIES) {
            note(c, "upload of %s%s failed: %s", c->files[first].path,
                 n > 1 ? " and the rest of its batch" : "", err);
            return -1;
        }
        double wait = retry_after > 0 ? retry_after : delay;
        note(c, "upload attempt %d failed (%s); retrying in %.0f s", attempt, err, wait);
        sleep_s(wait);
        delay = delay * 2 > 30 ? 30 : delay * 2;
    }
}

/* ---------------------------------------------------------------- file state */

static const up_file_t *g_sort_files; /* qsort has no context argument */

static int cmp_by_id(const void *a, const void *b)
{
    return strcmp(g_sort_files[*(const size_t *)a].id, g_sort_files[*(const size_t *)b].id);
}

static int index_ids(cli_t *c)
{
    if (!(c->by_id = malloc((c->nfiles ? c->nfiles : 1) * sizeof *c->by_id)))
        return -1;
    for (size_t i = 0; i < c->nfiles; i++)
        c->by_id[i] = i;
    g_sort_files = c->files;
    qsort(c->by_id, c->nfiles, sizeof *c->by_id, cmp_by_id);
    return 0;
}

static up_file_t *find_id(cli_t *c, const char *id)
{
    size_t lo = 0, hi = c->nuploaded;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        up_file_t *f = &c->files[c->by_id[mid]];
        int d = strcmp(f->id, id);
        if (d == 0)
            return f;
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* "ai_record: no_text (at textract); file_view: bad_input (at thumbnail)" */
static char *run_errors(json_t *file)
{
    char out[ERROR_MAX] = "";
    size_t off = 0;
    size_t i;
    json_t *run;
    json_array_foreach(json_object_get(file, "runs"), i, run)
    {
        const char *state = json_string_value(json_object_get(run, "state"));
        if (!state || (strcmp(state, "failed") != 0 && strcmp(state, "cancelled") != 0))
            continue;
        const char *pipe = json_string_value(json_object_get(run, "pipeline"));
        const char *err = json_string_value(json_object_get(run, "error"));
        const char *step = json_string_value(json_object_get(run, "step"));
        int n = snprintf(out + off, sizeof out - off, "%s%s: %s%s%s%s", off ? "; " : "",
                         pipe ? pipe : "?", err ? err : state, step ? " (at " : "",
                         step ? step : "", step ? ")" : "");
        if (n < 0 || (size_t)n >= sizeof out - off)
            break;
        off += (size_t)n;
    }
    return strdup(off ? out : "failed");
}

/* GET the file; marks it final when it is. Returns -1 when the server is unreachable. */
static int check_file(cli_t *c, up_file_t *f)
{
    char path[128], err[ERROR_MAX];
    json_t *body;
    long status;
    snprintf(path, sizeof path, "/v1/files/%s", f->id);
    if (get_json(c, path, &body, &status, err, sizeof err, f->etag) != 0) {
        c->server_down = 1;
        return -1;
    }
    c->server_down = 0;
    f->dirty = 0;
    if (status == 304) {
        /* unchanged since the last read: what that read decided stands */
    } else if (status == 404) {
        if (f->status == ST_PENDING) {
            f->status = ST_FAILED;
            c->nfailed++;
        }
        free(f->error);
        f->error = strdup("deleted while processing");
    } else if (status == 200) {
        const char *st = json_string_value(json_object_get(body, "status"));
        if (st && strcmp(st, "done") == 0 && f->status == ST_PENDING) {
            f->status = ST_DONE;
            c->ndone++;
        } else if (st && strcmp(st, "failed") == 0) {
            if (f->status == ST_PENDING) {
                f->status = ST_FAILED;
                c->nfailed++;
            }
            free(f->error);
            f->error = run_errors(body);
        }
    } else {
        f->dirty = 1; /* 5xx and the like: try again on the next round */
    }
    json_decref(body);
    return 0;
}

/* Checks every dirty file; stops at the first unreachable-server error. */
static void check_dirty(cli_t *c)
{
    for (size_t i = 0; i < c->nuploaded; i++) {
        if (c->files[i].dirty && check_file(c, &c->files[i]) != 0)
            return;
    }
}

/*
 * Marks dirty every pending file that is in neither the dataset's queued nor
 * its processing list: it may have become final. Returns -1 when the server
 * is unreachable.
 */
static int sweep(cli_t *c)
{
    static const char *lists[] = {"processing", "queued"};
    char **active = NULL;
    size_t nactive = 0, cap = 0;
    int rc = -1;

    for (int l = 0; l < 2; l++) {
        char cursor[128] = "";
        do {
            char path[512], err[ERROR_MAX];
            json_t *body;
            long status;
            snprintf(path, sizeof path, "/v1/datasets/%s/files?status=%s&limit=%d%s%s",
                     c->dataset, lists[l], LIST_LIMIT, cursor[0] ? "&cursor=" : "", cursor);
            if (get_json(c, path, &body, &status, err, sizeof err, NULL) != 0) {
                c->server_down = 1;
                goto out;
            }
            c->server_down = 0;
            if (status != 200) {
                json_decref(body);
                goto out;
            }
            size_t i;
            json_t *f;
            json_array_foreach(json_object_get(body, "files"), i, f)
            {
                const char *id = json_string_value(json_object_get(f, "id"));
                if (!id)
                    continue;
                if (nactive == cap) {
                    size_t ncap = cap ? cap * 2 : 256;
                    char **na = realloc(active, ncap * sizeof *na);
                    if (!na) {
                        json_decref(body);
                        goto out;
                    }
                    active = na;
                    cap = ncap;
                }
                if (!(active[nactive] = strdup(id))) {
                    json_decref(body);
                    goto out;
                }
                nactive++;
            }
            const char *next = json_string_value(json_object_get(body, "next_cursor"));
            snprintf(cursor, sizeof cursor, "%s", next ? next : "");
            json_decref(body);
        } while (cursor[0]);
    }
    if (nactive) /* qsort and bsearch want a real array, even for nothing */
        qsort(active, nactive, sizeof *active, cmp_str);
    for (size_t i = 0; i < c->nuploaded; i++) {
        up_file_t *f = &c->files[i];
        const char *key = f->id;
        if (f->status == ST_PENDING &&
            (!nactive || !bsearch(&key, active, nactive, sizeof *active, cmp_str)))
            f->dirty = 1;
    }
    rc = 0;
out:
    for (size_t i = 0; i < nactive; i++)
        free(active[i]);
    free(active);
    return rc;
}

/* ---------------------------------------------------------------- the event stream */

/* One complete event (API.md "Live status"): note the file if it may be final. */
static void sse_dispatch(cli_t *c, sse_t *s)
{
    if (s->ev_id[0])
        snprintf(s->last_id, sizeof s->last_id, "%s", s->ev_id);
    if (s->data.len == 0)
        return;
    json_t *d = json_loadb(s->data.p, s->data.len, 0, NULL);
    const char *fid = json_string_value(json_object_get(d, "file_id"));
    const char *state = json_string_value(json_object_get(d, "state"));
    up_file_t *f = fid ? find_id(c, fid) : NULL;
    /*
     * Only an ended run (or a file event saying done/failed) can make a file
     * final; other events cost nothing. Without a state, check anyway.
     */
    if (f && f->status == ST_PENDING &&
        (!state || strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
         strcmp(state, "cancelled") == 0 || strcmp(state, "done") == 0))
        f->dirty = 1;
    json_decref(d);
}

/* One line of the stream (without its end of line). */
static void sse_line(cli_t *c, sse_t *s, const char *line, size_t len)
{
    if (len == 0) {
        sse_dispatch(c, s);
        s->data.len = 0;
        s->ev_id[0] = s->ev_type[0] = '\0';
        return;
    }
    if (line[0] == ':')
        return; /* comment: keep-alive */
    const char *colon = memchr(line, ':', len);
    size_t flen = colon ? (size_t)(colon - line) : len;
    const char *val = colon ? colon + 1 : line + len;
    size_t vlen = len - (size_t)(val - line);
    if (vlen && val[0] == ' ') {
        val++;
        vlen--;
    }
    if (flen == 4 && memcmp(line, "data", 4) == 0) {
        if (s->data.len)
            buf_append(&s->data, "\n", 1);
        buf_append(&s->data, val, vlen);
    } else if (flen == 2 && memcmp(line, "id", 2) == 0 && vlen < sizeof s->ev_id) {
        memcpy(s->ev_id, val, vlen);
        s->ev_id[vlen] = '\0';
    } else if (flen == 5 && memcmp(line, "event", 5) == 0 && vlen < sizeof s->ev_type) {
        memcpy(s->ev_type, val, vlen);
        s->ev_type[vlen] = '\0';
    }
}

typedef struct sse_ctx_s {
    cli_t *c;
    sse_t *s;
} sse_ctx_t;

static size_t sse_header_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
    sse_ctx_t *x = arg;
    size_t n = size * nmemb;
    if (n <= 2 && (n == 0 || ptr[0] == '\r' || ptr[0] == '\n')) { /* end of headers */
        long code = 0;
        curl_easy_getinfo(x->s->easy, CURLINFO_RESPONSE_CODE, &code);
        x->s->status = code;
        if (code == 200) {
            x->s->connected = 1;
            x->s->missing = 0;
            x->s->backoff = SSE_RETRY_MIN_S;
            x->c->sweep_needed = 1; /* whatever happened before we were listening */
        }
    }
    return n;
}

static size_t sse_write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
    sse_ctx_t *x = arg;
    sse_t *s = x->s;
    size_t n = size * nmemb;
    if (s->status != 200)
        return n; /* an error body: read and ignore */
    for (size_t i = 0; i < n; i++) {
        char ch = ptr[i];
        if (ch == '\n') {
            size_t len = s->line.len;
            if (len && s->line.p[len - 1] == '\r')
                len--;
            sse_line(x->c, s, s->line.p ? s->line.p : "", len);
            s->line.len = 0;
        } else if (buf_append(&s->line, &ch, 1) != 0) {
            return 0; /* a line past SSE_LINE_MAX: drop the connection, reconnect */
        }
    }
    return n;
}

static sse_ctx_t g_sse_ctx;

static int sse_start(cli_t *c, sse_t *s)
{
    char path[256], hdr[96];
    snprintf(path, sizeof path, "/v1/datasets/%s/events", c->dataset);
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    s->hdrs = curl_slist_append(s->hdrs, c->auth);
    s->hdrs = curl_slist_append(s->hdrs, "Accept: text/event-stream");
    if (s->last_id[0]) {
        snprintf(hdr, sizeof hdr, "Last-Event-ID: %s", s->last_id);
        s->hdrs = curl_slist_append(s->hdrs, hdr);
    }
    s->line.len = 0;
    s->data.len = 0;
    s->ev_id[0] = s->ev_type[0] = '\0';
    s->status = 0;
    s->connected = 0;
    g_sse_ctx.c = c;
    g_sse_ctx.s = s;
    curl_easy_reset(s->easy);
    set_common(c, s->easy, path, s->hdrs);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, sse_write_cb);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, &g_sse_ctx);
    curl_easy_setopt(s->easy, CURLOPT_HEADERFUNCTION, sse_header_cb);
    curl_easy_setopt(s->easy, CURLOPT_HEADERDATA, &g_sse_ctx);
    /* the server sends a comment at least every 15 s: silence means a dead link */
    curl_easy_setopt(s->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(s->easy, CURLOPT_LOW_SPEED_TIME, 45L);
    if (curl_multi_add_handle(s->multi, s->easy) != CURLM_OK)
        return -1;
    s->active = 1;
    return 0;
}

/* The stream ended (error, close, or a non-200 answer): schedule a reconnect. */
static void sse_ended(sse_t *s)
{
    curl_multi_remove_handle(s->multi, s->easy);
    s->active = 0;
    if (s->status == 404 || s->status == 405) {
        s->missing = 1;
        s->retry_at = now_s() + SSE_RETRY_MISSING_S;
        return;
    }
    s->retry_at = now_s() + (s->connected ? SSE_RETRY_MIN_S : s->backoff);
    if (!s->connected)
        s->backoff = s->backoff * 2 > SSE_RETRY_MAX_S ? SSE_RETRY_MAX_S : s->backoff * 2;
    s->connected = 0;
}

/* Runs the stream for up to wait_ms; returns when it has something or the time is up. */
static void sse_pump(sse_t *s, int wait_ms)
{
    int running = 0;
    curl_multi_perform(s->multi, &running);
    if (running)
        curl_multi_poll(s->multi, NULL, 0, wait_ms, NULL);
    curl_multi_perform(s->multi, &running);
    int left;
    CURLMsg *m;
    while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (m->msg == CURLMSG_DONE && m->easy_handle == s->easy)
            sse_ended(s);
    }
}

/* ---------------------------------------------------------------- following */

static int follow(cli_t *c)
{
    sse_t s = {0};
    int rc = SL_UPLOAD_OK;
    s.line.max = SSE_LINE_MAX;
    s.data.max = SSE_EVENT_MAX;
    s.backoff = SSE_RETRY_MIN_S;
    if (!(s.multi = curl_multi_init()) || !(s.easy = curl_easy_init())) {
        note(c, "out of memory");
        rc = SL_UPLOAD_USAGE;
        goto out;
    }
    double deadline = c->timeout_s > 0 ? c->t_upload_end + c->timeout_s : 0;
    c->sweep_needed = 1;
    c->next_sweep = 0;
    c->t_last_draw = 0;
    int warned_poll = 0, said_live = 0;
    check_dirty(c); /* files that failed at once: fetch their errors */

    while (c->ndone + c->nfailed < c->nuploaded) {
        double t = now_s();
        if (deadline && t >= deadline) {
            rc = SL_UPLOAD_TIMEOUT;
            break;
        }
        if (!s.active && t >= s.retry_at)
            sse_start(c, &s);
        if (s.active)
            sse_pump(&s, 200);
        else
            sleep_s(0.2);
        if (s.connected && !said_live) {
            said_live = 1;
            note(c, "following the dataset's live events");
        }
        if (s.missing && !warned_poll) {
            warned_poll = 1;
            note(c, "the server has no event stream; polling every %.0f s", SWEEP_POLL_S);
        }
        t = now_s();
        if (c->sweep_needed || t >= c->next_sweep) {
            if (sweep(c) == 0)
                c->sweep_needed = 0;
            c->next_sweep = t + (s.connected ? SWEEP_LIVE_S : SWEEP_POLL_S);
        }
        check_dirty(c);
        draw_follow(c, 0);
    }
    draw_follow(c, 1);
out:
    if (s.active)
        curl_multi_remove_handle(s.multi, s.easy);
    if (s.easy)
        curl_easy_cleanup(s.easy);
    if (s.multi)
        curl_multi_cleanup(s.multi);
    curl_slist_free_all(s.hdrs);
    buf_free(&s.line);
    buf_free(&s.data);
    return rc;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sluice upload [--url URL] [--key KEY] --dataset ID [--batch N] [--no-follow]\n"
            "                     [--timeout SECONDS] FILES_OR_DIRS...\n"
            "\n"
            "Uploads the files (directories are walked; hidden entries skipped) in batches of\n"
            "N per request (default %d), then follows the dataset's live events until every\n"
            "file is done or failed and prints a summary.\n"
            "  --url URL        the server (default $SLUICE_URL, else %s)\n"
            "  --key KEY        the tenant's API key (default $SLUICE_API_KEY)\n"
            "  --no-follow      stop once the files are uploaded\n"
            "  --timeout S      stop following after S seconds (exit 3)\n"
            "Exit status: 0 all done, 1 some failed, 2 usage or connection error, 3 timeout.\n",
            BATCH_DEFAULT, DEFAULT_URL);
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static void print_summary(cli_t *c, int followed)
{
    double t = now_s();
    char bytes[32];
    clear_line(c);
    fmt_bytes(c->total_bytes, bytes, sizeof bytes);
    printf("uploaded: %zu files (%s) to dataset %s in %.1f s\n", c->nuploaded, bytes, c->dataset,
           c->t_upload_end - c->t0);
    if (!followed) {
        printf("summary: %zu files, not followed (--no-follow)\n", c->nuploaded);
        return;
    }
    size_t pending = c->nuploaded - c->ndone - c->nfailed;
    printf("summary: %zu files, %zu done, %zu failed, %zu processing\n", c->nuploaded, c->ndone,
           c->nfailed, pending);
    if (c->nfailed) {
        printf("failed:\n");
        for (size_t i = 0; i < c->nuploaded; i++) {
            up_file_t *f = &c->files[i];
            if (f->status == ST_FAILED)
                printf("  %s  %s  %s\n", f->path, f->id, f->error ? f->error : "failed");
        }
    }
    if (pending) {
        printf("still processing:\n");
        for (size_t i = 0, shown = 0; i < c->nuploaded && shown < 20; i++) {
            if (c->files[i].status == ST_PENDING) {
                printf("  %s  %s\n", c->files[i].path, c->files[i].id);
                shown++;
            }
        }
    }
    printf("elapsed: %.1f s (processing %.1f s)\n", t - c->t0, t - c->t_upload_end);
}

/*
 * Parse: the options into c (SLUICE_URL and SLUICE_API_KEY as defaults), the
 * operands into args (which has room for argc), checked enough to go into a
 * URL and a header. 0 to go on, 1 when --help was answered, -1 on a usage
 * error (said on stderr).
 */
static int parse_args(cli_t *c, int argc, char **argv, char **args, int *nargs)
{
    c->url = getenv("SLUICE_URL");
    c->key = getenv("SLUICE_API_KEY");
    c->batch = BATCH_DEFAULT;
    c->follow = 1;
    c->tty = isatty(STDERR_FILENO);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double num;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "--no-follow") == 0) {
            c->follow = 0;
        } else if (strcmp(a, "--url") == 0 && v) {
            c->url = v;
            i++;
        } else if (strcmp(a, "--key") == 0 && v) {
            c->key = v;
            i++;
        } else if (strcmp(a, "--dataset") == 0 && v) {
            c->dataset = v;
            i++;
        } else if (strcmp(a, "--batch") == 0 && v) {
            if (parse_num(v, 1, BATCH_MAX, &num) != 0 || num != (double)(long)num) {
                fprintf(stderr, "sluice upload: --batch must be an integer in 1..%d\n", BATCH_MAX);
                return -1;
            }
            c->batch = (long)num;
            i++;
        } else if (strcmp(a, "--timeout") == 0 && v) {
            if (parse_num(v, 0, 1e9, &num) != 0) {
                fprintf(stderr, "sluice upload: --timeout must be a number of seconds\n");
                return -1;
            }
            c->timeout_s = num;
            i++;
        } else if (strcmp(a, "--") == 0) {
            while (++i < argc)
                args[(*nargs)++] = argv[i];
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "sluice upload: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return -1;
        } else {
            args[(*nargs)++] = argv[i];
        }
    }
    if (!c->url || !c->url[0])
        c->url = DEFAULT_URL;
    if (!c->key || !c->key[0] || !c->dataset || !c->dataset[0] || *nargs == 0) {
        fprintf(stderr, "sluice upload: %s\n",
                !c->key || !c->key[0] ? "no API key: pass --key or set SLUICE_API_KEY"
                : !c->dataset || !c->dataset[0] ? "--dataset ID is required"
                                                : "no files or directories given");
        usage(stderr);
        return -1;
    }
    /* ids are opaque, but they go into URL paths: only URL-safe ones */
    if (strlen(c->dataset) > 100 ||
        strspn(c->dataset, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_") !=
            strlen(c->dataset)) {
        fprintf(stderr, "sluice upload: '%s' is not a dataset id\n", c->dataset);
        return -1;
    }
    if (strlen(c->url) > 1000) {
        fprintf(stderr, "sluice upload: the URL is too long\n");
        return -1;
    }
    size_t ul = strlen(c->url);
    while (ul > 0 && c->url[ul - 1] == '/')
        ul--;
    if (!(c->url_buf = strndup(c->url, ul)))
        return -1;
    c->url = c->url_buf;
    int n = snprintf(c->auth, sizeof c->auth, "Authorization: Bearer %s", c->key);
    if (n < 0 || (size_t)n >= sizeof c->auth) {
        fprintf(stderr, "sluice upload: the API key is too long\n");
        return -1;
    }
    return 0;
}

/* Collect: every file named or under a directory named, into c->files. 0 or -1 (said). */
static int collect_files(cli_t *c, char **args, int nargs)
{
    /* Everything named must exist before anything is sent. */
    for (int i = 0; i < nargs; i++) {
        struct stat st;
        if (stat(args[i], &st) != 0) {
            fprintf(stderr, "sluice upload: %s: %s\n", args[i], strerror(errno));
            return -1;
        }
        if (S_ISDIR(st.st_mode)) {
            if (walk(c, args[i], 0) != 0)
                return -1;
        } else if (S_ISREG(st.st_mode)) {
            if (add_file(c, args[i], (uint64_t)st.st_size) != 0)
                return -1;
        } else {
            fprintf(stderr, "sluice upload: %s: not a file or directory\n", args[i]);
            return -1;
        }
    }
    if (c->nfiles == 0) {
        fprintf(stderr, "sluice upload: no files to upload\n");
        return -1;
    }
    return 0;
}

/* Check: the dataset must exist (and the key work) before a byte is uploaded. 0 or -1 (said). */
static int check_dataset(cli_t *c)
{
    char path[256], err[ERROR_MAX];
    json_t *body;
    long status;
    snprintf(path, sizeof path, "/v1/datasets/%s", c->dataset);
    if (get_json(c, path, &body, &status, err, sizeof err, NULL) != 0) {
        fprintf(stderr, "sluice upload: cannot reach %s: %s\n", c->url, err);
        return -1;
    }
    if (status != 200) {
        api_error(body, status, err, sizeof err);
        fprintf(stderr, "sluice upload: dataset %s: %s\n", c->dataset, err);
        json_decref(body);
        return -1;
    }
    json_decref(body);
    return 0;
}

/*
 * Upload: the files in batches of c->batch, with progress on stderr. 0, or
 * -1 when a batch failed (said; with a summary of what was uploaded before).
 */
static int upload_files(cli_t *c)
{
    char total[32];
    fmt_bytes(c->total_bytes, total, sizeof total);
    note(c, "%zu files (%s) to upload in batches of %ld", c->nfiles, total, c->batch);
    c->t0 = now_s();
    for (size_t first = 0; first < c->nfiles; first += (size_t)c->batch) {
        size_t cnt = c->nfiles - first < (size_t)c->batch ? c->nfiles - first : (size_t)c->batch;
        if (upload_batch(c, first, cnt) != 0) {
            c->t_upload_end = now_s();
            if (c->nuploaded) {
                note(c, "%zu files were uploaded before the failure", c->nuploaded);
                print_summary(c, 0);
            }
            return -1;
        }
        c->nuploaded += cnt;
        c->done_bytes += c->batch_bytes;
        c->batch_bytes = 0;
        if (c->tty) {
            draw_upload(c, 0, 1);
        } else {
            char a[32];
            fmt_bytes(c->done_bytes, a, sizeof a);
            fprintf(stderr, "sluice upload: uploaded %zu/%zu files (%s/%s)\n", c->nuploaded,
                    c->nfiles, a, total);
        }
    }
    c->t_upload_end = now_s();
    clear_line(c);
    return 0;
}

int sl_cli_upload_main(int argc, char **argv)
{
    cli_t c = {0};
    int rc = SL_UPLOAD_USAGE;
    int nargs = 0;
    char **args = NULL;
    int curl_ok = 0;

    if (!(args = calloc((size_t)argc + 1, sizeof *args)))
        return SL_UPLOAD_USAGE;
    int prc = parse_args(&c, argc, argv, args, &nargs);
    if (prc != 0) {
        if (prc > 0)
            rc = SL_UPLOAD_OK; /* --help */
        goto out;
    }
    if (collect_files(&c, args, nargs) != 0)
        goto out;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(c.easy = curl_easy_init())) {
        fprintf(stderr, "sluice upload: cannot initialize libcurl\n");
        goto out;
    }
    curl_ok = 1;
    if (check_dataset(&c) != 0 || upload_files(&c) != 0)
        goto out;

    if (!c.follow) {
        print_summary(&c, 0);
        rc = SL_UPLOAD_OK;
        goto out;
    }
    if (index_ids(&c) != 0) {
        fprintf(stderr, "sluice upload: out of memory\n");
        goto out;
    }
    int frc = follow(&c);
    print_summary(&c, 1);
    if (frc != SL_UPLOAD_OK)
        rc = frc;
    else
        rc = c.nfailed ? SL_UPLOAD_FAILED : SL_UPLOAD_OK;

out:
    fflush(stdout);
    if (c.easy)
        curl_easy_cleanup(c.easy);
    if (curl_ok)
        curl_global_cleanup();
    for (size_t i = 0; i < c.nfiles; i++) {
        free(c.files[i].path);
        free(c.files[i].error);
    }
    free(c.files);
    free(c.by_id);
    free(args);
    free(c.url_buf);
    return rc;
}
