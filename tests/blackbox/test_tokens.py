"""Access and refresh tokens (issue 13, API.md "Lifecycle and access", docs/auth.md).

Exchange an API key for a pair, use the access token wherever a key works
(header, ?access_token= on SSE), expiry (401 token_expired), refresh
rotation, reuse detection revoking the whole family (its access tokens too,
on every instance at once), a revoked key's tokens refused, tampered tokens
refused, scopes carried by tokens, and signing keys rotated by config.
"""
import base64
import hashlib
import hmac
import json
import secrets
import time

import requests

from sluice_harness import Client


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(tok):
    h, p, s = tok.split(".")
    return json.loads(unb64url(h)), json.loads(unb64url(p)), s


def forge(header, payload, secret=None, sig=None):
    """A token made outside the server: signed with `secret`, or with `sig` as given."""
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    if secret is not None:
        sig = b64url(hmac.new(secret.encode(), (head + "." + body).encode(), hashlib.sha256).digest())
    return "%s.%s.%s" % (head, body, sig or "")


def exchange(srv, key, expect=200):
    r = requests.post(srv.url + "/v1/auth/token", headers={"Authorization": "Bearer " + key},
                      timeout=30)
    assert r.status_code == expect, r.text
    return r.json()


def refresh(srv, rt):
    return requests.post(srv.url + "/v1/auth/refresh", json={"refresh_token": rt}, timeout=30)


def get(srv, tok, path="/v1/datasets"):
    return requests.get(srv.url + path, headers={"Authorization": "Bearer " + tok}, timeout=30)


def code(r):
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def test_exchange_and_use(server, tenant):
    pair = exchange(server, tenant.key)
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 900
    assert isinstance(pair["refresh_token"], str) and len(pair["refresh_token"]) >= 32
    h, p, _ = jwt_parts(pair["access_token"])
    assert h["alg"] == "HS256" and h["typ"] == "JWT" and h["kid"]
    assert p["sub"] == tenant.tenant_id and p["exp"] - p["iat"] == 900
    assert p["key"] and p["fam"] and p["jti"] and p["scope"] == "read upload admin-of-tenant"
    assert tenant.key not in pair["access_token"]

    t = Client(server.url, pair["access_token"], tenant.tenant_id)
    assert t.get("/v1/datasets").status_code == 200
    ds = t.create_dataset("by-token")["id"]
    r = t.upload(ds, [("a.txt", b"hello tokens", "text/plain")])
    assert r.status_code == 202, r.text
    assert tenant.get("/v1/datasets/%s" % ds).status_code == 200  # the same tenant
    # SSE: the access token in the query
    r = requests.get(server.url + "/v1/datasets/%s/events" % ds,
                     params={"access_token": pair["access_token"]},
                     headers={"Accept": "text/event-stream"}, stream=True, timeout=30)
    try:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    finally:
        r.close()
    # a token is not a key: it cannot be exchanged; the key only in the header
    exchange(server, pair["access_token"], expect=401)
    r = requests.post(server.url + "/v1/auth/token", params={"access_token": tenant.key}, timeout=30)
    assert r.status_code == 401
    exchange(server, "sk_" + "0" * 48, expect=401)
    # another tenant's objects stay 404 with a token too
    other = server.create_tenant("other")
    ot = exchange(server, other.key)["access_token"]
    assert get(server, ot, "/v1/datasets/%s" % ds).status_code == 404


def test_expiry(start_server):
    srv = start_server(extra_yaml="auth: {access_ttl_s: 2}")
    t = srv.create_tenant("short")
    pair = exchange(srv, t.key)
    assert pair["expires_in"] == 2
    assert get(srv, pair["access_token"]).status_code == 200
    time.sleep(3.2)
    r = get(srv, pair["access_token"])
    assert r.status_code == 401 and code(r) == "token_expired", r.text
    # the refresh token outlives it and gives a working access token
    r = refresh(srv, pair["refresh_token"])
    assert r.status_code == 200, r.text
    assert get(srv, r.json()["access_token"]).status_code == 200


def test_refresh_rotation_and_reuse(server, tenant):
    p1 = exchange(server, tenant.key)
    r = refresh(server, p1["refresh_token"])
    assert r.status_code == 200, r.text
    p2 = r.json()
    assert p2["refresh_token"] != p1["refresh_token"]
    assert p2["access_token"] != p1["access_token"]
    assert jwt_parts(p2["access_token"])[1]["fam"] == jwt_parts(p1["access_token"])[1]["fam"]
    assert get(server, p2["access_token"]).status_code == 200
    r = refresh(server, p2["refresh_token"])
    assert r.status_code == 200, r.text
    p3 = r.json()
    for _ in range(3):  # cached by now
        assert get(server, p3["access_token"]).status_code == 200
        assert get(server, p1["access_token"]).status_code == 200
    # an unrelated family of the same key
    q = exchange(server, tenant.key)

    # p1's refresh token again: spent -> 401, and the whole family is revoked
    r = refresh(server, p1["refresh_token"])
    assert r.status_code == 401 and code(r) == "refresh_token_reused", r.text
    for tok in (p1["access_token"], p2["access_token"], p3["access_token"]):
        assert get(server, tok).status_code == 401
    r = refresh(server, p3["refresh_token"])  # the live child is dead too
    assert r.status_code == 401
    # the key and its other families are untouched
    assert tenant.get("/v1/datasets").status_code == 200
    assert get(server, q["access_token"]).status_code == 200
    assert refresh(server, q["refresh_token"]).status_code == 200
    # garbage
    assert refresh(server, "rt_" + "0" * 64).status_code == 401
    r = requests.post(server.url + "/v1/auth/refresh", json={"refresh_token": 5}, timeout=30)
    assert r.status_code == 400
    r = requests.post(server.url + "/v1/auth/refresh", data="x", timeout=30)
    assert r.status_code == 400


def test_concurrent_refresh_spends_once(server, tenant):
    """Two uses of one refresh token at once: at most one gets a pair."""
    import concurrent.futures
    p = exchange(server, tenant.key)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda _: refresh(server, p["refresh_token"]), range(4)))
    assert sum(r.status_code == 200 for r in rs) <= 1, [r.status_code for r in rs]
    assert all(r.status_code in (200, 401) for r in rs)


def test_revoked_key_tokens_refused(server, tenant):
    r = tenant.post("/v1/keys", json={})
    assert r.status_code == 201, r.text
    k = r.json()
    pair = exchange(server, k["api_key"])
    for _ in range(3):
        assert get(server, pair["access_token"]).status_code == 200
    r2 = refresh(server, pair["refresh_token"])
    assert r2.status_code == 200
    pair = r2.json()
    assert tenant.delete("/v1/keys/%s" % k["id"]).status_code == 204
    assert get(server, pair["access_token"]).status_code == 401
    assert refresh(server, pair["refresh_token"]).status_code == 401
    assert get(server, k["api_key"]).status_code == 401
    exchange(server, k["api_key"], expect=401)
    assert tenant.get("/v1/datasets").status_code == 200  # the first key lives on


def test_tampered_tokens_refused(server, tenant):
    pair = exchange(server, tenant.key)
    tok = pair["access_token"]
    h, p, sig = jwt_parts(tok)
    other = server.create_tenant("victim")
    assert get(server, tok).status_code == 200  # control

    # a changed payload (another tenant; more scopes; a later exp), the signature kept
    for change in ({"sub": other.tenant_id}, {"exp": p["exp"] + 86400}, {"scope": "read"}):
        q = dict(p, **change)
        r = get(server, forge(h, q, sig=sig))
        assert r.status_code == 401, (change, r.text)
    # alg none, with and without a signature
    q = dict(p, sub=other.tenant_id)
    for hdr in ({"alg": "none", "typ": "JWT", "kid": h["kid"]}, {"alg": "none"}):
        assert get(server, forge(hdr, q, sig="")).status_code == 401
        assert get(server, forge(hdr, q, sig=sig)).status_code == 401
    # HS256 signed with a key we do not hold (same kid), and an unknown kid
    assert get(server, forge(h, q, secret=secrets.token_hex(32))).status_code == 401
    assert get(server, forge(dict(h, kid="nope"), p, secret=secrets.token_hex(32))).status_code == 401
    # other algs named in the header
    for alg in ("HS512", "RS256", "hs256"):
        assert get(server, forge(dict(h, alg=alg), p, sig=sig)).status_code == 401
    # truncated, padded, garbage, oversize
    for bad in (tok[:-1], tok[:len(tok) // 2], tok + "=", tok + ".x", "a.b.c", "..",
                tok.replace(".", ". ", 1), tok + "A" * 600):
        r = get(server, bad)
        assert r.status_code == 401, (bad[:40], r.status_code)
    # the token still works, and SSE refuses a forged one
    assert get(server, tok).status_code == 200
    ds = tenant.create_dataset("x")["id"]
    r = requests.get(server.url + "/v1/datasets/%s/events" % ds,
                     params={"access_token": forge(h, q, sig=sig)}, timeout=30)
    assert r.status_code == 401


def test_token_scopes(server, tenant):
    r = tenant.post("/v1/keys", json={"scopes": ["read"]})
    assert r.status_code == 201, r.text
    ro = r.json()
    assert ro["scopes"] == ["read"]
    ds = tenant.create_dataset("scoped")["id"]
    pair = exchange(server, ro["api_key"])
    assert pair["scope"] == "read"
    for cred in (ro["api_key"], pair["access_token"]):
        c = Client(server.url, cred)
        assert c.get("/v1/datasets").status_code == 200
        r = c.post("/v1/datasets", json={"name": "no"})
        assert r.status_code == 403 and code(r) == "forbidden", r.text
        r = c.upload(ds, [("a.txt", b"x", "text/plain")])
        assert r.status_code == 403, r.text
        assert c.get("/v1/keys").status_code == 403
        assert c.post("/v1/keys", json={}).status_code == 403
    # upload-only: cannot read
    up = tenant.post("/v1/keys", json={"scopes": ["upload"]}).json()
    c = Client(server.url, up["api_key"])
    assert c.get("/v1/datasets").status_code == 403
    r = c.upload(ds, [("a.txt", b"x", "text/plain")])
    assert r.status_code == 202, r.text


def two(start_server, extra_yaml=""):
    a = start_server(extra_yaml=extra_yaml)
    b = start_server(database_url=a.database_url, storage_path=a.storage_path,
                     extra_yaml=extra_yaml)
    return a, b


def test_revocation_seen_at_once_on_another_instance(start_server):
    a, b = two(start_server)
    t = a.create_tenant("two")
    # the default signing key lives in the settings table: shared
    p1 = exchange(a, t.key)
    r = refresh(a, p1["refresh_token"])
    p2 = r.json()
    for _ in range(3):  # B holds the family and the key in its cache
        assert get(b, p2["access_token"]).status_code == 200
        assert get(b, p1["access_token"]).status_code == 200
    assert refresh(a, p1["refresh_token"]).status_code == 401  # reuse, on A
    assert get(b, p2["access_token"]).status_code == 401  # at once on B
    assert get(b, p1["access_token"]).status_code == 401
    # a key revoked on A: its tokens and itself refused on B at once
    k = Client(a.url, t.key).post("/v1/keys", json={}).json()
    q = exchange(b, k["api_key"])
    for _ in range(3):
        assert get(b, q["access_token"]).status_code == 200
        assert get(b, k["api_key"]).status_code == 200
    assert Client(a.url, t.key).delete("/v1/keys/%s" % k["id"]).status_code == 204
    assert get(b, q["access_token"]).status_code == 401
    assert get(b, k["api_key"]).status_code == 401


S1 = "first-secret-0123456789abcdef0123456789"
S2 = "second-secret-0123456789abcdef012345678"


def test_signing_key_rotation_by_config(start_server):
    a = start_server(extra_yaml="auth: {token_keys: [{id: k1, secret: %s}]}" % S1)
    t = a.create_tenant("rot")
    old = exchange(a, t.key)["access_token"]
    assert jwt_parts(old)[0]["kid"] == "k1"
    # rotated: k2 signs, k1 still verifies
    b = start_server(database_url=a.database_url, storage_path=a.storage_path,
                     extra_yaml="auth: {token_keys: [{id: k2, secret: %s}, {id: k1, secret: %s}]}"
                     % (S2, S1))
    new = exchange(b, t.key)["access_token"]
    assert jwt_parts(new)[0]["kid"] == "k2"
    assert get(b, old).status_code == 200
    assert get(b, new).status_code == 200
    assert get(a, new).status_code == 401  # k2 is not listed on A
    # k1 dropped: its tokens are refused
    c = start_server(database_url=a.database_url, storage_path=a.storage_path,
                     extra_yaml="auth: {token_keys: [{id: k2, secret: %s}]}" % S2)
    assert get(c, old).status_code == 401
    assert get(c, new).status_code == 200
    # a token signed by a secret listed under another kid is refused
    h, p, _ = jwt_parts(new)
    assert get(b, forge(dict(h, kid="k1"), p, secret=S2)).status_code == 401
    assert get(b, forge(dict(h, kid="k2"), p, secret=S2)).status_code == 200  # control


def test_short_secret_refused_at_start(start_server, tmp_path):
    import subprocess
    from sluice_harness import sluice_binary
    cfg = tmp_path / "bad.yaml"
    cfg.write_text('database_url: "postgresql:///x"\nauth: {token_keys: [{id: k1, secret: short}]}\n')
    r = subprocess.run([str(sluice_binary()), "migrate", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "at least 32 bytes" in (r.stderr + r.stdout)


def test_rate_limit_counts_tokens_by_key(start_server):
    srv = start_server(extra_yaml="rate_limits: {requests_per_s: {reads: 1, burst: 3}}")
    t = srv.create_tenant("rl")
    toks = []
    for _ in range(8):  # exchanges are POSTs outside the read budget? they count: retry on 429
        for _ in range(50):
            r = requests.post(srv.url + "/v1/auth/token",
                              headers={"Authorization": "Bearer " + t.key}, timeout=30)
            if r.status_code != 429:
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        toks.append(r.json()["access_token"])
    # eight different tokens of one key share one budget: some get 429
    statuses = [get(srv, tok).status_code for tok in toks]
    assert 429 in statuses, statuses


def test_revocation_without_redis(start_server, redis):
    """Redis down: no invalidation can cross, so B asks Postgres; a family
    revoked meanwhile stays refused when Redis is back."""
    from test_sse import wait_redis
    a, b = two(start_server)
    t = a.create_tenant("noredis")
    p1 = exchange(a, t.key)
    p2 = refresh(a, p1["refresh_token"]).json()
    for _ in range(3):
        assert get(b, p2["access_token"]).status_code == 200
    wait_redis(b, "ok")
    try:
        redis.stop()
        wait_redis(b, "down")
        wait_redis(a, "down")
        assert refresh(a, p1["refresh_token"]).status_code == 401  # reuse: family revoked
        assert get(b, p2["access_token"]).status_code == 401
    finally:
        if not redis.running:
            redis.start()
    wait_redis(b, "ok", timeout=30)
    assert get(b, p2["access_token"]).status_code == 401
    assert get(b, exchange(b, t.key)["access_token"]).status_code == 200


def test_revocation_ends_open_event_streams_on_every_instance(start_server):
    """API.md: after DELETE /v1/keys/{id} "that key -> 401 on every
    instance": a stream opened before is no exception. Streams opened with the
    key, or with a token made from it, end on both instances (a reconnect then
    gets 401); a token family revoked by refresh-token reuse ends its streams;
    a stream of another key goes on and still gets events."""
    from test_sse import SSE  # the EventSource-like reader

    a = start_server()
    b = start_server(database_url=a.database_url, storage_path=a.storage_path)
    t = a.create_tenant("streams")
    ds = t.create_dataset("d")["id"]
    doomed = t.post("/v1/keys", json={}).json()["api_key"]
    kept = t.post("/v1/keys", json={}).json()["api_key"]
    url = lambda srv: "%s/v1/datasets/%s/events" % (srv.url, ds)  # noqa: E731
    by_key = [SSE(url(s), headers={"Authorization": "Bearer " + doomed}) for s in (a, b)]
    by_token = SSE(url(b), params={"access_token": exchange(a, doomed)["access_token"]})
    fam = exchange(b, kept)
    by_family = SSE(url(a), params={"access_token": fam["access_token"]})
    other = SSE(url(a), headers={"Authorization": "Bearer " + kept})
    for s in by_key + [by_token, by_family, other]:
        assert s.resp.status_code == 200, s.resp.text
    time.sleep(0.3)
    assert not any(s.ended.is_set() for s in by_key + [by_token, by_family, other])

    doomed_id = [k["id"] for k in t.get("/v1/keys").json()["keys"]
                 if doomed.startswith(k["prefix"])][0]
    assert Client(b.url, kept).delete("/v1/keys/" + doomed_id).status_code == 204
    for s in by_key + [by_token]:
        assert s.ended.wait(5), "a stream of the revoked key is still open"
    for srv in (a, b):
        r = requests.get(url(srv), headers={"Authorization": "Bearer " + doomed}, timeout=10)
        assert r.status_code == 401, r.text

    # refresh-token reuse revokes the family: its stream ends, the key's stays
    assert refresh(a, fam["refresh_token"]).status_code == 200
    assert refresh(b, fam["refresh_token"]).status_code == 401
    assert by_family.ended.wait(5), "the revoked family's stream is still open"
    assert not other.ended.is_set()
    r = Client(a.url, kept).upload(ds, [("n.txt", b"words\n", "text/plain")])
    assert r.status_code == 202, r.text
    got = other.take(n=1, timeout=30)
    assert got[0]["event"] in ("file", "run"), got
    other.close()
