"""Black-box tests of the operational endpoints (API.md "Pipelines and ops"):
/healthz, /readyz (also while Postgres is down), /metrics, /v1/pipelines and
the static UI."""

import re
import socket
import time

import pytest
import requests


def assert_error(r, status, code=None):
    assert r.status_code == status, "%d %s" % (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body


def raw_get(port, target):
    """GET with the request target sent byte for byte (no client-side normalising)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), body


def test_healthz(server):
    r = requests.get(server.url + "/healthz", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"status": "ok"}


def test_readyz_ok(server):
    r = requests.get(server.url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"postgres": "ok", "redis": "ok", "engine": "ok"}


@pytest.mark.timeout(120)
def test_readyz_503_while_postgres_is_down(server, tenant, pg):
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    pg.stop()
    try:
        deadline = time.monotonic() + 15
        r = None
        while time.monotonic() < deadline:
            r = requests.get(server.url + "/readyz", timeout=10)
            if r.status_code == 503:
                break
            time.sleep(0.2)
        assert r is not None and r.status_code == 503, r.text if r is not None else None
        assert r.json()["postgres"] == "down"
        assert r.json()["redis"] in ("ok", "down")
        assert int(r.headers["Retry-After"]) > 0
        # /healthz does not depend on Postgres; /v1 calls answer 503 with Retry-After.
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        r = tenant.get("/v1/datasets")
        assert_error(r, 503)
        assert int(r.headers["Retry-After"]) > 0
    finally:
        pg.start()
    deadline = time.monotonic() + 15
    r = None
    while time.monotonic() < deadline:
        r = requests.get(server.url + "/readyz", timeout=10)
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.json()["postgres"] == "ok"
    # and the API works again
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = tenant.get("/v1/datasets")
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text


def metric_samples(text, name):
    """{labels-string: value} of every sample of `name` in Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})?\s+(\S+)$" % re.escape(name), line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def test_metrics_format_and_request_counter(server, tenant):
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    assert "# HELP sluice_http_requests_total " in text
    assert "# TYPE sluice_http_requests_total counter" in text
    assert "# TYPE sluice_http_request_duration_seconds histogram" in text
    # Every non-comment line is "name{labels} value".
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                            r'[-+0-9.eEInfa]+$', line), line
    before = metric_samples(text, "sluice_http_requests_total")
    for _ in range(5):
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    for _ in range(3):
        assert tenant.get("/v1/datasets").status_code == 200
    after = metric_samples(requests.get(server.url + "/metrics", timeout=10).text,
                           "sluice_http_requests_total")
    assert sum(after.values()) >= sum(before.values()) + 8

    def count(samples, route):
        return sum(v for k, v in samples.items() if 'route="%s"' % route in k and 'status="200"' in k)

    assert count(after, "healthz") >= count(before, "healthz") + 5
    assert count(after, "datasets_list") >= count(before, "datasets_list") + 3



def test_event_loop_lag_metrics(server):
    """Each process measures its loop's lag (core/looplag.h): the HTTP process's
    series and the engine's (role="engine") count the probe's wake-ups, which
    keep coming, and the worst lag is a gauge. Nothing is asserted about how
    large the lag is: a timed figure, for bench/ (its loop_lag lines)."""
    import sluice_harness as h
    first = h.loop_lag(server)
    assert set(first) == ({"http", "engine"} if server.engine_pid() else {"http"}), first
    deadline = time.time() + 10
    while time.time() < deadline:
        time.sleep(0.5)
        second = h.loop_lag(server)
        if all(second[r]["count"] >= first[r]["count"] + 5 for r in first):
            break
    for role in first:
        assert second[role]["count"] >= first[role]["count"] + 5, (role, first, second)
        assert second[role]["max"] is not None and second[role]["max"] >= 0, second  # the gauge
        # the buckets are cumulative: fewer wake-ups over 50 ms than over 10 ms
        assert second[role]["over"][0.05] <= second[role]["over"][0.01] <= second[role]["count"]
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert "# TYPE sluice_event_loop_lag_seconds histogram" in text
    assert "# TYPE sluice_event_loop_lag_max_seconds gauge" in text

def test_pipelines(server, tenant):
    assert_error(requests.get(server.url + "/v1/pipelines", timeout=10), 401, "unauthorized")
    r = tenant.get("/v1/pipelines")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    # Office types (runlife, issue 13): docs/flows.md "Office documents"
    office = ["application/vnd.openxmlformats-officedocument.wordprocessingml.document",
              "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
              "application/vnd.openxmlformats-officedocument.presentationml.presentation",
              "application/vnd.oasis.opendocument.text",
              "application/vnd.oasis.opendocument.spreadsheet",
              "application/vnd.oasis.opendocument.presentation"]
    # name, match and steps; version, source and graph: test_flowcheck.py (issue 14)
    got = [{k: p[k] for k in ("name", "match", "steps")} for p in r.json()["pipelines"]]
    assert got == [
        {"name": "ai_record", "match": ["application/pdf", "image/*", "text/*"] + office,
         "steps": ["tika", "ocr", "textract", "record"]},
        {"name": "file_view", "match": ["application/pdf", "image/*"] + office,
         "steps": ["preview", "thumbnail"]},
    ]
    assert all(set(p) == {"name", "match", "steps", "version", "source", "revision", "graph"}
               for p in r.json()["pipelines"])


def test_pipelines_from_config(start_server):
    srv = start_server(extra_yaml=(
        "pipelines:\n"
        "  - {name: ai_record, flow: lua-flows/ai_record.lua, match: [\"application/pdf\"]}\n"))
    t = srv.create_tenant("p")
    r = t.get("/v1/pipelines")
    assert r.status_code == 200, r.text
    ps = r.json()["pipelines"]
    assert [p["name"] for p in ps] == ["ai_record"]
    assert ps[0]["match"] == ["application/pdf"]
    assert ps[0]["steps"] == ["tika", "ocr", "textract", "record"]


def test_ui_index(server):
    for path in ("/", "/index.html"):
        r = requests.get(server.url + path, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<title>Sluice</title>" in r.text
        assert 'src="/ui/app.js"' in r.text
    js = requests.get(server.url + "/ui/app.js", timeout=10)
    assert js.status_code == 200
    assert "javascript" in js.headers["Content-Type"]
    assert "/v1/datasets" in js.text and "EventSource" in js.text


@pytest.mark.parametrize("target", [
    b"/ui/..%2f..%2fetc%2fpasswd", b"/ui/../main.c", b"/ui/%2e%2e/CMakeLists.txt",
    b"/ui/..", b"/ui/a\\b.html", b"/ui/.hidden.html", b"/ui/missing.js", b"/ui/index.html%00.js",
    b"/ui/..%5cmain.c", b"/ui/x/../../main.c",
])
def test_ui_rejects_bad_or_missing_paths(server, target):
    status, head, body = raw_get(server.port, target)
    assert status in (400, 404), (status, head)
    assert b"int main" not in body and b"cmake_minimum_required" not in body and b"root:" not in body
    if status == 404:
        assert b'"error"' in body


def test_ui_serves_files_under_web_root(start_server, tmp_path):
    root = tmp_path / "webroot"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<title>Sluice</title>custom")
    (root / "app.css").write_text("body{}")
    (root / "js" / "app.js").write_text("console.log(1)")
    (root / "data.bin").write_bytes(b"\0\1")
    srv = start_server(extra_yaml='web_root: "%s"' % root)
    r = requests.get(srv.url + "/", timeout=10)
    assert r.status_code == 200 and r.text.endswith("custom")
    r = requests.get(srv.url + "/ui/app.css", timeout=10)
    assert r.status_code == 200 and r.text == "body{}"
    assert r.headers["Content-Type"] == "text/css; charset=utf-8"
    r = requests.get(srv.url + "/ui/js/app.js", timeout=10)
    assert r.status_code == 200 and r.text == "console.log(1)"
    assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert_error(requests.get(srv.url + "/ui/data.bin", timeout=10), 404)  # unknown type
    assert_error(requests.get(srv.url + "/ui/js", timeout=10), 404)        # a directory
