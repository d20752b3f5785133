"""A database answer lost after the statement ran (SL_FAULTS builds only).

The connection to Postgres can drop after a statement committed and before its
answer arrived: the engine cannot know what it did. These tests lose one
chosen answer on purpose (SL_FAULT_PG_LOSE, core/fault.h: the first claim
or group commit that returned rows) and check that the
engine does not let the runs involved wait out their lease (60 s here):

- a claim: it leased runs to this instance that no actor holds. The engine
  hands back its running runs that no live actor holds before its next claim
  (actors/scheduler.c, release_orphans), and claims them again at once.
- a transition's group commit: the actor ends and gives its lease back, and
  the run resumes from its last committed step.

They need a binary built with -DSL_FAULTS=ON: they run in the fault pass of
scripts/test (build-faults/) and skip elsewhere. The servers they start inject
no random fault (SL_FAULT_RATE=0): only the chosen one.
"""
import time
from pathlib import Path

import pytest

from sluice_harness import FAULTS

LEASE_S = 60  # what a stranded run would wait; the tests allow a fraction of it

FLOW = ('return flow { start = "one", steps = {\n'
        '  one = { run = function(ctx, file) ctx.n = 1 return true end, next = "two" },\n'
        '  two = { run = function(ctx, file) return true end } } }\n')

pytestmark = pytest.mark.skipif(not FAULTS, reason="needs a -DSL_FAULTS=ON binary "
                                "(scripts/test's fault pass: SL_FAULT_RATE set, build-faults/)")


def lossy_server(start_server, tmp_path, statement):
    flow = tmp_path / "two.lua"
    flow.write_text(FLOW)
    return start_server(
        env={"SL_FAULT_RATE": "0", "SL_FAULT_PG_LOSE": statement},
        extra_yaml=('pipelines:\n  - {name: two, flow: "%s", match: ["text/*"]}\n'
                    'engine: {lease_s: %d}\n' % (flow, LEASE_S)))


@pytest.mark.parametrize("statement", ["sluice_claim_runs", "sluice_run_transitions"])
def test_lost_answer_does_not_strand_the_run(start_server, tmp_path, statement):
    srv = lossy_server(start_server, tmp_path, statement)
    client = srv.create_tenant("lost")
    ds = client.create_dataset("lost")["id"]
    t0 = time.monotonic()
    r = client.upload(ds, [("a.txt", b"hello\n")])
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    doc = client.wait_file(fid, timeout=LEASE_S / 3)
    took = time.monotonic() - t0
    assert doc["status"] == "done", doc
    log = Path(srv.log_path).read_text()
    # the fault did happen: the test would pass vacuously otherwise
    assert '"pg_lose"' in log, "the chosen answer was never lost"
    if statement == "sluice_claim_runs":
        assert '"orphans":true' in log.replace(" ", ""), "no hand-back of the claim's runs"
    assert took < LEASE_S / 3, took
    # exactly one run, done once
    runs = client.get("/v1/files/%s" % fid).json()["runs"]
    assert [x["state"] for x in runs] == ["succeeded"], runs
