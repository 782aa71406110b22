"""Splitting a Diameter byte stream into messages (RFC 6733 section 3).

Sans-I/O: the transport feeds whatever the socket delivered; `feed` returns
the complete messages it now holds, as bytes. A header that cannot be
trusted (version other than 1, a length under 20 or not a multiple of 4, or
over the configured limit) raises `FramingError`: every later byte would be
misread, so the only safe answer is to close the connection. Nothing is
decoded beyond the 4-octet version/length word here.
"""

from __future__ import annotations

from .codec import HEADER_LENGTH, MAX_MESSAGE, FramingError


class Framer:
    """Accumulates stream bytes; yields whole messages."""

    __slots__ = ("_buf", "max_length", "broken")

    def __init__(self, max_length: int = MAX_MESSAGE):
        self._buf = bytearray()
        self.max_length = max_length
        self.broken = False

    @property
    def pending(self) -> int:
        """Octets held that do not yet form a whole message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self.broken:
            raise FramingError("stream already failed framing")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while size - pos >= 4:
            version = buf[pos]
            length = int.from_bytes(buf[pos + 1:pos + 4], "big")
            if version != 1 or length < HEADER_LENGTH or length % 4 or length > self.max_length:
                self.broken = True
                del buf[:pos]
                if version != 1:
                    raise FramingError(f"unsupported Diameter version {version}")
                if length > self.max_length:
                    raise FramingError(
                        f"message length {length} exceeds the limit of {self.max_length}")
                raise FramingError(
                    f"message length {length} is not a multiple of 4 of at least 20")
            if size - pos < length:
                break
            out.append(bytes(buf[pos:pos + length]))
            pos += length
        if pos:
            del buf[:pos]
        return out
