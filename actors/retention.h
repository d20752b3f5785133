/*
 * retention.h — removing what has to go, in short batches, off the request
 * path: the files of deleted datasets, the files the admin cleanup names,
 * the blobs of purged rows, and the automatic retention sweep (expired
 * idempotency keys, files older than a configured age).
 *
 * Every piece of work is a loop of batches on the Postgres pool: one SQL
 * function call of db/functions/retention.sql per batch, one short
 * transaction of at most `batch` files with `lock_timeout` set, a pause
 * between batches (`pause_ms`) so a purge yields to other load. A purged
 * file's blob keys (and its artifacts') are queued in purge_blobs by the
 * same transaction that deletes its rows; the blob drainer then deletes
 * them from storage (core/storage.h: on the worker pool, never on the loop)
 * and removes them from the queue. Nothing is lost by a crash at any point:
 * a deleted dataset stays marked until its last file is gone, and queued
 * blobs are taken again when their claim lapses, so the next purge pass
 * (at start, on a kick, every sweep) resumes.
 *
 * Purges (deleted datasets, queued blobs, a cleanup) are safe to run in
 * several processes at once: each batch locks its rows FOR UPDATE SKIP LOCKED.
 * The sweep runs in one instance at a time: it holds the "sweep" lease of
 * retention_leases while it works, and takes it only when the last sweep
 * (anywhere) finished interval_s ago. See docs/lifecycle.md "Retention".
 *
 * Loop thread only. The module knows nothing of HTTP: api/retention.c calls
 * it, main.c creates one per process.
 */
#ifndef SL_RETENTION_H
#define SL_RETENTION_H

#include <event2/event.h>

#include "core/pubsub.h"
#include "core/storage.h"
#include "db/pg.h"

typedef struct sl_retention_s sl_retention_t;

/** A purged file had a run in flight: stop its actors (file_id borrowed for the call). */
typedef void (*sl_retention_file_cb)(const char *file_id, void *arg);

typedef struct sl_retention_opts_s {
    struct event_base *base; /* borrowed; outlives the module */
    sl_pg_t *pg;             /* borrowed */
    sl_store_t *store;       /* borrowed: blobs are deleted through it */
    sl_pubsub_t *pubsub;     /* borrowed, may be NULL: a "deleted" file event per cleaned file */
    const char *instance_id; /* copied: the sweep lease's owner */
    int sweep;               /* 1: run the automatic sweep every interval_s (engine/inline) */
    int interval_s;          /* between sweeps (any instance); default 3600 */
    int idempotency_hours;   /* keys older than this are purged; default 24 */
    int files_days;          /* files older than this are purged; 0 = never */
    int batch;               /* rows per transaction; default 500 */
    int pause_ms;            /* between batches; default 0 */
    int lock_timeout_ms;     /* lock_timeout of each batch; default 2000 */
    sl_retention_file_cb cancel_file; /* may be NULL */
    void *cancel_arg;                 /* borrowed, passed to cancel_file */
} sl_retention_opts_t;

/** Creates the module (nothing runs until sl_retention_start). Returns owned in *out. */
int sl_retention_new(const sl_retention_opts_t *opts, sl_retention_t **out);

/**
 * Call once the schema is ready: starts a purge pass now (resuming whatever a
 * previous process left) and, with opts.sweep, the sweep timer.
 */
void sl_retention_start(sl_retention_t *r);

/**
 * Purges deleted datasets' files and drains queued blobs now (after a
 * DELETE or a cleanup). Coalesced: a kick during a pass makes one more pass.
 */
void sl_retention_kick(sl_retention_t *r);

/** What a cleanup did (or, dry run, would do). */
typedef struct sl_retention_counts_s {
    long long files;    /* files removed (counted) */
    long long bytes;    /* the sum of their sizes (the originals; artifacts not counted) */
    long long batches;  /* transactions */
    double longest_ms;  /* the longest batch, sent to answered */
    double duration_ms; /* the whole cleanup */
} sl_retention_counts_t;

/**
 * Called once, on a later loop turn: err 0 and the counts (borrowed for the
 * call), or err < 0 (SL_EUNAVAIL, SL_EDB: the files removed before the
 * failure stay removed; a new cleanup goes on where this one stopped).
 */
typedef void (*sl_retention_cleanup_cb)(int err, const sl_retention_counts_t *c, void *arg);

/**
 * Removes, or with dry_run only counts, the files created before `cutoff`
 * (a timestamptz as Postgres prints it; borrowed, copied) of `tenant_id`
 * (borrowed, copied; NULL: every tenant), in datasets not deleted, exactly as
 * DELETE /v1/files/{id} removes one. Calls back once the rows are gone; their
 * blobs are drained right after (the drainer is kicked). Returns 0, or
 * SL_ENOMEM / SL_EUNAVAIL without a callback.
 */
int sl_retention_cleanup(sl_retention_t *r, const char *cutoff, const char *tenant_id, int dry_run,
                         sl_retention_cleanup_cb cb, void *arg);

/**
 * Stops the timers and frees the module (takes r; NULL is a no-op). Batches
 * and blob deletes in flight finish on their own and free their state;
 * pending cleanups get no callback after this (free only when shutting down).
 */
void sl_retention_free(sl_retention_t *r);

#endif
