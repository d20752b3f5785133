/*
 * run_event.h — Sluice's status events: what a run transition or a file
 * appearing/disappearing looks like on the wire, and where it goes.
 *
 * One event is one compact JSON message on its dataset's pubsub channel,
 * "sluice:ds:<dataset_id>" (core/pubsub carries it as bytes). The run actor
 * (actors/run.c) and the file routes (api/upload.c, api/files.c) publish
 * them; the SSE route (api/events.c) forwards them, and replays missed ones
 * from Postgres through the same encoder, so live and replayed events are the
 * same bytes. api/cache.c reads the file_id out of them. See
 * docs/internals/sse.md.
 */
#ifndef SL_RUN_EVENT_H
#define SL_RUN_EVENT_H

#include <stddef.h>

#include "core/pubsub.h"

/** Every dataset channel starts with this; the rest is the dataset id. */
#define SL_RUN_EVENT_CHANNEL_PREFIX "sluice:ds:"
/** The pattern that covers every dataset channel (for sl_pubsub_new). */
#define SL_RUN_EVENT_PATTERN SL_RUN_EVENT_CHANNEL_PREFIX "*"

/**
 * One status event: a run transition (event "run", a row of run_events) or a
 * file appearing/disappearing (event "file"). Strings are borrowed; NULL is
 * JSON null.
 */
typedef struct sl_run_event_s {
    const char *event; /* "run" | "file" */
    long long seq;     /* the timeline sequence: the SSE id */
    const char *dataset_id;
    const char *file_id;
    const char *run_id;
    const char *pipeline;
    const char *step;
    const char *kind;  /* run_events.kind ("step_started", ...), "uploaded", "deleted" */
    const char *state; /* the run's state after the event; for files "queued"/"done"/"deleted" */
    const char *at;    /* RFC 3339 */
} sl_run_event_t;

/**
 * The message text of ev (borrowed) (compact JSON {"event","seq","dataset_id",
 * "file_id","run_id","pipeline","step","kind","state","at"}), returned owned
 * (free()), or NULL. Live messages and Postgres replays use this one encoder,
 * so both produce the same bytes.
 */
char *sl_run_event_json(const sl_run_event_t *ev);

/** SL_RUN_EVENT_CHANNEL_PREFIX "<dataset_id>" into buf (borrowed). Its length, or SL_ETOOBIG. */
int sl_run_event_channel(const char *dataset_id, char *buf, size_t buflen);

/**
 * Encodes ev (borrowed) and publishes it on its dataset's channel through ps
 * (borrowed). ps NULL is a no-op. 0, SL_EINVAL (no dataset), SL_ENOMEM, or
 * what sl_pubsub_publish returns.
 */
int sl_run_event_publish(sl_pubsub_t *ps, const sl_run_event_t *ev);

/**
 * For publishers reading database rows: v[] holds, as text (NULL for SQL
 * NULL; borrowed), seq, dataset_id, file_id, run_id, pipeline, step, kind,
 * state, at — the order of SL_RUN_EVENT_COLUMNS. `event` (borrowed) is "run"
 * or "file". As sl_run_event_publish; SL_EINVAL when seq is not a number.
 */
#define SL_RUN_EVENT_NCOLS 9
#define SL_RUN_EVENT_COLUMNS                                                                       \
    "seq, dataset_id, file_id, run_id, pipeline, step, kind, state, sluice_ts(at)"
int sl_run_event_publish_values(sl_pubsub_t *ps, const char *event,
                                const char *const v[SL_RUN_EVENT_NCOLS]);

/**
 * v[] as above into *ev (its strings borrowed from v, `event` too). 0, or
 * SL_EINVAL when seq is not a number.
 */
int sl_run_event_from_values(const char *event, const char *const v[SL_RUN_EVENT_NCOLS],
                             sl_run_event_t *ev);

struct pg_result; /* libpq's PGresult */

/**
 * Row `i` of res (borrowed; its columns SL_RUN_EVENT_COLUMNS) into v[]: text
 * borrowed from res, NULL for SQL NULL.
 */
void sl_run_event_row_values(const struct pg_result *res, int i,
                             const char *v[SL_RUN_EVENT_NCOLS]);

/**
 * Publishes every row of res (borrowed; columns SL_RUN_EVENT_COLUMNS) as
 * `event` events through ps (borrowed), in row order: seq order when the
 * statement returned them so. Consecutive rows of one dataset go out together
 * (sl_pubsub_publish_many, up to 256 a message): a statement's events cost
 * one Redis PUBLISH per dataset, not one each. ps NULL is a no-op.
 */
void sl_run_event_publish_rows(sl_pubsub_t *ps, const char *event, const struct pg_result *res);

#endif
