/*
 * log.c — structured logging: one JSON object per line on stderr, buffered.
 *
 * A line is built whole in memory (jansson encodes every value of sl_log; the
 * sl_log_line_* writer escapes its own, for the request log), so a path with
 * a quote or a newline cannot break the line. Lines are then appended to a
 * per-process buffer, as nginx's `access_log ... buffer=64k flush=...` does:
 * one write(2) per batch instead of one per line, which was the largest
 * syscall cost of a small request after the response itself.
 *
 * Who writes a batch, always whole lines and in the order they were logged:
 * - the process's log thread, SL_LOG_FLUSH_MS after the oldest waiting line
 *   (started on the first buffered line, and again in each forked child);
 * - the logging thread itself when the buffer is full, when the line is a
 *   warn or error (operators see failures at once), or when the line is too
 *   long to buffer;
 * - sl_log_flush(): at exit (atexit), before fork (pthread_atfork: the child
 *   must not inherit lines and write them again), and wherever a caller needs it;
 * - the fatal-signal handler of sl_log_catch_fatal(), without locks.
 *
 * Two locks: buf_lock guards the buffer being filled, io_lock the write. A
 * flusher takes io_lock before it lets go of buf_lock and swaps in the other
 * buffer, so batches reach the file in the order they were cut, and a buffer
 * is only refilled once its write has finished. The file is shared by the
 * supervisor, the engine and the HTTP processes: on a regular file opened
 * with O_APPEND each write lands whole; on a pipe or a socket a batch is cut
 * at line ends into writes of at most PIPE_BUF bytes, which the kernel keeps
 * whole, so processes never interleave mid-line.
 */
#include "core/log.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/err.h"
#include "core/utf8.h"

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

/* ---- writing to stderr ---- */

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

/* Writes whole lines; on a pipe or socket in pieces of at most PIPE_BUF, cut
 * after a newline (a single longer line goes alone: nothing better exists). */
static void write_lines(const char *p, size_t len)
{
    struct stat st;
    size_t piece = len;
    if (fstat(STDERR_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
        piece = PIPE_BUF;
    while (len > 0) {
        size_t n = len;
        if (n > piece) {
            n = piece;
            while (n > 0 && p[n - 1] != '\n')
                n--;
            if (n == 0) { /* one line longer than a piece: up to its end */
                const char *nl = memchr(p + piece, '\n', len - piece);
                n = nl ? (size_t)(nl - p) + 1 : len;
            }
        }
        write_all(p, n);
        p += n;
        len -= n;
    }
}

/* ---- the buffer ---- */

static pthread_mutex_t buf_lock = PTHREAD_MUTEX_INITIALIZER; /* bufs[cur], buf_len, ... */
static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;  /* a batch being written */
static pthread_cond_t buf_cond; /* the log thread waits on it; CLOCK_MONOTONIC */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static char bufs[2][SL_LOG_BUF_MAX];
static int cur;        /* the buffer being filled */
static size_t buf_len; /* bytes waiting in bufs[cur] */
static size_t buf_max = SL_LOG_BUF_MAX;
static int flush_ms = SL_LOG_FLUSH_MS;
static int64_t first_ns;  /* when the oldest waiting line was logged */
static int thread_up;     /* this process's log thread runs */
static int thread_failed; /* could not start it: every line is written at once */
static int exiting;       /* past exit(): later lines (other atexit handlers) go at once */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * With buf_lock held: writes what waits (if anything) and returns with
 * buf_lock released. Holding io_lock until the write is done also makes a
 * flush wait for an earlier batch still being written by another thread.
 */
static void flush_and_unlock(void)
{
    const char *p = bufs[cur];
    size_t n = buf_len;
    pthread_mutex_lock(&io_lock);
    cur ^= 1;
    buf_len = 0;
    pthread_mutex_unlock(&buf_lock);
    if (n > 0)
        write_lines(p, n);
    pthread_mutex_unlock(&io_lock);
}

static void *log_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&buf_lock);
    for (;;) {
        if (buf_len == 0) {
            pthread_cond_wait(&buf_cond, &buf_lock);
            continue;
        }
        int64_t due = first_ns + (int64_t)flush_ms * 1000000;
        if (mono_ns() < due) {
            struct timespec ts = {(time_t)(due / 1000000000), (long)(due % 1000000000)};
            pthread_cond_timedwait(&buf_cond, &buf_lock, &ts);
            continue; /* re-read: the lines may have gone, or others arrived first */
        }
        flush_and_unlock();
        pthread_mutex_lock(&buf_lock);
    }
    return NULL;
}

/* With buf_lock held. Signals are for the loop thread: the log thread blocks them all. */
static void start_thread(void)
{
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    if (thread_up || thread_failed)
        return;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        thread_up = pthread_create(&t, &attr, log_thread, NULL) == 0;
        pthread_attr_destroy(&attr);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!thread_up)
        thread_failed = 1;
}

static void cond_init(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&buf_cond, &a);
    pthread_condattr_destroy(&a);
}

/* fork(): the lines go out before it, once; the child starts with an empty
 * buffer, unlocked, and no log thread (threads do not cross fork). */
static void fork_prepare(void)
{
    pthread_mutex_lock(&buf_lock);
    pthread_mutex_lock(&io_lock);
    if (buf_len > 0)
        write_lines(bufs[cur], buf_len);
    buf_len = 0;
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&io_lock);
    pthread_mutex_unlock(&buf_lock);
}

static void fork_child(void)
{
    pthread_mutex_unlock(&io_lock);
    pthread_mutex_unlock(&buf_lock);
    thread_up = 0;
    thread_failed = 0;
    cond_init(); /* the parent's log thread may have been waiting on it */
}

static void at_exit(void)
{
    pthread_mutex_lock(&buf_lock);
    exiting = 1;
    flush_and_unlock();
}

static void log_init(void)
{
    cond_init();
    atexit(at_exit);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Hands one whole line (ending in '\n') to the buffer. */
static void log_append(const char *line, size_t n, int level)
{
    pthread_once(&init_once, log_init);
    pthread_mutex_lock(&buf_lock);
    if (flush_ms > 0 && !thread_up && !exiting)
        start_thread();
    int direct = n > buf_max || flush_ms <= 0 || !thread_up || exiting;
    while (buf_len > 0 && (direct || buf_len + n > buf_max)) {
        flush_and_unlock();
        pthread_mutex_lock(&buf_lock);
    }
    if (direct) { /* after everything logged before it */
        pthread_mutex_lock(&io_lock);
        pthread_mutex_unlock(&buf_lock);
        write_lines(line, n);
        pthread_mutex_unlock(&io_lock);
        return;
    }
    int was_empty = buf_len == 0;
    memcpy(bufs[cur] + buf_len, line, n);
    buf_len += n;
    if (level >= SL_LOG_WARN) {
        flush_and_unlock();
        return;
    }
    if (was_empty) {
        first_ns = mono_ns();
        pthread_cond_signal(&buf_cond);
    }
    pthread_mutex_unlock(&buf_lock);
}

void sl_log_flush(void)
{
    pthread_once(&init_once, log_init);
    pthread_mutex_lock(&buf_lock);
    flush_and_unlock();
}

void sl_log__set_buffering(size_t max_bytes, int ms)
{
    sl_log_flush();
    pthread_mutex_lock(&buf_lock);
    buf_max = max_bytes == 0 || max_bytes > SL_LOG_BUF_MAX ? SL_LOG_BUF_MAX : max_bytes;
    flush_ms = ms < 0 ? SL_LOG_FLUSH_MS : ms;
    pthread_cond_signal(&buf_cond); /* a new delay applies to what waits now */
    pthread_mutex_unlock(&buf_lock);
}

/* ---- fatal signals ---- */

static const int fatal_sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
static struct sigaction fatal_old[sizeof fatal_sigs / sizeof fatal_sigs[0]];

/* Async-signal-safe: write(2) and sigaction only; no locks (the crashing
 * thread may hold them), so this is best effort by design. */
static void fatal_cb(int sig)
{
    int saved = errno;
    size_t n = buf_len;
    if (n > 0 && n <= SL_LOG_BUF_MAX) {
        buf_len = 0;
        write_all(bufs[cur], n);
    }
    for (size_t i = 0; i < sizeof fatal_sigs / sizeof fatal_sigs[0]; i++)
        if (fatal_sigs[i] == sig)
            sigaction(sig, &fatal_old[i], NULL);
    /* Blocked while this handler runs: delivered to the old handler on return
     * (a fault would also recur when the instruction runs again). */
    raise(sig);
    errno = saved;
}

void sl_log_catch_fatal(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fatal_cb;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal_sigs / sizeof fatal_sigs[0]; i++)
        sigaction(fatal_sigs[i], &sa, &fatal_old[i]);
}

/* ---- timestamps ---- */

/* RFC 3339 UTC with milliseconds into out (at least 32 bytes), e.g.
 * 2026-11-24T02:19:30.123Z; returns its length. The part up to the seconds
 * is formatted once a second per thread (gmtime_r takes a libc lock). */
static size_t format_ts(char *out)
{
    static __thread time_t sec = (time_t)-1;
    static __thread char prefix[24];
    static __thread size_t plen;
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != sec) {
        plen = gmtime_r(&ts.tv_sec, &tm) ? strftime(prefix, sizeof prefix, "%Y-%m-%dT%H:%M:%S", &tm)
                                         : 0;
        sec = ts.tv_sec;
    }
    int ms = (int)(ts.tv_nsec / 1000000);
    memcpy(out, prefix, plen);
    out[plen] = '.';
    out[plen + 1] = (char)('0' + ms / 100);
    out[plen + 2] = (char)('0' + ms / 10 % 10);
    out[plen + 3] = (char)('0' + ms % 10);
    out[plen + 4] = 'Z';
    out[plen + 5] = '\0';
    return plen + 5;
}

/* ---- sl_log: jansson ---- */

void sl_log(int level, const char *event, const char *fmt, ...)
{
    static const char oom_line[] = "{\"level\":\"error\",\"event\":\"log_out_of_memory\"}\n";
    char ts[32];
    char stackbuf[1024];
    json_t *obj, *fields = NULL, *ev;
    json_error_t jerr;
    char *line = NULL;
    size_t len;
    va_list ap;

    if (!sl_log_enabled(level))
        return;
    format_ts(ts);
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

    /* Encode on the stack when it fits (most lines), with room for the newline. */
    if ((len = json_dumpb(obj, stackbuf, sizeof stackbuf - 1, JSON_COMPACT)) == 0)
        goto fail;
    if (len < sizeof stackbuf) {
        stackbuf[len] = '\n';
        log_append(stackbuf, len + 1, level);
        goto out;
    }
    if ((line = malloc(len + 1)) == NULL || json_dumpb(obj, line, len, JSON_COMPACT) != len)
        goto fail;
    line[len] = '\n';
    log_append(line, len + 1, level);
    goto out;

fail:
    log_append(oom_line, sizeof(oom_line) - 1, SL_LOG_ERROR);
out:
    free(line);
    json_decref(fields);
    json_decref(obj);
}

/* ---- sl_log_line_*: the writer ---- */

/* Kept free at the end of every line for ,"log_truncated":true}\n */
#define LINE_TAIL 32

static size_t line_avail(const sl_log_line_t *l)
{
    return sizeof l->buf - LINE_TAIL - l->len;
}

static void line_put(sl_log_line_t *l, const char *s, size_t n)
{
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/*
 * Appends s as a JSON string (RFC 8259 §7): quote, backslash and control
 * characters escaped; well-formed UTF-8 (core/utf8.h) copied as it is, every
 * other byte as \ufffd. Cut at a character boundary when the line is full.
 * The caller made room for the two quotes.
 */
static void line_string(sl_log_line_t *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), i = 0;

    l->buf[l->len++] = '"';
    while (i < n) {
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            size_t k = run - i, room = line_avail(l) - 1; /* 1: the closing quote */
            if (k > room) {
                line_put(l, s + i, room);
                l->truncated = 1;
                break;
            }
            line_put(l, s + i, k);
            i = run;
            continue;
        }
        char esc[8];
        const char *out = esc;
        size_t olen = 2, adv = 1;
        unsigned char c = p[i];
        esc[0] = '\\';
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
        } else if (c < 0x20) {
            static const char short_esc[] = "btn\0fr"; /* 0x08..0x0d; \v has none */
            if (c >= 0x08 && c <= 0x0d && short_esc[c - 0x08] != '\0') {
                esc[1] = short_esc[c - 0x08];
            } else {
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                olen = 6;
            }
        } else if ((adv = sl_utf8_seq_len(p + i, n - i)) > 0) {
            out = s + i;
            olen = adv;
        } else {
            memcpy(esc, "\\ufffd", 6);
            olen = 6;
            adv = 1;
        }
        if (olen + 1 > line_avail(l)) {
            l->truncated = 1;
            break;
        }
        line_put(l, out, olen);
        i += adv;
    }
    l->buf[l->len++] = '"';
}

/* Starts ,"key": if the key and a short value fit; else the line is cut here. */
static int line_key(sl_log_line_t *l, const char *key)
{
    if (l->truncated || line_avail(l) < 6 * strlen(key) + 40) {
        l->truncated = 1;
        return 0;
    }
    l->buf[l->len++] = ',';
    line_string(l, key);
    l->buf[l->len++] = ':';
    return 1;
}

static void line_uint(sl_log_line_t *l, unsigned long long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    line_put(l, tmp + sizeof tmp - n, n);
}

int sl_log_line_begin(sl_log_line_t *l, int level, const char *event)
{
    static const char ts_key[] = "{\"ts\":\"";
    char ts[32];
    size_t tl;
    if (!sl_log_enabled(level))
        return 0;
    l->len = 0;
    l->level = level;
    l->truncated = 0;
    tl = format_ts(ts);
    line_put(l, ts_key, sizeof ts_key - 1);
    line_put(l, ts, tl);
    line_put(l, "\",\"level\":\"", 11);
    line_put(l, level_names[level], strlen(level_names[level]));
    line_put(l, "\",\"event\":", 10);
    line_string(l, event != NULL ? event : "unknown");
    if (log_role != NULL)
        sl_log_line_str(l, "role", log_role);
    return 1;
}

void sl_log_line_str(sl_log_line_t *l, const char *key, const char *value)
{
    if (!line_key(l, key))
        return;
    if (value == NULL)
        line_put(l, "null", 4);
    else
        line_string(l, value);
}

void sl_log_line_int(sl_log_line_t *l, const char *key, long long v)
{
    if (!line_key(l, key))
        return;
    if (v < 0) {
        l->buf[l->len++] = '-';
        line_uint(l, 0ull - (unsigned long long)v);
    } else {
        line_uint(l, (unsigned long long)v);
    }
}

void sl_log_line_num(sl_log_line_t *l, const char *key, double v)
{
    if (!line_key(l, key))
        return;
    if (!isfinite(v)) {
        line_put(l, "null", 4);
    } else if (fabs(v) < 1e12) {
        /* Microseconds, the precision of a duration, without printf's cost:
         * the integer part, a point, then the fraction without its trailing
         * zeros (one digit at least, so it reads back as a real). */
        double r = v * 1e6;
        long long us = (long long)(r < 0 ? r - 0.5 : r + 0.5);
        unsigned long long a = us < 0 ? 0ull - (unsigned long long)us : (unsigned long long)us;
        char frac[6];
        int nf = 6;
        if (us < 0)
            l->buf[l->len++] = '-';
        line_uint(l, a / 1000000);
        l->buf[l->len++] = '.';
        unsigned long long f = a % 1000000;
        for (int i = 5; i >= 0; i--, f /= 10)
            frac[i] = (char)('0' + f % 10);
        while (nf > 1 && frac[nf - 1] == '0')
            nf--;
        line_put(l, frac, (size_t)nf);
    } else {
        char tmp[32];
        int n = snprintf(tmp, sizeof tmp, "%.17g", v);
        if (n > 0 && (size_t)n < sizeof tmp)
            line_put(l, tmp, (size_t)n);
        else
            line_put(l, "null", 4);
    }
}

void sl_log_line_end(sl_log_line_t *l)
{
    static const char trunc[] = ",\"log_truncated\":true";
    if (l->truncated)
        line_put(l, trunc, sizeof trunc - 1);
    line_put(l, "}\n", 2);
    log_append(l->buf, l->len, l->level);
}
