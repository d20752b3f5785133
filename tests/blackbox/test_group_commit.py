"""Group commit of run transitions (issue 10; actors/commit.c,
db/functions/run_transition.sql, docs/internals/scheduler.md "Commits"), and
version pinning on takeover.

1. Many files at once over several tenants and datasets: every one ends done
   with its whole timeline, in seq order; the transitions were committed in
   groups (sluice_commit_group_size: more transitions than groups).
2. A run whose lease is stolen (with SQL) while others commit around it: only
   that run is affected — it writes nothing more, the others all end done.
3. A run that parks on flow version 1, the flow file changed and reloaded
   (SIGHUP), the whole server killed (-9) and started again: the run taken over
   finishes on version 1 (its steps, its flow_version); a new file takes v2.
"""
import hashlib
import os
import signal
import time
import urllib.parse

from sluice_harness import metric

STEPS3 = ('return flow { start = "one", steps = {\n'
          '  one = { run = function(ctx, file) ctx.n = 1 return true end, next = "two" },\n'
          '  two = { run = function(ctx, file) ctx.n = ctx.n + 1 return true end,'
          ' next = "three" },\n'
          '  three = { run = function(ctx, file) return true end },\n} }\n')

KINDS3 = ["queued", "started", "step_started", "step_succeeded", "step_started", "step_succeeded",
          "step_started", "step_succeeded", "succeeded"]

# v1 parks in "v1_park"; v2 has no such step (a run on v2 would start over at "first"
# and go through "v2_only").
PIN_V1 = ('return flow { start = "first", steps = {\n'
          '  first = { run = function(ctx, file) return true end, next = "v1_park" },\n'
          '  v1_park = { run = function(ctx, file) sl.sleep(3) return true end,'
          ' next = "v1_end", timeout = 60 },\n'
          '  v1_end = { run = function(ctx, file) return true end },\n} }\n')
PIN_V2 = ('return flow { start = "first", steps = {\n'
          '  first = { run = function(ctx, file) return true end, next = "v2_only" },\n'
          '  v2_only = { run = function(ctx, file) return true end },\n} }\n')


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def flow_yaml(tmp_path, name, text):
    p = tmp_path / f"{name}.lua"
    p.write_text(text)
    return f'pipelines:\n  - {{name: {name}, flow: "{p}", match: ["text/*"]}}\n'


def timeline(client, fid, pipeline):
    evs = client.get("/v1/files/%s/events" % fid).json()["events"]
    return [e for e in evs if e["pipeline"] == pipeline]


def run_of(doc, pipeline):
    runs = [r for r in doc["runs"] if r["pipeline"] == pipeline]
    assert len(runs) == 1, doc
    return runs[0]


def psql(pg, srv, sql):
    db = urllib.parse.urlparse(srv.database_url).path.lstrip("/")
    return pg.psql(sql, dbname=db)


def test_many_files_at_once_end_done_with_whole_timelines_in_order(start_server, tmp_path):
    srv = start_server(extra_yaml=flow_yaml(tmp_path, "gc", STEPS3))
    files = []  # (client, file id)
    for k in range(6):
        t = srv.create_tenant("gc%d" % k)
        ds = t.create_dataset("d%d" % k)["id"]
        r = t.upload(ds, [("f%03d.txt" % i, b"words %d\n" % i, "text/plain") for i in range(40)])
        assert r.status_code == 202, r.text
        files += [(t, f["id"]) for f in r.json()["files"]]
    for t, fid in files:
        doc = t.wait_file(fid, timeout=120)
        assert doc["status"] == "done" and run_of(doc, "gc")["state"] == "succeeded", doc
    for t, fid in files:
        evs = timeline(t, fid, "gc")
        assert [e["kind"] for e in evs] == KINDS3, evs
        assert [e["step"] for e in evs][2:8] == ["one", "one", "two", "two", "three", "three"]
        seqs = [e["seq"] for e in evs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    # grouped: 240 runs x 4 commits in fewer groups than transitions
    groups = metric(srv, "sluice_commit_group_size_count")
    members = metric(srv, "sluice_commit_group_size_sum")
    print("\n%s transitions in %s groups" % (members, groups))
    assert members is not None and members >= 240 * 4, (members, groups)
    assert groups < members, (members, groups)


def test_a_stolen_lease_affects_only_its_run(start_server, pg, tmp_path):
    flow = ('return flow { start = "one", steps = {\n'
            '  one = { run = function(ctx, file)\n'
            '    if file.name:find("^victim") then sl.sleep(3) end return true end,'
            ' next = "two", timeout = 60 },\n'
            '  two = { run = function(ctx, file) return true end },\n} }\n')
    srv = start_server(extra_yaml=flow_yaml(tmp_path, "steal", flow))
    t = srv.create_tenant("steal")
    ds = t.create_dataset("d")["id"]
    r = t.upload(ds, [("victim.txt", b"v\n", "text/plain")])
    victim = r.json()["files"][0]["id"]
    deadline = time.monotonic() + 20
    while True:
        run = run_of(t.get("/v1/files/" + victim).json(), "steal")
        if run["state"] == "running" and run["step"] == "one":
            break
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    psql(pg, srv, "UPDATE runs SET lease_owner = 'thief', lease_until = now() + interval '1 hour'"
         " WHERE file_id = '%s'" % victim)
    before = len(timeline(t, victim, "steal"))
    # others commit all around the victim's next transition
    others = []
    for k in range(4):
        r = t.upload(ds, [("o%d-%02d.txt" % (k, i), b"x\n", "text/plain") for i in range(20)])
        assert r.status_code == 202, r.text
        others += [f["id"] for f in r.json()["files"]]
        time.sleep(0.5)
    for fid in others:
        doc = t.wait_file(fid, timeout=120)
        assert run_of(doc, "steal")["state"] == "succeeded", doc
        assert [e["kind"] for e in timeline(t, fid, "steal")] == KINDS3[:6] + ["succeeded"]
    deadline = time.monotonic() + 20
    while '"run_commit_lost"' not in srv.log() and "lease_lost" not in srv.log():
        assert time.monotonic() < deadline, "the victim's actor never noticed"
        time.sleep(0.2)
    time.sleep(1)
    run = run_of(t.get("/v1/files/" + victim).json(), "steal")
    assert run["state"] == "running" and run["step"] == "one", run
    assert len(timeline(t, victim, "steal")) == before  # nothing written after the theft
    row = psql(pg, srv, "SELECT lease_owner FROM runs WHERE file_id = '%s'" % victim)
    assert "thief" in str(row)


def test_a_run_taken_over_after_kill_9_finishes_on_its_flow_version(start_server, pg, tmp_path):
    srv = start_server(extra_yaml=flow_yaml(tmp_path, "pin", PIN_V1))
    t = srv.create_tenant("pin")
    ds = t.create_dataset("d")["id"]
    r = t.upload(ds, [("parked.txt", b"p\n", "text/plain")])
    parked = r.json()["files"][0]["id"]
    deadline = time.monotonic() + 20
    while True:
        run = run_of(t.get("/v1/files/" + parked).json(), "pin")
        if run["state"] == "running" and run["step"] == "v1_park":
            break
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    assert run["flow_version"] == sha(PIN_V1), run
    # the flow changes under it (file + SIGHUP) ...
    (tmp_path / "pin.lua").write_text(PIN_V2)
    os.kill(srv.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while t.get("/v1/pipelines/pin").json().get("version") != sha(PIN_V2):
        assert time.monotonic() < deadline, t.get("/v1/pipelines/pin").json()
        time.sleep(0.1)
    # ... and the whole server dies mid-step, and comes back on v2
    srv.kill()
    psql(pg, srv, "UPDATE runs SET lease_until = now() - interval '1 second'"
         " WHERE state = 'running'")
    srv.proc = None
    srv.start()
    doc = t.wait_file(parked, timeout=60)
    run = run_of(doc, "pin")
    assert run["state"] == "succeeded" and run["flow_version"] == sha(PIN_V1), run
    evs = timeline(t, parked, "pin")
    steps = [e["step"] for e in evs]
    assert "v1_end" in steps and "v2_only" not in steps, evs
    resumed = [e for e in evs if e["kind"] == "resumed"]
    assert resumed and resumed[0]["step"] == "v1_park", evs
    # a new file takes the current version
    r = t.upload(ds, [("fresh.txt", b"f\n", "text/plain")])
    fresh = t.wait_file(r.json()["files"][0]["id"], timeout=60)
    run = run_of(fresh, "pin")
    assert run["state"] == "succeeded" and run["flow_version"] == sha(PIN_V2), run
    assert "v2_only" in [e["step"] for e in timeline(t, fresh["id"], "pin")]
