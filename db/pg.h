/*
 * pg.h — asynchronous Postgres on the event loop (libpq non-blocking + pipeline mode).
 *
 * A pool of connections, each driven by libevent (PQconnectStart/PQconnectPoll
 * to connect, PQsendQueryParams in pipeline mode, PQconsumeInput/PQgetResult on
 * readiness, PQflush on writability). A unit of work is a batch: one or more
 * parameterised statements sent in one pipeline with a single Sync, so the
 * server runs them as one implicit transaction — all of them commit, or none.
 * Batches queue FIFO and go to the next idle connection.
 *
 * Down and back: a connection that breaks fails its batch with SL_EUNAVAIL and
 * reconnects with exponential backoff (100 ms .. 5 s). While no connection is
 * up, new batches fail at once with SL_EUNAVAIL (callers answer 503 with
 * Retry-After), so nothing piles up in memory. sl_pg_ready() says whether the
 * pool has a live connection (for /readyz).
 *
 * Every statement is parameterised: values travel as text parameters, never
 * spliced into SQL.
 */
#ifndef SL_PG_H
#define SL_PG_H

#include <stddef.h>
#include <event2/event.h>
#include <libpq-fe.h>

typedef struct sl_pg_s sl_pg_t;
typedef struct sl_pg_batch_s sl_pg_batch_t;

/**
 * Creates the pool and starts connecting (returns before connections are up).
 * `base` and `conninfo` are borrowed/copied. `statement_timeout_ms` is set on
 * every connection (server-side cancel of a runaway statement).
 */
int sl_pg_new(struct event_base *base, const char *conninfo, int pool_size,
              int statement_timeout_ms, sl_pg_t **out);

/** Closes every connection; pending batches get SL_ECANCELED (on a later loop turn); frees. */
void sl_pg_free(sl_pg_t *pg);

/** 1 if at least one connection is up. */
int sl_pg_ready(const sl_pg_t *pg);

/** Connections: total, up, busy; batches waiting. For /metrics. */
void sl_pg_stats(const sl_pg_t *pg, int *total, int *up, int *busy, int *queued);

/** Starts a batch. Returns owned (until sl_pg_batch_exec or sl_pg_batch_free), or NULL. */
sl_pg_batch_t *sl_pg_batch_new(sl_pg_t *pg);

/**
 * Adds a statement. `sql` and each param are copied; a NULL param is SQL NULL.
 * Returns the statement's index in the batch, or SL_ENOMEM.
 */
int sl_pg_batch_add(sl_pg_batch_t *b, const char *sql, int nparams, const char *const *params);

/**
 * Result callback: err = 0 and res[0..n-1] (one PGresult per statement, in order,
 * borrowed until the callback returns), or err < 0 (SL_EUNAVAIL when Postgres is
 * unreachable, SL_EDB when a statement failed — then nothing of the batch was
 * committed — SL_ECANCELED when the pool is freed) with res NULL and `errmsg`
 * (borrowed) describing the failure. `sqlstate` is the failing statement's
 * SQLSTATE ("23505" unique violation) or "".
 */
typedef struct sl_pg_result_s {
    int err;
    int n;
    PGresult **res;
    const char *errmsg;
    const char *sqlstate;
} sl_pg_result_t;
typedef void (*sl_pg_cb)(const sl_pg_result_t *r, void *arg);

/**
 * Sends the batch (takes b). The callback fires exactly once, on a later loop
 * turn, even when Postgres is down (then err = SL_EUNAVAIL). Returns 0, or an
 * error without calling back (b is freed either way).
 */
int sl_pg_batch_exec(sl_pg_batch_t *b, sl_pg_cb cb, void *arg);

/** Frees an unsent batch. */
void sl_pg_batch_free(sl_pg_batch_t *b);

/** One statement: sl_pg_batch_new + add + exec. */
int sl_pg_query(sl_pg_t *pg, const char *sql, int nparams, const char *const *params,
                sl_pg_cb cb, void *arg);

/** One schema migration, embedded in the binary at build time from db/migrations/. */
typedef struct sl_pg_migration_s {
    int version;        /* NNN of NNN_name.sql */
    const char *name;   /* "001_init" */
    const char *sql;    /* the whole file */
} sl_pg_migration_t;

/** The migrations built into this binary, in version order (generated: db/migrations.c). */
extern const sl_pg_migration_t sl_pg_migrations[];
extern const int sl_pg_nmigrations;

/**
 * Applies migrations not yet applied, in order, each in its own transaction,
 * blocking (only at start-up or by `sluice migrate`, before the loop runs).
 * Takes a session advisory lock so instances starting together migrate once.
 * Records applied versions in schema_migrations. Returns 0, or an error with a
 * message in errbuf.
 */
int sl_pg_migrate(const char *conninfo, const sl_pg_migration_t *migs, int n, char *errbuf,
                  size_t errlen);

#endif
