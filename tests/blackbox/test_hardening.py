"""Hardening: defects found by a hostile-user review, each pinned by a test.

Leaked upload slots on a refused Idempotency-Key, one Authorization parser for
the limiter and the authenticator, max_request_bytes on chunked bodies,
invalid UTF-8 filenames, malformed chunked JSON bodies, the signing key's
source.
"""
import re
import socket
import time

import requests

from sluice_harness import metric


def raw_request(port, data, timeout=10):
    """Sends raw bytes, returns (status, head, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep:
                    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    if m and len(body) >= int(m.group(1)):
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = buf.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return status, head.decode("latin-1"), body


def wait_metric(srv, name, value, timeout=10):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = metric(srv, name)
        if last == value:
            return
        time.sleep(0.05)
    raise AssertionError("%s is %r, never %r" % (name, last, value))


# ---- 1. a refused Idempotency-Key must not leak the upload's slot ----------

def test_refused_idempotency_key_releases_the_upload(start_server):
    srv = start_server(extra_yaml="limits: {max_uploads_per_tenant: 1}\n")
    t = srv.create_tenant("idem")
    ds = t.create_dataset("d")["id"]
    assert metric(srv, "sluice_uploads_in_progress") == 0
    # too long: 400
    r = t.upload(ds, ("a.txt", b"x"), headers={"Idempotency-Key": "k" * 300})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_idempotency_key"
    # reused from another endpoint: 409
    f = t.upload(ds, ("a.txt", b"x")).json()["files"][0]["id"]
    r = t.post("/v1/files/%s/process" % f, json={}, headers={"Idempotency-Key": "shared"})
    assert r.status_code in (200, 202), r.text
    r = t.upload(ds, ("a.txt", b"x"), headers={"Idempotency-Key": "shared"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "idempotency_key_reused"
    wait_metric(srv, "sluice_uploads_in_progress", 0)
    # and the tenant's one upload hold is free again
    assert t.upload(ds, ("b.txt", b"y")).status_code == 202


# ---- 2. the limiter and the authenticator read Authorization alike ---------

TIGHT_READS = "rate_limits: {requests_per_s: {reads: 0.1, uploads: 0.1, burst: 2}}\n"


def test_bearer_variants_are_limited_or_refused(start_server):
    srv = start_server(extra_yaml=TIGHT_READS)
    t = srv.create_tenant("auth")
    url = srv.url + "/v1/datasets"

    def get(auth):
        return requests.get(url, headers={"Authorization": auth}, timeout=10)

    # "Bearer<TAB>key" is not an RFC 7235 credential: refused by both
    r = get("Bearer\t" + t.key)
    assert r.status_code == 401, (r.status_code, r.text)
    # the budget of 2, spent with the canonical form ...
    assert [get("Bearer " + t.key).status_code for _ in range(2)] == [200, 200]
    # ... is the budget of every accepted spelling: never authenticated but unlimited
    for auth in ("Bearer " + t.key, "Bearer  " + t.key, "bearer " + t.key,
                 "BEARER   " + t.key + " "):
        r = get(auth)
        assert r.status_code == 429, (auth, r.status_code, r.text)
    for auth in ("Bearer\t" + t.key, "Bearer \t" + t.key, "Bearer" + t.key):
        r = get(auth)
        assert r.status_code in (401, 429), (auth, r.status_code, r.text)


# ---- 3. max_request_bytes holds for chunked bodies too ---------------------

def send_chunked(port, head, body, chunk=4096, timeout=10):
    """Sends head + body in chunked encoding, tolerating a server that
    answers and closes early; returns (status, head, body) of the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(head)
            for i in range(0, len(body), chunk):
                piece = body[i:i + chunk]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                buf += data
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    rhead, _, rbody = buf.partition(b"\r\n\r\n")
    parts = rhead.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return status, rhead.decode("latin-1"), rbody


def stored_blobs(srv):
    """Every blob and every blob being written (fs: every file under the root)."""
    return srv.blob_keys() + srv.tmp_blobs()


def test_chunked_upload_over_max_request_bytes_is_413(start_server):
    srv = start_server(extra_yaml="limits: {max_request_bytes: 20000}\n")
    t = srv.create_tenant("big")
    ds = t.create_dataset("d")["id"]
    parts = b""
    for i in range(3):  # three files of 15 KB: each is fine, together too many bytes
        parts += (b"--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f%d.bin\"\r\n"
                  b"Content-Type: application/octet-stream\r\n\r\n" % i) + b"x" * 15000 + b"\r\n"
    parts += b"--BB--\r\n"
    head = ("POST /v1/datasets/%s/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: multipart/form-data; boundary=BB\r\nTransfer-Encoding: chunked\r\n\r\n"
            % (ds, t.key)).encode()
    status, rhead, rbody = send_chunked(srv.port, head, parts)
    assert status == 413, (status, rhead, rbody[:200])
    import json
    assert json.loads(rbody)["error"]["code"] == "request_too_large"
    wait_metric(srv, "sluice_uploads_in_progress", 0)
    r = t.get("/v1/datasets/%s/files" % ds)
    assert r.status_code == 200 and r.json()["files"] == [], r.text
    deadline = time.monotonic() + 5
    while stored_blobs(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_blobs(srv) == []
    # under the limit, the same chunked framing is accepted
    small = (b"--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ok.bin\"\r\n\r\n"
             + b"y" * 1000 + b"\r\n--BB--\r\n")
    status, rhead, rbody = send_chunked(srv.port, head, small)
    assert status == 202, (status, rhead, rbody[:200])


# ---- 5. a malformed chunked JSON body is a 400, not a 499 ------------------

def test_malformed_chunked_json_body_is_400(start_server):
    srv = start_server()
    t = srv.create_tenant("chunk")
    req = ("POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           "zz-not-hex\r\n{}\r\n0\r\n\r\n" % t.key).encode()
    status, head, body = raw_request(srv.port, req)
    assert status == 400, (head, body)
    assert head.startswith("HTTP/1.1 400 Bad Request"), head
    import json
    assert json.loads(body)["error"]["code"] == "bad_request", body
    # a well-formed chunked body on the same endpoint works
    good = b'{"name": "ok"}'
    req = ("POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           "Connection: close\r\n\r\n" % t.key).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good)
    status, head, body = raw_request(srv.port, req)
    assert status == 201, (head, body)


# ---- 4. invalid UTF-8 filenames are cleaned, never a 500 -------------------

BAD_NAMES = [
    b"surrogate-\xed\xa0\x80.txt",
    b"overlong-\xc0\xaf.txt",
    b"overlong-\xc1\xbf.txt",
    b"overlong-\xe0\x80\xaf.txt",
    b"overlong-\xf0\x80\x80\xaf.txt",
    b"lead-\xf5\x80\x80\x80.txt",
    b"lead-\xff.txt",
    b"past-max-\xf4\x90\x80\x80.txt",
]


def test_invalid_utf8_filenames_are_replaced_not_500(start_server):
    srv = start_server()
    t = srv.create_tenant("utf8")
    ds = t.create_dataset("d")["id"]
    body = b""
    for i, name in enumerate(BAD_NAMES):
        body += (b"--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name +
                 b"\"\r\nContent-Type: text/plain\r\n\r\nhello %d\r\n" % i)
    body += b"--BB--\r\n"
    head = ("POST /v1/datasets/%s/files?process=false HTTP/1.1\r\nHost: x\r\n"
            "Authorization: Bearer %s\r\nContent-Type: multipart/form-data; boundary=BB\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n" % (ds, t.key, len(body))).encode()
    status, rhead, rbody = raw_request(srv.port, head + body)
    assert status == 202, (status, rhead, rbody[:300])
    import json
    names = [f["name"] for f in json.loads(rbody)["files"]]
    assert len(names) == len(BAD_NAMES)
    # each invalid byte became "_" (as control characters do); the rest is kept
    assert names[0] == "surrogate-___.txt", names
    assert names[1] == "overlong-__.txt", names
    assert names[6] == "lead-_.txt", names
    assert names[7] == "past-max-____.txt", names
    for n in names:
        n.encode("utf-8")  # round-trips: valid
        assert "\ufffd" not in n
    # a valid non-ASCII name is kept as sent
    r = t.upload(ds, ("gr\u00fc\u00df-\U0001F600.txt", b"x", "text/plain"))
    assert r.status_code == 202, r.text
    assert r.json()["files"][0]["name"] == "gr\u00fc\u00df-\U0001F600.txt"


# ---- 6. the URL-signing key comes from a CSPRNG ---------------------------

def signing_key(pg, srv):
    from urllib.parse import urlparse, unquote
    db = unquote(urlparse(srv.database_url).path.lstrip("/"))
    return pg.psql("SELECT value FROM settings WHERE key = 'url_signing_key'", dbname=db).strip(), db


def test_signing_key_is_256_random_bits_per_database(start_server, pg):
    a = start_server()
    b = start_server()
    ka, db = signing_key(pg, a)
    kb, _ = signing_key(pg, b)
    for k in (ka, kb):
        assert re.fullmatch(r"[0-9a-f]{64}", k), k  # 32 bytes, hex
        assert len(set(bytes.fromhex(k))) > 8       # not a constant or a pattern
    assert ka != kb
    # an install that already has a (weak, random()-made) key: migration 006
    # throws it away and a fresh one is made from the CSPRNG at start
    a.stop()
    pg.psql("UPDATE settings SET value = md5('weak') WHERE key = 'url_signing_key'", dbname=db)
    pg.psql("DELETE FROM schema_migrations WHERE version = 6", dbname=db)
    a.start()
    kc, _ = signing_key(pg, a)
    assert re.fullmatch(r"[0-9a-f]{64}", kc), kc
    assert kc not in (ka, kb)
    # a restart keeps the key (signed URLs stay valid across restarts)
    a.stop()
    a.start()
    assert signing_key(pg, a)[0] == kc
