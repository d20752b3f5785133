"""Runs wait for S3 rather than fail (core/storage_s3.c, fetch_local): a run
copies its blob from S3 into its scratch dir before its flow starts; when S3
is unavailable then (refused, timed out, 5xx) the copy retries with backoff
(250 ms doubling to 15 s, up to 10 minutes), the run stays busy and leased,
and once S3 is back it goes on with its file as if nothing happened."""
import time

from test_pipelines import artifact, run_of, upload, wait_files

FINAL = {"done", "failed", "partial"}


def _wait_unavailable(front, n, timeout=30):
    """Until the front has answered n requests 503 (S3 unavailable)."""
    end = time.time() + timeout
    while time.time() < end:
        if front.stats()["unavailable"] >= n:
            return True
        time.sleep(0.2)
    return False


def test_run_waits_while_s3_reads_are_down(s3front, start_server, samples):
    front = s3front()
    srv = start_server(extra_yaml=front.storage_yaml("sluice"))
    t = srv.create_tenant("s3wait")
    ds = t.create_dataset("s3wait")["id"]
    # uploads are stored (PUT works); every GET/HEAD gets 503 meanwhile
    front.control(mode="reads_down")
    try:
        ids = upload(t, ds, samples, ["invoice-acme.pdf"])
        fid = ids["invoice-acme.pdf"]
        # the run tried to copy its blob, was refused, and retried (backoff)
        assert _wait_unavailable(front, 3), front.stats()
        doc = t.get("/v1/files/%s" % fid).json()
        assert doc["status"] not in FINAL, doc  # waiting, not failed
    finally:
        front.control(mode="ok")
    docs = wait_files(t, [fid])
    inv = docs[fid]
    assert inv["status"] == "done", inv
    # the flow had its file: the text came from the PDF's text layer
    assert inv["text_source"] == "text_layer", inv
    _, text = artifact(t, run_of(inv, "ai_record"), "text")
    assert b"INV-2026-0042" in text


def test_run_waits_while_s3_is_stopped(s3front, start_server, samples):
    """The same with s3rver itself stopped (the front answers 503) after the
    upload was stored but before the run could copy it: the upload is made
    with reads down, then s3rver is stopped and started again."""
    front = s3front()
    srv = start_server(extra_yaml=front.storage_yaml("sluice"))
    t = srv.create_tenant("s3stop")
    ds = t.create_dataset("s3stop")["id"]
    front.control(mode="reads_down")
    stopped = False
    try:
        ids = upload(t, ds, samples, ["notes.txt"])
        fid = ids["notes.txt"]
        assert _wait_unavailable(front, 1), front.stats()
        front.control(upstream="stop")
        stopped = True
        front.control(mode="ok")
        before = front.stats()["unavailable"]
        assert _wait_unavailable(front, before + 2), front.stats()
        assert t.get("/v1/files/%s" % fid).json()["status"] not in FINAL
    finally:
        front.control(mode="ok")
        if stopped:
            front.control(upstream="start")
    docs = wait_files(t, [fid])
    assert docs[fid]["status"] == "done", docs[fid]
