"""Fixtures for Sluice's black-box tests (see sluice_harness.py).

Session: `pg` (private Postgres cluster), `redis` (private redis-server).
Function: `start_server` (factory), `server`, `tenant`, `samples`.

Environment:
  SLUICE_BIN            binary to test (default REPO/build/sluice)
  SLUICE_SAMPLES        samples dir (default REPO/../shared/samples)
  SLUICE_START_TIMEOUT  seconds to wait for /readyz (default 20)
  SLUICE_STOP_TIMEOUT   seconds a server gets to exit on SIGTERM at teardown
                        before SIGKILL (default 15)
  SLUICE_TEST_TIMEOUT   per-test alarm in seconds (default 300; 0 = off);
                        a test can set its own with @pytest.mark.timeout(N)
  SLUICE_IGNORE_SANITIZER=1  don't fail a test whose server logged an
                        ASan/LSan/UBSan report
  SL_FAULT_RATE, SL_FAULT_SEED  for a build-faults/ binary (-DSL_FAULTS=ON):
                        passed to the server; with a rate > 0 the Client
                        retries 503s and teardown checks that no accepted
                        file was lost (sluice_harness.FAULTS)
"""

import atexit
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sluice_harness import (  # noqa: E402
    FAULTS, REPO, Client, PgCluster, RedisServer, Server, ServerFactory, Standin, free_port,
    sluice_binary,
)

__all__ = ["Client", "Server", "free_port"]

# Everything long-lived registers here so atexit / SIGTERM can clean it up
# even when pytest's own teardown doesn't run.
_live = []


def _cleanup_all():
    while _live:
        obj = _live.pop()
        try:
            obj.destroy()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_cleanup_all)


def _on_sigterm(signum, frame):
    # Turn SIGTERM into an orderly exit so fixtures and atexit run.
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config):
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _on_sigterm)
    config.addinivalue_line("markers", "slow: big uploads / many files; run only against the normal build")
    config.addinivalue_line("markers", "server_smoke: needs a working sluice binary")
    config.addinivalue_line("markers", "no_retry: a status asserted on a request the harness "
                            "cannot replay, or a 503 of one kind; not in the fault pass")
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---------------------------------------------------------------- timeouts

class SluiceTestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _per_test_timeout(request):
    m = request.node.get_closest_marker("timeout")
    secs = int(m.args[0]) if m and m.args else int(os.environ.get("SLUICE_TEST_TIMEOUT", "300"))
    if secs <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise SluiceTestTimeout("test exceeded its %d s time limit" % secs)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- services

@pytest.fixture(scope="session")
def pg():
    """Private Postgres: .new_database(), .stop(), .start(), .sockdir, .port."""
    cluster = PgCluster()
    _live.append(cluster)
    cluster.start()
    yield cluster
    cluster.destroy()
    if cluster in _live:
        _live.remove(cluster)


@pytest.fixture
def migrated_db(pg, tmp_path):
    """A fresh database of pg, migrated by `sluice migrate` (no server):
    its name, for pg.psql(..., dbname=) or psql scripts."""
    url = pg.new_database()
    cfg = tmp_path / "migrate.yaml"
    cfg.write_text('database_url: "%s"\n' % url)
    r = subprocess.run([str(sluice_binary()), "migrate", "--config", str(cfg)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.lstrip("/"))


@pytest.fixture(scope="session")
def redis():
    """Private Redis: .url, .port, .stop(), .start()."""
    r = RedisServer()
    _live.append(r)
    r.start()
    yield r
    r.destroy()
    if r in _live:
        _live.remove(r)


@pytest.fixture(autouse=True)
def _restore_services(request):
    """If a test stopped the session Postgres/Redis and didn't restart them
    (e.g. it failed half way), bring them back for the next test."""
    yield
    for obj in list(_live):
        if isinstance(obj, (PgCluster, RedisServer)) and not obj.running:
            obj.start()


# ---------------------------------------------------------------- server

# FAULTS: the faults the servers of this session logged, by kind
FAULTS_SEEN = {}
NO_FAULTS = []  # set at session finish: a pass of 20+ tests injected none


def pytest_sessionfinish(session, exitstatus):
    # A fault pass that injected nothing tested nothing: with per-test seeds
    # (sluice_harness.fault_seed) a pass of 20 or more tests injects dozens.
    if FAULTS and session.testscollected >= 20 and not FAULTS_SEEN:
        NO_FAULTS.append(session.testscollected)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if FAULTS:
        terminalreporter.write_line(
            "faults injected (SL_FAULT_SEED=%s, SL_FAULT_RATE=%s): %s" % (
                os.environ.get("SL_FAULT_SEED", "?"), os.environ.get("SL_FAULT_RATE", "?"),
                ", ".join("%s %d" % kv for kv in sorted(FAULTS_SEEN.items())) or "none"))
        if NO_FAULTS:
            terminalreporter.write_line("error: a fault pass that injected no fault could not "
                                        "fail (exit status set to 1)", red=True)


@pytest.fixture
def start_server(pg, redis, tmp_path, request):
    """Factory: start_server(config=None, env=None, database_url=None,
    storage_path=None, extra_yaml="", wait_path="/readyz") -> Server, started
    and ready (use wait_path="/healthz" to start one while Postgres is down).
    All are stopped at teardown. Servers given the same storage_path share
    their blobs (one S3 bucket per storage_path under SLUICE_TEST_STORAGE=s3);
    a config of a test's own says "{storage_yaml}" to get the same storage.
    Tests reach blobs through Server.put_blob / get_blob / blob_exists /
    blob_keys / tmp_blobs, never through storage_path."""
    factory = ServerFactory(pg, redis, tmp_path)
    yield factory
    call = getattr(request.node, "rep_call", None)
    lost = []
    if FAULTS and call is not None and call.passed:
        # "Nothing lost": every file accepted with 202 ends done, or failed
        # for a reason of its own, with its record (sluice_harness.FAULTS).
        lost = factory.lost_files()
    reports = factory.teardown()
    if FAULTS:
        for srv in factory.servers:
            for line in srv.log().splitlines():
                if "fault_injected" not in line:
                    continue
                try:
                    kind = json.loads(line).get("kind", "?")
                except ValueError:
                    continue
                FAULTS_SEEN[kind] = FAULTS_SEEN.get(kind, 0) + 1
    if call is not None and call.passed:
        factory.remove_storage()
    if call is not None and call.failed:
        for i, s in enumerate(factory.servers, 1):
            tail = "\n".join(s.log().splitlines()[-40:])
            print("\n---- sluice server %d log tail (%s) ----\n%s" % (i, s.log_path, tail))
    if lost:
        pytest.fail("files lost under fault injection (SL_FAULT_SEED=%s):\n%s"
                    % (os.environ.get("SL_FAULT_SEED", "?"), "\n".join(lost[:20])),
                    pytrace=False)
    if reports and os.environ.get("SLUICE_IGNORE_SANITIZER") != "1":
        pytest.fail("sanitizer reports in server logs:\n" +
                    "\n".join("server %d: %s" % (i, l) for i, l in reports[:20]),
                    pytrace=False)


@pytest.fixture
def server(start_server):
    """A sluice server with the default config and a fresh database."""
    return start_server()


@pytest.fixture
def tenant(server):
    """A Client for a new tenant on `server`."""
    return server.create_tenant("t-" + secrets.token_hex(4))


@pytest.fixture(scope="session")
def samples():
    """pathlib.Path of the sample files."""
    p = Path(os.environ.get("SLUICE_SAMPLES") or (REPO.parent / "shared" / "samples"))
    if not p.is_dir():
        pytest.fail("samples dir not found: %s (set SLUICE_SAMPLES)" % p, pytrace=False)
    return p


@pytest.fixture
def standins():
    """Factory: standins(kind, *options) -> a new Standin; all stopped at teardown."""
    made = []

    def start(kind, *extra):
        s = Standin(kind, *extra)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


@pytest.fixture
def s3front():
    """Factory (s3front): s3front(buckets=("sluice",)) -> a new
    sluice_harness.S3Front, s3rver behind the SigV4-checking front; its
    .storage(bucket) / .storage_yaml(bucket) configure Sluice's S3 backend.
    All are stopped (and their dirs removed) at teardown."""
    from sluice_harness import S3Front
    made = []

    def start(buckets=("sluice",)):
        f = S3Front(buckets)
        made.append(f)
        return f

    yield start
    for f in made:
        f.stop()
