/*
 * http.c — the HTTP/1.1 server: an evconnlistener, one bufferevent per
 * connection, Debian's http-parser (2.9) in HTTP_REQUEST mode.
 *
 * Each connection has at most one request in flight. The parser is paused at
 * the end of a request's headers (the handler runs outside the parser), and
 * again at the end of its message, so pipelined bytes stay in the input
 * buffer until the response is finished; the next request is parsed on a
 * later loop turn. All work that touches a connection's state runs from
 * conn_step(), which is only ever entered from libevent callbacks; the public
 * calls a handler makes (respond, resume, ...) only change flags and schedule
 * the connection's zero-timeout "defer" event. A connection struct is freed
 * only from that defer event, once its socket is closed and its request is
 * gone (Redis's freeClientAsync). See docs/internals/http.md.
 */
#include "core/http.h"
#include "core/crypto.h"
#include "core/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <http_parser.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* An unread request body up to this size is read and dropped after an early
 * response, keeping the connection; a larger one closes the connection. */
#define SL_HTTP_DISCARD_MAX (64 * 1024)
/* After a closing response, unread input is drained this long before close(),
 * so the kernel does not answer it with a RST that could eat the response. */
#define SL_HTTP_LINGER_MS 1000
/* Extra response headers a handler may add, in bytes. */
#define SL_HTTP_RESP_HDR_MAX (16 * 1024)
/* Connections beyond max_connections that are being told 503 at once. */
#define SL_HTTP_OVERLOAD_MAX 64
/* A query parameter name longer than this never matches. */
#define SL_HTTP_QNAME_MAX 256
#define SL_HTTP_ACCEPT_RETRY_MS 100
/* Buckets of the per-address connection counts (chained; entries only for
 * addresses with an open connection). */
#define SL_HTTP_IP_BUCKETS 1024
#define SL_HTTP_IP_KEY 16
/* Random bytes drawn at once for request ids (8 each): one RAND_bytes call
 * per 64 requests instead of one per request. */
#define SL_HTTP_IDPOOL 512
/* A finished request's struct and header store are kept by its connection for
 * the next request when the store is at most this big (no malloc per
 * request on keep-alive). Not in sanitizer builds: ASan should see a handler
 * that uses a request after it finished. */
#define SL_HTTP_REUSE_HBUF 4096
#if defined(__SANITIZE_ADDRESS__)
#define SL_HTTP_REUSE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SL_HTTP_REUSE 0
#endif
#endif
#ifndef SL_HTTP_REUSE
#define SL_HTTP_REUSE 1
#endif
/* A response head up to this size is built on the stack. */
#define SL_HTTP_HEAD_STACK 2048

enum { BODY_NONE, BODY_BUFFER, BODY_STREAM };
enum { TK_NONE, TK_HEADER, TK_IDLE, TK_BODY, TK_LINGER };
enum { HCB_NONE, HCB_URL, HCB_FIELD, HCB_VALUE };

typedef struct conn_s conn_t;

#define SL_HTTP_BODY_LOWAT (64 * 1024) /* read low-water mark of a streamed body (conn_update_lowat) */
#define SL_HTTP_BODY_RCVBUF (512 * 1024) /* SO_RCVBUF then (the kernel doubles it) */
/* Bytes of a streamed body read per readiness (conn_sock_readcb): just under
 * 128 KiB, so that libevent's chain (header + data, rounded up to a power of
 * two) is a 128 KiB allocation, not 256. */
#define SL_HTTP_BODY_READ (128 * 1024 - 512)
/* Bytes read per readiness otherwise: a request's head and small bodies. */
#define SL_HTTP_READ (16 * 1024)

/* Open connections from one client address: IPv4, or the /64 of an IPv6
 * address (one host usually owns a whole /64, so counting single IPv6
 * addresses would not limit anyone). */
typedef struct ipcount_s {
    struct ipcount_s *next;
    unsigned char key[SL_HTTP_IP_KEY];
    size_t n;
} ipcount_t;

struct sl_http_req_s {
    conn_t *conn;

    /* Request line and headers: NUL-separated strings in hbuf (the URL at
     * offset 0), located by offsets because hbuf grows with realloc. */
    char *hbuf;
    size_t hlen, hcap;
    size_t *hoff; /* name, value offset pairs */
    size_t nhdr, hoffcap;
    int hcb_last;
    size_t path_off, query_off;
    const char *method;
    int64_t content_length;
    char id[2 * 8 + 1];
    double t_start;

    unsigned headers_done : 1, has_body : 1, keepalive : 1, http10 : 1, is_head : 1,
        expect_continue : 1, upgrade : 1;
    unsigned dispatched : 1, msg_complete : 1, finished : 1, server_answered : 1, resp_started : 1,
        resp_chunked : 1, will_close : 1, closed : 1, paused : 1, abandoned : 1, continue_sent : 1;
    unsigned body_due : 1, body_delivered : 1, deliver_after_finish : 1, close_due : 1,
        close_notified : 1, drain_armed : 1;

    int status;
    int body_mode;
    int body_err;
    char *body;
    size_t body_len, body_cap, body_max;
    uint64_t body_bytes;
    sl_http_body_cb body_cb;
    sl_http_data_cb data_cb;
    sl_http_end_cb end_cb;
    void *body_arg;
    sl_http_close_cb close_cb;
    void *close_arg;
    sl_http_drain_cb drain_cb;
    void *drain_arg;

    struct evbuffer *resp_hdrs;
    int64_t resp_cl;
    uint64_t resp_written;
    const char *route;
    void *data;
};

struct conn_s {
    sl_http_server_t *srv;
    conn_t *prev, *next;
    struct bufferevent *bev; /* NULL once the socket is closed; writes only */
    struct event *rev;       /* reads: the socket's own event (conn_sock_readcb) */
    struct event *timer;
    struct event *defer;
    http_parser parser;
    sl_http_req_t *req;
    sl_http_req_t *spare; /* the last finished request, kept for reuse (SL_HTTP_REUSE) */
    char peer[64];
    ipcount_t *ip; /* counted against its address; NULL when not */
    int timer_kind;
    size_t idle_out; /* output pending when the idle timer was armed */
    unsigned long nreq;
    /* sl_http__parse: the input is this memory, not a socket (no bev, no events). */
    const char *mem;
    size_t mem_len, mem_off;
    unsigned in_mem : 1;
    int lowat;              /* SO_RCVLOWAT set on the socket (<= 1: the default) */
    unsigned lowat_off : 1; /* a slow sender: no read low-water mark any more */
    unsigned rcvbuf_set : 1; /* SO_RCVBUF raised for a streamed body (kept for the connection) */
    unsigned running : 1, msg_begun : 1, discard : 1, parse_dead : 1, close_after_flush : 1,
        lingering : 1, read_eof : 1, hdr_overflow : 1, overload : 1, yield : 1;
    /* Reading wanted (read_on), held by the input's high-water mark (wm_held),
     * and whether rev is added now: rev is added exactly when on and not held. */
    unsigned read_on : 1, wm_held : 1, rev_added : 1;
};

struct sl_http_server_s {
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *accept_retry;
    sl_http_limits_t limits;
    sl_http_handler_cb handler;
    void *arg;
    sl_http_finish_cb finish_cb;
    void *finish_arg;
    int port;
    size_t nconns, noverload;
    ipcount_t *ips[SL_HTTP_IP_BUCKETS];
    conn_t *conns;
    int freeing;
    int draining; /* sl_http_server_drain ran: no listener, every connection closes when done */
    sl_http_date_t date;
    unsigned char idpool[SL_HTTP_IDPOOL];
    size_t idpool_left; /* unused bytes at the end of idpool; 0: draw again */
};

static void conn_schedule(conn_t *c);
static void conn_close(conn_t *c, int why);
static void conn_read_set(conn_t *c, int on);
static void conn_eventcb(struct bufferevent *bev, short what, void *arg);

/* ---- per-address connection counts ---- */

/* The key of a client address; 0 if it has none (a unix socket, adopted fds
 * without an address), which is never counted. */
static int ip_key(const struct sockaddr *sa, unsigned char key[SL_HTTP_IP_KEY])
{
    memset(key, 0, SL_HTTP_IP_KEY);
    if (sa && sa->sa_family == AF_INET) {
        memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 1;
    }
    if (sa && sa->sa_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, v4mapped, 12) == 0)
            memcpy(key, a + 12, 4); /* the same client as over IPv4 */
        else
            memcpy(key + 4, a, 8); /* the /64 */
        key[15] = 6;
        return 1;
    }
    return 0;
}

static size_t ip_bucket(const unsigned char *key)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < SL_HTTP_IP_KEY; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % SL_HTTP_IP_BUCKETS;
}

/* The count entry of key, created at 0 when missing (NULL: out of memory). */
static ipcount_t *ip_lookup(sl_http_server_t *srv, const unsigned char *key)
{
    ipcount_t **b = &srv->ips[ip_bucket(key)];
    for (ipcount_t *e = *b; e; e = e->next)
        if (memcmp(e->key, key, SL_HTTP_IP_KEY) == 0)
            return e;
    ipcount_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    memcpy(e->key, key, SL_HTTP_IP_KEY);
    e->next = *b;
    *b = e;
    return e;
}

/* One connection fewer from e's address; the entry goes with the last. */
static void ip_release(sl_http_server_t *srv, ipcount_t *e)
{
    if (!e || --e->n > 0)
        return;
    for (ipcount_t **p = &srv->ips[ip_bucket(e->key)]; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    free(e);
}

static void limits_fill(sl_http_limits_t *l);

/* The connection's input is still open: a socket, or memory (sl_http__parse). */
static int conn_open(const conn_t *c)
{
    return c->bev != NULL || c->in_mem;
}
static void resp_error(sl_http_req_t *r, int status, const char *code, const char *message,
                       int retry_after_s);
static void req_finish(sl_http_req_t *r);

/* ---- small helpers ---- */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *sl_http__date(sl_http_date_t *d, time_t now)
{
    static const char wd[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char mon[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    if (d->len > 0 && now == d->sec)
        return d->text;
    if (!gmtime_r(&now, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0)
        return d->len > 0 ? d->text : "Thu, 01 Jan 1970 00:00:00 GMT";
    /* RFC 7231 7.1.1.1 IMF-fixdate: always 29 bytes. */
    int n = snprintf(d->text, sizeof d->text, "%s, %02d %s %04d %02d:%02d:%02d GMT",
                     wd[tm.tm_wday % 7], tm.tm_mday, mon[tm.tm_mon % 12], tm.tm_year + 1900,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
    d->len = n > 0 && (size_t)n < sizeof d->text ? (size_t)n : 0;
    d->sec = now;
    return d->text;
}

/* The Date header's value, formatted once a second (nginx's ngx_cached_http_time,
 * h2o's per-loop cached time): the clock read is libevent's, cached per loop turn. */
static const char *srv_date(sl_http_server_t *s)
{
    struct timeval tv;
    if (!s->base || event_base_gettimeofday_cached(s->base, &tv) != 0)
        tv.tv_sec = time(NULL);
    return sl_http__date(&s->date, tv.tv_sec);
}

/* A header name or value that cannot break the response framing. */
static int hdr_text_ok(const char *s)
{
    return s && strpbrk(s, "\r\n") == NULL;
}

/* Percent-decodes src[0..n) ('+' is a space) into dst; -1 if it does not fit. */
static int pct_decode(const char *src, size_t n, char *dst, size_t dstlen)
{
    size_t o = 0;
    if (dstlen == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)src[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%' && i + 2 < n && sl_hex_digit((unsigned char)src[i + 1]) >= 0 &&
                   sl_hex_digit((unsigned char)src[i + 2]) >= 0) {
            ch = sl_hex_digit((unsigned char)src[i + 1]) * 16 + sl_hex_digit((unsigned char)src[i + 2]);
            i += 2;
        }
        if (o + 1 >= dstlen)
            return -1;
        dst[o++] = (char)ch;
    }
    dst[o] = '\0';
    return (int)o;
}

/* ---- requests ---- */

/* A request id: 8 random bytes in hex, from the server's pool. */
static void req_make_id(conn_t *c, sl_http_req_t *r)
{
    static unsigned long fallback;
    sl_http_server_t *srv = c->srv;
    if (c->in_mem || !c->defer) { /* sl_http__parse: no entropy (a syscall) per request */
        fallback++;
        snprintf(r->id, sizeof r->id, "%016lx", fallback);
        return;
    }
    if (srv->idpool_left < 8) {
        if (sl_random_bytes(srv->idpool, SL_HTTP_IDPOOL) != 0) {
            fallback++;
            snprintf(r->id, sizeof r->id, "%016lx", fallback);
            return;
        }
        srv->idpool_left = SL_HTTP_IDPOOL;
    }
    unsigned char *b = srv->idpool + SL_HTTP_IDPOOL - srv->idpool_left;
    sl_hex(b, 8, r->id);
    memset(b, 0, 8); /* used bytes do not linger */
    srv->idpool_left -= 8;
}

static sl_http_req_t *req_new(conn_t *c)
{
    sl_http_req_t *r = c->spare;
    if (r) { /* keep the header store, clear the rest */
        char *hbuf = r->hbuf;
        size_t hcap = r->hcap, *hoff = r->hoff, hoffcap = r->hoffcap;
        c->spare = NULL;
        memset(r, 0, sizeof *r);
        r->hbuf = hbuf;
        r->hcap = hcap;
        r->hoff = hoff;
        r->hoffcap = hoffcap;
    } else if (!(r = calloc(1, sizeof *r))) {
        return NULL;
    }
    r->conn = c;
    r->method = "";
    r->content_length = -1;
    r->resp_cl = -1;
    r->t_start = mono_now();
    req_make_id(c, r);
    return r;
}

static void req_destroy(sl_http_req_t *r)
{
    free(r->hbuf);
    free(r->hoff);
    free(r);
}

static void req_free(sl_http_server_t *srv, sl_http_req_t *r, int report)
{
    conn_t *c = r->conn;
    if (report && srv->finish_cb)
        srv->finish_cb(r, r->status, mono_now() - r->t_start, srv->finish_arg);
    if (r->resp_hdrs)
        evbuffer_free(r->resp_hdrs);
    free(r->body);
    /* Kept for the connection's next request: only a socket connection that
     * still reads (its struct outlives this request; conn_free frees it). */
    if (SL_HTTP_REUSE && c->defer && c->bev && !c->spare && !srv->freeing &&
        r->hcap <= SL_HTTP_REUSE_HBUF) {
        r->resp_hdrs = NULL;
        r->body = NULL;
        c->spare = r;
        return;
    }
    req_destroy(r);
}

/* Appends to the header store; past max_header_bytes the request gets 431. */
static int hbuf_add(sl_http_req_t *r, const char *at, size_t len)
{
    size_t max = r->conn->srv->limits.max_header_bytes;
    if (r->hlen > max || len > max - r->hlen) {
        r->conn->hdr_overflow = 1;
        return -1;
    }
    if (r->hlen + len > r->hcap) {
        /* `at` may point into hbuf itself (req_split_url copies from it). */
        int inside = r->hbuf && at >= r->hbuf && at < r->hbuf + r->hlen;
        size_t at_off = inside ? (size_t)(at - r->hbuf) : 0;
        size_t cap = r->hcap ? r->hcap : 256;
        while (cap < r->hlen + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        char *nb = realloc(r->hbuf, cap);
        if (!nb)
            return -1;
        r->hbuf = nb;
        r->hcap = cap;
        if (inside)
            at = nb + at_off;
    }
    memcpy(r->hbuf + r->hlen, at, len);
    r->hlen += len;
    return 0;
}

/* Terminates the URL, header name or value being accumulated. */
static int hdr_close_piece(sl_http_req_t *r)
{
    switch (r->hcb_last) {
    case HCB_URL:
        r->hcb_last = HCB_NONE;
        return hbuf_add(r, "", 1);
    case HCB_FIELD: /* a name with an empty value: on_header_value never came */
        r->hcb_last = HCB_NONE;
        if (hbuf_add(r, "", 1) != 0)
            return -1;
        r->hoff[2 * (r->nhdr - 1) + 1] = r->hlen;
        return hbuf_add(r, "", 1);
    case HCB_VALUE: {
        size_t voff = r->hoff[2 * (r->nhdr - 1) + 1];
        while (r->hlen > voff && (r->hbuf[r->hlen - 1] == ' ' || r->hbuf[r->hlen - 1] == '\t'))
            r->hlen--;
        r->hcb_last = HCB_NONE;
        return hbuf_add(r, "", 1);
    }
    }
    return 0;
}

/* The one rule for whether the connection closes after this response. */
static int req_will_close(const sl_http_req_t *r)
{
    const conn_t *c = r->conn;
    if (!conn_open(c) || c->srv->freeing || c->srv->draining || !r->keepalive || r->upgrade ||
        c->parse_dead || r->closed)
        return 1;
    if (!r->msg_complete && r->has_body) {
        if (r->abandoned || r->content_length < 0)
            return 1;
        if (r->expect_continue && !r->continue_sent)
            return 1; /* the client may never send the body */
        if ((uint64_t)r->content_length - r->body_bytes > SL_HTTP_DISCARD_MAX)
            return 1;
    }
    return 0;
}

/* The server answers a request itself (408, 413, 431, 400, 503). */
static void req_server_error(sl_http_req_t *r, int status, const char *code, const char *msg,
                             int retry)
{
    r->conn->parse_dead = 1;
    r->server_answered = 1;
    resp_error(r, status, code, msg, retry);
}

static void maybe_send_continue(sl_http_req_t *r)
{
    conn_t *c = r->conn;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (!r->expect_continue || r->continue_sent || r->msg_complete || r->resp_started || !c->bev)
        return;
    r->continue_sent = 1;
    bufferevent_write(c->bev, cont, sizeof cont - 1);
}

/* ---- parser callbacks (never call the handler; only data_cb) ---- */

static int on_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    c->msg_begun = 1;
    if (!c->req) {
        c->req = req_new(c);
        if (!c->req)
            return -1;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    sl_http_req_t *r = c->req;
    if (!r || r->headers_done)
        return 0;
    r->hcb_last = HCB_URL;
    return hbuf_add(r, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    sl_http_req_t *r = c->req;
    if (!r || r->headers_done) /* chunked trailers are ignored */
        return 0;
    if (r->hcb_last != HCB_FIELD) {
        if (hdr_close_piece(r) != 0)
            return -1;
        if (r->nhdr >= c->srv->limits.max_headers) {
            c->hdr_overflow = 1;
            return -1;
        }
        if (r->nhdr == r->hoffcap) {
            size_t cap = r->hoffcap ? r->hoffcap * 2 : 16;
            if (cap > c->srv->limits.max_headers)
                cap = c->srv->limits.max_headers;
            size_t *no = realloc(r->hoff, cap * 2 * sizeof *no);
            if (!no)
                return -1;
            r->hoff = no;
            r->hoffcap = cap;
        }
        r->hoff[2 * r->nhdr] = r->hlen;
        r->hoff[2 * r->nhdr + 1] = 0;
        r->nhdr++;
        r->hcb_last = HCB_FIELD;
    }
    return hbuf_add(r, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    sl_http_req_t *r = c->req;
    if (!r || r->headers_done)
        return 0;
    if (r->hcb_last != HCB_VALUE) {
        if (r->hcb_last != HCB_FIELD || hbuf_add(r, "", 1) != 0)
            return -1;
        r->hoff[2 * (r->nhdr - 1) + 1] = r->hlen;
        r->hcb_last = HCB_VALUE;
    }
    return hbuf_add(r, at, len);
}

/* Splits the request target into path and query (origin- or absolute-form). */
static int req_split_url(sl_http_req_t *r, int is_connect)
{
    if (!r->hbuf && hbuf_add(r, "", 1) != 0)
        return -1;
    char *url = r->hbuf;
    size_t len = strlen(url);
    if (url[0] == '/' || url[0] == '*') {
        char *hash = strchr(url, '#');
        if (hash)
            *hash = '\0';
        char *q = strchr(url, '?');
        r->path_off = 0;
        if (q) {
            *q = '\0';
            r->query_off = (size_t)(q + 1 - url);
        } else {
            r->query_off = strlen(url); /* the path's NUL: an empty string */
        }
        return 0;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, len, is_connect, &u) != 0)
        return -1;
    uint16_t poff = u.field_data[UF_PATH].off, plen = u.field_data[UF_PATH].len;
    uint16_t qoff = u.field_data[UF_QUERY].off, qlen = u.field_data[UF_QUERY].len;
    int has_path = (u.field_set & (1 << UF_PATH)) != 0;
    int has_query = (u.field_set & (1 << UF_QUERY)) != 0;
    r->path_off = r->hlen;
    if (has_path) {
        if (hbuf_add(r, r->hbuf + poff, plen) != 0)
            return -1;
    } else if (!is_connect && hbuf_add(r, "/", 1) != 0) {
        return -1;
    }
    if (hbuf_add(r, "", 1) != 0)
        return -1;
    r->query_off = r->hlen;
    if (has_query && hbuf_add(r, r->hbuf + qoff, qlen) != 0)
        return -1;
    return hbuf_add(r, "", 1);
}

static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    sl_http_req_t *r = c->req;
    if (!r || hdr_close_piece(r) != 0)
        return -1;
    /* RFC 7230 3.3.3: a Transfer-Encoding other than chunked has no framing. */
    if (p->uses_transfer_encoding && !(p->flags & F_CHUNKED))
        return -1;
    if (req_split_url(r, p->method == HTTP_CONNECT) != 0)
        return -1;
    r->headers_done = 1;
    r->method = http_method_str((enum http_method)p->method);
    if (p->flags & F_CHUNKED) {
        r->has_body = 1;
    } else if (p->content_length != UINT64_MAX) {
        r->content_length =
            p->content_length > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)p->content_length;
        r->has_body = r->content_length > 0;
    }
    r->keepalive = http_should_keep_alive(p) != 0;
    r->http10 = p->http_major == 1 && p->http_minor == 0;
    r->is_head = p->method == HTTP_HEAD;
    r->upgrade = p->upgrade;
    const char *expect = sl_http_req_header(r, "Expect");
    r->expect_continue =
        expect && strcasecmp(expect, "100-continue") == 0 && r->has_body && !r->http10;
    r->t_start = mono_now();
    /* The handler runs after http_parser_execute returns, not in here. */
    http_parser_pause(p, 1);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    sl_http_req_t *r = c->req;
    if (c->discard || !r)
        return 0;
    r->body_bytes += len;
    if (r->finished)
        return 0;
    if (r->body_mode == BODY_BUFFER) {
        if (len > r->body_max - r->body_len) {
            req_server_error(r, 413, "payload_too_large", "the request body is too large", -1);
            r->body_due = 1;
            r->body_err = SL_ETOOBIG;
            r->deliver_after_finish = 1;
            http_parser_pause(p, 1);
            return 0;
        }
        if (r->body_len + len + 1 > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 1024;
            while (cap < r->body_len + len + 1)
                cap *= 2;
            if (cap > r->body_max + 1)
                cap = r->body_max + 1;
            char *nb = realloc(r->body, cap);
            if (!nb)
                return -1;
            r->body = nb;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, at, len);
        r->body_len += len;
    } else if (r->body_mode == BODY_STREAM && !r->abandoned) {
        uint64_t max = c->srv->limits.max_body_bytes;
        if (max > 0 && r->body_bytes > max) {
            /* Counted as received, so a chunked body is held to the limit as
             * a declared one is: nothing past it reaches the handler, which
             * hears SL_ETOOBIG and answers 413; the connection then closes. */
            r->abandoned = 1;
            c->parse_dead = 1;
            r->body_due = 1;
            r->body_err = SL_ETOOBIG;
            http_parser_pause(p, 1);
            conn_schedule(c);
            return 0;
        }
        if (r->data_cb(r, at, len, r->body_arg) != 0) {
            r->abandoned = 1;
            c->parse_dead = 1;
            http_parser_pause(p, 1);
            conn_schedule(c);
            return 0;
        }
        if (r->paused || r->finished)
            http_parser_pause(p, 1);
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    sl_http_req_t *r = c->req;
    c->msg_begun = 0;
    http_parser_pause(p, 1);
    conn_schedule(c);
    if (c->discard) {
        c->discard = 0;
        c->yield = 1;
        return 0;
    }
    if (!r)
        return 0;
    r->msg_complete = 1;
    if (r->body_mode != BODY_NONE && !r->abandoned && !r->body_due) {
        r->body_due = 1;
        r->body_err = 0;
    }
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- connections ---- */

static void conn_schedule(conn_t *c)
{
    static const struct timeval zero = {0, 0};
    if (c->defer) /* a memory-backed connection (sl_http__parse) is driven by its caller */
        evtimer_add(c->defer, &zero);
}

static void conn_set_timer(conn_t *c, int kind, int force)
{
    const sl_http_limits_t *l = &c->srv->limits;
    int ms = 0;
    if (kind == c->timer_kind && !force)
        return;
    evtimer_del(c->timer);
    c->timer_kind = kind;
    switch (kind) {
    case TK_HEADER:
        ms = l->header_timeout_ms;
        break;
    case TK_IDLE:
        ms = l->idle_timeout_ms;
        c->idle_out = c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
        break;
    case TK_BODY:
        ms = l->body_timeout_ms;
        break;
    case TK_LINGER:
        ms = SL_HTTP_LINGER_MS;
        break;
    default:
        return;
    }
    if (ms > 0) {
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(c->timer, &tv);
    }
}

/* Picks the timeout that applies to the connection's state. */
static void conn_update_timer(conn_t *c, int body_progress)
{
    sl_http_req_t *r = c->req;
    int kind = TK_NONE;
    if (!c->bev || c->lingering)
        return;
    if (r && r->finished)
        kind = TK_NONE;
    else if (c->close_after_flush)
        kind = TK_IDLE; /* a client that stops reading the last response */
    else if (!r && c->discard)
        kind = TK_BODY;
    else if (!r && !c->msg_begun)
        kind = c->nreq ? TK_IDLE : TK_HEADER;
    else if (r && !r->headers_done)
        kind = TK_HEADER;
    else if (r && r->dispatched && !r->finished && !r->msg_complete && !r->paused &&
             !r->abandoned && r->body_mode != BODY_NONE)
        kind = TK_BODY;
    conn_set_timer(c, kind, kind == TK_BODY && body_progress);
}

/*
 * Closes the socket (not the struct). A request the handler still owns is
 * marked closed; its on_close and body callbacks are delivered by conn_step
 * on a later turn, and the struct lives until the handler finishes it.
 */
static void conn_close(conn_t *c, int why)
{
    sl_http_req_t *r = c->req;
    if (!conn_open(c))
        return;
    if (c->bev) {
        if (c->rev) {
            event_free(c->rev); /* before the bufferevent closes the socket */
            c->rev = NULL;
            c->rev_added = 0;
        }
        bufferevent_free(c->bev);
        c->bev = NULL;
        evtimer_del(c->timer);
        c->timer_kind = TK_NONE;
        if (c->overload)
            c->srv->noverload--;
        else
            c->srv->nconns--;
        ip_release(c->srv, c->ip);
        c->ip = NULL;
    }
    c->in_mem = 0;
    if (r && !r->dispatched && !r->server_answered) {
        c->req = NULL; /* a request the handler never saw */
        req_free(c->srv, r, 0);
    } else if (r && !r->finished) {
        r->closed = 1;
        if (r->body_mode != BODY_NONE && !r->abandoned && !r->body_due) {
            r->body_due = 1;
            r->body_err = why ? why : SL_ECLOSED;
        }
        r->close_due = 1;
    }
    conn_schedule(c);
}

/* Half-closes, then drains what the client still sends, then closes. */
static void conn_start_close(conn_t *c)
{
    if (c->read_eof) {
        conn_close(c, 0);
        return;
    }
    c->lingering = 1;
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    evbuffer_drain(bufferevent_get_input(c->bev),
                   evbuffer_get_length(bufferevent_get_input(c->bev)));
    conn_read_set(c, 1);
    conn_set_timer(c, TK_LINGER, 1);
}

static int conn_can_parse(const conn_t *c)
{
    const sl_http_req_t *r = c->req;
    if (!conn_open(c) || c->parse_dead || c->close_after_flush || c->lingering || c->yield)
        return 0;
    if (!r)
        return 1;
    if (r->finished)
        return 0;
    if (!r->headers_done)
        return 1;
    if (!r->dispatched || r->msg_complete || r->paused || r->abandoned)
        return 0;
    return r->body_mode != BODY_NONE || !r->has_body;
}

static void conn_parse_error(conn_t *c, enum http_errno e)
{
    sl_http_req_t *r = c->req;
    char msg[128];
    c->parse_dead = 1;
    conn_schedule(c);
    if (r && r->dispatched) {
        /* Malformed body framing. A streamed body's handler hears of it and
         * responds; a buffered body is the server's to judge, as its size
         * is: it answers 400 itself and tells the handler afterwards. */
        if (!r->finished && r->body_mode != BODY_NONE && !r->abandoned && !r->body_due) {
            r->body_due = 1;
            r->body_err = SL_EPROTO;
            if (r->body_mode == BODY_BUFFER) {
                r->deliver_after_finish = 1;
                snprintf(msg, sizeof msg, "malformed request body: %s", http_errno_description(e));
                req_server_error(r, 400, "bad_request", msg, -1);
            }
        }
        return;
    }
    if (!r && c->discard) {
        conn_close(c, 0);
        return;
    }
    if (!r) {
        r = c->req = req_new(c);
        if (!r) {
            conn_close(c, SL_ENOMEM);
            return;
        }
    }
    if (c->hdr_overflow || e == HPE_HEADER_OVERFLOW) {
        req_server_error(r, 431, "header_too_large", "the request headers are too large", -1);
    } else {
        snprintf(msg, sizeof msg, "malformed request: %s", http_errno_description(e));
        req_server_error(r, 400, "bad_request", msg, -1);
    }
}

/* Runs the parser over buffered input while the request state allows it.
 * Returns non-zero if any bytes were consumed. */
static int conn_parse(conn_t *c)
{
    int progressed = 0;
    for (;;) {
        sl_http_req_t *r = c->req;
        if (r && r->headers_done && !r->dispatched && !r->finished) {
            r->dispatched = 1;
            c->srv->handler(r, c->srv->arg);
            continue;
        }
        if (!conn_can_parse(c))
            break;
        struct evbuffer_iovec v;
        if (c->in_mem) {
            v.iov_base = (void *)(c->mem + c->mem_off);
            v.iov_len = c->mem_len - c->mem_off;
            if (v.iov_len == 0)
                break;
        } else {
            struct evbuffer *in = bufferevent_get_input(c->bev);
            if (evbuffer_get_length(in) == 0 || evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
        }
        http_parser_pause(&c->parser, 0);
        size_t n = http_parser_execute(&c->parser, &parser_settings, v.iov_base, v.iov_len);
        if (!conn_open(c))
            break;
        if (c->in_mem)
            c->mem_off += n;
        else
            evbuffer_drain(bufferevent_get_input(c->bev), n);
        if (n > 0)
            progressed = 1;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            conn_parse_error(c, e);
            break;
        }
        if (c->parser.upgrade && (!c->req || c->req->msg_complete)) {
            /* What follows is another protocol; this server does not speak it. */
            c->parse_dead = 1;
            break;
        }
        if (e == HPE_OK && n < v.iov_len)
            break;
    }
    return progressed;
}

/* A half-closed client: decide what the end of its input means. */
static void conn_check_eof(conn_t *c)
{
    sl_http_req_t *r = c->req;
    if (!c->read_eof || c->lingering || c->parse_dead || c->close_after_flush)
        return;
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        return; /* still to be parsed once the request state allows */
    if (c->msg_begun) {
        /* The message can never complete: a truncated request. */
        conn_close(c, SL_ECLOSED);
    } else if (!r) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
            c->close_after_flush = 1;
            conn_schedule(c);
        } else {
            conn_close(c, 0);
        }
    }
    /* else a complete request is being answered; it closes after that */
}

static void deliver_due(sl_http_req_t *r)
{
    int was_finished = r->finished;
    if (r->close_due && !r->close_notified && !was_finished && r->close_cb) {
        r->close_notified = 1;
        r->close_cb(r, r->close_arg);
    }
    if (r->body_due && !r->body_delivered && (!was_finished || r->deliver_after_finish)) {
        r->body_delivered = 1;
        if (r->body_mode == BODY_BUFFER) {
            if (r->body_err == 0 && r->body)
                r->body[r->body_len] = '\0';
            r->body_cb(r, r->body_err, r->body_err ? NULL : (r->body ? r->body : ""),
                       r->body_err ? 0 : r->body_len, r->body_arg);
        } else if (r->body_mode == BODY_STREAM) {
            r->end_cb(r, r->body_err, r->body_arg);
        }
    }
}

static int req_due_pending(const sl_http_req_t *r)
{
    return r->body_due && !r->body_delivered && (!r->finished || r->deliver_after_finish);
}

/* Bytes of a streamed, length-delimited body still to come from the socket
 * (0 for anything else). */
static uint64_t conn_body_rest(conn_t *c)
{
    sl_http_req_t *r = c->req;
    if (!c->bev || c->in_mem || !r || c->lingering || c->discard || !r->dispatched ||
        r->body_mode != BODY_STREAM || r->finished || r->abandoned || r->msg_complete ||
        (c->parser.flags & F_CHUNKED) || r->content_length <= 0)
        return 0;
    uint64_t have = r->body_bytes + evbuffer_get_length(bufferevent_get_input(c->bev));
    return (uint64_t)r->content_length > have ? (uint64_t)r->content_length - have : 0;
}

/*
 * The socket's read low-water mark while a streamed body with a known length
 * arrives: the kernel then wakes the loop once SL_HTTP_BODY_LOWAT bytes (or
 * the rest of the body, if less) are queued, instead of for every segment the
 * sender wrote (~4 KiB per read with 50 senders): fewer reads, callbacks and
 * window updates per byte. Never more than the body still owes, so it cannot
 * wait for bytes that will not come; back to 1 for everything else (headers,
 * pipelined requests, chunked bodies). A sender slower than the mark over a
 * whole body timeout loses it (conn_timer_cb), so a trickle is not cut.
 */
static void conn_update_lowat(conn_t *c)
{
    int want = 1;
    if (!c->bev || c->in_mem)
        return;
    if (!c->lowat_off) {
        uint64_t rest = conn_body_rest(c);
        want = rest > SL_HTTP_BODY_LOWAT ? SL_HTTP_BODY_LOWAT : rest > 1 ? (int)rest : 1;
    }
    if (want == c->lowat || (want <= 1 && c->lowat <= 1))
        return;
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want) != 0) {
        c->lowat_off = 1; /* not a TCP socket, or refused: read as before */
        return;
    }
    if (want > 1 && c->lowat <= 1 && !c->rcvbuf_set) {
        /*
         * Room for several marks in the receive window: the kernel reports a
         * socket readable below the mark whenever the window is down to one
         * segment (64 KiB on loopback), so with the default buffer the mark
         * would never hold. And the mark must fit in one read.
         */
        int rcvbuf = SL_HTTP_BODY_RCVBUF;
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        c->rcvbuf_set = 1;
    }
    c->lowat = want;
}

/* The current request is finished and all its callbacks are delivered. */
static void conn_req_done(conn_t *c)
{
    sl_http_req_t *r = c->req;
    sl_http_server_t *srv = c->srv;
    int report = r->dispatched || r->server_answered;
    c->req = NULL;
    c->nreq++;
    if (conn_open(c)) {
        if (r->will_close || srv->freeing || srv->draining)
            c->close_after_flush = 1;
        else if (c->msg_begun)
            c->discard = 1; /* the small rest of an unread body */
        if (c->bev && !c->lingering)
            conn_read_set(c, 1); /* a handler's pause ends here */
    }
    req_free(srv, r, report);
}

static void conn_step(conn_t *c)
{
    sl_http_req_t *r = c->req;
    c->yield = 0;
    if (r && (r->dispatched || r->server_answered)) {
        deliver_due(r);
        if (r->finished && !req_due_pending(r)) {
            conn_req_done(c);
            conn_schedule(c); /* the next request, on a later turn */
            return;
        }
    }
    if (!c->bev || c->lingering)
        return;
    if (!c->req && c->close_after_flush) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_start_close(c);
        else
            conn_update_timer(c, 0);
        return;
    }
    int progressed = conn_parse(c);
    if (!c->bev)
        return;
    r = c->req;
    if (r && r->dispatched && r->finished && !c->lingering) {
        /*
         * The handler answered at once (/healthz, errors, cached reads): the
         * request is done in this same turn, not two turns later through the
         * defer event, which saves an epoll_wait and two timer operations
         * per request. Only if more is due (pipelined bytes, a body to
         * discard, a close) does the connection take a later turn as before.
         */
        deliver_due(r);
        if (r->finished && !req_due_pending(r)) {
            conn_req_done(c);
            if (!c->bev || c->close_after_flush || c->discard || c->yield ||
                evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
                conn_schedule(c);
                return;
            }
            evtimer_del(c->defer); /* req_finish's: nothing is left for it */
        }
    }
    conn_check_eof(c);
    conn_update_timer(c, progressed);
    conn_update_lowat(c);
}

static void conn_free(conn_t *c)
{
    sl_http_server_t *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->timer);
    event_free(c->defer);
    if (c->spare)
        req_destroy(c->spare);
    free(c);
    if (srv->freeing && !srv->conns)
        free(srv);
}

/* Entered only from libevent callbacks; never recursively. */
static void conn_run(conn_t *c)
{
    if (c->running) {
        conn_schedule(c);
        return;
    }
    c->running = 1;
    conn_step(c);
    c->running = 0;
    if (!c->bev && !c->req)
        conn_schedule(c); /* freed by the defer event */
}

static void conn_defer_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;
    (void)fd;
    (void)what;
    conn_step(c);
    if (!c->bev && !c->req)
        conn_free(c);
}

/* Bytes received by the kernel that the loop has not read (0 on error). */
static int conn_unread(conn_t *c)
{
    int n = 0;
    if (ioctl(bufferevent_getfd(c->bev), FIONREAD, &n) != 0)
        return 0;
    return n;
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;
    int kind = c->timer_kind;
    (void)fd;
    (void)what;
    c->timer_kind = TK_NONE;
    size_t out = c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
    if (kind == TK_IDLE && out > 0 && out < c->idle_out) {
        /* Still draining the last response: idle only once nothing moves. */
        conn_set_timer(c, TK_IDLE, 1);
        return;
    }
    if (kind == TK_HEADER && c->msg_begun && c->req && !c->req->headers_done) {
        req_server_error(c->req, 408, "request_timeout", "the request headers took too long", -1);
    } else if (kind == TK_BODY && c->req && c->lowat > 1 && c->bev && !c->lowat_off &&
               conn_unread(c) > 0) {
        /* Bytes may be waiting below the low-water mark: read them and give
         * the sender another full timeout, without the mark from now on. */
        c->lowat_off = 1;
        int one = 1;
        (void)setsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
        c->lowat = 1;
        conn_set_timer(c, TK_BODY, 1);
        return;
    } else if (kind == TK_BODY && c->req) {
        conn_close(c, SL_ETIMEDOUT);
    } else {
        conn_close(c, 0);
    }
    conn_run(c);
}

/*
 * Reading. The bufferevent only writes: libevent 2.1's own read asks the
 * kernel how much is waiting (an ioctl(FIONREAD) before every readv: a third
 * of the syscalls of a keep-alive request) and then reads at most 4 KiB
 * (EVBUFFER_MAX_READ), so a 20 MiB body took ~5,000 callbacks. The socket
 * has its own read event instead; each readiness reads, in one readv into
 * the bufferevent's input, up to SL_HTTP_READ, or while a streamed body with
 * a known length arrives up to SL_HTTP_BODY_READ of it, and never past the
 * input's high-water mark (read_high_watermark: reading stops there and
 * resumes when the parser has taken the input below it, as libevent's
 * watermark did). EOF and errors go to conn_eventcb as libevent reported them.
 */
static void conn_read_update(conn_t *c)
{
    int want = c->rev && c->read_on && !c->wm_held;
    if (want && !c->rev_added) {
        event_add(c->rev, NULL);
        c->rev_added = 1;
    } else if (!want && c->rev_added) {
        event_del(c->rev);
        c->rev_added = 0;
    }
}

static void conn_read_set(conn_t *c, int on)
{
    c->read_on = on != 0;
    conn_read_update(c);
}

/* The input shrank below the high-water mark: reading resumes. */
static void conn_inbuf_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    conn_t *c = arg;
    size_t hw = c->srv->limits.read_high_watermark;
    if (c->wm_held && info->n_deleted > 0 && (hw == 0 || evbuffer_get_length(in) < hw)) {
        c->wm_held = 0;
        conn_read_update(c);
    }
}

static void conn_sock_readcb(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;
    (void)what;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    size_t hw = c->srv->limits.read_high_watermark;
    size_t want = SL_HTTP_READ;
    if (c->lowat > 1 && c->req && !c->lingering) {
        uint64_t rest = conn_body_rest(c);
        if (rest > want)
            want = rest < SL_HTTP_BODY_READ ? (size_t)rest : SL_HTTP_BODY_READ;
    }
    if (hw > 0) {
        if (len >= hw) {
            c->wm_held = 1;
            conn_read_update(c);
            return;
        }
        if (want > hw - len)
            want = hw - len;
    }
    /* The bufferevent keeps its input's end frozen outside its own reads. */
    evbuffer_unfreeze(in, 0);
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
    if (n < 1) {
        evbuffer_freeze(in, 0);
        conn_read_set(c, 0);
        conn_eventcb(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
        return;
    }
    size_t left = want;
    for (int i = 0; i < n; i++) {
        if (v[i].iov_len > left)
            v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    ssize_t r;
    do {
        /* evbuffer_iovec is struct iovec's layout on POSIX systems. */
        r = readv(fd, (struct iovec *)v, n);
    } while (r < 0 && errno == EINTR);
    int err = r < 0 ? errno : 0;
    size_t got = r > 0 ? (size_t)r : 0;
    int used = 0;
    while (used < n && got > 0) {
        if (v[used].iov_len > got)
            v[used].iov_len = got;
        got -= v[used].iov_len;
        used++;
    }
    evbuffer_commit_space(in, v, used);
    evbuffer_freeze(in, 0);
    if (r > 0 && c->lingering) {
        evbuffer_drain(in, evbuffer_get_length(in)); /* closing: what comes is dropped */
    } else if (r > 0) {
        conn_run(c);
    } else if (r == 0) {
        conn_read_set(c, 0);
        conn_eventcb(c->bev, BEV_EVENT_READING | BEV_EVENT_EOF, c);
    } else if (err != EAGAIN && err != EWOULDBLOCK) {
        conn_read_set(c, 0);
        conn_eventcb(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
    }
}

static void conn_writecb(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    sl_http_req_t *r = c->req;
    (void)bev;
    if (r && r->resp_started && !r->finished && r->drain_armed && r->drain_cb) {
        r->drain_armed = 0; /* once per sl_http_resp_write that left bytes pending */
        r->drain_cb(r, r->drain_arg);
    }
    conn_run(c);
}

static void conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    conn_t *c = arg;
    (void)bev;
    if (what & BEV_EVENT_ERROR) {
        conn_close(c, SL_ECLOSED);
    } else if (what & BEV_EVENT_EOF) {
        if (c->lingering) {
            conn_close(c, 0);
        } else {
            c->read_eof = 1;
            conn_run(c);
        }
    }
    if (!c->bev)
        conn_schedule(c);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN];
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, outlen, "%s:%u", host, (unsigned)ntohs(in->sin_port));
    } else if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(out, outlen, "[%s]:%u", host, (unsigned)ntohs(in6->sin6_port));
    } else {
        snprintf(out, outlen, "local");
    }
}

/* Takes fd (closed on failure). */
/* overload: 0, or the status (503 server full, 429 address over its cap) the
 * connection is answered with before it closes. ip: the count entry this
 * connection is counted against (its count already includes it), or NULL. */
static conn_t *conn_new(sl_http_server_t *srv, evutil_socket_t fd, const char *peer, int overload,
                        ipcount_t *ip)
{
    static const int one = 1;
    conn_t *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->srv = srv;
    snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "local");
    c->timer = evtimer_new(srv->base, conn_timer_cb, c);
    c->defer = evtimer_new(srv->base, conn_defer_cb, c);
    if (!c->timer || !c->defer)
        goto fail;
    evutil_make_socket_nonblocking(fd);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly off TCP */
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev)
        goto fail;
    fd = -1;
    bufferevent_setcb(c->bev, NULL, conn_writecb, conn_eventcb, c);
    c->rev = event_new(srv->base, bufferevent_getfd(c->bev), EV_READ | EV_PERSIST,
                       conn_sock_readcb, c);
    if (!c->rev || !evbuffer_add_cb(bufferevent_get_input(c->bev), conn_inbuf_cb, c) ||
        bufferevent_enable(c->bev, EV_WRITE) != 0)
        goto fail;
    conn_read_set(c, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    c->overload = overload != 0;
    c->ip = ip;
    ip = NULL; /* the connection's now: released by conn_close */
    if (overload) {
        srv->noverload++;
        c->req = req_new(c);
        if (c->req && overload == 429)
            req_server_error(c->req, 429, "rate_limited", "too many connections from this address",
                             1);
        else if (c->req)
            req_server_error(c->req, 503, "overloaded", "too many connections", 1);
        else
            conn_close(c, 0);
    } else {
        srv->nconns++;
        conn_set_timer(c, TK_HEADER, 1);
    }
    return c;

fail:
    ip_release(srv, ip);
    if (c) {
        if (c->rev)
            event_free(c->rev);
        if (c->bev)
            bufferevent_free(c->bev);
        if (c->timer)
            event_free(c->timer);
        if (c->defer)
            event_free(c->defer);
        free(c);
    }
    if (fd >= 0)
        evutil_closesocket(fd);
    return NULL;
}

/*
 * The parser without the socket (for the fuzz targets): the same callbacks,
 * conn_parse, deliver_due and conn_req_done as a real connection, driven
 * synchronously over `data` until it is consumed or nothing moves; then the
 * end of input is a client that went away (as conn_check_eof + conn_close).
 */
int sl_http__parse(const sl_http_limits_t *limits, const char *data, size_t len,
                   sl_http_handler_cb handler, void *arg)
{
    sl_http_server_t srv;
    conn_t c;
    memset(&srv, 0, sizeof srv);
    memset(&c, 0, sizeof c);
    if (limits)
        srv.limits = *limits;
    else
        sl_http_limits_default(&srv.limits);
    limits_fill(&srv.limits);
    srv.handler = handler;
    srv.arg = arg;
    c.srv = &srv;
    snprintf(c.peer, sizeof c.peer, "memory");
    c.mem = data;
    c.mem_len = len;
    c.in_mem = 1;
    http_parser_init(&c.parser, HTTP_REQUEST);
    c.parser.data = &c;
    /* Each turn either finishes a request or consumes input, or the loop ends. */
    for (;;) {
        sl_http_req_t *r = c.req;
        c.yield = 0;
        if (r && (r->dispatched || r->server_answered)) {
            deliver_due(r);
            if (r->finished && !req_due_pending(r)) {
                conn_req_done(&c);
                if (c.close_after_flush)
                    break;
                continue;
            }
        }
        size_t off = c.mem_off;
        int was_dispatched = r && r->dispatched;
        conn_parse(&c);
        if (c.mem_off == off && c.req == r && !(r && r->dispatched && !was_dispatched) &&
            !(c.req && req_due_pending(c.req)))
            break;
    }
    /* The end of the input. */
    if (c.req && !c.req->finished && !c.req->dispatched && !c.req->server_answered) {
        conn_close(&c, SL_ECLOSED); /* a request the handler never saw */
    } else if (c.req) {
        conn_close(&c, SL_ECLOSED);
        deliver_due(c.req);
        if (!c.req->finished)
            sl_http_resp_end(c.req); /* the handler keeps it past the end: the test's bug */
        deliver_due(c.req);
        req_free(&srv, c.req, 0);
        c.req = NULL;
    }
    return (int)c.nreq;
}

/* ---- server ---- */

/* Zero means "the default". */
static void limits_fill(sl_http_limits_t *l)
{
    sl_http_limits_t def;
    sl_http_limits_default(&def);
    if (!l->max_header_bytes)
        l->max_header_bytes = def.max_header_bytes;
    if (!l->max_headers)
        l->max_headers = def.max_headers;
    if (!l->max_connections)
        l->max_connections = def.max_connections;
    if (!l->header_timeout_ms)
        l->header_timeout_ms = def.header_timeout_ms;
    if (!l->idle_timeout_ms)
        l->idle_timeout_ms = def.idle_timeout_ms;
    if (!l->body_timeout_ms)
        l->body_timeout_ms = def.body_timeout_ms;
    if (l->read_high_watermark < 4096)
        l->read_high_watermark = l->read_high_watermark ? 4096 : def.read_high_watermark;
}

void sl_http_limits_default(sl_http_limits_t *l)
{
    l->max_header_bytes = 64 * 1024;
    l->max_headers = 100;
    l->max_connections = 1024;
    l->header_timeout_ms = 30 * 1000;
    l->idle_timeout_ms = 60 * 1000;
    l->body_timeout_ms = 60 * 1000;
    l->read_high_watermark = 256 * 1024;
    l->max_body_bytes = 0;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    sl_http_server_t *srv = arg;
    char peer[64];
    (void)l;
    (void)salen;
    int overload = srv->nconns >= srv->limits.max_connections ? 503 : 0;
    unsigned char key[SL_HTTP_IP_KEY];
    ipcount_t *ip = NULL;
    if (!overload && srv->limits.max_connections_per_ip && ip_key(sa, key)) {
        ip = ip_lookup(srv, key);
        if (ip && ip->n >= srv->limits.max_connections_per_ip) {
            overload = 429; /* this address has its share: refuse it, not the others */
            ip = NULL;
        } else if (ip) {
            ip->n++;
        }
    }
    if (overload && srv->noverload >= SL_HTTP_OVERLOAD_MAX) {
        evutil_closesocket(fd);
        return;
    }
    format_peer(sa, peer, sizeof peer);
    conn_new(srv, fd, peer, overload, ip);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_http_server_t *srv = arg;
    (void)fd;
    (void)what;
    if (srv->listener)
        evconnlistener_enable(srv->listener);
}

/* accept() failed (EMFILE...): back off instead of spinning. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    sl_http_server_t *srv = arg;
    struct timeval tv = {0, SL_HTTP_ACCEPT_RETRY_MS * 1000};
    evconnlistener_disable(l);
    evtimer_add(srv->accept_retry, &tv);
}

/* "host:port", "[v6]:port", ":port" or "*:port". */
static int resolve_listen(const char *addr, struct sockaddr_storage *ss, socklen_t *sslen)
{
    char host[256];
    const char *colon, *hs = addr;
    size_t hl;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':')
            return SL_EINVAL;
        hs = addr + 1;
        hl = (size_t)(rb - hs);
        colon = rb + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return SL_EINVAL;
        hl = (size_t)(colon - addr);
    }
    if (hl >= sizeof host)
        return SL_EINVAL;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    char *end = NULL;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
        return SL_EINVAL;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    const char *node = (host[0] == '\0' || strcmp(host, "*") == 0) ? NULL : host;
    if (node == NULL)
        hints.ai_family = AF_INET;
    if (getaddrinfo(node, colon + 1, &hints, &res) != 0 || !res)
        return SL_EINVAL;
    if (res->ai_addrlen > sizeof *ss) {
        freeaddrinfo(res);
        return SL_EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int sl_http_server_new(struct event_base *base, const char *listen_addr,
                       const sl_http_limits_t *limits, sl_http_handler_cb handler, void *arg,
                       sl_http_server_t **out)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    sl_http_limits_t def;
    int err;
    sl_http_server_t *srv = NULL;

    if (!base || !listen_addr || !handler || !out)
        return SL_EINVAL;
    if ((err = resolve_listen(listen_addr, &ss, &sslen)) != 0)
        return err;
    srv = calloc(1, sizeof *srv);
    if (!srv)
        return SL_ENOMEM;
    sl_http_limits_default(&def);
    srv->limits = limits ? *limits : def;
    limits_fill(&srv->limits);
    srv->base = base;
    srv->handler = handler;
    srv->arg = arg;
    srv->accept_retry = evtimer_new(base, accept_retry_cb, srv);
    if (!srv->accept_retry) {
        err = SL_ENOMEM;
        goto fail;
    }
    srv->listener = evconnlistener_new_bind(base, accept_cb, srv,
                                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                                LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC,
                                            -1, (struct sockaddr *)&ss, (int)sslen);
    if (!srv->listener) {
        err = SL_EIO;
        goto fail;
    }
    evconnlistener_set_error_cb(srv->listener, accept_error_cb);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(evconnlistener_get_fd(srv->listener), (struct sockaddr *)&bound, &blen) != 0) {
        err = SL_EIO;
        goto fail;
    }
    if (bound.ss_family == AF_INET6)
        srv->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    else
        srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = srv;
    return 0;

fail:
    if (srv->listener)
        evconnlistener_free(srv->listener);
    if (srv->accept_retry)
        event_free(srv->accept_retry);
    free(srv);
    return err;
}

int sl_http_server_adopt(sl_http_server_t *srv, evutil_socket_t fd, const char *peer)
{
    if (!srv || srv->freeing || srv->draining || fd < 0) {
        if (fd >= 0)
            evutil_closesocket(fd);
        return SL_EINVAL;
    }
    return conn_new(srv, fd, peer, srv->nconns >= srv->limits.max_connections ? 503 : 0, NULL)
               ? 0
               : SL_ENOMEM;
}

void sl_http_server_on_finish(sl_http_server_t *srv, sl_http_finish_cb cb, void *arg)
{
    srv->finish_cb = cb;
    srv->finish_arg = arg;
}

int sl_http_server_port(const sl_http_server_t *srv)
{
    return srv->port;
}

size_t sl_http_server_connections(const sl_http_server_t *srv)
{
    return srv->nconns + srv->noverload;
}

/*
 * Stops accepting and closes what is not serving a request: the listening
 * socket (new connections are refused by the kernel, which a load balancer
 * sees at once), idle keep-alive connections, and connections whose last
 * response is still going out (closed once it is sent). A connection whose
 * request the handler holds closes after its response (req_will_close).
 */
static void stop_accepting(sl_http_server_t *srv)
{
    if (srv->listener) {
        evconnlistener_free(srv->listener);
        srv->listener = NULL;
    }
    if (srv->accept_retry) {
        event_free(srv->accept_retry);
        srv->accept_retry = NULL;
    }
    for (conn_t *c = srv->conns; c; c = c->next) {
        sl_http_req_t *r = c->req;
        if (!c->bev || c->lingering || c->close_after_flush)
            continue;
        if (r && (r->dispatched || r->server_answered))
            continue; /* in flight: closes after its response */
        if (!c->msg_begun && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
            c->parse_dead = 1;
            c->close_after_flush = 1; /* the last response is still going out */
            conn_schedule(c);
        } else {
            conn_close(c, 0);
        }
    }
}

void sl_http_server_drain(sl_http_server_t *srv)
{
    if (!srv || srv->freeing || srv->draining)
        return;
    srv->draining = 1;
    stop_accepting(srv);
}

int sl_http_server_draining(const sl_http_server_t *srv)
{
    return srv && (srv->draining || srv->freeing);
}

size_t sl_http_server_cut(sl_http_server_t *srv)
{
    size_t n = 0;
    if (!srv)
        return 0;
    for (conn_t *c = srv->conns; c; c = c->next) {
        sl_http_req_t *r = c->req;
        if (!c->bev || c->lingering || c->close_after_flush)
            continue;
        /* A complete request (an upload committing its rows, an SSE stream)
         * is left to be answered: cutting it could drop an answer whose
         * effect (a 202) is already committed. */
        if (r && (r->dispatched || r->server_answered) && (r->msg_complete || !r->has_body))
            continue;
        conn_close(c, SL_ECLOSED);
        n++;
    }
    return n;
}

void sl_http_server_free(sl_http_server_t *srv)
{
    if (!srv || srv->freeing)
        return;
    srv->freeing = 1;
    stop_accepting(srv);
    if (!srv->conns)
        free(srv);
}

/* ---- request accessors ---- */

const char *sl_http_req_method(const sl_http_req_t *req)
{
    return req->method;
}

const char *sl_http_req_path(const sl_http_req_t *req)
{
    return req->headers_done ? req->hbuf + req->path_off : "";
}

const char *sl_http_req_query(const sl_http_req_t *req)
{
    return req->headers_done ? req->hbuf + req->query_off : "";
}

int sl_http_req_query_param(const sl_http_req_t *req, const char *name, char *buf, size_t buflen)
{
    char key[SL_HTTP_QNAME_MAX];
    const char *q = sl_http_req_query(req);
    size_t nlen = strlen(name);
    while (*q) {
        const char *amp = strchr(q, '&');
        const char *end = amp ? amp : q + strlen(q);
        const char *eq = memchr(q, '=', (size_t)(end - q));
        const char *kend = eq ? eq : end;
        int kl = pct_decode(q, (size_t)(kend - q), key, sizeof key);
        if (kl >= 0 && (size_t)kl == nlen && memcmp(key, name, nlen) == 0) {
            const char *vs = eq ? eq + 1 : end;
            return pct_decode(vs, (size_t)(end - vs), buf, buflen);
        }
        if (!amp)
            break;
        q = amp + 1;
    }
    return -1;
}

const char *sl_http_req_header(const sl_http_req_t *req, const char *name)
{
    if (!req->hbuf)
        return NULL;
    for (size_t i = 0; i < req->nhdr; i++) {
        size_t voff = req->hoff[2 * i + 1];
        if (voff == 0)
            continue; /* still being parsed */
        if (strcasecmp(req->hbuf + req->hoff[2 * i], name) == 0)
            return req->hbuf + voff;
    }
    return NULL;
}

int sl_http_bearer_token(const char *value, char *out, size_t outlen)
{
    if (outlen > 0)
        out[0] = '\0';
    if (value == NULL || outlen == 0)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strncasecmp(value, "Bearer", 6) != 0 || value[6] != ' ')
        return -1;
    const char *t = value + 6;
    while (*t == ' ')
        t++;
    size_t n = 0;
    while (t[n] > 0x20 && t[n] < 0x7f)
        n++;
    /* Only trailing blanks may follow the token. */
    for (const char *rest = t + n; *rest != '\0'; rest++)
        if (*rest != ' ' && *rest != '\t')
            return -1;
    if (n == 0 || n >= outlen)
        return -1;
    memcpy(out, t, n);
    out[n] = '\0';
    return (int)n;
}

int64_t sl_http_req_content_length(const sl_http_req_t *req)
{
    return req->content_length;
}

int sl_http_req_has_body(const sl_http_req_t *req)
{
    return req->has_body;
}

const char *sl_http_req_peer(const sl_http_req_t *req)
{
    return req->conn->peer;
}

const char *sl_http_req_id(const sl_http_req_t *req)
{
    return req->id;
}

uint64_t sl_http_req_body_bytes(const sl_http_req_t *req)
{
    return req->body_bytes;
}

void sl_http_req_set_route(sl_http_req_t *req, const char *route_static)
{
    req->route = route_static;
}

const char *sl_http_req_route(const sl_http_req_t *req)
{
    return req->route;
}

int sl_http_req_closed(const sl_http_req_t *req)
{
    return req->closed;
}

void sl_http_req_set_data(sl_http_req_t *req, void *data)
{
    req->data = data;
}

void *sl_http_req_data(const sl_http_req_t *req)
{
    return req->data;
}

void sl_http_req_on_close(sl_http_req_t *req, sl_http_close_cb cb, void *arg)
{
    req->close_cb = cb;
    req->close_arg = arg;
    if (cb && req->close_due && !req->close_notified)
        conn_schedule(req->conn);
}

/* ---- request bodies ---- */

int sl_http_req_read_body(sl_http_req_t *req, size_t max_bytes, sl_http_body_cb cb, void *arg)
{
    conn_t *c = req->conn;
    char msg[96];
    if (!cb || req->body_mode != BODY_NONE || req->finished || req->resp_started)
        return SL_EINVAL;
    if (req->closed)
        return SL_ECLOSED;
    if (max_bytes > SIZE_MAX - 2)
        max_bytes = SIZE_MAX - 2;
    req->body_mode = BODY_BUFFER;
    req->body_cb = cb;
    req->body_arg = arg;
    if (c->srv->limits.max_body_bytes > 0 && c->srv->limits.max_body_bytes < max_bytes)
        max_bytes = (size_t)c->srv->limits.max_body_bytes;
    req->body_max = max_bytes;
    if (req->content_length > 0 && (uint64_t)req->content_length > max_bytes) {
        /* Known too big: answer before the client sends it (no 100 Continue). */
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", max_bytes);
        req->server_answered = 1;
        req->body_due = 1;
        req->body_err = SL_ETOOBIG;
        req->deliver_after_finish = 1;
        resp_error(req, 413, "payload_too_large", msg, -1);
        return 0;
    }
    maybe_send_continue(req);
    if (req->msg_complete) {
        req->body_due = 1;
        req->body_err = 0;
    }
    conn_schedule(c);
    return 0;
}

int sl_http_req_stream_body(sl_http_req_t *req, sl_http_data_cb data_cb, sl_http_end_cb end_cb,
                            void *arg)
{
    if (!data_cb || !end_cb || req->body_mode != BODY_NONE || req->finished || req->resp_started)
        return SL_EINVAL;
    if (req->closed)
        return SL_ECLOSED;
    req->body_mode = BODY_STREAM;
    req->data_cb = data_cb;
    req->end_cb = end_cb;
    req->body_arg = arg;
    maybe_send_continue(req);
    if (req->msg_complete) {
        req->body_due = 1;
        req->body_err = 0;
    }
    conn_schedule(req->conn);
    return 0;
}

void sl_http_req_pause(sl_http_req_t *req)
{
    conn_t *c = req->conn;
    if (req->paused || req->finished)
        return;
    req->paused = 1;
    if (c->bev && !c->lingering) {
        conn_read_set(c, 0);
        conn_update_timer(c, 0);
    }
}

void sl_http_req_resume(sl_http_req_t *req)
{
    conn_t *c = req->conn;
    if (!req->paused)
        return;
    req->paused = 0;
    if (c->bev && !c->lingering)
        conn_read_set(c, 1);
    conn_schedule(c);
}

/* ---- responses ---- */

void sl_http_resp_header(sl_http_req_t *req, const char *name, const char *value)
{
    static const char *const reserved[] = {"Content-Length", "Transfer-Encoding", "Connection",
                                           "Date", "X-Request-Id"};
    if (req->resp_started || req->finished || !name || !*name || !hdr_text_ok(name) ||
        !hdr_text_ok(value) || strchr(name, ':'))
        return;
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcasecmp(name, reserved[i]) == 0)
            return;
    if (!req->resp_hdrs && !(req->resp_hdrs = evbuffer_new()))
        return;
    if (evbuffer_get_length(req->resp_hdrs) + strlen(name) + strlen(value) + 4 >
        SL_HTTP_RESP_HDR_MAX)
        return;
    evbuffer_add_printf(req->resp_hdrs, "%s: %s\r\n", name, value);
}

static int status_has_no_body(int status)
{
    return status == 204 || status == 304;
}

/* Writes the status line and headers. cl: >= 0 Content-Length, -1 chunked. */
/*
 * The reason phrase of the status line. http-parser's table knows the IANA
 * registry only; the statuses this server uses outside it are named here,
 * and any other gets a neutral word (never "<unknown>" on the wire).
 */
static const char *status_reason(int status)
{
    static const struct {
        int status;
        const char *reason;
    } extra[] = {
        {499, "Client Closed Request"}, /* nginx's; logged for a client that went away */
    };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        if (extra[i].status == status)
            return extra[i].reason;
    const char *s = http_status_str((enum http_status)status);
    return s == NULL || s[0] == '<' ? "Unknown" : s;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

static char *put_uint(char *p, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    return put(p, tmp + sizeof tmp - n, n);
}

/* The bytes of a head besides the Content-Type value and the extra headers. */
#define HEAD_FIXED 256

/* Room enough for head_build's output. */
static size_t head_size(const sl_http_req_t *r, const char *ctype)
{
    return HEAD_FIXED + (ctype ? strlen(ctype) : 0) +
           (r->resp_hdrs ? evbuffer_get_length(r->resp_hdrs) : 0);
}

/*
 * Decides the framing of the response (status, will_close, chunked) and
 * builds its status line and headers into out, which has head_size() bytes.
 * Returns the length. The head is built whole, by hand, so that it leaves in
 * one write with the body (h2o flattens its headers into one buffer the same
 * way; nginx's ngx_http_header_filter sizes, then fills, one buffer).
 */
static size_t head_build(sl_http_req_t *r, int status, const char *ctype, int64_t cl, char *out)
{
    conn_t *c = r->conn;
    const char *reason, *date;
    char *p = out;
    if (status < 200 || status > 599)
        status = 500;
    r->status = status;
    r->resp_started = 1;
    r->resp_cl = cl;
    r->resp_chunked = cl < 0 && !r->http10;
    r->will_close = req_will_close(r);
    if (cl < 0 && r->http10)
        r->will_close = 1; /* no chunked for HTTP/1.0: the close ends the body */
    reason = status_reason(status);
    date = srv_date(c->srv);
    p = put(p, "HTTP/1.1 ", 9);
    p = put_uint(p, (uint64_t)status);
    *p++ = ' ';
    p = put(p, reason, strnlen(reason, 64));
    p = put(p, "\r\nDate: ", 8);
    p = put(p, date, strnlen(date, 40));
    p = put(p, "\r\nX-Request-Id: ", 16);
    p = put(p, r->id, strlen(r->id));
    p = put(p, "\r\n", 2);
    if (ctype && *ctype && hdr_text_ok(ctype)) {
        p = put(p, "Content-Type: ", 14);
        p = put(p, ctype, strlen(ctype));
        p = put(p, "\r\n", 2);
    }
    if (!status_has_no_body(status)) {
        if (cl >= 0) {
            p = put(p, "Content-Length: ", 16);
            p = put_uint(p, (uint64_t)cl);
            p = put(p, "\r\n", 2);
        } else if (r->resp_chunked) {
            p = put(p, "Transfer-Encoding: chunked\r\n", 28);
        }
    }
    if (r->will_close)
        p = put(p, "Connection: close\r\n", 19);
    else if (r->http10)
        p = put(p, "Connection: keep-alive\r\n", 24);
    if (r->resp_hdrs) {
        size_t n = evbuffer_get_length(r->resp_hdrs);
        if (evbuffer_remove(r->resp_hdrs, p, n) == (int)n)
            p += n;
    }
    p = put(p, "\r\n", 2);
    return (size_t)(p - out);
}

/*
 * Sends head and body (the body may be empty). When nothing is queued before
 * them they go out at once in one writev(2), as nginx and h2o write a
 * response as soon as it is ready; only what the socket does not take now is
 * queued on the bufferevent, which writes it when the socket is writable. A
 * small response thus costs one syscall and never arms EV_WRITE (no
 * epoll_ctl). A socket error is left for the bufferevent to meet on its own
 * write, which reports it to conn_eventcb as before.
 */
static void resp_send(conn_t *c, const char *head, size_t hlen, const char *body, size_t blen)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) == 0) {
        struct iovec iov[2] = {{(void *)head, hlen}, {(void *)body, blen}};
        ssize_t w;
        do
            w = writev(bufferevent_getfd(c->bev), iov, blen ? 2 : 1);
        while (w < 0 && errno == EINTR);
        size_t done = w > 0 ? (size_t)w : 0;
        size_t dh = done < hlen ? done : hlen;
        head += dh;
        hlen -= dh;
        done -= dh;
        body += done;
        blen -= done;
    }
    if (hlen)
        evbuffer_add(out, head, hlen);
    if (blen)
        evbuffer_add(out, body, blen);
}

/* Builds the head on the stack when it fits; NULL when out of memory. */
static char *head_buf(const sl_http_req_t *r, const char *ctype, char *stackbuf, size_t stacklen)
{
    size_t need = head_size(r, ctype);
    return need <= stacklen ? stackbuf : malloc(need);
}

/* No head can be built (out of memory): the client learns nothing but the close. */
static void resp_head_failed(sl_http_req_t *r, int status)
{
    r->status = status;
    r->resp_started = 1;
    r->will_close = 1;
    if (r->conn->bev)
        conn_close(r->conn, SL_ENOMEM);
}

/* Queues the status line and headers (a body follows through resp_write).
 * cl: >= 0 Content-Length, -1 chunked. */
static void resp_head(sl_http_req_t *r, int status, const char *ctype, int64_t cl)
{
    conn_t *c = r->conn;
    char stackbuf[SL_HTTP_HEAD_STACK];
    char *head = head_buf(r, ctype, stackbuf, sizeof stackbuf);
    if (!head) {
        resp_head_failed(r, status);
        return;
    }
    size_t n = head_build(r, status, ctype, cl, head);
    if (c->bev)
        evbuffer_add(bufferevent_get_output(c->bev), head, n);
    if (head != stackbuf)
        free(head);
}

static void req_finish(sl_http_req_t *r)
{
    r->finished = 1;
    conn_schedule(r->conn);
}

void sl_http_respond(sl_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len)
{
    conn_t *c = req->conn;
    char stackbuf[SL_HTTP_HEAD_STACK];
    if (req->finished)
        return;
    if (req->resp_started) {
        sl_http_resp_end(req);
        return;
    }
    if (status_has_no_body(status))
        len = 0;
    char *head = head_buf(req, content_type, stackbuf, sizeof stackbuf);
    if (!head) {
        resp_head_failed(req, status);
        req_finish(req);
        return;
    }
    size_t n = head_build(req, status, content_type, (int64_t)len, head);
    if (c->bev)
        resp_send(c, head, n, req->is_head || !body ? NULL : body, req->is_head || !body ? 0 : len);
    if (head != stackbuf)
        free(head);
    req_finish(req);
}

static void resp_error(sl_http_req_t *r, int status, const char *code, const char *message,
                       int retry_after_s)
{
    json_t *j = json_pack("{s:{s:s, s:s}}", "error", "code", code ? code : "error", "message",
                          message ? message : "");
    if (!j) /* e.g. invalid UTF-8 in the message */
        j = json_pack("{s:{s:s, s:s}}", "error", "code", "internal_error", "message",
                      "the error could not be encoded");
    char *s = j ? json_dumps(j, JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (retry_after_s >= 0 && (status == 429 || status == 503)) {
        char v[16];
        snprintf(v, sizeof v, "%d", retry_after_s);
        sl_http_resp_header(r, "Retry-After", v);
    }
    sl_http_respond(r, status, "application/json", s ? s : "", s ? strlen(s) : 0);
    free(s);
}

void sl_http_respond_error(sl_http_req_t *req, int status, const char *code, const char *message,
                           int retry_after_s)
{
    if (req->finished || req->resp_started) {
        sl_http_respond(req, status, NULL, NULL, 0);
        return;
    }
    resp_error(req, status, code, message, retry_after_s);
}

void sl_http_resp_start(sl_http_req_t *req, int status, const char *content_type,
                        int64_t content_length)
{
    if (req->finished || req->resp_started)
        return;
    if (status_has_no_body(status))
        content_length = 0;
    resp_head(req, status, content_type, content_length >= 0 ? content_length : -1);
}

int sl_http_resp_write(sl_http_req_t *req, const void *data, size_t len)
{
    conn_t *c = req->conn;
    if (!req->resp_started || req->finished)
        return SL_EINVAL;
    if (req->closed || !c->bev)
        return SL_ECLOSED;
    if (req->is_head || len == 0 || status_has_no_body(req->status))
        return 0;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (req->resp_chunked) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        if (req->resp_cl >= 0 && (uint64_t)req->resp_cl - req->resp_written < len) {
            len = (size_t)((uint64_t)req->resp_cl - req->resp_written); /* never past it */
            req->will_close = 1;
        }
        evbuffer_add(out, data, len);
    }
    req->resp_written += len;
    req->drain_armed = 1;
    return 0;
}

size_t sl_http_resp_pending(const sl_http_req_t *req)
{
    const conn_t *c = req->conn;
    return c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
}

void sl_http_resp_on_drain(sl_http_req_t *req, sl_http_drain_cb cb, void *arg)
{
    req->drain_cb = cb;
    req->drain_arg = arg;
}

void sl_http_resp_end(sl_http_req_t *req)
{
    conn_t *c = req->conn;
    if (req->finished)
        return;
    if (!req->resp_started) {
        if (req->closed || !conn_open(c)) {
            req_finish(req); /* the client is gone: nothing to say */
        } else {
            resp_error(req, 500, "internal_error", "the response was never started", -1);
        }
        return;
    }
    if (c->bev && !req->is_head && !status_has_no_body(req->status)) {
        if (req->resp_chunked)
            evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
        else if (req->resp_cl >= 0 && req->resp_written < (uint64_t)req->resp_cl)
            req->will_close = 1; /* short body: only a close tells the client */
    }
    req_finish(req);
}

int sl_http_req_status(const sl_http_req_t *req)
{
    return req->status;
}

/* ---- router ---- */

typedef struct route_s {
    char *method;
    char *pattern;
    char *name;
    char *pnames[8];
    int nparams;
    sl_http_route_cb cb;
    void *arg;
} route_t;

struct sl_http_router_s {
    route_t *routes;
    size_t n, cap;
};

sl_http_router_t *sl_http_router_new(void)
{
    return calloc(1, sizeof(sl_http_router_t));
}

static void route_clear(route_t *rt)
{
    free(rt->method);
    free(rt->pattern);
    free(rt->name);
    for (int i = 0; i < rt->nparams; i++)
        free(rt->pnames[i]);
}

void sl_http_router_free(sl_http_router_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        route_clear(&r->routes[i]);
    free(r->routes);
    free(r);
}

int sl_http_router_add(sl_http_router_t *r, const char *method, const char *pattern,
                       const char *name, sl_http_route_cb cb, void *arg)
{
    route_t rt = {0};
    if (!r || !method || !pattern || pattern[0] != '/' || !cb)
        return SL_EINVAL;
    rt.method = strdup(method);
    rt.pattern = strdup(pattern);
    rt.name = name ? strdup(name) : NULL;
    rt.cb = cb;
    rt.arg = arg;
    if (!rt.method || !rt.pattern || (name && !rt.name))
        goto nomem;
    for (const char *p = pattern; *p;) {
        size_t sl = strcspn(p, "/");
        if (sl >= 2 && p[0] == '{' && p[sl - 1] == '}') {
            if (rt.nparams == 8) {
                route_clear(&rt);
                return SL_EINVAL;
            }
            if (!(rt.pnames[rt.nparams] = strndup(p + 1, sl - 2)))
                goto nomem;
            rt.nparams++;
        }
        p += sl;
        if (*p == '/')
            p++;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        route_t *nr = realloc(r->routes, cap * sizeof *nr);
        if (!nr)
            goto nomem;
        r->routes = nr;
        r->cap = cap;
    }
    r->routes[r->n++] = rt;
    return 0;

nomem:
    route_clear(&rt);
    return SL_ENOMEM;
}

int sl_http_router_each(const sl_http_router_t *r, sl_http_route_each_cb cb, void *arg)
{
    if (!r || !cb)
        return SL_EINVAL;
    for (size_t i = 0; i < r->n; i++) {
        int rc = cb(r->routes[i].method, r->routes[i].pattern, r->routes[i].name, arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int route_match_path(const route_t *rt, const char *path, sl_http_params_t *pm)
{
    const char *p = rt->pattern, *s = path;
    int np = 0;
    pm->n = 0;
    for (;;) {
        size_t pl = strcspn(p, "/"), sl = strcspn(s, "/");
        if (pl >= 2 && p[0] == '{' && p[pl - 1] == '}') {
            if (sl == 0 || sl >= sizeof pm->values[0] || np >= 8)
                return 0;
            pm->names[np] = rt->pnames[np];
            memcpy(pm->values[np], s, sl);
            pm->values[np][sl] = '\0';
            np++;
        } else if (pl != sl || memcmp(p, s, pl) != 0) {
            return 0;
        }
        p += pl;
        s += sl;
        if (*p == '\0' && *s == '\0') {
            pm->n = np;
            return 1;
        }
        if (*p != '/' || *s != '/')
            return 0;
        p++;
        s++;
    }
}

int sl_http_router_match(const sl_http_router_t *r, const char *method, const char *path,
                         sl_http_route_cb *cb, void **arg, sl_http_params_t *params,
                         const char **name)
{
    sl_http_params_t tmp;
    int path_matched = 0;
    if (!r || !method || !path)
        return 0;
    for (size_t i = 0; i < r->n; i++) {
        const route_t *rt = &r->routes[i];
        if (!route_match_path(rt, path, &tmp))
            continue;
        path_matched = 1;
        if (strcmp(rt->method, "*") != 0 && strcmp(rt->method, method) != 0 &&
            !(strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0))
            continue;
        if (cb)
            *cb = rt->cb;
        if (arg)
            *arg = rt->arg;
        if (params)
            *params = tmp;
        if (name)
            *name = rt->name;
        return 1;
    }
    return path_matched ? -1 : 0;
}
