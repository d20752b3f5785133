/*
 * engine_link.h — what the HTTP processes and the engine process of one
 * instance share (docs/internals/engine.md).
 *
 * The supervisor creates one link before it forks anything; every child
 * inherits it, and a restarted engine inherits the same one. It is two things:
 *
 *  - a datagram socketpair: HTTP processes send short messages ("kick",
 *    "cancel <file id>", "metrics") on one end, the engine receives them on
 *    the other. Sending never blocks: a full queue drops the message, and the
 *    engine's poll and lease paths cover what a lost message would have done.
 *  - one datagram socketpair per HTTP process the other way: the engine's
 *    status events that could not go through Redis (it is down), so SSE
 *    clients of this instance still see its runs live.
 *  - a shared memory page the engine writes and HTTP processes read: the
 *    engine's pid (written by the supervisor), its heartbeat, its pipelines'
 *    steps (JSON) and a snapshot of its Prometheus metrics, under a seqlock.
 *    A reader never waits for the engine: a stuck engine leaves a stale page.
 *
 * Core only: it knows nothing of actors or routes.
 */
#ifndef SL_ENGINE_LINK_H
#define SL_ENGINE_LINK_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_elink_s sl_elink_t;

/** Longest message (a verb, a space and an argument). */
#define SL_ELINK_MSG_MAX 128

/** Longest forwarded event (channel, newline, message). */
#define SL_ELINK_EVENT_MAX 65536

/**
 * Creates the link for an engine and `nhttp` HTTP processes: the socketpairs
 * and the shared page (anonymous, shared with every process forked
 * afterwards). Returns owned in *out. 0, SL_EINVAL, SL_EIO or SL_ENOMEM.
 */
int sl_elink_new(int nhttp, sl_elink_t **out);

/** Unmaps and closes what this process holds. NULL is a no-op. */
void sl_elink_free(sl_elink_t *l);

/* ---- the supervisor ---- */

/**
 * Records the engine's pid. 0 (no engine running now) clears "ready"; a new
 * pid keeps what its engine may already have published (the parent records
 * the pid after the fork, maybe after the child's first publish).
 */
void sl_elink_set_engine_pid(sl_elink_t *l, int pid);

/** 1 once the engine running now published its first state (its flows loaded). */
int sl_elink_engine_ready(const sl_elink_t *l);

/* ---- the HTTP side ---- */

/**
 * Sends one message (borrowed; at most SL_ELINK_MSG_MAX - 1 bytes) to the
 * engine without blocking. 0, SL_EAGAIN (queue full: dropped) or SL_EIO.
 */
int sl_elink_send(sl_elink_t *l, const char *msg);

/**
 * The engine's state: its pid (0 when none runs), the seconds since it last
 * published (a large number when it never did) and whether it did since it
 * started. Lock-free.
 */
void sl_elink_engine_state(const sl_elink_t *l, int *pid, double *age_s, int *ready);

/** Count of snapshots published so far (to wait for a fresh one). */
uint64_t sl_elink_generation(const sl_elink_t *l);

/**
 * Copies the last snapshot: the steps JSON into *steps and the metrics text
 * into *metrics (each returned owned, NUL-terminated; either pointer may be
 * NULL to skip it). 0, SL_ENOTFOUND (nothing published, or the page stayed
 * busy) or SL_ENOMEM.
 */
int sl_elink_read(const sl_elink_t *l, char **steps, char **metrics, size_t *metrics_len);

/**
 * Merges the engine's Prometheus text into this process's: families only the
 * engine has are appended as they are; the engine's samples of a family both
 * have go inside this process's family, and those of a series both have
 * (same name and labels: the Postgres pool gauges, say) get the label
 * role="engine", so no family is declared twice and no series repeats, while
 * a series only the engine has keeps its labels. own and engine are
 * borrowed; returns owned (free()), length in *len, or NULL on no memory.
 */
char *sl_elink_merge_metrics(const char *own, size_t own_len, const char *engine,
                             size_t engine_len, size_t *len);

/* ---- the engine side ---- */

/** Called for each message received (borrowed, NUL-terminated). */
typedef void (*sl_elink_msg_cb)(const char *msg, void *arg);

/**
 * Receives messages on base (borrowed) and calls cb for each; `arg` is
 * borrowed until sl_elink_free. 0, SL_EINVAL (called twice) or SL_ENOMEM.
 */
int sl_elink_listen(sl_elink_t *l, struct event_base *base, sl_elink_msg_cb cb, void *arg);

/** Stops receiving messages and events (before the event base is freed). */
void sl_elink_unlisten(sl_elink_t *l);

/**
 * Publishes a snapshot: steps (JSON, borrowed) and metrics text (borrowed),
 * and the heartbeat. Text larger than the page is dropped whole (logged
 * once); the heartbeat is always written. 0 or SL_ETOOBIG.
 */
int sl_elink_publish(sl_elink_t *l, const char *steps, const char *metrics, size_t metrics_len);

/**
 * In a forked child: closes every descriptor the role does not use. engine
 * 1: the engine; 0: HTTP process number http_index (0-based).
 */
void sl_elink_become(sl_elink_t *l, int engine, int http_index);

/* ---- events the engine could not publish through Redis ---- */

/** Engine: sends (channel, msg) to every HTTP process; never blocks (drops when full). */
void sl_elink_forward_event(sl_elink_t *l, const char *channel, const char *msg, size_t len);

/** HTTP: called for each forwarded event (borrowed: channel NUL-terminated, msg len bytes). */
typedef void (*sl_elink_event_cb)(const char *channel, const char *msg, size_t len, void *arg);

/** HTTP: receives forwarded events on base (borrowed). 0, SL_EINVAL or SL_ENOMEM. */
int sl_elink_listen_events(sl_elink_t *l, struct event_base *base, sl_elink_event_cb cb,
                           void *arg);

#endif
