/*
 * transition.h — what follows a step attempt: the one decision both the
 * engine's run actor (actors/run.c, which commits it to Postgres) and
 * `sluice flow test` (actors/flow_offline.c, which keeps it in memory) take,
 * so a flow tested offline moves through its steps exactly as it will in the
 * engine: next/always on success; on failure a service hold, then retries of
 * a transient error with backoff, then the fallback/always step, then waiting
 * (a transient failure somewhere in the chain) or failing.
 */
#ifndef SL_TRANSITION_H
#define SL_TRANSITION_H

#include "actors/flow.h"

#define SL_TRANSITION_WAIT_MAX_S 300 /* longest wait after a chain that failed transiently */

/** Where a run stands: the step it is at and its failure chain. */
typedef struct sl_run_pos_s {
    char step[64];
    int attempt;
    char chain_start[64]; /* the first step of the failing chain ("" if none) */
    int chain_transient;  /* some failure in the chain was transient */
    int wait_count;       /* waits so far (the wait backoff) */
} sl_run_pos_t;

typedef enum {
    SL_TR_NEXT,      /* succeeded: on to pos->step (next or always) */
    SL_TR_SUCCEEDED, /* succeeded, nowhere to go: the run succeeded (note: res->note) */
    SL_TR_HELD,      /* a service held the call back: wait wait_s, same step and attempt */
    SL_TR_RETRY,     /* transient failure, attempts left: retry after delay_ms */
    SL_TR_FALLBACK,  /* failed: on to pos->step via `via` ("fallback" or "always") */
    SL_TR_WAITING,   /* failed, a transient link in the chain: wait wait_s, resume at pos->step */
    SL_TR_FAILED,    /* failed for good */
} sl_tr_kind_t;

typedef struct sl_transition_s {
    sl_tr_kind_t kind;
    char from[64];   /* the step the attempt ran */
    const char *err; /* failures: the error word (borrowed from res, or "failed") */
    const char *via; /* SL_TR_FALLBACK: "fallback" or "always" (static) */
    int delay_ms;    /* SL_TR_RETRY */
    double wait_s;   /* SL_TR_HELD, SL_TR_WAITING */
} sl_transition_t;

/**
 * Decides what follows attempt `res` of pos->step of flow f, moves *pos there
 * (step, attempt, chain, wait count) and describes the move in *out. f and
 * res are borrowed; out->err borrows from res. The retry delay is the full
 * jitter backoff of the step's retry options (random).
 */
void sl_transition_decide(const sl_flow_t *f, sl_run_pos_t *pos, const sl_step_result_t *res,
                          sl_transition_t *out);

#endif
