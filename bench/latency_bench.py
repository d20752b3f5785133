#!/usr/bin/python3
"""Upload -> done latency of a minimal three-step flow (issue 10: p50 < 10 ms).

Starts its own Postgres, Redis and sluice (the harness's local stack) with one
pipeline, the three-step flow of bench/sse_bench.py (no I/O in its steps), and
uploads --files one-file requests one after the other. For each file:
  - client: from just before the POST to the arrival of its run's `succeeded`
    event on an SSE stream opened beforehand (what a browser sees);
  - server: from the file's `created_at` (its upload's transaction) to the
    `at` of the run's last timeline event (clock_timestamp() at its insert,
    just before that transition's commit), both Postgres clocks: the engine's
    share, without HTTP, the SSE path or the client.
Prints p50 / p90 / p99 of both. Durable commits (fsync and synchronous_commit on:
local_stack's Postgres; the settings are printed).

    /usr/bin/python3 bench/latency_bench.py [--binary build/sluice] [--files 300]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
sys.path.insert(0, str(HERE))
import sluice_harness as h  # noqa: E402
from sse_bench import TICK_FLOW, open_stream, parse_at  # noqa: E402


def psql(srv, sql):
    r = subprocess.run([str(h.pg_bindir() / "psql"), "-X", "-A", "-t", "-q", "-v",
                        "ON_ERROR_STOP=1", "-d", srv.database_url, "-c", sql],
                       capture_output=True, text=True, check=True)
    return r.stdout


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def reader(sock, seen, cond):
    """file_id -> arrival time of its run's `succeeded` event."""
    buf = b""
    sock.settimeout(300)
    while True:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            return
        if not chunk:
            return
        now = time.time()
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                try:
                    ev = json.loads(line[6:])
                except ValueError:
                    continue
                if ev.get("state") == "succeeded":
                    with cond:
                        seen[ev["file_id"]] = (now, parse_at(ev["at"]))
                        cond.notify_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parent / "build" / "sluice"))
    ap.add_argument("--files", type=int, default=300)
    args = ap.parse_args()
    os.environ["SLUICE_BIN"] = args.binary
    with h.local_stack("sluice-latbench-") as (factory, tmp):
        (tmp / "tick.lua").write_text(TICK_FLOW)
        srv = factory(extra_yaml=(
            f"pipelines:\n  - {{name: tick, flow: \"{tmp / 'tick.lua'}\", match: [\"text/*\"]}}\n"
            "rate_limits: {requests_per_s: {uploads: 0, reads: 0}}\n"))
        print(f"postgres: {srv.durability()}")
        client = srv.create_tenant("bench")
        ds = client.create_dataset("bench")["id"]
        seen, cond = {}, threading.Condition()
        sock = open_stream(srv.port, client.key, ds)
        threading.Thread(target=reader, args=(sock, seen, cond), daemon=True).start()
        time.sleep(0.5)
        wall, engine, ids = [], [], []
        for i in range(args.files + 10):  # the first 10 warm up
            t0 = time.time()
            r = client.upload(ds, [(f"f{i}.txt", b"x\n")])
            assert r.status_code == 202, r.text[:200]
            fid = r.json()["files"][0]["id"]
            with cond:
                if not cond.wait_for(lambda: fid in seen, timeout=30):
                    raise SystemExit("file %s not done within 30 s" % fid)
                arrived, _ = seen[fid]
            if i >= 10:
                wall.append(arrived - t0)
                ids.append(fid)
        sock.close()
        # Each timeline event's offset from the file's created_at (the upload's
        # transaction), in place order: the last one is the engine's share,
        # and by position in the timeline they say where the time goes.
        rows = psql(srv, "SELECT e.file_id, e.kind, coalesce(e.step, ''), "
                           "extract(epoch FROM e.at - f.created_at) FROM run_events e "
                           "JOIN files f ON f.id = e.file_id WHERE f.dataset_id = '%s' "
                           "ORDER BY e.seq" % ds)
        by_file = {}
        for line in rows.strip().splitlines():
            fid, kind, step, off = line.split("|")
            by_file.setdefault(fid, []).append((kind, step, float(off)))
        timelines = [by_file[f] for f in ids if f in by_file]
        engine = [max(e[2] for e in t) for t in timelines]
        if timelines:
            print("timeline (median ms after the upload's transaction began):")
            for n in range(max(len(t) for t in timelines)):
                at = [t[n][2] for t in timelines if len(t) > n]
                kind, step = timelines[0][n][:2] if len(timelines[0]) > n else ("?", "")
                print(f"  {n:2d} {kind:16s} {step:8s} {statistics.median(at) * 1000:7.2f}")
        for name, xs in (("client (POST -> succeeded event over SSE)", wall),
                         ("server (upload commit -> last transition commit)", engine)):
            print(f"{name}: n={len(xs)} p50={statistics.median(xs) * 1000:.1f} ms "
                  f"p90={pct(xs, 0.9) * 1000:.1f} ms p99={pct(xs, 0.99) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
