"""sluice_files_json (db/functions/json.sql): the documents of many files built
set-wise, as the upload's response does, are the very text that
sluice_file_json gives file by file, for files in every state: no run (waiting
for /process, or taken by no pipeline), done with artifacts and record
versions, failed, queued (places from the numbering of the queue and from a
count of the runs ahead, behind the 10,000 cap too), running and waiting."""
import json
import uuid

from test_claim import db, queue, tenant  # noqa: F401  (db is a fixture)


def seed(db, t, name, awaiting=False, reason=None):  # noqa: F811
    fid = str(uuid.uuid4())
    db("INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
       "storage_key, awaiting_process, reason) VALUES ('%s', '%s', '%s', '%s', '%s', 7, 'x', "
       "'text/plain', 'k', %s, %s)" % (fid, t[0], t[1], uuid.uuid4(), name,
                                       "true" if awaiting else "false",
                                       "'%s'" % reason if reason else "NULL"))
    return fid


def run(db, t, fid, pipeline, state, extra=""):  # noqa: F811
    rid = str(uuid.uuid4())
    db("INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline, state, step, "
       "error, note, started_at, finished_at, flow_version, attempt) VALUES ('%s', '%s', '%s', "
       "'%s', '%s', '%s', '%s', %s)" % (rid, t[0], t[1], fid, uuid.uuid4(), pipeline, state,
                                        extra or "NULL, NULL, NULL, NULL, NULL, NULL, 1"))
    return rid


def test_many_files_set_wise_are_each_files_document(db):  # noqa: F811
    t, other = tenant(db, "t"), tenant(db, "u")
    queue(db, t, 30)                     # a batch of 30 queued runs, fair_rank 1..30
    uploaded = seed(db, t, "uploaded", awaiting=True)
    nomatch = seed(db, t, "nomatch", reason="no pipeline matches image/png")
    done = seed(db, t, "done")
    r = run(db, t, done, "ai_record", "succeeded",
            "'done', NULL, 'no record: empty text', now() - interval '2 s', now(), 'v1', 2")
    db("INSERT INTO artifacts (id, tenant_id, file_id, run_id, kind, mime, size, sha256, data) "
       "VALUES (gen_random_uuid(), '%s', '%s', '%s', 'text', 'text/plain', 3, 'ab', 'abc')"
       % (t[0], done, r))
    db("INSERT INTO artifacts (id, tenant_id, file_id, run_id, kind, mime, size, sha256, "
       "storage_key) VALUES (gen_random_uuid(), '%s', '%s', '%s', 'preview', 'image/png', 9, "
       "'cd', 'artifacts/x')" % (t[0], done, r))  # a later transaction: after the text
    r2 = run(db, t, done, "preview", "succeeded")
    for version, latest in ((1, "false"), (2, "true")):
        db("INSERT INTO records (id, tenant_id, dataset_id, file_id, run_id, data, version, "
           "latest) VALUES (gen_random_uuid(), '%s', '%s', '%s', '%s', '{\"n\": %d}', %d, %s)"
           % (t[0], t[1], done, r if version == 2 else r2, version, version, latest))
    failed = seed(db, t, "failed")
    run(db, t, failed, "ai_record", "failed",
        "'extract', 'tika_unavailable', NULL, now() - interval '1 s', now(), 'v1', 3")
    run(db, t, failed, "preview", "cancelled")
    queued = seed(db, t, "queued")
    run(db, t, queued, "ai_record", "queued")
    run(db, t, queued, "preview", "queued")
    busy = seed(db, t, "busy")
    run(db, t, busy, "ai_record", "running", "'extract', NULL, NULL, now(), NULL, 'v1', 1")
    run(db, t, busy, "preview", "waiting")
    foreign = seed(db, other, "foreign")
    queue(db, t, 10001)                  # more than the cap of queued runs
    behind = seed(db, t, "behind")
    rb = run(db, t, behind, "ai_record", "queued")
    db("UPDATE runs SET fair_rank = 20000 WHERE id = '%s'" % rb)  # behind the 10,033 others
    ids = [uploaded, nomatch, done, failed, queued, foreign, busy, behind]
    arr = "ARRAY[%s]::uuid[]" % ",".join("'%s'" % i for i in ids)

    got = db("SELECT sluice_files_json('%s', %s)::text" % (t[0], arr))
    # element by element, the text of one file's document ...
    got_each = db("SELECT e::text FROM json_array_elements(sluice_files_json('%s', %s)) e"
                  % (t[0], arr)).strip().split("\n")
    # ... with the places numbered once for all (what the upload used to send)
    want = db("SELECT coalesce(json_agg(sluice_file_json(f, sluice_queue_positions('%s', %s))"
              " ORDER BY x.ord), '[]')::text FROM unnest(%s) WITH ORDINALITY x(id, ord)"
              " JOIN files f ON f.id = x.id AND f.tenant_id = '%s'" % (t[0], arr, arr, t[0]))
    assert got == want
    # ... and with each place counted (GET /v1/files/{id})
    want_each = [db("SELECT sluice_file_json(f)::text FROM files f WHERE f.id = '%s'"
                    % i).strip() for i in ids if i != foreign]
    assert got_each == want_each

    docs = json.loads(got)
    assert [d["name"] for d in docs] == ["uploaded", "nomatch", "done", "failed", "queued",
                                         "busy", "behind"]
    assert [d["status"] for d in docs] == ["uploaded", "done", "done", "failed", "queued",
                                           "processing", "queued"]
    assert docs[1]["reason"] == "no pipeline matches image/png"
    d = docs[2]
    assert (d["record"], d["record_version"]) == ({"n": 2}, 2)
    assert [a["kind"] for a in d["runs"][0]["artifacts"]] == ["text", "preview"]
    assert d["runs"][0]["note"] == "no record: empty text" and d["runs"][1]["artifacts"] == []
    assert docs[3]["runs"][0]["error"] == "tika_unavailable"
    assert [x["queue_position"] for x in docs[4]["runs"]] == [2, 3]  # own batches: rank 1
    assert [x["queue_position"] for x in docs[5]["runs"]] == [None, None]
    assert docs[6]["runs"][0]["queue_position"] == 10001
    assert db("SELECT sluice_files_json('%s', '{}')::text" % t[0]).strip() == "[]"
