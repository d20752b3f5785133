/*
 * test_storage.c — unit tests for the fs storage backend (core/storage_fs.c):
 * streaming writes with SHA-256 and size, mime sniffing, abort, reads, stat,
 * delete, key validation, backpressure, sticky write errors, the clean-up of
 * stale temp files, whole-chunk batching, the write-back policy and the shared
 * libmagic cookie under concurrent commits. Everything runs through a real event loop and worker
 * pool in a fresh directory under /tmp; callbacks are counted.
 */
#include "core/crypto.h"
#include "core/err.h"
#include "core/sniff.h"
#include "core/storage.h"
#include "core/workq.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <pthread.h>
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
static pthread_t loop_thread;
static char top[64];     /* the mkdtemp directory */
static char root[128];   /* top/store: created by sl_store_fs_open */
static char tmpdir[160]; /* root/.tmp */
static int off_loop_cbs; /* callbacks that ran on another thread: must stay 0 */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static void on_loop_check(void)
{
    if (!pthread_equal(pthread_self(), loop_thread))
        off_loop_cbs++;
}

/* Runs the loop until *counter reaches target or 60 s pass. */
static void run_until(const int *counter, int target)
{
    double deadline = now_s() + 60;
    while (*counter < target && now_s() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
}

/* Runs the loop until the worker pool has nothing left. */
static void run_idle(void)
{
    double deadline = now_s() + 60;
    while (sl_workq_pending(wq) > 0 && now_s() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
}

static int dir_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* SHA-256 computed here with EVP, independently of the store. */
static void test_sha256(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, data, len);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    sl_hex(md, mdlen, out);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* ---- commit callback shared by the tests ---- */

typedef struct commit_res_s {
    int called, err, had_info;
    sl_store_info_t info;
} commit_res_t;

static void commit_cb(int err, const sl_store_info_t *info, void *arg)
{
    commit_res_t *r = arg;
    on_loop_check();
    r->called++;
    r->err = err;
    r->had_info = info != NULL;
    if (info)
        r->info = *info;
}

/* Writes data in one call, commits, and waits. */
static void put_object(const char *key, const void *data, size_t len, commit_res_t *r)
{
    sl_store_writer_t *w = NULL;
    memset(r, 0, sizeof *r);
    CHECK(sl_store_put_begin(st, key, &w) == 0);
    if (!w)
        return;
    CHECK(sl_store_write(w, data, len) == 0);
    CHECK(sl_store_put_commit(w, commit_cb, r) == 0);
    CHECK(r->called == 0);
    run_until(&r->called, 1);
    CHECK(r->called == 1);
}

/* ---- stale temp files ---- */

static void test_open_cleans_tmp(void)
{
    char p[256];
    CHECK(mkdir(root, 0755) == 0);
    CHECK(mkdir(tmpdir, 0755) == 0);
    snprintf(p, sizeof p, "%s/stale-one", tmpdir);
    write_file(p, "left by a crash");
    snprintf(p, sizeof p, "%s/stale-two", tmpdir);
    write_file(p, "");
    CHECK(dir_entries(tmpdir) == 2);
    CHECK(sl_store_fs_open(wq, root, &st) == 0);
    CHECK(dir_entries(tmpdir) == 0);
    CHECK(sl_store_fs_open(wq, "", &st) == SL_EINVAL);
}

/* ---- keys ---- */

static void test_keys(void)
{
    char long_key[202];
    memset(long_key, 'a', 201);
    long_key[201] = '\0';
    const char *bad[] = {"../x", "/abs", "a//b", "a/../b", "",      long_key, "a/",
                         "a b",  "a\\b", "..",   ".tmp/x", "a/./b", "a?b",    "t/é"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (sl_store_key_valid(bad[i]))
            fprintf(stderr, "accepted bad key \"%s\"\n", bad[i]);
        CHECK(!sl_store_key_valid(bad[i]));
    }
    CHECK(!sl_store_key_valid(NULL));
    long_key[200] = '\0';
    CHECK(sl_store_key_valid(long_key)); /* exactly SL_STORE_KEY_MAX */
    CHECK(sl_store_key_valid("t1/0b7c9a4e-1f2d-4c3b-8a9e-5d6f7a8b9c0d"));
    CHECK(sl_store_key_valid("tenant_1/file-2.v1.pdf"));
    CHECK(sl_store_key_valid("x"));

    sl_store_writer_t *w = NULL;
    char path[512];
    CHECK(sl_store_put_begin(st, "../x", &w) == SL_EINVAL);
    CHECK(w == NULL);
    CHECK(sl_store_put_begin(st, "/abs", &w) == SL_EINVAL);
    CHECK(sl_store_local_path(st, "a//b", path, sizeof path) == SL_EINVAL);
    CHECK(sl_store_delete(st, "a/../b", NULL, NULL) == SL_EINVAL);
    CHECK(sl_store_local_path(st, "t/k", path, sizeof path) == 0);
    char want[512];
    snprintf(want, sizeof want, "%s/t/k", root);
    CHECK(strcmp(path, want) == 0);
    CHECK(sl_store_local_path(st, "t/k", path, 4) == SL_ETOOBIG);
    CHECK(sl_workq_pending(wq) == 0); /* nothing was queued */
}

/* ---- a 20 MiB object in random-size chunks, with backpressure ---- */

typedef struct feeder_s {
    sl_store_writer_t *w;
    const char *data;
    size_t total, off;
    unsigned seed;
    int drains, max_chunk_fail, committed;
    size_t max_pending;
    commit_res_t res;
} feeder_t;

static void feed(feeder_t *f)
{
    while (f->off < f->total && sl_store_pending(f->w) < SL_STORE_HIGH_WATER) {
        size_t n = 1 + (size_t)rand_r(&f->seed) % (300 * 1024);
        if (n > f->total - f->off)
            n = f->total - f->off;
        if (sl_store_write(f->w, f->data + f->off, n) != 0) {
            f->max_chunk_fail++;
            return;
        }
        f->off += n;
        if (sl_store_pending(f->w) > f->max_pending)
            f->max_pending = sl_store_pending(f->w);
    }
    if (f->off == f->total && !f->committed) {
        f->committed = 1;
        CHECK(sl_store_put_commit(f->w, commit_cb, &f->res) == 0);
    }
}

static void feeder_drain_cb(sl_store_writer_t *w, void *arg)
{
    feeder_t *f = arg;
    on_loop_check();
    f->drains++;
    if (sl_store_pending(w) >= SL_STORE_HIGH_WATER / 2)
        f->max_chunk_fail += 1000; /* drain fired too early */
    feed(f);
}

typedef struct read_req_s {
    uint64_t offset;
    size_t len, want_n;
    int called, err, match;
    size_t n;
    const char *expect;
} read_req_t;

static void read_cb(int err, const char *data, size_t n, void *arg)
{
    read_req_t *r = arg;
    on_loop_check();
    r->called++;
    r->err = err;
    r->n = n;
    r->match = err == 0 && n == r->want_n && data != NULL &&
               (n == 0 || memcmp(data, r->expect + r->offset, n) == 0);
}

static int stat_called, stat_err;
static uint64_t stat_size;

static void stat_cb(int err, uint64_t size, void *arg)
{
    on_loop_check();
    stat_called++;
    stat_err = err;
    stat_size = size;
}

static void test_big_object(void)
{
    const size_t total = 20 * MIB;
    char *data = malloc(total);
    CHECK(data != NULL);
    if (!data)
        return;
    CHECK(sl_random_bytes(data, total) == 0);
    char want_sha[65];
    test_sha256(data, total, want_sha);

    static feeder_t f;
    memset(&f, 0, sizeof f);
    f.data = data;
    f.total = total;
    f.seed = 12345;
    CHECK(sl_store_put_begin(st, "t1/big.bin", &f.w) == 0);
    sl_store_on_drain(f.w, feeder_drain_cb, &f);
    feed(&f);
    CHECK(f.res.called == 0);
    run_until(&f.res.called, 1);
    CHECK(f.res.called == 1);
    CHECK(f.res.err == 0);
    CHECK(f.res.had_info);
    CHECK(f.max_chunk_fail == 0);
    CHECK(f.drains > 0);
    CHECK(f.off == total);
    CHECK(f.res.info.size == total);
    CHECK(strcmp(f.res.info.sha256_hex, want_sha) == 0);

    char path[512];
    struct stat sb;
    CHECK(sl_store_local_path(st, "t1/big.bin", path, sizeof path) == 0);
    CHECK(stat(path, &sb) == 0 && (size_t)sb.st_size == total);
    CHECK(dir_entries(tmpdir) == 0);

    stat_called = 0;
    CHECK(sl_store_stat(st, "t1/big.bin", stat_cb, NULL) == 0);
    CHECK(stat_called == 0);
    run_until(&stat_called, 1);
    CHECK(stat_called == 1 && stat_err == 0 && stat_size == total);

    /* Read back ranges, all in flight at once. */
    read_req_t reqs[] = {
        {.offset = 0, .len = 1000, .want_n = 1000},
        {.offset = 10 * MIB + 7, .len = 65536, .want_n = 65536},
        {.offset = 5 * MIB + 3, .len = 2 * MIB, .want_n = MIB}, /* capped at 1 MiB */
        {.offset = 20 * MIB - 100, .len = 1000, .want_n = 100}, /* short at the end */
        {.offset = 20 * MIB, .len = 10, .want_n = 0},           /* at the end */
        {.offset = 1, .len = 0, .want_n = 0},
    };
    int nreq = (int)(sizeof reqs / sizeof reqs[0]);
    for (int i = 0; i < nreq; i++) {
        reqs[i].expect = data;
        CHECK(sl_store_read(st, "t1/big.bin", reqs[i].offset, reqs[i].len, read_cb, &reqs[i]) == 0);
    }
    run_idle();
    for (int i = 0; i < nreq; i++) {
        CHECK(reqs[i].called == 1);
        CHECK(reqs[i].err == 0);
        CHECK(reqs[i].n == reqs[i].want_n);
        CHECK(reqs[i].match);
    }
    free(data);
}

/* ---- mime sniffing: several writers at once ---- */

static void test_mime(void)
{
    struct {
        const char *sample, *key, *mime;
        char *data;
        size_t len;
        sl_store_writer_t *w;
        commit_res_t res;
        char sha[65];
    } c[] = {
        {.sample = "/work/shared/samples/invoice-acme.pdf",
         .key = "t1/invoice.pdf",
         .mime = "application/pdf"},
        {.sample = "/work/shared/samples/photo.jpg", .key = "t1/photo.jpg", .mime = "image/jpeg"},
        {.sample = "/work/shared/samples/notes.txt",
         .key = "t2/deep/er/notes.txt",
         .mime = "text/plain"},
        {.sample = NULL, .key = "t2/empty", .mime = "application/x-empty"},
    };
    int n = (int)(sizeof c / sizeof c[0]);
    for (int i = 0; i < n; i++) {
        if (c[i].sample) {
            c[i].data = slurp(c[i].sample, &c[i].len);
            CHECK(c[i].data != NULL && c[i].len > 0);
            if (!c[i].data)
                return;
        }
        test_sha256(c[i].data ? c[i].data : "", c[i].len, c[i].sha);
        CHECK(sl_store_put_begin(st, c[i].key, &c[i].w) == 0);
        /* Two pieces, the split inside the head kept for libmagic. */
        size_t half = c[i].len / 2;
        CHECK(sl_store_write(c[i].w, c[i].data, half) == 0);
        CHECK(sl_store_write(c[i].w, c[i].data ? c[i].data + half : NULL, c[i].len - half) == 0);
    }
    for (int i = 0; i < n; i++)
        CHECK(sl_store_put_commit(c[i].w, commit_cb, &c[i].res) == 0);
    run_idle();
    for (int i = 0; i < n; i++) {
        CHECK(c[i].res.called == 1);
        CHECK(c[i].res.err == 0);
        CHECK(c[i].res.info.size == c[i].len);
        CHECK(strcmp(c[i].res.info.sha256_hex, c[i].sha) == 0);
        if (strcmp(c[i].res.info.mime, c[i].mime) != 0)
            fprintf(stderr, "%s: mime %s, want %s\n", c[i].key, c[i].res.info.mime, c[i].mime);
        CHECK(strcmp(c[i].res.info.mime, c[i].mime) == 0);
        char path[512];
        CHECK(sl_store_local_path(st, c[i].key, path, sizeof path) == 0);
        CHECK(file_exists(path));
        free(c[i].data);
    }
    CHECK(dir_entries(tmpdir) == 0);
}

/* ---- the caller's type: no sniff ---- */

static void test_put_mime(void)
{
    static const char pdf[] = "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n";
    char longmime[SL_STORE_MIME_MAX + 8];
    memset(longmime, 'a', sizeof longmime - 1);
    longmime[sizeof longmime - 1] = '\0';
    for (int given = 0; given < 2; given++) {
        sl_store_writer_t *w = NULL;
        commit_res_t r = {0};
        CHECK(sl_store_put_begin(st, given ? "t4/given" : "t4/sniffed", &w) == 0);
        if (!w)
            return;
        CHECK(sl_store_put_mime(w, "") == SL_EINVAL);
        CHECK(sl_store_put_mime(w, longmime) == SL_EINVAL);
        CHECK(sl_store_put_mime(NULL, "text/plain") == SL_EINVAL);
        if (given)
            CHECK(sl_store_put_mime(w, "text/x-from-the-flow") == 0);
        CHECK(sl_store_write(w, pdf, sizeof pdf - 1) == 0);
        CHECK(sl_store_put_commit(w, commit_cb, &r) == 0);
        run_until(&r.called, 1);
        CHECK(r.called == 1 && r.err == 0);
        CHECK_STREQ(r.info.mime, given ? "text/x-from-the-flow" : "application/pdf");
    }
}

/* ---- deferred name syncs (sl_store_put_defer_sync + sl_store_sync) ---- */

static int sync_called, sync_err;

static void sync_cb(int err, void *arg)
{
    (void)arg;
    on_loop_check();
    sync_called++;
    sync_err = err;
}

/*
 * Commits with deferred syncs run no directory sync; one sl_store_sync of
 * their prefix runs one, for all of them; a commit without deferral runs its
 * own. (The old store synced the directory in every commit: 8 here.)
 */
static void test_deferred_sync(void)
{
    enum { N = 8 };
    commit_res_t r[N];
    char key[64], path[256];
    uint64_t before = sl_store_fs_dir_syncs(st);
    for (int i = 0; i < N; i++) {
        sl_store_writer_t *w = NULL;
        memset(&r[i], 0, sizeof r[i]);
        snprintf(key, sizeof key, "t9/obj%d", i);
        CHECK(sl_store_put_begin(st, key, &w) == 0);
        if (!w)
            return;
        CHECK(sl_store_put_defer_sync(w) == 0);
        CHECK(sl_store_write(w, "deferred\n", 9) == 0);
        CHECK(sl_store_put_commit(w, commit_cb, &r[i]) == 0);
    }
    int done = 0;
    for (int i = 0; i < N; i++) {
        run_until(&r[i].called, 1);
        done += r[i].called == 1 && r[i].err == 0;
    }
    CHECK_EQ(done, N);
    uint64_t after_commits = sl_store_fs_dir_syncs(st);
    CHECK_EQ(after_commits - before, 0);
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof path, "%s/t9/obj%d", root, i);
        CHECK(file_exists(path));
    }
    sync_called = 0;
    sync_err = 1;
    CHECK(sl_store_sync(st, "t9/obj0", sync_cb, NULL) == 0);
    CHECK_EQ(sync_called, 0); /* never inside the call */
    run_until(&sync_called, 1);
    CHECK_EQ(sync_called, 1);
    CHECK_EQ(sync_err, 0);
    CHECK_EQ(sl_store_fs_dir_syncs(st) - after_commits, 1);
    /* Without deferral the commit syncs the directory itself. */
    commit_res_t one;
    uint64_t b2 = sl_store_fs_dir_syncs(st);
    put_object("t9/plain", "x", 1, &one);
    CHECK(one.err == 0);
    CHECK_EQ(sl_store_fs_dir_syncs(st) - b2, 1);
    /* A sync still queued when its store is freed completes (as reads and
     * deletes do): it holds its own reference to what it needs. */
    sl_store_t *other = NULL;
    char oroot[200];
    snprintf(oroot, sizeof oroot, "%s/other", top);
    CHECK(sl_store_fs_open(wq, oroot, &other) == 0);
    if (other) {
        sync_called = 0;
        sync_err = 1;
        CHECK(sl_store_sync(other, "t9/x", sync_cb, NULL) == 0);
        sl_store_free(other);
        run_until(&sync_called, 1);
        CHECK_EQ(sync_called, 1);
        CHECK_EQ(sync_err, SL_ENOTFOUND); /* <oroot>/t9 was never made */
    }
    CHECK(sl_store_sync(st, "../bad", sync_cb, NULL) == SL_EINVAL);
    CHECK(sl_store_sync(st, "t9/obj0", NULL, NULL) == SL_EINVAL);
    CHECK(sl_store_put_defer_sync(NULL) == SL_EINVAL);
}

/* ---- abort ---- */

static int abort_drains;

static void count_drain_cb(sl_store_writer_t *w, void *arg)
{
    abort_drains++;
}

static void test_abort(void)
{
    static char blob[MIB];
    memset(blob, 'x', sizeof blob);
    sl_store_writer_t *w1 = NULL, *w2 = NULL, *w3 = NULL;
    abort_drains = 0;

    /* Nothing written. */
    CHECK(sl_store_put_begin(st, "t3/none", &w1) == 0);
    sl_store_put_abort(w1);

    /* Aborted with its write jobs still queued: no drain callback afterwards. */
    CHECK(sl_store_put_begin(st, "t3/inflight", &w2) == 0);
    sl_store_on_drain(w2, count_drain_cb, NULL);
    CHECK(sl_store_write(w2, blob, sizeof blob) == 0);
    CHECK(sl_store_pending(w2) >= SL_STORE_HIGH_WATER);
    sl_store_put_abort(w2);

    /* Aborted once its temp file is on disk (two whole chunks, enough for a
     * write job, were written). */
    CHECK(sl_store_put_begin(st, "t3/written", &w3) == 0);
    CHECK(sl_store_write(w3, blob, 128 * 1024) == 0);
    run_idle();
    CHECK(sl_store_pending(w3) == 0);
    CHECK(dir_entries(tmpdir) == 1);
    sl_store_put_abort(w3);

    run_idle();
    CHECK(abort_drains == 0);
    CHECK(dir_entries(tmpdir) == 0);
    char path[512];
    const char *keys[] = {"t3/none", "t3/inflight", "t3/written"};
    for (int i = 0; i < 3; i++) {
        CHECK(sl_store_local_path(st, keys[i], path, sizeof path) == 0);
        CHECK(!file_exists(path));
    }
    char t3[256];
    snprintf(t3, sizeof t3, "%s/t3", root);
    CHECK(!file_exists(t3)); /* not even its directory */
}

/* ---- delete and stat ---- */

static int del_called, del_err;

static void del_cb(int err, void *arg)
{
    on_loop_check();
    del_called++;
    del_err = err;
}

static void test_delete(void)
{
    commit_res_t r;
    put_object("t4/doomed", "bye", 3, &r);
    CHECK(r.err == 0 && r.info.size == 3);

    stat_called = 0;
    CHECK(sl_store_stat(st, "t4/doomed", stat_cb, NULL) == 0);
    run_until(&stat_called, 1);
    CHECK(stat_err == 0 && stat_size == 3);

    del_called = 0;
    CHECK(sl_store_delete(st, "t4/doomed", del_cb, NULL) == 0);
    CHECK(del_called == 0);
    run_until(&del_called, 1);
    CHECK(del_called == 1 && del_err == 0);

    stat_called = 0;
    CHECK(sl_store_stat(st, "t4/doomed", stat_cb, NULL) == 0);
    run_until(&stat_called, 1);
    CHECK(stat_called == 1 && stat_err == SL_ENOTFOUND);

    read_req_t rr = {.offset = 0, .len = 10};
    rr.expect = "";
    CHECK(sl_store_read(st, "t4/doomed", 0, 10, read_cb, &rr) == 0);
    run_until(&rr.called, 1);
    CHECK(rr.called == 1 && rr.err == SL_ENOTFOUND);

    /* A directory is not an object. */
    stat_called = 0;
    CHECK(sl_store_stat(st, "t4", stat_cb, NULL) == 0);
    run_until(&stat_called, 1);
    CHECK(stat_called == 1 && stat_err == SL_ENOTFOUND);

    /* Deleting what is not there succeeds; cb may be NULL. */
    del_called = 0;
    CHECK(sl_store_delete(st, "t4/doomed", del_cb, NULL) == 0);
    run_until(&del_called, 1);
    CHECK(del_called == 1 && del_err == 0);
    CHECK(sl_store_delete(st, "t4/never", NULL, NULL) == 0);
    run_idle();
}

/* ---- backpressure ---- */

typedef struct bp_s {
    int drains;
    size_t pending_at_drain;
} bp_t;

static void bp_drain_cb(sl_store_writer_t *w, void *arg)
{
    bp_t *b = arg;
    on_loop_check();
    b->drains++;
    b->pending_at_drain = sl_store_pending(w);
}

static void test_backpressure(void)
{
    const size_t len = 4 * MIB;
    char *data = malloc(len);
    CHECK(data != NULL);
    if (!data)
        return;
    for (size_t i = 0; i < len; i++)
        data[i] = (char)(i * 31 + (i >> 12));
    char want_sha[65];
    test_sha256(data, len, want_sha);

    bp_t b = {0};
    sl_store_writer_t *w = NULL;
    CHECK(sl_store_put_begin(st, "t5/bp", &w) == 0);
    sl_store_on_drain(w, bp_drain_cb, &b);
    CHECK(sl_store_write(w, data, len) == 0);
    CHECK(sl_store_pending(w) == len);
    CHECK(sl_store_pending(w) >= SL_STORE_HIGH_WATER);
    CHECK(b.drains == 0);
    run_until(&b.drains, 1);
    CHECK(b.drains == 1);
    CHECK(b.pending_at_drain < SL_STORE_HIGH_WATER / 2);
    run_idle();
    CHECK(b.drains == 1); /* once per crossing */
    CHECK(sl_store_pending(w) == 0);

    /* Small writes below the mark never call back. */
    CHECK(sl_store_write(w, "tail", 4) == 0);
    run_idle();
    CHECK(b.drains == 1);

    commit_res_t r = {0};
    CHECK(sl_store_put_commit(w, commit_cb, &r) == 0);
    run_until(&r.called, 1);
    CHECK(r.called == 1 && r.err == 0);
    CHECK(r.info.size == len + 4);
    free(data);
}

/* ---- a write error is sticky ---- */

static void test_sticky_error(void)
{
    sl_store_writer_t *w = NULL;
    /* Without root/.tmp the temp file cannot be created. */
    CHECK(rmdir(tmpdir) == 0);
    static char chunk[128 * 1024]; /* two whole chunks: a write job runs */
    CHECK(sl_store_put_begin(st, "t6/fails", &w) == 0);
    CHECK(sl_store_write(w, chunk, sizeof chunk) == 0);
    run_idle();
    CHECK(sl_store_write(w, "more", 4) == SL_EIO);
    commit_res_t r = {0};
    CHECK(sl_store_put_commit(w, commit_cb, &r) == 0);
    run_until(&r.called, 1);
    CHECK(r.called == 1 && r.err == SL_EIO && !r.had_info);
    char path[512];
    CHECK(sl_store_local_path(st, "t6/fails", path, sizeof path) == 0);
    CHECK(!file_exists(path));
    CHECK(mkdir(tmpdir, 0755) == 0);

    /* Overwriting an existing object replaces it atomically. */
    commit_res_t r2;
    put_object("t6/fails", "second", 6, &r2);
    CHECK(r2.err == 0 && r2.info.size == 6 && strcmp(r2.info.mime, "text/plain") == 0);
    put_object("t6/fails", "3rd", 3, &r2);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && sb.st_size == 3);
}

/* ---- reopen removes temp files a crash left ---- */

static void test_reopen(void)
{
    char p[256];
    sl_store_free(st);
    st = NULL;
    snprintf(p, sizeof p, "%s/0123456789abcdef", tmpdir);
    write_file(p, "half an upload");
    CHECK(dir_entries(tmpdir) == 1);
    CHECK(sl_store_fs_open(wq, root, &st) == 0);
    CHECK(dir_entries(tmpdir) == 0);
    /* Objects survive a reopen. */
    stat_called = 0;
    CHECK(sl_store_stat(st, "t1/invoice.pdf", stat_cb, NULL) == 0);
    run_until(&stat_called, 1);
    CHECK(stat_called == 1 && stat_err == 0 && stat_size > 0);
}

/* ---- chunks: whole ones are written, a partial one waits (few writers) ---- */

static void test_batching(void)
{
    const size_t len = 3 * MIB + 12345;
    char *data = malloc(len);
    CHECK(data != NULL);
    if (!data)
        return;
    for (size_t i = 0; i < len; i++)
        data[i] = (char)(i * 7 + (i >> 9));
    char want_sha[65];
    test_sha256(data, len, want_sha);

    /* Odd-sized writes (a socket's reads, less multipart framing) are cut and
     * glued into aligned chunks: the content must come out intact. */
    sl_store_writer_t *w = NULL;
    CHECK(sl_store_put_begin(st, "t8/odd", &w) == 0);
    size_t off = 0, step = 16411;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        CHECK(sl_store_write(w, data + off, n) == 0);
        off += n;
        if (sl_store_pending(w) >= SL_STORE_HIGH_WATER)
            run_idle();
    }
    run_idle();
    /* Only the partly filled last chunk is still queued, and at most one whole
     * chunk waiting for a second (write jobs take two at least). */
    CHECK(sl_store_pending(w) == len % (64 * 1024) ||
          sl_store_pending(w) == len % (64 * 1024) + 64 * 1024);
    commit_res_t r = {0};
    CHECK(sl_store_put_commit(w, commit_cb, &r) == 0);
    run_until(&r.called, 1);
    CHECK(r.err == 0 && r.info.size == len);
    CHECK(strcmp(r.info.sha256_hex, want_sha) == 0);
    char path[512];
    CHECK(sl_store_local_path(st, "t8/odd", path, sizeof path) == 0);
    size_t got_len = 0;
    char *got = slurp(path, &got_len);
    CHECK(got && got_len == len && memcmp(got, data, len) == 0);
    free(got);

    /* One whole chunk waits for a second: a write job per 128 KiB, not per
     * chunk (fewer wake-ups, larger writes). */
    CHECK(sl_store_put_begin(st, "t8/pair", &w) == 0);
    CHECK(sl_store_write(w, data, 64 * 1024) == 0);
    run_idle();
    CHECK(sl_store_pending(w) == 64 * 1024);
    CHECK(dir_entries(tmpdir) == 0);
    CHECK(sl_store_write(w, data + 64 * 1024, 64 * 1024) == 0);
    run_idle();
    CHECK(sl_store_pending(w) == 0);
    CHECK(dir_entries(tmpdir) == 1);
    memset(&r, 0, sizeof r);
    CHECK(sl_store_put_commit(w, commit_cb, &r) == 0);
    run_until(&r.called, 1);
    CHECK(r.err == 0 && r.info.size == 128 * 1024);
    CHECK(dir_entries(tmpdir) == 0);

    /* A small write waits for more (no temp file yet) while few writers are
     * open; the commit writes it. */
    CHECK(sl_store_put_begin(st, "t8/small", &w) == 0);
    CHECK(sl_store_write(w, "hello", 5) == 0);
    run_idle();
    CHECK(sl_store_pending(w) == 5);
    CHECK(dir_entries(tmpdir) == 0);
    memset(&r, 0, sizeof r);
    CHECK(sl_store_put_commit(w, commit_cb, &r) == 0);
    run_until(&r.called, 1);
    CHECK(r.err == 0 && r.info.size == 5 && strcmp(r.info.mime, "text/plain") == 0);

    /* With more than 64 writers open, every write is written at once, so a
     * thousand slow uploads do not each hold a chunk. */
    enum { NW = 66 };
    sl_store_writer_t *ws[NW];
    for (int i = 0; i < NW; i++) {
        char key[64];
        snprintf(key, sizeof key, "t8/many%d", i);
        CHECK(sl_store_put_begin(st, key, &ws[i]) == 0);
    }
    CHECK(sl_store_write(ws[0], data, 1000) == 0);
    run_idle();
    CHECK(sl_store_pending(ws[0]) == 0);
    CHECK(dir_entries(tmpdir) == 1);
    for (int i = 0; i < NW; i++)
        sl_store_put_abort(ws[i]);
    run_idle();
    CHECK(dir_entries(tmpdir) == 0);
    free(data);
}

/* ---- the write-back policy: whole 1 MiB steps ---- */

static void test_writeback_policy(void)
{
    CHECK(sl_store_fs_writeback_len(0, 0) == 0);
    CHECK(sl_store_fs_writeback_len(MIB - 1, 0) == 0);
    CHECK(sl_store_fs_writeback_len(MIB, 0) == MIB);
    CHECK(sl_store_fs_writeback_len(MIB + 5, 0) == MIB);
    CHECK(sl_store_fs_writeback_len(5 * MIB + 17, 2 * MIB) == 3 * MIB);
    CHECK(sl_store_fs_writeback_len(3 * MIB, 3 * MIB) == 0);
    CHECK(sl_store_fs_writeback_len(2 * MIB - 1, MIB) == 0);
    CHECK(sl_store_fs_writeback_len(MIB, 2 * MIB) == 0); /* never backwards */
}

/* ---- the store's libmagic cookies (core/sniff.h), 4 worker threads committing at once ---- */

static void test_magic_threads(void)
{
    static const struct {
        const char *sample, *mime;
    } kinds[] = {
        {"/work/shared/samples/invoice-acme.pdf", "application/pdf"},
        {"/work/shared/samples/photo.jpg", "image/jpeg"},
        {"/work/shared/samples/notes.txt", "text/plain"},
    };
    enum { NK = 3, N = 48 };
    char *data[NK];
    size_t len[NK];
    for (int k = 0; k < NK; k++) {
        data[k] = slurp(kinds[k].sample, &len[k]);
        CHECK(data[k] != NULL);
        if (!data[k])
            return;
    }
    sl_workq_t *wq4 = NULL;
    sl_store_t *st4 = NULL;
    char root4[160];
    snprintf(root4, sizeof root4, "%s/store4", top);
    CHECK(sl_workq_new(base, 4, &wq4) == 0);
    CHECK(wq4 && sl_store_fs_open(wq4, root4, &st4) == 0);
    if (!st4)
        return;
    static commit_res_t res[N];
    sl_store_writer_t *w[N];
    int done = 0;
    for (int i = 0; i < N; i++) {
        char key[64];
        snprintf(key, sizeof key, "m/%d", i);
        memset(&res[i], 0, sizeof res[i]);
        CHECK(sl_store_put_begin(st4, key, &w[i]) == 0);
        CHECK(sl_store_write(w[i], data[i % NK], len[i % NK]) == 0);
    }
    for (int i = 0; i < N; i++)
        CHECK(sl_store_put_commit(w[i], commit_cb, &res[i]) == 0);
    double deadline = now_s() + 60;
    while (done < N && now_s() < deadline) {
        event_base_loop(base, EVLOOP_ONCE);
        done = 0;
        for (int i = 0; i < N; i++)
            done += res[i].called;
    }
    CHECK(done == N);
    for (int i = 0; i < N; i++) {
        CHECK(res[i].err == 0);
        if (strcmp(res[i].info.mime, kinds[i % NK].mime) != 0)
            fprintf(stderr, "m/%d: mime %s, want %s\n", i, res[i].info.mime, kinds[i % NK].mime);
        CHECK(strcmp(res[i].info.mime, kinds[i % NK].mime) == 0);
    }
    sl_store_free(st4);
    sl_workq_free(wq4);
    for (int k = 0; k < NK; k++)
        free(data[k]);
}

/* ---- core/sniff.h: cookies loaded when sniffs meet, right answers from many threads ---- */

typedef struct {
    sl_sniff_t *s;
    const char *buf[3];
    size_t len[3];
    const char *want[3];
    int bad;
} sniff_arg_t;

static void *sniff_thread(void *arg)
{
    sniff_arg_t *a = arg;
    char out[128];
    for (int i = 0; i < 60; i++) {
        sl_sniff_mime(a->s, a->buf[i % 3], a->len[i % 3], out, sizeof out);
        if (strcmp(out, a->want[i % 3]) != 0)
            __atomic_add_fetch(&a->bad, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static void test_sniff(void)
{
    char out[64];
    sl_sniff_t *s = sl_sniff_new();
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(sl_sniff_loaded(s) == 0); /* nothing loaded before the first sniff */
    sl_sniff_mime(s, "", 0, out, sizeof out);
    CHECK(strcmp(out, "application/x-empty") == 0 && sl_sniff_loaded(s) == 0);
    for (int i = 0; i < 5; i++) { /* one at a time: one cookie is enough */
        sl_sniff_mime(s, "Document 1\nReference: REF-00001\n", 33, out, sizeof out);
        CHECK(strcmp(out, "text/plain") == 0);
    }
    CHECK(sl_sniff_loaded(s) == 1);
    sl_sniff_mime(s, "%PDF-1.4\n", 9, out, 4); /* truncated to fit, terminated */
    CHECK(strcmp(out, "app") == 0);

    sniff_arg_t a = {.s = s};
    const char *paths[3] = {"/work/shared/samples/invoice-acme.pdf",
                            "/work/shared/samples/photo.jpg", "/work/shared/samples/notes.txt"};
    const char *want[3] = {"application/pdf", "image/jpeg", "text/plain"};
    char *data[3];
    for (int k = 0; k < 3; k++) {
        data[k] = slurp(paths[k], &a.len[k]);
        CHECK(data[k] != NULL);
        if (!data[k])
            return;
        a.buf[k] = data[k];
        a.want[k] = want[k];
    }
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, sniff_thread, &a) == 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(a.bad == 0);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int room = cpus < 1 ? 1 : cpus > SL_SNIFF_MAX ? SL_SNIFF_MAX : (int)cpus;
    CHECK(sl_sniff_loaded(s) >= 1 && sl_sniff_loaded(s) <= room);
    fprintf(stderr, "sniff: %d of %d cookies loaded by 4 threads\n", sl_sniff_loaded(s), room);
    sl_sniff_free(s);
    for (int k = 0; k < 3; k++)
        free(data[k]);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* ---- the interface: open by config, fetch_local ---- */

static int local_called, local_err, local_copy;
static char local_path[512];

static void local_cb(int err, const char *path, int is_copy, void *arg)
{
    (void)arg;
    on_loop_check();
    local_called++;
    local_err = err;
    local_copy = is_copy;
    snprintf(local_path, sizeof local_path, "%s", path ? path : "");
}

static void test_interface(void)
{
    commit_res_t r;
    char want[512];
    put_object("t9/local", "here", 4, &r);
    CHECK(r.err == 0);
    CHECK(strcmp(sl_store_backend(st), "fs") == 0);

    /* fs: the object's own file, never a copy, and the callback is never synchronous. */
    local_called = 0;
    CHECK(sl_store_fetch_local(st, "t9/local", top, local_cb, NULL) == 0);
    CHECK(local_called == 0);
    run_until(&local_called, 1);
    snprintf(want, sizeof want, "%s/t9/local", root);
    CHECK(local_called == 1 && local_err == 0 && local_copy == 0);
    CHECK(strcmp(local_path, want) == 0);
    local_called = 0;
    CHECK(sl_store_fetch_local(st, "t9/missing", top, local_cb, NULL) == 0);
    run_until(&local_called, 1);
    CHECK(local_err == SL_ENOTFOUND && local_path[0] == '\0');
    CHECK(sl_store_fetch_local(st, "../etc", top, local_cb, NULL) == SL_EINVAL);

    /* sl_store_open: fs by name or by default; an unknown backend is refused. */
    char other[256];
    snprintf(other, sizeof other, "%s/other", top);
    sl_store_t *o = NULL;
    sl_store_conf_t c = {.backend = "fs", .path = other};
    CHECK(sl_store_open(&c, wq, base, &o) == 0 && o && strcmp(sl_store_backend(o), "fs") == 0);
    sl_store_free(o);
    o = NULL;
    c.backend = NULL;
    CHECK(sl_store_open(&c, wq, base, &o) == 0 && o);
    sl_store_free(o);
    o = NULL;
    c.backend = "ftp";
    CHECK(sl_store_open(&c, wq, base, &o) == SL_ECONFIG && o == NULL);
    CHECK(sl_store_open(NULL, wq, base, &o) == SL_EINVAL);
}

int main(void)
{
    loop_thread = pthread_self();
    snprintf(top, sizeof top, "/tmp/sl-test-storage-XXXXXX");
    if (!mkdtemp(top)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(root, sizeof root, "%s/store", top);
    snprintf(tmpdir, sizeof tmpdir, "%s/.tmp", root);

    base = event_base_new();
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 100 * 1000};
    event_add(tick, &tv);
    if (sl_workq_new(base, 2, &wq) != 0) {
        fprintf(stderr, "sl_workq_new failed\n");
        return 1;
    }

    test_open_cleans_tmp();
    if (st) {
        test_keys();
        test_interface();
        test_big_object();
        test_mime();
        test_put_mime();
        test_deferred_sync();
        test_abort();
        test_delete();
        test_backpressure();
        test_sticky_error();
        test_batching();
        test_writeback_policy();
        test_magic_threads();
        test_sniff();
        test_reopen();
    }
    CHECK(off_loop_cbs == 0);

    sl_store_free(st);
    sl_workq_free(wq);
    event_free(tick);
    event_base_free(base);
    nftw(top, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

    return check_summary();
}
