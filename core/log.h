/*
 * log.h — one JSON object per line on stderr, one line per event.
 *
 * Each line: {"ts": RFC 3339 with ms, "level", "event", ...fields}. Fields are
 * given as a jansson json_pack format, so values are encoded by a real JSON
 * encoder: sl_log(SL_LOG_INFO, "http_request", "{s:s, s:i}", "path", p, "status", 200).
 * Callers add the ids they have (request_id, tenant_id, file_id, run_id, step).
 */
#ifndef SL_LOG_H
#define SL_LOG_H

enum { SL_LOG_DEBUG = 0, SL_LOG_INFO = 1, SL_LOG_WARN = 2, SL_LOG_ERROR = 3 };

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

#endif
