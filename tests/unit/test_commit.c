/* test_commit: the group commit of run transitions (actors/commit.c,
 * sluice_run_transitions in db/functions/run_transition.sql) against a real
 * Postgres: SL_TEST_DATABASE_URL, or a throwaway one (pgtmp.h).
 *
 * - transitions that wait while a group is in flight leave together, in one
 *   transaction (their rows share an xmin), each group at most
 *   SL_COMMIT_GROUP_MAX;
 * - a lost lease in a group is that run's alone: it writes nothing and learns
 *   held = 0, the others commit;
 * - a group that fails in a statement (one member's ctx is not JSON) is split:
 *   only that member fails;
 * - the events of a group get their seqs in group order, each run's in its
 *   own order;
 * - tenants take turns: one tenant's transition queued behind another's
 *   backlog leaves in the next group;
 * - a group never waits for another's dataset: a transition whose dataset
 *   is in a group in flight waits for the next group, one of another dataset
 *   goes out at once beside it;
 * - freeing the pool fails what is in flight and what waits, once each.
 */
#include "actors/commit.h"
#include "core/err.h"
#include "db/pg.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "looptest.h"
#include "pgtmp.h"

#define TEST_DIR "/tmp/sl_commit_pg_XXXXXX"
#define TEST_PORT "55439"
#define NRUNS 320

static char conninfo[512];
static pgtmp_t pgt;
static struct event_base *base;
static char tenant[37];
static char runs[NRUNS][37];
static char datasets[NRUNS][37]; /* each run's */

typedef struct outcome_s {
    int done, err, held;
} outcome_t;
static outcome_t out[NRUNS + 8];
static int ndone;

static void sql(const char *q, char *v, size_t cap)
{
    pgtmp_sql_scalar(conninfo, q, v, cap);
}

static void done_cb(int err, int held, const char *errmsg, void *arg)
{
    outcome_t *o = arg;
    (void)errmsg;
    o->done++;
    o->err = err;
    o->held = held;
    ndone++;
}

static const char *submit_tenant; /* the tenant submit() names, or NULL */
static int submit_datasets;       /* submit() names each run's dataset */

static int submit(sl_commit_t *c, int i, const char *ctx, const char *state, outcome_t *o)
{
    char events[160];
    snprintf(events, sizeof events,
             "[{\"step\":\"s\",\"kind\":\"k%d_a\"},{\"step\":\"s\",\"kind\":\"k%d_b\",\"detail\":"
             "{\"n\":%d}}]",
             i, i, i);
    sl_commit_tr_t t = {.run_id = runs[i],
                        .tenant_id = submit_tenant,
                        .dataset_id = submit_datasets ? datasets[i] : NULL,
                        .step = "s",
                        .attempt = 1,
                        .ctx_json = ctx,
                        .state = state,
                        .word = strcmp(state, "succeeded") == 0 ? "why" : NULL,
                        .flow_version = "v1",
                        .events_json = events};
    return sl_commit_submit(c, &t, NULL, done_cb, o);
}

/* How many distinct transactions wrote runs[from..to) but `skip` (their rows' xmin). */
static int xacts_but(int from, int to, int skip)
{
    char q[16384], v[64];
    int off = snprintf(q, sizeof q, "SELECT count(DISTINCT xmin::text) FROM runs WHERE id IN (");
    int first = 1;
    for (int i = from; i < to; i++)
        if (i != skip) {
            off += snprintf(q + off, sizeof q - off, "%s'%s'", first ? "" : ",", runs[i]);
            first = 0;
        }
    snprintf(q + off, sizeof q - off, ")");
    sql(q, v, sizeof v);
    return atoi(v);
}

static int xacts(int from, int to)
{
    return xacts_but(from, to, -1);
}

/* Column `col` of every run of the tenant, in file order, into ids[NRUNS]. */
static int read_ids(const char *col, char (*ids)[37])
{
    char q[512], v[NRUNS * 37 + 64];
    snprintf(q, sizeof q,
             "SELECT string_agg(%s::text, ',' ORDER BY f.seq) FROM runs r JOIN files f ON "
             "f.id = r.file_id WHERE r.tenant_id = '%s'",
             col, tenant);
    sql(q, v, sizeof v);
    if (strlen(v) != NRUNS * 37 - 1)
        return -1;
    for (int i = 0; i < NRUNS; i++)
        snprintf(ids[i], 37, "%.36s", v + i * 37);
    return 0;
}

static int setup(void)
{
    char q[2048], v[NRUNS * 37 + 64];
    snprintf(q, sizeof q,
             "WITH t AS (INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'committest') "
             "RETURNING id), d AS (INSERT INTO datasets (id, tenant_id, name, record_schema) "
             "SELECT gen_random_uuid(), t.id, 'd' || i, '{}' FROM t, generate_series(1, 2) i "
             "RETURNING id, tenant_id) SELECT tenant_id FROM d LIMIT 1");
    sql(q, tenant, sizeof tenant);
    if (strlen(tenant) != 36)
        return -1;
    snprintf(q, sizeof q,
             "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
             "storage_key) SELECT gen_random_uuid(), '%s', (SELECT id FROM datasets WHERE "
             "tenant_id = '%s' ORDER BY name OFFSET i %% 2 LIMIT 1), gen_random_uuid(), "
             "'f' || i, 1, 'x', 'text/plain', 'k' || i FROM generate_series(1, %d) i",
             tenant, tenant, NRUNS);
    sql(q, v, sizeof v);
    if (strcmp(v, "<ok>") != 0)
        return -1;
    snprintf(q, sizeof q,
             "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, state, "
             "lease_owner, lease_until) SELECT gen_random_uuid(), tenant_id, dataset_id, id, "
             "batch_id, 'p', 'running', 'me', now() + interval '1 hour' FROM files "
             "WHERE tenant_id = '%s'",
             tenant);
    sql(q, v, sizeof v);
    if (read_ids("r.id", runs) != 0 || read_ids("r.dataset_id", datasets) != 0)
        return -1;
    return 0;
}

/* A group with a lost lease, and the order of its seqs. */
static void test_group_and_lost_lease(sl_pg_t *pg)
{
    char q[1024], v[256];
    sl_commit_t *c = sl_commit_acquire(base, pg, "me");
    CHECK(c != NULL);
    CHECK(sl_commit_acquire(base, pg, "me") == c); /* shared */
    sl_commit_release(c);

    snprintf(q, sizeof q, "UPDATE runs SET lease_owner = 'thief' WHERE id = '%s'", runs[2]);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "<ok>");
    ndone = 0;
    /* 0 goes out alone (a pool of 2: one group in flight); 1..7 wait and leave together */
    for (int i = 0; i < 8; i++)
        CHECK(submit(c, i, "{\"i\":1}", i == 5 ? "succeeded" : "running", &out[i]) == 0);
    CHECK_EQ(ndone, 0); /* never inside the submit */
    looptest_run_until(base, &ndone, 8, 10.0);
    CHECK_EQ(ndone, 8);
    for (int i = 0; i < 8; i++) {
        CHECK_EQ(out[i].done, 1);
        CHECK_EQ(out[i].err, 0);
        CHECK_EQ(out[i].held, i != 2);
    }
    CHECK_EQ(xacts(0, 1), 1);
    CHECK_EQ(xacts_but(1, 8, 2), 1); /* one transaction for the group (2's row is the thief's) */
    CHECK_EQ(xacts_but(0, 8, 2), 2);
    /* the lost one: untouched, no events */
    snprintf(q, sizeof q,
             "SELECT (SELECT count(*) FROM run_events WHERE run_id = '%s') || ' ' || "
             "coalesce(step, '-') || ' ' || lease_owner FROM runs WHERE id = '%s'",
             runs[2], runs[2]);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "0 - thief");
    /* the others: their row and their events, each dataset's places in group order (runs
     * 1, 3, 5, 7 are in d1, the even ones in d2), each run's in order */
    snprintf(q, sizeof q,
             "SELECT string_agg(e.kind, ' ' ORDER BY d.name, e.seq) FROM run_events e JOIN "
             "datasets d ON d.id = e.dataset_id WHERE e.run_id IN "
             "(SELECT id FROM runs WHERE tenant_id = '%s')",
             tenant);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "k1_a k1_b k3_a k3_b k5_a k5_b k7_a k7_b k0_a k0_b k4_a k4_b k6_a k6_b");
    /* the places: dense from 1 per dataset, and each dataset's last place is its count */
    snprintf(q, sizeof q,
             "SELECT string_agg(x, ' / ' ORDER BY name) FROM (SELECT d.name, d.event_seq || ': ' "
             "|| string_agg(e.seq::text, ' ' ORDER BY e.seq) AS x FROM datasets d JOIN run_events "
             "e ON e.dataset_id = d.id WHERE d.tenant_id = '%s' GROUP BY d.name, d.event_seq) y",
             tenant);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "8: 1 2 3 4 5 6 7 8 / 6: 1 2 3 4 5 6");
    snprintf(q, sizeof q,
             "SELECT state || ' ' || note || ' ' || flow_version || ' ' || (lease_owner IS NULL) "
             "|| ' ' || step || ' ' || (ctx->>'i') FROM runs WHERE id = '%s'",
             runs[5]);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "succeeded why v1 true s 1");
    snprintf(q, sizeof q,
             "SELECT state || ' ' || lease_owner || ' ' || attempt FROM runs WHERE id = '%s'",
             runs[4]);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "running me 1");
    sl_commit_release(c);
}

/* One member's ctx is not JSON: the group is split and only it fails. */
static void test_split(sl_pg_t *pg)
{
    sl_commit_t *c = sl_commit_acquire(base, pg, "me");
    ndone = 0;
    memset(out, 0, sizeof out);
    CHECK(submit(c, 10, "{}", "running", &out[10]) == 0); /* in flight */
    CHECK(submit(c, 11, "{}", "running", &out[11]) == 0);
    CHECK(submit(c, 12, "{not json", "running", &out[12]) == 0);
    CHECK(submit(c, 13, "{}", "running", &out[13]) == 0);
    looptest_run_until(base, &ndone, 4, 10.0);
    CHECK_EQ(ndone, 4);
    CHECK(out[10].err == 0 && out[10].held == 1);
    CHECK(out[11].err == 0 && out[11].held == 1 && out[11].done == 1);
    CHECK(out[12].err == SL_EDB && out[12].held == 0 && out[12].done == 1);
    CHECK(out[13].err == 0 && out[13].held == 1 && out[13].done == 1);
    char q[256], v[64];
    snprintf(q, sizeof q, "SELECT count(*) FROM run_events WHERE run_id = '%s'", runs[12]);
    sql(q, v, sizeof v);
    CHECK_STREQ(v, "0");
    sl_commit_release(c);
}

/* Many at once: all commit, in groups of at most SL_COMMIT_GROUP_MAX. */
static void test_bounds(sl_pg_t *pg)
{
    sl_commit_t *c = sl_commit_acquire(base, pg, "me");
    ndone = 0;
    memset(out, 0, sizeof out);
    int from = 20, n = 300; /* 1 alone, then full groups, then the rest */
    for (int i = from; i < from + n; i++)
        CHECK(submit(c, i, "{}", "running", &out[i]) == 0);
    looptest_run_until(base, &ndone, n, 20.0);
    CHECK_EQ(ndone, n);
    int ok = 0;
    for (int i = from; i < from + n; i++)
        ok += out[i].done == 1 && out[i].err == 0 && out[i].held == 1;
    CHECK_EQ(ok, n);
    CHECK_EQ(xacts(from, from + 1), 1);
    CHECK_EQ(xacts(from + 1, from + 1 + SL_COMMIT_GROUP_MAX), 1);
    CHECK_EQ(xacts(from, from + n), 1 + (n - 1 + SL_COMMIT_GROUP_MAX - 1) / SL_COMMIT_GROUP_MAX);
    char q[256], v[64];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM run_events WHERE run_id IN (SELECT id FROM runs "
             "WHERE tenant_id = '%s')",
             tenant);
    sql(q, v, sizeof v);
    CHECK_EQ(atoi(v), 2 * (7 + 3 + n));
    sl_commit_release(c);
}

/* Two runs' transaction ids are the same (the same group). */
static int same_xact(int a, int b)
{
    char q[256], v[64];
    snprintf(q, sizeof q,
             "SELECT (SELECT xmin::text FROM runs WHERE id = '%s') = "
             "(SELECT xmin::text FROM runs WHERE id = '%s')",
             runs[a], runs[b]);
    sql(q, v, sizeof v);
    return strcmp(v, "t") == 0;
}

/* Tenants take turns: B's one transition, queued behind 200 of A's, leaves in
 * the next group, not after A's backlog (three groups later). */
static void test_tenant_turns(sl_pg_t *pg)
{
    sl_commit_t *c = sl_commit_acquire(base, pg, "me");
    ndone = 0;
    memset(out, 0, sizeof out);
    const char *a = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
               *b = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
    submit_tenant = a;
    CHECK(submit(c, 221, "{}", "running", &out[221]) == 0); /* in flight: the rest waits */
    for (int i = 20; i < 220; i++)
        CHECK(submit(c, i, "{}", "running", &out[i]) == 0);
    submit_tenant = b;
    CHECK(submit(c, 220, "{}", "running", &out[220]) == 0);
    submit_tenant = NULL;
    looptest_run_until(base, &ndone, 202, 20.0);
    CHECK_EQ(ndone, 202);
    CHECK(same_xact(220, 20));  /* B with A's oldest, in the group after the lone one */
    CHECK(!same_xact(221, 20)); /* (which left alone) */
    CHECK(same_xact(20, 20 + SL_COMMIT_GROUP_MAX - 2));  /* A's 63 oldest */
    CHECK(!same_xact(20, 20 + SL_COMMIT_GROUP_MAX - 1)); /* the 64th waits */
    sl_commit_release(c);
}

/* Datasets in flight, with two groups in flight at most (a pool of 4): x
 * leaves alone; y, of x's dataset, waits for x's group; z, of the other
 * dataset, leaves at once beside it; w, of x's dataset, waits (two in
 * flight) and leaves with y once x's group is back. Without the rule y left
 * beside x, to wait there for x's commit, and z went with w. */
static void test_datasets_in_flight(void)
{
    sl_pg_t *pg = NULL;
    CHECK(sl_pg_new(base, conninfo, 4, 0, &pg) == 0);
    sl_commit_t *c = sl_commit_acquire(base, pg, "me");
    ndone = 0;
    memset(out, 0, sizeof out);
    int x = 14, y = -1, z = -1, w = -1;
    for (int i = 15; i < 20; i++) {
        if (strcmp(datasets[i], datasets[x]) != 0)
            z = z < 0 ? i : z;
        else if (y < 0)
            y = i;
        else if (w < 0)
            w = i;
    }
    CHECK(y > 0 && z > 0 && w > 0);
    if (y < 0 || z < 0 || w < 0) {
        sl_commit_release(c);
        sl_pg_free(pg);
        return;
    }
    submit_datasets = 1;
    CHECK(submit(c, x, "{}", "running", &out[x]) == 0);
    CHECK(submit(c, y, "{}", "running", &out[y]) == 0);
    CHECK(submit(c, z, "{}", "running", &out[z]) == 0);
    CHECK(submit(c, w, "{}", "running", &out[w]) == 0);
    submit_datasets = 0;
    looptest_run_until(base, &ndone, 4, 10.0);
    CHECK_EQ(ndone, 4);
    CHECK(out[x].held == 1 && out[y].held == 1 && out[z].held == 1 && out[w].held == 1);
    CHECK(same_xact(y, w));
    CHECK(!same_xact(x, y));
    CHECK(!same_xact(z, y) && !same_xact(z, x));
    sl_commit_release(c);
    sl_pg_free(pg);
    event_base_loop(base, EVLOOP_NONBLOCK);
}

/* The pool freed with a group in flight and one waiting: both fail, once. */
static void test_pool_freed(void)
{
    sl_pg_t *pg = NULL;
    CHECK(sl_pg_new(base, conninfo, 2, 0, &pg) == 0);
    sl_commit_t *c = sl_commit_acquire(base, pg, "me");
    ndone = 0;
    memset(out, 0, sizeof out);
    CHECK(submit(c, 0, "{}", "running", &out[0]) == 0);
    CHECK(submit(c, 1, "{}", "running", &out[1]) == 0);
    sl_pg_free(pg);
    looptest_run_until(base, &ndone, 2, 5.0);
    CHECK_EQ(ndone, 2);
    CHECK(out[0].done == 1 && out[0].err == SL_ECANCELED);
    CHECK(out[1].done == 1 && out[1].err == SL_ECANCELED);
    /* a new pool gets a new committer, even at the same address */
    sl_commit_release(c);
}

int main(void)
{
    char err[512];
    const char *url = getenv("SL_TEST_DATABASE_URL");
    if (url && *url) {
        snprintf(conninfo, sizeof conninfo, "%s", url);
    } else if (pgtmp_setup(&pgt, TEST_DIR, TEST_PORT, conninfo, sizeof conninfo) != 0) {
        fprintf(stderr, "could not start a throwaway Postgres\n");
        return 1;
    }
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    if (err[0])
        fprintf(stderr, "migrate: %s\n", err);
    base = event_base_new();
    sl_pg_t *pg = NULL;
    CHECK(setup() == 0);
    CHECK(sl_pg_new(base, conninfo, 2, 0, &pg) == 0);
    if (!failed) {
        test_group_and_lost_lease(pg);
        test_split(pg);
        test_bounds(pg);
        test_tenant_turns(pg);
        test_datasets_in_flight();
    }
    sl_pg_free(pg);
    event_base_loop(base, EVLOOP_NONBLOCK);
    test_pool_freed();
    char q[128], v[64];
    snprintf(q, sizeof q, "DELETE FROM tenants WHERE id = '%s'", tenant);
    sql(q, v, sizeof v);
    event_base_free(base);
    pgtmp_teardown(&pgt);
    return check_summary();
}
