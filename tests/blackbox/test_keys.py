"""A tenant's API keys (issue 13, API.md "Lifecycle and access", docs/auth.md).

GET/POST /v1/keys, DELETE /v1/keys/{id}: the shapes, the key shown once and
stored hashed, revocation at once on every instance, another tenant's key a
404, last_used_at kept without a write per request, scopes validated and
admin-of-tenant needed to manage keys.
"""
import hashlib
import time

import requests

from sluice_harness import Client
from test_tenants_datasets import psql

KEY_FIELDS = {"id", "prefix", "created_at", "last_used_at", "revoked_at", "scopes"}
ALL = ["read", "upload", "admin-of-tenant"]


def keys(c):
    r = c.get("/v1/keys")
    assert r.status_code == 200, r.text
    return {k["id"]: k for k in r.json()["keys"]}


def test_list_create_revoke(server, tenant):
    first = keys(tenant)
    assert len(first) == 1
    (k0,) = first.values()
    assert KEY_FIELDS <= set(k0)
    assert tenant.key.startswith(k0["prefix"]) and len(k0["prefix"]) >= 8
    assert k0["revoked_at"] is None and k0["scopes"] == ALL

    r = tenant.post("/v1/keys")  # no body
    assert r.status_code == 201, r.text
    new = r.json()
    assert {"id", "api_key", "prefix", "created_at"} <= set(new)
    assert new["api_key"].startswith(new["prefix"]) and new["scopes"] == ALL
    assert new["last_used_at"] is None and new["revoked_at"] is None
    # stored hashed: the key itself is nowhere in the database
    dump = psql(server.database_url, "SELECT string_agg(t::text, ' ') FROM api_keys t")
    assert new["api_key"] not in dump
    assert hashlib.sha256(new["api_key"].encode()).hexdigest() in dump

    c = Client(server.url, new["api_key"])
    assert c.get("/v1/datasets").status_code == 200
    listed = keys(tenant)
    assert set(listed) == {k0["id"], new["id"]}
    assert all("api_key" not in k and "key_hash" not in k for k in listed.values())
    assert new["api_key"] not in tenant.get("/v1/keys").text

    # another tenant: cannot see or revoke ours (404), sees only its own
    other = server.create_tenant("other")
    assert set(keys(other)).isdisjoint(listed)
    r = other.delete("/v1/keys/%s" % new["id"])
    assert r.status_code == 404, r.text
    assert c.get("/v1/datasets").status_code == 200
    assert tenant.delete("/v1/keys/not-a-uuid").status_code == 404
    assert tenant.delete("/v1/keys/00000000-0000-4000-8000-000000000000").status_code == 404

    for _ in range(3):  # cached
        assert c.get("/v1/datasets").status_code == 200
    r = tenant.delete("/v1/keys/%s" % new["id"])
    assert r.status_code == 204, r.text
    assert c.get("/v1/datasets").status_code == 401
    after = keys(tenant)
    assert after[new["id"]]["revoked_at"] is not None
    assert after[k0["id"]]["revoked_at"] is None
    assert tenant.get("/v1/datasets").status_code == 200
    # a key may revoke itself
    assert tenant.delete("/v1/keys/%s" % k0["id"]).status_code == 204
    assert tenant.get("/v1/datasets").status_code == 401


def test_revocation_at_once_on_every_instance(start_server):
    a = start_server()
    b = start_server(database_url=a.database_url, storage_path=a.storage_path)
    t = a.create_tenant("multi")
    k = t.post("/v1/keys", json={"name": "ci"}).json()
    assert k["name"] == "ci"
    on_a, on_b = Client(a.url, k["api_key"]), Client(b.url, k["api_key"])
    for _ in range(3):
        assert on_a.get("/v1/datasets").status_code == 200
        assert on_b.get("/v1/datasets").status_code == 200
    assert Client(b.url, t.key).delete("/v1/keys/%s" % k["id"]).status_code == 204
    assert on_a.get("/v1/datasets").status_code == 401
    assert on_b.get("/v1/datasets").status_code == 401


def test_last_used_at_without_a_write_per_request(server, tenant):
    k = tenant.post("/v1/keys", json={}).json()
    assert keys(tenant)[k["id"]]["last_used_at"] is None
    c = Client(server.url, k["api_key"])
    assert c.get("/v1/datasets").status_code == 200
    deadline = time.monotonic() + 10
    while keys(tenant)[k["id"]]["last_used_at"] is None:
        assert time.monotonic() < deadline, "last_used_at never set"
        time.sleep(0.1)
    first = keys(tenant)[k["id"]]["last_used_at"]
    # many more requests within the minute: no more writes (a write makes a new row version)
    xmin = "SELECT xmin FROM api_keys WHERE id = '%s'" % k["id"]
    before = psql(server.database_url, xmin)
    for _ in range(30):
        assert c.get("/v1/datasets").status_code == 200
    time.sleep(0.5)
    assert keys(tenant)[k["id"]]["last_used_at"] == first
    assert psql(server.database_url, xmin) == before


def test_scopes_validated_and_enforced(server, tenant):
    for body in ({"scopes": []}, {"scopes": ["bogus"]}, {"scopes": ["read", "read"]},
                 {"scopes": "read"}, {"scope": ["read"]}, {"name": 5}):
        r = tenant.post("/v1/keys", json=body)
        assert r.status_code == 400, (body, r.text)
    r = tenant.post("/v1/keys", data="{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert len(keys(tenant)) == 1  # nothing made

    ru = tenant.post("/v1/keys", json={"scopes": ["read", "upload"]}).json()
    assert ru["scopes"] == ["read", "upload"]
    c = Client(server.url, ru["api_key"])
    assert c.get("/v1/datasets").status_code == 200
    assert c.post("/v1/datasets", json={"name": "ok"}).status_code == 201
    # no admin-of-tenant: cannot manage keys, not even revoke itself
    for r in (c.get("/v1/keys"), c.post("/v1/keys", json={}),
              c.delete("/v1/keys/%s" % ru["id"])):
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    assert c.get("/v1/datasets").status_code == 200
    admin = tenant.post("/v1/keys", json={"scopes": ["admin-of-tenant"]}).json()
    a = Client(server.url, admin["api_key"])
    assert a.get("/v1/keys").status_code == 200
    assert a.get("/v1/datasets").status_code == 403
    # the server's admin key is not a tenant key
    r = requests.get(server.url + "/v1/keys",
                     headers={"Authorization": "Bearer " + server.admin_key}, timeout=30)
    assert r.status_code == 401


def test_config_tenant_key_has_its_prefix(start_server):
    srv = start_server(extra_yaml="tenants:\n  - {name: boot, api_key: sk_boot_0123456789}\n")
    c = Client(srv.url, "sk_boot_0123456789")
    (k,) = keys(c).values()
    assert k["prefix"] == "sk_boot_012"
    assert k["scopes"] == ALL
