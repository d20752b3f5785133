#!/usr/bin/python3
"""Stand-ins for the remote services Sluice calls, speaking their real protocols.

    python3 tests/standins/standins.py tika     --port N
    python3 tests/standins/standins.py textract --port N [--secret S]
    python3 tests/standins/standins.py openai   --port N

Each prints one line "ready port=N" once it listens on 127.0.0.1:N, then serves
until SIGTERM/SIGINT. Python 3 standard library only, plus the real tools
(poppler's pdftotext/pdftoppm/pdfinfo, tesseract) where the real service would
read a document.

tika      PUT /tika: the document's text as text/plain, like Apache Tika
          Server's plain-text endpoint: a PDF's text layer (pdftotext -layout),
          a text/* body as it is, and 200 with an empty body when there is no
          text (a scan, a photo). A PDF poppler cannot read -> 422, as Tika
          answers for a TikaException.
textract  POST / with X-Amz-Target: Textract.DetectDocumentText (AWS JSON 1.1):
          needs a SigV4 Authorization header ("AWS4-HMAC-SHA256
          Credential=.../textract/aws4_request, ...") and X-Amz-Date, else 403
          with an AWS-style JSON error; with --secret, the signature itself is
          verified too. Document.Bytes (base64) is OCRed with tesseract (a PDF
          is rasterised first) and answered as PAGE, LINE and WORD Blocks.
openai    POST <anything>/chat/completions: needs "Authorization: Bearer ...",
          response_format {"type": "json_schema", "json_schema": {"schema":
          {... "properties" ...}}}; with "strict": true the schema must follow
          OpenAI's strict rules (every property required, additionalProperties
          false), else 400 with an OpenAI-style error. Answers a chat.completion
          whose message content is JSON conforming to the schema, filled from
          the user message by simple heuristics.

Control API (every stand-in; never subject to the mode, never counted):
    POST /_control {"mode": "ok" | "fail" | "stall" | "rate_limit" | "refuse",
                    "delay_ms": n,      latency added before every answer
                    "retry_after": s,   Retry-After of rate_limit answers (default 1)
                    "count": n,         the mode applies to the next n requests,
                                        then it is back to ok (default: forever)
                    "hard": true, "duration_ms": n}   (refuse only, see below)
    GET  /_stats  -> {"requests", "by_path", "by_status", "in_flight",
                      "max_in_flight", "timestamps", "mode", "last"}
    POST /_reset  -> mode ok, no delay, stats zeroed

Modes: fail answers 500; stall never answers (the connection is held until the
mode changes, then closed); rate_limit answers 429 with Retry-After; refuse
resets every protocol connection (RST, no answer: clients see "connection
reset") while /_control stays reachable so a test can switch back. With
"hard": true, refuse closes the listening socket itself for duration_ms
(default 3000, at most 60000) so connections are truly refused (ECONNREFUSED),
then reopens it by itself; the control API is unreachable meanwhile.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

MODES = ("ok", "fail", "stall", "rate_limit", "refuse")
MAX_BODY = 64 * 1024 * 1024
STALL_MAX_S = 600
TOOL_TIMEOUT = 120


# ------------------------------------------------------------------ state

class State:
    """Mode and statistics shared by every handler thread of one stand-in."""

    def __init__(self):
        self.lock = threading.Condition()
        self.reset()

    def reset(self):
        with self.lock:
            self.mode = "ok"
            self.delay_ms = 0
            self.retry_after = 1
            self.count = None          # None: forever
            self.generation = 0        # bumps on every change: wakes stalled requests
            self.requests = 0
            self.by_path = {}
            self.by_status = {}
            self.in_flight = 0
            self.max_in_flight = 0
            self.timestamps = []
            self.last = None
            self.lock.notify_all()

    def set(self, mode, delay_ms=None, retry_after=None, count=None):
        with self.lock:
            self.mode = mode
            if delay_ms is not None:
                self.delay_ms = delay_ms
            if retry_after is not None:
                self.retry_after = retry_after
            self.count = count
            self.generation += 1
            self.lock.notify_all()

    def take_mode(self):
        """The mode for one incoming protocol request (consumes one of count)."""
        with self.lock:
            mode = self.mode
            if mode != "ok" and self.count is not None:
                self.count -= 1
                if self.count <= 0:
                    self.mode, self.count = "ok", None
            return mode, self.delay_ms, self.retry_after, self.generation

    def begin(self, path, headers):
        with self.lock:
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.timestamps.append(time.time())
            self.last = {"path": path, "headers": {k.lower(): v for k, v in headers.items()}}

    def end(self, status):
        with self.lock:
            self.in_flight -= 1
            if status is not None:
                key = str(status)
                self.by_status[key] = self.by_status.get(key, 0) + 1

    def stall(self, generation):
        """Blocks until the mode changes (or STALL_MAX_S)."""
        end = time.time() + STALL_MAX_S
        with self.lock:
            while self.generation == generation and time.time() < end:
                self.lock.wait(min(1.0, end - time.time()))

    def snapshot(self):
        with self.lock:
            return {"requests": self.requests, "by_path": dict(self.by_path),
                    "by_status": dict(self.by_status), "in_flight": self.in_flight,
                    "max_in_flight": self.max_in_flight, "timestamps": list(self.timestamps),
                    "mode": self.mode, "count": self.count, "delay_ms": self.delay_ms,
                    "last": self.last}


# ------------------------------------------------------------------ tools

def run_tool(argv, stdin=None):
    """(returncode, stdout bytes, stderr text) of a tool, never raising."""
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT)
        return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, b"", str(e)


def sniff(data):
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def pdf_pages(path):
    rc, out, _ = run_tool(["pdfinfo", path])
    if rc != 0:
        return None
    m = re.search(rb"^Pages:\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def ocr_bytes(data, kind):
    """(text, error) of tesseract on an image or the first page of a PDF."""
    with tempfile.TemporaryDirectory(prefix="standin-") as d:
        src = os.path.join(d, "doc")
        with open(src, "wb") as f:
            f.write(data)
        if kind == "application/pdf":
            rc, _, err = run_tool(["pdftoppm", "-r", "200", "-png", "-f", "1", "-l", "1",
                                   "-singlefile", src, os.path.join(d, "page")])
            if rc != 0:
                return None, err.strip() or "pdftoppm failed"
            src = os.path.join(d, "page.png")
        rc, out, err = run_tool(["tesseract", src, "stdout"])
        if rc != 0:
            return None, err.strip() or "tesseract failed"
        return out.decode("utf-8", "replace"), None


# ------------------------------------------------------------------ handler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin/1"
    kind = None        # "tika" | "textract" | "openai" (set per server class)
    state = None       # State
    controller = None  # Controller (reopen after a hard refuse)
    secret = None      # textract: verify signatures when set

    def log_message(self, fmt, *args):  # quiet: tests read stdout for "ready" only
        pass

    # ---- plumbing

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body=b"", ctype="application/json", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def reset_connection(self):
        """Close with RST and no answer (SO_LINGER 0): 'connection reset'."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def dispatch(self):
        path = urlsplit(self.path).path
        if path.startswith("/_"):
            return self.control(path)
        mode, delay_ms, retry_after, gen = self.state.take_mode()
        if mode == "refuse":
            self.read_body_quietly()
            return self.reset_connection()
        self._status = None
        self.state.begin(path, self.headers)
        try:
            body = self.read_body()
            if delay_ms:
                time.sleep(delay_ms / 1000.0)
            if mode == "stall":
                self.state.stall(gen)
                return self.reset_connection()
            if mode == "fail":
                return self.send(500, self.error_body(500, "stand-in failure (mode fail)"))
            if mode == "rate_limit":
                return self.send(429, self.error_body(429, "rate limited (mode rate_limit)"),
                                 headers={"Retry-After": str(retry_after)})
            self.serve(path, body)
        except (ValueError, json.JSONDecodeError) as e:
            self.send(400, self.error_body(400, str(e)))
        finally:
            self.state.end(self._status)

    def read_body_quietly(self):
        try:
            self.read_body()
        except (OSError, ValueError):
            pass

    def control(self, path):
        if path == "/_stats" and self.command == "GET":
            return self.send(200, self.state.snapshot())
        if path == "/_reset" and self.command == "POST":
            self.read_body()
            self.state.reset()
            return self.send(200, {"ok": True})
        if path == "/_control" and self.command == "POST":
            try:
                req = json.loads(self.read_body() or b"{}")
                mode = req.get("mode", "ok")
                if mode not in MODES:
                    raise ValueError("mode must be one of " + ", ".join(MODES))
                count = req.get("count")
                if count is not None and (not isinstance(count, int) or count < 1):
                    raise ValueError("count must be a positive integer")
                delay = req.get("delay_ms")
                if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
                    raise ValueError("delay_ms must be a number >= 0")
                ra = req.get("retry_after")
                if ra is not None and (not isinstance(ra, (int, float)) or ra < 0):
                    raise ValueError("retry_after must be a number >= 0")
            except (ValueError, AttributeError) as e:
                return self.send(400, {"error": str(e)})
            if mode == "refuse" and req.get("hard"):
                duration = min(int(req.get("duration_ms") or 3000), 60000)
                # Closed before the answer: once the caller has its 200, every
                # new connection is refused. This connection was accepted
                # earlier and outlives the listener.
                self.controller.refuse_for(duration / 1000.0)
                self.close_connection = True
                return self.send(200, {"ok": True, "mode": "refuse", "hard": True,
                                       "duration_ms": duration})
            self.state.set(mode, delay, int(ra) if ra is not None else None, count)
            return self.send(200, {"ok": True, "mode": mode})
        return self.send(404, {"error": "no such control endpoint"})

    # ---- per service

    def error_body(self, status, message):
        if self.kind == "openai":
            kind = {429: "rate_limit_exceeded", 500: "server_error"}.get(status, "invalid_request_error")
            return {"error": {"message": message, "type": kind, "param": None, "code": kind}}
        if self.kind == "textract":
            kind = {429: "ThrottlingException", 500: "InternalServerError"}.get(
                status, "InvalidParameterException")
            return {"__type": kind, "message": message}
        return message  # tika answers plain text

    def serve(self, path, body):
        getattr(self, "serve_" + self.kind)(path, body)

    # ---- tika

    def serve_tika(self, path, body):
        if self.command in ("GET", "HEAD") and path in ("/tika", "/version"):
            return self.send(200, "Apache Tika stand-in. PUT a document to /tika.",
                             "text/plain; charset=UTF-8")
        if path.rstrip("/") not in ("/tika", "/tika/text") or self.command != "PUT":
            return self.send(404 if self.command == "PUT" else 405, "not found", "text/plain")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        kind = sniff(body) or ctype
        if not body:
            return self.send(200, b"", "text/plain; charset=UTF-8")
        if kind == "application/pdf":
            with tempfile.NamedTemporaryFile(prefix="standin-", suffix=".pdf") as f:
                f.write(body)
                f.flush()
                rc, out, err = run_tool(["pdftotext", "-layout", "-enc", "UTF-8", f.name, "-"])
            if rc != 0:
                return self.send(422, "TikaException: " + (err.strip() or "cannot parse PDF"),
                                 "text/plain; charset=UTF-8")
            text = out if out.strip() else b""  # a scan: Tika answers 200, empty
            return self.send(200, text, "text/plain; charset=UTF-8")
        if kind.startswith("text/") or kind in ("application/json", "application/xml"):
            return self.send(200, body, "text/plain; charset=UTF-8")
        return self.send(200, b"", "text/plain; charset=UTF-8")  # images etc.: no text

    # ---- textract

    def serve_textract(self, path, body):
        if self.command != "POST" or path != "/":
            return self.send(404, {"__type": "UnknownOperationException", "message": "no route"})
        auth = self.headers.get("Authorization") or ""
        amz_date = self.headers.get("X-Amz-Date")
        m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
                     r"\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$", auth)
        if not auth.startswith("AWS4-HMAC-SHA256 Credential=") or not amz_date:
            return self.send(403, {"__type": "MissingAuthenticationTokenException",
                                   "message": "Missing Authentication Token"})
        if not m or m.group(4) != "textract":
            return self.send(403, {"__type": "InvalidSignatureException",
                                   "message": "Credential should be scoped to a valid service "
                                              "('textract') and end in aws4_request"})
        if self.secret is not None and not self.signature_ok(m, body):
            return self.send(403, {"__type": "InvalidSignatureException",
                                   "message": "The request signature we calculated does not "
                                              "match the signature you provided."})
        target = self.headers.get("X-Amz-Target")
        if target != "Textract.DetectDocumentText":
            return self.send(400, {"__type": "UnknownOperationException",
                                   "message": "unknown operation %r" % target})
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-amz-json-1.1":
            return self.send(400, {"__type": "SerializationException",
                                   "message": "Content-Type must be application/x-amz-json-1.1"})
        try:
            req = json.loads(body)
            data = base64.b64decode(req["Document"]["Bytes"], validate=True)
        except (ValueError, KeyError, TypeError):
            return self.send(400, {"__type": "InvalidParameterException",
                                   "message": "Document.Bytes must be base64"})
        if len(data) > 10 * 1024 * 1024:
            return self.send(400, {"__type": "DocumentTooLargeException",
                                   "message": "document over 10 MB"})
        kind = sniff(data)
        if kind not in ("application/pdf", "image/jpeg", "image/png", "image/tiff"):
            return self.send(400, {"__type": "UnsupportedDocumentException",
                                   "message": "Request has unsupported document format"})
        if kind == "application/pdf":
            with tempfile.NamedTemporaryFile(prefix="standin-", suffix=".pdf") as f:
                f.write(data)
                f.flush()
                pages = pdf_pages(f.name)
            if pages is None:
                return self.send(400, {"__type": "BadDocumentException",
                                       "message": "Request has invalid document"})
            if pages > 1:
                return self.send(400, {"__type": "UnsupportedDocumentException",
                                       "message": "synchronous operations take one page"})
        text, err = ocr_bytes(data, kind)
        if text is None:
            return self.send(400, {"__type": "BadDocumentException", "message": err})
        page_id = str(uuid.uuid4())
        blocks = [{"BlockType": "PAGE", "Id": page_id, "Confidence": 99.9}]
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            blocks.append({"BlockType": "LINE", "Id": str(uuid.uuid4()), "Text": line,
                           "Confidence": 95.0})
            for word in line.split():
                blocks.append({"BlockType": "WORD", "Id": str(uuid.uuid4()), "Text": word,
                               "TextType": "PRINTED", "Confidence": 95.0})
        self.send(200, {"DocumentMetadata": {"Pages": 1}, "Blocks": blocks,
                        "DetectDocumentTextModelVersion": "1.0"})

    def signature_ok(self, m, body):
        """AWS Signature V4 (AWS General Reference, "Create a signed AWS API request")."""
        _, day, region, service, signed, signature = m.groups()
        names = signed.split(";")
        canon_headers = ""
        for n in names:
            v = self.headers.get(n)
            if v is None and n == "host":
                v = self.headers.get("Host")
            if v is None:
                return False
            canon_headers += n + ":" + " ".join(v.strip().split()) + "\n"
        url = urlsplit(self.path)
        canon_path = quote(url.path or "/", safe="/~")
        query = "&".join(sorted(url.query.split("&"))) if url.query else ""
        creq = "\n".join([self.command, canon_path, query, canon_headers, signed,
                          hashlib.sha256(body).hexdigest()])
        scope = "/".join([day, region, service, "aws4_request"])
        sts = "\n".join(["AWS4-HMAC-SHA256", self.headers.get("X-Amz-Date"), scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + self.secret).encode()
        for part in (day, region, service, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        want = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, signature)

    # ---- openai

    def openai_error(self, status, message, code=None, param=None):
        return self.send(status, {"error": {"message": message, "type": "invalid_request_error",
                                            "param": param, "code": code}})

    def serve_openai(self, path, body):
        if self.command != "POST" or not path.endswith("/chat/completions"):
            return self.openai_error(404, "Unknown request URL: %s %s" % (self.command, path),
                                     "unknown_url")
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.send(401, {"error": {
                "message": "You didn't provide an API key.", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}})
        try:
            req = json.loads(body)
        except ValueError:
            return self.openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(req, dict) or not isinstance(req.get("model"), str):
            return self.openai_error(400, "you must provide a model parameter", param="model")
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(x, dict) and isinstance(x.get("role"), str) for x in msgs):
            return self.openai_error(400, "'messages' must be a non-empty array of messages",
                                     param="messages")
        rf = req.get("response_format")
        if not isinstance(rf, dict) or rf.get("type") != "json_schema":
            return self.openai_error(400, "response_format.type must be 'json_schema'",
                                     param="response_format")
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if (not isinstance(js, dict) or not isinstance(js.get("name"), str)
                or not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict)):
            return self.openai_error(400, "response_format.json_schema must have a name and a "
                                     "schema object with properties",
                                     param="response_format.json_schema")
        if js.get("strict") is True:
            problem = strict_problem(schema, ())
            if problem:
                return self.openai_error(
                    400, "Invalid schema for response_format '%s': %s" % (js["name"], problem),
                    param="response_format", code="invalid_json_schema")
        text = "\n".join(m.get("content") for m in msgs
                         if m.get("role") == "user" and isinstance(m.get("content"), str))
        record = fill(schema, "", text)
        content = json.dumps(record)
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in msgs) // 4 + 1
        completion_tokens = len(content) // 4 + 1
        self.send(200, {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion",
            "created": int(time.time()), "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


# ------------------------------------------------------------------ openai helpers

def types_of(node):
    t = node.get("type") if isinstance(node, dict) else None
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return t
    if isinstance(node, dict) and "properties" in node:
        return ["object"]
    return []


def strict_problem(node, where):
    """What breaks OpenAI's strict structured-output rules in node, or None."""
    ctx = "In context=%r, " % (where,)
    if not isinstance(node, dict):
        return ctx + "schema must be an object"
    if where == () and node.get("type") != "object":      # OpenAI: a plain object root
        return ("schema must be a JSON Schema of 'type: \"object\"', got 'type: %s'"
                % json.dumps(node.get("type")))
    if "anyOf" not in node and "enum" not in node and "const" not in node and not types_of(node):
        return ctx + "schema must have a 'type' key"
    if "object" in types_of(node):
        props = node.get("properties")
        if not isinstance(props, dict):
            return ctx + "'properties' is required for an object"
        if node.get("additionalProperties") is not False:
            return ctx + "'additionalProperties' is required to be supplied and to be false"
        req = node.get("required", [])
        if not isinstance(req, list) or sorted(req) != sorted(props):
            missing = sorted(set(props) - set(req if isinstance(req, list) else []))
            return (ctx + "'required' is required to be supplied and to be an array including "
                    "every key in properties. Missing %s" % missing)
        for k, v in props.items():
            p = strict_problem(v, where + ("properties", k))
            if p:
                return p
    if "array" in types_of(node) and isinstance(node.get("items"), dict):
        return strict_problem(node["items"], where + ("items",))
    return None


def norm(s):
    return " ".join(re.sub(r"[_\-]+", " ", s.lower()).split())


ID_RE = re.compile(r"\b[A-Z]{2,5}-[0-9A-Z][0-9A-Z-]*\b")
DATE_RE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]*[A-Za-z]")
NUM_RE = re.compile(r"-?\d[\d,.]*\d|\d")


def to_number(s):
    m = NUM_RE.search(s or "")
    if not m:
        return None
    raw = m.group(0)
    if "," in raw and "." in raw:
        raw = raw.replace(",", "") if raw.rfind(".") > raw.rfind(",") else \
            raw.replace(".", "").replace(",", ".")
    elif "," in raw:
        raw = raw.replace(",", "" if len(raw) - raw.rfind(",") == 4 else ".")
    try:
        return float(raw)
    except ValueError:
        return None


def guess_string(name, text):
    """A value for a string property from the text, or ""."""
    n = norm(name)
    lines = [l.strip() for l in text.splitlines()]
    for l in lines:
        if ":" in l:
            k, v = l.split(":", 1)
            if norm(k) == n and v.strip():
                return " ".join(v.split())
    words = set(n.split())
    if words & {"reference", "ref", "number", "id", "invoice", "order"}:
        m = ID_RE.search(text)
        if m:
            return m.group(0).rstrip("-")
    if "date" in words:
        m = DATE_RE.search(text)
        if m:
            return m.group(0)
    if words & {"email", "mail"}:
        m = EMAIL_RE.search(text)
        if m:
            return m.group(0)
    if words & {"title", "subject"}:
        for l in lines:
            if l:
                return " ".join(l.split())[:200]
    if "currency" in words:
        m = re.search(r"\b(EUR|USD|GBP|CHF|JPY)\b", text)
        if m:
            return m.group(1)
    return ""


def guess_number(name, text):
    n = norm(name)
    for l in text.splitlines():
        if ":" in l and norm(l.split(":", 1)[0]) == n:
            v = to_number(l.split(":", 1)[1])
            if v is not None:
                return v
    if set(n.split()) & {"total", "amount", "sum", "price"}:
        for l in reversed(text.splitlines()):
            low = l.lower()
            if re.search(r"\b(total|amount due)\b", low) and "subtotal" not in low:
                v = to_number(l.split(":", 1)[-1])
                if v is not None:
                    return v
    return 0


def fill(node, name, text):
    """A value conforming to schema node, from the text where a heuristic finds one."""
    if isinstance(node, dict) and isinstance(node.get("enum"), list):
        for v in node["enum"]:
            if v is not None:
                return v
        return None
    types = [t for t in types_of(node) if t != "null"]
    if not types:
        return None if "null" in types_of(node) else ""
    t = types[0]
    if t == "object":
        props = node.get("properties") or {}
        return {k: fill(v, k, text) for k, v in props.items()}
    if t == "array":
        return []
    if t == "string":
        return guess_string(name, text)
    if t == "number":
        return guess_number(name, text)
    if t == "integer":
        return int(guess_number(name, text))
    if t == "boolean":
        return False
    return None


# ------------------------------------------------------------------ server

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Controller:
    """Owns the listening server; a hard refuse closes it and reopens it later."""

    def __init__(self, kind, port, secret):
        self.port = port
        self.state = State()
        self.handler = type("H_" + kind, (Handler,), {
            "kind": kind, "state": self.state, "controller": self, "secret": secret})
        self.lock = threading.Lock()
        self.server = None
        self.thread = None

    def open(self):
        self.server = Server(("127.0.0.1", self.port), self.handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def refuse_for(self, seconds):
        """Closes the listener now (called from a handler thread, never the
        serve_forever one) and reopens it after `seconds`."""
        with self.lock:
            self.close()

        def reopen():
            time.sleep(seconds)
            with self.lock:
                for _ in range(50):  # the port may linger briefly
                    try:
                        self.open()
                        return
                    except OSError:
                        time.sleep(0.1)
        threading.Thread(target=reopen, daemon=True).start()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=("tika", "textract", "openai"))
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--secret", default=None,
                    help="textract: verify SigV4 signatures with this secret access key")
    args = ap.parse_args(argv)

    ctl = Controller(args.kind, args.port, args.secret)
    ctl.open()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    print("ready port=%d" % ctl.port, flush=True)
    while not done.wait(1.0):
        pass
    with ctl.lock:
        ctl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
