"""Black-box tests of tenants (admin API), authentication and datasets
(API.md "Errors", "Auth and tenants", "Datasets")."""

import hashlib
import json
import re
import socket
import subprocess
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


def test_revoked_key_is_refused(server, tenant):
    assert tenant.get("/v1/datasets").status_code == 200
    psql(server.database_url, "UPDATE api_keys SET revoked_at = now()")
    assert_error(tenant.get("/v1/datasets"), 401, "unauthorized")


# ---------------------------------------------------------------- datasets

def test_create_dataset_default_schema(tenant):
    r = tenant.post("/v1/datasets", json={"name": "invoices"})
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    d = r.json()
    assert set(d) == {"id", "name", "record_schema", "created_at"}
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
