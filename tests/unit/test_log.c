/*
 * test_log.c — unit tests for core/log.c: stderr is pointed at a temporary
 * file with dup2, each sl_log call must add exactly one line (once flushed:
 * the buffering itself is test_logbuf.c's), and each line is parsed back with
 * jansson.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/err.h"
#include "core/log.h"

#define CHECK_STREAM stdout /* failure lines must not land in the captured stderr */
#include "check.h"

static int cap_fd = -1;   /* the temp file stderr points at */
static int saved_fd = -1; /* the real stderr */
static char cap_path[] = "/tmp/test_log_XXXXXX";

static void capture_begin(void)
{
    fflush(stderr);
    cap_fd = mkstemp(cap_path);
    saved_fd = dup(STDERR_FILENO);
    dup2(cap_fd, STDERR_FILENO);
}

static void capture_end(void)
{
    dup2(saved_fd, STDERR_FILENO);
    close(saved_fd);
    close(cap_fd);
    unlink(cap_path);
}

/* Everything logged since the last call: truncates the capture file. */
static char buf[65536];
static size_t take(void)
{
    sl_log_flush(); /* info lines wait in the buffer (test_logbuf.c tests that) */
    ssize_t n = pread(cap_fd, buf, sizeof(buf) - 1, 0);
    if (n < 0)
        n = 0;
    buf[n] = '\0';
    if (ftruncate(cap_fd, 0) != 0 || lseek(STDERR_FILENO, 0, SEEK_SET) < 0)
        n = 0;
    return (size_t)n;
}

/* Takes the captured text, expects exactly one line, returns it parsed (owned). */
static json_t *one_line(int line)
{
    size_t n = take();
    json_error_t e;
    json_t *j;
    char *nl = memchr(buf, '\n', n);

    if (n == 0 || nl == NULL || nl != buf + n - 1) {
        failed++;
        fprintf(stdout, "%s:%d: expected one line, got %zu bytes: %s\n", __FILE__, line, n, buf);
        return NULL;
    }
    j = json_loadb(buf, n - 1, 0, &e);
    if (j == NULL || !json_is_object(j)) {
        failed++;
        fprintf(stdout, "%s:%d: not a JSON object: %s (%s)\n", __FILE__, line, buf, e.text);
        json_decref(j);
        return NULL;
    }
    passed++;
    return j;
}
#define ONE_LINE() one_line(__LINE__)

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static int ts_ok(const char *ts)
{
    /* 2026-11-24T02:19:30.123Z */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (ts == NULL || strlen(ts) != sizeof(shape) - 1)
        return 0;
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'd' ? (ts[i] < '0' || ts[i] > '9') : ts[i] != shape[i])
            return 0;
    }
    return 1;
}

static void test_basic(void)
{
    json_t *j;
    const char *p = "/up\"load\n";

    sl_log(SL_LOG_INFO, "http_request", "{s:s, s:i, s:b, s:f}", "path", p, "status", 200, "ok",
           1, "ms", 1.5);
    j = ONE_LINE();
    if (j != NULL) {
        const char *key;
        json_t *v;
        int i = 0;

        CHECK(ts_ok(str(j, "ts")));
        CHECK(str(j, "level") != NULL && strcmp(str(j, "level"), "info") == 0);
        CHECK(str(j, "event") != NULL && strcmp(str(j, "event"), "http_request") == 0);
        CHECK(str(j, "path") != NULL && strcmp(str(j, "path"), p) == 0);
        CHECK(json_integer_value(json_object_get(j, "status")) == 200);
        CHECK(json_is_true(json_object_get(j, "ok")));
        CHECK(json_real_value(json_object_get(j, "ms")) == 1.5);
        CHECK(json_object_size(j) == 7);
        /* ts, level, event come first. */
        json_object_foreach(j, key, v)
        {
            const char *want[] = {"ts", "level", "event"};
            (void)v;
            if (i < 3)
                CHECK(strcmp(key, want[i]) == 0);
            i++;
        }
        json_decref(j);
    }

    sl_log(SL_LOG_WARN, "bare", NULL);
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(json_object_size(j) == 3);
        CHECK(strcmp(str(j, "level"), "warn") == 0);
        CHECK(strcmp(str(j, "event"), "bare") == 0);
        json_decref(j);
    }

    /* A field cannot override the schema's own keys. */
    sl_log(SL_LOG_ERROR, "clash", "{s:s, s:s}", "event", "other", "level", "debug");
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(strcmp(str(j, "event"), "clash") == 0);
        CHECK(strcmp(str(j, "level"), "error") == 0);
        json_decref(j);
    }

    /* Nested values and jansson-owned ("o") values. */
    sl_log(SL_LOG_INFO, "nested", "{s:{s:i}, s:o}", "a", "b", 2, "c", json_pack("[i,i]", 1, 2));
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(json_integer_value(json_object_get(json_object_get(j, "a"), "b")) == 2);
        CHECK(json_array_size(json_object_get(j, "c")) == 2);
        json_decref(j);
    }
}

static void test_bad_format(void)
{
    json_t *j;

    /* A NULL string for "s" is an error in json_pack. */
    sl_log(SL_LOG_INFO, "bad_null", "{s:s}", "path", (const char *)NULL);
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(strcmp(str(j, "event"), "bad_null") == 0);
        CHECK(str(j, "log_error") != NULL);
        CHECK(json_object_get(j, "path") == NULL);
        json_decref(j);
    }

    sl_log(SL_LOG_INFO, "bad_fmt", "{s:q}", "x", 1);
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(strcmp(str(j, "event"), "bad_fmt") == 0);
        CHECK(str(j, "log_error") != NULL);
        json_decref(j);
    }

    sl_log(SL_LOG_INFO, "not_object", "[i]", 1);
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(str(j, "log_error") != NULL);
        json_decref(j);
    }

    /* Invalid UTF-8 in a field value: the line is still valid JSON. */
    sl_log(SL_LOG_INFO, "bad_utf8", "{s:s}", "v", "\xff\xfe");
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(strcmp(str(j, "event"), "bad_utf8") == 0);
        CHECK(str(j, "log_error") != NULL);
        json_decref(j);
    }
}

static void test_levels(void)
{
    json_t *j;

    CHECK(sl_log_enabled(SL_LOG_INFO) == 1);
    CHECK(sl_log_enabled(SL_LOG_DEBUG) == 0);
    sl_log(SL_LOG_DEBUG, "hidden", NULL);
    CHECK(take() == 0);

    CHECK(sl_log_set_level("debug") == 0);
    CHECK(sl_log_enabled(SL_LOG_DEBUG) == 1);
    sl_log(SL_LOG_DEBUG, "shown", "{s:i}", "n", 1);
    j = ONE_LINE();
    if (j != NULL) {
        CHECK(strcmp(str(j, "level"), "debug") == 0);
        json_decref(j);
    }

    CHECK(sl_log_set_level("error") == 0);
    sl_log(SL_LOG_WARN, "hidden", NULL);
    sl_log(SL_LOG_INFO, "hidden", NULL);
    CHECK(take() == 0);
    sl_log(SL_LOG_ERROR, "shown", NULL);
    j = ONE_LINE();
    json_decref(j);

    CHECK(sl_log_set_level("verbose") == SL_EINVAL);
    CHECK(sl_log_set_level(NULL) == SL_EINVAL);
    CHECK(sl_log_enabled(SL_LOG_WARN) == 0); /* unchanged by the bad calls */
    CHECK(sl_log_enabled(42) == 0);
    sl_log(42, "bogus_level", NULL);
    CHECK(take() == 0);

    CHECK(sl_log_set_level("warn") == 0);
    CHECK(sl_log_enabled(SL_LOG_WARN) == 1 && sl_log_enabled(SL_LOG_INFO) == 0);
    CHECK(sl_log_set_level("info") == 0);
}

static void test_many_lines(void)
{
    size_t n;
    int lines = 0;

    for (int i = 0; i < 100; i++)
        sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", i);
    n = take();
    for (size_t k = 0; k < n; k++)
        if (buf[k] == '\n')
            lines++;
    CHECK(lines == 100);
}

int main(void)
{
    capture_begin();
    test_basic();
    test_bad_format();
    test_levels();
    test_many_lines();
    capture_end();
    return check_summary();
}
