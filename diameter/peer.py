"""The peer state machine of one connection (RFC 6733 section 5.6, responder side)
with the transport failure detection of RFC 3539 section 3.4.

Sans-I/O: the transport hands it decoded messages and clock ticks; it
returns actions (`Send`, `Deliver`, `Close`, `Note`) and never touches a
socket, a clock or a logger itself.

States. Clients connect to us, so a connection starts in WAIT_CER (RFC
6733's Wait-CER for a responder): only a CER is acceptable, within
`cer_timeout`. The CER is checked in order: required AVPs (5005), allowed
peer (3010 DIAMETER_UNKNOWN_PEER, E bit), in-band security (5017: TLS is
offered on its own port from the first byte, RFC 6733 section 2.1), a common
application (5010 DIAMETER_NO_COMMON_APPLICATION; a relay supports all).
Any failure answers and closes. Success answers CEA 2001 and the connection
is OPEN: application requests and answers are delivered, DWR is answered,
DPR is answered with DPA and the connection closes. `disconnect()` sends our
DPR (state CLOSING) and closes on the DPA or after `dpa_timeout`.

Watchdog (RFC 3539 section 3.4.1). Every message received resets the timer
Tw; when it fires with no DWR outstanding we send one; when it fires again
with the DWR unanswered the peer is SUSPECT (we stop choosing it for
server-initiated requests: that is the failover a server can do); a third
expiry without any message closes the connection (DOWN). A dead peer is
thus detected within 2 Tw and disconnected within 3 Tw. Tw is the
configured interval with a jitter of up to +/-2 s (RFC 3539 asks for it so
peers do not synchronise), scaled down to +/-10 % for intervals under 20 s
so a short test interval keeps its meaning.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Callable

from . import base
from . import tables as T
from .codec import Message, value, values
from .dictionary import DEFAULT, Dictionary


class State(enum.Enum):
    WAIT_CER = "wait-cer"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Watchdog(enum.Enum):
    OKAY = "okay"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Send:
    message: Message


@dataclass(frozen=True, slots=True)
class Deliver:
    """An application request, or an answer to one of our requests."""

    message: Message


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    clean: bool = True  # False: a failure worth a warning


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth logging or counting: `kind` is a short word."""

    kind: str  # "open" | "rejected" | "suspect" | "okay" | "dpr"
    text: str
    result_code: int | None = None


#: Checks a peer against the allowed list: None when allowed, else why not.
Admission = Callable[[base.PeerInfo, str], "str | None"]


def jittered(tw: float, rng: random.Random) -> float:
    spread = 2.0 if tw >= 20 else tw * 0.1
    return tw + rng.uniform(-spread, spread)


class PeerMachine:
    """State of one connection. Call `receive`, `tick`, `disconnect`; perform the actions."""

    def __init__(self, local: base.LocalIdentity, *, address: str, admission: Admission,
                 now: float, tw: float = 30.0, cer_timeout: float = 10.0,
                 dpa_timeout: float = 2.0, end_to_end: Callable[[], int],
                 rng: random.Random | None = None, dictionary: Dictionary = DEFAULT):
        self.local = local
        self.address = address
        self.admission = admission
        self.tw = tw
        self.dpa_timeout = dpa_timeout
        self.dictionary = dictionary
        self.state = State.WAIT_CER
        self.watchdog = Watchdog.OKAY
        self.peer: base.PeerInfo | None = None
        self._rng = rng or random.Random()
        self._next_e2e = end_to_end
        self._hbh = self._rng.getrandbits(32)
        self._pending_dwr: int | None = None
        self.deadline = now + cer_timeout
        self.dwr_sent = 0
        self.dwa_received = 0

    # ------------------------------------------------------------ identifiers
    def next_hop_by_hop(self) -> int:
        self._hbh = (self._hbh + 1) & 0xFFFFFFFF
        return self._hbh

    def next_end_to_end(self) -> int:
        return self._next_e2e()

    @property
    def available(self) -> bool:
        """Open and not suspect: fit for a server-initiated request."""
        return self.state is State.OPEN and self.watchdog is Watchdog.OKAY

    def _set_watchdog(self, now: float) -> None:
        self.deadline = now + jittered(self.tw, self._rng)

    # ------------------------------------------------------------ events
    def receive(self, msg: Message, now: float) -> list:
        if self.state is State.WAIT_CER:
            if msg.code == T.CMD_CAPABILITIES_EXCHANGE and msg.request:
                return self._on_cer(msg, now)
            self.state = State.CLOSED
            what = self.dictionary.command_name(msg.code, msg.request)
            return [Close(f"{what} before the capabilities exchange", clean=False)]
        if self.state is State.CLOSED:
            return []
        actions: list = []
        # RFC 3539: any message from the peer proves it alive.
        if self.watchdog is Watchdog.SUSPECT:
            self.watchdog = Watchdog.OKAY
            actions.append(Note("okay", "peer answers again"))
        if self.state is not State.CLOSING:
            self._set_watchdog(now)
        code = msg.code
        if code == T.CMD_DEVICE_WATCHDOG:
            if msg.request:
                actions.append(Send(base.dwa(msg, self.local)))
            elif msg.hop_by_hop == self._pending_dwr:
                self._pending_dwr = None
                self.dwa_received += 1
            return actions
        if code == T.CMD_DISCONNECT_PEER:
            if msg.request:
                self.state = State.CLOSED
                cause = value(msg.avps, T.DISCONNECT_CAUSE)
                label = self.dictionary.enum_label(T.DISCONNECT_CAUSE, cause) if isinstance(
                    cause, int) else None
                actions += [Note("dpr", f"peer disconnects ({label or cause})"),
                            Send(base.dpa(msg, self.local)),
                            Close("peer sent DPR")]
            elif self.state is State.CLOSING:  # the answer to our DPR
                self.state = State.CLOSED
                actions.append(Close("DPA received"))
            return actions
        if code == T.CMD_CAPABILITIES_EXCHANGE:
            if msg.request:  # R-Open: R-Rcv-CER -> R-Snd-CEA (RFC 6733 5.6)
                actions += self._on_cer(msg, now)
            return actions
        actions.append(Deliver(msg))
        return actions

    def tick(self, now: float) -> list:
        """Timers: call at `deadline` (calling early does nothing)."""
        if now < self.deadline or self.state is State.CLOSED:
            return []
        if self.state is State.WAIT_CER:
            self.state = State.CLOSED
            return [Close("no CER within the capabilities-exchange timeout", clean=False)]
        if self.state is State.CLOSING:
            self.state = State.CLOSED
            return [Close("no DPA within the disconnect timeout", clean=False)]
        if self.watchdog is Watchdog.SUSPECT:
            self.watchdog = Watchdog.DOWN
            self.state = State.CLOSED
            return [Close(f"watchdog: peer silent for {3 * self.tw:g}s, disconnecting",
                          clean=False)]
        if self._pending_dwr is not None:
            self.watchdog = Watchdog.SUSPECT
            self._set_watchdog(now)
            return [Note("suspect", f"watchdog: no DWA within {self.tw:g}s")]
        hbh = self.next_hop_by_hop()
        self._pending_dwr = hbh
        self.dwr_sent += 1
        self._set_watchdog(now)
        return [Send(base.dwr(self.local, hbh, self.next_end_to_end()))]

    def disconnect(self, now: float, cause: int = 0) -> list:
        """Start an orderly disconnect (our DPR)."""
        if self.state is State.WAIT_CER:
            self.state = State.CLOSED
            return [Close("shutting down before the capabilities exchange")]
        if self.state is not State.OPEN:
            return []
        self.state = State.CLOSING
        self.deadline = now + self.dpa_timeout
        return [Send(base.dpr(self.local, self.next_hop_by_hop(), self.next_end_to_end(),
                              cause))]

    # ------------------------------------------------------------ capabilities exchange
    def _on_cer(self, msg: Message, now: float) -> list:
        first_time = self.state is State.WAIT_CER
        lacking = base.missing(msg, self.dictionary)
        if lacking is not None:
            name = self.dictionary.name(lacking)
            return self._refuse(msg, T.DIAMETER_MISSING_AVP, f"CER lacks {name}",
                                base.example_avp(lacking, self.dictionary))
        info = base.peer_info(msg)
        why = self.admission(info, self.address)
        if why is not None:
            return self._refuse(msg, T.DIAMETER_UNKNOWN_PEER, why)
        security = values(msg.avps, T.INBAND_SECURITY_ID)
        if security and 0 not in security:
            return self._refuse(msg, T.DIAMETER_NO_COMMON_SECURITY,
                                "in-band TLS is not offered; use the TLS port")
        if not base.common_applications(self.local, info):
            apps = ", ".join(str(a) for a in sorted(info.applications)) or "none"
            return self._refuse(msg, T.DIAMETER_NO_COMMON_APPLICATION,
                                f"no common application (peer offers {apps}; we serve "
                                "Diameter Credit Control, 4)")
        self.peer = info
        self.state = State.OPEN
        self.watchdog = Watchdog.OKAY
        self._set_watchdog(now)
        actions: list = [Send(base.cea(msg, self.local))]
        if first_time:
            actions.insert(0, Note("open", f"{info.origin_host} ({info.product_name or '-'}) "
                                           f"from {self.address}"))
        return actions

    def _refuse(self, msg: Message, code: int, why: str, failed: bytes | None = None) -> list:
        self.state = State.CLOSED
        return [Note("rejected", why, code),
                Send(base.cea(msg, self.local, code, error_message=why, failed_avp=failed)),
                Close(f"CER refused: {why}", clean=False)]
