/*
 * curl.h — non-blocking outbound HTTP on the event loop (libcurl multi-socket
 * API driven by libevent: the "hiperfifo" pattern). Tika, Textract, OpenAI and
 * S3 calls all go through here.
 *
 * One sl_curl_t per event loop. sl_curl_request() starts a transfer and returns
 * at once; the transfer's callback fires later, on the loop, exactly once, with
 * the response (status, headers, body) or an error. Every transfer has a total
 * and a connect timeout (defaults below when the caller gives none), a bounded
 * response size, no redirects unless asked, and only http/https.
 *
 * Requests can carry a body from memory (copied) or from a local file (read in
 * 64 KiB pread()s from the upload callback, on the loop thread; see
 * docs/internals/curl.md for that tradeoff). With `sigv4` credentials the
 * request is signed with AWS Signature V4 by core/sigv4.c: exactly the headers
 * that are sent are signed (never curl directives such as "Expect:").
 */
#ifndef SL_CURL_H
#define SL_CURL_H

#include "sigv4.h"

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#define SL_CURL_DEFAULT_TIMEOUT_MS 30000                 /* total, when opts.timeout_ms is 0 */
#define SL_CURL_DEFAULT_CONNECT_TIMEOUT_MS 5000          /* when opts.connect_timeout_ms is 0 */
#define SL_CURL_DEFAULT_MAX_RESPONSE (16u * 1024 * 1024) /* when opts.max_response_bytes is 0 */
#define SL_CURL_MAX_RESPONSE_LIMIT (1024u * 1024 * 1024) /* largest max_response_bytes accepted */
#define SL_CURL_MAX_REQ_HEADERS 64                       /* request headers accepted in opts */
#define SL_CURL_MAX_RESP_HEADERS 100              /* response headers kept; more is SL_ETOOBIG */
#define SL_CURL_MAX_RESP_HEADER_BYTES (64 * 1024) /* all response header names+values */
#define SL_CURL_FILE_CHUNK (64 * 1024)            /* largest pread() of a file body per callback */
#define SL_CURL_ERRMSG_MAX 256

typedef struct sl_curl_s sl_curl_t;
typedef struct sl_curl_xfer_s sl_curl_xfer_t;

/** What to send. Every pointer is borrowed for the duration of sl_curl_request() only. */
typedef struct sl_curl_req_opts_s {
    const char *method;         /* "GET" if NULL; an HTTP token of at most 16 chars */
    const char *url;            /* required; http:// or https:// */
    const char *const *headers; /* n_headers strings "Name: value" (copied) */
    size_t n_headers;           /* at most SL_CURL_MAX_REQ_HEADERS */
    const void *body;           /* body bytes (copied); NULL for none */
    size_t body_len;
    const char *body_path;            /* or: a local file sent as the body (opened at once,
                                         the path is not kept); not both body and body_path */
    long timeout_ms;                  /* whole transfer; 0 = SL_CURL_DEFAULT_TIMEOUT_MS */
    long connect_timeout_ms;          /* 0 = SL_CURL_DEFAULT_CONNECT_TIMEOUT_MS */
    size_t max_response_bytes;        /* body limit; 0 = SL_CURL_DEFAULT_MAX_RESPONSE;
                                         at most SL_CURL_MAX_RESPONSE_LIMIT */
    int max_redirects;                /* 0 = never follow redirects (the 3xx is the result) */
    const sl_sigv4_creds_t *sigv4;    /* NULL: unsigned; else signed with these (borrowed for
                                         the call only: the secret is not kept) */
    unsigned sigv4_flags;             /* SL_SIGV4_* (SL_SIGV4_S3 for S3) */
    const char *sigv4_payload_sha256; /* the body's hex SHA-256 (not checked: the caller
                                         hashed it, e.g. on the worker pool), or NULL: a
                                         memory body is hashed here, a body_path is sent
                                         UNSIGNED-PAYLOAD (S3 only) */
} sl_curl_req_opts_t;

/** One response header; both strings NUL-terminated, value trimmed. */
typedef struct sl_curl_header_s {
    const char *name;
    const char *value;
} sl_curl_header_t;

/**
 * A finished transfer. Everything in it is borrowed until the callback returns.
 * err is 0 whenever an HTTP response was received, whatever its status (a 503
 * is err 0, status 503). Otherwise:
 *   SL_ETIMEDOUT  the total or the connect timeout passed;
 *   SL_EUNAVAIL   the host could not be resolved or the connection was refused;
 *   SL_ETOOBIG    the body passed max_response_bytes, or the headers their limits;
 *   SL_ECANCELED  sl_curl_cancel() or sl_curl_free();
 *   SL_ENOMEM     out of memory;
 *   SL_EIO        anything else (reset, protocol error, file read error...).
 * errmsg says more (curl's error text) and is "" when err is 0. status,
 * headers and body hold what had arrived (status 0 if no response).
 */
typedef struct sl_curl_result_s {
    int err;
    const char *errmsg;
    long status;
    const sl_curl_header_t *headers; /* of the last response (after redirects / 100) */
    size_t n_headers;
    const char *body; /* NUL-terminated for convenience; never NULL */
    size_t body_len;
    uint64_t total_us; /* curl's total time */
} sl_curl_result_t;

/**
 * Called once per transfer, on the loop, never from inside the call that
 * started it. `res` is borrowed until it returns; the transfer is freed after
 * it returns (forget its sl_curl_xfer_t pointer here). It may start new
 * requests, cancel others, or free the sl_curl_t.
 */
typedef void (*sl_curl_cb)(const sl_curl_result_t *res, void *arg);

/**
 * Creates the multi handle for `base` (borrowed; must outlive it). Calls
 * curl_global_init() (reference counted by libcurl). Returns owned in *out;
 * SL_ENOMEM or SL_EIO.
 */
int sl_curl_new(struct event_base *base, sl_curl_t **out);

/**
 * At most `max` connections open to one host (0: no limit, libcurl's default).
 * Transfers past it wait inside libcurl for a connection, and their
 * CURLOPT_TIMEOUT counts that wait. 0, or SL_EINVAL.
 */
int sl_curl_max_host_connections(sl_curl_t *c, long max);

/**
 * Keeps up to `max` idle connections for reuse (CURLMOPT_MAXCONNECTS; at
 * least 1). Without it libcurl keeps four per transfer in progress, so after
 * a lull with few transfers it closed the idle connections a burst had
 * opened, and the next burst opened them again (bench/flow_bench.py: one
 * Tika call in nine on a new connection; over TLS, a handshake each).
 * 0, or SL_EINVAL.
 */
int sl_curl_max_connects(sl_curl_t *c, long max);

/**
 * Starts a transfer. On 0, *out (may be NULL if the caller never cancels) is
 * a handle borrowed until the callback returns, and cb will fire exactly once.
 * On error nothing started and cb never fires: SL_EINVAL (no url, not
 * http/https, bad method, too many headers, header without ':' or with CR/LF,
 * max_response_bytes above its limit, HEAD with a body, both body and
 * body_path; and with sigv4: anything sl_sigv4_sign() refuses (see sigv4.h:
 * uppercase method, printable-ASCII url, no Authorization/X-Amz-Date/... of
 * the caller's), a header that is a curl directive ("Name:" with no value, or
 * "Name;"), max_redirects > 0, a
 * body_path with neither sigv4_payload_sha256 nor SL_SIGV4_S3),
 * SL_ETOOBIG (a sigv4 limit), SL_ENOTFOUND / SL_EIO (body_path cannot be
 * opened), SL_ECLOSED (the sl_curl_t is being freed), SL_ENOMEM. `arg` is
 * borrowed.
 */
int sl_curl_request(sl_curl_t *c, const sl_curl_req_opts_t *o, sl_curl_cb cb, void *arg,
                    sl_curl_xfer_t **out);

/**
 * Cancels a transfer whose callback has not run yet: the callback then fires
 * once, on a later loop turn, with SL_ECANCELED (even if the response had
 * already arrived). A second cancel is a no-op. Must not be called after the
 * callback ran (the handle is gone by then). `x` is borrowed.
 */
void sl_curl_cancel(sl_curl_xfer_t *x);

/** Transfers whose callback has not run yet. */
size_t sl_curl_pending(const sl_curl_t *c);

/**
 * Cancels everything and frees. The callback of every transfer that has not
 * reported yet fires with SL_ECANCELED before sl_curl_free() returns (these
 * callbacks may not start requests: they get SL_ECLOSED). Called from inside a
 * transfer's callback, the free completes as soon as that callback returns.
 * Takes c; NULL is a no-op.
 */
void sl_curl_free(sl_curl_t *c);

#endif
