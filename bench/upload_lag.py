#!/usr/bin/python3
"""Big uploads and the HTTP process's loop: how long each 1,000-file request
takes and how late the loop ran while they went in (core/looplag.h).

Starts its own Postgres, Redis and sluice, then sends --requests uploads of
--files small text files each, with ?process=false by default (the engine
stays idle: the uploads alone), and prints each request's seconds and the
loop-lag lines of the phase (sluice_harness.lag_summary).

    /usr/bin/python3 bench/upload_lag.py [--binary build/sluice] [--requests 6] [--files 1000] [--process]
"""
import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parent / "build" / "sluice"))
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--process", action="store_true", help="let the engine process them")
    args = ap.parse_args()
    os.environ["SLUICE_BIN"] = args.binary
    with h.local_stack("sluice-uploadlag-") as (factory, tmp):
        srv = factory()
        client = srv.create_tenant("bench")
        ds = client.create_dataset("bench")["id"]
        time.sleep(1)
        lag0 = h.loop_lag(srv)
        took = []
        for k in range(args.requests):
            parts = [("file", ("f-%d-%05d.txt" % (k, i), b"Document %d %d\n" % (k, i), "text/plain"))
                     for i in range(args.files)]
            t0 = time.time()
            r = client.post("/v1/datasets/%s/files?process=%s"
                            % (ds, "true" if args.process else "false"), files=parts)
            took.append(time.time() - t0)
            assert r.status_code == 202, r.text[:300]
        time.sleep(0.5)
        print("upload_seconds: %s (%d files each, process=%s)"
              % (", ".join("%.2f" % t for t in took), args.files, args.process))
        for line in h.lag_summary(lag0, h.loop_lag(srv)):
            print(line)


if __name__ == "__main__":
    main()
