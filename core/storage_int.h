/*
 * storage_int.h — what a storage backend implements and shares with the
 * generic layer (core/storage.c). Only backends include this file
 * (core/storage_fs.c, core/storage_s3.c); the rest of Sluice sees
 * core/storage.h and never knows which backend it has. The shape follows
 * curl's lib/vtls/: one table of operations per backend, one struct per
 * backend that embeds the generic one as its first member.
 */
#ifndef SL_STORAGE_INT_H
#define SL_STORAGE_INT_H

#include "storage.h"

/*
 * What a backend implements. Every op gets already checked arguments (a valid
 * key, non-NULL callbacks where storage.h requires them) and runs on the loop
 * thread. Callbacks follow storage.h's contract: later loop turn, exactly
 * once, never when the op returned an error.
 */
typedef struct sl_store_ops_s {
    const char *name; /* "fs", "s3" */
    int (*put_begin)(sl_store_t *st, const char *key, sl_store_writer_t **out);
    /* Queue len > 0 bytes (copied); the generic layer counts them in
     * w->pending, the backend reports them written with sl_store__written(). */
    int (*write)(sl_store_writer_t *w, const void *data, size_t len);
    /* Start finishing; later call sl_store__commit_done() on the loop, then free w. */
    int (*commit)(sl_store_writer_t *w);
    /* Throw the writer away (no object, nothing left behind), free it when done. */
    void (*abort)(sl_store_writer_t *w);
    int (*read)(sl_store_t *st, const char *key, uint64_t offset, size_t len, sl_store_read_cb cb,
                void *arg);
    int (*stat)(sl_store_t *st, const char *key, sl_store_stat_cb cb, void *arg);
    int (*del)(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg);
    /* Synchronous path of the object itself; NULL when the backend has none. */
    int (*local_path)(sl_store_t *st, const char *key, char *buf, size_t buflen);
    /* A local file with the object's bytes (see sl_store_fetch_local). */
    int (*fetch_local)(sl_store_t *st, const char *key, const char *dir, sl_store_local_cb cb,
                       void *arg);
    /* Make the names of deferred commits under key's prefix durable (see
     * sl_store_sync); NULL: a commit is durable as it answers, nothing to do. */
    int (*sync)(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg);
    /* Sweep stale multipart uploads once (see sl_store_sweep_uploads); NULL: none. */
    int (*sweep)(sl_store_t *st, sl_store_sweep_cb cb, void *arg);
    void (*free)(sl_store_t *st);
} sl_store_ops_t;

struct sl_store_s {
    const sl_store_ops_t *ops;
    sl_workq_t *wq; /* borrowed */
};

enum { SL_STORE__W_OPEN, SL_STORE__W_COMMITTING, SL_STORE__W_ABORTED };

struct sl_store_writer_s {
    sl_store_t *st;
    int state;                  /* loop: SL_STORE__W_* */
    size_t pending;             /* loop: bytes accepted and not yet written */
    int above_high;             /* loop: pending reached HIGH_WATER since the last drain */
    sl_store_drain_cb drain_cb; /* loop */
    void *drain_arg;
    sl_store_commit_cb commit_cb; /* loop */
    void *commit_arg;
    char mime[SL_STORE_MIME_MAX]; /* loop, before commit: the caller's type; "" = sniff */
    int defer_sync; /* loop, before commit: sl_store_put_defer_sync was called */
};

/* Called by a backend on the loop when `n` queued bytes have been written
 * (or otherwise left its buffer): may fire the drain callback. */
void sl_store__written(sl_store_writer_t *w, size_t n);

/* Called by a backend on the loop when its commit finished (err 0 and info, or
 * a negative error); the backend frees the writer after this returns. */
void sl_store__commit_done(sl_store_writer_t *w, int err, const sl_store_info_t *info);

#endif
