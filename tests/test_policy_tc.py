"""Traffic control on the host itself: a subscriber behind a veth pair into a network
namespace is throttled by an HTB class and u32 filter on our side of the link,
seen in `tc -s class show`, and measured with iperf3: the transfer runs at the
profile's rate (within 15%) while throttled and recovers on restore. Stopping
removes everything ocsd created on the interface."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time

import pytest

from ocs.model import now_us
from ocs.store import Store, make_driver
from policy.service import PolicyService
from tests.netns import Netns, sh
from tests.policy_harness import context, policy_config, reload, seed, until

RATE_KBPS = 4000
IPERF_PORT = 15201


@pytest.fixture
def link():
    ns = Netns.create("tc")
    server = None
    try:
        server = ns.popen("iperf3", "-s", "-p", str(IPERF_PORT), "-B", ns.ns_ip,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = ns.exec("ss", "-ltn", check=False)
            if f"{ns.ns_ip}:{IPERF_PORT}" in r.stdout:
                break
            time.sleep(0.05)
        yield ns
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        ns.close()


async def throughput_mbps(ns: Netns, seconds: int = 3) -> float:
    """Bits per second the subscriber received, in Mbit/s (first second omitted)."""
    proc = await asyncio.create_subprocess_exec(
        "iperf3", "-c", ns.ns_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1", "-J",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 20)
    result = json.loads(out)
    return result["end"]["sum_received"]["bits_per_second"] / 1e6


def classes(ns: Netns) -> str:
    return sh("tc", "-s", "class", "show", "dev", ns.host_if).stdout


@pytest.fixture
async def svc(tmp_path, link):
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    ctx = await context(store, policy_config(tc_interface=link.host_if, tc_rate_kbit=1_000_000))
    service = PolicyService(ctx)
    await service.start()
    yield service
    await service.stop()
    await ctx.cluster.stop()
    await store.close()


async def test_throttle_shapes_the_subscriber_and_restore_lifts_it(link, svc):
    info = await seed(svc.store, nas_port=3799, username="edge1", framed_ip=link.ns_ip,
                      control={"enforce": ["tc"]}, policy={
                          "on_exhausted": "throttle",
                          "throttle_profile": {"down_kbps": RATE_KBPS, "up_kbps": 1000}})
    await reload(svc.ctx)
    assert "htb 1:ffff" in classes(link) and "htb 1:10" not in classes(link)
    at = now_us()
    await svc.ctx.cluster.events.publish({
        "id": f"t|{at}", "type": "exhausted", "account_id": info["account"].id,
        "session": info["sessions"][0], "service": "data", "at": at})

    async def done(n):
        rows = await svc.listing(("done",))
        return rows if len(rows) >= n else None
    rows = await until(lambda: done(1))
    assert rows[0]["backend"] == "tc" and rows[0]["result"] == "ok"
    shown = classes(link)
    assert re.search(r"class htb 1:10 root .*rate 4Mbit ceil 4Mbit", shown), shown
    filters = sh("tc", "filter", "show", "dev", link.host_if).stdout
    hexip = "".join(f"{int(p):02x}" for p in link.ns_ip.split("."))
    assert f"match {hexip}/ffffffff at 16" in filters and "flowid 1:10" in filters
    throttled = await throughput_mbps(link)
    assert abs(throttled - RATE_KBPS / 1000) <= 0.15 * RATE_KBPS / 1000, throttled
    sent = re.search(r"class htb 1:10 .*?\n Sent (\d+) bytes", classes(link), re.S)
    assert sent and int(sent.group(1)) > 1_000_000   # the transfer went through our class

    await svc.apply_to_subscriber(info["subscriber"].id, "restore")
    await until(lambda: done(2))
    assert "htb 1:10" not in classes(link)
    assert "flowid 1:10" not in sh("tc", "filter", "show", "dev", link.host_if).stdout
    free = await throughput_mbps(link, seconds=2)
    assert free > 5 * RATE_KBPS / 1000, free


async def test_start_resyncs_throttles_and_stop_cleans_up(link, tmp_path):
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    try:
        info = await seed(store, nas_port=3799, username="edge2", framed_ip=link.ns_ip,
                          control={"enforce": ["tc"]})
        config = policy_config(tc_interface=link.host_if)
        ctx = await context(store, config)
        svc = PolicyService(ctx)
        await svc.start()
        await svc.apply_to_subscriber(info["subscriber"].id, "throttle",
                                      profile={"down_kbps": 2000, "up_kbps": 500})
        await until(lambda: "rate 2Mbit" in classes(link))
        await svc.stop()
        await ctx.cluster.stop()
        assert "htb" not in sh("tc", "qdisc", "show", "dev", link.host_if).stdout
        # Restarted: the throttle in force (in the store) is shaped again.
        ctx = await context(store, config)
        svc = PolicyService(ctx)
        await svc.start()
        assert re.search(r"class htb 1:10 root .*rate 2Mbit", classes(link))
        await svc.stop()
        await ctx.cluster.stop()
        assert "htb" not in sh("tc", "qdisc", "show", "dev", link.host_if).stdout
    finally:
        await store.close()


async def test_missing_interface_stops_the_start_with_a_clear_error(tmp_path):
    from ocs.errors import OcsError
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    ctx = await context(store, policy_config(tc_interface="nosuch0"))
    try:
        with pytest.raises(OcsError, match="'nosuch0' does not exist"):
            await PolicyService(ctx).start()
    finally:
        await ctx.cluster.stop()
        await store.close()
