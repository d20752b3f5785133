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


def nap_server(start_server, tmp_path, seconds, limits):
    """A server whose one pipeline (text files) sleeps `seconds` in its one step."""
    flow = tmp_path / "nap.lua"
    flow.write_text('return flow { start = "nap", steps = {\n'
                    '  nap = { run = function(ctx, file) sl.sleep(%s) return true end } } }\n'
                    % seconds)
    return start_server(extra_yaml=(
        'pipelines:\n  - {name: nap, flow: "%s", match: ["text/*"]}\n'
        'limits: {%s}\n' % (flow, limits)))


@pytest.mark.timeout(170)
def test_lone_tenant_fills_the_engine_and_a_newcomer_starts_first(start_server, pg, tmp_path):
    """Work-conserving shares (issue 10): with no per-tenant ceiling, tenant A
    alone holds more than the old cap of 16 runs (up to max_runs_in_flight,
    40 here); when B's single file arrives while A has over a hundred queued,
    B's run is claimed before A's next ones: at most the claims already under
    way go first, never A's queue (FIFO would start 40 or more of A's first)."""
    srv = nap_server(start_server, tmp_path, 1.5,
                     "max_runs_in_flight: 40, max_files_per_request: 1000")
    a = srv.create_tenant("busy")
    b = srv.create_tenant("newcomer")
    ds_a = a.create_dataset("a")["id"]
    ds_b = b.create_dataset("b")["id"]
    db = dbname(srv.database_url)

    def running(tenant_id):
        return int(pg.psql("SELECT count(*) FROM runs WHERE tenant_id = '%s' AND state = 'running'"
                           % tenant_id, dbname=db).strip())

    files = [("a%03d.txt" % i, b"file %d of the busy tenant\n" % i, "text/plain")
             for i in range(200)]
    r = a.upload(ds_a, files, timeout=120)
    assert r.status_code == 202, r.text[:500]
    peak, deadline = 0, time.monotonic() + 60
    while peak < 30 and time.monotonic() < deadline:
        peak = max(peak, running(a.tenant_id))
        time.sleep(0.05)
    assert peak > 16, peak  # the old fixed cap

    r = b.upload(ds_b, ("b.txt", b"the newcomer's file\n", "text/plain"))
    assert r.status_code == 202, r.text
    doc = b.wait_file(r.json()["files"][0]["id"], timeout=60, interval=0.1)
    assert doc["status"] == "done", doc

    row = pg.psql("SELECT created_at, started_at FROM runs WHERE tenant_id = '%s'"
                  % b.tenant_id, dbname=db).strip().split("|")
    assert len(row) == 2, row  # one run
    queued_at, started_at = row
    out = pg.psql(
        "SELECT count(*) FILTER (WHERE started_at > '{q}' AND started_at < '{s}'), "
        "count(*) FILTER (WHERE started_at IS NULL OR started_at > '{s}') "
        "FROM runs WHERE tenant_id = '{t}'".format(q=queued_at, s=started_at, t=a.tenant_id),
        dbname=db).strip().split("|")
    a_ahead, a_after = int(out[0]), int(out[1])
    print("peak %d in flight; A's runs started between B's queued and started: %d; after: %d"
          % (peak, a_ahead, a_after))
    assert a_after >= 80, (a_ahead, a_after)  # A still had most of its queue to go ...
    assert a_ahead < 40, (a_ahead, a_after)   # ... and B did not wait behind it


@pytest.mark.timeout(120)
def test_admission_claims_only_runs_that_can_work(start_server, pg):
    """Admission (limits.max_runs_active): runs waiting for a service's slot
    have work to do and count; the claim stops at 4 of them, plus the one
    parked on the OCR call in flight (and, for a moment, one parked on
    another operation: its local text step's command). Without it the engine
    claims all of A's
    20 runs into the OCR queue in memory, where the claim's order no longer
    acts. A newcomer's file still goes through at once, while A's runs wait
    in Postgres."""
    srv = start_server(extra_yaml=(
        'services:\n'
        '  ocr: {command: ["/bin/sh", "-c", "sleep 0.3; echo text {input}"], concurrency: 1, '
        'timeout_ms: 60000}\n'
        'pipelines:\n'
        '  - {name: ai_record, flow: lua-flows/ai_record.lua, match: ["image/png"]}\n'
        'limits: {max_runs_active: 4}\n'))
    a = srv.create_tenant("busy")
    b = srv.create_tenant("newcomer")
    ds_a = a.create_dataset("a")["id"]
    ds_b = b.create_dataset("b")["id"]
    db = dbname(srv.database_url)

    def count(tenant_id, state):
        return int(pg.psql("SELECT count(*) FROM runs WHERE tenant_id = '%s' AND state = '%s'"
                           % (tenant_id, state), dbname=db).strip())

    r = a.upload(ds_a, [("a%02d.png" % i, PNG, "image/png") for i in range(20)])
    assert r.status_code == 202, r.text[:500]
    peak, end = 0, time.monotonic() + 2.0
    while time.monotonic() < end:
        peak = max(peak, count(a.tenant_id, "running"))
        time.sleep(0.02)
    assert 4 <= peak <= 8, peak  # 4 active + 1 in the OCR call (+ a local command); not 20

    r = b.upload(ds_b, ("b.png", PNG, "image/png"))
    assert r.status_code == 202, r.text
    doc = b.wait_file(r.json()["files"][0]["id"], timeout=30, interval=0.05)
    assert doc["status"] == "done", doc
    left = count(a.tenant_id, "queued") + count(a.tenant_id, "running")
    assert left >= 8, left  # B did not wait for A's batch (~6 s of OCR)


@pytest.mark.timeout(120)
def test_admission_does_not_count_parked_runs(start_server, pg, tmp_path):
    """A run parked on a timer (or a call in flight) has nothing to do now:
    with max_runs_active 2, all 10 sleeping runs are claimed at once."""
    srv = nap_server(start_server, tmp_path, 3, "max_runs_active: 2")
    a = srv.create_tenant("sleepy")
    ds = a.create_dataset("a")["id"]
    db = dbname(srv.database_url)
    r = a.upload(ds, [("s%d.txt" % i, b"sleep %d\n" % i, "text/plain") for i in range(10)])
    assert r.status_code == 202, r.text
    peak, end = 0, time.monotonic() + 2.5
    while time.monotonic() < end and peak < 10:
        peak = max(peak, int(pg.psql("SELECT count(*) FROM runs WHERE tenant_id = '%s' AND "
                                     "state = 'running'" % a.tenant_id, dbname=db).strip()))
        time.sleep(0.05)
    assert peak == 10, peak
