/*
 * scheduler.h — claims runnable runs from Postgres and keeps their actors.
 *
 * Runs are claimed in batches with `FOR UPDATE SKIP LOCKED` and a lease
 * (lease_owner = this instance, lease_until = now + 30 s), renewed by one
 * heartbeat statement for all of this instance's runs every 10 s. A process
 * that dies stops renewing; when its leases end, any instance claims those
 * runs and they resume at their last committed step. Up to max_in_flight runs
 * are held at once (each a small actor, see run.h); a run waiting for a
 * service's slot or reply costs only its actor and its Lua coroutine.
 */
#ifndef SL_SCHEDULER_H
#define SL_SCHEDULER_H

#include "actors/flow.h"
#include "core/pubsub.h"

typedef struct sl_sched_s sl_sched_t;

#define SL_SCHED_MAX_ACTIVE 64 /* limits.max_runs_active's default */

typedef struct sl_sched_opts_s {
    struct event_base *base;  /* borrowed */
    sl_pg_t *pg;              /* borrowed */
    sl_store_t *store;        /* borrowed */
    sl_workq_t *wq;           /* borrowed: scratch dirs are removed on it */
    sl_flowvm_t *vm;          /* borrowed */
    sl_pubsub_t *pubsub;      /* borrowed, may be NULL: committed transitions are published here */
    const char *instance_id;  /* copied: the lease owner */
    const char *tmp_root;     /* copied: parent of per-run scratch dirs */
    int max_in_flight;        /* default 10000 */
    int max_active;           /* of those, not parked on a call or timer; default SL_SCHED_MAX_ACTIVE */
    int max_in_flight_per_tenant; /* hard ceiling per tenant (x its weight); <= 0: none */
    const char *weights_json; /* copied; {"tenant name or id": weight, ...}: shares; NULL: all 1 */
    int no_shares;            /* 1: claim oldest first, no shares (fairness.shares: false) */
    int claim_batch;          /* runs per claim query; default 200 */
    int lease_s;              /* default 30 */
    int heartbeat_s;          /* default a third of the lease (10) */
    int poll_ms;              /* idle poll interval; default 250 */
} sl_sched_opts_t;

/** Creates the scheduler (not started). Returns owned in *out. */
int sl_sched_new(const sl_sched_opts_t *opts, sl_sched_t **out);

/**
 * Sets the flow of a pipeline (takes a reference to f; drops the one it had).
 * Runs already in flight keep the flow they started with. Its source goes
 * into flow_versions (now, or at sl_sched_start), so a run taken over after
 * a crash can continue with this version even once the file has changed.
 */
int sl_sched_set_flow(sl_sched_t *s, const char *pipeline, sl_flow_t *f);

/**
 * Forgets a pipeline (issue 14: deleted through the API): runs claimed from
 * now on fail with unknown_pipeline; actors in flight keep their flow, and a
 * running run taken over after a crash loads its version from flow_versions.
 * 0, or SL_ENOTFOUND.
 */
int sl_sched_drop_flow(sl_sched_t *s, const char *pipeline);

/** The current flow of a pipeline, or NULL (borrowed). */
sl_flow_t *sl_sched_flow(const sl_sched_t *s, const char *pipeline);

/** Starts claiming (call once the schema is ready). */
void sl_sched_start(sl_sched_t *s);

/** Wakes the claimer now (after an upload queued runs). */
void sl_sched_kick(sl_sched_t *s);

/** Cancels this instance's actors of a file (its rows were deleted). Returns how many. */
int sl_sched_cancel_file(sl_sched_t *s, const char *file_id);

/**
 * Handles one message from the HTTP processes (docs/internals/engine.md):
 * "kick" is sl_sched_kick, "cancel <file id>" is sl_sched_cancel_file.
 * msg is borrowed. 0, or SL_EINVAL for anything else (logged, ignored).
 */
int sl_sched_message(sl_sched_t *s, const char *msg);

/** The pubsub runs publish their committed transitions on (borrowed; may be NULL). */
sl_pubsub_t *sl_sched_pubsub(const sl_sched_t *s);

/** Runs held by actors now. */
int sl_sched_in_flight(const sl_sched_t *s);

/**
 * Stops claiming and cancels every actor without committing anything (their
 * leases lapse and another instance resumes them), then frees. Pending
 * database callbacks are safe: actors are refcounted.
 */
void sl_sched_free(sl_sched_t *s);

/**
 * Called once when sl_sched_stop's hand-back ended: err 0 and how many runs
 * went back, or a negative SL_E* code (the leases then lapse by themselves).
 */
typedef void (*sl_sched_stopped_cb)(int err, int nruns, void *arg);

/**
 * The graceful stop (SIGTERM; issue 12, docs/deploy.md): sl_sched_free, then
 * this instance's runs handed back in one UPDATE (lease_owner and
 * lease_until cleared), so another instance claims them at its next poll
 * instead of when their leases lapse. A step in flight is cancelled without
 * committing: its run resumes elsewhere at its last committed step (a
 * transition already sent either lands before the hand-back, or finds the
 * lease gone and ends without effects). `pg` is borrowed until the callback;
 * `cb` (may be NULL) fires once, on a later loop turn. s is freed (do not use
 * it again). 0, or SL_ENOMEM / the pool's error without calling back.
 */
int sl_sched_stop(sl_sched_t *s, sl_sched_stopped_cb cb, void *arg);

#endif
