"""storage.presigned_redirects (issue 12): a signed blob URL answers 307 to a
presigned S3 URL that ends when the signed URL does; the S3 front verifies
its query-string SigV4 signature (botocore), and the bytes and Content-Type
are the artifact's. The default keeps serving through Sluice."""
from urllib.parse import parse_qs, urlsplit

import requests

from test_pipelines import run_of, upload, wait_files


def _text_artifact(srv, samples, big=True):
    """The text artifact of a text file: over 32 KiB (big), a blob in S3; the
    sample notes.txt, small, kept in the artifact's row (migration 018)."""
    t = srv.create_tenant("presign")
    ds = t.create_dataset()["id"]
    if big:
        r = t.upload(ds, [("big.txt", (samples / "notes.txt").read_bytes() + b"z" * 40000,
                           "text/plain")])
        assert r.status_code == 202, r.text
        fid = r.json()["files"][0]["id"]
    else:
        fid = upload(t, ds, samples, ["notes.txt"])["notes.txt"]
    doc = wait_files(t, [fid])[fid]
    assert doc["status"] == "done", doc
    [art] = [a for a in run_of(doc, "ai_record")["artifacts"] if a["kind"] == "text"]
    assert (art["size"] > 32 * 1024) == big, art
    return t, art


def test_signed_url_redirects_to_a_presigned_s3_url(s3front, start_server, samples):
    front = s3front()
    srv = start_server(extra_yaml=front.storage_yaml().replace(
        "path_style: true}", "path_style: true, presigned_redirects: true}"))
    t, art = _text_artifact(srv, samples)
    through = t.get(art["url"])  # with the API key: still served by Sluice
    assert through.status_code == 200, through.text

    signed = t.get(art["url"] + "/url?ttl=120").json()
    r = requests.get(srv.url + signed["url"], allow_redirects=False, timeout=10)
    assert r.status_code == 307, r.text
    loc = r.headers["Location"]
    assert loc.startswith(front.url + "/sluice/"), loc
    q = parse_qs(urlsplit(loc).query)
    assert q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and q["X-Amz-SignedHeaders"] == ["host"]
    assert 1 <= int(q["X-Amz-Expires"][0]) <= 120, q
    assert r.headers.get("Cache-Control") == "private, no-store"

    got = requests.get(loc, timeout=10)  # no key: the presigned signature alone
    assert got.status_code == 200, got.text
    assert got.content == through.content
    assert got.headers["Content-Type"] == through.headers["Content-Type"]

    # the front checks the signature: one changed byte is refused
    sig = q["X-Amz-Signature"][0]
    bad = loc.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    assert requests.get(bad, timeout=10).status_code == 403
    # a forged Sluice signature never reaches S3
    r = requests.get(srv.url + signed["url"].replace("sig=", "sig=0"), allow_redirects=False,
                     timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature", r.text


def test_an_artifact_in_its_row_is_served_by_sluice(s3front, start_server, samples):
    """With redirects on, a small artifact (its bytes in its row, no object in
    S3) is answered by Sluice itself: 200 and the bytes, never a 307 to an
    object that does not exist."""
    front = s3front()
    srv = start_server(extra_yaml=front.storage_yaml().replace(
        "path_style: true}", "path_style: true, presigned_redirects: true}"))
    t, art = _text_artifact(srv, samples, big=False)
    signed = t.get(art["url"] + "/url?ttl=60").json()
    r = requests.get(srv.url + signed["url"], allow_redirects=False, timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == t.get(art["url"]).content and len(r.content) == art["size"] > 0
    assert r.headers["Content-Type"] == art["mime"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_default_serves_the_bytes_itself(s3front, start_server, samples):
    front = s3front()
    srv = start_server(extra_yaml=front.storage_yaml())
    t, art = _text_artifact(srv, samples)
    signed = t.get(art["url"] + "/url?ttl=60").json()
    r = requests.get(srv.url + signed["url"], allow_redirects=False, timeout=10)
    assert r.status_code == 200 and r.content == t.get(art["url"]).content
