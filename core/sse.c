/*
 * sse.c — Server-Sent Events formatting and bounded writes (see sse.h).
 */
#include "core/sse.h"
#include "core/err.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SSE_STACK 4096

/* Appends n bytes at *pos, writing only what fits below cap - 1 (room for the NUL). */
static void put(char *out, size_t cap, size_t *pos, const char *s, size_t n)
{
    if (cap > 0 && *pos < cap - 1) {
        size_t room = cap - 1 - *pos;
        memcpy(out + *pos, s, n < room ? n : room);
    }
    *pos += n;
}

static void terminate(char *out, size_t cap, size_t pos)
{
    if (cap > 0)
        out[pos < cap - 1 ? pos : cap - 1] = '\0';
}

static int has_newline(const char *s)
{
    return s && strpbrk(s, "\r\n") != NULL;
}

int sl_sse_format(char *out, size_t cap, const char *id, const char *event, const char *data,
                  size_t len)
{
    size_t pos = 0;
    if (has_newline(id) || has_newline(event) || (!data && len))
        return SL_EINVAL;
    if (id) {
        put(out, cap, &pos, "id: ", 4);
        put(out, cap, &pos, id, strlen(id));
        put(out, cap, &pos, "\n", 1);
    }
    if (event) {
        put(out, cap, &pos, "event: ", 7);
        put(out, cap, &pos, event, strlen(event));
        put(out, cap, &pos, "\n", 1);
    }
    /* One data line per payload line; CRLF, CR and LF all end a line. */
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < len && data[i] != '\r' && data[i] != '\n')
            i++;
        put(out, cap, &pos, "data: ", 6);
        put(out, cap, &pos, data + start, i - start);
        put(out, cap, &pos, "\n", 1);
        if (i >= len)
            break;
        if (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n')
            i++;
        i++;
        if (i >= len) {
            /* a trailing line break is an empty last line */
            put(out, cap, &pos, "data: \n", 7);
            break;
        }
    }
    put(out, cap, &pos, "\n", 1);
    terminate(out, cap, pos);
    return pos > INT_MAX ? SL_ETOOBIG : (int)pos;
}

int sl_sse_format_comment(char *out, size_t cap, const char *text)
{
    size_t pos = 0;
    if (!text || has_newline(text))
        return SL_EINVAL;
    put(out, cap, &pos, ": ", 2);
    put(out, cap, &pos, text, strlen(text));
    put(out, cap, &pos, "\n\n", 2);
    terminate(out, cap, pos);
    return pos > INT_MAX ? SL_ETOOBIG : (int)pos;
}

void sl_sse_start(sl_http_req_t *req)
{
    sl_http_resp_header(req, "Cache-Control", "no-cache");
    sl_http_resp_header(req, "X-Accel-Buffering", "no");
    sl_http_resp_start(req, 200, "text/event-stream", -1);
}

static int check_room(sl_http_req_t *req, size_t max_pending)
{
    if (sl_http_req_closed(req))
        return SL_ECLOSED;
    if (sl_http_resp_pending(req) > max_pending)
        return SL_ETOOBIG;
    return 0;
}

int sl_sse_send(sl_http_req_t *req, size_t max_pending, const char *id, const char *event,
                const char *data, size_t len)
{
    int err = check_room(req, max_pending);
    if (err)
        return err;
    char stack[SSE_STACK];
    int n = sl_sse_format(stack, sizeof stack, id, event, data, len);
    if (n < 0)
        return n;
    char *buf = stack;
    if ((size_t)n >= sizeof stack) {
        if (!(buf = malloc((size_t)n + 1)))
            return SL_ENOMEM;
        sl_sse_format(buf, (size_t)n + 1, id, event, data, len);
    }
    err = sl_http_resp_write(req, buf, (size_t)n);
    if (buf != stack)
        free(buf);
    return err;
}

int sl_sse_send_comment(sl_http_req_t *req, size_t max_pending, const char *text)
{
    int err = check_room(req, max_pending);
    if (err)
        return err;
    char buf[256];
    int n = sl_sse_format_comment(buf, sizeof buf, text);
    if (n < 0)
        return n;
    if ((size_t)n >= sizeof buf)
        return SL_ETOOBIG;
    return sl_http_resp_write(req, buf, (size_t)n);
}

int sl_sse_send_retry(sl_http_req_t *req, size_t max_pending, int ms)
{
    int err = check_room(req, max_pending);
    if (err)
        return err;
    if (ms < 0)
        return SL_EINVAL;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "retry: %d\n\n", ms);
    return sl_http_resp_write(req, buf, (size_t)n);
}
