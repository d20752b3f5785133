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
 *
 * sl_pg_bootstrap is what a serving process runs on its worker pool (app.c
 * retries it with backoff): the migrations, then the shared signing keys and
 * the config's tenants.
 */
#include "core/crypto.h"
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

/* ---- start-up of a serving process: migrations, shared keys, tenants ---- */

/* Bytes of the URL-signing key (HMAC-SHA256: 256 bits, its block-size-safe length). */
#define SL_SIGNING_KEY_BYTES 32

/*
 * A signing key named `name` in the settings table — the URL-signing key, or
 * (issue 13) the access-token key when the config lists no auth.token_keys —
 * shared by every instance, into out (hex, NUL-terminated). When there is
 * none yet (a fresh database, or migration 006 dropped the weak URL key that
 * 001 made with random()), this
 * instance makes one from the CSPRNG (sl_random_bytes: OpenSSL RAND_bytes)
 * and offers it; ON CONFLICT DO NOTHING lets exactly one offer win, and
 * everyone reads the winner. 0, or -1 (a database error: see PQerrorMessage).
 */
static int load_signing_key(PGconn *c, const char *name, char *out, size_t outlen)
{
    unsigned char rnd[SL_SIGNING_KEY_BYTES];
    char hex[2 * SL_SIGNING_KEY_BYTES + 1];
    PGresult *r = NULL;
    int rc = -1;

    if (sl_random_bytes(rnd, sizeof rnd) != 0)
        goto out;
    sl_hex(rnd, sizeof rnd, hex);
    const char *params[2] = {hex, name};
    r = PQexecParams(c,
                     "INSERT INTO settings (key, value) VALUES ($2, $1) "
                     "ON CONFLICT (key) DO NOTHING",
                     2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        goto out;
    PQclear(r);
    r = PQexecParams(c, "SELECT value FROM settings WHERE key = $1", 1, NULL, params + 1, NULL,
                     NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
        (size_t)PQgetlength(r, 0, 0) >= outlen)
        goto out;
    snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    rc = 0;
out:
    PQclear(r);
    explicit_bzero(rnd, sizeof rnd);
    explicit_bzero(hex, sizeof hex);
    return rc;
}

int sl_pg_bootstrap(sl_pg_bootstrap_t *b)
{
    int err = sl_pg_migrate(b->conninfo, sl_pg_migrations, sl_pg_nmigrations, b->errbuf,
                            sizeof b->errbuf);
    if (err)
        return err;
    PGconn *c = PQconnectdb(b->conninfo);
    PGresult *r = NULL;
    if (PQstatus(c) != CONNECTION_OK ||
        load_signing_key(c, "url_signing_key", b->url_signing_key, sizeof b->url_signing_key) !=
            0 ||
        (b->token_key_name && load_signing_key(c, b->token_key_name, b->token_signing_key,
                                               sizeof b->token_signing_key) != 0)) {
        err = SL_EUNAVAIL;
        snprintf(b->errbuf, sizeof b->errbuf, "cannot read settings: %s", PQerrorMessage(c));
    }
    /* Bootstrap tenants from the config: created once by name, keys stored hashed. */
    for (int i = 0; !err && i < b->ntenants; i++) {
        const sl_config_tenant_t *t = &b->tenants[i];
        char hash[65];
        sl_sha256_hex(t->api_key, strlen(t->api_key), hash);
        const char *params[] = {t->name, hash};
        r = PQexecParams(c, "SELECT sluice_bootstrap_tenant($1, $2)", 2, NULL, params, NULL, NULL,
                         0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            err = SL_EDB;
            snprintf(b->errbuf, sizeof b->errbuf, "tenant bootstrap: %s", PQerrorMessage(c));
        }
        PQclear(r);
        if (err)
            break;
        /* issue 13: the prefix GET /v1/keys shows (the key's first 11 characters) */
        char prefix[12];
        snprintf(prefix, sizeof prefix, "%.11s", t->api_key);
        const char *pp[] = {hash, prefix};
        r = PQexecParams(c,
                         "UPDATE api_keys SET prefix = $2 WHERE key_hash = $1 AND prefix IS NULL",
                         2, NULL, pp, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            err = SL_EDB;
            snprintf(b->errbuf, sizeof b->errbuf, "tenant bootstrap: %s", PQerrorMessage(c));
        }
        PQclear(r);
    }
    PQfinish(c);
    return err;
}
