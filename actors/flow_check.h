/*
 * flow_check.h — validation of a flow before it runs, and its graph.
 *
 * A flow source is loaded in the same sandbox the engine runs it in (the VM of
 * actors/flow.h: its `flow{}`, its `require`, its budgets), then checked as a
 * whole, and every error is kept, not only the first:
 *   - the file compiles and its top level runs (a syntax error has its line);
 *   - it returns flow{start = ..., steps = {...}} with no unknown keys;
 *   - every step is a table with a `run` function, a name of [a-z0-9_] and no
 *     unknown keys; options in range (the SL_FLOW_* limits below);
 *   - `start` names a step; every next / fallback / always names a step;
 *   - every step is reachable from `start`;
 *   - from every step, a step where the run can end is reachable (a step with
 *     no `next`, or no `fallback`, and no `always`): a cycle is allowed only if
 *     it can end, as a retry loop does;
 *   - every `require`d module exists (lib_dir/name.lua) and loads.
 * Each error reads "label:line: message": label is the pipeline or file name
 * the caller gives, line the step's `run` function (Lua's debug info), else the
 * line of its declaration in the text, else the line of `flow{`.
 *
 * sl_flow_load (actors/flow.h) runs this check, so the engine (start, SIGHUP
 * reload, pinned versions) refuses an invalid flow with all its errors;
 * `sluice flow check` (cli/flow.c) runs it offline. The rules as flow
 * authors read them: docs/flows.md, "Checking a flow".
 */
#ifndef SL_FLOW_CHECK_H
#define SL_FLOW_CHECK_H

#include <jansson.h>
#include <stddef.h>

#include "actors/flow.h"

/* The ranges a step's options must be in (seconds unless said). */
#define SL_FLOW_TIMEOUT_MAX_S 86400   /* timeout: > 0 and at most a day */
#define SL_FLOW_TIMEOUT_DEFAULT_S 300 /* timeout when the step gives none */
#define SL_FLOW_RETRY_ATTEMPTS_MIN 1  /* retry.attempts: attempts in all */
#define SL_FLOW_RETRY_ATTEMPTS_MAX 100
#define SL_FLOW_RETRY_DELAY_MAX_S 86400 /* retry.base and retry.max: >= 0 and at most a day */
#define SL_FLOW_MAX_STEPS 256           /* steps in one flow */
#define SL_FLOW_STEP_NAME_MAX 64        /* a step name is 1..63 bytes of [a-z0-9_] */
#define SL_FLOW_CHECK_MAX_ERRORS 100    /* errors kept; past it, one "... more" error */
#define SL_FLOW_CHECK_ERROR_MAX 512     /* bytes of one error line */

typedef struct sl_flow_check_s sl_flow_check_t;

/**
 * Loads `src` (len bytes, borrowed) in vm's sandbox under the name `label`
 * (borrowed; copied: the chunk name and every error's prefix) and checks it.
 * Returns 0 when the flow is valid, SL_EINVAL when it is not (its errors in
 * the result), SL_ENOMEM; in the first two cases *out is returned owned
 * (sl_flow_check_free), holding the steps, errors and the Lua references of a
 * valid flow. Not from inside a step; synchronous.
 */
int sl_flow_check_source(sl_flowvm_t *vm, const char *label, const char *src, size_t len,
                         sl_flow_check_t **out);

/**
 * Reads the file at path (borrowed) and checks it with the path as label.
 * Returns as sl_flow_check_source, or SL_ENOTFOUND / SL_EIO / SL_EINVAL for a
 * file that cannot be read, with *out returned owned holding that one error.
 */
int sl_flow_check_file(sl_flowvm_t *vm, const char *path, sl_flow_check_t **out);

/** Errors found (0: valid), in line order. */
int sl_flow_check_nerrors(const sl_flow_check_t *c);

/** Error i (< nerrors), "label:line: message", borrowed from c. */
const char *sl_flow_check_error(const sl_flow_check_t *c, int i);

/** Every error joined by '\n' into buf (truncated to buflen). Returns buf. */
const char *sl_flow_check_errors_text(const sl_flow_check_t *c, char *buf, size_t buflen);

/** Frees c and the Lua references it still holds. NULL is a no-op. */
void sl_flow_check_free(sl_flow_check_t *c);

/**
 * The graph of a loaded flow, returned owned: {"nodes": [{"id"}], "edges":
 * [{"from", "to", "on": "next" | "fallback" | "always"}]}, nodes in definition
 * order, edges per step in that order (next, fallback, always). NULL on no memory.
 */
json_t *sl_flow_graph(const sl_flow_t *f);

/**
 * What /v1/pipelines shows of a loaded flow, returned owned: {"steps": [...],
 * "version": "<sha256 of the source>", "start", "graph": sl_flow_graph(f)}.
 * NULL on no memory.
 */
json_t *sl_flow_describe(const sl_flow_t *f);

#endif
