"""Interoperability with a real Diameter peer: freeDiameter 1.2 (Debian freediameterd).

freeDiameter connects to ocsd as a client (it advertises the relay
application, so every application is in common), and the two exchange
CER/CEA, DWR/DWA in both directions and DPR/DPA in both directions:

1. ocsd with Tw = 1 s sends DWRs that freeDiameter answers; ocsd stops
   (SIGTERM) and sends DPR, freeDiameter answers DPA;
2. a new ocsd on the same port with Tw = 30 s: freeDiameter reconnects, its
   own watchdog (Tw 6 s) sends DWR, ocsd answers; freeDiameter stops and
   sends DPR, ocsd answers DPA.

tshark captures the loopback traffic on ocsd's port (a capture filter and a
bounded duration) and must decode it with no malformed packet and no expert
error. A second test does the same over TLS (RFC 6733 section 2.1: TLS from
the first byte) with certificates checked both ways. A third puts freeDiameter
between a PGW and ocsd as a relay agent (a DRA): credit control through it,
and an Abort-Session-Request back to the PGW through it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from diameter import base
from diameter import tables as T
from diameter.client import INITIAL, TERMINATION, DiameterClient, mscc
from diameter.codec import Message, value
from tests.services import free_port, make_certificates
from tests.test_daemon import Ocsd, http, in_store, metric
from tests.test_diameter_harness import tshark, tshark_fields

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "conf" / "diameter" / "freediameter.conf.in"
FREEDIAMETER = shutil.which("freeDiameterd")
TSHARK = shutil.which("tshark")
OCS_HOST = "ocs.test.example"
FD_HOST = "fd.test.example"


def certificates(directory: Path) -> dict[str, Path]:
    """A test CA and certificates for ocsd and freeDiameter."""
    make_certificates(directory, {"ocs": (OCS_HOST, f"DNS:{OCS_HOST}"),
                                  "fd": (FD_HOST, f"DNS:{FD_HOST}")})
    return {n: directory / n for n in ("ca.pem", "ocs.pem", "ocs.key", "fd.pem", "fd.key")}


def freediameter_config(directory: Path, certs: dict, ocs_port: int, *, tls: bool) -> Path:
    assert FREEDIAMETER, "freeDiameterd is not installed (Debian: apt-get install freediameter)"
    text = TEMPLATE.read_text()
    for key, val in {"IDENTITY": FD_HOST, "REALM": "test.example", "PORT": str(free_port()),
                     "SECPORT": str(free_port()), "CERT": str(certs["fd.pem"]),
                     "KEY": str(certs["fd.key"]), "CA": str(certs["ca.pem"]),
                     "OCS_HOST": OCS_HOST, "OCS_PORT": str(ocs_port), "TW": "6",
                     "PEER_OPTS": "" if tls else "No_TLS;"}.items():
        text = text.replace(f"@{key}@", val)
    assert not re.search(r"@[A-Z_]+@", text), "a placeholder of the template is not filled"
    path = directory / "freediameter.conf"
    path.write_text(text)
    return path


class Capture:
    """tshark on loopback, filtered to one TCP port, bounded in time."""

    def __init__(self, path: Path, port: int, seconds: int):
        assert TSHARK, "tshark is not installed (Debian: apt-get install tshark)"
        self.path = path
        self.proc = subprocess.Popen(
            [TSHARK, "-i", "lo", "-f", f"tcp port {port}", "-a", f"duration:{seconds}",
             "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        seen = ""
        while time.monotonic() < deadline:  # wait until it really captures
            line = self.proc.stderr.readline()
            seen += line
            if "Capturing on" in line:
                return
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"tshark did not start capturing: {seen}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            time.sleep(0.3)  # let the last segments reach the capture
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(20)


def stop_freediameter(proc: subprocess.Popen) -> None:
    """SIGTERM (freeDiameter then sends DPR to its peers), else kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def count(d: Ocsd, cmd: str, result: str = "2001") -> float:
    _, _, body = http(d.url + "/metrics")
    return metric(body.decode(), "ocs_diameter_messages_total",
                  f'{{cmd="{cmd}",peer="{FD_HOST}",result_code="{result}"}}') or 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ocsd_config(port: int, tw: float, extra: str = "") -> str:
    return (f'\n[diameter]\nlisten = "127.0.0.1:{port}"\norigin_host = "{OCS_HOST}"\n'
            f'origin_realm = "test.example"\nallowed_hosts = ["{FD_HOST}"]\n'
            f"watchdog_interval = {tw}\n{extra}")


def check_capture(pcap: Path, port: int) -> list[tuple[str, str, str]]:
    """(direction, command, flags) of every Diameter message; asserts a clean decode."""
    problems = tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608 || "
                                  "(diameter && _ws.expert.severity >= 6291456)",
                      "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message",
                      port=port)
    assert problems.strip() == "", problems
    rows = tshark_fields(pcap, "tcp.srcport", "diameter.cmd.code", "diameter.flags.request",
                         "diameter.Result-Code", port=port)
    names = {"257": "CE", "280": "DW", "282": "DP"}
    out = []
    for src, code, req, result in rows:
        # One message per segment here; several would show as comma lists.
        for c, r in zip(code.split(","), req.split(",")):
            kind = names.get(c, c) + ("R" if r in ("1", "True") else "A")
            out.append(("ocsd" if int(src) == port else "fd", kind, result))
    return out


def test_freediameter_exchanges_capabilities_watchdogs_and_disconnects(tmp_path):
    certs = certificates(tmp_path)
    port = free_port()
    conf = freediameter_config(tmp_path, certs, port, tls=False)
    capture = Capture(tmp_path / "diameter.pcapng", port, seconds=60)
    first = Ocsd(tmp_path, extra=ocsd_config(port, tw=1)).start()
    fd_log = open(tmp_path / "freediameter.log", "w")
    fd = subprocess.Popen([FREEDIAMETER, "-c", str(conf)], stdout=fd_log,
                          stderr=subprocess.STDOUT)
    second = None
    try:
        # Phase 1: CER/CEA; our DWRs answered by freeDiameter; our DPR at shutdown.
        first.wait_log(rf"peer open: {FD_HOST} \(freeDiameter\) from 127\.0\.0\.1", 15)
        wait_for(lambda: count(first, "DWA") >= 2, 10, "two DWAs from freeDiameter")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
        first.wait_log(rf"peer closed: {FD_HOST} 127\.0\.0\.1: DPA received")
        first.wait_log(r"Diameter stopped \(1 peers sent DPR\)")
        first.stop()

        # Phase 2: freeDiameter reconnects; its watchdog DWR answered; its DPR answered.
        second = Ocsd(tmp_path, extra=ocsd_config(port, tw=30)).start()
        second.wait_log(rf"peer open: {FD_HOST}", 15)
        wait_for(lambda: count(second, "DWR", "") >= 1, 15, "a DWR from freeDiameter")
        fd.send_signal(signal.SIGTERM)
        assert fd.wait(20) == 0
        second.wait_log(rf"peer {FD_HOST}: peer disconnects \(REBOOTING\)")
        assert count(second, "DPA") == 1 and count(second, "DWA") >= 1
    finally:
        if fd.poll() is None:
            fd.kill()
            fd.wait(5)
        fd_log.close()
        capture.stop()
        first.stop()
        if second is not None:
            second.stop()
    log = (tmp_path / "freediameter.log").read_text()
    assert "'STATE_WAITCEA'\t-> 'STATE_OPEN'\t'ocs.test.example'" in log, log[-2000:]
    seen = check_capture(capture.path, port)
    kinds = [(who, kind) for who, kind, _ in seen]
    for expected in [("fd", "CER"), ("ocsd", "CEA"), ("ocsd", "DWR"), ("fd", "DWA"),
                     ("ocsd", "DPR"), ("fd", "DPA"), ("fd", "DWR"), ("ocsd", "DWA"),
                     ("fd", "DPR"), ("ocsd", "DPA")]:
        assert expected in kinds, (expected, kinds)
    assert [r for who, kind, r in seen if kind == "CEA"] == ["2001", "2001"]
    assert kinds.count(("fd", "CER")) == 2


def test_tls_with_freediameter_and_our_client(tmp_path):
    """TLS from the first byte on [diameter] tls_listen, client certificates required
    (tls_ca): freeDiameter and our client get in, a client without a certificate
    does not; credit control works over it."""
    certs = certificates(tmp_path)
    plain, port = free_port(), free_port()
    tls = (f'tls_listen = "127.0.0.1:{port}"\ntls_certificate = "{certs["ocs.pem"]}"\n'
           f'tls_key = "{certs["ocs.key"]}"\ntls_ca = "{certs["ca.pem"]}"\n'
           'allowed_realms = ["pgw.example"]\n')
    d = Ocsd(tmp_path, extra=ocsd_config(plain, tw=30, extra=tls))

    async def prepare(store):
        acct = await store.create_account(name="tls", currency="EUR", billing="prepaid")
        plan = await store.create_plan(name="d", currency="EUR", allowances=[
            {"kind": "octets", "units": 10_000_000}])
        await store.create_subscriber(account_id=acct.id, plan_id=plan.id, msisdn="41790000077")
    in_store(d.store_url, prepare)
    d.start()
    conf = freediameter_config(tmp_path, certs, port, tls=True)
    fd_log = open(tmp_path / "freediameter.log", "w")
    fd = subprocess.Popen([FREEDIAMETER, "-c", str(conf)], stdout=fd_log,
                          stderr=subprocess.STDOUT)
    try:
        d.wait_log(rf"peer open: {FD_HOST} \(freeDiameter\) from 127\.0\.0\.1 \(TLS\)", 15)

        async def clients():
            ctx = ssl.create_default_context(cafile=str(certs["ca.pem"]))
            ctx.check_hostname = False  # we connect by address; the chain is still verified
            ctx.load_cert_chain(str(certs["fd.pem"]), str(certs["fd.key"]))
            c = DiameterClient("127.0.0.1", port, origin_host="pgw1.pgw.example",
                               origin_realm="pgw.example", ssl=ctx)
            assert value((await c.connect()).avps, T.RESULT_CODE) == 2001
            a = await c.request(c.ccr("tls-1", INITIAL, 0, msisdn="41790000077",
                                      msccs=[mscc(10, requested={"total": 1000})]))
            assert value(a.avps, T.RESULT_CODE) == 2001
            await c.close()

            anonymous = ssl.create_default_context(cafile=str(certs["ca.pem"]))
            anonymous.check_hostname = False
            stranger = DiameterClient("127.0.0.1", port, ssl=anonymous)
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.TimeoutError)):
                await stranger.connect(timeout=3)
                await stranger.request(stranger.ccr("x", INITIAL, 0, msisdn="1"), 3)
        asyncio.run(clients())
    finally:
        stop_freediameter(fd)
        fd_log.close()
        d.stop()
    log = (tmp_path / "freediameter.log").read_text()
    assert "'STATE_WAITCEA'\t-> 'STATE_OPEN'\t'ocs.test.example'" in log, log[-2000:]


def test_sighup_rotates_the_tls_certificate_and_ca_for_new_connections(tmp_path):
    """Certificate, key and CA files replaced in place, then SIGHUP: new connections
    get the new certificate and are checked against the new CA only (a client of
    the old CA is refused); the connection opened before keeps working. A file
    that cannot be loaded keeps the running ones."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = certificates(tmp_path / "old"), certificates(tmp_path / "new")
    files = {name: tmp_path / f"server-{name}" for name in ("ocs.pem", "ocs.key", "ca.pem")}
    for name, path in files.items():
        path.write_bytes(old[name].read_bytes())
    plain, port = free_port(), free_port()
    tls = (f'tls_listen = "127.0.0.1:{port}"\ntls_certificate = "{files["ocs.pem"]}"\n'
           f'tls_key = "{files["ocs.key"]}"\ntls_ca = "{files["ca.pem"]}"\n'
           'allowed_realms = ["pgw.example"]\n')
    d = Ocsd(tmp_path, extra=ocsd_config(plain, tw=30, extra=tls))
    trust_both = tmp_path / "both-cas.pem"
    trust_both.write_bytes(old["ca.pem"].read_bytes() + new["ca.pem"].read_bytes())

    def client(certs, name: str) -> DiameterClient:
        ctx = ssl.create_default_context(cafile=str(trust_both))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(certs["fd.pem"]), str(certs["fd.key"]))
        return DiameterClient("127.0.0.1", port, origin_host=f"{name}.pgw.example",
                              origin_realm="pgw.example", ssl=ctx)

    def served(c: DiameterClient) -> bytes:
        return c._writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

    def der(pem: Path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(pem.read_text())

    async def refused(c: DiameterClient) -> bool:
        try:
            cea = await c.connect(timeout=3)
            await c.request(c.ccr("x", INITIAL, 0, msisdn="1"), 3)
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError):
            return True
        finally:
            await c.close(dpr=False)
        return value(cea.avps, T.RESULT_CODE) != 2001

    async def gets_in(certs, name: str, served_with: Path) -> None:
        c = client(certs, name)
        assert value((await c.connect()).avps, T.RESULT_CODE) == 2001
        assert served(c) == der(served_with)
        await c.close()

    async def scenario():
        before = client(old, "before")
        assert value((await before.connect()).avps, T.RESULT_CODE) == 2001
        assert served(before) == der(old["ocs.pem"])

        for name, path in files.items():
            path.write_bytes(new[name].read_bytes())
        await asyncio.to_thread(d.reload)
        d.wait_log(r"Diameter TLS certificate, key and CA reloaded for new connections")
        await gets_in(new, "after", new["ocs.pem"])
        assert await refused(client(old, "stale")), "a client of the old CA got in"
        dwr_answer = await before.request(base.dwr(before.local, *before.ids()))
        assert value(dwr_answer.avps, T.RESULT_CODE) == 2001  # opened before: still served
        await before.close()

        files["ocs.pem"].write_text("not a certificate")
        await asyncio.to_thread(d.reload)
        d.wait_log(r"Diameter TLS certificates not reloaded, keeping the running ones")
        await gets_in(new, "again", new["ocs.pem"])  # the running ones kept
    d.start()
    try:
        asyncio.run(scenario())
    finally:
        d.stop()


RELAY_HOST = FD_HOST  # its certificate's name; its realm is the PGW's
RELAY_CONF = """
Identity = "{identity}";
Realm = "pgw.example";
Port = {port};
SecPort = {secport};
ListenOn = "127.0.0.1";
No_SCTP;
No_IPv6;
TcTimer = 2;
TwTimer = 6;
TLS_Cred = "{cert}", "{key}";
TLS_CA = "{ca}";
LoadExtension = "/usr/lib/freeDiameter/dict_nasreq.fdx";
LoadExtension = "/usr/lib/freeDiameter/dict_dcca.fdx";
LoadExtension = "/usr/lib/freeDiameter/dict_dcca_3gpp.fdx";
LoadExtension = "/usr/lib/freeDiameter/acl_wl.fdx" : "{acl}";
ConnectPeer = "{ocs_host}" {{ ConnectTo = "127.0.0.1"; Port = {ocs_port}; No_TLS; }};
"""


def test_credit_control_through_a_freediameter_relay(tmp_path):
    """A PGW reaches ocsd through a Diameter relay agent (freeDiameter 1.2, routing
    on Destination-Realm), as behind a DRA: the CCRs arrive from the relay's
    connection with the PGW's Origin-Host and a Route-Record, and the answers find
    their way back through it. The relay and the PGW are different peers; the
    relay is the one allowed by realm."""
    from tests.test_diameter_daemon import CHARGING, TOKEN, prepare
    certs = certificates(tmp_path)
    ocs_port, relay_port = free_port(), free_port()
    (tmp_path / "acl.conf").write_text("ALLOW_IPSEC pgw1.pgw.example\n")
    conf = tmp_path / "relay.conf"
    conf.write_text(RELAY_CONF.format(
        identity=RELAY_HOST, port=relay_port, secport=free_port(), cert=certs["fd.pem"],
        key=certs["fd.key"], ca=certs["ca.pem"], acl=tmp_path / "acl.conf",
        ocs_host=OCS_HOST, ocs_port=ocs_port))
    d = Ocsd(tmp_path, extra=f'bootstrap_token = "{TOKEN}"\n' + CHARGING + (
        f'\n[diameter]\nlisten = "127.0.0.1:{ocs_port}"\norigin_host = "{OCS_HOST}"\n'
        'origin_realm = "test.example"\nallowed_realms = ["pgw.example"]\n'
        'log_credit_control = true\n'))
    accounts = in_store(d.store_url, prepare)
    d.start()
    relay_log = open(tmp_path / "relay.log", "w")
    relay = subprocess.Popen([FREEDIAMETER, "-c", str(conf)], stdout=relay_log,
                             stderr=subprocess.STDOUT)
    try:
        d.wait_log(rf"peer open: {RELAY_HOST} \(freeDiameter\) from 127\.0\.0\.1", 15)

        def kill(session_id: str) -> None:
            status, body = d.api("POST", "/v1/sessions/" + urllib.parse.quote(
                session_id, safe="") + "/kill", TOKEN)
            assert status == 202 and body["items"][0]["backend"] == "diameter", body

        asr = asyncio.run(_session_through_the_relay(relay_port, kill))
        assert value(asr.avps, T.DESTINATION_HOST) == "pgw1.pgw.example"
        assert value(asr.avps, T.ORIGIN_HOST) == OCS_HOST
        status, body = d.api("GET", f"/v1/accounts/{accounts['misc']}", TOKEN)
        octets = [b for b in body["balance"]["buckets"] if b["kind"] == "octets"]
        assert octets[0]["balance"] == 5_000_000 - 1_500_000 and octets[0]["reserved"] == 0
        # The CCRs came over the relay's connection, from the PGW's session.
        for op in ("CCR-I #0", "CCR-T #1"):
            d.wait_log(rf"{op} .* peer={re.escape(RELAY_HOST)} "
                       r"session=pgw1\.pgw\.example;relay;1$", 5)
        # The ASR went to the PGW through the relay, and its answer came back that way.
        d.wait_log(r"ASR pgw1\.pgw\.example;relay;1 to pgw1\.pgw\.example via "
                   + re.escape(RELAY_HOST), 5)
        d.wait_log(r"ASR pgw1\.pgw\.example;relay;1 answered 2001 by pgw1\.pgw\.example", 5)
    finally:
        stop_freediameter(relay)
        relay_log.close()
        d.stop()


async def _session_through_the_relay(relay_port: int, kill) -> Message:
    """CCR-I, an operator's kill (ASR back through the relay), CCR-T; the ASR."""
    c = DiameterClient("127.0.0.1", relay_port, origin_host="pgw1.pgw.example",
                       origin_realm="pgw.example", destination_realm="test.example")
    cea = await c.connect()
    try:
        assert value(cea.avps, T.RESULT_CODE) == 2001
        assert value(cea.avps, T.ORIGIN_HOST) == RELAY_HOST
        a = await c.request(c.ccr("pgw1.pgw.example;relay;1", INITIAL, 0, msisdn="41790000006",
                                  msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert value(a.avps, T.ORIGIN_HOST) == OCS_HOST  # ocsd answered, the relay relayed
        gsu = value(value(a.avps, T.MULTIPLE_SERVICES_CREDIT_CONTROL), T.GRANTED_SERVICE_UNIT)
        assert value(gsu, T.CC_TOTAL_OCTETS) == 2_000_000
        kill("pgw1.pgw.example;relay;1")
        for _ in range(100):
            asrs = [m for m in c.server_requests if m.code == T.CMD_ABORT_SESSION]
            if asrs:
                break
            await asyncio.sleep(0.05)
        assert asrs and value(asrs[0].avps, T.SESSION_ID) == "pgw1.pgw.example;relay;1"
        a = await c.request(c.ccr("pgw1.pgw.example;relay;1", TERMINATION, 1,
                                  msisdn="41790000006",
                                  msccs=[mscc(10, used={"total": 1_500_000})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        return asrs[0]
    finally:
        await c.close()
