"""The web UI in a real browser (tests/browser/ui.test.mjs).

Starts a server with the harness, makes a tenant, and runs the node script:
Debian's chromium (/usr/bin/chromium, never a downloaded browser) driven by
playwright-core, which this test installs from the npm registry into
tests/browser/node_modules when it is missing. The script uploads the sample
files through the page and waits for every row to reach done/failed without a
reload; screenshots land in test-artifacts/ (ui.png, ui-timeline.png).
Every scenario checks the browser's network log: the API key is in no URL
and is sent only to POST /v1/auth/token; the page runs on tokens (the event
stream's URL carries a JWT), and keeps the key in no storage.

Skipped only when /usr/bin/chromium or node is missing (scripts/install-deps
installs both).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sluice_harness import REPO, free_port

BROWSER_DIR = REPO / "tests" / "browser"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _ensure_playwright():
    if (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        return
    npm = shutil.which("npm")
    assert npm, "npm is missing (scripts/install-deps installs it) and playwright-core is not installed"
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"],
                       cwd=str(BROWSER_DIR), env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode == 0, "npm install failed:\n" + r.stdout


def _need_browser():
    node = shutil.which("node")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("no chromium at %s (scripts/install-deps installs it)" % CHROMIUM)
    if not node:
        pytest.skip("node is not installed (scripts/install-deps installs it)")
    _ensure_playwright()
    return node


def _run_ui(node, server, tenant, samples, scenario, shots, navigations=1):
    ARTIFACTS.mkdir(exist_ok=True)
    for old in shots:
        (ARTIFACTS / old).unlink(missing_ok=True)
    env = dict(os.environ, SLUICE_URL=server.url, SLUICE_API_KEY=tenant.key,
               SLUICE_SAMPLES=str(samples), SLUICE_ARTIFACTS=str(ARTIFACTS), CHROMIUM=CHROMIUM,
               SLUICE_UI_SCENARIO=scenario)
    r = subprocess.run([node, "ui.test.mjs"], cwd=str(BROWSER_DIR), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=400)
    print(r.stdout)
    print(r.stderr[-4000:])
    assert r.returncode == 0, "ui.test.mjs (%s) failed (exit %d):\n%s\n%s" % (
        scenario, r.returncode, r.stdout[-6000:], r.stderr[-4000:])
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    assert result["navigations"] == navigations
    assert result["requests_checked"] > 0 and result["stream_urls_checked"] >= 1
    assert "sessionStorage:sluice.refresh" in result["storage_checked"] or scenario == "tokens"
    return result


@pytest.mark.timeout(420)
def test_ui_uploads_samples_and_rows_go_live(start_server, samples):
    node = _need_browser()
    server = start_server()
    tenant = server.create_tenant("browser")
    result = _run_ui(node, server, tenant, samples, "samples",
                     ("ui.png", "ui-timeline.png", "ui-failure.png"))

    n = len([p for p in samples.iterdir() if p.is_file()])
    assert result["files"] == n
    assert len(result["rows"]) == n
    assert set(result["rows"].values()) <= {"done", "failed"}
    assert result["thumbnails_loaded"] >= 1
    assert result["live_mode"] == "on"
    assert (ARTIFACTS / "ui.png").stat().st_size > 10000

    # The page's view is the API's: every file listed, each in its final state.
    ds = tenant.get("/v1/datasets").json()["datasets"]
    assert len(ds) == 1
    files = tenant.get("/v1/datasets/%s/files?limit=1000" % ds[0]["id"]).json()["files"]
    assert sorted(f["name"] for f in files) == sorted(result["rows"])
    assert {f["name"]: f["status"] for f in files} == result["rows"]


@pytest.mark.timeout(300)
def test_ui_shows_a_run_waiting_for_a_service(start_server, samples):
    node = _need_browser()
    # Tika is configured but unreachable (a transient failure), OCR and
    # Textract are not configured: ai_record ends its chain waiting.
    dead = free_port()
    server = start_server(extra_yaml='services:\n  tika: {url: "http://127.0.0.1:%d"}\n' % dead)
    tenant = server.create_tenant("browser-waiting")
    result = _run_ui(node, server, tenant, samples, "waiting",
                     ("ui-waiting.png", "ui-waiting-failure.png"))
    assert result["ok_waiting"] is True
    assert "waiting for" in result["waiting_badge"]

    ds = tenant.get("/v1/datasets").json()["datasets"][0]
    f = tenant.get("/v1/datasets/%s/files" % ds["id"]).json()["files"][0]
    run = next(r for r in f["runs"] if r["pipeline"] == "ai_record")
    # It cycles waiting -> running (retry) -> waiting with backoff; the
    # timeline has the reason the page showed.
    assert run["state"] in ("waiting", "running")
    evs = tenant.get("/v1/files/%s/events" % f["id"]).json()["events"]
    reasons = {e["detail"].get("reason") for e in evs if e["kind"] == "waiting"}
    assert any(r and r in result["waiting_badge"] for r in reasons), (reasons, result)


@pytest.mark.timeout(300)
def test_ui_runs_on_tokens_and_never_puts_the_key_in_a_url(start_server, samples):
    node = _need_browser()
    # Access tokens live 3 s: the page renews them in the background (at 80%)
    # several times while the scenario runs.
    server = start_server(extra_yaml="auth: {access_ttl_s: 3}\n")
    tenant = server.create_tenant("browser-tokens")
    result = _run_ui(node, server, tenant, samples, "tokens", ("ui-tokens-failure.png",),
                     navigations=2)
    assert result["refreshes"] >= 2, result
    assert len(result["streams"]) >= 3, result
    assert any(s["resumed_from"] for s in result["streams"]), result
    assert result["reload_signed_in"] is True
    assert result["signed_out"] is True
    # The key itself still works for the API (`sluice upload` stays on keys).
    assert tenant.get("/v1/datasets").status_code == 200
