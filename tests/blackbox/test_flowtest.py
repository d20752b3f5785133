"""`sluice flow test` (issue 14): a flow run offline, without Postgres, Redis
or a server, against recorded service answers (docs/flows.md "Testing a flow
offline").

Every test runs the binary alone, with an empty environment (no database URL,
no Redis), and where the machine allows it in a network namespace of its own
with no interface but a loopback that is down (`unshare`), so a case that reached for the
network or a database would fail here.
"""
import json
import os
import shutil
import subprocess

import pytest

from sluice_harness import REPO, sluice_binary

FLOW = REPO / "lua-flows" / "ai_record.lua"
NOTES = REPO / "lua-flows" / "tests" / "ai_record_text" / "notes.txt"


def _no_net_prefix():
    """A network namespace of our own, when this machine lets us make one: as
    root `unshare -n` (still root: sl.exec drops to exec.user as in
    production), else `unshare -Un` (a user namespace, as an unmapped user)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    cmd = [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-Un"]
    probe = subprocess.run([*cmd, "true"], capture_output=True)
    return cmd if probe.returncode == 0 else []


NO_NET = _no_net_prefix()


def flow_test(*args, cwd=REPO):
    return subprocess.run([*NO_NET, str(sluice_binary()), "flow", "test", *map(str, args)],
                          cwd=str(cwd), env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=300)


def write_case(d, case, files=None):
    d.mkdir(parents=True)
    (d / "case.json").write_text(json.dumps(case, indent=2))
    for name, text in (files or {}).items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_flowtest_shipped_cases_pass_offline():
    r = flow_test("--cases", "lua-flows/tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout
    for name in ("ai_record_text", "ai_record_pdf", "ai_record_tika_down", "ai_record_openai",
                 "file_view_image"):
        assert f"PASS {name}" in r.stdout


def test_flowtest_runs_without_network():
    if not NO_NET:
        pytest.skip("cannot make a network namespace here (unshare)")
    r = subprocess.run([*NO_NET, "sh", "-c", "cat /proc/net/dev | wc -l"], capture_output=True,
                       text=True)
    # header (2 lines) + lo only: no way out
    assert int(r.stdout.strip()) <= 3
    r = subprocess.run([*NO_NET, "sh", "-c", "cat /sys/class/net/lo/operstate"],
                       capture_output=True, text=True)
    assert r.stdout.strip() in ("down", "unknown") and "up" != r.stdout.strip()


def test_flowtest_wrong_expectation_fails_with_a_diff(tmp_path):
    write_case(tmp_path / "cases" / "wrong", {
        "flow": str(FLOW),
        "file": str(NOTES),
        "expect": {
            "outcome": "failed",
            "path": ["tika:ok", "ocr:ok"],
            "record": {"title": "Not the title"},
            "artifacts": ["text", "preview"],
        },
    })
    r = flow_test("--cases", tmp_path / "cases")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "FAIL wrong: 4 differences" in out
    assert 'outcome:\n      expected "failed"\n      got      "succeeded"' in out
    assert 'expected ["tika:ok","ocr:ok"]' in out and 'got      ["tika:ok","record:ok"]' in out
    assert 'record.title:\n      expected "Not the title"' in out
    assert "artifacts (kinds)" in out
    assert "1 case, 0 passed, 1 failed" in out


def test_flowtest_one_bad_case_among_good_ones_fails_the_run(tmp_path):
    cases = tmp_path / "cases"
    good = {"flow": str(FLOW), "file": str(NOTES),
            "expect": {"outcome": "succeeded", "path": ["tika:ok", "record:ok"]}}
    write_case(cases / "a_good", good)
    write_case(cases / "b_bad", dict(good, expect={"outcome": "succeeded", "error": "timeout"}))
    r = flow_test("--cases", cases)
    assert r.returncode == 1
    assert "PASS a_good" in r.stdout and "FAIL b_bad" in r.stdout


def test_flowtest_unrecorded_request_fails_the_step_clearly(tmp_path):
    (tmp_path / "cassettes").mkdir()
    cfg = tmp_path / "sluice.yaml"
    cfg.write_text("database_url: postgres://offline.invalid/x\n"
                   "services:\n  openai: {api_key: sk-test, model: gpt-4o-mini}\n")
    r = flow_test(FLOW, "--file", NOTES, "--replay", tmp_path / "cassettes", "--config", cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "record       attempt 1  not_recorded" in r.stdout
    assert "no recorded answer for POST openai /v1/chat/completions" in r.stdout
    assert "outcome: failed (not_recorded)" in r.stdout


def test_flowtest_unrecorded_exec_fails_clearly(tmp_path):
    (tmp_path / "cassettes").mkdir()
    r = flow_test(FLOW, "--file", NOTES, "--replay", tmp_path / "cassettes", "--replay-exec",
                  "--json")
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert rep["outcome"] == "failed" and rep["error"] == "not_recorded"
    assert rep["path"][0]["outcome"] == "not_recorded"
    # the input file stands as its sha256, not as its path
    assert rep["unrecorded"][0].startswith('no recorded answer for exec ["cat","{sha256:')


def test_flowtest_record_then_replay(tmp_path):
    """--record writes what the live run did; --replay --replay-exec answers from it alone."""
    rec = tmp_path / "rec"
    r = flow_test(FLOW, "--file", NOTES, "--record", rec, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    live = json.loads(r.stdout)
    files = sorted(p.name for p in rec.iterdir())
    assert files and files[0].startswith("01-exec-cat"), files
    doc = json.loads((rec / files[0]).read_text())
    assert doc["kind"] == "exec" and doc["request"]["argv"][0] == "cat"
    assert doc["response"]["stdout"] == NOTES.read_text()

    r = flow_test(FLOW, "--file", NOTES, "--replay", rec, "--replay-exec", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    replayed = json.loads(r.stdout)
    assert replayed["record"] == live["record"]
    assert [a["sha256"] for a in replayed["artifacts"]] == [a["sha256"] for a in live["artifacts"]]
    assert replayed["calls"] and replayed["calls"][0].endswith("<- " + files[0])


def test_flowtest_malformed_cassette_is_refused(tmp_path):
    cas = tmp_path / "cassettes"
    cas.mkdir()
    (cas / "01-bad.json").write_text('{"kind": "http", "request": {}}')
    r = flow_test(FLOW, "--file", NOTES, "--replay", cas)
    assert r.returncode == 1
    assert "01-bad.json: a cassette needs kind (http|exec), request and response" in r.stderr


def test_flowtest_records_http_from_a_live_service_then_replays_it(tmp_path):
    """--record against a live Tika (a stand-in on loopback) writes its answer as a
    cassette; --replay then answers from it with no service at all."""
    import http.server
    import threading

    seen = []

    class Tika(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, body))
            out = b"Text from the stand-in Tika\nReference TK-4242\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Tika)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = tmp_path / "sluice.yaml"
        cfg.write_text("database_url: postgres://offline.invalid/x\n"
                       f"services:\n  tika: {{url: 'http://127.0.0.1:{srv.server_port}'}}\n")
        rec = tmp_path / "rec"
        # live: no network namespace here (the stand-in is on loopback)
        r = subprocess.run([str(sluice_binary()), "flow", "test", str(FLOW), "--file", str(NOTES),
                            "--config", str(cfg), "--record", str(rec), "--json"], cwd=str(REPO),
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                           timeout=120)
    finally:
        srv.shutdown()
    assert r.returncode == 0, r.stdout + r.stderr
    assert seen and seen[0][0] == "/tika" and seen[0][1] == NOTES.read_bytes()
    live = json.loads(r.stdout)
    assert live["text_source"] == "tika"
    doc = json.loads((rec / "01-tika.json").read_text())
    assert doc["request"]["method"] == "PUT" and doc["request"]["service"] == "tika"
    assert doc["request"]["path"] == "/tika"
    assert doc["response"]["status"] == 200 and "TK-4242" in doc["response"]["body"]

    # replay: the stand-in is gone, and the network too
    r = flow_test(FLOW, "--file", NOTES, "--config", cfg, "--replay", rec, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["record"] == live["record"] and rep["record"].get("reference") == "TK-4242"
    assert rep["calls"] == ["PUT tika /tika <- 01-tika.json"]


def test_flowtest_case_in_yaml(tmp_path):
    d = tmp_path / "cases" / "yaml_case"
    d.mkdir(parents=True)
    (d / "case.yaml").write_text(f"""# the same case as ai_record_pdf, in YAML
flow: {REPO / 'lua-flows' / 'ai_record.lua'}
file: {REPO / 'lua-flows' / 'tests' / 'ai_record_pdf' / 'invoice-acme.pdf'}
expect:
  outcome: succeeded
  path: ["tika:ok", "record:ok"]
  record: {{reference: INV-2026-0042, total: 185.52, currency: EUR}}
""")
    r = flow_test("--cases", tmp_path / "cases", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS yaml_case" in r.stdout
    # and a wrong value in YAML is caught like one in JSON
    (d / "case.yaml").write_text((d / "case.yaml").read_text().replace("185.52", "185.53"))
    r = flow_test("--cases", tmp_path / "cases", cwd=tmp_path)
    assert r.returncode == 1
    assert "record.total:\n      expected 185.53\n      got      185.52" in r.stdout
