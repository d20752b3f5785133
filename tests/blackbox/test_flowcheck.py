"""Flow validation (issue 14): `sluice flow check FILE...` offline, and the
graph of a pipeline through GET /v1/pipelines and /v1/pipelines/{name}
(../shared/API.md "Pipelines"; docs/flows.md "Checking a flow").

The CLI needs no configuration, Postgres, Redis or server: its tests run the
binary alone, with an empty environment for the services.
"""
import glob
import hashlib
import json
import os
import signal
import subprocess
import time

import requests

from sluice_harness import REPO, sluice_binary

GOOD = '''-- two steps and a fallback
local text = require "text"

return flow {
  start = "first",
  steps = {
    first = {
      run = function(ctx, file) return true end,
      next = "second",
      fallback = "second",
      timeout = 30,
      retry = {attempts = 2, base = 1, max = 4},
    },
    second = { run = function(ctx, file) return true end },
  },
}
'''

# Four mistakes, each on its own line: all four must be reported.
BAD = '''local gone = require "no_such_module"
return flow {
  start = "a",
  steps = {
    a = {
      run = function(ctx, file) return true end,
      next = "b", fallback = "nowhere",
    },
    b = { run = function() return true end, always = "b", timeout = 99999 },
    orphan = { run = function() return true end },
  },
}
'''


def flow_check(*args, cwd=REPO):
    return subprocess.run([str(sluice_binary()), "flow", "check", *map(str, args)], cwd=str(cwd),
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=60)


def test_flowcheck_cli_good_file(tmp_path):
    f = tmp_path / "good.lua"
    f.write_text(GOOD)
    r = flow_check("--lib", REPO / "lua-flows" / "lib", f)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.strip() == "%s: ok" % f


def test_flowcheck_cli_bad_file_every_error_with_its_line(tmp_path):
    f = tmp_path / "bad.lua"
    f.write_text(BAD)
    r = flow_check("--lib", REPO / "lua-flows" / "lib", f)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    want = [
        "%s:1: require 'no_such_module': no module" % f,
        "%s:6: step 'a': fallback 'nowhere' is not a step" % f,
        "%s:9: step 'b': timeout must be a number of seconds, > 0 and at most 86400" % f,
        "%s:9: step 'b': the run can never end from here" % f,
        "%s:10: step 'orphan': unreachable from start 'a'" % f,
    ]
    assert len(lines) == len(want), r.stderr
    for got, w in zip(lines, want):
        assert got.startswith(w), (got, w)
    # a good file next to a bad one: still 1, and the good one says ok
    g = tmp_path / "good.lua"
    g.write_text(GOOD)
    r = flow_check("--lib", REPO / "lua-flows" / "lib", g, f)
    assert r.returncode == 1
    assert r.stdout.strip() == "%s: ok" % g


def test_flowcheck_cli_syntax_error_and_missing_file(tmp_path):
    f = tmp_path / "syntax.lua"
    f.write_text('return flow {\n  start = "a",\n  steps = {{{\n')
    r = flow_check(f)
    assert r.returncode == 1
    assert r.stderr.startswith("%s:4: " % f), r.stderr
    r = flow_check(tmp_path / "missing.lua")
    assert r.returncode == 1
    assert r.stderr.startswith("%s:1: " % (tmp_path / "missing.lua")), r.stderr
    r = flow_check()
    assert r.returncode == 2


def test_flowcheck_shipped_flows_pass():
    files = sorted(glob.glob(str(REPO / "lua-flows" / "*.lua")))
    assert len(files) >= 2
    r = flow_check(*files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ok") == len(files)


def test_flowcheck_pipelines_graph(server, tenant):
    r = tenant.get("/v1/pipelines/ai_record")
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["name"] == "ai_record"
    assert p["match"][:3] == ["application/pdf", "image/*", "text/*"]  # + the Office types (test_ops.py)
    assert p["steps"] == ["tika", "ocr", "textract", "record"]
    assert p["source"] == "config"
    src = (REPO / "lua-flows" / "ai_record.lua").read_bytes()
    assert p["version"] == hashlib.sha256(src).hexdigest()
    g = p["graph"]
    assert g["nodes"] == [{"id": s} for s in ["tika", "ocr", "textract", "record"]]
    edges = {(e["from"], e["to"], e["on"]) for e in g["edges"]}
    assert all(set(e) == {"from", "to", "on"} for e in g["edges"])
    assert edges == {
        ("tika", "record", "next"), ("tika", "ocr", "fallback"),
        ("ocr", "record", "next"), ("ocr", "textract", "fallback"),
        ("textract", "record", "next"),
    }
    fv = tenant.get("/v1/pipelines/file_view").json()
    assert fv["graph"]["edges"] == [{"from": "preview", "to": "thumbnail", "on": "always"}]
    # the list shows the same documents
    ps = tenant.get("/v1/pipelines").json()["pipelines"]
    assert [x["name"] for x in ps] == ["ai_record", "file_view"]
    # (issue 14, pipeapi: "versions" is the detail's only)
    assert ps[0] == {k: v for k, v in p.items() if k != "versions"}


def test_flowcheck_pipelines_unknown_and_unauthorized(server, tenant):
    r = tenant.get("/v1/pipelines/no_such_pipeline")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    r = requests.get(server.url + "/v1/pipelines/ai_record", timeout=10)
    assert r.status_code == 401


def test_flowcheck_invalid_flow_refused_at_start_with_every_error(start_server, tmp_path):
    f = tmp_path / "broken.lua"
    f.write_text(BAD)
    try:
        start_server(extra_yaml="pipelines:\n  - {name: broken, flow: \"%s\", match: [\"text/*\"]}\n"
                     % f)
    except AssertionError as e:
        msg = str(e)
    else:
        raise AssertionError("a server with an invalid flow started")
    for w in ["broken.lua:1: require 'no_such_module'", "broken.lua:6: step 'a': fallback",
              "broken.lua:9: step 'b': timeout", "broken.lua:10: step 'orphan': unreachable"]:
        assert w in msg, msg


def test_flowcheck_invalid_flow_refused_on_reload_old_version_serves(start_server, tmp_path):
    f = tmp_path / "mini.lua"
    f.write_text(GOOD)
    srv = start_server(extra_yaml="pipelines:\n  - {name: mini, flow: \"%s\", match: [\"text/*\"]}\n"
                       % f)
    t = srv.create_tenant("reload")
    before = t.get("/v1/pipelines/mini").json()
    assert before["version"] == hashlib.sha256(GOOD.encode()).hexdigest()
    f.write_text(BAD)
    os.kill(srv.proc.pid, signal.SIGHUP)
    errors = None
    end = time.time() + 10
    while errors is None and time.time() < end:
        for line in srv.log().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "flow_reload_failed":
                errors = ev["error"].splitlines()
        time.sleep(0.1)
    assert errors is not None, "no flow_reload_failed in the log"
    assert len(errors) == 5, errors                    # every error, one per line
    assert errors[0].startswith("%s:1: require 'no_such_module'" % f), errors
    after = t.get("/v1/pipelines/mini").json()
    assert after == before                             # the old version keeps serving
