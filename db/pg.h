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
 * A batch that fails with a serialization failure or a deadlock (SQLSTATE
 * 40001, 40P01) was rolled back whole, so it runs again at once on the same
 * connection, up to 3 times, before its callback sees the error: the
 * callback fires once, with the last run's result. Its statements must be
 * safe to run again after a rollback (they are, unless the batch has a
 * COMMIT inside, which also ends its atomicity; sequences are not rolled
 * back, so a re-run takes new values).
 *
 * Down and back: a connection that breaks fails its batch with SL_EUNAVAIL and
 * reconnects with exponential backoff (100 ms .. 5 s, with jitter). While no
 * connection is up, new batches fail at once with SL_EUNAVAIL (callers answer
 * 503 with Retry-After), so nothing piles up in memory. The one exception is
 * start-up: until every connection has made its first attempt, batches queue
 * (and fail with SL_EUNAVAIL if all first attempts fail). At most 10000
 * batches wait for a connection; beyond that a batch fails with SL_EAGAIN.
 * sl_pg_ready() says whether the pool has a live connection (for /readyz).
 * See docs/internals/pg.md.
 *
 * Every statement is parameterised: values travel as text parameters, never
 * spliced into SQL.
 */
#ifndef SL_PG_H
#define SL_PG_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stddef.h>

#include "core/config.h" /* sl_config_tenant_t (sl_pg_bootstrap) */

typedef struct sl_pg_s sl_pg_t;
typedef struct sl_pg_batch_s sl_pg_batch_t;

/**
 * Creates the pool and starts connecting (returns before connections are up;
 * the first attempts start on the next loop turn). `base` is borrowed and must
 * outlive the pool; `conninfo` (key=value or URI) is copied. `pool_size` is
 * 1..256. `statement_timeout_ms` (> 0) is set on every connection through the
 * startup "options" (appended to any options the conninfo has): server-side
 * cancel of a runaway statement; 0 leaves the server default. Returns 0 and
 * *out (owned, release with sl_pg_free), SL_EINVAL (bad argument or conninfo)
 * or SL_ENOMEM. Host names are resolved synchronously by libpq: prefer an IP
 * address or a unix socket directory.
 */
int sl_pg_new(struct event_base *base, const char *conninfo, int pool_size,
              int statement_timeout_ms, sl_pg_t **out);

/**
 * Closes every connection and frees the pool (takes pg; NULL is a no-op).
 * Batches in flight or queued get SL_ECANCELED on a later loop turn: their
 * completions are posted to `base` and need nothing of the pool, so the loop
 * must run once more before the base is freed, or those callbacks never fire
 * and their batches leak. Completions already posted before the call still
 * deliver their real results. Safe to call from inside a batch callback. A
 * batch cancelled in flight may or may not have committed.
 */
void sl_pg_free(sl_pg_t *pg);

/** 1 if at least one connection is up (borrows pg). */
int sl_pg_ready(const sl_pg_t *pg);

/** Connections: total, up, busy; batches waiting. For /metrics. Any out pointer may be NULL. */
void sl_pg_stats(const sl_pg_t *pg, int *total, int *up, int *busy, int *queued);

/**
 * Starts a batch on `pg` (borrowed; the batch must be executed or freed
 * before sl_pg_free). Returns owned (until sl_pg_batch_exec or
 * sl_pg_batch_free), or NULL.
 */
sl_pg_batch_t *sl_pg_batch_new(sl_pg_t *pg);

/**
 * Adds a statement. `sql` and each param are copied (borrowed for the call); a
 * NULL param is SQL NULL. One SQL statement per call (several in one string
 * fail with SL_EDB, SQLSTATE 42601). Statements that cannot run inside a
 * transaction block (VACUUM, CREATE DATABASE) do not belong in a batch of more
 * than one, and a COMMIT inside a batch ends its atomicity early.
 * Returns the statement's index in the batch, SL_EINVAL (NULL sql, nparams
 * outside 0..65535, params NULL with nparams > 0), SL_ETOOBIG (more than 1024
 * statements) or SL_ENOMEM.
 */
int sl_pg_batch_add(sl_pg_batch_t *b, const char *sql, int nparams, const char *const *params);

/**
 * Result callback: err = 0 and res[0..n-1] (one PGresult per statement, in order,
 * borrowed until the callback returns), or err < 0 (SL_EUNAVAIL when Postgres is
 * unreachable, SL_EDB when a statement failed — then nothing of the batch was
 * committed — SL_ECANCELED when the pool is freed, SL_EAGAIN when the queue is
 * full, SL_EPROTO if the server answered without a result for a statement)
 * with n 0, res NULL and `errmsg` (borrowed) describing the failure; errmsg is
 * "" on success. `sqlstate` is the failing statement's SQLSTATE ("23505"
 * unique violation, "57014" statement timeout) or "". SL_EUNAVAIL for a batch
 * whose connection broke after it was sent means "unknown": the server may
 * have committed it. The callback may start new batches or free the pool.
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
 * Sends the batch (takes b; `arg` is passed through untouched). The callback
 * fires exactly once, on a later loop turn, even when Postgres is down (then
 * err = SL_EUNAVAIL). Returns 0, or an error without calling back (SL_EINVAL
 * for a NULL cb or an empty batch, SL_ENOMEM); b is freed either way.
 */
int sl_pg_batch_exec(sl_pg_batch_t *b, sl_pg_cb cb, void *arg);

/** Frees an unsent batch. */
void sl_pg_batch_free(sl_pg_batch_t *b);

/** One statement: sl_pg_batch_new + add + exec; same ownership and errors. */
int sl_pg_query(sl_pg_t *pg, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                void *arg);

/**
 * Like sl_pg_batch_add, but a prepared statement: each connection sends a
 * Parse of `sql` under `name` the first time it runs it (in the same
 * pipeline), then only Bind/Execute, so the server plans it once per
 * session. `name` is borrowed for the pool's life (a string literal) and must
 * always come with the same sql. A connection keeps at most 32 names; more
 * run unnamed. Reconnecting prepares again. Same returns as sl_pg_batch_add
 * (SL_EINVAL also for an empty name).
 */
int sl_pg_batch_add_prepared(sl_pg_batch_t *b, const char *name, const char *sql, int nparams,
                             const char *const *params);

/** One prepared statement: sl_pg_query with sl_pg_batch_add_prepared's name and sql. */
int sl_pg_query_prepared(sl_pg_t *pg, const char *name, const char *sql, int nparams,
                         const char *const *params, sl_pg_cb cb, void *arg);

/**
 * One prepared statement (as sl_pg_query_prepared) that may share its
 * transaction, and so its durable commit, with other shared statements: when
 * it has to wait for a connection, the connection that takes it also takes
 * the other shared statements waiting (at most 64, in queue order) and sends
 * them all in one pipeline with one Sync. Each still gets its own callback
 * with its own result (n = 1). If one of them fails (SL_EDB), nothing of that
 * transaction committed: each goes again by itself, so only the bad one
 * fails. A statement sent when a connection is idle goes alone, at once. So
 * use it for statements that are correct in any order with any other shared
 * statement and need no atomicity with anything but themselves: a step's own
 * rows (actors/flow_effects.c). Same ownership and returns as
 * sl_pg_query_prepared.
 */
int sl_pg_query_shared(sl_pg_t *pg, const char *name, const char *sql, int nparams,
                       const char *const *params, sl_pg_cb cb, void *arg);

/** One schema migration, embedded in the binary at build time from db/migrations/. */
typedef struct sl_pg_migration_s {
    int version;      /* NNN of NNN_name.sql */
    const char *name; /* "001_init" */
    const char *sql;  /* the whole file */
} sl_pg_migration_t;

/** The migrations built into this binary, in version order (generated: db/migrations.c). */
extern const sl_pg_migration_t sl_pg_migrations[];
extern const int sl_pg_nmigrations;

/**
 * One file of db/functions/: SQL functions (`CREATE OR REPLACE FUNCTION`,
 * idempotent), embedded at build time like the migrations.
 */
typedef struct sl_pg_sqlfile_s {
    const char *name; /* "claim" for db/functions/claim.sql */
    const char *sql;  /* the whole file */
} sl_pg_sqlfile_t;

/** The function files built into this binary, in name order (generated: db/migrations.c). */
extern const sl_pg_sqlfile_t sl_pg_functions[];
extern const int sl_pg_nfunctions;

/**
 * Applies migrations not yet applied, in order, each in its own transaction,
 * then the function files `fns` (all of them, every time, in one transaction),
 * blocking (only at start-up or by `sluice migrate`, before the loop runs).
 * Takes a session advisory lock so instances starting together migrate once.
 * Records applied versions in schema_migrations. The functions are skipped
 * (logged) when the database has a migration newer than every one in `migs`:
 * a newer binary migrated it, and this older one must not put its older
 * function bodies back. `conninfo`, `migs`, `fns` and `errbuf` are borrowed.
 * Returns 0 (errbuf ""), or SL_EUNAVAIL (cannot connect), SL_EDB (a statement
 * failed; the failing migration, or every function file, is rolled back,
 * earlier migrations stay applied) or SL_EINVAL, with "<migration or function
 * file name, or step>: <server message>" in errbuf (truncated to errlen).
 */
int sl_pg_migrate_with(const char *conninfo, const sl_pg_migration_t *migs, int n,
                       const sl_pg_sqlfile_t *fns, int nfns, char *errbuf, size_t errlen);

/**
 * sl_pg_migrate_with(conninfo, migs, n, sl_pg_functions, sl_pg_nfunctions, ...):
 * the migrations, then this binary's SQL functions.
 */
int sl_pg_migrate(const char *conninfo, const sl_pg_migration_t *migs, int n, char *errbuf,
                  size_t errlen);

/**
 * What a serving process needs from the database before /v1 answers, read
 * and written by sl_pg_bootstrap. The caller fills the inputs; the outputs
 * are NUL-terminated. Keys are secrets: bzero them once used.
 */
typedef struct sl_pg_bootstrap_s {
    const char *conninfo;              /* borrowed */
    const sl_config_tenant_t *tenants; /* borrowed; the config's bootstrap tenants */
    int ntenants;
    const char *token_key_name;  /* borrowed; settings key of the access-token key,
                                    NULL when the config lists its own keys */
    char url_signing_key[129];   /* out: hex, the "url_signing_key" setting */
    char token_signing_key[129]; /* out: hex, the token_key_name setting ("" if NULL) */
    char errbuf[512];            /* out: what failed */
} sl_pg_bootstrap_t;

/**
 * Everything a serving process does to the database at start-up, blocking
 * (on the worker pool): sl_pg_migrate; then the signing keys every instance
 * shares through the settings table (each made from the CSPRNG by the first
 * instance that finds none: INSERT ... ON CONFLICT DO NOTHING, so exactly
 * one offer wins and everyone reads the winner); then the config's tenants,
 * created once by name with their keys stored hashed (sluice_bootstrap_tenant)
 * and the key prefix GET /v1/keys shows. The caller retries on error.
 * Returns 0, or sl_pg_migrate's error, SL_EUNAVAIL (cannot connect or read
 * the settings) or SL_EDB (a tenant), with the reason in b->errbuf.
 */
int sl_pg_bootstrap(sl_pg_bootstrap_t *b);

#endif
