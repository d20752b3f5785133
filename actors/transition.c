/*
 * transition.c — the decision after a step attempt (transition.h). It was
 * the body of run.c's step_done_cb; the events, logs and the commit stay
 * there, the choice of where to go is here, shared with the offline runner.
 */
#include "actors/transition.h"

#include <math.h>
#include <stdio.h>

#include "actors/service.h"
#include "core/crypto.h"

/* Full jitter (AWS architecture blog "Exponential Backoff And Jitter"). */
static int backoff_ms(const sl_flow_step_t *st, int attempt)
{
    double cap = st->retry_base_ms * pow(2.0, attempt - 1);
    if (cap > st->retry_max_ms)
        cap = st->retry_max_ms;
    unsigned int rnd = 0;
    sl_random_bytes(&rnd, sizeof rnd);
    return (int)(cap / 2 + (cap / 2) * ((double)rnd / 4294967295.0));
}

static void go(sl_run_pos_t *pos, const char *step)
{
    snprintf(pos->step, sizeof pos->step, "%s", step);
    pos->attempt = 1;
}

void sl_transition_decide(const sl_flow_t *f, sl_run_pos_t *pos, const sl_step_result_t *res,
                          sl_transition_t *out)
{
    const sl_flow_step_t *st = sl_flow_step(f, pos->step);
    const char *target;

    snprintf(out->from, sizeof out->from, "%s", pos->step);
    out->err = NULL;
    out->via = NULL;
    out->delay_ms = 0;
    out->wait_s = 0;
    if (res->ok) {
        target = st && st->always ? st->always : st ? st->next : NULL;
        pos->chain_start[0] = '\0';
        pos->chain_transient = 0;
        if (target) {
            go(pos, target);
            out->kind = SL_TR_NEXT;
        } else {
            out->kind = SL_TR_SUCCEEDED;
        }
        return;
    }
    out->err = res->err ? res->err : "failed";
    if (res->wait_s > 0) {
        /* Held back by a service (Retry-After, its rate-limit headers): not a
         * failure of the step; the run waits and resumes at the same step and
         * attempt, with retries, fallbacks, chain and wait backoff untouched. */
        out->kind = SL_TR_HELD;
        out->wait_s = res->wait_s > SL_SVC_HOLD_MAX_S ? SL_SVC_HOLD_MAX_S : res->wait_s;
        return;
    }
    if (st && res->transient && pos->attempt < st->retry_attempts) {
        out->kind = SL_TR_RETRY;
        out->delay_ms = backoff_ms(st, pos->attempt);
        pos->attempt++;
        return;
    }
    target = st && st->always ? st->always : st ? st->fallback : NULL;
    if (target) {
        if (!pos->chain_start[0])
            snprintf(pos->chain_start, sizeof pos->chain_start, "%s", out->from);
        pos->chain_transient |= res->transient;
        out->kind = SL_TR_FALLBACK;
        out->via = st->always ? "always" : "fallback";
        go(pos, target);
        return;
    }
    if (pos->chain_transient || res->transient) {
        /* Nowhere left to go, but a service on the way may come back: wait
         * and start the chain again (tika -> ocr -> textract), with backoff. */
        out->kind = SL_TR_WAITING;
        out->wait_s = pow(2.0, pos->wait_count < 9 ? pos->wait_count : 9);
        if (out->wait_s > SL_TRANSITION_WAIT_MAX_S)
            out->wait_s = SL_TRANSITION_WAIT_MAX_S;
        if (pos->chain_start[0])
            snprintf(pos->step, sizeof pos->step, "%s", pos->chain_start);
        pos->chain_start[0] = '\0';
        pos->chain_transient = 0;
        pos->attempt = 1;
        pos->wait_count++;
        return;
    }
    out->kind = SL_TR_FAILED;
}
