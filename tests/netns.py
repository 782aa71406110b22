"""Network namespaces for the tests that need real links (SNMP agent, traffic control).

`Netns.create()` makes a namespace joined to this one by a veth pair with a
random /30 between them; `close()` removes the namespace, which destroys its
end of the pair and with it ours. Everything is run with iproute2 (root)."""

from __future__ import annotations

import json
import secrets
import subprocess


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=30,
                          **kw)


class Netns:
    def __init__(self, name: str, host_if: str, ns_if: str, host_ip: str, ns_ip: str):
        self.name, self.host_if, self.ns_if = name, host_if, ns_if
        self.host_ip, self.ns_ip = host_ip, ns_ip

    @classmethod
    def create(cls, tag: str) -> "Netns":
        suffix = secrets.token_hex(3)
        a, b = secrets.randbelow(200) + 20, secrets.randbelow(63) * 4
        ns = cls(f"ocs-{tag}-{suffix}", f"o{tag[:3]}{suffix}", "eth1",
                 f"10.{a}.{b}.1", f"10.{a}.{b}.2")
        try:
            sh("ip", "netns", "add", ns.name)
            sh("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if,
               "netns", ns.name)
            sh("ip", "addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            sh("ip", "link", "set", ns.host_if, "up")
            ns.ip("addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
            ns.ip("link", "set", ns.ns_if, "up")
            ns.ip("link", "set", "lo", "up")
        except BaseException:
            ns.close()
            raise
        return ns

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.name, *args, check=check)

    def exec(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, **kw)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    def link(self, name: str) -> dict:
        return json.loads(self.ip("-j", "link", "show", name).stdout)[0]

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)
        sh("ip", "link", "del", self.host_if, check=False)
