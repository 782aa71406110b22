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
from pathlib import Path

from tests import pcap

VECTORS = Path(__file__).parent / "vectors" / "diameter"
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
def write_pcap(path: Path, messages: list[tuple[bool, bytes]], port: int = 3868) -> None:
    """A pcap of one TCP connection client:40000 <-> server:`port` with a handshake,
    then each (from_client, diameter bytes) as its own segment."""
    pcap.write(path, pcap.tcp_stream(messages, port))


def tshark(path: Path, *args: str, port: int = 3868) -> str:
    return pcap.tshark(path, "-d", f"tcp.port=={port},diameter", *args)


def tshark_problems(path: Path, port: int = 3868) -> list[str]:
    """Frames tshark calls malformed or flags with an expert warning or error."""
    return pcap.problems(path, "-d", f"tcp.port=={port},diameter")


def tshark_fields(path: Path, *fields: str, port: int = 3868) -> list[list[str]]:
    args = ["-Y", "diameter", "-T", "fields", "-E", "separator=|", "-E", "aggregator=,"]
    for f in fields:
        args += ["-e", f]
    out = tshark(path, *args, port=port)
    return [line.split("|") for line in out.splitlines() if line.strip()]


def diameter_frames(pcap_text: str) -> list[str]:
    return re.findall(r"Diameter Protocol", pcap_text)
