"""Fair scheduling: one tenant's big batch does not hold up another tenant.

Tenant A uploads 2,000 images against an OCR stand-in that takes 50 ms per
call (the real ai_record flow: text layer -> ocr -> record, the real
scheduler, actors and service caps). Then tenant B uploads one image. From
the timelines: B's run must succeed before A's runs have succeeded 50 more
times after B's upload. With first-come-first-served claiming, B's run would
wait behind the whole batch (about 2,000 of A's).
"""
import time
import urllib.parse

import pytest

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")

CONFIG = (
    'services:\n'
    '  ocr: {command: ["/bin/sh", "-c", "sleep 0.05; echo text {input}"], concurrency: 8, '
    'timeout_ms: 60000}\n'
    'pipelines:\n'
    '  - {name: ai_record, flow: lua-flows/ai_record.lua, match: ["image/png"]}\n'
    'limits: {max_files_per_request: 2000, max_runs_per_tenant: 8}\n')


def dbname(url):
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.lstrip("/"))


def succeeded_between(pg, db, tenant_id, t0, t1):
    """A's runs whose timeline says `succeeded` in (t0, t1] (timestamps from the events)."""
    out = pg.psql(
        "SELECT count(*) FROM run_events WHERE tenant_id = '%s' AND kind = 'succeeded' "
        "AND at > '%s'::timestamptz AND at <= '%s'::timestamptz" % (tenant_id, t0, t1),
        dbname=db)
    return int(out.strip())


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_single_file_is_not_stuck_behind_a_big_batch(start_server, pg):
    srv = start_server(extra_yaml=CONFIG)
    a = srv.create_tenant("big")
    b = srv.create_tenant("small")
    ds_a = a.create_dataset("a")["id"]
    ds_b = b.create_dataset("b")["id"]

    r = a.upload(ds_a, [("a%04d.png" % i, PNG, "image/png") for i in range(2000)], timeout=120)
    assert r.status_code == 202, r.text[:500]
    assert len(r.json()["files"]) == 2000

    r = b.upload(ds_b, ("b.png", PNG, "image/png"))
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    doc = b.wait_file(fid, timeout=60, interval=0.05)
    assert doc["status"] == "done", doc
    assert doc["text_source"] == "ocr", doc

    events = b.get("/v1/files/%s/events" % fid).json()["events"]
    queued = [e["at"] for e in events if e["kind"] == "queued"]
    done = [e["at"] for e in events if e["kind"] == "succeeded"]
    assert len(queued) == 1 and len(done) == 1, events

    db = dbname(srv.database_url)
    a_before = succeeded_between(pg, db, a.tenant_id, "-infinity", queued[0])
    a_during = succeeded_between(pg, db, a.tenant_id, queued[0], done[0])
    # A still had most of its batch to go (else the test says nothing) ...
    assert a_before + a_during < 1500, (a_before, a_during)
    # ... and B's file was not made to wait for it
    assert a_during < 50, (a_before, a_during)
