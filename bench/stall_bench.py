#!/usr/bin/python3
"""Does a flow's string work stall the server? Hostile text against backtracking patterns.

Starts its own Postgres, Redis and sluice with one pipeline (every file): its
steps read the file (`cat` through sl.exec) and run one backtracking pattern
each over the whole text — string.match "(%w+)@(%w+)%.(%w+)", string.find
".-b", string.find "a*a*a*b", string.match "%s*$", string.gsub "[%w.]+@" —
chained with `always`, so every step runs whatever the one before did. Then it
uploads twenty 200 KB text files in one request (runs of one letter, of
digits, of '@', of '.', of spaces, and mixed) and, the whole time until every
file is final, polls GET /healthz every 10 ms on one keep-alive connection.

Prints the /healthz latency (p50, p99, max, count) and each file's outcome
(the run's state and every step's result). Prints only: no asserts on time.
The string budget bounds each step (a step that runs out fails with
budget_exceeded); while one runs, the loop is still busy with it.

    /usr/bin/python3 bench/stall_bench.py [--binary build/sluice] [--size 204800]
        [--shipped] [--engine separate|inline]
"""
import argparse
import http.client
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402

STEPS = [
    ("email", "match", "(%w+)@(%w+)%.(%w+)"),
    ("lazy", "find", ".-b"),
    ("stars", "find", "a*a*a*b"),
    ("trail", "match", "%s*$"),
    ("gsub", "gsub", "[%w.]+@"),
]


def flow_source():
    steps = []
    for i, (name, fn, pat) in enumerate(STEPS):
        nxt = f', always = "{STEPS[i + 1][0]}"' if i + 1 < len(STEPS) else ""
        if fn == "gsub":
            call = f"local _, n = string.gsub(s, {pat!r}, '%0'); r = n"
        else:
            call = f"r = s:{fn}({pat!r}); r = r and (type(r) == 'string' and #r or r) or false"
        steps.append(f"""    {name} = {{
      run = function(ctx, file)
        local s, err = read(file)
        if not s then return nil, err end
        local r
        {call}
        ctx.{name} = r
        return true
      end{nxt},
    }},""")
    return """local function read(file)
  local res, err = sl.exec{ argv = { "cat", file.path }, timeout = 30 }
  if not res then return nil, err end
  return res.stdout
end

return flow {
  start = "%s",
  steps = {
%s
  },
}
""" % (STEPS[0][0], "\n".join(steps))


def hostile_files(size):
    def run(ch):
        return (ch * size).encode()
    unit = "a" * 500 + "@" + "9" * 500 + "." + " " * 500 + "x.y\n"
    mixed = (unit * (size // len(unit) + 1))[:size].encode()
    kinds = [("letters", run("a")), ("digits", run("7")), ("ats", run("@")),
             ("dots", run(".")), ("spaces", run(" ")), ("mixed", mixed)]
    files = []
    for i in range(20):
        kind, data = kinds[i % len(kinds)]
        files.append((f"{i:02d}-{kind}.txt", data))
    return files


class Poller(threading.Thread):
    """GET /healthz every 10 ms on one keep-alive connection; records each latency."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.lat = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                r.read()
                self.lat.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            rest = 0.010 - (time.perf_counter() - t0)
            if rest > 0:
                time.sleep(rest)
        conn.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parent / "build" / "sluice"))
    ap.add_argument("--size", type=int, default=200 * 1024)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--shipped", action="store_true",
                    help="the shipped pipelines (ai_record with the local extractor, "
                         "file_view) instead of the backtracking-pattern pipeline")
    ap.add_argument("--engine", choices=("separate", "inline"), default="separate",
                    help="engine.process: inline runs the flows on the HTTP loop (the old way)")
    args = ap.parse_args()
    os.environ["SLUICE_BIN"] = args.binary
    with h.local_stack("sluice-stallbench-") as (factory, tmp):
        yaml = f"engine: {{process: {args.engine}}}\n"
        if not args.shipped:
            flow = tmp / "stall.lua"
            flow.write_text(flow_source())
            yaml += f'pipelines:\n  - {{name: stall, flow: "{flow}", match: ["*/*"]}}\n'
        print(f"pipelines: {'shipped' if args.shipped else 'stall (backtracking patterns)'}, "
              f"engine: {args.engine}")
        srv = factory(extra_yaml=yaml)
        client = srv.create_tenant("stall")
        ds = client.create_dataset("stall")["id"]
        port = int(srv.url.rsplit(":", 1)[1])
        poller = Poller(port)
        poller.start()
        time.sleep(0.5)  # a baseline before the upload
        t0 = time.time()
        r = client.upload(ds, hostile_files(args.size))
        assert r.status_code == 202, r.text[:300]
        ids = {f["id"]: f["name"] for f in r.json()["files"]}
        docs = {}
        while time.time() - t0 < args.timeout:
            docs = {i: client.get(f"/v1/files/{i}").json() for i in ids}
            if all(d["status"] in ("done", "failed") for d in docs.values()):
                break
            time.sleep(0.2)
        elapsed = time.time() - t0
        poller.stop.set()
        poller.join()
        lat = [x * 1000 for x in poller.lat]
        print(f"files: {len(ids)} x {args.size} bytes, all final after {elapsed:.1f} s"
              if all(d.get("status") in ("done", "failed") for d in docs.values())
              else f"files: NOT all final after {elapsed:.1f} s")
        print(f"healthz: {len(lat)} polls, {poller.errors} errors; "
              f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat or [0]):.1f} ms")
        for fid, name in sorted(ids.items(), key=lambda kv: kv[1]):
            d = docs.get(fid, {})
            evs = client.get(f"/v1/files/{fid}/events").json().get("events", [])
            steps = []
            for e in evs:
                if e.get("kind") == "step_failed":
                    steps.append(f"{e.get('step')}:{(e.get('detail') or {}).get('error')}")
                elif e.get("kind") == "step_succeeded":
                    steps.append(f"{e.get('step')}:ok")
            runs = ",".join(f"{x['pipeline']}={x['state']}" for x in d.get("runs", []))
            print(f"  {name:14s} {d.get('status', '?'):7s} {runs:14s} {' '.join(steps)}")


if __name__ == "__main__":
    main()
