"""Pipelines through the API (issue 14; ../shared/API.md "Pipelines";
docs/flows.md "Pipelines through the API").

PUT /v1/admin/pipelines/{name} with a flow written from docs/flows.md alone:
it is checked (every error at once, with its line), stored as a new revision,
live on every instance within a second, and runs in flight finish on the
version they started with while new uploads take the new one (runs'
flow_version). Export round-trips (JSON and YAML); DELETE stops new runs.
"""
import hashlib
import os
import signal
import time
import urllib.parse

import requests

from sluice_harness import Client

# A new 3-step pipeline with a fallback, from docs/flows.md alone (under 30 lines).
NOTES = '''-- notes: measure a text file, wait if asked to, note the odd ones
return flow {
  start = "measure",
  steps = {
    measure = {
      run = function(ctx, file)
        if file.name:find("^bad") then return nil, "bad_input" end
        ctx.size = file.size
        return true
      end,
      next = "wait",
      fallback = "note",
    },
    wait = {
      run = function(ctx, file)
        if file.name:find("^slow") then sl.sleep(8) end
        return true
      end,
      timeout = 60,
    },
    note = {
      run = function(ctx, file) ctx.odd = true return true end,
    },
  },
}
'''
assert len(NOTES.splitlines()) < 30

# Three mistakes on three lines: all three come back, each with its line.
BROKEN = '''return flow {
  start = "measure",
  steps = {
    measure = { run = function(ctx, file) return true end, next = "nowhere" },
    wait = { run = function(ctx, file) return true end, timeout = 99999 },
    lonely = { run = function(ctx, file) return true end },
  },
}
'''

SEED = 'return flow { start = "one", steps = { one = { run = function() return true end } } }\n'


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def config(tmp_path):
    (tmp_path / "seed.lua").write_text(SEED)
    return ("limits: {max_runs_per_tenant: 500}\n"
            "pipelines:\n"
            "  - {name: seed, flow: %s, match: [\"application/x-sluice-seed\"]}\n"
            % (tmp_path / "seed.lua"))


def put(srv, name, body=None, yaml=None, key=None):
    headers = {"Authorization": "Bearer " + (key or srv.admin_key)}
    url = srv.url + "/v1/admin/pipelines/" + name
    if yaml is not None:
        headers["Content-Type"] = "application/yaml"
        return requests.put(url, data=yaml.encode(), headers=headers, timeout=30)
    return requests.put(url, json=body, headers=headers, timeout=30)


def wait_version(client, name, version, timeout=10.0):
    """Polls GET /v1/pipelines/{name} until it shows version; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = client.get("/v1/pipelines/" + name)
        if r.status_code == 200 and r.json()["version"] == version:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError("%s never showed %s: %s" % (client.base, version, r.text))


def notes_run(doc):
    runs = [r for r in doc["runs"] if r["pipeline"] == "notes"]
    assert len(runs) == 1, doc
    return runs[0]


def upload_one(client, ds, name, text="some words to measure\n"):
    r = client.upload(ds, [(name, text.encode(), "text/plain")])
    assert r.status_code == 202, r.text
    return r.json()["files"][0]["id"]


def two(start_server, tmp_path):
    a = start_server(extra_yaml=config(tmp_path))
    b = start_server(database_url=a.database_url, storage_path=a.storage_path,
                     extra_yaml=config(tmp_path))
    t = a.create_tenant("pipes")
    return a, b, Client(a.url, t.key, t.tenant_id), Client(b.url, t.key, t.tenant_id)


def test_put_validates_runs_on_every_instance_and_shows_its_graph(start_server, tmp_path):
    a, b, ta, tb = two(start_server, tmp_path)
    r = put(a, "notes", {"match": ["text/plain"], "flow": NOTES})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["name"] == "notes" and doc["source"] == "api" and doc["revision"] == 1
    assert doc["version"] == sha(NOTES) and doc["match"] == ["text/plain"]
    assert doc["steps"] == ["measure", "wait", "note"]
    # live on both instances within a second (Redis pub/sub; Postgres the truth)
    for c in (ta, tb):
        assert wait_version(c, "notes", sha(NOTES)) < 1.0
    got = tb.get("/v1/pipelines/notes").json()
    assert got["graph"] == {
        "nodes": [{"id": "measure"}, {"id": "wait"}, {"id": "note"}],
        "edges": [{"from": "measure", "to": "wait", "on": "next"},
                  {"from": "measure", "to": "note", "on": "fallback"}]}
    assert [(v["version"], v["revision"]) for v in got["versions"]] == [(sha(NOTES), 1)]
    listed = {p["name"]: p for p in ta.get("/v1/pipelines").json()["pipelines"]}
    assert listed["notes"]["source"] == "api" and listed["seed"]["source"] == "config"
    # the next upload on each instance runs it, the fallback included
    for c in (ta, tb):
        ds = c.create_dataset("d")["id"]
        ok, bad = upload_one(c, ds, "ok.txt"), upload_one(c, ds, "bad.txt")
        for fid, last in ((ok, "wait"), (bad, "note")):
            run = notes_run(c.wait_file(fid, timeout=60))
            assert run["state"] == "succeeded" and run["step"] == last, run
            assert run["flow_version"] == sha(NOTES)


def test_a_put_replaces_the_config_pipeline_of_the_same_name(start_server, tmp_path):
    a, b, ta, tb = two(start_server, tmp_path)
    assert ta.get("/v1/pipelines/seed").json()["source"] == "config"
    r = put(a, "seed", {"match": ["text/plain"], "flow": NOTES})
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "api" and r.json()["version"] == sha(NOTES)
    for c in (ta, tb):
        wait_version(c, "seed", sha(NOTES))
        got = c.get("/v1/pipelines/seed").json()
        assert got["source"] == "api" and got["match"] == ["text/plain"], got
    ds = tb.create_dataset("d")["id"]
    run = [r for r in tb.wait_file(upload_one(tb, ds, "ok.txt"), timeout=60)["runs"]
           if r["pipeline"] == "seed"]
    assert len(run) == 1 and run[0]["state"] == "succeeded", run
    assert run[0]["flow_version"] == sha(NOTES) and run[0]["step"] == "wait", run


def test_broken_version_is_refused_with_every_error_and_the_old_keeps_serving(start_server,
                                                                             tmp_path):
    a, b, ta, tb = two(start_server, tmp_path)
    assert put(a, "notes", {"match": ["text/plain"], "flow": NOTES}).status_code == 200
    r = put(b, "notes", {"match": ["text/plain"], "flow": BROKEN})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_flow"
    lines = err["message"].splitlines()
    assert any(l.startswith("notes:4:") and "nowhere" in l for l in lines), lines
    assert any(l.startswith("notes:5:") and "timeout" in l for l in lines), lines
    assert any(l.startswith("notes:6:") and "lonely" in l for l in lines), lines
    time.sleep(0.5)
    for c in (ta, tb):
        got = c.get("/v1/pipelines/notes").json()
        assert got["version"] == sha(NOTES) and got["revision"] == 1
        ds = c.create_dataset("d")["id"]
        run = notes_run(c.wait_file(upload_one(c, ds, "ok.txt"), timeout=60))
        assert run["state"] == "succeeded" and run["flow_version"] == sha(NOTES)


def test_new_version_while_100_runs_are_in_flight(start_server, tmp_path):
    a, b, ta, tb = two(start_server, tmp_path)
    assert put(a, "notes", {"match": ["text/plain"], "flow": NOTES}).status_code == 200
    wait_version(tb, "notes", sha(NOTES))
    ds = ta.create_dataset("d")["id"]
    r = ta.upload(ds, [("slow-%03d.txt" % i, b"words\n", "text/plain") for i in range(100)])
    assert r.status_code == 202, r.text
    slow = [f["id"] for f in r.json()["files"]]
    # all 100 started (in the step that waits) on either instance
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = ta.get("/v1/datasets/%s/files?limit=200" % ds).json()["files"]
        waiting = [f for f in files if f["runs"] and f["runs"][0]["step"] == "wait"
                   and f["runs"][0]["state"] == "running"]
        if len(waiting) == 100:
            break
        time.sleep(0.2)
    assert len(waiting) == 100, [f["runs"] for f in files][:3]
    v2 = NOTES.replace("ctx.odd = true", "ctx.odd = 2")
    r = put(b, "notes", {"match": ["text/plain"], "flow": v2})
    assert r.status_code == 200 and r.json()["revision"] == 2, r.text
    wait_version(ta, "notes", sha(v2))
    new = [upload_one(c, ds, "fresh.txt") for c in (ta, tb)]
    for fid in new:
        run = notes_run(ta.wait_file(fid, timeout=30))
        assert run["state"] == "succeeded" and run["flow_version"] == sha(v2), run
    for fid in slow:
        run = notes_run(ta.wait_file(fid, timeout=60))
        assert run["state"] == "succeeded" and run["flow_version"] == sha(NOTES), run
    versions = ta.get("/v1/pipelines/notes").json()["versions"]
    assert [(v["revision"], v["version"]) for v in versions] == [(2, sha(v2)), (1, sha(NOTES))]


# One step through Tika (lua-flows/lib/tika.lua): with Tika failing, the run
# is `waiting` (a transient chain) until Tika is back.
THROUGH_TIKA = '''local tika = require "tika"
return flow {
  start = "read",
  steps = {
    read = {
      run = function(ctx, file)
        local text, err = tika.extract(file)
        if not text then return nil, err end
        ctx.chars = #text
        return true
      end,
    },
  },
}
'''


def test_a_waiting_run_resumes_on_the_version_it_started_with(start_server, standins, tmp_path):
    """A run back from `waiting` is in flight too: it finishes on its version,
    while a new upload takes the version put meanwhile."""
    tika = standins("tika")
    tika.control(mode="fail")
    srv = start_server(extra_yaml=config(tmp_path) + (
        "services:\n  tika: {url: \"%s\", timeout_ms: 5000,"
        " retry: {max_attempts: 2, base_ms: 100, max_ms: 200}}\n" % tika.url))
    t = srv.create_tenant("pin")
    assert put(srv, "notes", {"match": ["text/plain"], "flow": THROUGH_TIKA}).status_code == 200
    wait_version(t, "notes", sha(THROUGH_TIKA))
    ds = t.create_dataset("d")["id"]
    fid = upload_one(t, ds, "early.txt")
    deadline = time.monotonic() + 30
    run = None
    while time.monotonic() < deadline:
        run = notes_run(t.get("/v1/files/" + fid).json())
        if run["state"] == "waiting":
            break
        time.sleep(0.1)
    assert run["state"] == "waiting" and run["flow_version"] == sha(THROUGH_TIKA), run
    v2 = THROUGH_TIKA.replace("ctx.chars = #text", "ctx.chars = -1")
    assert put(srv, "notes", {"match": ["text/plain"], "flow": v2}).status_code == 200
    wait_version(t, "notes", sha(v2))
    tika.control(mode="ok")
    run = notes_run(t.wait_file(fid, timeout=60))
    assert run["state"] == "succeeded" and run["flow_version"] == sha(THROUGH_TIKA), run
    later = notes_run(t.wait_file(upload_one(t, ds, "later.txt"), timeout=60))
    assert later["state"] == "succeeded" and later["flow_version"] == sha(v2), later


def test_yaml_export_round_trip_delete_and_refusals(start_server, tmp_path):
    a = start_server(extra_yaml=config(tmp_path))
    t = a.create_tenant("pipes")
    admin = Client(a.url, a.admin_key)
    # YAML body, the same keys
    yaml = "match:\n  - text/plain\nflow: |\n" + "".join(
        ("  " + l if l else "") + "\n" for l in NOTES.splitlines())
    r = put(a, "notes", yaml=yaml)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == sha(NOTES)
    # export: the body PUT takes, in both shapes, round-tripping exactly
    tricky = "  -- leading blanks, no final newline\n\t" + NOTES + "\n\n"
    for src in (NOTES, tricky, tricky.rstrip("\n")):
        assert put(a, "notes", {"match": ["text/plain", "text/*"], "flow": src}).status_code == 200
        ex = admin.get("/v1/admin/pipelines/notes/export?format=json").json()
        assert ex == {"match": ["text/plain", "text/*"], "flow": src}
        y = admin.get("/v1/admin/pipelines/notes/export?format=yaml")
        assert y.status_code == 200 and "yaml" in y.headers["Content-Type"]
        r = put(a, "notes", yaml=y.text)
        assert r.status_code == 200 and r.json()["version"] == sha(src), r.text
        assert admin.get("/v1/admin/pipelines/notes/export").json() == ex
    assert admin.get("/v1/admin/pipelines/seed/export").json() == {
        "match": ["application/x-sluice-seed"], "flow": SEED}
    assert admin.get("/v1/admin/pipelines/notes/export?format=xml").status_code == 400
    assert admin.get("/v1/admin/pipelines/nope/export").status_code == 404
    # a dataset may choose an API pipeline
    r = t.post("/v1/datasets", json={"name": "only", "pipelines": ["notes"]})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    # DELETE: 204, in-flight runs finish, no new runs start, then 404
    slow = upload_one(t, ds, "slow.txt")
    deadline = time.monotonic() + 20
    while notes_run(t.get("/v1/files/" + slow).json())["step"] != "wait":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert admin.delete("/v1/admin/pipelines/notes").status_code == 204
    assert t.get("/v1/pipelines/notes").status_code == 404
    assert "notes" not in [p["name"] for p in t.get("/v1/pipelines").json()["pipelines"]]
    run = notes_run(t.wait_file(slow, timeout=30))
    assert run["state"] == "succeeded", run
    after = t.get("/v1/files/" + upload_one(t, ds, "after.txt")).json()
    assert after["runs"] == [], after
    assert admin.delete("/v1/admin/pipelines/notes").status_code == 404
    assert admin.delete("/v1/admin/pipelines/never").status_code == 404
    assert t.post("/v1/datasets", json={"name": "x", "pipelines": ["notes"]}).status_code == 400
    # a config pipeline can be deleted too (it stays deleted), and put again
    assert admin.delete("/v1/admin/pipelines/seed").status_code == 204
    assert t.get("/v1/pipelines/seed").status_code == 404
    r = put(a, "notes", {"match": ["text/plain"], "flow": NOTES})
    assert r.status_code == 200 and r.json()["revision"] == 8, r.text
    # only the admin key
    body = {"match": ["text/plain"], "flow": NOTES}
    assert put(a, "notes", body, key=t.key).status_code == 401
    assert requests.put(a.url + "/v1/admin/pipelines/notes", json=body,
                        timeout=30).status_code == 401
    assert t.delete("/v1/admin/pipelines/notes").status_code == 401
    assert t.get("/v1/admin/pipelines/notes/export").status_code == 401
    # bad names and bodies: 400 (413 past the size bound), nothing stored
    for name in ("Notes", "a-b", "x" * 64, "%C3%A9t%C3%A9"):
        r = put(a, name, body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name", (name, r.text)
    for bad in ({}, {"match": [], "flow": NOTES}, {"match": ["text/plain"]},
                {"match": "text/plain", "flow": NOTES}, {"match": [""], "flow": NOTES},
                {"match": ["text plain"], "flow": NOTES}, {"match": ["text/plain"], "flow": 7},
                {"match": ["text/plain"], "flow": NOTES, "extra": 1},
                {"match": ["text/plain"] * 17, "flow": NOTES}, [1, 2]):
        r = put(a, "notes", bad)
        assert r.status_code == 400, (bad, r.text)
    for yaml in ("match: [text/plain\nflow: x\n", "- just\n- a list\n", "flow: {a: 1}\nmatch: [x/y]\n"):
        assert put(a, "notes", yaml=yaml).status_code == 400, yaml
    r = requests.put(a.url + "/v1/admin/pipelines/notes", data=b"{not json",
                     headers={"Authorization": "Bearer " + a.admin_key}, timeout=30)
    assert r.status_code == 400
    big = NOTES + "--" + "x" * (300 * 1024) + "\n"
    assert put(a, "notes", {"match": ["text/plain"], "flow": big}).status_code == 413
    assert t.get("/v1/pipelines/notes").json()["revision"] == 8


def test_runs_taken_over_after_a_crash_finish_on_their_version(start_server, pg, tmp_path):
    srv = start_server(extra_yaml=config(tmp_path))
    t = srv.create_tenant("crash")
    assert put(srv, "notes", {"match": ["text/plain"], "flow": NOTES}).status_code == 200
    ds = t.create_dataset("d")["id"]
    slow = [upload_one(t, ds, "slow-%d.txt" % i) for i in range(4)]
    deadline = time.monotonic() + 20
    while not all(notes_run(t.get("/v1/files/" + f).json())["step"] == "wait" for f in slow):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    v2 = NOTES.replace("ctx.odd = true", "ctx.odd = 2")
    assert put(srv, "notes", {"match": ["text/plain"], "flow": v2}).status_code == 200
    # the engine dies mid-step; its leases lapse (made to at once) and the new one takes over
    old = srv.engine_pid()
    os.kill(old, signal.SIGKILL)
    srv.wait_engine(old_pid=old)
    db = urllib.parse.urlparse(srv.database_url).path.lstrip("/")
    pg.psql("UPDATE runs SET lease_until = now() - interval '1 second' WHERE state = 'running'",
            dbname=db)
    fresh = upload_one(t, ds, "fresh.txt")
    for fid in slow:
        run = notes_run(t.wait_file(fid, timeout=60))
        assert run["state"] == "succeeded" and run["flow_version"] == sha(NOTES), run
    run = notes_run(t.wait_file(fresh, timeout=30))
    assert run["state"] == "succeeded" and run["flow_version"] == sha(v2), run
    assert '"event":"flow_version_loaded"' in srv.log()


def test_inline_process_and_sighup_leave_api_pipelines_as_they_are(start_server, tmp_path):
    srv = start_server(extra_yaml=config(tmp_path) + "engine: {process: inline}\n")
    t = srv.create_tenant("inline")
    admin = Client(srv.url, srv.admin_key)
    ds = t.create_dataset("d")["id"]
    v2 = NOTES.replace("ctx.odd = true", "ctx.odd = 2")
    for src, name in ((NOTES, "bad.txt"), (v2, "ok.txt")):
        assert put(srv, "notes", {"match": ["text/plain"], "flow": src}).status_code == 200
        run = notes_run(t.wait_file(upload_one(t, ds, name), timeout=30))
        assert run["state"] == "succeeded" and run["flow_version"] == sha(src), run
    # SIGHUP reloads the config's files only
    os.kill(srv.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while '"event":"flow_reloaded"' not in srv.log():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run = notes_run(t.wait_file(upload_one(t, ds, "again.txt"), timeout=30))
    assert run["flow_version"] == sha(v2), run
    assert t.get("/v1/pipelines/notes").json()["revision"] == 2
    assert admin.delete("/v1/admin/pipelines/notes").status_code == 204
    assert t.get("/v1/files/" + upload_one(t, ds, "late.txt")).json()["runs"] == []
