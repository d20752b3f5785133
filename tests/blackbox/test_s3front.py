"""The S3 front (tests/standins/s3front.py): s3rver behind a SigV4 check.

What Sluice's S3 backend is tested against must refuse what S3 refuses, or it
hides bugs. Each refusal below is shown on a request that is right in every
other way (signed by botocore's S3SigV4Auth, then spoilt in one respect), and
a refused body is shown not to be stored. A good round trip (put, ranged get,
head, list, multipart with the operations the front adds to s3rver) passes,
and a 200 MiB streamed PUT leaves the front's RSS flat.
"""

import datetime
import hashlib
import base64
import http.client
import threading
import time
import xml.etree.ElementTree as ET
from unittest import mock
from urllib.parse import quote

import pytest
import requests

from sluice_harness import S3_KEY_ID, S3_REGION, S3_SECRET, REPO

botocore = pytest.importorskip("botocore")
import botocore.auth  # noqa: E402
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

S3RVER = REPO / "tests" / "s3" / "node_modules" / "s3rver" / "bin" / "s3rver.js"
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not S3RVER.is_file(),
                                reason="s3rver not installed (scripts/install-deps)")


@pytest.fixture(scope="module")
def front():
    from sluice_harness import S3Front
    f = S3Front(("sluice",))
    yield f
    f.stop()


class _Clock:
    """botocore.auth's datetime with utcnow() shifted by `delta` seconds."""

    def __init__(self, delta):
        real = datetime.datetime
        self.datetime = type("dt", (real,), {
            "utcnow": staticmethod(lambda: real.utcnow() + datetime.timedelta(seconds=delta))})


def sign(front, method, key, body=b"", headers=None, query="", key_id=S3_KEY_ID,
         secret=S3_SECRET, payload=None, skew=0, signer=S3SigV4Auth):
    """(url, headers) of a request botocore signs for the front; payload
    replaces the body's SHA-256 in x-amz-content-sha256."""
    url = "%s/sluice/%s%s" % (front.url, quote(key), "?" + query if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if payload is not None:
        signer = type("P", (signer,), {"payload": lambda self, r: payload})
    with mock.patch.object(botocore.auth, "datetime", _Clock(skew)):
        signer(Credentials(key_id, secret), "s3", S3_REGION).add_auth(req)
    return url, dict(req.headers.items())


def code(resp):
    assert resp.headers.get("Content-Type", "").startswith("application/xml"), resp.text
    root = ET.fromstring(resp.content)
    assert root.tag == "Error" and root.findtext("RequestId"), resp.text
    return root.findtext("Code")


def put(front, key, body, **kw):
    url, h = sign(front, "PUT", key, body, **kw)
    return requests.put(url, data=body, headers=h, timeout=60)


# ---------------------------------------------------------------- passes

def test_round_trip_through_the_front(front):
    c = front.client()
    c.put_object(Bucket="sluice", Key="dir/a b+c.txt", Body=b"0123456789")
    r = c.get_object(Bucket="sluice", Key="dir/a b+c.txt", Range="bytes=2-5")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert r["Body"].read() == b"2345" and r["ContentRange"] == "bytes 2-5/10"
    assert c.head_object(Bucket="sluice", Key="dir/a b+c.txt")["ContentLength"] == 10
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="sluice", Prefix="dir/")["Contents"]]
    assert keys == ["dir/a b+c.txt"]

    up = c.create_multipart_upload(Bucket="sluice", Key="multi")["UploadId"]
    p1, p2 = b"a" * (5 * MiB), b"tail"
    e1 = c.upload_part(Bucket="sluice", Key="multi", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = c.upload_part(Bucket="sluice", Key="multi", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    ups = c.list_multipart_uploads(Bucket="sluice")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in ups] == [("multi", up)]
    parts = c.list_parts(Bucket="sluice", Key="multi", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, 4)]
    c.complete_multipart_upload(Bucket="sluice", Key="multi", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    got = c.get_object(Bucket="sluice", Key="multi", Range="bytes=%d-" % (5 * MiB - 2))
    assert got["Body"].read() == b"aatail"
    assert "multi" in front.keys() and front.pending_uploads() == []

    # AbortMultipartUpload (served by the front: s3rver answers 405) leaves no parts
    up = c.create_multipart_upload(Bucket="sluice", Key="aborted")["UploadId"]
    c.upload_part(Bucket="sluice", Key="aborted", UploadId=up, PartNumber=1, Body=b"x" * 100)
    assert front.pending_uploads() == [up]
    c.abort_multipart_upload(Bucket="sluice", Key="aborted", UploadId=up)
    assert front.pending_uploads() == [] and "aborted" not in front.keys()
    with pytest.raises(ClientError) as e:
        c.abort_multipart_upload(Bucket="sluice", Key="aborted", UploadId=up)
    assert e.value.response["Error"]["Code"] == "NoSuchUpload"

    c.delete_object(Bucket="sluice", Key="multi")
    assert "multi" not in front.keys()


def test_concurrent_deletes_in_one_prefix_all_succeed(front):
    """s3rver removes a deleted key's emptied parent directories with a
    check-then-rmdir: two deletes under one prefix at once could answer 500.
    S3 does not, so the front sends deletes to s3rver one at a time."""
    keys = ["race/d%d/k%d" % (r, i) for r in range(5) for i in range(8)]
    c = front.client()
    for k in keys:
        c.put_object(Bucket="sluice", Key=k, Body=b"x")
    statuses = []
    signed = [sign(front, "DELETE", k) for k in keys]
    go = threading.Barrier(len(keys))

    def delete(url, headers):
        go.wait()
        statuses.append(requests.delete(url, headers=headers, timeout=60).status_code)

    threads = [threading.Thread(target=delete, args=s) for s in signed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [204], statuses
    assert "Contents" not in c.list_objects_v2(Bucket="sluice", Prefix="race/")


def test_presigned_urls(front):
    c = front.client()
    c.put_object(Bucket="sluice", Key="pre", Body=b"presigned body")
    url = c.generate_presigned_url("get_object", Params={"Bucket": "sluice", "Key": "pre"},
                                   ExpiresIn=60)
    r = requests.get(url, headers={"Range": "bytes=0-8"}, timeout=10)
    assert r.status_code == 206 and r.content == b"presigned"
    bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    r = requests.get(bad, timeout=10)
    assert r.status_code == 403 and code(r) == "SignatureDoesNotMatch"
    other = url.replace("/sluice/pre?", "/sluice/pre2?")     # signed for another key
    assert code(requests.get(other, timeout=10)) == "SignatureDoesNotMatch"
    with mock.patch.object(botocore.auth, "datetime", _Clock(-7200)):
        old = c.generate_presigned_url("get_object", Params={"Bucket": "sluice", "Key": "pre"},
                                       ExpiresIn=60)
    r = requests.get(old, timeout=10)
    assert r.status_code == 403 and code(r) == "AccessDenied" and "expired" in r.text
    week = c.generate_presigned_url("get_object", Params={"Bucket": "sluice", "Key": "pre"},
                                    ExpiresIn=604801)
    r = requests.get(week, timeout=10)
    assert r.status_code == 400 and code(r) == "AuthorizationQueryParametersError"
    # a presigned PUT
    purl = c.generate_presigned_url("put_object", Params={"Bucket": "sluice", "Key": "pput"},
                                    ExpiresIn=60)
    assert requests.put(purl, data=b"via presign", timeout=10).status_code == 200
    assert c.get_object(Bucket="sluice", Key="pput")["Body"].read() == b"via presign"


# ---------------------------------------------------------------- refusals

def test_good_signed_put_passes(front):
    r = put(front, "raw-ok", b"fine")
    assert r.status_code == 200, r.text
    assert "raw-ok" in front.keys()


def test_bad_signature_is_refused(front):
    r = put(front, "bad-secret", b"data", secret="not-the-secret")
    assert r.status_code == 403 and code(r) == "SignatureDoesNotMatch"
    root = ET.fromstring(r.content)
    assert root.findtext("CanonicalRequest").startswith("PUT\n/sluice/bad-secret\n")
    # a signed header changed after signing
    url, h = sign(front, "PUT", "tampered", b"data", headers={"x-amz-meta-who": "me"})
    h["x-amz-meta-who"] = "someone else"
    r = requests.put(url, data=b"data", headers=h, timeout=10)
    assert r.status_code == 403 and code(r) == "SignatureDoesNotMatch"
    # the path changed after signing
    url, h = sign(front, "PUT", "right-key", b"data")
    r = requests.put(url.replace("right-key", "wrong-key"), data=b"data", headers=h, timeout=10)
    assert r.status_code == 403 and code(r) == "SignatureDoesNotMatch"
    assert not {"bad-secret", "tampered", "wrong-key", "right-key"} & set(front.keys())


def test_signed_header_that_is_absent_is_refused(front):
    url, h = sign(front, "PUT", "absent", b"data", headers={"x-amz-meta-note": "n",
                                                            "Content-Type": "text/plain"})
    del h["Content-Type"]
    r = requests.put(url, data=b"data", headers=h, timeout=10)
    assert r.status_code == 403 and code(r) == "SignatureDoesNotMatch"
    assert "content-type" in r.text
    assert "absent" not in front.keys()


def test_unsigned_headers_are_refused(front):
    # an x-amz-* header added after signing
    url, h = sign(front, "PUT", "extra", b"data")
    h["x-amz-meta-late"] = "added"
    r = requests.put(url, data=b"data", headers=h, timeout=10)
    assert r.status_code == 403 and code(r) == "AccessDenied"
    assert ET.fromstring(r.content).findtext("HeadersNotSigned") == "x-amz-meta-late"
    # host left out of SignedHeaders

    class NoHost(S3SigV4Auth):
        def headers_to_sign(self, request):
            hm = super().headers_to_sign(request)
            del hm["host"]
            return hm
    url, h = sign(front, "PUT", "nohost", b"data", signer=NoHost)
    assert "host" not in h["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    r = requests.put(url, data=b"data", headers=h, timeout=10)
    assert r.status_code == 403 and code(r) == "AccessDenied"
    assert "host" in ET.fromstring(r.content).findtext("HeadersNotSigned")
    # no x-amz-content-sha256 at all (S3 wants it on every header-signed request)

    class NoHash(S3SigV4Auth):
        def _modify_request_before_signing(self, request):
            super()._modify_request_before_signing(request)
            del request.headers["X-Amz-Content-SHA256"]
    url, h = sign(front, "PUT", "nohash", b"data", signer=NoHash)
    r = requests.put(url, data=b"data", headers=h, timeout=10)
    assert r.status_code == 400 and code(r) == "InvalidRequest"
    assert not {"extra", "nohost", "nohash"} & set(front.keys())
    # anonymous
    r = requests.get(front.url + "/sluice/raw-ok", timeout=10)
    assert r.status_code == 403 and code(r) == "AccessDenied"


def test_payload_hash_mismatch_is_refused_and_not_stored(front):
    body = b"A" * (3 * MiB)
    url, h = sign(front, "PUT", "mismatch", body)
    evil = b"B" + body[1:]                        # same length, one byte differs
    r = requests.put(url, data=evil, headers=h, timeout=30)
    assert r.status_code == 400 and code(r) == "XAmzContentSHA256Mismatch"
    root = ET.fromstring(r.content)
    assert root.findtext("S3ComputedContentSHA256") == hashlib.sha256(evil).hexdigest()
    assert "mismatch" not in front.keys()
    # the same for a part: no part is left
    c = front.client()
    up = c.create_multipart_upload(Bucket="sluice", Key="mpart")["UploadId"]
    url, h = sign(front, "PUT", "mpart", b"part", query="partNumber=1&uploadId=" + up)
    r = requests.put(url, data=b"PART", headers=h, timeout=10)
    assert r.status_code == 400 and code(r) == "XAmzContentSHA256Mismatch"
    parts = c.list_parts(Bucket="sluice", Key="mpart", UploadId=up).get("Parts", [])
    assert parts == []
    c.abort_multipart_upload(Bucket="sluice", Key="mpart", UploadId=up)
    # x-amz-checksum-sha256 that does not match the body
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    r = put(front, "badsum", b"data", headers={"x-amz-checksum-sha256": wrong})
    assert r.status_code == 400 and code(r) == "BadDigest"
    right = base64.b64encode(hashlib.sha256(b"data").digest()).decode()
    assert put(front, "goodsum", b"data",
               headers={"x-amz-checksum-sha256": right}).status_code == 200
    assert "badsum" not in front.keys() and "goodsum" in front.keys()


def test_body_without_content_length_is_refused(front):
    url, h = sign(front, "PUT", "chunked", b"", payload="UNSIGNED-PAYLOAD")
    h.pop("Content-Length", None)
    r = requests.put(url, data=iter([b"chunk one ", b"chunk two"]), headers=h, timeout=10)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 411 and code(r) == "MissingContentLength"
    # no body and no Content-Length at all
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    conn.putrequest("PUT", "/sluice/nolength", skip_accept_encoding=True)
    _, h = sign(front, "PUT", "nolength", b"")
    for k, v in h.items():
        if k.lower() != "content-length":
            conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 411 and b"MissingContentLength" in r.read()
    conn.close()
    assert not {"chunked", "nolength"} & set(front.keys())
    # a body shorter than its Content-Length is not stored either
    url, h = sign(front, "PUT", "short", b"0123456789")
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    conn.putrequest("PUT", "/sluice/short", skip_accept_encoding=True)
    for k, v in h.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", "10")
    conn.endheaders(b"01234")
    conn.sock.shutdown(1)
    r = conn.getresponse()
    assert r.status == 400 and b"IncompleteBody" in r.read()
    conn.close()
    assert "short" not in front.keys()


def test_skew_wrong_key_and_scope_are_refused(front):
    r = put(front, "skewed", b"data", skew=-16 * 60)
    assert r.status_code == 403 and code(r) == "RequestTimeTooSkewed"
    r = put(front, "skewed", b"data", skew=16 * 60)
    assert r.status_code == 403 and code(r) == "RequestTimeTooSkewed"
    assert put(front, "skew-ok", b"data", skew=-10 * 60).status_code == 200
    r = put(front, "wrongkey", b"data", key_id="AKIDOTHER")
    assert r.status_code == 403 and code(r) == "InvalidAccessKeyId"
    url, h = sign(front, "PUT", "region", b"data")
    h["Authorization"] = h["Authorization"].replace("/us-east-1/", "/eu-west-1/")
    r = requests.put(url, data=b"data", headers=h, timeout=10)
    assert r.status_code == 400 and code(r) == "AuthorizationHeaderMalformed"
    assert not {"skewed", "wrongkey", "region"} & set(front.keys())


def test_complete_checks_the_parts(front):
    c = front.client()
    up = c.create_multipart_upload(Bucket="sluice", Key="small")["UploadId"]
    e1 = c.upload_part(Bucket="sluice", Key="small", UploadId=up, PartNumber=1,
                       Body=b"x" * 1000)["ETag"]
    e2 = c.upload_part(Bucket="sluice", Key="small", UploadId=up, PartNumber=2,
                       Body=b"y")["ETag"]

    def complete(parts):
        with pytest.raises(ClientError) as e:
            c.complete_multipart_upload(Bucket="sluice", Key="small", UploadId=up,
                                        MultipartUpload={"Parts": parts})
        return e.value.response["Error"]["Code"]
    assert complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]) == \
        "EntityTooSmall"
    assert complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]) == \
        "InvalidPartOrder"
    assert complete([{"PartNumber": 1, "ETag": e2}]) == "InvalidPart"
    assert complete([{"PartNumber": 3, "ETag": e2}]) == "InvalidPart"
    c.complete_multipart_upload(Bucket="sluice", Key="small", UploadId=up,
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})
    assert c.get_object(Bucket="sluice", Key="small")["Body"].read() == b"x" * 1000


def test_counters_and_upstream_stop_start(s3front):
    f = s3front()
    c = f.client()
    c.put_object(Bucket="sluice", Key="kept", Body=b"still here")
    put(f, "x", b"data", secret="wrong")
    st = f.stats()
    assert st["refused"].get("SignatureDoesNotMatch") == 1 and st["forwarded"] >= 1
    f.control(upstream="stop")
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="sluice", Key="kept")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["Error"]["Code"] == "ServiceUnavailable"
    f.control(upstream="start")
    assert c.get_object(Bucket="sluice", Key="kept")["Body"].read() == b"still here"
    f.control(mode="down")
    r = requests.get(c.generate_presigned_url("get_object", Params={"Bucket": "sluice",
                                                                     "Key": "kept"}), timeout=10)
    assert r.status_code == 503 and r.headers.get("Retry-After") == "1"
    f.control(mode="ok")
    f.control(refuse_ms=1500)
    time.sleep(0.3)
    with pytest.raises(requests.ConnectionError):
        requests.get(f.url + "/_stats", timeout=5)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if requests.get(f.url + "/_stats", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    assert c.get_object(Bucket="sluice", Key="kept")["Body"].read() == b"still here"


# ---------------------------------------------------------------- memory

class _Body:
    """n bytes of a deterministic pattern, streamed in 1 MiB pieces; len() lets
    requests send a Content-Length."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        block = hashlib.sha256(b"s3front").digest() * (MiB // 32)
        left = self.n
        while left > 0:
            yield block[:min(left, MiB)]
            left -= MiB


def test_200mib_put_keeps_the_front_flat(s3front):
    f = s3front()
    n = 200 * MiB
    sha = hashlib.sha256()
    for b in _Body(n):
        sha.update(b)
    url, h = sign(f, "PUT", "big", b"", payload=sha.hexdigest())
    h["Content-Length"] = str(n)
    base = f.rss_kib()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            try:
                peak[0] = max(peak[0], f.rss_kib())
            except (OSError, TypeError):
                pass
    t = threading.Thread(target=sample)
    t.start()
    try:
        r = requests.put(url, data=_Body(n), headers=h, timeout=300)
        assert r.status_code == 200, r.text
        got = hashlib.sha256()
        with f.client().get_object(Bucket="sluice", Key="big")["Body"] as body:
            for chunk in iter(lambda: body.read(MiB), b""):
                got.update(chunk)
    finally:
        done.set()
        t.join()
    assert got.hexdigest() == sha.hexdigest()
    print("s3front RSS: %d KiB before, %d KiB peak over a 200 MiB PUT and GET"
          % (base, peak[0]))
    assert peak[0] - base < 64 * 1024, (base, peak[0])


# ---------------------------------------------------------------- libcurl

def test_libcurl_sigv4_and_expect_100(front, tmp_path):
    """curl's own --aws-sigv4 (libcurl, as Sluice's backend uses): S3 wants
    x-amz-content-sha256, which curl 7.88 signs only when given; a body over
    1 MiB goes with Expect: 100-continue, and a refused one is never sent."""
    import shutil
    import subprocess
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    data = hashlib.sha256(b"curl").digest() * (3 * MiB // 32)
    f = tmp_path / "body"
    f.write_bytes(data)
    url = front.url + "/sluice/curl-up"

    def curl(*args):
        p = subprocess.run(["curl", "-s", "-v", "--aws-sigv4", "aws:amz:%s:s3" % S3_REGION,
                            "--user", "%s:%s" % (S3_KEY_ID, S3_SECRET), *args],
                           capture_output=True, timeout=60)
        return p.stdout, p.stderr.decode(errors="replace")
    out, err = curl("-T", str(f), url)
    assert b"<Code>InvalidRequest</Code>" in out and "< HTTP/1.1 100" not in err
    sha = hashlib.sha256(data).hexdigest()
    out, err = curl("-H", "x-amz-content-sha256: " + sha, "-T", str(f), url)
    assert "< HTTP/1.1 100 Continue" in err and "< HTTP/1.1 200" in err, err[-2000:]
    out, err = curl("-H", "x-amz-content-sha256: " + hashlib.sha256(b"").hexdigest(),
                    "-r", "100-199", url)
    assert out == data[100:200]
    assert "< HTTP/1.1 206" in err
    out, err = curl("--user", "%s:wrong" % S3_KEY_ID, "-H", "x-amz-content-sha256: " + sha,
                    "-T", str(f), front.url + "/sluice/curl-refused")
    assert b"<Code>SignatureDoesNotMatch</Code>" in out and "< HTTP/1.1 100" not in err
    assert "curl-refused" not in front.keys()


# ---------------------------------------------------------------- harness

def test_harness_s3_config(front, tmp_path):
    """What SLUICE_TEST_STORAGE=s3 gives a server: a bucket per storage path
    (created, usable with the snippet's credentials) in the default config."""
    from sluice_harness import default_config
    b = front.bucket_for(tmp_path / "blobs1")
    assert b == front.bucket_for(tmp_path / "blobs1") != front.bucket_for(tmp_path / "blobs2")
    text = default_config({"listen": "x", "database_url": "x", "redis_url": "x",
                           "admin_key": "x", "storage_path": "/nope",
                           "storage_yaml": front.storage_yaml(b)})
    line = [l for l in text.splitlines() if l.startswith("storage:")]
    assert line == ['storage: {backend: s3, endpoint: "%s", bucket: %s, region: us-east-1, '
                    'access_key_id: AKIDTEST, secret_access_key: secretTEST, path_style: true}'
                    % (front.url, b)]
    st = front.storage(b)
    c = front.client()
    c.put_object(Bucket=st["bucket"], Key="k", Body=b"v")
    assert front.keys(b) == ["k"]
