"""Backpressure from downstream services, end to end: Retry-After holds every
call to a service on every instance (through Redis), OpenAI's rate-limit
headers make Sluice slow down before it is throttled, and a held run shows
why it waits. The OpenAI stand-in (tests/standins/standins.py) meters
requests as OpenAI does and records when each arrived.

No upper bounds on time are asserted: only "no call before the hold ended".
"""
import time

from sluice_harness import Client, metric
from test_pipelines import events, run_of, services_yaml, upload, wait_files

NOTES = "notes.txt"


def _openai_times(openai):
    """Arrival times (stand-in clock) and statuses of its protocol requests."""
    st = openai.stats()
    return st["timestamps"], st


def test_retry_after_holds_the_service_on_every_instance(start_server, standins, samples,
                                                         tmp_path):
    openai = standins("openai")
    openai.control(mode="rate_limit", retry_after=2, count=1)
    yaml = services_yaml(openai=openai)
    a = start_server(extra_yaml=yaml)
    b = start_server(extra_yaml=yaml, database_url=a.database_url, storage_path=a.storage_path)
    t_a = a.create_tenant("hold")
    t_b = Client(b.url, t_a.key)
    ds = t_a.create_dataset("hold")["id"]

    # The first call is answered 429 with Retry-After: 2 ...
    first = upload(t_a, ds, samples, [NOTES])[NOTES]
    end = time.time() + 60
    while time.time() < end and openai.stats()["by_status"].get("429", 0) == 0:
        time.sleep(0.05)
    assert openai.stats()["by_status"].get("429") == 1
    # ... then files through both instances want the service at once.
    more = []
    for i in range(3):
        more.append(upload(t_a, ds, samples, [NOTES])[NOTES])
        more.append(upload(t_b, ds, samples, [NOTES])[NOTES])
    docs = wait_files(t_a, [first] + more, timeout=180)
    assert all(d["status"] == "done" for d in docs.values()), docs

    stamps, st = _openai_times(openai)
    t429 = stamps[0]
    later = stamps[1:]
    assert later, st
    # no call to openai, from either instance, before Retry-After had passed
    # (the stand-in stamps a request when it arrives; the hold starts when
    # Sluice reads the answer, a little after t429)
    assert min(later) - t429 >= 2.0, (t429, later)
    assert st["by_status"].get("429") == 1, st
    # both instances called it, and both were held
    for srv in (a, b):
        assert (metric(srv, "sluice_service_calls_total", service="openai", outcome="ok") or 0) > 0
    # the run that met the 429 waited, with the reason in its timeline
    waits = [e for e in events(t_a, first) if e["kind"] == "waiting"]
    assert waits and waits[0]["detail"]["reason"].startswith("waiting for openai: rate limited"), \
        events(t_a, first)


def test_rate_limit_headers_at_zero_wait_for_the_reset(start_server, standins, samples):
    """Two requests per (2-second) window: after the second, the answer says 0
    remaining and when the window resets. Sluice holds openai until then, so
    the stand-in never has to answer 429 (the stand-in answers 429 to a
    request over the budget)."""
    openai = standins("openai")
    openai.control(rpm=2, window_s=2)
    # one call at a time: the headers of one answer can only slow down the
    # calls that start after it
    yaml = services_yaml(openai=openai).replace(
        "model: gpt-4o-mini,", "model: gpt-4o-mini, concurrency: 1,")
    srv = start_server(extra_yaml=yaml)
    t = srv.create_tenant("rl0")
    ds = t.create_dataset()["id"]
    fids = [upload(t, ds, samples, [NOTES])[NOTES] for _ in range(4)]
    docs = wait_files(t, fids, timeout=180)
    assert all(d["status"] == "done" for d in docs.values()), docs
    stamps, st = _openai_times(openai)
    assert st["requests"] == 4 and st["by_status"].get("429", 0) == 0, st
    # the 3rd request waited for the bucket to refill a request's worth
    # (1 s at 2 per 2 s) after the 2nd drained it
    stamps.sort()
    assert stamps[2] - stamps[1] >= 0.9, stamps


def test_usage_drives_token_accounting(start_server, standins, samples):
    """tokens_per_min is charged from what the answers' usage reports, not a
    flat 1,000 a call: Sluice's count of used tokens is the stand-in's."""
    openai = standins("openai")
    yaml = services_yaml(openai=openai).replace(
        "model: gpt-4o-mini,", "model: gpt-4o-mini, tokens_per_min: 600000,")
    srv = start_server(extra_yaml=yaml)
    t = srv.create_tenant("tok")
    ds = t.create_dataset()["id"]
    fids = [upload(t, ds, samples, [n])[n] for n in (NOTES, "invoice-acme.pdf")]
    docs = wait_files(t, fids)
    assert all(run_of(d, "ai_record")["state"] == "succeeded" for d in docs.values()), docs
    used = openai.stats()["usage_tokens"]
    assert used > 0 and used != 2000
    assert metric(srv, "sluice_service_tokens_total", service="openai") == used
