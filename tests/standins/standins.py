#!/usr/bin/python3
"""Stand-ins for the remote services Sluice calls, speaking their real protocols
and refusing what the real services refuse.

    python3 tests/standins/standins.py tika     --port N
    python3 tests/standins/standins.py textract --port N [--key-id K] [--secret S] [--region R]
    python3 tests/standins/standins.py openai   --port N [--api-key K]

Each prints one line "ready port=N" once it listens on 127.0.0.1:N, then serves
until SIGTERM/SIGINT. Python 3 standard library, Debian's python3-botocore (the
textract stand-in recomputes SigV4 signatures with it), and the real tools
(poppler's pdftotext/pdftoppm/pdfinfo, tesseract) where the real service would
read a document. A stand-in that accepts what the real service refuses hides
bugs, so every rule below is one the real service enforces (sources in the
comments next to each rule; where a source is ambiguous the comment says which
way the stand-in chose).

tika      PUT /tika: the document's text as text/plain, like Apache Tika
          Server's plain-text endpoint: a PDF's text layer (pdftotext -layout),
          a text/* body as it is, and 200 with an empty body when there is no
          text (a scan, a photo). A PDF poppler cannot read -> 422, as Tika
          answers for a TikaException. Office documents (DOCX, XLSX, PPTX,
          ODT/ODS/ODP: zip containers, detected by their parts as Tika's
          detector does, never by the Content-Type) -> their text, read with
          zipfile and ElementTree; a damaged container -> 422 TikaException.

textract  POST / with X-Amz-Target: Textract.DetectDocumentText (AWS JSON 1.1),
          and the asynchronous Textract.StartDocumentTextDetection /
          Textract.GetDocumentTextDetection for multi-page documents in S3:
          their bodies are checked against botocore's own service model
          (members, types, lengths, patterns -> 400 ValidationException);
          Start reads DocumentLocation.S3Object from the S3 front given with
          --s3-endpoint/--s3-key-id/--s3-secret (a signed GET; missing ->
          InvalidS3ObjectException), refuses what Textract refuses
          (UnsupportedDocumentException, DocumentTooLargeException past
          500 MB / 3000 pages, BadDocumentException), and a ClientRequestToken
          used again returns the same JobId (other parameters:
          IdempotentParameterMismatchException). Get: unknown JobId ->
          InvalidJobIdException; IN_PROGRESS until the pages are read and at
          least --async-polls polls (default 2); then SUCCEEDED with PAGE,
          LINE and WORD blocks carrying their Page, MaxResults (at most 1000)
          a page of results, NextToken the rest (a token not issued ->
          InvalidParameterException). /_stats lists "textract_jobs".
          Every request's SigV4 signature is verified, always (AWS General
          Reference, "Signature Version 4"; AWS common errors): the signature is
          recomputed with botocore's SigV4Auth over an AWSRequest rebuilt from
          the received method, URL, the headers named in SignedHeaders (their
          received values) and the received body, for the credentials given
          with --key-id (default AKIDTEST), --secret (default secretTEST) and
          --region (default us-east-1); the defaults are the ones the pipeline
          tests configure Sluice with. Refusals, as AWS JSON 1.1 errors
          {"__type": T, "message": M}, checked in this order:
            no Authorization header          403 MissingAuthenticationTokenException
                                                 "Missing Authentication Token"
            Authorization not "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
            Signature=..." (a part missing or not key=value), or neither
            X-Amz-Date nor Date sent         400 IncompleteSignatureException
                                                 ("Authorization header requires
                                                 'Credential' parameter. ...")
            Credential not 5 elements, X-Amz-Date not ISO-8601 basic
                                             400 IncompleteSignatureException
            host not in SignedHeaders        400 IncompleteSignatureException
                                                 "'Host' or ':authority' must be a
                                                 'SignedHeader' in the AWS Authorization."
            a SignedHeaders name the request does not carry
                                             400 IncompleteSignatureException
                                                 "'expect' is named as a SignedHeader,
                                                 but it does not exist in the HTTP request."
            scope: region, service, terminator or date != X-Amz-Date's day
                                             400 InvalidSignatureException
                                                 "Credential should be scoped to ..."
            X-Amz-Date more than 5 min off   400 InvalidSignatureException
                                                 "Signature expired: ... is now earlier
                                                 than ... (... - 5 min.)" (or "Signature
                                                 not yet current: ...")
            unknown access key id            400 UnrecognizedClientException
                                                 "The security token included in the
                                                 request is invalid."
            signature mismatch (a changed body or header included; an
            X-Amz-Content-SHA256 that is not the body's hash too)
                                             400 InvalidSignatureException "The request
                                                 signature we calculated does not match
                                                 the signature you provided. ..."
          Then: another X-Amz-Target -> 400 UnknownOperationException; a
          Content-Type other than application/x-amz-json-1.1 -> 400
          SerializationException; Document.Bytes not base64 -> 400
          InvalidParameterException; over 10 MB -> 400 DocumentTooLargeException;
          not JPEG/PNG/TIFF/PDF -> 400 UnsupportedDocumentException; an
          unreadable or multi-page PDF -> 400 BadDocumentException /
          UnsupportedDocumentException. Else Document.Bytes is OCRed with
          tesseract (a PDF is rasterised first) and answered as PAGE, LINE and
          WORD Blocks.

openai    POST <anything>/chat/completions (OpenAI API reference, "Create chat
          completion"). Errors are OpenAI's {"error": {"message", "type",
          "param", "code"}}. In order:
            no "Authorization: Bearer <key>" 401 invalid_request_error, code null
                                                 ("You didn't provide an API key. ...")
            --api-key given and another key  401 code "invalid_api_key"
                                                 ("Incorrect API key provided: ...")
            over the rate limit              429 (below)
            body not JSON                    400 "We could not parse the JSON body ..."
            no model                         400 "you must provide a model parameter"
            messages missing/empty/not messages, a role not one of system,
            developer, user, assistant, tool, function, a user/system message
            without content               400 (param "messages...")
            response_format.type not text, json_object or json_schema
                                             400 code "invalid_value"
            json_object without the word "json" in the messages
                                             400
            json_schema without json_schema, name, or schema; a name not
            ^[a-zA-Z0-9_-]+$ or longer than 64
                                             400 (param "response_format.json_schema...")
            a schema whose root is not {"type": "object"} (also without strict)
                                             400 "Invalid schema for response_format
                                                 'NAME': schema must be a JSON Schema of
                                                 'type: "object"', got 'type: "..."'."
            with "strict": true, a schema breaking the Structured Outputs guide's
            "Supported schemas" rules (see STRICT SCHEMAS below)
                                             400 "Invalid schema for response_format
                                                 'NAME': In context=(...), ...",
                                                 param "response_format", code null
          Else a chat.completion whose message content is JSON conforming to the
          schema (checked before it is sent; a nullable field the text does not
          fill is null), filled from the user messages by simple heuristics,
          with usage {prompt_tokens, completion_tokens, total_tokens} from the
          request's and the answer's sizes (about 4 characters a token).

          Rate limits (OpenAI "Rate limits" guide): every answer carries
          x-ratelimit-limit-requests, x-ratelimit-limit-tokens,
          x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens,
          x-ratelimit-reset-requests and x-ratelimit-reset-tokens (durations as
          OpenAI writes them, Go style: "20ms", "1s", "6m0s", "59.94s"). The
          budgets are per minute, refilled continuously, default 10000 requests
          and 10,000,000 tokens. Every authenticated request costs 1 request
          and its token estimate: max(max_tokens or max_completion_tokens,
          ceil(characters of the messages' text / 4)). Over a budget -> 429
          {"error": {"message": "Rate limit reached for MODEL in organization
          org-standin on requests per min (RPM): Limit 3, Used 3, Requested 1.
          Please try again in 20s. ...", "type": "requests" | "tokens",
          "param": null, "code": "rate_limit_exceeded"}}; a request whose
          estimate alone is over the token budget -> 429 "Request too large
          for ...". No Retry-After on these (the x-ratelimit-reset-* headers
          say when); the rate_limit mode below does send one.

          STRICT SCHEMAS (Structured Outputs guide, "Supported schemas"): the
          root is {"type": "object"} (not a type list, not anyOf); every object
          has "additionalProperties": false and "required" listing every key of
          "properties" (and no other); anyOf only below the root, each branch a
          valid schema; types string, number, integer, boolean, object, array,
          null (a type list such as ["string", "null"] is how a field is
          optional); keywords: type, description, title, enum, const, anyOf,
          $ref (local: "#" or "#/$defs/..."/"#/definitions/..."), at the root
          $defs, definitions, $schema, $id; for objects properties, required,
          additionalProperties; for arrays items (required), minItems,
          maxItems; for strings pattern, format (date-time, time, date,
          duration, email, hostname, ipv4, ipv6, uuid); for numbers and
          integers multipleOf, maximum, exclusiveMaximum, minimum,
          exclusiveMinimum. Anything else (default, minLength, maxLength,
          oneOf, allOf, not, if/then/else, patternProperties, ...) -> "'KEY' is
          not permitted.". Limits: objects nested at most 10 levels, at most
          5000 properties in total, at most 1000 enum values in total, an enum
          of more than 250 strings at most 15000 characters in all, property
          names + definition names + enum and const strings at most 120000
          characters; enum values must fit the declared type; every $ref must
          resolve.

Control API (every stand-in; never subject to the mode, never counted):
    POST /_control {"mode": "ok" | "fail" | "stall" | "rate_limit" | "refuse",
                    "delay_ms": n,      latency added before every answer
                    "retry_after": s,   Retry-After of rate_limit answers (default 1)
                    "count": n,         the mode applies to the next n requests,
                                        then it is back to ok (default: forever)
                    "hard": true, "duration_ms": n,   (refuse only, see below)
                    "rpm": n, "tpm": n, (openai: per-minute request and token
                    "window_s": s}      budgets; setting one refills both; window_s
                                        (0.1..60, default 60) shortens the minute
                                        for tests. A body with only budgets leaves
                                        the mode as it is.)
    GET  /_stats  -> {"requests", "by_path", "by_status", "in_flight",
                      "max_in_flight", "timestamps", "mode", "count", "delay_ms",
                      "last", "last_refused", "usage_tokens", "rate_limits"}
                     usage_tokens (openai): the sum of usage.total_tokens answered;
                     last: the last protocol request {"path", "headers"}, plus
                     "refused": {"status", "error", "message"} when it was
                     answered 4xx/5xx; last_refused: the last such request
                     (headers included), so a test can show what was refused;
                     rate_limits (openai): {"rpm", "tpm", "remaining_requests",
                     "remaining_tokens"}.
    POST /_reset  -> mode ok, no delay, default budgets, stats zeroed

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
import calendar
import hashlib
import hmac
import io
import json
import math
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
import xml.etree.ElementTree as ET
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Debian's python3-botocore, through sigv4check.py beside this file (shared with
# the S3 front); only the textract stand-in needs it (SigV4Auth None: absent).
from sigv4check import SigV4Auth, sigv4_signature  # noqa: E402

MODES = ("ok", "fail", "stall", "rate_limit", "refuse")
MAX_BODY = 64 * 1024 * 1024
STALL_MAX_S = 600
TOOL_TIMEOUT = 120
DEFAULT_RPM = 10000
DEFAULT_TPM = 10000000


# ------------------------------------------------------------------ state

class Budget:
    """One per-minute budget as OpenAI meters it: a bucket of `limit` units
    refilled continuously at limit/60 a second. `window` (seconds, default
    60) compresses the minute for tests that cannot wait one."""

    def __init__(self, limit, window=60.0):
        self.limit = limit
        self.window = float(window)
        self.level = float(limit)
        self.t = time.monotonic()

    def refill(self, now):
        self.level = min(float(self.limit),
                         self.level + (now - self.t) * self.limit / self.window)
        self.t = now

    def remaining(self):
        return max(0, int(self.level))

    def reset_s(self):
        """Seconds until the bucket is full again (OpenAI's x-ratelimit-reset-*)."""
        return max(0.0, (self.limit - self.level) * self.window / self.limit)

    def wait_s(self, need):
        return max(0.0, (need - self.level) * self.window / self.limit)


def go_duration(seconds):
    """A duration the way OpenAI's headers write it (Go's time.Duration,
    rounded to ms): "0s", "20ms", "1s", "59.94s", "6m0s", "1h2m3.5s"."""
    ms = int(round(seconds * 1000))
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return "%dms" % ms
    h, rest = divmod(ms, 3600000)
    m, rest = divmod(rest, 60000)
    s = ("%.3f" % (rest / 1000.0)).rstrip("0").rstrip(".")
    out = ""
    if h:
        out += "%dh" % h
    if h or m:
        out += "%dm" % m
    return out + s + "s"


class State:
    """Mode, budgets and statistics shared by every handler thread of one stand-in."""

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
            self.last_refused = None
            self.usage_tokens = 0      # openai: the total_tokens of every answer's usage
            self.rpm = Budget(DEFAULT_RPM)
            self.tpm = Budget(DEFAULT_TPM)
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

    def set_budgets(self, rpm=None, tpm=None, window_s=None):
        """New per-minute limits; both buckets start full."""
        with self.lock:
            w = window_s if window_s is not None else self.rpm.window
            self.rpm = Budget(rpm if rpm is not None else self.rpm.limit, w)
            self.tpm = Budget(tpm if tpm is not None else self.tpm.limit, w)

    def take_mode(self):
        """The mode for one incoming protocol request (consumes one of count)."""
        with self.lock:
            mode = self.mode
            if mode != "ok" and self.count is not None:
                self.count -= 1
                if self.count <= 0:
                    self.mode, self.count = "ok", None
            return mode, self.delay_ms, self.retry_after, self.generation

    def take_budget(self, tokens):
        """Charges one request of `tokens` estimated tokens. Returns None when it
        fits, else (kind, limit, used, requested, wait_s, too_large)."""
        with self.lock:
            now = time.monotonic()
            self.rpm.refill(now)
            self.tpm.refill(now)
            if tokens > self.tpm.limit:
                return ("tokens", self.tpm.limit, 0, tokens, 0.0, True)
            if self.rpm.level < 1:
                return ("requests", self.rpm.limit, self.rpm.limit - self.rpm.remaining(), 1,
                        self.rpm.wait_s(1), False)
            if self.tpm.level < tokens:
                return ("tokens", self.tpm.limit, self.tpm.limit - self.tpm.remaining(), tokens,
                        self.tpm.wait_s(tokens), False)
            self.rpm.level -= 1
            self.tpm.level -= tokens
            return None

    def rate_headers(self):
        with self.lock:
            now = time.monotonic()
            self.rpm.refill(now)
            self.tpm.refill(now)
            return {
                "x-ratelimit-limit-requests": str(self.rpm.limit),
                "x-ratelimit-limit-tokens": str(self.tpm.limit),
                "x-ratelimit-remaining-requests": str(self.rpm.remaining()),
                "x-ratelimit-remaining-tokens": str(self.tpm.remaining()),
                "x-ratelimit-reset-requests": go_duration(self.rpm.reset_s()),
                "x-ratelimit-reset-tokens": go_duration(self.tpm.reset_s()),
            }

    def begin(self, path, headers):
        with self.lock:
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.timestamps.append(time.time())
            self.last = {"path": path, "headers": {k.lower(): v for k, v in headers.items()}}
            return self.last

    def end(self, status, record=None, error=None):
        """A request is done: answered with status (None: no answer). Called
        before the answer's body is written, so a client that has its answer
        finds it in /_stats."""
        with self.lock:
            self.in_flight -= 1
            if status is not None:
                key = str(status)
                self.by_status[key] = self.by_status.get(key, 0) + 1
                if status >= 400 and record is not None:
                    record["refused"] = dict(error or {}, status=status)
                    self.last_refused = record

    def stall(self, generation):
        """Blocks until the mode changes (or STALL_MAX_S)."""
        end = time.time() + STALL_MAX_S
        with self.lock:
            while self.generation == generation and time.time() < end:
                self.lock.wait(min(1.0, end - time.time()))

    def snapshot(self):
        with self.lock:
            now = time.monotonic()
            self.rpm.refill(now)
            self.tpm.refill(now)
            return {"requests": self.requests, "by_path": dict(self.by_path),
                    "by_status": dict(self.by_status), "in_flight": self.in_flight,
                    "max_in_flight": self.max_in_flight, "timestamps": list(self.timestamps),
                    "mode": self.mode, "count": self.count, "delay_ms": self.delay_ms,
                    "last": self.last, "last_refused": self.last_refused,
                    "usage_tokens": self.usage_tokens,
                    "textract_jobs": [{"id": j["id"], "status": j["status"], "polls": j["polls"],
                                       "pages": j["pages"], "bucket": j["location"][0],
                                       "key": j["location"][1]} for j in list(JOBS.values())],
                    "rate_limits": {"rpm": self.rpm.limit, "tpm": self.tpm.limit,
                                    "remaining_requests": self.rpm.remaining(),
                                    "remaining_tokens": self.tpm.remaining()}}


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


# Office text, as Tika's OOXML and ODF parsers give it: which parts, which
# elements hold text, which end a line.
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_S = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_T = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"


def _slide_no(name):
    m = re.search(r"(\d+)\.xml$", name)
    return int(m.group(1)) if m else 0


def office_text(data):
    """The text of an OOXML/ODF document, or None when data is no such zip;
    raises ValueError (zipfile.BadZipFile, ParseError, KeyError) when it is
    one but damaged, as Tika's parsers throw a TikaException."""
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(str(e))

    def para(xml, text_tag, p_tag):
        out = []
        for p in ET.fromstring(xml).iter(p_tag):
            out.append("".join(t.text or "" for t in p.iter(text_tag)))
        return "\n".join(out)

    try:
        if "word/document.xml" in names:
            return para(z.read("word/document.xml"), _W + "t", _W + "p")
        if any(n.startswith("ppt/slides/slide") for n in names):
            slides = sorted((n for n in names if re.match(r"ppt/slides/slide\d+\.xml$", n)),
                            key=_slide_no)
            return "\n".join(para(z.read(n), _A + "t", _A + "p") for n in slides)
        if any(n.startswith("xl/worksheets/") for n in names):
            shared = []
            if "xl/sharedStrings.xml" in names:
                for si in ET.fromstring(z.read("xl/sharedStrings.xml")).iter(_S + "si"):
                    shared.append("".join(t.text or "" for t in si.iter(_S + "t")))
            rows = []
            for n in sorted((n for n in names if re.match(r"xl/worksheets/sheet\d+\.xml$", n)),
                            key=_slide_no):
                for row in ET.fromstring(z.read(n)).iter(_S + "row"):
                    cells = []
                    for c in row.iter(_S + "c"):
                        v = c.find(_S + "v")
                        if c.get("t") == "s" and v is not None:
                            cells.append(shared[int(v.text)])
                        elif c.get("t") == "inlineStr":
                            cells.append("".join(t.text or "" for t in c.iter(_S + "t")))
                        else:
                            cells.append(v.text if v is not None and v.text else "")
                    rows.append("\t".join(cells))
            return "\n".join(rows)
        if "content.xml" in names and "mimetype" in names:
            root = ET.fromstring(z.read("content.xml"))
            return "\n".join("".join(p.itertext()) for p in root.iter()
                             if p.tag in (_T + "p", _T + "h"))
    except Exception as e:  # noqa: BLE001 — BadZipFile, ParseError, zlib.error...: damaged
        raise ValueError(str(e) or repr(e))
    return None


def pdf_pages(path):
    rc, out, _ = run_tool(["pdfinfo", path])
    if rc != 0:
        return None
    m = re.search(rb"^Pages:\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def pdf_pages_of(data):
    """pdf_pages of a PDF held in memory."""
    with tempfile.NamedTemporaryFile(prefix="standin-", suffix=".pdf") as f:
        f.write(data)
        f.flush()
        return pdf_pages(f.name)


def text_blocks(text, page=None):
    """Textract's PAGE block, then a LINE block and its WORD blocks per
    non-blank line of text; with `page`, every block carries its Page."""
    extra = {} if page is None else {"Page": page}
    blocks = [dict({"BlockType": "PAGE", "Id": str(uuid.uuid4()), "Confidence": 99.9}, **extra)]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        blocks.append(dict({"BlockType": "LINE", "Id": str(uuid.uuid4()), "Text": line,
                            "Confidence": 95.0}, **extra))
        for word in line.split():
            blocks.append(dict({"BlockType": "WORD", "Id": str(uuid.uuid4()), "Text": word,
                                "TextType": "PRINTED", "Confidence": 95.0}, **extra))
    return blocks


def ocr_bytes(data, kind):
    """(text, error) of tesseract on an image or the first page of a PDF."""
    with tempfile.TemporaryDirectory(prefix="standin-") as d:
        src = os.path.join(d, "doc")
        with open(src, "wb") as f:
            f.write(data)
        if kind == "application/pdf":
            rc, _, err = run_tool(["pdftoppm", "-r", "200", "-tiff", "-gray", "-f", "1", "-l", "1",
                                   "-singlefile", src, os.path.join(d, "page")])
            if rc != 0:
                return None, err.strip() or "pdftoppm failed"
            src = os.path.join(d, "page.tif")  # (poppler's PNG took ~10 s a scanned page)
        rc, out, err = run_tool(["tesseract", src, "stdout"])
        if rc != 0:
            return None, err.strip() or "tesseract failed"
        return out.decode("utf-8", "replace"), None


# ------------------------------------------------------------------ textract jobs

JOBS = {}            # JobId -> job (textract_start)
JOBS_BY_TOKEN = {}   # ClientRequestToken -> JobId: the same token, the same job
JOBS_LOCK = threading.Lock()
_TEXTRACT_MODEL = None


def textract_validate(op, req):
    """None, or the ValidationException message for `req` against botocore's
    model of Textract's `op` (required members, types, min/max lengths and
    values, unknown members) and the model's string patterns."""
    global _TEXTRACT_MODEL
    import botocore.session
    from botocore.validate import ParamValidator
    if _TEXTRACT_MODEL is None:
        _TEXTRACT_MODEL = botocore.session.get_session().get_service_model("textract")
    if not isinstance(req, dict):
        return "the request must be a JSON object"
    shape = _TEXTRACT_MODEL.operation_model(op).input_shape
    report = ParamValidator().validate(req, shape)
    if report.has_errors():
        return report.generate_report()

    def patterns(value, shape, where):
        if shape.type_name == "structure" and isinstance(value, dict):
            for k, v in value.items():
                m = shape.members.get(k)
                if m is not None:
                    r = patterns(v, m, where + "." + k)
                    if r:
                        return r
        elif shape.type_name == "string" and isinstance(value, str):
            pat = shape.metadata.get("pattern")
            if pat and not re.fullmatch(pat.lstrip("^").rstrip("$"), value, re.S):
                return ("1 validation error detected: Value '%s' at '%s' failed to satisfy "
                        "constraint: Member must satisfy regular expression pattern: %s"
                        % (value, where.lstrip("."), pat))
        return None
    return patterns(req, shape, "")


def s3_get(s3, bucket, key):
    """The object's bytes, read from the S3 front with a GET signed by
    botocore (SigV4, path style), or None (no S3 configured, not found,
    refused)."""
    if not s3:
        return None
    import botocore.session
    from botocore.config import Config
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3["endpoint"], region_name=s3["region"],
        aws_access_key_id=s3["key_id"], aws_secret_access_key=s3["secret"],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}))
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception:  # noqa: BLE001 - any S3 failure is Textract's InvalidS3Object
        return None


def textract_job(job, data, kind):
    """Reads every page (rasterised, then tesseract) into PAGE/LINE/WORD
    blocks with their page numbers, as GetDocumentTextDetection returns them."""
    blocks = []
    with tempfile.TemporaryDirectory(prefix="standin-job-") as d:
        src = os.path.join(d, "doc")
        with open(src, "wb") as f:
            f.write(data)
        for page in range(1, job["pages"] + 1):
            img = src
            if kind == "application/pdf":
                rc, _, err = run_tool(["pdftoppm", "-r", "150", "-tiff", "-gray", "-f", str(page), "-l",
                                       str(page), "-singlefile", src, os.path.join(d, "p")])
                if rc != 0:
                    with JOBS_LOCK:
                        job["status"], job["message"] = "FAILED", "Request has invalid document"
                    return
                img = os.path.join(d, "p.tif")
            rc, out, _ = run_tool(["tesseract", img, "stdout"])
            blocks += text_blocks(out.decode("utf-8", "replace") if rc == 0 else "", page)
    with JOBS_LOCK:
        job["blocks"] = blocks
        job["status"] = "SUCCEEDED"


# ------------------------------------------------------------------ handler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin/1"
    # TCP_NODELAY: the headers and the body leave in two writes; with Nagle
    # the body waited for the client's delayed ACK on a kept-alive connection,
    # 40 ms per answer (bench/flow_bench.py measured the stand-in, not Sluice:
    # 44 ms per Tika call). Real servers answer without that stall.
    disable_nagle_algorithm = True
    kind = None        # "tika" | "textract" | "openai" (set per server class)
    state = None       # State
    controller = None  # Controller (reopen after a hard refuse)
    creds = None       # textract: {"key_id", "secret", "region"}
    api_key = None     # openai: the one key accepted, or None for any

    def log_message(self, fmt, *args):  # quiet: tests read stdout for "ready" only
        pass

    # ---- plumbing

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body=b"", ctype="application/json", headers=None):
        error = None
        if isinstance(body, (dict, list)):
            if isinstance(body, dict):
                if isinstance(body.get("error"), dict):          # openai
                    e = body["error"]
                    error = {"error": e.get("type"), "code": e.get("code"),
                             "message": e.get("message")}
                elif "__type" in body:                           # aws
                    error = {"error": body["__type"], "message": body.get("message")}
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.kind == "openai" and getattr(self, "_protocol", False):
            # The rate-limit headers ride on every answer, as OpenAI's do.
            for k, v in self.state.rate_headers().items():
                self.send_header(k, v)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._status = status
        if getattr(self, "_record", None) is not None:   # a protocol request: account now
            self.state.end(status, self._record, error)
            self._record = None
        if self.command != "HEAD":
            self.wfile.write(body)

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
        self._protocol = False
        self._record = None
        if path.startswith("/_"):
            return self.control(path)
        mode, delay_ms, retry_after, gen = self.state.take_mode()
        if mode == "refuse":
            self.read_body_quietly()
            return self.reset_connection()
        self._status = None
        self._protocol = True
        self._record = self.state.begin(path, self.headers)
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
            if self._record is not None:    # never answered (stall, reset, error)
                self.state.end(None)
                self._record = None

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
                if not isinstance(req, dict):
                    raise ValueError("the body must be a JSON object")
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
                for k in ("rpm", "tpm"):
                    v = req.get(k)
                    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                        raise ValueError(k + " must be a positive integer")
                w = req.get("window_s")
                if w is not None and (not isinstance(w, (int, float)) or not 0.1 <= w <= 60):
                    raise ValueError("window_s must be a number in [0.1, 60]")
            except (ValueError, AttributeError) as e:
                return self.send(400, {"error": str(e)})
            budgets = any(req.get(k) is not None for k in ("rpm", "tpm", "window_s"))
            if budgets:
                self.state.set_budgets(req.get("rpm"), req.get("tpm"), req.get("window_s"))
                if "mode" not in req:   # budgets alone leave the mode as it is
                    return self.send(200, {"ok": True, "mode": self.state.mode,
                                           "rate_limits": self.state.snapshot()["rate_limits"]})
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
            if status == 429:
                return {"error": {"message": message, "type": "requests", "param": None,
                                  "code": "rate_limit_exceeded"}}
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return {"error": {"message": message, "type": kind, "param": None,
                              "code": "server_error" if status >= 500 else None}}
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
        try:
            office = office_text(body)
        except ValueError as e:
            return self.send(422, "TikaException: Unexpected RuntimeException from "
                             "org.apache.tika.parser.microsoft.ooxml.OOXMLParser: " + str(e),
                             "text/plain; charset=UTF-8")
        if office is not None:
            return self.send(200, office.encode(), "text/plain; charset=UTF-8")
        return self.send(200, b"", "text/plain; charset=UTF-8")  # images etc.: no text

    # ---- textract

    def aws_error(self, status, kind, message):
        return self.send(status, {"__type": kind, "message": message},
                         "application/x-amz-json-1.1")

    def serve_textract(self, path, body):
        if self.command != "POST" or path != "/":
            return self.aws_error(404, "UnknownOperationException", "no route")
        refusal = self.sigv4_refusal(body)
        if refusal:
            return self.aws_error(*refusal)
        target = self.headers.get("X-Amz-Target")
        if target not in ("Textract.DetectDocumentText", "Textract.StartDocumentTextDetection",
                          "Textract.GetDocumentTextDetection"):
            return self.aws_error(400, "UnknownOperationException",
                                  "unknown operation %r" % target)
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-amz-json-1.1":
            return self.aws_error(400, "SerializationException",
                                  "Content-Type must be application/x-amz-json-1.1")
        if target != "Textract.DetectDocumentText":
            return self.serve_textract_async(target.split(".", 1)[1], body)
        try:
            req = json.loads(body)
            data = base64.b64decode(req["Document"]["Bytes"], validate=True)
        except (ValueError, KeyError, TypeError):
            return self.aws_error(400, "InvalidParameterException",
                                  "Document.Bytes must be base64")
        if len(data) > 10 * 1024 * 1024:
            return self.aws_error(400, "DocumentTooLargeException", "document over 10 MB")
        kind = sniff(data)
        if kind not in ("application/pdf", "image/jpeg", "image/png", "image/tiff"):
            return self.aws_error(400, "UnsupportedDocumentException",
                                  "Request has unsupported document format")
        if kind == "application/pdf":
            pages = pdf_pages_of(data)
            if pages is None:
                return self.aws_error(400, "BadDocumentException", "Request has invalid document")
            if pages > 1:
                return self.aws_error(400, "UnsupportedDocumentException",
                                      "synchronous operations take one page")
        text, err = ocr_bytes(data, kind)
        if text is None:
            return self.aws_error(400, "BadDocumentException", err)
        blocks = text_blocks(text)
        self.send(200, {"DocumentMetadata": {"Pages": 1}, "Blocks": blocks,
                        "DetectDocumentTextModelVersion": "1.0"}, "application/x-amz-json-1.1")

    # ---- textract, asynchronous (multi-page documents in S3)

    def serve_textract_async(self, op, body):
        """StartDocumentTextDetection / GetDocumentTextDetection. The request
        is checked against botocore's own model of the operation (required
        members, types, lengths, unknown members: ValidationException) and the
        model's patterns, then by the operation's rules. Start reads the
        document from S3 as Textract does, with a GET signed for the S3 front
        (--s3-endpoint; without one every object is "not found"); the job's
        pages are rasterised and read by tesseract in a thread. A job is
        IN_PROGRESS until its pages are read and it was polled --async-polls
        times (default 2), so a caller must wait and poll."""
        try:
            req = json.loads(body)
        except ValueError:
            return self.aws_error(400, "SerializationException", "body is not JSON")
        problem = textract_validate(op, req)
        if problem:
            return self.aws_error(400, "ValidationException", problem)
        if op == "StartDocumentTextDetection":
            return self.textract_start(req)
        return self.textract_get(req)

    def textract_start(self, req):
        loc = req["DocumentLocation"].get("S3Object") or {}
        if not loc.get("Bucket") or not loc.get("Name"):
            return self.aws_error(400, "InvalidParameterException",
                                  "Request has invalid parameters")
        token = req.get("ClientRequestToken")
        with JOBS_LOCK:
            if token is not None and token in JOBS_BY_TOKEN:
                job = JOBS[JOBS_BY_TOKEN[token]]
                if job["location"] != (loc["Bucket"], loc["Name"], loc.get("Version")):
                    return self.aws_error(400, "IdempotentParameterMismatchException",
                                          "The ClientRequestToken provided was already used "
                                          "with different parameters.")
                return self.send(200, {"JobId": job["id"]}, "application/x-amz-json-1.1")
        data = s3_get(self.creds.get("s3"), loc["Bucket"], loc["Name"])
        if data is None:
            return self.aws_error(400, "InvalidS3ObjectException",
                                  "Unable to get object metadata from S3. Check object key, "
                                  "region and/or access permissions.")
        kind = sniff(data)
        if kind not in ("application/pdf", "image/jpeg", "image/png", "image/tiff"):
            return self.aws_error(400, "UnsupportedDocumentException",
                                  "Request has unsupported document format")
        limit = 500 * 1024 * 1024 if kind in ("application/pdf", "image/tiff") else 10 * 1024 * 1024
        if len(data) > limit:
            return self.aws_error(400, "DocumentTooLargeException",
                                  "S3 object size %d is more than the maximum limit" % len(data))
        pages = 1
        if kind == "application/pdf":
            pages = pdf_pages_of(data)
            if pages is None:
                return self.aws_error(400, "BadDocumentException", "Request has invalid document")
            if pages > 3000:
                return self.aws_error(400, "DocumentTooLargeException",
                                      "the document has more than 3000 pages")
        job = {"id": uuid.uuid4().hex + uuid.uuid4().hex[:32], "status": "IN_PROGRESS",
               "location": (loc["Bucket"], loc["Name"], loc.get("Version")), "pages": pages,
               "blocks": None, "polls": 0, "tokens": {}, "message": None}
        with JOBS_LOCK:
            JOBS[job["id"]] = job
            if token is not None:
                JOBS_BY_TOKEN[token] = job["id"]
        threading.Thread(target=textract_job, args=(job, data, kind), daemon=True).start()
        return self.send(200, {"JobId": job["id"]}, "application/x-amz-json-1.1")

    def textract_get(self, req):
        with JOBS_LOCK:
            job = JOBS.get(req["JobId"])
            if job is None:
                return self.aws_error(400, "InvalidJobIdException", "An invalid job identifier "
                                      "was passed.")
            job["polls"] += 1
            done = job["blocks"] is not None or job["status"] == "FAILED"
            if not done or job["polls"] <= self.creds.get("async_polls", 2):
                return self.send(200, {"JobStatus": "IN_PROGRESS",
                                       "DocumentMetadata": {"Pages": job["pages"]}},
                                 "application/x-amz-json-1.1")
            if job["status"] == "FAILED":
                return self.send(200, {"JobStatus": "FAILED", "StatusMessage": job["message"],
                                       "DocumentMetadata": {"Pages": job["pages"]}},
                                 "application/x-amz-json-1.1")
            start = 0
            if "NextToken" in req:
                if req["NextToken"] not in job["tokens"]:
                    return self.aws_error(400, "InvalidParameterException",
                                          "Request has invalid parameters")
                start = job["tokens"][req["NextToken"]]
            n = min(req.get("MaxResults", 1000), 1000)
            blocks = job["blocks"][start:start + n]
            out = {"JobStatus": "SUCCEEDED", "DocumentMetadata": {"Pages": job["pages"]},
                   "Blocks": blocks, "DetectDocumentTextModelVersion": "1.0"}
            if start + n < len(job["blocks"]):
                tok = uuid.uuid4().hex
                job["tokens"][tok] = start + n
                out["NextToken"] = tok
        return self.send(200, out, "application/x-amz-json-1.1")

    def sigv4_refusal(self, body):
        """(status, __type, message) of AWS's answer to this request's SigV4
        signature, or None when it verifies. Statuses: AWS common errors list
        MissingAuthenticationToken as 403 and IncompleteSignature as 400; the
        JSON 1.1 ("coral") services answer InvalidSignatureException and
        UnrecognizedClientException with 400 (e.g. "Signature expired: ...
        status code: 400" from DynamoDB/Kinesis/Rekognition, Cognito's 400
        UnrecognizedClientException), so the stand-in uses 400 for those."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
        alg, _, rest = auth.strip().partition(" ")
        fields, problems = {}, []
        if alg != "AWS4-HMAC-SHA256":
            rest = ""
        for part in (p.strip() for p in rest.split(",")):
            if not part:
                continue
            if "=" not in part:
                return (400, "IncompleteSignatureException",
                        "'%s' not a valid key=value pair (missing equal-sign) in Authorization "
                        "header: '%s'." % (part, auth))
            k, v = part.split("=", 1)
            fields[k.strip()] = v.strip()
        for k in ("Credential", "Signature", "SignedHeaders"):
            if not fields.get(k):
                problems.append("Authorization header requires '%s' parameter." % k)
        amz_date = self.headers.get("X-Amz-Date")
        if amz_date is None and self.headers.get("Date") is None:
            problems.append("Authorization header requires existence of either a 'X-Amz-Date' "
                            "or a 'Date' header.")
        if problems:
            return 400, "IncompleteSignatureException", " ".join(problems) + " Authorization=" + auth
        if amz_date is None:
            # AWS also takes an RFC 1123 Date header; Sluice (libcurl) and
            # botocore send X-Amz-Date, so the stand-in verifies that form only.
            return (400, "IncompleteSignatureException",
                    "The stand-in verifies X-Amz-Date signatures only; send X-Amz-Date.")
        cred = fields["Credential"].split("/")
        if len(cred) != 5:
            return (400, "IncompleteSignatureException",
                    "Credential must have exactly 5 slash-delimited elements, e.g. "
                    "keyid/date/region/service/term, got '%s'" % fields["Credential"])
        key_id, day, region, service, term = cred
        try:
            t = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return (400, "IncompleteSignatureException",
                    "Date must be in ISO-8601 'basic format'. Got '%s'. See "
                    "http://en.wikipedia.org/wiki/ISO_8601" % amz_date)
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed:
            return (400, "IncompleteSignatureException",
                    "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        for name in signed:
            if self.headers.get(name) is None:
                return (400, "IncompleteSignatureException",
                        "'%s' is named as a SignedHeader, but it does not exist in the HTTP "
                        "request." % name)
        scope = []
        if region != self.creds["region"]:
            scope.append("Credential should be scoped to a valid region, not '%s'." % region)
        if service != "textract":
            scope.append("Credential should be scoped to correct service: 'textract'.")
        if term != "aws4_request":
            scope.append("Credential should be scoped with a valid terminator: 'aws4_request', "
                         "not '%s'." % term)
        if day != amz_date[:8]:
            scope.append("Date in Credential scope does not match YYYYMMDD from ISO-8601 version "
                         "of date from HTTP: '%s' != '%s', from '%s'." % (day, amz_date[:8], amz_date))
        if scope:
            return 400, "InvalidSignatureException", " ".join(scope)
        now = time.time()
        stamp = lambda s: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(s))
        if t < now - 300:
            return (400, "InvalidSignatureException",
                    "Signature expired: %s is now earlier than %s (%s - 5 min.)"
                    % (amz_date, stamp(now - 300), stamp(now)))
        if t > now + 300:
            return (400, "InvalidSignatureException",
                    "Signature not yet current: %s is still later than %s (%s + 5 min.)"
                    % (amz_date, stamp(now + 300), stamp(now)))
        if key_id != self.creds["key_id"]:
            return (400, "UnrecognizedClientException",
                    "The security token included in the request is invalid.")
        mismatch = (400, "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your AWS Secret Access Key and signing method. Consult "
                    "the service documentation for details.")
        sent_hash = self.headers.get("X-Amz-Content-SHA256")
        if sent_hash is not None and sent_hash != hashlib.sha256(body).hexdigest():
            return mismatch   # the body is hashed as received, never taken on trust
        want = sigv4_signature(self.command, "http://%s%s" % (self.headers["Host"], self.path),
                               [(n, self.headers.get_all(n)) for n in signed], body, amz_date,
                               self.creds)
        if not hmac.compare_digest(want, fields["Signature"]):
            return mismatch
        return None

    # ---- openai

    def openai_error(self, status, message, code=None, param=None, kind="invalid_request_error"):
        return self.send(status, {"error": {"message": message, "type": kind,
                                            "param": param, "code": code}})

    def serve_openai(self, path, body):
        if self.command != "POST" or not path.endswith("/chat/completions"):
            return self.openai_error(404, "Invalid URL (%s %s)" % (self.command, path))
        auth = self.headers.get("Authorization") or ""
        scheme, _, key = auth.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            # OpenAI answers a missing key with code null.
            return self.openai_error(
                401, "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
                "You can obtain an API key from https://platform.openai.com/account/api-keys.")
        if self.api_key is not None and key != self.api_key:
            shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else key
            return self.openai_error(
                401, "Incorrect API key provided: %s. You can find your API key at "
                "https://platform.openai.com/account/api-keys." % shown, code="invalid_api_key")
        try:
            req = json.loads(body)
        except ValueError:
            req = None

        # Rate limits come first (a gateway meters before it validates): one
        # request, and the estimate OpenAI's guide describes: the larger of
        # max_tokens and the request's characters / 4.
        text_chars = len(body.decode("utf-8", "replace"))
        max_tokens = 0
        model = "gpt-4o-mini"
        if isinstance(req, dict):
            msgs = req.get("messages")
            if isinstance(msgs, list):
                text_chars = sum(len(content_text(m.get("content"))) for m in msgs
                                 if isinstance(m, dict))
            for k in ("max_completion_tokens", "max_tokens"):
                if isinstance(req.get(k), int):
                    max_tokens = max(max_tokens, req[k])
            if isinstance(req.get("model"), str):
                model = req["model"]
        estimate = max(max_tokens, math.ceil(text_chars / 4.0))
        over = self.state.take_budget(estimate)
        if over:
            kind, limit, used, requested, wait, too_large = over
            unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
            if too_large:
                msg = ("Request too large for %s in organization org-standin on %s: Limit %d, "
                       "Requested %d. The input or output tokens must be reduced in order to "
                       "run successfully. Visit https://platform.openai.com/account/rate-limits "
                       "to learn more." % (model, unit, limit, requested))
            else:
                msg = ("Rate limit reached for %s in organization org-standin on %s: Limit %d, "
                       "Used %d, Requested %d. Please try again in %s. Visit "
                       "https://platform.openai.com/account/rate-limits to learn more."
                       % (model, unit, limit, used, requested, go_duration(wait)))
            return self.openai_error(429, msg, code="rate_limit_exceeded", kind=kind)

        if req is None:
            return self.openai_error(
                400, "We could not parse the JSON body of your request. (HINT: This likely "
                "means you aren't using your HTTP library correctly. The OpenAI API expects a "
                "JSON payload, but what was sent was not valid JSON.)")
        problem = request_problem(req)
        if problem:
            message, param, code = problem
            return self.openai_error(400, message, code=code, param=param)

        rf = req.get("response_format") or {"type": "text"}
        msgs = req["messages"]
        text = "\n".join(content_text(m.get("content")) for m in msgs if m.get("role") == "user")
        if rf["type"] == "json_schema":
            js = rf["json_schema"]
            schema = js["schema"]
            record = fill(schema, "", text, schema)
            if not conforms(record, schema, schema):  # a stand-in bug, never the caller's
                return self.openai_error(500, "stand-in could not fill the schema",
                                         code="server_error", kind="server_error")
            content = json.dumps(record)
        elif rf["type"] == "json_object":
            content = json.dumps({"text": " ".join(text.split())[:200]})
        else:
            content = (text.strip().splitlines() or [""])[0][:200]
        prompt_tokens = max(1, math.ceil(
            (sum(len(content_text(m.get("content"))) for m in msgs)
             + len(json.dumps(rf))) / 4.0))
        completion_tokens = max(1, math.ceil(len(content) / 4.0))
        with self.state.lock:
            self.state.usage_tokens += prompt_tokens + completion_tokens
        self.send(200, {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion",
            "created": int(time.time()), "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


# ------------------------------------------------------------------ textract helpers

# _ReceivedSigV4 and sigv4_signature live in sigv4check.py, shared with the S3
# front (s3front.py); imported at the top.


# ------------------------------------------------------------------ openai helpers

def content_text(content):
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


ROLES = ("system", "developer", "user", "assistant", "tool", "function")
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")


def request_problem(req):
    """(message, param, code) of OpenAI's 400 for a chat completion request
    body, or None. Messages as OpenAI words them."""
    if not isinstance(req, dict):
        return ("Invalid type for request body: expected an object.", None, "invalid_type")
    if not isinstance(req.get("model"), str) or not req["model"]:
        return ("you must provide a model parameter", None, None)
    msgs = req.get("messages")
    if msgs is None:
        return ("Missing required parameter: 'messages'.", "messages",
                "missing_required_parameter")
    if not isinstance(msgs, list):
        return ("Invalid type for 'messages': expected an array of objects.", "messages",
                "invalid_type")
    if not msgs:
        return ("Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.", "messages", "empty_array")
    for i, m in enumerate(msgs):
        where = "messages[%d]" % i
        if not isinstance(m, dict):
            return ("Invalid type for '%s': expected an object." % where, where, "invalid_type")
        if "role" not in m:
            return ("Missing required parameter: '%s.role'." % where, where + ".role",
                    "missing_required_parameter")
        if m["role"] not in ROLES:
            return ("Invalid value: %r. Supported values are: 'system', 'assistant', 'user', "
                    "'function', 'tool', and 'developer'." % (m["role"],), where + ".role",
                    "invalid_value")
        if m["role"] in ("system", "developer", "user", "tool") and "content" not in m:
            return ("Missing required parameter: '%s.content'." % where, where + ".content",
                    "missing_required_parameter")
        c = m.get("content")
        if c is not None and not isinstance(c, (str, list)):
            return ("Invalid type for '%s.content': expected one of a string or array of "
                    "objects." % where, where + ".content", "invalid_type")
    rf = req.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict):
        return ("Invalid type for 'response_format': expected an object.", "response_format",
                "invalid_type")
    if rf.get("type") not in ("text", "json_object", "json_schema"):
        return ("Invalid value: %r. Supported values are: 'json_object', 'json_schema', and "
                "'text'." % (rf.get("type"),), "response_format.type", "invalid_value")
    if rf["type"] == "json_object":
        if not any("json" in content_text(m.get("content")).lower() for m in msgs):
            return ("'messages' must contain the word 'json' in some form, to use "
                    "'response_format' of type 'json_object'.", "messages", None)
        return None
    if rf["type"] == "text":
        return None
    js = rf.get("json_schema")
    if js is None:
        return ("Missing required parameter: 'response_format.json_schema'.",
                "response_format.json_schema", "missing_required_parameter")
    if not isinstance(js, dict):
        return ("Invalid type for 'response_format.json_schema': expected an object.",
                "response_format.json_schema", "invalid_type")
    name = js.get("name")
    if name is None:
        return ("Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name", "missing_required_parameter")
    if not isinstance(name, str):
        return ("Invalid type for 'response_format.json_schema.name': expected a string.",
                "response_format.json_schema.name", "invalid_type")
    if len(name) > 64:
        return ("Invalid 'response_format.json_schema.name': string too long. Expected a "
                "string with maximum length 64, but got a string with length %d instead."
                % len(name), "response_format.json_schema.name", "string_above_max_length")
    if not NAME_RE.match(name):
        return ("Invalid 'response_format.json_schema.name': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                "response_format.json_schema.name", "invalid_value")
    strict = js.get("strict", False)
    if not isinstance(strict, bool) and strict is not None:
        return ("Invalid type for 'response_format.json_schema.strict': expected a boolean.",
                "response_format.json_schema.strict", "invalid_type")
    schema = js.get("schema")
    # The API reference marks schema optional; without one the stand-in would
    # have nothing to answer with, and Sluice always sends one: required here.
    if schema is None:
        return ("Missing required parameter: 'response_format.json_schema.schema'.",
                "response_format.json_schema.schema", "missing_required_parameter")
    if not isinstance(schema, dict):
        return ("Invalid type for 'response_format.json_schema.schema': expected an object.",
                "response_format.json_schema.schema", "invalid_type")
    try:
        if strict:
            StrictSchema(schema).check()
        else:
            root_problem(schema)  # OpenAI refuses a non-object root without strict too
    except SchemaProblem as e:
        return ("Invalid schema for response_format '%s': %s" % (name, e), "response_format",
                None)
    return None


class SchemaProblem(Exception):
    pass


def _in(ctx, msg):
    return SchemaProblem("In context=%r, %s" % (tuple(ctx), msg))


SO_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
SO_FORMATS = ("date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6",
              "uuid")
SO_COMMON = {"type", "description", "title", "enum", "const", "anyOf"}
SO_ROOT = {"$defs", "definitions", "$schema", "$id"}
SO_NUMBER = {"multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"}
SO_BY_TYPE = {"object": {"properties", "required", "additionalProperties"},
              "array": {"items", "minItems", "maxItems"},
              "string": {"pattern", "format"},
              "number": SO_NUMBER, "integer": SO_NUMBER}
SO_MAX_DEPTH = 10
SO_MAX_PROPERTIES = 5000
SO_MAX_ENUM_VALUES = 1000
SO_MAX_STRING_CHARS = 120000
SO_BIG_ENUM = 250
SO_BIG_ENUM_CHARS = 15000
OPT_OUT = " Consider reducing it, or use 'strict: false' to opt out of structured outputs."


def root_problem(schema):
    """The root must be {"type": "object"}: not a type list (["object",
    "null"]), not anyOf (OpenAI: "schema must be a JSON Schema of 'type:
    \"object\"', got 'type: \"None\"'.")."""
    got = schema.get("type") if isinstance(schema, dict) else None
    if got != "object":
        raise SchemaProblem("schema must be a JSON Schema of 'type: \"object\"', got "
                            "'type: \"%s\"'." % (got,))
    if "anyOf" in schema:
        raise _in((), "'anyOf' is not permitted at the root: the root must be an object, "
                      "not anyOf.")


def json_type_fits(value, t):
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    return False


def type_list(node):
    t = node.get("type") if isinstance(node, dict) else None
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return list(t)
    return []


class StrictSchema:
    """OpenAI's strict Structured Outputs rules ("Supported schemas"); check()
    raises SchemaProblem with OpenAI's wording where it is known.

    Choices where the guide is not explicit:
    - minLength/maxLength: the guide lists only pattern and format for
      strings, and Sluice's schema.strict() drops them, so they are refused
      ("'minLength' is not permitted.") like default.
    - title and description are allowed everywhere (OpenAI's own SDKs send
      pydantic schemas with title); $schema and $id at the root only.
    - An object with no properties may leave out "required".
    - Nesting: the root object is level 1, an object property of a level-n
      object is level n+1 (array items stay on their level); deeper than 10
      levels is refused. $defs are measured from their own root; $ref is not
      followed (recursive schemas are allowed).
    - Enum values must fit the node's declared type (OpenAI: "enum value ...
      does not validate against ...").
    - The limits' messages follow the one OpenAI sends for enums ("Expected at
      most 500 enum values in total within a single schema when using
      structured outputs, but received 520. ..."); the figures are the
      guide's current ones."""

    def __init__(self, schema):
        self.root = schema
        self.properties = 0
        self.enum_values = 0
        self.chars = 0
        self.refs = []

    def check(self):
        root_problem(self.root)
        defs = []
        for key in ("$defs", "definitions"):
            d = self.root.get(key)
            if d is None:
                continue
            if not isinstance(d, dict):
                raise _in((), "'%s' must be an object." % key)
            for name, sub in d.items():
                self.chars += len(name)
                defs.append(((key, name), sub))
        self.node(self.root, (), 1, root=True)
        for ctx, sub in defs:
            self.node(sub, ctx, 1)
        for ctx, ref in self.refs:
            if resolve_ref(self.root, ref) is None:
                raise _in(ctx, "reference to component '%s' which was not found in the schema."
                          % ref)
        if self.properties > SO_MAX_PROPERTIES:
            raise SchemaProblem("Expected at most %d object properties in total within a single "
                                "schema when using structured outputs, but received %d.%s"
                                % (SO_MAX_PROPERTIES, self.properties, OPT_OUT))
        if self.enum_values > SO_MAX_ENUM_VALUES:
            raise SchemaProblem("Expected at most %d enum values in total within a single schema "
                                "when using structured outputs, but received %d.%s"
                                % (SO_MAX_ENUM_VALUES, self.enum_values, OPT_OUT))
        if self.chars > SO_MAX_STRING_CHARS:
            raise SchemaProblem("Expected at most %d characters of property names, definition "
                                "names, enum values and const values in total within a single "
                                "schema when using structured outputs, but received %d.%s"
                                % (SO_MAX_STRING_CHARS, self.chars, OPT_OUT))

    def node(self, n, ctx, depth, root=False):
        if not isinstance(n, dict):
            raise _in(ctx, "schema must be a JSON Schema object, got %s." % type(n).__name__)
        if "$ref" in n:
            extra = sorted(set(n) - {"$ref", "description", "title"})
            if extra:
                raise _in(ctx, "'$ref' cannot be combined with %s." % ", ".join(
                    "'%s'" % k for k in extra))
            ref = n["$ref"]
            if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
                raise _in(ctx, "'$ref' must be a reference within the schema ('#' or "
                               "'#/$defs/...'), got %r." % (ref,))
            self.refs.append((ctx, ref))
            return
        t = n.get("type")
        if t is not None and not isinstance(t, (str, list)):
            raise _in(ctx, "'type' must be a string or an array of strings.")
        types = type_list(n)
        if isinstance(t, list) and (not types or len(set(map(str, types))) != len(types)):
            raise _in(ctx, "'type' must be a non-empty array of distinct types.")
        for ty in types:
            if ty not in SO_TYPES:
                raise _in(ctx, "type %r is not supported. Supported types are: %s."
                          % (ty, ", ".join(SO_TYPES)))
        allowed = set(SO_COMMON) | (SO_ROOT if root else set())
        for ty in types:
            allowed |= SO_BY_TYPE.get(ty, set())
        for k in n:
            if k not in allowed:
                raise _in(ctx, "'%s' is not permitted." % k)
        if not types and not any(k in n for k in ("anyOf", "enum", "const")):
            raise _in(ctx, "schema must have a 'type' key.")
        for k in ("description", "title"):
            if k in n and not isinstance(n[k], str):
                raise _in(ctx, "'%s' must be a string." % k)
        if "anyOf" in n:
            branches = n["anyOf"]
            if not isinstance(branches, list) or not branches:
                raise _in(ctx, "'anyOf' must be a non-empty array of schemas.")
            for i, b in enumerate(branches):
                self.node(b, tuple(ctx) + ("anyOf", str(i)), depth)
        if "object" in types:
            if depth > SO_MAX_DEPTH:
                raise SchemaProblem("Expected at most %d levels of nesting within a single schema "
                                    "when using structured outputs, but received %d at context=%r."
                                    "%s" % (SO_MAX_DEPTH, depth, tuple(ctx), OPT_OUT))
            if n.get("additionalProperties") is not False:
                raise _in(ctx, "'additionalProperties' is required to be supplied and to be "
                               "false.")
            props = n.get("properties", {})
            if not isinstance(props, dict):
                raise _in(ctx, "'properties' must be an object.")
            req = n.get("required")
            if req is None and not props:
                req = []
            if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
                first = next(iter(props), "")
                raise _in(ctx, "'required' is required to be supplied and to be an array "
                               "including every key in properties. Missing '%s'." % first)
            for k in props:
                if k not in req:
                    raise _in(ctx, "'required' is required to be supplied and to be an array "
                                   "including every key in properties. Missing '%s'." % k)
            for k in req:
                if k not in props:
                    raise _in(ctx, "'required' names '%s', which is not a key in properties."
                              % k)
            for k, v in props.items():
                self.properties += 1
                self.chars += len(k)
                self.node(v, tuple(ctx) + ("properties", k), depth + 1)
        if "array" in types:
            if "items" not in n:
                raise _in(ctx, "array schema missing items.")
            self.node(n["items"], tuple(ctx) + ("items",), depth)
            for k in ("minItems", "maxItems"):
                v = n.get(k)
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                    raise _in(ctx, "'%s' must be a non-negative integer." % k)
        for k in SO_NUMBER:
            v = n.get(k)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise _in(ctx, "'%s' must be a number." % k)
        if "format" in n and n["format"] not in SO_FORMATS:
            raise _in(ctx, "format %r is not supported. Supported formats are: %s."
                      % (n["format"], ", ".join(SO_FORMATS)))
        if "pattern" in n:
            try:
                re.compile(n["pattern"])
            except (re.error, TypeError):
                raise _in(ctx, "'pattern' %r is not a valid regular expression."
                          % (n["pattern"],))
        if "enum" in n:
            values = n["enum"]
            if not isinstance(values, list) or not values:
                raise _in(ctx, "'enum' must be a non-empty array.")
            self.enum_values += len(values)
            strings = [v for v in values if isinstance(v, str)]
            for v in values:
                if types and not any(json_type_fits(v, ty) for ty in types):
                    raise _in(ctx, "enum value %r does not validate against %r."
                              % (v, {"type": n["type"]}))
            total = sum(len(s) for s in strings)
            self.chars += total
            if len(strings) > SO_BIG_ENUM and total > SO_BIG_ENUM_CHARS:
                raise _in(ctx, "Expected at most %d characters in total in the values of an enum "
                               "with more than %d string values when using structured outputs, "
                               "but received %d.%s"
                          % (SO_BIG_ENUM_CHARS, SO_BIG_ENUM, total, OPT_OUT))
        if "const" in n:
            if types and not any(json_type_fits(n["const"], ty) for ty in types):
                raise _in(ctx, "const value %r does not validate against %r."
                          % (n["const"], {"type": n["type"]}))
            if isinstance(n["const"], str):
                self.chars += len(n["const"])


def resolve_ref(root, ref):
    """The schema a local $ref names ("#", "#/$defs/x", "#/definitions/x",
    any JSON pointer into root), or None."""
    if ref == "#":
        return root
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node if isinstance(node, dict) else None


def deref(node, root):
    for _ in range(32):
        if isinstance(node, dict) and "$ref" in node:
            node = resolve_ref(root, node["$ref"]) or {}
        else:
            break
    return node


FORMAT_RE = {
    "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "date-time": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"),
    "time": re.compile(r"^\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$"),
    "email": re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    "uuid": re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"),
}


# A value of each format for a non-nullable string the text does not fill.
FORMAT_PLACEHOLDER = {"date": "1970-01-01", "date-time": "1970-01-01T00:00:00Z",
                      "time": "00:00:00", "duration": "P0D", "email": "unknown@example.com",
                      "hostname": "example.com", "ipv4": "0.0.0.0", "ipv6": "::",
                      "uuid": "00000000-0000-0000-0000-000000000000"}


def string_fits(s, node):
    f = FORMAT_RE.get(node.get("format"))
    if f and not f.match(s):
        return False
    if isinstance(node.get("pattern"), str):
        try:
            return re.search(node["pattern"], s) is not None
        except re.error:
            return False
    return True


def number_fits(x, node):
    if "minimum" in node and x < node["minimum"]:
        return False
    if "maximum" in node and x > node["maximum"]:
        return False
    if "exclusiveMinimum" in node and x <= node["exclusiveMinimum"]:
        return False
    if "exclusiveMaximum" in node and x >= node["exclusiveMaximum"]:
        return False
    if node.get("multipleOf"):
        q = x / node["multipleOf"]
        if abs(q - round(q)) > 1e-9:
            return False
    return True


def conforms(value, node, root, depth=0):
    """Whether value is valid against the (strict-subset) schema node."""
    if depth > 64:
        return False
    node = deref(node, root)
    if not isinstance(node, dict):
        return False
    if "anyOf" in node and not any(conforms(value, b, root, depth + 1) for b in node["anyOf"]):
        return False
    if "const" in node and value != node["const"]:
        return False
    if "enum" in node and not any(value == v and type(value) is type(v) for v in node["enum"]):
        return False
    types = type_list(node)
    if types and not any(json_type_fits(value, t) for t in types):
        return False
    if isinstance(value, dict):
        props = node.get("properties", {})
        if node.get("additionalProperties") is False and set(value) - set(props):
            return False
        if any(k not in value for k in node.get("required", [])):
            return False
        return all(conforms(v, props[k], root, depth + 1) for k, v in value.items() if k in props)
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0) or len(value) > node.get("maxItems", len(value)):
            return False
        return all(conforms(v, node.get("items", {}), root, depth + 1) for v in value)
    if isinstance(value, str):
        return string_fits(value, node)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_fits(value, node)
    return True


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
    return None


def nullable(node):
    return "null" in type_list(node) or (isinstance(node.get("enum"), list)
                                         and None in node["enum"])


def fill(node, name, text, root, depth=0):
    """A value conforming to schema node, from the text where a heuristic
    finds one; null where the node allows it and the text does not say."""
    node = deref(node, root)
    if not isinstance(node, dict) or depth > 24:
        return None
    if "const" in node:
        return node["const"]
    if isinstance(node.get("anyOf"), list):
        branches = node["anyOf"]
        # a real value first, then null, and recursion into the root last
        for b in sorted(branches, key=lambda b: (isinstance(b, dict) and b.get("$ref") == "#",
                                                 type_list(deref(b, root)) == ["null"])):
            v = fill(b, name, text, root, depth + 1)
            if conforms(v, b, root):
                return v
        return None
    if isinstance(node.get("enum"), list):
        values = node["enum"]
        low = text.lower()
        for v in values:
            if isinstance(v, str) and v and re.search(r"\b%s\b" % re.escape(v.lower()), low):
                return v
        if None in values:
            return None
        return values[0]
    types = [t for t in type_list(node) if t != "null"]
    if not types and "properties" in node:
        types = ["object"]
    can_null = nullable(node)
    if not types:
        return None
    t = types[0]
    if t == "object":
        props = node.get("properties") or {}
        return {k: fill(v, k, text, root, depth + 1) for k, v in props.items()}
    if t == "array":
        return [fill(node.get("items", {}), name, text, root, depth + 1)
                for _ in range(node.get("minItems", 0))]
    if t == "string":
        s = guess_string(name, text)
        if s and string_fits(s, node):
            return s
        if can_null:
            return None
        return s if string_fits(s, node) else FORMAT_PLACEHOLDER.get(node.get("format"), s)
    if t in ("number", "integer"):
        x = guess_number(name, text)
        if x is not None and t == "integer":
            x = int(x)
        if x is not None and number_fits(x, node):
            return x
        if can_null:
            return None
        x = node.get("minimum", node.get("maximum", 0))
        return int(x) if t == "integer" else x
    if t == "boolean":
        return None if can_null else False
    return None


# ------------------------------------------------------------------ server

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Controller:
    """Owns the listening server; a hard refuse closes it and reopens it later."""

    def __init__(self, kind, port, creds=None, api_key=None):
        self.port = port
        self.state = State()
        self.handler = type("H_" + kind, (Handler,), {
            "kind": kind, "state": self.state, "controller": self, "creds": creds,
            "api_key": api_key})
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
    ap.add_argument("--key-id", default="AKIDTEST",
                    help="textract: the one access key id accepted (default AKIDTEST)")
    ap.add_argument("--secret", default="secretTEST",
                    help="textract: its secret access key; signatures are always verified "
                         "(default secretTEST)")
    ap.add_argument("--region", default="us-east-1",
                    help="textract: the region a credential scope must name (default us-east-1)")
    ap.add_argument("--s3-endpoint", default=None,
                    help="textract: the S3 front the asynchronous operations read documents "
                         "from (with --s3-key-id, --s3-secret; region: --region)")
    ap.add_argument("--s3-key-id", default=None)
    ap.add_argument("--s3-secret", default=None)
    ap.add_argument("--async-polls", type=int, default=2,
                    help="textract: GetDocumentTextDetection answers IN_PROGRESS this many "
                         "times at least (default 2)")
    ap.add_argument("--api-key", default=None,
                    help="openai: the one key accepted (default: any non-empty Bearer key)")
    args = ap.parse_args(argv)
    if args.kind == "textract" and SigV4Auth is None:
        print("the textract stand-in needs botocore (Debian: python3-botocore)", file=sys.stderr)
        return 2
    if args.kind == "textract" and not (args.key_id and args.secret and args.region):
        print("--key-id, --secret and --region must not be empty", file=sys.stderr)
        return 2

    creds = {"key_id": args.key_id, "secret": args.secret, "region": args.region,
             "async_polls": args.async_polls,
             "s3": ({"endpoint": args.s3_endpoint, "key_id": args.s3_key_id,
                     "secret": args.s3_secret, "region": args.region}
                    if args.s3_endpoint else None)}
    ctl = Controller(args.kind, args.port, creds, args.api_key)
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
