/*
 * supervise.h — the first process of an instance when the engine runs apart
 * (engine.process: separate; docs/internals/engine.md).
 *
 * The supervisor is small on purpose: single-threaded, no event loop, no
 * connections. It forks one engine process (scheduler, run actors, flow VM),
 * waits until that one has loaded its flows (a broken flow stops the start,
 * as it always did), then forks the HTTP processes. Then it only waits for
 * signals: an engine that dies is restarted with a backoff (100 ms doubling to
 * 5 s, reset after 30 s of life); SIGHUP goes to the engine (flow reload);
 * SIGTERM/SIGINT go to every child (each drains: docs/deploy.md), and it
 * exits once they all have; a second SIGTERM/SIGINT SIGKILLs them and it
 * exits 1 at once (the engine's leases then lapse). HTTP
 * processes are not restarted (a supervisor of those is the operator's, as
 * before): when the last one is gone the engine is stopped too. Every child
 * gets PR_SET_PDEATHSIG(SIGTERM), so none outlives a supervisor killed by -9.
 */
#ifndef SL_SUPERVISE_H
#define SL_SUPERVISE_H

#include "core/engine_link.h"

/* What a process of an instance does. */
enum {
    SL_ROLE_INLINE = 0, /* HTTP and engine in one process (engine.process: inline) */
    SL_ROLE_HTTP = 1,   /* the API, SSE, /metrics: never runs Lua */
    SL_ROLE_ENGINE = 2, /* scheduler, run actors, flow VM: no listener */
};

typedef struct sl_sup_opts_s {
    int nhttp;        /* HTTP processes (config workers), >= 1 */
    sl_elink_t *link; /* borrowed: made before this call, inherited by every child */
    int ready_timeout_ms; /* how long the first engine may take to load its flows; default 30000 */
} sl_sup_opts_t;

/**
 * Forks the processes and supervises them. Returns 1 in a child, with its
 * role in *role: the caller runs that role and exits with its result (the
 * child's signal mask and dispositions are back to the defaults). Returns 0
 * in the supervisor once every child has exited, with the exit code for the
 * instance in *status: 0 after a clean stop, 1 if the first engine failed to
 * start or a child exited with an error.
 */
int sl_supervise(const sl_sup_opts_t *o, int *role, int *status);

#endif
