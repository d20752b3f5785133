"""Black-box tests of the file endpoints (api/files.c):

GET /v1/files/{id}, GET /v1/datasets/{id}/files (paging, status filter),
GET /v1/files/{id}/events, DELETE /v1/files/{id}, GET /v1/files/{id}/content,
POST /v1/files/{id}/process — shapes exactly as API.md says, and another
tenant's file is a 404 everywhere.

Rows that must be in a definite state (a run that no scheduler will touch, a
record, timeline events) are seeded with psql into the server's database;
everything else goes through the real upload endpoint.
"""

import hashlib
import os
import re
import time
import uuid

import pytest


pytestmark = pytest.mark.server_smoke

FILE_KEYS = {"id", "dataset_id", "name", "size", "sha256", "mime", "status", "created_at",
             "runs", "text_source", "record"}
RUN_KEYS = {"id", "pipeline", "state", "step", "attempt", "error", "started_at", "finished_at",
            "artifacts"}
EVENT_KEYS = {"seq", "at", "run_id", "pipeline", "step", "kind", "detail"}
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STATUSES = {"queued", "processing", "done", "failed"}


# ---------------------------------------------------------------- helpers

def psql(server, sql):
    return server.sql(sql)  # sluice_harness.Server.sql


def q(s):
    """A SQL string literal (test-made values only)."""
    return "'" + str(s).replace("'", "''") + "'"


def seed_file(server, client, dataset_id, content=b"seeded\n", mime="text/plain", name="seed.txt"):
    """A files row plus its blob (<key> in the server's storage), with no runs. Returns the id."""
    fid = str(uuid.uuid4())
    key = "files/%s/%s" % (client.tenant_id, fid)
    server.put_blob(key, content)
    psql(server, "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime,"
                 " storage_key) VALUES (%s, %s, %s, %s, %s, %d, %s, %s, %s)" % (
                     q(fid), q(client.tenant_id), q(dataset_id), q(uuid.uuid4()), q(name),
                     len(content), q(hashlib.sha256(content).hexdigest()), q(mime), q(key)))
    return fid


def seed_run(server, client, dataset_id, file_id, pipeline, state):
    """A run no scheduler will pick up (next attempt and lease a day away). Returns its id."""
    rid = str(uuid.uuid4())
    psql(server, "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, state,"
                 " next_attempt_at, lease_owner, lease_until)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s, now() + interval '1 day', 'test-holder',"
                 " now() + interval '1 day')" % (
                     q(rid), q(client.tenant_id), q(dataset_id), q(file_id), q(uuid.uuid4()),
                     q(pipeline), q(state)))
    return rid


def run_count(server, file_id, pipeline=None):
    sql = "SELECT count(*) FROM runs WHERE file_id = %s" % q(file_id)
    if pipeline:
        sql += " AND pipeline = %s" % q(pipeline)
    return int(psql(server, sql))


def assert_error(r, status, code=None):
    assert r.status_code == status, "%d %s" % (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str)
    if code:
        assert body["error"]["code"] == code, body


def upload_ok(client, dataset_id, items, headers=None):
    r = client.upload(dataset_id, items, headers=headers)
    assert r.status_code == 202, "%d %s" % (r.status_code, r.text)
    return r.json()["files"]


def assert_file_shape(f):
    assert FILE_KEYS <= set(f), sorted(f)  # API.md allows added fields
    assert f["status"] in STATUSES
    assert TS_RE.match(f["created_at"]), f["created_at"]
    assert isinstance(f["size"], int)
    assert f["text_source"] in (None, "tika", "text_layer", "ocr", "textract")
    assert isinstance(f["runs"], list)
    for run in f["runs"]:
        assert RUN_KEYS <= set(run), sorted(run)
        assert run["state"] in {"queued", "running", "waiting", "succeeded", "failed", "cancelled"}
        assert isinstance(run["artifacts"], list)


# ---------------------------------------------------------------- get

def test_get_file_shape(server, tenant, samples):
    ds = tenant.create_dataset("get")
    data = (samples / "notes.txt").read_bytes()
    [up] = upload_ok(tenant, ds["id"], [samples / "notes.txt"])

    r = tenant.get("/v1/files/%s" % up["id"])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    f = r.json()
    assert_file_shape(f)
    assert f["id"] == up["id"]
    assert f["dataset_id"] == ds["id"]
    assert f["name"] == "notes.txt"
    assert f["size"] == len(data)
    assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert f["mime"].startswith("text/plain")


def test_get_missing_and_malformed(server, tenant):
    assert_error(tenant.get("/v1/files/%s" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.get("/v1/files/not-a-uuid"), 404, "not_found")
    assert_error(tenant.get("/v1/files/%s" % ("x" * 36)), 404, "not_found")


def test_requires_auth(server, tenant):
    ds = tenant.create_dataset("auth")
    fid = seed_file(server, tenant, ds["id"])
    anon = type(tenant)(server.url, None)
    for method, path in [("GET", "/v1/files/%s" % fid), ("GET", "/v1/files/%s/events" % fid),
                         ("GET", "/v1/files/%s/content" % fid), ("DELETE", "/v1/files/%s" % fid),
                         ("POST", "/v1/files/%s/process" % fid),
                         ("GET", "/v1/datasets/%s/files" % ds["id"])]:
        assert_error(anon.request(method, path), 401)
    assert tenant.get("/v1/files/%s" % fid).status_code == 200
    assert run_count(server, fid) == 0


# ---------------------------------------------------------------- list

def test_list_pages_newest_first(server, tenant):
    ds = tenant.create_dataset("paging")
    other = tenant.create_dataset("other")
    upload_ok(tenant, other["id"], [("other.txt", b"not in the first dataset\n")])
    first = upload_ok(tenant, ds["id"], [("f%d.txt" % i, b"file %d\n" % i) for i in range(4)])
    second = upload_ok(tenant, ds["id"], [("g%d.txt" % i, b"more %d\n" % i) for i in range(2)])
    expected = [f["id"] for f in reversed(first + second)]  # newest first

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = tenant.get("/v1/datasets/%s/files" % ds["id"], params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"files", "next_cursor"}
        pages += 1
        assert len(body["files"]) == 2
        for f in body["files"]:
            assert_file_shape(f)
            assert f["dataset_id"] == ds["id"]
        seen += [f["id"] for f in body["files"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
        assert pages < 10, "paging does not end"
    assert pages == 3
    assert len(set(seen)) == 6
    assert seen == expected

    # Default limit: everything at once, no next page; a page of exactly `limit` has none either.
    r = tenant.get("/v1/datasets/%s/files" % ds["id"])
    assert r.status_code == 200
    assert [f["id"] for f in r.json()["files"]] == expected
    assert r.json()["next_cursor"] is None
    r = tenant.get("/v1/datasets/%s/files?limit=6" % ds["id"])
    assert r.json()["next_cursor"] is None and len(r.json()["files"]) == 6
    r = tenant.get("/v1/datasets/%s/files?limit=5" % ds["id"])
    assert len(r.json()["files"]) == 5 and r.json()["next_cursor"] is not None

    # An empty dataset lists nothing.
    empty = tenant.create_dataset("empty")
    r = tenant.get("/v1/datasets/%s/files" % empty["id"])
    assert r.status_code == 200
    assert r.json() == {"files": [], "next_cursor": None}


def test_list_bad_parameters(server, tenant):
    ds = tenant.create_dataset("bad")
    base = "/v1/datasets/%s/files" % ds["id"]
    for limit in ["0", "1001", "abc", "-1", "1.5", "", "+5", " 5", "99999999999999999999999"]:
        assert_error(tenant.get(base, params={"limit": limit}), 400, "invalid_request")
    assert tenant.get(base, params={"limit": "1000"}).status_code == 200
    assert tenant.get(base, params={"limit": "1"}).status_code == 200
    for cursor in ["zzz", "c", "c-1", "cabc", "c1x", "", "1", "c0"]:
        assert_error(tenant.get(base, params={"cursor": cursor}), 400, "invalid_cursor")
    assert_error(tenant.get(base, params={"status": "bogus"}), 400, "invalid_request")
    assert_error(tenant.get(base, params={"status": ""}), 400, "invalid_request")
    assert_error(tenant.get("/v1/datasets/%s/files" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/nope/files"), 404, "not_found")


def test_list_status_filter(server, tenant):
    ds = tenant.create_dataset("status")
    f_none = seed_file(server, tenant, ds["id"], name="no-runs.txt")      # no runs: done
    f_ok = seed_file(server, tenant, ds["id"], name="ok.txt")
    seed_run(server, tenant, ds["id"], f_ok, "ai_record", "succeeded")
    f_bad = seed_file(server, tenant, ds["id"], name="bad.txt")
    seed_run(server, tenant, ds["id"], f_bad, "ai_record", "failed")
    f_wait = seed_file(server, tenant, ds["id"], name="wait.txt")
    seed_run(server, tenant, ds["id"], f_wait, "ai_record", "waiting")
    seed_run(server, tenant, ds["id"], f_wait, "file_view", "succeeded")
    f_q = seed_file(server, tenant, ds["id"], name="queued.txt")
    seed_run(server, tenant, ds["id"], f_q, "ai_record", "queued")

    def ids(status, **extra):
        r = tenant.get("/v1/datasets/%s/files" % ds["id"], params=dict(status=status, **extra))
        assert r.status_code == 200, r.text
        for f in r.json()["files"]:
            assert f["status"] == status
        return [f["id"] for f in r.json()["files"]], r.json()["next_cursor"]

    assert ids("done") == ([f_ok, f_none], None)
    assert ids("failed") == ([f_bad], None)
    assert ids("processing") == ([f_wait], None)
    assert ids("queued") == ([f_q], None)
    # The filter composes with paging.
    page1, cur = ids("done", limit=1)
    assert page1 == [f_ok] and cur is not None
    assert ids("done", limit=1, cursor=cur) == ([f_none], None)


# ---------------------------------------------------------------- tenants

def test_other_tenants_file_is_404_everywhere(server, tenant):
    ds = tenant.create_dataset("mine")
    [f] = upload_ok(tenant, ds["id"], [("secret.txt", b"tenant A's secret\n")])
    fid = f["id"]
    intruder = server.create_tenant("intruder")
    assert_error(intruder.get("/v1/files/%s" % fid), 404, "not_found")
    assert_error(intruder.get("/v1/files/%s/events" % fid), 404, "not_found")
    assert_error(intruder.get("/v1/files/%s/content" % fid), 404, "not_found")
    assert_error(intruder.post("/v1/files/%s/process" % fid, json={"pipelines": ["ai_record"]}),
                 404, "not_found")
    assert_error(intruder.post("/v1/files/%s/process" % fid), 404, "not_found")
    assert_error(intruder.delete("/v1/files/%s" % fid), 404, "not_found")
    assert_error(intruder.get("/v1/datasets/%s/files" % ds["id"]), 404, "not_found")
    # Nothing happened to it.
    r = tenant.get("/v1/files/%s" % fid)
    assert r.status_code == 200
    assert len(r.json()["runs"]) == len(f["runs"])
    assert int(psql(server, "SELECT count(*) FROM runs WHERE file_id = %s" % q(fid))) == len(f["runs"])
    assert tenant.get("/v1/files/%s/content" % fid).content == b"tenant A's secret\n"


# ---------------------------------------------------------------- events

def test_events_timeline(server, tenant):
    ds = tenant.create_dataset("events")
    fid = seed_file(server, tenant, ds["id"])
    assert tenant.get("/v1/files/%s/events" % fid).json() == {"events": []}
    rid = seed_run(server, tenant, ds["id"], fid, "ai_record", "waiting")
    for kind, step in [("queued", None), ("step_started", "tika"), ("waiting", "tika")]:
        psql(server, "INSERT INTO run_events (seq, tenant_id, dataset_id, file_id, run_id,"
                     " pipeline, step, kind, state, detail) VALUES (sluice_event_places(%s, 1),"
                     " %s, %s, %s, %s, 'ai_record', %s, %s, 'waiting', '{\"n\": 1}')" % (
                         q(ds["id"]), q(tenant.tenant_id), q(ds["id"]), q(fid), q(rid),
                         q(step) if step else "NULL", q(kind)))
    r = tenant.get("/v1/files/%s/events" % fid)
    assert r.status_code == 200, r.text
    events = r.json()["events"]
    assert set(r.json()) == {"events"}
    assert [e["kind"] for e in events] == ["queued", "step_started", "waiting"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    for e in events:
        assert EVENT_KEYS <= set(e), sorted(e)
        assert TS_RE.match(e["at"])
        assert e["run_id"] == rid and e["pipeline"] == "ai_record"
        assert e["detail"] == {"n": 1}
    assert events[0]["step"] is None and events[1]["step"] == "tika"

    r = tenant.get("/v1/files/%s/events?after=%d" % (fid, seqs[0]))
    assert [e["seq"] for e in r.json()["events"]] == seqs[1:]
    r = tenant.get("/v1/files/%s/events?after=%d" % (fid, seqs[2]))
    assert r.json() == {"events": []}
    assert_error(tenant.get("/v1/files/%s/events?after=abc" % fid), 400, "invalid_request")
    assert_error(tenant.get("/v1/files/%s/events" % uuid.uuid4()), 404, "not_found")


def test_upload_records_queued_events(server, tenant, samples):
    ds = tenant.create_dataset("ev-upload")
    [f] = upload_ok(tenant, ds["id"], [samples / "notes.txt"])
    events = tenant.get("/v1/files/%s/events" % f["id"]).json()["events"]
    queued = {e["run_id"] for e in events if e["kind"] == "queued"}
    assert queued == {run["id"] for run in f["runs"]}


# ---------------------------------------------------------------- delete

def wait_gone(server, key, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.blob_exists(key):
            return True
        time.sleep(0.05)
    return False


def test_delete_removes_everything(server, tenant, samples):
    ds = tenant.create_dataset("delete")
    [f, keep] = upload_ok(tenant, ds["id"], [("blob.bin", os.urandom(4096)), ("keep.txt", b"stays\n")])
    fid = f["id"]
    key = psql(server, "SELECT storage_key FROM files WHERE id = %s" % q(fid))
    assert server.blob_exists(key)

    # An artifact (row + blob) and a record, as a finished run would leave them.
    aid = str(uuid.uuid4())
    akey = "artifacts/%s/%s" % (tenant.tenant_id, aid)
    server.put_blob(akey, b"extracted text")
    psql(server, "INSERT INTO artifacts (id, tenant_id, file_id, kind, mime, size, sha256,"
                 " storage_key) VALUES (%s, %s, %s, 'text', 'text/plain', 14, %s, %s)" % (
                     q(aid), q(tenant.tenant_id), q(fid), q(hashlib.sha256(b"x").hexdigest()),
                     q(akey)))
    psql(server, "INSERT INTO records (id, tenant_id, dataset_id, file_id, data) VALUES"
                 " (%s, %s, %s, %s, '{\"total\": 1}')" % (
                     q(uuid.uuid4()), q(tenant.tenant_id), q(ds["id"]), q(fid)))

    r = tenant.delete("/v1/files/%s" % fid)
    assert r.status_code == 204, r.text
    assert r.content == b""

    assert_error(tenant.get("/v1/files/%s" % fid), 404, "not_found")
    assert_error(tenant.get("/v1/files/%s/events" % fid), 404, "not_found")
    assert_error(tenant.get("/v1/files/%s/content" % fid), 404, "not_found")
    assert_error(tenant.delete("/v1/files/%s" % fid), 404, "not_found")
    for table, col in [("files", "id"), ("runs", "file_id"), ("run_events", "file_id"),
                       ("artifacts", "file_id"), ("records", "file_id")]:
        n = int(psql(server, "SELECT count(*) FROM %s WHERE %s = %s" % (table, col, q(fid))))
        assert n == 0, "%s still has %d rows of the deleted file" % (table, n)
    assert wait_gone(server, key), "the file's blob is still in storage"
    assert wait_gone(server, akey), "the artifact's blob is still in storage"

    # The other file of the same upload is untouched.
    listed = tenant.get("/v1/datasets/%s/files" % ds["id"]).json()["files"]
    assert [x["id"] for x in listed] == [keep["id"]]
    assert tenant.get("/v1/files/%s/content" % keep["id"]).content == b"stays\n"
    assert_error(tenant.delete("/v1/files/not-a-uuid"), 404, "not_found")


# ---------------------------------------------------------------- content

def test_content_is_the_original_bytes(server, tenant, samples):
    ds = tenant.create_dataset("content")
    data = (samples / "invoice-acme.pdf").read_bytes()
    [f] = upload_ok(tenant, ds["id"], [samples / "invoice-acme.pdf"])
    r = tenant.get("/v1/files/%s/content" % f["id"])
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Type"] == f["mime"]
    assert f["mime"] == "application/pdf"
    assert int(r.headers["Content-Length"]) == len(data)

    [e] = upload_ok(tenant, ds["id"], [("empty.txt", b"")])
    r = tenant.get("/v1/files/%s/content" % e["id"])
    assert r.status_code == 200 and r.content == b""


def test_content_streams_a_large_file(server, tenant):
    ds = tenant.create_dataset("big")
    data = os.urandom(3 * 1024 * 1024 + 12345)  # several 256 KiB chunks, odd tail
    fid = seed_file(server, tenant, ds["id"], content=data, mime="application/octet-stream")
    r = tenant.get("/v1/files/%s/content" % fid)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- process

def test_process_named_pipeline(server, tenant):
    ds = tenant.create_dataset("process")
    fid = seed_file(server, tenant, ds["id"], mime="text/plain")
    r = tenant.post("/v1/files/%s/process" % fid, json={"pipelines": ["ai_record"]})
    assert r.status_code == 202, r.text
    f = r.json()
    assert_file_shape(f)
    assert f["id"] == fid
    assert [run["pipeline"] for run in f["runs"]] == ["ai_record"]
    assert run_count(server, fid, "ai_record") == 1
    assert run_count(server, fid) == 1
    rid = f["runs"][0]["id"]
    n = psql(server, "SELECT count(*) FROM run_events WHERE run_id = %s AND kind = 'queued'"
                     " AND state = 'queued'" % q(rid))
    assert int(n) == 1


def test_process_does_not_start_a_second_active_run(server, tenant):
    ds = tenant.create_dataset("active")
    fid = seed_file(server, tenant, ds["id"], mime="application/pdf")
    active = seed_run(server, tenant, ds["id"], fid, "file_view", "waiting")
    for _ in range(2):
        r = tenant.post("/v1/files/%s/process" % fid, json={"pipelines": ["file_view"]})
        assert r.status_code == 202, r.text
        runs = [x for x in r.json()["runs"] if x["pipeline"] == "file_view"]
        assert [x["id"] for x in runs] == [active]  # the response shows the active one
        assert runs[0]["state"] == "waiting"
        assert run_count(server, fid, "file_view") == 1
    events = int(psql(server, "SELECT count(*) FROM run_events WHERE file_id = %s" % q(fid)))
    assert events == 0  # no run inserted, so no 'queued' event either

    # A finished run does not block a new one.
    psql(server, "UPDATE runs SET state = 'failed' WHERE id = %s" % q(active))
    r = tenant.post("/v1/files/%s/process" % fid, json={"pipelines": ["file_view"]})
    assert r.status_code == 202
    assert run_count(server, fid, "file_view") == 2


def test_process_empty_body_runs_matching_pipelines(server, tenant):
    ds = tenant.create_dataset("match")
    pdf = seed_file(server, tenant, ds["id"], mime="application/pdf", name="a.pdf")
    txt = seed_file(server, tenant, ds["id"], mime="text/plain", name="a.txt")
    blob = seed_file(server, tenant, ds["id"], mime="application/octet-stream", name="a.bin")

    r = tenant.post("/v1/files/%s/process" % pdf)
    assert r.status_code == 202, r.text
    assert sorted(x["pipeline"] for x in r.json()["runs"]) == ["ai_record", "file_view"]
    r = tenant.post("/v1/files/%s/process" % txt, data=b"",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    assert [x["pipeline"] for x in r.json()["runs"]] == ["ai_record"]
    r = tenant.post("/v1/files/%s/process" % blob, json={})
    assert r.status_code == 202, r.text
    assert r.json()["runs"] == []
    assert run_count(server, blob) == 0


def test_process_bad_requests(server, tenant):
    ds = tenant.create_dataset("badproc")
    fid = seed_file(server, tenant, ds["id"])
    url = "/v1/files/%s/process" % fid
    assert_error(tenant.post(url, json={"pipelines": ["no_such_pipeline"]}), 400,
                 "unknown_pipeline")
    assert_error(tenant.post(url, json={"pipelines": ["ai_record", "nope"]}), 400,
                 "unknown_pipeline")
    for body in [{"pipelines": "ai_record"}, {"pipelines": []}, {"pipelines": [1]}]:
        assert_error(tenant.post(url, json=body), 400)
    for raw in [b"{", b"[]", b"\"x\"", b"nonsense"]:
        assert_error(tenant.post(url, data=raw, headers={"Content-Type": "application/json"}), 400)
    assert run_count(server, fid) == 0  # a bad request starts nothing
    assert_error(tenant.post("/v1/files/%s/process" % uuid.uuid4(),
                             json={"pipelines": ["ai_record"]}), 404, "not_found")
    assert_error(tenant.post("/v1/files/%s/process" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.post("/v1/files/bad-id/process"), 404, "not_found")


def test_process_idempotency_key_replays(server, tenant):
    ds = tenant.create_dataset("idem")
    fid = seed_file(server, tenant, ds["id"], mime="text/plain")
    hdr = {"Idempotency-Key": "proc-" + uuid.uuid4().hex}
    r1 = tenant.post("/v1/files/%s/process" % fid, json={"pipelines": ["ai_record"]}, headers=hdr)
    assert r1.status_code == 202, r1.text
    assert run_count(server, fid, "ai_record") == 1
    # Once the first run has ended, a replay must still start nothing. (The test once
    # ended it by hand in SQL, which left a succeeded ai_record run without its record
    # when the run was slow: the fault pass counts one record per such run.)
    assert tenant.wait_file(fid)["status"] == "done"
    r2 = tenant.post("/v1/files/%s/process" % fid, json={"pipelines": ["ai_record"]}, headers=hdr)
    assert r2.status_code == 202, r2.text
    assert r2.content == r1.content
    assert run_count(server, fid, "ai_record") == 1
    # A new key is new work.
    r3 = tenant.post("/v1/files/%s/process" % fid, json={"pipelines": ["ai_record"]},
                     headers={"Idempotency-Key": "proc-" + uuid.uuid4().hex})
    assert r3.status_code == 202
    assert run_count(server, fid, "ai_record") == 2
    assert_error(tenant.post("/v1/files/%s/process" % fid, headers={"Idempotency-Key": "k" * 300}),
                 400)
