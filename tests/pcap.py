"""Synthetic captures for tshark (Wireshark's own dissectors judge our bytes).

Messages are wrapped in IPv4 (LINKTYPE_RAW) with TCP segments (`tcp_stream`)
or UDP datagrams (`udp_exchange`), with correct checksums, written by
`write`; `problems` lists the frames tshark calls malformed or flags with an
expert warning or error.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

TSHARK = shutil.which("tshark")
CLIENT, SERVER = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ipv4(src: bytes, dst: bytes, payload: bytes, ident: int, proto: int) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000,
                       64, proto, 0, src, dst)
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + payload


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
         payload: bytes) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       5 << 4, flags, 65535, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, len(head) + len(payload))
    csum = _checksum(pseudo + head + payload)
    return head[:16] + struct.pack("!H", csum) + head[18:] + payload


def _udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    head = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 17, len(head) + len(payload))
    csum = _checksum(pseudo + head + payload) or 0xFFFF
    return head[:6] + struct.pack("!H", csum) + payload


def tcp_stream(messages: list[tuple[bool, bytes]], port: int) -> list[bytes]:
    """IPv4 packets of one TCP connection client:40000 <-> server:`port`: a handshake,
    then each (from_client, bytes) as its own segment."""
    seq = {True: 1000, False: 5000}
    packets: list[bytes] = []

    def seg(from_client: bool, flags: int, payload: bytes = b"") -> None:
        a, b = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        sp, dp = (40000, port) if from_client else (port, 40000)
        tcp = _tcp(a, b, sp, dp, seq[from_client], seq[not from_client], flags, payload)
        packets.append(_ipv4(a, b, tcp, len(packets) + 1, 6))
        seq[from_client] += len(payload) + (1 if flags & 0x03 else 0)

    seg(True, 0x02)                   # SYN
    seg(False, 0x12)                  # SYN-ACK
    seg(True, 0x10)                   # ACK
    for from_client, data in messages:
        seg(from_client, 0x18, data)  # PSH-ACK
    return packets


def udp_exchange(datagrams: list[tuple[bool, int, bytes]]) -> list[bytes]:
    """IPv4 packets of (from_client, server port, bytes): client port 40000."""
    return [_ipv4(*((CLIENT, SERVER) if up else (SERVER, CLIENT)),
                  _udp(*((CLIENT, SERVER) if up else (SERVER, CLIENT)),
                       *((40000, port) if up else (port, 40000)), data), i + 1, 17)
            for i, (up, port, data) in enumerate(datagrams)]


def write(path: Path, packets: list[bytes]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]  # LINKTYPE_RAW
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))


def tshark(pcap: Path, *args: str) -> str:
    assert TSHARK, "tshark is not installed (Debian: apt-get install tshark)"
    r = subprocess.run([TSHARK, "-n", "-r", str(pcap), *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def problems(pcap: Path, *args: str) -> list[str]:
    """Frames tshark calls malformed or flags with an expert warning or error
    (`args`: e.g. "-d" decode-as rules)."""
    out = tshark(pcap, *args, "-Y", "_ws.malformed || _ws.expert.severity >= 6291456",
                 "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message",
                 "-e", "_ws.malformed")
    return [line for line in out.splitlines() if line.strip()]
