/*
 * engine_link.c — the socketpair and shared page between the HTTP processes
 * and the engine process (engine_link.h, docs/internals/engine.md).
 *
 * The page is one anonymous MAP_SHARED mapping made before any fork, so every
 * process of the instance sees the same bytes. One writer (the engine running
 * now) publishes under a seqlock, as Linux's seqcount does: the sequence is
 * odd while a write is in progress, and a reader copies, then checks that the
 * sequence did not move. A writer killed half way leaves it odd; the next
 * engine's first write starts from the next even value. The copy itself reads
 * bytes another process may be writing, which is why readers bound every
 * length they read by the page's size before using it and discard the copy
 * unless the sequence held.
 */
#include "core/engine_link.h"
#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The page: the header, then steps JSON and metrics text. Untouched pages cost nothing. */
#define PAGE_BYTES (8u << 20)
#define READ_TRIES 200

typedef struct page_s {
    _Atomic uint64_t seq;        /* seqlock over steps_len, metrics_len, data */
    _Atomic uint64_t generation; /* snapshots published (by any engine) */
    _Atomic int pid;             /* the engine's pid (supervisor), 0: none */
    _Atomic int ready;           /* the engine running now has published */
    _Atomic int64_t beat_ms;     /* CLOCK_MONOTONIC of its last publish */
    uint32_t steps_len, metrics_len;
    char data[];
} page_t;

#define DATA_BYTES (PAGE_BYTES - sizeof(page_t))

struct sl_elink_s {
    page_t *page;        /* shared mapping */
    int send_fd, recv_fd; /* -1 once closed */
    struct event *ev;    /* engine: readable recv_fd */
    sl_elink_msg_cb cb;
    void *cb_arg;
    int too_big_logged;
    int nhttp;
    int (*ev_fds)[2];    /* per HTTP process: [0] the engine sends, [1] it receives; -1 closed */
    int my_ev_fd;        /* HTTP: its receiving end, -1 otherwise */
    struct event *evs_ev; /* HTTP: readable my_ev_fd */
    sl_elink_event_cb evs_cb;
    void *evs_arg;
    char *evs_buf;       /* HTTP: SL_ELINK_EVENT_MAX + 1 bytes */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

int sl_elink_new(int nhttp, sl_elink_t **out)
{
    int fds[2];
    if (nhttp < 1 || nhttp > 1024)
        return SL_EINVAL;
    sl_elink_t *l = calloc(1, sizeof *l);
    if (!l)
        return SL_ENOMEM;
    l->send_fd = l->recv_fd = l->my_ev_fd = -1;
    l->nhttp = nhttp;
    l->page = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (l->page == MAP_FAILED) {
        l->page = NULL;
        sl_elink_free(l);
        return SL_ENOMEM;
    }
    if (!(l->ev_fds = malloc((size_t)nhttp * sizeof *l->ev_fds))) {
        sl_elink_free(l);
        return SL_ENOMEM;
    }
    for (int i = 0; i < nhttp; i++)
        l->ev_fds[i][0] = l->ev_fds[i][1] = -1;
    /* Datagrams: each message arrives whole, from any number of senders. */
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
        sl_elink_free(l);
        return SL_EIO;
    }
    l->send_fd = fds[0];
    l->recv_fd = fds[1];
    for (int i = 0; i < nhttp; i++) {
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, l->ev_fds[i]) != 0) {
            l->ev_fds[i][0] = l->ev_fds[i][1] = -1;
            sl_elink_free(l);
            return SL_EIO;
        }
    }
    *out = l;
    return 0;
}

void sl_elink_free(sl_elink_t *l)
{
    if (!l)
        return;
    sl_elink_unlisten(l);
    close_fd(&l->send_fd);
    close_fd(&l->recv_fd);
    for (int i = 0; l->ev_fds && i < l->nhttp; i++) {
        close_fd(&l->ev_fds[i][0]);
        close_fd(&l->ev_fds[i][1]);
    }
    free(l->ev_fds);
    free(l->evs_buf);
    if (l->page)
        munmap(l->page, PAGE_BYTES);
    free(l);
}

void sl_elink_become(sl_elink_t *l, int engine, int http_index)
{
    if (engine) {
        close_fd(&l->send_fd);
        for (int i = 0; i < l->nhttp; i++)
            close_fd(&l->ev_fds[i][1]);
        return;
    }
    close_fd(&l->recv_fd);
    for (int i = 0; i < l->nhttp; i++) {
        close_fd(&l->ev_fds[i][0]);
        if (i == http_index)
            l->my_ev_fd = l->ev_fds[i][1];
        else
            close_fd(&l->ev_fds[i][1]);
    }
}

/* ---- events the engine could not publish through Redis ---- */

void sl_elink_forward_event(sl_elink_t *l, const char *channel, const char *msg, size_t len)
{
    char buf[SL_ELINK_EVENT_MAX];
    size_t cl = strlen(channel);
    if (cl + 1 + len > sizeof buf)
        return; /* an event is a few hundred bytes; a giant one is not forwarded */
    memcpy(buf, channel, cl);
    buf[cl] = '\n';
    memcpy(buf + cl + 1, msg, len);
    for (int i = 0; i < l->nhttp; i++) {
        /* EAGAIN (full) or ECONNREFUSED (that HTTP process is gone): dropped */
        if (l->ev_fds[i][0] >= 0)
            (void)!send(l->ev_fds[i][0], buf, cl + 1 + len, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
}

static void events_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_elink_t *l = arg;
    (void)what;
    for (int i = 0; i < 256; i++) {
        ssize_t n = recv(fd, l->evs_buf, SL_ELINK_EVENT_MAX, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return;
        char *nl = memchr(l->evs_buf, '\n', (size_t)n);
        if (!nl)
            continue;
        *nl = '\0';
        l->evs_buf[n] = '\0';
        l->evs_cb(l->evs_buf, nl + 1, (size_t)(l->evs_buf + n - (nl + 1)), l->evs_arg);
    }
}

int sl_elink_listen_events(sl_elink_t *l, struct event_base *base, sl_elink_event_cb cb,
                           void *arg)
{
    if (l->evs_ev || l->my_ev_fd < 0)
        return SL_EINVAL;
    if (!l->evs_buf && !(l->evs_buf = malloc(SL_ELINK_EVENT_MAX + 1)))
        return SL_ENOMEM;
    l->evs_cb = cb;
    l->evs_arg = arg;
    l->evs_ev = event_new(base, l->my_ev_fd, EV_READ | EV_PERSIST, events_cb, l);
    if (!l->evs_ev || event_add(l->evs_ev, NULL) != 0)
        return SL_ENOMEM;
    return 0;
}

/* ---- supervisor ---- */

void sl_elink_set_engine_pid(sl_elink_t *l, int pid)
{
    /* Only an engine gone clears "ready": the new one may have published
     * before its parent got here (after the fork), and that is its own
     * state; the one before it was cleared when it exited (pid 0). */
    if (pid == 0)
        atomic_store(&l->page->ready, 0);
    atomic_store(&l->page->pid, pid);
}

int sl_elink_engine_ready(const sl_elink_t *l)
{
    return atomic_load(&l->page->ready);
}

/* ---- HTTP side ---- */

int sl_elink_send(sl_elink_t *l, const char *msg)
{
    size_t n = strlen(msg);
    if (l->send_fd < 0 || n >= SL_ELINK_MSG_MAX)
        return SL_EIO;
    for (;;) {
        if (send(l->send_fd, msg, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
            return 0;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ? SL_EAGAIN : SL_EIO;
    }
}

void sl_elink_engine_state(const sl_elink_t *l, int *pid, double *age_s, int *ready)
{
    int64_t beat = atomic_load(&l->page->beat_ms);
    if (pid)
        *pid = atomic_load(&l->page->pid);
    if (ready)
        *ready = atomic_load(&l->page->ready);
    if (age_s)
        *age_s = beat ? (double)(now_ms() - beat) / 1000.0 : 1e9;
}

uint64_t sl_elink_generation(const sl_elink_t *l)
{
    return atomic_load(&l->page->generation);
}

static char *copy_text(const char *p, uint32_t n)
{
    char *s = malloc((size_t)n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

int sl_elink_read(const sl_elink_t *l, char **steps, char **metrics, size_t *metrics_len)
{
    page_t *pg = l->page;
    for (int tries = 0; tries < READ_TRIES; tries++) {
        uint64_t s1 = atomic_load_explicit(&pg->seq, memory_order_acquire);
        if (s1 == 0)
            return SL_ENOTFOUND; /* never published */
        if (s1 & 1) {
            sched_yield();
            continue;
        }
        uint32_t sl = pg->steps_len, ml = pg->metrics_len;
        char *st = NULL, *mt = NULL;
        if ((size_t)sl + ml <= DATA_BYTES) {
            st = steps ? copy_text(pg->data, sl) : NULL;
            mt = metrics ? copy_text(pg->data + sl, ml) : NULL;
        }
        atomic_thread_fence(memory_order_acquire);
        uint64_t s2 = atomic_load_explicit(&pg->seq, memory_order_relaxed);
        if (s1 != s2 || (size_t)sl + ml > DATA_BYTES) {
            free(st);
            free(mt);
            continue;
        }
        if ((steps && !st) || (metrics && !mt)) {
            free(st);
            free(mt);
            return SL_ENOMEM;
        }
        if (steps)
            *steps = st;
        if (metrics) {
            *metrics = mt;
            if (metrics_len)
                *metrics_len = ml;
        }
        return 0;
    }
    return SL_ENOTFOUND;
}

/* ---- metrics merge ---- */

typedef struct family_s {
    const char *start, *samples, *end; /* "# HELP" line, first sample line, one past the end */
    char name[128];
} family_t;

/* Splits Prometheus text into families (each begins with "# HELP name "). */
static int split_families(const char *text, size_t len, family_t **out, int *n)
{
    const char *p = text, *end = text + len;
    int cap = 0;
    *out = NULL;
    *n = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        if ((size_t)(end - p) > 7 && memcmp(p, "# HELP ", 7) == 0) {
            if (*n == cap) {
                int ncap = cap ? cap * 2 : 64;
                family_t *f = realloc(*out, (size_t)ncap * sizeof *f);
                if (!f)
                    return SL_ENOMEM;
                *out = f;
                cap = ncap;
            }
            family_t *f = &(*out)[(*n)++];
            const char *nm = p + 7, *sp = nm;
            while (sp < next && *sp != ' ' && *sp != '\n')
                sp++;
            snprintf(f->name, sizeof f->name, "%.*s", (int)(sp - nm), nm);
            f->start = p;
            f->samples = next;
            f->end = next;
        } else if (*n > 0) {
            family_t *f = &(*out)[*n - 1];
            if (p[0] == '#' && f->samples == p)
                f->samples = next; /* # TYPE */
            f->end = next;
        }
        p = next;
    }
    return 0;
}

typedef struct obuf_s {
    char *p;
    size_t len, cap;
    int failed;
} obuf_t;

static void put(obuf_t *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > ncap)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* 1 if a sample line of [p, end) names the same series (name and labels) as key. */
static int has_series(const char *p, const char *end, const char *key, size_t klen)
{
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        if ((size_t)(next - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == ' ')
            return 1;
        p = next;
    }
    return 0;
}

/*
 * The engine's sample lines [p, end) of a family this process has too
 * ([own, own_end) its samples): a series this process also has gets
 * role="engine" added; the others are kept as they are.
 */
static void put_labelled(obuf_t *b, const char *p, const char *end, const char *own,
                         const char *own_end)
{
    static const char lab[] = "role=\"engine\"";
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        const char *q = p, *sp = next;
        while (q < next && *q != '{' && *q != ' ')
            q++;
        while (sp > p && sp[-1] != ' ')
            sp--; /* the value follows the last space */
        int shared = p[0] != '#' && q < next && sp > p &&
                     has_series(own, own_end, p, (size_t)(sp - 1 - p));
        if (!shared) {
            put(b, p, (size_t)(next - p));
        } else if (*q == '{') {
            put(b, p, (size_t)(q + 1 - p));
            put(b, lab, sizeof lab - 1);
            if (q[1] != '}')
                put(b, ",", 1);
            put(b, q + 1, (size_t)(next - q - 1));
        } else {
            put(b, p, (size_t)(q - p));
            put(b, "{", 1);
            put(b, lab, sizeof lab - 1);
            put(b, "}", 1);
            put(b, q, (size_t)(next - q));
        }
        p = next;
    }
}

char *sl_elink_merge_metrics(const char *own, size_t own_len, const char *engine,
                             size_t engine_len, size_t *len)
{
    family_t *mine = NULL, *theirs = NULL;
    int nmine = 0, ntheirs = 0;
    obuf_t b = {0};
    char *used = NULL;
    if (split_families(own, own_len, &mine, &nmine) != 0 ||
        split_families(engine, engine_len, &theirs, &ntheirs) != 0 ||
        !(used = calloc((size_t)ntheirs + 1, 1))) {
        b.failed = 1;
        goto out;
    }
    /* Anything before the first family (nothing, today) is kept. */
    put(&b, own, nmine ? (size_t)(mine[0].start - own) : own_len);
    for (int i = 0; i < nmine; i++) {
        put(&b, mine[i].start, (size_t)(mine[i].end - mine[i].start));
        for (int k = 0; k < ntheirs; k++) {
            if (!used[k] && strcmp(theirs[k].name, mine[i].name) == 0) {
                put_labelled(&b, theirs[k].samples, theirs[k].end, mine[i].samples, mine[i].end);
                used[k] = 1;
            }
        }
    }
    for (int k = 0; k < ntheirs; k++)
        if (!used[k])
            put(&b, theirs[k].start, (size_t)(theirs[k].end - theirs[k].start));
    put(&b, "", 0);
out:
    free(mine);
    free(theirs);
    free(used);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}

/* ---- engine side ---- */

static void recv_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_elink_t *l = arg;
    char msg[SL_ELINK_MSG_MAX];
    (void)what;
    /* A bounded batch per wake-up, so a flood cannot starve the loop. */
    for (int i = 0; i < 256; i++) {
        ssize_t n = recv(fd, msg, sizeof msg - 1, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return;
        msg[n] = '\0';
        l->cb(msg, l->cb_arg);
    }
}

int sl_elink_listen(sl_elink_t *l, struct event_base *base, sl_elink_msg_cb cb, void *arg)
{
    if (l->ev || l->recv_fd < 0)
        return SL_EINVAL;
    l->cb = cb;
    l->cb_arg = arg;
    l->ev = event_new(base, l->recv_fd, EV_READ | EV_PERSIST, recv_cb, l);
    if (!l->ev || event_add(l->ev, NULL) != 0)
        return SL_ENOMEM;
    return 0;
}

void sl_elink_unlisten(sl_elink_t *l)
{
    if (l && l->ev) {
        event_free(l->ev);
        l->ev = NULL;
    }
    if (l && l->evs_ev) {
        event_free(l->evs_ev);
        l->evs_ev = NULL;
    }
}

int sl_elink_publish(sl_elink_t *l, const char *steps, const char *metrics, size_t metrics_len)
{
    page_t *pg = l->page;
    size_t sl = steps ? strlen(steps) : 0;
    int rc = 0;
    if (sl + metrics_len > DATA_BYTES) {
        if (!l->too_big_logged)
            sl_log(SL_LOG_WARN, "engine_snapshot_too_big", "{s:i}", "kib",
                   (int)((sl + metrics_len) / 1024));
        l->too_big_logged = 1;
        rc = SL_ETOOBIG;
    } else {
        uint64_t s = atomic_load_explicit(&pg->seq, memory_order_relaxed);
        s += s & 1; /* a writer that died mid-write left it odd */
        atomic_store_explicit(&pg->seq, s + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        if (sl)
            memcpy(pg->data, steps, sl);
        if (metrics_len)
            memcpy(pg->data + sl, metrics, metrics_len);
        pg->steps_len = (uint32_t)sl;
        pg->metrics_len = (uint32_t)metrics_len;
        atomic_store_explicit(&pg->seq, s + 2, memory_order_release);
        atomic_fetch_add(&pg->generation, 1);
    }
    atomic_store(&pg->beat_ms, now_ms());
    atomic_store(&pg->ready, 1);
    return rc;
}
