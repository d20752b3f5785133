"""The S3 storage backend (core/storage_s3.c) end to end: Sluice configured
with `storage: {backend: s3, ...}` against s3rver behind the SigV4-checking
front (tests/standins/s3front.py, the `s3front` fixture). Uploads become
objects (PutObject below one part, multipart above) whose bytes and SHA-256
match; a big upload keeps Sluice's RSS flat; a client that disconnects
mid-upload leaves no multipart upload and no object; S3 down means 503 with
Retry-After, never a hang, and uploads work again once it is back.
"""
import hashlib
import os
import socket
import time

import pytest

MIB = 1024 * 1024


# Tests take (s3front, start_server) in that order: fixtures are torn down in
# reverse, so Sluice stops before its S3 does (a run whose blob copy finds S3
# gone waits for it, and would then be cut at exit).
def _s3_server(start_server, s3front, extra=""):
    front = s3front()
    srv = start_server(extra_yaml=front.storage_yaml("sluice") + extra)
    return front, srv


def _object_sha256(front, key):
    body = front.client().get_object(Bucket="sluice", Key=key)["Body"]
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(MIB), b""):
        h.update(chunk)
    return h.hexdigest()


def _write_file(path, size):
    """A file of `size` pseudo-random bytes (written in 1 MiB steps); its sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(b"seed").digest() * (MIB // 32)
    with open(path, "wb") as f:
        left, i = size, 0
        while left:
            b = block[: min(MIB, left)]
            b = bytes([i & 255]) + b[1:]
            f.write(b)
            h.update(b)
            left -= len(b)
            i += 1
    return h.hexdigest()


def _keys_of(front):
    return [k for k in front.keys("sluice")]


def test_upload_small_and_multipart_objects(s3front, start_server, tmp_path):
    front, srv = _s3_server(start_server, s3front)
    t = srv.create_tenant("s3")
    ds = t.create_dataset("s3")["id"]

    small = b"%PDF-1.4\n" + os.urandom(3000)
    big_path = tmp_path / "big.bin"
    big_sha = _write_file(big_path, 21 * MIB + 777)  # 3 parts of 8 MiB at most
    r = t.upload(ds, [("small.pdf", small), big_path])
    assert r.status_code == 202, r.text
    files = {f["name"]: f for f in r.json()["files"]}
    assert files["small.pdf"]["sha256"] == hashlib.sha256(small).hexdigest()
    assert files["small.pdf"]["size"] == len(small)
    assert files["big.bin"]["sha256"] == big_sha
    assert files["big.bin"]["size"] == 21 * MIB + 777

    keys = _keys_of(front)
    assert len(keys) == 2, keys
    shas = sorted(_object_sha256(front, k) for k in keys)
    assert shas == sorted([hashlib.sha256(small).hexdigest(), big_sha])
    assert front.pending_uploads("sluice") == []

    # A ranged read through S3, as Sluice's reads do (bytes across a part boundary).
    k_big = [k for k in keys if _object_sha256(front, k) == big_sha][0]
    got = front.client().get_object(Bucket="sluice", Key=k_big,
                                    Range="bytes=%d-%d" % (8 * MIB - 10, 8 * MIB + 9))["Body"].read()
    with open(big_path, "rb") as f:
        f.seek(8 * MIB - 10)
        assert got == f.read(20)

    # DELETE /v1/files/{id} removes the object.
    assert t.delete("/v1/files/%s" % files["small.pdf"]["id"]).status_code == 204
    end = time.time() + 30
    while time.time() < end and len(_keys_of(front)) != 1:
        time.sleep(0.2)
    assert _keys_of(front) == [k_big]
    # every request was signed as S3 checks it (signature, payload hash, checksum)
    assert front.stats()["refused"] == {}, front.stats()


@pytest.mark.slow  # a big upload, and RSS means nothing under ASan (as test_upload's 1 GiB test)
def test_big_upload_keeps_rss_flat(s3front, start_server, tmp_path):
    size = int(os.environ.get("SLUICE_S3_BIG_MIB", "200")) * MIB
    front, srv = _s3_server(start_server, s3front,
                            "limits: {max_file_bytes: %d}\n" % (size + MIB))
    t = srv.create_tenant("s3big")
    ds = t.create_dataset("s3big")["id"]
    path = tmp_path / "huge.bin"
    sha = _write_file(path, size)
    before = srv.rss_kib()
    t0 = time.time()
    r = t.upload(ds, path, timeout=600)
    took = time.time() - t0
    assert r.status_code == 202, r.text
    assert r.json()["files"][0]["sha256"] == sha
    peak = srv.peak_rss_kib()
    print("s3 upload of %d MiB: %.1f s, sluice RSS %d KiB before, peak %d KiB "
          "(growth %d KiB), s3front RSS %s KiB"
          % (size // MIB, took, before, peak, peak - before, front.rss_kib()))
    # Two parts of 8 MiB per upload plus curl's buffers: far below the file.
    assert peak - before < 80 * 1024, (before, peak)
    keys = _keys_of(front)
    assert len(keys) == 1 and _object_sha256(front, keys[0]) == sha
    assert front.pending_uploads("sluice") == []


def test_abort_mid_upload_leaves_nothing(s3front, start_server):
    front, srv = _s3_server(start_server, s3front)
    t = srv.create_tenant("s3abort")
    ds = t.create_dataset("s3abort")["id"]
    boundary = "xyzzyB0undary"
    head = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" % boundary).encode()
    total = 64 * MIB
    host, port = srv.url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(("POST /v1/datasets/%s/files HTTP/1.1\r\nHost: %s\r\n"
               "Authorization: Bearer %s\r\nContent-Type: multipart/form-data; boundary=%s\r\n"
               "Content-Length: %d\r\n\r\n" % (ds, host, t.key, boundary,
                                              len(head) + total + 100)).encode())
    s.sendall(head)
    chunk = os.urandom(MIB)
    for _ in range(20):  # 20 MiB: two parts gone, a third filling
        s.sendall(chunk)
    # wait until S3 holds a multipart upload with parts, then hang up
    end = time.time() + 30
    while time.time() < end and not front.pending_uploads("sluice"):
        time.sleep(0.1)
    assert front.pending_uploads("sluice"), "no multipart upload was started"
    s.close()
    end = time.time() + 30
    while time.time() < end and front.pending_uploads("sluice"):
        time.sleep(0.2)
    assert front.pending_uploads("sluice") == []
    assert _keys_of(front) == []
    # and the server still works
    r = t.upload(ds, ("after.txt", b"fine"))
    assert r.status_code == 202, r.text


def test_s3_down_means_503_with_retry_after(s3front, start_server):
    front, srv = _s3_server(start_server, s3front)
    t = srv.create_tenant("s3down")
    ds = t.create_dataset("s3down")["id"]
    front.control(upstream="stop")
    try:
        t0 = time.time()
        r = t.upload(ds, ("down.txt", b"x" * 1000), timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After"), r.headers
        assert time.time() - t0 < 40  # an answer, not a hang
    finally:
        front.control(upstream="start")
    r = t.upload(ds, ("up.txt", b"y" * 1000))
    assert r.status_code == 202, r.text
    assert len(_keys_of(front)) == 1


def test_backend_unit_test_against_the_front(s3front):
    """tests/unit/test_storage_s3.c (skipped by ctest without an S3) run
    against the front: PutObject, multipart with backpressure, ranged reads
    across parts, stat, delete, fetch_local, abort, a server not there."""
    import subprocess
    from sluice_harness import sluice_binary, S3_KEY_ID, S3_SECRET
    binary = sluice_binary().parent / "test_storage_s3"
    if not binary.exists():
        pytest.skip("%s not built" % binary)
    front = s3front()
    env = dict(os.environ, SL_TEST_S3_ENDPOINT=front.url, SL_TEST_S3_BUCKET="sluice",
               AWS_ACCESS_KEY_ID=S3_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    p = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert " 0 failed" in p.stderr or " 0 failed" in p.stdout
    assert front.pending_uploads("sluice") == []
    # every request was signed as S3 checks it: the front refused none
    assert front.stats()["refused"] == {}, front.stats()


def test_runs_read_their_blob_from_s3(s3front, start_server, samples):
    """A run gets a local copy of its blob (sl_store_fetch_local into its
    scratch dir) so pdftotext and tesseract read a path; its artifacts are
    written to S3 and served back through Sluice with ranged GETs."""
    from test_pipelines import artifact, run_of, upload, wait_files
    front, srv = _s3_server(start_server, s3front)
    t = srv.create_tenant("s3runs")
    ds = t.create_dataset("s3runs")["id"]
    ids = upload(t, ds, samples, ["invoice-acme.pdf", "notes.txt"])
    docs = wait_files(t, ids.values())
    inv = docs[ids["invoice-acme.pdf"]]
    assert inv["status"] == "done", inv
    assert inv["text_source"] == "text_layer"
    _, text = artifact(t, run_of(inv, "ai_record"), "text")
    assert b"INV-2026-0042" in text
    assert docs[ids["notes.txt"]]["status"] == "done", docs[ids["notes.txt"]]
    # the blobs and the artifacts live in the bucket, nothing half-written
    assert len(_keys_of(front)) > 2
    assert front.pending_uploads("sluice") == []
    assert front.stats()["refused"] == {}, front.stats()
