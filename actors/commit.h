/*
 * commit.h — group commit of run transitions: the transitions of many run
 * actors, sent together in one round trip and committed in one transaction
 * (sluice_run_transitions, db/functions/run_transition.sql).
 *
 * A committer belongs to one database pool and one lease owner (the engine's
 * instance id). A transition submitted while fewer than `max_inflight` groups
 * are in flight goes out at once, alone or with the others waiting; otherwise
 * it waits, and every transition that waits goes out in the next group (at
 * most SL_COMMIT_GROUP_MAX of them, and about SL_COMMIT_GROUP_BYTES of JSON),
 * as soon as a group in flight comes back. So a lone transition pays one round
 * trip, and under load the groups grow by themselves: as many transitions
 * share a durable commit as arrived during the previous one.
 *
 * A group never waits for another's datasets: the events of a dataset take
 * their places under its row's lock, held to the commit (run_transition.sql),
 * so a second group of the same dataset in flight only waited for the first
 * one's commit, holding its runs' rows meanwhile. A transition whose dataset
 * is in a group in flight waits for that group and leaves in the next one
 * (bigger); the others go out at once, so groups of different datasets still
 * commit side by side (bench/flow_bench.py, one dataset, alternating: one
 * group in flight against two, 4,828 vs 4,492 transitions/s over four runs
 * each; this rule against none, 4,852 vs 4,773 over three, within noise;
 * docs/internals/scheduler.md, "stop 30").
 *
 * Tenants take turns: when more transitions wait than a group holds, a group
 * first takes the oldest waiting transition of each tenant (`tenant`), then
 * fills up oldest first. A tenant with one run is not queued behind another's
 * backlog of thousands (bench/fairness_bench.py: B's transitions waited
 * ~0.5 s each behind A's 10,000 runs' first steps).
 *
 * Each transition learns its own outcome: committed (its guard held: the
 * events were written), or lost (its guard found no row: the lease was lost or
 * the file deleted), which touches no other transition of the group. A failure
 * of the whole group (connection lost, statement timeout) is every member's,
 * as for one commit; a group that fails in a statement (SL_EDB, e.g. one
 * member's ctx is not JSON) is split, and each of its members is sent again
 * alone, so one bad transition fails only itself. Deadlocks and serialization
 * failures are re-run by db/pg.c. The events a group wrote are published
 * (actors/run_event.h) in seq order once it committed, before the callbacks.
 * See docs/internals/scheduler.md, "Commits".
 */
#ifndef SL_COMMIT_H
#define SL_COMMIT_H

#include <event2/event.h>

#include "core/pubsub.h"
#include "db/pg.h"

/* 64, not 256: a group holds its datasets' place locks to its commit, so a
 * smaller group lets an upload or another group's events in sooner; with
 * durable commits flow_bench's throughput was the same within noise (1,210
 * and 1,388 vs 1,446 transitions/s) and sse_bench's latency halved (median
 * 24-30 vs 58-63 ms, p99 110-124 vs 212-249 ms; docs/internals/scheduler.md). */
#define SL_COMMIT_GROUP_MAX 64
#define SL_COMMIT_GROUP_BYTES (4u << 20)

typedef struct sl_commit_s sl_commit_t;

/**
 * The committer of `pg` for `owner` (both borrowed; owner is copied), made on
 * first use and shared: every call takes a reference, dropped with
 * sl_commit_release. `base` (borrowed) must be pg's and outlive it. At most
 * max(1, pool size / 2) groups are in flight, leaving the other connections
 * to claims, heartbeats and the steps' own queries. NULL when out of memory.
 */
sl_commit_t *sl_commit_acquire(struct event_base *base, sl_pg_t *pg, const char *owner);

/** Drops a reference (takes it; NULL is a no-op). The last one frees the committer. */
void sl_commit_release(sl_commit_t *c);

/**
 * One transition: the parameters of sluice_run_transition (run_transition.sql).
 * Every string is borrowed for the call; NULL is JSON null (step and
 * flow_version NULL keep the row's).
 */
typedef struct sl_commit_tr_s {
    const char *run_id;
    const char *tenant_id;  /* whose turn it is (36 characters), or NULL: none */
    const char *dataset_id; /* whose places its events take (36 characters), or NULL */
    const char *step;
    int attempt;
    const char *ctx_json; /* the ctx, JSON text */
    const char *state;
    const char *chain_start;
    int chain_transient;
    int wait_count;
    const char *word; /* the error, or the note of a run that succeeded */
    double wait_s;
    const char *flow_version;
    const char *events_json; /* [{step, kind, detail}], JSON text */
} sl_commit_tr_t;

/**
 * A transition's outcome: err 0 and held 1 (committed; its events were
 * published), err 0 and held 0 (the guard found no row: nothing written), or
 * err < 0 with errmsg (borrowed until the callback returns): SL_EUNAVAIL (the
 * database is unreachable, or the connection broke — then it may have
 * committed), SL_EDB, SL_ECANCELED (the pool was freed), SL_ENOMEM.
 */
typedef void (*sl_commit_cb)(int err, int held, const char *errmsg, void *arg);

/**
 * Submits t (borrowed for the call; its fields are serialized at once). `ps`
 * (borrowed; NULL: no publishing) must outlive the callback. The callback
 * fires exactly once, on a later loop turn. Returns 0, or SL_EINVAL /
 * SL_ENOMEM without calling back.
 */
int sl_commit_submit(sl_commit_t *c, const sl_commit_tr_t *t, sl_pubsub_t *ps, sl_commit_cb cb,
                     void *arg);

#endif
