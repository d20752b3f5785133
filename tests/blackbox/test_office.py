"""Office documents (issue 13): DOCX, XLSX, PPTX and ODT made here with
zipfile (no network, no sample files), through the shipped pipelines.

Locally (no Tika) their text comes from lua-flows/lib/office.lua (unzip and
a walk over the XML); with Tika configured the file goes to it (the stand-in
reads Office containers as Tika does). A zip bomb hits the unzipped-bytes
bound, and a damaged container fails with bad_input and unzip's reason.
"""
import io
import json
import shutil
import time
import zipfile

import pytest

from test_pipelines import artifact, events, run_of, services_yaml, wait_files

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

_RELS = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
         '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
         'relationships/officeDocument" Target="%s"/></Relationships>')
_CT = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
       '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
       '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
       'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
       '<Override PartName="/%s" ContentType="%s"/></Types>')
_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'

DOC_XML = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
           '<w:document %s><w:body>'
           '<w:p><w:r><w:t>Invoice INV-2041 from Acme &amp; Co</w:t></w:r></w:p>'
           '<w:p><w:r><w:t xml:space="preserve">Date: 2026-03-14 </w:t></w:r></w:p>'
           '<w:p><w:r><w:t>Total: 120.50 EUR</w:t></w:r></w:p>'
           '</w:body></w:document>' % _W)


def docx(document_xml=DOC_XML):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT % (
            "word/document.xml",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"))
        z.writestr("_rels/.rels", _RELS % "word/document.xml")
        z.writestr("word/document.xml", document_xml)
    return b.getvalue()


def xlsx():
    b = io.BytesIO()
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT % (
            "xl/workbook.xml",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"))
        z.writestr("_rels/.rels", _RELS % "xl/workbook.xml")
        z.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook %s><sheets><sheet '
                   'name="S" sheetId="1"/></sheets></workbook>' % ns)
        z.writestr("xl/sharedStrings.xml", '<?xml version="1.0"?><sst %s count="2">'
                   '<si><t>Widget</t></si><si><t>Gadget</t></si></sst>' % ns)
        z.writestr("xl/worksheets/sheet1.xml", '<?xml version="1.0"?><worksheet %s><sheetData>'
                   '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1"><v>42</v></c></row>'
                   '<row r="2"><c r="A2" t="s"><v>1</v></c><c r="B2"><v>7.5</v></c></row>'
                   '</sheetData></worksheet>' % ns)
    return b.getvalue()


def pptx():
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT % (
            "ppt/presentation.xml",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"))
        z.writestr("_rels/.rels", _RELS % "ppt/presentation.xml")
        z.writestr("ppt/presentation.xml", '<?xml version="1.0"?><p:presentation xmlns:p='
                   '"http://schemas.openxmlformats.org/presentationml/2006/main"/>')
        for n, words in ((2, "Second slide"), (1, "Quarterly review")):
            z.writestr("ppt/slides/slide%d.xml" % n, (
                '<?xml version="1.0"?><p:sld xmlns:p="http://schemas.openxmlformats.org/'
                'presentationml/2006/main" xmlns:a="http://schemas.openxmlformats.org/'
                'drawingml/2006/main"><p:cSld><p:spTree><p:sp><p:txBody><a:p><a:r><a:t>%s'
                '</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>') % words)
    return b.getvalue()


def odt(manifest_lists_content=True):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        # ODF: "mimetype" first and stored, which is what libmagic reads
        z.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")
        z.writestr("META-INF/manifest.xml", (
            '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:'
            'names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry'
            ' manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.text"'
            '/>' + ('<manifest:file-entry manifest:full-path="content.xml" manifest:media-type='
                    '"text/xml"/>' if manifest_lists_content else '') +
            '</manifest:manifest>'), compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("content.xml", (
            '<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:'
            'oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:'
            'opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:text>'
            '<text:h>Meeting notes</text:h><text:p>Hello from<text:s/>ODT</text:p>'
            '</office:text></office:body></office:document-content>'),
            compress_type=zipfile.ZIP_DEFLATED)
    return b.getvalue()


def upload(client, ds, items):
    r = client.upload(ds, items)
    assert r.status_code == 202, r.text
    return {f["name"]: f["id"] for f in r.json()["files"]}


def text_of(client, doc):
    return artifact(client, run_of(doc, "ai_record"), "text")[1].decode()


def test_office_documents_get_text_and_a_record_locally(server, tenant):
    ds = tenant.create_dataset("office")["id"]
    ids = upload(tenant, ds, [("inv.docx", docx()), ("stock.xlsx", xlsx()),
                              ("deck.pptx", pptx()), ("notes.odt", odt())])
    docs = wait_files(tenant, ids.values(), timeout=120)
    want = {"inv.docx": ["Invoice INV-2041 from Acme & Co\n", "Total: 120.50 EUR"],
            "stock.xlsx": ["Widget\t42\nGadget\t7.5"],
            "deck.pptx": ["Quarterly review\n\nSecond slide"],  # slide 1 first
            "notes.odt": ["Meeting notes\nHello from ODT"]}
    for name, parts in want.items():
        d = docs[ids[name]]
        assert d["status"] == "done", (name, d)
        run = run_of(d, "ai_record")
        assert run["state"] == "succeeded" and run["note"] is None, (name, run)
        assert d["text_source"] == "text_layer", (name, d)
        assert d["record"], (name, d)
        txt = text_of(tenant, d)
        for p in parts:
            assert p in txt, (name, txt)
        # file_view: a preview where LibreOffice is installed, else a note
        fv = run_of(d, "file_view")
        assert fv["state"] == "succeeded", (name, fv)
        if shutil.which("soffice"):
            _, png = artifact(tenant, fv, "preview")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert fv["note"] == "no_preview" and not fv["artifacts"], (name, fv)
            notes = [e for e in events(tenant, d["id"])
                     if e["pipeline"] == "file_view" and e["kind"] == "succeeded"]
            assert "soffice" in notes[-1]["detail"]["detail"], notes
    # never OCR, never Textract: the text layer had it
    steps = {e["step"] for e in events(tenant, ids["inv.docx"])
             if e["pipeline"] == "ai_record" and e["step"]}
    assert steps == {"tika", "record"}, steps


def test_docx_through_tika(start_server, standins):
    tika = standins("tika")
    srv = start_server(extra_yaml=services_yaml(tika=tika))
    t = srv.create_tenant("tika-office")
    ds = t.create_dataset()["id"]
    ids = upload(t, ds, [("inv.docx", docx()), ("broken.docx", damaged_docx())])
    docs = wait_files(t, ids.values(), timeout=120)
    d = docs[ids["inv.docx"]]
    assert d["status"] == "done" and d["text_source"] == "tika", d
    assert "Invoice INV-2041 from Acme & Co" in text_of(t, d)
    assert d["record"], d
    st = tika.stats()
    assert st["by_status"] == {"200": 1, "422": 1}, st  # the good one, then the damaged one
    # sent with the type libmagic sniffed (Tika itself detects by content)
    assert st["last_refused"]["headers"]["content-type"] == DOCX, st
    # a damaged container: Tika's 422 is the file's fault, and the run says so
    b = docs[ids["broken.docx"]]
    run = run_of(b, "ai_record")
    assert run["state"] == "failed" and run["error"] == "bad_input", run


def damaged_docx():
    """A DOCX whose central directory is gone: libmagic still sees a DOCX
    (it reads the local headers at the start), unzip cannot open it."""
    d = docx()
    cut = d.find(b"PK\x01\x02")
    assert cut > 0
    return d[:cut] + b"garbage" * 10


def test_damaged_docx_fails_with_bad_input_and_unzips_reason(server, tenant):
    ds = tenant.create_dataset()["id"]
    fid = upload(tenant, ds, [("broken.docx", damaged_docx())])["broken.docx"]
    doc = wait_files(tenant, [fid], timeout=120)[fid]
    assert doc["mime"] == DOCX, doc
    run = run_of(doc, "ai_record")
    assert doc["status"] == "failed" and run["state"] == "failed", doc
    # the run's word is the text step's (not ocr's "unsupported")
    assert run["error"] == "bad_input", run
    evs = [e for e in events(tenant, fid) if e["pipeline"] == "ai_record"]
    first = [e for e in evs if e["kind"] == "step_failed"][0]
    assert first["step"] == "tika" and first["detail"]["error"] == "bad_input", evs
    assert "not a readable Office document (unzip exited 9)" in first["detail"]["detail"], first
    assert first["detail"]["transient"] is False


def test_an_office_file_soffice_cannot_load_fails_its_views_clearly(server, tenant):
    """soffice exits 0 when it cannot load a document (and writes no PDF):
    an ODT whose manifest does not list its content.xml. unzip still reads
    its text; the preview and the thumbnail fail with bad_input and
    soffice's own words, not with an I/O error about a missing PDF."""
    if not shutil.which("soffice"):
        pytest.skip("soffice (LibreOffice, optional) is not installed")
    ds = tenant.create_dataset()["id"]
    fid = upload(tenant, ds, [("odd.odt", odt(manifest_lists_content=False))])["odd.odt"]
    doc = wait_files(tenant, [fid], timeout=180)[fid]
    assert run_of(doc, "ai_record")["state"] == "succeeded", doc
    fv = run_of(doc, "file_view")
    assert fv["state"] == "failed" and fv["error"] == "bad_input", fv
    fails = [e for e in events(tenant, fid)
             if e["pipeline"] == "file_view" and e["kind"] == "step_failed"]
    assert {e["step"] for e in fails} == {"preview", "thumbnail"}, fails
    for e in fails:
        assert "soffice could not load the document" in e["detail"]["detail"], e


def test_zip_bomb_hits_the_unzipped_bytes_bound(server, tenant):
    """200 MiB of XML deflated to a few hundred KiB: unzip is killed once its
    output passes the document's bound (8 MiB), the step fails with the
    permanent too_large, and nothing else waits on it."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT % ("word/document.xml", "application/xml"))
        z.writestr("_rels/.rels", _RELS % "word/document.xml")
        with z.open("word/document.xml", "w", force_zip64=True) as w:
            w.write(('<w:document %s><w:body><w:p><w:r><w:t>' % _W).encode())
            chunk = b"A" * (1 << 20)
            for _ in range(200):
                w.write(chunk)
            w.write(b"</w:t></w:r></w:p></w:body></w:document>")
    bomb = b.getvalue()
    assert len(bomb) < 2 * 1024 * 1024
    ds = tenant.create_dataset()["id"]
    t0 = time.monotonic()
    ids = upload(tenant, ds, [("bomb.docx", bomb), ("inv.docx", docx())])
    docs = wait_files(tenant, ids.values(), timeout=120)
    elapsed = time.monotonic() - t0
    d = docs[ids["bomb.docx"]]
    run = run_of(d, "ai_record")
    assert run["state"] == "failed" and run["error"] == "too_large", run
    evs = [e for e in events(tenant, d["id"]) if e["kind"] == "step_failed"]
    assert "zip bomb" in evs[0]["detail"]["detail"], evs
    assert elapsed < 60, elapsed
    # the other file went through meanwhile
    assert docs[ids["inv.docx"]]["status"] == "done", json.dumps(docs[ids["inv.docx"]])
