"""Black-box tests of upload without processing (issue 13; API.md "Lifecycle
and access"; docs/lifecycle.md "Upload without processing"):

- POST /v1/datasets/{id}/files?process=false stores files with "runs": [] and
  "status": "uploaded", and nothing starts them until POST /v1/files/{id}/process;
- a dataset's "auto_process": false does the same by default (?process=true wins);
- a dataset's "pipelines" limits the pipelines at upload and at /process
  (an explicit pipeline it does not allow -> 400 pipeline_not_allowed);
- a file no pipeline takes is "done" with a "reason", never a silent done;
- bad values are 400 JSON errors, and an Idempotency-Key replay still replays.
"""

import hashlib
import io
import time
import uuid
import zipfile

import pytest

from test_files import assert_error, psql, q, run_count

pytestmark = pytest.mark.server_smoke


def upload(client, dataset_id, items, process=None, headers=None):
    params = None if process is None else {"process": process}
    r = client.upload(dataset_id, items, headers=headers, params=params)
    assert r.status_code == 202, "%d %s" % (r.status_code, r.text)
    return r.json()["files"]


def make_dataset(client, **fields):
    r = client.post("/v1/datasets", json=dict({"name": "proc"}, **fields))
    assert r.status_code == 201, r.text
    return r.json()


def zip_bytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello from inside a zip\n" * 20)
    return buf.getvalue()


def noise():
    """2 KiB that libmagic calls application/octet-stream (plain byte ramps look like TGA)."""
    return b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(64))


def get_file(client, fid):
    r = client.get("/v1/files/%s" % fid)
    assert r.status_code == 200, r.text
    return r.json()


def assert_uploaded(f):
    assert f["status"] == "uploaded", f
    assert f["runs"] == [], f
    assert f.get("reason", "absent") is None, f  # the field is there, and null


def settle_engine(client, samples):
    """Makes the engine claim and finish work in another dataset: a file that
    should not run had every chance to be picked up by then."""
    other = make_dataset(client, name="other")
    [f] = upload(client, other["id"], [samples / "notes.txt"])
    client.wait_file(f["id"])


# ---------------------------------------------------------------- ?process=

def test_upload_without_processing_then_process(server, tenant, samples):
    ds = make_dataset(tenant)
    assert ds["auto_process"] is True and ds["pipelines"] is None  # the defaults
    files = upload(tenant, ds["id"], [samples / "notes.txt", samples / "invoice-acme.pdf"],
                   process="false")
    assert [f["name"] for f in files] == ["notes.txt", "invoice-acme.pdf"]
    for f in files:
        assert_uploaded(f)
        assert_uploaded(get_file(tenant, f["id"]))
        assert run_count(server, f["id"]) == 0

    # It stays so: no run starts by itself, whatever the engine does meanwhile.
    time.sleep(1.0)
    settle_engine(tenant, samples)
    for f in files:
        assert_uploaded(get_file(tenant, f["id"]))
        assert run_count(server, f["id"]) == 0

    # The listing's status filter knows the new status.
    r = tenant.get("/v1/datasets/%s/files?status=uploaded" % ds["id"])
    assert r.status_code == 200, r.text
    assert sorted(x["id"] for x in r.json()["files"]) == sorted(f["id"] for f in files)

    # /process starts them: every matching pipeline, then done.
    txt, pdf = files
    r = tenant.post("/v1/files/%s/process" % txt["id"])
    assert r.status_code == 202, r.text
    assert [x["pipeline"] for x in r.json()["runs"]] == ["ai_record"]
    assert r.json()["status"] in ("queued", "processing", "done")
    r = tenant.post("/v1/files/%s/process" % pdf["id"], json={"pipelines": ["file_view"]})
    assert r.status_code == 202, r.text
    assert [x["pipeline"] for x in r.json()["runs"]] == ["file_view"]
    for f in files:
        done = tenant.wait_file(f["id"])
        assert done["status"] == "done", done
        assert done["reason"] is None
        assert all(run["state"] == "succeeded" for run in done["runs"])
    assert tenant.get("/v1/datasets/%s/files?status=uploaded" % ds["id"]).json()["files"] == []


def test_process_param_values(server, tenant, samples):
    ds = make_dataset(tenant)
    for value in ("false", "0"):
        [f] = upload(tenant, ds["id"], [samples / "notes.txt"], process=value)
        assert_uploaded(f)
    for value in ("true", "1"):
        [f] = upload(tenant, ds["id"], [samples / "notes.txt"], process=value)
        assert [x["pipeline"] for x in f["runs"]] == ["ai_record"]
        assert f["runs"][0]["state"] == "queued" and f["status"] != "uploaded"
    before = int(psql(server, "SELECT count(*) FROM files WHERE dataset_id = %s" % q(ds["id"])))
    for value in ("yes", "", "TRUE", "2", "false ", "no", "x" * 40):
        r = tenant.upload(ds["id"], [samples / "notes.txt"], params={"process": value})
        assert_error(r, 400, "invalid_request")
    after = int(psql(server, "SELECT count(*) FROM files WHERE dataset_id = %s" % q(ds["id"])))
    assert after == before  # a refused upload stores nothing


def test_idempotent_replay_with_process_false(server, tenant, samples):
    ds = make_dataset(tenant)
    hdr = {"Idempotency-Key": "np-" + uuid.uuid4().hex}
    r1 = tenant.upload(ds["id"], [samples / "notes.txt"], headers=hdr, params={"process": "false"})
    assert r1.status_code == 202, r1.text
    [f] = r1.json()["files"]
    assert_uploaded(f)
    r2 = tenant.upload(ds["id"], [samples / "notes.txt"], headers=hdr, params={"process": "false"})
    assert r2.status_code == 202, r2.text
    assert r2.content == r1.content
    # Processing it later does not change what the key replays, nor store anything new.
    assert tenant.post("/v1/files/%s/process" % f["id"]).status_code == 202
    r3 = tenant.upload(ds["id"], [samples / "notes.txt"], headers=hdr, params={"process": "false"})
    assert r3.status_code == 202 and r3.content == r1.content
    n = int(psql(server, "SELECT count(*) FROM files WHERE dataset_id = %s" % q(ds["id"])))
    assert n == 1
    assert run_count(server, f["id"]) == 1


# ---------------------------------------------------------------- datasets

def test_dataset_auto_process_false(server, tenant, samples):
    ds = make_dataset(tenant, auto_process=False)
    assert ds["auto_process"] is False and ds["pipelines"] is None
    assert tenant.get("/v1/datasets/%s" % ds["id"]).json() == ds
    listed = [d for d in tenant.get("/v1/datasets").json()["datasets"] if d["id"] == ds["id"]]
    assert listed == [ds]

    [f] = upload(tenant, ds["id"], [samples / "notes.txt"])
    assert_uploaded(f)
    # An explicit ?process=true overrides the dataset's default.
    [g] = upload(tenant, ds["id"], [samples / "notes.txt"], process="true")
    assert [x["pipeline"] for x in g["runs"]] == ["ai_record"]
    tenant.wait_file(g["id"])
    assert_uploaded(get_file(tenant, f["id"]))
    assert run_count(server, f["id"]) == 0

    r = tenant.post("/v1/files/%s/process" % f["id"])
    assert r.status_code == 202, r.text
    assert [x["pipeline"] for x in r.json()["runs"]] == ["ai_record"]
    assert tenant.wait_file(f["id"])["status"] == "done"


def test_dataset_pipelines_limit_upload_and_process(server, tenant, samples):
    ds = make_dataset(tenant, pipelines=["file_view", "file_view"])
    assert ds["pipelines"] == ["file_view"]  # distinct names, in order
    assert ds["auto_process"] is True

    # A PDF matches ai_record and file_view; the dataset allows file_view only.
    [pdf] = upload(tenant, ds["id"], [samples / "invoice-acme.pdf"])
    assert [x["pipeline"] for x in pdf["runs"]] == ["file_view"]
    done = tenant.wait_file(pdf["id"])
    assert done["status"] == "done" and done["reason"] is None
    assert [x["pipeline"] for x in done["runs"]] == ["file_view"]

    # /process with a pipeline the dataset does not allow: refused, nothing starts.
    r = tenant.post("/v1/files/%s/process" % pdf["id"], json={"pipelines": ["ai_record"]})
    assert_error(r, 400, "pipeline_not_allowed")
    assert "ai_record" in r.json()["error"]["message"]
    r = tenant.post("/v1/files/%s/process" % pdf["id"],
                    json={"pipelines": ["file_view", "ai_record"]})
    assert_error(r, 400, "pipeline_not_allowed")
    assert run_count(server, pdf["id"], "ai_record") == 0
    assert run_count(server, pdf["id"]) == 1

    # /process with no body: every matching pipeline the dataset allows.
    r = tenant.post("/v1/files/%s/process" % pdf["id"])
    assert r.status_code == 202, r.text
    assert sorted(x["pipeline"] for x in r.json()["runs"]) == ["file_view", "file_view"]
    assert run_count(server, pdf["id"], "ai_record") == 0

    # A text file matches ai_record only: no pipeline of this dataset takes it.
    [txt] = upload(tenant, ds["id"], [samples / "notes.txt"])
    assert txt["runs"] == [] and txt["status"] == "done"
    assert "file_view" in txt["reason"] and "text/plain" in txt["reason"], txt["reason"]
    assert get_file(tenant, txt["id"])["reason"] == txt["reason"]


def test_dataset_bad_values(server, tenant):
    before = len(tenant.get("/v1/datasets").json()["datasets"])
    bad = [
        ({"auto_process": "false"}, "invalid_request"),
        ({"auto_process": 0}, "invalid_request"),
        ({"auto_process": [False]}, "invalid_request"),
        ({"pipelines": "ai_record"}, "invalid_request"),
        ({"pipelines": []}, "invalid_request"),
        ({"pipelines": [1]}, "invalid_request"),
        ({"pipelines": {"ai_record": True}}, "invalid_request"),
        ({"pipelines": ["ai_record", None]}, "invalid_request"),
        ({"pipelines": ["no_such_pipeline"]}, "unknown_pipeline"),
        ({"pipelines": ["ai_record", "nope"]}, "unknown_pipeline"),
    ]
    for fields, code in bad:
        r = tenant.post("/v1/datasets", json=dict({"name": "bad"}, **fields))
        assert_error(r, 400, code)
    assert len(tenant.get("/v1/datasets").json()["datasets"]) == before
    # null means the default for both.
    d = make_dataset(tenant, auto_process=None, pipelines=None)
    assert d["auto_process"] is True and d["pipelines"] is None


# ---------------------------------------------------------------- no pipeline takes it

def test_file_no_pipeline_takes_says_why(server, tenant, samples):
    ds = make_dataset(tenant)
    files = upload(tenant, ds["id"], [("archive.zip", zip_bytes()),
                                      ("blob.bin", noise()),
                                      samples / "notes.txt"])
    z, blob, txt = files
    assert z["mime"] == "application/zip", z["mime"]
    assert blob["mime"] == "application/octet-stream", blob["mime"]
    for f in (z, blob):
        assert f["runs"] == [] and f["status"] == "done", f  # terminal: nothing will run
        assert f["reason"] == "no pipeline matches %s" % f["mime"], f
        assert get_file(tenant, f["id"])["reason"] == f["reason"]
    assert txt["reason"] is None and txt["runs"]
    assert tenant.wait_file(txt["id"])["reason"] is None

    # Stored without processing, it has no reason yet; /process then gives it one.
    [later] = upload(tenant, ds["id"], [("later.zip", zip_bytes())], process="false")
    assert_uploaded(later)
    r = tenant.post("/v1/files/%s/process" % later["id"])
    assert r.status_code == 202, r.text
    f = r.json()
    assert f["runs"] == [] and f["status"] == "done"
    assert f["reason"] == "no pipeline matches application/zip"
    assert get_file(tenant, later["id"]) == f

    # A pipeline named explicitly runs (API.md: the body picks the pipelines), and
    # a file that has a run shows no reason.
    r = tenant.post("/v1/files/%s/process" % later["id"], json={"pipelines": ["ai_record"]})
    assert r.status_code == 202, r.text
    assert r.json()["reason"] is None and [x["pipeline"] for x in r.json()["runs"]] == ["ai_record"]


def test_live_events_of_a_file_stored_then_processed(server, tenant):
    from test_sse import stream
    ds = make_dataset(tenant)
    s = stream(server, tenant, ds["id"])
    try:
        [f] = upload(tenant, ds["id"], [("later.zip", zip_bytes())], process="false")
        got = s.take(until=lambda g: any(e["event"] == "file" for e in g), timeout=20)
        [up] = [e["data"] for e in got if e["event"] == "file"]
        assert (up["file_id"], up["kind"], up["state"]) == (f["id"], "uploaded", "uploaded")
        # /process starts no run (a zip): a file event says the file changed.
        assert tenant.post("/v1/files/%s/process" % f["id"]).status_code == 202
        got = s.take(until=lambda g: any(e["event"] == "file" for e in g), timeout=20)
        [done] = [e["data"] for e in got if e["event"] == "file"]
        assert (done["file_id"], done["kind"], done["state"]) == (f["id"], "processed", "done")
        assert int(done["seq"]) > int(up["seq"])
    finally:
        s.close()
