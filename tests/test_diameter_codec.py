"""The Diameter codec, dictionary and framer on their own: types, errors, fuzzing.

What a peer would notice is the Result-Code and Failed-AVP it gets back for a
bad AVP, and that nothing it sends can make the decoder raise anything but
its own `DecodeError`.
"""

from __future__ import annotations

import ipaddress
import random
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diameter import tables as T
from diameter.codec import (FLAG_REQUEST, MAX_DEPTH, Avp, AvpError, DecodeError, FramingError,
                            Message, avp, decode, decode_time, encode, encode_avp, encode_time,
                            set_retransmit, to_tree, with_hop_by_hop)
from diameter.dictionary import DEFAULT, TYPE_IDS
from diameter.framing import Framer
from diameter.tools import gen_dictionary
from tests.test_diameter_harness import VECTORS, load_vector

ROOT = Path(__file__).resolve().parent.parent


def request(*avps, code=T.CMD_CREDIT_CONTROL, app=4, flags=FLAG_REQUEST | 0x40) -> Message:
    return Message(code, flags, app, 0x1234, 0x5678, tuple(avps))


def raw_avp(code: int, flags: int, payload: bytes, vendor: int | None = None,
            length: int | None = None) -> bytes:
    head = 12 if vendor is not None else 8
    n = head + len(payload) if length is None else length
    out = struct.pack(">II", code, (flags << 24) | n)
    if vendor is not None:
        out += struct.pack(">I", vendor)
    out += payload
    return out + b"\0" * (-len(out) % 4)


def message_bytes(*raw_avps: bytes, flags: int = FLAG_REQUEST | 0x40) -> bytes:
    body = b"".join(raw_avps)
    return struct.pack(">IIIII", (1 << 24) | (20 + len(body)), (flags << 24) | 272, 4, 1, 2) + body


# ---------------------------------------------------------------------- the dictionary
def test_generated_tables_match_their_source():
    r = subprocess.run([sys.executable, "-m", "diameter.tools.gen_dictionary", "--check"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    header = (ROOT / "diameter" / "tables.py").read_text().splitlines()[:4]
    assert any("diameter/tools/gen_dictionary.py" in line for line in header)


def test_generator_rejects_an_inconsistent_source():
    with pytest.raises(gen_dictionary.SourceError, match="duplicate AVP name or code"):
        gen_dictionary.parse("vendor 0 IETF\navp A 1 Unsigned32 M\navp B 1 OctetString M\n")
    with pytest.raises(gen_dictionary.SourceError, match="unknown type"):
        gen_dictionary.parse("avp A 1 Unsigned31 M\n")
    with pytest.raises(gen_dictionary.SourceError, match="not a defined Enumerated"):
        gen_dictionary.parse("avp A 1 Unsigned32 M\nenum A 1 X\n")


def _wireshark_avps() -> dict[tuple[int, int], tuple[str, str]]:
    """(code, vendor id) -> (name, type) from Wireshark's own dictionary files."""
    directory = Path("/usr/share/wireshark/diameter")
    assert directory.is_dir(), "Wireshark's Diameter dictionary is missing (apt-get install tshark)"
    vendors = {"None": 0}
    roots = []
    for path in sorted(directory.glob("*.xml")):
        text = path.read_text(encoding="utf-8", errors="replace")
        text = re.sub(r"<!DOCTYPE.*?\]>", "", text, flags=re.S)
        text = re.sub(r"<\?[^>]*\?>", "", text)
        text = re.sub(r"&\w+;", "", text)
        root = ET.fromstring(f"<r>{text}</r>")
        roots.append(root)
        for v in root.iter("vendor"):
            vendors[v.get("vendor-id")] = int(v.get("code"))
    out = {}
    for root in roots:
        for a in root.iter("avp"):
            vendor = vendors.get(a.get("vendor-id") or "None")
            if vendor is None:
                continue
            t = a.find("type")
            typ = "Grouped" if a.find("grouped") is not None else (
                t.get("type-name") if t is not None else "?")
            out[(int(a.get("code")), vendor)] = (a.get("name"), typ)
    return out


#: Type names that differ between Wireshark's display choices and the specs.
_SAME_TYPE = {("Address", "IPAddress"), ("Unsigned32", "AppId"), ("Unsigned32", "VendorId"),
              ("Unsigned32", "Enumerated"),   # Result-Code etc.: Wireshark shows names
              ("Integer32", "Enumerated"),    # Cause-Code
              ("Unsigned32", "Integer32"),    # Authorization-Lifetime (RFC 6733: Unsigned32)
              ("OctetString", "OctetStringOrUTF8"), ("OctetString", "UTF8String"),
              ("OctetString", "IPAddress")}   # 3GPP-*-Address: raw octets, kept lenient


def test_dictionary_agrees_with_wireshark():
    """Every AVP we define that Wireshark also knows has the same code, vendor and a
    compatible type: an independent check of the transcription of the spec tables."""
    theirs = _wireshark_avps()
    compared, mismatches = 0, []
    for d in DEFAULT.by_name.values():
        entry = theirs.get((d.code, d.vendor))
        if entry is None:
            continue
        compared += 1
        _, typ = entry
        if typ != d.type and (d.type, typ) not in _SAME_TYPE:
            mismatches.append((d.name, d.code, d.vendor, d.type, typ))
    assert mismatches == []
    assert compared >= 200  # nearly all of them: only RFC 8506 additions are unknown to it


# ---------------------------------------------------------------------- types
@pytest.mark.parametrize("key,value", [
    (T.CC_REQUEST_NUMBER, 0), (T.CC_REQUEST_NUMBER, 0xFFFFFFFF),
    (T.CC_TOTAL_OCTETS, 0), (T.CC_TOTAL_OCTETS, 2**64 - 1),
    (T.EXPONENT, -3), (T.EXPONENT, 2**31 - 1), (T.VALUE_DIGITS, -(2**63)),
    (T.CC_REQUEST_TYPE, 4), (T.CAUSE_CODE, -1),
    (T.SESSION_ID, "grüezi;1;ü"), (T.ORIGIN_HOST, "pgw.example.net"),
    (T.REDIRECT_HOST, "aaa://host.example.com:3868;transport=tcp"),
    (T.RESTRICTION_FILTER_RULE, "permit out ip from any to 10.0.0.1"),
    (T.CLASS, b"\x00\xff\x10"), (T.CLASS, b""),
    (T.HOST_IP_ADDRESS, ipaddress.ip_address("192.0.2.1")),
    (T.HOST_IP_ADDRESS, ipaddress.ip_address("2001:db8::1")),
    (T.HOST_IP_ADDRESS, (8, b"\x01\x02\x03")),      # E.164 family, kept raw
    (T.EVENT_TIMESTAMP, 1_700_000_000_000_000),
    (T.EVENT_TIMESTAMP, 2_200_000_000_000_000),     # after the 2036 NTP rollover
])
def test_values_round_trip_through_their_types(key, value):
    a = avp(key, value)
    back = decode(encode(request(a))).avps[0]
    assert back.value == value and back.key == key and back.flags == a.flags


def test_time_uses_the_ntp_epoch_and_survives_2036():
    assert encode_time(0) == struct.pack(">I", 2_208_988_800)
    assert decode_time(struct.pack(">I", 2_208_988_800)) == 0
    after = 2_100_000_000 * 1_000_000  # 2036-07-18: NTP seconds have wrapped (MSB clear)
    assert not encode_time(after)[0] & 0x80
    assert decode_time(encode_time(after)) == after


def test_float_types_round_trip():
    """No AVP we use is a float, but the codec speaks every basic type (RFC 6733 4.2)."""
    from diameter.dictionary import Dictionary
    d = Dictionary([("F32", 9001, 0, "Float32", True), ("F64", 9002, 0, "Float64", True)],
                   {}, {}, {}, {}, {})
    msg = request(avp(9001, 1.5, d), avp(9002, -2.25e300, d))
    back = decode(encode(msg, d), d)
    assert [a.value for a in back.avps] == [1.5, -2.25e300]
    assert len(encode(msg, d)) == 20 + 12 + 16


def test_grouped_and_vendor_flags():
    avps = DEFAULT.by_name
    assert TYPE_IDS["Grouped"] == DEFAULT.types[T.MULTIPLE_SERVICES_CREDIT_CONTROL]
    mscc = avp(T.MULTIPLE_SERVICES_CREDIT_CONTROL, (
        avp(T.RATING_GROUP, 10), avp(T.VOLUME_QUOTA_THRESHOLD, 5),
        avp(T.GRANTED_SERVICE_UNIT, ())))
    raw = encode_avp(mscc)
    # Volume-Quota-Threshold: V and M set, vendor 10415 after the header.
    assert raw.find(bytes.fromhex("00000365c0000010000028af00000005")) > 0
    back = decode(encode(request(mscc))).avps[0]
    assert to_tree([back]) == [("Multiple-Services-Credit-Control", [
        ("Rating-Group", 10), ("Volume-Quota-Threshold", 5), ("Granted-Service-Unit", [])])]
    assert avps["Volume-Quota-Threshold"].flags == 0xC0


def test_padding_is_added_and_skipped():
    raw = encode(request(avp(T.SESSION_ID, "a"), avp(T.ORIGIN_HOST, "b")))
    assert len(raw) == 20 + 12 + 12
    assert decode(raw).value(T.ORIGIN_HOST) == "b"


def test_identifier_patching_for_cached_answers_and_retransmissions():
    raw = encode(request(avp(T.SESSION_ID, "s")))
    patched = with_hop_by_hop(raw, 0xCAFEBABE)
    assert decode(patched).hop_by_hop == 0xCAFEBABE and decode(patched).end_to_end == 0x5678
    assert decode(set_retransmit(raw)).retransmit and not decode(raw).retransmit


# ---------------------------------------------------------------------- validation errors
def _fault(raw: bytes) -> AvpError:
    with pytest.raises(AvpError) as err:
        decode(raw)
    return err.value


def test_unknown_avp_with_m_bit_is_5001_with_that_avp():
    unknown = raw_avp(99999, 0x40, b"abcd")
    e = _fault(message_bytes(raw_avp(263, 0x40, b"sess"), unknown))
    assert e.result_code == 5001 and e.failed_avp == unknown
    assert [a.value for a in e.avps] == ["sess"]  # the Session-Id for the answer


def test_unknown_avp_without_m_bit_is_kept_raw():
    msg = decode(message_bytes(raw_avp(99999, 0x00, b"abcd"),
                               raw_avp(7, 0x80, b"xy", vendor=424242)))
    assert msg.avps[0].value == b"abcd"
    assert (msg.avps[1].vendor, msg.avps[1].value) == (424242, b"xy")
    assert decode(encode(msg)) == msg


def test_unknown_m_bit_avp_inside_a_group_is_reported_inside_the_group():
    inner = raw_avp(4242, 0xC0, b"zz", vendor=10415)
    group = raw_avp(456, 0x40, raw_avp(432, 0x40, b"\0\0\0\x0a") + inner)
    e = _fault(message_bytes(group))
    assert e.result_code == 5001
    # Failed-AVP: the MSCC holding only the offending AVP (RFC 6733 7.5).
    assert e.failed_avp == raw_avp(456, 0x40, inner)


def test_wrong_size_for_the_type_is_5014_with_a_zero_payload():
    e = _fault(message_bytes(raw_avp(415, 0x40, b"\0\0\1")))  # Unsigned32 of 3 octets
    assert e.result_code == 5014 and e.failed_avp == raw_avp(415, 0x40, b"\0\0\0\0")
    e = _fault(message_bytes(raw_avp(421, 0x40, b"\0" * 4)))   # Unsigned64 of 4 octets
    assert e.result_code == 5014 and e.failed_avp == raw_avp(421, 0x40, b"\0" * 8)
    e = _fault(message_bytes(raw_avp(257, 0x40, b"\0\1\1\2\3")))  # IPv4 of 3 octets
    assert e.result_code == 5014


@pytest.mark.parametrize("length", [0, 7, 20, 400])
def test_avp_length_inconsistent_with_the_message_is_5014(length):
    body = raw_avp(263, 0x40, b"abcdefgh", length=length)
    e = _fault(message_bytes(raw_avp(264, 0x40, b"host"), body))
    assert e.result_code == 5014
    assert e.failed_avp[:4] == struct.pack(">I", 263)
    assert [a.code for a in e.avps] == [264]


def test_a_truncated_avp_header_is_5014():
    raw = message_bytes(raw_avp(264, 0x40, b"host")) + b"\0\0\1\x07"  # 4 stray octets
    raw = struct.pack(">I", (1 << 24) | len(raw)) + raw[4:]
    assert _fault(raw).result_code == 5014


def test_text_that_is_not_utf8_is_5004():
    bad = raw_avp(263, 0x40, b"\xff\xfe")
    e = _fault(message_bytes(bad))
    assert e.result_code == 5004 and e.failed_avp == bad


def test_reserved_avp_flag_bits_are_3009():
    bad = raw_avp(263, 0x41, b"sess")
    e = _fault(message_bytes(bad))
    assert e.result_code == 3009 and e.failed_avp == bad


def test_groups_nested_too_deep_are_5004():
    payload = raw_avp(432, 0x40, b"\0\0\0\1")
    for _ in range(MAX_DEPTH + 2):
        payload = raw_avp(456, 0x40, payload)
    e = _fault(message_bytes(payload))
    assert e.result_code == 5004


def test_a_fault_deep_in_nested_groups_is_decoded_once(monkeypatch):
    """A bad AVP at the bottom of nested groups costs one pass, not one per level
    (re-decoding each level would be exponential: a denial of service). The pure
    decoder's passes are counted; the compiled walk hands such a message to it
    (test_diameter_codec_twins), so it is measured on its own here."""
    import diameter.codec as codec
    monkeypatch.setattr(codec, "_compiled", None)
    calls = []
    real = codec._decode_avps

    def counting(*args):
        calls.append(args[4])
        return real(*args)
    monkeypatch.setattr(codec, "_decode_avps", counting)
    payload = raw_avp(99999, 0x40, b"x")
    for _ in range(MAX_DEPTH - 1):
        payload = raw_avp(456, 0x40, payload)
    e = _fault(message_bytes(payload))
    assert e.result_code == 5001 and len(calls) == MAX_DEPTH
    calls.clear()
    decode(message_bytes(payload, flags=0x40))  # an answer: lenient, still one pass
    assert len(calls) == MAX_DEPTH


def test_answers_are_decoded_leniently():
    """An answer cannot be refused: bad values stay raw bytes instead of raising."""
    raw = message_bytes(raw_avp(268, 0x40, b"\0\0\x07\xd1"), raw_avp(415, 0x40, b"\0\1"),
                        raw_avp(99999, 0x40, b"??"), flags=0x40)
    msg = decode(raw)
    assert msg.value(T.RESULT_CODE) == 2001
    assert msg.value(T.CC_REQUEST_NUMBER) == b"\0\1"
    assert msg.avps[2].value == b"??"


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b"\x02" + b[1:], "version 2"),
    (lambda b: b[:1] + (19).to_bytes(3, "big") + b[4:], "at least 20"),
    (lambda b: b[:1] + (len(b) + 2).to_bytes(3, "big") + b[4:], "multiple of 4"),
    (lambda b: b[:1] + (len(b) + 4).to_bytes(3, "big") + b[4:], "header says"),
    (lambda b: b[:12], "cannot hold"),
])
def test_unusable_headers_are_framing_errors(mutate, reason):
    raw = encode(request(avp(T.SESSION_ID, "s")))
    with pytest.raises(FramingError, match=reason.split()[0]):
        decode(mutate(raw))


def test_messages_over_the_limit_are_framing_errors():
    raw = encode(request(avp(T.CLASS, b"x" * 5000)))
    with pytest.raises(FramingError, match="exceeds the limit"):
        decode(raw, max_length=4096)


# ---------------------------------------------------------------------- framing
def test_framer_reassembles_byte_by_byte_and_splits_batches():
    a = load_vector("ccr_initial")
    b = load_vector("dwr_client")
    f = Framer()
    got = []
    for i in range(len(a)):
        got += f.feed(a[i:i + 1])
    assert got == [a] and f.pending == 0
    assert f.feed(b + a + b[:7]) == [b, a]
    assert f.pending == 7
    assert f.feed(b[7:]) == [b]


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00\x00\x10" + b"\0" * 12,
                                     b"\x01\xff\xff\xff" + b"\0" * 16])
def test_framer_refuses_what_is_not_diameter(garbage):
    f = Framer(max_length=65536)
    with pytest.raises(FramingError):
        f.feed(garbage)
    assert f.broken
    with pytest.raises(FramingError):
        f.feed(load_vector("dwr_client"))


# ---------------------------------------------------------------------- properties and fuzz
_leaf = st.sampled_from([
    # Text without NUL: a NUL in text is refused (test_a_nul_in_text_is_refused).
    (T.SESSION_ID, st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                           max_size=40)),
    (T.CC_REQUEST_NUMBER, st.integers(0, 2**32 - 1)),
    (T.CC_TOTAL_OCTETS, st.integers(0, 2**64 - 1)), (T.EXPONENT, st.integers(-2**31, 2**31 - 1)),
    (T.CLASS, st.binary(max_size=30)), (T.CC_TIME, st.integers(0, 2**32 - 1)),
    (T.VOLUME_QUOTA_THRESHOLD, st.integers(0, 2**32 - 1)),
    (T.EVENT_TIMESTAMP,  # the 32-bit NTP Time spans 1968-2104
     st.integers(-61_505_152, 4_233_462_143).map(lambda s: s * 1_000_000)),
]).flatmap(lambda kv: kv[1].map(lambda v: avp(kv[0], v)))
_groups = (T.MULTIPLE_SERVICES_CREDIT_CONTROL, T.USED_SERVICE_UNIT, T.SERVICE_INFORMATION)
_tree = st.recursive(_leaf, lambda children: st.tuples(
    st.sampled_from(_groups), st.lists(children, max_size=4)).map(
        lambda t: avp(t[0], tuple(t[1]))), max_leaves=20)


def _normal(a: Avp):
    """Time decodes to whole seconds; compare trees on that footing."""
    if isinstance(a.value, tuple):
        return (a.key, tuple(_normal(c) for c in a.value))
    return (a.key, a.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tree, max_size=8), st.integers(0, 2**32 - 1), st.booleans())
def test_any_message_round_trips(avps, hbh, is_request):
    msg = Message(272, (FLAG_REQUEST if is_request else 0) | 0x40, 4, hbh, hbh ^ 0xFFFF,
                  tuple(avps))
    raw = encode(msg)
    back = decode(raw)
    assert [_normal(a) for a in back.avps] == [_normal(a) for a in msg.avps]
    assert encode(back) == raw


def test_a_nul_in_text_is_refused():
    """No identity or name needs a NUL, and PostgreSQL stores none: text holding one
    is 5004 with the AVP as Failed-AVP, at any depth, as text that is not UTF-8 is;
    in an answer (lenient) it is kept as octets."""
    for avps in ([avp(T.SESSION_ID, "pgw;1\x00")],
                 [avp(T.SESSION_ID, "pgw;1"), avp(T.SUBSCRIPTION_ID, (
                     avp(T.SUBSCRIPTION_ID_TYPE, 0), avp(T.SUBSCRIPTION_ID_DATA, "4179\x00")))]):
        raw = encode(Message(272, FLAG_REQUEST | 0x40, 4, 1, 2, tuple(avps)))
        with pytest.raises(AvpError) as caught:
            decode(raw)
        assert caught.value.result_code == 5004 and "holds a NUL character" in str(caught.value)
        assert b"\x00" in caught.value.failed_avp
        answer = decode(encode(Message(272, 0x40, 4, 1, 2, tuple(avps))), strict=False)
        assert b"\x00" in encode(answer)


def _mutations(raw: bytes, rng: random.Random, n: int):
    for _ in range(n):
        b = bytearray(raw)
        op = rng.randrange(5)
        if op == 0:      # flip bits
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:    # random bytes at random places
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:    # truncate (fixing the header length half the time)
            b = b[:rng.randrange(1, len(b))]
            if rng.random() < 0.5 and len(b) >= 4:
                b[1:4] = len(b).to_bytes(3, "big")
        elif op == 3:    # insert junk, fix the length
            i = rng.randrange(20, len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 8, 12))))
            b[1:4] = len(b).to_bytes(3, "big")
        else:            # damage an AVP length field (offsets of AVP headers are 4-aligned)
            i = 20 + 4 * rng.randrange(max(1, (len(b) - 24) // 4)) + 5
            if i + 2 < len(b):
                b[i:i + 3] = rng.randrange(1 << 24).to_bytes(3, "big")
        yield bytes(b)


def test_fuzzed_vectors_raise_nothing_but_decode_errors():
    """Thousands of mutations of every vector: decoding either succeeds (and then
    re-encodes) or raises the codec's own DecodeError, never anything else."""
    rng = random.Random(6733)
    outcomes = {"ok": 0, "avp": 0, "framing": 0}
    for path in sorted(VECTORS.glob("*.hex")):
        raw = load_vector(path.stem)
        for mutated in _mutations(raw, rng, 150):
            try:
                msg = decode(mutated)
            except AvpError as exc:
                assert isinstance(exc.result_code, int) and isinstance(exc.failed_avp, bytes)
                outcomes["avp"] += 1
            except FramingError:
                outcomes["framing"] += 1
            except DecodeError as exc:  # pragma: no cover - no other kind exists today
                pytest.fail(f"unexpected DecodeError kind: {exc!r}")
            else:
                encode(msg)
                outcomes["ok"] += 1
    assert all(outcomes.values()), outcomes  # each path was exercised
