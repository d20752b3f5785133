/*
 * fuzz_http.c — libFuzzer target for core/http.c: each input is everything one
 * client sends on one connection (then it half-closes). It runs through
 * sl_http__parse: the server's own parser callbacks, pipelining, body modes
 * and request bookkeeping, with no socket and no event loop (the socket path
 * is covered by tests/unit/test_http.c). Paths pick the body mode: /b*
 * buffers, /s* streams, /e echoes the path and query.
 * Run: fuzz_http -max_total_time=60 tests/fuzz/corpus/http
 */
#include "core/err.h"
#include "core/http.h"

#include <stdint.h>
#include <string.h>

static void body_cb(sl_http_req_t *req, int err, const char *body, size_t len, void *arg)
{
    (void)arg;
    if (err == SL_ETOOBIG)
        return; /* answered 413 by the server */
    if (err) {
        sl_http_resp_end(req);
        return;
    }
    sl_http_respond(req, 200, "text/plain", body, len);
}

static int data_cb(sl_http_req_t *req, const char *data, size_t len, void *arg)
{
    (void)arg;
    if (len > 0 && data[0] == '!') {
        sl_http_respond_error(req, 400, "bad_body", "abandoned", -1);
        return 1;
    }
    return 0;
}

static void end_cb(sl_http_req_t *req, int err, void *arg)
{
    (void)arg;
    if (err) {
        sl_http_resp_end(req);
        return;
    }
    sl_http_resp_start(req, 200, "text/plain", -1);
    sl_http_resp_write(req, "ok", 2);
    sl_http_resp_end(req);
}

static void handler(sl_http_req_t *req, void *arg)
{
    const char *path = sl_http_req_path(req);
    char buf[64];
    (void)arg;
    (void)sl_http_req_query_param(req, "a", buf, sizeof buf);
    (void)sl_http_req_header(req, "Host");
    if (strncmp(path, "/b", 2) == 0) {
        if (sl_http_req_read_body(req, 128, body_cb, NULL) != 0)
            sl_http_respond_error(req, 500, "internal_error", "read_body", -1);
    } else if (strncmp(path, "/s", 2) == 0) {
        if (sl_http_req_stream_body(req, data_cb, end_cb, NULL) != 0)
            sl_http_respond_error(req, 500, "internal_error", "stream_body", -1);
    } else if (strncmp(path, "/e", 2) == 0) {
        sl_http_resp_header(req, "X-Echo", sl_http_req_query(req));
        sl_http_respond(req, 200, "text/plain", path, strlen(path));
    } else {
        sl_http_respond_error(req, 404, "not_found", "no such endpoint", -1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sl_http_limits_t l;
    if (l.max_header_bytes == 0) {
        sl_http_limits_default(&l);
        l.max_header_bytes = 512; /* small, so inputs of -max_len reach 431 */
        l.max_headers = 16;
        l.max_body_bytes = 256; /* and the streamed body's 413 */
    }
    int n = sl_http__parse(&l, (const char *)data, size, handler, NULL);
    if (n < 0)
        __builtin_trap();
    return 0;
}
