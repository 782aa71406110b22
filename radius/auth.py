"""Checking what an Access-Request proves: PAP, CHAP, MS-CHAPv2 or MS-CHAP (v1).

What each method needs stored for the subscriber (see also `ocs.passwords`):

* **PAP** (RFC 2865 §5.2): the NAS sends the password itself, hidden with the
  shared secret; the server keeps only a salted hash (`password_hash`,
  ssha256 or pbkdf2-sha256) and compares.
* **CHAP** (RFC 1994, RFC 2865 §5.3): the NAS sends MD5(ident + password +
  challenge); checking it needs the **cleartext** password
  (`Subscriber.cleartext`, kept only with `[auth] store_cleartext = true`).
  Without it every CHAP request is rejected as "CHAP needs a stored
  password".
* **MS-CHAPv2** (RFC 2759, RFC 2548): needs the **NT hash** (MD4 of the
  UTF-16LE password, `Subscriber.nt_hash`, `[auth] store_nt_hash = true`).
  The Access-Accept then carries MS-CHAP2-Success (the authenticator
  response) and the MPPE send/receive keys (RFC 3079) that PPP encryption
  needs, hidden with the secret as RFC 2548 §2.4.2 prescribes.
* **MS-CHAP v1** (RFC 2433, what `radtest -t mschap` sends): the same NT
  hash. Only the NT response is accepted (no LAN Manager hash is ever
  stored); the Access-Accept carries MS-CHAP-MPPE-Keys (RFC 2548 §2.4.1).

Sans-I/O: the caller passes the decoded packet, the NAS secret and the
subscriber record; nothing here touches the store or the network.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ocs.model import Subscriber
from ocs.passwords import verify_password

from . import mschap
from .codec import A, Packet, hide_password, md5, salt_encrypt, u32, unhide_password, vsa

MICROSOFT = 311
MS_CHAP_RESPONSE = vsa(MICROSOFT, 1)
MS_CHAP_ERROR = vsa(MICROSOFT, 2)
MS_MPPE_ENCRYPTION_POLICY = vsa(MICROSOFT, 7)
MS_MPPE_ENCRYPTION_TYPES = vsa(MICROSOFT, 8)
MS_CHAP_CHALLENGE = vsa(MICROSOFT, 11)
MS_CHAP_MPPE_KEYS = vsa(MICROSOFT, 12)
MS_MPPE_SEND_KEY = vsa(MICROSOFT, 16)
MS_MPPE_RECV_KEY = vsa(MICROSOFT, 17)
MS_CHAP2_RESPONSE = vsa(MICROSOFT, 25)
MS_CHAP2_SUCCESS = vsa(MICROSOFT, 26)


@dataclass(frozen=True, slots=True)
class Proof:
    """The outcome of checking the credentials of one Access-Request."""

    ok: bool
    method: str                      # pap | chap | mschapv2 | mschap | none | pap+chap
    reason: str = ""                 # why not, for Reply-Message and the log
    accept_attrs: tuple[tuple[int, bytes], ...] = ()  # MS-CHAP2-Success, MPPE keys
    reject_attrs: tuple[tuple[int, bytes], ...] = ()  # MS-CHAP-Error


_PAP_OK = Proof(True, "pap")


def method_of(packet: Packet) -> str:
    if A.USER_PASSWORD in packet:
        return "pap"
    if A.CHAP_PASSWORD in packet:
        return "chap"
    if MS_CHAP_CHALLENGE in packet:
        if MS_CHAP2_RESPONSE in packet:
            return "mschapv2"
        if MS_CHAP_RESPONSE in packet:
            return "mschap"
    return "none"


def check(packet: Packet, secret: bytes, sub: Subscriber) -> Proof:
    if A.USER_PASSWORD in packet and A.CHAP_PASSWORD in packet:
        # RFC 2865 §5.3: never both; a request carrying both is not believed by either.
        return Proof(False, "pap+chap", "both User-Password and CHAP-Password in the request")
    method = method_of(packet)
    if method == "pap":
        return _pap(packet, secret, sub)
    if method == "chap":
        return _chap(packet, sub)
    if method == "mschapv2":
        return _mschapv2(packet, secret, sub)
    if method == "mschap":
        return _mschap(packet, secret, sub)
    return Proof(False, "none", "no credentials (PAP, CHAP, MS-CHAPv2 or MS-CHAP) in the request")


def _pap(packet: Packet, secret: bytes, sub: Subscriber) -> Proof:
    password = unhide_password(packet.get(A.USER_PASSWORD), secret, packet.authenticator)
    if password is None:
        return Proof(False, "pap", "malformed User-Password")
    if not sub.password_hash:
        return Proof(False, "pap", "no password is stored for this subscriber")
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:  # a wrong shared secret decodes to garbage
        return Proof(False, "pap", "wrong password")
    if not verify_password(text, sub.password_hash):
        return Proof(False, "pap", "wrong password")
    return _PAP_OK


def _chap(packet: Packet, sub: Subscriber) -> Proof:
    value = packet.get(A.CHAP_PASSWORD)
    if value is None or len(value) != 17:
        return Proof(False, "chap", "malformed CHAP-Password")
    if sub.cleartext is None:
        return Proof(False, "chap", "CHAP needs a stored password ([auth] store_cleartext)")
    # RFC 2865 §2.2: the challenge is CHAP-Challenge, else the Request Authenticator.
    challenge = packet.get(A.CHAP_CHALLENGE) or packet.authenticator
    want = md5(value[:1] + sub.cleartext.encode() + challenge).digest()
    if not hmac.compare_digest(want, value[1:]):
        return Proof(False, "chap", "wrong password")
    return Proof(True, "chap")


def _ms_inputs(packet: Packet, sub: Subscriber, method: str, response_key: int,
               challenge_length: int, error_text: bytes):
    """(response, challenge, NT hash, MS-CHAP-Error attributes) of an MS-CHAP request
    of either version, or the Proof refusing it (malformed, or no NT hash stored)."""
    response = packet.get(response_key)
    challenge = packet.get(MS_CHAP_CHALLENGE)
    ident = response[:1] if response else b"\x00"
    error = ((MS_CHAP_ERROR, ident + error_text),)
    name = "MS-CHAPv2" if method == "mschapv2" else "MS-CHAP"
    if not response or len(response) != 50 or not challenge \
            or len(challenge) != challenge_length:
        return Proof(False, method, f"malformed {name} response", reject_attrs=error)
    if not sub.nt_hash:
        return Proof(False, method, f"{name} needs a stored NT hash ([auth] store_nt_hash)",
                     reject_attrs=error)
    return response, challenge, bytes.fromhex(sub.nt_hash), error


def _mschapv2(packet: Packet, secret: bytes, sub: Subscriber) -> Proof:
    got = _ms_inputs(packet, sub, "mschapv2", MS_CHAP2_RESPONSE, 16, b"E=691 R=0 V=3")
    if isinstance(got, Proof):
        return got
    response, challenge, nt_hash, error = got
    name = packet.get(A.USER_NAME) or b""
    name = name.rsplit(b"\\", 1)[-1]  # RFC 2759 §4: the user name without the domain
    result = mschap.verify_mschap2(auth_challenge=challenge, response=response, username=name,
                                   nt_hash=nt_hash)
    if not result.ok:
        return Proof(False, "mschapv2", "wrong password", reject_attrs=error)
    auth = packet.authenticator
    attrs = (
        (MS_CHAP2_SUCCESS, result.success),
        (MS_MPPE_RECV_KEY, salt_encrypt(result.recv_key, secret, auth)),
        (MS_MPPE_SEND_KEY, salt_encrypt(result.send_key, secret, auth)),
        *_MPPE_POLICY,
    )
    return Proof(True, "mschapv2", accept_attrs=attrs)


_MPPE_POLICY = ((MS_MPPE_ENCRYPTION_POLICY, u32(1)),  # encryption allowed
                (MS_MPPE_ENCRYPTION_TYPES, u32(6)))   # RC4 40 or 128 bit


def _mschap(packet: Packet, secret: bytes, sub: Subscriber) -> Proof:
    got = _ms_inputs(packet, sub, "mschap", MS_CHAP_RESPONSE, 8, b"E=691 R=0")
    if isinstance(got, Proof):
        return got
    response, challenge, nt_hash, error = got
    if not response[1] & 1:
        return Proof(False, "mschap", "LAN Manager response refused (no NT response)",
                     reject_attrs=error)
    if not mschap.verify_mschap1(challenge=challenge, response=response, nt_hash=nt_hash):
        return Proof(False, "mschap", "wrong password", reject_attrs=error)
    keys = hide_password(mschap.mschap1_mppe_keys(nt_hash), secret, packet.authenticator)
    return Proof(True, "mschap", accept_attrs=((MS_CHAP_MPPE_KEYS, keys), *_MPPE_POLICY))
