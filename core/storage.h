/*
 * storage.h — where blobs live: the storage interface and its backends.
 *
 * Keys are made by the server (never from client input): "<tenant>/<uuid>",
 * characters [A-Za-z0-9/_.-] only, no "..". Every operation is asynchronous:
 * the blocking parts (write, fsync, rename, unlink, read) run on the worker
 * pool (core/workq.h) and their callbacks run on the loop, on a later turn,
 * exactly once. An async call that returns an error does not call back.
 *
 * Writing an object: sl_store_put_begin() gives a writer; sl_store_write()
 * queues bytes (copied) and updates the object's SHA-256 and size as they are
 * written; sl_store_pending() tells how much is queued, for backpressure
 * (stop feeding past SL_STORE_HIGH_WATER, resume on the drain callback);
 * sl_store_put_commit() makes the object durable and visible atomically (the fs
 * backend writes to a temp name, fsyncs, renames, fsyncs the directory);
 * sl_store_put_abort() throws everything away (no object, no temp file).
 * The writer also sniffs the content type of the first 64 KiB with libmagic, at
 * commit, through one cookie per store (libmagic's are not thread-safe).
 *
 * Backends: sl_store_open() picks one from the configuration: "fs"
 * (core/storage_fs.c, objects in a local directory) or "s3"
 * (core/storage_s3.c, objects in an S3 bucket). Each fills the table of
 * operations of core/storage_int.h (as curl's lib/vtls/ does for TLS); callers
 * see only this header. docs/internals/storage.md.
 */
#ifndef SL_STORAGE_H
#define SL_STORAGE_H

#include "workq.h"
#include <stddef.h>
#include <stdint.h>

struct event_base;

#define SL_STORE_HIGH_WATER (256 * 1024) /* queued bytes at which a writer asks to pause */
#define SL_STORE_KEY_MAX 200
#define SL_STORE_MIME_MAX 128

typedef struct sl_store_s sl_store_t;
typedef struct sl_store_writer_s sl_store_writer_t;

/** What a committed object is. */
typedef struct sl_store_info_s {
    uint64_t size;
    char sha256_hex[65];
    char mime[SL_STORE_MIME_MAX]; /* sniffed, e.g. "application/pdf"; "application/x-empty" for 0
                                     bytes */
} sl_store_info_t;

/** The storage section of the configuration. Strings borrowed for sl_store_open() only. */
typedef struct sl_store_conf_s {
    const char *backend; /* "fs" (also when NULL) or "s3" */
    const char *path;    /* fs: the root directory */
    /* s3: endpoint "http(s)://host[:port]" (required), bucket (required),
     * region ("us-east-1" when NULL), credentials (from AWS_ACCESS_KEY_ID /
     * AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN when NULL). */
    const char *endpoint, *bucket, *region, *access_key_id, *secret_access_key;
    int path_style;   /* s3: 1 = endpoint/bucket/key, 0 = bucket.host/key (virtual host) */
    size_t part_size; /* s3: multipart part size, >= 5 MiB; 0 = SL_STORE_S3_PART_DEFAULT */
    /* s3: multipart uploads under own_prefixes older than this are aborted by
     * the sweeper (at open, then every age/4, 1 s..1 h); 0 = SL_STORE_S3_STALE_DEFAULT_S,
     * < 0 = no sweeper. */
    long abort_stale_uploads_after_s;
    /* s3: the key prefixes Sluice writes under (NULL-terminated, at most
     * SL_STORE_PREFIXES_MAX, each < 64 bytes; copied); NULL = SL_STORE_OWN_PREFIXES.
     * The sweeper never touches an upload outside them (a shared bucket). */
    const char *const *own_prefixes;
} sl_store_conf_t;

#define SL_STORE_S3_STALE_DEFAULT_S (24L * 3600)
/** Connections to the S3 endpoint at once (more requests wait for one). */
#define SL_STORE_S3_MAX_CONNECTIONS 64
#define SL_STORE_PREFIXES_MAX 8
/* Where Sluice writes: uploads (api/upload.c), artifacts (actors/lua_run.c). */
#define SL_STORE_OWN_PREFIXES                                                                      \
    {                                                                                              \
        "files/", "artifacts/", NULL                                                               \
    }

#define SL_STORE_S3_PART_MIN (5u * 1024 * 1024)
#define SL_STORE_S3_PART_DEFAULT (8u * 1024 * 1024)
#define SL_STORE_S3_PART_MAX (64u * 1024 * 1024)

/**
 * Opens the backend `conf` names. `wq` and `base` are borrowed and must
 * outlive the store (base: the loop the S3 backend's transfers run on; it
 * makes its own curl multi handle on it). Returns owned in *out; SL_EINVAL,
 * SL_ECONFIG (unknown backend, or an s3 setting missing or malformed), or the
 * backend's open error.
 */
int sl_store_open(const sl_store_conf_t *conf, sl_workq_t *wq, struct event_base *base,
                  sl_store_t **out);

/** A sweep's end: err 0 or the first error; `aborted` uploads were aborted. */
typedef void (*sl_store_sweep_cb)(int err, int aborted, void *arg);

/**
 * Sweeps once, now: lists the multipart uploads under the store's own
 * prefixes (ListMultipartUploads, paged) and aborts those initiated longer
 * ago than the configured age (by S3's clock: the answer's Date header),
 * except this process's own uploads in progress. The S3 backend also sweeps
 * by itself (see sl_store_conf_t); this call is for tests and operators. cb
 * (may be NULL) fires once, on a later loop turn. Returns 0, SL_EINVAL (fs:
 * nothing to sweep), SL_EAGAIN (a sweep is running), or a request error (then
 * no callback). `arg` is borrowed.
 */
int sl_store_sweep_uploads(sl_store_t *st, sl_store_sweep_cb cb, void *arg);

/** The backend's name: "fs" or "s3". Static string. */
const char *sl_store_backend(const sl_store_t *st);

/**
 * The S3 backend's bucket (borrowed, lives as long as st), or NULL for any
 * other backend. A blob's object is <bucket>/<storage key>: Textract's
 * asynchronous API is told where the file is with it (lua-flows/lib/textract.lua).
 */
const char *sl_store_s3_bucket(const sl_store_t *st);

/**
 * A presigned GET URL of `key` (SigV4 query-string auth, valid expires_s
 * seconds: 1..7 days) into out[cap], with response-content-type set to
 * content_type (borrowed; NULL or "": none) so S3 answers with the blob's
 * type. storage.presigned_redirects (api/artifacts.c) sends signed blob URLs
 * there. 0, SL_EINVAL (not the S3 backend, a bad key or lifetime), SL_ETOOBIG.
 */
int sl_store_presign_get(const sl_store_t *st, const char *key, const char *content_type,
                         long expires_s, char *out, size_t cap);

/**
 * Opens the S3 backend (see sl_store_conf_t). Nothing is sent here: a bucket
 * that is unreachable shows on the first operation, as SL_EUNAVAIL.
 */
int sl_store_s3_open(const sl_store_conf_t *conf, sl_workq_t *wq, struct event_base *base,
                     sl_store_t **out);

/**
 * Opens the filesystem backend rooted at `root` (created if missing; copied;
 * not "/"). Objects live at <root>/<key>; temp files in <root>/.tmp, which is
 * emptied here (synchronously: call at start-up). `wq` is borrowed and must
 * outlive the store and its pending operations. Returns owned in *out.
 */
int sl_store_fs_open(sl_workq_t *wq, const char *root, sl_store_t **out);

/**
 * The fs backend's write-back policy, exposed for its tests: with `written`
 * bytes in the temp file and write-back already started for the first
 * `started`, how many bytes from `started` on to hand to
 * sync_file_range(SYNC_FILE_RANGE_WRITE) now: whole 1 MiB steps, else 0. So a
 * big object is mostly on disk before its commit's fsync, which then waits
 * only for the last step or so.
 */
uint64_t sl_store_fs_writeback_len(uint64_t written, uint64_t started);

/**
 * Frees the store (writers must be committed or aborted first). Reads, stats
 * and deletes still in flight complete normally: they do not use the store.
 */
void sl_store_free(sl_store_t *st);

/**
 * True if key is a well-formed server-made key: 1..SL_STORE_KEY_MAX chars of
 * [A-Za-z0-9/_.-], no leading or trailing '/', no "//", no "..", and no path
 * component starting with '.' (so never the backend's own ".tmp").
 */
int sl_store_key_valid(const char *key);

/* ---- writing ---- */

/**
 * Starts writing `key` (borrowed, copied). Returns an owned writer in *out: it
 * must be passed to sl_store_put_commit() or sl_store_put_abort().
 */
int sl_store_put_begin(sl_store_t *st, const char *key, sl_store_writer_t **out);

/**
 * Queues len bytes (data borrowed, copied). Returns 0, SL_ENOMEM, SL_EINVAL
 * (after commit/abort), or the writer's earlier I/O error (sticky).
 */
int sl_store_write(sl_store_writer_t *w, const void *data, size_t len);

/**
 * The caller knows the object's type (an artifact's `mime`): the commit
 * reports `mime` (borrowed, copied) as the object's type and skips libmagic,
 * whose sniff cost about a sixth of the engine's CPU under bench/flow_bench.py.
 * Call before sl_store_put_commit(). 0, or SL_EINVAL (not open, or `mime`
 * empty or longer than SL_STORE_MIME_MAX - 1: then the commit sniffs).
 */
int sl_store_put_mime(sl_store_writer_t *w, const char *mime);

/**
 * The caller makes the object's *name* durable later, with sl_store_sync()
 * on its key, instead of the commit doing it: many objects committed under
 * one prefix (an upload's files, all in files/<tenant>/) then share one
 * directory sync on the fs backend. The commit still makes the bytes durable
 * and still answers only once the object is in place; until the sync's
 * callback a crash may lose the object's name, so nothing may point at the
 * object before it. Backends without names to sync (S3: an object is durable
 * when its PUT answers) ignore it. Call before sl_store_put_commit(). 0, or
 * SL_EINVAL (not open).
 */
int sl_store_put_defer_sync(sl_store_writer_t *w);

/**
 * Makes durable the names of the objects committed with
 * sl_store_put_defer_sync() under the prefix of `key` (up to its last '/').
 * fs: one sync of that directory, shared with concurrent callers
 * (core/dirsync.h); it covers every such commit whose callback came before
 * this call. cb (required; `arg` borrowed) gets 0 or the error (then those
 * objects may not survive a crash) on a later loop turn. Other backends: cb
 * with 0. Returns 0, or SL_EINVAL / SL_ENOMEM (then no callback).
 */
typedef void (*sl_store_done_cb)(int err, void *arg);
int sl_store_sync(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg);

/**
 * How many directory syncs the fs backend has run (commits and
 * sl_store_sync together; for tests). 0 for other backends.
 */
uint64_t sl_store_fs_dir_syncs(sl_store_t *st);

/** Bytes queued and not yet written. */
size_t sl_store_pending(const sl_store_writer_t *w);

/**
 * cb fires (on the loop) each time pending drops below SL_STORE_HIGH_WATER/2
 * after having been at or above SL_STORE_HIGH_WATER. `arg` borrowed.
 */
typedef void (*sl_store_drain_cb)(sl_store_writer_t *w, void *arg);
void sl_store_on_drain(sl_store_writer_t *w, sl_store_drain_cb cb, void *arg);

/**
 * Finishes the object. cb gets err = 0 and the object's info (borrowed until cb
 * returns) once it is durable, or a negative error (then nothing is left
 * behind), including a sticky write error. The writer is freed by the store
 * after cb returns; once this returned 0 the caller must not use w again. If it
 * returns an error (SL_EINVAL, SL_ENOMEM) there is no callback and the caller
 * still owns w. `arg` borrowed; cb may be NULL.
 */
typedef void (*sl_store_commit_cb)(int err, const sl_store_info_t *info, void *arg);
int sl_store_put_commit(sl_store_writer_t *w, sl_store_commit_cb cb, void *arg);

/**
 * Discards the writer and its temp data (async cleanup, no callback, no more
 * drain callbacks). Takes w. A no-op on a writer already committing.
 */
void sl_store_put_abort(sl_store_writer_t *w);

/* ---- reading and deleting ---- */

/**
 * Reads up to len bytes at offset (len is capped at 1 MiB per call). cb gets
 * the bytes (borrowed until it returns), n = bytes read (< len only at the end,
 * 0 past it), or err < 0 (SL_ENOTFOUND if no object). cb required; `arg` borrowed.
 */
typedef void (*sl_store_read_cb)(int err, const char *data, size_t n, void *arg);
int sl_store_read(sl_store_t *st, const char *key, uint64_t offset, size_t len, sl_store_read_cb cb,
                  void *arg);

/** Object size (SL_ENOTFOUND if none); cb gets err and size. */
typedef void (*sl_store_stat_cb)(int err, uint64_t size, void *arg);
int sl_store_stat(sl_store_t *st, const char *key, sl_store_stat_cb cb, void *arg);

/** Deletes key; a missing key is not an error. cb (sl_store_done_cb) may be NULL. */
int sl_store_delete(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg);

/**
 * Deletes key (copied) in the background, for an object no row points at any
 * more (rows first, objects after: a failed delete leaves an unreferenced
 * object, never a row without its bytes). A failure, now or in the backend,
 * is logged at warn as `event` (a string that outlives the call: a literal)
 * with the key and the error.
 */
void sl_store_delete_bg(sl_store_t *st, const char *key, const char *event);

/**
 * The object's own local filesystem path, synchronously. Only the fs backend
 * has one: returns SL_EINVAL otherwise (use sl_store_fetch_local()).
 */
int sl_store_local_path(sl_store_t *st, const char *key, char *buf, size_t buflen);

/**
 * A local file holding key's bytes, for tools that need a path (pdftotext,
 * tesseract). fs: the object's own file (is_copy 0: read it, never write or
 * delete it). s3: the object is downloaded (streamed, ranged GETs) into a new
 * file under `dir` (borrowed, copied; it must exist: the run's scratch
 * directory), and is_copy is 1: the caller owns that file and deletes it (with
 * its scratch directory). cb fires once, on a later loop turn, with err 0 and
 * the path (borrowed until cb returns), or err < 0 (SL_ENOTFOUND, SL_EUNAVAIL,
 * SL_EIO) and path NULL. `arg` borrowed.
 */
typedef void (*sl_store_local_cb)(int err, const char *path, int is_copy, void *arg);
int sl_store_fetch_local(sl_store_t *st, const char *key, const char *dir, sl_store_local_cb cb,
                         void *arg);

#endif
