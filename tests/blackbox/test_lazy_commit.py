"""Lazy commits of a step's own rows (db/functions/run_transition.sql,
sluice_commit_lazily / sluice_commit_durably; docs/internals/scheduler.md
"Lazy commits"), straight against a migrated database: a record, an
artifact with its bytes in its row and the file's text_source commit
without waiting for their WAL flush (the run's next transition, durable,
flushes them); an artifact whose bytes are in the store, and a rewrite
(whose replaced blob the caller deletes after the commit), stay durable;
durable wins over lazy in a transaction that holds both (step rows share
transactions), whichever came first; and "durable" is the server's own
setting, not a hard-coded 'on'.
"""
import subprocess
import uuid

import pytest


@pytest.fixture
def db(pg, migrated_db):
    """(run, ids, name): run(script) feeds a psql script to a freshly
    migrated database and returns its output lines; ids: a tenant, dataset,
    file and run to write rows for."""
    name = migrated_db

    def run(script):
        r = subprocess.run([str(pg.bindir / "psql"), "-X", "-A", "-t", "-q",
                            "-v", "ON_ERROR_STOP=1", "-h", pg.sockdir, "-p", str(pg.port),
                            "-d", name], input=script, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    # the test clusters run with synchronous_commit off (for speed): this
    # database's sessions start with it on, as a durable server's do
    run('ALTER DATABASE "%s" SET synchronous_commit = on;' % name)
    ids = {k: str(uuid.uuid4()) for k in ("t", "d", "f", "r", "b")}
    run("INSERT INTO tenants (id, name) VALUES ('{t}', 'lazy');"
        "INSERT INTO datasets (id, tenant_id, name, record_schema) VALUES ('{d}', '{t}', 'd', '{{}}');"
        "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
        "storage_key) VALUES ('{f}', '{t}', '{d}', '{b}', 'f.txt', 3, 'x', 'text/plain', 'k');"
        "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline) "
        "VALUES ('{r}', '{t}', '{d}', '{f}', '{b}', 'p');".format(**ids))
    return run, ids, name


def _artifact(ids, kind, key):
    return ("SELECT count(*) FROM sluice_artifact_put(gen_random_uuid(), '{t}', '{f}', '{r}', "
            "'{kind}', 'text/plain', 3, 'x', {key}, {data});\n"
            .format(kind=kind, key="'%s'" % key if key else "NULL",
                    data="NULL" if key else "'abc'::bytea", **ids))


def test_the_step_rows_commit_lazily(db):
    run, ids, _ = db
    out = run(
        "BEGIN;\n"
        "SELECT sluice_record_put(gen_random_uuid(), '{t}', '{d}', '{f}', '{r}', "
        "'{{\"a\": 1}}', '{{}}');\n"
        "SHOW synchronous_commit;\n"
        "COMMIT;\n"
        "SHOW synchronous_commit;\n"          # a SET LOCAL: gone with its transaction
        "BEGIN;\n"
        "SELECT sluice_text_source_put('{f}', '{t}', 'tika');\n"
        "SHOW synchronous_commit;\n"
        "COMMIT;\n"
        "BEGIN;\n".format(**ids) + _artifact(ids, "text", None) +
        "SHOW synchronous_commit;\n"
        "COMMIT;\n")
    assert out == ["1", "off", "on", "1", "off", "1", "off"], out
    # a file that is gone: nothing written, null (the engine's not_found)
    out = run("SELECT coalesce(sluice_text_source_put(gen_random_uuid(), '{t}', 'x')::text, "
              "'null');\nSHOW synchronous_commit;\n".format(**ids))
    assert out == ["null", "on"], out


def test_a_blob_or_a_rewrite_stays_durable_and_durable_wins(db):
    run, ids, _ = db
    out = run(
        # bytes in the store: lost, the row would leave its blob behind
        "BEGIN;\n" + _artifact(ids, "preview", "artifacts/x/preview.1") +
        "SHOW synchronous_commit;\n"
        "COMMIT;\n"
        # lazy first, then a rewrite in the same transaction: durable
        "BEGIN;\n" + _artifact(ids, "text", None) +
        "SHOW synchronous_commit;\n" + _artifact(ids, "text", None) +
        "SHOW synchronous_commit;\n"
        # and a lazy row after it does not undo that
        "SELECT sluice_text_source_put('{f}', '{t}', 'tika');\n"
        "SHOW synchronous_commit;\n"
        "COMMIT;\n"
        "BEGIN;\n"
        "SELECT sluice_commit_lazily();\n"
        "SHOW synchronous_commit;\n"
        "COMMIT;\n".format(**ids))
    assert out == ["1", "on", "1", "off", "1", "on", "1", "on", "t", "off"], out


def test_durable_is_the_servers_setting(db):
    run, ids, name = db
    run('ALTER DATABASE "%s" SET synchronous_commit = local;' % name)
    out = run("BEGIN;\n"
              "SELECT sluice_commit_lazily();\nSHOW synchronous_commit;\n"
              "SELECT sluice_commit_durably();\nSHOW synchronous_commit;\n"
              "COMMIT;\n")
    assert out == ["t", "off", "t", "local"], out
