"""The claim's shares, straight against the database (no engine running):
sluice_claim_runs (db/functions/claim.sql) on a migrated database with runs
seeded by SQL. Work-conserving (a lone tenant takes every slot), a newcomer
first, weights, cost by file size, upload batches round-robin, the hard
ceiling max_runs_per_tenant; and the claim's plan and time with 100,000 runs
queued (printed: `-s`; the figures in docs/internals/scheduler.md come from
here).
"""
import re
import subprocess
import uuid

import pytest

from sluice_harness import sluice_binary


@pytest.fixture
def db(pg, migrated_db):
    return lambda sql: pg.psql(sql, dbname=migrated_db)


def tenant(db, name):
    tid, did = str(uuid.uuid4()), str(uuid.uuid4())
    db("INSERT INTO tenants (id, name) VALUES ('%s', '%s');"
       "INSERT INTO datasets (id, tenant_id, name, record_schema) VALUES ('%s', '%s', 'd', '{}')"
       % (tid, name, did, tid))
    return tid, did


def queue(db, t, n, size=100, state="queued", lease="NULL", owner="NULL"):
    """n runs of tenant t in one new upload batch (files of `size` bytes); returns the batch id."""
    tid, did = t
    bid = str(uuid.uuid4())
    db("WITH f AS (INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, "
       "mime, storage_key) SELECT gen_random_uuid(), '{t}', '{d}', '{b}', 'f' || g, {size}, 'x', "
       "'text/plain', 'k' || g FROM generate_series(1, {n}) g RETURNING id, created_at) "
       "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, state, "
       "lease_until, lease_owner) SELECT gen_random_uuid(), '{t}', '{d}', f.id, '{b}', 'p', "
       "'{state}', {lease}, {owner} FROM f ORDER BY f.created_at"
       .format(t=tid, d=did, b=bid, n=n, size=size, state=state, lease=lease, owner=owner))
    return bid


def claim(db, limit, per_tenant=0, weights="{}", owner="me", shares=True):
    """Claims; returns the claimed runs' tenant ids (in no particular order)."""
    out = db("SELECT tenant_id FROM sluice_claim_runs('%s', %d, 30, %d, '%s', %s)"
             % (owner, limit, per_tenant, weights, "true" if shares else "false"))
    return out.split()


def test_lone_tenant_takes_every_slot_and_the_ceiling_still_holds(db):
    a = tenant(db, "a")
    queue(db, a, 300)
    # work-conserving: alone, a tenant gets all it asks for (the old cap was 16)
    assert len(claim(db, 200)) == 200
    assert len(claim(db, 200)) == 100
    b = tenant(db, "b")
    queue(db, b, 50)
    # max_runs_per_tenant > 0 is a hard ceiling on what this instance holds (x weight)
    assert len(claim(db, 200, per_tenant=16, owner="other")) == 16
    assert len(claim(db, 200, per_tenant=16, owner="other")) == 0
    assert len(claim(db, 200, per_tenant=16, owner="third")) == 16
    assert len(claim(db, 200, per_tenant=8, weights='{"b": 3}', owner="fourth")) == 18


def test_newcomer_goes_ahead_of_a_busy_tenant(db):
    a = tenant(db, "a")
    queue(db, a, 40, state="running", lease="now() + interval '1 hour'", owner="'elsewhere'")
    queue(db, a, 500)
    b = tenant(db, "b")
    queue(db, b, 3)
    # fairness.shares: false is oldest first: A's queue goes before B's newer runs
    got = claim(db, 5, owner="fifo", shares=False)
    db("UPDATE runs SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
       "started_at = NULL WHERE lease_owner = 'fifo'")
    assert got == [a[0]] * 5, got
    # A holds 40 in flight (on another instance: shares count every instance);
    # B's three runs have start tags 0, 1, 2, A's next one 40
    assert sorted(claim(db, 2)) == [b[0]] * 2
    got = claim(db, 10)
    assert got.count(b[0]) == 1 and got.count(a[0]) == 9, got
    # a lease that lapsed is not in flight: it is runnable again, and claimed first
    db("UPDATE runs SET lease_until = now() - interval '1 second' WHERE lease_owner = 'elsewhere'")
    got = claim(db, 40, owner="late")
    assert got == [a[0]] * 40
    assert int(db("SELECT count(*) FROM runs WHERE lease_owner = 'elsewhere'")) == 0


def test_shares_config_is_checked(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text('database_url: "postgresql:///nowhere"\nfairness: {shares: maybe}\n')
    r = subprocess.run([str(sluice_binary()), "migrate", "--config", str(cfg)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "fairness.shares" in r.stderr, r.stderr
    cfg.write_text('database_url: "postgresql:///nowhere"\nlimits: {max_runs_per_tenant: -1}\n')
    r = subprocess.run([str(sluice_binary()), "migrate", "--config", str(cfg)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 2 and "max_runs_per_tenant" in r.stderr, (r.returncode, r.stderr)


def test_weights_split_the_slots(db):
    a, b = tenant(db, "a"), tenant(db, "b")
    queue(db, a, 100)
    queue(db, b, 100)
    got = claim(db, 30, weights='{"a": 2}')
    assert got.count(a[0]) == 20 and got.count(b[0]) == 10, got
    # then equal weights: B is behind (10 vs 20 in flight) and gets the next 10 first
    got = claim(db, 10)
    assert got.count(b[0]) == 10, got


def test_cost_weighs_big_files(db):
    a, b = tenant(db, "a"), tenant(db, "b")
    queue(db, a, 100, size=64 << 20)   # cost 8 each (sluice_run_cost)
    queue(db, b, 100, size=10 << 10)   # cost 1 each
    assert db("SELECT sluice_run_cost(0), sluice_run_cost(1048575), sluice_run_cost(1048576), "
              "sluice_run_cost(64 << 20), sluice_run_cost(1099511627776)").strip() == "1|1|2|8|16"
    # start tags: A 0, 8, 16...; B 0, 1, ..., 15: 18 runs under 16
    got = claim(db, 18)
    assert got.count(a[0]) == 2 and got.count(b[0]) == 16, got
    held = db("SELECT tenant_id, sum(cost) FROM runs WHERE state = 'running' GROUP BY 1")
    assert "%s|16" % a[0] in held and "%s|16" % b[0] in held, held


def test_batches_of_a_tenant_round_robin(db):
    a = tenant(db, "a")
    b1 = queue(db, a, 100)
    assert len(claim(db, 50)) == 50
    # a second upload joins at the tenant's head (fair_rank 51), not behind the
    # first upload's 50 left
    b2 = queue(db, a, 10)
    db("UPDATE runs SET lease_owner = NULL, lease_until = NULL, state = 'succeeded' "
       "WHERE state = 'running'")
    claimed = db("SELECT batch_id FROM runs WHERE id IN (SELECT id FROM "
                 "sluice_claim_runs('me', 10, 30, 0, '{}'))").split()
    assert claimed.count(b1) == 5 and claimed.count(b2) == 5, claimed


def test_queue_runs_ranks_as_the_trigger_does(db):
    """sluice_queue_runs (an upload's runs, ranked and costed for the whole
    batch at once) gives every run the cost and fair_rank that the row-by-row
    trigger gives the same rows after the same history: a tenant whose head
    moved (50 of 100 done), a new batch, then more runs of that batch."""
    sizes = [100, 2 << 20, 64 << 20, 0, 1 << 20, 5, 3 << 30]

    def history(t):
        queue(db, t, 100)
        db("UPDATE runs SET state = 'succeeded' WHERE tenant_id = '%s' AND fair_rank <= 50"
           % t[0])

    def files(t, bid, tag):
        db("INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
           "storage_key) SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid"
           " , '%s', '%s', '%s', 'f', (ARRAY%s)[g - %d], 'x', 'text/plain', 'k' FROM "
           "generate_series(%d, %d) g" % (t[0], t[1], bid, sizes, tag, tag + 1, tag + len(sizes)))

    def ranks(bid):
        return db("SELECT fair_rank, cost FROM runs WHERE batch_id = '%s' ORDER BY fair_rank"
                  % bid).split()

    a, b = tenant(db, "a"), tenant(db, "b")
    history(a)
    history(b)
    ba, bb = str(uuid.uuid4()), str(uuid.uuid4())
    for part in (0, 1):  # a new batch, then the same batch again (its last rank counts)
        tag_a, tag_b = 1000 + 100 * part, 5000 + 100 * part
        files(a, ba, tag_a)
        files(b, bb, tag_b)
        runs = ",".join('{"id": "%s", "file_id": "00000000-0000-4000-8000-%012d", '
                        '"pipeline": "p", "size": %d}' % (uuid.uuid4(), tag_a + i + 1, sz)
                        for i, sz in enumerate(sizes))
        db("SELECT sluice_queue_runs('%s', '%s', '%s', '[%s]')" % (a[0], a[1], ba, runs))
        db("INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline) SELECT "
           "gen_random_uuid(), '%s', '%s', ('00000000-0000-4000-8000-' || lpad(g::text, 12, "
           "'0'))::uuid, '%s', 'p' FROM generate_series(%d, %d) g ORDER BY g"
           % (b[0], b[1], bb, tag_b + 1, tag_b + len(sizes)))
    got, want = ranks(ba), ranks(bb)
    assert got == want, (got, want)
    assert got[0].split("|")[0] == "51" and len(got) == 2 * len(sizes), got


CLAIMS = 8


@pytest.mark.timeout(300)
def test_claim_plan_with_100k_queued(db, pg):
    """100,000 queued runs over five tenants (one batch of 60,000, three of
    10,000, 9,000 single-file uploads, two of 500) and 2,000 in flight: the
    claim of 200 must read the tenants' queue heads through runs_claim_queued,
    not sort the queue. Prints the plan (auto_explain) and the time."""
    ts = [tenant(db, "t%d" % i) for i in range(5)]
    queue(db, ts[0], 2000, state="running", lease="now() + interval '1 hour'",
          owner="'elsewhere'")
    queue(db, ts[0], 60000)
    for _ in range(3):
        queue(db, ts[1], 10000)
    tid, did = ts[2]
    db("WITH f AS (INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, "
       "mime, storage_key) SELECT gen_random_uuid(), '{t}', '{d}', gen_random_uuid(), 'f' || g, "
       "100, 'x', 'text/plain', 'k' || g FROM generate_series(1, 9000) g "
       "RETURNING id, batch_id, created_at) "
       "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline) "
       "SELECT gen_random_uuid(), '{t}', '{d}', f.id, f.batch_id, 'p' FROM f "
       "ORDER BY f.created_at".format(t=tid, d=did))
    queue(db, ts[3], 500)
    queue(db, ts[4], 500)
    db("ANALYZE")
    assert int(db("SELECT count(*) FROM runs WHERE state = 'queued'")) == 100000
    dbname = db("SELECT current_database()").strip()
    script = ("LOAD 'auto_explain';\n"
              "SET auto_explain.log_min_duration = 0;\n"
              "SET auto_explain.log_analyze = on;\n"
              "SET auto_explain.log_nested_statements = on;\n"
              "SET client_min_messages = log;\n"
              "\\timing on\n" +
              # the function forces the generic plan (claim.sql; checked by
              # test_claim_keeps_one_generic_plan), so every call runs the
              # plan the engine's session keeps; without it the plan cache
              # plans the first five calls for their values: the last of
              # CLAIMS calls is the one checked either way
              "BEGIN;\n"
              "SELECT count(*) FROM sluice_claim_runs('me', 200, 30, 0, '{}');\n"
              "ROLLBACK;\n" * CLAIMS)
    r = subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-h", pg.sockdir, "-p", str(pg.port), "-d", dbname],
                       input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    print(r.stderr)
    print(r.stdout)
    plans = r.stderr.split("LOG:  duration:")
    inner = [p for p in plans if "Update on runs" in p]
    assert len(inner) == CLAIMS, r.stderr
    plan = inner[-1]
    assert "runs_claim_queued" in plan, plan
    assert not re.search(r"Seq Scan on runs", plan), plan
    # every tenant's queue is read up to the claim's size, not to its length
    m = re.search(r"Index Scan using runs_claim_queued on runs \S+ .*?rows=(\d+) loops=(\d+)", plan)
    assert m and int(m.group(1)) <= 200, plan
    assert " 200\n" in r.stdout, r.stdout
    times = [float(x) for x in re.findall(r"Time: ([\d.]+) ms", r.stdout)]
    print("claim of 200 with 100,000 queued: %s ms" % times)


def test_claim_keeps_one_generic_plan(db):
    """The claim runs with plan_cache_mode = force_generic_plan: left to the
    plan cache, PL/pgSQL re-planned its statement at every call (its LIMITs by
    parameter make the generic plan's estimate look worse than the custom
    ones), 3.35 against 1.87-1.93 ms a call (docs/internals/scheduler.md,
    "stop 33"). The plan that setting keeps is the one the test above checks."""
    conf = db("SELECT array_to_string(proconfig, ',') FROM pg_proc "
              "WHERE proname = 'sluice_claim_runs'").strip()
    assert "plan_cache_mode=force_generic_plan" in conf.split(","), conf


def test_claim_locks_its_picks_by_key_on_a_grown_table(db, pg):
    """The claim locks the runs it picked through the primary key, whatever
    the statistics say. Planned from a runs table never analyzed (or analyzed
    small), the claim found the picked runs through the partial index of the
    active runs (runs_one_active): here a BitmapAnd that read all 3,210 of its
    entries to lock 10; in flow_bench a heap scan that filtered 985 rows by
    id (7.3 ms of a 10.6 ms claim)."""
    t = tenant(db, "grown")
    queue(db, t, 3000, state="running", lease="now() + interval '1 hour'", owner="'elsewhere'")
    queue(db, t, 200)
    dbname = db("SELECT current_database()").strip()
    script = ("LOAD 'auto_explain';\n"
              "SET auto_explain.log_min_duration = 0;\n"
              "SET auto_explain.log_analyze = on;\n"
              "SET auto_explain.log_nested_statements = on;\n"
              "SET client_min_messages = log;\n" +
              # the 6th call of a session may switch to the generic plan
              "BEGIN;\n"
              "SELECT count(*) FROM sluice_claim_runs('me', 10, 30, 0, '{}');\n"
              "ROLLBACK;\n" * 8)
    r = subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-h", pg.sockdir, "-p", str(pg.port), "-d", dbname],
                       input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split().count("10") == 8, r.stdout
    plans = [p for p in r.stderr.split("LOG:  duration:") if "Update on runs" in p]
    assert len(plans) == 8, r.stderr
    for plan in plans:
        # the index of every active run has nothing to give a lookup by key
        assert "runs_one_active" not in plan, plan
        for removed in re.findall(r"Rows Removed by Filter: (\d+)", plan):
            assert int(removed) < 1000, plan
