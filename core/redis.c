/*
 * redis.c — the self-healing Redis connection (see redis.h).
 *
 * State machine: DOWN --(timer)--> CONNECTING --(connect cb ok)--> UP
 *                 ^                     |  (connect cb error)         | (disconnect cb / ping error)
 *                 +---------------------+-----------------------------+
 * hiredis frees its async context itself after the connect/disconnect
 * callbacks, so this module only forgets the pointer there and never frees it.
 *
 * A subscriber connection (sl_redis_new_subscriber) runs the same machine but
 * sends PSUBSCRIBE instead of pings once connected, and is UP when Redis
 * confirms the subscription. hiredis 0.14 routes every "pmessage" of the
 * pattern to the PSUBSCRIBE callback, and calls it with a NULL reply when the
 * context goes away (then the disconnect callback follows).
 */
#include "redis.h"
#include "err.h"
#include "fault.h"
#include "log.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#define PING_INTERVAL_MS 3000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct sl_redis_s {
    struct event_base *base;
    char host[256];
    int port;
    int db;
    char password[256];
    redisAsyncContext *ac; /* owned by hiredis; NULL when not connected */
    int up;
    unsigned long epoch;   /* ups so far (sl_redis_epoch) */
    int backoff_ms;
    struct event *timer;   /* reconnect or ping */
    char *pattern;         /* subscriber: the PSUBSCRIBE pattern; NULL for a command connection */
    sl_redis_message_cb msg_cb;
    void *msg_arg;
};

static const char *role(const sl_redis_t *r)
{
    return r->pattern ? "subscriber" : "commands";
}

static void schedule(sl_redis_t *r, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
}

static void go_down(sl_redis_t *r, const char *why)
{
    if (r->up)
        sl_log(SL_LOG_WARN, "redis_down", "{s:s, s:s}", "error", why ? why : "", "role", role(r));
    r->up = 0;
    r->ac = NULL;
    schedule(r, r->backoff_ms);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

static void ping_cb(redisAsyncContext *ac, void *reply, void *arg)
{
    sl_redis_t *r = arg;
    redisReply *rep = reply;
    if (!r || ac != r->ac)
        return;
    if (!rep)
        return; /* the connection is going away; disconnect_cb follows */
    if (rep->type == REDIS_REPLY_ERROR) {
        /* AUTH/SELECT/PING refused: drop and retry later */
        redisAsyncDisconnect(ac);
        return;
    }
    if (!r->up && !r->pattern) {
        r->up = 1;
        r->epoch++;
        r->backoff_ms = BACKOFF_MIN_MS;
        sl_log(SL_LOG_INFO, "redis_up", "{s:s, s:i, s:s}", "host", r->host, "port", r->port,
               "role", role(r));
    }
}

/* Subscriber: the PSUBSCRIBE confirmation, then every pmessage of the pattern. */
static void sub_cb(redisAsyncContext *ac, void *reply, void *arg)
{
    sl_redis_t *r = arg;
    redisReply *rep = reply;
    if (!r || ac != r->ac || !rep)
        return; /* a stale context, or the connection is going away */
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = rep->element[0]->str;
    if (strcmp(kind, "psubscribe") == 0) {
        if (!r->up) {
            r->up = 1;
            r->epoch++;
            r->backoff_ms = BACKOFF_MIN_MS;
            sl_log(SL_LOG_INFO, "redis_up", "{s:s, s:i, s:s, s:s}", "host", r->host, "port",
                   r->port, "role", role(r), "pattern", r->pattern);
        }
    } else if (strcmp(kind, "pmessage") == 0 && rep->elements == 4 &&
               rep->element[2]->type == REDIS_REPLY_STRING &&
               rep->element[3]->type == REDIS_REPLY_STRING && r->msg_cb) {
        r->msg_cb(rep->element[2]->str, rep->element[3]->str, (size_t)rep->element[3]->len,
                  r->msg_arg);
    }
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    sl_redis_t *r = ac->data;
    if (status != REDIS_OK) {
        go_down(r, ac->errstr);
        return;
    }
    if (r->password[0])
        redisAsyncCommand(r->ac, ping_cb, r, "AUTH %s", r->password);
    if (r->pattern) {
        /* Pub/sub ignores the database number; no pings once subscribed. */
        redisEnableKeepAlive(&r->ac->c);
        redisAsyncCommand(r->ac, sub_cb, r, "PSUBSCRIBE %s", r->pattern);
        return;
    }
    if (r->db)
        redisAsyncCommand(r->ac, ping_cb, r, "SELECT %d", r->db);
    redisAsyncCommand(r->ac, ping_cb, r, "PING");
    schedule(r, PING_INTERVAL_MS);
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    sl_redis_t *r = ac->data;
    if (r)
        go_down(r, ac->errstr[0] ? ac->errstr : "disconnected");
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_redis_t *r = arg;
    (void)fd;
    (void)what;
    if (r->ac) { /* connected or connecting: ping */
        if (r->pattern)
            return; /* subscribers do not ping */
        redisAsyncCommand(r->ac, ping_cb, r, "PING");
        schedule(r, PING_INTERVAL_MS);
        return;
    }
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        go_down(r, "connect failed");
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
}

static int parse_url(sl_redis_t *r, const char *url)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0)
        return SL_EINVAL;
    p += 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof r->password)
            return SL_EINVAL;
        memcpy(r->password, pw, n);
        r->password[n] = '\0';
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof r->host)
        return SL_EINVAL;
    memcpy(r->host, p, hl);
    r->host[hl] = '\0';
    p += hl;
    r->port = 6379;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v <= 0 || v > 65535)
            return SL_EINVAL;
        r->port = (int)v;
        p = end;
    }
    if (*p == '/' && p[1]) {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end || v < 0 || v > 1000)
            return SL_EINVAL;
        r->db = (int)v;
    }
    return 0;
}

int sl_redis_new(struct event_base *base, const char *url, sl_redis_t **out)
{
    sl_redis_t *r = calloc(1, sizeof *r);
    if (!r)
        return SL_ENOMEM;
    int err = parse_url(r, url);
    if (err) {
        free(r);
        return err;
    }
    r->base = base;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->timer = evtimer_new(base, timer_cb, r);
    if (!r->timer) {
        free(r);
        return SL_ENOMEM;
    }
    schedule(r, 0);
    *out = r;
    return 0;
}

/* ---- commands of the modules built on the connection ---- */

typedef struct cmd_s {
    sl_redis_reply_cb cb;
    void *arg;
    int fault; /* SL_FAULTS: deliver NULL, not the reply */
} cmd_t;

/*
 * hiredis calls this once per command: with the reply, or with NULL when the
 * context goes away (disconnect, or redisAsyncFree in sl_redis_free).
 */
static void cmd_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    cmd_t *c = priv;
    (void)ac;
    sl_redis_reply_cb cb = c->cb;
    void *arg = c->arg;
    int fault = c->fault;
    free(c);
    cb(fault ? NULL : reply, arg); /* a fault: as if the connection went away */
}

int sl_redis_request(sl_redis_t *r, sl_redis_reply_cb cb, void *arg, int argc,
                     const char *const *argv, const size_t *lens)
{
    if (!r || r->pattern || !cb || argc <= 0 || !argv || !lens)
        return SL_EINVAL;
    if (!r->up || !r->ac)
        return SL_EUNAVAIL;
    cmd_t *c = malloc(sizeof *c);
    if (!c)
        return SL_ENOMEM;
    c->cb = cb;
    c->arg = arg;
    /* SL_FAULTS: the command is sent and runs; its answer is lost. */
    c->fault = sl_fault_hit("redis");
    if (redisAsyncCommandArgv(r->ac, cmd_cb, c, argc, (const char **)argv, lens) != REDIS_OK) {
        free(c);
        return SL_EUNAVAIL;
    }
    return 0;
}

int sl_redis_new_subscriber(struct event_base *base, const char *url, const char *pattern,
                            sl_redis_message_cb cb, void *arg, sl_redis_t **out)
{
    if (!pattern || !*pattern || !cb)
        return SL_EINVAL;
    char *p = strdup(pattern);
    if (!p)
        return SL_ENOMEM;
    sl_redis_t *r = NULL;
    int err = sl_redis_new(base, url, &r);
    if (err) {
        free(p);
        return err;
    }
    /* Still before the first loop turn: the connect timer has not fired yet. */
    r->pattern = p;
    r->msg_cb = cb;
    r->msg_arg = arg;
    *out = r;
    return 0;
}

int sl_redis_command(sl_redis_t *r, int argc, const char *const *argv, const size_t *lens)
{
    if (!r || r->pattern || argc <= 0 || !argv || !lens)
        return SL_EINVAL;
    if (!r->up || !r->ac || sl_fault_hit("redis"))
        return SL_EUNAVAIL;
    if (redisAsyncCommandArgv(r->ac, NULL, NULL, argc, (const char **)argv, lens) != REDIS_OK)
        return SL_EUNAVAIL;
    return 0;
}

int sl_redis_up(const sl_redis_t *r)
{
    return r && r->up;
}

void sl_redis_poll(sl_redis_t *r)
{
    /* redisAsyncHandleRead: one read(); EAGAIN is not an error in async mode. */
    if (r && r->up && r->ac)
        redisAsyncHandleRead(r->ac);
}

unsigned long sl_redis_epoch(const sl_redis_t *r)
{
    return r ? r->epoch : 0;
}

void sl_redis_free(sl_redis_t *r)
{
    if (!r)
        return;
    event_free(r->timer);
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;    /* ping_cb ignores replies of a context that is not r->ac */
        ac->data = NULL; /* disconnect_cb during the free must not touch r */
        redisAsyncFree(ac);
    }
    free(r->pattern);
    free(r);
}
