/*
 * service.h — per-service call policy for flow primitives: a default timeout,
 * a concurrency cap with a FIFO of waiting calls (a bulkhead), and a circuit
 * breaker. One registry per flow VM; a service is looked up by the name a
 * call gives (`service = "tika"`): configured services take their settings
 * from the config, other names get an implicit entry with the defaults.
 *
 * Breaker: closed -> open after SL_SVC_TRIP consecutive transient failures;
 * open -> half-open once the open interval passed (the next call is the one
 * probe, the others still get circuit_open); probe success -> closed, probe
 * transient failure -> open again. Metrics (registered at sl_svcs_new):
 * sluice_service_calls_total{service,outcome}, sluice_service_call_seconds
 * {service}, sluice_circuit_state{service} (0 closed, 1 open, 2 half-open),
 * sluice_service_in_flight{service}, sluice_service_concurrency_limit{service},
 * sluice_service_hold_seconds{service}, sluice_service_holds_total{service,source},
 * sluice_service_tokens_total{service} (usage reported by token-limited services).
 *
 * Backpressure from downstream (docs/internals/ratelimit.md): the HTTP
 * primitive shows every answer to sl_svc_observe. A 429/503 with Retry-After,
 * or x-ratelimit-remaining-* at 0, *holds* the service: every call to it, on
 * every instance (the hold is a pause in core/ratelimit, in Redis), waits
 * until the hold ends if that fits its wait budget, else fails at once with
 * SL_EAGAIN and sl_svc_hold_remaining_s says for how long. Repeated 429s
 * halve the service's concurrency cap in this process (AIMD); successes grow
 * it back. Token limits charge the caller's estimate before a call and the
 * difference to the real usage after it (sl_svc_charge_tokens).
 */
#ifndef SL_SERVICE_H
#define SL_SERVICE_H

#include <event2/event.h>

#include "core/config.h"
#include "core/curl.h"
#include "core/ratelimit.h"

#define SL_SVC_TRIP 5        /* consecutive transient failures that open the circuit */
#define SL_SVC_OPEN_MS 30000 /* how long the circuit stays open */
#define SL_SVC_DEFAULT_TIMEOUT_MS 30000
#define SL_SVC_DEFAULT_CONCURRENCY 8
#define SL_SVC_MAX 64 /* services in one registry (configured + implicit) */
#define SL_SVC_NAME_MAX 64
#define SL_SVC_HOLD_MAX_S 3600.0           /* longest hold a downstream can ask for */
#define SL_SVC_PACE_MIN_S 0.05             /* shorter pacing holds are not worth setting */
#define SL_SVC_AIMD_COOLDOWN_MS 1000       /* 429s within this of a decrease count once */
#define SL_SVC_AIMD_INCREASE_EVERY 10      /* successes per +1 of the concurrency cap */
#define SL_SVC_DEFAULT_TOKEN_ESTIMATE 1000 /* tokens charged when the caller gives none */
#define SL_SVC_REASON_MAX 128              /* "openai: rate limited" */

enum { SL_SVC_CLOSED = 0, SL_SVC_OPEN = 1, SL_SVC_HALF_OPEN = 2 };

typedef struct sl_svcs_s sl_svcs_t;
typedef struct sl_svc_s sl_svc_t;
typedef struct sl_svc_wait_s sl_svc_wait_t;

/**
 * Called once for a queued call: err 0 = the slot is now the caller's (it
 * must sl_svc_release it), SL_EAGAIN = it waited longer than its timeout
 * ("busy"), SL_EUNAVAIL = the circuit opened meanwhile, SL_ECANCELED = the
 * registry is being freed. Always on a later loop turn.
 */
typedef void (*sl_svc_ready_cb)(sl_svc_wait_t *w, int err, void *arg);

/**
 * A queued call. Embedded in the caller's op; fields are private. It has no
 * timer of its own (a parked run keeps less, issue 10): the service's one
 * deadline timer and one wake-up event serve all its waiting calls.
 */
struct sl_svc_wait_s {
    sl_svc_t *svc;
    sl_svc_ready_cb cb;
    void *arg;
    int queued, granted, probe, holds;
    double tokens;   /* the token estimate charged for this call (0: none) */
    double deadline; /* while queued: when it gives up (monotonic seconds) */
    sl_svc_wait_t *next, *prev;   /* queued: in its tenant's queue; granted: the wake-up list */
    sl_svc_wait_t *dnext, *dprev; /* while queued: the service's list by deadline */
    struct sl_svc_tq_s *tq;       /* that queue (the service's, named by the tenant), while queued */
};

/**
 * A response's rate-limit headers (OpenAI's x-ratelimit-*), each the header's
 * value or NULL; borrowed for the call. Durations are Go-style ("1s", "6m0s",
 * "20ms", "1m30.5s").
 */
typedef struct sl_svc_rl_headers_s {
    const char *limit_requests;     /* x-ratelimit-limit-requests */
    const char *remaining_requests; /* x-ratelimit-remaining-requests */
    const char *reset_requests;     /* x-ratelimit-reset-requests */
    const char *limit_tokens;       /* x-ratelimit-limit-tokens */
    const char *remaining_tokens;   /* x-ratelimit-remaining-tokens */
    const char *reset_tokens;       /* x-ratelimit-reset-tokens */
} sl_svc_rl_headers_t;

/**
 * Creates the registry. `base` and `cfg` (may be NULL) are borrowed and must
 * outlive it. `rl` is the limiter the services' rates, token budgets and holds
 * go through (borrowed, must outlive the registry; NULL: no outbound limits
 * and no holds, e.g. a VM that only checks flows). `open_ms` is the open
 * interval (0: SL_SVC_OPEN_MS). Returns owned in *out; SL_ENOMEM.
 */
int sl_svcs_new(struct event_base *base, const sl_config_t *cfg, sl_ratelimit_t *rl, int open_ms,
                sl_svcs_t **out);

/** Frees; queued waiters get SL_ECANCELED synchronously. NULL is a no-op. */
void sl_svcs_free(sl_svcs_t *r);

/**
 * The service `name` (borrowed; copied into an implicit entry when it is not
 * configured). Returns a pointer owned by the registry, or NULL (bad name: not
 * 1..SL_SVC_NAME_MAX-1 of [A-Za-z0-9_-], or too many services, or no memory).
 */
sl_svc_t *sl_svcs_get(sl_svcs_t *r, const char *name);

/** The service's per-call timeout in ms (config timeout_ms, else the default). */
int sl_svc_timeout_ms(const sl_svc_t *s);

/** The service's config section, or NULL for an implicit entry (borrowed). */
const sl_config_service_t *sl_svc_config(const sl_svc_t *s);

const char *sl_svc_name(const sl_svc_t *s);
int sl_svc_state(const sl_svc_t *s);
int sl_svc_in_flight(const sl_svc_t *s);

/** The effective concurrency cap now (AIMD: 1..the configured cap). */
int sl_svc_concurrency_limit(const sl_svc_t *s);

/**
 * Asks for a slot. Returns 1: granted now (no callback; release it later);
 * 0: queued (`w` borrowed until the callback, which fires once after at most
 * wait_ms, unless sl_svc_cancel_wait); SL_EUNAVAIL: the circuit is open
 * (circuit_open; no callback); SL_EAGAIN: the service is held for longer than
 * wait_ms (no callback; sl_svc_hold_remaining_s says how long). A call that
 * finds the service held within wait_ms waits for the hold to end. The ready
 * callback's SL_EAGAIN is either "busy" (no slot or rate token in time) or
 * a hold found later (sl_svc_hold_remaining_s > 0 then). `arg` borrowed.
 * Charges SL_SVC_DEFAULT_TOKEN_ESTIMATE tokens to a token-limited service.
 */
int sl_svc_acquire(sl_svc_t *s, sl_svc_wait_t *w, int wait_ms, sl_svc_ready_cb cb, void *arg);

/**
 * sl_svc_acquire with the call's estimated model tokens (e.g. request body
 * bytes / 4), charged against services.X.tokens_per_min before the call
 * starts (<= 0: the default estimate). sl_svc_wait_tokens(w) says what was
 * charged, for sl_svc_charge_tokens after the answer.
 */
/**
 * sl_svc_acquire_est for a run of `tenant` (borrowed, copied; NULL or "": no
 * tenant). Calls that queue for a slot wait in one FIFO per tenant, and a
 * freed slot goes to the tenants' queues in turn (round-robin), so a tenant
 * with thousands of calls queued delays another tenant's call by at most one
 * call per tenant ahead of it, not by its whole queue (issue 10, fairness:
 * the claim's shares decide which runs start; this decides which of the
 * started ones get a busy service's slot first).
 */
int sl_svc_acquire_for(sl_svc_t *s, sl_svc_wait_t *w, const char *tenant, int wait_ms,
                       double est_tokens, sl_svc_ready_cb cb, void *arg);
int sl_svc_acquire_est(sl_svc_t *s, sl_svc_wait_t *w, int wait_ms, double est_tokens,
                       sl_svc_ready_cb cb, void *arg);

/** The tokens charged for the call of `w` (0 when the service has no token limit). */
double sl_svc_wait_tokens(const sl_svc_wait_t *w);

/**
 * After an answer: corrects the token charge of a call that was charged
 * `estimated` and used `actual` (usage.total_tokens). The difference is
 * charged without waiting: more used pushes the service's token budget into
 * debt (later calls wait for it), less used is refunded. A no-op for a
 * service without tokens_per_min, or for actual < 0.
 */
void sl_svc_charge_tokens(sl_svc_t *s, double actual, double estimated);

/**
 * Shows the service an answer (call it for every HTTP response, before
 * sl_svc_release): `status`; `retry_after` the Retry-After value or NULL;
 * `rl` the rate-limit headers or NULL. 429/503 with a Retry-After holds the
 * service for that long (at most SL_SVC_HOLD_MAX_S); remaining requests at 0
 * (or remaining tokens under one call's estimate) hold it until the reset; a
 * low remaining paces the calls over the reset window; a 429 halves the
 * concurrency cap (AIMD), other answers grow it back. All borrowed.
 */
void sl_svc_observe(sl_svc_t *s, int status, const char *retry_after,
                    const sl_svc_rl_headers_t *rl);

/**
 * sl_svc_observe from a response's `n` headers (borrowed; names compared
 * case-insensitively): picks Retry-After and the x-ratelimit-* headers out.
 * From the HTTP primitive's completion: when res->err == 0,
 * sl_svc_observe_headers(svc, (int)res->status, res->headers, res->n_headers).
 */
void sl_svc_observe_headers(sl_svc_t *s, int status, const sl_curl_header_t *h, size_t n);

/**
 * How long the service is still held (0: not held; held by this or any
 * instance, as far as this process knows), and, if reasonlen > 0, why in
 * `reason` as "<service>: <why>" (e.g. "openai: rate limited").
 */
double sl_svc_hold_remaining_s(const sl_svc_t *s, char *reason, size_t reasonlen);

/**
 * Parses a Retry-After value (RFC 9110 10.2.3): delay-seconds, or an HTTP-date
 * (IMF-fixdate, RFC 850 or asctime) taken against `now` (Unix seconds).
 * Returns 0 with the delay in *out_s (bounded to SL_SVC_HOLD_MAX_S; a date in
 * the past is 0), or SL_EINVAL.
 */
int sl_svc_parse_retry_after(const char *v, double now, double *out_s);

/**
 * Parses a Go-style duration as in x-ratelimit-reset-*: one or more
 * <number><unit> with units h, m, s, ms, us (or µs), ns, each unit at most
 * once and in that order ("1s", "6m0s", "20ms", "1m30.5s"). At most 32 bytes
 * and 1 day. Returns 0 with seconds in *out_s, or SL_EINVAL.
 */
int sl_svc_parse_duration(const char *v, double *out_s);

/** Tuning for tests: AIMD cooldown (ms, >= 0) and successes per increase (>= 1). */
void sl_svcs_set_aimd(sl_svcs_t *r, int cooldown_ms, int increase_every);

/**
 * Withdraws a queued call whose callback has not fired; a slot already granted
 * to it is released (outcome "cancelled"). No callback afterwards.
 */
void sl_svc_cancel_wait(sl_svc_wait_t *w);

/**
 * Gives back the slot held through `w` with the call's outcome: "ok", or an
 * error word. Transient words ("timeout", "unavailable", "server_error",
 * "rate_limited") count as breaker failures; "cancelled" counts as neither;
 * anything else as a success (the service answered). `seconds` is the call's
 * duration. A no-op when w holds no slot.
 */
void sl_svc_release(sl_svc_wait_t *w, const char *outcome, double seconds);

#endif
