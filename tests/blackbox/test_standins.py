"""The stand-in services themselves (tests/standins/standins.py): each speaks
its real protocol on the real samples, refuses what the real service refuses
(each rule with a request that breaks it, and one done right), and each
/_control mode does what the pipeline tests rely on. No Sluice server is needed.
"""
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from sluice_harness import REPO, Standin

SAMPLES = Path(os.environ.get("SLUICE_SAMPLES") or (REPO.parent / "shared" / "samples"))


@pytest.fixture
def standin(standins):
    return standins


@pytest.fixture(scope="module")
def shared_openai():
    """One openai stand-in for a module's table-driven tests."""
    s = Standin("openai")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def samples():
    if not SAMPLES.is_dir():
        pytest.fail("samples dir not found: %s (set SLUICE_SAMPLES)" % SAMPLES, pytrace=False)
    return SAMPLES


def _tika_put(t, path, ctype, timeout=30):
    return requests.put(t.url + "/tika", data=Path(path).read_bytes(), timeout=timeout,
                        headers={"Accept": "text/plain", "Content-Type": ctype})


# A header that only looks like SigV4: the stand-in refuses it (for the modes,
# which answer before the signature is checked).
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

# The credentials the textract stand-in verifies by default (the ones the
# pipeline tests give Sluice).
KEY_ID, SECRET, REGION = "AKIDTEST", "secretTEST", "us-east-1"
REFUSED_SIG = "The request signature we calculated does not match the signature you provided"


class _SignEveryHeader(SigV4Auth):
    """botocore's signer, but signing every header it is given, Expect
    included (botocore itself never signs Expect; libcurl did)."""

    def headers_to_sign(self, request):
        hm = HTTPHeaders()
        for name, value in request.headers.items():
            hm[name.lower()] = value
        if "host" not in hm:
            hm["host"] = urlsplit(request.url).netloc
        return hm


class _SignWithoutHost(SigV4Auth):
    def headers_to_sign(self, request):
        hm = super().headers_to_sign(request)
        del hm["host"]
        return hm


def _sign(x, body, headers=None, signer=SigV4Auth, key_id=KEY_ID, secret=SECRET,
          region=REGION, service="textract", at=None):
    """A prepared botocore request to the stand-in, SigV4-signed at time `at`
    (epoch seconds, default now), as botocore's add_auth does it."""
    h = {"Content-Type": "application/x-amz-json-1.1",
         "X-Amz-Target": "Textract.DetectDocumentText"}
    h.update(headers or {})
    req = AWSRequest(method="POST", url=x.url + "/", data=body, headers=h)
    auth = signer(Credentials(key_id, secret), service, region)
    req.context["timestamp"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at or time.time()))
    auth._modify_request_before_signing(req)
    canonical = auth.canonical_request(req)
    auth._inject_signature_to_request(
        req, auth.signature(auth.string_to_sign(req, canonical), req))
    return req.prepare()


def _send(x, prepared, drop=(), body=None, change=None, timeout=60):
    """Sends a prepared request by hand (http.client), minus the headers in
    `drop`, with `change` applied to the headers and `body` instead of the
    signed one. Returns (status, decoded JSON answer)."""
    body = prepared.body if body is None else body
    headers = {k: v for k, v in prepared.headers.items() if k.lower() not in drop}
    headers.update(change or {})
    headers["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection("127.0.0.1", x.port, timeout=timeout)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _body_of(path):
    return _textract_body(path).encode()


def test_textract_accepts_a_botocore_signed_request_and_ocrs_it(standin, samples):
    x = standin("textract")
    for name in ("scanned-letter.jpg", "scanned-letter.pdf"):
        status, doc = _send(x, _sign(x, _body_of(samples / name)))
        assert status == 200, doc
        lines = _lines(doc)
        assert lines[0] == "Notice of Delivery", name
        assert any("DLV-77813" in l for l in lines), name
        assert doc["DocumentMetadata"] == {"Pages": 1}
        kinds = {b["BlockType"] for b in doc["Blocks"]}
        assert kinds == {"PAGE", "LINE", "WORD"}       # a client must pick the LINEs
    # an Expect header that is signed AND sent is fine (the stand-in answers
    # 100 Continue like AWS)
    status, doc = _send(x, _sign(x, _body_of(samples / "scanned-letter.jpg"),
                                 {"Expect": "100-continue"}, signer=_SignEveryHeader))
    assert status == 200, doc
    assert x.stats()["last_refused"] is None


def test_textract_refuses_a_signed_expect_header_that_was_not_sent(standin, samples):
    """Sluice's old request: libcurl signed an 'Expect' header it then did not send."""
    x = standin("textract")
    prepared = _sign(x, _body_of(samples / "scanned-letter.jpg"), {"Expect": "100-continue"},
                     signer=_SignEveryHeader)
    assert "expect" in prepared.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    status, doc = _send(x, prepared, drop=("expect",))
    assert status == 400
    assert doc == {"__type": "IncompleteSignatureException",
                   "message": "'expect' is named as a SignedHeader, but it does not exist in "
                              "the HTTP request."}
    refused = x.stats()["last_refused"]                 # what was refused, for a test to show
    assert "expect" not in refused["headers"]
    assert "expect" in refused["headers"]["authorization"]
    assert refused["refused"] == {"status": 400, "error": "IncompleteSignatureException",
                                  "message": doc["message"]}


def test_textract_refuses_a_body_changed_after_signing(standin, samples):
    x = standin("textract")
    body = _body_of(samples / "scanned-letter.jpg")
    prepared = _sign(x, body)
    tampered = body.replace(b'{"Document"', b'{ "Document"', 1)
    status, doc = _send(x, prepared, body=tampered)
    assert status == 400 and doc["__type"] == "InvalidSignatureException"
    assert doc["message"].startswith(REFUSED_SIG)
    # a payload hash header that is not the body's hash is no way around it
    prepared = _sign(x, body, {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    status, doc = _send(x, prepared, body=tampered)
    assert status == 400 and doc["message"].startswith(REFUSED_SIG)
    status, doc = _send(x, prepared)
    assert status == 200, doc


def test_textract_refuses_a_stale_or_future_x_amz_date(standin, samples):
    x = standin("textract")
    body = _body_of(samples / "scanned-letter.jpg")
    status, doc = _send(x, _sign(x, body, at=time.time() - 360))
    assert status == 400 and doc["__type"] == "InvalidSignatureException"
    assert re.match(r"Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z "
                    r"\(\d{8}T\d{6}Z - 5 min\.\)$", doc["message"]), doc
    status, doc = _send(x, _sign(x, body, at=time.time() + 360))
    assert status == 400 and doc["message"].startswith("Signature not yet current: ")
    status, doc = _send(x, _sign(x, body, at=time.time() - 200))   # within 5 minutes: fine
    assert status == 200, doc


def test_textract_refuses_missing_and_malformed_authorization(standin, samples):
    x = standin("textract")
    body = _body_of(samples / "scanned-letter.jpg")
    prepared = _sign(x, body)
    auth = prepared.headers["Authorization"]

    status, doc = _send(x, prepared, drop=("authorization",))
    assert (status, doc) == (403, {"__type": "MissingAuthenticationTokenException",
                                   "message": "Missing Authentication Token"})

    no_sig = auth.split(", Signature=")[0]
    status, doc = _send(x, prepared, change={"Authorization": no_sig})
    assert status == 400 and doc["__type"] == "IncompleteSignatureException"
    assert doc["message"].startswith("Authorization header requires 'Signature' parameter.")

    status, doc = _send(x, prepared, change={"Authorization": auth.replace("Credential=", "",
                                                                           1)})
    assert status == 400 and doc["__type"] == "IncompleteSignatureException"
    assert "not a valid key=value pair (missing equal-sign)" in doc["message"]

    status, doc = _send(x, prepared, change={"Authorization": "Bearer sk-test"})
    assert status == 400 and doc["__type"] == "IncompleteSignatureException"

    status, doc = _send(x, prepared, drop=("x-amz-date",))
    assert status == 400 and doc["__type"] == "IncompleteSignatureException"
    assert "requires existence of either a 'X-Amz-Date' or a 'Date' header" in doc["message"]

    status, doc = _send(x, prepared, change={"Authorization": auth.replace(
        "/us-east-1/textract/aws4_request", "/us-east-1/aws4_request")})
    assert status == 400 and doc["__type"] == "IncompleteSignatureException"
    assert doc["message"].startswith("Credential must have exactly 5 slash-delimited elements")

    status, doc = _send(x, _sign(x, body, signer=_SignWithoutHost))
    assert status == 400 and doc == {
        "__type": "IncompleteSignatureException",
        "message": "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."}


def test_textract_refuses_a_wrong_scope_key_or_secret(standin, samples):
    x = standin("textract")
    body = _body_of(samples / "scanned-letter.jpg")

    status, doc = _send(x, _sign(x, body, region="eu-west-1"))
    assert status == 400 and doc == {
        "__type": "InvalidSignatureException",
        "message": "Credential should be scoped to a valid region, not 'eu-west-1'."}
    status, doc = _send(x, _sign(x, body, service="s3"))
    assert status == 400 and doc == {
        "__type": "InvalidSignatureException",
        "message": "Credential should be scoped to correct service: 'textract'."}
    prepared = _sign(x, body)
    auth = prepared.headers["Authorization"]
    day = prepared.headers["X-Amz-Date"][:8]
    status, doc = _send(x, prepared, change={"Authorization": auth.replace(
        "/%s/" % day, "/20200101/")})
    assert status == 400 and doc["__type"] == "InvalidSignatureException"
    assert doc["message"].startswith("Date in Credential scope does not match YYYYMMDD from "
                                     "ISO-8601 version of date from HTTP: '20200101' != ")

    status, doc = _send(x, _sign(x, body, key_id="AKIDOTHER"))
    assert (status, doc) == (400, {"__type": "UnrecognizedClientException",
                                   "message": "The security token included in the request is "
                                              "invalid."})
    status, doc = _send(x, _sign(x, body, secret="wrong"))
    assert status == 400 and doc["__type"] == "InvalidSignatureException"
    assert doc["message"].startswith(REFUSED_SIG)

    # a signed header's value changed after signing
    status, doc = _send(x, prepared, change={"Content-Type": "application/x-amz-json-1.1; x=1"})
    assert status == 400 and doc["message"].startswith(REFUSED_SIG)

    # other credentials on the command line
    y = standin("textract", "--key-id", "AKIDEXAMPLE", "--secret", "s3cr3t", "--region",
                "eu-central-1")
    status, doc = _send(y, _sign(y, body))
    assert status == 400 and doc["__type"] == "InvalidSignatureException"   # region first
    status, doc = _send(y, _sign(y, body, region="eu-central-1"))
    assert status == 400 and doc["__type"] == "UnrecognizedClientException"
    status, doc = _send(y, _sign(y, body, key_id="AKIDEXAMPLE", secret="s3cr3t",
                                 region="eu-central-1"))
    assert status == 200, doc


def test_textract_protocol_errors(standin, samples):
    x = standin("textract")
    status, doc = _send(x, _sign(x, _body_of(samples / "scanned-letter.jpg"),
                                 {"X-Amz-Target": "Textract.AnalyzeDocument"}))
    assert status == 400 and doc["__type"] == "UnknownOperationException"
    status, doc = _send(x, _sign(x, _body_of(samples / "notes.txt")))
    assert status == 400 and doc["__type"] == "UnsupportedDocumentException"
    status, doc = _send(x, _sign(x, _body_of(samples / "truncated.pdf")))
    assert status == 400 and doc["__type"] == "BadDocumentException"
    status, doc = _send(x, _sign(x, b'{"Document": {"Bytes": "***"}}'))
    assert status == 400 and doc["__type"] == "InvalidParameterException"
    status, doc = _send(x, _sign(x, _body_of(samples / "scanned-letter.jpg"),
                                 {"Content-Type": "application/json"}))
    assert status == 400 and doc["__type"] == "SerializationException"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_textract_verifies_curls_sigv4_signature(standin, samples, tmp_path):
    """curl's --aws-sigv4 (the libcurl code the server signs with) passes with the
    right secret, not with a wrong one."""
    x = standin("textract")
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
    assert status == "400" and doc["__type"] == "InvalidSignatureException"


# ------------------------------------------------------------------ openai

# A schema in the form OpenAI's strict Structured Outputs accept: the root a
# plain object, every field nullable by a type list.
STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": ["string", "null"]},
        "amount": {"type": ["number", "null"]},
        "paid": {"type": ["boolean", "null"]},
        "count": {"type": ["integer", "null"]},
        "kind": {"type": ["string", "null"], "enum": ["invoice", "letter", None]},
        "due": {"type": ["string", "null"], "format": "date"},
    },
    "required": ["amount", "count", "due", "invoice_number", "kind", "paid"],
    "additionalProperties": False,
}

# The schema Sluice used to send: a nullable root, which OpenAI refuses.
OLD_SLUICE_SCHEMA = dict(STRICT_SCHEMA, type=["object", "null"])

RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
GO_DURATION = re.compile(r"^(0s|\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


def _chat(o, text, schema, strict=True, key="sk-test", path="/v1/chat/completions",
          name="record", **extra):
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "extract"},
                         {"role": "user", "content": text}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": name, "strict": strict,
                                                "schema": schema}}}
    body.update(extra)
    headers = {"Authorization": "Bearer " + key} if key else {}
    return requests.post(o.url + path, json=body, headers=headers, timeout=30)


def _post(o, body, key="sk-test"):
    headers = {"Authorization": "Bearer " + key} if key else {}
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    headers["Content-Type"] = "application/json"
    return requests.post(o.url + "/v1/chat/completions", data=body, headers=headers, timeout=30)


def _schema_error(r):
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["type"] == "invalid_request_error" and e["param"] == "response_format", e
    assert e["code"] is None, e
    assert e["message"].startswith("Invalid schema for response_format 'record': "), e
    return e["message"][len("Invalid schema for response_format 'record': "):]


def _obj(props, **kw):
    """A strict object schema of props (every key required)."""
    return dict({"type": "object", "properties": props, "required": list(props),
                 "additionalProperties": False}, **kw)


def test_openai_refuses_the_old_nullable_root_schema(standin):
    o = standin("openai")
    r = _chat(o, "Invoice INV-1", OLD_SLUICE_SCHEMA)
    assert _schema_error(r) == ("schema must be a JSON Schema of 'type: \"object\"', got "
                                "'type: \"['object', 'null']\"'.")
    # a root anyOf is refused the same way, with strict or without
    for strict in (True, False):
        r = _chat(o, "x", {"anyOf": [_obj({"a": {"type": "string"}})]}, strict=strict)
        assert _schema_error(r) == ("schema must be a JSON Schema of 'type: \"object\"', got "
                                    "'type: \"None\"'.")


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
    content = doc["choices"][0]["message"]["content"]
    rec = json.loads(content)
    assert set(rec) == set(STRICT_SCHEMA["properties"])
    assert rec["invoice_number"] == "INV-2026-0042"        # found in the user message
    assert rec["amount"] == pytest.approx(185.52)
    assert rec["kind"] == "invoice"
    assert rec["paid"] is None and rec["count"] is None     # nullable, not in the text: null
    assert rec["due"] is None or re.match(r"^\d{4}-\d{2}-\d{2}$", rec["due"])

    # usage: from the request's and the answer's sizes, consistent
    u = doc["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens"] >= len(text) // 4
    assert u["completion_tokens"] == -(-len(content) // 4)
    for h in RATE_HEADERS:
        assert h in r.headers, h

    # any prefix before /chat/completions; a non-strict schema is taken as it is
    loose = {"type": "object", "properties": {"title": {"type": "string"}}}
    r = _chat(o, "Hello\nworld", loose, strict=False, path="/openai/deployments/x/chat/completions")
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"title": "Hello"}


def test_openai_resolves_defs_refs_and_anyof_below_the_root(standin):
    o = standin("openai")
    schema = _obj({
        "party": {"$ref": "#/$defs/party"},
        "total": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 1},
        "tree": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    }, **{"$defs": {
        "party": _obj({"email": {"type": ["string", "null"], "format": "email"}}),
        "line": _obj({"amount": {"type": "number", "minimum": 0}}),
    }})
    r = _chat(o, "From: billing@acme.example\nTotal: 12.50", schema)
    assert r.status_code == 200, r.text
    rec = json.loads(r.json()["choices"][0]["message"]["content"])
    assert rec["party"] == {"email": "billing@acme.example"}
    assert rec["total"] == 12.5
    assert len(rec["lines"]) == 1 and rec["lines"][0]["amount"] >= 0

    bad = json.loads(json.dumps(schema))
    bad["properties"]["party"]["$ref"] = "#/$defs/nobody"
    assert _schema_error(_chat(o, "x", bad)) == (
        "In context=('properties', 'party'), reference to component '#/$defs/nobody' which was "
        "not found in the schema.")
    bad = json.loads(json.dumps(schema))
    bad["$defs"]["line"]["additionalProperties"] = True   # $defs are checked too
    assert "In context=('$defs', 'line'), 'additionalProperties'" in _schema_error(
        _chat(o, "x", bad))
    bad = json.loads(json.dumps(schema))
    bad["properties"]["total"]["anyOf"][0] = {"type": "object", "properties": {}}
    assert _schema_error(_chat(o, "x", bad)) == (
        "In context=('properties', 'total', 'anyOf', '0'), 'additionalProperties' is required "
        "to be supplied and to be false.")


def _nested(levels):
    node = _obj({"leaf": {"type": "string"}})
    for _ in range(levels - 1):
        node = _obj({"child": node})
    return node


# (name, schema, the refusal's text after "Invalid schema for response_format 'record': ")
STRICT_REFUSALS = [
    ("no additionalProperties",
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
     "In context=(), 'additionalProperties' is required to be supplied and to be false."),
    ("additionalProperties true below the root",
     _obj({"a": dict(_obj({"b": {"type": "string"}}), additionalProperties=True)}),
     "In context=('properties', 'a'), 'additionalProperties' is required to be supplied and "
     "to be false."),
    ("a property not required",
     dict(_obj({"a": {"type": "string"}, "amount": {"type": "number"}}), required=["a"]),
     "In context=(), 'required' is required to be supplied and to be an array including every "
     "key in properties. Missing 'amount'."),
    ("no required at all",
     {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
     "In context=(), 'required' is required to be supplied and to be an array including every "
     "key in properties. Missing 'a'."),
    ("a required key that is no property",
     dict(_obj({"a": {"type": "string"}}), required=["a", "b"]),
     "In context=(), 'required' names 'b', which is not a key in properties."),
    ("default", _obj({"a": {"type": "string", "default": "x"}}),
     "In context=('properties', 'a'), 'default' is not permitted."),
    ("minLength", _obj({"a": {"type": "string", "minLength": 1}}),
     "In context=('properties', 'a'), 'minLength' is not permitted."),
    ("maxLength", _obj({"a": {"type": "string", "maxLength": 9}}),
     "In context=('properties', 'a'), 'maxLength' is not permitted."),
    ("oneOf", _obj({"a": {"oneOf": [{"type": "string"}, {"type": "number"}]}}),
     "In context=('properties', 'a'), 'oneOf' is not permitted."),
    ("allOf", _obj({"a": {"type": "string", "allOf": [{"type": "string"}]}}),
     "In context=('properties', 'a'), 'allOf' is not permitted."),
    ("patternProperties", dict(_obj({}), patternProperties={"^x": {"type": "string"}}),
     "In context=(), 'patternProperties' is not permitted."),
    ("a keyword of another type", _obj({"a": {"type": "number", "pattern": "^1"}}),
     "In context=('properties', 'a'), 'pattern' is not permitted."),
    ("an unsupported format", _obj({"a": {"type": "string", "format": "phone"}}),
     "In context=('properties', 'a'), format 'phone' is not supported. Supported formats are: "
     "date-time, time, date, duration, email, hostname, ipv4, ipv6, uuid."),
    ("an unsupported type", _obj({"a": {"type": "date"}}),
     "In context=('properties', 'a'), type 'date' is not supported. Supported types are: "
     "string, number, integer, boolean, object, array, null."),
    ("no type", _obj({"a": {"description": "anything"}}),
     "In context=('properties', 'a'), schema must have a 'type' key."),
    ("an array without items", _obj({"a": {"type": "array"}}),
     "In context=('properties', 'a'), array schema missing items."),
    ("an enum value of another type", _obj({"a": {"type": "string", "enum": ["x", 1]}}),
     "In context=('properties', 'a'), enum value 1 does not validate against "
     "{'type': 'string'}."),
    ("$ref with siblings", dict(_obj({"a": {"$ref": "#/$defs/x", "type": "object"}}),
                                **{"$defs": {"x": _obj({})}}),
     "In context=('properties', 'a'), '$ref' cannot be combined with 'type'."),
    ("anyOf at the root next to type object",
     dict(_obj({"a": {"type": "string"}}), anyOf=[_obj({})]),
     "In context=(), 'anyOf' is not permitted at the root: the root must be an object, not "
     "anyOf."),
    ("11 levels of nesting", _nested(11),
     "Expected at most 10 levels of nesting within a single schema when using structured "
     "outputs, but received 11 at context=('properties', 'child', "),
    ("5001 properties", _obj({"p%d" % i: {"type": "string"} for i in range(5001)}),
     "Expected at most 5000 object properties in total within a single schema when using "
     "structured outputs, but received 5001."),
    ("1001 enum values", _obj({"a": {"type": "string", "enum": ["v%d" % i for i in range(600)]},
                               "b": {"type": "string", "enum": ["w%d" % i for i in range(401)]}}),
     "Expected at most 1000 enum values in total within a single schema when using structured "
     "outputs, but received 1001."),
    ("a long enum of more than 250 strings",
     _obj({"a": {"type": "string", "enum": ["%060d" % i for i in range(251)]}}),
     "In context=('properties', 'a'), Expected at most 15000 characters in total in the values "
     "of an enum with more than 250 string values when using structured outputs, but received "
     "15060."),
    ("over 120000 characters of names",
     _obj({("%04d" % i) + "n" * 1196: {"type": "string"} for i in range(101)}),
     "Expected at most 120000 characters of property names, definition names, enum values and "
     "const values in total within a single schema when using structured outputs, but "
     "received 121200."),
]


@pytest.mark.parametrize("name,schema,message", STRICT_REFUSALS,
                         ids=[c[0] for c in STRICT_REFUSALS])
def test_openai_refuses_what_strict_structured_outputs_refuse(shared_openai, name, schema,
                                                               message):
    r = _chat(shared_openai, "x", schema)
    assert _schema_error(r).startswith(message), name


def test_openai_accepts_schemas_at_the_limits(standin):
    o = standin("openai")
    ok = [
        _nested(10),
        _obj({"p%d" % i: {"type": ["string", "null"]} for i in range(5000)}),
        _obj({"a": {"type": "string", "enum": ["v%d" % i for i in range(1000)]}}),
        _obj({"a": {"type": "string", "enum": ["%059d" % i for i in range(251)]}}),   # 14809
        _obj({"a": {"type": ["string", "null"], "pattern": "^[A-Z]+-\\d+$", "format": "email",
                    "description": "d", "title": "t"},
              "n": {"type": "integer", "minimum": 1, "maximum": 9, "multipleOf": 1},
              "l": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
              "c": {"type": "string", "const": "fixed"},
              "e": {"enum": ["x", "y"]}}, title="Record", **{"$schema": "x", "$id": "y"}),
        _obj({}),
    ]
    for schema in ok:
        r = _chat(o, "x", schema)
        assert r.status_code == 200, r.text[:300]
        rec = json.loads(r.json()["choices"][0]["message"]["content"])
        assert set(rec) == set(schema["properties"])


def test_openai_refuses_bad_request_basics_like_openai(standin):
    o = standin("openai")
    r = _chat(o, "x", STRICT_SCHEMA, key=None)
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert r.json()["error"]["code"] is None
    r = requests.post(o.url + "/v1/chat/completions", json={}, timeout=10,
                      headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401

    k = standin("openai", "--api-key", "sk-right-key")
    r = _chat(k, "x", STRICT_SCHEMA, key="sk-wrong-key")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["message"].startswith("Incorrect API key provided: ")
    assert _chat(k, "x", STRICT_SCHEMA, key="sk-right-key").status_code == 200

    def refused(body, param, code, text):
        r = _post(o, body)
        assert r.status_code == 400, (body, r.text)
        e = r.json()["error"]
        assert (e["type"], e["param"], e["code"]) == ("invalid_request_error", param, code), e
        assert text in e["message"], e

    msgs = [{"role": "user", "content": "x"}]
    refused(b"{not json", None, None, "We could not parse the JSON body of your request.")
    refused({"messages": msgs}, None, None, "you must provide a model parameter")
    refused({"model": "m"}, "messages", "missing_required_parameter",
            "Missing required parameter: 'messages'.")
    refused({"model": "m", "messages": []}, "messages", "empty_array", "empty array")
    refused({"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role", "invalid_value", "Invalid value: 'robot'.")
    refused({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content",
            "missing_required_parameter", "Missing required parameter: 'messages[0].content'.")
    refused({"model": "m", "messages": msgs, "response_format": {"type": "object"}},
            "response_format.type", "invalid_value",
            "Supported values are: 'json_object', 'json_schema', and 'text'.")
    refused({"model": "m", "messages": msgs, "response_format": {"type": "json_object"}},
            "messages", None, "must contain the word 'json'")
    refused({"model": "m", "messages": msgs, "response_format": {"type": "json_schema"}},
            "response_format.json_schema", "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema'.")
    refused({"model": "m", "messages": msgs,
             "response_format": {"type": "json_schema", "json_schema": {"schema": _obj({})}}},
            "response_format.json_schema.name", "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema.name'.")
    for bad_name, code in (("my record", "invalid_value"), ("x" * 65, "string_above_max_length")):
        refused({"model": "m", "messages": msgs,
                 "response_format": {"type": "json_schema",
                                     "json_schema": {"name": bad_name, "strict": True,
                                                     "schema": _obj({})}}},
                "response_format.json_schema.name", code,
                "Invalid 'response_format.json_schema.name'")
    # ... and the same requests done right are answered
    assert _post(o, {"model": "m", "messages": msgs}).status_code == 200
    assert _post(o, {"model": "m", "messages": [{"role": "user", "content": "answer in JSON"}],
                     "response_format": {"type": "json_object"}}).status_code == 200
    assert _chat(o, "x", _obj({}), name="x" * 64).status_code == 200
    # unknown URL
    r = requests.post(o.url + "/v1/completions", json={}, timeout=10,
                      headers={"Authorization": "Bearer k"})
    assert r.status_code == 404


def test_openai_requests_per_minute_budget(standin):
    o = standin("openai")
    r = _chat(o, "x", STRICT_SCHEMA)
    assert r.headers["x-ratelimit-limit-requests"] == "10000"      # generous default
    assert r.headers["x-ratelimit-limit-tokens"] == "10000000"

    assert o.control(rpm=2)["mode"] == "ok"
    answers = [_chat(o, "Invoice INV-1", STRICT_SCHEMA) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    for a in answers:
        for h in RATE_HEADERS:
            assert h in a.headers, h
        assert a.headers["x-ratelimit-limit-requests"] == "2"
        assert GO_DURATION.match(a.headers["x-ratelimit-reset-requests"]), a.headers
        assert GO_DURATION.match(a.headers["x-ratelimit-reset-tokens"]), a.headers
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert "usage" in answers[0].json() and "usage" in answers[1].json()
    over = answers[2]
    assert over.headers["x-ratelimit-remaining-requests"] == "0"
    reset = over.headers["x-ratelimit-reset-requests"]
    assert re.match(r"^(59|60)(\.\d+)?s$|^1m0s$", reset), reset    # the whole minute back
    assert "Retry-After" not in over.headers
    e = over.json()["error"]
    assert (e["type"], e["param"], e["code"]) == ("requests", None, "rate_limit_exceeded")
    assert re.match(r"^Rate limit reached for gpt-4o-mini in organization \S+ on requests per "
                    r"min \(RPM\): Limit 2, Used 2, Requested 1\. Please try again in "
                    r"\d+(\.\d+)?s\.", e["message"]), e["message"]
    # errors carry the headers too
    r = _chat(o, "x", STRICT_SCHEMA, key=None)
    assert r.status_code == 401 and r.headers["x-ratelimit-remaining-requests"] == "0"
    st = o.stats()
    assert st["rate_limits"]["rpm"] == 2 and st["by_status"]["429"] == 1
    assert st["last_refused"]["refused"]["status"] == 401

    # a new budget refills; /_reset restores the defaults
    o.control(rpm=5)
    assert _chat(o, "x", STRICT_SCHEMA).status_code == 200
    requests.post(o.url + "/_reset", timeout=5)
    assert _chat(o, "x", STRICT_SCHEMA).headers["x-ratelimit-limit-requests"] == "10000"


def test_openai_tokens_per_minute_budget(standin):
    o = standin("openai")
    o.control(tpm=200)
    text = "word " * 96                                   # ~ 120 tokens with the system message
    r = _chat(o, text, STRICT_SCHEMA)
    assert r.status_code == 200, r.text
    assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 200 - 120
    r = _chat(o, text, STRICT_SCHEMA)
    assert r.status_code == 429
    e = r.json()["error"]
    assert (e["type"], e["code"]) == ("tokens", "rate_limit_exceeded")
    assert "on tokens per min (TPM): Limit 200, Used " in e["message"]
    # max_tokens counts when it is the larger
    o.control(tpm=1000)
    r = _chat(o, "x", STRICT_SCHEMA, max_tokens=900)
    assert r.status_code == 200
    r = _chat(o, "x", STRICT_SCHEMA, max_tokens=900)
    assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
    # a request over the whole budget can never pass
    r = _chat(o, "x", STRICT_SCHEMA, max_tokens=5000)
    assert r.status_code == 429
    assert r.json()["error"]["message"].startswith("Request too large for gpt-4o-mini")
    # bad budgets are refused; budgets alone keep the mode
    for body in ({"rpm": 0}, {"tpm": -1}, {"rpm": "3"}):
        assert requests.post(o.url + "/_control", json=body, timeout=5).status_code == 400
    o.control(mode="fail")
    o.control(rpm=7)
    assert o.stats()["mode"] == "fail"


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
    status, doc = _send(x, _sign(x, _body_of(samples / "scanned-letter.jpg")))
    assert status == 200, doc


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
