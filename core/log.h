/*
 * log.h — one JSON object per line on stderr, one line per event.
 *
 * Each line: {"ts": RFC 3339 with ms, "level", "event", "role"?, ...fields}, in
 * that order. Fields are given as a jansson json_pack format, so values are
 * encoded by a real JSON encoder:
 * sl_log(SL_LOG_INFO, "http_request", "{s:s, s:i}", "path", p, "status", 200).
 * Callers add the ids they have (request_id, tenant_id, file_id, run_id, step).
 *
 * Lines are buffered per process (docs/internals/http.md, "Request path
 * costs"): info and debug lines go out at most SL_LOG_FLUSH_MS after they were
 * logged, or sooner when SL_LOG_BUF_MAX bytes are waiting; a warn or error
 * line goes out at once, with everything logged before it. Nothing is lost at
 * an orderly exit (atexit), across fork() (pthread_atfork flushes before it,
 * so a child never inherits lines to write twice), or at a crash that
 * sl_log_catch_fatal() covers. Every function here may be called from any
 * thread; lines from all threads keep the order in which sl_log returned.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stddef.h>

enum { SL_LOG_DEBUG = 0, SL_LOG_INFO = 1, SL_LOG_WARN = 2, SL_LOG_ERROR = 3 };

/* Bytes of lines waiting at most (a full buffer is written at once). */
#define SL_LOG_BUF_MAX (64 * 1024)
/* Milliseconds a waiting info or debug line waits at most. */
#define SL_LOG_FLUSH_MS 5
/* One line's bytes at most when built with sl_log_line_*: longer values are cut. */
#define SL_LOG_LINE_MAX (16 * 1024)

/** Sets the minimum level; "debug", "info", "warn" or "error". Returns SL_EINVAL otherwise. */
int sl_log_set_level(const char *name);

/**
 * Adds "role": role to every later line ("http", "engine", "supervisor" or
 * "inline"; docs/internals/engine.md). `role` is borrowed: a string literal.
 * NULL: no role field. Call before any thread logs.
 */
void sl_log_set_role(const char *role);

/** Returns 1 if level would be written. */
int sl_log_enabled(int level);

/**
 * Writes one line. `event` is a short snake_case name; `fmt` is a json_pack
 * format building an object (or NULL for no extra fields). Never fails loudly:
 * a bad format writes the event with a "log_error" field.
 */
void sl_log(int level, const char *event, const char *fmt, ...);

/**
 * Writes every buffered line now, in order, and returns once they are written
 * (or the write failed: there is nowhere left to report that). Called by
 * itself at exit and before fork(); call it before any other way out
 * (_exit, exec without fork) that must keep the lines.
 */
void sl_log_flush(void);

/**
 * Installs handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT that write
 * the buffered lines (without locks: best effort) and then hand the signal to
 * the handler that was there before (the default, or a sanitizer's). Call once
 * per process, after any sanitizer or crash reporter has installed its own.
 */
void sl_log_catch_fatal(void);

/*
 * A line built field by field, without jansson or malloc (for the request
 * log, one line per request). The caller owns the struct, usually on its
 * stack:
 *
 *   sl_log_line_t l;
 *   if (sl_log_line_begin(&l, SL_LOG_INFO, "http_request")) {
 *       sl_log_line_str(&l, "path", path);
 *       sl_log_line_int(&l, "status", 200);
 *       sl_log_line_end(&l);
 *   }
 *
 * Keys and string values are escaped as JSON strings; bytes that are not
 * well-formed UTF-8 become U+FFFD, so any input gives a valid line. A line
 * that would pass SL_LOG_LINE_MAX gets its last values cut (at a character
 * boundary) and a "log_truncated": true field.
 */
typedef struct sl_log_line_s {
    size_t len;
    int level;
    int truncated;
    char buf[SL_LOG_LINE_MAX];
} sl_log_line_t;

/**
 * Starts a line with ts, level, event (borrowed) and role. Returns 1 if it
 * was started; 0 if `level` is not enabled (then call nothing else on it).
 */
int sl_log_line_begin(sl_log_line_t *l, int level, const char *event);

/** Adds "key": "value" (both borrowed); a NULL value adds null. */
void sl_log_line_str(sl_log_line_t *l, const char *key, const char *value);

/** Adds "key": v. */
void sl_log_line_int(sl_log_line_t *l, const char *key, long long v);

/** Adds "key": v as a JSON number with a fraction; null if v is not finite. */
void sl_log_line_num(sl_log_line_t *l, const char *key, double v);

/** Ends the line and hands it to the buffer (as sl_log does). */
void sl_log_line_end(sl_log_line_t *l);

/**
 * Internal, for the unit tests: the buffer threshold in bytes (at most
 * SL_LOG_BUF_MAX; 0: the default) and the flush delay in milliseconds (0:
 * no buffering, each line is written at once; negative: the default).
 */
void sl_log__set_buffering(size_t max_bytes, int flush_ms);

#endif
