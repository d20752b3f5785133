/*
 * fuzz_multipart.c — libFuzzer target for core/multipart.c.
 *
 * Input layout: byte 0 picks the boundary, byte 1 (mod 8) is how many chunk
 * sizes follow, then those sizes (one byte each), then the body. The body is
 * parsed three ways — whole, in the chunk sizes given (cycled), and, when at
 * most BYTEWISE_MAX bytes long, one byte at a time — and the callback streams, results and done()
 * must agree: a push parser's output may not depend on where the feeds were cut. The body is also
 * given to sl_multipart_boundary() as a Content-Type value.
 */
#include "core/err.h"
#include "core/multipart.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BYTEWISE_MAX 128

static const char *const boundaries[] = {
    "B", "a b", "--", "----SluiceFormBoundary7MA4YWxkTrZu0gW", "AaB03x",
};

typedef struct {
    unsigned char *p;
    size_t len, cap;
    int in_part;
    int last_was_data;
} log_t;

static void log_add(log_t *l, const void *d, size_t n)
{
    if (l->len + n > l->cap) {
        size_t cap = l->cap ? l->cap : 256;
        while (cap < l->len + n)
            cap *= 2;
        unsigned char *np = realloc(l->p, cap);
        if (np == NULL)
            abort();
        l->p = np;
        l->cap = cap;
    }
    memcpy(l->p + l->len, d, n);
    l->len += n;
}

static void log_str(log_t *l, const char *s)
{
    if (s == NULL)
        log_add(l, "\x01", 1);
    else
        log_add(l, s, strlen(s) + 1);
}

static int begin_cb(void *arg, const sl_multipart_part_t *part)
{
    log_t *l = arg;
    if (l->in_part)
        __builtin_trap();
    l->in_part = 1;
    l->last_was_data = 0;
    log_add(l, "\x02", 1);
    log_str(l, part->name);
    log_str(l, part->filename);
    log_str(l, part->content_type);
    return 0;
}

static int data_cb(void *arg, const char *data, size_t len)
{
    log_t *l = arg;
    if (!l->in_part || len == 0)
        __builtin_trap();
    /* Runs are merged so that the log does not depend on how data was split. */
    if (!l->last_was_data)
        log_add(l, "\x03", 1);
    l->last_was_data = 1;
    log_add(l, data, len);
    return 0;
}

static int end_cb(void *arg)
{
    log_t *l = arg;
    if (!l->in_part)
        __builtin_trap();
    l->in_part = 0;
    l->last_was_data = 0;
    log_add(l, "\x04", 1);
    return 0;
}

/* Parses body with the given chunk sizes (nsizes == 0: whole); logs the result. */
static void run(const char *boundary, const char *body, size_t len, const uint8_t *sizes,
                size_t nsizes, log_t *l)
{
    static const sl_multipart_cbs_t cbs = {begin_cb, data_cb, end_cb};
    sl_multipart_t *mp = sl_multipart_new(boundary, &cbs, l);
    if (mp == NULL)
        abort();
    int rc = 0;
    size_t off = 0, k = 0;
    while (off < len && rc == 0) {
        size_t n = nsizes > 0 ? sizes[k++ % nsizes] : len;
        if (n == 0)
            n = 1;
        if (n > len - off)
            n = len - off;
        rc = sl_multipart_feed(mp, body + off, n);
        off += n;
    }
    if (rc != 0 && sl_multipart_feed(mp, "x", 1) != rc)
        __builtin_trap(); /* errors are sticky */
    char tail[2] = {(char)('0' - rc), (char)('0' + sl_multipart_done(mp))};
    log_add(l, "\x05", 1);
    log_add(l, tail, 2);
    sl_multipart_free(mp);
}

static void fuzz_boundary(const uint8_t *data, size_t size)
{
    char ct[1024], out[SL_MULTIPART_MAX_BOUNDARY + 1];
    size_t n = size < sizeof(ct) - 1 ? size : sizeof(ct) - 1;
    memcpy(ct, data, n);
    ct[n] = '\0';
    int rc = sl_multipart_boundary(ct, out, sizeof(out));
    if (rc >= 0) {
        if (strlen(out) != (size_t)rc)
            __builtin_trap();
        static const sl_multipart_cbs_t none = {NULL, NULL, NULL};
        sl_multipart_t *mp = sl_multipart_new(out, &none, NULL);
        if (mp == NULL)
            __builtin_trap(); /* a boundary we extract must be one we accept */
        sl_multipart_free(mp);
    } else if (rc != SL_EINVAL) {
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *boundary = boundaries[data[0] % (sizeof(boundaries) / sizeof(boundaries[0]))];
    size_t nsizes = data[1] % 8;
    if (size < 2 + nsizes)
        return 0;
    const uint8_t *sizes = data + 2;
    const char *body = (const char *)data + 2 + nsizes;
    size_t len = size - 2 - nsizes;

    log_t whole = {0}, split = {0}, bytes = {0};
    static const uint8_t one = 1;
    run(boundary, body, len, NULL, 0, &whole);
    run(boundary, body, len, sizes, nsizes, &split);
    if (whole.len != split.len || memcmp(whole.p, split.p, whole.len) != 0)
        __builtin_trap();
    /* Byte at a time costs a feed per byte: only for short bodies. Longer
     * ones get it when the fuzzer picks the chunk sizes {1}. */
    if (len <= BYTEWISE_MAX) {
        run(boundary, body, len, &one, 1, &bytes);
        if (whole.len != bytes.len || memcmp(whole.p, bytes.p, whole.len) != 0)
            __builtin_trap();
    }
    free(whole.p);
    free(split.p);
    free(bytes.p);

    fuzz_boundary((const uint8_t *)body, len);
    return 0;
}
