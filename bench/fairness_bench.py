#!/usr/bin/python3
"""Fair scheduling: tenant B's single-file latency while tenant A's big batch
is queued, next to B's latency on an idle server. The ratio is the figure.

Starts its own Postgres, Redis and sluice (the test harness's classes) with
the OCR stand-in of tests/blackbox/test_fairness.py (50 ms per call, the real
ai_record flow on tiny PNGs). Latency is B's timeline: `queued` -> `succeeded`.
A's throughput (its files over the time they took) is printed too, and the
whole scenario again with fairness switched off (`fairness.shares: false`:
the claim takes the oldest runs first), for issue 10's acceptance: B's
busy/idle ratio <= 2 with shares, and A's throughput with shares >= 0.9x
its throughput with them off.

    /usr/bin/python3 bench/fairness_bench.py [--binary build/sluice] [--files 10000]
        [--samples 5] [--ceiling N] [--max-in-flight N]

--ceiling sets limits.max_runs_per_tenant for the run with shares (default 0:
none, the default config); --max-in-flight sets limits.max_runs_in_flight
for both runs (default: the config's default).
"""
import argparse
import os
import statistics
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def config(ceiling, shares, max_in_flight):
    limits = "max_files_per_request: 10000, max_runs_per_tenant: %d" % ceiling
    if max_in_flight:
        limits += ", max_runs_in_flight: %d" % max_in_flight
    return (
        'services:\n'
        '  ocr: {command: ["/bin/sh", "-c", "sleep 0.05; echo text {input}"], concurrency: 8, '
        'timeout_ms: 60000}\n'
        'pipelines:\n'
        '  - {name: ai_record, flow: lua-flows/ai_record.lua, match: ["image/png"]}\n'
        'limits: {%s}\n'
        'fairness: {shares: %s}\n' % (limits, "true" if shares else "false"))


def ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def b_latency(b, ds):
    """Uploads one file as B; returns its queued -> succeeded seconds."""
    r = b.upload(ds, ("b.png", PNG, "image/png"))
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    doc = b.wait_file(fid, timeout=300, interval=0.02)
    assert doc["status"] == "done", doc
    ev = b.get("/v1/files/%s/events" % fid).json()["events"]
    q = [e["at"] for e in ev if e["kind"] == "queued"][0]
    s = [e["at"] for e in ev if e["kind"] == "succeeded"][0]
    TIMELINES.append([(e["kind"], e.get("step") or "", ts(e["at"]) - ts(q)) for e in ev])
    B_FILES.append(fid)
    return ts(s) - ts(q)


B_FILES = []  # B's file ids, the latest last
TIMELINES = []  # B's timelines (kind, step, seconds after `queued`), the latest last


def print_timeline(samples):
    """Where B's time went while A's files were queued: each event's median
    offset from `queued` over the busy samples."""
    tl = TIMELINES[-samples:]
    n = min(len(t) for t in tl)
    print("fairness: B's timeline while A's files queue (median ms after queued):")
    for i in range(n):
        at = statistics.median(t[i][2] for t in tl)
        print("  %-16s %-10s %8.0f" % (tl[0][i][0], tl[0][i][1], at * 1000))


def a_done(pg, srv, tenant_id):
    db = urllib.parse.unquote(urllib.parse.urlparse(srv.database_url).path.lstrip("/"))
    return int(pg.psql("SELECT count(*) FROM runs WHERE tenant_id = '%s' AND state = 'succeeded'"
                       % tenant_id, dbname=db).strip())


def scenario(factory, pg, nfiles, samples, ceiling, shares, max_in_flight):
    srv = factory(extra_yaml=config(ceiling, shares, max_in_flight))
    print(f"postgres: {srv.durability()}")
    a = srv.create_tenant("a")
    b = srv.create_tenant("b")
    ds_a = a.create_dataset("a")["id"]
    ds_b = b.create_dataset("b")["id"]
    idle = [b_latency(b, ds_b) for _ in range(samples)]
    t0 = time.monotonic()
    r = a.upload(ds_a, [("a%05d.png" % i, PNG, "image/png") for i in range(nfiles)], timeout=600)
    assert r.status_code == 202, r.text[:300]
    busy = []
    for _ in range(samples):
        busy.append(b_latency(b, ds_b))
        time.sleep(0.2)
    print_timeline(samples)
    if os.environ.get("FAIR_LOG"):
        for line in srv.log().splitlines():
            if B_FILES[-1] in line and '"http_request"' not in line:
                print("  log: " + line[:400])
    left = nfiles - a_done(pg, srv, a.tenant_id)
    while a_done(pg, srv, a.tenant_id) < nfiles and time.monotonic() - t0 < 900:
        time.sleep(0.5)
    a_secs = time.monotonic() - t0
    srv.stop()
    return idle, busy, left, a_secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=None)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--ceiling", type=int, default=0,
                    help="limits.max_runs_per_tenant with shares (0: none)")
    ap.add_argument("--max-in-flight", type=int, default=0,
                    help="limits.max_runs_in_flight (0: the default)")
    ap.add_argument("--shares-only", action="store_true",
                    help="skip the second scenario (fairness off)")
    args = ap.parse_args()
    if args.binary:
        import os
        os.environ["SLUICE_BIN"] = args.binary
    with h.local_stack("sluice-fair-") as (factory, tmp):
        pg = factory.pg
        idle, busy, left, a_secs = scenario(factory, pg, args.files, args.samples, args.ceiling,
                                            True, args.max_in_flight)
        mi, mb = statistics.median(idle), statistics.median(busy)
        print("fairness: B single-file latency, idle server: %.0f ms (median of %d)"
              % (mi * 1000, len(idle)))
        print("fairness: B single-file latency, A's %d files queued: %.0f ms (median of %d; "
              "max %.0f ms; A had %d left after B's samples)"
              % (args.files, mb * 1000, len(busy), max(busy) * 1000, left))
        print("fairness: ratio busy/idle: %.2f (goal <= 2)" % (mb / mi))
        print("fairness: A's %d files took %.1f s (%.0f files/s with shares, ceiling %s, "
              "OCR concurrency 8 x 50 ms)" % (args.files, a_secs, args.files / a_secs,
                                             args.ceiling or "none"))
        if args.shares_only:
            return
        idle2, busy2, _, a2 = scenario(factory, pg, args.files, 1, 0, False, args.max_in_flight)
        print("fairness: with fairness off (fairness.shares: false, oldest first): B %.0f ms, "
              "ratio %.1f; A's files took %.1f s (%.0f files/s)"
              % (busy2[0] * 1000, busy2[0] / statistics.median(idle2), a2, args.files / a2))
        print("fairness: A's throughput with shares / with fairness off: %.2f (goal >= 0.9)"
              % (a2 / a_secs))


if __name__ == "__main__":
    main()
