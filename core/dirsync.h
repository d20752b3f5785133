/*
 * dirsync.h — shared directory syncs.
 *
 * A new name in a directory (a rename, a create) survives a crash once the
 * directory itself is synced. One fsync of a directory covers every change
 * made in it before that fsync *started*, so callers that each need "my
 * rename in D is durable" can share one: a caller registers after its change,
 * then either runs the next sync of D itself or waits for one that started
 * after it registered. A thousand files committed into one directory cost a
 * handful of directory fsyncs instead of a thousand (which ext4 would have
 * run one at a time anyway: fsync takes the directory inode's lock).
 *
 * Blocking: sl_dirsync_wait blocks its thread (worker threads of core/workq,
 * never an event loop). Thread-safe.
 */
#ifndef SL_DIRSYNC_H
#define SL_DIRSYNC_H

#include <stdint.h>

/**
 * Syncs directory `dir` (borrowed): 0, or an SL_E* code. Called without any
 * lock of this module held, at most once at a time per directory.
 */
typedef int (*sl_dirsync_fn)(const char *dir, void *arg);

typedef struct sl_dirsync_s sl_dirsync_t;

/** A new set of shared syncs that runs `fn(dir, arg)` (arg borrowed); owned in *out. */
int sl_dirsync_new(sl_dirsync_fn fn, void *arg, sl_dirsync_t **out);

/**
 * Another reference to ds (for a job that may outlive its first owner, as a
 * store's sync job outlives sl_store_free); returns ds.
 */
sl_dirsync_t *sl_dirsync_ref(sl_dirsync_t *ds);

/**
 * Drops one reference (of sl_dirsync_new or sl_dirsync_ref); the last one
 * frees it, when no thread may be inside sl_dirsync_wait. NULL is a no-op.
 */
void sl_dirsync_free(sl_dirsync_t *ds);

/**
 * Call after the change in `dir` (borrowed; compared as a string, so one
 * spelling per directory) has been made. Returns once a sync of `dir` that
 * started after this call has finished: 0, or the error of that sync (the
 * change may then not be durable). Out of memory, it syncs on its own.
 */
int sl_dirsync_wait(sl_dirsync_t *ds, const char *dir);

/** How many syncs it has run (for tests). */
uint64_t sl_dirsync_count(sl_dirsync_t *ds);

#endif
