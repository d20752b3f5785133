/*
 * migrate.c — applies the schema migrations embedded in the binary.
 *
 * Blocking libpq on purpose: it runs once at start-up (or from `sluice
 * migrate`) before the event loop exists. A session advisory lock serialises
 * instances that start together; each migration runs in its own transaction
 * together with its row in schema_migrations, so a migration is either fully
 * applied and recorded or not at all.
 *
 * Then the SQL functions of db/functions/ (the claim, the run transition, the
 * JSON documents, ...) are applied, every time, all in one transaction: each
 * file is `CREATE OR REPLACE FUNCTION`, so a fresh database and an upgraded
 * one end with the same bodies, and a changed body needs no migration. They
 * run after every migration, so a function may use any column a migration
 * added; a migration must not call a function of db/functions/ (on a fresh
 * database it does not exist yet). CREATE OR REPLACE cannot change a
 * function's result type or drop an argument: that takes a migration which
 * drops the old function, and the file then creates the new one.
 */
#include "core/err.h"
#include "core/log.h"
#include "db/pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_PG_MIGRATE_LOCK "727272"

static void quiet_notice(void *arg, const char *message)
{
    /* "relation already exists, skipping" and the like: not worth a line */
}

/* Writes "<what>: <libpq message without its trailing newline>" into errbuf. */
static void set_err(char *errbuf, size_t errlen, const char *what, const char *msg)
{
    int len;

    if (!errbuf || errlen == 0)
        return;
    if (!msg || !*msg)
        msg = "unknown error";
    len = snprintf(errbuf, errlen, "%s: %s", what, msg);
    if (len < 0)
        return;
    size_t end = strnlen(errbuf, errlen);
    while (end > 0 && (errbuf[end - 1] == '\n' || errbuf[end - 1] == '\r'))
        errbuf[--end] = '\0';
}

/* Runs one command; returns 1 if its status is `want`, else fills errbuf and returns 0. */
static int exec_ok(PGconn *pc, const char *sql, ExecStatusType want, const char *what, char *errbuf,
                   size_t errlen)
{
    PGresult *r = PQexec(pc, sql);
    int ok = r && PQresultStatus(r) == want;

    if (!ok)
        set_err(errbuf, errlen, what, r ? PQresultErrorMessage(r) : PQerrorMessage(pc));
    PQclear(r);
    return ok;
}

/* 1 if applied, 0 if not, -1 on error (errbuf filled). */
static int is_applied(PGconn *pc, int version, char *errbuf, size_t errlen)
{
    char v[16];
    const char *params[1] = {v};
    PGresult *r;
    int rc;

    snprintf(v, sizeof v, "%d", version);
    r = PQexecParams(pc, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, NULL, params,
                     NULL, NULL, 0);
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(errbuf, errlen, "schema_migrations",
                r ? PQresultErrorMessage(r) : PQerrorMessage(pc));
        rc = -1;
    } else {
        rc = PQntuples(r) > 0;
    }
    PQclear(r);
    return rc;
}

static int apply_one(PGconn *pc, const sl_pg_migration_t *m, char *errbuf, size_t errlen)
{
    char v[16];
    const char *params[2] = {v, m->name};
    PGresult *r;
    int ok;

    snprintf(v, sizeof v, "%d", m->version);
    if (!exec_ok(pc, "BEGIN", PGRES_COMMAND_OK, m->name, errbuf, errlen))
        return SL_EDB;
    /* A migration file may hold many statements: PQexec runs them all, in our transaction. */
    r = PQexec(pc, m->sql);
    ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK ||
               PQresultStatus(r) == PGRES_EMPTY_QUERY);
    if (!ok)
        set_err(errbuf, errlen, m->name, r ? PQresultErrorMessage(r) : PQerrorMessage(pc));
    PQclear(r);
    if (ok) {
        r = PQexecParams(pc, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2,
                         NULL, params, NULL, NULL, 0);
        ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            set_err(errbuf, errlen, m->name, r ? PQresultErrorMessage(r) : PQerrorMessage(pc));
        PQclear(r);
    }
    if (ok && exec_ok(pc, "COMMIT", PGRES_COMMAND_OK, m->name, errbuf, errlen))
        return 0;
    PQclear(PQexec(pc, "ROLLBACK"));
    return SL_EDB;
}

/* The newest migration version recorded in the database (0 if none), or -1 on error. */
static int db_version(PGconn *pc, char *errbuf, size_t errlen)
{
    PGresult *r = PQexec(pc, "SELECT coalesce(max(version), 0) FROM schema_migrations");
    int v = -1;

    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    else
        set_err(errbuf, errlen, "schema_migrations",
                r ? PQresultErrorMessage(r) : PQerrorMessage(pc));
    PQclear(r);
    return v;
}

/* Applies every function file in one transaction. 0 or SL_EDB (errbuf names the file). */
static int apply_functions(PGconn *pc, const sl_pg_sqlfile_t *fns, int nfns, char *errbuf,
                           size_t errlen)
{
    int ok = 1;

    if (nfns == 0)
        return 0;
    if (!exec_ok(pc, "BEGIN", PGRES_COMMAND_OK, "functions", errbuf, errlen))
        return SL_EDB;
    for (int i = 0; ok && i < nfns; i++) {
        PGresult *r = PQexec(pc, fns[i].sql);
        ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK ||
                   PQresultStatus(r) == PGRES_EMPTY_QUERY);
        if (!ok)
            set_err(errbuf, errlen, fns[i].name, r ? PQresultErrorMessage(r) : PQerrorMessage(pc));
        PQclear(r);
    }
    if (ok && exec_ok(pc, "COMMIT", PGRES_COMMAND_OK, "functions", errbuf, errlen))
        return 0;
    PQclear(PQexec(pc, "ROLLBACK"));
    return SL_EDB;
}

int sl_pg_migrate(const char *conninfo, const sl_pg_migration_t *migs, int n, char *errbuf,
                  size_t errlen)
{
    return sl_pg_migrate_with(conninfo, migs, n, sl_pg_functions, sl_pg_nfunctions, errbuf, errlen);
}

int sl_pg_migrate_with(const char *conninfo, const sl_pg_migration_t *migs, int n,
                       const sl_pg_sqlfile_t *fns, int nfns, char *errbuf, size_t errlen)
{
    int newest = 0; /* the newest migration this binary knows */
    PGconn *pc = NULL;
    int rc = SL_EDB;
    int locked = 0;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!conninfo || n < 0 || (n > 0 && !migs) || nfns < 0 || (nfns > 0 && !fns)) {
        set_err(errbuf, errlen, "migrate", "invalid arguments");
        return SL_EINVAL;
    }
    pc = PQconnectdb(conninfo);
    if (!pc || PQstatus(pc) != CONNECTION_OK) {
        set_err(errbuf, errlen, "connect", pc ? PQerrorMessage(pc) : "out of memory");
        rc = SL_EUNAVAIL;
        goto out;
    }
    PQsetNoticeProcessor(pc, quiet_notice, NULL);
    if (!exec_ok(pc, "SELECT pg_advisory_lock(" SL_PG_MIGRATE_LOCK ")", PGRES_TUPLES_OK,
                 "advisory lock", errbuf, errlen))
        goto out;
    locked = 1;
    if (!exec_ok(pc,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version int PRIMARY KEY, name text NOT NULL, "
                 "applied_at timestamptz NOT NULL DEFAULT now())",
                 PGRES_COMMAND_OK, "schema_migrations", errbuf, errlen))
        goto out;
    for (int i = 0; i < n; i++) {
        const sl_pg_migration_t *m = &migs[i];
        int applied = is_applied(pc, m->version, errbuf, errlen);
        if (m->version > newest)
            newest = m->version;
        if (applied < 0)
            goto out;
        if (applied)
            continue;
        if (apply_one(pc, m, errbuf, errlen) != 0)
            goto out;
        sl_log(SL_LOG_INFO, "pg_migration_applied", "{s:i, s:s}", "version", m->version, "name",
               m->name);
    }
    if (nfns > 0) {
        int dbv = db_version(pc, errbuf, errlen);
        if (dbv < 0)
            goto out;
        if (dbv > newest) {
            /* A newer binary migrated this database: its functions stay (pg.h). */
            sl_log(SL_LOG_WARN, "pg_functions_skipped", "{s:i, s:i}", "database_version", dbv,
                   "binary_version", newest);
        } else if (apply_functions(pc, fns, nfns, errbuf, errlen) != 0) {
            goto out;
        }
    }
    rc = 0;

out:
    if (locked)
        PQclear(PQexec(pc, "SELECT pg_advisory_unlock(" SL_PG_MIGRATE_LOCK ")"));
    PQfinish(pc);
    return rc;
}
