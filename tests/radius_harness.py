"""Shared harness of the RADIUS tests: an ocsd with RADIUS on free ports, seeded
data, FreeRADIUS's radclient and a raw UDP client."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import urllib.error
import urllib.request

from radius import codec
from radius.codec import A, Code
from tests.services import free_port
from tests.test_daemon import Ocsd, in_store

SECRET = "testing123"
TOKEN = "radius-test-token-0123456789abcdef"


@contextlib.contextmanager
def started(tmp_path, seed, **kw):
    """A RadiusOcsd seeded by `seed` (ids in `.ids`), running until the block ends."""
    d = RadiusOcsd(tmp_path, **kw)
    d.ids = d.seed(seed)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


class RadiusOcsd(Ocsd):
    """ocsd with [radius] on free UDP ports and an admin token."""

    def __init__(self, tmp_path, *, store_url=None, extra_radius: str = "", **kw):
        self.auth_port, self.acct_port = free_udp_port(), free_udp_port()
        extra = (f'bootstrap_token = "{TOKEN}"\n\n[radius]\n'
                 f'auth_listen = "127.0.0.1:{self.auth_port}"\n'
                 f'acct_listen = "127.0.0.1:{self.acct_port}"\n{extra_radius}\n')
        super().__init__(tmp_path, store_url=store_url, extra=extra, **kw)

    def seed(self, job, **options):
        return in_store(self.store_url, job, **options)

    # ------------------------------------------------------------ API
    def api(self, method: str, path: str, body: dict | None = None,
            token: str = TOKEN) -> tuple[int, dict]:
        return super().api(method, path, token, body)

    def buckets(self, account_id: int) -> dict[str, int]:
        """{kind: balance} of the account's buckets, money as micro-units, via the API."""
        status, body = self.api("GET", f"/v1/accounts/{account_id}")
        assert status == 200, body
        out: dict[str, int] = {}
        for b in body["balance"]["buckets"]:
            value = b["balance"]
            if b["kind"] == "money":
                value = round(float(value) * 1_000_000)
            out[b["kind"]] = out.get(b["kind"], 0) + value
        return out

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return resp.read().decode()

    def dropped(self, reason: str) -> float:
        m = re.search(rf'^ocs_radius_dropped_total{{reason="{reason}"}} (\S+)$',
                      self.metrics_text(), re.M)
        return float(m.group(1)) if m else 0.0

    # ------------------------------------------------------------ radclient
    def radclient(self, kind: str, text: str, *, secret: str = SECRET, timeout: float = 1.0,
                  retries: int = 1, port: int | None = None
                  ) -> tuple[str | None, dict[str, str]]:
        """(reply name or None on no answer, {attribute: value}) as radclient prints them.
        `port`: another server's (a proxy in front of ocsd) instead of ocsd's own."""
        if port is None:
            port = self.auth_port if kind in ("auth", "status-auth") else self.acct_port
        cmd = "status" if kind.startswith("status") else kind
        proc = subprocess.run(["radclient", "-x", "-r", str(retries), "-t", str(timeout),
                               f"127.0.0.1:{port}", cmd, secret], input=text.encode(),
                              capture_output=True, timeout=30)
        out = proc.stdout.decode()
        m = re.search(r"^Received (\S+) Id", out, re.M)
        if m is None:
            return None, {}
        attrs: dict[str, str] = {}
        for line in out[m.end():].splitlines()[1:]:
            if not line.startswith("\t") or " = " not in line:
                break
            k, v = line.strip().split(" = ", 1)
            v = v.strip('"')
            attrs[k] = v if k not in attrs else attrs[k] + "|" + v
        return m.group(1), attrs

    # ------------------------------------------------------------ raw UDP
    def send_raw(self, data: bytes, *, port: str = "acct", source: str = "127.0.0.1",
                 timeout: float = 1.0) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.settimeout(timeout)
            s.sendto(data, ("127.0.0.1", self.auth_port if port == "auth" else self.acct_port))
            try:
                return s.recv(5000)
            except socket.timeout:
                return None


def acct_packet(attrs: list[tuple[int, bytes]], *, ident: int = 1, secret: str = SECRET,
                ma: bool = False) -> bytes:
    return codec.encode_request(Code.ACCOUNTING_REQUEST, ident, attrs, secret.encode(),
                                message_authenticator=ma)


def s(text: str) -> bytes:
    return text.encode()


__all__ = ["A", "Code", "RadiusOcsd", "SECRET", "TOKEN", "acct_packet", "codec", "free_port", "s",
           "started"]
