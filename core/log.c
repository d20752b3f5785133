/*
 * log.c — structured logging: one JSON object per line on stderr.
 *
 * A line is built whole in memory (jansson encodes every value, so a path with
 * a quote or a newline cannot break the line) and handed to a single write(2).
 * Sluice runs several worker processes on one stderr; lines up to PIPE_BUF
 * bytes are atomic on a pipe, and one write per line is the best we can do for
 * longer ones. No stdio buffer sits in between, so nothing is lost on a crash
 * and nothing interleaves mid-line.
 */
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/err.h"

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Written from the loop thread at start; read from any thread (an int load). */
static int min_level = SL_LOG_INFO;
/* Set once per process at start (after fork), before any thread logs. */
static const char *log_role;

void sl_log_set_role(const char *role)
{
    log_role = role;
}

int sl_log_set_level(const char *name)
{
    if (name == NULL)
        return SL_EINVAL;
    for (int i = SL_LOG_DEBUG; i <= SL_LOG_ERROR; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            min_level = i;
            return 0;
        }
    }
    return SL_EINVAL;
}

int sl_log_enabled(int level)
{
    return level >= min_level && level >= SL_LOG_DEBUG && level <= SL_LOG_ERROR;
}

/* RFC 3339 UTC with milliseconds: 2026-11-24T02:19:30.123Z */
static void format_ts(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    size_t n;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void write_all(const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a logging failure */
        }
        p += w;
        len -= (size_t)w;
    }
}

void sl_log(int level, const char *event, const char *fmt, ...)
{
    static const char oom_line[] = "{\"level\":\"error\",\"event\":\"log_out_of_memory\"}\n";
    char ts[40];
    json_t *obj, *fields = NULL, *ev;
    json_error_t jerr;
    char *line = NULL;
    size_t len;
    va_list ap;

    if (!sl_log_enabled(level))
        return;
    format_ts(ts, sizeof(ts));
    if ((obj = json_object()) == NULL)
        goto fail;
    /* An event that is not valid UTF-8 is a bug in the caller; still log the line. */
    ev = json_string(event != NULL ? event : "unknown");
    if (ev == NULL)
        ev = json_string("invalid_event_name");
    if (json_object_set_new(obj, "ts", json_string(ts)) < 0 ||
        json_object_set_new(obj, "level", json_string(level_names[level])) < 0 ||
        json_object_set_new(obj, "event", ev) < 0)
        goto fail;
    if (log_role != NULL && json_object_set_new(obj, "role", json_string(log_role)) < 0)
        goto fail;

    if (fmt != NULL) {
        va_start(ap, fmt);
        fields = json_vpack_ex(&jerr, 0, fmt, ap);
        va_end(ap);
        if (fields == NULL) {
            json_object_set_new(obj, "log_error", json_string(jerr.text));
        } else if (!json_is_object(fields)) {
            json_object_set_new(obj, "log_error", json_string("fields are not a JSON object"));
        } else {
            /* Fields never override ts/level/event: those three are the schema. */
            json_object_update_missing(obj, fields);
        }
    }

    /* Measure, then encode straight into a buffer with room for the newline. */
    if ((len = json_dumpb(obj, NULL, 0, JSON_COMPACT)) == 0)
        goto fail;
    if ((line = malloc(len + 1)) == NULL || json_dumpb(obj, line, len, JSON_COMPACT) != len)
        goto fail;
    line[len] = '\n';
    write_all(line, len + 1);
    goto out;

fail:
    write_all(oom_line, sizeof(oom_line) - 1);
out:
    free(line);
    json_decref(fields);
    json_decref(obj);
}
