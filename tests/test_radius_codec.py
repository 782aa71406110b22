"""The RADIUS codec: byte vectors from the RFCs and from radclient, hiding and
authenticators, malformed input, and the compiled decoder against its
pure-Python twin (differential and mutation fuzzing)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from radius import codec, wire
from radius.accounting import content_crc
from radius.codec import A, Code, DecodeError, vsa
from radius.dictionary import Dictionary
from radius import mschap

VECTORS = Path(__file__).parent / "vectors" / "radius"
SECRET = b"testing123"

try:
    from cext import radius_codec as compiled
    COMPILED = compiled.__file__.endswith(".so")
except ImportError:  # pragma: no cover - the build always makes it here
    compiled, COMPILED = None, False


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


# ---------------------------------------------------------------- vectors
def test_rfc2865_example_decodes_and_verifies():
    v = load("rfc2865.json")
    req = codec.decode(bytes.fromhex(v["access_request"]))
    assert req.code == Code.ACCESS_REQUEST and req.identifier == 0
    assert req.get_str(A.USER_NAME) == "nemo"
    assert req.get_int(A.NAS_PORT) == 3
    secret = v["secret"].encode()
    assert codec.unhide_password(req.get(A.USER_PASSWORD), secret, req.authenticator) \
        == v["password"].encode()
    accept = codec.decode(bytes.fromhex(v["access_accept"]))
    assert codec.reply_authenticator_ok(accept, secret, req.authenticator)
    assert not codec.reply_authenticator_ok(accept, b"wrong", req.authenticator)
    # Re-encoding the same reply attributes gives the RFC's bytes exactly.
    again = codec.encode_reply(req, Code.ACCESS_ACCEPT, list(accept.attributes), secret,
                               message_authenticator=False)
    assert again.hex() == v["access_accept"]


@pytest.mark.parametrize("name", sorted(load("radclient.json")))
def test_radclient_packets_decode_and_verify(name):
    v = load("radclient.json")[name]
    data = bytes.fromhex(v["hex"])
    p = codec.decode(data)
    assert p.raw == data
    if p.code in codec.SIGNED_REQUESTS:
        assert codec.request_authenticator_ok(p, SECRET)
        assert not codec.request_authenticator_ok(p, b"testing124")
    if "Message-Authenticator" in v["radclient_input"]:
        assert p.has_message_authenticator
        assert codec.message_authenticator_ok(p, SECRET)
        assert not codec.message_authenticator_ok(p, b"testing124")
    if COMPILED:
        assert compiled.decode(data) == wire.decode(data)


def test_radclient_vendor_and_tagged_attributes():
    d = Dictionary()
    v = load("radclient.json")
    fs = codec.decode(bytes.fromhex(v["accounting_freeswitch_stop"]["hex"]))
    named = d.named(fs.attributes)
    assert named["Freeswitch-Dst"] == "4420123456"
    assert named["Freeswitch-Hangupcause"] == 16
    assert named["Acct-Status-Type"] == "Stop"
    assert fs.get_int(vsa(27880, 15)) == 125_000_000
    tun = codec.decode(bytes.fromhex(v["accounting_tunnel_tagged"]["hex"]))
    assert codec.untag_int(tun.get(A.TUNNEL_TYPE)) == (1, 3)
    assert d.named(tun.attributes)["Tunnel-Type"] == "L2TP"
    gw = codec.decode(bytes.fromhex(v["accounting_interim_gigawords"]["hex"]))
    assert gw.get_int(A.ACCT_INPUT_GIGAWORDS) == 1 and gw.get_int(A.ACCT_OUTPUT_OCTETS) == 2000


def _freeradius_loads(directory: Path) -> str:
    """What FreeRADIUS's dictionary parser says of `directory`/dictionary: radclient
    reads it at start, then, given nothing to send, says only that."""
    proc = subprocess.run(["radclient", "-D", str(directory), "127.0.0.1:9", "status",
                           "testing123"], input="", capture_output=True, text=True, timeout=10)
    said = (proc.stdout + proc.stderr).strip()
    return "" if said == "radclient: Nothing to send" else said


def test_freeradius_reads_the_shipped_dictionaries(tmp_path):
    """An operator can point FreeRADIUS's tools at conf/dictionaries, and copy a vendor
    file into FreeRADIUS: FreeRADIUS's own parser accepts them, and beside its
    dictionaries every attribute name keeps its number (the parser refuses a name
    defined twice with different numbers; ERX's interface filters once were)."""
    shipped = Path(__file__).parent.parent / "conf" / "dictionaries"
    assert _freeradius_loads(shipped) == ""
    for vendor_file in sorted(shipped.glob("dictionary.*")):
        if vendor_file.name == "dictionary.rfc":  # FreeRADIUS has its own
            continue
        # Attributes only: value names differ where FreeRADIUS's do not follow the
        # RFC (its MS-MPPE-Encryption-Types says 1 and 2 where RFC 2548 says 2 and 4).
        attributes = tmp_path / vendor_file.name
        attributes.write_text("".join(line for line in vendor_file.open()
                                      if not line.startswith("VALUE")))
        (tmp_path / "dictionary").write_text(
            f"$INCLUDE /usr/share/freeradius/dictionary\n$INCLUDE {attributes}\n")
        assert _freeradius_loads(tmp_path) == "", vendor_file.name
    # The test can fail: a name FreeRADIUS knows, at another number.
    (tmp_path / "dictionary.wrong").write_text(
        "VENDOR ERX 4874\nBEGIN-VENDOR ERX\n"
        "ATTRIBUTE ERX-Input-Interface-Filter 89 string\nEND-VENDOR ERX\n")
    (tmp_path / "dictionary").write_text(
        f"$INCLUDE /usr/share/freeradius/dictionary\n$INCLUDE {tmp_path}/dictionary.wrong\n")
    assert "Duplicate attribute name ERX-Input-Interface-Filter" in _freeradius_loads(tmp_path)


def test_mschapv2_rfc2759_and_rfc3079_vectors():
    v = load("mschapv2.json")
    ac, pc = bytes.fromhex(v["authenticator_challenge"]), bytes.fromhex(v["peer_challenge"])
    user = v["username"].encode()
    nt = mschap.nt_hash_of(v["password"])
    assert nt.hex() == v["password_hash"]
    assert mschap.challenge_hash(pc, ac, user).hex() == v["challenge_hash"]
    resp = mschap.nt_response(ac, pc, user, nt)
    assert resp.hex() == v["nt_response"]
    assert mschap.authenticator_response(nt, resp, pc, ac, user).decode() \
        == v["authenticator_response"]
    assert mschap.master_key(nt, resp).hex() == v["master_key"]
    send, recv = mschap.server_mppe_keys(nt, resp)
    # The server receives with what the client sends with.
    assert recv.hex() == v["client_send_start_key_128"]
    assert send != recv and len(send) == 16
    response = bytes([7, 0]) + pc + bytes(8) + resp
    ok = mschap.verify_mschap2(auth_challenge=ac, response=response, username=user, nt_hash=nt)
    assert ok.ok and ok.success == b"\x07" + v["authenticator_response"].encode()
    bad = mschap.verify_mschap2(auth_challenge=ac, response=response, username=user,
                                nt_hash=mschap.nt_hash_of("other"))
    assert not bad.ok and bad.success == b""


def test_mschap_v1_response_as_radclient_computes_it():
    """An MS-CHAP-Challenge / MS-CHAP-Response pair radclient 3.2 sent for password
    "secretpw" (captured from the wire): it verifies; the same response flagged as
    LAN Manager only, another password, or a cut response do not."""
    challenge = bytes.fromhex("8b6d91c2dc94a49b")
    response = bytes.fromhex("0001" + "00" * 24
                             + "e13617744ac30c3111a4aaa0894189427327ef92b9500171")
    nt = mschap.nt_hash_of("secretpw")
    assert mschap.verify_mschap1(challenge=challenge, response=response, nt_hash=nt)
    assert mschap.client_response_v1(challenge=challenge, password="secretpw",
                                     ident=0) == response
    lm_only = response[:1] + b"\x00" + response[2:]
    assert not mschap.verify_mschap1(challenge=challenge, response=lm_only, nt_hash=nt)
    assert not mschap.verify_mschap1(challenge=challenge, response=response,
                                     nt_hash=mschap.nt_hash_of("other"))
    assert not mschap.verify_mschap1(challenge=challenge, response=response[:49], nt_hash=nt)
    assert not mschap.verify_mschap1(challenge=challenge + b"\x00", response=response,
                                     nt_hash=nt)


def test_des_known_answer():
    assert mschap.des_encrypt(bytes.fromhex("133457799BBCDFF1"),
                              bytes.fromhex("0123456789ABCDEF")).hex() == "85e813540f0ab405"


# ---------------------------------------------------------------- hiding and signing
@given(st.binary(min_size=0, max_size=128).map(lambda b: b.rstrip(b"\x00")),
       st.binary(min_size=1, max_size=40), st.binary(min_size=16, max_size=16))
def test_user_password_round_trip(password, secret, auth):
    hidden = codec.hide_password(password, secret, auth)
    assert len(hidden) % 16 == 0 and 16 <= len(hidden) <= 128
    assert codec.unhide_password(hidden, secret, auth) == password


@given(st.binary(min_size=0, max_size=200), st.binary(min_size=1, max_size=40),
       st.binary(min_size=16, max_size=16), st.one_of(st.none(), st.integers(0, 31)))
def test_salt_encryption_round_trip(plain, secret, auth, tag):
    enc = codec.salt_encrypt(plain, secret, auth, tag=tag)
    assert (enc[1] if tag is not None else enc[0]) & 0x80  # salt high bit (RFC 2868 §3.5)
    assert codec.salt_decrypt(enc, secret, auth, tagged_=tag is not None) == plain


@given(st.binary(min_size=0, max_size=128), st.binary(min_size=1, max_size=40),
       st.binary(min_size=16, max_size=16))
def test_user_password_hiding_is_rfc2865_octet_for_octet(password, secret, auth):
    """The hidden form is c(i) = p(i) XOR MD5(S + c(i-1)), c(0) = the Authenticator."""
    padded = password + b"\x00" * (-len(password) % 16 or (16 if not password else 0))
    want, last = b"", auth
    for i in range(0, len(padded), 16):
        key = hashlib.md5(secret + last).digest()
        last = bytes(a ^ b for a, b in zip(padded[i:i + 16], key))
        want += last
    assert codec.hide_password(password, secret, auth) == want


@given(st.binary(min_size=0, max_size=100), st.binary(min_size=0, max_size=300))
def test_hmac_md5_is_rfc2104(secret, message):
    assert codec.hmac_md5(secret, message) == hmac.new(secret, message, hashlib.md5).digest()
    assert codec.hmac_md5(secret, bytearray(message)) == codec.hmac_md5(secret, message)


def test_first_value_of_a_repeated_attribute():
    data = codec.encode_request(Code.ACCESS_REQUEST, 1, [(A.CLASS, b"one"), (A.USER_NAME, b"u"),
                                                         (A.CLASS, b"two")], SECRET)
    p = codec.decode(data)
    assert p.get(A.CLASS) == b"one" and p.get_all(A.CLASS) == [b"one", b"two"]
    assert A.USER_NAME in p and A.STATE not in p and p.get(A.STATE, b"-") == b"-"
    built = codec.Packet(p.code, p.identifier, p.authenticator, p.attributes, p.raw)
    assert built.first == p.first and built == p


def test_reply_puts_message_authenticator_first_and_copies_proxy_state():
    req_bytes = codec.encode_request(Code.ACCESS_REQUEST, 9,
                                     [(A.USER_NAME, b"u"), (A.PROXY_STATE, b"ps1")], SECRET,
                                     message_authenticator=True)
    req = codec.decode(req_bytes)
    assert codec.message_authenticator_ok(req, SECRET)
    reply = codec.decode(codec.encode_reply(req, Code.ACCESS_ACCEPT,
                                            [(A.SESSION_TIMEOUT, codec.u32(60))], SECRET))
    assert reply.attributes[0][0] == A.MESSAGE_AUTHENTICATOR
    assert reply.get(A.PROXY_STATE) == b"ps1"
    assert codec.reply_authenticator_ok(reply, SECRET, req.authenticator)
    assert codec.message_authenticator_ok(reply, SECRET, req.authenticator)
    assert not codec.message_authenticator_ok(reply, SECRET, bytes(16))


def test_a_reply_the_proxy_states_leave_no_room_for():
    """The Proxy-States of a request come back whole; Reply-Message gives way to them,
    and a reply that still does not fit is refused with PacketTooLong."""
    states = [(A.PROXY_STATE, bytes([i]) * 253) for i in range(15)] + [(A.PROXY_STATE, b"z" * 200)]
    req = codec.decode(codec.encode_request(Code.ACCESS_REQUEST, 7, [(A.USER_NAME, b"u")] + states,
                                            SECRET, message_authenticator=True))
    text = (A.REPLY_MESSAGE, b"Unknown subscriber, please call the help desk")
    reply = codec.decode(codec.encode_reply(req, Code.ACCESS_REJECT, [text], SECRET))
    assert [v for k, v in reply.attributes if k == A.PROXY_STATE] == [v for _, v in states]
    assert A.REPLY_MESSAGE not in reply and len(reply.raw) <= codec.MAX_PACKET
    assert codec.reply_authenticator_ok(reply, SECRET, req.authenticator)
    # With room, the text stays.
    small = codec.decode(codec.encode_request(Code.ACCESS_REQUEST, 8, [(A.USER_NAME, b"u")]
                                              + states[:2], SECRET))
    assert codec.decode(codec.encode_reply(small, Code.ACCESS_REJECT, [text],
                                           SECRET)).get(A.REPLY_MESSAGE) == text[1]
    with pytest.raises(codec.PacketTooLong):
        codec.encode_reply(req, Code.ACCESS_ACCEPT, [(A.CLASS, b"c" * 200), text], SECRET)
    # Without Message-Authenticator its 18 octets are room for the text.
    exact = (A.REPLY_MESSAGE, b"x" * (codec.MAX_PACKET - 20 - 4027 - 2))
    bare = codec.decode(codec.encode_reply(req, Code.ACCESS_REJECT, [exact], SECRET,
                                           message_authenticator=False))
    assert len(bare.raw) == codec.MAX_PACKET and bare.get(A.REPLY_MESSAGE) == exact[1]


def test_signed_request_with_message_authenticator():
    data = codec.encode_request(Code.COA_REQUEST, 3, [(A.USER_NAME, b"x")], SECRET,
                                message_authenticator=True)
    p = codec.decode(data)
    assert codec.request_authenticator_ok(p, SECRET) and codec.message_authenticator_ok(p, SECRET)
    tampered = bytearray(data)
    tampered[-1] ^= 1
    t = codec.decode(bytes(tampered))
    assert not codec.request_authenticator_ok(t, SECRET)
    assert not codec.message_authenticator_ok(t, SECRET)


def test_value_too_long_is_refused_on_encode():
    with pytest.raises(ValueError):
        codec.encode_attributes([(A.REPLY_MESSAGE, b"x" * 254)])


# ---------------------------------------------------------------- malformed input
GOOD = codec.encode_request(Code.ACCOUNTING_REQUEST, 1, [(A.USER_NAME, b"bob"),
                                                         (A.ACCT_STATUS_TYPE, codec.u32(1))],
                            SECRET)


def _with_length(data: bytes, length: int) -> bytes:
    return data[:2] + length.to_bytes(2, "big") + data[4:]


MALFORMED = {
    "too_short": GOOD[:19],
    "too_long": _with_length(GOOD + b"\x00" * 4100, 4096),
    "bad_length_short": _with_length(GOOD, 19),
    "bad_length_long": _with_length(GOOD, len(GOOD) + 1),
    "unknown_code": bytes([99]) + GOOD[1:],
    "attribute_length_0": _with_length(GOOD + b"\x01\x00", len(GOOD) + 2),
    "attribute_length_1": _with_length(GOOD + b"\x01\x01", len(GOOD) + 2),
    "truncated_attribute": _with_length(GOOD + b"\x01\x09abc", len(GOOD) + 5),
    "lone_type_octet": _with_length(GOOD + b"\x01", len(GOOD) + 1),
    "bad_message_authenticator": _with_length(GOOD + b"\x50\x04ab", len(GOOD) + 4),
}
REASON = {"bad_length_short": "bad_length", "bad_length_long": "bad_length",
          "attribute_length_0": "attribute_length", "attribute_length_1": "attribute_length",
          "lone_type_octet": "truncated_attribute"}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_packets_raise_decode_error_with_reason(case):
    data = MALFORMED[case]
    with pytest.raises(DecodeError) as exc:
        codec.decode(data)
    assert exc.value.reason == REASON.get(case, case)
    with pytest.raises(DecodeError) as exc2:
        wire.decode(data)
    assert str(exc2.value) == str(exc.value)
    if COMPILED:
        with pytest.raises(DecodeError) as exc3:
            compiled.decode(data)
        assert str(exc3.value) == str(exc.value)


def test_padding_after_length_is_ignored_and_vsa_fallback_kept_whole():
    p = codec.decode(GOOD + b"\x00" * 10)
    assert p.raw == GOOD
    # A VSA whose data is not a type/length chain is kept whole under 26.
    odd = codec.encode_attributes([(A.VENDOR_SPECIFIC, (9).to_bytes(4, "big") + b"\x01\x09ab")])
    data = _with_length(GOOD + odd, len(GOOD) + len(odd))
    q = codec.decode(data)
    assert q.get(A.VENDOR_SPECIFIC) == (9).to_bytes(4, "big") + b"\x01\x09ab"


def test_the_compiled_decoder_is_active_when_built():
    assert COMPILED, "cext/radius_codec was not built (python setup.py build_ext --inplace)"
    assert codec.IMPLEMENTATION in ("compiled", "pure-python")


# ---------------------------------------------------------------- twins and fuzzing
def _outcome(fn, data):
    try:
        return ("ok", fn(data))
    except DecodeError as exc:
        return ("error", str(exc))


_attr = st.tuples(st.integers(1, 255), st.binary(max_size=40))
_vsa = st.tuples(st.integers(1, 2**32 - 1), st.lists(st.tuples(st.integers(0, 255),
                                                                st.binary(max_size=20)),
                                                      min_size=1, max_size=3))


@st.composite
def packets(draw):
    code = draw(st.sampled_from(sorted(wire.KNOWN_CODES) + [0, 6, 99, 255]))
    body = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            t, v = draw(_attr)
            body += bytes((t, len(v) + 2)) + v
        else:
            vendor, subs = draw(_vsa)
            data = b"".join(bytes((t, len(v) + 2)) + v for t, v in subs)
            body += bytes((26, len(data) + 6)) + vendor.to_bytes(4, "big") + data
    data = bytes((code, draw(st.integers(0, 255)))) + (20 + len(body)).to_bytes(2, "big") \
        + draw(st.binary(min_size=16, max_size=16)) + bytes(body)
    return data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(packets(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       st.integers(0, 20))
def test_compiled_and_pure_decoders_agree(data, flips, cut):
    assert COMPILED, "cext/radius_codec was not built"
    mutated = bytearray(data)
    for pos, value in flips:
        if pos < len(mutated):
            mutated[pos] = value
    mutated = bytes(mutated[:max(0, len(mutated) - cut)] if cut % 3 == 0 else mutated)
    assert _outcome(compiled.decode, mutated) == _outcome(wire.decode, mutated)


@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_decode_error(data):
    for fn in (wire.decode,) + ((compiled.decode,) if COMPILED else ()):
        _outcome(fn, data)  # anything but DecodeError propagates and fails the test


def test_mutation_fuzz_of_valid_packets():
    """Flip, insert, delete and truncate octets of real packets: only DecodeError."""
    seeds = [bytes.fromhex(v["hex"]) for v in load("radclient.json").values()]
    rng = random.Random(2865)
    d = Dictionary()
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[pos] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = bytes([rng.randrange(256)])
            elif op == 2 and data:
                del data[pos]
            else:
                data = data[:pos]
        data = bytes(data)
        results = [_outcome(fn, data) for fn in
                   (wire.decode,) + ((compiled.decode,) if COMPILED else ())]
        assert all(r == results[0] for r in results)
        if results[0][0] == "ok":
            p = codec.decode(data)
            d.named(p.attributes)  # typed decoding never raises either


def test_content_crc_is_zlibs_over_keys_and_values():
    # The CRC behind an accounting report's sequence number.
    attrs = [(1, b"alice"), (41, b"\x00\x00\x00\x05"), (codec.vsa(9, 1), b"v"),
             (codec.vsa(70_000, 2), b"w")]
    want = 0
    for key, value in (attrs[0], attrs[2]):  # what earlier releases computed: 4-octet keys
        want = zlib.crc32(value, zlib.crc32(key.to_bytes(4, "big"), want))
    want = zlib.crc32(b"w", zlib.crc32(codec.vsa(70_000, 2).to_bytes(8, "big"), want))
    assert content_crc(attrs, frozenset({41})) == want


def test_text_attributes_lose_a_nul_terminator_and_no_other_nul_survives():
    assert codec.text(b"alice\x00") == codec.text(b"alice\x00\x00") == "alice"
    assert codec.text(b"al\x00ice") == "al\ufffdice"
    assert codec.text(b"caf\xc3\xa9") == "caf\u00e9" and codec.text(b"\xff") == "\ufffd"
    p = codec.decode(codec.encode_request(Code.ACCOUNTING_REQUEST, 1, [
        (A.USER_NAME, b"bob\x00"), (A.NAS_IDENTIFIER, b"b\x00ras")], SECRET))
    assert (p.get_str(A.USER_NAME), p.get_str(A.NAS_IDENTIFIER)) == ("bob", "b\ufffdras")


def test_the_codec_md5_is_md5():
    """The codec hashes with CPython's own MD5 (OpenSSL 3's costs more per call):
    the same digests as hashlib's, copies included (the HMAC pads are copied)."""
    import hashlib
    import os

    from radius.codec import md5

    for n in (0, 1, 16, 63, 64, 65, 4096):
        data = os.urandom(n)
        assert md5(data).digest() == hashlib.md5(data).digest()
        head = md5(data)
        copy = head.copy()
        copy.update(b"tail")
        assert copy.digest() == hashlib.md5(data + b"tail").digest()
        assert head.digest() == hashlib.md5(data).digest()
