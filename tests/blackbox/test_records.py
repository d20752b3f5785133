"""Black-box tests of GET /v1/datasets/{id}/records (API.md "Records").

Records are normally written by the `record` step of the ai_record pipeline.
To test the endpoint on its own, with exact values and before any pipeline
has run, these tests insert `files` and `records` rows straight into the
server's database with psql (server.database_url) — the schema of
db/migrations/001_init.sql — and then read them back through the API.
"""

import csv
import io
import json
import re
import subprocess
import uuid

import pytest
import requests

from sluice_harness import pg_bindir

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def psql(url, sql):
    r = subprocess.run([str(pg_bindir() / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def lit(s):
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def insert_record(server, tenant_id, dataset_id, name, data, seconds):
    """Inserts a file row and its record; created_at = epoch + seconds (ordering).
    Returns (file_id, record_id)."""
    fid, rid = str(uuid.uuid4()), str(uuid.uuid4())
    psql(server.database_url,
         "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
         "storage_key) VALUES ('%s', '%s', '%s', '%s', %s, 1, repeat('0', 64), 'text/plain', "
         "'%s/%s');"
         "INSERT INTO records (id, tenant_id, dataset_id, file_id, data, created_at) VALUES "
         "('%s', '%s', '%s', '%s', %s::jsonb, to_timestamp(1700000000 + %d))"
         % (fid, tenant_id, dataset_id, uuid.uuid4(), lit(name), tenant_id, fid,
            rid, tenant_id, dataset_id, fid, lit(json.dumps(data)), seconds))
    return fid, rid


def assert_error(r, status, code=None):
    assert r.status_code == status, "%d %s" % (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body


def test_records_empty(tenant):
    d = tenant.create_dataset("empty")
    r = tenant.get("/v1/datasets/%s/records" % d["id"])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"records": []}
    r = tenant.get("/v1/datasets/%s/records?format=csv" % d["id"])
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.content == b"file_id,file_name,title,reference,date,total,currency,email\r\n"


def test_records_json(server, tenant):
    d = tenant.create_dataset("inv")
    f1, r1 = insert_record(server, tenant.tenant_id, d["id"], "a.pdf",
                           {"title": "Invoice 1", "total": 12.5}, 1)
    f2, r2 = insert_record(server, tenant.tenant_id, d["id"], "b.pdf",
                           {"title": "Invoice 2", "nested": {"k": [1, 2]}}, 2)
    r = tenant.get("/v1/datasets/%s/records" % d["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"records"}
    recs = body["records"]
    assert [x["id"] for x in recs] == [r1, r2]  # oldest first
    for x in recs:
        # version and provenance: API.md "Lifecycle and access" (migration 011);
        # a row inserted by hand is version 1 with every provenance key null
        assert set(x) == {"id", "file_id", "data", "created_at", "version", "provenance"}
        assert x["version"] == 1
        assert x["provenance"] == {k: None for k in ("extractor", "model", "pipeline",
                                                     "flow_version", "run_id", "text_source")}
        assert RFC3339.match(x["created_at"])
    assert recs[0]["file_id"] == f1 and recs[1]["file_id"] == f2
    assert recs[0]["data"] == {"title": "Invoice 1", "total": 12.5}
    assert recs[1]["data"] == {"title": "Invoice 2", "nested": {"k": [1, 2]}}
    assert recs[0]["created_at"] == "2023-11-14T22:13:21.000Z"
    # explicit format=json is the same
    assert tenant.get("/v1/datasets/%s/records?format=json" % d["id"]).json() == body


def test_records_csv_columns_and_values(server, tenant):
    schema = {"type": "object", "properties": {
        "zeta": {"type": "string"}, "amount": {"type": "number"}, "ok": {"type": "boolean"},
        "missing": {"type": "string"}, "obj": {"type": "object"}, "arr": {"type": "array"},
        "nul": {"type": "null"}}}
    d = tenant.create_dataset("csv", schema)
    f1, _ = insert_record(server, tenant.tenant_id, d["id"], "one.pdf", {
        "zeta": "plain", "amount": 12.5, "ok": True, "obj": {"a": 1, "b": "x"},
        "arr": [1, "two"], "nul": None, "extra": "not a column"}, 1)
    f2, _ = insert_record(server, tenant.tenant_id, d["id"], "two.pdf",
                          {"zeta": "second", "amount": -3, "ok": False}, 2)
    r = tenant.get("/v1/datasets/%s/records?format=csv" % d["id"])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = r.content.decode("utf-8")
    lines = text.split("\r\n")
    assert lines[0] == "file_id,file_name,zeta,amount,ok,missing,obj,arr,nul"  # schema order
    assert lines[1] == '%s,one.pdf,plain,12.5,true,,"{""a"":1,""b"":""x""}","[1,""two""]",' % f1
    # A negative JSON number is a number, not a formula: no guard quote.
    assert lines[2] == "%s,two.pdf,second,-3,false,,,," % f2
    assert lines[3:] == [""]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1][6] == '{"a":1,"b":"x"}' and json.loads(rows[1][7]) == [1, "two"]


def test_records_csv_quoting_and_formula_injection(server, tenant):
    schema = {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"},
        "d": {"type": "string"}, "e": {"type": "string"}, "f": {"type": "string"}}}
    d = tenant.create_dataset("inj", schema)
    data = {"a": "comma, inside", "b": 'say "hi"', "c": "line1\nline2\r\nline3",
            "d": "=HYPERLINK(\"http://evil\",\"x\")", "e": "+1-2", "f": "@SUM(A1)"}
    fid, _ = insert_record(server, tenant.tenant_id, d["id"], "-evil,name.pdf", data, 1)
    fid2, _ = insert_record(server, tenant.tenant_id, d["id"], "ok.pdf",
                            {"a": "-minus", "b": "caf\u00e9 \u2713", "c": "", "d": "a=b"}, 2)
    r = tenant.get("/v1/datasets/%s/records?format=csv" % d["id"])
    assert r.status_code == 200, r.text
    text = r.content.decode("utf-8")
    # The exact bytes: RFC 4180 quoting, doubled quotes, a leading ' before = + - @.
    want1 = ('%s,"\'-evil,name.pdf","comma, inside","say ""hi""","line1\nline2\r\nline3",'
             '"\'=HYPERLINK(""http://evil"",""x"")",\'+1-2,\'@SUM(A1)\r\n' % fid)
    want2 = "%s,ok.pdf,'-minus,caf\u00e9 \u2713,,a=b,,\r\n" % fid2
    assert text == "file_id,file_name,a,b,c,d,e,f\r\n" + want1 + want2
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 3
    assert rows[1][1] == "'-evil,name.pdf"
    assert rows[1][2:] == ["comma, inside", 'say "hi"', "line1\nline2\r\nline3",
                           "'=HYPERLINK(\"http://evil\",\"x\")", "'+1-2", "'@SUM(A1)"]


def test_records_limit_and_format_errors(server, tenant):
    d = tenant.create_dataset("lim")
    ids = [insert_record(server, tenant.tenant_id, d["id"], "f%d.txt" % i, {"title": str(i)}, i)[1]
           for i in range(3)]
    r = tenant.get("/v1/datasets/%s/records?limit=2" % d["id"])
    assert [x["id"] for x in r.json()["records"]] == ids[:2]
    r = tenant.get("/v1/datasets/%s/records?format=csv&limit=1" % d["id"])
    assert len(r.content.decode().split("\r\n")) == 3  # header, one row, trailing ""
    assert len(tenant.get("/v1/datasets/%s/records?limit=10000" % d["id"]).json()["records"]) == 3
    for bad in ("0", "-1", "10001", "abc", "", "2x"):
        assert_error(tenant.get("/v1/datasets/%s/records?limit=%s" % (d["id"], bad)), 400)
    for fmt in ("xml", "CSVX", "", "csv%20"):
        assert_error(tenant.get("/v1/datasets/%s/records?format=%s" % (d["id"], fmt)), 400,
                     "invalid_format")


def test_records_other_tenant_and_missing(server, tenant):
    other = server.create_tenant("other")
    theirs = other.create_dataset("theirs")
    insert_record(server, other.tenant_id, theirs["id"], "x.pdf", {"title": "secret"}, 1)
    assert_error(tenant.get("/v1/datasets/%s/records" % theirs["id"]), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/%s/records?format=csv" % theirs["id"]), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/%s/records" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/bogus/records"), 404, "not_found")
    assert_error(requests.get(server.url + "/v1/datasets/%s/records" % theirs["id"], timeout=30),
                 401, "unauthorized")
    # The owner sees it.
    recs = other.get("/v1/datasets/%s/records" % theirs["id"]).json()["records"]
    assert [x["data"] for x in recs] == [{"title": "secret"}]


def test_records_only_from_that_dataset(server, tenant):
    d1 = tenant.create_dataset("one")
    d2 = tenant.create_dataset("two")
    _, r1 = insert_record(server, tenant.tenant_id, d1["id"], "a.txt", {"title": "a"}, 1)
    _, r2 = insert_record(server, tenant.tenant_id, d2["id"], "b.txt", {"title": "b"}, 2)
    assert [x["id"] for x in tenant.get("/v1/datasets/%s/records" % d1["id"]).json()["records"]] == [r1]
    assert [x["id"] for x in tenant.get("/v1/datasets/%s/records" % d2["id"]).json()["records"]] == [r2]
