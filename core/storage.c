/*
 * storage.c — the storage interface's generic layer (core/storage.h): checks
 * the arguments, dispatches to the backend's table of operations
 * (core/storage_int.h), keeps the writer's state and backpressure accounting
 * (pending bytes, the drain callback), and opens the configured backend.
 * Backends: core/storage_fs.c (local filesystem), core/storage_s3.c (S3).
 * docs/internals/storage.md explains the interface and both backends.
 */
#include "err.h"
#include "log.h"
#include "storage_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int sl_store_key_valid(const char *key)
{
    if (!key)
        return 0;
    size_t n = strnlen(key, SL_STORE_KEY_MAX + 1);
    if (n == 0 || n > SL_STORE_KEY_MAX)
        return 0;
    if (key[0] == '/' || key[n - 1] == '/')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '/' || c == '_' || c == '.' || c == '-';
        if (!ok)
            return 0;
        if (c == '/' && key[i + 1] == '/')
            return 0;
        if (c == '.' && key[i + 1] == '.')
            return 0;
        /* No component starts with '.': that rules out ".", the backend's own
         * ".tmp" and hidden files. */
        if (c == '.' && (i == 0 || key[i - 1] == '/'))
            return 0;
    }
    return 1;
}

/* Called by a backend on the loop when `n` queued bytes have been written. */
void sl_store__written(sl_store_writer_t *w, size_t n)
{
    w->pending -= n <= w->pending ? n : w->pending;
    if (w->above_high && w->pending < SL_STORE_HIGH_WATER / 2) {
        w->above_high = 0;
        if (w->state == SL_STORE__W_OPEN && w->drain_cb)
            w->drain_cb(w, w->drain_arg);
    }
}

/* Called by a backend on the loop when its commit finished; the backend frees
 * the writer after this returns. */
void sl_store__commit_done(sl_store_writer_t *w, int err, const sl_store_info_t *info)
{
    if (w->commit_cb)
        w->commit_cb(err, err ? NULL : info, w->commit_arg);
}

void sl_store_free(sl_store_t *st)
{
    if (st)
        st->ops->free(st);
}

int sl_store_put_begin(sl_store_t *st, const char *key, sl_store_writer_t **out)
{
    if (!st || !out || !sl_store_key_valid(key))
        return SL_EINVAL;
    return st->ops->put_begin(st, key, out);
}

int sl_store_write(sl_store_writer_t *w, const void *data, size_t len)
{
    if (!w || w->state != SL_STORE__W_OPEN || (!data && len))
        return SL_EINVAL;
    int err = w->st->ops->write(w, data, len);
    if (err == 0) {
        w->pending += len;
        if (w->pending >= SL_STORE_HIGH_WATER)
            w->above_high = 1;
    }
    return err;
}

int sl_store_put_mime(sl_store_writer_t *w, const char *mime)
{
    if (!w || w->state != SL_STORE__W_OPEN || !mime || !*mime ||
        strlen(mime) >= sizeof w->mime)
        return SL_EINVAL;
    memcpy(w->mime, mime, strlen(mime) + 1);
    return 0;
}

int sl_store_put_defer_sync(sl_store_writer_t *w)
{
    if (!w || w->state != SL_STORE__W_OPEN)
        return SL_EINVAL;
    w->defer_sync = 1;
    return 0;
}

/* sl_store_sync on a backend with nothing to sync: the callback, on a later
 * loop turn (the pool's done callbacks run there), with 0. */
typedef struct nosync_s {
    sl_store_done_cb cb;
    void *arg;
} nosync_t;

static void nosync_work(void *arg)
{
    (void)arg;
}

static void nosync_done(void *arg)
{
    nosync_t *n = arg;
    n->cb(0, n->arg);
    free(n);
}

int sl_store_sync(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg)
{
    if (!st || !cb || !sl_store_key_valid(key))
        return SL_EINVAL;
    if (st->ops->sync)
        return st->ops->sync(st, key, cb, arg);
    nosync_t *n = malloc(sizeof *n);
    if (!n)
        return SL_ENOMEM;
    n->cb = cb;
    n->arg = arg;
    int err = sl_workq_submit(st->wq, NULL, nosync_work, nosync_done, n);
    if (err)
        free(n);
    return err;
}

size_t sl_store_pending(const sl_store_writer_t *w)
{
    return w ? w->pending : 0;
}

void sl_store_on_drain(sl_store_writer_t *w, sl_store_drain_cb cb, void *arg)
{
    if (!w)
        return;
    w->drain_cb = cb;
    w->drain_arg = arg;
}

int sl_store_put_commit(sl_store_writer_t *w, sl_store_commit_cb cb, void *arg)
{
    if (!w || w->state != SL_STORE__W_OPEN)
        return SL_EINVAL;
    w->commit_cb = cb;
    w->commit_arg = arg;
    int err = w->st->ops->commit(w);
    if (err) {
        w->commit_cb = NULL;
        w->commit_arg = NULL;
        return err; /* the writer stays open: the caller may retry or abort */
    }
    w->state = SL_STORE__W_COMMITTING;
    return 0;
}

void sl_store_put_abort(sl_store_writer_t *w)
{
    if (!w || w->state != SL_STORE__W_OPEN)
        return; /* a committing writer belongs to the store already */
    w->state = SL_STORE__W_ABORTED;
    w->st->ops->abort(w);
}

int sl_store_read(sl_store_t *st, const char *key, uint64_t offset, size_t len, sl_store_read_cb cb,
                  void *arg)
{
    if (!st || !cb || !sl_store_key_valid(key) || offset > (uint64_t)INT64_MAX)
        return SL_EINVAL;
    return st->ops->read(st, key, offset, len, cb, arg);
}

int sl_store_stat(sl_store_t *st, const char *key, sl_store_stat_cb cb, void *arg)
{
    if (!st || !cb || !sl_store_key_valid(key))
        return SL_EINVAL;
    return st->ops->stat(st, key, cb, arg);
}

int sl_store_delete(sl_store_t *st, const char *key, sl_store_done_cb cb, void *arg)
{
    if (!st || !sl_store_key_valid(key))
        return SL_EINVAL;
    return st->ops->del(st, key, cb, arg);
}

typedef struct bg_del_s {
    const char *event; /* borrowed: a literal */
    char key[];        /* the key, copied */
} bg_del_t;

static void bg_deleted_cb(int err, void *arg)
{
    bg_del_t *d = arg;
    if (err)
        sl_log(SL_LOG_WARN, d->event, "{s:s, s:s}", "storage_key", d->key, "error",
               sl_strerror(err));
    free(d);
}

void sl_store_delete_bg(sl_store_t *st, const char *key, const char *event)
{
    size_t n = strlen(key) + 1;
    bg_del_t *d = malloc(sizeof *d + n);
    int err = SL_ENOMEM;
    if (d) {
        d->event = event;
        memcpy(d->key, key, n);
        if ((err = sl_store_delete(st, d->key, bg_deleted_cb, d)) != 0)
            free(d);
    }
    if (err)
        sl_log(SL_LOG_WARN, event, "{s:s, s:s}", "storage_key", key, "error", sl_strerror(err));
}

int sl_store_local_path(sl_store_t *st, const char *key, char *buf, size_t buflen)
{
    if (!st || !buf || buflen == 0 || !sl_store_key_valid(key) || !st->ops->local_path)
        return SL_EINVAL;
    return st->ops->local_path(st, key, buf, buflen);
}

int sl_store_fetch_local(sl_store_t *st, const char *key, const char *dir, sl_store_local_cb cb,
                         void *arg)
{
    if (!st || !cb || !sl_store_key_valid(key))
        return SL_EINVAL;
    return st->ops->fetch_local(st, key, dir, cb, arg);
}

int sl_store_sweep_uploads(sl_store_t *st, sl_store_sweep_cb cb, void *arg)
{
    if (!st || !st->ops->sweep)
        return SL_EINVAL;
    return st->ops->sweep(st, cb, arg);
}

const char *sl_store_backend(const sl_store_t *st)
{
    return st ? st->ops->name : "";
}

int sl_store_open(const sl_store_conf_t *conf, sl_workq_t *wq, struct event_base *base,
                  sl_store_t **out)
{
    if (!conf || !wq || !out)
        return SL_EINVAL;
    if (!conf->backend || strcmp(conf->backend, "fs") == 0)
        return sl_store_fs_open(wq, conf->path, out);
    if (strcmp(conf->backend, "s3") == 0)
        return sl_store_s3_open(conf, wq, base, out);
    return SL_ECONFIG;
}
