#!/usr/bin/python3
"""Live status: event latency and concurrent SSE clients.

Starts its own Postgres, Redis and sluice, then:
  1. one SSE client (a process of its own) on a dataset while --files text
     files run through a small
     three-step flow (no I/O in the steps, so transitions come fast): for each
     of the first --events events, latency = arrival time at the client minus
     the event's `at` (the commit-time timestamp Postgres gave its timeline
     row; same machine, same clock). Prints median and p99.
  2. opens --clients SSE connections to one process and reads its RSS, then
     publishes one event and counts how many clients received it.

    /usr/bin/python3 bench/sse_bench.py [--binary build/sluice] [--events 10000] [--clients 5000]
"""
import argparse
import datetime
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import multiprocessing
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402

TICK_FLOW = '''
return flow {
  start = "one",
  steps = {
    one = { run = function(ctx, file) ctx.n = 1 return true end, next = "two" },
    two = { run = function(ctx, file) ctx.n = 2 return true end, next = "three" },
    three = { run = function(ctx, file) return true end },
  },
}
'''


def open_stream(port, key, ds):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall((f"GET /v1/datasets/{ds}/events?access_token={key} HTTP/1.1\r\n"
               f"Host: x\r\nAccept: text/event-stream\r\n\r\n").encode())
    return s


def parse_at(at):
    return datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def latency_reader(sock, want, conn):
    """In a process of its own (the uploads' multipart encoding in this one
    held the GIL for ms at a time, and parsing a burst of events delayed the
    next recv: both were counted as the server's latency). Records each recv's
    arrival time with its bytes and parses them only after the last one; sends
    back (latency, kind) for the first `want` events."""
    chunks, seen = [], 0
    sock.settimeout(120)
    while seen < want:
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            break
        if not chunk:
            break
        chunks.append((time.time(), chunk))
        seen += chunk.count(b'"at":')
    out, buf = [], b""
    for now, chunk in chunks:
        buf += chunk
        blocks = buf.split(b"\n\n")
        buf = blocks.pop()
        for block in blocks:
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    try:
                        ev = json.loads(line[6:])
                    except ValueError:
                        continue  # a chunk-size line of the chunked encoding
                    if "at" in ev and len(out) < want:
                        out.append((now - parse_at(ev["at"]), ev.get("kind", "?")))
    conn.send(out)
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parent / "build" / "sluice"))
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=5000)
    args = ap.parse_args()
    os.environ["SLUICE_BIN"] = args.binary
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with h.local_stack("sluice-ssebench-") as (factory, tmp):
        (tmp / "tick.lua").write_text(TICK_FLOW)
        srv = factory(extra_yaml=(
            f"pipelines:\n  - {{name: tick, flow: \"{tmp / 'tick.lua'}\", match: [\"text/*\"]}}\n"
            f"limits: {{max_connections: {args.clients + 1000}, max_connections_per_ip: 0}}\n"
            "sse: {max_streams_per_ip: 0}\n"
            "rate_limits: {requests_per_s: {uploads: 0, reads: 0}}\n"))
        print(f"postgres: {srv.durability()}")
        client = srv.create_tenant("bench")
        ds = client.create_dataset("bench")["id"]

        # 1. latency
        lag0 = h.loop_lag(srv)
        sock = open_stream(srv.port, client.key, ds)
        mine, theirs = multiprocessing.Pipe(duplex=False)
        reader = multiprocessing.get_context("fork").Process(
            target=latency_reader, args=(sock, args.events, theirs))
        reader.start()
        time.sleep(0.5)
        sent = 0
        while sent < args.files:
            n = min(500, args.files - sent)
            r = client.upload(ds, [(f"f{sent + i}.txt", b"x\n") for i in range(n)])
            assert r.status_code == 202, r.text[:200]
            sent += n
        got = mine.recv() if mine.poll(300) else []
        reader.join(10)
        sock.close()
        by_kind = {}  # event kind -> latencies (where the tail comes from)
        for x, kind in got:
            by_kind.setdefault(kind, []).append(x)
        lat = sorted(x for x, _ in got)
        if lat:
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"sse_events_measured: {len(lat)}")
            print(f"sse_latency_median: {statistics.median(lat) * 1000:.1f} ms "
                  f"(timeline row timestamp -> arrival at the client, one process, Redis up)")
            print(f"sse_latency_p99: {p99 * 1000:.1f} ms")
            for kind, xs in sorted(by_kind.items()):
                xs.sort()
                print(f"  {kind}: n={len(xs)} median {statistics.median(xs) * 1000:.1f} ms, "
                      f"p99 {xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000:.1f} ms")
        # stalls of the loops during the latency phase (core/looplag.h)
        for line in h.lag_summary(lag0, h.loop_lag(srv)):
            print(line)
        m = h.requests.get(srv.url + "/metrics", timeout=30).text
        drops = [l for l in m.splitlines() if l.startswith("sluice_sse_clients_dropped_total")]
        print("sse_clients_dropped: %s" % (drops[0].split()[-1] if drops else "?"))
        time.sleep(1)  # the log is buffered
        for line in srv.log().splitlines():
            if '"sse_client_dropped"' in line:
                print("  " + line)

        # 2. concurrent clients: wait until the first phase's runs are all done,
        # so the figure is the cost of idle connected clients, not of backlog
        deadline = time.time() + 300
        while time.time() < deadline:
            m = h.requests.get(srv.url + "/metrics", timeout=30).text
            busy = sum(float(l.split()[-1]) for l in m.splitlines()
                       if l.startswith("sluice_runs{") and ('state="queued"' in l or
                                                             'state="running"' in l))
            if busy == 0:
                break
            time.sleep(1)
        time.sleep(6)  # past one refresh of the runs gauge (5 s): nothing is in flight
        rss0 = srv.rss_kib()
        sel = selectors.DefaultSelector()
        socks = []
        for _ in range(args.clients):
            s = open_stream(srv.port, client.key, ds)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)

        def drain(timeout, want_event):
            got = set()
            end = time.time() + timeout
            while time.time() < end and len(got) < len(socks):
                for key, _ in sel.select(0.5):
                    try:
                        data = key.fileobj.recv(65536)
                    except (BlockingIOError, OSError):
                        continue
                    if data and (not want_event or b"event: " in data):
                        got.add(key.fileobj)
            return got

        drain(5, False)               # read the response headers like a client would
        time.sleep(1)
        rss1 = srv.rss_kib()
        metrics = h.requests.get(srv.url + "/metrics", timeout=30).text
        held = [l for l in metrics.splitlines() if l.startswith("sluice_sse_clients ")]
        print(f"sse_clients_open: {held[0].split()[1] if held else '?'} (of {args.clients} opened)")
        print(f"rss_with_clients: {rss1 / 1024:.1f} MiB (before: {rss0 / 1024:.1f} MiB; "
              f"{(rss1 - rss0) / max(args.clients, 1):.2f} KiB per client)")
        r = client.upload(ds, [("one-more.txt", b"x\n")])
        assert r.status_code == 202
        got = drain(30, True)
        print(f"sse_clients_reached_by_one_upload: {len(got)} of {len(socks)}")
        for s in socks:
            s.close()


if __name__ == "__main__":
    main()
