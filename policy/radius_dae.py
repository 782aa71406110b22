"""RADIUS Dynamic Authorization client (RFC 5176): CoA-Request and Disconnect-Request.

Each request goes from its own ephemeral UDP socket to the NAS's CoA port
(default 3799) and carries Event-Timestamp (RFC 5176 §3, replay protection)
and Message-Authenticator (RFC 5176 §3.5; first attribute, as for every
packet ocsd signs). Retransmission follows RFC 5080 §2.2.1: the *same*
packet, same Identifier and Authenticator, after IRT·(1±0.1) seconds, the
delay roughly doubling up to MRT, at most MRC retransmissions and MRD
seconds in all. A reply counts only if it comes from the NAS, matches the
Identifier and carries a valid Response Authenticator (and a valid
Message-Authenticator when it has one); anything else is ignored and
counted, and the wait goes on.

What an answer means for the action (`DaeActuator`):

* ACK: done; a Disconnect-ACK is then confirmed by the session's Stop.
* NAK with Error-Cause 503 Session-Context-Not-Found: the NAS no longer has
  the session, nothing is left to do (done, result ``gone``).
* NAK with 506 Resources-Unavailable or 507 Request-Initiated: try again
  later.
* any other CoA-NAK: refused; a throttle or redirect falls back to a
  Disconnect when the plan allows it, else the action is dead-lettered.
* any other Disconnect-NAK: refused, dead-lettered for an operator.
* no valid answer in time: try again later (the queue's back-off).

Every Error-Cause received is counted per NAS (`ocs_policy_error_causes_total`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Any

from ocs.model import Nas
from radius import codec
from radius.codec import A, Code
from radius.dictionary import Dictionary

from .model import DISCONNECT, REDIRECT, THROTTLE, Action, ActuatorError, Attempt
from .vendors import CoaWriter, nas_host

log = logging.getLogger("ocs.policy")

#: RFC 5176 §3.6 Error-Cause values.
ERROR_CAUSES = {
    201: "Residual-Session-Context-Removed", 202: "Invalid-EAP-Packet",
    401: "Unsupported-Attribute", 402: "Missing-Attribute",
    403: "NAS-Identification-Mismatch", 404: "Invalid-Request",
    405: "Unsupported-Service", 406: "Unsupported-Extension",
    407: "Invalid-Attribute-Value", 501: "Administratively-Prohibited",
    502: "Request-Not-Routable", 503: "Session-Context-Not-Found",
    504: "Session-Context-Not-Removable", 505: "Other-Proxy-Processing-Error",
    506: "Resources-Unavailable", 507: "Request-Initiated",
    508: "Multiple-Session-Selection-Unsupported",
}
_ZERO16 = bytes(16)
SESSION_GONE = 503
TRANSIENT = frozenset({506, 507})
_REPLIES = {Code.DISCONNECT_REQUEST: (Code.DISCONNECT_ACK, Code.DISCONNECT_NAK),
            Code.COA_REQUEST: (Code.COA_ACK, Code.COA_NAK)}


def cause_name(value: int) -> str:
    return ERROR_CAUSES.get(value, f"Error-Cause-{value}")


@dataclass(frozen=True)
class Retransmission:
    """RFC 5080 §2.2.1 parameters: IRT, MRT, MRC, MRD."""

    initial: float = 2.0
    maximum: float = 16.0
    count: int = 4
    duration: float = 30.0

    def delays(self, rand=random.uniform):
        """Successive waits before each retransmission and after the last send."""
        rt = self.initial + rand(-0.1, 0.1) * self.initial
        for _ in range(self.count + 1):
            yield rt
            rt = 2 * rt + rand(-0.1, 0.1) * rt
            if rt > self.maximum:
                rt = self.maximum + rand(-0.1, 0.1) * self.maximum


@dataclass(frozen=True)
class DaeAnswer:
    code: int | None                 # None: no valid answer
    error_causes: tuple[int, ...] = ()
    attributes: dict[str, Any] | None = None
    transmissions: int = 1
    ignored: int = 0                 # datagrams that were not a valid answer
    latency: float = 0.0

    @property
    def ack(self) -> bool:
        return self.code in (Code.DISCONNECT_ACK, Code.COA_ACK)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):  # ICMP port unreachable and the like
        self.queue.put_nowait((b"", exc))


async def send_request(host: str, port: int, code: int, attrs: list[tuple[int, bytes]],
                       secret: bytes, timing: Retransmission, *,
                       dictionary: Dictionary | None = None) -> tuple[bytes, DaeAnswer]:
    """Send one DAE request until a valid answer or the retransmission budget ends.

    Returns the request octets (for the record) and the answer.
    """
    ident = random.randrange(256)
    attrs = list(attrs) + [(A.EVENT_TIMESTAMP, codec.u32(int(time.time())))]
    packet = codec.encode_request(code, ident, attrs, secret, message_authenticator=True)
    request_auth = packet[4:20]
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        _Receiver, remote_addr=(host, port), family=family)
    started = time.monotonic()
    deadline = started + timing.duration
    sent = ignored = 0
    wanted = _REPLIES[code]
    try:
        for wait in timing.delays():
            transport.sendto(packet)
            sent += 1
            until = min(time.monotonic() + wait, deadline)
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    data, _addr = await asyncio.wait_for(proto.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if not data:  # ICMP error: the port is closed; keep waiting out the budget
                    ignored += 1
                    continue
                reply = _valid_reply(data, ident, wanted, secret, request_auth)
                if reply is None:
                    ignored += 1
                    continue
                causes = tuple(int.from_bytes(v, "big") for v in reply.get_all(A.ERROR_CAUSE)
                               if len(v) == 4)
                named = dictionary.named(reply.attributes, skip=frozenset(
                    {A.MESSAGE_AUTHENTICATOR})) if dictionary is not None else None
                return packet, DaeAnswer(reply.code, causes, named, sent, ignored,
                                         time.monotonic() - started)
            if time.monotonic() >= deadline:
                break
        return packet, DaeAnswer(None, transmissions=sent, ignored=ignored,
                                 latency=time.monotonic() - started)
    finally:
        transport.close()


def _valid_reply(data: bytes, ident: int, wanted: tuple[int, int], secret: bytes,
                 request_auth: bytes):
    try:
        reply = codec.decode(data)
    except codec.DecodeError:
        return None
    if reply.identifier != ident or reply.code not in wanted:
        return None
    if not codec.reply_authenticator_ok(reply, secret, request_auth):
        return None
    # RFC 5176 §3.5 signs an ACK/NAK's Message-Authenticator over the request's
    # Authenticator; FreeRADIUS, and NAS built on its libraries, over sixteen zeros.
    # Both are this NAS's secret at work: either is taken.
    if reply.has_message_authenticator and not any(
            codec.message_authenticator_ok(reply, secret, auth) for auth in (request_auth,
                                                                             _ZERO16)):
        return None
    return reply


class DaeActuator:
    """The ``coa`` back-end: RFC 5176 requests to the session's NAS."""

    backend = "coa"

    def __init__(self, writer: CoaWriter, timing: Retransmission, metrics=None):
        self.writer = writer
        self.timing = timing
        self.metrics = metrics

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def execute(self, action: Action, nas: Nas | None) -> Attempt:
        if nas is None:
            raise ActuatorError(f"NAS {action.nas!r} of session {action.session} is not "
                                f"registered", retry=False)
        if not nas.secret:
            raise ActuatorError(f"NAS {nas.name} has no shared secret for CoA", retry=False)
        kind, attrs = self.writer.request(nas, action)
        code = Code.DISCONNECT_REQUEST if kind == "disconnect" else Code.COA_REQUEST
        host, port = nas_host(nas, action.target), nas.coa_port
        dictionary = self.writer.dictionary
        request = {"code": "Disconnect-Request" if kind == "disconnect" else "CoA-Request",
                   "to": f"{host}:{port}",
                   "attributes": dictionary.named(attrs)}
        try:
            packet, answer = await send_request(host, port, code, attrs, nas.secret.encode(),
                                                self.timing, dictionary=dictionary)
        except OSError as exc:
            return Attempt.failed(f"cannot send to {host}:{port}: {exc.strerror or exc}",
                                  request=request)
        request.update(identifier=packet[1], transmissions=answer.transmissions,
                       attributes=dictionary.named(codec.decode(packet).attributes,
                                                   skip=frozenset({A.MESSAGE_AUTHENTICATOR})))
        if answer.code is None:
            return Attempt(False, "timeout", request=request,
                           answer={"ignored": answer.ignored}, retry=True,
                           error=f"no valid answer from {host}:{port} after "
                                 f"{answer.transmissions} transmissions",
                           latency_ms=answer.latency * 1000)
        causes = [cause_name(c) for c in answer.error_causes]
        for name in causes:
            if self.metrics is not None:
                self.metrics.policy_error_causes.labels(nas=nas.name, cause=name).inc()
        reply = {"code": _CODE_NAMES.get(answer.code, str(answer.code)),
                 "error_causes": causes, "attributes": answer.attributes or {}}
        ms = answer.latency * 1000
        if answer.ack:
            return Attempt(True, "ack", request=request, answer=reply,
                           confirm=action.action == DISCONNECT, latency_ms=ms)
        if SESSION_GONE in answer.error_causes:
            return Attempt(True, "gone", request=request, answer=reply, latency_ms=ms)
        why = f"{reply['code']}" + (f" ({', '.join(causes)})" if causes else "")
        if TRANSIENT & set(answer.error_causes):
            return Attempt(False, "nak", request=request, answer=reply, retry=True,
                           error=why, latency_ms=ms)
        return Attempt(False, "nak", request=request, answer=reply, retry=False,
                       fallback=code == Code.COA_REQUEST and action.action in (THROTTLE,
                                                                               REDIRECT),
                       error=why, latency_ms=ms)


_CODE_NAMES = {Code.DISCONNECT_ACK: "Disconnect-ACK", Code.DISCONNECT_NAK: "Disconnect-NAK",
               Code.COA_ACK: "CoA-ACK", Code.COA_NAK: "CoA-NAK"}

__all__ = ["DaeActuator", "DaeAnswer", "Retransmission", "send_request", "ERROR_CAUSES",
           "cause_name"]
