/*
 * pubsub.c — local fan-out by channel plus the Redis bridge (see pubsub.h).
 *
 * Channels live in a fixed hash table (FNV-1a, chained); each holds its list
 * of subscriptions. Every message, local or from Redis, goes through one FIFO
 * queue drained by a single zero-timeout event, so subscribers are never
 * called inside sl_pubsub_publish and see messages in the order they were
 * queued. While a drain runs, unsubscribing only marks the subscription dead;
 * dead ones are unlinked and freed after the drain (nothing is freed inside
 * its own callback chain).
 *
 * Envelope on Redis: "<instance_id> <n>\n<message>", n counting this
 * instance's publishes; a batch (sl_pubsub_publish_many) is one PUBLISH of
 * "<instance_id> <n>:<count>\n" and then count frames "<len>\n<message>",
 * the messages numbered n, n+1, ... and handled on arrival exactly as that
 * many single envelopes in that order. One order for every instance: while Redis is up both
 * ways, our own messages reach our subscribers through their Redis echo (kept
 * meanwhile in a pending FIFO), not directly, so every instance delivers the
 * messages of every instance in the one order Redis saw them. Delivering ours
 * at once would let them overtake earlier messages of a slower instance.
 * Nothing is lost on the way: an echo that does not come (Redis went down,
 * the connection was replaced) is replaced by delivering the pending message
 * locally — when the subscriber is seen down, when a later echo arrives first,
 * or after ECHO_TIMEOUT_MS; an echo whose message was already delivered that
 * way (n <= flushed_upto) is ignored. While Redis is down, messages are
 * delivered locally at once.
 */
#include "core/pubsub.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NBUCKETS 1024
#define ECHO_TIMEOUT_MS 2000
#define ECHO_CHECK_MS 100

typedef struct chan_s {
    struct chan_s *next;   /* bucket chain */
    sl_pubsub_sub_t *subs; /* subscriptions, newest first */
    int nlive;
    char name[];
} chan_t;

struct sl_pubsub_sub_s {
    sl_pubsub_sub_t *next;
    chan_t *chan;
    sl_pubsub_msg_cb cb;
    void *arg;
    int dead; /* unsubscribed during a drain; freed after it */
    int told_shutdown;
};

typedef struct qmsg_s {
    struct qmsg_s *next;
    uint64_t n;     /* pending echo: our publish counter */
    uint64_t at_ms; /* pending echo: when it was published */
    size_t len;
    char *msg;  /* points into buf, after the channel's NUL */
    char buf[]; /* channel NUL msg NUL */
} qmsg_t;

struct sl_pubsub_s {
    struct event_base *base;
    sl_redis_t *pub; /* borrowed; may be NULL */
    sl_redis_t *sub; /* owned; NULL without a redis_url */
    char instance_id[128];
    size_t idlen;
    chan_t *buckets[NBUCKETS];
    qmsg_t *qhead, *qtail;
    size_t nqueued;
    qmsg_t *phead, *ptail; /* our messages waiting for their Redis echo */
    size_t npending;
    uint64_t pub_counter;  /* n of our last publish */
    uint64_t flushed_upto; /* echoes with n <= this are ignored */
    struct event *echo_timer;
    struct event *drain_ev;
    int draining;
    int need_sweep;
    int shutdown;
    int nsubs;
    uint64_t next_msg_id;
    sl_metric_t *m_messages; /* sluice_pubsub_messages_total{direction} */
    sl_pubsub_forward_fn forward; /* messages that did not go to Redis */
    void *forward_arg;
};

static unsigned hash_str(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static chan_t *chan_find(const sl_pubsub_t *ps, const char *name)
{
    for (chan_t *c = ps->buckets[hash_str(name) % NBUCKETS]; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void chan_remove_if_empty(sl_pubsub_t *ps, chan_t *ch)
{
    if (ch->subs)
        return;
    chan_t **pp = &ps->buckets[hash_str(ch->name) % NBUCKETS];
    while (*pp && *pp != ch)
        pp = &(*pp)->next;
    if (*pp)
        *pp = ch->next;
    free(ch);
}

static void schedule_drain(sl_pubsub_t *ps)
{
    static const struct timeval zero = {0, 0};
    if (ps->drain_ev && !evtimer_pending(ps->drain_ev, NULL))
        evtimer_add(ps->drain_ev, &zero);
}

/* Unlinks and frees every dead subscription (outside any drain). */
static void sweep(sl_pubsub_t *ps)
{
    if (!ps->need_sweep)
        return;
    ps->need_sweep = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        chan_t *ch = ps->buckets[b];
        while (ch) {
            chan_t *next = ch->next;
            sl_pubsub_sub_t **pp = &ch->subs;
            while (*pp) {
                sl_pubsub_sub_t *s = *pp;
                if (s->dead) {
                    *pp = s->next;
                    free(s);
                } else {
                    pp = &s->next;
                }
            }
            chan_remove_if_empty(ps, ch);
            ch = next;
        }
    }
}

static void deliver(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len)
{
    chan_t *ch = chan_find(ps, channel);
    if (!ch)
        return;
    uint64_t id = ++ps->next_msg_id;
    for (sl_pubsub_sub_t *s = ch->subs; s; s = s->next)
        if (!s->dead)
            s->cb(channel, msg, len, id, s->arg);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pubsub_t *ps = arg;
    (void)fd;
    (void)what;
    /* Only what is queued now: messages published by the callbacks wait a turn. */
    qmsg_t *q = ps->qhead;
    ps->qhead = ps->qtail = NULL;
    ps->nqueued = 0;
    ps->draining = 1;
    while (q) {
        qmsg_t *next = q->next;
        deliver(ps, q->buf, q->msg, q->len);
        free(q);
        q = next;
    }
    if (ps->shutdown) {
        for (int b = 0; b < NBUCKETS; b++)
            for (chan_t *ch = ps->buckets[b]; ch; ch = ch->next)
                for (sl_pubsub_sub_t *s = ch->subs; s; s = s->next)
                    if (!s->dead && !s->told_shutdown) {
                        s->told_shutdown = 1;
                        s->cb(ch->name, NULL, 0, 0, s->arg);
                    }
    }
    ps->draining = 0;
    sweep(ps);
    if (ps->qhead)
        schedule_drain(ps);
}

static qmsg_t *qmsg_new(const char *channel, const char *msg, size_t len)
{
    size_t cl = strlen(channel);
    qmsg_t *q = malloc(sizeof *q + cl + 1 + len + 1);
    if (!q)
        return NULL;
    q->next = NULL;
    q->n = q->at_ms = 0;
    q->len = len;
    memcpy(q->buf, channel, cl + 1);
    q->msg = q->buf + cl + 1;
    memcpy(q->msg, msg, len);
    q->msg[len] = '\0';
    return q;
}

static void enqueue_q(sl_pubsub_t *ps, qmsg_t *q)
{
    q->next = NULL;
    if (ps->qtail)
        ps->qtail->next = q;
    else
        ps->qhead = q;
    ps->qtail = q;
    ps->nqueued++;
    schedule_drain(ps);
}

static int enqueue(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len)
{
    if (ps->nqueued >= SL_PUBSUB_MAX_QUEUED)
        return SL_EAGAIN;
    qmsg_t *q = qmsg_new(channel, msg, len);
    if (!q)
        return SL_ENOMEM;
    enqueue_q(ps, q);
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Delivers locally (in order) every pending message with n <= upto; no echo will count. */
static void flush_pending(sl_pubsub_t *ps, uint64_t upto)
{
    while (ps->phead && ps->phead->n <= upto) {
        qmsg_t *q = ps->phead;
        ps->phead = q->next;
        if (!ps->phead)
            ps->ptail = NULL;
        ps->npending--;
        if (q->n > ps->flushed_upto)
            ps->flushed_upto = q->n;
        enqueue_q(ps, q);
    }
}

static int both_up(const sl_pubsub_t *ps)
{
    return ps->pub && ps->sub && sl_redis_up(ps->pub) && sl_redis_up(ps->sub);
}

static void echo_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_pubsub_t *ps = arg;
    (void)fd;
    (void)what;
    if (!ps->phead)
        return;
    if (!ps->sub || !sl_redis_up(ps->sub)) {
        flush_pending(ps, ps->pub_counter);
        return;
    }
    uint64_t now = now_ms();
    uint64_t upto = 0;
    for (qmsg_t *q = ps->phead; q && now - q->at_ms >= ECHO_TIMEOUT_MS; q = q->next)
        upto = q->n;
    if (upto)
        flush_pending(ps, upto);
    if (ps->phead) {
        struct timeval tv = {0, ECHO_CHECK_MS * 1000};
        evtimer_add(ps->echo_timer, &tv);
    }
}

/* One message from Redis, numbered n by its publisher (own: ours, or another instance's). */
static void on_redis_message(sl_pubsub_t *ps, const char *channel, int own, uint64_t n,
                             const char *msg, size_t len)
{
    if (own) {
        /* our echo: n orders it against what is pending */
        if (n == 0 || n <= ps->flushed_upto)
            return;               /* delivered locally already */
        flush_pending(ps, n - 1); /* earlier ones whose echo was lost */
        if (ps->phead && ps->phead->n == n) {
            qmsg_t *q = ps->phead;
            ps->phead = q->next;
            if (!ps->phead)
                ps->ptail = NULL;
            ps->npending--;
            ps->flushed_upto = n;
            enqueue_q(ps, q); /* the pending copy: queued in Redis's order */
            return;
        }
        ps->flushed_upto = n;
        if (chan_find(ps, channel))
            enqueue(ps, channel, msg, len); /* subscribed after publishing */
        return;
    }
    if (!chan_find(ps, channel))
        return; /* nobody here listens */
    sl_metrics_add(ps->m_messages, 1, "in");
    if (enqueue(ps, channel, msg, len) != 0)
        sl_log(SL_LOG_WARN, "pubsub_dropped", "{s:s}", "channel", channel);
}

/*
 * Parses "<len>\n" at *p (before end): the frame's message is [*p, *p + len)
 * after it. 0 and *p moved to the message, or -1 (malformed or truncated).
 */
static int frame_len(const char **p, const char *end, size_t *len)
{
    size_t v = 0;
    const char *s = *p;
    int digits = 0;
    while (s < end && *s >= '0' && *s <= '9' && digits < 12) {
        v = v * 10 + (size_t)(*s++ - '0');
        digits++;
    }
    if (digits == 0 || s >= end || *s != '\n' || (size_t)(end - s - 1) < v)
        return -1;
    *p = s + 1;
    *len = v;
    return 0;
}

/* A message from Redis: another instance's, or the echo of ours; one envelope or a batch. */
static void redis_message_cb(const char *channel, const char *data, size_t len, void *arg)
{
    sl_pubsub_t *ps = arg;
    const char *nl = memchr(data, '\n', len);
    if (!nl || strlen(channel) >= SL_PUBSUB_MAX_CHANNEL)
        return; /* not an envelope */
    size_t hl = (size_t)(nl - data);
    const char *sp = NULL;
    for (size_t i = hl; i > 0; i--)
        if (data[i - 1] == ' ') {
            sp = data + i - 1;
            break;
        }
    size_t idlen = sp ? (size_t)(sp - data) : hl;
    int own = idlen == ps->idlen && memcmp(data, ps->instance_id, idlen) == 0;
    char *after = NULL;
    uint64_t n = sp ? strtoull(sp + 1, &after, 10) : 0;
    if (!after || after != nl) {
        if (after && *after == ':') { /* a batch: count frames follow */
            uint64_t count = strtoull(after + 1, NULL, 10);
            const char *p = nl + 1, *end = data + len;
            for (uint64_t i = 0; i < count; i++) {
                size_t ml;
                if (frame_len(&p, end, &ml) != 0) {
                    sl_log(SL_LOG_WARN, "pubsub_bad_batch", "{s:s, s:i}", "channel", channel,
                           "frame", (int)i);
                    return;
                }
                on_redis_message(ps, channel, own, n + i, p, ml);
                p += ml;
            }
            return;
        }
        if (own)
            n = 0; /* no number: never ordered against ours */
    }
    on_redis_message(ps, channel, own, n, nl + 1, len - hl - 1);
}

int sl_pubsub_new(struct event_base *base, sl_redis_t *publisher, const char *redis_url,
                  const char *pattern, const char *instance_id, sl_pubsub_t **out)
{
    if (!base || !instance_id || strlen(instance_id) >= sizeof((sl_pubsub_t *)0)->instance_id ||
        strchr(instance_id, '\n') || (redis_url && (!pattern || !*pattern)))
        return SL_EINVAL;
    sl_pubsub_t *ps = calloc(1, sizeof *ps);
    if (!ps)
        return SL_ENOMEM;
    int err = SL_ENOMEM;
    ps->base = base;
    ps->pub = publisher;
    snprintf(ps->instance_id, sizeof ps->instance_id, "%s", instance_id);
    ps->idlen = strlen(ps->instance_id);
    ps->drain_ev = evtimer_new(base, drain_cb, ps);
    ps->echo_timer = evtimer_new(base, echo_timer_cb, ps);
    if (!ps->drain_ev || !ps->echo_timer)
        goto fail;
    if (redis_url && (err = sl_redis_new_subscriber(base, redis_url, pattern, redis_message_cb, ps,
                                                    &ps->sub)) != 0)
        goto fail;
    ps->m_messages = sl_metrics_counter("sluice_pubsub_messages_total",
                                        "Pub/sub messages: out = published to Redis, in = "
                                        "received from other instances, local = delivered "
                                        "in this process only (Redis down)",
                                        "direction");
    *out = ps;
    return 0;
fail:
    if (ps->drain_ev)
        event_free(ps->drain_ev);
    if (ps->echo_timer)
        event_free(ps->echo_timer);
    free(ps);
    return err;
}

/* The envelope of msgs[0..count) numbered from n (see the file comment): malloc'd, *total bytes. */
static char *envelope(const sl_pubsub_t *ps, uint64_t n, const char *const *msgs,
                      const size_t *lens, size_t count, size_t *total)
{
    char head[160];
    int hl = count == 1 ? snprintf(head, sizeof head, "%s %llu\n", ps->instance_id,
                                   (unsigned long long)n)
                        : snprintf(head, sizeof head, "%s %llu:%zu\n", ps->instance_id,
                                   (unsigned long long)n, count);
    size_t size = (size_t)hl;
    for (size_t i = 0; i < count; i++)
        size += lens[i] + (count == 1 ? 0 : 21);
    char *env = malloc(size);
    if (!env)
        return NULL;
    memcpy(env, head, (size_t)hl);
    size_t at = (size_t)hl;
    for (size_t i = 0; i < count; i++) {
        if (count > 1)
            at += (size_t)snprintf(env + at, 22, "%zu\n", lens[i]);
        if (lens[i])
            memcpy(env + at, msgs[i], lens[i]);
        at += lens[i];
    }
    *total = at;
    return env;
}

/* This process's subscribers of one message we published as number n (sent: to Redis). */
static int publish_local(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len,
                         uint64_t n, int sent)
{
    if (sent && both_up(ps) && ps->npending < SL_PUBSUB_MAX_QUEUED) {
        /* delivered here when its echo comes back (see the file comment) */
        qmsg_t *q = qmsg_new(channel, msg, len);
        if (!q)
            return SL_ENOMEM;
        q->n = n;
        q->at_ms = now_ms();
        if (ps->ptail)
            ps->ptail->next = q;
        else
            ps->phead = q;
        ps->ptail = q;
        ps->npending++;
        if (!evtimer_pending(ps->echo_timer, NULL)) {
            struct timeval tv = {0, ECHO_CHECK_MS * 1000};
            evtimer_add(ps->echo_timer, &tv);
        }
        return 0;
    }
    /* Redis down (or the echo would not come): everything pending first, then this one. */
    flush_pending(ps, n - 1);
    if (n > ps->flushed_upto)
        ps->flushed_upto = n;
    if (ps->nqueued >= SL_PUBSUB_MAX_QUEUED)
        return SL_EAGAIN;
    return enqueue(ps, channel, msg, len);
}

int sl_pubsub_publish_many(sl_pubsub_t *ps, const char *channel, const char *const *msgs,
                           const size_t *lens, size_t count)
{
    size_t cl = channel ? strlen(channel) : 0;
    if (!ps || cl == 0 || cl >= SL_PUBSUB_MAX_CHANNEL || (count && (!msgs || !lens)) ||
        count > SL_PUBSUB_MAX_BATCH)
        return SL_EINVAL;
    for (size_t i = 0; i < count; i++)
        if (!msgs[i] && lens[i])
            return SL_EINVAL;
    if (count == 0)
        return 0;
    int local = chan_find(ps, channel) != NULL;
    int sent = 0;
    uint64_t n = ps->pub_counter + 1;
    ps->pub_counter += count;
    if (ps->pub && sl_redis_up(ps->pub)) {
        size_t total = 0;
        char *env = envelope(ps, n, msgs, lens, count, &total);
        if (!env) {
            ps->pub_counter -= count;
            return SL_ENOMEM;
        }
        const char *argv[] = {"PUBLISH", channel, env};
        size_t argl[] = {7, cl, total};
        sent = sl_redis_command(ps->pub, 3, argv, argl) == 0;
        free(env);
    }
    sl_metrics_add(ps->m_messages, (double)count, sent ? "out" : "local");
    if (!sent && ps->forward)
        for (size_t i = 0; i < count; i++)
            ps->forward(channel, msgs[i] ? msgs[i] : "", lens[i], ps->forward_arg);
    if (!local)
        return 0;
    int err = 0;
    for (size_t i = 0; i < count; i++) {
        int e = publish_local(ps, channel, msgs[i] ? msgs[i] : "", lens[i], n + i, sent);
        if (e && !err)
            err = e;
    }
    return err;
}

int sl_pubsub_publish(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len)
{
    const char *msgs[] = {msg};
    return sl_pubsub_publish_many(ps, channel, msgs, &len, 1);
}

int sl_pubsub_subscribe(sl_pubsub_t *ps, const char *channel, sl_pubsub_msg_cb cb, void *arg,
                        sl_pubsub_sub_t **out)
{
    size_t cl = channel ? strlen(channel) : 0;
    if (!ps || !cb || cl == 0 || cl >= SL_PUBSUB_MAX_CHANNEL)
        return SL_EINVAL;
    if (ps->shutdown)
        return SL_ECLOSED;
    sl_pubsub_sub_t *s = calloc(1, sizeof *s);
    if (!s)
        return SL_ENOMEM;
    chan_t *ch = chan_find(ps, channel);
    if (!ch) {
        ch = calloc(1, sizeof *ch + cl + 1);
        if (!ch) {
            free(s);
            return SL_ENOMEM;
        }
        memcpy(ch->name, channel, cl + 1);
        unsigned b = hash_str(channel) % NBUCKETS;
        ch->next = ps->buckets[b];
        ps->buckets[b] = ch;
    }
    s->chan = ch;
    s->cb = cb;
    s->arg = arg;
    s->next = ch->subs;
    ch->subs = s;
    ch->nlive++;
    ps->nsubs++;
    *out = s;
    return 0;
}

void sl_pubsub_unsubscribe(sl_pubsub_t *ps, sl_pubsub_sub_t *sub)
{
    if (!ps || !sub || sub->dead)
        return;
    sub->dead = 1;
    sub->chan->nlive--;
    ps->nsubs--;
    if (ps->draining) {
        ps->need_sweep = 1; /* unlinked after the drain */
        return;
    }
    chan_t *ch = sub->chan;
    sl_pubsub_sub_t **pp = &ch->subs;
    while (*pp && *pp != sub)
        pp = &(*pp)->next;
    if (*pp)
        *pp = sub->next;
    free(sub);
    chan_remove_if_empty(ps, ch);
}

void sl_pubsub_set_publisher(sl_pubsub_t *ps, sl_redis_t *publisher)
{
    if (ps)
        ps->pub = publisher;
}

void sl_pubsub_set_forward(sl_pubsub_t *ps, sl_pubsub_forward_fn fn, void *arg)
{
    ps->forward = fn;
    ps->forward_arg = arg;
}

int sl_pubsub_deliver_local(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len)
{
    size_t cl = channel ? strlen(channel) : 0;
    if (!ps || cl == 0 || cl >= SL_PUBSUB_MAX_CHANNEL || !msg)
        return SL_EINVAL;
    if (!chan_find(ps, channel))
        return 0; /* nobody here listens */
    if (ps->nqueued >= SL_PUBSUB_MAX_QUEUED)
        return SL_EAGAIN;
    return enqueue(ps, channel, msg, len);
}

int sl_pubsub_redis_up(const sl_pubsub_t *ps)
{
    return ps && ps->pub && ps->sub && sl_redis_up(ps->pub) && sl_redis_up(ps->sub);
}

int sl_pubsub_subscribers(const sl_pubsub_t *ps)
{
    return ps ? ps->nsubs : 0;
}

void sl_pubsub_shutdown(sl_pubsub_t *ps)
{
    if (!ps || ps->shutdown)
        return;
    ps->shutdown = 1;
    schedule_drain(ps);
}

void sl_pubsub_free(sl_pubsub_t *ps)
{
    if (!ps)
        return;
    if (ps->sub)
        sl_redis_free(ps->sub);
    event_free(ps->drain_ev);
    event_free(ps->echo_timer);
    for (qmsg_t *q = ps->qhead; q;) {
        qmsg_t *next = q->next;
        free(q);
        q = next;
    }
    for (qmsg_t *q = ps->phead; q;) {
        qmsg_t *next = q->next;
        free(q);
        q = next;
    }
    for (int b = 0; b < NBUCKETS; b++) {
        chan_t *ch = ps->buckets[b];
        while (ch) {
            chan_t *next = ch->next;
            for (sl_pubsub_sub_t *s = ch->subs; s;) {
                sl_pubsub_sub_t *sn = s->next;
                free(s);
                s = sn;
            }
            free(ch);
            ch = next;
        }
    }
    free(ps);
}
