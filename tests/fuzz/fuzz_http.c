/*
 * fuzz_http.c — libFuzzer target for core/http.c: each input is everything one
 * client sends on one connection (then it half-closes). The connection is a
 * socketpair end handed to the server with sl_http_server_adopt, so the whole
 * path runs: bufferevent reads, http-parser, pausing, bodies, responses,
 * lingering close. Paths pick the body mode: /b* buffers, /s* streams.
 * Run: fuzz_http -max_total_time=60 tests/fuzz/corpus/http
 */
#include "core/err.h"
#include "core/http.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct event_base *g_base;
static sl_http_server_t *g_srv;
static int g_done;

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
        if (sl_http_req_read_body(req, 2048, body_cb, NULL) != 0)
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

static void cl_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void cl_write(struct bufferevent *bev, void *arg)
{
    (void)arg;
    shutdown(bufferevent_getfd(bev), SHUT_WR); /* all sent: half-close */
}

static void cl_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        g_done = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (!g_base) {
        sl_http_limits_t l;
        sl_http_limits_default(&l);
        l.max_header_bytes = 4096;
        l.max_headers = 16;
        l.header_timeout_ms = 200;
        l.idle_timeout_ms = 200;
        l.body_timeout_ms = 200;
        g_base = event_base_new();
        if (!g_base || sl_http_server_new(g_base, "127.0.0.1:0", &l, handler, NULL, &g_srv) != 0)
            return 0;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return 0;
    if (sl_http_server_adopt(g_srv, sv[0], "fuzz") != 0) {
        close(sv[1]);
        return 0;
    }
    struct bufferevent *cl = bufferevent_socket_new(g_base, sv[1], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(cl, cl_read, cl_write, cl_event, NULL);
    bufferevent_enable(cl, EV_READ | EV_WRITE);
    g_done = 0;
    if (size > 0)
        bufferevent_write(cl, data, size);
    else
        shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 100000 && !g_done; i++)
        event_base_loop(g_base, EVLOOP_ONCE);
    bufferevent_free(cl);
    /* Let the server notice and free the connection. */
    for (int i = 0; i < 10000 && sl_http_server_connections(g_srv) > 0; i++)
        event_base_loop(g_base, EVLOOP_ONCE);
    for (int i = 0; i < 4; i++)
        event_base_loop(g_base, EVLOOP_NONBLOCK);
    return 0;
}
