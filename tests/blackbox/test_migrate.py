"""The engine's SQL functions (db/functions/): applied after the migrations at
every start, so a database whose functions drifted gets this binary's back;
and the engine's transitions go through them, a run whose pipeline is gone
included."""
import time
import uuid

from test_files import q, seed_file

FUNCTIONS = [
    "sluice_claim_runs(text,integer,integer,integer,json,boolean)",
    "sluice_run_transition(uuid,text,text,integer,jsonb,text,text,boolean,integer,text,"
    "double precision,text,json)",
    "sluice_bootstrap_tenant(text,text)",
    "sluice_file_json(files)",
]


def psql(server, sql):
    return server.sql(sql)  # sluice_harness.Server.sql


def prosrc(server, sig):
    return psql(server, "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%s)" % q(sig))


def test_functions_are_reapplied_at_every_start(start_server):
    srv = start_server()
    bodies = {sig: prosrc(srv, sig) for sig in FUNCTIONS}
    assert all(bodies.values()), bodies
    migrations = psql(srv, "SELECT count(*) FROM schema_migrations")
    # A body that drifted (a hand edit, an older release's): the next start puts ours back.
    psql(srv, "CREATE OR REPLACE FUNCTION sluice_file_json(f files) RETURNS json "
              "LANGUAGE sql STABLE AS $$ SELECT '{}'::json $$")
    assert prosrc(srv, "sluice_file_json(files)") != bodies["sluice_file_json(files)"]
    srv.restart()
    assert {sig: prosrc(srv, sig) for sig in FUNCTIONS} == bodies
    assert psql(srv, "SELECT count(*) FROM schema_migrations") == migrations
    srv.restart()  # and again: idempotent
    assert {sig: prosrc(srv, sig) for sig in FUNCTIONS} == bodies


def test_run_of_a_pipeline_no_longer_configured_fails(server, tenant):
    ds = tenant.create_dataset("gone")
    fid = seed_file(server, tenant, ds["id"])
    rid = str(uuid.uuid4())
    psql(server, "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, ctx) "
                 "VALUES (%s, %s, %s, %s, %s, 'no_such_pipeline', '{\"k\": 1}')" % (
                     q(rid), q(tenant.tenant_id), q(ds["id"]), q(fid), q(uuid.uuid4())))
    deadline = time.time() + 30
    while time.time() < deadline:
        row = psql(server, "SELECT state, error, coalesce(lease_owner, '-'), ctx->>'k', "
                           "finished_at IS NOT NULL FROM runs WHERE id = %s" % q(rid))
        if row.startswith("failed"):
            break
        time.sleep(0.2)
    assert row == "failed|unknown_pipeline|-|1|t", row
    events = psql(server, "SELECT kind || '|' || state || '|' || coalesce(step, '-') || '|' "
                          "|| (detail->>'error') FROM run_events WHERE run_id = %s ORDER BY seq"
                          % q(rid))
    assert events == "failed|failed|-|unknown_pipeline", events
    doc = tenant.get("/v1/files/%s" % fid).json()
    assert [(r["pipeline"], r["state"], r["error"]) for r in doc["runs"]] == \
        [("no_such_pipeline", "failed", "unknown_pipeline")]


PIN_FLOW = ('return flow { start = "a", steps = {\n'
            '  a = { run = function(ctx, file) sl.sleep(%d) return true end, next = "b" },\n'
            '  b = { run = function(ctx, file) ctx.v = "%s" return true end },\n'
            '} }\n')


def test_a_run_taken_over_continues_with_its_flow_version(start_server, tmp_path):
    import hashlib
    from test_pipelines import pipelines_yaml
    v1 = PIN_FLOW % (5, "v1")
    v2 = PIN_FLOW % (0, "v2")
    srv = start_server(extra_yaml=pipelines_yaml(tmp_path, {"pin": (v1, ["text/*"])}))
    t = srv.create_tenant("pin")
    ds = t.create_dataset()["id"]
    fid = t.upload(ds, [("a.txt", b"hello\n")]).json()["files"][0]["id"]
    deadline = time.time() + 20
    while time.time() < deadline:
        if psql(srv, "SELECT state || '/' || coalesce(step, '-') FROM runs WHERE file_id = %s"
                % q(fid)) == "running/a":
            break
        time.sleep(0.1)
    time.sleep(0.5)  # step_started of a committed, with flow_version v1; a sleeps
    srv.kill()
    rid = psql(srv, "SELECT id FROM runs WHERE file_id = %s" % q(fid))
    assert psql(srv, "SELECT state || ' ' || flow_version FROM runs WHERE id = %s" % q(rid)) == \
        "running " + hashlib.sha256(v1.encode()).hexdigest()
    # A crash, then a deploy of v2: the lease lapses (here at once) and v2 is what is loaded.
    psql(srv, "UPDATE runs SET lease_until = now() WHERE id = %s" % q(rid))
    (tmp_path / "pin.lua").write_text(v2)
    srv.start()
    doc = t.wait_file(fid, timeout=60)
    assert doc["status"] == "done", doc
    assert psql(srv, "SELECT (ctx->>'v') || ' ' || flow_version FROM runs WHERE id = %s"
                % q(rid)) == "v1 " + hashlib.sha256(v1.encode()).hexdigest()
    kinds = psql(srv, "SELECT string_agg(kind, ',' ORDER BY seq) FROM run_events "
                      "WHERE run_id = %s" % q(rid))
    assert "resumed" in kinds, kinds
    # a new run takes the flow loaded now
    fid2 = t.upload(ds, [("b.txt", b"hello again\n")]).json()["files"][0]["id"]
    assert t.wait_file(fid2, timeout=60)["status"] == "done"
    assert psql(srv, "SELECT ctx->>'v' FROM runs WHERE file_id = %s" % q(fid2)) == "v2"
    assert psql(srv, "SELECT count(*) FROM flow_versions WHERE pipeline = 'pin'") == "2"
