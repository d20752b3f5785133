"""Black-box tests of artifact downloads (api/artifacts.c):

GET /v1/artifacts/{id} (bytes, Content-Type, Content-Length, streamed),
GET /v1/artifacts/{id}/url (a signed URL that works without auth until it
expires; a changed one is 403) and GET /v1/blobs/{id}.

Artifacts are seeded as a row plus a blob under <storage_key> in the
server's storage (fs or S3), as a finished run would leave them, or as a
row holding its bytes (a small artifact, migration 018).
"""

import hashlib
import os
import re
import subprocess
import time
import urllib.parse
import uuid

import pytest
import requests

from sluice_harness import pg_bindir

from test_files import assert_error, psql, q, seed_file, seed_run

pytestmark = pytest.mark.server_smoke

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def seed_artifact(server, client, dataset_id, data, mime="image/png", kind="thumbnail",
                  file_id=None, run_id=None):
    """An artifact row and its blob. Returns (artifact_id, file_id)."""
    if file_id is None:
        file_id = seed_file(server, client, dataset_id, mime="application/pdf", name="src.pdf")
    aid = str(uuid.uuid4())
    key = "artifacts/%s/%s" % (client.tenant_id, aid)
    server.put_blob(key, data)
    psql(server, "INSERT INTO artifacts (id, tenant_id, file_id, run_id, kind, mime, size, sha256,"
                 " storage_key) VALUES (%s, %s, %s, %s, %s, %s, %d, %s, %s)" % (
                     q(aid), q(client.tenant_id), q(file_id), q(run_id) if run_id else "NULL",
                     q(kind), q(mime), len(data), q(hashlib.sha256(data).hexdigest()), q(key)))
    return aid, file_id


def seed_row_artifact(server, client, dataset_id, data, mime="text/plain", kind="text"):
    """An artifact whose bytes are in its row (migration 018: no blob). Returns its id."""
    file_id = seed_file(server, client, dataset_id, mime="text/plain", name="src.txt")
    aid = str(uuid.uuid4())
    psql(server, "INSERT INTO artifacts (id, tenant_id, file_id, kind, mime, size, sha256, data)"
                 " VALUES (%s, %s, %s, %s, %s, %d, %s, '\\x%s'::bytea)" % (
                     q(aid), q(client.tenant_id), q(file_id), q(kind), q(mime), len(data),
                     q(hashlib.sha256(data).hexdigest()), data.hex()))
    return aid


def signed_url(client, aid, ttl=None):
    path = "/v1/artifacts/%s/url" % aid + ("?ttl=%s" % ttl if ttl is not None else "")
    r = client.get(path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"url", "expires_at"}, body
    assert body["url"].startswith("/v1/blobs/"), body
    assert TS_RE.match(body["expires_at"]), body
    return body


def test_download_byte_exact(server, tenant):
    ds = tenant.create_dataset("art")
    data = os.urandom(700 * 1024 + 7)  # three storage reads, odd tail
    aid, _ = seed_artifact(server, tenant, ds["id"], data, mime="image/png")
    r = tenant.get("/v1/artifacts/%s" % aid)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.content == data

    text = "extracted text — ünïcödé\n".encode()
    tid, _ = seed_artifact(server, tenant, ds["id"], text, mime="text/plain", kind="text")
    r = tenant.get("/v1/artifacts/%s" % tid)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain"
    assert r.content == text

    eid, _ = seed_artifact(server, tenant, ds["id"], b"", mime="text/plain", kind="text")
    r = tenant.get("/v1/artifacts/%s" % eid)
    assert r.status_code == 200 and r.content == b""


def test_download_of_bytes_kept_in_the_row(server, tenant):
    """A small artifact's bytes live in its row: served byte-exact with the
    same headers as a stored one, by id and through a signed URL."""
    ds = tenant.create_dataset("inrow")
    data = "extracted text — ünïcödé\n".encode() + bytes(range(256))
    aid = seed_row_artifact(server, tenant, ds["id"], data, mime="text/plain; charset=utf-8")
    r = tenant.get("/v1/artifacts/%s" % aid)
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"] == "sandbox"
    body = signed_url(tenant, aid)
    r = requests.get(server.url + body["url"], timeout=10)
    assert r.status_code == 200 and r.content == data

    eid = seed_row_artifact(server, tenant, ds["id"], b"")
    r = tenant.get("/v1/artifacts/%s" % eid)
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"

    # the bytes are in exactly one place: a key or the row, never both nor neither
    fid = seed_file(server, tenant, ds["id"], mime="text/plain", name="x.txt")
    for cols, vals in [("storage_key, data", "'artifacts/x/y', '\\x00'::bytea"),
                       ("storage_key, data", "NULL, NULL")]:
        r = subprocess.run(
            [str(pg_bindir() / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", server.database_url,
             "-c", "INSERT INTO artifacts (id, tenant_id, file_id, kind, mime, size, sha256, %s)"
                   " VALUES (gen_random_uuid(), %s, %s, 'k', 'text/plain', 1, 'x', %s)" % (
                       cols, q(tenant.tenant_id), q(fid), vals)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        assert r.returncode != 0 and "artifacts_bytes_somewhere" in r.stderr, r.stderr


def test_download_large_streamed(server, tenant):
    ds = tenant.create_dataset("big")
    data = os.urandom(8 * 1024 * 1024 + 3)
    aid, _ = seed_artifact(server, tenant, ds["id"], data, mime="application/octet-stream")
    with tenant.get("/v1/artifacts/%s" % aid, stream=True) as r:
        assert r.status_code == 200
        h = hashlib.sha256()
        n = 0
        for chunk in r.iter_content(64 * 1024):
            h.update(chunk)
            n += len(chunk)
            if n < 1024 * 1024:
                time.sleep(0.001)  # a slowish reader at first: backpressure, not buffering
    assert n == len(data)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    # The server is fine after a client that hangs up half way.
    with tenant.get("/v1/artifacts/%s" % aid, stream=True) as r:
        next(r.iter_content(1024))
    assert tenant.get("/v1/artifacts/%s" % aid).content == data


def test_artifact_listed_in_file_json(server, tenant):
    ds = tenant.create_dataset("listed")
    fid = seed_file(server, tenant, ds["id"], mime="application/pdf")
    rid = seed_run(server, tenant, ds["id"], fid, "file_view", "succeeded")
    aid, _ = seed_artifact(server, tenant, ds["id"], b"PNGDATA", file_id=fid, run_id=rid)
    f = tenant.get("/v1/files/%s" % fid).json()
    [run] = f["runs"]
    [art] = run["artifacts"]
    # sha256: API.md "Lifecycle and access" (provenance)
    assert art == {"id": aid, "kind": "thumbnail", "mime": "image/png", "size": 7,
                   "sha256": hashlib.sha256(b"PNGDATA").hexdigest(),
                   "url": "/v1/artifacts/%s" % aid}
    assert tenant.get(art["url"]).content == b"PNGDATA"


def test_missing_and_other_tenant(server, tenant):
    ds = tenant.create_dataset("mine")
    aid, _ = seed_artifact(server, tenant, ds["id"], b"private bytes")
    intruder = server.create_tenant("intruder")
    assert_error(intruder.get("/v1/artifacts/%s" % aid), 404, "not_found")
    assert_error(intruder.get("/v1/artifacts/%s/url" % aid), 404, "not_found")
    assert_error(tenant.get("/v1/artifacts/%s" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.get("/v1/artifacts/%s/url" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.get("/v1/artifacts/not-a-uuid"), 404, "not_found")
    assert_error(tenant.get("/v1/artifacts/not-a-uuid/url"), 404, "not_found")
    anon = requests.get(server.url + "/v1/artifacts/%s" % aid, timeout=30)
    assert_error(anon, 401)
    assert tenant.get("/v1/artifacts/%s" % aid).content == b"private bytes"


def test_signed_url_works_without_auth(server, tenant):
    ds = tenant.create_dataset("signed")
    data = os.urandom(300 * 1024)
    aid, _ = seed_artifact(server, tenant, ds["id"], data, mime="image/jpeg")
    body = signed_url(tenant, aid)
    # Default TTL is an hour.
    exp = time.mktime(time.strptime(body["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert 3500 < exp - time.time() < 3700, body
    r = requests.get(server.url + body["url"], timeout=30)  # no Authorization header
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.content == data

    week = signed_url(tenant, aid, ttl=604800)
    assert requests.get(server.url + week["url"], timeout=30).content == data
    for bad in ["0", "604801", "abc", "-5", ""]:
        assert_error(tenant.get("/v1/artifacts/%s/url?ttl=%s" % (aid, bad)), 400,
                     "invalid_request")


def _with_query(url, **changes):
    parts = urllib.parse.urlsplit(url)
    qs = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    for k, v in changes.items():
        if v is None:
            qs.pop(k, None)
        else:
            qs[k] = v
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(qs)))


def test_tampered_signed_url_is_403(server, tenant):
    ds = tenant.create_dataset("tamper")
    aid, _ = seed_artifact(server, tenant, ds["id"], b"guarded")
    other, _ = seed_artifact(server, tenant, ds["id"], b"other")
    url = signed_url(tenant, aid)["url"]
    qs = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    sig = qs["sig"]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for bad in [_with_query(url, sig=flipped), _with_query(url, sig=None),
                _with_query(url, expires=str(int(qs["expires"]) + 1000)),
                _with_query(url, expires=None), _with_query(url, sig=""),
                url.replace(aid, other)]:
        r = requests.get(server.url + bad, timeout=30)
        assert_error(r, 403, "invalid_signature")
    assert requests.get(server.url + url, timeout=30).content == b"guarded"


def test_expired_signed_url_is_403(server, tenant):
    ds = tenant.create_dataset("expire")
    aid, _ = seed_artifact(server, tenant, ds["id"], b"short-lived")
    url = signed_url(tenant, aid, ttl=1)["url"]
    time.sleep(2.2)
    r = requests.get(server.url + url, timeout=30)
    assert_error(r, 403, "url_expired")


def test_signed_url_of_deleted_artifact_is_404(server, tenant):
    ds = tenant.create_dataset("gone")
    aid, fid = seed_artifact(server, tenant, ds["id"], b"soon gone")
    url = signed_url(tenant, aid)["url"]
    assert tenant.delete("/v1/files/%s" % fid).status_code == 204
    assert_error(requests.get(server.url + url, timeout=30), 404, "not_found")
