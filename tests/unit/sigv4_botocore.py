#!/usr/bin/env python3
"""sigv4_botocore.py — cross-checks core/sigv4.c against an independent
implementation: Debian's python3-botocore (botocore.auth.SigV4Auth,
S3SigV4Auth, S3SigV4QueryAuth).

Usage: sigv4_botocore.py <path to test_sigv4>. The C side runs as
`test_sigv4 --batch` (request descriptions on stdin, the headers sl_sigv4
adds on stdout). Requests are generated from a fixed seed: query parameters
with reserved and non-ASCII characters (spelled with different but equivalent
escapes on the C side), header values with runs of blanks, repeated headers,
POST/PUT bodies, session tokens, S3 and non-S3 paths, presigned URLs.

Exit 0 when every request signs identically, 1 on any difference, 77 (skip)
only when botocore cannot be imported.
"""
import datetime
import hashlib
import random
import subprocess
import sys
import types
from unittest import mock
from urllib.parse import parse_qs, quote, urlsplit

try:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:
    print("python3-botocore is not installed: skipped")
    sys.exit(77)

UNRESERVED = "-_.~"
KEY_CHARS = "abcXYZ019-_.~/=&+ %!*'()$,;:@?#[]é€"


def aws_quote(s, keep_slash=False):
    """AWS UriEncode: RFC 3986 unreserved kept, everything else %XX (uppercase)."""
    return quote(s, safe=UNRESERVED + ("/" if keep_slash else ""))


def odd_quote(s, rnd):
    """An equivalent but non-canonical spelling: lowercase escapes, and
    unreserved or sub-delim characters escaped or not at random."""
    out = []
    for ch in s:
        b = ch.encode("utf-8")
        if ch.isascii() and (ch.isalnum() or ch in UNRESERVED):
            if rnd.random() < 0.3:
                out.append("".join("%%%02x" % x for x in b))
            else:
                out.append(ch)
        elif ch in "!*'()$,;:@" and rnd.random() < 0.5:
            out.append(ch)  # legal unescaped in a query; canonical form escapes it
        else:
            esc = "".join("%%%02X" % x for x in b)
            out.append(esc.lower() if rnd.random() < 0.5 else esc)
    return "".join(out)


def rand_str(rnd, chars, lo, hi):
    return "".join(rnd.choice(chars) for _ in range(rnd.randint(lo, hi)))


def make_cases(rnd):
    cases = []
    hosts = ["textract.eu-west-1.amazonaws.com", "Example.AmazonAWS.com",
             "127.0.0.1:9000", "bucket.s3.amazonaws.com:443", "localhost:8080"]
    for i in range(60):
        s3 = i % 3 == 0
        scheme = "http" if i % 5 == 0 else "https"
        host = rnd.choice(hosts)
        if s3:
            segs = [rand_str(rnd, "abcXYZ019-_.~!$'()*+,;=:@ é", 1, 8) for _ in range(rnd.randint(1, 3))]
            segs = [s for s in segs if s not in (".", "..")]
            raw_path = "/" + "/".join(segs)
            path = aws_quote(raw_path, keep_slash=True)  # botocore signs S3 paths as given
        else:
            segs = [rand_str(rnd, "abcXYZ019-_.~%", 1, 6) for _ in range(rnd.randint(0, 3))]
            if rnd.random() < 0.3:
                segs.insert(rnd.randint(0, len(segs)), rnd.choice([".", "..", ""]))
            path = "/" + "/".join(aws_quote(s) for s in segs)
        params = []
        for _ in range(rnd.randint(0, 5)):
            k = rand_str(rnd, KEY_CHARS, 1, 6)
            v = rand_str(rnd, KEY_CHARS, 0, 8)
            params.append((k, v))
        if params and rnd.random() < 0.3:
            params.append((params[0][0], rand_str(rnd, KEY_CHARS, 0, 4)))  # repeated key
        headers = []
        for j in range(rnd.randint(0, 4)):
            name = rnd.choice(["X-Custom-%d" % j, "x-amz-meta-Note", "Content-Type",
                               "X-Amz-Target", "Range", "My-Header"])
            val = rnd.choice(["  a   b\tc  ", "application/x-amz-json-1.1",
                              "Textract.AnalyzeDocument", "bytes=0-9", "\"q  u o t e\"",
                              rand_str(rnd, "abc 123\t=,;:/", 1, 12)])
            headers.append((name, val))
        method = rnd.choice(["GET", "POST", "PUT", "DELETE", "HEAD"])
        body = b""
        if method in ("POST", "PUT"):
            body = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 64)))
        token = None
        if rnd.random() < 0.3:
            token = rand_str(rnd, "ABCxyz0123456789+/=", 20, 200)
        cases.append(dict(
            scheme=scheme, host=host, path=path, params=params, headers=headers,
            method=method, body=body, token=token, s3=s3,
            unsigned=s3 and rnd.random() < 0.3,
            content_sha=(not s3) and rnd.random() < 0.2,
            now=1440938160 + rnd.randint(0, 10 ** 8),
            region=rnd.choice(["us-east-1", "eu-west-1", "ap-southeast-2"]),
            service="s3" if s3 else rnd.choice(["textract", "service", "sts"]),
            presign=0,
        ))
    for i in range(12):
        c = dict(cases[i * 3])  # S3 ones
        c.update(method="GET", headers=[], body=b"", unsigned=False,
                 presign=rnd.choice([60, 3600, 86400, 604800]))
        # botocore's presigner keeps one value per key (parse_qs into a dict)
        c["params"] = list(dict(c["params"]).items())
        cases.append(c)
    return cases


def botocore_sign(c, key, secret):
    creds = Credentials(key, secret, c["token"])
    url = "%s://%s%s" % (c["scheme"], c["host"], c["path"])
    fixed = datetime.datetime.utcfromtimestamp(c["now"])
    req = AWSRequest(method=c["method"], url=url, data=c["body"] or None)
    for name, val in c["headers"]:
        req.headers[name] = val  # HTTPHeaders: a repeated name is appended
    if c["presign"]:
        # S3SigV4QueryAuth re-serialises the query itself; params go through it
        if c["params"]:
            req.url = url + "?" + "&".join(
                "%s=%s" % (aws_quote(k), aws_quote(v)) for k, v in c["params"])
        auth = botocore.auth.S3SigV4QueryAuth(creds, c["service"], c["region"],
                                              expires=c["presign"])
    else:
        req.params = list(c["params"])  # encoded by botocore, sorted by key then value
        if c["s3"]:
            auth = botocore.auth.S3SigV4Auth(creds, c["service"], c["region"])
            if c["unsigned"]:
                req.context["client_config"] = types.SimpleNamespace(
                    s3={"payload_signing_enabled": False})
        else:
            auth = botocore.auth.SigV4Auth(creds, c["service"], c["region"])
            if c["content_sha"]:
                req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(c["body"]).hexdigest()
    if hasattr(botocore.auth, "get_current_datetime"):  # newer botocore
        with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
            auth.add_auth(req)
    else:  # Debian 12's 1.29: datetime.datetime.utcnow()
        with mock.patch("botocore.auth.datetime") as dt:
            dt.datetime.utcnow.return_value = fixed
            dt.datetime.strptime = datetime.datetime.strptime
            auth.add_auth(req)
    return req


def c_block(c, key, secret, rnd):
    query = "&".join(
        "%s=%s" % (odd_quote(k, rnd), odd_quote(v, rnd)) if (v or rnd.random() < 0.5)
        else odd_quote(k, rnd)  # "k" and "k=" are the same parameter
        for k, v in c["params"])
    url = "%s://%s%s" % (c["scheme"], c["host"], c["path"])
    if query:
        url += "?" + query
    lines = ["key " + key, "secret " + secret, "region " + c["region"],
             "service " + c["service"], "method " + c["method"], "url " + url,
             "now %d" % c["now"]]
    flags = (1 if c["s3"] else 0) | (2 if (c["s3"] or c["content_sha"]) else 0)
    lines.append("flags %d" % flags)
    if c["token"]:
        lines.append("token " + c["token"])
    if c["presign"]:
        lines.append("presign %d" % c["presign"])
    elif c["unsigned"]:
        lines.append("payload UNSIGNED-PAYLOAD")
    else:
        lines.append("body " + c["body"].hex())
    for name, val in c["headers"]:
        lines.append("header %s: %s" % (name, val))
    lines.append("end")
    return "\n".join(lines) + "\n", url


def main():
    if len(sys.argv) != 2:
        print("usage: sigv4_botocore.py <test_sigv4>", file=sys.stderr)
        return 2
    rnd = random.Random(20150830)
    key, secret = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    cases = make_cases(rnd)
    blocks, urls = [], []
    for c in cases:
        b, u = c_block(c, key, secret, rnd)
        blocks.append(b)
        urls.append(u)
    out = subprocess.run([sys.argv[1], "--batch"], input="".join(blocks), capture_output=True,
                         text=True, check=True).stdout
    results = [r.strip().split("\n") for r in out.split("end\n") if r.strip()]
    if len(results) != len(cases):
        print("expected %d results from the C side, got %d" % (len(cases), len(results)))
        return 1

    bad = 0
    for n, (c, res, url) in enumerate(zip(cases, results, urls)):
        req = botocore_sign(c, key, secret)
        if res[0] != "rc 0":
            print("case %d: C refused (%s): %s" % (n, res[0], url))
            bad += 1
            continue
        if c["presign"]:
            got = parse_qs(urlsplit(res[1][4:]).query, keep_blank_values=True)
            want = parse_qs(urlsplit(req.url).query, keep_blank_values=True)
            ok = got == want
        else:
            got = dict(line.split(": ", 1) for line in res[1:])
            want = {"Authorization": req.headers["Authorization"],
                    "X-Amz-Date": req.headers["X-Amz-Date"]}
            if "X-Amz-Content-SHA256" in req.headers:
                want["X-Amz-Content-Sha256"] = req.headers["X-Amz-Content-SHA256"]
            if c["token"]:
                want["X-Amz-Security-Token"] = c["token"]
            got.pop("Host", None)  # botocore derives the same Host but does not add it
            ok = got == want
        if not ok:
            bad += 1
            print("case %d differs: %s %s\n  C:        %s\n  botocore: %s"
                  % (n, c["method"], url, got, want))
    print("%d requests signed by core/sigv4.c and botocore %s: %d differ"
          % (len(cases), botocore.__version__, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
