"""The web UI's Pipelines page in a real browser (tests/browser/pipelines.test.mjs).

Starts a server with the harness, makes a tenant, and runs the node script
(Debian's chromium driven by playwright-core, as test_browser.py does): the
page draws ai_record as an SVG graph with the API's nodes and edges, fallback
edges dashed; a text file's "show path" highlights tika and record, not ocr or
textract; a damaged PDF's failed path matches its timeline. Screenshots land in test-artifacts/ (pipelines.png,
pipelines-path.png, pipelines-30.png; pipelines-failure.png on failure).

Skipped only when /usr/bin/chromium or node is missing.
"""

import json
import os
import subprocess

import pytest

from test_browser import ARTIFACTS, BROWSER_DIR, CHROMIUM, _need_browser

SHOTS = ("pipelines.png", "pipelines-path.png", "pipelines-30.png", "pipelines-files.png",
         "pipelines-failed.png", "pipelines-failure.png")


@pytest.mark.timeout(300)
def test_pipelines_page_draws_graphs_and_a_files_path(start_server, samples):
    node = _need_browser()
    server = start_server()
    tenant = server.create_tenant("browser-pipelines")
    ARTIFACTS.mkdir(exist_ok=True)
    for old in SHOTS:
        (ARTIFACTS / old).unlink(missing_ok=True)
    env = {"SLUICE_URL": server.url, "SLUICE_API_KEY": tenant.key,
           "SLUICE_ARTIFACTS": str(ARTIFACTS), "CHROMIUM": CHROMIUM, "SLUICE_SAMPLES": str(samples)}
    r = subprocess.run([node, "pipelines.test.mjs"], cwd=str(BROWSER_DIR), env=dict(os.environ, **env),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=240)
    print(r.stdout)
    print(r.stderr[-4000:])
    assert r.returncode == 0, "pipelines.test.mjs failed (exit %d):\n%s\n%s" % (
        r.returncode, r.stdout[-6000:], r.stderr[-4000:])
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    assert result["offline"] == "ok"

    # What the page drew is what the API says.
    graph = tenant.get("/v1/pipelines/ai_record").json()["graph"]
    assert sorted(result["nodes"]) == sorted(n["id"] for n in graph["nodes"])
    assert result["edges"] == len(graph["edges"])
    assert result["taken"] == ["tika>record:next"]
    assert {k for k, v in result["highlighted"].items() if v["visited"]} == {"tika", "record"}
    # The damaged PDF failed, and the page showed a failed step.
    assert result["failed_file"]["run"] == "failed"
    assert "failed" in result["failed_file"]["got"].values()
    for shot in SHOTS[:5]:
        assert (ARTIFACTS / shot).stat().st_size > 5000, shot
