/*
 * http.h — the HTTP/1.1 server: libevent bufferevents + Debian's http-parser.
 *
 * One sl_http_server_t listens on one address. Each connection parses requests
 * with http-parser (content-length and chunked bodies, keep-alive, pipelining:
 * requests on one connection are answered strictly in order, one at a time —
 * the parser is paused while a request is being handled).
 *
 * The server knows nothing of routes' meaning: when a request's headers are
 * complete it calls the application's handler once. The handler chooses what
 * happens to the body:
 *   - sl_http_req_read_body(): the server buffers the whole body (up to a limit,
 *     else it answers 413 itself) and calls a callback when it is complete;
 *   - sl_http_req_stream_body(): each decoded body chunk is passed on as it
 *     arrives; the handler applies backpressure with sl_http_req_pause() /
 *     sl_http_req_resume() (the socket is not read while paused);
 *   - neither: the handler answers at once; any unread body is discarded (or
 *     the connection is closed after the response if the body is large).
 *
 * Lifetime: a request stays valid from the handler call until the handler has
 * finished its response (sl_http_respond*, or sl_http_resp_end), even if the
 * client went away meanwhile — writes to a gone client are discarded. So an
 * async operation (a database query) may keep the request pointer and respond
 * from its callback. A handler must always finish every request exactly once.
 * If the client goes away before that, the on_close callback (if set) fires
 * once, on a later loop turn; the handler still has to finish the request.
 *
 * Limits (header bytes, buffered body bytes, idle / header / body timeouts,
 * connection count) come from sl_http_limits_t; a breach gets a JSON error as
 * API.md says and the connection closes.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <event2/event.h>

typedef struct sl_http_server_s sl_http_server_t;
typedef struct sl_http_req_s sl_http_req_t;

typedef struct sl_http_limits_s {
    size_t max_header_bytes;     /* request line + headers; 431 past it (default 64 KiB) */
    size_t max_headers;          /* header count (default 100) */
    size_t max_connections;      /* accepted connections at once; past it new ones get 503 */
    size_t max_connections_per_ip; /* of those, from one address (IPv4, or IPv6 /64); past it
                                      new ones get 429 and are closed; 0 = no limit (default) */
    int header_timeout_ms;       /* time to receive a full header block (default 30 s) */
    int idle_timeout_ms;         /* keep-alive idle time between requests (default 60 s) */
    int body_timeout_ms;         /* max gap between two body reads (default 60 s) */
    size_t read_high_watermark;  /* bytes buffered from the socket before reads stop (default 256 KiB) */
    uint64_t max_body_bytes;     /* body bytes of any one request, counted as they arrive (after
                                    de-chunking, so chunked bodies too); 0 = no limit (default) */
} sl_http_limits_t;

/** Fills *l with the defaults listed above. */
void sl_http_limits_default(sl_http_limits_t *l);

/**
 * The application's entry point: called once per request when its headers are
 * complete. `req` is borrowed until the handler finishes the response (see the
 * lifetime rules above). `arg` is the pointer given to sl_http_server_new.
 */
typedef void (*sl_http_handler_cb)(sl_http_req_t *req, void *arg);

/**
 * Creates a server bound to `listen_addr` ("host:port", port 0 picks a free
 * port; IPv6 as "[::1]:8080"), with SO_REUSEADDR and SO_REUSEPORT. `base` and
 * `listen_addr` are borrowed. Returns owned in *out, or a negative SL_E* code.
 * `limits` is copied; NULL or a zero field means the default.
 */
int sl_http_server_new(struct event_base *base, const char *listen_addr,
                       const sl_http_limits_t *limits, sl_http_handler_cb handler, void *arg,
                       sl_http_server_t **out);

/**
 * Called once per finished request (after the response was queued or the
 * request was abandoned): for access logs and metrics. `req` is borrowed for
 * the call; duration_s is from the end of headers to the finish.
 */
typedef void (*sl_http_finish_cb)(sl_http_req_t *req, int status, double duration_s, void *arg);
void sl_http_server_on_finish(sl_http_server_t *srv, sl_http_finish_cb cb, void *arg);

/** The bound port (useful when listen_addr asked for port 0). */
int sl_http_server_port(const sl_http_server_t *srv);

/**
 * Serves an already connected socket (a socketpair end, an inherited fd) as if
 * it had been accepted. Takes fd (closed on failure); `peer` is borrowed and
 * copied (NULL means "local"). 0 or a negative SL_E* code.
 */
int sl_http_server_adopt(sl_http_server_t *srv, evutil_socket_t fd, const char *peer);

/** Number of open connections right now (including ones being told 503). */
size_t sl_http_server_connections(const sl_http_server_t *srv);

/**
 * Stops accepting, closes idle connections, and frees the server once in-flight
 * requests finish. Pending handlers still get to finish their requests.
 */
void sl_http_server_free(sl_http_server_t *srv);

/*
 * A graceful stop in two steps (issue 12, docs/deploy.md): sl_http_server_drain
 * at SIGTERM, sl_http_server_cut at the drain deadline; the caller waits for
 * sl_http_server_connections() to reach 0 (every answer sent, every socket
 * closed), then calls sl_http_server_free.
 */

/**
 * Stops accepting (the listening socket is closed: new connections are
 * refused), closes idle keep-alive connections, and makes every other
 * connection close after its current response. Requests in flight (an
 * upload's body, an SSE stream) go on. Idempotent; the server stays valid.
 */
void sl_http_server_drain(sl_http_server_t *srv);

/** True once sl_http_server_drain (or _free) ran. */
int sl_http_server_draining(const sl_http_server_t *srv);

/**
 * The drain deadline: closes every connection whose request body is still
 * arriving (its handler sees the client go away: SL_ECLOSED, so an upload
 * throws away what it wrote and is never answered) or whose request is not
 * complete yet. A complete request keeps its connection until it is answered.
 * Returns how many connections were closed.
 */
size_t sl_http_server_cut(sl_http_server_t *srv);

/* ---- request accessors; returned strings are borrowed from req ---- */

/** "GET", "POST", ... */
const char *sl_http_req_method(const sl_http_req_t *req);
/** The path, percent-decoding not applied, without the query string. */
const char *sl_http_req_path(const sl_http_req_t *req);
/** The raw query string without '?', or "" . */
const char *sl_http_req_query(const sl_http_req_t *req);
/**
 * The query parameter `name`, percent-decoded, copied into buf (NUL-terminated).
 * Returns its length, or -1 if absent or longer than buflen-1.
 */
int sl_http_req_query_param(const sl_http_req_t *req, const char *name, char *buf, size_t buflen);
/** The first header named `name` (case-insensitive), or NULL. */
const char *sl_http_req_header(const sl_http_req_t *req, const char *name);
/**
 * The token of an `Authorization: Bearer <token>` header value (`value`
 * borrowed, may be NULL), copied NUL-terminated into out. The one parser of
 * that header: authentication and the rate limiter both use it, so a key that
 * authenticates is always the key that is counted. What is accepted:
 *   - blanks (SP, HTAB) around the whole value are ignored (they are OWS, not
 *     part of a field value: RFC 9110 §5.5);
 *   - the scheme "Bearer", case-insensitive (RFC 7235 §2.1);
 *   - then one or more SP — and only SP: `credentials = auth-scheme
 *     [ 1*SP token68 ]` (RFC 7235 §2.1, RFC 6750 §2.1), so "Bearer<TAB>key" is
 *     refused;
 *   - then the token: one or more visible ASCII characters (0x21-0x7E), no
 *     blank inside. That is a superset of RFC 6750's b64token, so configured
 *     admin keys with other punctuation still work.
 * Returns the token's length, or -1 when value is NULL, another scheme,
 * malformed, or the token does not fit in outlen - 1 bytes (out is then "").
 */
int sl_http_bearer_token(const char *value, char *out, size_t outlen);
/** Content-Length if given, else -1 (chunked or no body). */
int64_t sl_http_req_content_length(const sl_http_req_t *req);
/** True if the request carries a body (content-length > 0 or chunked). */
int sl_http_req_has_body(const sl_http_req_t *req);
/** The peer address as text ("127.0.0.1:5555"). */
const char *sl_http_req_peer(const sl_http_req_t *req);
/** A unique id for the request (also sent as X-Request-Id), for logs. */
const char *sl_http_req_id(const sl_http_req_t *req);
/** Body bytes received so far (after de-chunking). */
uint64_t sl_http_req_body_bytes(const sl_http_req_t *req);
/** The route name set by the application for logs/metrics ("files_get"), or NULL. */
void sl_http_req_set_route(sl_http_req_t *req, const char *route_static);
const char *sl_http_req_route(const sl_http_req_t *req);
/** True once the client has gone away. */
int sl_http_req_closed(const sl_http_req_t *req);

/**
 * Per-request slot for the handler's own state; the server never touches it.
 * The pointer is owned by the handler (free it before finishing the request).
 */
void sl_http_req_set_data(sl_http_req_t *req, void *data);
void *sl_http_req_data(const sl_http_req_t *req);

/**
 * Called once, on a later loop turn, when the client goes away (connection
 * reset, timeout) before the request was finished. The handler must still
 * finish the request (typically by calling sl_http_resp_end or sl_http_respond).
 */
typedef void (*sl_http_close_cb)(sl_http_req_t *req, void *arg);
void sl_http_req_on_close(sl_http_req_t *req, sl_http_close_cb cb, void *arg);

/* ---- request bodies ---- */

/**
 * Buffers the whole body, then calls cb with it. `body` is borrowed until cb
 * returns; it is NUL-terminated (the NUL is not counted in len). The server
 * answers two errors itself, and cb then gets them after the request is
 * finished (the handler must NOT respond; `req` is valid only during cb):
 *   - SL_ETOOBIG: the body exceeds max_bytes (or limits.max_body_bytes):
 *     413 "payload_too_large";
 *   - SL_EPROTO: malformed body framing (a bad chunk): 400 "bad_request".
 * On client abort or body timeout cb gets SL_ECLOSED / SL_ETIMEDOUT and the
 * handler finishes the request (its response is discarded).
 */
typedef void (*sl_http_body_cb)(sl_http_req_t *req, int err, const char *body, size_t len,
                                void *arg);
int sl_http_req_read_body(sl_http_req_t *req, size_t max_bytes, sl_http_body_cb cb, void *arg);

/**
 * Streams the body. data_cb gets each decoded chunk (borrowed until it
 * returns); end_cb fires once: err = 0 when the body is complete, SL_ECLOSED if
 * the client went away or the body was truncated, SL_ETIMEDOUT on a stalled
 * body, SL_EPROTO on malformed framing, SL_ETOOBIG when the body passed
 * limits.max_body_bytes (nothing past the limit reaches data_cb; the handler
 * answers 413). After end_cb the handler finishes the request; after an error
 * the connection closes once it has answered. If data_cb returns non-zero the
 * body is abandoned: end_cb is not called and the handler is expected to
 * respond (the connection will close).
 */
typedef int (*sl_http_data_cb)(sl_http_req_t *req, const char *data, size_t len, void *arg);
typedef void (*sl_http_end_cb)(sl_http_req_t *req, int err, void *arg);
int sl_http_req_stream_body(sl_http_req_t *req, sl_http_data_cb data_cb, sl_http_end_cb end_cb,
                            void *arg);

/** Stops reading the socket (backpressure). Idempotent. Timeouts are suspended. */
void sl_http_req_pause(sl_http_req_t *req);
/** Resumes reading; buffered data is delivered on a later loop turn, never inside this call. */
void sl_http_req_resume(sl_http_req_t *req);

/* ---- responses ---- */

/**
 * Adds a response header (copied). Call before sl_http_respond / resp_start.
 * Content-Length, Connection, Date and X-Request-Id are set by the server.
 */
void sl_http_resp_header(sl_http_req_t *req, const char *name, const char *value);

/** A complete response; `body` is copied. This finishes the request. */
void sl_http_respond(sl_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len);

/**
 * The API.md error: {"error": {"code": code, "message": message}}. Finishes the
 * request. For 429 and 503 pass retry_after_s >= 0 to send Retry-After
 * (ignored when negative).
 */
void sl_http_respond_error(sl_http_req_t *req, int status, const char *code, const char *message,
                           int retry_after_s);

/**
 * Starts a streamed response (chunked transfer encoding, or raw with
 * `content_length` >= 0). Then sl_http_resp_write zero or more times, then
 * sl_http_resp_end, which finishes the request.
 */
void sl_http_resp_start(sl_http_req_t *req, int status, const char *content_type,
                        int64_t content_length);
/** Queues data (copied). Returns 0, or SL_ECLOSED if the client is gone. */
int sl_http_resp_write(sl_http_req_t *req, const void *data, size_t len);
/** Bytes queued for the client and not yet sent (for slow-client limits). */
size_t sl_http_resp_pending(const sl_http_req_t *req);
/**
 * Called when the pending output drops to zero (after sl_http_resp_write),
 * for streaming large bodies with backpressure. Set cb NULL to stop.
 */
typedef void (*sl_http_drain_cb)(sl_http_req_t *req, void *arg);
void sl_http_resp_on_drain(sl_http_req_t *req, sl_http_drain_cb cb, void *arg);
/** Finishes a streamed response. */
void sl_http_resp_end(sl_http_req_t *req);

/** The status the request was (or is being) answered with, 0 if none yet. */
int sl_http_req_status(const sl_http_req_t *req);

/* ---- routing ---- */

/**
 * A tiny router: patterns like "/v1/files/{id}/events"; `{name}` matches one
 * non-empty path segment. Method "*" matches any method; a "GET" route also
 * answers HEAD (the server sends the headers and no body).
 */
typedef struct sl_http_router_s sl_http_router_t;
typedef struct sl_http_params_s {
    int n;
    const char *names[8];
    char values[8][128];
} sl_http_params_t;
typedef void (*sl_http_route_cb)(sl_http_req_t *req, const sl_http_params_t *params, void *arg);

/** Returns an owned router or NULL. */
sl_http_router_t *sl_http_router_new(void);
void sl_http_router_free(sl_http_router_t *r);
/** Adds a route; `method` and `pattern` are copied. `name` labels metrics ("files_get"). */
int sl_http_router_add(sl_http_router_t *r, const char *method, const char *pattern,
                       const char *name, sl_http_route_cb cb, void *arg);
/**
 * Called by sl_http_router_each for one route: its method, pattern and name
 * (borrowed from the router; name may be NULL). Nonzero stops the walk.
 */
typedef int (*sl_http_route_each_cb)(const char *method, const char *pattern, const char *name,
                                     void *arg);
/**
 * Calls cb for every route of r in the order they were added (so a caller can
 * list what the server serves: `sluice routes`, the OpenAPI check). Returns 0,
 * or the first nonzero value cb returned.
 */
int sl_http_router_each(const sl_http_router_t *r, sl_http_route_each_cb cb, void *arg);
/**
 * Finds the route for req. params->names borrow from the router. Returns 1 and fills cb, arg, params and name if one
 * matches; 0 if no path matches (404); -1 if the path matches but not the
 * method (405).
 */
int sl_http_router_match(const sl_http_router_t *r, const char *method, const char *path,
                         sl_http_route_cb *cb, void **arg, sl_http_params_t *params,
                         const char **name);

/**
 * Internal, for the fuzz targets and unit tests: runs the request parser over
 * `data` (borrowed) as if one client had sent it on one connection and then
 * half-closed, with no socket, no event loop and no server: the same parser
 * callbacks, body delivery and request bookkeeping as sl_http_server_adopt,
 * driven synchronously. `handler` is called as a server's would be; it must
 * finish each request synchronously or from the body callbacks (a request
 * still unfinished at the end of the input is ended for it). Responses are
 * discarded. `limits` may be NULL (defaults; zero fields mean the default).
 * Returns the number of requests finished.
 */
int sl_http__parse(const sl_http_limits_t *limits, const char *data, size_t len,
                   sl_http_handler_cb handler, void *arg);

/* Internal, for the unit tests: the Date header's per-second cache. */
typedef struct sl_http_date_s {
    time_t sec;     /* the second `text` shows */
    size_t len;     /* 0: nothing cached yet */
    char text[40];  /* an IMF-fixdate (RFC 7231 7.1.1.1) */
} sl_http_date_t;

/**
 * Internal, for the unit tests: the Date value for `now` (seconds since the
 * epoch), formatted only when `now` is not the second `d` (zeroed before
 * first use) already holds. Returns d->text, or a constant date if `now`
 * cannot be shown and nothing is cached.
 */
const char *sl_http__date(sl_http_date_t *d, time_t now);

#endif
