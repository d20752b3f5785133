/*
 * curl.c — outbound HTTP on the event loop (see curl.h and
 * docs/internals/curl.md).
 *
 * libcurl's multi-socket API tells us, through two callbacks, what to watch:
 *   - sock_cb: "watch socket s for IN/OUT" or "forget s" -> one persistent
 *     libevent event per socket, kept in curl's per-socket pointer
 *     (curl_multi_assign) and in our list, freed on CURL_POLL_REMOVE;
 *   - timer_cb: "call me back in N ms" (-1: never) -> one evtimer. A 0 ms
 *     timeout is just an evtimer of 0, which fires on a later loop turn: curl
 *     must never be re-entered from inside its own callbacks.
 * When an event or the timer fires we call curl_multi_socket_action() and then
 * collect finished transfers with curl_multi_info_read(). A finished transfer
 * is removed from the multi handle there (outside any curl callback) and put
 * on the done queue; a 0 ms evtimer delivers the queue to the callers, so a
 * callback never runs inside curl, inside sl_curl_request() or inside
 * sl_curl_cancel(), and is free to start, cancel or free anything.
 */
#include "curl.h"
#include "crypto.h"
#include "err.h"
#include "fault.h"
#include "sigv4.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define METHOD_MAX 16
#define RESP_INITIAL_CAP (16 * 1024)
#define HDR_INITIAL_CAP 1024

/* One watched socket. */
typedef struct sock_s {
    curl_socket_t fd;
    struct event *ev;
    struct sock_s *prev, *next;
} sock_t;

struct sl_curl_xfer_s {
    sl_curl_t *c;
    CURL *easy;
    sl_curl_cb cb;
    void *arg;
    struct curl_slist *req_headers;
    int in_multi;                /* added to c->multi, on c->active */
    int queued;                  /* on c->done queue, callback not run yet */
    sl_curl_xfer_t *prev, *next; /* c->active list */
    sl_curl_xfer_t *qnext;       /* c->done queue */

    /* body from a file */
    int fd;
    curl_off_t file_size, file_off;

    /* response */
    char *resp; /* NUL-terminated; cap excludes the NUL */
    size_t resp_len, resp_cap, resp_max;
    char *hbuf; /* "name\0value\0" pairs of the last response */
    size_t hlen, hcap, hcount;
    sl_curl_header_t *hdrs; /* built when the transfer finishes */

    /* outcome */
    int own_err; /* set by our own curl callbacks when they abort */
    int err;
    long status;
    uint64_t total_us;
    char errbuf[CURL_ERROR_SIZE]; /* curl's CURLOPT_ERRORBUFFER */
    char msg[SL_CURL_ERRMSG_MAX]; /* what the caller sees as errmsg */
};

struct sl_curl_s {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;   /* curl's timeout (timer_cb) */
    struct event *done_ev; /* delivers the done queue */
    sock_t *socks;
    sl_curl_xfer_t *active; /* transfers inside the multi handle */
    sl_curl_xfer_t *done_head, *done_tail;
    size_t pending;   /* active + queued */
    int closing;      /* sl_curl_free started: no new requests */
    int in_cb;        /* a user callback is running */
    int free_pending; /* sl_curl_free called from inside a callback */
};

static void check_multi_info(sl_curl_t *c);

/* ---- lists ---- */

static void active_link(sl_curl_t *c, sl_curl_xfer_t *x)
{
    x->prev = NULL;
    x->next = c->active;
    if (c->active)
        c->active->prev = x;
    c->active = x;
}

static void active_unlink(sl_curl_t *c, sl_curl_xfer_t *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        c->active = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

static void schedule_delivery(sl_curl_t *c)
{
    static const struct timeval zero = {0, 0};
    evtimer_add(c->done_ev, &zero);
}

static void done_push(sl_curl_t *c, sl_curl_xfer_t *x)
{
    x->qnext = NULL;
    x->queued = 1;
    if (c->done_tail)
        c->done_tail->qnext = x;
    else
        c->done_head = x;
    c->done_tail = x;
    schedule_delivery(c);
}

static sl_curl_xfer_t *done_pop(sl_curl_t *c)
{
    sl_curl_xfer_t *x = c->done_head;
    if (!x)
        return NULL;
    c->done_head = x->qnext;
    if (!c->done_head)
        c->done_tail = NULL;
    x->qnext = NULL;
    x->queued = 0;
    return x;
}

/* ---- libcurl -> libevent ---- */

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_curl_t *c = arg;
    int action =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(c->multi, fd, action, &running);
    check_multi_info(c);
}

static void timeout_event_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_curl_t *c = arg;
    int running = 0;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(c);
}

static void sock_free(sl_curl_t *c, sock_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        c->socks = w->next;
    if (w->next)
        w->next->prev = w->prev;
    event_free(w->ev); /* also fine from inside this event's own callback */
    free(w);
}

/* CURLMOPT_SOCKETFUNCTION. Called from inside curl: only (re)arms events. */
static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    sl_curl_t *c = userp;
    sock_t *w = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (w)
            sock_free(c, w); /* curl drops its socketp entry itself */
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w)
            return -1;
        w->ev = event_new(c->base, s, kind, sock_event_cb, c);
        if (!w->ev) {
            free(w);
            return -1;
        }
        w->fd = s;
        w->next = c->socks;
        if (c->socks)
            c->socks->prev = w;
        c->socks = w;
        curl_multi_assign(c->multi, s, w);
    } else {
        event_del(w->ev);
        event_assign(w->ev, c->base, s, kind, sock_event_cb, c);
    }
    return event_add(w->ev, NULL) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION. Never calls curl back from here (not even for 0 ms). */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    sl_curl_t *c = userp;
    if (timeout_ms < 0) {
        evtimer_del(c->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(c->timer, &tv) == 0 ? 0 : -1;
}

/* ---- per-transfer curl callbacks (inside curl: never free or call the user) ---- */

static void set_msg(sl_curl_xfer_t *x, const char *m)
{
    snprintf(x->msg, sizeof x->msg, "%s", m);
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    sl_curl_xfer_t *x = ud;
    size_t n = size * nmemb;
    if (n > x->resp_max - x->resp_len) {
        x->own_err = SL_ETOOBIG;
        snprintf(x->msg, sizeof x->msg, "response body exceeds %zu bytes", x->resp_max);
        return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
    }
    if (x->resp_len + n > x->resp_cap) {
        size_t cap = x->resp_cap ? x->resp_cap : RESP_INITIAL_CAP;
        while (cap < x->resp_len + n)
            cap = cap > x->resp_max / 2 ? x->resp_max : cap * 2;
        if (cap > x->resp_max)
            cap = x->resp_max;
        char *p = realloc(x->resp, cap + 1);
        if (!p) {
            x->own_err = SL_ENOMEM;
            set_msg(x, "out of memory for the response body");
            return 0;
        }
        x->resp = p;
        x->resp_cap = cap;
    }
    memcpy(x->resp + x->resp_len, data, n);
    x->resp_len += n;
    x->resp[x->resp_len] = '\0';
    return n;
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/*
 * CURLOPT_HEADERFUNCTION: one complete header line per call, status lines
 * included. Each "HTTP/" status line starts a new header block (a 100
 * Continue, or a redirect when following them), so we keep only the last.
 * Folded continuation lines (obsolete, RFC 9112 5.2) are dropped.
 */
static size_t header_cb(char *line, size_t size, size_t nmemb, void *ud)
{
    sl_curl_xfer_t *x = ud;
    size_t total = size * nmemb, n = total;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        x->hlen = 0;
        x->hcount = 0;
        return total;
    }
    if (n == 0 || is_blank(line[0]))
        return total;
    const char *colon = memchr(line, ':', n);
    if (!colon || colon == line)
        return total;
    size_t nlen = (size_t)(colon - line);
    while (nlen > 0 && is_blank(line[nlen - 1]))
        nlen--;
    const char *v = colon + 1, *end = line + n;
    while (v < end && is_blank(*v))
        v++;
    while (end > v && is_blank(end[-1]))
        end--;
    size_t vlen = (size_t)(end - v);
    size_t need = nlen + 1 + vlen + 1;
    if (x->hcount >= SL_CURL_MAX_RESP_HEADERS || need > SL_CURL_MAX_RESP_HEADER_BYTES - x->hlen) {
        x->own_err = SL_ETOOBIG;
        set_msg(x, "too many or too large response headers");
        return 0;
    }
    if (x->hlen + need > x->hcap) {
        size_t cap = x->hcap ? x->hcap : HDR_INITIAL_CAP;
        while (cap < x->hlen + need)
            cap *= 2;
        if (cap > SL_CURL_MAX_RESP_HEADER_BYTES)
            cap = SL_CURL_MAX_RESP_HEADER_BYTES;
        char *p = realloc(x->hbuf, cap);
        if (!p) {
            x->own_err = SL_ENOMEM;
            set_msg(x, "out of memory for the response headers");
            return 0;
        }
        x->hbuf = p;
        x->hcap = cap;
    }
    memcpy(x->hbuf + x->hlen, line, nlen);
    x->hbuf[x->hlen + nlen] = '\0';
    x->hlen += nlen + 1;
    memcpy(x->hbuf + x->hlen, v, vlen);
    x->hbuf[x->hlen + vlen] = '\0';
    x->hlen += vlen + 1;
    x->hcount++;
    return total;
}

/*
 * CURLOPT_READFUNCTION for a body from a file: one pread() of at most
 * SL_CURL_FILE_CHUNK bytes per call, on the loop thread. For a file in the
 * page cache this is a memcpy; on a cold disk it blocks the loop for one read
 * (see docs/internals/curl.md).
 */
static size_t read_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    sl_curl_xfer_t *x = ud;
    size_t want = size * nitems;
    if (want > SL_CURL_FILE_CHUNK)
        want = SL_CURL_FILE_CHUNK;
    curl_off_t left = x->file_size - x->file_off;
    if ((curl_off_t)want > left)
        want = (size_t)left;
    if (want == 0)
        return 0;
    ssize_t r;
    do {
        r = pread(x->fd, buf, want, (off_t)x->file_off);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
        x->own_err = SL_EIO;
        snprintf(x->msg, sizeof x->msg, "reading the body file: %s",
                 r < 0 ? strerror(errno) : "file shrank");
        return CURL_READFUNC_ABORT;
    }
    x->file_off += r;
    return (size_t)r;
}

/* CURLOPT_SEEKFUNCTION: curl rewinds the body to resend it on a fresh connection. */
static int seek_cb(void *ud, curl_off_t offset, int origin)
{
    sl_curl_xfer_t *x = ud;
    if (origin != SEEK_SET || offset < 0 || offset > x->file_size)
        return CURL_SEEKFUNC_FAIL;
    x->file_off = offset;
    return CURL_SEEKFUNC_OK;
}

/* ---- finishing ---- */

static int map_code(const sl_curl_xfer_t *x, CURLcode cc)
{
    if (x->own_err)
        return x->own_err;
    switch (cc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return SL_ETIMEDOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        return SL_EUNAVAIL;
    case CURLE_FILESIZE_EXCEEDED:
        return SL_ETOOBIG; /* Content-Length above the limit */
    case CURLE_OUT_OF_MEMORY:
        return SL_ENOMEM;
    default:
        return SL_EIO;
    }
}

/*
 * Takes x out of the multi handle (never from inside a curl callback), records
 * its outcome and queues its callback. cc is curl's result; err overrides the
 * mapping when non-zero (cancel).
 */
static void finish(sl_curl_xfer_t *x, CURLcode cc, int err)
{
    sl_curl_t *c = x->c;
    curl_off_t us = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &us);
    x->total_us = us > 0 ? (uint64_t)us : 0;
    curl_multi_remove_handle(c->multi, x->easy);
    x->in_multi = 0;
    active_unlink(c, x);

    x->err = err ? err : map_code(x, cc);
    if (x->err == SL_ECANCELED)
        set_msg(x, "cancelled");
    else if (x->err == 0)
        x->msg[0] = '\0';
    else if (!x->own_err)
        set_msg(x, x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc));

    if (x->hcount) {
        x->hdrs = calloc(x->hcount, sizeof *x->hdrs);
        if (x->hdrs) {
            const char *p = x->hbuf;
            for (size_t i = 0; i < x->hcount; i++) {
                x->hdrs[i].name = p;
                p += strlen(p) + 1;
                x->hdrs[i].value = p;
                p += strlen(p) + 1;
            }
        } else {
            x->hcount = 0;
            if (x->err == 0) {
                x->err = SL_ENOMEM;
                set_msg(x, "out of memory for the response headers");
            }
        }
    }
    done_push(c, x);
}

static void check_multi_info(sl_curl_t *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        /* m is invalid once its handle is removed: read it first */
        CURL *easy = m->easy_handle;
        CURLcode cc = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        sl_curl_xfer_t *x = (sl_curl_xfer_t *)(void *)priv;
        if (x && x->in_multi)
            finish(x, cc, 0);
    }
}

static void xfer_free(sl_curl_xfer_t *x)
{
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->req_headers);
    if (x->fd >= 0)
        close(x->fd);
    free(x->resp);
    free(x->hbuf);
    free(x->hdrs);
    free(x);
}

static void deliver(sl_curl_t *c, sl_curl_xfer_t *x)
{
    sl_curl_result_t r = {
        .err = x->err,
        .errmsg = x->msg,
        .status = x->status,
        .headers = x->hdrs,
        .n_headers = x->hcount,
        .body = x->resp ? x->resp : "",
        .body_len = x->resp_len,
        .total_us = x->total_us,
    };
    c->pending--;
    c->in_cb++;
    x->cb(&r, x->arg);
    c->in_cb--;
    xfer_free(x);
}

static void destroy(sl_curl_t *c);

static void done_event_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_curl_t *c = arg;
    sl_curl_xfer_t *x;
    while (!c->free_pending && (x = done_pop(c)))
        deliver(c, x);
    if (c->free_pending)
        destroy(c);
}

/* ---- public API ---- */

int sl_curl_max_host_connections(sl_curl_t *c, long max)
{
    if (!c || max < 0 ||
        curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max) != CURLM_OK)
        return SL_EINVAL;
    return 0;
}

int sl_curl_max_connects(sl_curl_t *c, long max)
{
    if (!c || max < 1 || curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, max) != CURLM_OK)
        return SL_EINVAL;
    return 0;
}

int sl_curl_new(struct event_base *base, sl_curl_t **out)
{
    int err = SL_ENOMEM;
    if (!base || !out)
        return SL_EINVAL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return SL_EIO;
    sl_curl_t *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->base = base;
    c->timer = evtimer_new(base, timeout_event_cb, c);
    c->done_ev = evtimer_new(base, done_event_cb, c);
    c->multi = curl_multi_init();
    if (!c->timer || !c->done_ev || !c->multi)
        goto fail;
    if (curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb) != CURLM_OK ||
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c) != CURLM_OK ||
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb) != CURLM_OK ||
        curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c) != CURLM_OK) {
        err = SL_EIO;
        goto fail;
    }
    *out = c;
    return 0;
fail:
    if (c) {
        if (c->multi)
            curl_multi_cleanup(c->multi);
        if (c->done_ev)
            event_free(c->done_ev);
        if (c->timer)
            event_free(c->timer);
        free(c);
    }
    curl_global_cleanup();
    return err;
}

static int method_valid(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > METHOD_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(m[i] >= 'A' && m[i] <= 'Z') && !(m[i] >= 'a' && m[i] <= 'z') && m[i] != '-' &&
            m[i] != '_')
            return 0;
    return 1;
}

/* 1 if url parses and its scheme is http or https. */
static int url_valid(const char *url)
{
    int ok = 0;
    char *scheme = NULL;
    CURLU *u = curl_url();
    if (!u)
        return 0;
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK)
        ok = strcasecmp(scheme, "http") == 0 || strcasecmp(scheme, "https") == 0;
    curl_free(scheme);
    curl_url_cleanup(u);
    return ok;
}

/* Does `h` ("Name: value") name the header `name`? */
static int header_is(const char *h, const char *name)
{
    size_t n = strlen(name);
    return strncasecmp(h, name, n) == 0 && (h[n] == ':' || h[n] == ';');
}

/* A curl directive rather than a header that is sent: "Name:" with no value
 * removes a header curl would add, "Name;" sends an empty one. */
static int header_is_directive(const char *h)
{
    const char *colon = strchr(h, ':');
    if (!colon)
        return 1; /* "Name;" */
    for (const char *v = colon + 1; *v; v++)
        if (*v != ' ' && *v != '\t')
            return 0;
    return 1;
}

static int check_opts(const sl_curl_req_opts_t *o, const char *method)
{
    if (!o->url || !url_valid(o->url) || !method_valid(method))
        return SL_EINVAL;
    if (o->n_headers > SL_CURL_MAX_REQ_HEADERS || (o->n_headers && !o->headers))
        return SL_EINVAL;
    for (size_t i = 0; i < o->n_headers; i++) {
        const char *h = o->headers[i];
        /* a name, a colon, and no CR/LF that could smuggle a header in */
        if (!h || h[0] == ':' || (!strchr(h, ':') && !strchr(h, ';')) || strpbrk(h, "\r\n"))
            return SL_EINVAL;
        /* signed requests carry only headers that are sent: no directives */
        if (o->sigv4 && header_is_directive(h))
            return SL_EINVAL;
    }
    if (o->body && o->body_path)
        return SL_EINVAL;
    if (strcmp(method, "HEAD") == 0 && (o->body || o->body_path))
        return SL_EINVAL;
    if (!o->body && o->body_len)
        return SL_EINVAL;
    if (o->timeout_ms < 0 || o->connect_timeout_ms < 0 || o->max_redirects < 0 ||
        o->max_response_bytes > SL_CURL_MAX_RESPONSE_LIMIT)
        return SL_EINVAL;
    if (!o->sigv4 && (o->sigv4_flags || o->sigv4_payload_sha256))
        return SL_EINVAL;
    if (o->sigv4) {
        /* a signature covers one host and path: a redirect would resend it elsewhere */
        if (o->max_redirects > 0)
            return SL_EINVAL;
        /* a file body is never hashed here (that would read it on the loop): its hash
         * comes from the caller, or S3 takes UNSIGNED-PAYLOAD; a memory body's hash
         * may come from the caller too (hashed on the worker pool) */
        if (o->body_path && !o->sigv4_payload_sha256 &&
            (o->sigv4_flags & SL_SIGV4_S3) != SL_SIGV4_S3)
            return SL_EINVAL;
    }
    return 0;
}

static int cc_err(CURLcode cc)
{
    return cc == CURLE_OUT_OF_MEMORY ? SL_ENOMEM : SL_EINVAL;
}

static int slist_add(sl_curl_xfer_t *x, const char *h)
{
    struct curl_slist *l = curl_slist_append(x->req_headers, h);
    if (!l)
        return SL_ENOMEM;
    x->req_headers = l;
    return 0;
}

/*
 * Signs `sent` (exactly the headers that go on the wire, NULL-terminated) and
 * adds the headers sl_sigv4 returns (Authorization, X-Amz-Date, Host, ...).
 * The payload hash is the caller's (sigv4_payload_sha256), else the in-memory
 * body's, or UNSIGNED-PAYLOAD (S3 file bodies, checked in check_opts).
 */
static int sign_headers(sl_curl_xfer_t *x, const sl_curl_req_opts_t *o, const char *method,
                        const char *const *sent)
{
    char hash[65];
    const char *payload = NULL; /* NULL: the empty body's hash */
    if (o->sigv4_payload_sha256) {
        payload = o->sigv4_payload_sha256; /* the caller's, not checked here */
    } else if (o->body_path) {
        payload = SL_SIGV4_UNSIGNED_PAYLOAD;
    } else if (o->body) {
        sl_sha256_hex(o->body, o->body_len, hash);
        payload = hash;
    }
    sl_sigv4_out_t *s = malloc(sizeof *s); /* ~7 KiB: not on the loop's stack */
    if (!s)
        return SL_ENOMEM;
    int err = sl_sigv4_sign(o->sigv4, method, o->url, sent, payload, time(NULL), o->sigv4_flags, s);
    for (size_t i = 0; err == 0 && i < s->n_headers; i++)
        err = slist_add(x, s->headers[i]);
    free(s);
    return err;
}

/* Builds the request header list: the caller's headers plus our defaults, signed if asked. */
static int build_headers(sl_curl_xfer_t *x, const sl_curl_req_opts_t *o, const char *method,
                         int has_body)
{
    static const char default_ctype[] = "Content-Type: application/octet-stream";
    const char *sent[SL_CURL_MAX_REQ_HEADERS + 2];
    size_t ns = 0;
    int have_expect = 0, have_ctype = 0, err;
    for (size_t i = 0; i < o->n_headers; i++) {
        have_expect |= header_is(o->headers[i], "Expect");
        have_ctype |= header_is(o->headers[i], "Content-Type");
        if ((err = slist_add(x, o->headers[i])) != 0)
            return err;
        sent[ns++] = o->headers[i];
    }
    /* instead of curl's form-urlencoded default */
    if (has_body && !have_ctype) {
        if ((err = slist_add(x, default_ctype)) != 0)
            return err;
        sent[ns++] = default_ctype;
    }
    /* No "Expect: 100-continue" round trip (and its 1 s stall on servers that
     * ignore it). "Expect:" is a directive to curl, never sent: so never signed
     * (libcurl 7.88's own SigV4 signed it, and AWS refused the request). */
    if (!have_expect && (err = slist_add(x, "Expect:")) != 0)
        return err;
    sent[ns] = NULL;
    return o->sigv4 ? sign_headers(x, o, method, sent) : 0;
}

#define SETOPT(opt, val)                                                                           \
    do {                                                                                           \
        CURLcode cc_ = curl_easy_setopt(e, opt, val);                                              \
        if (cc_ != CURLE_OK)                                                                       \
            return cc_err(cc_);                                                                    \
    } while (0)

static int setup_easy(sl_curl_xfer_t *x, const sl_curl_req_opts_t *o, const char *method)
{
    CURL *e = x->easy;
    long timeout = o->timeout_ms ? o->timeout_ms : SL_CURL_DEFAULT_TIMEOUT_MS;
    long ctimeout =
        o->connect_timeout_ms ? o->connect_timeout_ms : SL_CURL_DEFAULT_CONNECT_TIMEOUT_MS;
    int is_get = strcmp(method, "GET") == 0, is_head = strcmp(method, "HEAD") == 0;
    int mem_body = o->body || (!o->body_path && !is_get && !is_head);

    SETOPT(CURLOPT_URL, o->url);
    SETOPT(CURLOPT_PRIVATE, (void *)x);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FOLLOWLOCATION, o->max_redirects > 0 ? 1L : 0L);
    if (o->max_redirects > 0)
        SETOPT(CURLOPT_MAXREDIRS, (long)o->max_redirects);
    SETOPT(CURLOPT_TIMEOUT_MS, timeout);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, ctimeout);
    SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
    SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(CURLOPT_WRITEDATA, (void *)x);
    SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
    SETOPT(CURLOPT_HEADERDATA, (void *)x);
    /* fails early with CURLE_FILESIZE_EXCEEDED when Content-Length is above the limit;
     * not for HEAD: there is no body, and Content-Length is the resource's size (S3's stat) */
    if (!is_head)
        SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->resp_max);

    if (is_head) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else if (o->body_path) {
        /* UPLOAD sends the file with a Content-Length; CUSTOMREQUEST sets the verb */
        SETOPT(CURLOPT_UPLOAD, 1L);
        SETOPT(CURLOPT_INFILESIZE_LARGE, x->file_size);
        SETOPT(CURLOPT_READFUNCTION, read_cb);
        SETOPT(CURLOPT_READDATA, (void *)x);
        SETOPT(CURLOPT_SEEKFUNCTION, seek_cb);
        SETOPT(CURLOPT_SEEKDATA, (void *)x);
    } else if (mem_body) {
        /* An absent body on POST/PUT/... is sent as "Content-Length: 0". The
         * size is set first so COPYPOSTFIELDS copies exactly body_len bytes,
         * which is also what sign_headers() hashes. */
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        SETOPT(CURLOPT_COPYPOSTFIELDS, o->body ? (const char *)o->body : "");
    }
    /* the verb libcurl picks for this setup; anything else is a custom request */
    const char *natural = is_head ? "HEAD" : o->body_path ? "PUT" : mem_body ? "POST" : "GET";
    if (strcmp(method, natural) != 0)
        SETOPT(CURLOPT_CUSTOMREQUEST, method);

    int err = build_headers(x, o, method, mem_body || o->body_path);
    if (err)
        return err;
    SETOPT(CURLOPT_HTTPHEADER, x->req_headers);
    /* the path is signed as given: curl must not squash "/./" or "/../" in it */
    if (o->sigv4)
        SETOPT(CURLOPT_PATH_AS_IS, 1L);
    return 0;
}

#undef SETOPT

static int open_body_file(sl_curl_xfer_t *x, const char *path)
{
    struct stat st;
    x->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (x->fd < 0)
        return errno == ENOENT ? SL_ENOTFOUND : SL_EIO;
    if (fstat(x->fd, &st) != 0)
        return SL_EIO;
    if (!S_ISREG(st.st_mode))
        return SL_EINVAL;
    x->file_size = (curl_off_t)st.st_size;
    return 0;
}

int sl_curl_request(sl_curl_t *c, const sl_curl_req_opts_t *o, sl_curl_cb cb, void *arg,
                    sl_curl_xfer_t **out)
{
    if (!c || !o || !cb)
        return SL_EINVAL;
    if (c->closing)
        return SL_ECLOSED;
    const char *method = o->method ? o->method : "GET";
    int err = check_opts(o, method);
    if (err)
        return err;

    sl_curl_xfer_t *x = calloc(1, sizeof *x);
    if (!x)
        return SL_ENOMEM;
    x->c = c;
    x->cb = cb;
    x->arg = arg;
    x->fd = -1;
    x->resp_max = o->max_response_bytes ? o->max_response_bytes : SL_CURL_DEFAULT_MAX_RESPONSE;
    if (o->body_path && (err = open_body_file(x, o->body_path)) != 0)
        goto fail;
    err = SL_ENOMEM;
    x->easy = curl_easy_init();
    if (!x->easy)
        goto fail;
    if ((err = setup_easy(x, o, method)) != 0)
        goto fail;
    /* Only arms the 0 ms timer (timer_cb): nothing runs before a later loop turn. */
    if (curl_multi_add_handle(c->multi, x->easy) != CURLM_OK) {
        err = SL_ENOMEM;
        goto fail;
    }
    x->in_multi = 1;
    active_link(c, x);
    c->pending++;
    if (out)
        *out = x;
    if (sl_fault_hit("curl")) {
        /* SL_FAULTS: a transient failure (delivered on a later turn, as any). */
        x->own_err = SL_EUNAVAIL;
        set_msg(x, "fault injected: connection refused");
        finish(x, CURLE_COULDNT_CONNECT, 0);
    }
    return 0;
fail:
    xfer_free(x);
    return err;
}

void sl_curl_cancel(sl_curl_xfer_t *x)
{
    if (!x)
        return;
    if (x->queued) {
        /* finished but not delivered yet: report the cancel, not the result */
        x->err = SL_ECANCELED;
        set_msg(x, "cancelled");
        return;
    }
    if (x->in_multi)
        finish(x, CURLE_OK, SL_ECANCELED);
}

size_t sl_curl_pending(const sl_curl_t *c)
{
    return c ? c->pending : 0;
}

/*
 * Cancels and reports everything, then frees. User callbacks run here with
 * in_cb set, so a nested sl_curl_free only sets free_pending (ignored: we are
 * already freeing) and new requests get SL_ECLOSED.
 */
static void destroy(sl_curl_t *c)
{
    c->closing = 1;
    c->free_pending = 0;
    while (c->active)
        finish(c->active, CURLE_OK, SL_ECANCELED);
    for (sl_curl_xfer_t *x = c->done_head; x; x = x->qnext)
        sl_curl_cancel(x);
    sl_curl_xfer_t *x;
    while ((x = done_pop(c)))
        deliver(c, x);
    /* closes cached connections; curl reports their sockets REMOVE to sock_cb */
    curl_multi_cleanup(c->multi);
    while (c->socks)
        sock_free(c, c->socks);
    event_free(c->done_ev);
    event_free(c->timer);
    free(c);
    curl_global_cleanup();
}

void sl_curl_free(sl_curl_t *c)
{
    if (!c)
        return;
    if (c->in_cb) {
        /* inside a transfer's callback: done_event_cb finishes the job when it returns */
        c->closing = 1;
        c->free_pending = 1;
        return;
    }
    destroy(c);
}
