/*
 * test_logbuf.c — the log buffer of core/log.c and its line writer
 * (sl_log_line_*): lines wait until the flush delay, a full buffer, a warn
 * line or sl_log_flush; they keep their order across threads; none is lost
 * at exit, at a crash (sl_log_catch_fatal) or written twice across fork();
 * and the writer's lines are valid JSON whatever the bytes given.
 * stderr is pointed at a temporary file with dup2 and read back.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/log.h"

#define CHECK_STREAM stdout /* failure lines must not land in the captured stderr */
#include "check.h"

static int cap_fd = -1;
static int saved_fd = -1;
static char cap_path[] = "/tmp/test_logbuf_XXXXXX";
static char buf[4 * 1024 * 1024];

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

/* What the file holds now (no flush): its lines that are log lines. A
 * sanitizer build's forked child may add its own notes at exit (LSan: "Running
 * thread ... was not suspended"); those are left out. */
static size_t peek(void)
{
    ssize_t n = pread(cap_fd, buf, sizeof(buf) - 1, 0);
    size_t in = 0, out = 0;
    if (n < 0)
        n = 0;
    while (in < (size_t)n) {
        char *nl = memchr(buf + in, '\n', (size_t)n - in);
        size_t len = nl ? (size_t)(nl - (buf + in)) + 1 : (size_t)n - in;
        if (buf[in] == '{' || !nl) {
            memmove(buf + out, buf + in, len);
            out += len;
        }
        in += len;
    }
    buf[out] = '\0';
    return out;
}

/* Empties the file (after a flush, so nothing of the last test is left). */
static void reset(void)
{
    sl_log_flush();
    if (ftruncate(cap_fd, 0) != 0 || lseek(STDERR_FILENO, 0, SEEK_SET) < 0)
        fprintf(stdout, "reset failed: %s\n", strerror(errno));
}

static int count_lines(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\n')
            k++;
    return k;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Each line of buf[0..n) parsed; its "i" field must be 0, 1, 2, ... in order.
 * Returns the number of lines that did. */
static int lines_in_order(size_t n)
{
    int next = 0;
    char *p = buf, *end = buf + n;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        json_error_t e;
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, &e);
        if (!j || json_integer_value(json_object_get(j, "i")) != next) {
            fprintf(stdout, "line %d out of order or invalid: %.*s\n", next, (int)(nl - p), p);
            json_decref(j);
            return next;
        }
        json_decref(j);
        next++;
        p = nl + 1;
    }
    return next;
}

static void test_explicit_flush(void)
{
    reset();
    sl_log__set_buffering(0, 10000);
    for (int i = 0; i < 100; i++)
        sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", i);
    CHECK_EQ(peek(), 0); /* all waiting: no write per line */
    sl_log_flush();
    size_t n = peek();
    CHECK_EQ(count_lines(buf, n), 100);
    CHECK_EQ(lines_in_order(n), 100);
}

static void test_threshold(void)
{
    reset();
    sl_log__set_buffering(4096, 10000);
    int i = 0;
    size_t n = 0;
    /* ~60 bytes a line: the buffer fills after some 70 lines, long before 10 s. */
    for (; i < 1000 && (n = peek()) == 0; i++)
        sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", i);
    CHECK(n > 0 && n <= 4096);
    CHECK(i > 10 && i < 1000);
    CHECK(buf[n - 1] == '\n');      /* whole lines only */
    CHECK(count_lines(buf, n) < i); /* the line that did not fit still waits */
    sl_log_flush();
    n = peek();
    CHECK_EQ(count_lines(buf, n), i);
    CHECK_EQ(lines_in_order(n), i);
    sl_log__set_buffering(0, -1);
}

static void test_timer(void)
{
    /* A long delay first, so "not yet written" cannot be a scheduling accident. */
    reset();
    sl_log__set_buffering(0, 300);
    double t0 = now_ms();
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 0);
    CHECK_EQ(peek(), 0);
    while (peek() == 0 && now_ms() - t0 < 5000)
        sleep_ms(2);
    double waited = now_ms() - t0;
    CHECK(waited >= 250 && waited < 5000);
    CHECK_EQ(count_lines(buf, peek()), 1);

    /* The shipped delay: within milliseconds (generous bound: a loaded machine). */
    reset();
    sl_log__set_buffering(0, -1);
    t0 = now_ms();
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 0);
    while (peek() == 0 && now_ms() - t0 < 2000)
        sleep_ms(1);
    waited = now_ms() - t0;
    CHECK(waited < 1000);
    CHECK_EQ(count_lines(buf, peek()), 1);
    fprintf(stdout, "shipped delay: line written after %.1f ms\n", waited);
}

static void test_warn_at_once(void)
{
    reset();
    sl_log__set_buffering(0, 10000);
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 0);
    CHECK_EQ(peek(), 0);
    sl_log(SL_LOG_WARN, "tick", "{s:i}", "i", 1); /* takes the info line with it */
    size_t n = peek();
    CHECK_EQ(count_lines(buf, n), 2);
    CHECK_EQ(lines_in_order(n), 2);
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 2);
    sl_log_line_t l;
    if (sl_log_line_begin(&l, SL_LOG_ERROR, "tick")) {
        sl_log_line_int(&l, "i", 3);
        sl_log_line_end(&l);
    }
    n = peek();
    CHECK_EQ(count_lines(buf, n), 4);
    CHECK_EQ(lines_in_order(n), 4);
    sl_log__set_buffering(0, -1);
}

/* The child logs n lines (buffered for 10 s), then ends as `how` says. */
static pid_t child_logs(int n, int how)
{
    fflush(stdout); /* or the child writes our stdout buffer a second time */
    pid_t p = fork();
    if (p != 0)
        return p;
    sl_log__set_buffering(0, 10000);
    if (how == 2)
        sl_log_catch_fatal();
    for (int i = 0; i < n; i++)
        sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", i);
    if (how == 1)
        exit(0); /* an orderly exit: atexit flushes */
    if (how == 2)
        raise(SIGSEGV);
    _exit(3);
}

static void test_exit_keeps_lines(void)
{
    int st = 0;
    reset();
    pid_t p = child_logs(5000, 1);
    CHECK(p > 0 && waitpid(p, &st, 0) == p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    size_t n = peek();
    CHECK_EQ(count_lines(buf, n), 5000);
    CHECK_EQ(lines_in_order(n), 5000);

    /* Refusal: a way out that skips atexit (here _exit) does lose them; the
     * count above is the flush's doing, not the kernel's. */
    reset();
    p = child_logs(10, 0);
    CHECK(p > 0 && waitpid(p, &st, 0) == p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    CHECK_EQ(peek(), 0);
}

static void test_crash_keeps_lines(void)
{
    int st = 0;
    reset();
    pid_t p = child_logs(50, 2);
    CHECK(p > 0 && waitpid(p, &st, 0) == p);
    /* Killed by the signal (or, under ASan, its report then exit 1, or abort with
     * abort_on_error=1 as scripts/test sets it): never a clean exit. */
    CHECK((WIFSIGNALED(st) && (WTERMSIG(st) == SIGSEGV || WTERMSIG(st) == SIGABRT)) ||
          (WIFEXITED(st) && WEXITSTATUS(st) != 0));
    size_t n = peek(), ours = 0;
    /* A sanitizer report may follow the lines; count only ours. */
    while (ours < n && buf[ours] == '{') {
        char *nl = memchr(buf + ours, '\n', n - ours);
        if (!nl)
            break;
        ours = (size_t)(nl - buf) + 1;
    }
    CHECK_EQ(count_lines(buf, ours), 50);
    CHECK_EQ(lines_in_order(ours), 50);
}

static void test_fork_no_duplicates(void)
{
    int st = 0;
    reset();
    sl_log__set_buffering(0, 10000);
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 0);
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 1);
    CHECK_EQ(peek(), 0);
    fflush(stdout);
    pid_t p = fork(); /* pthread_atfork: the two lines go out once, here */
    if (p == 0) {
        sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 2);
        exit(0);
    }
    CHECK(p > 0 && waitpid(p, &st, 0) == p);
    sl_log(SL_LOG_INFO, "tick", "{s:i}", "i", 3);
    sl_log_flush();
    size_t n = peek();
    CHECK_EQ(count_lines(buf, n), 4);
    CHECK_EQ(lines_in_order(n), 4);
    sl_log__set_buffering(0, -1);
}

#define NTHREADS 4
#define PER_THREAD 3000

static void *thread_logs(void *arg)
{
    int t = (int)(long)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        if (i % 2) {
            sl_log(SL_LOG_INFO, "tick", "{s:i, s:i}", "t", t, "n", i);
        } else {
            sl_log_line_t l;
            if (sl_log_line_begin(&l, SL_LOG_INFO, "tick")) {
                sl_log_line_int(&l, "t", t);
                sl_log_line_int(&l, "n", i);
                sl_log_line_end(&l);
            }
        }
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[NTHREADS];
    int next[NTHREADS] = {0}, bad = 0, lines = 0;
    reset();
    sl_log__set_buffering(0, -1); /* the shipped settings: the log thread and full buffers */
    for (long t = 0; t < NTHREADS; t++)
        pthread_create(&th[t], NULL, thread_logs, (void *)t);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    sl_log_flush();
    size_t n = peek();
    for (char *p = buf; p < buf + n;) {
        char *nl = memchr(p, '\n', (size_t)(buf + n - p));
        if (!nl)
            break;
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
        int t = j ? (int)json_integer_value(json_object_get(j, "t")) : -1;
        if (t < 0 || t >= NTHREADS || json_integer_value(json_object_get(j, "n")) != next[t])
            bad++;
        else
            next[t]++;
        json_decref(j);
        lines++;
        p = nl + 1;
    }
    CHECK_EQ(lines, NTHREADS * PER_THREAD);
    CHECK_EQ(bad, 0);
}

/* Builds one line with the writer and returns it parsed (owned), or NULL. */
static json_t *writer_line(void (*fill)(sl_log_line_t *), size_t *len_out)
{
    static sl_log_line_t l;
    reset();
    if (!sl_log_line_begin(&l, SL_LOG_INFO, "w\"riter"))
        return NULL;
    fill(&l);
    sl_log_line_end(&l);
    sl_log_flush();
    size_t n = peek();
    if (len_out)
        *len_out = n;
    if (n == 0 || buf[n - 1] != '\n' || count_lines(buf, n) != 1) {
        fprintf(stdout, "writer: not one line: %s\n", buf);
        return NULL;
    }
    json_error_t e;
    json_t *j = json_loadb(buf, n - 1, 0, &e);
    if (!j)
        fprintf(stdout, "writer: invalid JSON (%s): %s\n", e.text, buf);
    return j;
}

static void fill_values(sl_log_line_t *l)
{
    sl_log_line_str(l, "plain", "/v1/files/abc");
    sl_log_line_str(l, "quote\"key", "a\"b\\c/d");
    sl_log_line_str(l, "ctl", "\n\r\t\b\f\x01\x1f\x7f");
    sl_log_line_str(l, "utf8", "caf\xc3\xa9 \xf0\x9f\x98\x80");
    sl_log_line_str(l, "bad",
                    "a\xff"
                    "b\xe2\x82"
                    "c\xc0\xaf"
                    "d\xed\xa0\x80"
                    "e");
    sl_log_line_str(l, "null", NULL);
    sl_log_line_int(l, "max", LLONG_MAX);
    sl_log_line_int(l, "min", LLONG_MIN);
    sl_log_line_int(l, "zero", 0);
    sl_log_line_num(l, "dur", 0.000066);
    sl_log_line_num(l, "half", 1.5);
    sl_log_line_num(l, "neg", -0.25);
    sl_log_line_num(l, "whole", 2.0);
    sl_log_line_num(l, "big", 1e15);
    sl_log_line_num(l, "nan", NAN);
    sl_log_line_num(l, "inf", -INFINITY);
}

static const char *s_of(json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

static void test_writer(void)
{
    sl_log_set_role("http");
    json_t *j = writer_line(fill_values, NULL);
    CHECK(j != NULL);
    if (j) {
        const char *key;
        json_t *v;
        const char *order[] = {"ts", "level", "event", "role", "plain"};
        int i = 0;
        json_object_foreach(j, key, v)
        {
            (void)v;
            if (i < 5)
                CHECK_STREQ(key, order[i]);
            i++;
        }
        CHECK_STREQ(s_of(j, "event"), "w\"riter");
        CHECK_STREQ(s_of(j, "level"), "info");
        CHECK_STREQ(s_of(j, "role"), "http");
        CHECK_EQ(strlen(s_of(j, "ts")), 24);
        CHECK_STREQ(s_of(j, "plain"), "/v1/files/abc");
        CHECK_STREQ(s_of(j, "quote\"key"), "a\"b\\c/d");
        CHECK_STREQ(s_of(j, "ctl"), "\n\r\t\b\f\x01\x1f\x7f");
        CHECK_STREQ(s_of(j, "utf8"), "caf\xc3\xa9 \xf0\x9f\x98\x80");
        /* each ill-formed byte is one U+FFFD (EF BF BD) */
        CHECK_STREQ(s_of(j, "bad"), "a\xef\xbf\xbd"
                                    "b\xef\xbf\xbd\xef\xbf\xbd"
                                    "c\xef\xbf\xbd\xef\xbf\xbd"
                                    "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                                    "e");
        CHECK(json_is_null(json_object_get(j, "null")));
        CHECK(json_integer_value(json_object_get(j, "max")) == LLONG_MAX);
        CHECK(json_integer_value(json_object_get(j, "min")) == LLONG_MIN);
        CHECK(json_integer_value(json_object_get(j, "zero")) == 0);
        CHECK(json_is_real(json_object_get(j, "dur")) &&
              fabs(json_real_value(json_object_get(j, "dur")) - 0.000066) < 1e-9);
        CHECK(json_real_value(json_object_get(j, "half")) == 1.5);
        CHECK(json_real_value(json_object_get(j, "neg")) == -0.25);
        CHECK(json_is_real(json_object_get(j, "whole")) &&
              json_real_value(json_object_get(j, "whole")) == 2.0);
        CHECK(json_number_value(json_object_get(j, "big")) == 1e15);
        CHECK(json_is_null(json_object_get(j, "nan")) && json_is_null(json_object_get(j, "inf")));
        CHECK(json_object_get(j, "log_truncated") == NULL);
        json_decref(j);
    }
    sl_log_set_role(NULL);
}

static char longval[3 * SL_LOG_LINE_MAX];

static void fill_long_ascii(sl_log_line_t *l)
{
    memset(longval, 'a', sizeof longval - 1);
    sl_log_line_str(l, "path", longval);
    sl_log_line_int(l, "status", 200);
}

static void fill_long_utf8(sl_log_line_t *l)
{
    for (size_t i = 0; i + 2 < sizeof longval; i += 2)
        memcpy(longval + i, "\xc3\xa9", 2);
    longval[sizeof longval - 1] = '\0';
    sl_log_line_str(l, "path", "short");
    sl_log_line_str(l, "long", longval);
}

static void fill_long_escapes(sl_log_line_t *l)
{
    memset(longval, '\x01', sizeof longval - 1); /* 6 bytes out per byte in */
    longval[sizeof longval - 1] = '\0';
    sl_log_line_str(l, "ctl", longval);
}

static void test_writer_truncates(void)
{
    size_t n = 0;
    json_t *j = writer_line(fill_long_ascii, &n);
    CHECK(j != NULL);
    CHECK(n <= SL_LOG_LINE_MAX);
    if (j) {
        CHECK(json_is_true(json_object_get(j, "log_truncated")));
        CHECK(s_of(j, "path") && strlen(s_of(j, "path")) > SL_LOG_LINE_MAX / 2);
        CHECK(json_object_get(j, "status") == NULL); /* after the cut: dropped */
        json_decref(j);
    }
    j = writer_line(fill_long_utf8, &n);
    CHECK(j != NULL); /* cut between characters, or it would not parse */
    CHECK(n <= SL_LOG_LINE_MAX);
    if (j) {
        CHECK_STREQ(s_of(j, "path"), "short");
        CHECK(json_is_true(json_object_get(j, "log_truncated")));
        json_decref(j);
    }
    j = writer_line(fill_long_escapes, &n);
    CHECK(j != NULL);
    CHECK(n <= SL_LOG_LINE_MAX);
    json_decref(j);

    /* A disabled level starts nothing. */
    sl_log_line_t l;
    CHECK(sl_log_line_begin(&l, SL_LOG_DEBUG, "hidden") == 0);
}

int main(void)
{
    capture_begin();
    test_explicit_flush();
    test_threshold();
    test_timer();
    test_warn_at_once();
    test_exit_keeps_lines();
    test_crash_keeps_lines();
    test_fork_no_duplicates();
    test_threads();
    test_writer();
    test_writer_truncates();
    reset();
    capture_end();
    return check_summary();
}
