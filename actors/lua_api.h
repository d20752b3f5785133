/*
 * lua_api.h — internals shared by the flow runtime's files (not a public API).
 *
 * actors/flow.c owns the VM, the flows and the steps; the lua_*.c files each
 * add one group of `sl` functions with their sl_lua_inject_<name>(L). They
 * meet here: the structs, the pending-op protocol and the one resume path.
 *
 * The pending-op protocol (see docs/internals/flow.md). A yielding primitive:
 *   1. checks its arguments and that it runs inside a step (sl_flow__check_step);
 *   2. allocates its op (a struct whose first member is sl_flow_op_t), starts
 *      the operation, and records it with sl_flow__set_op(s, &op->hdr, cancel);
 *   3. returns lua_yield(L, 0). The primitive's stack (its arguments) is
 *      dropped when it yields (a parked step keeps less): the op must own
 *      what it still needs, never borrow from the Lua stack past the yield.
 * When the operation completes (on the loop, later) its callback calls
 * sl_flow__op_take(&op->hdr): NULL means the op was detached (the step timed
 * out, was cancelled or the VM is gone) and the callback just frees the op;
 * otherwise it returns the step, which is resumed with the results through
 * sl_flow__resume_with(s, push_fn, result) (the results are pushed in
 * protected mode and counted against the step's memory budget).
 * The cancel function must, synchronously, make sure the op never touches the
 * step again: either free the op (nothing outstanding) or mark it detached
 * (op->step = NULL) and let its pending callback free it. It must also give
 * back anything borrowed from the VM (a service slot).
 */
#ifndef SL_LUA_API_H
#define SL_LUA_API_H

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>

#include "actors/flow.h"
#include "actors/flow_check.h"
#include "actors/service.h"

#define SL_FLOW_DEFAULT_INSTRUCTIONS 50000000L
#define SL_FLOW_DEFAULT_STEP_MEMORY (64u * 1024 * 1024)
#define SL_FLOW_VM_MEMORY_CAP ((size_t)1024 * 1024 * 1024) /* the whole VM */
#define SL_FLOW_HOOK_EVERY 1000        /* instructions between two budget checks */
#define SL_FLOW_MAX_FILE (1024 * 1024) /* a flow or lib file */
#define SL_FLOW_JSON_DEPTH 64          /* nesting of tables converted to JSON */
#define SL_FLOW_ERR_MAX 64

typedef struct sl_flow_op_s sl_flow_op_t;
typedef void (*sl_flow_cancel_fn)(sl_flow_op_t *op);

/** The head of every pending operation (first member of the primitive's op struct). */
struct sl_flow_op_s {
    sl_flow_cancel_fn cancel;
    sl_step_t *step; /* NULL once detached */
};

/*
 * A dataset's record schema (file.schema), decoded once and shared read-only
 * by the steps that run on files of that dataset (docs/internals/flow.md,
 * "Memory of a parked run"). Keyed by dataset id and the schema's JSON text,
 * so a changed schema gets an entry of its own; freed with its last step.
 */
typedef struct sl_flow_schema_s sl_flow_schema_t;
struct sl_flow_schema_s {
    char *dataset; /* owned: the dataset's id (one entry per dataset and schema) */
    json_t *j; /* owned: the schema as parsed, in the client's property order */
    int ref;   /* registry ref of the decoded Lua table, or LUA_NOREF before the first use */
    int refs;  /* steps holding it */
    sl_flow_schema_t *prev, *next;
};

/* The running steps with one timeout, in deadline order (they began in order). */
typedef struct sl_flow_dlq_s sl_flow_dlq_t;
struct sl_flow_dlq_s {
    int timeout_ms;
    sl_step_t *head, *tail;
    sl_flow_dlq_t *next;
};

struct sl_flowvm_s {
    lua_State *L;
    sl_flow_host_t host; /* copy; lib_dir and tmp_root point at owned copies below */
    char *lib_dir;
    char *tmp_root;
    sl_svcs_t *svcs;
    struct sl_slab_s *slab; /* owned: the Lua heap's small blocks (core/slab.h) */
    size_t mem; /* bytes the allocator handed out, net */
    size_t mem_cap;
    sl_step_t *cur;   /* the step whose coroutine runs now (allocator attribution) */
    long load_instr;  /* instructions used by the flow file being loaded */
    sl_step_t *steps; /* every step not yet delivered (doubly linked) */
    int nsteps;
    int parked;       /* steps parked on an outbound call in flight or a timer (sl_flowvm_parked) */
    sl_flow_t *flows; /* every flow still referenced (doubly linked) */
    int freeing;
    sl_flow_check_t *checking; /* the flow source being loaded and checked, or NULL */
    sl_flow_schema_t *schemas; /* shared file.schema tables in use (doubly linked) */
    int nschemas;
    /* The steps' timing: a step has no event of its own (a parked run keeps
     * less, issue 10). Steps to begin (NEW) or to deliver (DONE) wait in the
     * due list, FIFO, for due_ev (armed at 0); a running step's deadline is
     * in its timeout's dlq, and dl_ev is armed at or before the earliest. */
    sl_step_t *due_head, *due_tail;
    int ndue;
    struct event *due_ev, *dl_ev;
    sl_flow_dlq_t *dlqs; /* owned, one per step timeout seen; freed with the VM */
};

struct sl_flow_s {
    sl_flowvm_t *vm; /* NULL once the VM is freed (the Lua refs are gone) */
    int refs;
    char *name, *path, *start;
    char version[65];
    char *source; /* owned: the bytes compiled (version is their sha256) */
    size_t source_len;
    int nsteps;
    sl_flow_step_t *steps; /* sorted by line (definition order) */
    int *run_refs;         /* registry refs of each step's run function */
    int env_ref;           /* the flow's _ENV (keeps its module cache alive) */
    sl_flow_t *prev, *next;
};

enum { SL_STEP_NEW, SL_STEP_RUNNING, SL_STEP_DONE };

struct sl_step_s {
    sl_flowvm_t *vm;
    sl_flow_t *flow;
    const sl_flow_step_t *def;
    int state;
    lua_State *co;
    int co_ref, ctx_ref;
    sl_flow_op_t *op;    /* the pending op, or NULL */
    int queued;          /* 0: on no list, 1: the VM's due list, 2: dlq (RUNNING) */
    sl_flow_dlq_t *dlq;  /* while queued == 2 */
    double deadline;     /* while RUNNING: when it times out (sl_flow__now_s) */
    sl_step_t *qprev, *qnext; /* on that list */
    long instr;          /* instructions used by this attempt */
    long long mem;       /* net bytes allocated while it ran (may go negative: GC) */
    const char *killed;  /* budget exceeded: every pcall re-raises */
    double held_s;       /* > 0: a service held this step's last call back this long */
    char *held_reason;   /* owned: why (< SL_SVC_REASON_MAX), or NULL; set with held_s */
    double t0;
    /* inputs: the names point into one owned block, ids, or (borrowed) at the
     * caller's (sl_step_input_t.borrow); tmpdir may be NULL */
    char *ids;
    int borrowed;    /* names and ctx_in are the caller's */
    const char *run_id, *tenant_id, *dataset_id, *file_id, *pipeline, *step, *tmpdir;
    int *tmpdir_made;    /* the input's (borrowed, may be NULL): sl_flow__scratch sets it */
    const char *ctx_in; /* the ctx as given (owned unless borrowed): decoded when the step
                           begins; the fallback result */
    char *file_in;   /* the file document as given: freed once decoded when the step begins */
    const char *file_path; /* its "path" (sl.exec's run file), or NULL; set when the step
                              begins, or given (path_borrowed: the caller's) */
    int path_borrowed;
    json_t *entry_j; /* a document being decoded as the step begins (freed if that raises) */
    sl_flow_schema_t *schema; /* file.schema, shared by the dataset's steps; NULL: none */
    int attempt;
    /* result */
    int ok;
    char *err;       /* owned (< SL_FLOW_ERR_MAX bytes), set when it ends; NULL: no memory */
    char *detail;
    char *ctx_out;
    sl_step_cb cb;
    void *arg;
    sl_step_t *prev, *next;
};

/* ---- flow_check.c and flow.c: loading a flow source and checking it ---- */

typedef struct sl_flow_check_step_s {
    sl_flow_step_t st; /* strings owned by the check until taken */
    int ref;           /* registry ref of its run function, or LUA_NOREF */
} sl_flow_check_step_t;

typedef struct sl_flow_check_err_s {
    int line;
    int seq;    /* the order found: ties on line keep it */
    char *text; /* "label:line: message", owned */
} sl_flow_check_err_t;

/** A flow source being checked. flow.c evaluates it; flow_check.c checks what it returned. */
struct sl_flow_check_s {
    sl_flowvm_t *vm;   /* whose registry holds the refs below */
    char *label;       /* owned: the chunk name and the errors' prefix */
    const char *src;   /* borrowed while checking: the source text (lines of declarations) */
    size_t len;
    int flow_line;     /* the line of `flow{` (0 before it is known) */
    char *start;       /* owned */
    int nsteps;
    sl_flow_check_step_t steps[SL_FLOW_MAX_STEPS]; /* sorted by line once checked */
    int env_ref;       /* the flow's _ENV, or LUA_NOREF */
    int nerrors, dropped;
    sl_flow_check_err_t errors[SL_FLOW_CHECK_MAX_ERRORS];
};

/** Records an error of c at line (<= 0: the line of flow{, else 1). */
void sl_flow__check_fail(sl_flow_check_t *c, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * flow.c: compiles c->src in a fresh sandbox environment, runs its top level
 * under the load budget and, if it returned a table, calls sl_flow__check_def
 * on it. Errors go to c. Synchronous; not from inside a step.
 */
void sl_flow__eval(sl_flowvm_t *vm, sl_flow_check_t *c);

/**
 * flow_check.c: checks the table at index def (what the file returned) and
 * fills c's steps and start, pinning each run function (c->steps[i].ref).
 * Called in protected mode; may raise only on memory errors.
 */
void sl_flow__check_def(lua_State *L, int def, sl_flow_check_t *c);

/** Reads a flow or lib file of at most SL_FLOW_MAX_FILE bytes: *out owned (NUL-terminated). */
int sl_flow__read_file(const char *path, char **out, size_t *len, char *err, size_t errlen);

/** 1 if s is 1..max-1 bytes of [a-z0-9_] (step and module names). */
int sl_flow__name_ok(const char *s, size_t max);

/* ---- flow.c: the step side of primitives ---- */

/** The step whose coroutine is L, or NULL (load time, main thread). */
sl_step_t *sl_flow__step(lua_State *L);

/** Same, but raises "<what> can only be called inside a step" when there is none. */
sl_step_t *sl_flow__check_step(lua_State *L, const char *what);

/** The step's scratch dir, made if it is not yet (sl_scratch_make): its path,
 *  or NULL with errno set (ENOENT too when this run has none: callers that
 *  tell the two apart look at s->tmpdir first). */
const char *sl_flow__scratch(sl_step_t *s);

/** Records op as s's pending op (s must have none). */
void sl_flow__set_op(sl_step_t *s, sl_flow_op_t *op, sl_flow_cancel_fn cancel);

/** Completion side: returns the step to resume and clears its pending op, or NULL if detached. */
sl_step_t *sl_flow__op_take(sl_flow_op_t *op);

/** The coroutine to push results on (borrowed). */
lua_State *sl_flow__co(sl_step_t *s);

/**
 * The one resume path: resumes s's coroutine with nargs values already pushed
 * on it, then handles yield, return and error (finishing the step on the
 * latter two). Never call it from inside a Lua call.
 */
void sl_flow__resume(sl_step_t *s, int nargs);

/**
 * Completion side: runs push(L) in protected mode on the main thread, with
 * `ud` as its only argument (light userdata at index 1, to be left below the
 * results), counting the bytes against the step's memory budget; moves the
 * values it returned to the coroutine and resumes it with them. A push that
 * runs out of budget fails the step (lua_error, "memory budget exceeded").
 * Completions must hand results over this way: pushing on a suspended
 * coroutine directly would be unprotected.
 */
void sl_flow__resume_with(sl_step_t *s, lua_CFunction push, void *ud);

/** Resumes with nil, err (err borrowed). */
void sl_flow__resume_err(sl_step_t *s, const char *err);

/** The dataset schema the running step's file.schema was decoded from, in the
 *  client's property order (borrowed from s; valid while the step lives), or NULL. */
json_t *sl_flow__step_schema(const sl_step_t *s);

/** The registry key (light userdata address) of the metatable of decoded JSON arrays. */
const void *sl_flow__array_mt_key(void);

/* ---- lua_json.c: JSON both ways ---- */

/** Pushes v as a Lua value (arrays get the array metatable). May raise (memory). */
void sl_flow__push_json(lua_State *L, json_t *v);

/**
 * Converts the value at idx to JSON (raw access, no metamethods; never raises).
 * Returns a new reference, or NULL with a message in err.
 */
json_t *sl_flow__to_json(lua_State *L, int idx, char *err, size_t errlen);

/**
 * 1 when the value at idx is still what sl_flow__push_json(L, j) pushed: the
 * same types, keys and values, an object's tables without a metatable and an
 * array's with the array one (raw access; never raises, allocates nothing).
 * 0 at the first difference, or past SL_FLOW_JSON_DEPTH. j borrowed.
 */
int sl_flow__json_same(lua_State *L, int idx, const json_t *j);

/* Error words: sl_strerror (core/err.h) is the one map from SL_E* codes to
 * the words flows see ("timeout", "unavailable", "bad_input", ...). */

/* ---- lua_op.c: the shared path of a primitive run under a service's policy ----
 *
 * Such a primitive's op struct has an sl_flow_svcop_t as its first member.
 * It gets the op from sl_flow__svcop_box (the box frees it if parsing raises),
 * fills it (svc may stay NULL: no service policy), takes it out of the box
 * (*box = NULL) and ends with return sl_flow__svcop_begin(...). Its completion
 * callback calls sl_flow__svcop_done, which consumes the op. */

typedef struct sl_flow_svcop_s sl_flow_svcop_t;

/** What the primitive supplies (static; borrowed by every op). */
typedef struct {
    /** Starts the operation: 0, or an SL_E* code (nothing left running). */
    int (*start)(sl_flow_svcop_t *op);
    /**
     * Cancels the running operation. Returns 0 when its completion still fires
     * (later) and ends the op, 1 when nothing is outstanding (the caller frees it).
     */
    int (*abort)(sl_flow_svcop_t *op);
    /** Frees the op and everything it owns. */
    void (*free)(sl_flow_svcop_t *op);
} sl_flow_svcop_ops_t;

struct sl_flow_svcop_s {
    sl_flow_op_t hdr; /* first */
    const sl_flow_svcop_ops_t *ops; /* borrowed */
    sl_flowvm_t *vm;  /* borrowed */
    sl_svc_t *svc;    /* borrowed; NULL: no service policy */
    sl_svc_wait_t wait;
    double est_tokens; /* the call's estimated model tokens (0: the service's default) */
    int running;      /* started, completion not yet seen */
    double t0;        /* when it started (sl_flow__now_s) */
};

/** Monotonic seconds. */
double sl_flow__now_s(void);

/**
 * Pushes a box (userdata with a __gc) holding a new zeroed op of `size` bytes
 * with ops and vm set, and returns the box (owned by L; the op is owned by the
 * box while *box points at it). Raises "<what>: out of memory".
 */
sl_flow_svcop_t **sl_flow__svcop_box(lua_State *L, size_t size, const sl_flow_svcop_ops_t *ops,
                                     sl_flowvm_t *vm, const char *what);

/**
 * Takes ownership of op (already out of its box): acquires op->svc's slot
 * (waiting at most wait_ms) when there is a service, starts the operation,
 * records the pending op on s and yields. Returns what the primitive returns:
 * lua_yield(L, 0), or 2 after pushing nil and an error word (op freed).
 */
int sl_flow__svcop_begin(lua_State *L, sl_step_t *s, sl_flow_svcop_t *op, int wait_ms);

/**
 * Completion side; consumes op: releases the slot with outcome (borrowed),
 * resumes the step (if not detached) through sl_flow__resume_with(s, push, ud)
 * and frees the op.
 */
void sl_flow__svcop_done(sl_flow_svcop_t *op, const char *outcome, lua_CFunction push, void *ud);

/**
 * Raises "<what>: unknown field '<k>'" when the table at t has a key not in
 * known (borrowed, NULL-terminated).
 */
void sl_flow__check_fields(lua_State *L, int t, const char *const *known, const char *what);

/**
 * Field k of the table at t: a new copy (owned by the caller) when a string,
 * NULL when nil; raises "<what>: <k> must be a string" otherwise, and
 * "<what>: out of memory".
 */
char *sl_flow__opt_str(lua_State *L, int t, const char *k, const char *what);

/**
 * Notes on the step whether `svc` holds its calls back (Retry-After,
 * rate-limit headers): a step that then fails makes its run wait that long,
 * with the reason (sl_step_result_t.wait_s); 0 clears the note. Returns the
 * word for Lua: "rate_limited" when held, else `otherwise` (borrowed).
 */
const char *sl_flow__note_hold(sl_step_t *s, const sl_svc_t *svc, const char *otherwise);

/**
 * Charges `steps` of work done in C to the running step's instruction budget
 * (or the flow file being loaded); past it the step is killed (budget_exceeded,
 * pcall re-raises) and this raises "instruction budget exceeded (<what>)".
 */
void sl_flow__charge(lua_State *L, double steps, const char *what);

/** A push function for sl_flow__resume_with: pushes true. */
int sl_flow__push_true(lua_State *L);

/** How a service's calls are authenticated, from its config section (NULL: none). */
typedef enum { SL_FLOW_AUTH_NONE, SL_FLOW_AUTH_BEARER, SL_FLOW_AUTH_SIGV4 } sl_flow_auth_t;
sl_flow_auth_t sl_flow__svc_auth(const sl_config_service_t *c);

/* ---- one entry point per file (one file per feature, as lua-nginx-module):
 *      each adds its functions to the table on top of L, with the VM as their
 *      upvalue (light userdata) where they need it ---- */
void sl_lua_inject_json(lua_State *L, sl_flowvm_t *vm);    /* sl.json */
void sl_lua_inject_crypto(lua_State *L, sl_flowvm_t *vm);  /* sl.sha256, sl.hmac_sha256 */
void sl_lua_inject_log(lua_State *L, sl_flowvm_t *vm);     /* sl.log */
void sl_lua_inject_sleep(lua_State *L, sl_flowvm_t *vm);   /* sl.sleep */
void sl_lua_inject_service(lua_State *L, sl_flowvm_t *vm); /* sl.service */
void sl_lua_inject_http(lua_State *L, sl_flowvm_t *vm);    /* sl.http */
void sl_lua_inject_exec(lua_State *L, sl_flowvm_t *vm);    /* sl.exec */
void sl_lua_inject_image(lua_State *L, sl_flowvm_t *vm);   /* sl.image_info */
void sl_lua_inject_run(lua_State *L, sl_flowvm_t *vm);     /* sl.artifact, sl.record, ... */
void sl_lua_inject_schema(lua_State *L, sl_flowvm_t *vm);  /* sl.schema.openai */
/* on the VM's own libraries (package.loaded), before any sandbox copies them: */
void sl_lua_inject_costs(lua_State *L, sl_flowvm_t *vm);   /* the rest of string/table/utf8 */
/* string.find/match/gmatch/gsub/rep with a step budget; on the string library table
 * itself (the string metatable's __index and what sandboxes copy) */
void sl_lua_inject_string(lua_State *L, sl_flowvm_t *vm);

#endif
