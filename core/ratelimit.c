/*
 * ratelimit.c — GCRA in Redis (one Lua script) with an in-process fallback,
 * and per-process concurrency counters (see ratelimit.h).
 *
 * An op is a small state machine driven by its own timer and by Redis
 * replies: STEP (decide now: Redis if it is up, else the local table) ->
 * allowed: callback | denied and may wait: timer -> STEP | denied: callback.
 * Every callback goes out from the timer or a Redis reply, never from inside
 * sl_ratelimit_check. A Redis command cannot be withdrawn, so a cancelled op
 * (or one of a limiter being freed) stays allocated until its reply comes,
 * then goes away without calling back (or with SL_ECANCELED when freed).
 */
#include "core/ratelimit.h"
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"

#include <hiredis/hiredis.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NBUCKETS 4096
#define KEY_PREFIX "sluice:rl:"

/*
 * GCRA in microseconds of Redis's own clock (TIME), so every instance agrees.
 * ARGV: emission interval T (us per unit), tolerance tau = T * burst (us),
 * cost (units). The TAT is stored with sub-microsecond digits as a string
 * (Lua 5.1's tostring keeps only 14 significant digits) and expires once it
 * is in the past, when it carries no information any more.
 */
static const char SCRIPT[] = "local t = redis.call('TIME')\n"
                             "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
                             "local T = tonumber(ARGV[1])\n"
                             "local tau = tonumber(ARGV[2])\n"
                             "local cost = tonumber(ARGV[3])\n"
                             "local tat = tonumber(redis.call('GET', KEYS[1]))\n"
                             "if tat == nil or tat < now then tat = now end\n"
                             "local new_tat = tat + T * cost\n"
                             "local allow_at = new_tat - tau\n"
                             "if allow_at > now then return {0, math.ceil(allow_at - now)} end\n"
                             "redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX',\n"
                             "           math.ceil((new_tat - now) / 1000) + 1)\n"
                             "return {1, 0}\n";

typedef struct node_s {
    struct node_s *next;
    double tat; /* local GCRA state (monotonic seconds) */
    int held;   /* concurrency units held */
    char key[SL_RL_KEY_MAX + 1];
} node_t;

struct sl_rl_op_s {
    sl_ratelimit_t *rl;
    sl_rl_op_t *prev, *next;
    const char *name;
    char key[SL_RL_KEY_MAX + sizeof KEY_PREFIX];
    double rate, burst, cost;
    double deadline;    /* monotonic seconds; 0: do not wait */
    int waited;         /* was denied at least once */
    int redis_pending;  /* a command is out; its reply comes back here */
    int script_loading; /* the pending command is SCRIPT LOAD */
    int reloaded;       /* SCRIPT LOAD was tried once for this op */
    int cancelled;
    struct event *timer;
    sl_rl_cb cb;
    void *arg;
};

struct sl_ratelimit_s {
    struct event_base *base;
    sl_redis_t *redis;
    char sha[41];
    int shared;  /* 1: Redis decides; 0: the local table */
    int closing; /* sl_ratelimit_free ran; ops are draining */
    int nops;
    sl_rl_op_t *ops;
    size_t nkeys;
    node_t *buckets[NBUCKETS];
    sl_metric_t *m_decisions, *m_shared;
};

static sl_ratelimit_t *g_default;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- GCRA ---- */

int sl_ratelimit_gcra(double *tat, double now, double rate, double burst, double cost,
                      double *retry_after_s)
{
    if (burst < 1)
        burst = 1;
    if (cost > burst)
        cost = burst;
    double T = 1.0 / rate;
    double t = *tat < now ? now : *tat;
    double new_tat = t + T * cost;
    double allow_at = new_tat - T * burst;
    /* a nanosecond of slack: the float sums must not deny an exact fit */
    if (allow_at > now + 1e-9) {
        *retry_after_s = allow_at - now;
        return 0;
    }
    *tat = new_tat;
    *retry_after_s = 0;
    return 1;
}

/* ---- the local table ---- */

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h % NBUCKETS;
}

/* Drops every entry that carries no state any more. */
static void sweep(sl_ratelimit_t *rl, double now)
{
    for (size_t b = 0; b < NBUCKETS; b++) {
        node_t **pp = &rl->buckets[b];
        while (*pp) {
            node_t *n = *pp;
            if (n->held == 0 && n->tat <= now) {
                *pp = n->next;
                free(n);
                rl->nkeys--;
            } else {
                pp = &n->next;
            }
        }
    }
}

/* The entry of `key`, created when `create`; NULL if absent or the table is full. */
static node_t *lookup(sl_ratelimit_t *rl, const char *key, int create, double now)
{
    size_t b = hash(key);
    for (node_t *n = rl->buckets[b]; n; n = n->next)
        if (strcmp(n->key, key) == 0)
            return n;
    if (!create)
        return NULL;
    if (rl->nkeys >= SL_RL_LOCAL_MAX)
        sweep(rl, now);
    if (rl->nkeys >= SL_RL_LOCAL_MAX)
        return NULL;
    node_t *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    snprintf(n->key, sizeof n->key, "%s", key);
    n->next = rl->buckets[b];
    rl->buckets[b] = n;
    rl->nkeys++;
    return n;
}

/* ---- backend switching ---- */

static void set_shared(sl_ratelimit_t *rl, int shared, const char *why)
{
    if (rl->shared == shared)
        return;
    rl->shared = shared;
    sl_metrics_set(rl->m_shared, shared);
    sl_log(shared ? SL_LOG_INFO : SL_LOG_WARN, "ratelimit_backend", "{s:s, s:s}", "backend",
           shared ? "redis" : "local", "reason", why);
}

/* ---- ops ---- */

static void op_unlink_free(sl_rl_op_t *op)
{
    sl_ratelimit_t *rl = op->rl;
    if (op->prev)
        op->prev->next = op->next;
    else
        rl->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    if (op->timer)
        event_free(op->timer);
    free(op);
    rl->nops--;
    if (rl->closing && rl->nops == 0)
        free(rl);
}

/* Ends the op with its result: frees it first, then calls back. */
static void finish(sl_rl_op_t *op, int err, double retry_after_s)
{
    sl_rl_cb cb = op->cb;
    void *arg = op->arg;
    op_unlink_free(op);
    cb(err, retry_after_s, arg);
}

static void step(sl_rl_op_t *op);

static void decide(sl_rl_op_t *op, int allowed, double retry_after_s)
{
    sl_ratelimit_t *rl = op->rl;
    if (allowed) {
        sl_metrics_add(rl->m_decisions, 1, op->name, op->waited ? "waited" : "allowed");
        finish(op, 0, 0);
        return;
    }
    if (op->deadline > 0 && now_s() + retry_after_s <= op->deadline) {
        op->waited = 1;
        double ms = ceil(retry_after_s * 1000.0);
        if (ms < 1)
            ms = 1;
        struct timeval tv = {(long)(ms / 1000), (long)fmod(ms, 1000.0) * 1000};
        evtimer_add(op->timer, &tv);
        return;
    }
    sl_metrics_add(rl->m_decisions, 1, op->name, "limited");
    finish(op, SL_EAGAIN, retry_after_s);
}

static void decide_local(sl_rl_op_t *op)
{
    double now = now_s(), retry = 0;
    node_t *n = lookup(op->rl, op->key, 1, now);
    if (!n) {
        decide(op, 1, 0); /* the table is full: fail open rather than block everyone */
        return;
    }
    int allowed = sl_ratelimit_gcra(&n->tat, now, op->rate, op->burst, op->cost, &retry);
    decide(op, allowed, retry);
}

static int send_eval(sl_rl_op_t *op);

static void reply_cb(void *reply, void *arg)
{
    sl_rl_op_t *op = arg;
    sl_ratelimit_t *rl = op->rl;
    redisReply *r = reply;
    int loading = op->script_loading;

    op->redis_pending = 0;
    op->script_loading = 0;
    if (op->cancelled) {
        op_unlink_free(op);
        return;
    }
    if (rl->closing) {
        finish(op, SL_ECANCELED, 0);
        return;
    }
    if (!r) {
        set_shared(rl, 0, "redis connection lost");
        decide_local(op);
        return;
    }
    if (loading) {
        if (r->type == REDIS_REPLY_STRING && send_eval(op) == 0)
            return;
        set_shared(rl, 0, "SCRIPT LOAD failed");
        decide_local(op);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 && !op->reloaded) {
        /* The script cache was flushed (restart, SCRIPT FLUSH): load it and go again. */
        const char *const argv[] = {"SCRIPT", "LOAD", SCRIPT};
        size_t lens[] = {6, 4, sizeof SCRIPT - 1};
        op->reloaded = 1;
        if (sl_redis_request(rl->redis, reply_cb, op, 3, argv, lens) == 0) {
            op->redis_pending = 1;
            op->script_loading = 1;
            return;
        }
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER) {
        sl_log(SL_LOG_WARN, "ratelimit_redis_error", "{s:s}", "error",
               r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        set_shared(rl, 0, "redis error");
        decide_local(op);
        return;
    }
    set_shared(rl, 1, "redis up");
    decide(op, r->element[0]->integer == 1, (double)r->element[1]->integer / 1e6);
}

static int send_eval(sl_rl_op_t *op)
{
    char t[64], tau[64], cost[64];
    double T = 1e6 / op->rate;
    snprintf(t, sizeof t, "%.6f", T);
    snprintf(tau, sizeof tau, "%.6f", T * op->burst);
    snprintf(cost, sizeof cost, "%.6f", op->cost);
    const char *const argv[] = {"EVALSHA", op->rl->sha, "1", op->key, t, tau, cost};
    size_t lens[7];
    for (int i = 0; i < 7; i++)
        lens[i] = strlen(argv[i]);
    if (sl_redis_request(op->rl->redis, reply_cb, op, 7, argv, lens) != 0)
        return SL_EUNAVAIL;
    op->redis_pending = 1;
    return 0;
}

static void step(sl_rl_op_t *op)
{
    sl_ratelimit_t *rl = op->rl;
    if (rl->redis) {
        if (send_eval(op) == 0)
            return;
        set_shared(rl, 0, "redis down");
    }
    decide_local(op);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_rl_op_t *op = arg;
    (void)fd;
    (void)what;
    if (op->rate <= 0) {
        sl_metrics_add(op->rl->m_decisions, 1, op->name, "allowed");
        finish(op, 0, 0);
        return;
    }
    step(op);
}

int sl_ratelimit_check(sl_ratelimit_t *rl, const char *name, const char *key,
                       const sl_rl_limit_t *lim, double cost, int max_wait_ms, sl_rl_cb cb,
                       void *arg, sl_rl_op_t **op_out)
{
    if (!rl || !key || !cb || strlen(key) > SL_RL_KEY_MAX)
        return SL_EINVAL;
    if (rl->closing)
        return SL_ECANCELED;
    sl_rl_op_t *op = calloc(1, sizeof *op);
    if (!op)
        return SL_ENOMEM;
    op->timer = evtimer_new(rl->base, timer_cb, op);
    if (!op->timer) {
        free(op);
        return SL_ENOMEM;
    }
    op->rl = rl;
    op->name = name ? name : "other";
    snprintf(op->key, sizeof op->key, "%s%s", KEY_PREFIX, key);
    op->rate = lim ? lim->rate : 0;
    op->burst = lim && lim->burst >= 1 ? lim->burst : 1;
    op->cost = cost > op->burst ? op->burst : cost < 0 ? 0 : cost;
    op->deadline = max_wait_ms > 0 ? now_s() + max_wait_ms / 1000.0 : 0;
    op->cb = cb;
    op->arg = arg;
    op->next = rl->ops;
    if (rl->ops)
        rl->ops->prev = op;
    rl->ops = op;
    rl->nops++;
    static const struct timeval zero = {0, 0};
    evtimer_add(op->timer, &zero);
    if (op_out)
        *op_out = op;
    return 0;
}

void sl_ratelimit_cancel(sl_rl_op_t *op)
{
    if (!op || op->cancelled)
        return;
    op->cancelled = 1;
    if (op->redis_pending) {
        evtimer_del(op->timer); /* the reply frees it */
        return;
    }
    op_unlink_free(op);
}

int sl_ratelimit_shared(const sl_ratelimit_t *rl)
{
    return rl && rl->shared;
}

/* ---- concurrency counters ---- */

int sl_ratelimit_hold(sl_ratelimit_t *rl, const char *key, int max)
{
    char k[SL_RL_KEY_MAX + 2];
    snprintf(k, sizeof k, "#%s", key);
    node_t *n = lookup(rl, k, 1, now_s());
    if (!n)
        return SL_ENOMEM;
    if (max > 0 && n->held >= max)
        return SL_EAGAIN;
    n->held++;
    return 0;
}

void sl_ratelimit_unhold(sl_ratelimit_t *rl, const char *key)
{
    char k[SL_RL_KEY_MAX + 2];
    snprintf(k, sizeof k, "#%s", key);
    node_t *n = lookup(rl, k, 0, 0);
    if (n && n->held > 0)
        n->held--;
}

/* ---- lifecycle ---- */

int sl_ratelimit_new(struct event_base *base, sl_redis_t *redis, sl_ratelimit_t **out)
{
    sl_ratelimit_t *rl = calloc(1, sizeof *rl);
    if (!rl)
        return SL_ENOMEM;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(SCRIPT, sizeof SCRIPT - 1, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20) {
        free(rl);
        return SL_ENOMEM;
    }
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(rl->sha + 2 * i, 3, "%02x", md[i]);
    rl->base = base;
    rl->redis = redis;
    rl->shared = redis != NULL;
    rl->m_decisions =
        sl_metrics_counter("sluice_ratelimit_decisions_total",
                           "Rate limiter decisions by limit and outcome", "limit,decision");
    rl->m_shared =
        sl_metrics_gauge("sluice_ratelimit_shared",
                         "1 while rate limits are shared through Redis, 0 while local", NULL);
    sl_metrics_set(rl->m_shared, rl->shared);
    *out = rl;
    return 0;
}

void sl_ratelimit_free(sl_ratelimit_t *rl)
{
    if (!rl)
        return;
    if (g_default == rl)
        g_default = NULL;
    rl->closing = 1;
    /* Ops on a timer end now; ops waiting for Redis end with their reply. */
    rl->nops++; /* hold rl while calling back */
    for (;;) {
        /* from the head each time: a callback may cancel other ops */
        sl_rl_op_t *op = rl->ops;
        while (op && op->redis_pending)
            op = op->next;
        if (!op)
            break;
        if (op->cancelled)
            op_unlink_free(op);
        else
            finish(op, SL_ECANCELED, 0);
    }
    for (size_t b = 0; b < NBUCKETS; b++) {
        node_t *n = rl->buckets[b];
        while (n) {
            node_t *next = n->next;
            free(n);
            n = next;
        }
        rl->buckets[b] = NULL;
    }
    if (--rl->nops == 0)
        free(rl);
}

void sl_ratelimit_set_default(sl_ratelimit_t *rl)
{
    g_default = rl;
}

sl_ratelimit_t *sl_ratelimit_default(void)
{
    return g_default;
}
