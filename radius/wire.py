"""The pure-Python packet decoder: twin of `cext/radius_codec.pyx`.

`decode(data)` splits a datagram into header fields and attributes and
nothing more: no dictionary, no secret, no allocation beyond the attribute
values. It enforces the length rules of RFC 2865 §3 and §5:

* a packet is 20..4096 octets; its Length field may be shorter than the
  datagram (the rest is padding and ignored) but never longer;
* every attribute has a length of at least 2 and fits inside the packet;
* the code is one this server knows (RFC 2865, 2866, 5176, 5997);
* Message-Authenticator (80) appears at most once and is 18 octets long
  (RFC 3579 §3.2).

Vendor-Specific attributes (26) whose data is a chain of well-formed
one-octet type/length sub-attributes (the RFC 2865 §5.26 recommendation,
which every vendor in our dictionaries follows) are split into one entry per
sub-attribute under the key ``vendor * 65536 + type``; any other VSA is kept
whole under key 26.

The compiled twin must give the same result (or the same `DecodeError`
reason) for every input: `tests/test_radius_codec.py` compares them.
"""

from __future__ import annotations

from ocs.errors import OcsError

MAX_PACKET = 4096
HEADER = 20
VENDOR_SPECIFIC = 26
MESSAGE_AUTHENTICATOR = 80
VENDOR_SHIFT = 65536
#: Codes this server accepts on the wire (requests and replies, for the client side too).
KNOWN_CODES = frozenset({1, 2, 3, 4, 5, 11, 12, 13, 40, 41, 42, 43, 44, 45})


class DecodeError(OcsError):
    """The octets are not a RADIUS packet we accept. `reason` is a short word for
    metrics and logs: too_short, too_long, bad_length, unknown_code,
    attribute_length, truncated_attribute, bad_message_authenticator."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def decode(data: bytes) -> tuple[int, int, bytes, list[tuple[int, bytes]], int, int]:
    """(code, identifier, authenticator, attributes, length, Message-Authenticator
    value offset or -1). Raises DecodeError."""
    size = len(data)
    if size < HEADER:
        raise DecodeError("too_short", f"{size} octets")
    if size > MAX_PACKET:
        raise DecodeError("too_long", f"{size} octets")
    code = data[0]
    length = (data[2] << 8) | data[3]
    if length < HEADER or length > size:
        raise DecodeError("bad_length", f"length field {length}, datagram {size}")
    if code not in KNOWN_CODES:
        raise DecodeError("unknown_code", str(code))
    attrs: list[tuple[int, bytes]] = []
    ma = -1
    pos = HEADER
    while pos < length:
        if pos + 2 > length:
            raise DecodeError("truncated_attribute", f"at {pos}")
        atype = data[pos]
        alen = data[pos + 1]
        if alen < 2:
            raise DecodeError("attribute_length", f"type {atype} length {alen} at {pos}")
        end = pos + alen
        if end > length:
            raise DecodeError("truncated_attribute", f"type {atype} at {pos}")
        if atype == MESSAGE_AUTHENTICATOR:
            if alen != 18 or ma >= 0:
                raise DecodeError("bad_message_authenticator", f"at {pos}")
            ma = pos + 2
            attrs.append((atype, data[pos + 2:end]))
        elif atype == VENDOR_SPECIFIC and alen >= 8 and _vsa_ok(data, pos + 6, end):
            vendor = int.from_bytes(data[pos + 2:pos + 6], "big")
            sub = pos + 6
            while sub < end:
                slen = data[sub + 1]
                attrs.append((vendor * VENDOR_SHIFT + data[sub], data[sub + 2:sub + slen]))
                sub += slen
        else:
            attrs.append((atype, data[pos + 2:end]))
        pos = end
    return code, data[1], data[4:20], attrs, length, ma


def _vsa_ok(data: bytes, pos: int, end: int) -> bool:
    """The vendor data is a non-empty chain of type/length sub-attributes that ends exactly."""
    if data[pos - 4] == 0 and data[pos - 3] == 0 and data[pos - 2] == 0 and data[pos - 1] == 0:
        return False  # vendor 0 is not a vendor
    while pos < end:
        if pos + 2 > end:
            return False
        slen = data[pos + 1]
        if slen < 2 or pos + slen > end:
            return False
        pos += slen
    return True
