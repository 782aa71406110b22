"""End to end through the running daemon: an account change made through the
API becomes an event on the cluster's Redis stream (the outbox relay), and
/healthz reports Redis trouble."""

from __future__ import annotations

import json
import secrets
import time

import redis

from tests.test_daemon import Ocsd, health


def api(d: Ocsd, method: str, path: str, token: str, body: dict | None = None) -> dict:
    status, answer = d.api(method, path, token, body)
    assert status < 300, (status, answer)
    return answer


def test_account_suspension_reaches_the_redis_event_stream(tmp_path, redis_url):
    prefix = f"ocs-test-{secrets.token_hex(4)}:"
    token = secrets.token_urlsafe(24)
    d = Ocsd(tmp_path, extra=f'bootstrap_token = "env:OCS_TEST_TOKEN"\n\n[redis]\n'
                             f'url = "{redis_url}"\nkey_prefix = "{prefix}"\n',
             env={"OCS_TEST_TOKEN": token})
    r = redis.Redis.from_url(redis_url)
    try:
        d.start()
        status, body = health(d)
        assert status == 200 and body["cluster"] == "redis" and body["cluster_state"] == "ok"
        account = api(d, "POST", "/v1/accounts", token,
                      {"name": "ev-1", "currency": "EUR", "billing": "prepaid"})
        api(d, "POST", f"/v1/accounts/{account['id']}/suspend", token, {"reason": "unpaid"})
        stream = f"{prefix}events".encode()
        deadline = time.monotonic() + 10
        entries = []
        while time.monotonic() < deadline and not entries:
            entries = r.xrange(stream)
            time.sleep(0.05)
        events = [json.loads(fields[b"event"]) for _, fields in entries]
        assert [e["type"] for e in events] == ["account_suspended"]
        assert events[0]["account_id"] == account["id"] and events[0]["reason"] == "unpaid"
    finally:
        d.stop()
        for key in r.scan_iter(match=f"{prefix}*"):
            r.delete(key)
        r.close()


def test_nas_added_through_the_api_is_loaded_without_sighup(tmp_path):
    token = secrets.token_urlsafe(24)
    d = Ocsd(tmp_path, extra='bootstrap_token = "env:OCS_TEST_TOKEN"\n',
             env={"OCS_TEST_TOKEN": token})
    try:
        d.start()
        assert health(d)[1]["nas_loaded"] == 0
        api(d, "POST", "/v1/nas", token, {"name": "bras-9", "address": "192.0.2.9",
                                          "secret": "a-long-and-random-secret-9"})
        assert health(d)[1]["nas_loaded"] == 1
        d.wait_log(r"nas changed through the API: NAS 1 \(\+1")
    finally:
        d.stop()
