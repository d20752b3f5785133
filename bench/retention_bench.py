#!/usr/bin/python3
"""Retention on 100,000 files: the admin cleanup and a dataset delete.

Starts its own Postgres, Redis and sluice (the test harness's classes), seeds
two datasets of N files each by SQL (generate_series), each file with a small
blob on disk, one succeeded run and two timeline events (so the cascades have
work), then:
  1. POST /v1/admin/cleanup {"older_than_days": 1} over the first dataset's
     files (made 2 days old): the time to the answer (rows gone), the batches,
     the longest batch, and the time until every blob is gone;
  2. DELETE /v1/datasets/{id} of the second: the time to the 204, the time
     until the purge is done (rows, dataset row, blobs), its batches and its
     longest batch (from the server's retention_batches log lines);
and all along, a reader thread polls GET /healthz, GET /v1/files/{id} and
GET /v1/datasets/{id}/files?limit=10 of a third, live dataset: the longest
answer of each during each purge, and how many were not 200. The yardstick:
the same reads' longest answer while nothing is purged. One figure per line;
no asserts on time.

    /usr/bin/python3 bench/retention_bench.py [--files 100000] [--binary build/sluice]
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402


def psql(srv, sql):
    r = subprocess.run([str(h.pg_bindir() / "psql"), "-X", "-A", "-t", "-q", "-v",
                        "ON_ERROR_STOP=1", "-d", srv.database_url, "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError("psql: %s\n%s" % (sql[:200], r.stderr))
    return r.stdout.strip()


def seed(srv, tenant_id, ds, n, days_old):
    """n files of ds with blobs, a succeeded run and two events each."""
    d = Path(srv.storage_path) / "seed" / ds
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with open(d / str(i), "wb") as f:
            f.write(b"retention bench %d\n" % i)
    psql(srv,
         "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime,"
         " storage_key, created_at)"
         " SELECT gen_random_uuid(), '%s', '%s', gen_random_uuid(), 'f' || g,"
         " length('retention bench ' || g) + 1, 'x', 'text/plain', 'seed/%s/' || g,"
         " now() - make_interval(days => %d) FROM generate_series(0, %d) g"
         % (tenant_id, ds, ds, days_old, n - 1))
    psql(srv,
         "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, state,"
         " finished_at) SELECT gen_random_uuid(), tenant_id, dataset_id, id, batch_id,"
         " 'ai_record', 'succeeded', now() FROM files WHERE dataset_id = '%s'" % ds)
    psql(srv,
         "INSERT INTO run_events (seq, tenant_id, dataset_id, file_id, run_id, pipeline, kind,"
         " state) SELECT row_number() OVER (), r.tenant_id, r.dataset_id, r.file_id, r.id,"
         " r.pipeline, k, 'succeeded'"
         " FROM runs r, unnest(ARRAY['queued', 'succeeded']) k WHERE r.dataset_id = '%s'" % ds)
    psql(srv, "UPDATE datasets SET event_seq = (SELECT max(seq) FROM run_events"
              " WHERE dataset_id = '%s') WHERE id = '%s'" % (ds, ds))
    return d


class Reader(threading.Thread):
    """Polls three reads; keeps the longest answer and the failures of each per phase."""

    def __init__(self, srv, client, file_id, ds):
        super().__init__(daemon=True)
        self.paths = {"healthz": srv.url + "/healthz",
                      "file": srv.url + "/v1/files/" + file_id,
                      "list": srv.url + "/v1/datasets/%s/files?limit=10" % ds}
        self.headers = {"Authorization": "Bearer " + client.key}
        self.stop = False
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.max = {k: 0.0 for k in self.paths}
            self.bad = {k: 0 for k in self.paths}
            self.n = 0

    def snapshot(self):
        with self.lock:
            return dict(self.max), dict(self.bad), self.n

    def run(self):
        s = requests.Session()
        while not self.stop:
            for k, url in self.paths.items():
                t = time.monotonic()
                try:
                    ok = s.get(url, headers=self.headers, timeout=30).status_code == 200
                except requests.RequestException:
                    ok = False
                dt = time.monotonic() - t
                with self.lock:
                    self.max[k] = max(self.max[k], dt)
                    self.bad[k] += 0 if ok else 1
                    self.n += 1
            time.sleep(0.01)


def wait(pred, timeout=1800):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def report_reads(phase, reader):
    mx, bad, n = reader.snapshot()
    for k in ("healthz", "file", "list"):
        print("%s: longest GET %s during it: %.1f ms (%d of %d reads not 200)"
              % (phase, k, mx[k] * 1e3, bad[k], n // 3))


def purge_lines(srv, reason):
    out = []
    for line in srv.log().splitlines():
        if '"retention_batches"' in line:
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("reason") == reason:
                out.append(j)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--binary", default=None)
    args = ap.parse_args()
    if args.binary:
        os.environ["SLUICE_BIN"] = args.binary
    n = args.files
    with h.local_stack("sluice-retention-") as (factory, tmp):
        srv = factory(extra_yaml="retention: {batch_size: 500, lock_timeout_ms: 2000}\n")
        client = srv.create_tenant("bench")
        old = client.create_dataset("old")["id"]
        doomed = client.create_dataset("doomed")["id"]
        live = client.create_dataset("live")["id"]
        r = client.upload(live, [("live.txt", b"a live file\n", "text/plain")])
        live_file = r.json()["files"][0]["id"]
        client.wait_file(live_file)

        t = time.monotonic()
        old_dir = seed(srv, client.tenant_id, old, n, 2)
        doomed_dir = seed(srv, client.tenant_id, doomed, n, 0)
        psql(srv, "ANALYZE")
        print("seed: %d files x 2 datasets (with %d runs, %d events, %d blobs) in %.1f s"
              % (n, 2 * n, 4 * n, 2 * n, time.monotonic() - t))

        reader = Reader(srv, client, live_file, live)
        reader.start()
        time.sleep(3)
        report_reads("idle (yardstick)", reader)

        # 1. the admin cleanup
        reader.reset()
        t = time.monotonic()
        r = requests.post(srv.url + "/v1/admin/cleanup", timeout=3600,
                          json={"older_than_days": 1, "tenant_id": client.tenant_id},
                          headers={"Authorization": "Bearer " + srv.admin_key})
        answered = time.monotonic() - t
        body = r.json()
        wait(lambda: not any(old_dir.iterdir()))
        blobs_done = time.monotonic() - t
        print("cleanup: %d files, %d bytes removed (status %d)"
              % (body.get("files", -1), body.get("bytes", -1), r.status_code))
        print("cleanup: answered after %.2f s (rows gone: %.0f files/s)"
              % (answered, body.get("files", 0) / answered if answered else 0))
        print("cleanup: %d batches of <= 500 files, longest batch %.1f ms"
              % (body.get("batches", -1), body.get("longest_batch_ms", -1)))
        print("cleanup: every blob gone after %.2f s" % blobs_done)
        report_reads("cleanup", reader)

        # 2. the dataset delete
        reader.reset()
        t = time.monotonic()
        r = client.delete("/v1/datasets/" + doomed)
        answered = time.monotonic() - t
        wait(lambda: psql(srv, "SELECT count(*) FROM datasets WHERE id = '%s'" % doomed) == "0")
        rows_done = time.monotonic() - t
        wait(lambda: not any(doomed_dir.iterdir()))
        blobs_done = time.monotonic() - t
        lines = purge_lines(srv, "dataset_delete")
        print("dataset delete: %d answered after %.1f ms" % (r.status_code, answered * 1e3))
        print("dataset delete: %d files purged, rows gone after %.2f s, every blob after %.2f s"
              % (sum(j["rows"] for j in lines), rows_done, blobs_done))
        print("dataset delete: %d batches of <= 500 files, longest batch %.1f ms"
              % (sum(j["batches"] for j in lines), max([j["longest_batch_ms"] for j in lines] or [0])))
        report_reads("dataset delete", reader)
        reader.stop = True
        left = psql(srv, "SELECT (SELECT count(*) FROM files WHERE dataset_id <> '%s'),"
                         " (SELECT count(*) FROM run_events WHERE dataset_id <> '%s'),"
                         " (SELECT count(*) FROM purge_blobs)"
                    % (live, live))
        print("left over (files, timeline rows, queued blobs) outside the live dataset: %s"
              % left.replace("|", ", "))


if __name__ == "__main__":
    main()
