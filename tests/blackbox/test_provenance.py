"""Provenance and versions (API.md "Lifecycle and access"; docs/lifecycle.md).

Every run of ai_record that makes a record adds a version (1, 2, 3 ...) with
its provenance {extractor, model, pipeline, flow_version, run_id, text_source};
the dataset listing (JSON and CSV) and the file document show the latest,
GET /v1/files/{id}/records every version, newest first. Artifacts carry the
sha256 of their bytes, are stored under a key of their run and kind, and a
re-process never overwrites an older run's artifact.
"""
import csv
import hashlib
import io
import json
import re
import subprocess
import time
import uuid

from sluice_harness import pg_bindir

HEX64 = re.compile(r"^[0-9a-f]{64}$")
PROV_KEYS = {"extractor", "model", "pipeline", "flow_version", "run_id", "text_source"}
INVOICE = (b"Invoice INV-2026-0042\nDate: 2026-03-01\nTotal due: 12.50 EUR\n"
           b"Contact: billing@acme.example\n")


def psql(server, sql):
    r = subprocess.run([str(pg_bindir() / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1",
                        server.database_url, "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def ai_runs(doc):
    """The file's ai_record runs, oldest first (the document lists them so)."""
    return [r for r in doc["runs"] if r["pipeline"] == "ai_record"]


def wait_runs(t, fid, n, timeout=90):
    """Waits until the file has n ai_record runs and is done; returns the document."""
    end = time.time() + timeout
    doc = None
    while time.time() < end:
        doc = t.get("/v1/files/%s" % fid).json()
        if len(ai_runs(doc)) == n and doc["status"] in ("done", "failed"):
            assert doc["status"] == "done", doc
            return doc
        time.sleep(0.2)
    raise AssertionError("file %s: not %d ai_record runs done: %r" % (fid, n, doc))


def upload_text(t, ds, name, data):
    r = t.upload(ds, [(name, data, "text/plain")])
    assert r.status_code == 202, r.text
    return r.json()["files"][0]["id"]


def reprocess(t, fid, n):
    """POST /v1/files/{id}/process for ai_record; waits for run n; returns the document."""
    r = t.post("/v1/files/%s/process" % fid, json={"pipelines": ["ai_record"]})
    assert r.status_code == 202, r.text
    return wait_runs(t, fid, n)


def versions(t, fid):
    r = t.get("/v1/files/%s/records" % fid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"records"}
    return body["records"]


def check_versions(t, fid, doc, model, extractor="plain_text", text_source="text_layer"):
    """The checks every provenance test shares; returns the records, newest first."""
    runs = ai_runs(doc)
    recs = versions(t, fid)
    assert [r["version"] for r in recs] == list(range(len(runs), 0, -1))  # newest first
    # one version per run, each naming its own run: distinct, and matching the runs
    assert [r["provenance"]["run_id"] for r in recs] == [r["id"] for r in reversed(runs)]
    assert len({r["id"] for r in recs}) == len(recs)
    for rec, run in zip(recs, reversed(runs)):
        assert {"id", "file_id", "data", "created_at", "version", "provenance"} <= set(rec)
        assert rec["file_id"] == fid
        prov = rec["provenance"]
        assert set(prov) == PROV_KEYS, prov
        assert prov["pipeline"] == "ai_record"
        assert HEX64.match(run["flow_version"] or ""), run
        assert prov["flow_version"] == run["flow_version"]  # the run's, from the engine
        assert prov["text_source"] == text_source == doc["text_source"]
        assert prov["extractor"] == extractor
        assert prov["model"] == model
        assert rec["data"] and rec["data"].get("reference") == "INV-2026-0042", rec
    # the file document's record is the latest version
    assert doc["record"] == recs[0]["data"]
    assert doc["record_version"] == recs[0]["version"]
    return recs


def check_artifacts(t, server, doc):
    """Every ai_record run's text artifact: sha256 of the bytes served, kept in
    its own row (a small text: migration 018) or stored under
    artifacts/<tenant>/<run>/text.<uuid>. Returns {artifact id: bytes}."""
    got = {}
    keys = dict(line.split("|") for line in psql(
        server, "SELECT id, coalesce(storage_key, 'row:' || length(data))"
                " FROM artifacts WHERE file_id = '%s'" % doc["id"]).splitlines())
    for run in ai_runs(doc):
        [art] = [a for a in run["artifacts"] if a["kind"] == "text"]
        r = t.get("/v1/artifacts/%s" % art["id"])
        assert r.status_code == 200, r.text
        assert HEX64.match(art["sha256"]), art
        assert art["sha256"] == hashlib.sha256(r.content).hexdigest()
        assert art["size"] == len(r.content)
        if len(r.content) <= 32 * 1024:
            assert keys[art["id"]] == "row:%d" % len(r.content)
        else:
            assert re.fullmatch(r"artifacts/%s/%s/text\.[0-9a-f-]{36}" % (t.tenant_id, run["id"]),
                                keys[art["id"]]), keys[art["id"]]
        got[art["id"]] = r.content
    assert len(got) == len(set(got))  # one artifact per run: none shared
    return got


def test_three_versions_with_provenance_local(server, tenant):
    t = tenant
    ds = t.create_dataset("prov")["id"]
    fid = upload_text(t, ds, "invoice.txt", INVOICE)
    other = upload_text(t, ds, "other.txt", b"Title line\nReference: DLV-77813\n")
    doc = wait_runs(t, fid, 1)
    wait_runs(t, other, 1)
    recs = check_versions(t, fid, doc, "local")
    assert [r["version"] for r in recs] == [1]
    first_arts = check_artifacts(t, server, doc)

    doc = reprocess(t, fid, 2)
    doc = reprocess(t, fid, 3)
    recs = check_versions(t, fid, doc, "local")
    assert [r["version"] for r in recs] == [3, 2, 1]
    assert recs[0]["created_at"] >= recs[1]["created_at"] >= recs[2]["created_at"]
    assert doc["record_version"] == 3

    # the old runs' artifacts are still there, unchanged, next to the new ones
    arts = check_artifacts(t, server, doc)
    assert len(arts) == 3
    for aid, data in first_arts.items():
        assert arts[aid] == data
        assert t.get("/v1/artifacts/%s" % aid).content == data
    # small texts: every byte is in the artifact's row, none in the store
    assert psql(server, "SELECT count(*) FROM artifacts WHERE file_id = '%s'"
                        " AND storage_key IS NULL AND data IS NOT NULL" % fid) == "3"

    # the dataset listing shows each file's latest version only
    listing = t.get("/v1/datasets/%s/records" % ds).json()["records"]
    assert sorted(r["file_id"] for r in listing) == sorted([fid, other])
    [mine] = [r for r in listing if r["file_id"] == fid]
    assert mine["id"] == recs[0]["id"] and mine["version"] == 3
    assert mine["provenance"] == recs[0]["provenance"]
    rows = list(csv.reader(io.StringIO(t.get("/v1/datasets/%s/records?format=csv" % ds).text)))
    assert [r[0] for r in rows[1:]].count(fid) == 1 and len(rows) == 3, rows

    # the versions' own JSON: every read the same (ETag like the other reads)
    r = t.get("/v1/files/%s/records" % fid)
    assert r.headers.get("ETag")
    r2 = t.get("/v1/files/%s/records" % fid, headers={"If-None-Match": r.headers["ETag"]})
    assert r2.status_code == 304


def test_text_artifact_in_its_row_or_in_the_store(server, tenant):
    """A text of at most 32 KiB is kept in its artifact's row (migration 018);
    a longer one is a blob under artifacts/<tenant>/<run>/text.<uuid>.
    Both read back byte-exact: by the record step (the record is made from
    the text) and by the download."""
    t = tenant
    ds = t.create_dataset("prov-sizes")["id"]
    small = INVOICE + b"x" * (32 * 1024 - len(INVOICE))  # exactly the limit
    big = INVOICE + b"y" * (32 * 1024 + 1 - len(INVOICE))  # one byte over
    fids = [upload_text(t, ds, "small.txt", small), upload_text(t, ds, "big.txt", big)]
    for fid, data in zip(fids, [small, big]):
        doc = wait_runs(t, fid, 1)
        check_versions(t, fid, doc, "local")  # the record step read the text back
        arts = check_artifacts(t, server, doc)
        assert list(arts.values()) == [data]
    [small_key, big_key] = [psql(server, "SELECT coalesce(storage_key, '-') FROM artifacts"
                                         " WHERE file_id = '%s'" % fid) for fid in fids]
    assert small_key == "-"
    assert big_key.startswith("artifacts/%s/" % t.tenant_id) and server.blob_exists(big_key)

    # deleting the files removes the big one's blob; the small one had none
    for fid in fids:
        assert t.delete("/v1/files/%s" % fid).status_code == 204
    end = time.time() + 10
    while server.blob_exists(big_key) and time.time() < end:
        time.sleep(0.05)
    assert not server.blob_exists(big_key)


REWRITE_FLOW = r"""
return flow { start = "w", steps = { w = { run = function(ctx, file)
  local ids = {}
  for i, d in ipairs({ string.rep("a", 40000), "small", string.rep("b", 40000),
                       string.rep("c", 40000) }) do
    local id, err = sl.artifact { kind = "text", mime = "text/plain", data = d }
    if not id then return nil, err end
    ids[i] = id
  end
  ctx.ids = ids
  return true
end } } }
"""


def test_a_rewritten_artifact_leaves_no_blob_behind(start_server, tmp_path):
    """A step (or its retry) that writes a kind again: big (a blob), small
    (the row), big, big. The row keeps its id and ends with the last bytes;
    every blob it no longer points at is deleted, the one that went back into
    the row included (it was left behind before), and no key is written twice."""
    flow = tmp_path / "rewrite.lua"
    flow.write_text(REWRITE_FLOW)
    srv = start_server(extra_yaml='pipelines:\n  - {name: rewrite, flow: "%s", match: ["text/*"]}\n'
                       % flow)
    t = srv.create_tenant("rewrite")
    ds = t.create_dataset("rw")["id"]
    fid = upload_text(t, ds, "a.txt", b"some text\n")
    doc = t.wait_file(fid, timeout=60)
    [run] = [r for r in doc["runs"] if r["pipeline"] == "rewrite"]
    assert run["state"] == "succeeded", doc
    [art] = [a for a in run["artifacts"] if a["kind"] == "text"]
    assert t.get("/v1/artifacts/%s" % art["id"]).content == b"c" * 40000
    ids = json.loads(psql(srv, "SELECT ctx->'ids' FROM runs WHERE id = '%s'" % run["id"]))
    assert ids == [art["id"]] * 4  # one row, rewritten
    key = psql(srv, "SELECT storage_key FROM artifacts WHERE id = '%s'" % art["id"])
    assert re.fullmatch(r"artifacts/%s/%s/text\.[0-9a-f-]{36}" % (t.tenant_id, run["id"]), key)
    prefix = "artifacts/%s/%s/" % (t.tenant_id, run["id"])
    end = time.time() + 10
    while srv.blob_keys(prefix) != [key] and time.time() < end:
        time.sleep(0.05)
    assert srv.blob_keys(prefix) == [key]
    assert srv.get_blob(key) == b"c" * 40000


def test_record_model_from_openai(start_server, standins):
    openai = standins("openai")
    srv = start_server(extra_yaml=(
        "services:\n"
        "  openai: {base_url: \"%s/v1\", api_key: sk-test, model: gpt-4o-mini, "
        "timeout_ms: 5000}\n" % openai.url))
    t = srv.create_tenant("prov-ai")
    schema = {"type": "object", "properties": {"reference": {"type": "string"},
                                               "total": {"type": "number"}}}
    ds = t.create_dataset("prov-ai", schema=schema)["id"]
    fid = upload_text(t, ds, "invoice.txt", INVOICE)
    wait_runs(t, fid, 1)
    doc = reprocess(t, fid, 2)
    recs = versions(t, fid)
    assert [r["version"] for r in recs] == [2, 1]
    for rec in recs:
        assert rec["provenance"]["model"] == "gpt-4o-mini", rec
        assert rec["provenance"]["extractor"] == "plain_text"
        assert rec["provenance"]["pipeline"] == "ai_record"
    assert [r["provenance"]["run_id"] for r in recs] == [r["id"] for r in reversed(ai_runs(doc))]
    assert openai.stats()["requests"] >= 2


def test_a_run_has_one_version(server, tenant):
    """A record step that runs again in the same run (taken over after a
    crash) replaces its run's version instead of adding one: the writer the
    engine calls (sluice_record_put) is idempotent per run."""
    t = tenant
    ds = t.create_dataset("idem")["id"]
    fid = upload_text(t, ds, "invoice.txt", INVOICE)
    wait_runs(t, fid, 1)
    doc = reprocess(t, fid, 2)
    first, second = [r["id"] for r in ai_runs(doc)]
    prov = json.dumps({"extractor": "x", "model": "y", "pipeline": "ai_record",
                       "flow_version": "z"})
    v = psql(server, "SELECT sluice_record_put('%s', '%s', '%s', '%s', '%s', "
                     "'{\"again\": true}', '%s')" % (uuid.uuid4(), t.tenant_id, ds, fid, first,
                                                     prov))
    assert v == "1"
    recs = versions(t, fid)
    assert [r["version"] for r in recs] == [2, 1]
    assert recs[1]["data"] == {"again": True} and recs[1]["provenance"]["run_id"] == first
    assert recs[0]["provenance"]["run_id"] == second
    # the latest is still run 2's
    assert t.get("/v1/files/%s" % fid).json()["record_version"] == 2
    # a new run: the next number
    third = str(uuid.uuid4())
    v = psql(server, "SELECT sluice_record_put('%s', '%s', '%s', '%s', '%s', '{}', '%s')"
             % (uuid.uuid4(), t.tenant_id, ds, fid, third, prov))
    assert v == "3"
    listing = t.get("/v1/datasets/%s/records" % ds).json()["records"]
    assert [(r["version"], r["provenance"]["run_id"]) for r in listing] == [(3, third)]


def test_file_records_of_another_tenant_is_404(server, tenant):
    t = tenant
    ds = t.create_dataset("mine")["id"]
    fid = upload_text(t, ds, "invoice.txt", INVOICE)
    wait_runs(t, fid, 1)
    assert len(versions(t, fid)) == 1
    other = server.create_tenant("intruder")
    for path in ("/v1/files/%s/records" % fid, "/v1/files/%s/records" % uuid.uuid4(),
                 "/v1/files/not-a-uuid/records"):
        r = other.get(path) if "not-a-uuid" not in path else t.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    # a file without records: an empty list, not 404
    fid2 = upload_text(t, ds, "empty.txt", b"")
    t.wait_file(fid2)
    assert versions(t, fid2) == []
