"""`sluice upload`: the command-line uploader (cli/upload.c).

Runs the built binary against a harness server: walks a folder (with a nested
dir and a hidden file), uploads in batches, follows until every file is final
and prints a summary whose counts must equal what the API says.
"""

import os
import re
import shutil
import subprocess
import time

import pytest

from sluice_harness import free_port, sluice_binary


def run_upload(args, env=None, timeout=300):
    full_env = dict(os.environ)
    full_env.pop("SLUICE_URL", None)
    full_env.pop("SLUICE_API_KEY", None)
    full_env.update(env or {})
    t0 = time.monotonic()
    r = subprocess.run([str(sluice_binary()), "upload"] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=full_env, timeout=timeout)
    r.elapsed = time.monotonic() - t0
    # The sanitizer build's reports go to the uploader's own stderr.
    assert "runtime error:" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr
    print("exit", r.returncode, "\n--- stdout\n" + r.stdout + "--- stderr\n" + r.stderr[-3000:])
    return r


@pytest.fixture
def folder(tmp_path, samples):
    """samples/* plus nested/deeper/{notes-copy.txt, invoice-copy.pdf} and a
    hidden file that must not be uploaded."""
    d = tmp_path / "upload-me"
    d.mkdir()
    for p in samples.iterdir():
        if p.is_file():
            shutil.copy(p, d / p.name)
    nested = d / "nested" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(samples / "notes.txt", nested / "notes-copy.txt")
    shutil.copy(samples / "invoice-acme.pdf", nested / "invoice-copy.pdf")
    (d / ".hidden").write_text("not me")
    (d / "empty-dir").mkdir()
    return d


def expected_names(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def summary_counts(stdout):
    m = re.search(r"^summary: (\d+) files, (\d+) done, (\d+) failed, (\d+) processing$",
                  stdout, re.M)
    assert m, "no summary line in:\n" + stdout
    return tuple(int(x) for x in m.groups())


@pytest.mark.timeout(400)
def test_upload_folder_follows_until_final(server, tenant, folder):
    ds = tenant.create_dataset("cli")
    names = expected_names(folder)
    assert len(names) == 10
    r = run_upload(["--url", server.url, "--key", tenant.key, "--dataset", ds["id"],
                    "--batch", "3", folder])

    # Every file is listed, once.
    files = tenant.get("/v1/datasets/%s/files?limit=1000" % ds["id"]).json()["files"]
    assert sorted(f["name"] for f in files) == names
    statuses = {f["id"]: f["status"] for f in files}
    assert set(statuses.values()) <= {"done", "failed"}, statuses

    # The summary's counts are the API's.
    ndone = sum(1 for s in statuses.values() if s == "done")
    nfailed = sum(1 for s in statuses.values() if s == "failed")
    assert summary_counts(r.stdout) == (10, ndone, nfailed, 0)
    assert nfailed >= 1  # truncated.pdf cannot be read
    assert r.returncode == 1, "some files failed: exit 1"

    # The failures are listed with their local path, id and error.
    failed_section = r.stdout.split("failed:\n", 1)[1]
    trunc = next(f for f in files if f["name"] == "truncated.pdf")
    line = next(l for l in failed_section.splitlines() if "truncated.pdf" in l)
    assert str(folder / "truncated.pdf") in line and trunc["id"] in line
    full = tenant.get("/v1/files/%s" % trunc["id"]).json()
    errs = [run["error"] for run in full["runs"] if run["state"] == "failed"]
    assert errs and all(e in line for e in errs), (line, errs)
    for f in files:
        if f["status"] == "done":
            assert f["id"] not in failed_section

    # Progress on stderr, as plain lines (not a TTY): four batches of <= 3.
    assert "uploaded 10/10 files" in r.stderr
    assert len(re.findall(r"uploaded \d+/10 files", r.stderr)) == 4
    assert "\r" not in r.stderr
    assert "following the dataset's live events" in r.stderr  # SSE, not polling
    assert re.search(r"^elapsed: \d+\.\d s", r.stdout, re.M)


def test_upload_no_follow_with_env(server, tenant, samples):
    ds = tenant.create_dataset("cli-env")
    r = run_upload(["--dataset", ds["id"], "--no-follow", samples / "notes.txt",
                    samples / "invoice-acme.pdf"],
                   env={"SLUICE_URL": server.url + "/", "SLUICE_API_KEY": tenant.key})
    assert r.returncode == 0
    assert "summary: 2 files, not followed (--no-follow)" in r.stdout
    files = tenant.get("/v1/datasets/%s/files" % ds["id"]).json()["files"]
    assert sorted(f["name"] for f in files) == ["invoice-acme.pdf", "notes.txt"]


def test_upload_all_done_exits_zero(server, tenant, samples):
    ds = tenant.create_dataset("cli-ok")
    r = run_upload(["--url", server.url, "--key", tenant.key, "--dataset", ds["id"],
                    samples / "notes.txt", samples / "empty.txt"])
    assert r.returncode == 0
    assert summary_counts(r.stdout) == (2, 2, 0, 0)
    assert "failed:" not in r.stdout


def test_upload_usage_and_connection_errors(server, tenant, samples, tmp_path):
    ds = tenant.create_dataset("cli-err")
    base = ["--url", server.url, "--key", tenant.key]
    cases = [
        [],                                                       # nothing at all
        base + [samples / "notes.txt"],                           # no --dataset
        base + ["--dataset", ds["id"]],                           # no files
        base + ["--dataset", ds["id"], tmp_path / "missing.pdf"], # a path that isn't there
        base + ["--dataset", ds["id"], "--batch", "0", samples / "notes.txt"],
        base + ["--dataset", ds["id"], "--bogus", samples / "notes.txt"],
        ["--url", server.url, "--key", "sk_wrong", "--dataset", ds["id"], samples / "notes.txt"],
        base + ["--dataset", "00000000-0000-4000-8000-000000000000", samples / "notes.txt"],
        ["--url", "http://127.0.0.1:%d" % free_port(), "--key", tenant.key,
         "--dataset", ds["id"], samples / "notes.txt"],          # nobody listening
    ]
    for args in cases:
        r = run_upload(args, timeout=60)
        assert r.returncode == 2, args
        assert r.stderr.strip(), args
    # A missing path is noticed before anything is sent.
    r = run_upload(base + ["--dataset", ds["id"], samples / "notes.txt", tmp_path / "nope"])
    assert r.returncode == 2
    assert tenant.get("/v1/datasets/%s/files" % ds["id"]).json()["files"] == []
    r = run_upload(["--help"])
    assert r.returncode == 0 and "usage: sluice upload" in r.stdout


def test_upload_timeout_exit_3(start_server, samples):
    # An OCR that takes 30 s keeps the scanned PDF processing (it has no text
    # layer, so ai_record goes tika -> ocr); follow gives up after 1 s.
    server = start_server(extra_yaml='services:\n  ocr: {command: ["sleep", "30"]}\n')
    tenant = server.create_tenant("cli-timeout")
    ds = tenant.create_dataset("cli-timeout")
    r = run_upload(["--url", server.url, "--key", tenant.key, "--dataset", ds["id"],
                    "--timeout", "1", samples / "scanned-letter.pdf"])
    assert r.returncode == 3
    assert summary_counts(r.stdout) == (1, 0, 0, 1)
    assert "still processing:" in r.stdout
    assert r.elapsed < 20
