"""MS-CHAPv2 (RFC 2759), MS-CHAP (v1, RFC 2433) and the MPPE keys they derive
(RFC 3079, RFC 2548).

What the server needs stored for a subscriber: the NT hash, MD4 of the
UTF-16LE password (`Subscriber.nt_hash`, hex). MS-CHAPv2 never needs the
cleartext; but the NT hash is password-equivalent for MS-CHAP, so it is
protected like a password.

DES is needed for the three 7-byte-key encryptions of the challenge hash.
Python's standard library has no DES (and OpenSSL 3 moved it to the legacy
provider), so a small implementation from FIPS 46-3 lives here: it only
ever encrypts 24 octets per authentication, so speed does not matter.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

# ---------------------------------------------------------------- DES (FIPS 46-3)
_IP = (58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4,
       62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
       57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3,
       61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7)
_FP = tuple(_IP.index(i) + 1 for i in range(1, 65))
_E = (32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17,
      16, 17, 18, 19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31,
      32, 1)
_P = (16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
      2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25)
_PC1 = (57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27,
        19, 11, 3, 60, 52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22,
        14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4)
_PC2 = (14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20,
        13, 2, 41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53,
        46, 42, 50, 36, 29, 32)
_SHIFTS = (1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1)
_S = (
    (14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7,
     0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
     4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0,
     15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13),
    (15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10,
     3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
     0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15,
     13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9),
    (10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8,
     13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
     13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7,
     1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12),
    (7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15,
     13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
     10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4,
     3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14),
    (2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9,
     14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
     4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14,
     11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3),
    (12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11,
     10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
     9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6,
     4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13),
    (4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1,
     13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
     1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2,
     6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12),
    (13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7,
     1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
     7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8,
     2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11),
)


def _permute(value: int, table: tuple[int, ...], width: int) -> int:
    """Bit i of the result (from the left) is bit table[i] of `value` (1-based, from the left)."""
    out = 0
    for pos in table:
        out = (out << 1) | ((value >> (width - pos)) & 1)
    return out


def _subkeys(key: int) -> list[int]:
    cd = _permute(key, _PC1, 64)
    c, d = cd >> 28, cd & 0x0FFFFFFF
    keys = []
    for shift in _SHIFTS:
        c = ((c << shift) | (c >> (28 - shift))) & 0x0FFFFFFF
        d = ((d << shift) | (d >> (28 - shift))) & 0x0FFFFFFF
        keys.append(_permute((c << 28) | d, _PC2, 56))
    return keys


def des_encrypt(key: bytes, block: bytes) -> bytes:
    """One DES-ECB block: 8-octet key (parity bits ignored), 8-octet block."""
    if len(key) != 8 or len(block) != 8:
        raise ValueError("DES takes an 8-octet key and an 8-octet block")
    data = _permute(int.from_bytes(block, "big"), _IP, 64)
    left, right = data >> 32, data & 0xFFFFFFFF
    for subkey in _subkeys(int.from_bytes(key, "big")):
        x = _permute(right, _E, 32) ^ subkey
        s_out = 0
        for i in range(8):
            six = (x >> (42 - 6 * i)) & 0x3F
            row = ((six & 0x20) >> 4) | (six & 1)
            s_out = (s_out << 4) | _S[i][row * 16 + ((six >> 1) & 0x0F)]
        left, right = right, left ^ _permute(s_out, _P, 32)
    return _permute((right << 32) | left, _FP, 64).to_bytes(8, "big")


def _des_key(seven: bytes) -> bytes:
    """A 56-bit key in 7 octets spread over 8 (RFC 2759 §8.6): 7 bits per octet."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


# ---------------------------------------------------------------- RFC 2759
MAGIC1 = b"Magic server to client signing constant"
MAGIC2 = b"Pad to make it do more than one iteration"
# RFC 3079 §3.4
MAGIC_MASTER = b"This is the MPPE Master Key"
MAGIC_SEND = (b"On the client side, this is the send key; "
              b"on the server side, it is the receive key.")
MAGIC_RECV = (b"On the client side, this is the receive key; "
              b"on the server side, it is the send key.")
SHS_PAD1 = b"\x00" * 40
SHS_PAD2 = b"\xf2" * 40


def challenge_hash(peer_challenge: bytes, auth_challenge: bytes, username: bytes) -> bytes:
    """RFC 2759 §8.2: the 8 octets the NT response encrypts. `username` without domain."""
    return hashlib.sha1(peer_challenge + auth_challenge + username).digest()[:8]


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """RFC 2759 §8.5: DES of the challenge under the three 7-octet thirds of the padded hash."""
    z = password_hash + b"\x00" * 5
    return b"".join(des_encrypt(_des_key(z[i:i + 7]), challenge) for i in (0, 7, 14))


def nt_response(auth_challenge: bytes, peer_challenge: bytes, username: bytes,
                password_hash: bytes) -> bytes:
    """RFC 2759 §8.1 GenerateNTResponse, from the NT hash (MD4 of the password)."""
    return challenge_response(challenge_hash(peer_challenge, auth_challenge, username),
                              password_hash)


def authenticator_response(password_hash: bytes, nt_resp: bytes, peer_challenge: bytes,
                           auth_challenge: bytes, username: bytes) -> bytes:
    """RFC 2759 §8.7: the 42 octets "S=<40 hex digits>" proving we know the hash too."""
    digest = hashlib.sha1(_md4_of(password_hash) + nt_resp + MAGIC1).digest()
    digest = hashlib.sha1(digest + challenge_hash(peer_challenge, auth_challenge, username)
                          + MAGIC2).digest()
    return b"S=" + digest.hex().upper().encode()


# ---------------------------------------------------------------- RFC 3079 keys
def master_key(password_hash: bytes, nt_resp: bytes) -> bytes:
    return hashlib.sha1(_md4_of(password_hash) + nt_resp + MAGIC_MASTER).digest()[:16]


def asymmetric_start_key(master: bytes, length: int, *, send: bool, server: bool) -> bytes:
    """RFC 3079 §3.4 GetAsymetricStartKey."""
    magic = MAGIC_SEND if send == server else MAGIC_RECV
    return hashlib.sha1(master + SHS_PAD1 + magic + SHS_PAD2).digest()[:length]


def server_mppe_keys(password_hash: bytes, nt_resp: bytes) -> tuple[bytes, bytes]:
    """(send key, receive key) of the server side, 16 octets each (128-bit MPPE).

    The server's send key is what the NAS encrypts towards the client with, so
    it goes into MS-MPPE-Send-Key (RFC 2548 §2.4.2) and the receive key into
    MS-MPPE-Recv-Key.
    """
    master = master_key(password_hash, nt_resp)
    return (asymmetric_start_key(master, 16, send=True, server=True),
            asymmetric_start_key(master, 16, send=False, server=True))


# ---------------------------------------------------------------- verification
@dataclass(frozen=True, slots=True)
class MsChap2Result:
    ok: bool
    success: bytes = b""   # MS-CHAP2-Success value: ident + "S=..."
    send_key: bytes = b""
    recv_key: bytes = b""


def verify_mschap2(*, auth_challenge: bytes, response: bytes, username: bytes,
                   nt_hash: bytes) -> MsChap2Result:
    """Check an MS-CHAP2-Response (RFC 2548 §2.3.2: ident, flags, 16 peer challenge,
    8 reserved, 24 NT response) against the stored NT hash.

    `username` is the User-Name without any "DOMAIN\\" prefix (RFC 2759 §4).
    """
    if len(response) != 50 or len(auth_challenge) != 16 or len(nt_hash) != 16:
        return MsChap2Result(False)
    ident, peer = response[0:1], response[2:18]
    got = response[26:50]
    want = nt_response(auth_challenge, peer, username, nt_hash)
    if not hmac.compare_digest(got, want):
        return MsChap2Result(False)
    success = ident + authenticator_response(nt_hash, got, peer, auth_challenge, username)
    send, recv = server_mppe_keys(nt_hash, got)
    return MsChap2Result(True, success, send, recv)


# ---------------------------------------------------------------- MS-CHAP v1 (RFC 2433)
def verify_mschap1(*, challenge: bytes, response: bytes, nt_hash: bytes) -> bool:
    """Check an MS-CHAP-Response (RFC 2548 §2.1.3: ident, flags, 24 LM response, 24 NT
    response) to an 8-octet MS-CHAP-Challenge against the stored NT hash.

    Only the NT response counts: a response whose flags say "use the LM response"
    is refused, since LAN Manager hashes are never stored (they fall to brute force
    in minutes, RFC 2433 §12)."""
    if len(response) != 50 or len(challenge) != 8 or len(nt_hash) != 16:
        return False
    if not response[1] & 1:
        return False
    return hmac.compare_digest(response[26:50], challenge_response(challenge, nt_hash))


def mschap1_mppe_keys(nt_hash: bytes) -> bytes:
    """The 32 plain octets of MS-CHAP-MPPE-Keys (RFC 2548 §2.4.1): the LAN Manager key
    (8 octets; zero, as no LM hash is kept), the NT key (RFC 3079 §2.1: the hash of
    the NT hash, 16 octets) and 8 octets of zero padding."""
    return b"\x00" * 8 + _md4_of(nt_hash) + b"\x00" * 8


def client_response_v1(*, challenge: bytes, password: str, ident: int = 1) -> bytes:
    """The MS-CHAP-Response a client sends, NT response only (for tests)."""
    return (bytes([ident, 1]) + b"\x00" * 24
            + challenge_response(challenge, nt_hash_of(password)))


def client_response(*, auth_challenge: bytes, username: bytes, password: str, ident: int = 1,
                    peer_challenge: bytes | None = None) -> bytes:
    """The MS-CHAP2-Response a client sends (for tests and the load generator)."""
    peer = peer_challenge or os.urandom(16)
    nt = nt_hash_of(password)
    return bytes([ident, 0]) + peer + b"\x00" * 8 + nt_response(auth_challenge, peer, username, nt)


def nt_hash_of(password: str) -> bytes:
    return _md4_of(password.encode("utf-16-le"))


def _md4_of(data: bytes) -> bytes:
    return hashlib.new("md4", data).digest() if _HAS_MD4 else _md4(data)


def _probe_md4() -> bool:
    try:
        hashlib.new("md4", b"")
        return True
    except ValueError:  # OpenSSL 3 without the legacy provider
        return False


_HAS_MD4 = _probe_md4()


def _md4(data: bytes) -> bytes:
    from ocs.passwords import md4
    return md4(data)
