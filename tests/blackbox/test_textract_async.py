"""Multi-page documents through Textract's asynchronous API (issue 12):
StartDocumentTextDetection on the file's S3 object, then
GetDocumentTextDetection polled while the run is parked (lua-flows/lib/
textract.lua). The S3 is s3rver behind the SigV4-checking front; the Textract
stand-in reads the object from it with a signed GET, as Textract does, and
checks every request against botocore's model of the operation."""
import subprocess

import pytest

from sluice_harness import S3_KEY_ID, S3_REGION, S3_SECRET, S3_STORAGE
from test_pipelines import artifact, events, run_of, services_yaml, upload, wait_files

# OCR that reads nothing (a scan it cannot read): the chain goes on to Textract at once
NO_OCR = ["true", "{input}"]


@pytest.fixture
def two_pages(samples, tmp_path):
    """A two-page scan, no text layer: the scanned letter twice (poppler's pdfunite)."""
    out = tmp_path / "two-pages.pdf"
    subprocess.run(["pdfunite", str(samples / "scanned-letter.pdf"),
                    str(samples / "scanned-letter.pdf"), str(out)], check=True)
    return out


def make_pdf(pages):
    """A PDF with one page per string in `pages` (Helvetica 20 pt lines)."""
    objs = []
    def add(b):
        objs.append(b)
        return len(objs)
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids = []
    pages_id = len(objs) + 1 + 2 * len(pages)  # placeholder computed below
    content_ids = []
    for text in pages:
        lines = text.split("\n")
        ops = ["BT", "/F1 20 Tf", "24 TL", "50 740 Td"]
        for ln in lines:
            esc = ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append("(%s) Tj T*" % esc)
        ops.append("ET")
        stream = "\n".join(ops).encode()
        content_ids.append(add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"))
    pages_id = len(objs) + len(pages) + 1
    for cid in content_ids:
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] "
                        b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
                        % (pages_id, font, cid)))
    assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>"
               % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))) == pages_id
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, catalog, xref)
    return bytes(out)


def textract_client(standin, secret="secretTEST"):
    import botocore.session
    from botocore.config import Config
    return botocore.session.get_session().create_client(
        "textract", endpoint_url=standin.url, region_name="us-east-1",
        aws_access_key_id="AKIDTEST", aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}))


def aws_error(call, **kw):
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        call(**kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def test_multi_page_pdf_in_s3_is_read_by_an_async_textract_job(
        s3front, start_server, standins, two_pages):
    front = s3front()
    textract = standins("textract", "--s3-endpoint", front.url, "--s3-key-id", S3_KEY_ID,
                        "--s3-secret", S3_SECRET, "--async-polls", "2")
    srv = start_server(extra_yaml=front.storage_yaml() +
                       services_yaml(textract=textract, ocr_cmd=NO_OCR))
    t = srv.create_tenant("tx-async")
    ds = t.create_dataset()["id"]
    ids = upload(t, ds, two_pages.parent, [two_pages.name])
    doc = wait_files(t, ids.values())[ids[two_pages.name]]
    assert doc["status"] == "done", doc
    assert doc["text_source"] == "textract"
    st = textract.stats()
    assert not st["last_refused"], st["last_refused"]
    [job] = st["textract_jobs"]
    assert job["status"] == "SUCCEEDED" and job["pages"] == 2, job
    # the job read the file's own object, and was polled past IN_PROGRESS
    key = front.keys()
    assert job["bucket"] == "sluice" and job["key"] in key, (job, key)
    assert job["polls"] >= 3, job
    # both pages' text: the letter's reference once per page
    _, text = artifact(t, run_of(doc, "ai_record"), "text")
    assert text.decode().count("DLV-77813") == 2, text.decode()[:2000]


@pytest.mark.slow  # ~45 s of OCR in the stand-in: the plain build's pass only
def test_thirty_pages_each_read_and_paged_through(s3front, start_server, standins, tmp_path):
    """Issue 12's acceptance: a 30-page PDF gets its text from every page. Its
    ~1,800 blocks are more than one GetDocumentTextDetection answer holds
    (1,000), so the flow pages through them with NextToken. Tika fails (500)
    so the chain does not stop at a text layer."""
    pages = ["Report page %d marker %d\n" % (n, 1000 + n) +
             "\n".join("line %d of page %d with several words to read here" % (i, n)
                       for i in range(1, 6)) for n in range(1, 31)]
    pdf = tmp_path / "thirty.pdf"
    pdf.write_bytes(make_pdf(pages))
    front = s3front()
    tika = standins("tika")
    tika.control(mode="fail")
    textract = standins("textract", "--s3-endpoint", front.url, "--s3-key-id", S3_KEY_ID,
                        "--s3-secret", S3_SECRET, "--async-polls", "1")
    srv = start_server(extra_yaml=front.storage_yaml() +
                       services_yaml(tika=tika, textract=textract, ocr_cmd=NO_OCR))
    t = srv.create_tenant("tx-30")
    ds = t.create_dataset()["id"]
    ids = upload(t, ds, tmp_path, [pdf.name])
    doc = wait_files(t, ids.values(), timeout=300)[ids[pdf.name]]
    assert doc["status"] == "done" and doc["text_source"] == "textract", doc
    [job] = textract.stats()["textract_jobs"]
    assert job["pages"] == 30, job
    _, text = artifact(t, run_of(doc, "ai_record"), "text")
    text = text.decode()
    missing = [n for n in range(1, 31) if "marker %d" % (1000 + n) not in text]
    assert not missing, "pages without their text: %s\n%s" % (missing, text[:1500])
    # the last page's last line came through the second page of results
    assert "line 5 of page 30" in text


def test_multi_page_pdf_on_the_filesystem_is_not_sent_to_textract(
        start_server, standins, two_pages):
    if S3_STORAGE:
        pytest.skip("filesystem storage only")
    textract = standins("textract")
    srv = start_server(extra_yaml=services_yaml(textract=textract, ocr_cmd=NO_OCR))
    t = srv.create_tenant("tx-fs")
    ds = t.create_dataset()["id"]
    ids = upload(t, ds, two_pages.parent, [two_pages.name])
    doc = wait_files(t, ids.values())[ids[two_pages.name]]
    # done without text, and why: Textract reads multi-page documents only from S3
    assert doc["status"] == "done" and doc.get("record") is None, doc
    assert textract.stats()["requests"] == 0  # nothing paid for a call Textract refuses
    details = " ".join(str(e.get("detail")) for e in events(t, doc["id"]))
    assert "storage.backend: s3" in details, details[:2000]


def test_the_async_standin_refuses_what_textract_refuses(standins, s3front, samples):
    front = s3front()
    textract = standins("textract", "--s3-endpoint", front.url, "--s3-key-id", S3_KEY_ID,
                        "--s3-secret", S3_SECRET)
    front.client().put_object(Bucket="sluice", Key="doc.pdf",
                              Body=(samples / "invoice-acme.pdf").read_bytes())
    front.client().put_object(Bucket="sluice", Key="notes.txt", Body=b"plain text\n")
    c = textract_client(textract)
    loc = {"S3Object": {"Bucket": "sluice", "Name": "doc.pdf"}}

    # the object must exist, in a format Textract reads
    assert aws_error(c.start_document_text_detection, DocumentLocation={
        "S3Object": {"Bucket": "sluice", "Name": "missing.pdf"}})[0] == "InvalidS3ObjectException"
    assert aws_error(c.start_document_text_detection, DocumentLocation={
        "S3Object": {"Bucket": "sluice", "Name": "notes.txt"}})[0] == \
        "UnsupportedDocumentException"
    # the model's patterns (botocore's client checks lengths, not patterns)
    code, msg = aws_error(c.start_document_text_detection, DocumentLocation=loc,
                          ClientRequestToken="has spaces")
    assert code == "ValidationException" and "ClientRequestToken" in msg, msg
    assert aws_error(c.get_document_text_detection, JobId="not/a/job")[0] == \
        "ValidationException"
    assert aws_error(c.get_document_text_detection, JobId="nosuchjob")[0] == \
        "InvalidJobIdException"
    # a wrong secret: the signature is refused as AWS refuses it
    assert aws_error(textract_client(textract, secret="wrong").get_document_text_detection,
                     JobId="nosuchjob")[0] == "InvalidSignatureException"

    # the same token: the same job; with another document: a mismatch
    a = c.start_document_text_detection(DocumentLocation=loc, ClientRequestToken="tok-1")
    b = c.start_document_text_detection(DocumentLocation=loc, ClientRequestToken="tok-1")
    assert a["JobId"] == b["JobId"]
    assert aws_error(c.start_document_text_detection, DocumentLocation={
        "S3Object": {"Bucket": "sluice", "Name": "notes.txt"}},
        ClientRequestToken="tok-1")[0] == "IdempotentParameterMismatchException"
    # IN_PROGRESS first; then the blocks, paged by MaxResults; a forged token is refused
    first = c.get_document_text_detection(JobId=a["JobId"])
    assert first["JobStatus"] == "IN_PROGRESS" and "Blocks" not in first
    import time
    for _ in range(100):
        r = c.get_document_text_detection(JobId=a["JobId"], MaxResults=2)
        if r["JobStatus"] != "IN_PROGRESS":
            break
        time.sleep(0.2)
    assert r["JobStatus"] == "SUCCEEDED" and len(r["Blocks"]) == 2 and r.get("NextToken"), r
    r2 = c.get_document_text_detection(JobId=a["JobId"], MaxResults=1000,
                                       NextToken=r["NextToken"])
    assert r2["Blocks"] and r2["Blocks"][0]["Id"] != r["Blocks"][0]["Id"]
    assert aws_error(c.get_document_text_detection, JobId=a["JobId"],
                     NextToken="forged")[0] == "InvalidParameterException"
