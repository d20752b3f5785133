#!/usr/bin/python3
"""Upload throughput and server memory under concurrent uploads.

Starts its own Postgres, Redis and sluice (the test harness's classes), then:
  1. one client uploads 1 GiB                      -> MiB/s
  2. 50 clients upload 1 GiB in total at once      -> MiB/s
  3. 200 clients upload 50 MiB each at once        -> peak RSS of the server (VmHWM)
and, as the yardstick, writes 1 GiB straight to a file on the same disk with
fsync (what storage alone can take). One figure per line.

    /usr/bin/python3 bench/upload_bench.py [--binary build/sluice] [--quick]
"""
import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "blackbox"))
import sluice_harness as h  # noqa: E402

BOUNDARY = "benchBoundary0123456789"
MiB = 1024 * 1024
BLOCK = os.urandom(MiB)


def upload(port, key, ds, nbytes, results, idx):
    import socket
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"b{idx}.bin\"\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    s.sendall((f"POST /v1/datasets/{ds}/files HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {key}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
               f"Content-Length: {len(head) + nbytes + len(tail)}\r\n\r\n").encode())
    s.sendall(head)
    left = nbytes
    while left:
        n = min(left, MiB)
        s.sendall(BLOCK[:n])
        left -= n
    s.sendall(tail)
    resp = b""
    while b"\r\n\r\n" not in resp:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    s.close()
    results[idx] = resp.split(b" ")[1] if resp else b"none"


def run_clients(srv, client, ds, n, each):
    results = [None] * n
    threads = [threading.Thread(target=upload, args=(srv.port, client.key, ds, each, results, i))
               for i in range(n)]
    t0 = time.time()
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, srv.rss_kib())
        time.sleep(0.05)
    dt = time.time() - t0
    bad = [r for r in results if r != b"202"]
    if bad:
        raise SystemExit(f"{len(bad)} uploads failed: {bad[:5]}")
    return dt, peak


def disk_baseline(path, nbytes):
    f = path / "baseline.bin"
    t0 = time.time()
    with open(f, "wb") as out:
        left = nbytes
        while left:
            n = min(left, MiB)
            out.write(BLOCK[:n])
            left -= n
        out.flush()
        os.fsync(out.fileno())
    dt = time.time() - t0
    f.unlink()
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(HERE.parent / "build" / "sluice"))
    ap.add_argument("--quick", action="store_true", help="1/8 of the sizes")
    args = ap.parse_args()
    os.environ["SLUICE_BIN"] = args.binary
    scale = 8 if args.quick else 1
    total = 1024 * MiB // scale
    with h.local_stack("sluice-bench-") as (factory, tmp):
        srv = factory(extra_yaml="limits: {max_file_bytes: 2147483648, max_files_per_request: 10}\n"
                              "rate_limits: {requests_per_s: {uploads: 0, reads: 0}}\n")
        client = srv.create_tenant("bench")
        ds = client.create_dataset("bench")["id"]
        base_dt = disk_baseline(Path(srv.storage_path), total)
        print(f"disk_baseline_write_fsync: {total / MiB / base_dt:.0f} MiB/s "
              f"({total // MiB} MiB, python write+fsync, the storage ceiling)")

        dt, _ = run_clients(srv, client, ds, 1, total)
        one = total / MiB / dt
        print(f"upload_1_client: {one:.0f} MiB/s ({total // MiB} MiB in one file; "
              f"{one / (total / MiB / base_dt):.2f}x of the disk baseline)")
        shutil.rmtree(Path(srv.storage_path) / "files", ignore_errors=True)

        dt, _ = run_clients(srv, client, ds, 50, total // 50)
        fifty = total / MiB / dt
        print(f"upload_50_clients: {fifty:.0f} MiB/s ({total // MiB} MiB over 50 uploads at once; "
              f"{fifty / one:.2f}x of one client)")
        shutil.rmtree(Path(srv.storage_path) / "files", ignore_errors=True)

        rss0 = srv.rss_kib()
        n, each = 200, 50 * MiB // scale
        dt, peak = run_clients(srv, client, ds, n, each)
        hwm = srv.peak_rss_kib()
        print(f"upload_200x{each // MiB}MiB: {n * each / MiB / dt:.0f} MiB/s aggregate")
        print(f"rss_idle: {rss0 / 1024:.1f} MiB")
        print(f"rss_peak_200_uploads: {max(peak, hwm) / 1024:.1f} MiB (VmHWM; limit 150 MiB; "
              f"{max(peak, hwm) / 1024 / 150:.2f} of the limit)")


if __name__ == "__main__":
    main()
