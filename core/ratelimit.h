/*
 * ratelimit.h — rate limits shared by every instance through Redis, with a
 * local fallback, and small per-process concurrency counters.
 *
 * The algorithm is GCRA (the generic cell rate algorithm, a token bucket
 * written as one timestamp per key: the "theoretical arrival time" TAT). A
 * limit is a rate (units per second) and a burst (units allowed at once); a
 * check charges `cost` units. In Redis the check is one server-side Lua script
 * (EVALSHA; SCRIPT LOAD and again on NOSCRIPT) reading the clock with TIME,
 * so it is atomic and every instance shares the same state and clock. While
 * Redis is down (or a check's command fails) the same algorithm runs on an
 * in-process table: each instance then limits on its own, and one log line
 * ("ratelimit_backend") says when the limiter switches either way.
 *
 * Pauses: a key can be paused for a while (a downstream said Retry-After),
 * and a check that names the key as its `pause_key` is denied until the pause
 * ends, with the pause's remaining time as its retry-after. The pause lives in
 * Redis (the until-time in ms on Redis's clock, with a PX expiry) and in the
 * local table; the check reads it in the same script as the GCRA step, so it
 * costs no extra round trip. A check on a pause key alone (no rate) asks Redis
 * only when the local copy is stale (SL_RL_PAUSE_SYNC_S; longer while
 * subscribed to pause messages, sl_ratelimit_listen), else answers locally.
 *
 * See docs/internals/ratelimit.md.
 */
#ifndef SL_RATELIMIT_H
#define SL_RATELIMIT_H

#include <event2/event.h>

#include "core/redis.h"

#define SL_RL_KEY_MAX 200              /* longest key (the prefix and the caller's key) */
#define SL_RL_LOCAL_MAX 65536          /* keys in the local table before it fails open */
#define SL_RL_PAUSE_MAX_S 86400.0      /* longest pause the limiter stores */
#define SL_RL_PAUSE_WHY_MAX 32         /* a pause's reason, bytes with the NUL */
#define SL_RL_PAUSE_SYNC_S 1.0         /* a "not paused" answer from Redis is trusted this long */
#define SL_RL_PAUSE_SYNC_LISTEN_S 10.0 /* ... and this long while pause messages come in */
#define SL_RL_PAUSE_CHANNEL "sluice:rl:pause" /* where a pause is published */

/** sl_ratelimit_pause_state answers. */
enum { SL_RL_CLEAR = 0, SL_RL_PAUSED = 1, SL_RL_ASK = 2 };

typedef struct sl_ratelimit_s sl_ratelimit_t;
typedef struct sl_rl_op_s sl_rl_op_t;

/** A limit: `rate` units per second (<= 0: unlimited), `burst` units at once (< 1 means 1). */
typedef struct sl_rl_limit_s {
    double rate;
    double burst;
} sl_rl_limit_t;

/**
 * A check's result, called exactly once on a later loop turn: err 0 = allowed
 * (the cost is charged); SL_EAGAIN = over the limit, nothing charged, and
 * `retry_after_s` says when the same cost would pass; SL_ECANCELED = the
 * limiter is being freed. The op is gone when this runs.
 */
typedef void (*sl_rl_cb)(int err, double retry_after_s, void *arg);

/**
 * Creates a limiter. `base` is borrowed; `redis` is borrowed and may be NULL
 * (local limits only); both must outlive the limiter. Returns owned in *out.
 * Registers sluice_ratelimit_decisions_total{limit,decision}. There is no
 * process-wide limiter: the owner (main) hands it, borrowed, to whoever
 * limits (the API's sl_app_t, the flow VM's service registry).
 */
int sl_ratelimit_new(struct event_base *base, sl_redis_t *redis, sl_ratelimit_t **out);

/**
 * Frees. Ops waiting on a timer get SL_ECANCELED inside this call; ops waiting
 * for Redis get it when their reply (or the disconnect) comes, and the memory
 * goes with the last of them. NULL is a no-op.
 */
void sl_ratelimit_free(sl_ratelimit_t *rl);

/**
 * Charges `cost` units of limit `lim` to `key` (borrowed, copied; at most
 * SL_RL_KEY_MAX bytes). A cost above the burst is charged as the burst (it
 * could never pass otherwise). `max_wait_ms` > 0 makes the op wait, rechecking
 * when the limit says, until it is allowed or waiting longer would pass
 * max_wait_ms (then SL_EAGAIN); 0 answers at once. `name` labels the metrics
 * ("uploads", "service_ocr"; borrowed until the callback). An unlimited `lim`
 * is allowed at once (still on a later turn). Returns 0 and, if op_out is not
 * NULL, the op in *op_out (borrowed until the callback, for sl_ratelimit_cancel);
 * SL_EINVAL (key too long), SL_ENOMEM: no callback.
 */
int sl_ratelimit_check(sl_ratelimit_t *rl, const char *name, const char *key,
                       const sl_rl_limit_t *lim, double cost, int max_wait_ms, sl_rl_cb cb,
                       void *arg, sl_rl_op_t **op_out);

/** A check with every option (sl_ratelimit_check is this without a pause key). */
typedef struct sl_rl_check_s {
    const char *name;      /* metrics label; borrowed until the callback; NULL: "other" */
    const char *key;       /* the GCRA key (borrowed, copied), or NULL: no rate, only the pause */
    sl_rl_limit_t lim;     /* the key's limit (rate <= 0: unlimited) */
    double cost;           /* units charged to key */
    const char *pause_key; /* NULL, or a key of sl_ratelimit_pause (borrowed, copied): the
                              check is denied while it is paused, nothing charged */
    int max_wait_ms;       /* as sl_ratelimit_check; a pause is waited out too if it fits */
} sl_rl_check_t;

/**
 * sl_ratelimit_check with a pause key. A denial by the pause has the pause's
 * remaining time as retry_after_s; sl_ratelimit_pause_state then says PAUSED
 * (the reply refreshed the local copy). Returns as sl_ratelimit_check.
 */
int sl_ratelimit_check_ex(sl_ratelimit_t *rl, const sl_rl_check_t *c, sl_rl_cb cb, void *arg,
                          sl_rl_op_t **op_out);

/**
 * Pauses `key` (borrowed, copied) for `seconds` (bounded to SL_RL_PAUSE_MAX_S)
 * on every instance: at once in the local table, and in Redis (a script: the
 * until-time in ms on Redis's clock, PX expiry, then PUBLISH on
 * SL_RL_PAUSE_CHANNEL). A pause only extends: a shorter one than the pause in
 * place changes nothing. `why` (borrowed, copied, cut to SL_RL_PAUSE_WHY_MAX-1
 * bytes, no spaces needed) is kept with it for sl_ratelimit_pause_state.
 * Fire and forget: 0, or SL_EINVAL (key too long, seconds <= 0), SL_ENOMEM.
 */
int sl_ratelimit_pause(sl_ratelimit_t *rl, const char *key, double seconds, const char *why);

/**
 * What this process knows of `key`'s pause, without I/O: SL_RL_PAUSED with
 * the remaining seconds in *remaining_s (may be NULL) and the reason in `why`
 * (whylen bytes, may be 0); SL_RL_CLEAR (no pause known, and the local copy
 * is fresh or Redis is not there to ask); SL_RL_ASK (no local pause, but
 * another instance may have set one: a check with this pause key asks Redis).
 */
int sl_ratelimit_pause_state(sl_ratelimit_t *rl, const char *key, double *remaining_s, char *why,
                             size_t whylen);

/**
 * Charges `cost` units of `lim` to `key` without waiting and without a
 * denial: a debt pushes the TAT forward (later checks wait for it); a
 * negative cost is a refund, which moves the TAT back but never before now.
 * For corrections after the fact (a call used more tokens than estimated).
 * |cost| is bounded to an hour of the rate. Fire and forget (Redis if up,
 * else the local table): 0, SL_EINVAL (key too long, unlimited lim), SL_ENOMEM.
 */
int sl_ratelimit_charge(sl_ratelimit_t *rl, const char *key, const sl_rl_limit_t *lim, double cost);

/**
 * Subscribes (a second Redis connection, `redis_url` copied) to pause
 * messages, so a pause set by any instance is copied here at once and a
 * "not paused" answer is trusted for SL_RL_PAUSE_SYNC_LISTEN_S instead of
 * SL_RL_PAUSE_SYNC_S. Optional. Returns 0, SL_EINVAL (bad URL), SL_ENOMEM.
 */
int sl_ratelimit_listen(sl_ratelimit_t *rl, const char *redis_url);

/** 1 while subscribed to pause messages (sl_ratelimit_listen and Redis up). */
int sl_ratelimit_listening(const sl_ratelimit_t *rl);

/** Withdraws an op whose callback has not run: no callback afterwards. */
void sl_ratelimit_cancel(sl_rl_op_t *op);

/** 1 while checks go to Redis, 0 while they run locally. */
int sl_ratelimit_shared(const sl_ratelimit_t *rl);

/**
 * GCRA on one TAT (seconds on any clock `now` also uses): returns 1 and moves
 * *tat if `cost` fits the limit at `now`, else 0 with the wait in
 * *retry_after_s. The same arithmetic as the Redis script; exposed for tests.
 */
int sl_ratelimit_gcra(double *tat, double now, double rate, double burst, double cost,
                      double *retry_after_s);

/**
 * A per-process concurrency counter on `key` (borrowed, copied): takes one
 * unit if fewer than `max` are held (max <= 0: no limit) and returns 0, else
 * SL_EAGAIN. SL_ENOMEM when the table cannot grow (nothing taken).
 */
int sl_ratelimit_hold(sl_ratelimit_t *rl, const char *key, int max);

/** Gives back a unit taken by sl_ratelimit_hold. */
void sl_ratelimit_unhold(sl_ratelimit_t *rl, const char *key);

#endif
