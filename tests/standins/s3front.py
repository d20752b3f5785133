#!/usr/bin/python3
"""A SigV4-checking front before s3rver: a real S3 implementation for tests.

    python3 tests/standins/s3front.py --port N --data DIR [--bucket B]...
        [--key-id K] [--secret S] [--region R] [--s3rver PATH]

s3rver (npm, tests/s3; storage in DIR) serves the S3 protocol but checks no
version-4 signature. This front starts it as its child on a free loopback
port, checks every request as S3 does, and proxies what passes, streaming in
both directions. Prints "ready port=N" once it listens on 127.0.0.1:N, then
serves until SIGTERM/SIGINT (s3rver is stopped with it). Python 3 standard
library and Debian's python3-botocore (tests/standins/sigv4check.py, shared
with the Textract stand-in). Defaults: key AKIDTEST, secret secretTEST, region
us-east-1; --bucket creates that bucket at start (repeatable).

Refusals, as S3's XML errors (<Error><Code/><Message/><RequestId/>...</Error>;
codes and statuses from S3's error catalogue), checked in this order:
  PUT (or chunked POST) without Content-Length     411 MissingContentLength
  Authorization header and X-Amz-Algorithm query   400 InvalidArgument
  neither (anonymous; the buckets are private)     403 AccessDenied
  Authorization not AWS4-HMAC-SHA256 Credential=, SignedHeaders=, Signature=
                                                   400 AuthorizationHeaderMalformed
  presign query incomplete, X-Amz-Expires not 1..604800
                                                   400 AuthorizationQueryParametersError
  no X-Amz-Date (header, or query when presigned)   403 AccessDenied
  Credential not key/day/region/s3/aws4_request, day != X-Amz-Date's day
                                                   400 AuthorizationHeaderMalformed
                                                       (…QueryParametersError presigned)
  header auth: X-Amz-Date more than 15 min off     403 RequestTimeTooSkewed
  presigned: X-Amz-Date + X-Amz-Expires passed     403 AccessDenied "Request has expired"
  unknown access key id                            403 InvalidAccessKeyId
  host, or an x-amz-* header sent, not signed      403 AccessDenied "There were headers
                                                       present in the request which were
                                                       not signed" (HeadersNotSigned)
  header auth without x-amz-content-sha256         400 InvalidRequest
  x-amz-content-sha256 not hex SHA-256 / UNSIGNED-PAYLOAD
                                                   400 InvalidArgument
  STREAMING-* (aws-chunked) payloads               501 NotImplemented (not done here)
  a SignedHeaders name the request does not carry  403 SignatureDoesNotMatch
  signature differs (recomputed with botocore)     403 SignatureDoesNotMatch (with
                                                       CanonicalRequest, StringToSign)
  body shorter than Content-Length                 400 IncompleteBody
  body's SHA-256 != x-amz-content-sha256           400 XAmzContentSHA256Mismatch
  x-amz-checksum-sha256 (base64) != body's         400 BadDigest
The body is spooled to a temporary file while it is hashed, and forwarded to
s3rver only once it verifies: a refused body is never stored.

What s3rver lacks and the front serves itself, on s3rver's storage (DIR/BUCKET/
._S3rver_uploads/UPLOADID/{key,metadata,N,N.md5}):
  AbortMultipartUpload   DELETE /B/K?uploadId=U    (s3rver: 405 MethodNotAllowed)
  ListMultipartUploads   GET /B?uploads             (s3rver: 501 NotImplemented; prefix,
                         delimiter, max-uploads, key-marker, upload-id-marker,
                         encoding-type and paging as the S3 API reference says)
  ListParts              GET /B/K?uploadId=U        (s3rver: 405 MethodNotAllowed)
  CompleteMultipartUpload checks before s3rver assembles (s3rver checks nothing):
    unknown upload or another key's -> 404 NoSuchUpload; part numbers not
    ascending -> 400 InvalidPartOrder; a part absent or its ETag not its MD5
    -> 400 InvalidPart; a part but the last under 5 MiB -> 400 EntityTooSmall.
  GET Object's response-* overrides (response-content-type, ...) on a signed
    request: applied to the answer here (s3rver refuses them as anonymous).

Control (no signature): GET /_stats (counters), POST /_reset, POST /_control
with {"upstream": "stop"|"start"} (s3rver killed/restarted on the same port and
storage: the front answers 503 ServiceUnavailable meanwhile, as S3 does when
it cannot serve), {"mode": "ok"|"down"|"reads_down"} (down: every S3
request gets 503 ServiceUnavailable with Retry-After: 1; reads_down: only
GET and HEAD do, so an upload is stored and its run's copy waits), or
{"refuse_ms": N} (the front stops listening for N ms: connections refused,
as when S3 is unreachable). /_stats counts those 503s as "unavailable".
{"list_page_cap": N} makes ListMultipartUploads pages hold at most N uploads
(0: off), so a client's paging can be tested with a few uploads.
"""

import argparse
import base64
import calendar
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sigv4check import SigV4Auth, sigv4_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
S3RVER = REPO / "tests" / "s3" / "node_modules" / "s3rver" / "bin" / "s3rver.js"
CHUNK = 1 << 20
MAX_SKEW = 15 * 60              # S3: RequestTimeTooSkewed past 15 minutes
MAX_EXPIRES = 7 * 24 * 3600     # S3: X-Amz-Expires at most a week
MIN_PART = 5 * 1024 * 1024      # S3: every part but the last >= 5 MiB
OWNER_ID = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"  # canonical id
OWNER_NAME = "sluice-tests"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
# s3rver's DeleteObject removes the key's emptied parent directories with a
# check-then-rmdir, so two deletes in one "directory" at once can answer 500
# (ENOENT): S3 does not. Deletes go to s3rver one at a time.
DELETE_LOCK = threading.Lock()
HEX64 = re.compile(r"^[0-9a-f]{64}$")
# GET Object's response header overrides (S3 API reference, GetObject)
RESPONSE_OVERRIDES = {"response-content-type": "content-type",
                      "response-content-language": "content-language",
                      "response-expires": "expires",
                      "response-cache-control": "cache-control",
                      "response-content-disposition": "content-disposition",
                      "response-content-encoding": "content-encoding"}
PRESIGN = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
           "X-Amz-SignedHeaders", "X-Amz-Expires")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection", "expect"}


class Refusal(Exception):
    def __init__(self, status, code, message, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def amz_stamp(t):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def canonical_uri(raw_path):
    """S3's canonical URI: each byte URI-encoded once (RFC 3986 unreserved
    kept, '/' kept), whatever encoding the client sent."""
    return quote(unquote(raw_path), safe="/~")


def canonical_query(pairs):
    """Query for botocore to sort: names and values URI-encoded as SigV4 says."""
    return "&".join("%s=%s" % (quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)


def _die_with_parent():
    """In the forked s3rver: SIGTERM when the front dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Upstream:
    """s3rver as a child process on a fixed loopback port and storage dir."""

    def __init__(self, data, buckets, s3rver):
        self.data, self.buckets, self.s3rver = data, buckets, s3rver
        self.port = 0
        self.proc = None
        self.lock = threading.Lock()
        self.pending = []           # Events of start requests (request_start)

    def start(self):
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            argv = ["node", str(self.s3rver), "-d", self.data, "-a", "127.0.0.1",
                    "-p", str(self.port), "--silent", "--no-vhost-buckets"]
            for b in self.buckets:
                argv += ["--configure-bucket", b]
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True,
                                         preexec_fn=_die_with_parent)
            deadline = time.time() + 30
            while time.time() < deadline:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("s3rver exited: %s" % self.proc.wait())
                m = re.search(r"S3rver listening on \S+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    # drain its output so it never blocks on a full pipe
                    threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                    return
            raise RuntimeError("s3rver did not start")

    def request_start(self, timeout=40.0):
        """From a handler thread: have the main thread start s3rver (a child's
        parent-death signal follows the thread that forked it, and handler
        threads end), and wait for it."""
        ev = threading.Event()
        self.pending.append(ev)
        ev.wait(timeout)

    def service(self):
        """Main thread: serve pending start requests."""
        while self.pending:
            ev = self.pending.pop(0)
            try:
                self.start()
            except RuntimeError as e:
                print("s3rver restart failed: %s" % e, file=sys.stderr, flush=True)
            ev.set()

    def stop(self):
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)

    def running(self):
        return self.proc is not None and self.proc.poll() is None


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.mode = "ok"
        self.refuse_ms = 0
        self.list_page_cap = 0         # > 0: ListMultipartUploads pages hold at most this
        self.reset()

    def reset(self):
        with self.lock:
            self.refused = {}          # code -> count
            self.forwarded = 0
            self.served = 0            # answered by the front itself (abort, lists)
            self.bytes_in = 0
            self.unavailable = 0       # 503s while down, stopped or reads_down
            self.last_refusal = None

    def refuse(self, code, message):
        with self.lock:
            self.refused[code] = self.refused.get(code, 0) + 1
            self.last_refusal = {"code": code, "message": message}

    def add(self, field, n=1):
        with self.lock:
            setattr(self, field, getattr(self, field) + n)

    def snapshot(self):
        with self.lock:
            return {"mode": self.mode, "refused": dict(self.refused),
                    "forwarded": self.forwarded, "served": self.served,
                    "bytes_in": self.bytes_in, "unavailable": self.unavailable,
                    "last_refusal": self.last_refusal}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AmazonS3"
    creds = None       # {"key_id", "secret", "region"}
    state = None       # State
    upstream = None    # Upstream
    spool = None       # temp dir for bodies

    def log_message(self, fmt, *args):
        pass

    # ---- plumbing

    def send_error_xml(self, r):
        rid = uuid.uuid4().hex[:16].upper()
        parts = ["<Code>%s</Code>" % r.code, "<Message>%s</Message>" % escape(r.message)]
        for k, v in r.extra.items():
            parts.append("<%s>%s</%s>" % (k, escape(str(v)), k))
        parts.append("<RequestId>%s</RequestId>" % rid)
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>%s</Error>'
                % "".join(parts)).encode()
        if r.status != 503:
            self.state.refuse(r.code, r.message)
        self.send_response(r.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", rid)
        if r.status == 503:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_plain(self, status, body, ctype="application/xml", headers=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_expect_100(self):
        # S3 answers a refused request instead of 100 Continue, body unsent.
        self._pre = self.preflight()
        if isinstance(self._pre, Refusal):
            self.close_connection = True
            self.send_error_xml(self._pre)
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self.dispatch()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    # ---- the request

    def dispatch(self):
        split = urlsplit(self.path)
        if split.path.startswith("/_"):
            return self.control(split.path)
        pre = getattr(self, "_pre", None)
        self._pre = None
        if pre is None:
            pre = self.preflight()
        if isinstance(pre, Refusal):
            self.drain_or_close()
            return self.send_error_xml(pre)
        spooled = None
        try:
            spooled = self.spool_body(pre)
            if self.state.mode == "down" or not self.upstream.running() or \
                    (self.state.mode == "reads_down" and self.command in ("GET", "HEAD")):
                self.state.add("unavailable")
                raise Refusal(503, "ServiceUnavailable", "Service is unable to handle request.")
            if self.serve_locally(split, spooled):
                return
            if self.command == "DELETE" or (self.command == "POST" and "delete" in
                                            dict(parse_qsl(split.query, True))):
                with DELETE_LOCK:
                    self.forward(spooled)
            else:
                self.forward(spooled)
        except Refusal as r:
            self.send_error_xml(r)
        finally:
            if spooled is not None:
                spooled[0].close()

    def drain_or_close(self):
        """Read a refused body away (keeps the connection usable, and lets the
        client read the answer), up to 64 MiB; past that, close."""
        budget = 64 * CHUNK
        try:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                while budget > 0:
                    size = int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(8192).strip():   # trailers
                            pass
                        return
                    budget -= size
                    while size > 0:
                        got = self.rfile.read(min(CHUNK, size))
                        if not got:
                            raise ValueError("short chunk")
                        size -= len(got)
                    self.rfile.readline(10)
                self.close_connection = True
                return
            n = self.headers.get("Content-Length")
            left = int(n) if n and n.isdigit() else 0
            if left > budget:
                self.close_connection = True
                return
            while left > 0:
                got = self.rfile.read(min(CHUNK, left))
                if not got:
                    break
                left -= len(got)
        except (ValueError, OSError):
            self.close_connection = True

    def preflight(self):
        """Refusal, or the payload rule {"hash": claimed sha256 hex or None}."""
        try:
            return self.check()
        except Refusal as r:
            return r

    def check(self):
        h = self.headers
        te = (h.get("Transfer-Encoding") or "").lower()
        cl = h.get("Content-Length")
        if cl is None and (self.command == "PUT" or te):
            raise Refusal(411, "MissingContentLength",
                          "You must provide the Content-Length HTTP header.")
        if cl is not None and not cl.isdigit():
            raise Refusal(400, "InvalidArgument", "Content-Length must be a number.")
        split = urlsplit(self.path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        q = dict(pairs)
        auth = h.get("Authorization")
        presigned = any(k in q for k in PRESIGN)
        if auth is not None and presigned:
            raise Refusal(400, "InvalidArgument",
                          "Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                          "parameter, Signature query string parameter or the Authorization "
                          "header should be specified", ArgumentName="Authorization")
        if auth is None and not presigned:
            raise Refusal(403, "AccessDenied", "Access Denied")
        if presigned:
            malformed = "AuthorizationQueryParametersError"
            missing = [k for k in PRESIGN if not q.get(k)]
            if missing or q["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
                raise Refusal(400, malformed,
                              "Query-string authentication version 4 requires the "
                              "X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, "
                              "X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
            fields = {"Credential": q["X-Amz-Credential"], "Signature": q["X-Amz-Signature"],
                      "SignedHeaders": q["X-Amz-SignedHeaders"]}
            amz_date = q["X-Amz-Date"]
            expires = q["X-Amz-Expires"]
            if not expires.isdigit():
                raise Refusal(400, malformed, "X-Amz-Expires should be a number")
            if int(expires) > MAX_EXPIRES:
                raise Refusal(400, malformed, "X-Amz-Expires must be less than a week (in "
                              "seconds) that is 604800")
        else:
            malformed = "AuthorizationHeaderMalformed"
            alg, _, rest = auth.strip().partition(" ")
            fields = {}
            for part in (p.strip() for p in rest.split(",")):
                k, eq, v = part.partition("=")
                if eq:
                    fields[k.strip()] = v.strip()
            if alg != "AWS4-HMAC-SHA256" or not all(
                    fields.get(k) for k in ("Credential", "SignedHeaders", "Signature")):
                raise Refusal(400, malformed,
                              "The authorization header is malformed; the authorization header "
                              "requires three components: Credential, SignedHeaders, and "
                              "Signature.")
            amz_date = h.get("X-Amz-Date")
            if amz_date is None:
                raise Refusal(403, "AccessDenied",
                              "AWS authentication requires a valid Date or x-amz-date header")
        try:
            t = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise Refusal(403 if not presigned else 400,
                          "AccessDenied" if not presigned else malformed,
                          "AWS authentication requires a valid Date or x-amz-date header")
        cred = fields["Credential"].split("/")
        what = "The authorization header is malformed" if not presigned else \
            "Error parsing the X-Amz-Credential parameter"
        if len(cred) != 5:
            raise Refusal(400, malformed, what + '; the Credential is mal-formed; expecting '
                          '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
        key_id, day, region, service, term = cred
        if region != self.creds["region"]:
            raise Refusal(400, malformed, "%s; the region '%s' is wrong; expecting '%s'"
                          % (what, region, self.creds["region"]), Region=self.creds["region"])
        if service != "s3":
            raise Refusal(400, malformed, '%s; incorrect service "%s". This endpoint belongs '
                          'to "s3".' % (what, service))
        if term != "aws4_request":
            raise Refusal(400, malformed, '%s; incorrect terminal "%s". This endpoint uses '
                          '"aws4_request".' % (what, term))
        if day != amz_date[:8]:
            raise Refusal(400, malformed, '%s; Invalid credential date "%s". This date is not '
                          'the same as X-Amz-Date: "%s".' % (what, day, amz_date[:8]))
        now = time.time()
        if presigned:
            if now > t + int(expires):
                raise Refusal(403, "AccessDenied", "Request has expired",
                              **{"X-Amz-Expires": expires, "Expires": amz_stamp(t + int(expires)),
                                 "ServerTime": amz_stamp(now)})
            if t > now + MAX_SKEW:
                raise Refusal(403, "AccessDenied", "Request is not valid yet")
        elif abs(now - t) > MAX_SKEW:
            raise Refusal(403, "RequestTimeTooSkewed",
                          "The difference between the request time and the current time is too "
                          "large.", RequestTime=amz_date, ServerTime=amz_stamp(now),
                          MaxAllowedSkewMilliseconds=MAX_SKEW * 1000)
        if not hmac.compare_digest(key_id, self.creds["key_id"]):
            raise Refusal(403, "InvalidAccessKeyId",
                          "The AWS Access Key Id you provided does not exist in our records.",
                          AWSAccessKeyId=key_id)
        signed = [n.strip().lower() for n in fields["SignedHeaders"].split(";")]
        sent = {k.lower() for k in h.keys()}
        unsigned = sorted(n for n in sent if n.startswith("x-amz-") and n not in signed)
        if "host" not in signed:
            unsigned.insert(0, "host")
        if unsigned:
            raise Refusal(403, "AccessDenied", "There were headers present in the request "
                          "which were not signed", HeadersNotSigned=", ".join(unsigned))
        claimed = h.get("X-Amz-Content-SHA256")
        if claimed is None and not presigned:
            raise Refusal(400, "InvalidRequest",
                          "Missing required header for this request: x-amz-content-sha256")
        if claimed is not None:
            if claimed.startswith("STREAMING-"):
                raise Refusal(501, "NotImplemented", "The S3 front does not take aws-chunked "
                              "(STREAMING-*) payloads; sign each body's SHA-256 instead.")
            if claimed != "UNSIGNED-PAYLOAD" and not HEX64.match(claimed):
                raise Refusal(400, "InvalidArgument",
                              "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                              "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, or a valid sha256 value.",
                              ArgumentName="x-amz-content-sha256", ArgumentValue=claimed)
        mismatch = ("The request signature we calculated does not match the signature you "
                    "provided. Check your key and signing method.")
        for name in signed:
            if h.get(name) is None:
                raise Refusal(403, "SignatureDoesNotMatch", mismatch,
                              Note="'%s' is named in SignedHeaders but the request does not "
                                   "carry it" % name)
        qpairs = [(unquote(k), unquote(v)) for k, v in
                  (p.partition("=")[::2] for p in split.query.split("&") if p)]
        if presigned:
            qpairs = [(k, v) for k, v in qpairs if k != "X-Amz-Signature"]
        url = "http://%s%s" % (h["Host"], canonical_uri(split.path))
        if qpairs:
            url += "?" + canonical_query(qpairs)
        payload = claimed if claimed is not None else "UNSIGNED-PAYLOAD"
        canonical, sts, want = sigv4_parts(
            self.command, url, [(n, h.get_all(n)) for n in signed], payload, amz_date,
            self.creds, "s3", s3=True)
        if not hmac.compare_digest(want, fields["Signature"]):
            raise Refusal(403, "SignatureDoesNotMatch", mismatch, AWSAccessKeyId=key_id,
                          StringToSign=sts, SignatureProvided=fields["Signature"],
                          CanonicalRequest=canonical)
        return {"hash": claimed if claimed and claimed != "UNSIGNED-PAYLOAD" else None}

    def spool_body(self, pre):
        """(temp file, length) of the whole body, hashed as it came; Refusal
        when it is short or does not match what was signed."""
        n = int(self.headers.get("Content-Length") or 0)
        f = tempfile.TemporaryFile(dir=self.spool)
        sha = hashlib.sha256()
        left = n
        try:
            while left > 0:
                got = self.rfile.read(min(CHUNK, left))
                if not got:
                    self.close_connection = True
                    raise Refusal(400, "IncompleteBody", "You did not provide the number of "
                                  "bytes specified by the Content-Length HTTP header")
                sha.update(got)
                f.write(got)
                left -= len(got)
            self.state.add("bytes_in", n)
            digest = sha.hexdigest()
            if pre["hash"] is not None and pre["hash"] != digest:
                raise Refusal(400, "XAmzContentSHA256Mismatch", "The provided "
                              "'x-amz-content-sha256' header does not match what was computed.",
                              ClientComputedContentSHA256=pre["hash"],
                              S3ComputedContentSHA256=digest)
            ck = self.headers.get("x-amz-checksum-sha256")
            if ck is not None and ck != base64.b64encode(sha.digest()).decode():
                raise Refusal(400, "BadDigest", "The SHA256 you specified did not match the "
                              "calculated checksum.")
            f.seek(0)
            return f, n
        except BaseException:
            f.close()
            raise

    # ---- served here, on s3rver's storage

    def uploads_dir(self, bucket):
        return Path(self.upstream.data) / bucket / "._S3rver_uploads"

    def serve_locally(self, split, spooled):
        parts = split.path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0])
        key = unquote(parts[1]) if len(parts) > 1 else ""
        q = dict(parse_qsl(split.query, keep_blank_values=True))
        if not bucket or "/" in bucket or bucket.startswith("."):
            return False
        if not (Path(self.upstream.data) / bucket).is_dir():
            return False            # s3rver answers NoSuchBucket
        if key and "uploadId" in q and self.command in ("DELETE", "GET", "POST"):
            d = self.uploads_dir(bucket) / q["uploadId"]
            if not re.fullmatch(r"[0-9a-f]{32}", q["uploadId"]) or not d.is_dir() or \
                    (d / "key").read_text() != key:
                raise Refusal(404, "NoSuchUpload", "The specified upload does not exist. The "
                              "upload ID may be invalid, or the upload may have been aborted "
                              "or completed.", UploadId=q["uploadId"])
            if self.command == "DELETE":
                shutil.rmtree(d, ignore_errors=True)
                self.state.add("served")
                self.send_plain(204, b"")
                return True
            if self.command == "GET":
                self.list_parts(bucket, key, q["uploadId"], d)
                return True
            self.check_complete(d, spooled)
            return False
        if not key and "uploads" in q and self.command == "GET":
            self.list_uploads(bucket, q)
            return True
        return False

    def list_parts(self, bucket, key, upload_id, d):
        rows = []
        for p in sorted((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            md5 = (d / (p.name + ".md5")).read_text().strip() if (d / (p.name + ".md5")).exists() else ""
            st = p.stat()
            rows.append("<Part><PartNumber>%s</PartNumber><LastModified>%s</LastModified>"
                        "<ETag>&quot;%s&quot;</ETag><Size>%d</Size></Part>"
                        % (p.name, time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                 time.gmtime(st.st_mtime)), md5, st.st_size))
        self.state.add("served")
        self.send_plain(200, '<?xml version="1.0" encoding="UTF-8"?>\n<ListPartsResult '
                        'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>%s</Bucket>'
                        '<Key>%s</Key><UploadId>%s</UploadId><IsTruncated>false</IsTruncated>'
                        '%s</ListPartsResult>' % (escape(bucket), escape(key), upload_id,
                                                  "".join(rows)))

    def list_uploads(self, bucket, q):
        """ListMultipartUploads as the S3 API reference gives it (GET /B?uploads):
        parameters prefix, delimiter, max-uploads (1..1000, default 1000),
        key-marker, upload-id-marker (ignored without key-marker), encoding-type
        (url). Uploads sorted by key, then by initiation time within a key
        (then by id, so paging is stable). After key-marker K: keys > K, and
        with upload-id-marker U also K's uploads after U: after it in the
        listing order when U is one of K's uploads (so NextUploadIdMarker
        pages lose nothing when ids do not sort by time), else those whose id
        is lexicographically greater than U (the reference's wording). With a delimiter, keys
        sharing prefix+...+delimiter are rolled into one CommonPrefixes entry,
        which counts against max-uploads. Truncated answers carry
        NextKeyMarker and NextUploadIdMarker (the last upload listed). Initiated
        is the mtime of the upload's `key` file, written once when s3rver
        creates the upload (the directory's mtime moves with every part)."""
        prefix = q.get("prefix", "")
        delim = q.get("delimiter", "")
        enc = q.get("encoding-type")
        if enc is not None and enc != "url":
            raise Refusal(400, "InvalidArgument", "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=enc)
        try:
            max_up = int(q.get("max-uploads", "1000"))
        except ValueError:
            max_up = -1
        if max_up < 0 or str(max_up) != q.get("max-uploads", "1000").lstrip("+"):
            raise Refusal(400, "InvalidArgument", "Provided max-uploads not an integer or "
                          "within integer range", ArgumentName="max-uploads",
                          ArgumentValue=q.get("max-uploads"))
        max_up = min(max_up, 1000)
        if self.state.list_page_cap:   # a test's small pages: S3 may return fewer too
            max_up = min(max_up, self.state.list_page_cap)
        kmark = q.get("key-marker", "")
        umark = q.get("upload-id-marker", "") if kmark else ""
        ud = self.uploads_dir(bucket)
        found = []
        if ud.is_dir():
            for d in ud.iterdir():
                try:
                    key = (d / "key").read_text()
                    t = (d / "key").stat().st_mtime
                except OSError:
                    continue
                if not key.startswith(prefix):
                    continue
                if kmark and (key < kmark or (key == kmark and not umark)):
                    continue
                found.append((key, t, d.name))
        found.sort()
        if umark:
            # K's uploads after the marker: in listing order (initiation time)
            # when the marker is one of them, which is what paging hands back;
            # else those with a lexicographically greater id.
            same = [f for f in found if f[0] == kmark]
            pos = [i for i, f in enumerate(same) if f[2] == umark]
            after = same[pos[0] + 1:] if pos else [f for f in same if f[2] > umark]
            found = [f for f in found if f[0] != kmark] + after
            found.sort()

        def e(v):
            return escape(quote(v, safe="/") if enc == "url" else v)
        rows, prefixes, seen, n, truncated, last = [], [], set(), 0, False, None
        for key, t, uid in found:
            cp = None
            if delim:
                i = key.find(delim, len(prefix))
                if i >= 0:
                    cp = key[:i + len(delim)]
            if cp is not None and cp in seen:
                continue
            if n == max_up:
                truncated = True
                break
            n += 1
            if cp is not None:
                seen.add(cp)
                prefixes.append("<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % e(cp))
                last = (cp, "")
                continue
            last = (key, uid)
            rows.append("<Upload><Key>%s</Key><UploadId>%s</UploadId>"
                        "<Initiator><ID>%s</ID><DisplayName>%s</DisplayName></Initiator>"
                        "<Owner><ID>%s</ID><DisplayName>%s</DisplayName></Owner>"
                        "<StorageClass>STANDARD</StorageClass><Initiated>%s</Initiated>"
                        "</Upload>"
                        % (e(key), escape(uid), OWNER_ID, OWNER_NAME, OWNER_ID, OWNER_NAME,
                           time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
                           + ".%03dZ" % int((t % 1) * 1000)))
        body = ['<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                "<Bucket>%s</Bucket>" % escape(bucket),
                "<KeyMarker>%s</KeyMarker>" % e(kmark),
                "<UploadIdMarker>%s</UploadIdMarker>" % escape(umark)]
        if truncated and last:
            body.append("<NextKeyMarker>%s</NextKeyMarker>" % e(last[0]))
            body.append("<NextUploadIdMarker>%s</NextUploadIdMarker>" % escape(last[1]))
        if enc:
            body.append("<EncodingType>url</EncodingType>")
        if delim:
            body.append("<Delimiter>%s</Delimiter>" % e(delim))
        body.append("<Prefix>%s</Prefix>" % e(prefix))
        body.append("<MaxUploads>%d</MaxUploads>" % max_up)
        body.append("<IsTruncated>%s</IsTruncated>" % ("true" if truncated else "false"))
        body.extend(rows)
        body.extend(prefixes)
        body.append("</ListMultipartUploadsResult>")
        self.state.add("served")
        self.send_plain(200, "".join(body))

    def check_complete(self, d, spooled):
        f, n = spooled
        if n > 4 * CHUNK:
            raise Refusal(400, "MalformedXML", "The XML you provided was too large.")
        body = f.read()
        f.seek(0)
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise Refusal(400, "MalformedXML", "The XML you provided was not well-formed or did "
                          "not validate against our published schema.")
        parts = []
        for el in root.iter():
            if el.tag.split("}")[-1] != "Part":
                continue
            kv = {c.tag.split("}")[-1]: (c.text or "").strip() for c in el}
            if not kv.get("PartNumber", "").isdigit() or "ETag" not in kv:
                raise Refusal(400, "MalformedXML", "The XML you provided was not well-formed or "
                              "did not validate against our published schema.")
            parts.append((int(kv["PartNumber"]), kv["ETag"].replace('"', "")))
        if not parts:
            raise Refusal(400, "MalformedXML", "The XML you provided was not well-formed or did "
                          "not validate against our published schema.")
        nums = [p for p, _ in parts]
        if nums != sorted(set(nums)):
            raise Refusal(400, "InvalidPartOrder", "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.")
        for i, (num, etag) in enumerate(parts):
            p = d / str(num)
            try:
                md5 = (d / ("%d.md5" % num)).read_text().strip()
                size = p.stat().st_size
            except OSError:
                md5, size = None, 0
            if md5 is None or md5 != etag:
                raise Refusal(400, "InvalidPart", "One or more of the specified parts could not "
                              "be found. The part may not have been uploaded, or the specified "
                              "entity tag may not match the part's entity tag.",
                              PartNumber=num, ETag=etag)
            if i < len(parts) - 1 and size < MIN_PART:
                raise Refusal(400, "EntityTooSmall", "Your proposed upload is smaller than the "
                              "minimum allowed object size.", ProposedSize=size,
                              MinSizeAllowed=MIN_PART, PartNumber=num)

    # ---- proxied

    def forward(self, spooled):
        f, n = spooled
        split = urlsplit(self.path)
        # s3rver takes anonymous requests: the auth has been checked here. S3
        # lets a signed GET override response headers (response-content-type,
        # ...) but refuses them on anonymous requests, as s3rver does, so the
        # front applies the overrides of the (verified) request itself.
        overrides = {}
        kept = []
        for p in split.query.split("&"):
            name = p.split("=", 1)[0]
            if not p or name in PRESIGN + ("X-Amz-Security-Token",):
                continue
            if self.command == "GET" and name in RESPONSE_OVERRIDES:
                overrides[RESPONSE_OVERRIDES[name]] = unquote(p.split("=", 1)[1] if "=" in p
                                                              else "")
                continue
            kept.append(p)
        qs = "&".join(kept)
        target = split.path + ("?" + qs if qs else "")
        headers = {}
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in HOP or lk in ("authorization", "host", "content-length"):
                continue
            headers[k] = v
        headers["Host"] = "127.0.0.1:%d" % self.upstream.port
        headers["Content-Length"] = str(n)
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=300,
                                          blocksize=CHUNK)
        try:
            try:
                conn.request(self.command, target, body=f if n else None, headers=headers)
                resp = conn.getresponse()
            except OSError:
                raise Refusal(503, "ServiceUnavailable", "Service is unable to handle request.")
            self.state.add("forwarded")
            self.send_response_only(resp.status, resp.reason)   # s3rver's Date, Server
            length = resp.getheader("Content-Length")
            chunked = length is None and self.command != "HEAD" and resp.status not in (204, 304)
            for k, v in resp.getheaders():
                if k.lower() in HOP or k.lower() == "content-length":
                    continue
                if resp.status == 200 and k.lower() in overrides:
                    v = overrides.pop(k.lower())
                self.send_header(k, v)
            if resp.status == 200:
                for k, v in overrides.items():
                    self.send_header(k, v)
            if length is not None:
                self.send_header("Content-Length", length)
            elif chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                buf = resp.read(CHUNK)
                if not buf:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(buf), buf) if chunked else buf)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()

    # ---- control

    def control(self, path):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        js = lambda st, obj: self.send_plain(st, json.dumps(obj), "application/json")
        if path == "/_stats" and self.command == "GET":
            snap = self.state.snapshot()
            snap["upstream"] = {"running": self.upstream.running(), "port": self.upstream.port,
                                "pid": self.upstream.proc.pid if self.upstream.proc else None}
            return js(200, snap)
        if path == "/_reset" and self.command == "POST":
            self.state.reset()
            return js(200, {"ok": True})
        if path == "/_control" and self.command == "POST":
            try:
                req = json.loads(raw or b"{}")
            except ValueError:
                return js(400, {"error": "the body must be JSON"})
            if req.get("mode") in ("ok", "down", "reads_down"):
                self.state.mode = req["mode"]
            elif "mode" in req:
                return js(400, {"error": "mode must be ok, down or reads_down"})
            cap = req.get("list_page_cap")
            if cap is not None:
                if not isinstance(cap, int) or not 0 <= cap <= 1000:
                    return js(400, {"error": "list_page_cap must be an integer in 0..1000"})
                self.state.list_page_cap = cap
            refuse = req.get("refuse_ms")
            if refuse is not None:
                if not isinstance(refuse, int) or not 0 < refuse <= 60000:
                    return js(400, {"error": "refuse_ms must be an integer in 1..60000"})
                # closed by the main thread right after this answer
                self.close_connection = True
                self.state.refuse_ms = refuse
            up = req.get("upstream")
            if up == "stop":
                self.upstream.stop()
            elif up == "start":
                self.upstream.request_start()
            elif up is not None:
                return js(400, {"error": "upstream must be stop or start"})
            return js(200, {"ok": True, "mode": self.state.mode,
                            "upstream": self.upstream.running()})
        return js(404, {"error": "no such control endpoint"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--data", required=True, help="s3rver's storage directory")
    ap.add_argument("--bucket", action="append", default=[], help="create at start")
    ap.add_argument("--key-id", default="AKIDTEST")
    ap.add_argument("--secret", default="secretTEST")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--s3rver", default=str(S3RVER), help="s3rver's bin/s3rver.js")
    ap.add_argument("--spool", default=None, help="where bodies wait while hashed "
                    "(default: DATA/../spool or the temp dir)")
    args = ap.parse_args(argv)
    if SigV4Auth is None:
        print("the S3 front needs botocore (Debian: python3-botocore)", file=sys.stderr)
        return 2
    if not Path(args.s3rver).is_file():
        print("s3rver not installed at %s (scripts/install-deps installs it)" % args.s3rver,
              file=sys.stderr)
        return 2
    os.makedirs(args.data, exist_ok=True)
    upstream = Upstream(args.data, args.bucket, args.s3rver)
    upstream.start()
    handler = type("H", (Handler,), {
        "creds": {"key_id": args.key_id, "secret": args.secret, "region": args.region},
        "state": State(), "upstream": upstream, "spool": args.spool})
    srv = Server(("127.0.0.1", args.port), handler)
    threading.Thread(target=srv.serve_forever, args=(0.1,), daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    port = srv.server_address[1]
    print("ready port=%d upstream=%d" % (port, upstream.port), flush=True)
    while not done.wait(0.05):
        upstream.service()
        if handler.state.refuse_ms:            # {"refuse_ms": N}: connections refused
            ms, handler.state.refuse_ms = handler.state.refuse_ms, 0
            srv.shutdown()
            srv.server_close()
            time.sleep(ms / 1000.0)
            for _ in range(100):               # the port may linger briefly
                try:
                    srv = Server(("127.0.0.1", port), handler)
                    break
                except OSError:
                    time.sleep(0.1)
            threading.Thread(target=srv.serve_forever, args=(0.1,), daemon=True).start()
    srv.shutdown()
    srv.server_close()
    upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
