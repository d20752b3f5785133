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
 * sluice_service_in_flight{service}.
 */
#ifndef SL_SERVICE_H
#define SL_SERVICE_H

#include <event2/event.h>

#include "core/config.h"

#define SL_SVC_TRIP 5        /* consecutive transient failures that open the circuit */
#define SL_SVC_OPEN_MS 30000 /* how long the circuit stays open */
#define SL_SVC_DEFAULT_TIMEOUT_MS 30000
#define SL_SVC_DEFAULT_CONCURRENCY 8
#define SL_SVC_MAX 64 /* services in one registry (configured + implicit) */
#define SL_SVC_NAME_MAX 64

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

/** A queued call. Embedded in the caller's op; fields are private. */
struct sl_svc_wait_s {
    sl_svc_t *svc;
    struct event *ev;
    sl_svc_ready_cb cb;
    void *arg;
    int queued, granted, probe, holds;
    sl_svc_wait_t *next, *prev;
};

/**
 * Creates the registry. `base` and `cfg` (may be NULL) are borrowed and must
 * outlive it. `open_ms` is the open interval (0: SL_SVC_OPEN_MS). Returns owned
 * in *out; SL_ENOMEM.
 */
int sl_svcs_new(struct event_base *base, const sl_config_t *cfg, int open_ms, sl_svcs_t **out);

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

/**
 * Asks for a slot. Returns 1: granted now (no callback; release it later);
 * 0: queued (`w` borrowed until the callback, which fires once after at most
 * wait_ms, unless sl_svc_cancel_wait); SL_EUNAVAIL: the circuit is open
 * (circuit_open; no callback). `arg` borrowed.
 */
int sl_svc_acquire(sl_svc_t *s, sl_svc_wait_t *w, int wait_ms, sl_svc_ready_cb cb, void *arg);

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
