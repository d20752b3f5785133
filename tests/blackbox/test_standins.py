"""The stand-in services themselves (tests/standins/standins.py): each speaks
its real protocol on the real samples, and each /_control mode does what the
pipeline tests rely on. No Sluice server is needed.
"""
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "standins" / "standins.py"
SAMPLES = Path(os.environ.get("SLUICE_SAMPLES") or (REPO.parent / "shared" / "samples"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Standin:
    def __init__(self, kind, *extra):
        self.kind = kind
        self.port = _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(STANDINS), kind, "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), "%s stand-in did not start: %r" % (kind, line)
        assert ("port=%d" % self.port) in line

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


@pytest.fixture
def standin():
    made = []

    def start(kind, *extra):
        s = Standin(kind, *extra)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


@pytest.fixture(scope="module")
def samples():
    if not SAMPLES.is_dir():
        pytest.fail("samples dir not found: %s (set SLUICE_SAMPLES)" % SAMPLES, pytrace=False)
    return SAMPLES


def _tika_put(t, path, ctype, timeout=30):
    return requests.put(t.url + "/tika", data=Path(path).read_bytes(), timeout=timeout,
                        headers={"Accept": "text/plain", "Content-Type": ctype})


# A header that looks like SigV4 (the stand-in checks its shape without --secret).
FAKE_AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/textract/aws4_request, "
             "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "ab" * 32)


def _textract_headers(auth=FAKE_AUTH, target="Textract.DetectDocumentText"):
    h = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
    if auth:
        h["Authorization"] = auth
        h["X-Amz-Date"] = "20260101T000000Z"
    return h


def _textract_body(path):
    import base64
    return json.dumps({"Document": {"Bytes": base64.b64encode(Path(path).read_bytes()).decode()}})


def _lines(answer):
    return [b["Text"] for b in answer["Blocks"] if b["BlockType"] == "LINE"]


# ------------------------------------------------------------------ tika

def test_tika_reads_a_text_layer_like_tika(standin, samples):
    t = standin("tika")
    r = _tika_put(t, samples / "invoice-acme.pdf", "application/pdf")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "INV-2026-0042" in r.text and "Total due: 185.52 EUR" in r.text

    # a scan and a photo have no text: 200 with an empty body, as Tika answers
    for name, ctype in (("scanned-letter.pdf", "application/pdf"), ("photo.jpg", "image/jpeg")):
        r = _tika_put(t, samples / name, ctype)
        assert (r.status_code, r.content) == (200, b""), name

    # text as it is
    r = _tika_put(t, samples / "notes.txt", "text/plain; charset=utf-8")
    assert r.status_code == 200 and r.content == (samples / "notes.txt").read_bytes()

    # a damaged PDF is a TikaException: 422
    r = _tika_put(t, samples / "truncated.pdf", "application/pdf")
    assert r.status_code == 422 and "TikaException" in r.text

    st = t.stats()
    assert st["requests"] == 5 and st["by_path"] == {"/tika": 5}
    assert st["by_status"] == {"200": 4, "422": 1}
    assert len(st["timestamps"]) == 5 and st["max_in_flight"] >= 1
    assert st["last"]["headers"]["content-type"] == "application/pdf"


# ------------------------------------------------------------------ textract

def test_textract_rejects_unsigned_requests(standin, samples):
    x = standin("textract")
    r = requests.post(x.url + "/", data=_textract_body(samples / "scanned-letter.jpg"),
                      headers=_textract_headers(auth=None), timeout=30)
    assert r.status_code == 403
    assert r.json()["__type"] == "MissingAuthenticationTokenException"

    # signed for another service
    bad = FAKE_AUTH.replace("/textract/", "/s3/")
    r = requests.post(x.url + "/", data=_textract_body(samples / "scanned-letter.jpg"),
                      headers=_textract_headers(auth=bad), timeout=30)
    assert r.status_code == 403 and r.json()["__type"] == "InvalidSignatureException"


def test_textract_detects_lines_of_a_scan(standin, samples):
    x = standin("textract")
    for name in ("scanned-letter.jpg", "scanned-letter.pdf"):
        r = requests.post(x.url + "/", data=_textract_body(samples / name),
                          headers=_textract_headers(), timeout=60)
        assert r.status_code == 200, r.text
        doc = r.json()
        lines = _lines(doc)
        assert lines[0] == "Notice of Delivery", name
        assert any("DLV-77813" in l for l in lines), name
        assert doc["DocumentMetadata"] == {"Pages": 1}
        kinds = {b["BlockType"] for b in doc["Blocks"]}
        assert kinds == {"PAGE", "LINE", "WORD"}       # a client must pick the LINEs


def test_textract_protocol_errors(standin, samples):
    x = standin("textract")
    r = requests.post(x.url + "/", data=_textract_body(samples / "scanned-letter.jpg"),
                      headers=_textract_headers(target="Textract.AnalyzeDocument"), timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "UnknownOperationException"
    r = requests.post(x.url + "/", data=_textract_body(samples / "notes.txt"),
                      headers=_textract_headers(), timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "UnsupportedDocumentException"
    r = requests.post(x.url + "/", data=_textract_body(samples / "truncated.pdf"),
                      headers=_textract_headers(), timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "BadDocumentException"
    r = requests.post(x.url + "/", data='{"Document": {"Bytes": "***"}}',
                      headers=_textract_headers(), timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "InvalidParameterException"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_textract_verifies_a_real_sigv4_signature(standin, samples, tmp_path):
    """With --secret the signature is checked: curl's --aws-sigv4 (the same libcurl
    code the server signs with) passes, a wrong secret does not."""
    x = standin("textract", "--secret", "secretTEST")
    body = tmp_path / "body.json"
    body.write_text(_textract_body(samples / "scanned-letter.jpg"))

    def call(secret):
        out = subprocess.run(
            ["curl", "-s", "-o", str(tmp_path / "out.json"), "-w", "%{http_code}",
             "--aws-sigv4", "aws:amz:us-east-1:textract", "--user", "AKIDTEST:" + secret,
             "-X", "POST", "-H", "Content-Type: application/x-amz-json-1.1",
             "-H", "X-Amz-Target: Textract.DetectDocumentText",
             "--data-binary", "@" + str(body), x.url + "/"],
            capture_output=True, text=True, timeout=60)
        return out.stdout, json.loads((tmp_path / "out.json").read_text())

    status, doc = call("secretTEST")
    assert status == "200", doc
    assert "Reference: DLV-77813" in _lines(doc)
    status, doc = call("wrong")
    assert status == "403" and doc["__type"] == "InvalidSignatureException"
    # a fake-looking header is no longer enough
    r = requests.post(x.url + "/", data=body.read_text(), headers=_textract_headers(), timeout=30)
    assert r.status_code == 403


# ------------------------------------------------------------------ openai

STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": ["string", "null"]},
        "amount": {"type": ["number", "null"]},
        "paid": {"type": ["boolean", "null"]},
        "count": {"type": ["integer", "null"]},
        "kind": {"type": ["string", "null"], "enum": ["invoice", "letter", None]},
    },
    "required": ["amount", "count", "invoice_number", "kind", "paid"],
    "additionalProperties": False,
}


def _chat(o, text, schema, strict=True, key="sk-test", path="/v1/chat/completions"):
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "extract"},
                         {"role": "user", "content": text}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "record", "strict": strict,
                                                "schema": schema}}}
    headers = {"Authorization": "Bearer " + key} if key else {}
    return requests.post(o.url + path, json=body, headers=headers, timeout=30)


def test_openai_answers_json_conforming_to_the_schema(standin, samples):
    o = standin("openai")
    text = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8",
                           str(samples / "invoice-acme.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    r = _chat(o, text, STRICT_SCHEMA)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "chat.completion" and doc["model"] == "gpt-4o-mini"
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"]["total_tokens"] == doc["usage"]["prompt_tokens"] + doc["usage"]["completion_tokens"]
    rec = json.loads(doc["choices"][0]["message"]["content"])
    assert set(rec) == set(STRICT_SCHEMA["properties"])
    assert rec["invoice_number"] == "INV-2026-0042"        # found in the user message
    assert rec["amount"] == pytest.approx(185.52)
    assert rec["paid"] is False and isinstance(rec["count"], int) and rec["kind"] == "invoice"

    # any prefix before /chat/completions; a non-strict schema is taken as it is
    loose = {"type": "object", "properties": {"title": {"type": "string"}}}
    r = _chat(o, "Hello\nworld", loose, strict=False, path="/openai/deployments/x/chat/completions")
    assert r.status_code == 200
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"title": "Hello"}


def test_openai_refuses_bad_requests_like_openai(standin):
    o = standin("openai")
    r = _chat(o, "x", STRICT_SCHEMA, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"

    r = requests.post(o.url + "/v1/chat/completions", headers={"Authorization": "Bearer k"},
                      json={"model": "m", "messages": [{"role": "user", "content": "x"}],
                            "response_format": {"type": "json_object"}}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"

    r = _chat(o, "x", {"type": "object"})                     # no properties
    assert r.status_code == 400 and "properties" in r.json()["error"]["message"]

    nullable_root = dict(STRICT_SCHEMA, type=["object", "null"])  # OpenAI: root a plain object
    r = _chat(o, "x", nullable_root)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json_schema"

    not_strict = {"type": "object", "properties": {"a": {"type": "string"}}}
    r = _chat(o, "x", not_strict, strict=True)                 # strict rules broken
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json_schema"


# ------------------------------------------------------------------ control modes

def test_mode_fail_answers_500_in_the_service_dialect(standin, samples):
    t, x, o = standin("tika"), standin("textract"), standin("openai")
    for s in (t, x, o):
        s.control(mode="fail")
    assert _tika_put(t, samples / "notes.txt", "text/plain").status_code == 500
    r = requests.post(x.url + "/", data=_textract_body(samples / "scanned-letter.jpg"),
                      headers=_textract_headers(), timeout=30)
    assert r.status_code == 500 and r.json()["__type"] == "InternalServerError"
    r = _chat(o, "x", STRICT_SCHEMA)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


def test_mode_stall_times_out_a_client_and_control_still_works(standin, samples):
    t = standin("tika")
    t.control(mode="stall")
    start = time.time()
    with pytest.raises(requests.exceptions.Timeout):
        _tika_put(t, samples / "notes.txt", "text/plain", timeout=1)
    assert time.time() - start < 5
    assert t.stats()["in_flight"] == 1              # still held by the stand-in
    t.control(mode="ok")
    assert _tika_put(t, samples / "notes.txt", "text/plain").status_code == 200


def test_mode_rate_limit_answers_429_with_retry_after(standin, samples):
    o = standin("openai")
    o.control(mode="rate_limit", retry_after=7)
    r = _chat(o, "x", STRICT_SCHEMA)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_mode_refuse_drops_connections_and_recovers(standin, samples):
    x = standin("textract")
    x.control(mode="refuse")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(x.url + "/", data=_textract_body(samples / "scanned-letter.jpg"),
                      headers=_textract_headers(), timeout=10)
    assert x.stats()["requests"] == 0               # a refused call never reached the service
    x.control(mode="ok")
    r = requests.post(x.url + "/", data=_textract_body(samples / "scanned-letter.jpg"),
                      headers=_textract_headers(), timeout=60)
    assert r.status_code == 200


def test_mode_hard_refuse_closes_the_listening_socket(standin, samples):
    t = standin("tika")
    t.control(mode="refuse", hard=True, duration_ms=1500)
    with pytest.raises(requests.exceptions.ConnectionError) as e:
        _tika_put(t, samples / "notes.txt", "text/plain", timeout=5)
    assert "refused" in str(e.value).lower()
    end = time.time() + 10
    while True:
        try:
            r = _tika_put(t, samples / "notes.txt", "text/plain", timeout=5)
            break
        except requests.exceptions.ConnectionError:
            assert time.time() < end, "listener never reopened"
            time.sleep(0.2)
    assert r.status_code == 200


def test_count_applies_the_mode_to_the_next_n_requests_only(standin, samples):
    t = standin("tika")
    t.control(mode="fail", count=2)
    codes = [_tika_put(t, samples / "notes.txt", "text/plain").status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    t.control(mode="refuse", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        _tika_put(t, samples / "notes.txt", "text/plain", timeout=5)
    assert _tika_put(t, samples / "notes.txt", "text/plain").status_code == 200
    assert t.stats()["mode"] == "ok"


def test_delay_stats_and_reset(standin, samples):
    t = standin("tika")
    t.control(mode="ok", delay_ms=400)
    results = []

    def put():
        results.append(_tika_put(t, samples / "notes.txt", "text/plain").status_code)

    start = time.time()
    threads = [threading.Thread(target=put) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [200] * 4
    assert 0.4 <= time.time() - start < 3            # concurrent, each delayed
    st = t.stats()
    assert st["requests"] == 4 and st["max_in_flight"] >= 2 and st["in_flight"] == 0
    assert all(b >= a for a, b in zip(st["timestamps"], st["timestamps"][1:]))

    r = requests.post(t.url + "/_reset", timeout=5)
    assert r.status_code == 200
    st = t.stats()
    assert (st["requests"], st["by_path"], st["max_in_flight"], st["timestamps"]) == (0, {}, 0, [])
    start = time.time()
    assert _tika_put(t, samples / "notes.txt", "text/plain").status_code == 200
    assert time.time() - start < 0.4                 # the delay went with the reset


def test_control_rejects_bad_input(standin):
    t = standin("tika")
    for body in ({"mode": "explode"}, {"mode": "fail", "count": 0}, {"delay_ms": -1}):
        r = requests.post(t.url + "/_control", json=body, timeout=5)
        assert r.status_code == 400, body
    assert requests.get(t.url + "/_nothing", timeout=5).status_code == 404
