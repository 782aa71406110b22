"""systemd's notification protocol (sd_notify), spoken over a unix datagram socket.

The service manager passes the socket in `NOTIFY_SOCKET`: a filesystem path or,
when it starts with "@", an abstract socket (the "@" stands for the leading NUL
byte). Each datagram is newline-separated `KEY=VALUE` assignments, see
sd_notify(3): READY=1, RELOADING=1, STOPPING=1, STATUS=..., WATCHDOG=1,
EXTEND_TIMEOUT_USEC=..., MONOTONIC_USEC=...

The watchdog is armed by `WATCHDOG_USEC` (and `WATCHDOG_PID`, which names the
process expected to ping it); the daemon sends WATCHDOG=1 from its event loop
every half period, so a blocked loop is what systemd notices and restarts.

Everything here is a no-op when `NOTIFY_SOCKET` is unset, and sending never
raises: the service must not die because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("ocs.daemon")

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(value: str) -> str | bytes:
    """The socket address for a NOTIFY_SOCKET value ('@name' is abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends state changes to systemd. Build it with `from_env()`."""

    def __init__(self, socket_path: str | None, *, watchdog_usec: int | None = None):
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 unset_environment: bool = False) -> "Notifier":
        """Read NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID.

        The watchdog counts only when WATCHDOG_PID is unset or names this
        process (sd_watchdog_enabled(3)). With `unset_environment`, the
        variables are removed from `os.environ` so that child processes
        (traffic control helpers, ...) do not talk to systemd in our name.
        """
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        if unset_environment:
            for name in _ENV:
                os.environ.pop(name, None)
        return cls(path, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the period), or None when not armed."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: object) -> bool:
        """Send one datagram of KEY=VALUE lines; True when it was sent."""
        if not self.enabled:
            return False
        lines = []
        for key, value in fields.items():
            # A value cannot span lines: the protocol is line-based.
            text = str(value).replace("\n", " ").replace("\r", " ")
            lines.append(f"{key}={text}")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), _address(self.socket_path))
            return True
        except OSError as exc:
            # Logged once: systemd gone or socket full is not a reason to stop serving.
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.socket_path, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload requires."""
        fields: dict[str, object] = {
            "RELOADING": 1, "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def stopping(self, status: str | None = None, *, extend_timeout: float | None = None) -> bool:
        """STOPPING=1; `extend_timeout` (s) asks systemd to wait that long for the drain."""
        fields: dict[str, object] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        if extend_timeout:
            fields["EXTEND_TIMEOUT_USEC"] = int(extend_timeout * 1_000_000)
        return self.notify(**fields)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
