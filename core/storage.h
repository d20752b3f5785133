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
 */
#ifndef SL_STORAGE_H
#define SL_STORAGE_H

#include <stddef.h>
#include <stdint.h>
#include "workq.h"

#define SL_STORE_HIGH_WATER (256 * 1024) /* queued bytes at which a writer asks to pause */
#define SL_STORE_KEY_MAX 200
#define SL_STORE_MIME_MAX 128

typedef struct sl_store_s sl_store_t;
typedef struct sl_store_writer_s sl_store_writer_t;

/** What a committed object is. */
typedef struct sl_store_info_s {
    uint64_t size;
    char sha256_hex[65];
    char mime[SL_STORE_MIME_MAX]; /* sniffed, e.g. "application/pdf"; "application/x-empty" for 0 bytes */
} sl_store_info_t;

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
int sl_store_read(sl_store_t *st, const char *key, uint64_t offset, size_t len,
                  sl_store_read_cb cb, void *arg);

/** Object size (SL_ENOTFOUND if none); cb gets err and size. */
typedef void (*sl_store_stat_cb)(int err, uint64_t size, void *arg);
int sl_store_stat(sl_store_t *st, const char *key, sl_store_stat_cb cb, void *arg);

/** Deletes key; a missing key is not an error. cb may be NULL. */
typedef void (*sl_store_done_cb)(int err, void *arg);
int sl_store_delete(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg);

/**
 * A local filesystem path for key, for tools that need a file (pdftotext,
 * tesseract). Only the fs backend has one: returns SL_EINVAL otherwise.
 */
int sl_store_local_path(sl_store_t *st, const char *key, char *buf, size_t buflen);

#endif
