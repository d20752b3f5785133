/*
 * rmtree.h — remove a directory tree without following symlinks, from a
 * worker thread (it blocks: many unlinkat calls). Replaces an exec of
 * `rm -rf` per run's scratch dir, which cost 11% of the engine's CPU under
 * bench/flow_bench.py (docs/internals/scheduler.md).
 *
 * The tree may be hostile: a scratch dir belongs to the tool user while a
 * tool runs, so it may hold symlinks, deep nesting or many entries, and may
 * change while it is removed. Every step is relative to a directory fd opened
 * with O_NOFOLLOW | O_DIRECTORY, like GNU rm's fts walk, so a name swapped for a
 * symlink is unlinked, never entered: nothing outside the tree is touched.
 * Nesting deeper than SL_RMTREE_MAX_DEPTH is left in place (and reported):
 * the open fds stay bounded.
 */
#ifndef SL_RMTREE_H
#define SL_RMTREE_H

#define SL_RMTREE_MAX_DEPTH 64

/**
 * Removes `name` (borrowed) under the directory `at` (AT_FDCWD for a path),
 * and everything below it. Blocking. Returns 0 when it is gone (or was never
 * there), else an errno value (the first failure; what could be removed is).
 */
int sl_rmtree_at(int at, const char *name);

#endif
