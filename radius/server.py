"""The asyncio UDP transport: sockets, NAS lookup, signatures, duplicates, bounds.

A thin layer around the codec and the handler. For each datagram, in order
(every drop is counted in ``ocs_radius_dropped_total{reason}`` and never
answered):

1. too many requests in flight (``[radius] max_in_flight``): ``overload``
   (silence is the overload answer: the NAS retries or fails over);
2. source address not a registered NAS: ``unknown_client``;
3. not a packet (`DecodeError`): its reason (``too_short``, ``bad_length``,
   ``attribute_length``, ...);
4. a request of the other port (Access on 1813, Accounting on 1812), or a
   reply code: ``wrong_port``;
5. signatures: an Accounting-Request whose Authenticator does not verify
   (wrong secret) ``bad_authenticator``; a Message-Authenticator present and
   wrong ``bad_message_authenticator``; an Access-Request without one from a
   NAS that must send it ``missing_message_authenticator`` (BlastRADIUS,
   CVE-2024-3596: ``yes`` always, ``auto`` once the NAS has sent one, ``no``
   never; NAS still omitting it are listed by the gauge
   ``ocs_radius_nas_without_message_authenticator{nas}``); a Status-Server
   without a valid one (RFC 5997 §3);
6. RFC 5080 §2.2.2 duplicate detection on (source address and port, code,
   Identifier, Authenticator) through the cluster's duplicate cache (Redis
   across nodes, in process otherwise): a retransmission of an answered
   request gets the same reply octets again; one that arrives while the
   original is still being processed is dropped (``in_progress``);
7. the handler's answer is sent, and cached for retransmissions; a store
   that is unavailable (``store_unavailable``) gets no answer.

What an operator must fix is also logged as a warning, at most once a minute
for each source: an unknown client's address (a NAS not registered, or not
sending from the address registered), a NAS whose signatures do not verify
(its shared secret differs; also counted by NAS in
``ocs_radius_bad_secret_total{nas}``), a NAS sending malformed packets.

RADIUS over TLS (RFC 6614, ``[radius] tls_listen``, port 2083 by convention)
carries both kinds of request on one connection, framed by the packets' own
Length field. The NAS must present a certificate that ``tls_ca`` verifies and
connect from a registered address; the shared secret is "radsec" (§2.3), and
Message-Authenticator is not required (TLS protects the exchange). A framing
error (a Length below 20 or above 4096) closes the connection (RFC 6613
§2.6.4: the stream cannot be resynchronised); every other check is as above.

Replies are sent at the end of the event loop's turn, all of that turn's
together, not one by one as each request finishes: a NAS (or a load generator
on the same host) reading them is woken once for the lot. Measured with the
load generator beside ocsd (`python -m bench.radius --mode auth`, medians of
alternating runs), this took Access-Request from about 112 to 80 µs of ocsd
CPU and the generator's own CPU from 45 to 15 µs per request; most of the
gain is the generator's wake-ups, which a NAS across a network does not cost
this host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import time
from typing import Any

from ocs.components import reloaded_tls_context, split_listen, tls_server_context, unmapped
from ocs.errors import StoreUnavailable
from ocs.logs import Throttled

from .codec import (A, Code, DecodeError, PacketTooLong, SIGNED_REQUESTS, decode,
                    message_authenticator_ok, request_authenticator_ok)
from .handler import Handler, InvalidAttribute, MissingAttribute, NasState, nas_state
from .wire import HEADER, MAX_PACKET

log = logging.getLogger("ocs.radius")

_AUTH_CODES = frozenset({Code.ACCESS_REQUEST, Code.STATUS_SERVER})
_ACCT_CODES = frozenset({Code.ACCOUNTING_REQUEST, Code.STATUS_SERVER})
_PORT_CODES = {"auth": _AUTH_CODES, "acct": _ACCT_CODES, "tls": _AUTH_CODES | _ACCT_CODES}
RADSEC_SECRET = b"radsec"  # RFC 6614 §2.3
HANDSHAKE_TIMEOUT = 10.0  # seconds a connection may take to complete its TLS handshake

# Read once: reading an enum member off its class costs about 100 ns on Python 3.11.
_ACCESS_REQUEST, _STATUS_SERVER = Code.ACCESS_REQUEST, Code.STATUS_SERVER
_EAP_MESSAGE = A.EAP_MESSAGE
_CODE_LABEL = {Code.ACCESS_REQUEST: "access-request", Code.ACCOUNTING_REQUEST:
               "accounting-request", Code.STATUS_SERVER: "status-server"}


def _subject(tls: ssl.SSLObject) -> str:
    """Who the NAS's certificate names, for the log."""
    cert = tls.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return f"certificate CN={value}"
    return "certificate without a CN"


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, server: "RadiusServer", port: str):
        self.server = server
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
        self.loop: asyncio.AbstractEventLoop | None = None
        # Replies wait here until the current turn of the event loop has run every
        # callback ready, then go out together (`flush`): the answers of one group
        # commit, or of requests read together, leave back to back.
        self._outgoing: list[tuple[bytes, Any]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def send(self, reply: bytes, addr) -> None:
        out = self._outgoing
        out.append((reply, addr))
        if len(out) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        out, self._outgoing = self._outgoing, []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for reply, addr in out:
            try:
                transport.sendto(reply, addr)
            except (OSError, ValueError) as exc:  # this NAS's address; the others still go
                log.debug("reply to %s not sent: %s", addr, exc)

    def datagram_received(self, data: bytes, addr) -> None:
        self.server.received(self, data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable from a NAS
        log.debug("socket error on the %s port: %s", self.port, exc)


class _Stream(asyncio.Protocol):
    """One RADIUS/TLS connection: TLS run here over memory buffers (so that a refused
    certificate is seen and logged), packets cut from the stream by their Length."""

    port = "tls"

    def __init__(self, server: "RadiusServer"):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.peer: tuple = ("?", 0)
        self.tls: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._open = False  # through the handshake
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.nas_name = ""  # once open: the NAS it counts for in the metrics
        self._base: NasState | None = None  # the NAS as UDP sees it, and ...
        self._twin: NasState | None = None  # ... as seen over TLS (see over_tls)

    def over_tls(self, st: NasState) -> NasState:
        """The NAS as seen over RADIUS/TLS: shared secret "radsec" (RFC 6614 §2.3),
        Message-Authenticator not required. Made again only when the NAS's state was
        (a reload)."""
        if st is not self._base:
            self._base, self._twin = st, dataclasses.replace(st, secret=RADSEC_SECRET,
                                                             require_ma="no")
        return self._twin

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.peer = transport.get_extra_info("peername") or ("?", 0)
        if not self.server.stream_allowed(self):  # before any TLS
            transport.close()
            return
        self.tls = self.server.tls_context.wrap_bio(self._in, self._out, server_side=True)
        self._timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        if self._open:
            log.info("RADIUS/TLS connection from %s closed: idle for %d s", self.peer[0],
                     self.server.cfg.tls_idle_timeout)
        else:
            self.server.handshake_failed(self, f"not done within {HANDSHAKE_TIMEOUT:g} s")
        self.transport.close()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timeout = self.server.cfg.tls_idle_timeout
        if timeout:
            self._timer = self.loop.call_later(timeout, self._timed_out)

    def _flush(self) -> None:
        data = self._out.read()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.tls is None:
            return
        self._in.write(data)
        if not self._open:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                self._flush()  # the alert, so the NAS's log says why too
                self.server.handshake_failed(self, exc.reason or str(exc))
                self.transport.close()
                return
            self._open = True
            self._flush()
            self.server.stream_opened(self)
        self._rearm()
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLError):  # close_notify, or broken
                self._flush()
                self.transport.close()
                return
            if not chunk:
                break
            self._frames(chunk)
            if self.transport.is_closing():
                return
        self._flush()

    def _frames(self, chunk: bytes) -> None:
        buf = self._buffer
        buf += chunk
        while len(buf) >= 4:
            length = (buf[2] << 8) | buf[3]
            if length < HEADER or length > MAX_PACKET:
                self.server.stream_broken(self, f"a packet Length of {length}")
                buf.clear()
                self.transport.close()
                return
            if len(buf) < length:
                return
            packet = bytes(buf[:length])
            del buf[:length]
            self.server.received(self, packet, self.peer)

    def send(self, reply: bytes, addr) -> None:
        if self._open and not self.transport.is_closing():
            self.tls.write(reply)
            self._flush()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.server.stream_closed(self, exc)


class RadiusServer:
    """Auth and accounting sockets in front of a `Handler`."""

    def __init__(self, ctx, handler: Handler):
        self.ctx = ctx
        self.handler = handler
        self.cfg = ctx.config.radius
        self.metrics = ctx.metrics
        self.in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._endpoints: list[_Endpoint] = []
        self._registry = None
        self._by_ip: dict[str, NasState | None] = {}
        self._warned: set[int] = set()
        self._ma_seen: set[int] = set()  # NAS ids that sent Message-Authenticator (auto mode)
        # Bound metric children, so the hot path skips .labels(): drops by reason,
        # requests by (NAS name, code), duplicates by NAS name, durations by op.
        self._drop: dict[str, Any] = {}
        self._requests: dict[tuple[str, int], Any] = {}
        self._duplicates: dict[str, Any] = {}
        self._duration: dict[str, Any] = {}
        self._bad_secret: dict[str, Any] = {}
        self._warnings = Throttled(log)  # keyed by (kind, source)
        self.addresses: dict[str, tuple[str, int]] = {}
        self._tls_server: asyncio.base_events.Server | None = None
        self.tls_context: ssl.SSLContext | None = None
        self._streams: set[_Stream] = set()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for port, listen in (("auth", self.cfg.auth_listen), ("acct", self.cfg.acct_listen)):
            host, _, num = listen.rpartition(":")
            host = host.strip("[]") or "0.0.0.0"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                # No SO_REUSEADDR: on a UDP socket Linux lets every socket that sets it
                # bind the same port, and a second ocsd (or any other RADIUS server
                # doing so) would silently take the NAS's packets. Sharing the port is
                # what `reuse_port` asks for, explicitly.
                if self.cfg.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                # A burst must wait in the kernel, not be lost there.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.bind((host, int(num)))
            except OSError as exc:
                sock.close()
                await self.stop()
                raise OSError(exc.errno, f"cannot listen on {listen} (radius {port}): "
                                         f"{exc.strerror}") from exc
            sock.setblocking(False)
            _, endpoint = await loop.create_datagram_endpoint(
                lambda p=port: _Endpoint(self, p), sock=sock)
            self._endpoints.append(endpoint)
            self.addresses[port] = sock.getsockname()[:2]
            log.info("radius %s listening on %s", port, listen)
        if self.cfg.tls_listen:
            await self._start_tls(loop)

    async def _start_tls(self, loop) -> None:
        listen = self.cfg.tls_listen
        try:
            context = tls_server_context(self.cfg)
        except (OSError, ssl.SSLError) as exc:
            await self.stop()
            raise OSError(getattr(exc, "errno", None),
                          f"cannot load the RADIUS TLS certificate, key or CA "
                          f"([radius] tls_certificate, tls_key, tls_ca): {exc}") from exc
        self.tls_context = context
        host, port = split_listen(listen)
        try:
            self._tls_server = await loop.create_server(
                lambda: _Stream(self), host, port, reuse_address=True,
                reuse_port=self.cfg.reuse_port or None)
        except OSError as exc:
            await self.stop()
            raise OSError(exc.errno, f"cannot listen on {listen} (radius tls): "
                                     f"{exc.strerror}") from exc
        self.addresses["tls"] = self._tls_server.sockets[0].getsockname()[:2]
        log.info("radius tls listening on %s", listen)

    def reload_certificates(self) -> None:
        """SIGHUP: the RADIUS/TLS certificate, key and CA files read again (rotated in
        place); new connections use them, open ones keep theirs. A file that cannot be
        loaded keeps the running ones."""
        if self.tls_context is not None:
            self.tls_context = reloaded_tls_context(self.cfg, self.tls_context, "RADIUS")

    async def stop(self, drain: float = 5.0) -> None:
        for endpoint in self._endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        self._endpoints = []
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=drain)
            for task in pending:
                task.cancel()
        for stream in list(self._streams):  # after the answers in flight went out
            stream.transport.close()

    # ------------------------------------------------------------ per datagram
    def _dropped(self, reason: str) -> None:
        child = self._drop.get(reason)
        if child is None:
            child = self._drop[reason] = self.metrics.radius_dropped.labels(reason=reason)
        child.inc()

    def _warn(self, what: str, who: str, message: str, *args) -> None:
        """A warning about a misconfigured or misbehaving source, at most one a
        minute for each (kind, source)."""
        self._warnings.warning((what, who), message, *args)

    def _secret_mismatch(self, st: NasState, address: str, what: str) -> None:
        child = self._bad_secret.get(st.name)
        if child is None:
            child = self._bad_secret[st.name] = self.metrics.radius_bad_secret.labels(
                nas=st.name)
        child.inc()
        self._warn("secret", st.name, "RADIUS packets from NAS %s (%s) dropped: %s does "
                   "not verify, so its shared secret differs from the one stored for it",
                   st.name, address, what)

    def nas(self, ip: str) -> NasState | None:
        registry = self.ctx.registry
        if registry is not self._registry:  # reloaded (SIGHUP, API change): rebuild the cache
            self._registry, self._by_ip, self._warned = registry, {}, set()
        try:
            return self._by_ip[ip]
        except KeyError:
            nas = registry.nas_for(ip)
            st = nas_state(nas) if nas is not None and nas.kind.value == "nas" else None
            if len(self._by_ip) >= 100_000:  # sprayed from many (spoofed) addresses
                self._by_ip = {}
            self._by_ip[ip] = st
            return st

    # ------------------------------------------------------------ RADIUS/TLS
    def stream_allowed(self, stream: _Stream) -> bool:
        address = stream.peer[0]
        if self.nas(address) is None:
            self._dropped("unknown_client")
            self._warn("unknown", address, "RADIUS/TLS connection from %s closed: no NAS is "
                       "registered for this address (ocsctl nas add NAME %s --secret ...)",
                       address, address)
            return False
        return True

    def handshake_failed(self, stream: _Stream, why: str) -> None:
        self._dropped("tls_handshake")
        self._warn("handshake", stream.peer[0], "RADIUS/TLS connection from %s closed: the "
                   "TLS handshake failed (%s); is its certificate signed by [radius] tls_ca?",
                   stream.peer[0], why)

    def stream_opened(self, stream: _Stream) -> None:
        self._streams.add(stream)
        st = self.nas(stream.peer[0])
        stream.nas_name = st.name if st is not None else stream.peer[0]
        self.metrics.radius_tls_connections.labels(nas=stream.nas_name).inc()
        log.info("RADIUS/TLS connection from %s (%s)", stream.peer[0], _subject(stream.tls))

    def stream_broken(self, stream: _Stream, what: str) -> None:
        self._dropped("bad_length")
        self._warn("malformed", stream.peer[0], "RADIUS/TLS connection from %s closed: %s "
                   "(the stream cannot be read further)", stream.peer[0], what)

    def stream_closed(self, stream: _Stream, exc: Exception | None) -> None:
        if stream in self._streams:
            self._streams.discard(stream)
            self.metrics.radius_tls_connections.labels(nas=stream.nas_name).dec()
            log.info("RADIUS/TLS connection from %s closed%s", stream.peer[0],
                     f": {exc}" if exc else "")

    # ------------------------------------------------------------ per packet
    def received(self, endpoint: _Endpoint | _Stream, data: bytes, addr: Any) -> None:
        if self.in_flight >= self.cfg.max_in_flight:
            self._dropped("overload")
            return
        st = self.nas(addr[0])
        if st is not None and endpoint.port == "tls":
            st = endpoint.over_tls(st)
        if st is None:
            self._dropped("unknown_client")
            self._warn("unknown", addr[0], "RADIUS packets from %s dropped: no NAS is "
                       "registered for this address (ocsctl nas add NAME %s --secret ...)",
                       addr[0], addr[0])
            return
        try:
            packet = decode(data)
        except DecodeError as exc:
            self._dropped(exc.reason)
            self._warn("malformed", st.name, "malformed RADIUS packet from NAS %s (%s) "
                       "dropped: %s", st.name, addr[0], exc)
            return
        code = packet.code
        if code not in _PORT_CODES[endpoint.port]:
            self._dropped("wrong_port")
            return
        if not self._signed(st, packet, addr[0]):
            return
        counter = self._requests.get((st.name, code))
        if counter is None:
            counter = self._requests[st.name, code] = self.metrics.radius_requests.labels(
                nas=st.name, code=_CODE_LABEL[code])
        counter.inc()
        self.in_flight += 1
        task = endpoint.loop.create_task(self._serve(endpoint, st, packet, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _signed(self, st: NasState, packet, address: str) -> bool:
        secret = st.secret
        if packet.code in SIGNED_REQUESTS and not request_authenticator_ok(packet, secret):
            self._dropped("bad_authenticator")
            self._secret_mismatch(st, address, "the Request Authenticator")
            return False
        if packet.has_message_authenticator:
            if not message_authenticator_ok(packet, secret):
                self._dropped("bad_message_authenticator")
                self._secret_mismatch(st, address, "the Message-Authenticator")
                return False
            if packet.code == _ACCESS_REQUEST:
                if st.nas.id not in self._ma_seen:
                    self._ma_seen.add(st.nas.id)
                    self.metrics.radius_nas_without_ma.labels(nas=st.name).set(0)
            return True
        if packet.code == _STATUS_SERVER:
            self._dropped("missing_message_authenticator")
            return False
        if packet.code == _ACCESS_REQUEST and _EAP_MESSAGE in packet:
            # RFC 3579 §3.2: EAP without Message-Authenticator is discarded, whatever
            # the NAS's mode.
            self._dropped("missing_message_authenticator")
            log.debug("EAP Access-Request without Message-Authenticator from %s dropped",
                      st.name)
            return False
        if packet.code == _ACCESS_REQUEST:
            mode = st.require_ma
            if mode == "yes" or (mode == "auto" and st.nas.id in self._ma_seen):
                self._dropped("missing_message_authenticator")
                # Warned once per NAS and reload; a flood of them must not flood the log.
                level = logging.DEBUG if st.nas.id in self._warned else logging.WARNING
                self._warned.add(st.nas.id)
                log.log(level, "Access-Request without Message-Authenticator from %s dropped "
                        "(require_message_authenticator=%s)", st.name, mode)
                return False
            self.metrics.radius_nas_without_ma.labels(nas=st.name).set(1)
        return True

    async def _serve(self, endpoint: _Endpoint, st: NasState, packet, addr) -> None:
        started = time.perf_counter()
        op = "status"
        key = None
        dedup = self.ctx.cluster.dedup if self.ctx.cluster is not None else None
        try:
            if packet.code == _STATUS_SERVER:  # RFC 5997 §3: never from the cache
                reply = self.handler.status(st, packet, endpoint.port)
            else:
                op = "access" if packet.code == _ACCESS_REQUEST else "accounting"
                if dedup is not None:
                    key = (f"radius:{addr[0]}:{addr[1]}:{packet.code}:{packet.identifier}:"
                           f"{packet.authenticator.hex()}")
                    if not await dedup.claim(key):
                        cached = await dedup.get(key)
                        key = None
                        if cached is None:
                            self._dropped("in_progress")
                            return
                        self._duplicate(st)
                        endpoint.send(cached, addr)
                        return
                if packet.code == _ACCESS_REQUEST:
                    reply = await self.handler.access(st, packet)
                else:
                    reply = await self.handler.accounting(st, packet, unmapped(addr[0]))
            if reply is None:
                raise StoreUnavailable("no answer")
            if key is not None:
                await dedup.store(key, reply)
                key = None
            endpoint.send(reply, addr)
        except StoreUnavailable as exc:
            self._dropped("store_unavailable")
            # One line a minute: an outage drops every request, and says so itself.
            self._warn("store", op, "no answer to %s from %s: store unavailable (%s)",
                       op, st.name, exc)
        except MissingAttribute as exc:
            self._dropped("missing_attribute")
            log.info("request from %s dropped: %s", st.name, exc)
        except InvalidAttribute as exc:
            self._dropped("invalid_attribute")
            log.warning("request from %s dropped: %s", st.name, exc)
        except PacketTooLong as exc:  # the request's Proxy-States leave no room for the reply
            self._dropped("reply_too_long")
            self._warn("too_long", st.name, "no answer to %s from %s: the reply does not fit in "
                       "a RADIUS packet (%s)%s", op, st.name, exc,
                       " (the usage is charged)" if op == "accounting" else "")
        except Exception:  # noqa: BLE001 - one bad request must not stop the server; logged whole
            self._dropped("internal_error")
            log.exception("processing a request from %s failed", st.name)
        finally:
            self.in_flight -= 1
            if key is not None:
                try:
                    await dedup.release(key)  # processed afresh when retransmitted
                except StoreUnavailable:
                    pass
            histogram = self._duration.get(op)
            if histogram is None:
                histogram = self._duration[op] = self.metrics.request_duration.labels(
                    proto="radius", op=op)
            histogram.observe(time.perf_counter() - started)

    def _duplicate(self, st: NasState) -> None:
        child = self._duplicates.get(st.name)
        if child is None:
            child = self._duplicates[st.name] = self.metrics.radius_duplicates.labels(nas=st.name)
        child.inc()
