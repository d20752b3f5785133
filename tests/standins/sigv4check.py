"""SigV4 recomputation shared by the stand-ins: the Textract stand-in
(standins.py) and the S3 front (s3front.py). The signature is recomputed with
Debian's python3-botocore (SigV4Auth) over exactly what was received: the
method, the path and query, the headers named in SignedHeaders with their
received values, and the payload hash. Never a header that was not sent.

    sigv4_signature(method, url, signed, body, amz_date, creds, service="textract")
        -> hex signature (the Textract stand-in: the body is hashed here)
    sigv4_parts(method, url, signed, payload_hash, amz_date, creds, service, s3=True)
        -> (canonical_request, string_to_sign, hex signature)

creds: {"key_id", "secret", "region"}; signed: [(lower-case name, [values])].
"""

try:  # Debian's python3-botocore
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.compat import HTTPHeaders
    from botocore.credentials import Credentials
except ImportError:  # pragma: no cover - reported by the stand-in that needs it
    SigV4Auth = None


class ReceivedSigV4(SigV4Auth or object):
    """botocore's SigV4 over exactly the headers a request named in its
    SignedHeaders, with their received values (botocore itself would pick the
    headers and leave out the ones it never signs, such as Expect). With s3,
    the path is taken as given (S3 does not normalise it; the caller passes the
    canonical URI-encoded form) and payload_hash, when not None, stands for the
    body (x-amz-content-sha256's value, or UNSIGNED-PAYLOAD for a presigned
    URL): the body is verified against it separately, as it streams."""

    def __init__(self, credentials, service, region, signed, s3=False, payload_hash=None):
        super().__init__(credentials, service, region)
        self._signed = signed      # [(lower-case name, [values])]
        self._s3 = s3
        self._payload_hash = payload_hash

    def headers_to_sign(self, request):
        hm = HTTPHeaders()
        for name, values in self._signed:
            for v in values:
                hm[name] = v       # a Message: assignment adds, duplicates kept
        return hm

    def _normalize_url_path(self, path):
        if self._s3:
            return path
        return super()._normalize_url_path(path)

    def payload(self, request):
        if self._payload_hash is not None:
            return self._payload_hash
        return super().payload(request)


def sigv4_parts(method, url, signed, payload_hash, amz_date, creds, service, s3=True, body=b""):
    """(canonical request, string to sign, hex signature) botocore computes."""
    headers = {n: ",".join(v) for n, v in signed}
    if payload_hash is not None:
        # botocore takes X-Amz-Content-SHA256 from the headers when present;
        # only a signed one is in `signed`, so drop it and use payload_hash.
        headers = {k: v for k, v in headers.items() if k.lower() != "x-amz-content-sha256"}
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    req.context["timestamp"] = amz_date
    signer = ReceivedSigV4(Credentials(creds["key_id"], creds["secret"]), service,
                           creds["region"], signed, s3=s3, payload_hash=payload_hash)
    canonical = signer.canonical_request(req)
    sts = signer.string_to_sign(req, canonical)
    return canonical, sts, signer.signature(sts, req)


def sigv4_signature(method, url, signed, body, amz_date, creds, service="textract"):
    """The hex SigV4 signature botocore computes for the request (X-Amz-Date
    amz_date) with creds {"key_id", "secret", "region"} (service textract by
    default; the body is hashed here)."""
    return sigv4_parts(method, url, signed, None, amz_date, creds, service, s3=False,
                       body=body)[2]
