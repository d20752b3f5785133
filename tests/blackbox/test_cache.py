"""The read caches (api/cache.h, docs/internals/caching.md) seen from outside.

Two instances on one Postgres and one Redis: a client that writes on A and
then reads on B never gets the older document — after an upload, a delete, a
process, and a run's transition it learned of by SSE on A. Also: ETag and
If-None-Match -> 304 on the file, listing and records reads; a key revoked
through the auth channel is refused at once by every instance; a new key
works at once (no negative caching).
"""
import hashlib
import socket
import time

import requests

from sluice_harness import Client
from test_sse import stream, wait_redis

NOTES = "notes.txt"
# how far a run has come: a reader may see a later state than the event, never an earlier one
RANK = {"queued": 0, "running": 1, "waiting": 1}


def publish(redis, channel, payload):
    """PUBLISH with raw RESP; returns how many subscribers got it."""
    def bulk(b):
        return b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection(("127.0.0.1", redis.port), timeout=30) as sock:
        sock.sendall(b"*3\r\n" + bulk(b"PUBLISH") + bulk(channel.encode()) + bulk(payload.encode()))
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data[1:].strip())


def wait_cached(client, fid, timeout=10):
    """Reads until two reads in a row give the same ETag (the second one is
    then normally from the cache)."""
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/v1/files/%s" % fid)
        assert r.status_code == 200, r.text
        if last is not None and r.headers["ETag"] == last:
            return r.json()
        last = r.headers["ETag"]
    return r.json()


def two(start_server):
    a = start_server()
    b = start_server(database_url=a.database_url, storage_path=a.storage_path)
    t_a = a.create_tenant("cache")
    return a, b, t_a, Client(b.url, t_a.key, t_a.tenant_id)


def wait_settled(client, fid, timeout=120):
    doc = client.wait_file(fid, timeout=timeout)
    assert doc["status"] in ("done", "failed"), doc
    return doc


def test_read_after_write_across_instances(start_server, samples):
    a, b, t_a, t_b = two(start_server)
    ds = t_a.create_dataset("raw")["id"]

    # upload on A, read on B at once; then delete on A, read on B at once
    for _ in range(5):
        r = t_a.upload(ds, [samples / NOTES])
        assert r.status_code == 202, r.text
        fid = r.json()["files"][0]["id"]
        assert t_b.get("/v1/files/%s" % fid).status_code == 200
        wait_settled(t_b, fid)
        wait_cached(t_b, fid)  # B holds the document
        r = t_a.delete("/v1/files/%s" % fid)
        assert r.status_code == 204, r.text
        r = t_b.get("/v1/files/%s" % fid)
        assert r.status_code == 404, "B served a deleted file: %s" % r.text

    # process on A, read on B at once: B shows the new runs; then each run's
    # end, learned by SSE on A, is what B shows at once
    r = t_a.upload(ds, [samples / NOTES])
    fid = r.json()["files"][0]["id"]
    wait_settled(t_a, fid)
    s = stream(a, t_a, ds)
    try:
        for _ in range(3):
            wait_cached(t_b, fid)
            r = t_a.post("/v1/files/%s/process" % fid)
            assert r.status_code == 202, r.text
            new = {x["id"] for x in r.json()["runs"] if x["state"] == "queued"}
            assert new, r.text
            doc = t_b.get("/v1/files/%s" % fid).json()
            assert new <= {x["id"] for x in doc["runs"]}, "B served the document before process"
            ended = set()
            deadline = time.monotonic() + 120
            while ended != new and time.monotonic() < deadline:
                for e in s.take(n=1, timeout=120):
                    d = e["data"]
                    if e["event"] != "run" or d["run_id"] not in new:
                        continue
                    # what A's client just learned, B must show (or something newer)
                    doc = t_b.get("/v1/files/%s" % fid).json()
                    run = next(x for x in doc["runs"] if x["id"] == d["run_id"])
                    assert RANK.get(run["state"], 2) >= RANK.get(d["state"], 2), (d, run)
                    if RANK.get(d["state"], 2) == 2:
                        assert run["state"] == d["state"], (d, run)
                        ended.add(d["run_id"])
            assert ended == new
    finally:
        s.close()


def test_redis_down_means_no_cache(start_server, redis, samples):
    """Without Redis no invalidation can cross: B must read Postgres, and
    whatever it kept before must not come back when Redis does."""
    a, b, t_a, t_b = two(start_server)
    ds = t_a.create_dataset("nocache")["id"]
    fids = [f["id"] for f in t_a.upload(ds, [samples / NOTES] * 2).json()["files"]]
    for fid in fids:
        wait_settled(t_b, fid)
        wait_cached(t_b, fid)
    wait_redis(b, "ok")
    try:
        redis.stop()
        wait_redis(b, "down")
        assert t_a.delete("/v1/files/%s" % fids[0]).status_code == 204
        assert t_b.get("/v1/files/%s" % fids[0]).status_code == 404
        r = t_a.post("/v1/files/%s/process" % fids[1])
        assert r.status_code == 202, r.text
        new = {x["id"] for x in r.json()["runs"] if x["state"] == "queued"}
        doc = t_b.get("/v1/files/%s" % fids[1]).json()
        assert new <= {x["id"] for x in doc["runs"]}
    finally:
        if not redis.running:
            redis.start()
    wait_redis(b, "ok", timeout=30)
    # back: the documents B held before the outage are not served again
    doc = t_b.get("/v1/files/%s" % fids[1]).json()
    assert new <= {x["id"] for x in doc["runs"]}
    assert t_b.get("/v1/files/%s" % fids[0]).status_code == 404


def test_etag_and_304(server, tenant, samples):
    ds = tenant.create_dataset("etag")["id"]
    r = tenant.upload(ds, [samples / NOTES])
    fid = r.json()["files"][0]["id"]
    wait_settled(tenant, fid)
    for path in ("/v1/files/%s" % fid, "/v1/datasets/%s/files" % ds,
                 "/v1/datasets/%s/records" % ds, "/v1/datasets/%s/records?format=csv" % ds):
        r = tenant.get(path)
        assert r.status_code == 200, r.text
        etag = r.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) == 34
        r2 = tenant.get(path, headers={"If-None-Match": etag})
        assert r2.status_code == 304, (path, r2.status_code)
        assert r2.content == b""
        assert r2.headers["ETag"] == etag
        for other in ('"0000"', 'W/"0000"', ""):
            assert tenant.get(path, headers={"If-None-Match": other}).status_code == 200
        assert tenant.get(path, headers={"If-None-Match": '"x", W/' + etag}).status_code == 304
        assert tenant.get(path, headers={"If-None-Match": "*"}).status_code == 304
    # a change: the old ETag no longer matches
    path = "/v1/files/%s" % fid
    etag = tenant.get(path).headers["ETag"]
    assert tenant.post("/v1/files/%s/process" % fid).status_code == 202
    r = tenant.get(path, headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] != etag
    # another tenant: 404, never the cached document, whatever it sends
    other = server.create_tenant("etag-other")
    r = other.get(path, headers={"If-None-Match": "*"})
    assert r.status_code == 404


def test_revocation_reaches_every_instance_at_once(start_server, redis):
    a, b, t_a, t_b = two(start_server)
    for c in (t_a, t_b):
        for _ in range(3):  # cached
            assert c.get("/v1/datasets").status_code == 200
    from test_tenants_datasets import psql
    psql(a.database_url, "UPDATE api_keys SET revoked_at = now() WHERE key_hash = '%s'"
         % hashlib.sha256(t_a.key.encode()).hexdigest())
    assert publish(redis, "sluice:auth", hashlib.sha256(t_a.key.encode()).hexdigest()) >= 2
    for c in (t_a, t_b):
        assert c.get("/v1/datasets").status_code == 401


def test_new_key_works_at_once(start_server):
    a, b, t_a, t_b = two(start_server)
    # an unknown key is refused, and that refusal is not remembered
    for srv in (a, b):
        r = requests.get(srv.url + "/v1/datasets", headers={"Authorization": "Bearer nope"},
                         timeout=10)
        assert r.status_code == 401
    t2 = a.create_tenant("fresh")
    for srv in (a, b):
        assert Client(srv.url, t2.key).get("/v1/datasets").status_code == 200
