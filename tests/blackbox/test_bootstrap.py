"""Tenants bootstrapped from the config: usable at once, created once."""
import subprocess

import requests


def test_config_tenants_are_created_once_with_hashed_keys(start_server):
    srv = start_server(extra_yaml="tenants:\n  - {name: boot, api_key: sk_boot_0123456789}\n")
    h = {"Authorization": "Bearer sk_boot_0123456789"}
    r = requests.get(srv.url + "/v1/datasets", headers=h, timeout=10)
    assert r.status_code == 200, r.text
    assert requests.get(srv.url + "/v1/datasets", headers={"Authorization": "Bearer nope"},
                        timeout=10).status_code == 401
    srv.restart()
    assert requests.get(srv.url + "/v1/datasets", headers=h, timeout=10).status_code == 200
    out = subprocess.run(["psql", "-X", "-A", "-t", "-d", srv.database_url, "-c",
                          "SELECT count(*), min(k.key_hash) FROM tenants t JOIN api_keys k "
                          "ON k.tenant_id = t.id WHERE t.name = 'boot'"],
                         capture_output=True, text=True, check=True).stdout.strip()
    count, key_hash = out.split("|")
    assert count == "1"
    assert "sk_boot" not in key_hash and len(key_hash) == 64
