/*
 * run.h — the run actor: one per claimed file run, driving its flow step by
 * step and committing every transition to Postgres.
 *
 * An actor is a small struct: ids, the current step and attempt, the ctx JSON,
 * the flow it runs (a reference: a reload does not change it under the run),
 * and at most one thing in progress — a database commit, a step attempt (a Lua
 * coroutine in flow.c), or a retry timer. Each completion is a message that
 * moves the state machine on; nothing waits on a thread.
 *
 *   claim -> [started|resumed] -> step_started -> attempt
 *     ok        -> step_succeeded -> next step | succeeded
 *     transient, attempts left -> retry (timer) -> attempt
 *     failed    -> fallback/always step | waiting (a transient link in the chain)
 *                                        | failed
 * Every arrow is one transition: the runs row (guarded by lease_owner) and the
 * timeline event(s) commit together, in a group with other actors'
 * transitions (actors/commit.h), each with its own guard. If the guard finds no row (the lease was
 * lost or the file deleted) the actor stops without further effects.
 *
 * A run taken over after a crash (claimed while `running` under a lapsed
 * lease) continues with the flow version it last committed with
 * (runs.flow_version), loaded from flow_versions when the engine does not
 * hold it; when that version is unknown there, with the current flow.
 */
#ifndef SL_RUN_H
#define SL_RUN_H

#include "actors/scheduler.h"
#include <libpq-fe.h>

typedef struct sl_run_s sl_run_t;

/**
 * One claimed run: a row of sluice_claim_runs() (db/functions/claim.sql), read
 * by column name (scheduler.c). Every string is borrowed from the claim result
 * and NULL where the column is SQL null.
 */
typedef struct sl_run_claim_s {
    const char *id, *tenant_id, *dataset_id, *file_id, *pipeline;
    const char *step; /* NULL: the run never started a step */
    int attempt;
    const char *ctx; /* the run's ctx, JSON text */
    const char *chain_start;
    int chain_transient;
    int wait_count;
    const char *flow_version; /* sha256 of the flow it last committed with; NULL: none */
    const char *old_state;    /* queued, running (a lapsed lease) or waiting */
    const char *old_owner;    /* the instance whose lease lapsed, or NULL */
    const char *file;         /* the file document, JSON text; NULL: the file went away */
} sl_run_claim_t;

/**
 * Starts an actor for a claimed run (c and its strings are borrowed for the
 * call). Returns 0 or an error (the run is then left to its lease).
 */
int sl_run__start(sl_sched_t *s, const sl_run_claim_t *c);

/**
 * Cancels the actor without committing (deleted file, lost lease). Its end
 * (and sl_sched__remove) comes on a later loop turn.
 */
void sl_run__cancel(sl_run_t *r);

/** Cancels and forgets the scheduler (which is being freed): no callback into it. */
void sl_run__detach(sl_run_t *r);

/** The actor's file id (borrowed). */
const char *sl_run__file_id(const sl_run_t *r);

/** The actor's run id (borrowed). */
const char *sl_run__id(const sl_run_t *r);

/* ---- what run.c needs from scheduler.c ---- */
typedef struct sl_sched_ctx_s {
    struct event_base *base;
    sl_pg_t *pg;
    sl_store_t *store;
    sl_flowvm_t *vm;
    const char *instance_id;
    const char *tmp_root;
    sl_workq_t *wq; /* scratch dirs are removed there (core/rmtree.h) */
} sl_sched_ctx_t;

/**
 * At the engine's start: removes, on the worker pool, the scratch dirs under
 * ctx->tmp_root that an earlier engine process left (it crashed or was
 * killed): those named for a process that no longer exists.
 */
void sl_run__sweep_scratch(const sl_sched_ctx_t *ctx);

/** The scheduler's shared context (borrowed). */
const sl_sched_ctx_t *sl_sched__ctx(const sl_sched_t *s);
/** Registers / unregisters a live actor (for cancel, counts and shutdown). */
/* The node is the run's place in the scheduler's list (owned by the
 * scheduler, NULL if it could not be made): the run keeps it and hands it
 * back, so a removal is O(1) with 10,000 actors live. */
struct run_node_s *sl_sched__add(sl_sched_t *s, sl_run_t *r);
void sl_sched__remove(sl_sched_t *s, struct run_node_s *node);
/** The current flow of a pipeline, or NULL (borrowed). */
sl_flow_t *sl_sched__flow_for(sl_sched_t *s, const char *pipeline);
/**
 * The flow of `pipeline` at `version` (sha256 hex of its file) if the
 * scheduler holds it (the current one, or an older one loaded for a
 * taken-over run), else NULL. Borrowed: take a reference to keep it.
 */
sl_flow_t *sl_sched__flow_version(sl_sched_t *s, const char *pipeline, const char *version);
/**
 * Loads `source` (len bytes, borrowed; a row of flow_versions) as the flow of
 * `pipeline` at `version`, and holds it (up to 32 older versions, the oldest
 * dropped first). Blocking: writes the source under tmp_root/flows and
 * compiles it, as a reload does. *out is borrowed. 0, or SL_EINVAL (the bytes
 * are not that version, or the flow does not load), SL_EIO, SL_ENOMEM.
 */
int sl_sched__load_flow_version(sl_sched_t *s, const char *pipeline, const char *version,
                                const char *source, size_t len, sl_flow_t **out);

#endif
