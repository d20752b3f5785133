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
 * One script for every command, so one SHA and one NOSCRIPT path. KEYS[1] is
 * the GCRA key, KEYS[2] the pause key; either may be '' (not used). ARGV[1]
 * is the mode:
 *   'c' check: denied while KEYS[2] is paused (nothing charged), then GCRA
 *       in microseconds of Redis's own clock (TIME), so every instance agrees.
 *       ARGV: emission interval T (us per unit), tolerance tau = T * burst
 *       (us), cost (units). The TAT is stored with sub-microsecond digits as a
 *       string (Lua 5.1's tostring keeps only 14 significant digits) and
 *       expires once it is in the past, when it carries no information.
 *   'd' debt: the same TAT step without the denial (cost may be negative: a
 *       refund, never before now).
 *   'p' pause KEYS[2] for ARGV[2] ms with reason ARGV[3]: stored as
 *       "<until ms on Redis's clock> <why>" with PX, only if it ends later
 *       than the pause in place; published on ARGV[4].
 * Reply: {allowed 0/1, retry-after us, pause left ms, pause why}.
 */
static const char SCRIPT[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local mode = ARGV[1]\n"
    "if mode == 'p' then\n"
    "  local nowms = math.floor(now / 1000)\n"
    "  local u = nowms + tonumber(ARGV[2])\n"
    "  local old = redis.call('GET', KEYS[2])\n"
    "  if old then\n"
    "    local ou = tonumber(string.match(old, '^(%d+)'))\n"
    "    if ou and ou >= u then\n"
    "      return {1, 0, ou - nowms, string.match(old, '^%d+ (.*)$') or ''}\n"
    "    end\n"
    "  end\n"
    "  redis.call('SET', KEYS[2], string.format('%.0f', u) .. ' ' .. ARGV[3], 'PX', ARGV[2])\n"
    "  redis.call('PUBLISH', ARGV[4], KEYS[2] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])\n"
    "  return {1, 0, tonumber(ARGV[2]), ARGV[3]}\n"
    "end\n"
    "if mode == 'c' and KEYS[2] ~= '' then\n"
    "  local h = redis.call('GET', KEYS[2])\n"
    "  local u = h and tonumber(string.match(h, '^(%d+)'))\n"
    "  if u and u * 1000 > now then\n"
    "    local left = u * 1000 - now\n"
    "    return {0, left, math.ceil(left / 1000), string.match(h, '^%d+ (.*)$') or ''}\n"
    "  end\n"
    "end\n"
    "if KEYS[1] == '' then return {1, 0, 0, ''} end\n"
    "local T = tonumber(ARGV[2])\n"
    "local tau = tonumber(ARGV[3])\n"
    "local cost = tonumber(ARGV[4])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]))\n"
    "if tat == nil or tat < now then tat = now end\n"
    "local new_tat = tat + T * cost\n"
    "if mode == 'c' then\n"
    "  local allow_at = new_tat - tau\n"
    "  if allow_at > now then return {0, math.ceil(allow_at - now), 0, ''} end\n"
    "elseif new_tat <= now then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return {1, 0, 0, ''}\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX',\n"
    "           math.ceil((new_tat - now) / 1000) + 1)\n"
    "return {1, 0, 0, ''}\n";

typedef struct node_s {
    struct node_s *next;
    double tat;         /* local GCRA state (monotonic seconds) */
    int held;           /* concurrency units held */
    double pause_until; /* monotonic seconds; the local copy of the key's pause */
    double synced_at;   /* when Redis last told us about the pause (0: never) */
    char why[SL_RL_PAUSE_WHY_MAX];
    char key[SL_RL_KEY_MAX + sizeof KEY_PREFIX];
} node_t;

/* What an op does: check (the caller's), debt and pause (fire and forget). */
enum { MODE_CHECK = 'c', MODE_DEBT = 'd', MODE_PAUSE = 'p' };

struct sl_rl_op_s {
    sl_ratelimit_t *rl;
    sl_rl_op_t *prev, *next;
    const char *name;
    int mode;                                      /* MODE_* */
    char key[SL_RL_KEY_MAX + sizeof KEY_PREFIX];   /* "" for none */
    char pause[SL_RL_KEY_MAX + sizeof KEY_PREFIX]; /* "" for none */
    char why[SL_RL_PAUSE_WHY_MAX];                 /* MODE_PAUSE */
    double pause_ms;                               /* MODE_PAUSE */
    double rate, burst, cost;
    double deadline;    /* monotonic seconds; 0: do not wait */
    int waited;         /* was denied at least once */
    int redis_pending;  /* a command is out; its reply comes back here */
    int script_loading; /* the pending command is SCRIPT LOAD */
    int reloaded;       /* SCRIPT LOAD was tried once for this op */
    int cancelled;
    struct event *timer;
    sl_rl_cb cb; /* NULL for debt and pause ops */
    void *arg;
};

struct sl_ratelimit_s {
    struct event_base *base;
    sl_redis_t *redis;
    sl_redis_t *sub; /* owned: pause messages (sl_ratelimit_listen), or NULL */
    char sha[41];
    int shared;  /* 1: Redis decides; 0: the local table */
    int closing; /* sl_ratelimit_free ran; ops are draining */
    int nops;
    sl_rl_op_t *ops;
    size_t nkeys;
    node_t *buckets[NBUCKETS];
    sl_metric_t *m_decisions, *m_shared;
};

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
            if (n->held == 0 && n->tat <= now && n->pause_until <= now) {
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

static void timer_cb(evutil_socket_t fd, short what, void *arg);

/* ---- pauses: the local copy ---- */

/*
 * Records what is known of the pause on `full` (a prefixed key): it ends
 * `left_s` from now (<= 0: no pause known) with reason `why`. A pause only
 * extends. `synced`: Redis (or a message from it) said so, which makes a
 * "not paused" trustworthy for a while (pause_state).
 */
static void note_pause(sl_ratelimit_t *rl, const char *full, double left_s, const char *why,
                       int synced)
{
    double now = now_s();
    node_t *n = lookup(rl, full, 1, now);
    if (!n)
        return; /* the table is full: the pause is not kept here (fail open) */
    if (left_s > SL_RL_PAUSE_MAX_S)
        left_s = SL_RL_PAUSE_MAX_S;
    if (left_s > 0 && now + left_s > n->pause_until) {
        n->pause_until = now + left_s;
        snprintf(n->why, sizeof n->why, "%s", why ? why : "");
    }
    if (synced)
        n->synced_at = now;
}

static int pause_state(sl_ratelimit_t *rl, const char *full, double *left_s, char *why,
                       size_t whylen)
{
    double now = now_s();
    node_t *n = lookup(rl, full, 0, now);
    if (left_s)
        *left_s = 0;
    if (whylen > 0)
        why[0] = '\0';
    if (n && n->pause_until > now) {
        if (left_s)
            *left_s = n->pause_until - now;
        if (whylen > 0)
            snprintf(why, whylen, "%s", n->why);
        return SL_RL_PAUSED;
    }
    if (!rl->redis || !sl_redis_up(rl->redis))
        return SL_RL_CLEAR; /* nobody to ask: the local copy is all there is */
    double fresh = rl->sub && sl_redis_up(rl->sub) ? SL_RL_PAUSE_SYNC_LISTEN_S : SL_RL_PAUSE_SYNC_S;
    if (n && n->synced_at > 0 && now - n->synced_at < fresh)
        return SL_RL_CLEAR;
    return SL_RL_ASK;
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

/* A new op of `mode`, linked into rl's list (a check also gets its timer). */
static sl_rl_op_t *op_new(sl_ratelimit_t *rl, int mode)
{
    sl_rl_op_t *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    if (mode == MODE_CHECK && (op->timer = evtimer_new(rl->base, timer_cb, op)) == NULL) {
        free(op);
        return NULL;
    }
    op->rl = rl;
    op->mode = mode;
    op->name = "other";
    op->next = rl->ops;
    if (rl->ops)
        rl->ops->prev = op;
    rl->ops = op;
    rl->nops++;
    return op;
}

/* Ends the op with its result: frees it first, then calls back (if it has a callback). */
static void finish(sl_rl_op_t *op, int err, double retry_after_s)
{
    sl_rl_cb cb = op->cb;
    void *arg = op->arg;
    op_unlink_free(op);
    if (cb)
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

/* 1 if the op charges a rate (a check or debt on a limited key). */
static int has_rate(const sl_rl_op_t *op)
{
    return op->key[0] && op->rate > 0;
}

/* Decides on the local table: Redis is down, or failed for this op. */
static void decide_local(sl_rl_op_t *op)
{
    double now = now_s(), retry = 0, left = 0;
    if (op->mode == MODE_PAUSE) {
        op_unlink_free(op); /* the local copy was written when the pause was set */
        return;
    }
    node_t *n = has_rate(op) ? lookup(op->rl, op->key, 1, now) : NULL;
    if (op->mode == MODE_DEBT) {
        if (n) {
            double t = (n->tat < now ? now : n->tat) + op->cost / op->rate;
            n->tat = t < now ? now : t;
        }
        op_unlink_free(op);
        return;
    }
    if (op->pause[0] && pause_state(op->rl, op->pause, &left, NULL, 0) == SL_RL_PAUSED) {
        decide(op, 0, left);
        return;
    }
    if (!has_rate(op) || !n) {
        decide(op, 1, 0); /* unlimited, or the table is full: fail open, not block everyone */
        return;
    }
    int allowed = sl_ratelimit_gcra(&n->tat, now, op->rate, op->burst, op->cost, &retry);
    decide(op, allowed, retry);
}

static int send_eval(sl_rl_op_t *op);

static int reply_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
           r->element[0]->type == REDIS_REPLY_INTEGER &&
           r->element[1]->type == REDIS_REPLY_INTEGER &&
           r->element[2]->type == REDIS_REPLY_INTEGER && r->element[3]->type == REDIS_REPLY_STRING;
}

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
    if (!reply_ok(r)) {
        sl_log(SL_LOG_WARN, "ratelimit_redis_error", "{s:s}", "error",
               r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        set_shared(rl, 0, "redis error");
        decide_local(op);
        return;
    }
    set_shared(rl, 1, "redis up");
    if (op->pause[0])
        note_pause(rl, op->pause, (double)r->element[2]->integer / 1000.0, r->element[3]->str, 1);
    if (op->mode != MODE_CHECK) {
        op_unlink_free(op);
        return;
    }
    decide(op, r->element[0]->integer == 1, (double)r->element[1]->integer / 1e6);
}

static int send_eval(sl_rl_op_t *op)
{
    char a2[64], a3[SL_RL_PAUSE_WHY_MAX + 16], a4[64];
    const char *mode = op->mode == MODE_PAUSE ? "p" : op->mode == MODE_DEBT ? "d" : "c";
    if (op->mode == MODE_PAUSE) {
        snprintf(a2, sizeof a2, "%.0f", op->pause_ms);
        snprintf(a3, sizeof a3, "%s", op->why);
        snprintf(a4, sizeof a4, "%s", SL_RL_PAUSE_CHANNEL);
    } else if (has_rate(op)) {
        double T = 1e6 / op->rate;
        snprintf(a2, sizeof a2, "%.6f", T);
        snprintf(a3, sizeof a3, "%.6f", T * op->burst);
        snprintf(a4, sizeof a4, "%.6f", op->cost);
    } else {
        snprintf(a2, sizeof a2, "0");
        snprintf(a3, sizeof a3, "0");
        snprintf(a4, sizeof a4, "0");
    }
    const char *const argv[] = {
        "EVALSHA", op->rl->sha, "2", has_rate(op) ? op->key : "", op->pause, mode, a2, a3, a4};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    if (sl_redis_request(op->rl->redis, reply_cb, op, 9, argv, lens) != 0)
        return SL_EUNAVAIL;
    op->redis_pending = 1;
    return 0;
}

static void step(sl_rl_op_t *op)
{
    sl_ratelimit_t *rl = op->rl;
    if (op->mode == MODE_CHECK) {
        double left = 0;
        int st = op->pause[0] ? pause_state(rl, op->pause, &left, NULL, 0) : SL_RL_CLEAR;
        if (st == SL_RL_PAUSED) {
            decide(op, 0, left); /* known here: no round trip */
            return;
        }
        if (st == SL_RL_CLEAR && !has_rate(op)) {
            decide(op, 1, 0); /* unlimited and not paused: nothing to ask */
            return;
        }
    }
    if (rl->redis) {
        if (send_eval(op) == 0)
            return;
        set_shared(rl, 0, "redis down");
    }
    decide_local(op);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    step(arg);
}

/* Copies KEY_PREFIX + key into dst (size SL_RL_KEY_MAX + sizeof KEY_PREFIX); SL_EINVAL if too long.
 */
static int full_key(char *dst, size_t size, const char *key)
{
    if (!key || strlen(key) > SL_RL_KEY_MAX)
        return SL_EINVAL;
    snprintf(dst, size, "%s%s", KEY_PREFIX, key);
    return 0;
}

int sl_ratelimit_check_ex(sl_ratelimit_t *rl, const sl_rl_check_t *c, sl_rl_cb cb, void *arg,
                          sl_rl_op_t **op_out)
{
    if (!rl || !c || !cb || (c->key && strlen(c->key) > SL_RL_KEY_MAX) ||
        (c->pause_key && strlen(c->pause_key) > SL_RL_KEY_MAX))
        return SL_EINVAL;
    if (rl->closing)
        return SL_ECANCELED;
    sl_rl_op_t *op = op_new(rl, MODE_CHECK);
    if (!op)
        return SL_ENOMEM;
    if (c->name)
        op->name = c->name;
    if (c->key)
        full_key(op->key, sizeof op->key, c->key);
    if (c->pause_key)
        full_key(op->pause, sizeof op->pause, c->pause_key);
    op->rate = c->lim.rate;
    op->burst = c->lim.burst >= 1 ? c->lim.burst : 1;
    op->cost = c->cost > op->burst ? op->burst : c->cost < 0 ? 0 : c->cost;
    op->deadline = c->max_wait_ms > 0 ? now_s() + c->max_wait_ms / 1000.0 : 0;
    op->cb = cb;
    op->arg = arg;
    static const struct timeval zero = {0, 0};
    evtimer_add(op->timer, &zero);
    if (op_out)
        *op_out = op;
    return 0;
}

int sl_ratelimit_check(sl_ratelimit_t *rl, const char *name, const char *key,
                       const sl_rl_limit_t *lim, double cost, int max_wait_ms, sl_rl_cb cb,
                       void *arg, sl_rl_op_t **op_out)
{
    sl_rl_check_t c = {0};
    if (!key)
        return SL_EINVAL;
    c.name = name;
    c.key = key;
    if (lim)
        c.lim = *lim;
    c.cost = cost;
    c.max_wait_ms = max_wait_ms;
    return sl_ratelimit_check_ex(rl, &c, cb, arg, op_out);
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

/* ---- pauses and debts ---- */

int sl_ratelimit_pause(sl_ratelimit_t *rl, const char *key, double seconds, const char *why)
{
    char full[SL_RL_KEY_MAX + sizeof KEY_PREFIX];
    if (!rl || !(seconds > 0) || full_key(full, sizeof full, key) != 0)
        return SL_EINVAL;
    if (seconds > SL_RL_PAUSE_MAX_S)
        seconds = SL_RL_PAUSE_MAX_S;
    note_pause(rl, full, seconds, why, 0); /* this process holds at once */
    if (!rl->redis || rl->closing)
        return 0;
    sl_rl_op_t *op = op_new(rl, MODE_PAUSE);
    if (!op)
        return SL_ENOMEM;
    memcpy(op->pause, full, sizeof full);
    snprintf(op->why, sizeof op->why, "%s", why ? why : "");
    op->pause_ms = ceil(seconds * 1000.0);
    if (send_eval(op) != 0)
        op_unlink_free(op); /* Redis is down: this instance holds on its own */
    return 0;
}

int sl_ratelimit_pause_state(sl_ratelimit_t *rl, const char *key, double *remaining_s, char *why,
                             size_t whylen)
{
    char full[SL_RL_KEY_MAX + sizeof KEY_PREFIX];
    if (remaining_s)
        *remaining_s = 0;
    if (whylen > 0)
        why[0] = '\0';
    if (!rl || full_key(full, sizeof full, key) != 0)
        return SL_RL_CLEAR;
    return pause_state(rl, full, remaining_s, why, whylen);
}

int sl_ratelimit_charge(sl_ratelimit_t *rl, const char *key, const sl_rl_limit_t *lim, double cost)
{
    if (!rl || !lim || !(lim->rate > 0) || !key || strlen(key) > SL_RL_KEY_MAX)
        return SL_EINVAL;
    double bound = lim->rate * 3600.0;
    if (cost > bound)
        cost = bound;
    if (cost < -bound)
        cost = -bound;
    if (cost == 0 || rl->closing)
        return 0;
    sl_rl_op_t *op = op_new(rl, MODE_DEBT);
    if (!op)
        return SL_ENOMEM;
    full_key(op->key, sizeof op->key, key);
    op->rate = lim->rate;
    op->burst = lim->burst >= 1 ? lim->burst : 1;
    op->cost = cost;
    if (rl->redis && send_eval(op) == 0)
        return 0;
    decide_local(op);
    return 0;
}

/* A pause message: "<prefixed key> <ms> <why>". */
static void pause_msg_cb(const char *channel, const char *data, size_t len, void *arg)
{
    sl_ratelimit_t *rl = arg;
    char buf[SL_RL_KEY_MAX + sizeof KEY_PREFIX + SL_RL_PAUSE_WHY_MAX + 32];
    (void)channel;
    if (len >= sizeof buf)
        return;
    memcpy(buf, data, len);
    buf[len] = '\0';
    char *sp = strchr(buf, ' ');
    if (!sp || strncmp(buf, KEY_PREFIX, sizeof KEY_PREFIX - 1) != 0)
        return;
    *sp = '\0';
    char *end = NULL;
    long ms = strtol(sp + 1, &end, 10);
    if (end == sp + 1 || ms <= 0 || (*end != ' ' && *end != '\0'))
        return;
    note_pause(rl, buf, (double)ms / 1000.0, *end == ' ' ? end + 1 : "", 1);
}

int sl_ratelimit_listen(sl_ratelimit_t *rl, const char *redis_url)
{
    if (!rl || !redis_url)
        return SL_EINVAL;
    if (rl->sub)
        return 0;
    return sl_redis_new_subscriber(rl->base, redis_url, SL_RL_PAUSE_CHANNEL, pause_msg_cb, rl,
                                   &rl->sub);
}

int sl_ratelimit_listening(const sl_ratelimit_t *rl)
{
    return rl && rl->sub && sl_redis_up(rl->sub);
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
    rl->closing = 1;
    if (rl->sub) {
        sl_redis_free(rl->sub);
        rl->sub = NULL;
    }
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
