"""From an Accounting-Request to a protocol-neutral `ChargeRequest` (sans-I/O).

Session key: ``radius:<NAS name>:<Acct-Session-Id>``. The NAS name is the
registered record the packet came from, so two NAS may reuse the same
Acct-Session-Id; a NAS registered by prefix (several boxes behind one
record) adds the box's own NAS-Identifier / NAS-IP-Address (or source
address) to keep them apart.

Sequence numbers (the core's exactly-once key is (session, seq)): a
retransmission must repeat its seq and a new packet must not reuse one.
RFC 2866 §5.2 lets a NAS retransmit with a larger Acct-Delay-Time (and then a
new Identifier and Authenticator, so the RFC 5080 cache cannot recognise
it), so the seq is derived from the packet's content *without*
Acct-Delay-Time (nor Message-Authenticator or Proxy-State, which hops may
change):

    seq = ((session_time << 24 | crc24(attributes)) << 2) | status

Acct-Session-Time in the high bits keeps seqs growing through a session;
the CRC separates two reports of the same second; the status (Start 0,
Interim 1, Stop 2) separates a Stop from an interim with equal counters.
Two genuinely different reports that collide (a 1 in 2**24 chance within
one second of one session) are answered from the first: harmless, because
counters are cumulative (`ChargeRequest.cumulative`) and the next report
charges everything not yet charged.

Counters: octets are Acct-Input/Output-Octets extended by the Gigawords
(RFC 2869 §5.1, 5.2); time is Acct-Session-Time. Calls from softswitches are
rated by destination: the called number comes from Called-Station-Id or the
softswitch's own attribute, the duration from Acct-Session-Time (FreeSWITCH
also sends it as Freeswitch-Billusec, Asterisk as Asterisk-Bill-Sec,
Kamailio only as the time between Start and Stop).
"""

from __future__ import annotations

import re
import socket
import zlib
from dataclasses import dataclass

from .codec import A, AcctStatus, Packet, text, vsa

FREESWITCH, DIGIUM, CISCO = 27880, 22736, 9
FS_DST, FS_SRC, FS_BILLUSEC, FS_HANGUP = vsa(FREESWITCH, 5), vsa(FREESWITCH, 4), \
    vsa(FREESWITCH, 15), vsa(FREESWITCH, 13)
AST_SRC, AST_DST, AST_BILLSEC, AST_UNIQUE = vsa(DIGIUM, 102), vsa(DIGIUM, 103), \
    vsa(DIGIUM, 114), vsa(DIGIUM, 117)
H323_CONF_ID = vsa(CISCO, 24)
SIP_CALL_DURATION = 227
SIP_SESSION = 15  # Service-Type Sip-Session (Kamailio)

#: Attributes left out of the seq's CRC: hops and retransmissions change them.
_VOLATILE = frozenset({A.ACCT_DELAY_TIME, A.MESSAGE_AUTHENTICATOR, A.PROXY_STATE})
_STATUS_BITS = {int(AcctStatus.START): 0, int(AcctStatus.INTERIM_UPDATE): 1,
                int(AcctStatus.STOP): 2}
#: The 4-octet form of each standard attribute key, as the CRC takes it.
_KEY_OCTETS = tuple(key.to_bytes(4, "big") for key in range(256))
_KEY32 = 1 << 32
_MAX_TIME = (1 << 31) - 1
_DIGITS = re.compile(r"[^0-9+*#]")


@dataclass(slots=True)
class Usage:
    """What one accounting report says about a session. (A value nobody changes;
    plain rather than frozen because one is built per request, see ocs.charging.types.)"""

    status: int
    acct_session_id: str
    session_time: int   # seconds (Acct-Session-Time), 0 when absent
    has_session_time: bool
    octets_in: int      # from the client (Gigawords applied)
    octets_out: int
    event_time: int | None  # Event-Timestamp, seconds since the epoch


def _u32(value: bytes | None) -> int | None:
    """An integer attribute's value (`Packet.get_int` without the method call)."""
    return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None


def status_of(packet: Packet) -> int | None:
    return _u32(packet.first.get(A.ACCT_STATUS_TYPE))


def usage_of(packet: Packet) -> Usage:
    get = packet.first.get
    time_raw = _u32(get(A.ACCT_SESSION_TIME))
    session_id = get(A.ACCT_SESSION_ID)
    return Usage(  # positional, in field order
        _u32(get(A.ACCT_STATUS_TYPE)) or 0,
        text(session_id) if session_id else "",
        time_raw or 0,
        time_raw is not None,
        ((_u32(get(A.ACCT_INPUT_GIGAWORDS)) or 0) << 32) + (_u32(get(A.ACCT_INPUT_OCTETS)) or 0),
        ((_u32(get(A.ACCT_OUTPUT_GIGAWORDS)) or 0) << 32) + (_u32(get(A.ACCT_OUTPUT_OCTETS)) or 0),
        _u32(get(A.EVENT_TIMESTAMP)))


def seq_of(packet: Packet, usage: Usage) -> int:
    crc = content_crc(packet.attributes, _VOLATILE)
    t = min(usage.session_time, _MAX_TIME)
    return (((t << 24) | (crc & 0xFFFFFF)) << 2) | _STATUS_BITS.get(usage.status, 3)


def content_crc(attributes, skip) -> int:
    """CRC-32 (zlib's) over the attributes whose keys are not in `skip`, each taken as
    its key in 4 big-endian octets (8 for a vendor key beyond 32 bits: Private
    Enterprise Numbers go past 65535) and its value."""
    crc = 0
    for key, value in attributes:
        if key not in skip:
            crc = zlib.crc32(value, zlib.crc32(
                _KEY_OCTETS[key] if key < 256 else key.to_bytes(4 if key < _KEY32 else 8, "big"),
                crc))
    return crc


def session_key(nas_name: str, packet: Packet, usage: Usage, *, shared: bool,
                source: str) -> str:
    """The charging session of a report: the NAS entry and the Acct-Session-Id, plus,
    for an entry that stands for several NAS (`shared`), which one sent it."""
    return session_prefix(nas_name, packet, shared=shared, source=source) \
        + usage.acct_session_id


def session_prefix(nas_name: str, packet: Packet, *, shared: bool, source: str) -> str:
    """What the session keys of the NAS that sent `packet` start with. Behind a shared
    entry that NAS is its NAS-Identifier, else its NAS-IP-Address, else the source
    address (which the server gives as its sender has it: an IPv4 sender of a
    dual-stack socket as its IPv4 address)."""
    if not shared:
        return f"radius:{nas_name}:"
    box = packet.get_str(A.NAS_IDENTIFIER) or _ip(packet.get(A.NAS_IP_ADDRESS)) or source
    return f"radius:{nas_name}/{box}:"


def _ip(raw: bytes | None) -> str | None:
    if raw is None or len(raw) != 4:
        return None
    return socket.inet_ntoa(raw)


def framed_ip(packet: Packet) -> str | None:
    return _ip(packet.get(A.FRAMED_IP_ADDRESS))


# ---------------------------------------------------------------- calls
def is_call(packet: Packet, vendor: str, voice_vendors: frozenset[str]) -> bool:
    if vendor in voice_vendors:
        return True
    if packet.get_int(A.SERVICE_TYPE) == SIP_SESSION:
        return True
    return FS_DST in packet or AST_DST in packet or H323_CONF_ID in packet


def number(text: str | None) -> str | None:
    """The dialled digits of a number or SIP URI ("sip:+4420...@host;x" -> "+4420...")."""
    if not text:
        return None
    if text.startswith(("sip:", "sips:", "tel:")):
        text = text.split(":", 1)[1]
    text = text.split("@", 1)[0].split(";", 1)[0]
    digits = _DIGITS.sub("", text)
    return digits or None


def _first_number(packet: Packet, keys: tuple[int, ...]) -> str | None:
    get = packet.first.get
    for key in keys:
        value = get(key)
        if value:
            found = number(text(value))
            if found:
                return found
    return None


_CALLED_KEYS = (A.CALLED_STATION_ID, FS_DST, AST_DST)
_CALLING_KEYS = (A.CALLING_STATION_ID, FS_SRC, AST_SRC)


def called_number(packet: Packet) -> str | None:
    return _first_number(packet, _CALLED_KEYS)


def calling_number(packet: Packet) -> str | None:
    return _first_number(packet, _CALLING_KEYS)


def call_seconds(packet: Packet, usage: Usage) -> int | None:
    """Billable seconds of a call report, or None when the packet does not say."""
    if usage.has_session_time:
        return usage.session_time
    us = packet.get_int(FS_BILLUSEC)
    if us is not None:
        return -(-us // 1_000_000)
    for key in (AST_BILLSEC, SIP_CALL_DURATION):
        value = packet.get_int(key)
        if value is not None:
            return value
    return None


#: Attributes kept on a call's session record and CDR: the softswitch's call identifiers.
CALL_ID_KEYS = (A.ACCT_SESSION_ID, A.ACCT_MULTI_SESSION_ID, A.CALLED_STATION_ID,
                A.CALLING_STATION_ID, FS_SRC, FS_DST, FS_HANGUP, vsa(FREESWITCH, 2),
                vsa(FREESWITCH, 12), vsa(FREESWITCH, 20), vsa(FREESWITCH, 21),
                vsa(FREESWITCH, 23), AST_SRC, AST_DST, AST_UNIQUE, vsa(DIGIUM, 105),
                vsa(DIGIUM, 106), vsa(DIGIUM, 115), vsa(DIGIUM, 110), vsa(DIGIUM, 112),
                H323_CONF_ID,
                vsa(CISCO, 23), vsa(CISCO, 30), A.ACCT_TERMINATE_CAUSE)
#: ... and on a data session's.
DATA_KEYS = (A.CALLING_STATION_ID, A.CALLED_STATION_ID, A.NAS_PORT_ID, A.NAS_PORT_TYPE,
             A.ACCT_MULTI_SESSION_ID, A.ACCT_TERMINATE_CAUSE, A.FRAMED_IPV6_PREFIX,
             A.DELEGATED_IPV6_PREFIX)
