"""RADIUS packets: decode, encode, authenticators and attribute hiding (sans-I/O).

Bytes in, frozen `Packet` out, and back; no sockets, no logging, no config.
Covers RFC 2865 (Access), 2866 (Accounting), 2868 (tagged tunnel attributes
and Tunnel-Password salt encryption), 2869 / 3579 (Message-Authenticator),
3162 (IPv6 attributes: plain typed values), 5176 (CoA / Disconnect) and 5997
(Status-Server). The decoder proper is `radius.wire` (pure Python) or its
compiled twin `cext.radius_codec`, picked once at import like every fast path
(`OCS_NO_EXTENSIONS=1` forces the twin); `IMPLEMENTATION` says which.

Attribute keys are integers: the attribute type (1..255) for standard
attributes, ``vendor * 65536 + type`` for vendor sub-attributes (see
`radius.wire`). Values are the raw octets; `radius.dictionary` gives them
names and types.

Which authenticator covers what (RFC 2865 §3, 2866 §3, 5176 §2.3, 3579 §3.2):

==================================  ===========================  ============================
packet                              Authenticator field          Message-Authenticator HMAC
==================================  ===========================  ============================
Access-Request, Status-Server       random                       over the packet as sent
Accounting/CoA/Disconnect-Request   MD5(packet, zero auth +      over the packet with a zero
                                    secret)                      Authenticator field
any reply                           MD5(packet with the request  over the packet with the
                                    authenticator + secret)      request's Authenticator
==================================  ===========================  ============================
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import wire
from .wire import (HEADER, KNOWN_CODES, MAX_PACKET, MESSAGE_AUTHENTICATOR, VENDOR_SHIFT,
                   VENDOR_SPECIFIC, DecodeError)

try:
    # CPython's own MD5. OpenSSL 3's, behind hashlib.md5, looks the algorithm up in
    # its provider store on every call, under locks, which costs more than hashing
    # a packet: this one saves 4.6% of a PAP request's instructions, and 1.5% of an
    # Interim-Update's (bench.request_path --instructions). Same digests.
    from _md5 import md5
except ImportError:  # an interpreter built without it
    md5 = hashlib.md5


def _select():
    from ocs.accel import _pick
    module, compiled = _pick("radius_codec", wire)
    return module.decode, ("compiled" if compiled else "pure-python")


_decode, IMPLEMENTATION = _select()


class Code(enum.IntEnum):
    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12
    STATUS_CLIENT = 13
    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


#: Requests whose Authenticator is an MD5 over the packet (not random).
SIGNED_REQUESTS = frozenset({Code.ACCOUNTING_REQUEST, Code.DISCONNECT_REQUEST, Code.COA_REQUEST})


class A:
    """Numbers of the standard attributes the server reads or writes."""

    USER_NAME = 1
    USER_PASSWORD = 2
    CHAP_PASSWORD = 3
    NAS_IP_ADDRESS = 4
    NAS_PORT = 5
    SERVICE_TYPE = 6
    FRAMED_PROTOCOL = 7
    FRAMED_IP_ADDRESS = 8
    FILTER_ID = 11
    REPLY_MESSAGE = 18
    STATE = 24
    CLASS = 25
    VENDOR_SPECIFIC = 26
    SESSION_TIMEOUT = 27
    IDLE_TIMEOUT = 28
    CALLED_STATION_ID = 30
    CALLING_STATION_ID = 31
    NAS_IDENTIFIER = 32
    PROXY_STATE = 33
    ACCT_STATUS_TYPE = 40
    ACCT_DELAY_TIME = 41
    ACCT_INPUT_OCTETS = 42
    ACCT_OUTPUT_OCTETS = 43
    ACCT_SESSION_ID = 44
    ACCT_AUTHENTIC = 45
    ACCT_SESSION_TIME = 46
    ACCT_INPUT_PACKETS = 47
    ACCT_OUTPUT_PACKETS = 48
    ACCT_TERMINATE_CAUSE = 49
    ACCT_MULTI_SESSION_ID = 50
    ACCT_INPUT_GIGAWORDS = 52
    ACCT_OUTPUT_GIGAWORDS = 53
    EVENT_TIMESTAMP = 55
    CHAP_CHALLENGE = 60
    NAS_PORT_TYPE = 61
    TUNNEL_TYPE = 64
    TUNNEL_MEDIUM_TYPE = 65
    TUNNEL_PASSWORD = 69
    ACCT_INTERIM_INTERVAL = 85
    NAS_PORT_ID = 87
    FRAMED_POOL = 88
    EAP_MESSAGE = 79
    MESSAGE_AUTHENTICATOR = 80
    ERROR_CAUSE = 101
    FRAMED_IPV6_PREFIX = 97
    DELEGATED_IPV6_PREFIX = 123


def vsa(vendor: int, vtype: int) -> int:
    """The key of a vendor sub-attribute."""
    return vendor * VENDOR_SHIFT + vtype


class AcctStatus(enum.IntEnum):
    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


# ---------------------------------------------------------------- packets
def text(value: bytes) -> str:
    """A text attribute as a string: UTF-8 (invalid octets as U+FFFD), without the
    NUL terminator some NAS add, and any other NUL as U+FFFD: a NUL is not text
    (RFC 8044 §3.4), and PostgreSQL refuses it in every string it stores."""
    if b"\x00" in value:
        return value.rstrip(b"\x00").decode("utf-8", "replace").replace("\x00", "\ufffd")
    return value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded packet. `raw` is the datagram up to its Length field; `first`
    maps each attribute key to its first value (built once, by `decode`)."""

    code: int
    identifier: int
    authenticator: bytes
    attributes: tuple[tuple[int, bytes], ...]
    raw: bytes = field(repr=False, default=b"")
    ma_offset: int = -1  # where the Message-Authenticator value starts in `raw`, or -1
    first: dict[int, bytes] = field(repr=False, compare=False, default=None)  # type: ignore

    def __post_init__(self) -> None:
        if self.first is None:
            object.__setattr__(self, "first", first_values(self.attributes))

    def get(self, key: int, default: bytes | None = None) -> bytes | None:
        """The first value of attribute `key`."""
        return self.first.get(key, default)

    def get_all(self, key: int) -> list[bytes]:
        return [v for k, v in self.attributes if k == key]

    def __contains__(self, key: int) -> bool:
        return key in self.first

    def get_int(self, key: int, default: int | None = None) -> int | None:
        value = self.first.get(key)
        if value is None or len(value) != 4:
            return default
        return int.from_bytes(value, "big")

    def get_str(self, key: int, default: str | None = None) -> str | None:
        value = self.first.get(key)
        if value is None:
            return default
        return text(value)

    @property
    def has_message_authenticator(self) -> bool:
        return self.ma_offset >= 0


def first_values(attributes: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    """{key: first value}: walking backwards, the first occurrence is written last."""
    return dict(reversed(list(attributes)))


def decode(data: bytes) -> Packet:
    """The packet in `data`. Raises `DecodeError` (and nothing else) for any bad input."""
    data = bytes(data)
    code, ident, auth, attrs, length, ma = _decode(data)
    attrs = tuple(attrs)
    return Packet(code, ident, auth, attrs, data[:length], ma, dict(reversed(attrs)))


# ---------------------------------------------------------------- attributes
def encode_attributes(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    """Wire form of (key, value) pairs; vendor keys become one VSA each."""
    out = bytearray()
    for key, value in attributes:
        if key < 256:
            if len(value) > 253:
                raise ValueError(f"attribute {key}: {len(value)} octets exceed 253")
            out += bytes((key, len(value) + 2)) + value
        else:
            vendor, vtype = divmod(key, VENDOR_SHIFT)
            if len(value) > 247 or vtype > 255:
                raise ValueError(f"vendor attribute {vendor}/{vtype} does not fit one VSA")
            out += bytes((VENDOR_SPECIFIC, len(value) + 8)) + vendor.to_bytes(4, "big") \
                + bytes((vtype, len(value) + 2)) + value
    return bytes(out)


def u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "big")


def tagged(tag: int, value: bytes) -> bytes:
    """RFC 2868 §3: an integer's tag replaces its first octet; a string's is prefixed."""
    if not 0 <= tag <= 0x1F:
        raise ValueError("a tag is 0..31")
    if len(value) == 4:
        return bytes((tag,)) + value[1:]
    return bytes((tag,)) + value


def untag_int(value: bytes) -> tuple[int, int]:
    """(tag, 24-bit integer) of a tagged integer attribute."""
    return value[0], int.from_bytes(value[1:4], "big")


# ---------------------------------------------------------------- hiding (RFC 2865 §5.2)
def _xor16(a: bytes, b: bytes) -> bytes:
    """Two 16-octet blocks XORed (as integers: a loop over octets is ten times slower)."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(16, "big")


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password as sent: padded to 16n octets, XOR-chained MD5 with the secret."""
    if len(password) > 128:
        raise ValueError("User-Password is at most 128 octets")
    padded = password + b"\x00" * (-len(password) % 16 or (16 if not password else 0))
    out = bytearray()
    last = authenticator
    for i in range(0, len(padded), 16):
        block = _xor16(padded[i:i + 16], md5(secret + last).digest())
        out += block
        last = block
    return bytes(out)


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes | None:
    """The password of a User-Password attribute; None when its length is not 16..128, 16n."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        return None
    out = bytearray()
    last = authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i:i + 16]
        out += _xor16(block, md5(secret + last).digest())
        last = block
    return bytes(out).rstrip(b"\x00")


# ---------------------------------------------------------------- salt (RFC 2868 §3.5, RFC 2548 §2.4.2)
def salt_encrypt(plain: bytes, secret: bytes, request_authenticator: bytes, *,
                 salt: bytes | None = None, tag: int | None = None) -> bytes:
    """Tunnel-Password / MS-MPPE-*-Key: [tag] salt(2, high bit set) + E(len + data + pad)."""
    salt = salt or os.urandom(2)
    salt = bytes((salt[0] | 0x80, salt[1]))
    data = bytes((len(plain),)) + plain
    data += b"\x00" * (-len(data) % 16)
    out = bytearray()
    last = request_authenticator + salt
    for i in range(0, len(data), 16):
        block = _xor16(data[i:i + 16], md5(secret + last).digest())
        out += block
        last = block
    prefix = bytes((tag,)) if tag is not None else b""
    return prefix + salt + bytes(out)


def salt_decrypt(value: bytes, secret: bytes, request_authenticator: bytes, *,
                 tagged_: bool = False) -> bytes | None:
    """Inverse of `salt_encrypt`; None when the value is malformed."""
    if tagged_:
        value = value[1:]
    if len(value) < 18 or (len(value) - 2) % 16 or not value[0] & 0x80:
        return None
    salt, body = value[:2], value[2:]
    out = bytearray()
    last = request_authenticator + salt
    for i in range(0, len(body), 16):
        block = body[i:i + 16]
        out += _xor16(block, md5(secret + last).digest())
        last = block
    n = out[0]
    if n > len(out) - 1:
        return None
    return bytes(out[1:1 + n])


# ---------------------------------------------------------------- authenticators
_ZERO16 = b"\x00" * 16
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
#: secret -> MD5 states after the inner and outer HMAC pads (RFC 2104): a
#: Message-Authenticator then costs two copies and two short hashes instead of
#: a new HMAC object. Bounded: secrets are per NAS, and few.
_HMAC_PADS: dict[bytes, tuple[Any, Any]] = {}
_HMAC_PADS_MAX = 1024


def hmac_md5(secret: bytes, message: bytes | bytearray) -> bytes:
    """HMAC-MD5 (RFC 2104) of `message` under `secret`: `hmac.new(secret, message,
    hashlib.md5).digest()`, with the per-secret pads computed once."""
    pads = _HMAC_PADS.get(secret)
    if pads is None:
        if len(_HMAC_PADS) >= _HMAC_PADS_MAX:
            _HMAC_PADS.clear()
        key = (md5(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\x00")
        pads = _HMAC_PADS[secret] = (md5(key.translate(_IPAD)),
                                     md5(key.translate(_OPAD)))
    inner = pads[0].copy()
    inner.update(message)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def request_authenticator_ok(packet: Packet, secret: bytes) -> bool:
    """Accounting/CoA/Disconnect-Request: Authenticator == MD5(packet with zero auth + secret)."""
    raw = packet.raw
    want = md5(raw[:4] + _ZERO16 + raw[HEADER:] + secret).digest()
    return hmac.compare_digest(want, raw[4:20])


def message_authenticator_ok(packet: Packet, secret: bytes,
                             request_authenticator: bytes | None = None) -> bool:
    """Verify the Message-Authenticator (RFC 3579 §3.2, RFC 5176 §3.5).

    For a reply, pass the Authenticator of the request it answers.
    """
    off = packet.ma_offset
    if off < 0:
        return False
    raw = packet.raw
    if request_authenticator is not None:
        auth = request_authenticator
    elif packet.code in SIGNED_REQUESTS:
        auth = _ZERO16
    else:
        auth = raw[4:20]
    buf = raw[:4] + auth + raw[HEADER:off] + _ZERO16 + raw[off + 16:]
    want = hmac_md5(secret, buf)
    return hmac.compare_digest(want, raw[off:off + 16])


def reply_authenticator_ok(packet: Packet, secret: bytes, request_authenticator: bytes) -> bool:
    raw = packet.raw
    want = md5(raw[:4] + request_authenticator + raw[HEADER:] + secret).digest()
    return hmac.compare_digest(want, raw[4:20])


class PacketTooLong(ValueError):
    """What was to be sent does not fit in one RADIUS packet (4096 octets)."""


def _assemble(code: int, ident: int, auth: bytes, body: bytes) -> bytearray:
    length = HEADER + len(body)
    if length > MAX_PACKET:
        raise PacketTooLong(f"packet of {length} octets exceeds {MAX_PACKET}")
    buf = bytearray(struct.pack("!BBH", code, ident, length))
    buf += auth
    buf += body
    return buf


_MA_EMPTY = bytes((MESSAGE_AUTHENTICATOR, 18)) + _ZERO16


def encode_reply(request: Packet, code: int, attributes: Iterable[tuple[int, bytes]],
                 secret: bytes, *, message_authenticator: bool = True) -> bytes:
    """A reply to `request`. Message-Authenticator, when asked for, is the first
    attribute (the BlastRADIUS mitigation of draft-ietf-radext-deprecating-radius),
    and Proxy-State attributes of the request are copied back (RFC 2865 §5.33).
    Where the Proxy-States leave no room for all of `attributes`, Reply-Message
    (text for people) is left out; where even that does not fit, `PacketTooLong`."""
    body = encode_attributes(attributes) if attributes else b""
    if A.PROXY_STATE in request.first:
        proxy_states = encode_attributes(
            [(k, v) for k, v in request.attributes if k == A.PROXY_STATE])
        room = MAX_PACKET - HEADER - len(proxy_states) - (len(_MA_EMPTY) if
                                                          message_authenticator else 0)
        if len(body) > room and attributes:
            body = encode_attributes([(k, v) for k, v in attributes if k != A.REPLY_MESSAGE])
        body += proxy_states
    if message_authenticator:
        body = _MA_EMPTY + body
    buf = _assemble(code, request.identifier, request.authenticator, body)
    if message_authenticator:
        buf[HEADER + 2:HEADER + 18] = hmac_md5(secret, buf)
    digest = md5(buf)
    digest.update(secret)
    buf[4:20] = digest.digest()
    return bytes(buf)


def encode_request(code: int, identifier: int, attributes: Iterable[tuple[int, bytes]],
                   secret: bytes, *, authenticator: bytes | None = None,
                   message_authenticator: bool = False) -> bytes:
    """A request (load generator, tests, CoA client). Access-Request and
    Status-Server take a random Authenticator (pass the one User-Password was
    hidden with); the signed requests get their MD5 Authenticator."""
    body = encode_attributes(attributes)
    if message_authenticator:
        body = _MA_EMPTY + body
    signed = code in SIGNED_REQUESTS
    auth = _ZERO16 if signed else (authenticator or os.urandom(16))
    buf = _assemble(code, identifier, auth, body)
    if message_authenticator:
        buf[HEADER + 2:HEADER + 18] = hmac_md5(secret, buf)
    if signed:
        buf[4:20] = md5(bytes(buf) + secret).digest()
    return bytes(buf)


def new_authenticator() -> bytes:
    return os.urandom(16)


__all__ = ["A", "AcctStatus", "Code", "DecodeError", "IMPLEMENTATION", "KNOWN_CODES",
           "MAX_PACKET", "Packet", "PacketTooLong", "SIGNED_REQUESTS", "decode",
           "encode_attributes", "encode_reply", "encode_request", "first_values", "hide_password",
           "hmac_md5", "message_authenticator_ok", "new_authenticator", "reply_authenticator_ok",
           "request_authenticator_ok", "salt_decrypt", "salt_encrypt", "tagged", "text", "u32",
           "unhide_password", "untag_int", "vsa"]
