/*
 * flow.h — the Lua flow runtime: one sandboxed Lua VM per process, flows
 * loaded from files and checked, and steps run as coroutines on the loop.
 *
 * The contract for flow authors (the `flow{}` format, transitions, the `sl`
 * table, budgets, services) is docs/flows.md; this header is the C side that
 * actors/run.c drives. A step runs in its own coroutine (lua_newthread, pinned
 * in the registry while it lives). A primitive that does I/O (sl.http.request,
 * sl.exec, sl.artifact, ...) starts the operation, records it as the step's
 * pending op with its cancel, and yields; the operation's completion resumes
 * the coroutine on a later loop turn (sl_flow__resume, the one resume path).
 *
 * Files: actors/flow.c (VM, sandbox, budgets, loading, resume),
 * actors/flow_check.c (checking a flow as a whole, its graph),
 * actors/service.c (per-service timeout, concurrency cap, circuit breaker),
 * actors/lua_http.c, lua_exec.c, lua_run.c (artifact, record,
 * text source, read_artifact), lua_util.c (json, sha256, hmac, log, sleep,
 * service, tmpdir) — each with one sl_lua_inject_<name>(L) entry point.
 */
#ifndef SL_FLOW_H
#define SL_FLOW_H

#include <event2/event.h>
#include <stddef.h>

#include "actors/flow_effects.h"
#include "core/config.h"
#include "core/curl.h"
#include "core/ratelimit.h"
#include "core/storage.h"
#include "core/workq.h"
#include "db/pg.h"

typedef struct sl_flowvm_s sl_flowvm_t;
typedef struct sl_flow_s sl_flow_t;
typedef struct sl_step_s sl_step_t;

/** What the VM needs from the process. Every pointer is borrowed and must outlive the VM. */
typedef struct sl_flow_host_s {
    struct event_base *base;
    sl_curl_t *curl;
    sl_store_t *store;
    sl_pg_t *pg;
    const sl_config_t *cfg;  /* services: url, command, timeout_ms, concurrency, ... */
    const char *lib_dir;     /* where require "x" finds x.lua (default "lua-flows/lib") */
    const char *tmp_root;    /* parent of per-run scratch dirs (default "./var/tmp") */
    long step_instructions;  /* instruction budget per step attempt (default 50,000,000) */
    size_t step_memory;      /* memory budget per step attempt, bytes (default 64 MiB) */
    /* Additions (zero = default, so older initialisers keep working): */
    sl_workq_t *wq;          /* worker pool: sl.artifact{path=} reads the file there;
                                NULL: such calls fail with "not_configured" */
    int circuit_open_ms;     /* how long a tripped circuit stays open (default 30000; tests) */
    sl_ratelimit_t *ratelimit; /* service rates, token budgets and holds (actors/service.h);
                                  NULL: services are not limited */
    const sl_flow_effects_t *fx; /* where a step's rows and calls go (flow_effects.h);
                                    NULL: the engine's (pg, curl, base above) */
    void *fx_self;               /* fx's first argument (borrowed); ignored when fx is NULL */
} sl_flow_host_t;

/**
 * Creates the VM: a lua_State with a capped allocator, the sandboxed base
 * environment and the `sl` table. Returns owned in *out, or an error with a
 * message in err.
 */
int sl_flowvm_new(const sl_flow_host_t *host, sl_flowvm_t **out, char *err, size_t errlen);

/**
 * Cancels running steps — their callbacks fire with "cancelled" before this
 * returns (the one exception to "on a later turn"; a step that had already
 * finished reports its real result) — and frees the flows' VM state. Flows
 * still referenced stay valid as C objects (names, steps) until their last
 * sl_flow_unref. Not from inside a step callback. Host objects (curl, store,
 * pg, workq) must outlive it; detached operations complete there later.
 */
void sl_flowvm_free(sl_flowvm_t *vm);

/* ---- flows ---- */

/** One step of a loaded flow. Strings are owned by the flow. NULL = no such transition. */
typedef struct sl_flow_step_s {
    const char *name;
    const char *next;
    const char *fallback;
    const char *always;
    int timeout_ms;          /* default 300000 */
    int retry_attempts;      /* attempts in all, >= 1; default 3 */
    int retry_base_ms;       /* default 500 */
    int retry_max_ms;        /* default 30000 */
    int line;                /* where the step's run function is defined */
} sl_flow_step_t;

/**
 * Loads and checks the flow file at `path` (copied) for pipeline `name`
 * (copied) with the whole check of actors/flow_check.h. Errors are every
 * "path:line: message" the check found, one per line, in err (truncated to
 * errlen); SL_EINVAL for an invalid flow. Returns an owned reference
 * (refcount 1) in *out.
 */
int sl_flow_load(sl_flowvm_t *vm, const char *name, const char *path, sl_flow_t **out, char *err,
                 size_t errlen);

/**
 * sl_flow_load for a source in memory (src: len bytes, borrowed; copied),
 * checked and compiled under `label` (copied; sl_flow_path returns it): the
 * pipelines put through the API (actors/pipestore.h). Same returns.
 */
int sl_flow_load_source(sl_flowvm_t *vm, const char *name, const char *label, const char *src,
                        size_t len, sl_flow_t **out, char *err, size_t errlen);

/** References: a run holds one while it uses the flow; reload drops the registry's. */
void sl_flow_ref(sl_flow_t *f);
void sl_flow_unref(sl_flow_t *f);

/** The flow's version: the sha256 hex of the file's bytes (borrowed from f). */
const char *sl_flow_version(const sl_flow_t *f);
const char *sl_flow_name(const sl_flow_t *f);
const char *sl_flow_path(const sl_flow_t *f);
/** The bytes the flow was compiled from (borrowed from f; len set), whose
 *  sha256 hex is sl_flow_version(f). */
const char *sl_flow_source(const sl_flow_t *f, size_t *len);
const char *sl_flow_start(const sl_flow_t *f);
int sl_flow_nsteps(const sl_flow_t *f);
/** Steps in definition order (i < nsteps), or by name (NULL if none). Borrowed from f. */
const sl_flow_step_t *sl_flow_step_at(const sl_flow_t *f, int i);
const sl_flow_step_t *sl_flow_step(const sl_flow_t *f, const char *name);

/**
 * Makes a run's scratch dir `dir` (0700) if it is not there, and its missing
 * parents (mkdir -p; one mkdir when only `dir` is missing). 0, or SL_EIO
 * (errno says why). Also the tmp root's other dirs (flows/, the offline
 * runner's). A
 * metadata syscall on the caller's thread: called only where a flow asks for
 * the dir (sl.tmpdir, sl.exec) or the run fetches its blob into it. Making
 * one for every run cost about a fifth of the engine's CPU in flow_bench: ext4's
 * inode allocator searches past the inodes of the dirs recently removed.
 */
int sl_scratch_make(const char *dir);

/* ---- running a step ---- */

/** What a step attempt runs with. Every string is borrowed for the call (copied). */
typedef struct sl_step_input_s {
    const char *run_id;
    const char *tenant_id;
    const char *dataset_id;
    const char *file_id;
    const char *pipeline;
    const char *step;
    int attempt;             /* 1-based attempt of this step */
    const char *ctx_json;    /* the run's ctx (a JSON object) */
    const char *file_json;   /* {id, name, mime, size, sha256, path, dataset_id, schema} */
    const char *tmpdir;      /* this run's scratch dir, or NULL: none. Its path only: it is
                                made when a step first needs it (sl_flow__scratch) */
    int *tmpdir_made;        /* borrowed, or NULL: set to 1 once tmpdir was made (the caller
                                removes the dir at the end only then); outlives the step */
    /* 0: every string above is copied. 1: the names (run_id ... step, tmpdir)
     * and ctx_json are borrowed until the step's callback returns (the run
     * actor's own fields: a parked run keeps one copy, issue 10); file_json
     * is copied either way. */
    int borrow;
    /* With borrow: file.path as file_json has it, borrowed like the names (the
     * step needs it for sl.exec's run file); NULL: read from file_json. */
    const char *file_path;
} sl_step_input_t;

/** The outcome of one attempt. Strings are borrowed until the callback returns. */
#define SL_FLOW_DETAIL_MAX 1024 /* bytes of a step's returned detail that are kept */

typedef struct sl_step_result_s {
    int ok;                  /* 1: run() returned a true value */
    const char *err;         /* on failure: "timeout", "no_text", "lua_error", ... */
    const char *note;        /* on success: the step's note (`return true, "no_text"`), or NULL */
    int transient;           /* err is in the transient set of docs/flows.md */
    const char *detail;      /* on lua_error: message + traceback; else the step's third
                                return value (a short detail, at most SL_FLOW_DETAIL_MAX) or NULL */
    const char *ctx_json;    /* ctx after the attempt (even on failure), a JSON object */
    double duration_s;
    double wait_s;           /* > 0: the step failed because a service held it back this long */
    char wait_reason[128];   /* with wait_s: "<service>: <why>" (sl_svc_hold_remaining_s) */
} sl_step_result_t;

typedef void (*sl_step_cb)(sl_step_t *s, const sl_step_result_t *res, void *arg);

/**
 * Starts one attempt of `in->step` of flow `f` (the step holds a reference to
 * f until it ends). The callback fires exactly once, on a later loop turn,
 * with the result; the step handle is freed after it returns. The step's own
 * timeout is enforced here (result err "timeout", transient). Returns 0, or an
 * error without calling back (unknown step, no memory).
 */
int sl_step_start(sl_flowvm_t *vm, sl_flow_t *f, const sl_step_input_t *in, sl_step_cb cb,
                  void *arg, sl_step_t **out);

/**
 * Cancels a running attempt: its pending op is cancelled and the callback fires
 * (later turn) with err "cancelled". No effect after the callback.
 */
void sl_step_cancel(sl_step_t *s);

/** Steps running now (for metrics). */
int sl_flowvm_running(const sl_flowvm_t *vm);

/**
 * Of those, the steps parked: waiting on an operation in flight off the loop
 * (a service call, a command, a worker's read; not one still queued for its
 * service's slot) or on sl.sleep's timer. The scheduler admits new runs by
 * the others, the runs that have work to do now (limits.max_runs_active).
 */
int sl_flowvm_parked(const sl_flowvm_t *vm); /* vm NULL: 0 */

/** Bytes the VM's allocator holds now (all flows, modules and steps). Addition. */
size_t sl_flowvm_memory(const sl_flowvm_t *vm);

/** 1 if err is transient per docs/flows.md. */
int sl_flow_err_transient(const char *err);

#endif
