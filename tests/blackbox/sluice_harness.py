"""sluice_harness — helper classes for Sluice's black-box tests.

Private Postgres (unix socket only, run as the unprivileged user "sluice" when
we are root), private Redis, the sluice server process, and a thin HTTP
client. Every process is started as our child with a parent-death signal, so
nothing outlives the test run even if pytest is killed; the fixtures in
conftest.py stop them cleanly at teardown.
"""

import contextlib
import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
PG_USER = os.environ.get("SL_PG_USER", "sluice")
DEFAULT_TIMEOUT = 30

# Fault injection (a build-faults/ binary, scripts/test's faults phase): the
# server sees SL_FAULT_RATE / SL_FAULT_SEED through its environment (the
# factory passes os.environ on). With faults on, Client behaves as a careful
# API client does: it retries a 503 (the dependency "went away"), sending an
# Idempotency-Key of its own on uploads and process requests so a retry after
# a lost answer replays instead of doubling; and it remembers every file
# accepted with 202, which conftest checks at teardown ("nothing lost").
try:
    FAULTS = float(os.environ.get("SL_FAULT_RATE") or 0) > 0
except ValueError:
    FAULTS = False
FAULT_RETRIES = 30
# SLUICE_PG_STATEMENTS=1: clusters load pg_stat_statements, and local_stack
# (the benches) prints the top statements at the end: where Postgres's time went.
PG_STATEMENTS = os.environ.get("SLUICE_PG_STATEMENTS") == "1"
# SLUICE_PG_EXPLAIN=MS: clusters log (auto_explain, in their log file) the
# plan of every statement, nested ones included, that took MS ms or more.
PG_EXPLAIN_MS = os.environ.get("SLUICE_PG_EXPLAIN", "")


def fault_seed(base, n):
    """The seed of the n-th server of the running test: the pass's seed
    (SL_FAULT_SEED) mixed with the test's id and n. Every server counts its
    decisions from 0, so one seed for all would make every server of the pass
    draw the same first few hundred decisions: with rate 0.005, about half the
    seeds then injected no fault at all. Replaying a seed replays each test's
    faults (as far as its operations happen in the same order)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    return (base * 1000003 + zlib.crc32(test.encode()) * 101 + n) % (1 << 63)


_IDEMPOTENT_POSTS = re.compile(r"^/v1/(datasets/[^/]+/files|files/[^/]+/process)$")

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork
except OSError:
    _libc = None


def _set_pdeathsig():
    """In a forked child: die with SIGKILL when the parent (pytest) dies."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _preexec(uid=None, gid=None):
    """Return a preexec_fn: optionally drop to uid/gid, then set pdeathsig
    (after the credential change, which would otherwise clear it)."""

    def fn():
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        _set_pdeathsig()

    return fn


# ---------------------------------------------------------------- ports

_handed_out = set()


def ready_port(proc, what):
    """The port a child that binds port 0 itself reports on its first line,
    "ready port=N ...": no window between choosing a port and binding it.
    If the child does not start, the assertion carries all it printed (a CI
    run once showed only the first line of a traceback)."""
    line = proc.stdout.readline()
    m = re.match(r"ready port=(\d+)", line)
    if m is None:
        try:
            proc.wait(10)
            rest = proc.stdout.read()
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = "(still running after 10 s; killed)"
        raise AssertionError("%s did not start: %s%s" % (what, line, rest))
    return int(m.group(1))


def free_port():
    """A currently free TCP port on 127.0.0.1, never the same one twice in
    this process (so two fixtures can't race for one), and held back from
    other processes' port-0 binds until its user binds it: the probe accepts
    one connection and closes its end first, which leaves the port in
    TIME_WAIT for 60 s. Linux's ephemeral choice (bind to port 0, as s3rver
    does) skips a port with a TIME_WAIT socket, while an explicit bind with
    SO_REUSEADDR (Postgres, Redis, Sluice, Python's servers) takes it."""
    for _ in range(200):
        with contextlib.closing(socket.socket()) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            with contextlib.closing(socket.create_connection(("127.0.0.1", port))):
                conn, _ = s.accept()
                conn.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def _log_tail(path, lines=60):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _killpg(pgid, sig=signal.SIGKILL):
    """Signal a whole process group; quiet when it is gone already."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_proc(proc, sig=signal.SIGTERM, timeout=15.0, group=False):
    """Signal proc and reap it; SIGKILL after timeout. Returns the exit code.
    group: proc leads its own session (start_new_session): the SIGKILL goes
    to its whole process group, and whatever of the group is left after proc
    exited (children a killed sluice supervisor left behind) is killed too."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if group:
                _killpg(proc.pid)
            proc.kill()
            proc.wait(timeout=10)
    if group:
        _killpg(proc.pid)
    return proc.returncode


def _mkbase(prefix):
    """A fresh temp dir (mode 755, so the postgres user can traverse it)
    tagged with our pid; first sweeps dirs of earlier runs whose owner died
    without cleaning up (e.g. pytest was SIGKILLed)."""
    for d in Path("/tmp").glob(prefix + "*"):
        try:
            owner = int((d / ".owner-pid").read_text())
        except (OSError, ValueError):
            continue  # not ours (or still being set up)
        if owner != os.getpid() and not Path("/proc/%d" % owner).exists():
            shutil.rmtree(d, ignore_errors=True)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o755)
    (base / ".owner-pid").write_text(str(os.getpid()))
    return base


# ---------------------------------------------------------------- Postgres


def pg_bindir():
    """The newest /usr/lib/postgresql/<major>/bin with a postgres binary."""
    best = None
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for d in base.iterdir():
            if d.name.split(".")[0].isdigit() and (d / "bin" / "postgres").exists():
                v = int(d.name.split(".")[0])
                if best is None or v > best[0]:
                    best = (v, d / "bin")
    if best is None:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql (run scripts/install-deps)")
    return best[1]


def _ensure_pg_user():
    """When root, create the system user that owns the cluster; returns
    (uid, gid) to run Postgres as, or (None, None) when not root."""
    if os.geteuid() != 0:
        return None, None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
        )
        pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


class PgCluster:
    """A throwaway Postgres cluster in a temp dir, reachable only over a unix
    socket in `sockdir` named after `port`. The superuser role is named after
    our OS user, so a URI without a user name works.

    The tests' cluster trades durability for speed (fsync, synchronous_commit
    and full_page_writes off: a crash of this machine loses nothing a test
    needs). durable=True keeps Postgres's defaults, every commit flushed to
    disk: the benches (local_stack) measure with it, as production runs."""

    def __init__(self, base=None, durable=False):
        self.durable = durable
        self.bindir = pg_bindir()
        self.uid, self.gid = _ensure_pg_user()
        self.base = Path(base) if base else _mkbase("sluice-pgt-")
        self.datadir = self.base / "data"
        self.sockdir = str(self.base / "run")
        self.logfile = self.base / "postgres.log"
        self.port = free_port()
        self.proc = None
        self.want_running = False
        self._dbseq = 0
        self._superuser = pwd.getpwuid(os.geteuid()).pw_name
        self._initdb()

    def _chown(self, path):
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)

    def _initdb(self):
        self.datadir.mkdir(mode=0o700)
        self._chown(self.datadir)
        Path(self.sockdir).mkdir(mode=0o755)
        self._chown(self.sockdir)
        r = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self._superuser,
             "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_preexec(self.uid, self.gid),
        )
        if r.returncode != 0:
            raise RuntimeError("initdb failed:\n" + r.stdout)

    def start(self):
        """Start (or restart) the cluster on the same socket dir and port;
        returns when it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            self.want_running = True
            return
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir),
                 "-k", self.sockdir, "-c", "listen_addresses=", "-p", str(self.port),
                 "-c", "max_connections=300", "-c", "shared_buffers=32MB",
                 *([] if self.durable else
                   ["-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off"]),
                 *(["-c", "shared_preload_libraries=pg_stat_statements",
                    "-c", "pg_stat_statements.track=all"] if PG_STATEMENTS else []),
                 *(["-c", "session_preload_libraries=auto_explain",
                    "-c", "auto_explain.log_min_duration=" + PG_EXPLAIN_MS,
                    "-c", "auto_explain.log_nested_statements=on",
                    "-c", "auto_explain.log_analyze=on"] if PG_EXPLAIN_MS else [])],
                cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_preexec(self.uid, self.gid),
            )
        finally:
            log.close()
        self.want_running = True
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited at start:\n" + _log_tail(self.logfile))
            r = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", self.sockdir, "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready:\n" + _log_tail(self.logfile))

    def stop(self, mode="fast"):
        """Stop the cluster ("fast" = SIGINT, "smart" = SIGTERM,
        "immediate" = SIGQUIT)."""
        self.want_running = False
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
               "immediate": signal.SIGQUIT}[mode]
        _stop_proc(self.proc, sig, timeout=30)
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def url(self, dbname):
        """libpq URI of database dbname on this cluster."""
        return "postgresql:///%s?host=%s&port=%d" % (
            urllib.parse.quote(dbname), urllib.parse.quote(self.sockdir, safe="/"), self.port)

    def psql(self, sql, dbname="postgres", check=True):
        """Run sql with psql on dbname; returns stdout (unaligned, tuples only)."""
        r = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", self.sockdir, "-p", str(self.port), "-d", dbname, "-c", sql],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        if check and r.returncode != 0:
            raise RuntimeError("psql failed: %s\n%s" % (sql, r.stderr))
        return r.stdout

    def new_database(self):
        """Create a fresh, empty database; returns its libpq URI."""
        self._dbseq += 1
        name = "sl_t%d_%s" % (self._dbseq, secrets.token_hex(3))
        self.psql('CREATE DATABASE "%s"' % name)
        return self.url(name)

    def destroy(self):
        """Stop the cluster and remove its directory."""
        self.stop("immediate" if self.running else "fast")
        shutil.rmtree(self.base, ignore_errors=True)
        sync_deletions()


def sync_deletions():
    """After removing a tree: write the freed inodes back (os.sync). On ext4
    without a journal (these VMs' root filesystem) the inode allocator skips
    every free inode deleted less than 60 s ago, or 360 s while its inode
    table block is still dirty (fs/ext4/ialloc.c, recently_deleted), and pays
    a buffer lookup for each one it skips: after a run deleted thousands of
    files, every file created on the filesystem cost that much more for up
    to six minutes (perf: find_get_block_common and recently_deleted, 16 % of
    the HTTP process's samples in bench/flow_bench.py right after a test
    run; docs/internals/scheduler.md "stop 32"). Synced, an idle disk's files
    cost their usual ~20 us again within two minutes (stop 34, the probe
    fs_create_cost every 30 s: first quiet 94 and 113 s after two
    deletions); a workload creating files meanwhile
    dirties those blocks again and keeps the tax longer (benches back to back
    65 s apart grew slower run after run): flow_bench.py prints the probe."""
    os.sync()


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A private redis-server on 127.0.0.1:port, no persistence."""

    def __init__(self, base=None):
        self.base = Path(base) if base else _mkbase("sluice-redist-")
        self.port = free_port()
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.logfile = self.base / "redis.log"
        self.proc = None
        self.want_running = False

    def start(self):
        """Start (or restart) on the same port; returns once it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            self.want_running = True
            return
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--dir", str(self.base)],
                cwd=str(self.base), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_preexec(),
            )
        finally:
            log.close()
        self.want_running = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis exited at start:\n" + _log_tail(self.logfile))
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis did not answer PING:\n" + _log_tail(self.logfile))

    def ping(self):
        """True if redis answers PING (raw RESP over a socket; no client lib)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        """SIGTERM and wait."""
        self.want_running = False
        _stop_proc(self.proc, signal.SIGTERM, timeout=15)
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------- HTTP client


class Client:
    """Thin wrapper over requests for one API key: adds the Bearer header and
    a 30 s timeout; returns requests.Response objects unchanged."""

    # (base url, file id) of every file accepted with 202 while FAULTS
    accepted = []

    def __init__(self, base, key, tenant_id=None):
        self.base = base.rstrip("/")
        self.key = key
        self.tenant_id = tenant_id
        self.session = requests.Session()

    def request(self, method, path, **kw):
        url = path if path.startswith(("http://", "https://")) else self.base + path
        headers = {}
        if self.key:
            headers["Authorization"] = "Bearer " + self.key
        headers.update(kw.pop("headers", None) or {})
        headers = {k: v for k, v in headers.items() if v is not None}  # None removes
        kw.setdefault("timeout", DEFAULT_TIMEOUT)
        if not FAULTS:
            return self.session.request(method, url, headers=headers, **kw)
        return self._request_retrying(method, url, headers, kw)

    def _request_retrying(self, method, url, headers, kw):
        """FAULTS: retry 503s (replaying file bodies), then note accepted files."""
        rel = urllib.parse.urlsplit(url).path
        if (method == "POST" and _IDEMPOTENT_POSTS.match(rel)
                and not any(k.lower() == "idempotency-key" for k in headers)):
            headers["Idempotency-Key"] = "harness-" + secrets.token_hex(12)
        replayable = not hasattr(kw.get("data"), "__next__")
        for attempt in range(FAULT_RETRIES):
            for f in kw.get("files") or []:
                body = f[1][1] if isinstance(f, tuple) and isinstance(f[1], tuple) else None
                if hasattr(body, "seek"):
                    body.seek(0)
            r = self.session.request(method, url, headers=headers, **kw)
            if r.status_code != 503 or not replayable or attempt == FAULT_RETRIES - 1:
                break
            time.sleep(0.1)
        if r.status_code == 202 and method == "POST" and _IDEMPOTENT_POSTS.match(rel):
            try:
                body = r.json()
            except ValueError:
                body = None
            files = body.get("files") if isinstance(body, dict) else None
            if isinstance(body, dict) and files is None and "id" in body:
                files = [body]
            for f in files or []:
                if isinstance(f, dict) and "id" in f:
                    Client.accepted.append((self.base, f["id"]))
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def create_dataset(self, name="ds", schema=None):
        """POST /v1/datasets; asserts 201 and returns the dataset dict."""
        body = {"name": name}
        if schema is not None:
            body["record_schema"] = schema
        r = self.post("/v1/datasets", json=body)
        assert r.status_code == 201, "create_dataset: %d %s" % (r.status_code, r.text)
        return r.json()

    def upload(self, dataset_id, paths_or_tuples, headers=None, **kw):
        """Multipart POST /v1/datasets/{id}/files, one part named "file" per
        item. An item is a path (str/Path) or a tuple (filename, bytes) or
        (filename, bytes, content_type). A single item may be passed bare."""
        items = paths_or_tuples
        if isinstance(items, (str, os.PathLike)) or (
                isinstance(items, tuple) and len(items) in (2, 3)
                and isinstance(items[0], str) and isinstance(items[1], (bytes, bytearray))):
            items = [items]
        files, opened = [], []
        try:
            for it in items:
                if isinstance(it, tuple):
                    if len(it) == 2:
                        files.append(("file", (it[0], bytes(it[1]), "application/octet-stream")))
                    else:
                        files.append(("file", (it[0], bytes(it[1]), it[2])))
                else:
                    p = Path(it)
                    f = open(p, "rb")
                    opened.append(f)
                    files.append(("file", (p.name, f, "application/octet-stream")))
            return self.post("/v1/datasets/%s/files" % dataset_id, files=files,
                             headers=headers, **kw)
        finally:
            for f in opened:
                f.close()

    def wait_file(self, file_id, until=("done", "failed"), timeout=60.0, interval=0.2):
        """Poll GET /v1/files/{id} until status is in `until`; returns the file
        dict (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = self.get("/v1/files/%s" % file_id)
            if r.status_code == 200:
                last = r.json()
                if last.get("status") in until:
                    return last
            time.sleep(interval)
        raise AssertionError("file %s not %s after %.0fs; last: %r" % (file_id, until, timeout, last))


# ---------------------------------------------------------------- server

SANITIZER_PATTERNS = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|WARNING: ThreadSanitizer"
    r"|\.[ch]:\d+:\d+: runtime error:")

_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:", re.M)


class _Placeholders(dict):
    def __missing__(self, key):
        raise KeyError(key)


def fill_placeholders(text, values):
    """Fill {name} placeholders like str.format. YAML flow mappings use
    braces too, so when str.format chokes on them (unknown field, bad spec)
    only the known {name} tokens are replaced and every other brace is kept."""
    try:
        return text.format_map(_Placeholders(values))
    except (KeyError, ValueError, IndexError, AttributeError):
        out = text
        for k, v in values.items():
            out = out.replace("{%s}" % k, str(v))
        return out


def default_config(values, extra_yaml=""):
    """The harness's default YAML config. Top-level keys that extra_yaml
    defines replace the default's own (e.g. extra_yaml "services: ..."
    replaces the default services section)."""
    sections = {
        "listen": 'listen: "%s"\n' % values["listen"],
        "database_url": 'database_url: "%s"\n' % values["database_url"],
        "redis_url": 'redis_url: "%s"\n' % values["redis_url"],
        "admin_key": 'admin_key: "%s"\n' % values["admin_key"],
        "storage": values.get("storage_yaml") or  # s3front: SLUICE_TEST_STORAGE=s3
                   'storage: {backend: fs, path: "%s"}\n' % values["storage_path"],
        "services": 'services:\n  ocr: {command: ["tesseract", "{input}", "stdout"]}\n',
    }
    overridden = set(_TOP_KEY.findall(extra_yaml or ""))
    text = "".join(v for k, v in sections.items() if k not in overridden)
    if extra_yaml:
        text += extra_yaml if extra_yaml.endswith("\n") else extra_yaml + "\n"
    return text


class ServerStartError(AssertionError):
    pass


class Server:
    """One sluice process started from a config file. Restartable on the
    same port, config, database and storage."""

    def __init__(self, binary, config_text, config_path, log_path, port, admin_key,
                 database_url, storage_path, env, start_timeout=20.0, wait_path="/readyz"):
        self.binary = str(binary)
        self.config_text = config_text
        self.config_path = str(config_path)
        self.log_path = str(log_path)
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.admin_key = admin_key
        self.database_url = database_url
        self.storage_path = str(storage_path)
        self.env = env
        self.start_timeout = start_timeout
        # start() waits for GET wait_path == 200: /readyz by default (the
        # schema is migrated after the listener is up), "/healthz" for a
        # server started while Postgres is down.
        self.wait_path = wait_path
        self.proc = None
        # The S3 bucket its blobs are in when the factory gave it the shared
        # front's storage (SLUICE_TEST_STORAGE=s3), else None (fs at
        # storage_path). The blob helpers below read and write whichever.
        self.s3_bucket = None
        Path(self.config_path).write_text(config_text)

    # -- blob storage (fs at storage_path, or the shared S3 front's bucket)

    @property
    def storage_backend(self):
        return "s3" if self.s3_bucket is not None else "fs"

    def _s3(self):
        """The shared front's client for the blob helpers, made once
        (botocore clients are thread-safe)."""
        front = shared_s3front()
        if getattr(front, "blob_client", None) is None:
            front.blob_client = front.client()
        return front.blob_client

    def blob_path(self, key):
        """The file of `key` in fs storage (fs only: tests that need a path)."""
        assert self.s3_bucket is None, "blob_path: fs storage only"
        return Path(self.storage_path) / key

    def put_blob(self, key, data):
        """Store `data` (bytes) under `key`, as the server's backend would."""
        if self.s3_bucket is None:
            path = self.blob_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self._s3().put_object(Bucket=self.s3_bucket, Key=key, Body=data)

    def get_blob(self, key):
        """The bytes stored under `key`, or None if there is no such blob."""
        if self.s3_bucket is None:
            try:
                return self.blob_path(key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        from botocore.exceptions import ClientError
        try:
            return self._s3().get_object(Bucket=self.s3_bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def blob_exists(self, key):
        if self.s3_bucket is None:
            return self.blob_path(key).is_file()
        from botocore.exceptions import ClientError
        try:
            self._s3().head_object(Bucket=self.s3_bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def blob_keys(self, prefix=""):
        """Sorted keys of the stored blobs that start with `prefix` (the fs
        backend's .tmp directories are not blobs: see tmp_blobs)."""
        if self.s3_bucket is None:
            root = Path(self.storage_path)
            out = []
            for d, dirs, files in os.walk(root):
                dirs[:] = [x for x in dirs if x != ".tmp"]
                for f in files:
                    k = os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                    if k.startswith(prefix):
                        out.append(k)
            return sorted(out)
        out = []
        pages = self._s3().get_paginator("list_objects_v2").paginate(
            Bucket=self.s3_bucket, Prefix=prefix)
        for page in pages:
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def tmp_blobs(self):
        """Blobs being written: files in the fs backend's .tmp directory, or
        the bucket's multipart uploads neither completed nor aborted."""
        if self.s3_bucket is None:
            d = os.path.join(self.storage_path, ".tmp")
            return os.listdir(d) if os.path.isdir(d) else []
        return shared_s3front().pending_uploads(self.s3_bucket)

    # -- process control

    def start(self):
        """Start the process and wait for GET {wait_path} == 200 (default /readyz:
        the schema is migrated in the background after start)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not os.access(self.binary, os.X_OK):
            raise ServerStartError("sluice binary not found or not executable: %s "
                                   "(build it, or set SLUICE_BIN)" % self.binary)
        log = open(self.log_path, "ab")
        try:
            log.write(b"==== start %s --config %s\n" % (self.binary.encode(), self.config_path.encode()))
            log.flush()
            self.proc = subprocess.Popen(
                [self.binary, "--config", self.config_path],
                cwd=str(REPO), env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_preexec(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError("sluice exited with %s during start; log tail:\n%s"
                                       % (self.proc.returncode, _log_tail(self.log_path)))
            try:
                r = requests.get(self.url + self.wait_path, timeout=2)
                if r.status_code == 200:
                    return self
                if r.status_code == 404 and self.wait_path != "/healthz":
                    self.wait_path = "/healthz"  # no such endpoint: liveness only
            except requests.RequestException:
                pass
            time.sleep(0.1)
        code = self.proc.poll()
        self.kill()
        raise ServerStartError("sluice did not answer %s with 200 within %.0fs (exit %s); log tail:\n%s"
                               % (self.wait_path, self.start_timeout, code, _log_tail(self.log_path)))

    def stop(self, timeout=15.0):
        """SIGTERM and wait (SIGKILL to the process group after timeout).
        Returns the exit code. With the engine apart (the default) the
        process is a supervisor: it forwards the signal to the engine and
        HTTP processes and exits once they have."""
        rc = _stop_proc(self.proc, signal.SIGTERM, timeout=timeout, group=True)
        return rc

    def kill(self):
        """SIGKILL to the whole process group (supervisor, engine, HTTP) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc.pid)
        return _stop_proc(self.proc, signal.SIGKILL, timeout=10, group=True)

    def restart(self, wait_path=None):
        """Stop (gracefully) and start again with the same config/db/port;
        wait_path overrides what start() waits for (see __init__)."""
        self.stop()
        self.proc = None
        if wait_path is not None:
            self.wait_path = wait_path
        return self.start()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- introspection

    def children(self):
        """{pid: name} of the sluice process's children: "sluice-engine" and
        "sluice-http" with the engine apart; {} inline with one worker."""
        out = {}
        if not self.alive:
            return out
        try:
            kids = Path("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)).read_text()
        except OSError:
            return out
        for k in kids.split():
            try:
                out[int(k)] = Path("/proc/%s/comm" % k).read_text().strip()
            except OSError:
                pass
        return out

    def engine_pid(self):
        """The pid of the engine process now, or None (inline, or restarting)."""
        for pid, name in self.children().items():
            if name == "sluice-engine":
                return pid
        return None

    def http_pids(self):
        """The pids of the HTTP processes ([] inline with one worker)."""
        return sorted(p for p, n in self.children().items() if n == "sluice-http")

    def wait_engine(self, old_pid=None, timeout=30.0):
        """Waits until an engine process other than old_pid runs and /readyz
        says "engine": "ok"; returns its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.engine_pid()
            if pid is not None and pid != old_pid:
                try:
                    r = requests.get(self.url + "/readyz", timeout=2)
                    if r.json().get("engine") == "ok":
                        return pid
                except (requests.RequestException, ValueError):
                    pass
            time.sleep(0.05)
        raise AssertionError("no engine process (other than %s) after %.0fs" % (old_pid, timeout))

    def _status_kib(self, field):
        # The HTTP process when there is one apart: it is what serves (and buffers).
        pids = self.http_pids()
        with open("/proc/%d/status" % (pids[0] if pids else self.proc.pid)) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError("%s not in /proc/.../status" % field)

    def rss_kib(self):
        """Current resident set size (VmRSS) in KiB."""
        return self._status_kib("VmRSS")

    def peak_rss_kib(self):
        """Peak resident set size (VmHWM) in KiB."""
        return self._status_kib("VmHWM")

    def sql(self, query):
        """Runs query on the server's database with psql; returns its output
        (unaligned, tuples only), stripped. Fails the test when psql fails."""
        r = subprocess.run(
            [str(pg_bindir() / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
             "-d", self.database_url, "-c", query],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 0, "psql failed: %s\n%s" % (query, r.stderr)
        return r.stdout.strip()

    def durability(self):
        """Postgres's durability settings as the server's database sees them,
        one line for a bench's output: "fsync=on synchronous_commit=on ..."."""
        names = ("fsync", "synchronous_commit", "full_page_writes")
        vals = self.sql("SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) "
                        "FROM pg_settings WHERE name IN (%s)"
                        % ", ".join("'%s'" % n for n in names))
        return vals

    def log(self):
        """The full server log (stdout+stderr) so far."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def sanitizer_reports(self):
        """ASan/LSan/UBSan reports in the log: each matching line with the
        40 lines after it (the stack), so a CI log alone says where."""
        lines = self.log().splitlines()
        out = []
        for i, l in enumerate(lines):
            if SANITIZER_PATTERNS.search(l):
                out.append("\n".join(lines[i:i + 41]))
        return out

    # -- API helpers

    def admin(self):
        """A Client with the admin key."""
        return Client(self.url, self.admin_key)

    def create_tenant(self, name):
        """POST /v1/admin/tenants; asserts 201; returns a Client for it.
        Retries a 503 (database not reachable yet) for up to 10 s."""
        deadline = time.monotonic() + 10
        while True:
            r = requests.post(self.url + "/v1/admin/tenants", json={"name": name},
                              headers={"Authorization": "Bearer " + self.admin_key},
                              timeout=DEFAULT_TIMEOUT)
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 201, "create_tenant: %d %s" % (r.status_code, r.text)
        body = r.json()
        return Client(self.url, body["api_key"], body.get("id"))


def sluice_binary():
    """SLUICE_BIN (relative paths against the repo root) or REPO/build/sluice."""
    b = os.environ.get("SLUICE_BIN")
    if not b:
        return REPO / "build" / "sluice"
    p = Path(b)
    return p if p.is_absolute() else REPO / p


class ServerFactory:
    """Creates Server objects for one test and tears them all down."""

    def __init__(self, pg, redis, tmpdir):
        self.pg = pg
        self.redis = redis
        self.tmpdir = Path(tmpdir)
        self.servers = []
        self.own_storage = []

    def __call__(self, config=None, env=None, database_url=None, storage_path=None,
                 extra_yaml="", wait_path="/readyz"):
        """Start a server (see conftest.start_server). wait_path: what start
        waits for; pass "/healthz" when Postgres is deliberately down."""
        n = len(self.servers) + 1
        port = free_port()
        if database_url is None:
            database_url = self.pg.new_database()
        if storage_path is None:
            storage_path = self.tmpdir / ("blobs%d" % n)
            storage_path.mkdir(parents=True, exist_ok=True)
            self.own_storage.append(storage_path)
        admin_key = secrets.token_hex(16)
        values = {
            "listen": "127.0.0.1:%d" % port,
            "port": port,
            "database_url": database_url,
            "redis_url": self.redis.url,
            "admin_key": admin_key,
            "storage_path": str(storage_path),
            "repo": str(REPO),
            "tmp": str(self.tmpdir),
        }
        bucket = None
        if S3_STORAGE:  # s3front: the default config stores blobs in S3 (one
            # bucket per storage_path, so servers sharing storage share it)
            bucket = shared_s3front().bucket_for(storage_path)
            values["storage_yaml"] = shared_s3front().storage_yaml(bucket)
        else:  # a config of a test's own may say "{storage_yaml}" too
            values["storage_yaml"] = 'storage: {backend: fs, path: "%s"}\n' % storage_path
        if config is None:
            text = default_config(values, extra_yaml)
        else:
            text = fill_placeholders(config, values)
            if extra_yaml:
                text += "\n" + extra_yaml
        full_env = dict(os.environ)
        if FAULTS and full_env.get("SL_FAULT_SEED", "").isdigit():
            full_env["SL_FAULT_SEED"] = str(fault_seed(int(full_env["SL_FAULT_SEED"]), n))
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        srv = Server(
            binary=sluice_binary(), config_text=text,
            config_path=self.tmpdir / ("sluice%d.yaml" % n),
            log_path=self.tmpdir / ("sluice%d.log" % n),
            port=port, admin_key=admin_key, database_url=database_url,
            storage_path=storage_path, env=full_env,
            start_timeout=float(os.environ.get("SLUICE_START_TIMEOUT", "20")),
            wait_path=wait_path,
        )
        if bucket is not None and values["storage_yaml"] in text:
            srv.s3_bucket = bucket  # (a config of its own keeps its own storage)
        self.servers.append(srv)
        srv.start()
        return srv

    def teardown(self):
        """Stop every server (SIGTERM, then SIGKILL); returns sanitizer report
        lines found in their logs, as (server_index, line) pairs."""
        reports = []
        for i, s in enumerate(self.servers, 1):
            try:
                s.stop(timeout=float(os.environ.get("SLUICE_STOP_TIMEOUT", "15")))
            except Exception:  # noqa: BLE001 — keep tearing down the rest
                s.kill()
            reports += [(i, l) for l in s.sanitizer_reports()]
        return reports

    def lost_files(self, timeout=120.0):
        """FAULTS: the files these servers accepted with 202 that were lost:
        not done or failed within `timeout` (two leases and more: a commit
        whose answer was lost gives its lease back, but if that statement is
        lost too the run waits for its lease to lapse, 30 s, and it can happen
        twice to the same run), failed only because of an
        injected fault, or done by a record-making pipeline (ai_record, with
        no "no_text" note) without exactly one record version per such run
        (provenance: a re-process adds a version). Returns a list of strings (empty: none
        lost). Files the test deleted are not looked for."""
        problems = []
        for srv in self.servers:
            ids = [fid for base, fid in Client.accepted if base == srv.url.rstrip("/")]
            ids = [fid for fid in ids if re.fullmatch(r"[0-9a-f-]{36}", fid)]
            if not ids:
                continue
            dbname = urllib.parse.unquote(urllib.parse.urlsplit(srv.database_url).path.lstrip("/"))
            sql = (
                "SELECT f.id, sluice_file_status(f.id),"
                " (SELECT count(*) FROM records x WHERE x.file_id = f.id),"
                " (SELECT count(*) FROM runs r WHERE r.file_id = f.id AND r.state = 'succeeded'"
                "         AND r.pipeline = 'ai_record' AND r.note IS NULL),"
                " coalesce((SELECT string_agg(r.pipeline || '=' || r.state || ' ' ||"
                "   coalesce(r.error, ''), '; ' ORDER BY r.created_at) FROM runs r"
                "   WHERE r.file_id = f.id), '')"
                " FROM files f WHERE f.id IN (%s)" % ",".join("'%s'" % i for i in ids))
            deadline = time.monotonic() + timeout
            while True:
                rows = [l.split("|", 4) for l in self.pg.psql(sql, dbname=dbname).splitlines() if l]
                pending = [r for r in rows if r[1] not in ("done", "failed")]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for fid, status, nrec, record_run, runs in rows:
                if status not in ("done", "failed"):
                    problems.append("%s: still %s after %.0fs (%s)" % (fid, status, timeout, runs))
                elif status == "failed" and re.search(
                        r"fault injected|unavailable|connection lost", runs, re.I):
                    problems.append("%s: failed for an injected fault (%s)" % (fid, runs))
                elif record_run != "0" and nrec != record_run:  # provenance: one per run
                    problems.append("%s: ai_record succeeded with %s records (%s)"
                                    % (fid, nrec, runs))
        return problems

    def remove_storage(self):
        """Delete the blob dirs the factory made (big uploads add up)."""
        for d in self.own_storage:
            shutil.rmtree(d, ignore_errors=True)


def loop_lag(server):
    """The event loops' lag (core/looplag.h) from /metrics, per process:
    {"http": {...}, "engine": {...}} (no "engine" when the engine runs
    inline), each {"count": wake-ups, "over": {bound s: wake-ups later than
    it}, "max": the largest lag since start, s, or None without the gauge}.
    Subtract two readings' counts to see a phase of a bench (lag_summary)."""
    out = {}
    text = requests.get(server.url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if not line.startswith("sluice_event_loop_lag"):
            continue
        m = re.match(r'^(sluice_event_loop_lag_\w+?)(?:\{([^}]*)\})?\s+(\S+)$', line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        role = "engine" if 'role="engine"' in labels else "http"
        d = out.setdefault(role, {"count": 0, "le": {}, "max": None})
        if name == "sluice_event_loop_lag_seconds_count":
            d["count"] = value
        elif name == "sluice_event_loop_lag_max_seconds":
            d["max"] = value
        elif name == "sluice_event_loop_lag_seconds_bucket":
            le = re.search(r'(?:^|,)le="([^"]+)"', labels).group(1)
            if le != "+Inf":
                d["le"][float(le)] = value
    for d in out.values():
        d["over"] = {b: d["count"] - n for b, n in d.pop("le").items()}
    return out


def lag_summary(before, after):
    """One line per process: wake-ups between two loop_lag readings, how many
    were late by more than 10 and 50 ms, and the largest lag since start."""
    lines = []
    for role in sorted(after):
        a, b = after[role], before.get(role, {"count": 0, "over": {}})
        n = a["count"] - b["count"]
        late = {x: a["over"].get(x, 0) - b["over"].get(x, 0) for x in (0.01, 0.05)}
        worst = "%.1f ms" % (a["max"] * 1000) if a["max"] is not None else "n/a (no gauge)"
        lines.append("loop_lag %s: %d wake-ups, %d over 10 ms, %d over 50 ms; max since start %s"
                     % (role, n, late[0.01], late[0.05], worst))
    return lines


def fs_create_cost(directory, n=1000):
    """The CPU one empty file's creation costs in `directory` (microseconds,
    the mean of n, made in a fresh subdirectory that is left for the caller's
    tree to remove). Benches print it: on ext4 without a journal (these VMs'
    root filesystem) it is ~20 us on a quiet disk and grows to hundreds of
    microseconds while inodes deleted in the last six minutes lie in dirty
    inode-table blocks (sync_deletions; docs/internals/scheduler.md "stop 34"),
    and a bench's uploads create a file each."""
    d = Path(tempfile.mkdtemp(prefix="fs-probe-", dir=directory))
    c0 = time.process_time()
    for i in range(n):
        os.close(os.open(d / ("f%05d" % i), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    return (time.process_time() - c0) / n * 1e6


def print_pg_statements(pg, top=None):
    """Where Postgres's time went (SLUICE_PG_STATEMENTS=1): the top statements
    of every database by total execution time, nested ones included (top, or
    SLUICE_PG_STATEMENTS_TOP, or 15 of them)."""
    top = top or int(os.environ.get("SLUICE_PG_STATEMENTS_TOP") or 15)
    for db in pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'sl_t%'").split():
        pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=db)
        out = pg.psql(
            "SELECT calls, round(total_exec_time::numeric, 1), "
            "round((total_exec_time / calls)::numeric, 3), rows, "
            "regexp_replace(left(query, 90), '\\s+', ' ', 'g') "
            "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) ORDER BY total_exec_time DESC LIMIT %d" % top,
            dbname=db)
        print("pg_stat_statements of %s: calls | total ms | ms per call | rows | query" % db)
        for line in out.strip().splitlines():
            print("  " + line)
        out = pg.psql(
            "SELECT count(*), coalesce(sum(jit_functions), 0), round(coalesce(sum("
            "jit_generation_time + jit_inlining_time + jit_optimization_time + "
            "jit_emission_time), 0)::numeric, 1) FROM pg_stat_statements "
            "WHERE jit_functions > 0 AND dbid = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())", dbname=db)
        print("jit of %s: statements compiled | functions | ms compiling: %s"
              % (db, out.strip()))
        out = pg.psql(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
            "FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd > 0 "
            "ORDER BY n_tup_upd + n_tup_ins DESC LIMIT 8", dbname=db)
        print("tables of %s: name | inserted | updated | of them HOT | deleted" % db)
        for line in out.strip().splitlines():
            print("  " + line)
    # the whole cluster: WAL flushes are what a durable commit waits for
    out = pg.psql("SELECT (SELECT sum(xact_commit) FROM pg_stat_database), wal_records, "
                  "wal_fpi, pg_size_pretty(wal_bytes), wal_write, wal_sync FROM pg_stat_wal")
    print("cluster: commits | wal records | full-page images | wal bytes | wal writes | "
          "wal syncs: %s" % out.strip())


@contextlib.contextmanager
def local_stack(prefix="sluice-bench-"):
    """For scripts outside pytest (bench/): a private Postgres (durable: every
    commit flushed, Postgres's defaults) and Redis and a ServerFactory over
    them, all stopped and removed on exit. Yields (factory, tmpdir). With
    SLUICE_PG_STATEMENTS=1, prints where Postgres's time went at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    pg, redis = PgCluster(durable=True), RedisServer()
    factory = None
    try:
        pg.start()
        redis.start()
        factory = ServerFactory(pg, redis, tmp)
        yield factory, tmp
        if PG_STATEMENTS:
            print_pg_statements(pg)
        if PG_EXPLAIN_MS:
            keep = Path(tempfile.gettempdir()) / ("%spostgres.log" % prefix)
            shutil.copyfile(pg.logfile, keep)
            print("postgres log with the plans of statements over %s ms: %s"
                  % (PG_EXPLAIN_MS, keep))
    finally:
        if factory is not None:
            factory.teardown()
        redis.stop()
        pg.stop()
        redis.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
        pg.destroy()  # last: its sync_deletions covers every tree removed here


# ---------------------------------------------------------------- stand-ins

STANDINS = REPO / "tests" / "standins" / "standins.py"


class Standin:
    """One stand-in of tests/standins/standins.py (tika, textract, openai) on a
    free loopback port; `extra` are more command-line options."""

    def __init__(self, kind, *extra):
        self.kind = kind
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(STANDINS), kind, "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = ready_port(self.proc, "%s stand-in" % kind)
        self.url = "http://127.0.0.1:%d" % self.port

    def control(self, **kw):
        r = requests.post(self.url + "/_control", json=kw, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def stats(self):
        return requests.get(self.url + "/_stats", timeout=5).json()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def metric(server, name, **labels):
    """The value of one Prometheus sample of `server` (labels exactly), or None."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "{}")[1:-1].split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return None


# ---------------------------------------------------------------- S3 (s3front)
# s3rver (npm, tests/s3) behind tests/standins/s3front.py, which checks SigV4
# as S3 does. SLUICE_TEST_STORAGE=s3 makes every server the factory starts with
# the default config store its blobs there (one shared front for the session,
# a bucket per storage_path); tests reach blobs through Server.put_blob,
# get_blob, blob_exists, blob_keys and tmp_blobs, which use the bucket then.

S3FRONT = REPO / "tests" / "standins" / "s3front.py"
S3_STORAGE = os.environ.get("SLUICE_TEST_STORAGE", "fs") == "s3"
S3_KEY_ID, S3_SECRET, S3_REGION = "AKIDTEST", "secretTEST", "us-east-1"


class S3Front:
    """One s3front (and its s3rver child) on a free loopback port, its own
    temp dir (data/: s3rver's storage; spool/: bodies being hashed), with
    `buckets` created at start."""

    def __init__(self, buckets=("sluice",)):
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-s3-"))
        self.data = self.dir / "data"
        (self.dir / "spool").mkdir()
        argv = ["/usr/bin/python3", str(S3FRONT), "--port", "0",
                "--data", str(self.data), "--spool", str(self.dir / "spool"),
                "--key-id", S3_KEY_ID, "--secret", S3_SECRET, "--region", S3_REGION]
        for b in buckets:
            argv += ["--bucket", b]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, preexec_fn=_preexec())
        self.port = ready_port(self.proc, "s3front")
        self.url = "http://127.0.0.1:%d" % self.port
        self.buckets = set(buckets)

    def storage(self, bucket="sluice"):
        """The `storage:` mapping Sluice's S3 backend is configured with."""
        return {"backend": "s3", "endpoint": self.url, "bucket": bucket,
                "region": S3_REGION, "access_key_id": S3_KEY_ID,
                "secret_access_key": S3_SECRET, "path_style": True}

    def storage_yaml(self, bucket="sluice"):
        return ("storage: {backend: s3, endpoint: \"%s\", bucket: %s, region: %s, "
                "access_key_id: %s, secret_access_key: %s, path_style: true}\n"
                % (self.url, bucket, S3_REGION, S3_KEY_ID, S3_SECRET))

    def client(self):
        """A botocore S3 client (SigV4, path-style, no retries) for tests."""
        import botocore.session
        from botocore.config import Config
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.url, region_name=S3_REGION,
            aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}))

    def bucket_for(self, storage_path):
        """A bucket named after storage_path, created on first use."""
        import hashlib
        name = "sl-" + hashlib.sha1(str(storage_path).encode()).hexdigest()[:20]
        if name not in self.buckets:
            self.client().create_bucket(Bucket=name)
            self.buckets.add(name)
        return name

    def keys(self, bucket="sluice"):
        """Object keys stored in `bucket` (s3rver's files, read on disk)."""
        root = self.data / bucket
        out = []
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if "._S3rver_" not in x]
            for f in files:
                if f.endswith("._S3rver_object"):
                    out.append(os.path.relpath(os.path.join(d, f[:-len("._S3rver_object")]),
                                               root))
        return sorted(out)

    def pending_uploads(self, bucket="sluice"):
        """Multipart uploads not completed nor aborted, with their parts on disk."""
        d = self.data / bucket / "._S3rver_uploads"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def control(self, **kw):
        r = requests.post(self.url + "/_control", json=kw, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def stats(self):
        return requests.get(self.url + "/_stats", timeout=5).json()

    def rss_kib(self):
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def stop(self):
        _stop_proc(self.proc, timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)


_shared_s3front = None


def shared_s3front():
    """The session's S3Front for SLUICE_TEST_STORAGE=s3 (started on first use,
    stopped when pytest exits)."""
    global _shared_s3front
    if _shared_s3front is None:
        import atexit
        _shared_s3front = S3Front()
        atexit.register(_shared_s3front.stop)
    return _shared_s3front
