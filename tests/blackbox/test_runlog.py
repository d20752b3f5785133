"""Lifecycle logs (issue 13): one JSON line per run transition that matters,
written by the engine once the transition committed, read here from the
server's log (stdout+stderr of every process, sluice_harness.Server.log).

One flow drives every transition by the uploaded file's name:
  ok.txt    first succeeds                       -> run.succeeded
  fail.txt  first: server_error (retried), then bad_input -> fallback to
            second, which fails with no_text     -> run.retry, run.fallback,
                                                    run.failed
  wait.txt  first: unavailable twice (retried), fallback to second (no_text):
            the chain had a transient failure    -> run.waiting; claimed
            again after 1 s, resumed at first    -> run.resumed, run.succeeded
"""
import json
import time

import pytest

from sluice_harness import ServerStartError

FLOW = '''
return flow {
  start = "first",
  steps = {
    first = {
      run = function(ctx, file)
        ctx.n = (ctx.n or 0) + 1
        if file.name == "ok.txt" then
          return true
        elseif file.name == "wait.txt" then
          if ctx.n <= 2 then return nil, "unavailable", "service down" end
          return true
        end
        if ctx.n == 1 then return nil, "server_error", "HTTP 503" end
        return nil, "bad_input", "damaged input"
      end,
      retry = {attempts = 2, base = 0.05, max = 0.1},
      fallback = "second",
    },
    second = {
      run = function(ctx, file) return nil, "no_text", "nothing here" end,
    },
  },
}
'''

FIELDS = ("ts", "level", "event", "role", "run_id", "file_id", "tenant_id", "pipeline", "step",
          "error", "attempt")


def start(start_server, tmp_path, level=None):
    p = tmp_path / "life.lua"
    p.write_text(FLOW)
    extra = f'pipelines:\n  - {{name: life, flow: "{p}", match: ["text/*"]}}\n'
    if level:
        extra += f"log: {{level: {level}}}\n"
    return start_server(extra_yaml=extra)


def run_lines(srv):
    out = []
    for line in srv.log().splitlines():
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if str(d.get("event", "")).startswith("run."):
            out.append(d)
    return out


def wait_lines(srv, pred, n=1, timeout=30):
    end = time.time() + timeout
    got = []
    while time.time() < end:
        got = [d for d in run_lines(srv) if pred(d)]
        if len(got) >= n:
            return got
        time.sleep(0.1)
    raise AssertionError("log lines not found; run lines: %s" % json.dumps(run_lines(srv))[:4000])


def upload(client, ds, name):
    r = client.upload(ds, [(name, b"some text\n", "text/plain")])
    assert r.status_code == 202, r.text
    return r.json()["files"][0]["id"]


def of(lines, fid):
    return [d for d in lines if d.get("file_id") == fid]


def test_lifecycle_lines_for_success_retry_fallback_failure_wait_resume(start_server, tmp_path):
    srv = start(start_server, tmp_path)
    t = srv.create_tenant("life")
    ds = t.create_dataset()["id"]
    ok, fail, wait = (upload(t, ds, n) for n in ("ok.txt", "fail.txt", "wait.txt"))
    for fid in (ok, fail, wait):
        t.wait_file(fid, timeout=60)
    docs = {fid: t.get(f"/v1/files/{fid}").json() for fid in (ok, fail, wait)}

    # ok.txt: one line, run.succeeded, with every field and the step's duration
    lines = wait_lines(srv, lambda d: d.get("file_id") == ok and d["event"] == "run.succeeded")
    assert [d["event"] for d in of(run_lines(srv), ok)] == ["run.succeeded"]
    d = lines[0]
    for k in FIELDS:
        assert k in d, (k, d)
    run = docs[ok]["runs"][0]
    assert d["run_id"] == run["id"] and d["tenant_id"] == t.tenant_id
    assert d["pipeline"] == "life" and d["step"] == "first" and d["error"] is None
    assert d["level"] == "info" and d["role"] in ("engine", "inline")
    assert d["attempt"] == 1 and isinstance(d["duration_ms"], int) and d["duration_ms"] >= 0

    # fail.txt: retried, fell back, failed: in that order, with the errors
    wait_lines(srv, lambda d: d.get("file_id") == fail and d["event"] == "run.failed")
    evs = of(run_lines(srv), fail)
    assert [d["event"] for d in evs] == ["run.retry", "run.fallback", "run.failed"], evs
    retry, fb, failed = evs
    assert retry["level"] == "warn" and retry["error"] == "server_error"
    assert retry["step"] == "first" and retry["attempt"] == 2 and retry["detail"] == "HTTP 503"
    assert retry["delay_ms"] >= 0 and retry["duration_ms"] >= 0
    assert fb["error"] == "bad_input" and fb["to"] == "second" and fb["via"] == "fallback"
    assert fb["level"] == "info"  # a permanent failure's fallback is the flow's normal path
    assert failed["level"] == "error" and failed["step"] == "second"
    assert failed["error"] == "no_text" and failed["detail"] == "nothing here"
    assert docs[fail]["runs"][0]["state"] == "failed"
    assert all(d["run_id"] == docs[fail]["runs"][0]["id"] for d in evs)

    # wait.txt: waiting, then resumed by a later claim, then succeeded
    wait_lines(srv, lambda d: d.get("file_id") == wait and d["event"] == "run.succeeded")
    evs = [d["event"] for d in of(run_lines(srv), wait)]
    assert evs == ["run.retry", "run.fallback", "run.waiting", "run.resumed", "run.succeeded"], evs
    w = [d for d in of(run_lines(srv), wait) if d["event"] == "run.waiting"][0]
    assert w["level"] == "warn" and w["error"] == "no_text" and w["to"] == "first"
    assert w["wait_ms"] >= 1000
    fb = [d for d in of(run_lines(srv), wait) if d["event"] == "run.fallback"][0]
    assert fb["level"] == "warn" and fb["error"] == "unavailable"  # after a transient failure
    r = [d for d in of(run_lines(srv), wait) if d["event"] == "run.resumed"][0]
    assert r["from"] == "waiting" and r["step"] == "first" and "duration_ms" not in r


def test_level_warn_hides_info_lines(start_server, tmp_path):
    srv = start(start_server, tmp_path, level="warn")
    t = srv.create_tenant("quiet")
    ds = t.create_dataset()["id"]
    ok, fail = upload(t, ds, "ok.txt"), upload(t, ds, "fail.txt")
    t.wait_file(ok, timeout=60)
    t.wait_file(fail, timeout=60)
    wait_lines(srv, lambda d: d.get("file_id") == fail and d["event"] == "run.failed")
    assert [d["event"] for d in of(run_lines(srv), fail)] == ["run.retry", "run.failed"]
    assert of(run_lines(srv), ok) == []
    levels = set()
    for line in srv.log().splitlines():
        try:
            levels.add(json.loads(line).get("level"))
        except ValueError:
            continue
    assert not levels & {"debug", "info"}, levels


def test_invalid_level_is_refused_at_start(start_server, tmp_path):
    with pytest.raises(ServerStartError) as e:
        start(start_server, tmp_path, level="loud")
    assert "log.level: must be debug, info, warn or error" in str(e.value)


def test_shipped_flow_with_tika_failing_logs_retries_and_the_fallback(start_server, standins,
                                                                      samples):
    """The real ai_record flow, with the Tika stand-in answering 503 to every
    attempt of its step: two retries, a fallback to ocr after a transient
    failure (warn), then the run succeeds."""
    from test_pipelines import services_yaml
    tika = standins("tika")
    tika.control(mode="fail", count=3)
    srv = start_server(extra_yaml=services_yaml(tika=tika))
    t = srv.create_tenant("tika-fails")
    ds = t.create_dataset()["id"]
    r = t.upload(ds, [samples / "invoice-acme.pdf"])
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    t.wait_file(fid, timeout=120)
    wait_lines(srv, lambda d: d.get("file_id") == fid and d["pipeline"] == "ai_record"
               and d["event"] in ("run.succeeded", "run.failed"))
    evs = [d for d in of(run_lines(srv), fid) if d["pipeline"] == "ai_record"]
    kinds = [d["event"] for d in evs]
    assert kinds[-1] == "run.succeeded" and "run.fallback" in kinds, kinds
    retries = [d for d in evs if d["event"] == "run.retry"]
    # (under the fault-injection pass a call may also fail "unavailable")
    assert len(retries) >= 2 and {d["error"] for d in retries} <= {"server_error", "unavailable"}
    assert all(d["step"] == "tika" and d["level"] == "warn" for d in retries), retries
    assert [d["attempt"] for d in retries][:2] == [2, 3], retries
    fb = [d for d in evs if d["event"] == "run.fallback"][0]
    assert fb["step"] == "tika" and fb["to"] == "ocr" and fb["level"] == "warn", fb
