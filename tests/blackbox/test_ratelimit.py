"""Fair use: request and byte rate limits (shared through Redis, local while
Redis is down), outbound service rates, upload concurrency caps, and the
queue's visibility (queue_position, /metrics).

Limits are set low and slow (a fraction of a request per second) so that
nothing refills while a burst is being sent: counts are exact.
"""
import json
import socket
import time
import uuid

import pytest
import requests

from sluice_harness import Standin, metric


# A 1x1 PNG (libmagic: image/png).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")

READS_LIMIT = "rate_limits: {requests_per_s: {reads: 0.2, uploads: 0.2, burst: 5}}\n"


def check_429(r):
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    ra = r.headers.get("Retry-After")
    assert ra is not None and ra.isdigit() and 1 <= int(ra) <= 5, ra


def test_read_burst_gets_429_with_retry_after(start_server):
    srv = start_server(extra_yaml=READS_LIMIT)
    t = srv.create_tenant("burst")
    codes = []
    for _ in range(8):
        r = t.get("/v1/datasets")
        codes.append(r.status_code)
        if r.status_code != 200:
            check_429(r)
    assert codes == [200] * 5 + [429] * 3, codes
    # uploads have their own budget per key: not touched by the reads
    ds_r = t.post("/v1/datasets", json={"name": "d"})
    assert ds_r.status_code == 429  # a POST that is not an upload is a "read"
    # another key is another budget
    t2 = srv.create_tenant("other")
    assert t2.get("/v1/datasets").status_code == 200
    assert metric(srv, "sluice_ratelimit_decisions_total", limit="reads",
                  decision="limited") == 4
    # 5 + t2's + the admin key's two tenant creations
    assert metric(srv, "sluice_ratelimit_decisions_total", limit="reads",
                  decision="allowed") == 8


def test_uploads_and_reads_are_counted_apart(start_server):
    srv = start_server(extra_yaml="rate_limits: {requests_per_s: {reads: 0.2, uploads: 0.2, "
                                  "burst: 2}}\n")
    t = srv.create_tenant("apart")
    ds = t.create_dataset("d")["id"]          # read 1
    codes = [t.upload(ds, ("a.txt", b"hello\n", "text/plain")).status_code for _ in range(4)]
    assert codes == [202, 202, 429, 429], codes
    assert t.get("/v1/datasets").status_code == 200  # read 2
    check_429(t.get("/v1/datasets"))                  # read 3


def test_burst_split_over_two_instances_is_limited_as_one(start_server):
    a = start_server(extra_yaml=READS_LIMIT)
    b = start_server(extra_yaml=READS_LIMIT, database_url=a.database_url,
                     storage_path=a.storage_path)
    t = a.create_tenant("split")
    tb = type(t)(b.url, t.key, t.tenant_id)
    codes = []
    for i in range(10):
        r = (t if i % 2 == 0 else tb).get("/v1/datasets")
        codes.append(r.status_code)
        if r.status_code != 200:
            check_429(r)
    assert codes.count(200) == 5, codes
    assert codes.count(429) == 5, codes
    # both instances refused some: the budget really is shared
    assert 429 in codes[0::2] or 429 in codes[1::2]


def backend_lines(srv):
    out = []
    for line in srv.log().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "ratelimit_backend":
            out.append(ev)
    return out


def test_redis_down_uploads_and_processing_go_on(start_server, redis):
    srv = start_server(extra_yaml="rate_limits: {requests_per_s: {uploads: 0.2, burst: 5}}\n")
    t = srv.create_tenant("noredis")
    ds = t.create_dataset("d")["id"]
    assert t.upload(ds, ("first.txt", b"x\n", "text/plain")).status_code == 202  # via Redis
    redis.stop()
    try:
        ids = []
        for i in range(5):
            r = t.upload(ds, ("n%d.txt" % i, b"total 12 EUR\n", "text/plain"))
            assert r.status_code == 202, (i, r.text)
            ids += [f["id"] for f in r.json()["files"]]
        check_429(t.upload(ds, ("over.txt", b"x\n", "text/plain")))  # the local burst is used up
        for fid in ids:
            doc = t.wait_file(fid, timeout=60)
            assert doc["status"] == "done", doc
        assert [ev["backend"] for ev in backend_lines(srv)][-1:] == ["local"]
    finally:
        redis.start()


def test_redis_down_local_limit_still_applies(start_server, redis):
    srv = start_server(extra_yaml=READS_LIMIT)
    t = srv.create_tenant("local")
    redis.stop()
    try:
        codes = [t.get("/v1/datasets").status_code for _ in range(8)]
        assert codes == [200] * 5 + [429] * 3, codes
    finally:
        redis.start()
    local = [ev for ev in backend_lines(srv) if ev["backend"] == "local"]
    assert len(local) == 1, local  # one line when switching, not one per request


def test_upload_bytes_are_paced_per_tenant(start_server):
    # 200 KB/s with a 64 KiB burst: a 600 KB body cannot be read faster than
    # (600 - 64) / 200 s; it is slowed down, not refused.
    srv = start_server(extra_yaml="rate_limits: {upload_bytes_per_s: {per_tenant: 200000, "
                                  "burst: 65536}}\n")
    t = srv.create_tenant("bytes")
    ds = t.create_dataset("d")["id"]
    t0 = time.monotonic()
    r = t.upload(ds, ("big.bin", b"\0" * 600000))
    took = time.monotonic() - t0
    assert r.status_code == 202, r.text
    assert took >= (600000 - 65536) / 200000 - 0.2, took
    assert metric(srv, "sluice_ratelimit_decisions_total", limit="upload_bytes",
                  decision="waited") >= 1


def _open_upload(port, key, ds):
    """Starts a multipart upload and keeps it open (returns the socket)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = ("POST /v1/datasets/%s/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: multipart/form-data; boundary=BB\r\nContent-Length: 100000\r\n\r\n"
            "--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nxx"
            % (ds, key))
    s.sendall(head.encode())
    return s


def _wait_uploads(srv, n):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(srv, "sluice_uploads_in_progress") == n:
            return
        time.sleep(0.05)
    raise AssertionError("uploads in progress never reached %d" % n)


def test_concurrent_upload_caps(start_server):
    srv = start_server(extra_yaml="limits: {max_uploads_per_tenant: 1, max_uploads_in_flight: 2}\n")
    a = srv.create_tenant("a")
    b = srv.create_tenant("b")
    c = srv.create_tenant("c")
    ds_a = a.create_dataset("d")["id"]
    ds_b = b.create_dataset("d")["id"]
    ds_c = c.create_dataset("d")["id"]
    held = [_open_upload(srv.port, a.key, ds_a)]
    _wait_uploads(srv, 1)
    r = a.upload(ds_a, ("x.txt", b"x"))          # the tenant's second: 429
    check_429(r)
    held.append(_open_upload(srv.port, b.key, ds_b))
    _wait_uploads(srv, 2)
    r = c.upload(ds_c, ("x.txt", b"x"))          # the process's third: 503
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "overloaded"
    assert r.headers.get("Retry-After") == "1"
    for s in held:
        s.close()
    _wait_uploads(srv, 0)
    assert a.upload(ds_a, ("x.txt", b"x")).status_code == 202  # released: accepted again
    assert c.upload(ds_c, ("x.txt", b"x")).status_code == 202


def test_queue_position_and_depth(start_server):
    srv = start_server(extra_yaml=(
        'services:\n  ocr: {command: ["/bin/sh", "-c", "sleep 3; echo text {input}"]}\n'
        'pipelines:\n  - {name: ai_record, flow: lua-flows/ai_record.lua, match: ["image/png"]}\n'
        "limits: {max_runs_per_tenant: 1}\n"))
    t = srv.create_tenant("queue")
    ds = t.create_dataset("d")["id"]
    r = t.upload(ds, [("p%d.png" % i, PNG, "image/png") for i in range(5)])
    assert r.status_code == 202, r.text
    ids = [f["id"] for f in r.json()["files"]]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the first run is claimed (one per tenant)
        runs = [t.get("/v1/files/%s" % i).json()["runs"][0] for i in ids]
        if any(x["state"] != "queued" for x in runs):
            break
        time.sleep(0.1)
    queued = [x for x in runs if x["state"] == "queued"]
    assert len(queued) == 4, runs
    assert [x["queue_position"] for x in queued] == [1, 2, 3, 4]
    for x in runs:
        if x["state"] != "queued":
            assert x["queue_position"] is None
    deadline = time.monotonic() + 12
    depth = None
    while time.monotonic() < deadline:
        depth = metric(srv, "sluice_queue_depth", tenant=t.tenant_id)
        if depth is not None and depth > 0:
            break
        time.sleep(0.5)
    assert depth is not None and 1 <= depth <= 4, depth


def test_queue_positions_agree_across_documents(start_server, tmp_path):
    """queue_position follows the claim's order (upload batches round-robin),
    and the three ways to read it agree: the upload's response (its files'
    places numbered in one pass over the queue), a listing page (the same),
    and one file's document (a count of the runs ahead)."""
    flow = tmp_path / "nap.lua"
    flow.write_text('return flow { start = "nap", steps = {\n'
                    '  nap = { run = function(ctx, file) sl.sleep(30) return true end } } }\n')
    srv = start_server(extra_yaml=(
        'pipelines:\n  - {name: nap, flow: "%s", match: ["text/*"]}\n'
        'limits: {max_runs_in_flight: 1}\n' % flow))
    t = srv.create_tenant("positions")
    ds = t.create_dataset("d")["id"]
    first = t.upload(ds, [("a%d.txt" % i, b"a %d\n" % i, "text/plain") for i in range(4)])
    assert first.status_code == 202, first.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # one run is claimed (max_runs_in_flight 1)
        runs = [t.get("/v1/files/%s" % f["id"]).json()["runs"][0] for f in first.json()["files"]]
        if any(x["state"] == "running" for x in runs):
            break
        time.sleep(0.1)
    second = t.upload(ds, [("b%d.txt" % i, b"b %d\n" % i, "text/plain") for i in range(4)])
    assert second.status_code == 202, second.text

    def places(docs):
        return {d["name"]: d["runs"][0]["queue_position"] for d in docs
                if d["runs"][0]["state"] == "queued"}

    in_response = places(second.json()["files"])
    one_by_one = places(t.get("/v1/files/%s" % f["id"]).json()
                        for f in first.json()["files"] + second.json()["files"])
    listed = places(t.get("/v1/datasets/%s/files?limit=100" % ds).json()["files"])
    assert listed == one_by_one, (listed, one_by_one)
    assert all(one_by_one[n] == p for n, p in in_response.items()), (in_response, one_by_one)
    # a1..a3 queued behind the running a0; b0..b3 interleave with them
    order = [n[:-4] for n in sorted(one_by_one, key=one_by_one.get)]
    assert sorted(one_by_one.values()) == list(range(1, 8)), one_by_one
    assert order == ["a1", "b0", "a2", "b1", "a3", "b2", "b3"], order


@pytest.mark.slow
def test_outbound_rate_limit_spaces_calls(start_server, tmp_path):
    tika = Standin("tika")  # binds port 0 itself: no window for another bind
    try:
        url = tika.url
        srv = start_server(extra_yaml=(
            "services:\n  tika: {url: \"%s\", rate_per_s: 5, concurrency: 8}\n"
            "pipelines:\n  - {name: ai_record, flow: lua-flows/ai_record.lua, "
            "match: [\"text/plain\"]}\n" % url))
        t = srv.create_tenant("outbound")
        ds = t.create_dataset("d")["id"]
        n = 20
        r = t.upload(ds, [("f%d.txt" % i, b"Invoice %d total 1%d EUR\n" % (i, i), "text/plain")
                          for i in range(n)])
        assert r.status_code == 202, r.text
        for f in r.json()["files"]:
            doc = t.wait_file(f["id"], timeout=60)
            assert doc["status"] == "done", doc
            assert doc["text_source"] == "tika", doc
        stats = requests.get(url + "/_stats", timeout=5).json()
        ts = sorted(stats["timestamps"])
        assert len(ts) == n, stats
        # at most 5 calls in any window of a second (50 ms of slack for the
        # path from the limiter to the stand-in's clock): call i+5 comes at
        # least ~1 s after call i
        gaps = [ts[i + 5] - ts[i] for i in range(len(ts) - 5)]
        assert min(gaps) >= 0.95, gaps
        assert metric(srv, "sluice_ratelimit_decisions_total", limit="service_tika",
                      decision="waited") >= 10
    finally:
        tika.stop()


def test_queue_position_counts_to_ten_thousand(start_server):
    """Behind 10,000 queued runs or more, queue_position is 10001 ("more than
    10,000 ahead"), in one file's document and a listing alike; in front of
    the cap it is exact. Counted in full, every
    read and every upload of a tenant with a backlog cost Postgres in
    proportion to the backlog (db/functions/json.sql). The runs are put in
    the queue with SQL, due in an hour, so the engine claims none of them."""
    srv = start_server()
    t = srv.create_tenant("backlog")
    ds = t.create_dataset("d")["id"]
    srv.sql("WITH f AS (INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, "
            "sha256, mime, storage_key) SELECT gen_random_uuid(), '{t}', '{d}', '{b}', "
            "'q' || lpad(g::text, 5, '0'), 10, 'x', 'text/plain', 'k' || g "
            "FROM generate_series(1, 10005) g RETURNING id, name) "
            "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, "
            "next_attempt_at) SELECT gen_random_uuid(), '{t}', '{d}', f.id, '{b}', 'p', "
            "now() + interval '1 hour' FROM f ORDER BY f.name".format(
                t=t.tenant_id, d=ds, b=str(uuid.uuid4())))
    ids = dict(line.split("|") for line in srv.sql(
        "SELECT name, id FROM files WHERE name IN ('q00005', 'q10000', 'q10001', 'q10005')"
    ).splitlines())

    def position(doc):
        return doc["runs"][0]["queue_position"]

    assert position(t.get("/v1/files/%s" % ids["q00005"]).json()) == 5
    assert position(t.get("/v1/files/%s" % ids["q10000"]).json()) == 10000
    assert position(t.get("/v1/files/%s" % ids["q10001"]).json()) == 10001
    assert position(t.get("/v1/files/%s" % ids["q10005"]).json()) == 10001
    listed = {d["name"]: position(d) for d in
              t.get("/v1/datasets/%s/files?limit=10" % ds).json()["files"] if d["runs"]}
    # each at its place, the ones past 10,000 at 10001: q09996 ... q10005
    assert listed and all(p == min(int(n[1:]), 10001) for n, p in listed.items()), listed
    assert 10001 in listed.values(), listed
    # a new upload's run goes round-robin with the backlog's batch, near the
    # front: its response numbers the head of the queue (it may be claimed at
    # once, so its document is not compared)
    r = t.upload(ds, [("late.txt", b"late\n", "text/plain")])
    assert r.status_code == 202, r.text
    assert 1 <= position(r.json()["files"][0]) <= 2, r.text
