"""Many instances (issue 12, docs/deploy.md "Many instances and rolling
restarts"): three sluice processes on different ports sharing one Postgres,
one Redis and one storage (the harness's: the storage path of the first
server, whatever its backend) behave as one.

1. Uploads spread over A, B and C; status, listings, content and SSE read
   through another instance than the upload; SSE on C sees exactly the
   timeline of the files uploaded through A.
2. kill -9 of one instance's whole process group while it holds runs: every
   file answered 202 is done once the lease lapsed, one run and one record
   version per file, no run left behind.
3. A rolling restart (SIGTERM each instance in turn, start it again) while a
   client uploads in a loop to all three and retries elsewhere on a refused
   connection or a 503: every request answered 202 has its files stored
   (sha256 of the content read back) and done, and no request that was not
   answered 202 kept anything; an upload in flight at SIGTERM is answered, one
   still sending at the drain deadline is cut and keeps nothing; the listener
   closes at once; the stopped instance's runs are taken by another one well
   before their 30 s lease would lapse (measured); the restarted one serves.
"""
import hashlib
import os
import secrets
import signal
import threading
import time
import urllib.parse

import pytest
import requests

from sluice_harness import Client
from test_sse import check_against_timeline, stream, timeline

LEASE_S = 30  # actors/scheduler.h default
KILL_LEASE_S = 6  # engine.lease_s of the kill -9 test: what it waits for is the lapse


def nap_flow(secs):
    """A two-step flow: `nap` sleeps, then `rec` writes the file's record."""
    return ('return flow { start = "nap", steps = {\n'
            '  nap = { run = function(ctx, file) sl.sleep(%s) return true end, next = "rec" },\n'
            '  rec = { run = function(ctx, file)\n'
            '    local ok, err = sl.record({name = file.name, size = file.size})\n'
            '    if not ok then return nil, err end\n'
            '    return true\n'
            '  end } } }\n' % secs)


def instances_yaml(tmp_path, nap, drain_s=30, announce_s=0, lease_s=LEASE_S, process="separate"):
    p = tmp_path / ("nap_%s.lua" % str(nap).replace(".", "_"))
    p.write_text(nap_flow(nap))
    return ('pipelines:\n  - {name: nap, flow: "%s", match: ["text/*"]}\n'
            'shutdown: {drain_timeout_s: %d, announce_s: %d}\n'
            'engine: {lease_s: %d, process: %s}\n' % (p, drain_s, announce_s, lease_s, process))


def three(start_server, extra):
    """A, B, C on one database and one storage; a tenant, with a Client per instance."""
    a = start_server(extra_yaml=extra)
    b = start_server(database_url=a.database_url, storage_path=a.storage_path, extra_yaml=extra)
    c = start_server(database_url=a.database_url, storage_path=a.storage_path, extra_yaml=extra)
    t = a.create_tenant("many")
    clients = [Client(s.url, t.key, t.tenant_id) for s in (a, b, c)]
    return [a, b, c], clients


def dbname(srv):
    return urllib.parse.urlparse(srv.database_url).path.lstrip("/")


def sql(pg, srv, text):
    return pg.psql(text, dbname=dbname(srv)).strip()


def engine_owner_like(srv):
    """A LIKE pattern for the lease_owner of srv's engine (host-PID-random)."""
    pid = srv.engine_pid()
    assert pid, "no engine process"
    return "%%-%d-%%" % pid


def held_runs(pg, srv, like):
    out = sql(pg, srv, "SELECT id FROM runs WHERE state = 'running' AND lease_owner LIKE '%s'"
              % like)
    return [l.strip() for l in out.splitlines() if l.strip()]


def wait_held(pg, srv, like, n=1, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = held_runs(pg, srv, like)
        if len(ids) >= n:
            return ids
        time.sleep(0.05)
    raise AssertionError("instance %s never held %d runs" % (srv.url, n))


def gone(pid, timeout=5.0):
    """True once pid is gone (or a zombie) within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def text_body(tag):
    return ("file %s %s\n" % (tag, secrets.token_hex(16))).encode()


def upload_one(client, ds, name, body, timeout=30):
    return client.post("/v1/datasets/%s/files" % ds, files=[("file", (name, body, "text/plain"))],
                       timeout=timeout)


def check_done_and_stored(clients, ds, want, timeout=120):
    """want: {file_id: (name, sha256)}. Each file done, one run, one record
    version, its content read back (through another instance) hashing to sha256."""
    n = len(clients)
    for i, (fid, (name, digest)) in enumerate(sorted(want.items())):
        c = clients[i % n]
        doc = c.wait_file(fid, timeout=timeout)
        assert doc["status"] == "done", doc
        assert doc["name"] == name and doc["sha256"] == digest, doc
        assert len(doc["runs"]) == 1 and doc["runs"][0]["state"] == "succeeded", doc
        r = clients[(i + 1) % n].get("/v1/files/%s/content" % fid)
        assert r.status_code == 200, r.text
        assert hashlib.sha256(r.content).hexdigest() == digest, fid
        recs = clients[(i + 2) % n].get("/v1/files/%s/records" % fid).json()["records"]
        assert [x["version"] for x in recs] == [1], (fid, recs)


def no_runs_left(pg, srv):
    assert sql(pg, srv, "SELECT count(*) FROM runs WHERE state NOT IN ('succeeded', 'failed', "
                        "'cancelled')") == "0"
    assert sql(pg, srv, "SELECT count(*) FROM runs WHERE lease_owner IS NOT NULL") == "0"
    # one run per file: nothing was queued twice
    assert sql(pg, srv, "SELECT count(*) FROM (SELECT file_id FROM runs GROUP BY file_id "
                        "HAVING count(*) > 1) d") == "0"


# ---- 1. uploads and reads spread across the instances ----

def test_uploads_and_reads_spread_across_instances(start_server, pg, tmp_path):
    servers, clients = three(start_server, instances_yaml(tmp_path, 0.3))
    a, b, c = servers
    ds = clients[0].create_dataset("spread")["id"]
    sse_c = stream(c, clients[2], ds)  # SSE through C, opened before any upload
    want, via = {}, {0: [], 1: [], 2: []}
    for i in range(9):
        up = i % 3
        name = "f%d.txt" % i
        body = text_body(name)
        r = upload_one(clients[up], ds, name, body)
        assert r.status_code == 202, r.text
        fid = r.json()["files"][0]["id"]
        want[fid] = (name, hashlib.sha256(body).hexdigest())
        via[up].append(fid)
        # read-after-write on another instance, at once
        other = clients[(up + 1) % 3]
        r = other.get("/v1/files/%s" % fid)
        assert r.status_code == 200 and r.json()["name"] == name, r.text
        listed = other.get("/v1/datasets/%s/files?limit=100" % ds).json()["files"]
        assert fid in {f["id"] for f in listed}
    check_done_and_stored(clients, ds, want)
    listed = clients[1].get("/v1/datasets/%s/files?limit=100&status=done" % ds).json()["files"]
    assert {f["id"] for f in listed} == set(want)
    # SSE on C: every run event of the files uploaded through A, as the timeline has them
    fids_a = via[0]
    tl = timeline(clients[1], fids_a)
    want_seqs = {e["seq"] for e in tl}
    got = sse_c.take(until=lambda g: want_seqs <= {e["data"]["seq"] for e in g
                                                    if e["event"] == "run"}, timeout=30)
    time.sleep(0.3)
    while not sse_c.events.empty():
        got.append(sse_c.events.get_nowait())
    check_against_timeline(got, tl, fids_a, same_order=False)
    sse_c.resp.close()
    no_runs_left(pg, a)


# ---- 2. kill -9 of one instance mid-run ----

def test_kill_9_of_one_instance_loses_nothing(start_server, pg, tmp_path):
    servers, clients = three(start_server, instances_yaml(tmp_path, 3, lease_s=KILL_LEASE_S))
    a, b, c = servers
    ds = clients[0].create_dataset("kill")["id"]
    b_like = engine_owner_like(b)
    want = {}
    for i in range(30):
        up = i % 3
        name = "k%d.txt" % i
        body = text_body(name)
        r = upload_one(clients[up], ds, name, body)
        assert r.status_code == 202, r.text
        want[r.json()["files"][0]["id"]] = (name, hashlib.sha256(body).hexdigest())
    held = wait_held(pg, a, b_like, n=3)
    b_pids = [b.pid, b.engine_pid()] + b.http_pids()
    t_kill = time.monotonic()
    b.kill()  # SIGKILL to the whole process group: supervisor, engine, HTTP
    assert all(gone(p) for p in b_pids), b_pids
    print("\nB held %d runs when killed" % len(held))
    live = [clients[0], clients[2]]
    check_done_and_stored(live, ds, want, timeout=KILL_LEASE_S + 60)
    took = time.monotonic() - t_kill
    print("all %d files done %.1f s after the kill" % (len(want), took))
    # nobody takes a run whose lease has not lapsed (B's last heartbeat was
    # at most a third of the lease before the kill)
    assert took >= KILL_LEASE_S * 2 / 3 - 0.5, took
    # the runs B held were finished by A or C (after their lease lapsed)
    for rid in held:
        assert sql(pg, a, "SELECT state FROM runs WHERE id = '%s'" % rid) == "succeeded"
    no_runs_left(pg, a)


# ---- 3. rolling restart ----

class Uploader(threading.Thread):
    """Uploads one small text file per request in a loop, round-robin over the
    instances, and on a refused or cut connection or a 503 goes on with the
    next instance (a load balancer's retry): a retried request is a new
    request with a new name, so each name is one request."""

    def __init__(self, clients, ds):
        super().__init__(daemon=True)
        self.clients, self.ds = clients, ds
        self.stop = threading.Event()
        self.accepted = {}  # file id -> (name, sha256): answered 202
        self.refused = []   # names of requests not answered 202
        self.statuses = {}
        self.errors = []    # unexpected answers

    def run(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            c = self.clients[i % len(self.clients)]
            name = "loop%d.txt" % i
            body = text_body(name)
            try:
                r = upload_one(c, self.ds, name, body, timeout=60)
            except requests.RequestException as e:
                self.refused.append(name)
                self.statuses[type(e).__name__] = self.statuses.get(type(e).__name__, 0) + 1
                time.sleep(0.02)
                continue
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
            if r.status_code == 202:
                self.accepted[r.json()["files"][0]["id"]] = (name,
                                                            hashlib.sha256(body).hexdigest())
            else:
                self.refused.append(name)
                if r.status_code != 503:
                    self.errors.append((r.status_code, r.text))
            time.sleep(0.01)


def slow_upload(client, ds, name, body, seconds, result):
    """One upload whose body trickles over `seconds` (chunked); result gets
    the status code or the exception's name."""
    boundary = "slowbound%s" % secrets.token_hex(6)
    head = ('--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
            'Content-Type: text/plain\r\n\r\n' % (boundary, name)).encode()
    tail = ("\r\n--%s--\r\n" % boundary).encode()
    pieces = 10

    def gen():
        yield head
        step = max(1, len(body) // pieces)
        for k in range(0, len(body), step):
            time.sleep(seconds / pieces)
            yield body[k:k + step]
        yield tail

    try:
        r = requests.post(client.base + "/v1/datasets/%s/files" % ds, data=gen(), timeout=60,
                          headers={"Authorization": "Bearer " + client.key,
                                   "Content-Type": "multipart/form-data; boundary=" + boundary})
        result["status"] = r.status_code
        if r.status_code == 202:
            result["id"] = r.json()["files"][0]["id"]
    except requests.RequestException as e:
        result["status"] = type(e).__name__


def refused_at_once(srv, timeout=2.0):
    """True when a new connection to srv is refused within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(srv.url + "/healthz", timeout=1)
        except requests.ConnectionError:
            return True
        time.sleep(0.02)
    return False


def test_rolling_restart_loses_no_accepted_upload(start_server, pg, tmp_path):
    drain_s = 4
    servers, clients = three(start_server, instances_yaml(tmp_path, 2, drain_s=drain_s))
    ds = clients[0].create_dataset("rolling")["id"]
    # the loop has its own sessions (a requests.Session is not shared across threads)
    loop = Uploader([Client(s.url, clients[0].key, clients[0].tenant_id) for s in servers], ds)
    loop.start()
    time.sleep(1.0)
    slow_ok_all, takeovers = {}, []
    try:
        for k, srv in enumerate(servers):
            me = clients[k]
            like = engine_owner_like(srv)
            # runs held by this instance's engine (uploads through it kick it)
            for j in range(3):
                r = upload_one(me, ds, "held%d_%d.txt" % (k, j), text_body("held"))
                assert r.status_code == 202, r.text
                loop.accepted[r.json()["files"][0]["id"]] = (
                    "held%d_%d.txt" % (k, j), None)
            held = wait_held(pg, srv, like, n=1)
            # one upload in flight that ends within the drain, one that does not
            ok_body, cut_body = text_body("slow-ok") * 50, text_body("slow-cut") * 50
            ok_res, cut_res = {}, {}
            ok_name, cut_name = "slowok%d.txt" % k, "slowcut%d.txt" % k
            t_ok = threading.Thread(target=slow_upload,
                                    args=(me, ds, ok_name, ok_body, 2.0, ok_res))
            t_cut = threading.Thread(target=slow_upload,
                                     args=(me, ds, cut_name, cut_body, drain_s + 6, cut_res))
            t_ok.start()
            t_cut.start()
            time.sleep(0.5)  # both are sending their bodies now
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            # the listener is closed at once: a load balancer sees refusals
            assert refused_at_once(srv), "still accepting after SIGTERM"
            # the runs it held are handed back and taken by another instance
            pending = set(held)
            t_exit = None
            while pending and time.monotonic() - t0 < LEASE_S:
                if t_exit is None and srv.proc.poll() is not None:
                    t_exit = time.monotonic()
                for rid in list(pending):
                    row = sql(pg, srv, "SELECT state, coalesce(lease_owner, '') FROM runs "
                                       "WHERE id = '%s'" % rid).split("|")
                    if row[0] != "running" or (row[1] and not _like(row[1], like)):
                        pending.discard(rid)
                time.sleep(0.05)
            took = time.monotonic() - t0
            takeovers.append(took)
            assert not pending, "runs %s were not taken over" % pending
            rc = srv.proc.wait(timeout=drain_s + 20)
            stopped = (t_exit or time.monotonic()) - t0
            assert rc == 0, srv.log()[-3000:]
            t_ok.join(30)
            t_cut.join(30)
            print("\n%s: runs taken over in %.2f s, stopped in %.2f s; slow uploads: %s, %s"
                  % (srv.url, took, stopped, ok_res, cut_res))
            # answered within the drain: 202, and kept
            assert ok_res.get("status") == 202, ok_res
            slow_ok_all[ok_res["id"]] = (ok_name, hashlib.sha256(ok_body).hexdigest())
            # still sending at the deadline: never 202, and nothing of it kept
            assert cut_res.get("status") != 202, cut_res
            assert sql(pg, srv, "SELECT count(*) FROM files WHERE name = '%s'" % cut_name) == "0"
            # the drain lasted until the deadline (the cut upload), not longer
            assert drain_s - 0.5 < stopped < drain_s + 3, stopped
            srv.proc = None
            srv.start()  # the restarted instance serves
            r = upload_one(me, ds, "after%d.txt" % k, text_body("after"))
            assert r.status_code == 202, r.text
            loop.accepted[r.json()["files"][0]["id"]] = ("after%d.txt" % k, None)
            time.sleep(0.5)
    finally:
        loop.stop.set()
        loop.join(90)
    print("uploads: %d accepted, %d refused, statuses %s; takeovers %s s"
          % (len(loop.accepted), len(loop.refused), loop.statuses,
             ["%.2f" % t for t in takeovers]))
    assert not loop.errors, loop.errors[:5]
    assert len(loop.accepted) > 20
    # well before the lease would have lapsed
    assert max(takeovers) < 5.0, takeovers
    accepted = dict(loop.accepted)
    accepted.update(slow_ok_all)
    checked = {f: v for f, v in accepted.items() if v[1] is not None}
    for fid, (name, _) in accepted.items():
        doc = clients[0].wait_file(fid, timeout=120)
        assert doc["status"] == "done" and doc["name"] == name, doc
    check_done_and_stored(clients, ds, checked)
    # nothing of a request not answered 202 was kept, and every 202 is there once
    names = sql(pg, servers[0], "SELECT name FROM files").split("\n")
    names = [n.strip() for n in names if n.strip()]
    assert sorted(names) == sorted(v[0] for v in accepted.values())
    assert not set(loop.refused) & set(names)
    no_runs_left(pg, servers[0])


def _like(owner, pattern):
    """owner matches a '%-PID-%' LIKE pattern."""
    return pattern.strip("%") in owner


# ---- shutdown.announce_s: /readyz 503 while still serving, then refused ----

def test_announce_window_then_refused(start_server, pg, tmp_path):
    extra = instances_yaml(tmp_path, 0.1, drain_s=5, announce_s=2)
    a = start_server(extra_yaml=extra)
    b = start_server(database_url=a.database_url, storage_path=a.storage_path, extra_yaml=extra)
    t = a.create_tenant("announce")
    ds = t.create_dataset()["id"]
    assert requests.get(a.url + "/readyz", timeout=5).status_code == 200
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # within the window: out of rotation for a load balancer, still serving
    r = requests.get(a.url + "/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "draining", r.text
    assert r.headers.get("Retry-After") == "1"
    assert requests.get(a.url + "/healthz", timeout=5).status_code == 200
    body = text_body("window")
    r = upload_one(t, ds, "window.txt", body)
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    assert time.monotonic() - t0 < 2.0
    # then the listener closes
    assert refused_at_once(a, timeout=3.0)
    refused_after = time.monotonic() - t0
    rc = a.proc.wait(timeout=15)
    print("\nrefused %.2f s after SIGTERM, exit %s" % (refused_after, rc))
    assert rc == 0 and 1.9 < refused_after < 3.5
    a.proc = None
    tb = Client(b.url, t.key, t.tenant_id)
    check_done_and_stored([tb], ds, {fid: ("window.txt", hashlib.sha256(body).hexdigest())})


# ---- SSE streams end at SIGTERM; the client resumes on another instance ----

def drain_events(sse, got):
    while not sse.events.empty():
        got.append(sse.events.get_nowait())
    return got


def test_sse_ends_at_sigterm_and_resumes_elsewhere(start_server, pg, tmp_path):
    extra = instances_yaml(tmp_path, 0.5, drain_s=5)
    a = start_server(extra_yaml=extra)
    b = start_server(database_url=a.database_url, storage_path=a.storage_path, extra_yaml=extra)
    t = a.create_tenant("ssemove")
    tb = Client(b.url, t.key, t.tenant_id)
    ds = t.create_dataset()["id"]
    sse_a = stream(a, t, ds)
    fids = []
    for i in range(2):
        r = upload_one(tb, ds, "s%d.txt" % i, text_body("s"))
        assert r.status_code == 202, r.text
        fids.append(r.json()["files"][0]["id"])
    first = sse_a.take(until=lambda g: sum(e["event"] == "run" for e in g) >= 2, timeout=20)
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert sse_a.ended.wait(5), "the SSE stream did not end at SIGTERM"
    print("\nSSE ended %.2f s after SIGTERM" % (time.monotonic() - t0))
    drain_events(sse_a, first)
    assert a.proc.wait(timeout=20) == 0
    a.proc = None
    # more happens while the client is away; it comes back to B with Last-Event-ID
    r = upload_one(tb, ds, "s2.txt", text_body("s"))
    assert r.status_code == 202, r.text
    fids.append(r.json()["files"][0]["id"])
    for f in fids:
        assert tb.wait_file(f, timeout=60)["status"] == "done"
    tl = timeline(tb, fids)
    last = sse_a.last_id
    assert last is not None
    sse_b = stream(b, tb, ds, headers={"Last-Event-ID": last})
    want = {e["seq"] for e in tl if e["seq"] > int(last)}
    second = sse_b.take(until=lambda g: want <= {e["data"]["seq"] for e in g
                                                 if e["event"] == "run"}, timeout=30)
    time.sleep(0.3)
    drain_events(sse_b, second)
    sse_b.resp.close()
    # together: every run event of the timeline, none twice
    seqs = sorted(e["data"]["seq"] for e in first + second
                  if e["event"] == "run" and e["data"]["file_id"] in fids)
    assert seqs == sorted(e["seq"] for e in tl), (seqs, [e["seq"] for e in tl])


# ---- a second signal stops at once ----

@pytest.mark.parametrize("mode", ["separate", "inline"])
def test_second_sigterm_stops_at_once(start_server, pg, tmp_path, mode):
    """The first SIGTERM drains (here up to 20 s for an upload still sending);
    a second one ends the instance at once, and the cut upload keeps nothing."""
    extra = instances_yaml(tmp_path, 0.1, drain_s=20, process=mode)
    srv = start_server(extra_yaml=extra)
    t = srv.create_tenant("twice")
    ds = t.create_dataset()["id"]
    res = {}
    th = threading.Thread(target=slow_upload,
                          args=(t, ds, "twice.txt", text_body("twice") * 50, 15, res))
    th.start()
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert srv.proc.poll() is None, "the first SIGTERM must drain, not exit"
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(timeout=10)
    took = time.monotonic() - t0
    th.join(30)
    print("\n%s: second SIGTERM -> exit %s in %.2f s; upload %s" % (mode, rc, took, res))
    assert took < 2.0 and rc != 0
    assert res.get("status") != 202, res
    assert sql(pg, srv, "SELECT count(*) FROM files") == "0"
    assert all(gone(p) for p in pids_of_group(srv.pid))
    srv.proc = None


def pids_of_group(pgid):
    """Live pids of process group pgid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out
