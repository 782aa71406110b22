"""The compiled Diameter codec (cext/diameter_codec.pyx) against its pure-Python twin.

The compiled walk either returns exactly the AVPs the pure decoder returns, or
hands the message back (None) to the pure decoder; it must never accept what
the pure decoder refuses, nor decode anything differently. The compiled
encoder must produce the same bytes, and for values it cannot encode, the
same `EncodeError`. Compared on the byte vectors, on thousands of mutations of
them, and on random messages (hypothesis).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diameter import codec
from diameter import tables as T
from diameter.codec import FLAG_REQUEST, HEADER_LENGTH, Avp, EncodeError, Message, avp
from diameter.dictionary import DEFAULT
from tests.compiled import compiled
from tests.test_diameter_codec import _leaf, _mutations, message_bytes, raw_avp
from tests.test_diameter_harness import VECTORS, load_vector


@pytest.fixture(scope="module")
def fast():
    return compiled("diameter_codec")


def pure_walk(raw: bytes, strict: bool):
    """The pure decoder's AVPs of a whole message, or the fault it raises."""
    try:
        return codec._decode_avps(raw, HEADER_LENGTH, len(raw), strict, 0, DEFAULT, None)
    except codec._Fault as fault:
        return fault


def assert_same_walk(fast, raw: bytes) -> str:
    """Both twins on the AVPs of `raw` (strict and lenient); returns what happened."""
    outcome = "fast"
    for strict in (True, False):
        expected = pure_walk(raw, strict)
        got = fast.decode_avps(raw, HEADER_LENGTH, len(raw), strict, DEFAULT)
        if got is None:
            outcome = "handed back"
            continue
        assert not isinstance(expected, codec._Fault), \
            f"compiled accepted what the pure decoder refuses ({expected.reason}): {raw.hex()}"
        assert got == expected
        assert [type(a.value) for a in got] == [type(a.value) for a in expected]
    return outcome


def assert_same_encoding(fast, avps) -> None:
    try:
        expected = b"".join(codec.encode_avp(a, DEFAULT) for a in avps)
    except EncodeError as exc:
        with pytest.raises(EncodeError) as err:
            fast.encode_avps(avps, DEFAULT)
        assert str(err.value) == str(exc)
        return
    assert fast.encode_avps(avps, DEFAULT) == expected


def test_the_daemon_uses_the_compiled_codec(fast):
    assert codec.IMPLEMENTATION == "compiled" and codec._compiled is fast
    assert codec._make_avp is fast.make_avp


@pytest.mark.parametrize("fields", [(415, 5, 0, 0x40), (1032, "x", 10415, 0xC0),
                                    (456, (), 0, 0x40), (2**40, None, -1, "odd")])
def test_compiled_avps_are_the_dataclass_s_own(fast, fields):
    made = fast.make_avp(*fields)
    assert type(made) is Avp and made == Avp(*fields) and hash(made) == hash(Avp(*fields))
    assert (made.code, made.value, made.vendor, made.flags) == fields


@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.hex")), ids=lambda p: p.stem)
def test_vectors_decode_and_encode_the_same(fast, path):
    raw = load_vector(path.stem)
    if len(raw) < HEADER_LENGTH:
        return
    assert_same_walk(fast, raw)
    avps = pure_walk(raw, False)
    if not isinstance(avps, codec._Fault):
        assert_same_encoding(fast, avps)
        assert fast.encode_avps(avps, DEFAULT) == raw[HEADER_LENGTH:]


def test_mutated_vectors_are_decoded_the_same_or_handed_back(fast):
    rng = random.Random(8506)
    seen = {"fast": 0, "handed back": 0}
    for path in sorted(VECTORS.glob("*.hex")):
        for mutated in _mutations(load_vector(path.stem), rng, 150):
            if len(mutated) >= HEADER_LENGTH:
                seen[assert_same_walk(fast, mutated)] += 1
    assert seen["fast"] > 100 and seen["handed back"] > 100, seen


@pytest.mark.parametrize("raw", [
    message_bytes(raw_avp(99999, 0x40, b"x")),                        # unknown, M bit
    message_bytes(raw_avp(99999, 0x00, b"xyz")),                      # unknown, no M bit
    message_bytes(raw_avp(263, 0x41, b"s")),                          # reserved flag bit
    message_bytes(raw_avp(263, 0x40, b"\xff\xfe")),                   # not UTF-8
    message_bytes(raw_avp(415, 0x40, b"\0\1")),                       # Unsigned32 too short
    message_bytes(raw_avp(415, 0x40, b"\0\0\0\1", length=40)),        # overruns the message
    message_bytes(raw_avp(257, 0x40, b"\0\1\x7f\0\0\1")),             # Address
    message_bytes(raw_avp(257, 0x40, b"\0\1\x7f\0")),                 # Address too short
    message_bytes(raw_avp(55, 0x40, b"\xe8\x00\x00\x00")),            # Time
    message_bytes(raw_avp(429, 0x40, b"\0\0\0\0\0\0\0\1")),           # Unsigned64 Exponent?
    message_bytes(raw_avp(1032, 0xC0, b"\0\0\0\6", vendor=10415)),    # vendor AVP
    message_bytes(raw_avp(456, 0x40, raw_avp(99999, 0x40, b"x"))),    # fault inside a group
], ids=lambda raw: raw[20:28].hex())
def test_odd_avps_are_decoded_the_same_or_handed_back(fast, raw):
    assert_same_walk(fast, raw)


def test_nesting_deeper_than_allowed_is_handed_back(fast):
    payload = raw_avp(T.CC_TIME, 0x40, b"\0\0\0\1")
    for _ in range(codec.MAX_DEPTH + 1):
        payload = raw_avp(456, 0x40, payload)
    raw = message_bytes(payload)
    for strict in (True, False):
        assert fast.decode_avps(raw, HEADER_LENGTH, len(raw), strict, DEFAULT) is None
    assert isinstance(pure_walk(raw, True), codec._Fault)  # 5004 in a request
    assert isinstance(pure_walk(raw, False), tuple)         # kept raw in an answer


@pytest.mark.parametrize("avps", [
    [avp(T.CC_REQUEST_NUMBER, 2**32)],                      # Unsigned32 out of range
    [avp(T.CC_REQUEST_NUMBER, -1)],
    [avp(T.EXPONENT, 2**31)],                               # Integer32 out of range
    [avp(T.CC_TOTAL_OCTETS, 2**64)],                        # Unsigned64 out of range
    [avp(T.SESSION_ID, "bad \udc80 surrogate")],             # not encodable as UTF-8
    [avp(T.MULTIPLE_SERVICES_CREDIT_CONTROL, (avp(T.RATING_GROUP, "ten"),))],
    [avp(T.CC_REQUEST_NUMBER, True)],                       # a bool is encoded as an int
    [avp(T.HOST_IP_ADDRESS, "192.0.2.1"), avp(T.HOST_IP_ADDRESS, "2001:db8::1")],
    [avp(T.EVENT_TIMESTAMP, 1_700_000_000_000_000)],
    [avp(T.SESSION_ID, b"raw octets"), avp(T.CLASS, bytearray(b"ba"))],
    [avp(T.CLASS, "text as octets"), avp(T.FAILED_AVP, (b"\0\0\1\7\0\0\0\x08",))],
    [Avp(99999, b"unknown", 0, 0), Avp(99999, (avp(T.CC_TIME, 1),), 0, 0x40),
     Avp(99999, [avp(T.CC_TIME, 1)], 7, 0x40)],
    [Avp(T.RATING_GROUP, 1, 10415, 0xFF)],                  # vendor, all flag bits asked for
    [Avp(2**32, 1)],                                        # code out of range
    [b"\0\0\1\7\0\0\0\x0cabcd"],                            # pre-encoded
    [avp(T.MULTIPLE_SERVICES_CREDIT_CONTROL, [avp(T.RATING_GROUP, 10)])],
])
def test_encoding_is_the_same_bytes_or_the_same_error(fast, avps):
    try:
        assert_same_encoding(fast, avps)
    except Exception as exc:  # noqa: BLE001 - the pure encoder's own non-EncodeError
        with pytest.raises(type(exc)):
            fast.encode_avps(avps, DEFAULT)


_groups = (T.MULTIPLE_SERVICES_CREDIT_CONTROL, T.USED_SERVICE_UNIT, T.SUBSCRIPTION_ID)
_tree = st.recursive(_leaf | st.builds(
    lambda code, flags, value: Avp(code, value, 0, flags),
    st.integers(1, 2**32 - 1), st.integers(0, 255), st.binary(max_size=12)),
    lambda children: st.tuples(st.sampled_from(_groups), st.lists(children, max_size=4)).map(
        lambda t: avp(t[0], tuple(t[1]))), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tree, max_size=8), st.booleans())
def test_random_messages_encode_and_decode_the_same(fast, avps, is_request):
    assert_same_encoding(fast, avps)
    body = b"".join(codec.encode_avp(a, DEFAULT) for a in avps)
    raw = codec.encode(Message(272, (FLAG_REQUEST if is_request else 0) | 0x40, 4, 1, 2,
                               tuple(avps)))
    assert raw[HEADER_LENGTH:] == body
    assert_same_walk(fast, raw)
