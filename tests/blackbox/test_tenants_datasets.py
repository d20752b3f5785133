"""Black-box tests of tenants (admin API), authentication and datasets
(API.md "Errors", "Auth and tenants", "Datasets")."""

import hashlib
import http.server
import json
import re
import socket
import subprocess
import threading
import uuid

import pytest
import requests

from sluice_harness import Client, pg_bindir

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

DEFAULT_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "reference": {"type": "string"},
        "date": {"type": "string"},
        "total": {"type": "number"},
        "currency": {"type": "string"},
        "email": {"type": "string"},
    },
}


def psql(url, sql):
    r = subprocess.run([str(pg_bindir() / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def assert_error(r, status, code=None):
    """API.md: every 4xx/5xx is {"error": {"code", "message"}}."""
    assert r.status_code == status, "%d %s" % (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and re.match(r"^[a-z][a-z0-9_]*$", body["error"]["code"])
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def ordered(text):
    """Parse JSON keeping object key order as lists of pairs."""
    return json.loads(text, object_pairs_hook=lambda pairs: pairs)


# ---------------------------------------------------------------- tenants

def test_create_tenant(server):
    r = requests.post(server.url + "/v1/admin/tenants", json={"name": "acme"},
                      headers={"Authorization": "Bearer " + server.admin_key}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"id", "name", "api_key", "created_at"}
    assert body["name"] == "acme"
    uuid.UUID(body["id"])
    assert re.match(r"^sk_[0-9a-f]{48}$", body["api_key"]), body["api_key"]
    assert RFC3339.match(body["created_at"])

    # The key works and sees an empty tenant.
    c = Client(server.url, body["api_key"])
    r = c.get("/v1/datasets")
    assert r.status_code == 200 and r.json() == {"datasets": []}

    # Stored hashed only: the database holds sha256(key), never the key.
    want = hashlib.sha256(body["api_key"].encode()).hexdigest()
    assert psql(server.database_url,
                "SELECT key_hash FROM api_keys WHERE tenant_id = '%s'" % body["id"]) == want
    dump = psql(server.database_url, "SELECT string_agg(t::text, ' ') FROM api_keys t")
    assert body["api_key"] not in dump
    assert body["api_key"][3:] not in dump


def test_create_tenant_needs_admin_key(server, tenant):
    url = server.url + "/v1/admin/tenants"
    assert_error(requests.post(url, json={"name": "x"}, timeout=30), 401, "unauthorized")
    assert_error(requests.post(url, json={"name": "x"}, timeout=30,
                               headers={"Authorization": "Bearer wrong-" + server.admin_key}),
                 401, "unauthorized")
    assert_error(requests.post(url, json={"name": "x"}, timeout=30,
                               headers={"Authorization": "Basic " + server.admin_key}),
                 401, "unauthorized")
    # A tenant's key is not the admin key.
    assert_error(tenant.post("/v1/admin/tenants", json={"name": "x"}), 401, "unauthorized")
    # Nothing was created by the refused calls.
    assert psql(server.database_url, "SELECT count(*) FROM tenants") == "1"


@pytest.mark.parametrize("body", [
    {}, {"name": ""}, {"name": 5}, {"name": None}, {"name": ["a"]}, {"name": "x" * 201},
])
def test_create_tenant_bad_body(server, body):
    r = server.admin().post("/v1/admin/tenants", json=body)
    assert_error(r, 400, "invalid_request")


def test_create_tenant_name_limit_is_200_characters(server):
    admin = server.admin()
    r = admin.post("/v1/admin/tenants", json={"name": "é" * 200})  # 200 characters, 400 bytes
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "é" * 200


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"name": "a",}', b"[1,2]", b'"acme"', b"42"])
def test_create_tenant_invalid_json(server, raw):
    r = server.admin().post("/v1/admin/tenants", data=raw,
                            headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")


def test_admin_issues_more_keys(server, tenant):
    admin = server.admin()
    r = admin.post("/v1/admin/tenants/%s/keys" % tenant.tenant_id)
    assert r.status_code == 201, r.text
    key = r.json()["api_key"]
    assert re.match(r"^sk_[0-9a-f]{48}$", key) and key != tenant.key
    ds = tenant.create_dataset("shared")
    # Both keys act for the same tenant.
    assert Client(server.url, key).get("/v1/datasets/%s" % ds["id"]).status_code == 200
    assert_error(admin.post("/v1/admin/tenants/%s/keys" % uuid.uuid4()), 404, "not_found")
    assert_error(admin.post("/v1/admin/tenants/not-a-uuid/keys"), 404, "not_found")
    assert_error(tenant.post("/v1/admin/tenants/%s/keys" % tenant.tenant_id), 401, "unauthorized")


# ---------------------------------------------------------------- auth

def test_v1_needs_api_key(server, tenant):
    url = server.url + "/v1/datasets"
    assert_error(requests.get(url, timeout=30), 401, "unauthorized")
    assert_error(requests.get(url, headers={"Authorization": "Bearer sk_" + "0" * 48}, timeout=30),
                 401, "unauthorized")
    assert_error(requests.get(url, headers={"Authorization": "Bearer "}, timeout=30), 401,
                 "unauthorized")
    assert_error(requests.get(url, headers={"Authorization": tenant.key}, timeout=30), 401,
                 "unauthorized")
    # The admin key is not a tenant key.
    assert_error(requests.get(url, headers={"Authorization": "Bearer " + server.admin_key},
                              timeout=30), 401, "unauthorized")
    # ?access_token= is only for the SSE stream, not for ordinary calls.
    assert_error(requests.get(url + "?access_token=" + tenant.key, timeout=30), 401, "unauthorized")
    # The scheme is case-insensitive (RFC 7235).
    r = requests.get(url, headers={"Authorization": "bearer " + tenant.key}, timeout=30)
    assert r.status_code == 200, r.text


def test_revoked_key_is_refused(server, tenant, redis):
    assert tenant.get("/v1/datasets").status_code == 200
    psql(server.database_url, "UPDATE api_keys SET revoked_at = now()")
    # A revocation by SQL is announced on sluice:auth (README "API keys"), or
    # the instances' key caches keep the key up to SL_CACHE_AUTH_TTL_S.
    from test_cache import publish
    publish(redis, "sluice:auth", "*")
    assert_error(tenant.get("/v1/datasets"), 401, "unauthorized")


# ---------------------------------------------------------------- datasets

def test_create_dataset_default_schema(tenant):
    r = tenant.post("/v1/datasets", json={"name": "invoices"})
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    d = r.json()
    # API.md's four, plus issue 13's auto_process and pipelines (test_process.py).
    assert set(d) == {"id", "name", "record_schema", "created_at", "auto_process", "pipelines"}
    uuid.UUID(d["id"])
    assert d["name"] == "invoices"
    assert d["record_schema"] == DEFAULT_SCHEMA
    assert RFC3339.match(d["created_at"])
    # Property order is part of the contract (CSV columns).
    props = dict(ordered(r.text))["record_schema"]
    props = dict(props)["properties"]
    assert [k for k, _ in props] == ["title", "reference", "date", "total", "currency", "email"]
    assert tenant.get("/v1/datasets/%s" % d["id"]).json() == d


def test_create_dataset_custom_schema_keeps_order(tenant):
    schema = {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "number"},
                                               "mid": {"type": "boolean"}},
              "required": ["zeta"]}
    d = tenant.create_dataset("custom", schema)
    assert d["record_schema"] == schema
    r = tenant.get("/v1/datasets/%s" % d["id"])
    assert r.status_code == 200
    props = dict(dict(ordered(r.text))["record_schema"])["properties"]
    assert [k for k, _ in props] == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize("schema", [
    [], "object", 5, {}, {"type": "array", "properties": {}}, {"type": "object"},
    {"type": "object", "properties": []}, {"properties": {"a": {}}},
    {"type": ["object"], "properties": {}},
])
def test_create_dataset_invalid_schema(tenant, schema):
    r = tenant.post("/v1/datasets", json={"name": "bad", "record_schema": schema})
    assert_error(r, 400, "invalid_schema")
    assert tenant.get("/v1/datasets").json() == {"datasets": []}


def _nested_objects(n):
    node = {"type": "string"}
    for _ in range(n):
        node = {"type": "object", "properties": {"p": node}}
    return node


# What OpenAI's structured outputs cannot express is refused at creation
# (core/jschema.c), with the keyword and its JSON Pointer path.
@pytest.mark.parametrize("schema,where", [
    ({"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "array", "items": {"allOf": [{"type": "string"}]}}}}},
     '"allOf" at /properties/items/items/items: not supported by OpenAI structured outputs'),
    ({"type": "object", "properties": {"meta": {"type": "object",
                                                "patternProperties": {"^x-": {}}}}},
     '"patternProperties" at /properties/meta:'),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, '"not" at /properties/a:'),
    ({"type": "object", "properties": {"a": {"type": "string", "if": {}, "then": {}}}},
     'at /properties/a:'),
    ({"type": "object", "properties": {"pair": {"type": "array", "items": [{"type": "string"}]}}},
     '"items" at /properties/pair: a list of item schemas (a tuple)'),
    ({"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [{}]}}},
     '"prefixItems" at /properties/pair:'),
    ({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
     '"additionalProperties" at /:'),
    ({"type": "object", "properties": {"a": {"type": ["string", "number"]}}},
     '"type" at /properties/a: more than one type besides "null"'),
    ({"type": "object", "properties": {"a": {"type": "date"}}}, '"type" at /properties/a: unknown type'),
    ({"type": "object", "properties": {"a": 5}}, 'at /properties/a: a schema must be a JSON object'),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}, '"$ref" at /properties/a:'),
    ({"type": "object", "anyOf": [{"type": "object", "properties": {}}], "properties": {}},
     '"anyOf" at /: the root must be a plain object schema'),
    (_nested_objects(11), "objects nested more than 10 levels deep"),
    ({"type": "object", "properties": {"e": {"type": "string",
                                             "enum": ["v%04d" % i for i in range(1001)]}}},
     '"enum" at /properties/e: more than 1000 enum values'),
    ({"type": "object", "properties": {"p%d" % i: {"type": "string"} for i in range(5001)}},
     '"properties" at /: more than 5000 object properties'),
])
def test_create_dataset_refuses_schema_openai_cannot_express(tenant, schema, where):
    r = tenant.post("/v1/datasets", json={"name": "bad", "record_schema": schema})
    body = assert_error(r, 400, "invalid_schema")
    assert body["error"]["message"].startswith("record_schema: "), body
    assert where in body["error"]["message"], body
    assert tenant.get("/v1/datasets").json() == {"datasets": []}


RICH_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "description": "An invoice",
    "properties": {
        "number": {"type": "string", "pattern": "^[A-Z]{2,5}-[0-9]+$", "minLength": 3},
        "issued": {"type": "string", "format": "date"},
        "total": {"type": "number", "minimum": 0, "multipleOf": 0.01},
        "kind": {"type": "string", "enum": ["invoice", "credit_note"]},
        "paid": {"type": ["boolean", "null"], "default": False},
        "vendor": {"$ref": "#/$defs/party"},
        "lines": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {
            "type": "object", "properties": {
                "desc": {"type": "string"}, "qty": {"type": "integer", "maximum": 10000}}}},
        "tax": {"oneOf": [{"type": "number"}, {"type": "string"}]},
        "notes": {"description": "anything else"},
        "extra": {"type": "object", "additionalProperties": True, "properties": {}},
    },
    "required": ["number"],
    "$defs": {"party": {"type": "object", "properties": {
        "name": {"type": "string"}, "vat": {"type": "string", "maxLength": 20}}}},
}


def test_create_dataset_accepts_a_rich_schema_as_written(tenant):
    r = tenant.post("/v1/datasets", json={"name": "rich", "record_schema": RICH_SCHEMA})
    assert r.status_code == 201, r.text
    # stored as the client wrote it (the translation is made when OpenAI is called)
    assert r.json()["record_schema"] == RICH_SCHEMA
    props = dict(dict(ordered(r.text))["record_schema"])["properties"]
    assert [k for k, _ in props] == list(RICH_SCHEMA["properties"])


PROBE_FLOW = r"""
return flow { start = "probe", steps = { probe = { run = function(ctx, file)
  local strict, text = sl.schema.openai(file.schema)
  local bad, msg = sl.schema.openai({ type = "object", properties = { a = { allOf = { {} } } } })
  local empty = sl.schema.openai({ type = "object" })
  sl.artifact { kind = "schema", mime = "application/json", data = text }
  sl.artifact { kind = "probe", mime = "application/json", data = sl.json.encode({
    table_root_type = strict.type, table_required = strict.required,
    bad = bad == nil, msg = msg, empty = sl.json.encode(empty),
    string_arg = select(2, sl.schema.openai('{"properties":{"b":{},"a":{}}}')),
  }) }
  return true
end } } }
"""


def test_flow_gets_the_openai_form_of_the_dataset_schema(start_server, tmp_path):
    """sl.schema.openai in a flow: the same translator, the dataset's property
    order kept, arrays that encode as arrays, refusals as nil, message."""
    flow = tmp_path / "probe.lua"
    flow.write_text(PROBE_FLOW)
    srv = start_server(extra_yaml='pipelines:\n  - {name: probe, flow: "%s", match: ["text/*"]}\n'
                       % flow)
    t = srv.create_tenant("probe")
    ds = t.create_dataset("rich", RICH_SCHEMA)["id"]
    r = t.upload(ds, [("a.txt", b"some text\n")])
    assert r.status_code == 202, r.text
    fid = r.json()["files"][0]["id"]
    doc = t.wait_file(fid, timeout=60)
    runs = {x["pipeline"]: x for x in doc["runs"]}
    assert runs["probe"]["state"] == "succeeded", doc

    def art(kind):
        a = [x for x in runs["probe"]["artifacts"] if x["kind"] == kind][0]
        got = t.get(a["url"])
        assert got.status_code == 200
        return got.text

    text = art("schema")
    strict = json.loads(text)
    names = list(RICH_SCHEMA["properties"])
    # the root is a plain object; every property required, in the dataset's order
    assert strict["type"] == "object" and strict["additionalProperties"] is False
    assert strict["required"] == names
    assert [k for k, _ in dict(ordered(text))["properties"]] == names
    p = strict["properties"]
    assert p["number"] == {"type": ["string", "null"], "pattern": "^[A-Z]{2,5}-[0-9]+$"}
    assert p["issued"] == {"type": ["string", "null"], "format": "date"}
    assert p["total"] == {"type": ["number", "null"], "minimum": 0, "multipleOf": 0.01}
    assert p["kind"] == {"type": ["string", "null"], "enum": ["invoice", "credit_note", None]}
    assert p["paid"] == {"type": ["boolean", "null"]}
    assert p["vendor"] == {"anyOf": [{"$ref": "#/$defs/party"}, {"type": "null"}]}
    assert p["lines"]["type"] == ["array", "null"] and p["lines"]["minItems"] == 1
    assert "uniqueItems" not in p["lines"]
    assert p["lines"]["items"] == {
        "type": "object", "properties": {"desc": {"type": ["string", "null"]},
                                         "qty": {"type": ["integer", "null"], "maximum": 10000}},
        "required": ["desc", "qty"], "additionalProperties": False}
    assert p["tax"] == {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}
    assert p["notes"] == {"type": ["string", "null"], "description": "anything else"}
    assert p["extra"] == {"type": ["object", "null"], "properties": {}, "required": [],
                          "additionalProperties": False}
    assert strict["$defs"]["party"]["required"] == ["name", "vat"]
    assert "$schema" not in strict

    probe = json.loads(art("probe"))
    assert probe["table_root_type"] == "object"
    assert probe["table_required"] == names
    assert probe["bad"] is True
    assert probe["msg"] == '"allOf" at /properties/a: not supported by OpenAI structured outputs'
    assert json.loads(probe["empty"]) == {"type": "object", "properties": {}, "required": [],
                                          "additionalProperties": False}
    assert '"required":[]' in probe["empty"]
    assert [k for k, _ in dict(ordered(probe["string_arg"]))["properties"]] == ["b", "a"]


class _Refusing400(http.server.BaseHTTPRequestHandler):
    """An OpenAI that refuses every request as it refuses a bad schema."""
    bodies = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        _Refusing400.bodies.append(self.rfile.read(n))
        body = json.dumps({"error": {
            "message": "Invalid schema for response_format 'record': In context=(), "
                       "'additionalProperties' is required to be supplied and to be false.",
            "type": "invalid_request_error", "param": "response_format",
            "code": "invalid_json_schema"}}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _openai_answers_400(start_server):
    """A dataset's file through ai_record with an OpenAI that answers 400:
    (server, record step_failed event, request body sent)."""
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing400)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        srv = start_server(extra_yaml=(
            'services:\n  openai: {base_url: "http://127.0.0.1:%d/v1", api_key: sk-test, '
            'model: gpt-4o-mini, timeout_ms: 5000}\n' % fake.server_address[1]))
        t = srv.create_tenant("o400")
        ds = t.create_dataset("ai", {"type": "object", "properties": {
            "zeta": {"type": "string"}, "alpha": {"type": "number"}}})["id"]
        r = t.upload(ds, [("a.txt", b"Invoice INV-1\nTotal: 12.50 EUR\n")])
        assert r.status_code == 202, r.text
        fid = r.json()["files"][0]["id"]
        doc = t.wait_file(fid, timeout=60)
        runs = {x["pipeline"]: x for x in doc["runs"]}
        assert runs["ai_record"]["state"] == "failed", doc
        evs = t.get("/v1/files/%s/events" % fid).json()["events"]
        failed = [e for e in evs if e["kind"] == "step_failed" and e["step"] == "record"]
        assert failed, evs
        return srv, failed[0], _Refusing400.bodies[-1]
    finally:
        fake.shutdown()


def test_openai_400_fails_the_step_and_logs_openais_message(start_server):
    srv, failed, sent = _openai_answers_400(start_server)
    assert failed["detail"]["error"] == "bad_input"
    assert failed["detail"]["transient"] is False
    # logged at error level with OpenAI's own message
    lines = []
    for l in srv.log().splitlines():
        try:
            lines.append(json.loads(l))
        except ValueError:
            pass
    refused = [l for l in lines if l.get("level") == "error" and l.get("module") == "openai"]
    assert refused, srv.log()[-3000:]
    assert "HTTP 400: Invalid schema for response_format 'record'" in refused[0]["msg"]
    assert "'additionalProperties' is required to be supplied" in refused[0]["detail"]
    # what was sent: the translated schema, a plain object root, in the dataset's order
    req = json.loads(sent, object_pairs_hook=lambda p: p)
    js = dict(dict(dict(req)["response_format"])["json_schema"])
    schema = dict(js["schema"])
    assert js["strict"] is True and schema["type"] == "object"
    assert [k for k, _ in schema["properties"]] == ["zeta", "alpha"]
    assert schema["required"] == ["zeta", "alpha"]
    assert schema["additionalProperties"] is False


def test_openai_400_message_shows_in_the_timeline(start_server):
    _, failed, _ = _openai_answers_400(start_server)
    assert "'additionalProperties' is required to be supplied" in failed["detail"].get("detail", "")


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": 1}, {"name": "n" * 201}])
def test_create_dataset_invalid_name(tenant, body):
    assert_error(tenant.post("/v1/datasets", json=body), 400, "invalid_request")


@pytest.mark.parametrize("raw", [b"{", b"", b"nope", b"[]", b"null"])
def test_create_dataset_malformed_json(tenant, raw):
    r = tenant.post("/v1/datasets", data=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")


def test_create_dataset_needs_auth_before_body(server):
    r = requests.post(server.url + "/v1/datasets", data=b"{", timeout=30)
    assert_error(r, 401, "unauthorized")


def test_list_datasets_newest_first_and_per_tenant(server, tenant):
    other = server.create_tenant("other")
    a = tenant.create_dataset("a")
    b = tenant.create_dataset("b")
    c = tenant.create_dataset("c")
    o = other.create_dataset("o")
    r = tenant.get("/v1/datasets")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"datasets"}
    assert [d["id"] for d in body["datasets"]] == [c["id"], b["id"], a["id"]]
    assert body["datasets"][0] == c
    assert [d["id"] for d in other.get("/v1/datasets").json()["datasets"]] == [o["id"]]


def test_get_dataset_404s(server, tenant):
    other = server.create_tenant("other")
    mine = tenant.create_dataset("mine")
    theirs = other.create_dataset("theirs")
    assert tenant.get("/v1/datasets/%s" % mine["id"]).json() == mine
    # Another tenant's dataset does not exist for us.
    assert_error(tenant.get("/v1/datasets/%s" % theirs["id"]), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/%s" % uuid.uuid4()), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/not-a-uuid"), 404, "not_found")
    assert_error(tenant.get("/v1/datasets/%s" % mine["id"].upper()[:35]), 404, "not_found")
    # Unauthenticated: 401 comes first, whatever the id.
    assert_error(requests.get(server.url + "/v1/datasets/%s" % mine["id"], timeout=30), 401)


def test_oversized_json_is_413(start_server):
    srv = start_server(extra_yaml="limits: {max_json_bytes: 1024}")
    t = srv.create_tenant("small")
    r = t.post("/v1/datasets", json={"name": "x", "pad": "y" * 4000})
    assert_error(r, 413)
    # Just under the limit still works, and nothing of the refused request was kept.
    r = t.post("/v1/datasets", json={"name": "ok", "pad": "y" * 800})
    assert r.status_code == 201, r.text
    names = [d["name"] for d in t.get("/v1/datasets").json()["datasets"]]
    assert names == ["ok"]


def test_unknown_route_and_wrong_method(server, tenant):
    assert_error(tenant.get("/v1/nope"), 404, "not_found")
    assert_error(requests.get(server.url + "/definitely/not/here", timeout=30), 404)
    r = tenant.delete("/v1/datasets")
    assert_error(r, 405)
    r = tenant.put("/v1/datasets/%s" % uuid.uuid4(), json={})
    assert_error(r, 405)


def test_keep_alive_connection_survives_errors(server, tenant):
    """Several requests, errors included, over one connection."""
    s = requests.Session()
    h = {"Authorization": "Bearer " + tenant.key}
    assert s.post(server.url + "/v1/datasets", data=b"{", headers=h, timeout=30).status_code == 400
    assert s.get(server.url + "/v1/datasets/%s" % uuid.uuid4(), headers=h, timeout=30).status_code == 404
    assert s.post(server.url + "/v1/datasets", json={"name": "k"}, headers=h, timeout=30).status_code == 201
    assert len(s.get(server.url + "/v1/datasets", headers=h, timeout=30).json()["datasets"]) == 1


def test_body_with_nul_escape_is_rejected(tenant):
    r = tenant.post("/v1/datasets", data=b'{"name": "a\\u0000b"}',
                    headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")


def test_raw_http_bearer_with_extra_spaces(server, tenant):
    """Authorization with several spaces after the scheme still parses."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(("GET /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer   %s\r\n"
                      "Connection: close\r\n\r\n" % tenant.key).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
