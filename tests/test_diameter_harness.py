"""Shared helpers of the Diameter tests (this module holds no tests itself).

* byte vectors in tests/vectors/diameter/*.hex (hex text, '#' comments);
* `write_pcap`: Diameter messages wrapped in synthetic TCP/IPv4 segments, so
  tshark (Wireshark's own Diameter dissector) can judge our bytes;
* `tshark_problems`: malformed packets and expert warnings/errors tshark reports;
* `diameter_daemon`: an `ocsd` subprocess (tests.test_daemon.Ocsd) with a
  Diameter listener on a free port and a prepared store.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors" / "diameter"
TSHARK = shutil.which("tshark")
REGENERATE = os.environ.get("OCS_REGEN_VECTORS") == "1"


# ---------------------------------------------------------------------- vectors
def load_vector(name: str) -> bytes:
    text = (VECTORS / f"{name}.hex").read_text()
    hexdigits = "".join(line.split("#", 1)[0] for line in text.splitlines())
    return bytes.fromhex("".join(hexdigits.split()))


def save_vector(name: str, data: bytes, comment: str) -> None:
    VECTORS.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in comment.strip().splitlines()]
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        lines.append(" ".join(chunk[j:j + 4].hex() for j in range(0, len(chunk), 4)))
    (VECTORS / f"{name}.hex").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- pcap for tshark
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ipv4(src: bytes, dst: bytes, payload: bytes, ident: int) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000,
                       64, 6, 0, src, dst)
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + payload


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
         payload: bytes) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       5 << 4, flags, 65535, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, len(head) + len(payload))
    csum = _checksum(pseudo + head + payload)
    return head[:16] + struct.pack("!H", csum) + head[18:] + payload


def write_pcap(path: Path, messages: list[tuple[bool, bytes]], port: int = 3868) -> None:
    """A pcap (raw IPv4) of one TCP connection client:40000 <-> server:`port` with a
    handshake, then each (from_client, diameter bytes) as its own segment."""
    cli, srv = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2])
    seq = {True: 1000, False: 5000}
    packets: list[bytes] = []

    def seg(from_client: bool, flags: int, payload: bytes = b"") -> None:
        a, b = (cli, srv) if from_client else (srv, cli)
        sp, dp = (40000, port) if from_client else (port, 40000)
        tcp = _tcp(a, b, sp, dp, seq[from_client], seq[not from_client], flags, payload)
        packets.append(_ipv4(a, b, tcp, len(packets) + 1))
        seq[from_client] += len(payload) + (1 if flags & 0x03 else 0)

    seg(True, 0x02)                   # SYN
    seg(False, 0x12)                  # SYN-ACK
    seg(True, 0x10)                   # ACK
    for from_client, data in messages:
        seg(from_client, 0x18, data)  # PSH-ACK
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]  # LINKTYPE_RAW
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))


def tshark(pcap: Path, *args: str, port: int = 3868) -> str:
    assert TSHARK, "tshark is not installed (Debian: apt-get install tshark)"
    r = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-d", f"tcp.port=={port},diameter",
                        *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def tshark_problems(pcap: Path, port: int = 3868) -> list[str]:
    """Frames tshark calls malformed or flags with an expert warning or error."""
    out = tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 6291456",
                 "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message",
                 "-e", "_ws.malformed", port=port)
    return [line for line in out.splitlines() if line.strip()]


def tshark_fields(pcap: Path, *fields: str, port: int = 3868) -> list[list[str]]:
    args = ["-Y", "diameter", "-T", "fields", "-E", "separator=|", "-E", "aggregator=,"]
    for f in fields:
        args += ["-e", f]
    out = tshark(pcap, *args, port=port)
    return [line.split("|") for line in out.splitlines() if line.strip()]


def diameter_frames(pcap_text: str) -> list[str]:
    return re.findall(r"Diameter Protocol", pcap_text)
