"""Shared harness of the enforcement tests: a real UDP RADIUS DAE listener (the NAS
side of RFC 5176), a daemon-like context for `PolicyService`, and seed data."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from ocs.cluster import build
from ocs.components import Context, Registry
from ocs.config import from_dict
from ocs.metrics import Metrics
from ocs.model import Session, now_us
from ocs.store import Store, make_driver
from radius import codec
from radius.codec import A, Code
from radius.dictionary import Dictionary
from tests.radius_harness import free_udp_port

NAS_SECRET = "policy-test-secret-0123456789"
DICT = Dictionary()
_ACK = {Code.COA_REQUEST: Code.COA_ACK, Code.DISCONNECT_REQUEST: Code.DISCONNECT_ACK}
_NAK = {Code.COA_REQUEST: Code.COA_NAK, Code.DISCONNECT_REQUEST: Code.DISCONNECT_NAK}


@dataclass
class Received:
    code: int
    identifier: int
    authenticator: bytes
    attrs: dict[str, Any]
    at: float
    valid: bool          # Request Authenticator and Message-Authenticator check out
    raw: bytes = b""


@dataclass
class DaeNas:
    """A NAS's CoA port on a real UDP socket. `answer(received)` returns
    ("ack" | "nak" | "drop", [Error-Cause values]); the default acks everything."""

    secret: str = NAS_SECRET
    answer: Callable[[Received], tuple[str, list[int]]] = lambda r: ("ack", [])
    received: list[Received] = field(default_factory=list)
    port: int = 0
    answer_invalid: bool = False   # answer even requests that fail the signature checks
    # The Authenticator its answers' Message-Authenticator is computed over: the
    # request's (RFC 5176 §3.5) or sixteen zeros (FreeRADIUS and NAS built on it).
    sign_over: str = "request"

    async def start(self) -> "DaeNas":
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _DaeProtocol(self), local_addr=("127.0.0.1", 0), family=socket.AF_INET)
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def stop(self) -> None:
        self.transport.close()

    def handle(self, data: bytes, addr) -> None:
        packet = codec.decode(data)
        secret = self.secret.encode()
        valid = codec.request_authenticator_ok(packet, secret) and (
            packet.has_message_authenticator and codec.message_authenticator_ok(packet, secret))
        r = Received(packet.code, packet.identifier, packet.authenticator,
                     DICT.named(packet.attributes, skip=frozenset({A.MESSAGE_AUTHENTICATOR})),
                     time.monotonic(), valid, data)
        self.received.append(r)
        what, causes = self.answer(r)
        if what == "drop" or (not valid and not self.answer_invalid):
            return
        code = (_ACK if what == "ack" else _NAK)[packet.code]
        attrs = [(A.ERROR_CAUSE, codec.u32(c)) for c in causes]
        if self.sign_over == "zeros":
            reply = _signed_over_zeros(packet, code, attrs, secret)
        else:
            reply = codec.encode_reply(packet, code, attrs, secret)
        self.transport.sendto(reply, addr)

    async def wait(self, n: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.received


def _signed_over_zeros(request, code: int, attrs, secret: bytes) -> bytes:
    """An answer whose Message-Authenticator is computed with a zero Authenticator."""
    body = bytes((A.MESSAGE_AUTHENTICATOR, 18)) + bytes(16) + codec.encode_attributes(attrs)
    buf = bytearray(struct.pack("!BBH", code, request.identifier, 20 + len(body)))
    buf += bytes(16) + body
    buf[22:38] = codec.hmac_md5(secret, buf)
    buf[4:20] = request.authenticator
    buf[4:20] = hashlib.md5(bytes(buf) + secret).digest()
    return bytes(buf)


class _DaeProtocol(asyncio.DatagramProtocol):
    def __init__(self, nas: DaeNas):
        self.nas = nas

    def datagram_received(self, data, addr):
        self.nas.handle(data, addr)


def policy_config(*, redis: dict | None = None, **policy) -> Any:
    base = {"daemon": {"node_name": "policy-test"}, "redis": redis or {},
            "policy": {"coa_timeout": 0.2, "coa_max_timeout": 0.4, "coa_retransmissions": 2,
                       "coa_max_duration": 1.5, "backoff_initial": 0.1, "backoff_max": 0.2,
                       "poll_interval": 0.1, "confirm_timeout": 2, "lease": 30, **policy}}
    return from_dict(base)


async def context(store, config=None) -> Context:
    """A daemon context around `store`: in-process cluster, registry loaded."""
    config = config or policy_config()
    ctx = Context(config=config, config_path="-", metrics=Metrics())
    ctx.store = store
    ctx.cluster = build(config.redis, node=config.daemon.node_name)
    await ctx.cluster.start()
    ctx.registry = await Registry.load(store)
    return ctx


async def reload(ctx: Context) -> None:
    ctx.registry = await Registry.load(ctx.store)


async def seed(store, *, nas_port: int, vendor: str = "mikrotik", policy: dict | None = None,
               speed: dict | None = None, fair: dict | None = None, username: str = "alice",
               framed_ip: str = "10.20.0.5", control: dict | None = None,
               nas_name: str = "bras-1", nas_kind: str = "nas", nas_address="127.0.0.1",
               balance: int = 5_000_000, sessions: int = 1, proto: str = "radius") -> dict:
    """A prepaid account with one subscriber on a plan with `policy`, a NAS
    listening for CoA on `nas_port`, and active sessions on it."""
    plan = await store.create_plan(
        name=f"plan-{username}", currency="EUR",
        speed_profile=speed if speed is not None else {"down_kbps": 20000, "up_kbps": 5000},
        fair_usage=fair, policy=policy)
    try:
        nas = next(n for n in await store.list_nas() if n.name == nas_name)
    except StopIteration:
        nas = await store.create_nas(name=nas_name, address=nas_address, secret=NAS_SECRET,
                                     vendor=vendor, coa_port=nas_port, kind=nas_kind,
                                     control=control or {})
    account = await store.create_account(name=f"acct-{username}", currency="EUR",
                                         billing="prepaid", opening_balance=balance)
    sub = await store.create_subscriber(account_id=account.id, plan_id=plan.id,
                                        username=username, framed_ip=framed_ip)
    ids = []
    for i in range(sessions):
        sid = f"{proto}:{nas.name}:{username}-{i}"
        now = now_us()
        await store.upsert_session(Session(
            id=sid, account_id=account.id, subscriber_id=sub.id, proto=proto, nas=nas.name,
            nas_session_id=f"{username}-{i}", framed_ip=framed_ip, status="active",
            last_seq=0, started_at=now, updated_at=now, ended_at=None,
            attrs={"NAS-Port-Id": f"ether{i}", "Calling-Station-Id": "00:11:22:33:44:55"}))
        ids.append(sid)
    return {"plan": plan, "nas": nas, "account": account, "subscriber": sub, "sessions": ids}


async def close_session(store, session_id: str) -> None:
    s = await store.get_session(session_id)
    from dataclasses import replace
    await store.upsert_session(replace(s, status="closed", ended_at=now_us(),
                                       updated_at=now_us()))


async def until(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Await until `predicate()` (sync or async) is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


__all__ = ["DaeNas", "Received", "NAS_SECRET", "policy_config", "context", "reload", "seed",
           "close_session", "until", "DICT"]


# ---------------------------------------------------------------------- FreeRADIUS as the NAS
# What every FreeRADIUS configuration of the tests shares: paths under {dir}, the
# log on stdout, a small thread pool.
FREERADIUS_HEAD = """
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = {dir}
sbindir = /usr/sbin
logdir = {dir}/log
raddbdir = {dir}
confdir = {dir}
run_dir = {dir}/run
libdir = /usr/lib/freeradius
pidfile = {dir}/run/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 1024
hostname_lookups = no
log {{
	destination = stdout
}}
security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = no
}}
thread pool {{
	start_servers = 1
	max_servers = 4
	min_spare_servers = 1
	max_spare_servers = 2
}}
"""

FREERADIUS_CONF = FREERADIUS_HEAD + """proxy_requests = no
client ocs {{
	ipaddr = 127.0.0.1
	secret = {secret}
	require_message_authenticator = yes
}}
modules {{
	always reject {{
		rcode = reject
	}}
	always ok {{
		rcode = ok
	}}
}}
listen {{
	type = coa
	ipaddr = 127.0.0.1
	port = {port}
	virtual_server = coa
}}
server coa {{
	recv-coa {{
{policy}
		ok
	}}
	send-coa {{
		ok
	}}
}}
"""

#: NAK (Error-Cause Unsupported-Attribute) every CoA-Request for User-Name "nak-me".
NAK_POLICY = """
		if (&Packet-Type == CoA-Request && &User-Name == "nak-me") {
			update reply {
				&Error-Cause := Unsupported-Attribute
			}
			reject
		}
"""


@dataclass
class Logged:
    number: int
    code: str
    attrs: dict[str, str]
    reply: str | None = None


class FreeRadius:
    """FreeRADIUS in the foreground (``-X``) on a configuration of its own in
    `directory` (`template` formatted with `dir` and `values`); its debug log
    says what it received and answered."""

    def __init__(self, directory, template: str, **values):
        import os
        self.dir = str(directory)
        for sub in ("log", "run"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(os.path.join(self.dir, "radiusd.conf"), "w") as fh:
            fh.write(template.format(dir=self.dir, **values))
        self.log_path = os.path.join(self.dir, "radiusd.out")
        self.proc = None

    def start(self) -> "FreeRadius":
        import subprocess
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["freeradius", "-X", "-f", "-d", self.dir, "-n", "radiusd"],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "Ready to process requests" in self.text():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("FreeRADIUS did not start:\n" + self.text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - a stuck test peer is killed
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def text(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def requests(self) -> list[Logged]:
        """Every request FreeRADIUS logged, with its attributes and the reply it sent."""
        import re
        out: dict[int, Logged] = {}
        lines = self.text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^\((\d+)\) Received (\S+) Id \d+ from", line)
            if m:
                n = int(m.group(1))
                attrs: dict[str, str] = {}
                for follow in lines[i + 1:]:
                    a = re.match(rf"^\({n}\)   (\S+) = (.*)$", follow)
                    if not a:
                        break
                    value = a.group(2)
                    attrs[a.group(1)] = value[1:-1] if value.startswith('"') else value
                out[n] = Logged(n, m.group(2), attrs)
            m = re.match(r"^\((\d+)\) Sent (\S+) Id", line)
            if m and int(m.group(1)) in out:
                out[int(m.group(1))].reply = m.group(2)
        return [out[k] for k in sorted(out)]

    async def wait(self, n: int, timeout: float = 5.0) -> list[Logged]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests()
            if len(got) >= n and all(r.reply for r in got[:n]):
                return got
            await asyncio.sleep(0.05)
        return self.requests()


class FreeRadiusNas(FreeRadius):
    """FreeRADIUS as the NAS side of RFC 5176: it receives our CoA and Disconnect
    requests on a free UDP port and answers per `policy` (unlang)."""

    def __init__(self, directory, *, policy: str = NAK_POLICY, secret: str = NAS_SECRET):
        self.secret = secret
        self.port = free_udp_port()
        super().__init__(directory, FREERADIUS_CONF, secret=secret, port=self.port,
                         policy=policy)


@contextlib.asynccontextmanager
async def running_service(tmp_path, **policy) -> AsyncIterator[Any]:
    """A started `PolicyService` on a fresh embedded store, stopped afterwards."""
    from policy.service import PolicyService
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    ctx = await context(store, policy_config(**policy))
    service = PolicyService(ctx)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await ctx.cluster.stop()
        await store.close()


def exhausted(info, service: str = "data") -> dict:
    """An "exhausted" event for the first seeded session, as the charging core emits it."""
    at = now_us()
    sid = info["sessions"][0]
    return {"id": f"t|{sid}|{at}", "type": "exhausted", "account_id": info["account"].id,
            "session": sid, "service": service, "at": at}


async def finished(svc, status: str = "done", n: int = 1):
    """The actions in `status` once there are at least `n` of them, else None (for `until`)."""
    rows = await svc.listing((status,))
    return rows if len(rows) >= n else None
