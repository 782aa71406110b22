"""Password material for PAP, CHAP and MS-CHAPv2.

What each method needs stored (RFC 2865 §5.2/§5.3, RFC 2759):

* **PAP**: the NAS sends the password (hidden with the shared secret); we store
  only a salted hash, `ssha256$<salt hex>$<digest hex>` (SHA-256 over password
  then salt: the same construction as FreeRADIUS's SSHA2-256-Password, so
  operators can migrate hashes either way), or `pbkdf2-sha256$<iterations>$...`
  for operators who want a slow hash and accept its CPU cost per
  Access-Request.
* **CHAP**: the NAS sends MD5(id + password + challenge); the server needs the
  cleartext password to check it. It is kept only when `[auth]
  store_cleartext` is on (needed whenever a NAS uses CHAP).
* **MS-CHAPv2**: needs the NT hash, MD4 of the UTF-16LE password; an
  attacker holding it can authenticate as the user, so it is as sensitive as a
  password, but it is not the cleartext.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from .errors import ValidationError


def hash_password(password: str, *, scheme: str = "ssha256", iterations: int = 100_000) -> str:
    salt = os.urandom(16)
    if scheme == "ssha256":
        digest = hashlib.sha256(password.encode() + salt).hexdigest()
        return f"ssha256${salt.hex()}${digest}"
    if scheme == "pbkdf2-sha256":
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations).hex()
        return f"pbkdf2-sha256${iterations}${salt.hex()}${digest}"
    raise ValidationError(f"unknown password hash scheme {scheme!r}")


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the `stored` hash (constant-time compare)."""
    parts = stored.split("$")
    if parts[0] == "ssha256" and len(parts) == 3:
        salt = bytes.fromhex(parts[1])
        digest = hashlib.sha256(password.encode() + salt).hexdigest()
        return hmac.compare_digest(digest, parts[2])
    if parts[0] == "pbkdf2-sha256" and len(parts) == 4:
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(parts[2]),
                                     int(parts[1])).hex()
        return hmac.compare_digest(digest, parts[3])
    return False


def is_hash(value: str) -> bool:
    return value.startswith(("ssha256$", "pbkdf2-sha256$"))


def nt_hash(password: str) -> str:
    """MD4 of the UTF-16LE password (RFC 2759 NtPasswordHash), as hex."""
    return md4(password.encode("utf-16-le")).hex()


def md4(data: bytes) -> bytes:
    """MD4 (RFC 1320). OpenSSL 3 no longer offers it, MS-CHAPv2 still needs it."""
    def rotl(x, n):
        x &= 0xFFFFFFFF
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    msg = bytearray(data)
    bit_len = (8 * len(data)) & 0xFFFFFFFFFFFFFFFF
    msg.append(0x80)
    while len(msg) % 64 != 56:
        msg.append(0)
    msg += struct.pack("<Q", bit_len)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off:off + 64])
        aa, bb, cc, dd = a, b, c, d
        f = lambda x_, y, z: (x_ & y) | (~x_ & z)  # noqa: E731
        g = lambda x_, y, z: (x_ & y) | (x_ & z) | (y & z)  # noqa: E731
        h = lambda x_, y, z: x_ ^ y ^ z  # noqa: E731
        for i in range(16):
            k = i
            s = (3, 7, 11, 19)[i % 4]
            if i % 4 == 0:
                a = rotl(a + f(b, c, d) + x[k], s)
            elif i % 4 == 1:
                d = rotl(d + f(a, b, c) + x[k], s)
            elif i % 4 == 2:
                c = rotl(c + f(d, a, b) + x[k], s)
            else:
                b = rotl(b + f(c, d, a) + x[k], s)
        for i in range(16):
            k = (i % 4) * 4 + i // 4
            s = (3, 5, 9, 13)[i % 4]
            t = 0x5A827999
            if i % 4 == 0:
                a = rotl(a + g(b, c, d) + x[k] + t, s)
            elif i % 4 == 1:
                d = rotl(d + g(a, b, c) + x[k] + t, s)
            elif i % 4 == 2:
                c = rotl(c + g(d, a, b) + x[k] + t, s)
            else:
                b = rotl(b + g(c, d, a) + x[k] + t, s)
        order = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
        for i in range(16):
            k = order[i]
            s = (3, 9, 11, 15)[i % 4]
            t = 0x6ED9EBA1
            if i % 4 == 0:
                a = rotl(a + h(b, c, d) + x[k] + t, s)
            elif i % 4 == 1:
                d = rotl(d + h(a, b, c) + x[k] + t, s)
            elif i % 4 == 2:
                c = rotl(c + h(d, a, b) + x[k] + t, s)
            else:
                b = rotl(b + h(c, d, a) + x[k] + t, s)
        a = (a + aa) & 0xFFFFFFFF
        b = (b + bb) & 0xFFFFFFFF
        c = (c + cc) & 0xFFFFFFFF
        d = (d + dd) & 0xFFFFFFFF
    return struct.pack("<4I", a, b, c, d)
