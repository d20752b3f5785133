/*
 * storage_fs.c — the storage interface's local filesystem backend: it fills
 * the table of operations of core/storage_int.h; the generic layer (argument
 * checks, dispatch, the writer's backpressure accounting) is core/storage.c.
 * It keeps objects at <root>/<key>, writes through a temp file in <root>/.tmp, and does
 * every blocking call (open, write, fsync, rename, unlink, pread, libmagic) on
 * the worker pool. docs/internals/storage.md explains the writer's job chain.
 *
 * Threads: a writer's jobs share its address as their serial key, so they run
 * one at a time, in order; the fields marked "worker" are touched only by those
 * jobs (the pool's mutex orders one job after the other). Fields marked "loop"
 * are touched only on the loop thread. The chunk list and the sticky error are
 * shared and guarded by the writer's mutex.
 */
#include "crypto.h"
#include "dirsync.h"
#include "err.h"
#include "sniff.h"
#include "storage_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define FS_TMP_DIR ".tmp"
#define FS_CHUNK (64 * 1024) /* chunks end at multiples of this in the file: aligned writes */
#define FS_BATCH_WRITERS 64  /* up to this many open writers, only whole chunks are written */
#define FS_SPARE_MAX 128     /* whole chunks the loop keeps for reuse (8 MiB) */
/* A writer waiting for its drain must have a full chunk queued, not just a partial one. */
_Static_assert(SL_STORE_HIGH_WATER / 2 > FS_CHUNK, "HIGH_WATER / 2 must exceed FS_CHUNK");
#define FS_HEAD_MAX (64 * 1024)         /* bytes libmagic sees: the object's first 64 KiB */
#define FS_READ_MAX (1024 * 1024)       /* one sl_store_read returns at most this */
#define FS_WRITEBACK_STEP (1024 * 1024) /* start write-back each time this much more is written */
#define FS_ROOT_MAX (PATH_MAX - SL_STORE_KEY_MAX - 64) /* room for "/<key>" and ".tmp/<rnd>" */
#define FS_PATH_MAX PATH_MAX
#define FS_ALIGN 4096 /* O_DIRECT: buffer address, file offset and length multiples of this */
#define FS_IOV_MAX 64 /* chunks per pwritev */
#define FS_JOB_MIN (2 * FS_CHUNK) /* queued bytes that make a write job (fewer wake-ups, larger I/O) */

/* ======================================================================
 * Filesystem backend
 * ====================================================================== */

typedef struct chunk_s chunk_t;

typedef struct fs_store_s {
    sl_store_t base;
    char root[FS_PATH_MAX]; /* no trailing '/' */
    size_t root_len;
    int open_writers; /* loop: writers begun and not yet committed or aborted */
    /*
     * Loop: written FS_CHUNK-sized chunks, handed back by write jobs for the
     * next fs_write. The loop both takes and returns them, so they never go
     * through malloc's arena lock between the loop and the workers.
     */
    chunk_t *spare;
    int nspare;
    sl_sniff_t *sniff; /* owned: libmagic cookies, at most two (core/sniff.h) */
    /*
     * Commit jobs share the fsyncs of the directories they rename into
     * (core/dirsync.h): one tenant's files all go to files/<tenant>/, so a
     * batch of a thousand needs a few directory fsyncs, not a thousand.
     */
    sl_dirsync_t *dsync; /* owned */
} fs_store_t;

/*
 * A chunk's data is FS_ALIGN-aligned (for O_DIRECT); the header sits after
 * the data in the same allocation, so chunk_free() frees c->data.
 */
struct chunk_s {
    struct chunk_s *next;
    size_t len, cap;
    char *data; /* the allocation itself */
};

static chunk_t *chunk_alloc(size_t cap)
{
    size_t hdr_off = (cap + _Alignof(chunk_t) - 1) / _Alignof(chunk_t) * _Alignof(chunk_t);
    void *mem = NULL;
    if (posix_memalign(&mem, FS_ALIGN, hdr_off + sizeof(chunk_t)) != 0)
        return NULL;
    chunk_t *c = (chunk_t *)((char *)mem + hdr_off);
    c->data = mem;
    return c;
}

static void chunk_free(chunk_t *c)
{
    if (c)
        free(c->data);
}

typedef struct fs_writer_s {
    sl_store_writer_t base;
    char tmp_path[FS_PATH_MAX];
    char final_path[FS_PATH_MAX];
    size_t root_len; /* final_path[0..root_len) is the root: mkdir -p stops there */

    pthread_mutex_t mu;   /* guards: */
    chunk_t *head, *tail; /* complete chunks, not yet taken by a write job */
    size_t queued;        /* bytes in that list */
    int job_queued;       /* a write job is queued that has not taken the list yet */
    atomic_int err;       /* sticky: the first I/O error (written under mu, read anywhere) */
    int aborted;

    /* loop */
    chunk_t *fill;     /* owned: the chunk being filled, not yet in the list */
    uint64_t accepted; /* bytes accepted so far: the file offset of the next one */
    int inflight;      /* jobs submitted whose done callback has not run */
    int abort_sync;    /* abort could not queue its job: clean up when inflight hits 0 */

    /* worker (serial jobs only) */
    int fd;     /* the temp file, O_RDWR: the commit reads its head back to sniff */
    int direct; /* fd has O_DIRECT (until the first unaligned write or the sniff) */
    EVP_MD_CTX *md;
    uint64_t size;
    uint64_t wb_started; /* write-back was started for [0, wb_started) */
    int commit_err;
    sl_store_info_t info;
} fs_writer_t;

/* One write job: takes the whole chunk list when it starts. */
typedef struct fs_wjob_s {
    fs_writer_t *w;
    size_t bytes;  /* how many queued bytes it took */
    chunk_t *used; /* the chunks it wrote, back to the loop for reuse */
} fs_wjob_t;

static int errno_to_sl(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return SL_ENOTFOUND;
    case ENOMEM:
        return SL_ENOMEM;
    case ENAMETOOLONG:
        return SL_ETOOBIG;
    default:
        return SL_EIO;
    }
}

static int fs_path(const fs_store_t *fs, const char *key, char *buf, size_t buflen)
{
    int n = snprintf(buf, buflen, "%s/%s", fs->root, key);
    return n < 0 || (size_t)n >= buflen ? SL_ETOOBIG : 0;
}

/* fsyncs the directory `dir` (so a new entry in it survives a crash). */
static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno_to_sl(errno);
    int err = fsync(fd) == 0 ? 0 : SL_EIO;
    close(fd);
    return err;
}

/* The directory sync that sl_dirsync_wait shares between commit jobs. */
static int dir_sync_fn(const char *dir, void *arg)
{
    (void)arg;
    return fsync_dir(dir);
}

/*
 * Creates the missing parent directories of `path` below its first `keep`
 * bytes (the root, which must exist). A directory it creates is made durable by
 * fsyncing its parent.
 */
static int mkdir_parents(const char *path, size_t keep)
{
    char buf[FS_PATH_MAX];
    size_t n = strnlen(path, sizeof buf);
    if (n >= sizeof buf)
        return SL_ETOOBIG;
    memcpy(buf, path, n + 1);
    for (size_t i = keep + 1; i < n; i++) {
        if (buf[i] != '/')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, 0755) == 0) {
            char *slash = strrchr(buf, '/');
            *slash = '\0';
            int err = fsync_dir(buf);
            *slash = '/';
            if (err)
                return err;
        } else if (errno != EEXIST) {
            return errno_to_sl(errno);
        }
        buf[i] = '/';
    }
    return 0;
}

/* mkdir -p for the root at open time (which may start anywhere). */
static int mkdir_all(const char *path)
{
    char buf[FS_PATH_MAX];
    size_t n = strnlen(path, sizeof buf);
    if (n >= sizeof buf)
        return SL_ETOOBIG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return errno_to_sl(errno);
        buf[i] = saved;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return SL_EIO;
    return 0;
}

/* ---- writer: worker side ---- */

/*
 * Opens the temp file with O_DIRECT where the filesystem takes it (ext4, xfs;
 * not every tmpfs): every byte is fsynced before the commit answers anyway,
 * so staging it in the page cache would only cost a kernel copy per byte and
 * the write-back later. Falls back to buffered I/O. `direct` 0 opens it
 * buffered from the start: an object whose first write is already
 * unaligned (a small one, written whole by its commit) would switch at once
 * (two fcntl calls a file).
 */
static int writer_open_tmp(fs_writer_t *w, int direct)
{
    if (w->fd >= 0)
        return 0;
    if (direct) {
        w->fd = open(w->tmp_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644);
        if (w->fd >= 0) {
            w->direct = 1;
            return 0;
        }
        if (errno != EINVAL) /* even ENOENT (no .tmp dir) is an I/O error here */
            return SL_EIO;
        unlink(w->tmp_path); /* some filesystems create the file, then refuse the flag */
    }
    w->fd = open(w->tmp_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    return w->fd < 0 ? SL_EIO : 0;
}

/* Drops O_DIRECT for the rest of the file's life (an unaligned tail, the sniff). */
static int writer_buffered(fs_writer_t *w)
{
    if (!w->direct)
        return 0;
    int fl = fcntl(w->fd, F_GETFL);
    if (fl < 0 || fcntl(w->fd, F_SETFL, fl & ~O_DIRECT) != 0)
        return SL_EIO;
    w->direct = 0;
    w->wb_started = w->size; /* what came before is on the device already */
    return 0;
}

/* pwritev until done (EINTR, short writes); advances v in place. */
static int pwritev_all(int fd, struct iovec *v, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pwritev(fd, v, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno_to_sl(errno);
        }
        if (r == 0)
            return SL_EIO;
        off += (uint64_t)r;
        while (n > 0 && (size_t)r >= v->iov_len) {
            r -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + r;
            v->iov_len -= (size_t)r;
        }
    }
    return 0;
}

static int chunk_aligned(const chunk_t *c, uint64_t off)
{
    return off % FS_ALIGN == 0 && c->len % FS_ALIGN == 0;
}

/*
 * Hashes and writes `n` chunks that follow each other in the file, from
 * w->size on, with one pwritev (O_DIRECT if they are all aligned; the first
 * unaligned one switches the file to buffered I/O for good).
 */
static int writer_write_chunks(fs_writer_t *w, chunk_t *const *cs, int n)
{
    struct iovec v[FS_IOV_MAX];
    size_t total = 0;
    int err = writer_open_tmp(w, n > 0 && chunk_aligned(cs[0], w->size));
    if (err)
        return err;
    for (int i = 0; i < n; i++) {
        if (EVP_DigestUpdate(w->md, cs[i]->data, cs[i]->len) != 1)
            return SL_EIO;
        if (w->direct && !chunk_aligned(cs[i], w->size + total) && (err = writer_buffered(w)) != 0)
            return err;
        v[i].iov_base = cs[i]->data;
        v[i].iov_len = cs[i]->len;
        total += cs[i]->len;
    }
    if ((err = pwritev_all(w->fd, v, n, w->size)) != 0)
        return err;
    w->size += total;
    if (w->direct) /* on the device already: nothing to start */
        return 0;
    /*
     * Start writing the new whole steps back now (asynchronous: it queues the
     * I/O and returns), so the dirty data of a big object is mostly on disk by
     * the time the commit's fsync waits for it. Advisory: a failure here shows
     * again at that fsync (the file's writeback error is sampled at open).
     */
    uint64_t wb = sl_store_fs_writeback_len(w->size, w->wb_started);
    if (wb > 0) {
        (void)sync_file_range(w->fd, (off_t)w->wb_started, (off_t)wb, SYNC_FILE_RANGE_WRITE);
        w->wb_started += wb;
    }
    return 0;
}

uint64_t sl_store_fs_writeback_len(uint64_t written, uint64_t started)
{
    if (written <= started)
        return 0;
    return (written - started) / FS_WRITEBACK_STEP * FS_WRITEBACK_STEP;
}

/* Takes the queued chunks and writes them (or drops them after an error or an
 * abort). Returns the number of queued bytes it took. The chunks go to *used
 * if `used` is set, else they are freed. */
static size_t writer_flush(fs_writer_t *w, chunk_t **used)
{
    pthread_mutex_lock(&w->mu);
    chunk_t *list = w->head;
    w->head = w->tail = NULL;
    w->queued = 0;
    w->job_queued = 0;
    int err = w->err;
    int aborted = w->aborted;
    pthread_mutex_unlock(&w->mu);

    size_t bytes = 0;
    while (list) {
        chunk_t *batch[FS_IOV_MAX];
        int n = 0;
        while (list && n < FS_IOV_MAX) {
            batch[n++] = list;
            list = list->next;
        }
        if (!err && !aborted)
            err = writer_write_chunks(w, batch, n);
        for (int i = 0; i < n; i++) {
            bytes += batch[i]->len;
            if (used) {
                batch[i]->next = *used;
                *used = batch[i];
            } else {
                chunk_free(batch[i]);
            }
        }
    }
    if (err) {
        pthread_mutex_lock(&w->mu);
        if (!w->err)
            w->err = err;
        pthread_mutex_unlock(&w->mu);
    }
    return bytes;
}

static void write_work(void *arg)
{
    fs_wjob_t *j = arg;
    j->bytes = writer_flush(j->w, &j->used);
}

/*
 * Sniffs the object's type from its first FS_HEAD_MAX bytes, read back from
 * the temp file (they are in the page cache: the writer keeps no copy, so an
 * upload costs no head buffer while it streams). The read goes to this worker
 * thread's stack; only the sniff itself holds a cookie (core/sniff.h).
 */
static void sniff_mime(fs_writer_t *w)
{
    fs_store_t *fs = (fs_store_t *)w->base.st;
    unsigned char head[FS_HEAD_MAX];
    size_t len = 0;
    while (len < sizeof head && len < w->size) {
        ssize_t r = pread(w->fd, head + len, sizeof head - len, (off_t)len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    if (len == 0 && w->size > 0) /* the read failed: not "empty" */
        snprintf(w->info.mime, sizeof w->info.mime, "application/octet-stream");
    else
        sl_sniff_mime(fs->sniff, head, len, w->info.mime, sizeof w->info.mime);
}

static void commit_work(void *arg)
{
    fs_writer_t *w = arg;
    int err, renamed = 0;

    (void)writer_flush(w, NULL); /* the last chunk, partly filled, that fs_commit queued */
    pthread_mutex_lock(&w->mu);
    err = w->err;
    pthread_mutex_unlock(&w->mu);
    if (err)
        goto out;

    if ((err = writer_open_tmp(w, 0)) != 0) /* a 0-byte object was never opened */
        goto out;
    if ((err = writer_buffered(w)) != 0) /* the sniff's pread is not aligned */
        goto out;
    if (w->base.mime[0]) /* the caller's type (sl_store_put_mime): no sniff */
        snprintf(w->info.mime, sizeof w->info.mime, "%s", w->base.mime);
    else
        sniff_mime(w); /* before the fsync: the cookie is never held across one */
    if (fsync(w->fd) != 0) {
        err = SL_EIO;
        goto out;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) {
        err = SL_EIO;
        goto out;
    }
    /* The parents exist but for a tenant's first object: rename first, and
     * make them only when it says they are missing (two failing mkdirs a
     * file otherwise, strace of a 1,000-file upload). */
    if (rename(w->tmp_path, w->final_path) != 0) {
        if (errno != ENOENT || (err = mkdir_parents(w->final_path, w->root_len)) != 0 ||
            rename(w->tmp_path, w->final_path) != 0) {
            err = err ? err : SL_EIO;
            goto out;
        }
    }
    renamed = 1;
    if (!w->base.defer_sync) { /* else the caller's sl_store_sync makes the name durable */
        char *slash = strrchr(w->final_path, '/'); /* there is one: after the root */
        *slash = '\0';
        err = sl_dirsync_wait(((fs_store_t *)w->base.st)->dsync, w->final_path);
        *slash = '/';
        if (err)
            goto out;
    }

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(w->md, md, &mdlen) != 1 || mdlen != 32) {
        err = SL_EIO;
        goto out;
    }
    sl_hex(md, 32, w->info.sha256_hex);
    w->info.size = w->size;

out:
    if (err) {
        if (w->fd >= 0) {
            close(w->fd);
            w->fd = -1;
        }
        /* Nothing is left behind: not the temp file, not a half-durable object. */
        unlink(renamed ? w->final_path : w->tmp_path);
    }
    w->commit_err = err;
}

static void abort_work(void *arg)
{
    fs_writer_t *w = arg;
    (void)writer_flush(w, NULL); /* drops anything still queued */
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    unlink(w->tmp_path); /* ENOENT when nothing was written: fine */
}

/* ---- writer: loop side ---- */

static void writer_free(fs_writer_t *w)
{
    chunk_free(w->fill);
    chunk_t *c = w->head;
    while (c) {
        chunk_t *next = c->next;
        chunk_free(c);
        c = next;
    }
    if (w->fd >= 0)
        close(w->fd);
    EVP_MD_CTX_free(w->md);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* Loop: keeps a whole chunk for reuse, or frees it. */
static void chunk_release(fs_store_t *fs, chunk_t *c)
{
    if (c->cap == FS_CHUNK && fs->nspare < FS_SPARE_MAX) {
        c->next = fs->spare;
        fs->spare = c;
        fs->nspare++;
    } else {
        chunk_free(c);
    }
}

static chunk_t *chunk_new(fs_store_t *fs, size_t cap)
{
    chunk_t *c;
    if (cap == FS_CHUNK && fs->spare) {
        c = fs->spare;
        fs->spare = c->next;
        fs->nspare--;
    } else if ((c = chunk_alloc(cap)) == NULL) {
        return NULL;
    }
    c->next = NULL;
    c->len = 0;
    c->cap = cap;
    return c;
}

static void writer_kick(fs_writer_t *w);

static void write_done(void *arg)
{
    fs_wjob_t *j = arg;
    fs_writer_t *w = j->w;
    size_t bytes = j->bytes;
    while (j->used) {
        chunk_t *next = j->used->next;
        chunk_release((fs_store_t *)w->base.st, j->used);
        j->used = next;
    }
    free(j);
    w->inflight--;
    if (w->abort_sync && w->inflight == 0) {
        /* Rare path (the abort job could not be queued): clean up here. */
        abort_work(w);
        writer_free(w);
        return;
    }
    if (w->inflight == 0 && w->base.above_high && w->base.state == SL_STORE__W_OPEN)
        writer_kick(w); /* the producer may be paused on this writer */
    sl_store__written(&w->base, bytes);
}

static void commit_done(void *arg)
{
    fs_writer_t *w = arg;
    sl_store__commit_done(&w->base, w->commit_err, &w->info);
    writer_free(w);
}

static void abort_done(void *arg)
{
    writer_free(arg);
}

static int fs_put_begin(sl_store_t *st, const char *key, sl_store_writer_t **out)
{
    fs_store_t *fs = (fs_store_t *)st;
    unsigned char rnd[16];
    char hex[33];
    int err;

    fs_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return SL_ENOMEM;
    w->fd = -1;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return SL_ENOMEM;
    }
    if ((err = sl_random_bytes(rnd, sizeof rnd)) != 0)
        goto fail;
    sl_hex(rnd, sizeof rnd, hex);
    int n = snprintf(w->tmp_path, sizeof w->tmp_path, "%s/" FS_TMP_DIR "/%s", fs->root, hex);
    if (n < 0 || (size_t)n >= sizeof w->tmp_path) {
        err = SL_ETOOBIG;
        goto fail;
    }
    if ((err = fs_path(fs, key, w->final_path, sizeof w->final_path)) != 0)
        goto fail;
    w->root_len = fs->root_len;
    w->md = EVP_MD_CTX_new();
    if (!w->md || EVP_DigestInit_ex(w->md, EVP_sha256(), NULL) != 1) {
        err = SL_ENOMEM;
        goto fail;
    }
    w->base.st = st;
    w->base.state = SL_STORE__W_OPEN;
    fs->open_writers++;
    *out = &w->base;
    return 0;

fail:
    EVP_MD_CTX_free(w->md);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return err;
}

/* Submits the write job that the caller claimed (job_queued) under w->mu.
 * Loop thread. On failure the writer gets a sticky error (its bytes are then
 * dropped). */
static int writer_submit(fs_writer_t *w)
{
    int err;
    fs_wjob_t *j = malloc(sizeof *j);
    if (j) {
        j->w = w;
        j->bytes = 0;
        j->used = NULL;
        err = sl_workq_submit(w->base.st->wq, w, write_work, write_done, j);
    } else {
        err = SL_ENOMEM;
    }
    if (err) {
        free(j);
        pthread_mutex_lock(&w->mu);
        w->job_queued = 0;
        if (!w->err)
            w->err = err;
        pthread_mutex_unlock(&w->mu);
        return err;
    }
    w->inflight++;
    return 0;
}

enum { PUSH_HOLD, PUSH_BATCH, PUSH_NOW };

/*
 * Queues c (complete, or the last of the object) for a write job. PUSH_BATCH
 * queues a job once FS_JOB_MIN bytes wait and none is queued (fewer wake-ups
 * and larger writes); PUSH_NOW whenever none is queued (many writers: eager);
 * PUSH_HOLD never (the commit job writes it). Loop thread.
 */
static int writer_push(fs_writer_t *w, chunk_t *c, int mode)
{
    int submit = 0;
    pthread_mutex_lock(&w->mu);
    c->next = NULL;
    if (w->tail)
        w->tail->next = c;
    else
        w->head = c;
    w->tail = c;
    w->queued += c->len;
    if (mode != PUSH_HOLD && !w->job_queued && (mode == PUSH_NOW || w->queued >= FS_JOB_MIN)) {
        /* Claimed here, submitted after the unlock: the worker that picks the
         * job up takes w->mu first thing, and must not find the loop in it.
         * Only the loop pushes, so nothing slips in between. */
        w->job_queued = 1;
        submit = 1;
    }
    pthread_mutex_unlock(&w->mu);
    return submit ? writer_submit(w) : 0;
}

/*
 * Queues a job for whatever waits in the list, if none is queued. Loop. For
 * write_done: a paused producer waits for the drain, and a list below
 * FS_JOB_MIN that no job will take could keep pending above the drain mark.
 */
static void writer_kick(fs_writer_t *w)
{
    pthread_mutex_lock(&w->mu);
    int submit = w->head && !w->job_queued && !w->err && !w->aborted;
    if (submit)
        w->job_queued = 1;
    pthread_mutex_unlock(&w->mu);
    if (submit)
        (void)writer_submit(w);
}

/*
 * Copies bytes into chunks that end at multiples of FS_CHUNK in the file, so
 * every chunk but the last is FS_CHUNK bytes at an FS_CHUNK-aligned offset:
 * it can go to the device with O_DIRECT (and, buffered, it covers whole large
 * folios: no partial-folio zeroing; see storage.md). The chunk being filled
 * belongs to the loop, so the copy takes no lock; the writer's mutex is taken
 * once per chunk, to queue it (and, once FS_JOB_MIN bytes wait and none is
 * waiting, a write job is submitted after the unlock). With more than FS_BATCH_WRITERS writers open (a
 * thousand small uploads at once), waiting for full chunks would hold up to FS_CHUNK per upload:
 * then every write is queued at once, in a chunk sized to the data.
 */
static int fs_write(sl_store_writer_t *base, const void *data, size_t len)
{
    fs_writer_t *w = (fs_writer_t *)base;
    fs_store_t *fs = (fs_store_t *)base->st;
    const char *p = data;
    int eager = fs->open_writers > FS_BATCH_WRITERS;

    int err = atomic_load(&w->err);
    if (err || len == 0)
        return err;
    /* Room first, so that running out of memory leaves nothing half-queued. */
    chunk_t *fresh = NULL, **fresh_tail = &fresh;
    size_t room = w->fill ? w->fill->cap - w->fill->len : 0;
    uint64_t off = w->accepted + room;
    while (room < len) {
        size_t cap = FS_CHUNK - (size_t)(off % FS_CHUNK);
        size_t need = (len - room + 4095) / 4096 * 4096;
        if (eager && need < cap)
            cap = need;
        chunk_t *c = chunk_new(fs, cap);
        if (!c) {
            while (fresh) {
                chunk_t *next = fresh->next;
                chunk_release(fs, fresh);
                fresh = next;
            }
            return SL_ENOMEM;
        }
        *fresh_tail = c;
        fresh_tail = &c->next;
        room += cap;
        off += cap;
    }
    while (len > 0) {
        if (!w->fill) {
            w->fill = fresh;
            fresh = fresh->next;
        }
        chunk_t *c = w->fill;
        size_t n = c->cap - c->len < len ? c->cap - c->len : len;
        memcpy(c->data + c->len, p, n);
        c->len += n;
        p += n;
        len -= n;
        w->accepted += n;
        if (c->len == c->cap || (eager && len == 0)) {
            w->fill = NULL;
            if ((err = writer_push(w, c, eager ? PUSH_NOW : PUSH_BATCH)) != 0)
                break;
        }
    }
    while (fresh) { /* only after a failed push */
        chunk_t *next = fresh->next;
        chunk_release(fs, fresh);
        fresh = next;
    }
    return err;
}

static int fs_commit(sl_store_writer_t *base)
{
    fs_writer_t *w = (fs_writer_t *)base;
    if (w->fill) { /* the partly filled last chunk: the commit job writes it */
        (void)writer_push(w, w->fill, PUSH_HOLD);
        w->fill = NULL;
    }
    int err = sl_workq_submit(base->st->wq, w, commit_work, commit_done, w);
    if (err == 0) {
        w->inflight++;
        ((fs_store_t *)base->st)->open_writers--;
    }
    return err;
}

static void fs_abort(sl_store_writer_t *base)
{
    fs_writer_t *w = (fs_writer_t *)base;
    ((fs_store_t *)base->st)->open_writers--;
    chunk_free(w->fill);
    w->fill = NULL;
    pthread_mutex_lock(&w->mu);
    w->aborted = 1; /* queued write jobs now drop their bytes */
    pthread_mutex_unlock(&w->mu);
    if (sl_workq_submit(base->st->wq, w, abort_work, abort_done, w) == 0) {
        w->inflight++;
        return;
    }
    if (w->inflight > 0) {
        w->abort_sync = 1; /* the last write_done cleans up */
        return;
    }
    abort_work(w); /* out of memory and nothing in flight: a quick unlink here */
    writer_free(w);
}

/* ---- read, stat, delete ---- */

typedef struct fs_op_s {
    uint64_t offset;
    size_t len;
    int err;
    size_t n;
    uint64_t size;
    char *buf;
    union {
        sl_store_read_cb read;
        sl_store_stat_cb stat;
        sl_store_done_cb done;
        sl_store_local_cb local;
    } cb;
    void *arg;
    char path[]; /* root/key */
} fs_op_t;

static fs_op_t *fs_op_new(fs_store_t *fs, const char *key)
{
    size_t need = fs->root_len + 1 + strlen(key) + 1;
    fs_op_t *op = calloc(1, sizeof *op + need);
    if (op && fs_path(fs, key, op->path, need) != 0) {
        free(op);
        op = NULL;
    }
    return op;
}

static void read_work(void *arg)
{
    fs_op_t *op = arg;
    struct stat sb;
    int fd = open(op->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        op->err = errno_to_sl(errno);
        return;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        op->err = SL_ENOTFOUND; /* a directory is not an object */
        goto out;
    }
    if (op->len == 0)
        goto out;
    if (!(op->buf = malloc(op->len))) {
        op->err = SL_ENOMEM;
        goto out;
    }
    while (op->n < op->len) {
        ssize_t r = pread(fd, op->buf + op->n, op->len - op->n, (off_t)(op->offset + op->n));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            op->err = SL_EIO;
            goto out;
        }
        if (r == 0)
            break;
        op->n += (size_t)r;
    }
out:
    close(fd);
}

static void read_done(void *arg)
{
    fs_op_t *op = arg;
    if (op->err)
        op->cb.read(op->err, NULL, 0, op->arg);
    else
        op->cb.read(0, op->buf ? op->buf : "", op->n, op->arg);
    free(op->buf);
    free(op);
}

static int fs_read(sl_store_t *st, const char *key, uint64_t offset, size_t len,
                   sl_store_read_cb cb, void *arg)
{
    fs_op_t *op = fs_op_new((fs_store_t *)st, key);
    if (!op)
        return SL_ENOMEM;
    op->offset = offset;
    op->len = len > FS_READ_MAX ? FS_READ_MAX : len;
    op->cb.read = cb;
    op->arg = arg;
    int err = sl_workq_submit(st->wq, NULL, read_work, read_done, op);
    if (err)
        free(op);
    return err;
}

static void stat_work(void *arg)
{
    fs_op_t *op = arg;
    struct stat sb;
    if (stat(op->path, &sb) != 0)
        op->err = errno_to_sl(errno);
    else if (!S_ISREG(sb.st_mode))
        op->err = SL_ENOTFOUND;
    else
        op->size = (uint64_t)sb.st_size;
}

static void stat_done(void *arg)
{
    fs_op_t *op = arg;
    op->cb.stat(op->err, op->err ? 0 : op->size, op->arg);
    free(op);
}

static int fs_stat(sl_store_t *st, const char *key, sl_store_stat_cb cb, void *arg)
{
    fs_op_t *op = fs_op_new((fs_store_t *)st, key);
    if (!op)
        return SL_ENOMEM;
    op->cb.stat = cb;
    op->arg = arg;
    int err = sl_workq_submit(st->wq, NULL, stat_work, stat_done, op);
    if (err)
        free(op);
    return err;
}

static void del_work(void *arg)
{
    fs_op_t *op = arg;
    if (unlink(op->path) != 0) {
        /* Missing, or a directory (no object has that name): nothing to delete. */
        if (errno == ENOENT || errno == ENOTDIR || errno == EISDIR)
            op->err = 0;
        else
            op->err = SL_EIO;
    }
}

static void del_done(void *arg)
{
    fs_op_t *op = arg;
    if (op->cb.done)
        op->cb.done(op->err, op->arg);
    free(op);
}

static int fs_del(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg)
{
    fs_op_t *op = fs_op_new((fs_store_t *)st, key);
    if (!op)
        return SL_ENOMEM;
    op->cb.done = cb;
    op->arg = arg;
    int err = sl_workq_submit(st->wq, NULL, del_work, del_done, op);
    if (err)
        free(op);
    return err;
}

static int fs_local_path(sl_store_t *st, const char *key, char *buf, size_t buflen)
{
    return fs_path((fs_store_t *)st, key, buf, buflen);
}

/* fetch_local: the object's own file, once a stat on the pool says it is there. */
static void local_done(void *arg)
{
    fs_op_t *op = arg;
    op->cb.local(op->err, op->err ? NULL : op->path, 0, op->arg);
    free(op);
}

static int fs_fetch_local(sl_store_t *st, const char *key, const char *dir, sl_store_local_cb cb,
                          void *arg)
{
    (void)dir; /* no copy: the object's file is the local file */
    fs_op_t *op = fs_op_new((fs_store_t *)st, key);
    if (!op)
        return SL_ENOMEM;
    op->cb.local = cb;
    op->arg = arg;
    int err = sl_workq_submit(st->wq, NULL, stat_work, local_done, op);
    if (err)
        free(op);
    return err;
}

/* sl_store_sync: one (shared) sync of the key's directory, on a worker. The
 * job holds its own reference to the store's dirsync: like a read or a
 * delete, it does not use the store, which may be freed before it runs. */
typedef struct fs_sync_op_s {
    sl_dirsync_t *dsync; /* a reference of its own */
    char dir[FS_PATH_MAX];
    int err;
    sl_store_done_cb cb;
    void *arg;
} fs_sync_op_t;

static void sync_work(void *arg)
{
    fs_sync_op_t *op = arg;
    op->err = sl_dirsync_wait(op->dsync, op->dir);
    sl_dirsync_free(op->dsync);
}

static void sync_done(void *arg)
{
    fs_sync_op_t *op = arg;
    op->cb(op->err, op->arg);
    free(op);
}

static int fs_sync(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg)
{
    fs_store_t *fs = (fs_store_t *)st;
    fs_sync_op_t *op = malloc(sizeof *op);
    if (!op)
        return SL_ENOMEM;
    int err = fs_path(fs, key, op->dir, sizeof op->dir);
    if (err) {
        free(op);
        return err;
    }
    *strrchr(op->dir, '/') = '\0'; /* the key's directory: at least the root */
    op->dsync = sl_dirsync_ref(fs->dsync);
    op->cb = cb;
    op->arg = arg;
    if ((err = sl_workq_submit(st->wq, NULL, sync_work, sync_done, op)) != 0) {
        sl_dirsync_free(op->dsync);
        free(op);
    }
    return err;
}

static void fs_free(sl_store_t *st)
{
    fs_store_t *fs = (fs_store_t *)st;
    while (fs->spare) {
        chunk_t *next = fs->spare->next;
        chunk_free(fs->spare);
        fs->spare = next;
    }
    sl_sniff_free(fs->sniff);
    sl_dirsync_free(fs->dsync);
    free(fs);
}

static const sl_store_ops_t fs_ops = {
    .name = "fs",
    .put_begin = fs_put_begin,
    .write = fs_write,
    .commit = fs_commit,
    .abort = fs_abort,
    .read = fs_read,
    .stat = fs_stat,
    .del = fs_del,
    .local_path = fs_local_path,
    .fetch_local = fs_fetch_local,
    .sync = fs_sync,
    .free = fs_free,
};

uint64_t sl_store_fs_dir_syncs(sl_store_t *st)
{
    if (!st || st->ops != &fs_ops)
        return 0;
    return sl_dirsync_count(((fs_store_t *)st)->dsync);
}

/* Removes what a crash left in <root>/.tmp (synchronous: runs at start-up). */
static int clean_tmp_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno_to_sl(errno);
    struct dirent *de;
    char path[FS_PATH_MAX];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        int n = snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (n < 0 || (size_t)n >= sizeof path)
            continue;
        /* Only files are ever made there; unlink leaves anything else alone. */
        (void)unlink(path);
    }
    closedir(d);
    return 0;
}

int sl_store_fs_open(sl_workq_t *wq, const char *root, sl_store_t **out)
{
    char tmp[FS_PATH_MAX];
    int err;

    if (!wq || !root || !out)
        return SL_EINVAL;
    size_t n = strnlen(root, FS_ROOT_MAX + 1);
    while (n > 1 && root[n - 1] == '/')
        n--;
    if (n == 0 || n > FS_ROOT_MAX || (n == 1 && root[0] == '/'))
        return SL_EINVAL; /* not the filesystem root itself */

    fs_store_t *fs = calloc(1, sizeof *fs);
    if (!fs)
        return SL_ENOMEM;
    if (!(fs->sniff = sl_sniff_new())) {
        free(fs);
        return SL_ENOMEM;
    }
    fs->base.ops = &fs_ops;
    fs->base.wq = wq;
    memcpy(fs->root, root, n);
    fs->root[n] = '\0';
    fs->root_len = n;

    int len = snprintf(tmp, sizeof tmp, "%s/" FS_TMP_DIR, fs->root);
    if (len < 0 || (size_t)len >= sizeof tmp) {
        err = SL_ETOOBIG;
        goto fail;
    }
    if ((err = mkdir_all(fs->root)) != 0)
        goto fail;
    if ((err = mkdir_all(tmp)) != 0)
        goto fail;
    if ((err = clean_tmp_dir(tmp)) != 0)
        goto fail;
    if ((err = sl_dirsync_new(dir_sync_fn, NULL, &fs->dsync)) != 0)
        goto fail;
    *out = &fs->base;
    return 0;

fail:
    sl_sniff_free(fs->sniff);
    free(fs);
    return err;
}
