"""The asyncio transport: one `Connection` per TCP (or TLS) connection.

A thin layer around the sans-I/O parts: bytes go through the `Framer`, the
codec and the `PeerMachine`; the machine's actions are carried out here
(write, close, deliver, log). What to do with an application request is the
`Handler`'s business (`diameter.server`), so this module knows nothing about
charging.

Failure handling, per RFC 6733:

* framing lost (`FramingError`) -> the connection is closed at once (what is
  buffered for sending still goes out), the daemon carries on;
* a bad AVP in a request (`AvpError`) -> the request is answered with the
  codec's Result-Code and Failed-AVP; in an answer -> logged and dropped;
* requests we send (DWR, DPR, RAR, ASR) are matched to their answers by
  Hop-by-Hop Identifier; `request()` waits up to a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from .codec import AvpError, DecodeError, FramingError, Message, decode, describe, encode
from .dictionary import DEFAULT
from .framing import Framer
from .peer import Close, Deliver, Note, PeerMachine, Send, State

log = logging.getLogger("ocs.diameter")


class Handler(Protocol):
    """What a connection needs from the server it belongs to."""

    def new_machine(self, conn: "Connection", address: str) -> PeerMachine: ...

    def on_request(self, conn: "Connection", msg: Message) -> None: ...

    def on_bad_request(self, conn: "Connection", exc: AvpError) -> None: ...

    def on_open(self, conn: "Connection") -> None: ...

    def on_closed(self, conn: "Connection", reason: str) -> None: ...

    def on_problem(self, conn: "Connection", reason: str, detail: str) -> None: ...

    def on_message(self, conn: "Connection", msg: Message, sent: bool) -> None: ...


class PeerGone(ConnectionError):
    """The connection closed before the answer came."""


class Connection(asyncio.Protocol):
    """One peer connection: framing, decoding, peer state, pending requests."""

    def __init__(self, handler: Handler, *, max_message: int, tls: bool = False):
        self.handler = handler
        self.framer = Framer(max_message)
        self.max_message = max_message
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.machine: PeerMachine | None = None
        self.address = "?"
        self.local_address = "127.0.0.1"
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._pending: dict[int, asyncio.Future] = {}
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
        self.loop = asyncio.get_running_loop()
        self._opened = False
        self.connected_at: float | None = None  # wall clock (time.time) of the TCP connect

    # ------------------------------------------------------------ identity
    @property
    def peer_host(self) -> str:
        """The peer's Origin-Host once it sent CER, else '-' (a bounded metric label)."""
        m = self.machine
        return m.peer.origin_host if m is not None and m.peer is not None else "-"

    @property
    def is_open(self) -> bool:
        return self.machine is not None and self.machine.state is State.OPEN

    def __repr__(self) -> str:
        return f"<Connection {self.peer_host} {self.address}>"

    # ------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connected_at = time.time()
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.address = peer[0] if peer else "?"
        if sock:
            self.local_address = sock[0]
        self.machine = self.handler.new_machine(self, self.address)
        self._arm()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            self._problem("framing", f"from {self.address}: {exc.reason}; closing")
            self.close(f"framing error: {exc.reason}")
            return
        for raw in frames:
            if self.transport is None or self.transport.is_closing():
                return
            self._frame(raw)

    def eof_received(self):
        return False  # close our side too

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading its requests until it
        # does, so its backlog cannot grow our buffers without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "peer closed")
        self.close_reason = reason
        if self.machine is not None:
            self.machine.state = State.CLOSED
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerGone(reason))
        self._pending.clear()
        self.transport = None
        self.closed.set()
        self.handler.on_closed(self, reason)

    # ------------------------------------------------------------ incoming
    def _frame(self, raw: bytes) -> None:
        try:
            msg = decode(raw, max_length=self.max_message)
        except AvpError as exc:
            self._bad_avp(exc)
            return
        except FramingError as exc:  # cannot happen after the framer; kept for safety
            self._problem("framing", exc.reason)
            self.close(f"framing error: {exc.reason}")
            return
        except DecodeError as exc:
            self._problem("decode", exc.reason)
            return
        self.handler.on_message(self, msg, False)
        self.perform(self.machine.receive(msg, self.loop.time()))

    def _bad_avp(self, exc: AvpError) -> None:
        head = exc.header
        what = DEFAULT.command_name(head.code, head.request)
        if not head.request:
            self._problem("bad-answer", f"{what} from {self.peer_host}: {exc.reason}; dropped")
            return
        if self.machine is None or self.machine.state is State.WAIT_CER:
            self._problem("bad-request", f"{what} before CER from {self.address}: "
                                         f"{exc.reason}; closing")
            self.close(f"malformed {what} before the capabilities exchange")
            return
        self._problem("bad-request", f"{what} from {self.peer_host}: {exc.reason} "
                                     f"-> {exc.result_code}")
        self.handler.on_message(self, head.with_avps(exc.avps), False)
        self.handler.on_bad_request(self, exc)

    def perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.send(action.message)
            elif isinstance(action, Deliver):
                msg = action.message
                if msg.request:
                    self.handler.on_request(self, msg)
                else:
                    fut = self._pending.pop(msg.hop_by_hop, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    elif fut is None:
                        self._problem("unexpected-answer",
                                      f"{describe(msg)} from {self.peer_host} matches no "
                                      "request; dropped")
            elif isinstance(action, Close):
                if not action.clean:
                    self._problem("closed", f"{self.peer_host} {self.address}: {action.reason}")
                self.close(action.reason)
            elif isinstance(action, Note):
                self._note(action)
        self._arm()

    def _note(self, note: Note) -> None:
        if note.kind == "open":
            self._opened = True
            log.info("peer open: %s%s", note.text, " (TLS)" if self.tls else "",
                     extra={"peer": self.peer_host})
            self.handler.on_open(self)
        elif note.kind == "rejected":
            log.warning("peer refused from %s: %s (%s)", self.address, note.text,
                        note.result_code, extra={"peer": self.peer_host})
            self.handler.on_problem(self, "peer-refused", note.text)
        elif note.kind == "suspect":
            log.warning("peer %s suspect: %s", self.peer_host, note.text,
                        extra={"peer": self.peer_host})
            self.handler.on_problem(self, "watchdog", note.text)
        else:
            log.info("peer %s: %s", self.peer_host, note.text, extra={"peer": self.peer_host})

    def _problem(self, reason: str, detail: str) -> None:
        log.warning("%s", detail, extra={"peer": self.peer_host, "reason": reason})
        self.handler.on_problem(self, reason, detail)

    # ------------------------------------------------------------ timers
    def _arm(self) -> None:
        """Keep one timer at the machine's deadline. A deadline that moved later
        is found when the timer fires (cheaper than re-arming per message)."""
        m = self.machine
        if m is None or m.state is State.CLOSED or self.transport is None:
            return
        if self._timer is None or self._timer.when() > m.deadline + 0.001:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(m.deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.machine is None or self.transport is None:
            return
        self.perform(self.machine.tick(self.loop.time()))

    # ------------------------------------------------------------ outgoing
    def send(self, msg: Message) -> bytes | None:
        raw = encode(msg)
        self.write(raw)
        self.handler.on_message(self, msg, True)
        return raw

    def write(self, raw: bytes) -> bool:
        """Queue `raw`; everything queued in one loop iteration goes out in one send.

        A group commit resolves dozens of requests at once; coalescing their
        answers saves a system call each and costs no latency (the flush runs
        later in the same iteration of the loop)."""
        t = self.transport
        if t is None or t.is_closing():
            return False
        out = self._out
        out.append(raw)
        if len(out) == 1:
            self.loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.write(out[0] if len(out) == 1 else b"".join(out))

    async def request(self, msg: Message, timeout: float) -> Message:
        """Send a request we built (its hop-by-hop from `machine`) and await the answer."""
        fut = self.loop.create_future()
        self._pending[msg.hop_by_hop] = fut
        if self.send(msg) is None or self.transport is None:
            self._pending.pop(msg.hop_by_hop, None)
            raise PeerGone("connection closed")
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg.hop_by_hop, None)

    def disconnect(self) -> None:
        """Start our DPR (shutdown); the machine closes on DPA or its timeout."""
        if self.machine is not None and self.transport is not None:
            self.perform(self.machine.disconnect(self.loop.time()))

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        if self.machine is not None:
            self.machine.state = State.CLOSED
        self._flush()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()  # flushes what is buffered (a DPA, a CEA with the refusal)

    def abort(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()
