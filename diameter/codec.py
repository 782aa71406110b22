"""Diameter message codec (RFC 6733 sections 3 and 4): bytes in, frozen dataclasses out.

Sans-I/O: no sockets, no event loop, no logging, no configuration. A
`Message` is its header fields plus a tuple of `Avp`; an AVP's value is
already typed by the dictionary:

=================================  ============================================
OctetString                        bytes
Integer32/64, Unsigned32/64,       int
Enumerated
Float32/64                         float
UTF8String, DiameterIdentity,      str
DiameterURI, IPFilterRule,
QoSFilterRule
Address                            ipaddress.IPv4Address / IPv6Address, or
                                   (family, bytes) for other families
Time                               int microseconds since the Unix epoch
Grouped                            tuple of Avp
not in the dictionary              bytes (the raw payload)
=================================  ============================================

Errors are typed and carry what the answer needs:

* `FramingError`: the message boundaries cannot be trusted (bad version,
  length not a multiple of 4, shorter than a header, larger than allowed).
  The transport closes the connection: nothing after it can be parsed.
* `AvpError`: the header is sound but an AVP is not. It carries the
  Result-Code the RFC prescribes and the bytes of the Failed-AVP contents
  (RFC 6733 sections 7.1.5 and 7.5), the parsed header, and the top-level
  AVPs decoded before the fault (Session-Id normally comes first), so the
  caller can answer:

  - 5014 DIAMETER_INVALID_AVP_LENGTH: an AVP overruns its message or group,
    is shorter than its header, or has the wrong size for its type; the
    Failed-AVP holds its header with a zero payload of the type's minimum size;
  - 5004 DIAMETER_INVALID_AVP_VALUE: text that is not UTF-8 or holds a NUL
    (no identity or name needs one, and PostgreSQL stores none), nesting deeper
    than `MAX_DEPTH`;
  - 5001 DIAMETER_AVP_UNSUPPORTED: an AVP we do not know with the M bit set;
  - 3009 DIAMETER_INVALID_AVP_BITS: reserved AVP flag bits set.

  An error inside a Grouped AVP is reported as that group holding only the
  offending AVP (RFC 6733 section 7.5).

Requests are decoded strictly; answers leniently (`strict=False`): a value
that does not fit its type, or an unknown AVP with the M bit, is kept as
its raw bytes instead of failing, because an answer cannot be refused.

The walk over a sound message's AVPs and the AVP encoder have a compiled
twin, `cext.diameter_codec`, picked once at import (`OCS_NO_EXTENSIONS=1`
forces the pure functions; `IMPLEMENTATION` says which). It handles the
common well-formed cases and hands everything else to the functions here,
so both give the same values, bytes and errors.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Iterable

from ocs.errors import OcsError

from .dictionary import (ADDRESS, DEFAULT, ENUMERATED, FLAG_M, FLAG_V, FLOAT32, FLOAT64,
                         GROUPED, IDENTITY, INT32, INT64, IPFILTER, OCTETS, QOSFILTER, TIME,
                         UINT32, UINT64, URI, UTF8, Dictionary)

# Header flags (RFC 6733 section 3).
FLAG_REQUEST, FLAG_PROXIABLE, FLAG_ERROR, FLAG_RETRANSMIT = 0x80, 0x40, 0x20, 0x10
AVP_RESERVED_BITS = 0x1F
HEADER_LENGTH = 20
#: Largest message the codec accepts by default (the 24-bit length allows 16 MiB).
MAX_MESSAGE = 1 << 20
#: Deepest nesting of Grouped AVPs accepted (real messages use 4 or 5).
MAX_DEPTH = 16

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_ERA = 1 << 32

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_HDR = struct.Struct(">IIIII")
_AVP = struct.Struct(">II")
_AVPV = struct.Struct(">III")
_U16 = struct.Struct(">H")

#: Payload size of the fixed-size types; 0 for the others.
_FIXED = {INT32: 4, UINT32: 4, ENUMERATED: 4, FLOAT32: 4, TIME: 4,
          INT64: 8, UINT64: 8, FLOAT64: 8}
#: Minimum payload of each type, for the zero-filled Failed-AVP of a 5014.
_MINIMUM = {**_FIXED, ADDRESS: 6}

# Result codes the codec itself produces.
AVP_UNSUPPORTED, INVALID_AVP_VALUE, INVALID_AVP_LENGTH, INVALID_AVP_BITS = 5001, 5004, 5014, 3009


# ---------------------------------------------------------------------- errors
class DecodeError(OcsError):
    """Bytes that are not a valid Diameter message. `reason` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class FramingError(DecodeError):
    """The message boundaries are lost: the connection must be closed."""


class AvpError(DecodeError):
    """A sound header with a bad AVP: answer with `result_code` and `failed_avp`."""

    def __init__(self, reason: str, result_code: int, failed_avp: bytes,
                 header: "Message", avps: tuple["Avp", ...]):
        super().__init__(reason)
        self.result_code = result_code
        self.failed_avp = failed_avp
        self.header = header  # the message's header fields, with no AVPs
        self.avps = avps      # top-level AVPs decoded before the fault


class EncodeError(OcsError):
    """A value cannot be encoded as its AVP's type (a programming error)."""


# ---------------------------------------------------------------------- data
@dataclass(frozen=True, slots=True)
class Avp:
    """One AVP. `flags` are the wire flags (V, M, P); V always follows `vendor`."""

    code: int
    value: Any
    vendor: int = 0
    flags: int = FLAG_M

    @property
    def key(self) -> int:
        return self.vendor << 32 | self.code

    @property
    def mandatory(self) -> bool:
        return bool(self.flags & FLAG_M)


@dataclass(frozen=True, slots=True)
class Message:
    """One Diameter message: header fields and top-level AVPs."""

    code: int
    flags: int
    app_id: int
    hop_by_hop: int
    end_to_end: int
    avps: tuple = ()

    @property
    def request(self) -> bool:
        return bool(self.flags & FLAG_REQUEST)

    @property
    def error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    @property
    def retransmit(self) -> bool:
        return bool(self.flags & FLAG_RETRANSMIT)

    def first(self, key: int) -> Avp | None:
        for a in self.avps:
            if a.code == key & 0xFFFFFFFF and a.vendor == key >> 32:
                return a
        return None

    def value(self, key: int, default: Any = None) -> Any:
        return value(self.avps, key, default)

    def all(self, key: int) -> list:
        return values(self.avps, key)

    def with_avps(self, avps: Iterable) -> "Message":
        return Message(self.code, self.flags, self.app_id, self.hop_by_hop, self.end_to_end,
                       tuple(avps))


def value(avps: Iterable[Avp], key: int, default: Any = None) -> Any:
    """The value of the first AVP with `key` among `avps`, else `default`."""
    code, vendor = key & 0xFFFFFFFF, key >> 32
    for a in avps:
        if a.code == code and a.vendor == vendor:
            return a.value
    return default


def values(avps: Iterable[Avp], key: int) -> list:
    """Values of every AVP with `key`, in order."""
    code, vendor = key & 0xFFFFFFFF, key >> 32
    return [a.value for a in avps if a.code == code and a.vendor == vendor]


def first(avps: Iterable[Avp], key: int) -> Avp | None:
    code, vendor = key & 0xFFFFFFFF, key >> 32
    for a in avps:
        if a.code == code and a.vendor == vendor:
            return a
    return None


def avp(key: int, val: Any, dictionary: Dictionary = DEFAULT) -> Avp:
    """An AVP with the flags its definition asks for (unknown keys: no M bit)."""
    vendor = key >> 32
    return _make_avp(key & 0xFFFFFFFF, val, vendor,
                     dictionary.flags.get(key, FLAG_V if vendor else 0))


# ---------------------------------------------------------------------- decoding
class _Fault(Exception):
    """Internal: an AVP fault on its way up to `decode`, which adds the header."""

    def __init__(self, result_code: int, failed: bytes, reason: str):
        self.result_code, self.failed, self.reason = result_code, failed, reason


def _padded(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _avp_header(code: int, flags: int, vendor: int, payload_len: int) -> bytes:
    if flags & FLAG_V:
        return _AVPV.pack(code, (flags << 24) | (12 + payload_len), vendor)
    return _AVP.pack(code, (flags << 24) | (8 + payload_len))


def _zero_avp(code: int, flags: int, vendor: int, type_id: int | None) -> bytes:
    size = _MINIMUM.get(type_id, 0) if type_id is not None else 0
    return _padded(_avp_header(code, flags & ~AVP_RESERVED_BITS, vendor, size) + b"\0" * size)


def decode_time(data: bytes) -> int:
    seconds = _U32.unpack(data)[0]
    if not seconds & 0x80000000:  # RFC 2030 section 3: MSB clear is the 2036-2104 era
        seconds += _ERA
    return (seconds - NTP_UNIX_OFFSET) * 1_000_000


def decode_address(data: bytes):
    family = _U16.unpack_from(data)[0]
    raw = data[2:]
    if family == 1:
        if len(raw) != 4:
            raise ValueError("IPv4 address is not 4 octets")
        return ipaddress.IPv4Address(raw)
    if family == 2:
        if len(raw) != 16:
            raise ValueError("IPv6 address is not 16 octets")
        return ipaddress.IPv6Address(raw)
    return (family, bytes(raw))


def _decode_value(t: int, data: bytes, strict: bool, depth: int, d: Dictionary):
    """The typed value; raises _Fault (strict) on a bad one."""
    if t == UTF8 or t == IDENTITY or t == URI or t == IPFILTER or t == QOSFILTER:
        if b"\x00" in data:  # a control character no text needs, refused by PostgreSQL
            raise UnicodeDecodeError("utf-8", bytes(data), data.index(b"\x00"),
                                     data.index(b"\x00") + 1, "NUL")
        return data.decode()
    if t == UINT32:
        return _U32.unpack(data)[0]
    if t == ENUMERATED or t == INT32:
        return _I32.unpack(data)[0]
    if t == UINT64:
        return _U64.unpack(data)[0]
    if t == GROUPED:
        return _decode_avps(data, 0, len(data), strict, depth + 1, d, None)
    if t == OCTETS:
        return data
    if t == INT64:
        return _I64.unpack(data)[0]
    if t == TIME:
        return decode_time(data)
    if t == ADDRESS:
        return decode_address(data)
    if t == FLOAT32:
        return _F32.unpack(data)[0]
    return _F64.unpack(data)[0]


def _slow_value(t: int, data: bytes, strict: bool, depth: int, d: Dictionary, key: int,
                code: int, flags: int, vendor: int, raw: bytes):
    """Any type, with every check and the fault each failure deserves."""
    size = _FIXED.get(t)
    try:
        if size is not None and len(data) != size:
            raise _Fault(INVALID_AVP_LENGTH, _zero_avp(code, flags, vendor, t),
                         f"{d.name(key)} has {len(data)} octets, its type needs {size}")
        return _decode_value(t, data, strict, depth, d)
    except _Fault as inner:
        return _fault_in(inner, t, data, strict, d, key, code, flags, vendor, raw)
    except UnicodeDecodeError:
        if strict:
            raise _Fault(INVALID_AVP_VALUE, _padded(raw), f"{d.name(key)} " + (
                "holds a NUL character" if b"\x00" in data else "is not valid UTF-8")) from None
        return bytes(data)
    except (ValueError, struct.error) as exc:
        if strict:
            fault = INVALID_AVP_LENGTH if t == ADDRESS else INVALID_AVP_VALUE
            failed = (_zero_avp(code, flags, vendor, t) if fault == INVALID_AVP_LENGTH
                      else _padded(raw))
            raise _Fault(fault, failed, f"{d.name(key)}: {exc}") from None
        return bytes(data)


def _fault_in(inner: _Fault, t: int, data: bytes, strict: bool, d: Dictionary, key: int,
              code: int, flags: int, vendor: int, raw: bytes):
    """A fault inside this AVP's value: raw bytes when lenient, else the fault to
    report, decoded once (never re-decoding the group at each level)."""
    if not strict:
        return bytes(data)
    if not inner.failed:  # e.g. nested too deep: this AVP is the culprit
        raise _Fault(inner.result_code, _padded(raw), inner.reason) from None
    if t == GROUPED:
        # Report the group holding only the offending AVP (RFC 6733 7.5).
        raise _Fault(inner.result_code,
                     _avp_header(code, flags & ~AVP_RESERVED_BITS, vendor,
                                 len(inner.failed)) + inner.failed,
                     f"in {d.name(key)}: {inner.reason}") from None
    raise inner


# Avp and Message are frozen dataclasses; building them through their slot
# descriptors skips the generated __init__ (which sets each field through
# object.__setattr__) and takes half the time. Same objects, same equality.
_new = object.__new__


def _make_avp(code, val, vendor, flags, _new=_new, _c=Avp.code.__set__, _v=Avp.value.__set__,
              _d=Avp.vendor.__set__, _f=Avp.flags.__set__):
    o = _new(Avp)
    _c(o, code)
    _v(o, val)
    _d(o, vendor)
    _f(o, flags)
    return o


_TEXT = frozenset((UTF8, IDENTITY, URI, IPFILTER, QOSFILTER))
_u32 = _U32.unpack
_i32 = _I32.unpack
_u64 = _U64.unpack


def _decode_avps(buf: bytes, pos: int, end: int, strict: bool, depth: int, d: Dictionary,
                 into: list | None) -> tuple:
    if depth > MAX_DEPTH:
        raise _Fault(INVALID_AVP_VALUE, b"", f"Grouped AVPs nested deeper than {MAX_DEPTH}")
    types = d.types
    out = [] if into is None else into
    append = out.append
    unpack_header = _AVP.unpack_from
    while pos < end:
        if end - pos < 8:
            raise _Fault(INVALID_AVP_LENGTH, _padded(bytes(buf[pos:end]) + b"\0" * 8)[:8],
                         f"{end - pos} octets left where an AVP header needs 8")
        code, word = unpack_header(buf, pos)
        flags, length = word >> 24, word & 0xFFFFFF
        if flags & FLAG_V:
            if length < 12 or end - pos < 12:
                raise _Fault(INVALID_AVP_LENGTH, _zero_avp(code, flags & ~FLAG_V, 0, None),
                             f"AVP {code} length {length} is shorter than its header")
            vendor = _U32.unpack_from(buf, pos + 8)[0]
            start = pos + 12
        else:
            vendor, start = 0, pos + 8
            if length < 8:
                raise _Fault(INVALID_AVP_LENGTH, _zero_avp(code, flags, 0, None),
                             f"AVP {code} length {length} is shorter than its header")
        key = vendor << 32 | code
        t = types.get(key)
        stop = pos + length
        if stop > end:
            raise _Fault(INVALID_AVP_LENGTH, _zero_avp(code, flags, vendor, t),
                         f"{d.name(key)} length {length} overruns its container by "
                         f"{stop - end} octets")
        data = buf[start:stop]
        if flags & AVP_RESERVED_BITS and strict:
            raise _Fault(INVALID_AVP_BITS, _padded(bytes(buf[pos:stop])),
                         f"{d.name(key)} has reserved flag bits set ({flags:#04x})")
        # The common cases inline; anything unusual (or wrong) takes the slow path.
        n = stop - start
        if t is None:
            if strict and flags & FLAG_M:
                raise _Fault(AVP_UNSUPPORTED, _padded(bytes(buf[pos:stop])),
                             f"unknown {d.name(key)} has the M bit set")
            val = bytes(data)
        elif t in _TEXT:
            try:
                if b"\x00" in data:  # a NUL is not text: refused by the slow path
                    raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL")
                val = data.decode()
            except UnicodeDecodeError:
                val = _slow_value(t, data, strict, depth, d, key, code, flags, vendor,
                                  bytes(buf[pos:stop]))
        elif t == UINT32 and n == 4:
            val = _u32(data)[0]
        elif t == GROUPED:
            try:
                val = _decode_avps(data, 0, n, strict, depth + 1, d, None)
            except _Fault as inner:
                val = _fault_in(inner, t, data, strict, d, key, code, flags, vendor,
                                bytes(buf[pos:stop]))
        elif (t == ENUMERATED or t == INT32) and n == 4:
            val = _i32(data)[0]
        elif t == UINT64 and n == 8:
            val = _u64(data)[0]
        elif t == OCTETS:
            val = data
        else:
            val = _slow_value(t, data, strict, depth, d, key, code, flags, vendor,
                              bytes(buf[pos:stop]))
        append(_make_avp(code, val, vendor, flags))
        pos = stop + (-length & 3)
    return tuple(out)


def parse_header(data: bytes, max_length: int = MAX_MESSAGE) -> tuple[int, int, int, int, int, int]:
    """(length, flags, code, app_id, hop_by_hop, end_to_end) or FramingError."""
    if len(data) < HEADER_LENGTH:
        raise FramingError(f"{len(data)} octets cannot hold a Diameter header")
    word0, word1, app_id, hbh, e2e = _HDR.unpack_from(data)
    version, length = word0 >> 24, word0 & 0xFFFFFF
    if version != 1:
        raise FramingError(f"unsupported Diameter version {version}")
    if length < HEADER_LENGTH or length % 4:
        raise FramingError(f"message length {length} is not a multiple of 4 of at least 20")
    if length > max_length:
        raise FramingError(f"message length {length} exceeds the limit of {max_length}")
    return length, word1 >> 24, word1 & 0xFFFFFF, app_id, hbh, e2e


def decode(data: bytes, dictionary: Dictionary = DEFAULT, *, strict: bool | None = None,
           max_length: int = MAX_MESSAGE) -> Message:
    """One whole message. `strict` defaults to True for requests, False for answers."""
    length, flags, code, app_id, hbh, e2e = parse_header(data, max_length)
    if length != len(data):
        raise FramingError(f"header says {length} octets, got {len(data)}")
    if strict is None:
        strict = bool(flags & FLAG_REQUEST)
    if _compiled is not None and data.__class__ is bytes:
        avps = _compiled.decode_avps(data, HEADER_LENGTH, length, strict, dictionary)
        if avps is not None:
            return _make_message(code, flags, app_id, hbh, e2e, avps)
    partial: list = []
    try:
        avps = _decode_avps(data, HEADER_LENGTH, length, strict, 0, dictionary, partial)
    except _Fault as fault:
        header = Message(code, flags, app_id, hbh, e2e, ())
        raise AvpError(fault.reason, fault.result_code, fault.failed, header,
                       tuple(partial)) from None
    return _make_message(code, flags, app_id, hbh, e2e, avps)


def _make_message(code, flags, app_id, hbh, e2e, avps, _new=_new,
                  _c=Message.code.__set__, _f=Message.flags.__set__,
                  _a=Message.app_id.__set__, _h=Message.hop_by_hop.__set__,
                  _e=Message.end_to_end.__set__, _v=Message.avps.__set__) -> Message:
    o = _new(Message)
    _c(o, code)
    _f(o, flags)
    _a(o, app_id)
    _h(o, hbh)
    _e(o, e2e)
    _v(o, avps)
    return o


# ---------------------------------------------------------------------- encoding
def encode_time(us: int) -> bytes:
    return _U32.pack((us // 1_000_000 + NTP_UNIX_OFFSET) % _ERA)


def encode_address(v) -> bytes:
    if isinstance(v, tuple):
        family, raw = v
        return _U16.pack(family) + bytes(raw)
    if isinstance(v, str):
        v = ipaddress.ip_address(v)
    if isinstance(v, ipaddress.IPv4Address):
        return b"\0\1" + v.packed
    if isinstance(v, ipaddress.IPv6Address):
        return b"\0\2" + v.packed
    raise TypeError(f"not an address: {v!r}")


def _text(v) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


_ENCODERS = {
    OCTETS: lambda v: v.encode() if isinstance(v, str) else bytes(v),
    INT32: _I32.pack, ENUMERATED: _I32.pack, INT64: _I64.pack,
    UINT32: _U32.pack, UINT64: _U64.pack, FLOAT32: _F32.pack, FLOAT64: _F64.pack,
    ADDRESS: encode_address, TIME: encode_time,
    UTF8: _text, IDENTITY: _text, URI: _text, IPFILTER: _text, QOSFILTER: _text,
}


def encode_avp(a: "Avp | bytes", dictionary: Dictionary = DEFAULT) -> bytes:
    """One AVP, padded. Pre-encoded AVPs (bytes) pass through (Failed-AVP contents)."""
    if a.__class__ is not Avp:
        return bytes(a)
    code, vendor, v = a.code, a.vendor, a.value
    t = dictionary.types.get(vendor << 32 | code)
    vc = v.__class__
    try:
        # The common cases inline; the table of encoders for the rest.
        if vc is int and t == UINT32:
            data = _u32_pack(v)
        elif vc is str and (t in _TEXT or t == OCTETS):
            data = v.encode()
        elif vc is tuple and (t == GROUPED or t is None):
            data = b"".join([encode_avp(c, dictionary) for c in v])
        elif vc is bytes or isinstance(v, (bytes, bytearray)):  # raw: unknown or lenient
            data = bytes(v)
        elif t == GROUPED or (t is None and isinstance(v, list)):
            data = b"".join([encode_avp(c, dictionary) for c in v])
        elif t is None:
            data = _ENCODERS[OCTETS](v)
        else:
            data = _ENCODERS[t](v)
    except (struct.error, TypeError, ValueError, AttributeError) as exc:
        raise EncodeError(f"{dictionary.name(vendor << 32 | code)}: cannot encode {v!r}: "
                          f"{exc}") from None
    flags = (a.flags & _KEEP) | (FLAG_V if vendor else 0)
    n = len(data)
    if vendor:
        head = _avpv_pack(code, (flags << 24) | (12 + n), vendor)
    else:
        head = _avp_pack(code, (flags << 24) | (8 + n))
    pad = -n & 3
    return head + data + _PAD[pad] if pad else head + data


_u32_pack = _U32.pack
_avp_pack = _AVP.pack
_avpv_pack = _AVPV.pack
_KEEP = 0xFF & ~(FLAG_V | AVP_RESERVED_BITS)
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")


def encode(msg: Message, dictionary: Dictionary = DEFAULT) -> bytes:
    if _compiled is not None:
        body = _compiled.encode_avps(msg.avps, dictionary)
    else:
        body = b"".join([encode_avp(a, dictionary) for a in msg.avps])
    length = HEADER_LENGTH + len(body)
    if length > 0xFFFFFF:
        raise EncodeError(f"message of {length} octets exceeds the 24-bit length")
    return _HDR.pack((1 << 24) | length, (msg.flags << 24) | msg.code, msg.app_id,
                     msg.hop_by_hop, msg.end_to_end) + body


def with_hop_by_hop(raw: bytes, hop_by_hop: int) -> bytes:
    """The encoded message `raw` with another Hop-by-Hop Identifier (cached answers)."""
    return raw[:12] + _U32.pack(hop_by_hop) + raw[16:]


def set_retransmit(raw: bytes) -> bytes:
    """The encoded request `raw` with the T flag set (resent after a failover)."""
    return raw[:4] + bytes((raw[4] | FLAG_RETRANSMIT,)) + raw[5:]


# ---------------------------------------------------------------------- inspection
def describe(msg: Message, dictionary: Dictionary = DEFAULT) -> str:
    """'CCR app=4 hbh=0x1 e2e=0x2 [R P]' for logs."""
    name = dictionary.command_name(msg.code, msg.request)
    bits = "".join(f for f, b in (("R", FLAG_REQUEST), ("P", FLAG_PROXIABLE), ("E", FLAG_ERROR),
                                  ("T", FLAG_RETRANSMIT)) if msg.flags & b)
    return f"{name} app={msg.app_id} hbh={msg.hop_by_hop:#x} e2e={msg.end_to_end:#x} [{bits}]"


def to_tree(avps: Iterable[Avp], dictionary: Dictionary = DEFAULT) -> list:
    """Nested [(name, value), ...] of AVPs: readable structure for tests and debugging."""
    out = []
    for a in avps:
        name = dictionary.name(a.key)
        if isinstance(a.value, tuple) and a.value and all(isinstance(c, Avp) for c in a.value):
            out.append((name, to_tree(a.value, dictionary)))
        elif isinstance(a.value, tuple) and not a.value and dictionary.types.get(a.key) == GROUPED:
            out.append((name, []))
        else:
            out.append((name, a.value))
    return out


# ---------------------------------------------------------------------- fast path
def _select():
    """The compiled twin (cext/diameter_codec.pyx) of the message walk and the AVP
    encoder, or None; `OCS_NO_EXTENSIONS=1` forces the pure functions above.
    Selected last, once everything it falls back on is defined."""
    from ocs.accel import _pick
    module, compiled = _pick("diameter_codec", None)
    if not compiled:
        return None, "pure-python"
    module.bind(Avp, _slow_value, _Fault, encode_avp)
    return module, "compiled"


_compiled, IMPLEMENTATION = _select()
if _compiled is not None:
    _make_avp = _compiled.make_avp  # noqa: F811 - what `avp` builds its AVPs with
