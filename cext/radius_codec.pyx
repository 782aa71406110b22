# cython: language_level=3
"""Compiled twin of radius/wire.py: split a RADIUS datagram into header and attributes.

Same rules, same result, same `DecodeError` reasons and messages as the
pure-Python decoder (tests/test_radius_codec.py compares them on random and
mutated packets). The loop walks a C pointer over the datagram; Python
objects are made only for what the caller receives.
"""

from radius.wire import DecodeError

cdef int MAX_PACKET_C = 4096
cdef int HEADER_C = 20
cdef int VSA_C = 26
cdef int MA_C = 80
MAX_PACKET = MAX_PACKET_C


cdef bint known_code(int code) noexcept:
    return (1 <= code <= 5) or code == 11 or code == 12 or code == 13 or (40 <= code <= 45)


cdef bint vsa_ok(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end) noexcept:
    cdef Py_ssize_t slen
    if p[pos - 4] == 0 and p[pos - 3] == 0 and p[pos - 2] == 0 and p[pos - 1] == 0:
        return False
    while pos < end:
        if pos + 2 > end:
            return False
        slen = p[pos + 1]
        if slen < 2 or pos + slen > end:
            return False
        pos += slen
    return True


def decode(bytes data):
    """(code, identifier, authenticator, attributes, length, Message-Authenticator
    value offset or -1). Raises DecodeError."""
    cdef Py_ssize_t size = len(data)
    cdef const unsigned char* p = data
    cdef Py_ssize_t length, pos, end, sub, slen
    cdef int code, atype, alen
    cdef long vendor
    cdef Py_ssize_t ma = -1
    cdef list attrs
    if size < HEADER_C:
        raise DecodeError("too_short", f"{size} octets")
    if size > MAX_PACKET_C:
        raise DecodeError("too_long", f"{size} octets")
    code = p[0]
    length = (p[2] << 8) | p[3]
    if length < HEADER_C or length > size:
        raise DecodeError("bad_length", f"length field {length}, datagram {size}")
    if not known_code(code):
        raise DecodeError("unknown_code", str(code))
    attrs = []
    pos = HEADER_C
    while pos < length:
        if pos + 2 > length:
            raise DecodeError("truncated_attribute", f"at {pos}")
        atype = p[pos]
        alen = p[pos + 1]
        if alen < 2:
            raise DecodeError("attribute_length", f"type {atype} length {alen} at {pos}")
        end = pos + alen
        if end > length:
            raise DecodeError("truncated_attribute", f"type {atype} at {pos}")
        if atype == MA_C:
            if alen != 18 or ma >= 0:
                raise DecodeError("bad_message_authenticator", f"at {pos}")
            ma = pos + 2
            attrs.append((atype, data[pos + 2:end]))
        elif atype == VSA_C and alen >= 8 and vsa_ok(p, pos + 6, end):
            vendor = (<long>p[pos + 2] << 24) | (<long>p[pos + 3] << 16) | \
                (<long>p[pos + 4] << 8) | <long>p[pos + 5]
            sub = pos + 6
            while sub < end:
                slen = p[sub + 1]
                attrs.append((vendor * 65536 + p[sub], data[sub + 2:sub + slen]))
                sub += slen
        else:
            attrs.append((atype, data[pos + 2:end]))
        pos = end
    return code, p[1], data[4:20], attrs, length, ma
