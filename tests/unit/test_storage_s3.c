/*
 * test_storage_s3.c — the S3 storage backend (core/storage_s3.c) against a
 * real S3 implementation: set SL_TEST_S3_ENDPOINT (e.g. http://127.0.0.1:4568,
 * s3rver or its signature-checking front), SL_TEST_S3_BUCKET (an existing
 * bucket) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; skipped (77)
 * otherwise. Small object (PutObject), a multipart object streamed with
 * backpressure, ranged reads, stat, delete, fetch_local, an abort mid-upload
 * that leaves no multipart upload and no object, and a server that is not
 * there (SL_EUNAVAIL, never a hang).
 */
#include "core/crypto.h"
#include "core/curl.h"
#include "core/err.h"
#include "core/storage.h"
#include "core/workq.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define MIB (1024 * 1024)

static struct event_base *base;
static sl_workq_t *wq;
static sl_store_t *st;
static const char *endpoint, *bucket;

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static void run_until(const int *counter, int target)
{
    time_t t0 = time(NULL);
    while (*counter < target && time(NULL) - t0 < 120)
        event_base_loop(base, EVLOOP_ONCE);
}

static void fill(unsigned char *p, size_t n, uint64_t off)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = (off + i) * 2654435761u;
        p[i] = (unsigned char)(x >> 13);
    }
}

/* ---- writing ---- */

typedef struct put_s {
    sl_store_writer_t *w;
    uint64_t total, sent;
    int paused, drains, done, err, max_pending_over;
    size_t max_pending;
    sl_store_info_t info;
    EVP_MD_CTX *sha;
    uint64_t abort_at; /* abort once this much was sent (0: never) */
    int aborted;
    int committed; /* sl_store_put_commit was called */
} put_t;

/* Drains (the loop taking more bytes) seen while a pool job was pending
 * before the commit: the only pool jobs then are the parts' hashes, so a
 * count > 0 shows the loop went on while a part was hashed. An ordering, not
 * a timing: when a part ships, the writer's buffer is free again and the
 * drain comes on the next loop turn, long before 2 x 5 MiB of SHA-256 end;
 * hashed on the loop, no job would ever be pending then. */
static int drains_while_hashing;

static void commit_cb(int err, const sl_store_info_t *info, void *arg)
{
    put_t *p = arg;
    p->done++;
    p->err = err;
    if (info)
        p->info = *info;
}

static void feed(put_t *p);

static void drain_cb(sl_store_writer_t *w, void *arg)
{
    (void)w;
    put_t *p = arg;
    p->drains++;
    if (!p->committed && sl_workq_pending(wq) > 0)
        drains_while_hashing++;
    if (p->paused) {
        p->paused = 0;
        feed(p);
    }
}

static void feed(put_t *p)
{
    static unsigned char chunk[64 * 1024];
    while (p->sent < p->total) {
        if (p->abort_at && p->sent >= p->abort_at) {
            sl_store_put_abort(p->w);
            p->aborted = 1;
            p->done++;
            return;
        }
        size_t n = p->total - p->sent < sizeof chunk ? (size_t)(p->total - p->sent) : sizeof chunk;
        fill(chunk, n, p->sent);
        EVP_DigestUpdate(p->sha, chunk, n);
        int err = sl_store_write(p->w, chunk, n);
        if (err) {
            p->err = err;
            p->done++;
            sl_store_put_abort(p->w);
            return;
        }
        p->sent += n;
        size_t pend = sl_store_pending(p->w);
        if (pend > p->max_pending)
            p->max_pending = pend;
        if (pend >= SL_STORE_HIGH_WATER) {
            p->paused = 1;
            return;
        }
    }
    p->committed = 1;
    if (sl_store_put_commit(p->w, commit_cb, p) != 0) {
        p->err = SL_EIO;
        p->done++;
    }
}

static void put(const char *key, uint64_t total, uint64_t abort_at, put_t *p, char want_hex[65])
{
    memset(p, 0, sizeof *p);
    p->total = total;
    p->abort_at = abort_at;
    p->sha = EVP_MD_CTX_new();
    EVP_DigestInit_ex(p->sha, EVP_sha256(), NULL);
    CHECK(sl_store_put_begin(st, key, &p->w) == 0);
    sl_store_on_drain(p->w, drain_cb, p);
    feed(p);
    run_until(&p->done, 1);
    unsigned char md[32];
    EVP_DigestFinal_ex(p->sha, md, NULL);
    EVP_MD_CTX_free(p->sha);
    sl_hex(md, 32, want_hex);
}

/* ---- reading ---- */

static int rd_called, rd_err;
static size_t rd_n;
static unsigned char rd_buf[MIB];

static void read_cb(int err, const char *data, size_t n, void *arg)
{
    (void)arg;
    rd_called++;
    rd_err = err;
    rd_n = n;
    if (!err && n <= sizeof rd_buf)
        memcpy(rd_buf, data, n);
}

static int stat_called, stat_err;
static uint64_t stat_size;
static void stat_cb(int err, uint64_t size, void *arg)
{
    (void)arg;
    stat_called++;
    stat_err = err;
    stat_size = size;
}

static int del_called, del_err;
static void del_cb(int err, void *arg)
{
    (void)arg;
    del_called++;
    del_err = err;
}

static int loc_called, loc_err, loc_copy;
static char loc_path[512];
static void local_cb(int err, const char *path, int is_copy, void *arg)
{
    (void)arg;
    loc_called++;
    loc_err = err;
    loc_copy = is_copy;
    snprintf(loc_path, sizeof loc_path, "%s", path ? path : "");
}

static int do_stat(const char *key)
{
    stat_called = 0;
    CHECK(sl_store_stat(st, key, stat_cb, NULL) == 0);
    run_until(&stat_called, 1);
    return stat_err;
}

/* ---- listing multipart uploads (the test's own signed request) ---- */

static int list_called;
static char list_body[65536];
static long list_status;
static void list_cb(const sl_curl_result_t *res, void *arg)
{
    (void)arg;
    list_called++;
    list_status = res->status;
    snprintf(list_body, sizeof list_body, "%s", res->body);
}

static int uploads_for(sl_curl_t *c, const char *key)
{
    char url[512];
    snprintf(url, sizeof url, "%s/%s?uploads", endpoint, bucket);
    sl_sigv4_creds_t cr = {.access_key_id = getenv("AWS_ACCESS_KEY_ID"),
                           .secret_access_key = getenv("AWS_SECRET_ACCESS_KEY"),
                           .region = "us-east-1",
                           .service = "s3"};
    sl_curl_req_opts_t o = {.url = url, .sigv4 = &cr, .sigv4_flags = SL_SIGV4_S3};
    list_called = 0;
    CHECK(sl_curl_request(c, &o, list_cb, NULL, NULL) == 0);
    run_until(&list_called, 1);
    CHECK(list_status == 200);
    char needle[300];
    snprintf(needle, sizeof needle, "<Key>%s</Key>", key);
    return strstr(list_body, needle) != NULL;
}

int main(void)
{
    endpoint = getenv("SL_TEST_S3_ENDPOINT");
    bucket = getenv("SL_TEST_S3_BUCKET");
    if (!endpoint || !bucket || !getenv("AWS_ACCESS_KEY_ID")) {
        fprintf(stderr, "skip: SL_TEST_S3_ENDPOINT, SL_TEST_S3_BUCKET, AWS_* not set\n");
        return 77;
    }
    base = event_base_new();
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 100 * 1000};
    event_add(tick, &tv);
    CHECK(sl_workq_new(base, 2, &wq) == 0);
    sl_store_conf_t conf = {.backend = "s3",
                            .endpoint = endpoint,
                            .bucket = bucket,
                            .path_style = 1,
                            .part_size = 5 * MIB};
    CHECK(sl_store_open(&conf, wq, base, &st) == 0);
    if (!st)
        return check_summary();
    CHECK(strcmp(sl_store_backend(st), "s3") == 0);
    char local[64], keys[3][64], want[65];
    uint64_t tag = (uint64_t)time(NULL) * 1000 + (uint64_t)getpid() % 1000;
    snprintf(keys[0], sizeof keys[0], "t/%llu-small.pdf", (unsigned long long)tag);
    snprintf(keys[1], sizeof keys[1], "t/%llu-big", (unsigned long long)tag);
    snprintf(keys[2], sizeof keys[2], "t/%llu-aborted", (unsigned long long)tag);
    put_t p;

    /* A small object: one PutObject; sha256, size and mime as fs gives them. */
    put(keys[0], 1000, 0, &p, want);
    CHECK(p.done == 1 && p.err == 0);
    CHECK(p.info.size == 1000 && strcmp(p.info.sha256_hex, want) == 0);
    CHECK(p.info.mime[0] != '\0');
    CHECK(do_stat(keys[0]) == 0 && stat_size == 1000);
    rd_called = 0;
    CHECK(sl_store_read(st, keys[0], 10, 100, read_cb, NULL) == 0);
    run_until(&rd_called, 1);
    unsigned char ref[MIB];
    fill(ref, 100, 10);
    CHECK(rd_err == 0 && rd_n == 100 && memcmp(rd_buf, ref, 100) == 0);
    rd_called = 0; /* past the end: 0 bytes */
    CHECK(sl_store_read(st, keys[0], 5000, 100, read_cb, NULL) == 0);
    run_until(&rd_called, 1);
    CHECK(rd_err == 0 && rd_n == 0);
    rd_called = 0; /* len 0: no bytes; a missing object is SL_ENOTFOUND, as fs */
    CHECK(sl_store_read(st, keys[0], 0, 0, read_cb, NULL) == 0);
    run_until(&rd_called, 1);
    CHECK(rd_err == 0 && rd_n == 0);
    rd_called = 0;
    CHECK(sl_store_read(st, "t/never-written", 0, 10, read_cb, NULL) == 0);
    run_until(&rd_called, 1);
    CHECK(rd_err == SL_ENOTFOUND);

    /* A multipart object (5 MiB parts), fed with backpressure: pending stays
     * bounded, drains come, the digest matches, ranged reads cross parts.
     * The parts are hashed on the pool while the loop goes on. */
    drains_while_hashing = 0;
    put(keys[1], 23 * MIB + 12345, 0, &p, want);
    printf("drains while a part was hashed: %d\n", drains_while_hashing);
    CHECK(drains_while_hashing > 0);
    CHECK(p.done == 1 && p.err == 0);
    CHECK(p.info.size == 23 * MIB + 12345 && strcmp(p.info.sha256_hex, want) == 0);
    CHECK(p.drains > 0);
    CHECK(p.max_pending < SL_STORE_HIGH_WATER + 64 * 1024);
    printf("multipart: %d drains, max pending %zu\n", p.drains, p.max_pending);
    CHECK(do_stat(keys[1]) == 0 && stat_size == 23 * MIB + 12345);
    rd_called = 0;
    CHECK(sl_store_read(st, keys[1], 5 * MIB - 1000, MIB, read_cb, NULL) == 0);
    run_until(&rd_called, 1);
    fill(ref, MIB, 5 * MIB - 1000);
    CHECK(rd_err == 0 && rd_n == MIB && memcmp(rd_buf, ref, MIB) == 0);

    /* fetch_local: a copy in the caller's directory. */
    snprintf(local, sizeof local, "/tmp/sl-test-s3-XXXXXX");
    CHECK(mkdtemp(local) != NULL);
    loc_called = 0;
    CHECK(sl_store_fetch_local(st, keys[1], local, local_cb, NULL) == 0);
    CHECK(loc_called == 0);
    run_until(&loc_called, 1);
    struct stat sb;
    CHECK(loc_err == 0 && loc_copy == 1 && stat(loc_path, &sb) == 0 &&
          (uint64_t)sb.st_size == 23 * MIB + 12345);
    unlink(loc_path);
    rmdir(local);

    /* Abort mid-upload (after two parts went): no upload, no object. */
    sl_curl_t *c = NULL;
    CHECK(sl_curl_new(base, &c) == 0);
    put(keys[2], 40 * MIB, 12 * MIB, &p, want);
    CHECK(p.aborted == 1);
    /* The abort is sent asynchronously: give it up to 15 s (one loop turn was
     * not always enough on a loaded machine), then the upload must be gone. */
    time_t t0 = time(NULL);
    while (uploads_for(c, keys[2]) != 0 && time(NULL) - t0 < 15) {
        struct event *t = evtimer_new(base, tick_cb, NULL);
        struct timeval tenth = {0, 100000};
        evtimer_add(t, &tenth);
        event_base_loop(base, EVLOOP_ONCE);
        event_free(t);
    }
    CHECK(uploads_for(c, keys[2]) == 0);
    CHECK(do_stat(keys[2]) == SL_ENOTFOUND);

    /* delete, and delete of a missing key */
    del_called = 0;
    CHECK(sl_store_delete(st, keys[1], del_cb, NULL) == 0);
    run_until(&del_called, 1);
    CHECK(del_err == 0);
    CHECK(do_stat(keys[1]) == SL_ENOTFOUND);
    del_called = 0;
    CHECK(sl_store_delete(st, keys[1], del_cb, NULL) == 0);
    run_until(&del_called, 1);
    CHECK(del_err == 0);
    sl_store_delete(st, keys[0], NULL, NULL);
    sl_curl_free(c);
    sl_store_free(st);

    /* Nobody listening: errors, not hangs. */
    sl_store_conf_t down = conf;
    down.endpoint = "http://127.0.0.1:1";
    CHECK(sl_store_open(&down, wq, base, &st) == 0);
    put("t/down", 1000, 0, &p, want);
    CHECK(p.done == 1 && p.err == SL_EUNAVAIL);
    put("t/down2", 12 * MIB, 0, &p, want);
    CHECK(p.done == 1 && p.err == SL_EUNAVAIL);
    CHECK(do_stat("t/down") == SL_EUNAVAIL);
    sl_store_free(st);

    /* Freed with a pool job pending (the commit's sniff): the store lives on
     * until the job is done, the commit ends SL_ECANCELED, nothing is sent
     * (ASan: no use after free). */
    CHECK(sl_store_open(&conf, wq, base, &st) == 0);
    memset(&p, 0, sizeof p);
    CHECK(sl_store_put_begin(st, "t/freed-early", &p.w) == 0);
    CHECK(sl_store_write(p.w, "hello", 5) == 0);
    CHECK(sl_store_put_commit(p.w, commit_cb, &p) == 0);
    sl_store_free(st);
    run_until(&p.done, 1);
    CHECK(p.done == 1 && p.err == SL_ECANCELED);

    /* Configuration refused. */
    sl_store_conf_t bad = conf;
    bad.endpoint = "ftp://x";
    CHECK(sl_store_open(&bad, wq, base, &st) == SL_ECONFIG);
    bad = conf;
    bad.part_size = MIB;
    CHECK(sl_store_open(&bad, wq, base, &st) == SL_ECONFIG);

    sl_workq_free(wq);
    event_free(tick);
    event_base_free(base);
    return check_summary();
}
