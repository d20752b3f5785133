"""Confined tools: what a tool run by a flow (sl.exec) can see and use.

- A decompression bomb (a PNG of a few hundred bytes declaring 50000 x 50000
  pixels) is refused by its header before vips or tesseract decode it: its
  runs fail with the permanent too_large, quickly, and the server lives on.
- A tool sees a clean environment (nothing of the server's: no admin key, no
  database URL), HOME and TMPDIR in the run's scratch dir, the exec.* rlimits
  (a flow may lower them, never raise them), and runs as `nobody` when the
  server runs as root; an exec.user that does not exist refuses every call.
"""
import json
import os
import shutil
import struct
import subprocess
import time
import uuid
import zlib

import pytest

from sluice_harness import REPO
from test_pipelines import FINAL, events, pipelines_yaml, run_of, wait_files


def png_bomb(width=50000, height=50000):
    """A valid PNG header declaring width x height RGB pixels, with a tiny
    IDAT (a few compressed zero rows): decoding it would need width * height *
    3 bytes; its header alone says so."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + width * 3) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) +
            chunk(b"IEND", b""))


def test_png_bomb_is_too_large_before_any_decoder(server, tenant):
    bomb = png_bomb()
    assert len(bomb) < 2000
    ds = tenant.create_dataset("bomb")["id"]
    t0 = time.monotonic()
    r = tenant.upload(ds, [("bomb.png", bomb, "image/png")])
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    doc = wait_files(tenant, [fid], timeout=60)[fid]
    assert time.monotonic() - t0 < 30  # refused by its header, not by a timeout
    assert doc["status"] == "failed", doc
    view = run_of(doc, "file_view")
    assert view["state"] == "failed" and view["error"] == "too_large", view
    ocr = run_of(doc, "ai_record")
    assert ocr["state"] == "failed", ocr
    details = [json.dumps(e["detail"]) for e in events(tenant, fid)
               if e["kind"] == "step_failed" and e["detail"].get("error") == "too_large"]
    assert any("50000x50000" in d and "max_image_pixels" in d for d in details), details
    # the same header under the cap is decoded (the check refuses by size only)
    small = png_bomb(64, 4)
    r = tenant.upload(ds, [("small.png", small, "image/png")])
    fid2 = r.json()["files"][0]["id"]
    doc2 = wait_files(tenant, [fid2], timeout=60)[fid2]
    assert run_of(doc2, "file_view")["state"] == "succeeded", doc2


def test_pixel_cap_is_configurable(start_server):
    srv = start_server(extra_yaml="limits: {max_image_pixels: 100}\n")
    t = srv.create_tenant("cap")
    ds = t.create_dataset()["id"]
    r = t.upload(ds, [("s.png", png_bomb(20, 10), "image/png")])  # 200 pixels > 100
    fid = r.json()["files"][0]["id"]
    doc = wait_files(t, [fid], timeout=60)[fid]
    assert run_of(doc, "file_view")["error"] == "too_large", doc


# A flow that reports what its tools see, as a text artifact.
PROBE = r'''
return flow { start = "probe", steps = { probe = { run = function(ctx, file)
  local out = {}
  local function run(name, spec)
    local res, err, detail = sl.exec(spec)
    if not res then
      out[#out + 1] = "== " .. name .. " ERROR " .. tostring(err) .. " " .. tostring(detail)
    else
      out[#out + 1] = "== " .. name .. " status=" .. res.status .. "\n" .. (res.stdout or "")
    end
  end
  run("env", { argv = { "env" } })
  run("id", { argv = { "id", "-u" } })
  run("limits", { argv = { "cat", "/proc/self/limits" } })
  run("lowered", { argv = { "sh", "-c", "ulimit -v; ulimit -t" }, memory = 268435456, cpu = 5 })
  run("raised", { argv = { "sh", "-c", "ulimit -v; ulimit -t" }, memory = 1e12, cpu = 86400 })
  run("input", { argv = { "head", "-c", "5", file.path } })
  run("write", { argv = { "sh", "-c", "echo x > \"$TMPDIR/w\" && cat \"$HOME/w\"" } })
  local id = sl.artifact { kind = "text", mime = "text/plain", data = table.concat(out, "\n") }
  return id ~= nil
end } } }
'''


def probe(srv, t):
    ds = t.create_dataset()["id"]
    r = t.upload(ds, [("a.txt", b"hello world\n", "text/plain")])
    fid = r.json()["files"][0]["id"]
    doc = wait_files(t, [fid], timeout=60)[fid]
    run = run_of(doc, "probe")
    assert run["state"] == "succeeded", (run, events(t, fid))
    art = [a for a in run["artifacts"] if a["kind"] == "text"][0]
    text = t.get(art["url"]).text
    sections = {}
    for part in text.split("== ")[1:]:
        head, _, body = part.partition("\n")
        sections[head.split(" ")[0]] = (head, body)
    return sections


def limit_of(text, name):
    for line in text.splitlines():
        if line.startswith(name):
            v = line[len(name):].split()[0]
            return -1 if v == "unlimited" else int(v)
    raise AssertionError("no %s in %s" % (name, text))


def test_tools_see_a_clean_env_the_limits_and_an_unprivileged_user(start_server, tmp_path):
    srv = start_server(
        env={"SLUICE_ADMIN_KEY": "admin-key-from-env", "SLUICE_PROBE_SECRET": "hunter2"},
        extra_yaml="exec: {memory_bytes: 805306368, cpu_s: 30, file_bytes: 67108864, "
                   "open_files: 64}\n" +
                   pipelines_yaml(tmp_path, {"probe": (PROBE, ["text/*"])}))
    t = srv.create_tenant("probe")
    s = probe(srv, t)

    head, env = s["env"]
    assert "status=0" in head, head
    names = {l.split("=", 1)[0] for l in env.splitlines() if "=" in l}
    assert names == {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "OMP_THREAD_LIMIT",
                     "MALLOC_ARENA_MAX"}, env
    assert "hunter2" not in env and "admin-key" not in env
    assert srv.database_url not in env and srv.admin_key not in env
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in env.splitlines()
    home = [l for l in env.splitlines() if l.startswith("HOME=")][0][5:]
    assert ("TMPDIR=" + home) in env.splitlines()
    assert home.endswith("/var/tmp/" + home.rsplit("/", 1)[1])  # the run's scratch dir

    _, lim = s["limits"]
    assert limit_of(lim, "Max address space") == 805306368
    assert limit_of(lim, "Max cpu time") == 30
    assert limit_of(lim, "Max file size") == 67108864
    assert limit_of(lim, "Max open files") == 64
    assert limit_of(lim, "Max core file size") == 0
    # a call may lower the limits ...
    assert s["lowered"][1].split() == [str(268435456 // 1024), "5"]
    # ... and never raise them past the config
    assert s["raised"][1].split() == [str(805306368 // 1024), "30"]

    # the run's file (in storage the tool user cannot enter) reaches the tool
    assert "status=0" in s["input"][0] and s["input"][1].strip() == "hello", s["input"]
    # the scratch dir is the tool's to write
    assert "status=0" in s["write"][0] and s["write"][1].strip() == "x", s["write"]

    uid = s["id"][1].strip()
    if os.geteuid() == 0:
        assert uid == str(__import__("pwd").getpwnam("nobody").pw_uid), uid
    else:
        assert uid == str(os.geteuid())


def test_defaults_apply_without_an_exec_section(start_server, tmp_path):
    srv = start_server(extra_yaml=pipelines_yaml(tmp_path, {"probe": (PROBE, ["text/*"])}))
    s = probe(srv, srv.create_tenant("defaults"))
    _, lim = s["limits"]
    assert limit_of(lim, "Max address space") == 1 << 30
    assert limit_of(lim, "Max cpu time") == 60
    assert limit_of(lim, "Max file size") == 256 << 20
    assert limit_of(lim, "Max open files") == 256
    assert limit_of(lim, "Max core file size") == 0


def test_unknown_exec_user_refuses_to_run_tools(start_server, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("exec.user applies only when the server runs as root")
    srv = start_server(extra_yaml="exec: {user: sluice-no-such-user}\n" +
                       pipelines_yaml(tmp_path, {"probe": (PROBE, ["text/*"])}))
    s = probe(srv, srv.create_tenant("nouser"))
    for name in ("env", "id", "limits", "input"):
        assert "ERROR unavailable" in s[name][0], s[name]


# ---------------------------------------------------------------- default limits
# A fresh server with no rate_limits or per-address settings ships with limits
# on (core/config.h SL_CONFIG_*; README "Configuration reference").

DEFAULT_CONN_PER_IP = 256
DEFAULT_SSE_PER_IP = 32


def recv_head(s, timeout=10):
    """The status line and headers of one response, as (status, {name: value})."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs


def test_default_upload_rate_limits_a_tight_loop(server, tenant):
    """No rate_limits section: one key uploading in a tight loop (4 at a time)
    meets 429 with Retry-After, within a few hundred requests."""
    import concurrent.futures as cf
    ds = tenant.create_dataset("loop")["id"]
    blob = os.urandom(64)  # application/octet-stream: no pipeline runs for it

    def one(i):
        r = tenant.upload(ds, [("b%d.bin" % i, blob)])
        return r.status_code, r.headers.get("Retry-After"), r.text

    got = []
    with cf.ThreadPoolExecutor(4) as pool:
        for res in pool.map(one, range(400)):
            got.append(res)
    codes = [c for c, _, _ in got]
    assert set(codes) <= {202, 429}, [g for g in got if g[0] not in (202, 429)][:3]
    assert 429 in codes, "400 uploads in a tight loop were never limited"
    assert codes.count(202) >= 50  # the burst (one second's worth) went through
    for c, ra, text in got:
        if c == 429:
            assert ra is not None and ra.isdigit() and int(ra) >= 1, ra
            assert json.loads(text)["error"]["code"] == "rate_limited"
    # reads have their own (larger) budget: the key can still look
    assert tenant.get("/v1/datasets/%s/files" % ds).status_code == 200


def test_default_per_ip_connection_cap(server):
    """The 257th connection from one address is answered 429 and closed; the
    others are untouched, and a freed slot is usable again."""
    import socket
    socks = []
    try:
        for _ in range(DEFAULT_CONN_PER_IP):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        # all accepted and counted: one of them still answers normally
        socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_head(socks[0])[0] == 200
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        status, hdrs = recv_head(extra)
        assert status == 429, status
        assert hdrs.get("retry-after", "").isdigit()
        extra.settimeout(10)
        rest = b""
        while True:  # then closed by the server
            chunk = extra.recv(65536)
            if not chunk:
                break
            rest += chunk
        extra.close()
        # closing one frees its slot
        socks.pop().close()
        deadline = time.monotonic() + 10
        while True:
            again = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status = recv_head(again)[0]
            again.close()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
    finally:
        for s in socks:
            s.close()
    assert server.proc.poll() is None


def test_per_ip_connection_cap_is_configurable(start_server):
    import socket
    srv = start_server(extra_yaml="limits: {max_connections_per_ip: 3}\n")
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        assert recv_head(s)[0] == 429
        s.close()
    finally:
        for s in socks:
            s.close()
    srv2 = start_server(extra_yaml="limits: {max_connections_per_ip: 0}\n")  # 0: off
    socks = [socket.create_connection(("127.0.0.1", srv2.port), timeout=10) for _ in range(300)]
    try:
        socks[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_head(socks[-1])[0] == 200
    finally:
        for s in socks:
            s.close()


def test_default_per_ip_sse_stream_cap(server, tenant):
    import socket
    ds = tenant.create_dataset("sse")["id"]
    req = ("GET /v1/datasets/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Accept: text/event-stream\r\n\r\n" % (ds, tenant.key)).encode()
    streams = []
    try:
        for _ in range(DEFAULT_SSE_PER_IP):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(req)
            assert recv_head(s)[0] == 200
            streams.append(s)
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(req)
        status, hdrs = recv_head(s)
        s.close()
        assert status == 429, status
        assert hdrs.get("retry-after", "").isdigit()
        # one stream ends: another may start. The client resets (SO_LINGER 0)
        # so the server sees it at once; a plain FIN is a half-close to HTTP,
        # noticed when a keepalive write fails.
        gone = streams.pop()
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        deadline = time.monotonic() + 10
        while True:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(req)
            status = recv_head(s)[0]
            if status == 200:
                streams.append(s)
                break
            s.close()
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    finally:
        for s in streams:
            s.close()


# A flow whose tool leaves a messy scratch dir: nesting, and symlinks to a
# file and a directory outside it (the removal must unlink them, not follow).
MESSY = r'''
return flow { start = "mess", steps = { mess = { run = function(ctx, file)
  local res = sl.exec { argv = { "sh", "-c",
    "mkdir -p a/b/c/d && echo x > a/b/c/d/f && ln -s \"$1\" a/b/to_file && " ..
    "ln -s \"$2\" a/to_dir && ln -s / root", "sh", ctx.outside_file, ctx.outside_dir } }
  return res ~= nil and res.status == 0
end } } }
'''


def scratch_dirs(prefix):
    root = REPO / "var" / "tmp"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(prefix)) \
        if root.is_dir() else []


def test_scratch_dirs_are_removed_without_following_links(start_server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.chmod(tmp_path, 0o755)
    os.chmod(outside, 0o755)
    flow = MESSY.replace("ctx.outside_file", '"%s"' % (outside / "keep.txt")) \
                .replace("ctx.outside_dir", '"%s"' % outside)
    srv = start_server(extra_yaml=pipelines_yaml(tmp_path, {"messy": (flow, ["text/*"])}))
    t = srv.create_tenant("messy")
    ds = t.create_dataset()["id"]
    r = t.upload(ds, [("m%d.txt" % i, b"mess\n", "text/plain") for i in range(5)])
    fids = [f["id"] for f in r.json()["files"]]
    docs = wait_files(t, fids, timeout=60)
    run_ids = []
    for fid in fids:
        run = run_of(docs[fid], "messy")
        assert run["state"] == "succeeded", (run, events(t, fid))
        run_ids.append(run["id"])
    deadline = time.monotonic() + 15
    left = None
    while time.monotonic() < deadline:
        left = [d for rid in run_ids for d in scratch_dirs(rid)]
        if not left:
            break
        time.sleep(0.1)
    assert not left, left
    assert (outside / "keep.txt").read_text() == "keep"
    assert os.path.isdir("/bin")


def test_scratch_dirs_of_a_dead_engine_are_swept_at_start(start_server, tmp_path):
    root = REPO / "var" / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process now
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    stale = root / ("%s.%d.1" % (uuid.uuid4(), dead.pid))
    (stale / "x" / "y").mkdir(parents=True)
    (stale / "x" / "y" / "f").write_text("x")
    (stale / "x" / "link").symlink_to(outside)
    live = root / ("%s.%d.1" % (uuid.uuid4(), os.getpid()))  # this process lives
    live.mkdir()
    other = root / "not-a-scratch-dir"
    other.mkdir(exist_ok=True)
    try:
        start_server()
        deadline = time.monotonic() + 15
        while stale.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not stale.exists()
        assert live.is_dir() and other.is_dir()
        assert outside.read_text() == "keep"
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
