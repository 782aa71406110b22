"""A small Diameter credit-control client on the same codec: for tests, the
benchmark and operators' smoke checks. Not used by the daemon.

    client = DiameterClient("127.0.0.1", 3868, origin_host="pgw.example.net")
    cea = await client.connect()                      # CER/CEA
    cca = await client.request(client.ccr("s1", INITIAL, 0, msisdn="41790000001",
                                          msccs=[mscc(10, requested={})]))
    await client.close()                              # DPR/DPA

It answers the server's DWR, DPR, RAR and ASR by itself (RAR/ASR through
`on_request`, default 2001) and records every server-initiated request in
`server_requests`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl as _ssl
from typing import Awaitable, Callable

from . import base
from . import tables as T
from .codec import (FLAG_PROXIABLE, FLAG_REQUEST, FLAG_RETRANSMIT, Avp, Message, avp, decode,
                    encode)
from .framing import Framer
from .gy import CONTEXT_DATA

INITIAL, UPDATE, TERMINATION, EVENT = 1, 2, 3, 4
_UNIT_KEYS = {"time": T.CC_TIME, "total": T.CC_TOTAL_OCTETS, "input": T.CC_INPUT_OCTETS,
              "output": T.CC_OUTPUT_OCTETS, "units": T.CC_SERVICE_SPECIFIC_UNITS}


def units(values: dict[str, int]) -> tuple[Avp, ...]:
    """{'total': 1000, 'time': 60} -> the unit AVPs of a *-Service-Unit group."""
    return tuple(avp(_UNIT_KEYS[k], v) for k, v in values.items())


def mscc(rating_group: int | None = None, *, service_id: int | None = None,
         requested: dict | None = None, used: dict | list | None = None,
         reporting_reason: int | None = None) -> Avp:
    """One Multiple-Services-Credit-Control; `requested={}` is an empty RSU."""
    inner: list[Avp] = []
    if requested is not None:
        inner.append(avp(T.REQUESTED_SERVICE_UNIT, units(requested)))
    for u in ([used] if isinstance(used, dict) else used or []):
        inner.append(avp(T.USED_SERVICE_UNIT, units(u)))
    if service_id is not None:
        inner.append(avp(T.SERVICE_IDENTIFIER, service_id))
    if rating_group is not None:
        inner.append(avp(T.RATING_GROUP, rating_group))
    if reporting_reason is not None:
        inner.append(avp(T.REPORTING_REASON, reporting_reason))
    return avp(T.MULTIPLE_SERVICES_CREDIT_CONTROL, tuple(inner))


def subscription(*, msisdn: str | None = None, imsi: str | None = None,
                 sip_uri: str | None = None, nai: str | None = None) -> list[Avp]:
    out = []
    for kind, data in ((0, msisdn), (1, imsi), (2, sip_uri), (3, nai)):
        if data is not None:
            out.append(avp(T.SUBSCRIPTION_ID, (avp(T.SUBSCRIPTION_ID_TYPE, kind),
                                               avp(T.SUBSCRIPTION_ID_DATA, data))))
    return out


def ims_information(called: str, calling: str | None = None) -> Avp:
    ims = [avp(T.ROLE_OF_NODE, 0), avp(T.NODE_FUNCTIONALITY, 6)]
    if calling:
        ims.append(avp(T.CALLING_PARTY_ADDRESS, calling))
    ims.append(avp(T.CALLED_PARTY_ADDRESS, called))
    return avp(T.SERVICE_INFORMATION, (avp(T.IMS_INFORMATION, tuple(ims)),))


def sms_information(recipient: str) -> Avp:
    """Service-Information with the SMS recipient (TS 32.299 SMS-Information)."""
    address = avp(T.RECIPIENT_ADDRESS, (avp(T.ADDRESS_TYPE, 1), avp(T.ADDRESS_DATA, recipient)))
    return avp(T.SERVICE_INFORMATION, (avp(T.SMS_INFORMATION, (
        avp(T.RECIPIENT_INFO, (address,)),)),))


class DiameterClient:
    """One client connection; see the module docstring."""

    def __init__(self, host: str, port: int, *, origin_host: str = "pgw.test.example",
                 origin_realm: str = "test.example", destination_realm: str = "localdomain",
                 ssl: _ssl.SSLContext | None = None, answer_watchdog: bool = True,
                 on_request: Callable[[Message], Awaitable[int]] | None = None,
                 origin_state_id: int = 1):
        self.host, self.port = host, port
        self.local = base.LocalIdentity(origin_host, origin_realm, ("127.0.0.1",),
                                        product_name="ocs-test-client", vendor_id=10415,
                                        auth_applications=(T.APP_DIAMETER_CREDIT_CONTROL,),
                                        origin_state_id=origin_state_id)
        self.destination_realm = destination_realm
        self.ssl = ssl
        self.answer_watchdog = answer_watchdog
        self.on_request = on_request
        self.server_requests: list[Message] = []
        self.unmatched: list[Message] = []
        self.closed = asyncio.Event()
        self._pending: dict[int, asyncio.Future] = {}
        self._hbh = itertools.count(random.getrandbits(31))
        self._e2e = itertools.count(random.getrandbits(31))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._framer = Framer(1 << 24)

    def ids(self) -> tuple[int, int]:
        return next(self._hbh) & 0xFFFFFFFF, next(self._e2e) & 0xFFFFFFFF

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port,
                                                                   ssl=self.ssl)
        self._task = asyncio.create_task(self._read_loop())

    async def connect(self, cer: Message | None = None, timeout: float = 5.0) -> Message:
        """Open the connection and exchange capabilities; returns the CEA."""
        await self.open()
        hbh, e2e = self.ids()
        return await self.request(cer or base.cer(self.local, hbh, e2e), timeout)

    def write(self, raw: bytes) -> None:
        self._writer.write(raw)

    async def request(self, msg: Message, timeout: float = 5.0) -> Message:
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg.hop_by_hop] = fut
        self._writer.write(encode(msg))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg.hop_by_hop, None)

    async def request_raw(self, raw: bytes, hop_by_hop: int, timeout: float = 5.0) -> Message:
        fut = asyncio.get_running_loop().create_future()
        self._pending[hop_by_hop] = fut
        self._writer.write(raw)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(hop_by_hop, None)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for raw in self._framer.feed(data):
                    await self._on_message(decode(raw, strict=False))
        except (ConnectionError, asyncio.IncompleteReadError, _ssl.SSLError):
            pass
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))

    async def _on_message(self, msg: Message) -> None:
        if not msg.request:
            fut = self._pending.pop(msg.hop_by_hop, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                self.unmatched.append(msg)
            return
        self.server_requests.append(msg)
        if msg.code == T.CMD_DEVICE_WATCHDOG:
            if self.answer_watchdog:
                self._writer.write(encode(base.dwa(msg, self.local)))
        elif msg.code == T.CMD_DISCONNECT_PEER:
            self._writer.write(encode(base.dpa(msg, self.local)))
        elif msg.code in (T.CMD_RE_AUTH, T.CMD_ABORT_SESSION):
            code = await self.on_request(msg) if self.on_request else T.DIAMETER_SUCCESS
            if code is not None:
                self._writer.write(encode(base.answer(msg, self.local, code)))

    async def close(self, dpr: bool = True, timeout: float = 2.0) -> Message | None:
        answer = None
        if self._writer is None:
            return None
        if dpr and not self.closed.is_set():
            hbh, e2e = self.ids()
            try:
                answer = await self.request(base.dpr(self.local, hbh, e2e, 0), timeout)
            except (asyncio.TimeoutError, ConnectionError):
                answer = None
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (asyncio.TimeoutError, ConnectionError, _ssl.SSLError):
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return answer

    # ------------------------------------------------------------ messages
    def ccr(self, session_id: str, request_type: int, number: int, *,
            context: str = CONTEXT_DATA, msisdn: str | None = None, imsi: str | None = None,
            sip_uri: str | None = None, user_name: str | None = None,
            msccs: list[Avp] | None = None, requested_action: int | None = None,
            requested: dict | None = None, used: dict | None = None,
            extra: list[Avp] | None = None, retransmit: bool = False,
            ids: tuple[int, int] | None = None) -> Message:
        """A CCR as a PGW or IMS server sends it."""
        hbh, e2e = ids or self.ids()
        body = [avp(T.SESSION_ID, session_id), *base.origin(self.local),
                avp(T.DESTINATION_REALM, self.destination_realm),
                avp(T.AUTH_APPLICATION_ID, T.APP_DIAMETER_CREDIT_CONTROL),
                avp(T.SERVICE_CONTEXT_ID, context), avp(T.CC_REQUEST_TYPE, request_type),
                avp(T.CC_REQUEST_NUMBER, number)]
        if user_name is not None:
            body.append(avp(T.USER_NAME, user_name))
        if requested_action is not None:
            body.append(avp(T.REQUESTED_ACTION, requested_action))
        body += subscription(msisdn=msisdn, imsi=imsi, sip_uri=sip_uri)
        if requested is not None:
            body.append(avp(T.REQUESTED_SERVICE_UNIT, units(requested)))
        if used is not None:
            body.append(avp(T.USED_SERVICE_UNIT, units(used)))
        if msccs:
            body.append(avp(T.MULTIPLE_SERVICES_INDICATOR, 1))
            body += msccs
        body += extra or []
        flags = FLAG_REQUEST | FLAG_PROXIABLE | (FLAG_RETRANSMIT if retransmit else 0)
        return Message(T.CMD_CREDIT_CONTROL, flags, T.APP_DIAMETER_CREDIT_CONTROL, hbh, e2e,
                       tuple(body))
