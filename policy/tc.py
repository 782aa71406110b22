"""Linux traffic control on the edge host itself (pyroute2): shape a subscriber's IP.

For an ocsd that runs on the router its subscribers pass through (``[policy]
tc_interface``): the interface gets an HTB root qdisc (handle ``1:``) whose
default class ``1:ffff`` carries unshaped traffic at ``tc_rate_kbit``; a
throttle adds one class ``1:<n>`` at the profile's down rate (rate = ceil)
and one u32 filter sending packets *to* the subscriber's IPv4 address into
it; a new throttle of the same address changes the class's rate; a restore
deletes both. This shapes what leaves the interface toward subscribers (their
download); their upload would need the same on the other interface or an
IFB, which this back-end does not set up.

Start replaces the interface's root qdisc with a fresh HTB; the service then
re-applies the throttles the store says are in force (so classes left by an
earlier run that did not clean up are not trusted blindly). Stop removes the
root qdisc, and with it every class and filter, when ``tc_cleanup`` is on.
Needs CAP_NET_ADMIN.

pyroute2's synchronous `IPRoute` runs its own event loop, so every netlink
call happens in this actuator's one worker thread, never on the daemon's loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ocs.model import Nas

from .model import RESTORE, TC, THROTTLE, Action, ActuatorError, Attempt

log = logging.getLogger("ocs.policy")

ROOT = 0x10000          # 1:
DEFAULT_MINOR = 0xFFFF  # 1:ffff
FIRST_MINOR = 0x10
ETH_P_IP = 0x0800
PRIO = 10


class TcActuator:
    backend = TC

    def __init__(self, interface: str, rate_kbit: int, *, cleanup: bool = True,
                 netns: str | None = None):
        self.interface = interface
        self.rate_kbit = rate_kbit
        self.cleanup = cleanup
        self.netns = netns
        self.classes: dict[str, int] = {}   # subscriber IP -> class minor
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ocs-tc")
        self._ipr = None
        self._index: int | None = None

    # ------------------------------------------------------------ thread side
    def _open(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
            found = self._ipr.link_lookup(ifname=self.interface)
            if not found:
                raise ActuatorError(f"policy.tc_interface {self.interface!r} does not exist",
                                    retry=False)
            self._index = found[0]
            self._ipr.tc("replace", "htb", self._index, ROOT, default=DEFAULT_MINOR)
            rate = f"{self.rate_kbit}kbit"
            self._ipr.tc("add-class", "htb", self._index, ROOT | DEFAULT_MINOR, parent=ROOT,
                         rate=rate, ceil=rate)
        except NetlinkError as exc:
            raise ActuatorError(f"tc on {self.interface}: {exc} (ocsd needs CAP_NET_ADMIN)",
                                retry=False) from None

    def _close(self) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        if self._ipr is None:
            return
        try:
            if self.cleanup and self._index is not None:
                self._ipr.tc("del", "htb", self._index, ROOT)
                log.info("tc: removed the HTB qdisc and %d class(es) from %s",
                         len(self.classes) + 1, self.interface)
        except NetlinkError as exc:
            log.warning("tc cleanup on %s: %s", self.interface, exc)
        finally:
            self._ipr.close()
            self._ipr = None

    def _throttle(self, ip: str, down_kbps: int) -> dict[str, Any]:
        rate = f"{down_kbps}kbit"
        minor = self.classes.get(ip)
        if minor is not None:
            self._ipr.tc("change-class", "htb", self._index, ROOT | minor, parent=ROOT,
                         rate=rate, ceil=rate)
            return {"class": f"1:{minor:x}", "rate": rate, "changed": True}
        used = set(self.classes.values())
        minor = next(m for m in range(FIRST_MINOR, DEFAULT_MINOR) if m not in used)
        self._ipr.tc("add-class", "htb", self._index, ROOT | minor, parent=ROOT, rate=rate,
                     ceil=rate)
        key = f"0x{int(ipaddress.IPv4Address(ip)):08x}/0xffffffff+16"  # IPv4 destination
        try:
            self._ipr.tc("add-filter", "u32", self._index, parent=ROOT, prio=PRIO,
                         protocol=ETH_P_IP, target=ROOT | minor, keys=[key],
                         handle=0x80000000 | minor)
        except Exception:
            self._del_class(minor)
            raise
        self.classes[ip] = minor
        return {"class": f"1:{minor:x}", "rate": rate, "filter": f"800::{minor:x}",
                "match": f"dst {ip}/32"}

    def _restore(self, ip: str) -> dict[str, Any]:
        minor = self.classes.pop(ip, None)
        if minor is None:
            return {"class": None}
        self._ipr.tc("del-filter", "u32", self._index, parent=ROOT, prio=PRIO,
                     protocol=ETH_P_IP, target=ROOT | minor, handle=0x80000000 | minor)
        self._del_class(minor)
        return {"class": f"1:{minor:x}", "removed": True}

    def _del_class(self, minor: int) -> None:
        # pyroute2 encodes HTB options even for a delete; any rate satisfies it.
        self._ipr.tc("del-class", "htb", self._index, ROOT | minor, parent=ROOT,
                     rate="8kbit", ceil="8kbit")

    # ------------------------------------------------------------ loop side
    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self) -> None:
        await self._call(self._open)
        log.info("tc: HTB on %s (default class %d kbit/s)", self.interface, self.rate_kbit)

    async def stop(self) -> None:
        await self._call(self._close)
        self._pool.shutdown(wait=True)

    async def apply(self, ip: str, down_kbps: int) -> dict[str, Any]:
        """Shape traffic to `ip` at `down_kbps` (resync at start, and throttles)."""
        return await self._call(self._throttle, ip, down_kbps)

    async def execute(self, action: Action, nas: Nas | None) -> Attempt:
        from pyroute2.netlink.exceptions import NetlinkError
        ip = action.target.framed_ip
        if not ip:
            raise ActuatorError(f"session {action.session} has no framed IP to shape",
                                retry=False)
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise ActuatorError(f"tc shapes IPv4 addresses; {ip!r} is not one",
                                retry=False) from None
        started = time.perf_counter()
        request: dict[str, Any] = {"interface": self.interface, "ip": ip,
                                   "action": action.action}
        try:
            if action.action == THROTTLE:
                profile = action.profile or {}
                if not profile.get("down_kbps"):
                    raise ActuatorError("throttle without a speed profile", retry=False)
                request["down_kbps"] = int(profile["down_kbps"])
                answer = await self._call(self._throttle, ip, int(profile["down_kbps"]))
            elif action.action == RESTORE:
                answer = await self._call(self._restore, ip)
            else:
                raise ActuatorError(f"tc cannot {action.action}", retry=False)
        except NetlinkError as exc:
            return Attempt.failed(f"tc: {exc}", request=request)
        return Attempt(True, "ok", request=request, answer=answer,
                       latency_ms=(time.perf_counter() - started) * 1000)


__all__ = ["TcActuator"]
