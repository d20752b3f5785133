"""The stale multipart upload sweeper (core/storage_s3.c): multipart uploads
left by a crash (never completed nor aborted) under Sluice's own prefixes
(files/, artifacts/) are listed with a signed ListMultipartUploads and
aborted once older than storage.abort_stale_uploads_after_s, at start and
periodically. A fresh upload, and an old one outside Sluice's prefixes (a
shared bucket), are left alone. Uploads are made old by backdating their
initiation time on the front's storage (the `key` file's mtime, which the
front reports as Initiated), so nothing here depends on timing.

Also the front's ListMultipartUploads itself (s3rver answers 501; the front
serves it per the S3 API reference): prefix, max-uploads paging with
NextKeyMarker/NextUploadIdMarker, delimiter with CommonPrefixes.
"""
import os
import time


def _start_upload(front, key):
    return front.client().create_multipart_upload(Bucket="sluice", Key=key)["UploadId"]


def _backdate(front, upload_id, seconds):
    f = front.data / "sluice" / "._S3rver_uploads" / upload_id / "key"
    t = time.time() - seconds
    os.utime(f, (t, t))


def test_sweeper_aborts_stale_uploads_only(s3front, start_server):
    front = s3front()
    old = _start_upload(front, "files/t1/crashed-upload")
    old_art = _start_upload(front, "artifacts/t1/r1/text")
    fresh = _start_upload(front, "files/t1/in-progress")
    foreign = _start_upload(front, "backups/not-ours")
    for u in (old, old_art, foreign):
        _backdate(front, u, 2 * 3600)
    assert sorted(front.pending_uploads("sluice")) == sorted([old, old_art, fresh, foreign])
    # an age of one hour: the two-hour-old uploads of ours go at start
    storage = front.storage_yaml("sluice").rstrip().rstrip("}") + \
        ", abort_stale_uploads_after_s: 3600}\n"
    start_server(extra_yaml=storage)
    end = time.time() + 30
    while time.time() < end and (old in front.pending_uploads("sluice") or
                                 old_art in front.pending_uploads("sluice")):
        time.sleep(0.2)
    left = front.pending_uploads("sluice")
    assert old not in left and old_art not in left, left
    assert fresh in left and foreign in left, left  # too young; not Sluice's
    # every request of the sweep was signed as S3 checks it (each Sluice
    # process sweeps: the second abort of an upload is a 404 NoSuchUpload)
    refused = front.stats()["refused"]
    assert set(refused) <= {"NoSuchUpload"}, front.stats()


def test_sweeper_pages_through_the_listing(s3front, start_server):
    """Pages of 2 (the front's list_page_cap): the sweep follows NextKeyMarker /
    NextUploadIdMarker and aborts all 7 stale uploads in one pass."""
    front = s3front()
    front.control(list_page_cap=2)
    ids = [_start_upload(front, "files/tp/%02d" % i) for i in range(7)]
    for u in ids:
        _backdate(front, u, 2 * 3600)
    storage = front.storage_yaml("sluice").rstrip().rstrip("}") + \
        ", abort_stale_uploads_after_s: 3600}\n"
    start_server(extra_yaml=storage)
    end = time.time() + 30
    while time.time() < end and front.pending_uploads("sluice"):
        time.sleep(0.2)
    assert front.pending_uploads("sluice") == []
    assert set(front.stats()["refused"]) <= {"NoSuchUpload"}, front.stats()


def test_sweeper_runs_periodically(s3front, start_server):
    """With an age of 4 s the sweep runs every second: an upload that becomes
    old while Sluice runs is aborted without a restart."""
    front = s3front()
    storage = front.storage_yaml("sluice").rstrip().rstrip("}") + \
        ", abort_stale_uploads_after_s: 4}\n"
    start_server(extra_yaml=storage)
    time.sleep(1.5)  # the start-up sweep has run (nothing to do)
    u = _start_upload(front, "files/t2/crashed")
    keep = _start_upload(front, "other/t2/crashed")
    end = time.time() + 30
    while time.time() < end and u in front.pending_uploads("sluice"):
        time.sleep(0.3)
    left = front.pending_uploads("sluice")
    assert u not in left and keep in left, left


def test_sweeper_off_when_age_is_zero(s3front, start_server):
    front = s3front()
    u = _start_upload(front, "files/t3/crashed")
    _backdate(front, u, 30 * 24 * 3600)
    storage = front.storage_yaml("sluice").rstrip().rstrip("}") + \
        ", abort_stale_uploads_after_s: 0}\n"
    srv = start_server(extra_yaml=storage)
    t = srv.create_tenant("s3sweep0")
    ds = t.create_dataset("s3sweep0")["id"]
    assert t.upload(ds, ("x.txt", b"fine")).status_code == 202
    time.sleep(1.5)
    assert u in front.pending_uploads("sluice")


def test_front_lists_uploads_as_s3_does(s3front):
    front = s3front()
    c = front.client()
    ids = {}
    for k in ("a/1", "a/2", "a/2", "b/x/1", "b/y/1", "c"):
        ids.setdefault(k, []).append(_start_upload(front, k))
    r = c.list_multipart_uploads(Bucket="sluice", Prefix="a/")
    got = [(u["Key"], u["UploadId"]) for u in r["Uploads"]]
    assert [k for k, _ in got] == ["a/1", "a/2", "a/2"]
    assert r["IsTruncated"] is False and r["MaxUploads"] == 1000
    assert all(u["Initiated"] and u["Initiator"]["ID"] for u in r["Uploads"])
    # paging: 2 at a time, markers from the previous page, nothing lost or repeated
    seen, kw = [], {}
    while True:
        r = c.list_multipart_uploads(Bucket="sluice", MaxUploads=2, **kw)
        seen += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
        assert len(r.get("Uploads", [])) <= 2
        if not r["IsTruncated"]:
            break
        kw = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
    assert sorted(seen) == sorted((k, u) for k, us in ids.items() for u in us)
    assert len(seen) == 6
    # key-marker alone: keys strictly after it
    r = c.list_multipart_uploads(Bucket="sluice", KeyMarker="a/2")
    assert [u["Key"] for u in r["Uploads"]] == ["b/x/1", "b/y/1", "c"]
    # delimiter: b/x/ and b/y/ rolled into common prefixes
    r = c.list_multipart_uploads(Bucket="sluice", Prefix="b/", Delimiter="/")
    assert "Uploads" not in r or r["Uploads"] == []
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["b/x/", "b/y/"]
    # unsigned: refused like every other request
    import requests
    assert requests.get(front.url + "/sluice?uploads", timeout=5).status_code == 403
