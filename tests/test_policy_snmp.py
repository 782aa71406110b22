"""SNMP SETs for gear without CoA, against net-snmp's snmpd: the agent runs in a
network namespace, and its subscriber port is a real link there whose
IF-MIB ifAdminStatus our SET turns down and up (read back with snmpget and
with iproute2); SNMPv3 authPriv writes a templated value; an agent that
refuses or does not answer ends dead-lettered."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.netns import Netns, sh
from tests.policy_harness import exhausted, finished, reload, running_service, seed, until

IF_ADMIN = "1.3.6.1.2.1.2.2.1.7"
SYS_CONTACT, SYS_DESCR = "1.3.6.1.2.1.1.4.0", "1.3.6.1.2.1.1.1.0"
PORT = 16161


class Agent:
    def __init__(self, tmp):
        self.ns = Netns.create("snmp")
        self.proc = None
        try:
            self.ns.ip("link", "add", "sub0", "type", "veth", "peer", "name", "sub0p")
            self.ns.ip("link", "set", "sub0", "up")
            self.ns.ip("link", "set", "sub0p", "up")
            self.ifindex = self.ns.link("sub0")["ifindex"]
            persist = os.path.join(tmp, "persist")
            os.makedirs(persist, exist_ok=True)
            conf = os.path.join(tmp, "snmpd.conf")
            with open(conf, "w") as fh:
                fh.write(f"agentAddress udp:{self.ns.ns_ip}:{PORT}\n"
                         f"rwcommunity private {self.ns.host_ip}/32\n"
                         f"rocommunity public {self.ns.host_ip}/32\n"
                         'createUser ocsuser SHA "auth-pass-123" AES "priv-pass-123"\n'
                         "rwuser ocsuser priv\n")
            self.log = open(os.path.join(tmp, "snmpd.out"), "w")
            self.proc = self.ns.popen("snmpd", "-f", "-Lo", "-C", "-c", conf, "-p",
                                      os.path.join(tmp, "snmpd.pid"),
                                      env={**os.environ, "SNMP_PERSISTENT_DIR": persist,
                                           "MIBS": ""},
                                      stdout=self.log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while self.get("1.3.6.1.2.1.1.3.0") is None:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("snmpd did not start")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise

    def get(self, oid: str) -> str | None:
        r = sh("snmpget", "-v2c", "-c", "public", "-On", "-Oqv", "-t", "0.5", "-r", "0",
               f"{self.ns.ns_ip}:{PORT}", oid, check=False, env={**os.environ, "MIBS": ""})
        return r.stdout.strip().strip('"') if r.returncode == 0 else None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()
        self.ns.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(str(tmp_path_factory.mktemp("snmpd")))
    yield a
    a.close()


@pytest.fixture
async def svc(tmp_path):
    async with running_service(tmp_path, max_attempts=2, control_timeout=1) as service:
        yield service


async def switch(svc, agent, user: str, snmp: dict, policy: dict):
    info = await seed(svc.store, nas_port=3799, vendor="generic", username=user,
                      nas_name="switch-1", nas_address=agent.ns.ns_ip, policy=policy,
                      control={"enforce": ["snmp"], "snmp": snmp})
    from dataclasses import replace
    s = await svc.store.get_session(info["sessions"][0])
    await svc.store.upsert_session(replace(s, attrs={**s.attrs, "NAS-Port": agent.ifindex}))
    await reload(svc.ctx)
    return info




async def test_v2c_if_admin_status_takes_the_port_down_and_up(agent, svc):
    templates = {"disconnect": [{"oid": IF_ADMIN + ".{port}", "type": "i", "value": "2"}],
                 "restore": [{"oid": IF_ADMIN + ".{port}", "type": "i", "value": "1"}]}
    info = await switch(svc, agent, "port1", {"port": PORT, "version": "2c",
                                              "community": "private",
                                              "templates": templates},
                        {"on_exhausted": "disconnect"})
    assert agent.get(f"{IF_ADMIN}.{agent.ifindex}") == "1"
    await svc.ctx.cluster.events.publish(exhausted(info))
    done = await until(lambda: finished(svc))
    assert done[0]["backend"] == "snmp" and done[0]["result"] == "ok"
    assert agent.get(f"{IF_ADMIN}.{agent.ifindex}") == "2"
    assert "UP" not in agent.ns.link("sub0")["flags"]
    audit = (await svc.store.list_audit(actor="policy"))[0]
    assert audit.request["request"]["set"] == [
        {"oid": f"{IF_ADMIN}.{agent.ifindex}", "type": "i", "value": "2"}]
    assert "private" not in str(audit.request)
    await svc.apply_to_subscriber(info["subscriber"].id, "restore")
    await until(lambda: finished(svc, n=2))
    assert agent.get(f"{IF_ADMIN}.{agent.ifindex}") == "1"
    assert "UP" in agent.ns.link("sub0")["flags"]


async def test_v3_auth_priv_writes_the_templated_value(agent, svc):
    snmp = {"port": PORT, "version": "3", "user": "ocsuser", "auth_protocol": "sha",
            "auth_key": "auth-pass-123", "priv_protocol": "aes", "priv_key": "priv-pass-123",
            "templates": {"throttle": [{"oid": SYS_CONTACT, "type": "s",
                                        "value": "{username} at {down_kbps}/{up_kbps}"}]}}
    info = await switch(svc, agent, "v3user", snmp, {
        "on_exhausted": "throttle", "throttle_profile": {"down_kbps": 640, "up_kbps": 320}})
    await svc.ctx.cluster.events.publish(exhausted(info))
    done = await until(lambda: finished(svc))
    assert done[0]["action"] == "throttle" and done[0]["result"] == "ok"
    assert agent.get(SYS_CONTACT) == "v3user at 640/320"


async def test_refused_set_is_dead_lettered_and_a_silent_agent_retried(agent, svc):
    info = await switch(svc, agent, "ro1", {"port": PORT, "version": "2c",
                                            "community": "private", "templates": {
                                                "disconnect": [{"oid": SYS_DESCR, "type": "s",
                                                                "value": "x"}]}},
                        {"on_exhausted": "disconnect"})
    await svc.ctx.cluster.events.publish(exhausted(info))
    dead = await until(lambda: finished(svc, "dead"))
    assert dead[0]["attempts"] == 1 and "notWritable" in dead[0]["last_error"]
    # A wrong community gets no answer at all (RFC 3584): timeouts, then dead.
    nas = svc.nas("switch-1")
    control = {**nas.control, "snmp": {**nas.control["snmp"], "community": "wrong",
                                       "timeout": 0.3, "retries": 0}}
    await svc.store.update_nas(nas.id, control=control)
    await reload(svc.ctx)
    await svc.kill(info["sessions"][0])
    dead = await until(lambda: finished(svc, "dead", 2), timeout=8)
    assert dead[0]["attempts"] == 2 and dead[0]["result"] == "timeout"


async def test_a_template_value_of_the_wrong_type_is_dead_lettered_at_once(agent, svc):
    info = await switch(svc, agent, "typo1", {"port": PORT, "version": "2c",
                                              "community": "private", "templates": {
                                                  "disconnect": [{"oid": SYS_CONTACT,
                                                                  "type": "i",
                                                                  "value": "down"}]}},
                        {"on_exhausted": "disconnect"})
    await svc.ctx.cluster.events.publish(exhausted(info))
    dead = await until(lambda: finished(svc, "dead"))
    assert dead[0]["attempts"] == 1 and "SNMP template value" in dead[0]["last_error"]
