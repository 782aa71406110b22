"""The peer state machine without sockets or clocks: states, refusals, watchdog timing."""

from __future__ import annotations

import itertools
import random

from diameter import base
from diameter import tables as T
from diameter.codec import Message, avp, value
from diameter.peer import Close, Deliver, Note, PeerMachine, Send, State, Watchdog, jittered

LOCAL = base.LocalIdentity("ocs.test.example", "test.example", origin_state_id=5)
PEER = base.LocalIdentity("pgw1.pgw.example", "pgw.example")
_ids = itertools.count(1)


def machine(tw=30.0, allow=True, now=0.0) -> PeerMachine:
    return PeerMachine(LOCAL, address="192.0.2.7", now=now, tw=tw, cer_timeout=10,
                       dpa_timeout=2, end_to_end=lambda: next(_ids), rng=random.Random(1),
                       admission=lambda info, addr: None if allow else f"{info.origin_host} no")


def cer(identity=PEER) -> Message:
    return base.cer(identity, next(_ids), next(_ids))


def kinds(actions) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, Send):
            out.append(f"send {T.COMMANDS[a.message.code][0 if a.message.request else 1]} "
                       f"{value(a.message.avps, T.RESULT_CODE) or ''}".strip())
        else:
            out.append(type(a).__name__.lower() + (f" {a.kind}" if isinstance(a, Note) else ""))
    return out


def test_capabilities_exchange_opens_the_connection():
    m = machine()
    actions = m.receive(cer(), 0.0)
    assert kinds(actions) == ["note open", "send CEA 2001"]
    assert m.state is State.OPEN and m.peer.origin_host == "pgw1.pgw.example"
    assert m.available


def test_refusals_answer_and_close():
    m = machine(allow=False)
    assert kinds(m.receive(cer(), 0.0)) == ["note rejected", "send CEA 3010", "close"]
    assert m.state is State.CLOSED
    m = machine()
    hss = base.LocalIdentity("hss.example", "example", auth_applications=(16777251,))
    assert kinds(m.receive(cer(hss), 0.0)) == ["note rejected", "send CEA 5010", "close"]
    m = machine()
    tls_only = cer().with_avps(cer().avps + (avp(T.INBAND_SECURITY_ID, 1),))
    assert kinds(m.receive(tls_only, 0.0))[1] == "send CEA 5017"
    m = machine()
    assert kinds(m.receive(base.dwr(PEER, 1, 1), 0.0)) == ["close"]  # nothing before CER


def test_no_cer_in_time_closes():
    m = machine()
    assert m.tick(9.9) == []
    assert kinds(m.tick(10.0)) == ["close"] and m.state is State.CLOSED


def test_watchdog_rfc3539_okay_suspect_down():
    m = machine(tw=30.0)
    m.receive(cer(), 0.0)
    first = m.deadline
    assert 28.0 <= first <= 32.0  # Tw with its +/-2 s jitter
    (send,) = m.tick(first)
    assert isinstance(send, Send) and send.message.code == T.CMD_DEVICE_WATCHDOG
    (note,) = m.tick(m.deadline)  # no DWA within Tw: suspect (failover)
    assert note.kind == "suspect" and m.watchdog is Watchdog.SUSPECT and not m.available
    # Any message from the peer brings it back.
    actions = m.receive(base.dwa(send.message, PEER), m.deadline - 1)
    assert kinds(actions) == ["note okay"] and m.available
    (send,) = m.tick(m.deadline)
    m.tick(m.deadline)
    (close,) = m.tick(m.deadline)  # suspect and silent for another Tw: down
    assert isinstance(close, Close) and m.watchdog is Watchdog.DOWN


def test_traffic_resets_the_watchdog_and_dwr_is_answered():
    m = machine(tw=6.0)
    m.receive(cer(), 0.0)
    ccr = Message(T.CMD_CREDIT_CONTROL, 0xC0, 4, 9, 9, (avp(T.SESSION_ID, "s"),))
    for t in (5.0, 10.0, 15.0):
        assert [type(a) for a in m.receive(ccr, t)] == [Deliver]
        assert m.deadline > t + 5
    assert kinds(m.receive(base.dwr(PEER, 3, 3), 16.0)) == ["send DWA 2001"]


def test_disconnect_both_ways():
    m = machine()
    m.receive(cer(), 0.0)
    (dpr,) = m.disconnect(1.0)
    assert dpr.message.code == T.CMD_DISCONNECT_PEER and m.state is State.CLOSING
    assert value(dpr.message.avps, T.DISCONNECT_CAUSE) == 0
    # Requests still arriving while closing are delivered (answered).
    ccr = Message(T.CMD_CREDIT_CONTROL, 0xC0, 4, 9, 9, (avp(T.SESSION_ID, "s"),))
    assert [type(a) for a in m.receive(ccr, 1.1)] == [Deliver]
    assert kinds(m.receive(base.dpa(dpr.message, PEER), 1.2)) == ["close"]
    m = machine()
    m.receive(cer(), 0.0)
    m.disconnect(1.0)
    assert kinds(m.tick(3.0)) == ["close"]  # no DPA in time
    m = machine()
    m.receive(cer(), 0.0)
    assert kinds(m.receive(base.dpr(PEER, 5, 5, 1), 2.0)) == ["note dpr", "send DPA 2001",
                                                             "close"]
    m = machine()
    m.receive(cer(), 0.0)
    assert m.receive(base.dpa(base.dpr(PEER, 6, 6), PEER), 2.0) == []  # unsolicited DPA


def test_jitter_is_bounded_and_scaled_for_short_intervals():
    rng = random.Random(7)
    long = [jittered(30, rng) for _ in range(1000)]
    short = [jittered(1, rng) for _ in range(1000)]
    assert 28 <= min(long) and max(long) <= 32 and max(long) - min(long) > 3
    assert 0.9 <= min(short) and max(short) <= 1.1
