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
import struct
import time
import zlib

import pytest

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
