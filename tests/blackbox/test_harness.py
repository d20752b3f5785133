"""Tests of the black-box harness itself: private Postgres and Redis come up,
every server gets a fresh database, restart keeps the same socket/port, and
(server_smoke) a sluice server answers /healthz."""

import os
import socket
import subprocess

import pytest
import requests

from sluice_harness import S3_STORAGE, default_config, fill_placeholders, pg_bindir


def psql(url, sql):
    r = subprocess.run([str(pg_bindir() / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pg_new_database_is_fresh_and_reachable(pg):
    a = pg.new_database()
    b = pg.new_database()
    assert a != b
    assert a.startswith("postgresql:///") and ("host=%s" % pg.sockdir) in a and ("port=%d" % pg.port) in a
    assert psql(a, "SELECT 1") == "1"
    psql(a, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    assert psql(a, "SELECT x FROM t") == "42"
    # b is a different, empty database
    assert psql(b, "SELECT count(*) FROM pg_tables WHERE tablename = 't'") == "0"
    assert psql(b, "SELECT current_database()") != psql(a, "SELECT current_database()")


def test_pg_restart_same_socket_and_port(pg):
    url = pg.new_database()
    psql(url, "CREATE TABLE keep (x int); INSERT INTO keep VALUES (7)")
    sock, port = pg.sockdir, pg.port
    pg.stop()
    assert not pg.running
    r = subprocess.run([str(pg_bindir() / "psql"), "-XAtq", url, "-c", "SELECT 1"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode != 0
    pg.start()
    assert (pg.sockdir, pg.port) == (sock, port)
    assert psql(url, "SELECT x FROM keep") == "7"


def redis_cli(port, *args):
    r = subprocess.run(["redis-cli", "-p", str(port), *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    return r.returncode, r.stdout.strip()


def test_redis_up_and_restartable(redis):
    assert redis.url == "redis://127.0.0.1:%d/0" % redis.port
    assert redis_cli(redis.port, "ping") == (0, "PONG")
    redis_cli(redis.port, "set", "k", "v")
    assert redis_cli(redis.port, "get", "k") == (0, "v")
    redis.stop()
    assert not redis.ping()
    redis.start()
    assert redis_cli(redis.port, "ping") == (0, "PONG")
    # no persistence: a restart is empty
    assert redis_cli(redis.port, "get", "k") == (0, "")


def test_services_are_restored_after_a_test_that_left_them_down(pg, redis):
    # The previous test restarted redis itself; here we leave both running and
    # just check the autouse restore fixture has nothing to do.
    assert pg.running and redis.running


def test_samples_dir(samples):
    assert samples.is_dir()
    assert any(samples.iterdir())


def test_config_placeholders():
    values = {"listen": "127.0.0.1:1", "database_url": "postgresql:///x", "redis_url": "redis://r",
              "admin_key": "k", "storage_path": "/s"}
    # plain str.format style, with escaped braces
    assert fill_placeholders("listen: {listen}\nstorage: {{backend: fs}}\n", values) == \
        "listen: 127.0.0.1:1\nstorage: {backend: fs}\n"
    # YAML flow mappings left unescaped still work
    out = fill_placeholders('storage: {backend: fs, path: "{storage_path}"}\n'
                            'services: {ocr: {command: ["tesseract", "{input}", "stdout"]}}\n', values)
    assert 'path: "/s"' in out and '"{input}"' in out
    # extra_yaml top-level keys replace the default's
    cfg = default_config(values, "services:\n  tika: {url: \"http://127.0.0.1:9\"}\nlimits: {max_files_per_request: 2}\n")
    assert cfg.count("services:") == 1 and "tika" in cfg and "tesseract" not in cfg
    assert "limits: {max_files_per_request: 2}" in cfg and 'listen: "127.0.0.1:1"' in cfg


def test_fs_create_cost_creates_its_files_in_a_subdirectory(tmp_path):
    """The benches' disk probe: n files made, in a fresh subdirectory of the
    directory given (removed with the caller's tree), and a CPU time each."""
    from sluice_harness import fs_create_cost
    us = fs_create_cost(tmp_path, n=50)
    (sub,) = list(tmp_path.iterdir())
    assert sub.name.startswith("fs-probe-") and len(list(sub.iterdir())) == 50
    assert 0 <= us < 1e6, us


def test_free_ports_are_distinct():
    from sluice_harness import free_port
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for p in ports:
        # held back (TIME_WAIT) from a bind without SO_REUSEADDR, as from
        # other processes' port-0 binds; free for the servers, which set it
        s = socket.socket()
        with pytest.raises(OSError):
            s.bind(("127.0.0.1", p))
        s.close()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        s.listen(1)
        s.close()


@pytest.mark.server_smoke
def test_server_smoke(start_server, pg):
    srv = start_server()
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200
    assert srv.database_url.startswith("postgresql:///") and srv.alive
    assert srv.rss_kib() > 0 and srv.peak_rss_kib() >= srv.rss_kib() // 2
    # a second server gets its own fresh database and port
    srv2 = start_server()
    assert srv2.database_url != srv.database_url and srv2.port != srv.port
    srv2.restart()
    assert requests.get(srv2.url + "/healthz", timeout=5).status_code == 200
    srv2.kill()
    assert not srv2.alive
    assert os.path.exists(srv.config_path) and "==== start" in srv.log()


def test_blob_helpers_reach_the_servers_storage(start_server):
    """Server.put_blob/get_blob/blob_exists/blob_keys see the storage the
    server itself uses: the fs folder, or its bucket under SLUICE_TEST_STORAGE=s3
    (then nothing is written under storage_path)."""
    srv = start_server()
    assert srv.storage_backend == ("s3" if S3_STORAGE else "fs")
    t = srv.create_tenant("blobs")
    ds = t.create_dataset("d")["id"]
    r = t.upload(ds, [("a.txt", b"uploaded bytes\n")])
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    [key] = srv.blob_keys("files/")
    assert key.startswith("files/") and srv.blob_exists(key)
    assert srv.get_blob(key) == b"uploaded bytes\n"
    assert srv.get_blob(key + "-none") is None and not srv.blob_exists(key + "-none")
    # a blob put here is what the server serves
    srv.put_blob(key, b"replaced\n")
    assert t.get("/v1/files/%s/content" % fid).content == b"replaced\n"
    srv.put_blob("other/x", b"x")
    assert srv.blob_keys("other/") == ["other/x"] and srv.blob_keys("files/") == [key]
    on_disk = [f for _, _, fs in os.walk(srv.storage_path) for f in fs]
    assert bool(on_disk) == (not S3_STORAGE), on_disk
