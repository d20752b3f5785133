/*
 * pipestore.h — the pipelines put through the API, as Postgres holds them,
 * in every process (issue 14; docs/flows.md "Pipelines through the API").
 *
 * Postgres is the truth (migration 013: pipelines, pipeline_versions; the
 * sources in flow_versions). Each process holds a store that reads the
 * current state (sluice_pipelines_state(): one row per name, its current
 * revision or a tombstone) at start, on every message on the Redis channel
 * SL_PIPESTORE_CHANNEL (a PUT or DELETE on any instance publishes one), and
 * every reread_ms in case a message was missed (Redis down, a reconnect).
 * So every instance sees a change within a second while Redis is up.
 *
 * A store given a scheduler (the engine; inline, the one process) also loads
 * each new version's flow from flow_versions into the flow VM and hands it to
 * the scheduler (sl_sched_set_flow), and forgets deleted ones
 * (sl_sched_drop_flow): new runs take the new version, runs in flight keep
 * theirs (their actors hold the flow; a run taken over after a crash loads
 * its pinned runs.flow_version). A version that does not load keeps the
 * previous one serving (logged). Then on_change(arg) runs, where the API
 * side rebuilds app->pipelines (api/pipelines.c). Single-threaded: the loop
 * thread only.
 */
#ifndef SL_PIPESTORE_H
#define SL_PIPESTORE_H

#include <event2/event.h>
#include <jansson.h>

#include "actors/flow.h"
#include "actors/scheduler.h"
#include "core/config.h"
#include "core/redis.h"
#include "db/pg.h"

/** The Redis channel of change notices (the message is the pipeline's name). */
#define SL_PIPESTORE_CHANNEL "sluice:pipelines"
/** Pipelines with a row (live or deleted) that a process keeps at most. */
#define SL_PIPESTORE_MAX 64
/** Default period of the re-read that catches a missed notice. */
#define SL_PIPESTORE_REREAD_MS 2000

typedef struct sl_pipestore_s sl_pipestore_t;

/** One pipeline with a row in Postgres, as last read. Owned by the store. */
typedef struct sl_pipestore_entry_s {
    char name[64];
    int revision;     /* current revision (0: a config seed deleted without any PUT) */
    int deleted;      /* DELETEd: no new runs (a tombstone; it also hides a config seed) */
    char version[65]; /* sha256 hex of the current source; "" when there is none */
    char created_at[40];
    char *match[SL_CONFIG_MAX_MATCH + 1]; /* owned, NULL-terminated */
    json_t *describe; /* owned: sl_flow_describe of the version (steps, version, start, graph) */
} sl_pipestore_entry_t;

/** After each read that changed something, and after the first read (arg borrowed). */
typedef void (*sl_pipestore_change_cb)(sl_pipestore_t *ps, void *arg);

typedef struct sl_pipestore_opts_s {
    struct event_base *base; /* borrowed */
    sl_pg_t *pg;             /* borrowed */
    sl_redis_t *publisher;   /* borrowed, may be NULL: where notices are PUBLISHed */
    const char *redis_url;   /* copied, may be NULL: the subscriber connection's */
    sl_sched_t *sched;       /* borrowed, may be NULL (an HTTP process); see
                                sl_pipestore_detach_sched */
    sl_flowvm_t *vm;         /* borrowed; required with sched */
    int reread_ms;           /* 0: SL_PIPESTORE_REREAD_MS */
    sl_pipestore_change_cb on_change;
    void *arg;
} sl_pipestore_opts_t;

/** Creates the store (not reading yet). Returns owned in *out; SL_EINVAL / SL_ENOMEM. */
int sl_pipestore_new(const sl_pipestore_opts_t *o, sl_pipestore_t **out);

/**
 * Starts reading (call once the schema is ready): the first read, then the
 * subscription and the periodic re-read. ready(arg) is called once, on a later
 * loop turn, after the first read was applied (a failed read is retried every
 * reread_ms; ready waits for it). The engine starts its scheduler there, so
 * no run is claimed before the API pipelines are known. ready may be NULL.
 */
void sl_pipestore_start(sl_pipestore_t *ps, void (*ready)(void *arg), void *arg);

/** A reload finished: err 0 (applied) or the read's error. */
typedef void (*sl_pipestore_done_cb)(int err, void *arg);

/**
 * Reads again now. done(err, arg) (may be NULL) fires once, on a later turn,
 * after a read that started after this call was applied: a caller that has
 * just committed a change sees it applied here when done fires. 0, or SL_ENOMEM
 * (no callback).
 */
int sl_pipestore_reload(sl_pipestore_t *ps, sl_pipestore_done_cb done, void *arg);

/** Tells every other process that `name` (borrowed) changed (PUBLISH; fire and forget). */
void sl_pipestore_notify(sl_pipestore_t *ps, const char *name);

/** Entries (i < count), by name order; borrowed until the next change. */
int sl_pipestore_count(const sl_pipestore_t *ps);
const sl_pipestore_entry_t *sl_pipestore_at(const sl_pipestore_t *ps, int i);
/** The entry called name (borrowed), or NULL. */
const sl_pipestore_entry_t *sl_pipestore_find(const sl_pipestore_t *ps, const char *name);

/** The scheduler is going away (shutdown): the store stops touching it. */
void sl_pipestore_detach_sched(sl_pipestore_t *ps);

/**
 * Frees the store (takes ps; NULL is a no-op). Pending reload callbacks get
 * SL_ECLOSED inside this call; queries in flight end harmlessly later.
 */
void sl_pipestore_free(sl_pipestore_t *ps);

#endif
