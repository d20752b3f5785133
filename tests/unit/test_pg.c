/*
 * test_pg.c — db/pg.c and db/migrate.c against a real Postgres.
 *
 * Uses SL_TEST_DATABASE_URL if set; otherwise initdb's a throwaway cluster in a
 * temp dir (unix socket only; as root the server runs as `nobody`, since
 * Postgres refuses root), and then also stops and restarts it mid-run to test
 * the pool's outage and reconnect paths.
 */
#include "core/err.h"
#include "db/pg.h"

#include <event2/event.h>
#include <fcntl.h>
#include <glob.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "pgtmp.h"

/* ---- the throwaway server ---- */

#define TEST_DIR "/tmp/sl_pg_test_XXXXXX"
#define TEST_PORT "55432"
#define OUTAGE_DIR "/tmp/sl_pg_outage_XXXXXX"
#define OUTAGE_PORT "55433" /* unix socket in its own dir: no clash with TEST_PORT's */

static char conninfo[512];
static pgtmp_t pgt; /* the throwaway server, when SL_TEST_DATABASE_URL is unset */

/* Blocking helper: the first value of the first row, "<null>", "<ok>" or "<error: ...>". */
static void sql_scalar(const char *sql, char *out, size_t cap)
{
    pgtmp_sql_scalar(conninfo, sql, out, cap);
}

/* ---- the loop ---- */

static struct event_base *base;
static struct event *tick;

static double now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000.0 + tv.tv_usec / 1000.0;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until *flag >= want or timeout; returns 1 if reached. */
static int wait_int(const int *flag, int want, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (*flag < want && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return *flag >= want;
}

static int wait_ready(sl_pg_t *pg, int want_up, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    int up = 0;
    for (;;) {
        sl_pg_stats(pg, NULL, &up, NULL, NULL);
        if (up >= want_up || now_ms() >= end)
            break;
        event_base_loop(base, EVLOOP_ONCE);
    }
    return up >= want_up;
}

static int wait_not_ready(sl_pg_t *pg, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (sl_pg_ready(pg) && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return !sl_pg_ready(pg);
}

/* ---- a recording callback ---- */

#define MAXR 8
typedef struct q_s {
    int returned; /* set right after exec returned: the callback must see 1 */
    int called;
    int sync_call;
    int err;
    int n;
    int status[MAXR];
    char val0[MAXR][128];
    int ncols;
    char cols[MAXR][128];
    int colnull[MAXR];
    char errmsg[256];
    char sqlstate[8];
    double at;
} q_t;

static void rec_cb(const sl_pg_result_t *r, void *arg)
{
    q_t *q = arg;
    if (!q->returned)
        q->sync_call = 1;
    q->called++;
    q->at = now_ms();
    q->err = r->err;
    q->n = r->n;
    snprintf(q->errmsg, sizeof q->errmsg, "%s", r->errmsg ? r->errmsg : "(null)");
    snprintf(q->sqlstate, sizeof q->sqlstate, "%s", r->sqlstate ? r->sqlstate : "(null)");
    if (r->err != 0 || !r->res)
        return;
    for (int i = 0; i < r->n && i < MAXR; i++) {
        q->status[i] = PQresultStatus(r->res[i]);
        if (PQntuples(r->res[i]) > 0 && PQnfields(r->res[i]) > 0)
            snprintf(q->val0[i], sizeof q->val0[i], "%s", PQgetvalue(r->res[i], 0, 0));
    }
    PGresult *last = r->res[r->n - 1];
    if (PQntuples(last) > 0) {
        q->ncols = PQnfields(last) < MAXR ? PQnfields(last) : MAXR;
        for (int j = 0; j < q->ncols; j++) {
            q->colnull[j] = PQgetisnull(last, 0, j);
            snprintf(q->cols[j], sizeof q->cols[j], "%s", PQgetvalue(last, 0, j));
        }
    }
}

static int query(sl_pg_t *pg, q_t *q, const char *sql, int np, const char *const *params)
{
    memset(q, 0, sizeof *q);
    int rc = sl_pg_query(pg, sql, np, params, rec_cb, q);
    q->returned = 1;
    return rc;
}

/* ---- tests ---- */

static void test_migrate(void)
{
    char err[512], v[64];

    CHECK(sl_pg_nmigrations >= 2);
    CHECK(sl_pg_migrations[0].version == 1);
    CHECK(strcmp(sl_pg_migrations[0].name, "001_init") == 0);
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    CHECK(err[0] == '\0');
    sql_scalar("SELECT count(*) FROM schema_migrations", v, sizeof v);
    char want[16];
    snprintf(want, sizeof want, "%d", sl_pg_nmigrations);
    CHECK(strcmp(v, want) == 0);
    sql_scalar("SELECT to_regclass('files') IS NOT NULL", v, sizeof v);
    CHECK(strcmp(v, "t") == 0);
    /* 001 made a URL-signing key with random(); 006 drops it: the server makes
     * one from the CSPRNG at start (main.c), never SQL. */
    sql_scalar("SELECT count(*) FROM settings WHERE key = 'url_signing_key'", v, sizeof v);
    CHECK_STREQ(v, "0");
    sql_scalar("SELECT max(applied_at)::text FROM schema_migrations", v, sizeof v);
    char first_applied[64];
    snprintf(first_applied, sizeof first_applied, "%s", v);

    /* twice: a no-op (nothing re-applied, which would fail on CREATE TABLE anyway) */
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    sql_scalar("SELECT count(*) FROM schema_migrations", v, sizeof v);
    CHECK(strcmp(v, want) == 0);
    sql_scalar("SELECT max(applied_at)::text FROM schema_migrations", v, sizeof v);
    CHECK(strcmp(v, first_applied) == 0);

    /* a failing migration: named in the error, rolled back entirely, not recorded */
    static const sl_pg_migration_t bad[] = {
        {9001, "9001_bad", "CREATE TABLE sl_bad_partial (x int);\nSELECT sl_no_such_fn();\n"},
    };
    CHECK(sl_pg_migrate(conninfo, bad, 1, err, sizeof err) == SL_EDB);
    CHECK(strstr(err, "9001_bad") != NULL);
    CHECK(strstr(err, "sl_no_such_fn") != NULL);
    sql_scalar("SELECT to_regclass('sl_bad_partial') IS NULL", v, sizeof v);
    CHECK(strcmp(v, "t") == 0);
    sql_scalar("SELECT count(*) FROM schema_migrations WHERE version = 9001", v, sizeof v);
    CHECK(strcmp(v, "0") == 0);
    /* the advisory lock was released: another session can take it at once */
    sql_scalar("SELECT pg_try_advisory_lock(727272)", v, sizeof v);
    CHECK(strcmp(v, "t") == 0);

    CHECK(sl_pg_migrate("host=/nonexistent-sl-dir port=1 connect_timeout=2", sl_pg_migrations,
                        sl_pg_nmigrations, err, sizeof err) == SL_EUNAVAIL);
    CHECK(strncmp(err, "connect: ", 9) == 0);
}

/* ---- db/functions/: applied after the migrations, at every migrate ---- */

/* The engine's functions with their signatures (db/functions/): the C code calls these. */
static const char *const engine_functions[] = {
    "sluice_claim_runs(text,integer,integer,integer,json,boolean)",
    "sluice_run_cost(bigint)",                                        /* shares (014) */
    "sluice_runs_before_insert()",                                    /* shares (014) */
    "sluice_run_transition(uuid,text,text,integer,jsonb,text,text,boolean,integer,text,"
    "double precision,text,json)",
    "sluice_bootstrap_tenant(text,text)",
    "sluice_file_json(files)",
    "sluice_dataset_json(datasets)",
    "sluice_event_json(run_events)",
    "sluice_file_status(uuid)",
    "sluice_record_json(records)",                                   /* provenance (011) */
    "sluice_record_put(uuid,uuid,uuid,uuid,uuid,jsonb,jsonb)",        /* provenance (011) */
    "sluice_ts(timestamp with time zone)",
};
#define N_ENGINE_FUNCTIONS ((int)(sizeof engine_functions / sizeof engine_functions[0]))

/* Runs the tests below in schema `schema` (made empty): every connection
 * libpq opens from here on uses it first (PGOPTIONS), until use_schema(NULL). */
static void use_schema(const char *schema)
{
    char opt[128], sql[256], v[512];

    if (!schema) {
        unsetenv("PGOPTIONS");
        return;
    }
    snprintf(opt, sizeof opt, "-c search_path=%s", schema);
    setenv("PGOPTIONS", opt, 1);
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema, schema);
    sql_scalar(sql, v, sizeof v);
    CHECK_STREQ(v, "<ok>");
}

static void drop_schema(const char *schema)
{
    char sql[128], v[512];

    use_schema(NULL);
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    sql_scalar(sql, v, sizeof v);
}

/* 1 if every engine function exists in the current schema with its signature. */
static int engine_functions_exist(void)
{
    char sql[256], v[512];
    int all = 1;

    for (int i = 0; i < N_ENGINE_FUNCTIONS; i++) {
        snprintf(sql, sizeof sql, "SELECT to_regprocedure('%s') IS NOT NULL", engine_functions[i]);
        sql_scalar(sql, v, sizeof v);
        if (strcmp(v, "t") != 0) {
            fprintf(stderr, "missing: %s (%s)\n", engine_functions[i], v);
            all = 0;
        }
    }
    return all;
}

/* The definition of function `sig` in the current schema, its schema name taken out, in out. */
static void function_def(const char *sig, char *out, size_t cap)
{
    char sql[512];

    snprintf(sql, sizeof sql,
             "SELECT replace(pg_get_functiondef(to_regprocedure('%s')), current_schema() || '.', "
             "'')",
             sig);
    sql_scalar(sql, out, cap);
}

/* One file with two runs (one succeeded with a note, one queued), an artifact
 * and a record, at fixed ids and times: the same row in any schema. */
static const char FIXTURE_SQL[] =
    "INSERT INTO tenants (id, name, created_at) VALUES "
    "('00000000-0000-4000-8000-000000000001', 'acme', '2026-01-01 00:00:00+00');"
    "INSERT INTO datasets (id, tenant_id, name, record_schema, created_at) VALUES "
    "('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 'docs',"
    " '{\"type\": \"object\"}', '2026-01-01 00:00:01+00');"
    "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime,"
    " storage_key, text_source, created_at) VALUES "
    "('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000001',"
    " '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000004', 'a.pdf',"
    " 3, 'abc', 'application/pdf', 'files/x', 'tika', '2026-01-01 00:00:02+00');"
    "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, state, step,"
    " attempt, note, created_at, started_at, finished_at) VALUES "
    "('00000000-0000-4000-8000-000000000005', '00000000-0000-4000-8000-000000000001',"
    " '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000003',"
    " '00000000-0000-4000-8000-000000000004', 'text', 'succeeded', 'ocr', 2, 'no_text',"
    " '2026-01-01 00:00:03+00', '2026-01-01 00:00:04+00', '2026-01-01 00:00:05+00'),"
    "('00000000-0000-4000-8000-000000000006', '00000000-0000-4000-8000-000000000001',"
    " '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000003',"
    " '00000000-0000-4000-8000-000000000004', 'thumbs', 'queued', NULL, 0, NULL,"
    " '2026-01-01 00:00:03+00', NULL, NULL);"
    "INSERT INTO artifacts (id, tenant_id, file_id, run_id, kind, mime, size, sha256,"
    " storage_key, created_at) VALUES "
    "('00000000-0000-4000-8000-000000000007', '00000000-0000-4000-8000-000000000001',"
    " '00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000005', 'text',"
    " 'text/plain', 5, 'def', 'artifacts/x', '2026-01-01 00:00:06+00');"
    "INSERT INTO records (id, tenant_id, dataset_id, file_id, run_id, data, created_at) VALUES "
    "('00000000-0000-4000-8000-000000000008', '00000000-0000-4000-8000-000000000001',"
    " '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000003',"
    " '00000000-0000-4000-8000-000000000005', '{\"title\": \"A\"}', "
    " '2026-01-01 00:00:07+00')";

static const char FILE_JSON_SQL[] = "SELECT sluice_file_json(f)::text FROM files f "
                                    "WHERE f.id = '00000000-0000-4000-8000-000000000003'";

/*
 * Migrations and functions twice: the second pass changes nothing; every
 * function is there with its signature; a failing function file is named
 * and rolled back with the other files; an older binary leaves a newer
 * database's functions alone.
 */
static void test_functions(void)
{
    char err[512], v[512], count1[64];

    CHECK(sl_pg_nfunctions >= 4);
    for (int i = 0; i < sl_pg_nfunctions; i++)
        CHECK(sl_pg_functions[i].name && sl_pg_functions[i].sql);
    use_schema("sl_t_fns");
    CHECK(!engine_functions_exist()); /* the check can fail: an empty schema */
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    CHECK_STREQ(err, "");
    CHECK(engine_functions_exist());
    sql_scalar("SELECT pg_get_function_result('sluice_file_json(files)'::regprocedure)", v,
               sizeof v);
    CHECK_STREQ(v, "json");
    sql_scalar("SELECT count(*) FROM pg_proc WHERE pronamespace = current_schema()::regnamespace",
               count1, sizeof count1);
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    CHECK_STREQ(err, "");
    CHECK(engine_functions_exist());
    sql_scalar("SELECT count(*) FROM pg_proc WHERE pronamespace = current_schema()::regnamespace",
               v, sizeof v);
    CHECK_STREQ(v, count1);

    /* a failing file: named, and the files before it are rolled back too */
    static const sl_pg_sqlfile_t bad[] = {
        {"probe", "CREATE OR REPLACE FUNCTION sl_probe() RETURNS int LANGUAGE sql AS 'SELECT 1';"},
        {"broken", "CREATE OR REPLACE FUNCTION sl_broken() RETURNS int LANGUAGE sql AS "
                   "'SELECT no_such_column FROM runs';"},
    };
    CHECK(sl_pg_migrate_with(conninfo, sl_pg_migrations, sl_pg_nmigrations, bad, 2, err,
                             sizeof err) == SL_EDB);
    CHECK(strncmp(err, "broken: ", 8) == 0);
    sql_scalar("SELECT to_regprocedure('sl_probe()') IS NULL", v, sizeof v);
    CHECK_STREQ(v, "t");

    /* a database a newer binary migrated (version 9999): the functions stay as they are */
    sql_scalar("INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_newer')", v,
               sizeof v);
    CHECK_STREQ(v, "<ok>");
    CHECK(sl_pg_migrate_with(conninfo, sl_pg_migrations, sl_pg_nmigrations, bad, 1, err,
                             sizeof err) == 0);
    sql_scalar("SELECT to_regprocedure('sl_probe()') IS NULL", v, sizeof v);
    CHECK_STREQ(v, "t");
    sql_scalar("DELETE FROM schema_migrations WHERE version = 9999", v, sizeof v);
    CHECK(sl_pg_migrate_with(conninfo, sl_pg_migrations, sl_pg_nmigrations, bad, 1, err,
                             sizeof err) == 0);
    sql_scalar("SELECT sl_probe()", v, sizeof v);
    CHECK_STREQ(v, "1");
    drop_schema("sl_t_fns");
}

/* The engine's functions do what the C code relies on (the black-box tests drive them too). */
static void test_engine_sql(void)
{
    char err[512], v[1024], id1[64];

    use_schema("sl_t_engine");
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);

    /* bootstrap: a tenant once by name, a key once by hash */
    sql_scalar("SELECT sluice_bootstrap_tenant('boot', 'h1')", id1, sizeof id1);
    CHECK(strlen(id1) == 36);
    sql_scalar("SELECT sluice_bootstrap_tenant('boot', 'h1')", v, sizeof v);
    CHECK_STREQ(v, id1);
    sql_scalar("SELECT sluice_bootstrap_tenant('boot', 'h2')", v, sizeof v);
    CHECK_STREQ(v, id1);
    sql_scalar("SELECT count(*) || ' ' || (SELECT count(*) FROM api_keys k JOIN tenants t "
               "ON t.id = k.tenant_id WHERE t.name = 'boot') FROM tenants WHERE name = 'boot'",
               v, sizeof v);
    CHECK_STREQ(v, "1 2");
    sql_scalar("SELECT sluice_bootstrap_tenant('other', 'h1') IS NOT NULL", v, sizeof v);
    CHECK_STREQ(v, "t");
    sql_scalar("SELECT count(*) FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
               "WHERE t.name = 'other'",
               v, sizeof v);
    CHECK_STREQ(v, "0"); /* h1 is boot's already */

    /* claim: the queued run, once; its file document comes with it */
    sql_scalar(FIXTURE_SQL, v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    sql_scalar("SELECT string_agg(id || ' ' || old_state || ' ' || (file->>'storage_key'), ',') "
               "FROM sluice_claim_runs('inst-a', 10, 30, 16, '{}')",
               v, sizeof v);
    CHECK_STREQ(v, "00000000-0000-4000-8000-000000000006 queued files/x");
    sql_scalar("SELECT count(*) FROM sluice_claim_runs('inst-b', 10, 30, 16, '{}')", v, sizeof v);
    CHECK_STREQ(v, "0"); /* leased to inst-a */

    /* transition: guarded by the lease; the events in order; leaving running ends the lease */
    static const char T[] =
        "SELECT coalesce(string_agg(kind || '/' || coalesce(step, '-'), ',' ORDER BY seq), '') "
        "FROM sluice_run_transition('00000000-0000-4000-8000-000000000006', '%s', 'thumb', 1,"
        " '{\"k\": 1}', '%s', NULL, false, 0, %s, 2.5, 'v1',"
        " '[{\"step\": \"thumb\", \"kind\": \"started\"},"
        "   {\"step\": \"thumb\", \"kind\": \"step_started\", \"detail\": {\"attempt\": 1}},"
        "   {\"step\": null, \"kind\": \"waiting\"}]')";
    char sql[1024];
    snprintf(sql, sizeof sql, T, "inst-b", "running", "NULL");
    sql_scalar(sql, v, sizeof v);
    CHECK_STREQ(v, "");
    sql_scalar("SELECT count(*) FROM run_events", v, sizeof v);
    CHECK_STREQ(v, "0");
    snprintf(sql, sizeof sql, T, "inst-a", "waiting", "'busy'");
    sql_scalar(sql, v, sizeof v);
    CHECK_STREQ(v, "started/thumb,step_started/thumb,waiting/-");
    sql_scalar("SELECT state || ' ' || step || ' ' || error || ' ' || coalesce(lease_owner, '-') "
               "|| ' ' || flow_version || ' ' || (ctx->>'k') || ' ' || "
               "(next_attempt_at > now() + interval '2 s') FROM runs "
               "WHERE id = '00000000-0000-4000-8000-000000000006'",
               v, sizeof v);
    CHECK_STREQ(v, "waiting thumb busy - v1 1 true");
    snprintf(sql, sizeof sql, T, "inst-a", "running", "NULL");
    sql_scalar(sql, v, sizeof v);
    CHECK_STREQ(v, ""); /* the lease ended with 'waiting' */
    drop_schema("sl_t_engine");
}

/*
 * A database upgraded from the state after migration 007 ends with the same
 * functions as a fresh one, and sluice_file_json gives the same document for
 * the same row — even when the upgraded database's body had drifted.
 */
static void test_functions_upgrade(void)
{
    char err[512], fresh_doc[4096], up_doc[4096], v[512];
    static char fresh_defs[N_ENGINE_FUNCTIONS][8192];
    char def[8192];
    int n007 = 0;

    while (n007 < sl_pg_nmigrations && sl_pg_migrations[n007].version <= 7)
        n007++;
    CHECK_EQ(n007, 7);

    use_schema("sl_t_fresh");
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    sql_scalar(FIXTURE_SQL, v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    sql_scalar(FILE_JSON_SQL, fresh_doc, sizeof fresh_doc);
    CHECK(strstr(fresh_doc, "\"note\" : \"no_text\"") != NULL);
    CHECK(strstr(fresh_doc, "\"queue_position\" : 1") != NULL);
    for (int i = 0; i < N_ENGINE_FUNCTIONS; i++)
        function_def(engine_functions[i], fresh_defs[i], sizeof fresh_defs[i]);

    /* the state after 007, as a server of that time left it: no db/functions */
    use_schema("sl_t_up");
    CHECK(sl_pg_migrate_with(conninfo, sl_pg_migrations, n007, NULL, 0, err, sizeof err) == 0);
    sql_scalar("SELECT to_regprocedure('sluice_claim_runs(text,integer,integer,integer,json,"
               "boolean)') IS NULL",
               v, sizeof v);
    CHECK_STREQ(v, "t");
    sql_scalar(FIXTURE_SQL, v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    /* a body that drifted (a hand edit, an older release): the upgrade puts the current one back */
    sql_scalar("CREATE OR REPLACE FUNCTION sluice_file_json(f files) RETURNS json "
               "LANGUAGE sql STABLE AS $$ SELECT '{}'::json $$",
               v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    sql_scalar(FILE_JSON_SQL, up_doc, sizeof up_doc);
    CHECK_STREQ(up_doc, "{}");
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    CHECK_STREQ(err, "");
    sql_scalar(FILE_JSON_SQL, up_doc, sizeof up_doc);
    CHECK_STREQ(up_doc, fresh_doc);
    /* migration 011 kept the record as version 1, the latest, with what the run knew */
    sql_scalar("SELECT version || ' ' || latest || ' ' || (provenance->>'pipeline') || ' ' || "
               "(provenance->>'run_id') || ' ' || (provenance ? 'model') FROM records",
               v, sizeof v);
    CHECK_STREQ(v, "1 true text 00000000-0000-4000-8000-000000000005 true");
    for (int i = 0; i < N_ENGINE_FUNCTIONS; i++) {
        function_def(engine_functions[i], def, sizeof def);
        CHECK(strncmp(def, "CREATE OR REPLACE FUNCTION", 26) == 0);
        CHECK_STREQ(def, fresh_defs[i]);
    }
    drop_schema("sl_t_up");
    drop_schema("sl_t_fresh");
}

/* ---- DELETE /v1/files/{id} against a run's commit: one lock order ---- */

/* A blocking connection in the current schema (PGOPTIONS), or NULL. Returns owned. */
static PGconn *blocking_conn(void)
{
    PGconn *pc = PQconnectdb(conninfo);
    if (PQstatus(pc) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s\n", PQerrorMessage(pc));
        PQfinish(pc);
        return NULL;
    }
    PQsetNoticeProcessor(pc, pgtmp_quiet_notice, NULL);
    return pc;
}

/* Runs sql on pc; returns its status and copies the SQLSTATE of a failure into st. */
static ExecStatusType exec_st(PGconn *pc, const char *sql, char *st, size_t cap)
{
    PGresult *r = PQexec(pc, sql);
    ExecStatusType s = PQresultStatus(r);
    const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(st, cap, "%s", code ? code : "");
    if (s == PGRES_FATAL_ERROR)
        fprintf(stderr, "%s", PQresultErrorMessage(r));
    PQclear(r);
    return s;
}

/* 1 once the backend `pid` (0: any) waits for a lock (watched from pc), 0 after timeout_ms. */
static int wait_lock_wait(PGconn *pc, int pid, int timeout_ms)
{
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT count(*) > 0 FROM pg_stat_activity WHERE (pid = %d OR %d = 0)"
             " AND wait_event_type = 'Lock' AND datname = current_database()",
             pid, pid);
    double end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        PGresult *r = PQexec(pc, sql);
        int waiting = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                      strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (waiting)
            return 1;
        usleep(10000);
    }
    return 0;
}

/*
 * The DELETE of api/files.c and sluice_run_transition, interleaved at the
 * point that deadlocked: the DELETE holds the file row (FOR UPDATE, its first
 * statement) while the transition of one of the file's runs is under way,
 * then deletes the file (cascading to the run). With the transition taking
 * the run's row first and the file's only for its events' foreign key, each
 * waited for the other and Postgres aborted one with 40P01. Both must finish:
 * the delete commits, the transition finds no run (file deleted) and writes
 * nothing. Fails (40P01, after deadlock_timeout) without the lock order of
 * db/functions/run_transition.sql.
 */
static void test_delete_vs_transition(void)
{
    char err[512], v[512], st[8];
    PGconn *del = NULL, *run = NULL, *watch = NULL;

    use_schema("sl_t_deadlock");
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    sql_scalar(FIXTURE_SQL, v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    sql_scalar("SELECT count(*) FROM sluice_claim_runs('inst-a', 10, 30, 16, '{}')", v, sizeof v);
    CHECK_STREQ(v, "1"); /* run ...0006, running under inst-a's lease */
    del = blocking_conn();
    run = blocking_conn();
    watch = blocking_conn();
    CHECK(del && run && watch);
    if (!del || !run || !watch)
        goto out;

    /* the DELETE's transaction, up to its row lock (api/files.c route_delete) */
    CHECK(exec_st(del, "BEGIN", st, sizeof st) == PGRES_COMMAND_OK);
    CHECK(exec_st(del,
                  "SELECT 1 FROM files WHERE tenant_id = '00000000-0000-4000-8000-000000000001'"
                  " AND id = '00000000-0000-4000-8000-000000000003' FOR UPDATE",
                  st, sizeof st) == PGRES_TUPLES_OK);
    /* the run commits a step meanwhile (actors/run.c COMMIT_SQL), and waits */
    CHECK(PQsendQuery(run, "SELECT count(*) FROM sluice_run_transition("
                           "'00000000-0000-4000-8000-000000000006', 'inst-a', 'thumb', 1, '{}',"
                           " 'succeeded', NULL, false, 0, NULL, 0, 'v1',"
                           " '[{\"step\": \"thumb\", \"kind\": \"step_succeeded\"},"
                           "   {\"step\": null, \"kind\": \"succeeded\"}]')") == 1);
    CHECK(wait_lock_wait(watch, PQbackendPID(run), 5000));
    /* the rest of the DELETE: it must not wait on the transition (a cycle) */
    CHECK(exec_st(del,
                  "SELECT storage_key FROM artifacts WHERE tenant_id = "
                  "'00000000-0000-4000-8000-000000000001' AND file_id = "
                  "'00000000-0000-4000-8000-000000000003'",
                  st, sizeof st) == PGRES_TUPLES_OK);
    CHECK(exec_st(del,
                  "DELETE FROM files WHERE tenant_id = '00000000-0000-4000-8000-000000000001'"
                  " AND id = '00000000-0000-4000-8000-000000000003'"
                  " RETURNING storage_key, dataset_id",
                  st, sizeof st) == PGRES_TUPLES_OK);
    CHECK_STREQ(st, "");
    ExecStatusType cs = exec_st(del, "COMMIT", st, sizeof st);
    CHECK(cs == PGRES_COMMAND_OK);

    /* the transition: no error, and no row (the run went with its file) */
    PGresult *r, *got = NULL;
    while ((r = PQgetResult(run)) != NULL) {
        if (!got)
            got = r;
        else
            PQclear(r);
    }
    CHECK(got != NULL);
    if (got) {
        const char *code = PQresultErrorField(got, PG_DIAG_SQLSTATE);
        if (PQresultStatus(got) != PGRES_TUPLES_OK)
            fprintf(stderr, "transition: %s", PQresultErrorMessage(got));
        CHECK(PQresultStatus(got) == PGRES_TUPLES_OK);
        CHECK_STREQ(code ? code : "", "");
        if (PQresultStatus(got) == PGRES_TUPLES_OK)
            CHECK_STREQ(PQgetvalue(got, 0, 0), "0");
        PQclear(got);
    }
    sql_scalar("SELECT (SELECT count(*) FROM files) || ' ' || (SELECT count(*) FROM runs) || ' '"
               " || (SELECT count(*) FROM run_events)",
               v, sizeof v);
    CHECK_STREQ(v, "0 0 0");
out:
    PQfinish(del);
    PQfinish(run);
    PQfinish(watch);
    drop_schema("sl_t_deadlock");
}

/* The first value of the next result on pc (after a PQsendQuery): "<null>", or "<error SQLSTATE>". */
static void next_value(PGconn *pc, char *out, size_t cap)
{
    PGresult *r, *got = NULL;
    while ((r = PQgetResult(pc)) != NULL) {
        if (!got)
            got = r;
        else
            PQclear(r);
    }
    if (got == NULL) {
        snprintf(out, cap, "<none>");
    } else if (PQresultStatus(got) != PGRES_TUPLES_OK) {
        const char *code = PQresultErrorField(got, PG_DIAG_SQLSTATE);
        snprintf(out, cap, "<error %s>", code ? code : "?");
        fprintf(stderr, "%s", PQresultErrorMessage(got));
    } else {
        snprintf(out, cap, "%s", PQgetisnull(got, 0, 0) ? "<null>" : PQgetvalue(got, 0, 0));
    }
    PQclear(got);
}

#define PUT_SQL(run)                                                                               \
    "SELECT sluice_record_put(gen_random_uuid(), '00000000-0000-4000-8000-000000000001',"          \
    " '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000003', '" run "',"  \
    " '{}', '{}')"

/*
 * Provenance (migration 011, db/functions/provenance.sql): two runs of one
 * file recording at once get versions one after the other (the second waits
 * for the file row, then numbers after the first: no unique violation on
 * (file_id, version)); a record put while the file is being deleted writes
 * nothing and returns null (sl.record's "not_found").
 */
static void test_record_versions(void)
{
    char err[512], v[512], st[8];
    PGconn *a = NULL, *b = NULL, *watch = NULL;

    use_schema("sl_t_versions");
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    sql_scalar(FIXTURE_SQL, v, sizeof v); /* one record: version 1 of run ...0005 */
    CHECK_STREQ(v, "<ok>");
    a = blocking_conn();
    b = blocking_conn();
    watch = blocking_conn();
    CHECK(a && b && watch);
    if (!a || !b || !watch)
        goto out;

    CHECK(exec_st(a, "BEGIN", st, sizeof st) == PGRES_COMMAND_OK);
    CHECK(exec_st(a, PUT_SQL("00000000-0000-4000-8000-0000000000a1"), st, sizeof st) ==
          PGRES_TUPLES_OK);
    CHECK(PQsendQuery(b, PUT_SQL("00000000-0000-4000-8000-0000000000b1")) == 1);
    CHECK(wait_lock_wait(watch, PQbackendPID(b), 5000)); /* b waits for the file row */
    CHECK(exec_st(a, "COMMIT", st, sizeof st) == PGRES_COMMAND_OK);
    next_value(b, v, sizeof v);
    CHECK_STREQ(v, "3");
    sql_scalar("SELECT string_agg(version || ':' || latest || ':' || coalesce(right(run_id::text,"
               " 2), '-'), ',' ORDER BY version) FROM records",
               v, sizeof v);
    CHECK_STREQ(v, "1:false:05,2:false:a1,3:true:b1");
    /* the same run again: its own version, replaced; the latest stays */
    sql_scalar(PUT_SQL("00000000-0000-4000-8000-0000000000a1"), v, sizeof v);
    CHECK_STREQ(v, "2");
    sql_scalar("SELECT count(*) || ' ' || max(version) FILTER (WHERE latest) FROM records", v,
               sizeof v);
    CHECK_STREQ(v, "3 3");

    /* a put while the file is deleted: waits, then nothing, no error */
    CHECK(exec_st(a, "BEGIN", st, sizeof st) == PGRES_COMMAND_OK);
    CHECK(exec_st(a,
                  "DELETE FROM files WHERE id = '00000000-0000-4000-8000-000000000003'"
                  " RETURNING storage_key",
                  st, sizeof st) == PGRES_TUPLES_OK);
    CHECK(PQsendQuery(b, PUT_SQL("00000000-0000-4000-8000-0000000000c1")) == 1);
    CHECK(wait_lock_wait(watch, PQbackendPID(b), 5000));
    CHECK(exec_st(a, "COMMIT", st, sizeof st) == PGRES_COMMAND_OK);
    next_value(b, v, sizeof v);
    CHECK_STREQ(v, "<null>");
    sql_scalar("SELECT count(*) FROM records", v, sizeof v);
    CHECK_STREQ(v, "0");
out:
    PQfinish(a);
    PQfinish(b);
    PQfinish(watch);
    drop_schema("sl_t_versions");
}

static void test_args(sl_pg_t *pg)
{
    sl_pg_t *bad = NULL;
    q_t q;

    CHECK(sl_pg_new(base, "host='unterminated", 2, 1000, &bad) == SL_EINVAL);
    CHECK(bad == NULL);
    CHECK(sl_pg_new(base, conninfo, 0, 1000, &bad) == SL_EINVAL);

    sl_pg_batch_t *b = sl_pg_batch_new(pg);
    CHECK(b != NULL);
    CHECK(sl_pg_batch_add(b, "SELECT 1", -1, NULL) == SL_EINVAL);
    CHECK(sl_pg_batch_add(b, NULL, 0, NULL) == SL_EINVAL);
    CHECK(sl_pg_batch_exec(b, rec_cb, &q) == SL_EINVAL); /* empty: freed, no callback */

    b = sl_pg_batch_new(pg);
    const char *p[] = {"x"};
    CHECK(sl_pg_batch_add(b, "SELECT $1::text", 1, p) == 0);
    CHECK(sl_pg_batch_add(b, "SELECT 2", 0, NULL) == 1);
    sl_pg_batch_free(b); /* unsent: no callback, no leak */

    memset(&q, 0, sizeof q);
    CHECK(sl_pg_query(NULL, "SELECT 1", 0, NULL, rec_cb, &q) == SL_EINVAL);
    CHECK(q.called == 0);
}

static void test_three(sl_pg_t *pg)
{
    q_t q = {0};
    const char *p1[] = {"three", "v1"};
    const char *p2[] = {"three"};
    sl_pg_batch_t *b = sl_pg_batch_new(pg);

    CHECK(sl_pg_batch_add(b, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $2)", 2, p1) == 0);
    CHECK(sl_pg_batch_add(b, "UPDATE sl_pg_test SET v = v || '+' WHERE k = $1 RETURNING v", 1,
                          p2) == 1);
    CHECK(sl_pg_batch_add(b, "SELECT count(*) FROM sl_pg_test WHERE k = $1", 1, p2) == 2);
    CHECK(sl_pg_batch_exec(b, rec_cb, &q) == 0);
    q.returned = 1;
    CHECK(q.called == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.called == 1);
    CHECK(q.err == 0);
    CHECK(q.n == 3);
    CHECK(q.status[0] == PGRES_COMMAND_OK);
    CHECK(q.status[1] == PGRES_TUPLES_OK);
    CHECK(strcmp(q.val0[1], "v1+") == 0);
    CHECK(q.status[2] == PGRES_TUPLES_OK);
    CHECK(strcmp(q.val0[2], "1") == 0);
    CHECK(strcmp(q.errmsg, "") == 0);
    CHECK(strcmp(q.sqlstate, "") == 0);
}

/*
 * Prepared statements: a connection parses a name once (its Parse result is
 * not a statement's), then runs it by name; results stay in their slots
 * whether the Parse went in the same pipeline or not; a failing Parse fails
 * its batch only.
 */
static void test_prepared(sl_pg_t *pg)
{
    const char *pk[] = {"prep"};
    q_t q;
    sql_scalar("INSERT INTO sl_pg_test VALUES ('prep', 'p1') ON CONFLICT DO NOTHING", q.errmsg,
               sizeof q.errmsg);
    for (int i = 0; i < 12; i++) { /* every connection of the pool, first and later runs */
        memset(&q, 0, sizeof q);
        sl_pg_batch_t *b = sl_pg_batch_new(pg);
        CHECK(sl_pg_batch_add(b, "SELECT 'before'", 0, NULL) == 0);
        CHECK(sl_pg_batch_add_prepared(b, "sl_test_p", "SELECT v FROM sl_pg_test WHERE k = $1", 1,
                                       pk) == 1);
        CHECK(sl_pg_batch_add(
                  b, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'sl_test_p'", 0,
                  NULL) == 2);
        CHECK(sl_pg_batch_exec(b, rec_cb, &q) == 0);
        q.returned = 1;
        CHECK(wait_int(&q.called, 1, 5000));
        CHECK(q.err == 0 && q.n == 3);
        CHECK_STREQ(q.val0[0], "before");
        CHECK_STREQ(q.val0[1], "p1");
        CHECK_STREQ(q.val0[2], "1");
    }
    memset(&q, 0, sizeof q);
    CHECK(sl_pg_query_prepared(pg, "sl_test_bad", "SELECT nope FROM nowhere", 0, NULL, rec_cb,
                               &q) == 0);
    q.returned = 1;
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == SL_EDB);
    CHECK_STREQ(q.sqlstate, "42P01");
    CHECK(sl_pg_query_prepared(pg, "", "SELECT 1", 0, NULL, rec_cb, &q) == SL_EINVAL);
    CHECK(query(pg, &q, "SELECT 'after'", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK_STREQ(q.val0[0], "after");
}

static void test_atomic(sl_pg_t *pg)
{
    q_t q;
    const char *pd[] = {"dup", "first"};
    CHECK(query(pg, &q, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $2)", 2, pd) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);

    q_t f = {0};
    const char *a1[] = {"atom1", "x"};
    const char *a2[] = {"dup", "second"};
    const char *a3[] = {"atom3", "x"};
    sl_pg_batch_t *b = sl_pg_batch_new(pg);
    sl_pg_batch_add(b, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $2)", 2, a1);
    sl_pg_batch_add(b, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $2)", 2, a2);
    sl_pg_batch_add(b, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $2)", 2, a3);
    CHECK(sl_pg_batch_exec(b, rec_cb, &f) == 0);
    f.returned = 1;
    CHECK(wait_int(&f.called, 1, 5000));
    CHECK(f.err == SL_EDB);
    CHECK(f.n == 0);
    CHECK(strcmp(f.sqlstate, "23505") == 0);
    CHECK(strstr(f.errmsg, "duplicate key") != NULL);
    CHECK(f.errmsg[strlen(f.errmsg) - 1] != '\n');

    /* statement 1 ran before the failure, but the batch is one transaction */
    const char *pk[] = {"atom1"};
    CHECK(query(pg, &q, "SELECT count(*) FROM sl_pg_test WHERE k = $1", 1, pk) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK(strcmp(q.val0[0], "0") == 0);
    const char *pk2[] = {"dup"};
    CHECK(query(pg, &q, "SELECT v FROM sl_pg_test WHERE k = $1", 1, pk2) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(strcmp(q.val0[0], "first") == 0);
}

/*
 * A batch that loses a deadlock (40P01) or a serialization race (40001) is
 * run again, at most 3 times, before its callback sees the error; other
 * errors are not retried.
 */
static void test_retry(sl_pg_t *pg)
{
    q_t q;
    char v[128], st[8];

    sql_scalar("DROP SEQUENCE IF EXISTS sl_pg_retry_seq", v, sizeof v);
    sql_scalar("CREATE SEQUENCE sl_pg_retry_seq", v, sizeof v);
    CHECK_STREQ(v, "<ok>");

    /* always 40001: one run and three re-runs (a sequence is not rolled back), then the error */
    q_t f = {0};
    sl_pg_batch_t *b = sl_pg_batch_new(pg);
    sl_pg_batch_add(b, "SELECT nextval('sl_pg_retry_seq')", 0, NULL);
    sl_pg_batch_add(b, "DO $$BEGIN RAISE EXCEPTION 'busy' USING ERRCODE = "
                       "'serialization_failure'; END$$",
                    0, NULL);
    CHECK(sl_pg_batch_exec(b, rec_cb, &f) == 0);
    f.returned = 1;
    CHECK(wait_int(&f.called, 1, 5000));
    CHECK_EQ(f.called, 1);
    CHECK(f.err == SL_EDB);
    CHECK_STREQ(f.sqlstate, "40001");
    sql_scalar("SELECT last_value FROM sl_pg_retry_seq", v, sizeof v);
    CHECK_STREQ(v, "4");

    /* another error: run once */
    memset(&f, 0, sizeof f);
    b = sl_pg_batch_new(pg);
    sl_pg_batch_add(b, "SELECT nextval('sl_pg_retry_seq')", 0, NULL);
    sl_pg_batch_add(b, "DO $$BEGIN RAISE EXCEPTION 'dup' USING ERRCODE = 'unique_violation'; END$$",
                    0, NULL);
    CHECK(sl_pg_batch_exec(b, rec_cb, &f) == 0);
    f.returned = 1;
    CHECK(wait_int(&f.called, 1, 5000));
    CHECK_STREQ(f.sqlstate, "23505");
    sql_scalar("SELECT last_value FROM sl_pg_retry_seq", v, sizeof v);
    CHECK_STREQ(v, "5");
    sql_scalar("DROP SEQUENCE sl_pg_retry_seq", v, sizeof v);

    /*
     * A real deadlock: the batch takes dl_b then waits for dl_a, which x holds;
     * x then wants dl_b. The batch waited longer, so its deadlock check runs
     * first and Postgres aborts it; x goes on and commits; the re-run then
     * succeeds, and the caller sees only that.
     */
    const char *p0[] = {"dl_a", "dl_b"};
    CHECK(query(pg, &q, "INSERT INTO sl_pg_test (k, v) VALUES ($1, '0'), ($2, '0')", 2, p0) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    PGconn *x = blocking_conn(), *watch = blocking_conn();
    CHECK(x && watch);
    if (!x || !watch)
        goto out;
    CHECK(exec_st(x, "BEGIN", st, sizeof st) == PGRES_COMMAND_OK);
    CHECK(exec_st(x, "UPDATE sl_pg_test SET v = 'x' WHERE k = 'dl_a'", st, sizeof st) ==
          PGRES_COMMAND_OK);
    memset(&f, 0, sizeof f);
    b = sl_pg_batch_new(pg);
    sl_pg_batch_add(b, "UPDATE sl_pg_test SET v = v || 'p' WHERE k = 'dl_b'", 0, NULL);
    sl_pg_batch_add(b, "UPDATE sl_pg_test SET v = v || 'p' WHERE k = 'dl_a'", 0, NULL);
    sl_pg_batch_add(b, "SELECT string_agg(v, ',' ORDER BY k) FROM sl_pg_test "
                       "WHERE k IN ('dl_a', 'dl_b')",
                    0, NULL);
    CHECK(sl_pg_batch_exec(b, rec_cb, &f) == 0);
    f.returned = 1;
    for (int i = 0; i < 5; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(wait_lock_wait(watch, 0, 5000));
    usleep(300000);
    CHECK(exec_st(x, "UPDATE sl_pg_test SET v = 'x' WHERE k = 'dl_b'", st, sizeof st) ==
          PGRES_COMMAND_OK); /* the batch was the one aborted */
    CHECK(exec_st(x, "COMMIT", st, sizeof st) == PGRES_COMMAND_OK);
    CHECK(wait_int(&f.called, 1, 5000));
    CHECK_EQ(f.called, 1);
    CHECK(f.err == 0);
    CHECK_STREQ(f.sqlstate, "");
    CHECK_STREQ(f.val0[2], "xp,xp"); /* ran after x's commit, once */
out:
    PQfinish(x);
    PQfinish(watch);
}

#define NCONC 200
static int conc_called, conc_ok, conc_sync;
typedef struct conc_s {
    int returned;
    char key[32];
} conc_t;

static void conc_cb(const sl_pg_result_t *r, void *arg)
{
    conc_t *c = arg;
    if (!c->returned)
        conc_sync++;
    conc_called++;
    if (r->err == 0 && r->n == 2 && PQntuples(r->res[1]) == 1 &&
        strcmp(PQgetvalue(r->res[1], 0, 0), c->key) == 0)
        conc_ok++;
}

static void test_concurrent(sl_pg_t *pg)
{
    static conc_t cs[NCONC];
    int max_queued = 0, max_busy = 0, total = 0;

    for (int i = 0; i < NCONC; i++) {
        snprintf(cs[i].key, sizeof cs[i].key, "conc-%03d", i);
        const char *p[] = {cs[i].key};
        sl_pg_batch_t *b = sl_pg_batch_new(pg);
        CHECK(sl_pg_batch_add(b, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $1)", 1, p) == 0);
        CHECK(sl_pg_batch_add(b, "SELECT v FROM sl_pg_test WHERE k = $1", 1, p) == 1);
        CHECK(sl_pg_batch_exec(b, conc_cb, &cs[i]) == 0);
        cs[i].returned = 1;
        int q = 0, busy = 0;
        sl_pg_stats(pg, &total, NULL, &busy, &q);
        if (q > max_queued)
            max_queued = q;
        if (busy > max_busy)
            max_busy = busy;
    }
    CHECK(total == 4);
    CHECK(max_busy == 4);
    CHECK(max_queued == NCONC - 4);
    CHECK(conc_called == 0);
    CHECK(wait_int(&conc_called, NCONC, 20000));
    CHECK(conc_called == NCONC);
    CHECK(conc_ok == NCONC);
    CHECK(conc_sync == 0);
    int q = -1, busy = -1;
    sl_pg_stats(pg, NULL, NULL, &busy, &q);
    CHECK(q == 0);
    CHECK(busy == 0);
    char v[32];
    sql_scalar("SELECT count(*) FROM sl_pg_test WHERE k LIKE 'conc-%'", v, sizeof v);
    CHECK(strcmp(v, "200") == 0);
}

static void test_params(sl_pg_t *pg)
{
    q_t q;
    const char *evil = "it's \"quoted\" \\ back'; DROP TABLE sl_pg_test; --";
    const char *p[] = {evil, NULL, "h\xc3\xa9llo\tworld\n", ""};
    CHECK(query(pg, &q, "SELECT $1::text, $2::text, $2::text IS NULL, $3::text, $4::text", 4, p) ==
          0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK(q.ncols == 5);
    CHECK(strcmp(q.cols[0], evil) == 0);
    CHECK(q.colnull[0] == 0);
    CHECK(q.colnull[1] == 1);
    CHECK(strcmp(q.cols[2], "t") == 0);
    CHECK(strcmp(q.cols[3], "h\xc3\xa9llo\tworld\n") == 0);
    CHECK(q.colnull[4] == 0);
    CHECK(strcmp(q.cols[4], "") == 0);

    /* stored and read back through a table too */
    const char *ins[] = {evil, NULL};
    CHECK(query(pg, &q, "INSERT INTO sl_pg_test (k, v) VALUES ($1, $2)", 2, ins) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    const char *sel[] = {evil};
    CHECK(query(pg, &q, "SELECT k, v IS NULL FROM sl_pg_test WHERE k = $1", 1, sel) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(strcmp(q.cols[0], evil) == 0);
    CHECK(strcmp(q.cols[1], "t") == 0);
    CHECK(q.sync_call == 0);

    /* a 2 MiB parameter: more than a socket buffer, so the send needs EV_WRITE rounds */
    size_t big_len = 2u << 20;
    char *big = malloc(big_len + 1);
    CHECK(big != NULL);
    if (big) {
        for (size_t i = 0; i < big_len; i++)
            big[i] = (char)('a' + i % 26);
        big[big_len] = '\0';
        const char *pb[] = {big};
        CHECK(query(pg, &q, "SELECT length($1::text), md5($1::text) = md5(repeat('x', 0))", 1,
                    pb) == 0);
        free(big); /* copied by the batch */
        CHECK(wait_int(&q.called, 1, 10000));
        CHECK(q.err == 0);
        CHECK(strcmp(q.cols[0], "2097152") == 0);
        CHECK(strcmp(q.cols[1], "f") == 0);
    }

    /* one statement per add: two in one string is a statement error, not a splice */
    CHECK(query(pg, &q, "SELECT 1; SELECT 2", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == SL_EDB);
    CHECK(strcmp(q.sqlstate, "42601") == 0);
}

/*
 * conninfo (keywords or a URI: SL_TEST_DATABASE_URL may be either) as
 * keyword='value' pairs, with kw set to val; values quoted as libpq reads them.
 */
static void conninfo_with(const char *kw, const char *val, char *out, size_t cap)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    size_t n = 0;
    out[0] = '\0';
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL && n < cap; o++) {
        const char *v = strcmp(o->keyword, kw) == 0 ? NULL : o->val;
        if (v == NULL || *v == '\0')
            continue;
        n += (size_t)snprintf(out + n, cap - n, "%s='", o->keyword);
        for (; *v && n + 3 < cap; v++) {
            if (*v == '\'' || *v == '\\')
                out[n++] = '\\';
            out[n++] = *v;
        }
        if (n + 2 < cap) {
            out[n++] = '\'';
            out[n++] = ' ';
            out[n] = '\0';
        }
    }
    PQconninfoFree(opts);
    if (n < cap)
        snprintf(out + n, cap - n, "%s='%s'", kw, val);
}

static void test_statement_timeout(void)
{
    sl_pg_t *pg = NULL;
    q_t q;

    CHECK(sl_pg_new(base, conninfo, 1, 150, &pg) == 0);
    CHECK(wait_ready(pg, 1, 5000));
    double t0 = now_ms();
    CHECK(query(pg, &q, "SELECT pg_sleep(5)", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(now_ms() - t0 < 3000);
    CHECK(q.err == SL_EDB);
    CHECK(strcmp(q.sqlstate, "57014") == 0);
    /* the connection survives a statement error */
    CHECK(query(pg, &q, "SELECT current_setting('statement_timeout')", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK(strcmp(q.val0[0], "150ms") == 0);
    /* every connection runs without JIT (build_options) */
    CHECK(query(pg, &q, "SELECT current_setting('jit')", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK(strcmp(q.val0[0], "off") == 0);
    sl_pg_free(pg);

    /* the caller's own options come after it: they may turn it back on */
    char ci[1024];
    conninfo_with("options", "-c jit=on", ci, sizeof ci);
    CHECK(sl_pg_new(base, ci, 1, 0, &pg) == 0);
    CHECK(wait_ready(pg, 1, 5000));
    CHECK(query(pg, &q, "SELECT current_setting('jit')", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK(strcmp(q.val0[0], "on") == 0);
    sl_pg_free(pg);
}

#define NCAP 10001
static int cap_called, cap_ok, cap_again;
static void cap_cb(const sl_pg_result_t *r, void *arg)
{
    cap_called++;
    if (r->err == 0)
        cap_ok++;
    else if (r->err == SL_EAGAIN)
        cap_again++;
}

/* Shared statements (sl_pg_query_shared): those that wait for a connection go
 * together in one transaction, each with its own result; a failing one is
 * split off and fails alone; freeing the pool cancels a carrier's every one. */
static int shared_query(sl_pg_t *pg, q_t *q, const char *name, const char *sql, int np,
                        const char *const *params)
{
    memset(q, 0, sizeof *q);
    int rc = sl_pg_query_shared(pg, name, sql, np, params, rec_cb, q);
    q->returned = 1;
    return rc;
}

static void test_shared(void)
{
    sl_pg_t *pg = NULL;
    q_t blocker, plain, sh[5];
    int queued = 0, busy = 0;

    CHECK(sl_pg_new(base, conninfo, 1, 5000, &pg) == 0);
    CHECK(wait_ready(pg, 1, 5000));

    /* 1. Five shared (one name, parsed once), a plain one queued among them. */
    CHECK(query(pg, &blocker, "SELECT pg_sleep(0.3)", 0, NULL) == 0);
    CHECK(shared_query(pg, &sh[0], "sl_test_share", "SELECT txid_current()::text", 0, NULL) == 0);
    CHECK(query(pg, &plain, "SELECT txid_current()::text", 0, NULL) == 0);
    for (int i = 1; i < 5; i++)
        CHECK(shared_query(pg, &sh[i], "sl_test_share", "SELECT txid_current()::text", 0, NULL) ==
              0);
    sl_pg_stats(pg, NULL, NULL, NULL, &queued);
    CHECK(queued == 6);
    CHECK(wait_int(&plain.called, 1, 5000));
    for (int i = 0; i < 5; i++) {
        CHECK(wait_int(&sh[i].called, 1, 5000));
        CHECK(sh[i].called == 1 && sh[i].sync_call == 0);
        CHECK(sh[i].err == 0 && sh[i].n == 1);
        CHECK(sh[i].val0[0][0] != '\0');
        CHECK_STREQ(sh[i].val0[0], sh[0].val0[0]); /* one transaction */
    }
    CHECK(plain.err == 0);
    CHECK(strcmp(plain.val0[0], sh[0].val0[0]) != 0); /* not in it */
    CHECK(sh[0].at <= plain.at); /* the carrier went first: it was at the head */

    /* 2. One fails: the others still commit, and only it reports the error. */
    const char *ka[] = {"share-a"}, *kb[] = {"share-b"}, *kc[] = {"share-c"};
    static const char ins[] = "INSERT INTO sl_pg_test VALUES ($1, 's') RETURNING k";
    CHECK(query(pg, &blocker, "SELECT pg_sleep(0.3)", 0, NULL) == 0);
    CHECK(shared_query(pg, &sh[0], "sl_test_share_ins", ins, 1, ka) == 0);
    CHECK(shared_query(pg, &sh[1], "sl_test_share_ins", ins, 1, kb) == 0);
    CHECK(shared_query(pg, &sh[2], "sl_test_share_bad", "SELECT 1/0", 0, NULL) == 0);
    CHECK(shared_query(pg, &sh[3], "sl_test_share_ins", ins, 1, kc) == 0);
    for (int i = 0; i < 4; i++)
        CHECK(wait_int(&sh[i].called, 1, 5000));
    CHECK(sh[0].err == 0 && sh[1].err == 0 && sh[3].err == 0);
    CHECK_STREQ(sh[0].val0[0], "share-a");
    CHECK_STREQ(sh[1].val0[0], "share-b");
    CHECK_STREQ(sh[3].val0[0], "share-c");
    CHECK(sh[2].err == SL_EDB && sh[2].called == 1);
    CHECK_STREQ(sh[2].sqlstate, "22012");
    char v[64];
    sql_scalar("SELECT count(*) FROM sl_pg_test WHERE k LIKE 'share-%'", v, sizeof v);
    CHECK_STREQ(v, "3");

    /* 3. Freeing the pool with a carrier in flight cancels each of its statements. */
    CHECK(query(pg, &blocker, "SELECT 1", 0, NULL) == 0);
    for (int i = 0; i < 3; i++)
        CHECK(shared_query(pg, &sh[i], "sl_test_share_sleep", "SELECT pg_sleep(0.5)", 0, NULL) ==
              0);
    CHECK(wait_int(&blocker.called, 1, 5000));
    event_base_loop(base, EVLOOP_NONBLOCK);
    sl_pg_stats(pg, NULL, NULL, &busy, &queued);
    CHECK(busy == 1 && queued == 0); /* the three went out together */
    sl_pg_free(pg);
    for (int i = 0; i < 3; i++) {
        CHECK(wait_int(&sh[i].called, 1, 2000));
        CHECK(sh[i].err == SL_ECANCELED);
    }
}

static void test_queue_cap(void)
{
    sl_pg_t *pg = NULL;
    int queued = 0;

    CHECK(sl_pg_new(base, conninfo, 4, 5000, &pg) == 0);
    CHECK(sl_pg_ready(pg) == 0); /* connecting starts on a later turn */
    /* before the first connections are up, batches queue (start-up grace) */
    int rcs = 0;
    for (int i = 0; i < NCAP; i++)
        rcs |= sl_pg_query(pg, "SELECT 1", 0, NULL, cap_cb, NULL);
    CHECK(rcs == 0);
    sl_pg_stats(pg, NULL, NULL, NULL, &queued);
    CHECK(queued == NCAP - 1);
    CHECK(cap_called == 0);
    CHECK(wait_int(&cap_called, NCAP, 60000));
    CHECK(cap_again == 1);
    CHECK(cap_ok == NCAP - 1);
    sl_pg_free(pg);
}

static int cancel_called, cancel_canceled;
static void cancel_cb(const sl_pg_result_t *r, void *arg)
{
    cancel_called++;
    if (r->err == SL_ECANCELED && strlen(r->errmsg) > 0)
        cancel_canceled++;
}

static void test_free_cancels(void)
{
    sl_pg_t *pg = NULL;
    int busy = 0, queued = 0;

    CHECK(sl_pg_new(base, conninfo, 2, 5000, &pg) == 0);
    CHECK(wait_ready(pg, 2, 5000));
    for (int i = 0; i < 6; i++)
        CHECK(sl_pg_query(pg, "SELECT pg_sleep(0.5)", 0, NULL, cancel_cb, NULL) == 0);
    sl_pg_stats(pg, NULL, NULL, &busy, &queued);
    CHECK(busy == 2);
    CHECK(queued == 4);
    sl_pg_free(pg);
    CHECK(cancel_called == 0); /* on a later turn */
    CHECK(wait_int(&cancel_called, 6, 2000));
    CHECK(cancel_canceled == 6);
}

static void test_unreachable(void)
{
    sl_pg_t *pg = NULL;
    q_t q1, q2;

    CHECK(sl_pg_new(base, "host=/nonexistent-sl-dir port=1", 2, 1000, &pg) == 0);
    /* queued during the first attempts, failed when they all fail */
    CHECK(query(pg, &q1, "SELECT 1", 0, NULL) == 0);
    CHECK(wait_int(&q1.called, 1, 3000));
    CHECK(q1.err == SL_EUNAVAIL);
    CHECK(q1.sync_call == 0);
    CHECK(sl_pg_ready(pg) == 0);
    /* now failing at once (on the next turn) */
    double t0 = now_ms();
    CHECK(query(pg, &q2, "SELECT 1", 0, NULL) == 0);
    CHECK(q2.called == 0);
    CHECK(wait_int(&q2.called, 1, 3000));
    CHECK(q2.at - t0 < 100);
    CHECK(q2.err == SL_EUNAVAIL);
    CHECK(strcmp(q2.errmsg, "database unavailable") == 0);
    CHECK(q2.n == 0);
    sl_pg_free(pg);
}

/*
 * Stops the server under a live pool and starts it again. It runs on a
 * throwaway cluster of its own, whatever SL_TEST_DATABASE_URL says, so it runs
 * in CI too (where the shared server must not be stopped).
 */
static void test_outage(void)
{
    pgtmp_t own;
    char ci[512], v[64];
    sl_pg_t *pg = NULL;
    q_t inflight, q;
    int up = -1;

    if (pgtmp_setup(&own, OUTAGE_DIR, OUTAGE_PORT, ci, sizeof ci) != 0) {
        fprintf(stderr, "could not start the outage test's throwaway Postgres\n");
        CHECK(!"outage postgres");
        pgtmp_teardown(&own);
        return;
    }
    pgtmp_sql_scalar(ci, "CREATE TABLE sl_pg_test (k text PRIMARY KEY, v text)", v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    pgtmp_sql_scalar(ci, "INSERT INTO sl_pg_test VALUES ('three', '3')", v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    CHECK_EQ(sl_pg_new(base, ci, 4, 5000, &pg), 0);
    if (pg == NULL) {
        pgtmp_teardown(&own);
        return;
    }
    CHECK(wait_ready(pg, 4, 5000));
    CHECK(query(pg, &inflight, "SELECT pg_sleep(30)", 0, NULL) == 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK_EQ(pgtmp_stop(&own, "fast"), 0);

    /* the batch on the broken connection fails, the pool notices it is down */
    CHECK(wait_int(&inflight.called, 1, 5000));
    CHECK(inflight.err == SL_EUNAVAIL);
    CHECK(wait_not_ready(pg, 5000));
    sl_pg_stats(pg, NULL, &up, NULL, NULL);
    CHECK(up == 0);

    double t0 = now_ms();
    CHECK(query(pg, &q, "SELECT 1", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 2000));
    CHECK(q.at - t0 < 200);
    CHECK(q.err == SL_EUNAVAIL);
    CHECK(strcmp(q.errmsg, "database unavailable") == 0);
    CHECK(q.sync_call == 0);

    /* stay down through a few backoff rounds, then come back */
    double until = now_ms() + 1500;
    while (now_ms() < until)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK(sl_pg_ready(pg) == 0);
    CHECK_EQ(pgtmp_start(&own), 0);
    t0 = now_ms();
    CHECK(wait_ready(pg, 1, 10000));
    CHECK(now_ms() - t0 < 7000);
    CHECK(query(pg, &q, "SELECT count(*) FROM sl_pg_test WHERE k = 'three'", 0, NULL) == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.err == 0);
    CHECK_STREQ(q.val0[0], "1");
    CHECK(wait_ready(pg, 4, 10000));
    sl_pg_free(pg);
    event_base_loop(base, EVLOOP_NONBLOCK);
    pgtmp_teardown(&own);
}

int main(void)
{
    const char *url = getenv("SL_TEST_DATABASE_URL");
    sl_pg_t *pg = NULL;
    q_t q;
    char v[64];

    if (url && *url) {
        snprintf(conninfo, sizeof conninfo, "%s", url);
    } else if (pgtmp_setup(&pgt, TEST_DIR, TEST_PORT, conninfo, sizeof conninfo) != 0) {
        fprintf(stderr, "could not start a throwaway Postgres\n");
        CHECK(!"postgres");
        pgtmp_teardown(&pgt);
        return check_summary();
    }
    base = event_base_new();
    tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 20000};
    event_add(tick, &tv); /* EVLOOP_ONCE always returns within 20 ms */

    test_migrate();
    test_functions();
    test_functions_upgrade();
    test_engine_sql();
    test_delete_vs_transition();
    test_record_versions(); /* provenance (011) */
    sql_scalar("DROP TABLE IF EXISTS sl_pg_test", v, sizeof v);
    sql_scalar("CREATE TABLE sl_pg_test (k text PRIMARY KEY, v text)", v, sizeof v);
    CHECK(strcmp(v, "<ok>") == 0);

    CHECK(sl_pg_new(base, conninfo, 4, 5000, &pg) == 0);
    CHECK(sl_pg_ready(pg) == 0);
    /* a query before the pool is up waits for it, and is never answered synchronously */
    CHECK(query(pg, &q, "SELECT 41 + 1", 0, NULL) == 0);
    CHECK(q.called == 0);
    CHECK(wait_int(&q.called, 1, 5000));
    CHECK(q.sync_call == 0);
    CHECK(q.err == 0);
    CHECK(strcmp(q.val0[0], "42") == 0);
    CHECK(wait_ready(pg, 4, 5000));
    CHECK(sl_pg_ready(pg) == 1);

    test_args(pg);
    test_three(pg);
    test_prepared(pg);
    test_atomic(pg);
    test_retry(pg);
    test_concurrent(pg);
    test_params(pg);
    test_statement_timeout();
    test_shared();
    test_queue_cap();
    test_free_cancels();
    test_unreachable();
    test_outage();

    sl_pg_free(pg);
    event_base_loop(base, EVLOOP_NONBLOCK);
    sql_scalar("DROP TABLE IF EXISTS sl_pg_test", v, sizeof v);
    event_free(tick);
    event_base_free(base);
    pgtmp_teardown(&pgt);
    return check_summary();
}
