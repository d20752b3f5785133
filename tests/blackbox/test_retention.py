"""Black-box tests of retention (api/retention.c, actors/retention.c,
docs/lifecycle.md "Retention"):

DELETE /v1/datasets/{id} (everything under it gone at once for every read,
purged in batches, blobs after rows, a restart mid-purge resumes),
POST /v1/admin/cleanup (dry run counts, real run removes, counts exact,
tenant filter, bodies validated, admin only), and the automatic sweep
(expired idempotency keys, expired files).

Old files and keys are made by SQL-updating created_at through psql, as
test_files.py seeds rows.
"""

import hashlib
import os
import subprocess
import time
import uuid

import pytest
import requests


pytestmark = pytest.mark.server_smoke


def psql(server, sql):
    return server.sql(sql)  # sluice_harness.Server.sql


def q(s):
    return "'" + str(s).replace("'", "''") + "'"


def count(server, sql):
    return int(psql(server, sql))


def assert_error(r, status, code=None):
    assert r.status_code == status, "%d %s" % (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str)
    if code:
        assert body["error"]["code"] == code, body


def upload_done(client, dataset_id, items):
    r = client.upload(dataset_id, items)
    assert r.status_code == 202, "%d %s" % (r.status_code, r.text)
    return [client.wait_file(f["id"]) for f in r.json()["files"]]


def blob_paths(server, file_ids):
    """Storage keys of the files' blobs and of their artifacts' blobs."""
    if not file_ids:
        return []
    ids = ",".join(q(i) for i in file_ids)
    keys = psql(server, "SELECT storage_key FROM files WHERE id IN (%s)"
                        " UNION ALL SELECT storage_key FROM artifacts WHERE file_id IN (%s)"
                        % (ids, ids)).split()
    return keys


def wait_until(pred, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def rows_of(server, file_ids):
    """Rows left anywhere for these files."""
    ids = ",".join(q(i) for i in file_ids)
    return {t: count(server, "SELECT count(*) FROM %s WHERE %s IN (%s)" % (t, c, ids))
            for t, c in [("files", "id"), ("runs", "file_id"), ("run_events", "file_id"),
                         ("artifacts", "file_id"), ("records", "file_id")]}


def admin_post(server, body, key=None, **kw):
    return requests.post(server.url + "/v1/admin/cleanup", json=body, timeout=60,
                         headers={"Authorization": "Bearer " + (key or server.admin_key)}, **kw)


def seed_files(server, tenant_id, dataset_id, n, size=16, days_old=0):
    """n files rows (no runs) with real blobs, made by SQL; returns their blobs' key prefix."""
    d = "seed/%s/" % dataset_id
    for i in range(n):
        server.put_blob(d + ("%d" % i), b"x" * size)
    psql(server,
         "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime,"
         " storage_key, created_at)"
         " SELECT gen_random_uuid(), %s, %s, gen_random_uuid(), 'seed-' || g, %d, 'x',"
         " 'text/plain', 'seed/%s/' || g, now() - make_interval(days => %d)"
         " FROM generate_series(0, %d) g" % (q(tenant_id), q(dataset_id), size, dataset_id,
                                             days_old, n - 1))
    return d


# ---------------------------------------------------------------- DELETE /v1/datasets/{id}

def test_dataset_delete_removes_everything_under_it(server, tenant):
    other = server.create_tenant("other-" + uuid.uuid4().hex[:6])
    gone = tenant.create_dataset("gone")
    kept = tenant.create_dataset("kept")
    files = upload_done(tenant, gone["id"], [("a.txt", b"alpha one\n", "text/plain"),
                                            ("b.txt", b"beta two\n", "text/plain")])
    [keep] = upload_done(tenant, kept["id"], [("k.txt", b"kept file\n", "text/plain")])
    ids = [f["id"] for f in files]
    arts = [a["id"] for f in files for r in f["runs"] for a in r["artifacts"]]
    blobs = blob_paths(server, ids)
    keep_blobs = blob_paths(server, [keep["id"]])
    assert blobs and all(server.blob_exists(p) for p in blobs)
    assert count(server, "SELECT count(*) FROM run_events WHERE file_id IN (%s)"
                 % ",".join(q(i) for i in ids)) > 0

    # Another tenant's dataset is a 404, and nothing happens to it.
    assert_error(other.delete("/v1/datasets/%s" % gone["id"]), 404, "not_found")
    assert tenant.get("/v1/datasets/%s" % gone["id"]).status_code == 200
    assert_error(tenant.delete("/v1/datasets/not-a-uuid"), 404, "not_found")
    assert_error(tenant.delete("/v1/datasets/%s" % uuid.uuid4()), 404, "not_found")

    r = tenant.delete("/v1/datasets/%s" % gone["id"])
    assert r.status_code == 204, r.text
    assert r.content == b""

    # Gone at once, for every read.
    assert_error(tenant.get("/v1/datasets/%s" % gone["id"]), 404, "not_found")
    assert gone["id"] not in [d["id"] for d in tenant.get("/v1/datasets").json()["datasets"]]
    assert_error(tenant.get("/v1/datasets/%s/files" % gone["id"]), 404)
    assert_error(tenant.get("/v1/datasets/%s/records" % gone["id"]), 404)
    assert_error(tenant.get("/v1/datasets/%s/events" % gone["id"],
                            headers={"Accept": "text/event-stream"}), 404)
    for fid in ids:
        assert_error(tenant.get("/v1/files/%s" % fid), 404)
        assert_error(tenant.get("/v1/files/%s/content" % fid), 404)
        assert_error(tenant.get("/v1/files/%s/events" % fid), 404)
        assert_error(tenant.delete("/v1/files/%s" % fid), 404)
    for aid in arts:
        assert_error(tenant.get("/v1/artifacts/%s" % aid), 404)
    assert tenant.upload(gone["id"], [("late.txt", b"late\n", "text/plain")]).status_code == 404
    assert_error(tenant.delete("/v1/datasets/%s" % gone["id"]), 404, "not_found")

    # Purged in the background: rows, then blobs, then the dataset row itself.
    assert wait_until(lambda: not any(rows_of(server, ids).values())), rows_of(server, ids)
    assert wait_until(lambda: not any(server.blob_exists(p) for p in blobs)), \
        [p for p in blobs if server.blob_exists(p)]
    assert wait_until(lambda: count(server, "SELECT count(*) FROM datasets WHERE id = %s"
                                    % q(gone["id"])) == 0)
    assert wait_until(lambda: count(server, "SELECT count(*) FROM purge_blobs") == 0)

    # The other dataset is untouched.
    assert tenant.get("/v1/datasets/%s" % kept["id"]).status_code == 200
    assert tenant.get("/v1/files/%s" % keep["id"]).json()["status"] == keep["status"]
    assert tenant.get("/v1/files/%s/content" % keep["id"]).content == b"kept file\n"
    assert all(server.blob_exists(p) for p in keep_blobs)
    listed = tenant.get("/v1/datasets/%s/files" % kept["id"]).json()["files"]
    assert [f["id"] for f in listed] == [keep["id"]]


@pytest.mark.timeout(120)
def test_dataset_purge_resumes_after_a_crash(start_server):
    server = start_server(extra_yaml="retention: {batch_size: 20, batch_pause_ms: 150}\n")
    tenant = server.create_tenant("crash")
    ds = tenant.create_dataset("big")
    n = 400
    blob_dir = seed_files(server, tenant.tenant_id, ds["id"], n)
    assert len(server.blob_keys(blob_dir)) == n

    assert tenant.delete("/v1/datasets/%s" % ds["id"]).status_code == 204
    left = lambda: count(server, "SELECT count(*) FROM files WHERE dataset_id = %s" % q(ds["id"]))
    # Batches of 20, 150 ms apart: kill it part way.
    assert wait_until(lambda: left() < n - 40, timeout=30), left()
    server.kill()
    mid = left()
    assert 0 < mid < n, "the purge was not interrupted part way (%d files left)" % mid

    server.start()
    assert wait_until(lambda: left() == 0, timeout=60), left()
    assert wait_until(lambda: count(server, "SELECT count(*) FROM datasets WHERE id = %s"
                                    % q(ds["id"])) == 0)
    assert wait_until(lambda: not server.blob_keys(blob_dir), timeout=30), \
        "%d blobs left" % len(server.blob_keys(blob_dir))
    # (a blob goes before its purge_blobs row: on S3 the gap is a round trip)
    queued = lambda: count(server, "SELECT count(*) FROM purge_blobs")
    if server.storage_backend == "s3":
        # A drainer killed between its batch's DELETEs and the rows' removal
        # (on S3 a round trip per blob, so the kill can land there) leaves that
        # batch claimed until the claim lapses (BLOB_CLAIM_S): nothing else.
        assert wait_until(lambda: count(server, "SELECT count(*) FROM purge_blobs WHERE"
                                        " claimed_until IS NULL OR claimed_until < now()") == 0)
        assert queued() <= 20, queued()
    else:
        assert wait_until(lambda: queued() == 0), queued()
    # Every batch was one short transaction of at most 20 files.
    log = server.log()
    assert '"reason":"dataset_delete"' in log.replace(" ", "")


def test_stop_during_a_purge_pause_ends_cleanly_and_resumes(start_server):
    """SIGTERM while the purge waits between two batches (batch_pause_ms):
    the paused loop ends at once (under ASan, a loop left on its timer when
    the event base went leaked it and the retention module: LeakSanitizer at
    teardown), the server exits 0, and the next start finishes the purge."""
    server = start_server(extra_yaml="retention: {batch_size: 20, batch_pause_ms: 60000}\n")
    tenant = server.create_tenant("pause")
    ds = tenant.create_dataset("big")
    blob_dir = seed_files(server, tenant.tenant_id, ds["id"], 100)
    assert tenant.delete("/v1/datasets/%s" % ds["id"]).status_code == 204
    left = lambda: count(server, "SELECT count(*) FROM files WHERE dataset_id = %s" % q(ds["id"]))
    # one batch, then the pause; two when the start's sweep pass ran one too
    # (seen on a loaded machine in the S3 pass): never more before 60 s
    assert wait_until(lambda: left() <= 80, timeout=30), left()
    time.sleep(1.0)
    paused = left()
    assert paused in (60, 80), paused
    t0 = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - t0 < 10, "the stop waited for the purge's pause"
    assert left() == paused
    server.start()
    # the new start's pass runs a batch at once (the sweep's pass may run another)
    assert wait_until(lambda: left() < paused, timeout=30), left()


# ---------------------------------------------------------------- POST /v1/admin/cleanup

def test_cleanup_dry_run_then_real_run(server, tenant):
    other = server.create_tenant("other-" + uuid.uuid4().hex[:6])
    ds = tenant.create_dataset("old")
    ods = other.create_dataset("theirs")
    files = upload_done(tenant, ds["id"], [("o%d.txt" % i, b"old file %d\n" % i * (i + 1),
                                            "text/plain") for i in range(4)])
    [theirs] = upload_done(other, ods["id"], [("t.txt", b"their old file\n", "text/plain")])
    old = files[:3]
    new = files[3]
    old_ids = [f["id"] for f in old]
    psql(server, "UPDATE files SET created_at = now() - interval '10 days' WHERE id IN (%s)"
                 % ",".join(q(i) for i in old_ids + [theirs["id"]]))
    want_bytes = sum(f["size"] for f in old)
    blobs = blob_paths(server, old_ids)
    assert blobs and all(server.blob_exists(p) for p in blobs)

    # Dry run: counted, nothing removed.
    r = admin_post(server, {"older_than_days": 7, "dry_run": True, "tenant_id": tenant.tenant_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["files"], body["bytes"]) == (3, want_bytes), body
    assert all(tenant.get("/v1/files/%s" % i).status_code == 200 for i in old_ids)
    assert all(server.blob_exists(p) for p in blobs)
    r = admin_post(server, {"older_than_days": 7, "dry_run": True})
    assert (r.json()["files"], r.json()["bytes"]) == (4, want_bytes + theirs["size"]), r.text
    r = admin_post(server, {"older_than_days": 30, "dry_run": True})
    assert (r.json()["files"], r.json()["bytes"]) == (0, 0), r.text

    # Real run, one tenant: exactly the three old files, as DELETE /v1/files/{id} does.
    r = admin_post(server, {"older_than_days": 7, "dry_run": False,
                            "tenant_id": tenant.tenant_id})
    assert r.status_code == 200, r.text
    assert (r.json()["files"], r.json()["bytes"]) == (3, want_bytes), r.text
    for fid in old_ids:
        assert_error(tenant.get("/v1/files/%s" % fid), 404)
    assert not any(rows_of(server, old_ids).values()), rows_of(server, old_ids)
    assert wait_until(lambda: not any(server.blob_exists(p) for p in blobs)), \
        [p for p in blobs if server.blob_exists(p)]
    recs = tenant.get("/v1/datasets/%s/records" % ds["id"]).json()["records"]
    assert all(rec["file_id"] == new["id"] for rec in recs)
    assert tenant.get("/v1/files/%s" % new["id"]).status_code == 200
    assert other.get("/v1/files/%s" % theirs["id"]).status_code == 200

    # Again: nothing left for that tenant; then every tenant: the other's old file.
    r = admin_post(server, {"older_than_days": 7, "tenant_id": tenant.tenant_id})
    assert (r.json()["files"], r.json()["bytes"]) == (0, 0), r.text
    r = admin_post(server, {"older_than_days": 7})
    assert (r.json()["files"], r.json()["bytes"]) == (1, theirs["size"]), r.text
    assert_error(other.get("/v1/files/%s" % theirs["id"]), 404)
    assert tenant.get("/v1/files/%s" % new["id"]).status_code == 200


def test_cleanup_refuses_bad_bodies_and_non_admins(server, tenant):
    assert_error(admin_post(server, {"older_than_days": 1}, key=tenant.key), 401)
    r = requests.post(server.url + "/v1/admin/cleanup", json={"older_than_days": 1}, timeout=10)
    assert_error(r, 401)
    bad = [
        {},
        {"older_than_days": -1},
        {"older_than_days": 1e9},
        {"older_than_days": "5"},
        {"older_than_days": True},
        {"older_than_days": None},
        {"older_than_days": 1, "dry_run": "yes"},
        {"older_than_days": 1, "dry_run": 1},
        {"older_than_days": 1, "tenant_id": "acme"},
        {"older_than_days": 1, "tenant_id": 7},
        {"older_than_days": 1, "dryrun": True},
        [1],
    ]
    for body in bad:
        assert_error(admin_post(server, body), 400)
    r = admin_post(server, {"older_than_days": 1, "tenant_id": str(uuid.uuid4())})
    assert_error(r, 400, "unknown_tenant")
    r = requests.post(server.url + "/v1/admin/cleanup", data=b"{nope", timeout=10,
                      headers={"Authorization": "Bearer " + server.admin_key,
                               "Content-Type": "application/json"})
    assert_error(r, 400)
    # None of them removed anything.
    ds = tenant.create_dataset("safe")
    [f] = upload_done(tenant, ds["id"], [("s.txt", b"safe\n", "text/plain")])
    psql(server, "UPDATE files SET created_at = now() - interval '3 days' WHERE id = %s"
         % q(f["id"]))
    for body in bad:
        admin_post(server, body)
    assert tenant.get("/v1/files/%s" % f["id"]).status_code == 200
    r = admin_post(server, {"older_than_days": 0.5, "dry_run": True})
    assert r.status_code == 200 and r.json()["files"] == 1, r.text


# ---------------------------------------------------------------- the automatic sweep

def test_sweep_purges_expired_idempotency_keys_and_files(start_server):
    server = start_server(extra_yaml="retention: {interval_s: 1, files_older_than_days: 30}\n")
    tenant = server.create_tenant("sweep")
    ds = tenant.create_dataset("aging")
    [young, aged] = upload_done(tenant, ds["id"], [("y.txt", b"young\n", "text/plain"),
                                                  ("a.txt", b"aged\n", "text/plain")])
    aged_blobs = blob_paths(server, [aged["id"]])
    psql(server, "UPDATE files SET created_at = now() - interval '31 days' WHERE id = %s"
         % q(aged["id"]))
    psql(server, "INSERT INTO idempotency_keys (tenant_id, key, endpoint, status, body, created_at)"
                 " VALUES (%s, 'old-key', 'POST /v1/datasets/{id}/files', 202, '{}',"
                 "         now() - interval '25 hours'),"
                 "        (%s, 'fresh-key', 'POST /v1/datasets/{id}/files', 202, '{}',"
                 "         now() - interval '23 hours')" % (q(tenant.tenant_id), q(tenant.tenant_id)))
    keys = lambda: psql(server, "SELECT string_agg(key, ',' ORDER BY key) FROM idempotency_keys"
                                " WHERE key IN ('old-key', 'fresh-key')")
    # Refresh-token families (docs/auth.md): one whose tokens all expired over a
    # day ago goes; one still within its tokens' life stays.
    fams = []
    for _ in range(2):
        r = tenant.post("/v1/auth/token")
        assert r.status_code == 200, r.text
        fams.append(psql(server, "SELECT family_id FROM refresh_tokens ORDER BY created_at DESC"
                                 " LIMIT 1"))
    psql(server, "UPDATE refresh_tokens SET created_at = now() - interval '40 days',"
                 " expires_at = now() - interval '2 days' WHERE family_id = %s;"
                 "UPDATE token_families SET created_at = now() - interval '40 days'"
                 " WHERE id IN (%s, %s)" % (q(fams[0]), q(fams[0]), q(fams[1])))
    families = lambda: psql(server, "SELECT string_agg(id::text, ',') FROM token_families"
                                    " WHERE id IN (%s, %s)" % (q(fams[0]), q(fams[1])))
    assert wait_until(lambda: keys() == "fresh-key", timeout=20), keys()
    assert wait_until(lambda: families() == fams[1], timeout=20), families()
    assert wait_until(lambda: tenant.get("/v1/files/%s" % aged["id"]).status_code == 404, 20)
    assert wait_until(lambda: not any(server.blob_exists(p) for p in aged_blobs))
    assert tenant.get("/v1/files/%s" % young["id"]).status_code == 200
    # Still there after more sweeps: a key within its 24 h and a young file stay.
    time.sleep(2.5)
    assert keys() == "fresh-key"
    assert tenant.get("/v1/files/%s" % young["id"]).status_code == 200
    # One instance at a time: the lease names whoever swept last, and it is free between sweeps.
    assert count(server, "SELECT count(*) FROM retention_leases WHERE name = 'sweep'"
                         " AND done_at > now() - interval '1 minute'") == 1
    m = requests.get(server.url + "/metrics", timeout=10).text
    lines = [l for l in m.splitlines()
             if l.startswith("sluice_retention_files_total{") and 'reason="expired"' in l]
    assert lines and float(lines[0].split()[-1]) >= 1, m[-2000:]
    assert 'sluice_retention_token_families_total{role="engine"} 1' in m, \
        "|".join(l for l in m.splitlines() if "retention" in l and not l.startswith("#"))


def test_runs_of_a_deleted_dataset_are_never_claimed(server, tenant):
    """The claim skips a marked dataset's runs (in one transaction the engine cannot see)."""
    def claimable(deleted):
        ds, fid, rid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        out = psql(server,
                   "BEGIN;"
                   "INSERT INTO datasets (id, tenant_id, name, record_schema, deleted_at)"
                   " VALUES (%s, %s, 'probe', '{}', %s);"
                   "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime,"
                   " storage_key) VALUES (%s, %s, %s, %s, 'p', 1, 'x', 'text/plain', 'probe/x');"
                   "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline,"
                   " next_attempt_at) VALUES (%s, %s, %s, %s, %s, 'ai_record',"
                   " now() - interval '1 second');"
                   "SELECT count(*) FROM sluice_claim_runs('probe', 10000, 30, 10000, '{}')"
                   " WHERE id = %s;"
                   "ROLLBACK;" % (q(ds), q(tenant.tenant_id), "now()" if deleted else "NULL",
                                  q(fid), q(tenant.tenant_id), q(ds), q(uuid.uuid4()),
                                  q(rid), q(tenant.tenant_id), q(ds), q(fid), q(uuid.uuid4()),
                                  q(rid)))
        return int(out.split()[-1])

    assert claimable(deleted=False) == 1
    assert claimable(deleted=True) == 0


@pytest.mark.parametrize("section, message", [
    ("retention: {idempotency_hours: 1}", "retention.idempotency_hours"),
    ("retention: {batch_size: 0}", "retention.batch_size"),
    ("retention: {interval_s: -5}", "retention.interval_s"),
    ("retention: {files_older_than_days: many}", "retention.files_older_than_days"),
    ("retention: {every: 3}", "retention.every"),
])
def test_bad_retention_config_is_refused(tmp_path, section, message):
    from sluice_harness import sluice_binary
    cfg = tmp_path / "bad.yaml"
    cfg.write_text('database_url: "postgresql:///nowhere"\n%s\n' % section)
    r = subprocess.run([str(sluice_binary()), "migrate", "--config", str(cfg)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
