"""Free local ports for the daemons the benchmarks and tests start."""

from __future__ import annotations

import socket

_HANDED_OUT: set[tuple[int, int]] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port of `kind` free now on 127.0.0.1, never one this process was given
    before: the kernel may hand the same ephemeral port to two probes in a row
    (once the first socket is closed), and a daemon given it twice (say for
    Diameter and the API) would fail to start."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (kind, port) not in _HANDED_OUT:
            _HANDED_OUT.add((kind, port))
            return port
