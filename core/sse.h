/*
 * sse.h — Server-Sent Events on top of core/http's streamed responses.
 *
 * Formatting follows the WHATWG HTML "Server-sent events" section: an event is
 * "id: ...\n", "event: ...\n", one "data: ...\n" line per line of the payload
 * (a payload line break, CR, LF or CRLF, starts a new data line), then a blank
 * line. A comment is ": text\n\n" (EventSource ignores it; it keeps idle
 * streams and proxies alive). An event without an id line leaves the
 * browser's last event id unchanged.
 *
 * The send helpers bound what a client may hold in memory: when more than
 * `max_pending` bytes are already queued for a client and not yet sent, they
 * refuse with SL_ETOOBIG and write nothing; the caller then drops the client
 * (it reconnects and replays with Last-Event-ID). So a stalled client costs at
 * most max_pending plus one event.
 */
#ifndef SL_SSE_H
#define SL_SSE_H

#include <stddef.h>

#include "core/http.h"

/**
 * Formats one event into out (at most cap bytes, NUL-terminated when cap > 0),
 * like snprintf: returns the length the whole event needs (without the NUL),
 * so a result >= cap means it was cut. `id` and `event` may be NULL (line
 * omitted) and must not contain CR or LF (SL_EINVAL); `data` (len bytes,
 * borrowed) may be empty (one empty data line). SL_ETOOBIG past INT_MAX.
 */
int sl_sse_format(char *out, size_t cap, const char *id, const char *event, const char *data,
                  size_t len);

/** Formats a comment ": text\n\n" (text without CR/LF, else SL_EINVAL); snprintf-like. */
int sl_sse_format_comment(char *out, size_t cap, const char *text);

/**
 * Starts the event-stream response on req (borrowed): 200, chunked,
 * Content-Type text/event-stream, Cache-Control no-cache, X-Accel-Buffering no.
 */
void sl_sse_start(sl_http_req_t *req);

/**
 * Formats and writes one event. 0; SL_ETOOBIG when more than max_pending bytes
 * were already waiting for the client (nothing written: drop it); SL_ECLOSED
 * if the client is gone; SL_EINVAL / SL_ENOMEM.
 */
int sl_sse_send(sl_http_req_t *req, size_t max_pending, const char *id, const char *event,
                const char *data, size_t len);

/** Writes a comment; errors as sl_sse_send. */
int sl_sse_send_comment(sl_http_req_t *req, size_t max_pending, const char *text);

/** Writes "retry: ms\n\n" (the browser's reconnection delay); errors as sl_sse_send. */
int sl_sse_send_retry(sl_http_req_t *req, size_t max_pending, int ms);

#endif
