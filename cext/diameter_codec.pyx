# cython: language_level=3
"""Compiled twin of the hot half of diameter/codec.py: walking the AVPs of a
sound message, and encoding AVPs.

Only the common, well-formed cases are handled here; anything else is left to
the pure-Python codec, so results and errors are the same by construction:

* `decode_avps` returns the tuple of `Avp` that `codec._decode_avps` would
  return, or None whenever that function would fault or take one of its
  lenient detours (reserved bits, unknown M-bit AVP, bad length, bad UTF-8,
  nesting too deep, ...): the caller then decodes the message in Python;
* `make_avp` builds an `Avp` as `codec._make_avp` does (for `codec.avp`);
* `encode_avps` returns the bytes of ``b"".join(encode_avp(a) for a in avps)``;
  a value it does not encode inline (out-of-range integers, addresses, times,
  floats, anything odd) is encoded by `codec.encode_avp` itself, so
  `EncodeError` is raised by the same code with the same message.

tests/test_diameter_codec_twins.py compares both twins on the byte vectors,
random messages and mutated bytes. `bind` hands over the pure module's classes
and fallbacks (diameter.codec calls it when it selects this module).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromLong, PyLong_FromLongLong, PyLong_FromUnsignedLong
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy

cdef extern from *:
    """
    /* A slot of a frozen dataclass is set through its member descriptor, as
       object.__setattr__ would: the frozen __setattr__ is not involved. */
    static int ocs_set_slot(PyObject *descr, PyObject *obj, PyObject *value) {
        return Py_TYPE(descr)->tp_descr_set(descr, obj, value);
    }
    """
    int set_slot "ocs_set_slot"(object descr, object obj, object value) except -1
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

# Type ids (diameter.dictionary) and flags (RFC 6733 section 4.1).
cdef enum:
    OCTETS, INT32, INT64, UINT32, UINT64, FLOAT32, FLOAT64, GROUPED, ADDRESS, TIME, UTF8, \
        IDENTITY, URI, ENUMERATED, IPFILTER, QOSFILTER
cdef enum:
    FLAG_V = 0x80
    FLAG_M = 0x40
    RESERVED = 0x1F
    KEEP = 0xFF & ~(0x80 | 0x1F)
    MAX_DEPTH_C = 16
    MAX_PAYLOAD = 0xFFFFFF - 12

cdef object _Avp = None
cdef object _new = object.__new__
cdef object _code = None, _value = None, _vendor = None, _flags = None
cdef object _slow_value = None, _Fault = None, _encode_avp = None


def bind(avp_class, slow_value, fault, encode_avp):
    """The pure codec's `Avp`, `_slow_value`, `_Fault` and `encode_avp`."""
    global _Avp, _code, _value, _vendor, _flags, _slow_value, _Fault, _encode_avp
    _Avp, _slow_value, _Fault, _encode_avp = avp_class, slow_value, fault, encode_avp
    _code, _value = avp_class.code, avp_class.value
    _vendor, _flags = avp_class.vendor, avp_class.flags


def make_avp(code, val, vendor, flags):
    """`codec._make_avp`, compiled: the `Avp` of these four field values, as given."""
    o = _new(_Avp)
    set_slot(_code, o, code)
    set_slot(_value, o, val)
    set_slot(_vendor, o, vendor)
    set_slot(_flags, o, flags)
    return o


# ---------------------------------------------------------------------- decoding
cdef inline uint32_t _be32(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t _be64(const unsigned char* p) noexcept:
    return (<uint64_t>_be32(p) << 32) | _be32(p + 4)


cdef inline object _make_avp(uint32_t code, object val, uint32_t vendor, int flags):
    o = _new(_Avp)
    set_slot(_code, o, PyLong_FromUnsignedLong(code))
    set_slot(_value, o, val)
    set_slot(_vendor, o, PyLong_FromUnsignedLong(vendor))
    set_slot(_flags, o, PyLong_FromLong(flags))
    return o


cdef object _walk(bytes buf, const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                  bint strict, int depth, dict types, object d):
    """The AVPs in buf[pos:end], or None where the pure decoder must decide."""
    cdef uint32_t code, word, vendor
    cdef int flags, ti
    cdef Py_ssize_t length, start, stop, n
    if depth > MAX_DEPTH_C:
        return None
    out = []
    while pos < end:
        if end - pos < 8:
            return None
        code = _be32(p + pos)
        word = _be32(p + pos + 4)
        flags = word >> 24
        length = word & 0xFFFFFF
        if flags & FLAG_V:
            if length < 12 or end - pos < 12:
                return None
            vendor = _be32(p + pos + 8)
            start = pos + 12
        else:
            if length < 8:
                return None
            vendor = 0
            start = pos + 8
        stop = pos + length
        if stop > end:
            return None
        if flags & RESERVED and strict:
            return None
        n = stop - start
        key = PyLong_FromUnsignedLongLong((<uint64_t>vendor << 32) | code)
        t = types.get(key)
        if t is None:
            if strict and flags & FLAG_M:
                return None
            val = PyBytes_FromStringAndSize(<const char*>p + start, n)
        else:
            ti = t
            if ti == UTF8 or ti == IDENTITY or ti == URI or ti == IPFILTER or ti == QOSFILTER:
                try:
                    if memchr(p + start, 0, n) != NULL:  # a NUL is not text: the pure path
                        raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL")
                    val = PyUnicode_DecodeUTF8(<const char*>p + start, n, NULL)
                except UnicodeDecodeError:
                    val = _slow(buf, t, pos, start, stop, strict, depth, d, key, code, flags,
                                vendor)
                    if val is _Fault:
                        return None
            elif ti == UINT32 and n == 4:
                val = PyLong_FromUnsignedLong(_be32(p + start))
            elif ti == GROUPED:
                val = _walk(buf, p, start, stop, strict, depth + 1, types, d)
                if val is None:
                    return None
            elif (ti == ENUMERATED or ti == INT32) and n == 4:
                val = PyLong_FromLong(<int32_t>_be32(p + start))
            elif ti == UINT64 and n == 8:
                val = PyLong_FromUnsignedLongLong(_be64(p + start))
            elif ti == OCTETS:
                val = PyBytes_FromStringAndSize(<const char*>p + start, n)
            else:
                val = _slow(buf, t, pos, start, stop, strict, depth, d, key, code, flags, vendor)
                if val is _Fault:
                    return None
        out.append(_make_avp(code, val, vendor, flags))
        pos = stop + (-length & 3)
    return tuple(out)


cdef object _slow(bytes buf, object t, Py_ssize_t pos, Py_ssize_t start, Py_ssize_t stop,
                  bint strict, int depth, object d, object key, uint32_t code, int flags,
                  uint32_t vendor):
    """The pure decoder's own value function; `_Fault` (the class) when it faults."""
    try:
        return _slow_value(t, buf[start:stop], strict, depth, d, key, code, flags, vendor,
                           buf[pos:stop])
    except _Fault:
        return _Fault


def decode_avps(bytes buf, Py_ssize_t pos, Py_ssize_t end, bint strict, object dictionary):
    """The AVPs of buf[pos:end] as `codec._decode_avps` decodes them, or None when
    the pure decoder has to (it faults, or it is lenient about something)."""
    if pos < 0 or end > PyBytes_GET_SIZE(buf):
        return None
    return _walk(buf, <const unsigned char*>PyBytes_AS_STRING(buf), pos, end, strict, 0,
                 dictionary.types, dictionary)


# ---------------------------------------------------------------------- encoding
cdef inline char* _grow(bytearray out, Py_ssize_t n) except NULL:
    """Room for n more octets at the end of `out`."""
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, size + n)
    return PyByteArray_AS_STRING(out) + size


cdef inline void _put32(char* q, uint32_t v) noexcept:
    q[0] = <char>(v >> 24)
    q[1] = <char>(v >> 16)
    q[2] = <char>(v >> 8)
    q[3] = <char>v


cdef int _put(bytearray out, const char* data, Py_ssize_t n) except -1:
    if n:
        memcpy(_grow(out, n), data, n)
    return 0


cdef int _fallback(bytearray out, object a, object dictionary) except -1:
    piece = _encode_avp(a, dictionary)
    _put(out, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
    return 0


cdef bint _uint32(object v) noexcept:
    return type(v) is int and 0 <= v <= 0xFFFFFFFF


cdef int _encode(bytearray out, object a, dict types, object dictionary) except -1:
    cdef Py_ssize_t head, mark, n, pad
    cdef uint32_t code32, vendor32
    cdef int ti, flags
    cdef int64_t i64
    cdef uint64_t u64
    cdef const char* text
    cdef char* q
    if type(a) is not _Avp:
        piece = bytes(a)
        return _put(out, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
    code, vendor, v, f = a.code, a.vendor, a.value, a.flags
    if not (_uint32(code) and _uint32(vendor) and type(f) is int):
        return _fallback(out, a, dictionary)
    code32, vendor32 = code, vendor
    flags = (f & KEEP) | (FLAG_V if vendor32 else 0)
    t = types.get((<uint64_t>vendor32 << 32) | code32)
    ti = -1 if t is None else t
    head = 12 if vendor32 else 8
    mark = PyByteArray_GET_SIZE(out)
    _grow(out, head)
    vc = type(v)
    if vc is int and ti == UINT32:
        if not 0 <= v <= 0xFFFFFFFF:
            return _rewind(out, mark, a, dictionary)
        _put32(_grow(out, 4), <uint32_t>v)
    elif vc is str and (ti == UTF8 or ti == IDENTITY or ti == URI or ti == IPFILTER
                        or ti == QOSFILTER or ti == OCTETS):
        try:
            text = PyUnicode_AsUTF8AndSize(v, &n)
        except UnicodeEncodeError:
            return _rewind(out, mark, a, dictionary)
        _put(out, text, n)
    elif vc is tuple and (ti == GROUPED or ti == -1):
        for c in <tuple>v:
            _encode(out, c, types, dictionary)
    elif vc is bytes:
        _put(out, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
    elif vc is list and (ti == GROUPED or ti == -1):
        for c in <list>v:
            _encode(out, c, types, dictionary)
    elif vc is int and (ti == ENUMERATED or ti == INT32) and -0x80000000 <= v <= 0x7FFFFFFF:
        _put32(_grow(out, 4), <uint32_t><int32_t>v)
    elif vc is int and ti == UINT64 and 0 <= v <= 0xFFFFFFFFFFFFFFFF:
        u64 = v
        q = _grow(out, 8)
        _put32(q, <uint32_t>(u64 >> 32))
        _put32(q + 4, <uint32_t>u64)
    elif vc is int and ti == INT64 and -0x8000000000000000 <= v <= 0x7FFFFFFFFFFFFFFF:
        i64 = v
        u64 = <uint64_t>i64
        q = _grow(out, 8)
        _put32(q, <uint32_t>(u64 >> 32))
        _put32(q + 4, <uint32_t>u64)
    else:
        return _rewind(out, mark, a, dictionary)
    n = PyByteArray_GET_SIZE(out) - mark - head
    if n > MAX_PAYLOAD:
        return _rewind(out, mark, a, dictionary)
    q = PyByteArray_AS_STRING(out) + mark
    _put32(q, code32)
    _put32(q + 4, (<uint32_t>flags << 24) | <uint32_t>(head + n))
    if vendor32:
        _put32(q + 8, vendor32)
    pad = -n & 3
    if pad:
        _put(out, b"\0\0\0", pad)
    return 0


cdef int _rewind(bytearray out, Py_ssize_t mark, object a, object dictionary) except -1:
    """Drop what was written for `a` and let the pure encoder do it (or raise)."""
    PyByteArray_Resize(out, mark)
    return _fallback(out, a, dictionary)


def encode_avps(avps, object dictionary):
    """``b"".join(encode_avp(a, dictionary) for a in avps)``, compiled."""
    out = bytearray()
    types = dictionary.types
    for a in avps:
        _encode(out, a, types, dictionary)
    return bytes(out)
