#!/usr/bin/python3
"""Run actors under load: memory per parked run, and transitions per second.

Starts its own Postgres, Redis, Tika stand-in and sluice, then:
  1. parks N runs (default 10,000) on a stalled Tika stand-in (each run's tika
     step waits for a reply or for a service slot) and reads the engine
     process's RSS; the figure is (RSS parked - RSS before the upload) / N, and
     the second half's growth / N/2. The config lifts
     the per-tenant cap for this part (limits: max_runs_per_tenant,
     max_runs_in_flight and max_runs_active = N): with the default cap of 16
     only 16 runs of the one tenant would ever park, and admission holds 64
     runs that wait for Tika's 8 slots;
  2. with the stand-in answering at once, processes M text files (default
     2,000) through ai_record and counts committed transitions per second
     (timeline events written by the actors, from /metrics). Before its
     uploads it prints fs_create_cost, the CPU a file's creation costs on the
     disk the blobs go to: the uploads create one file each, and on ext4
     without a journal that cost is 20-50 times its quiet figure for minutes
     after a large deletion (docs/internals/scheduler.md, "stop 34").

    /usr/bin/python3 bench/flow_bench.py [--binary build/sluice] [--runs 10000] [--files 2000]

--files 0 measures only the parked runs; --runs 0 only the transitions.
--flow F [--level N] runs part 2 with flow file F as the ai_record pipeline
(a copy with its `local LEVEL = ...` line set to N): bench/flows/steps.lua
switches ai_record's work on level by level (docs/internals/scheduler.md,
"stop 24").
The parked step's own share, without a server: build/test_flow_park [N].
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402
from sluice_harness import Standin  # noqa: E402
from test_pipelines import services_yaml  # noqa: E402


def metric(srv, name):
    text = h.requests.get(srv.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            m = re.match(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+(\S+)$", line)
            if m:
                total += float(m.group(2))
    return total


def engine_rss_kib(srv):
    """VmRSS of the engine process, where runs park (srv.rss_kib() is the HTTP
    process's when there is one apart: it measured the uploads, not the runs);
    the server's own when the engine runs inline."""
    pid = srv.engine_pid()
    if pid is None:
        return srv.rss_kib()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not in /proc/%d/status" % pid)


def upload_many(client, ds, n, prefix):
    for start in range(0, n, 1000):
        parts = [(f"{prefix}-{i:05d}.txt",
                  f"Document {prefix} {i}\nReference: REF-{i:05d}\n".encode())
                 for i in range(start, min(n, start + 1000))]
        r = client.upload(ds, parts)
        assert r.status_code == 202, r.text[:300]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parent / "build" / "sluice"))
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--flow", help="a flow file to run as the ai_record pipeline (part 2)")
    ap.add_argument("--level", type=int, default=3, help="its LEVEL (bench/flows/steps.lua)")
    args = ap.parse_args()
    os.environ["SLUICE_BIN"] = args.binary
    with h.local_stack("sluice-flowbench-") as (factory, tmp):
        tika = Standin("tika")
        try:
            if args.runs > 0:
                park(args, factory, tika)
            if args.files > 0:
                transitions(args, factory, tika, tmp)
        finally:
            tika.stop()


def park(args, factory, tika):
    # 1. parked runs
    tika.control(mode="stall")
    yaml = services_yaml(tika=tika).replace("timeout_ms: 5000", "timeout_ms: 3600000")
    # Every run may be in flight at once: no per-tenant cap (a config
    # override, so it holds whatever replaces the cap by default).
    cap = max(args.runs, 16)
    # Admission (limits.max_runs_active) counts a run waiting for Tika's slot
    # as active, not parked: lifted too, so all N runs are claimed and wait.
    yaml += (f"\nlimits: {{max_runs_per_tenant: {cap}, "
             f"max_runs_in_flight: {max(cap, 10000)}, max_runs_active: {max(cap, 10000)}}}\n")
    srv = factory(extra_yaml=yaml)
    client = srv.create_tenant("bench")
    ds = client.create_dataset("bench")["id"]
    time.sleep(1)
    rss0 = engine_rss_kib(srv)
    t0 = time.time()
    # In two halves: the second half's RSS growth is the marginal cost of a
    # parked run (the allocator reuses the first upload's freed buffers),
    # without the fixed residue that the overall figure includes.
    half = args.runs // 2
    upload_many(client, ds, half, "park")
    while metric(srv, "sluice_runs_in_flight") < half and time.time() - t0 < 600:
        time.sleep(0.5)
    time.sleep(1)
    parked_half = metric(srv, "sluice_runs_in_flight")
    rss_half = engine_rss_kib(srv)
    upload_many(client, ds, args.runs - half, "park2")
    while metric(srv, "sluice_runs_in_flight") < args.runs and time.time() - t0 < 600:
        time.sleep(0.5)
    parked = metric(srv, "sluice_runs_in_flight")
    time.sleep(1)
    rss1 = engine_rss_kib(srv)
    print(f"runs_parked: {parked:.0f} (on a stalled Tika stand-in, {time.time() - t0:.1f} s "
          f"to upload and claim)")
    print(f"rss_before: {rss0 / 1024:.1f} MiB, rss_half: {rss_half / 1024:.1f} MiB, "
          f"rss_parked: {rss1 / 1024:.1f} MiB")
    print(f"memory_per_parked_run: {(rss1 - rss0) / max(parked, 1):.2f} KiB "
          f"(engine RSS delta / runs)")
    print(f"memory_per_parked_run_marginal: "
          f"{(rss1 - rss_half) / max(parked - parked_half, 1):.2f} KiB "
          f"(second half's RSS growth / its runs)")
    srv.kill()


def transitions(args, factory, tika, tmp):
    # 2. transitions per second with an instant stand-in
    tika.control(mode="ok")
    yaml = services_yaml(tika=tika)
    if args.flow:
        text = re.sub(r"(?m)^local LEVEL = \d+", "local LEVEL = %d" % args.level,
                      Path(args.flow).read_text())
        (tmp / "bench_flow.lua").write_text(text)
        yaml += ('\npipelines:\n  - {name: ai_record, flow: "%s", match: ["text/*"]}\n'
                 % (tmp / "bench_flow.lua"))
        print(f"flow: {args.flow} at level {args.level} as ai_record")
    srv = factory(extra_yaml=yaml)
    print(f"postgres: {srv.durability()}")
    client = srv.create_tenant("bench2")
    ds = client.create_dataset("bench2")["id"]
    print(f"fs_create_cost: {h.fs_create_cost(tmp):.0f} us of CPU a file created "
          f"(h.fs_create_cost; on ext4 without a journal, hundreds while files "
          f"deleted in the last six minutes are near)")
    before = metric(srv, "sluice_run_transitions_total")
    lag0 = h.loop_lag(srv)
    t0 = time.time()
    upload_many(client, ds, args.files, "fast")
    t_up = time.time() - t0
    at_up = metric(srv, "sluice_run_transitions_total")
    while True:
        # from Postgres: the sluice_runs gauge is refreshed every 5 s, which made
        # every figure a multiple of 5 s (20.0 s for 3,000 runs, run after run)
        done = int(srv.sql("SELECT count(*) FROM runs WHERE pipeline = 'ai_record'"
                           " AND state = 'succeeded'"))
        if done >= args.files or time.time() - t0 > 900:
            break
        time.sleep(0.2)
    polled = time.time() - t0
    n = metric(srv, "sluice_run_transitions_total") - before
    # The end is the last event's insert (run_events.at, clock_timestamp() in
    # its group's transaction, this host's clock; the commit follows within
    # milliseconds), not the poll that saw it: the poll's 0.2 s period (and
    # its psql) added 0.0-0.18 s to a 6.5-9.4 s run (stop 30).
    last = float(srv.sql("SELECT extract(epoch FROM max(at)) FROM run_events"
                         " WHERE dataset_id = '%s'" % ds))
    dt = last - t0
    print(f"runs_completed: {done:.0f} of {args.files} in {dt:.2f} s "
          f"({done / dt:.0f} runs/s, ai_record via the Tika stand-in + local extractor; "
          f"the uploads took the first {t_up:.1f} s)")
    print(f"transitions_per_s: {n / dt:.0f} (timeline events committed by actors; "
          f"{n / max(done, 1):.1f} per run; from the first upload to the last event's "
          f"insert; {n / polled:.0f} to the poll that saw it, {polled:.2f} s)")
    # The engine alone: from the end of the uploads (which compete with it
    # for the 2 cores: blob writes, fsyncs, libmagic) to the last run's end.
    if dt > t_up:
        print(f"transitions_per_s_after_uploads: {(n - (at_up - before)) / (dt - t_up):.0f} "
              f"({n - (at_up - before):.0f} transitions in the last {dt - t_up:.1f} s, "
              f"the engine alone)")
    for line in h.lag_summary(lag0, h.loop_lag(srv)):
        print(line)


if __name__ == "__main__":
    main()
