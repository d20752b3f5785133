"""The engine's SQL functions (db/functions/): applied after the migrations at
every start, so a database whose functions drifted gets this binary's back;
and the engine's transitions go through them, a run whose pipeline is gone
included."""
import subprocess
import time
import uuid

from sluice_harness import pg_bindir
from test_files import q, seed_file

FUNCTIONS = [
    "sluice_claim_runs(text,integer,integer,integer,json)",
    "sluice_run_transition(uuid,text,text,integer,jsonb,text,text,boolean,integer,text,"
    "double precision,text,json)",
    "sluice_bootstrap_tenant(text,text)",
    "sluice_file_json(files)",
]


def psql(server, sql):
    r = subprocess.run(
        [str(pg_bindir() / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
         "-d", server.database_url, "-c", sql],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, "psql failed: %s\n%s" % (sql, r.stderr)
    return r.stdout.strip()


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
