"""RADIUS over TLS (RFC 6614, "RadSec"): a real FreeRADIUS 3.2 proxy forwarding to
ocsd over TLS with a client certificate, and a raw TLS client for what a proxy
never sends (pipelined requests, broken framing, no or a foreign certificate,
an unregistered address).

FreeRADIUS is the RadSec client operators put in front of UDP-only NAS, and
the one eduroam-style deployments use: radclient -> FreeRADIUS (UDP) ->
ocsd (TLS, shared secret "radsec")."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest

from radius import codec
from radius.codec import A, Code
from tests.radius_harness import RadiusOcsd, started
from tests.services import free_port
from tests.test_daemon import metric
from tests.test_diameter_interop import certificates
from tests.test_radius_daemon import GIB, seed
from tests.test_radius_proxy import proxy_conf, started_proxy, via

RADSEC = b"radsec"
FRONT_SECRET = "tls-front-secret-0123"

PROXY_CONF = proxy_conf("""home_server ocsd-tls {{
	type = auth+acct
	ipaddr = 127.0.0.1
	port = {tls_port}
	proto = tcp
	secret = radsec
	response_window = 5
	status_check = none
	tls {{
		private_key_file = {key}
		certificate_file = {cert}
		ca_file = {ca}
		fragment_size = 8192
		check_crl = no
		cipher_list = "DEFAULT"
	}}
}}
home_server_pool ocsd-pool {{
	type = fail-over
	home_server = ocsd-tls
}}""", "ocsd-pool", "ocsd-pool")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return certificates(tmp_path_factory.mktemp("radsec-certs"))


@pytest.fixture(scope="module")
def rad(tmp_path_factory, certs):
    tls_port = free_port()
    extra = (f'tls_listen = "127.0.0.1:{tls_port}"\ntls_certificate = "{certs["ocs.pem"]}"\n'
             f'tls_key = "{certs["ocs.key"]}"\ntls_ca = "{certs["ca.pem"]}"\n'
             'tls_idle_timeout = 2\n')
    with started(tmp_path_factory.mktemp("radsec"), seed, extra_radius=extra) as d:
        d.tls_port = tls_port
        yield d


@pytest.fixture(scope="module")
def proxy(rad, certs, tmp_path_factory):
    fr = started_proxy(tmp_path_factory.mktemp("freeradius-radsec"), PROXY_CONF, FRONT_SECRET,
                       tls_port=rad.tls_port, key=certs["fd.key"], cert=certs["fd.pem"],
                       ca=certs["ca.pem"])
    yield fr
    fr.stop()


def test_freeradius_over_tls_gets_answers_and_accounting_is_charged(rad, proxy):
    code, attrs = via(rad, proxy, "auth", 'User-Name = "demo", User-Password = "demo", '
                                          'Message-Authenticator = 0x00')
    assert code == "Access-Accept", proxy.text()[-3000:]
    assert attrs["Filter-Id"] == "20M" and attrs["Acct-Interim-Interval"] == "300"
    code, attrs = via(rad, proxy, "auth", 'User-Name = "demo", User-Password = "nope", '
                                          'Message-Authenticator = 0x00')
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"
    assert "(TLS)" in proxy.text()  # FreeRADIUS really proxied over TLS

    acc = rad.ids["acct2"]
    before = rad.buckets(acc)["octets"]
    assert before == 10 * GIB
    base = 'User-Name = "acct2", Acct-Session-Id = "tls-1", '
    for status, octets in (("Start", 0), ("Interim-Update", 7000), ("Stop", 9000)):
        code, _ = via(rad, proxy, "acct", base + f"Acct-Status-Type = {status}, "
                                                 f"Acct-Input-Octets = {octets}, "
                                                 f"Acct-Session-Time = {octets // 100}")
        assert code == "Accounting-Response", status
        assert rad.buckets(acc)["octets"] == before - octets, status
    status, body = rad.api("GET", "/v1/sessions/radius:localhost-nas:tls-1")
    assert status == 200 and body["status"] == "closed"
    rad.wait_log(r"RADIUS/TLS connection from 127\.0\.0\.1 \(certificate CN=fd\.test\.example\)")
    # FreeRADIUS keeps its connection open: counted for the NAS entry it comes from.
    assert metric(rad.metrics_text(), "ocs_radius_tls_connections",
                  '{nas="localhost-nas"}') >= 1


# ------------------------------------------------------------------ a raw TLS client
def tls_client(certs, *, cert: str | None = "fd", ca=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or certs["ca.pem"]))
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(str(certs[f"{cert}.pem"]), str(certs[f"{cert}.key"]))
    return ctx


def connect(rad, ctx: ssl.SSLContext, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", rad.tls_port), timeout=5,
                                   source_address=(source, 0))
    return ctx.wrap_socket(raw)


def read_packets(sock: ssl.SSLSocket, count: int) -> list[codec.Packet]:
    buf, out = b"", []
    while len(out) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 4 and len(buf) >= int.from_bytes(buf[2:4], "big"):
            length = int.from_bytes(buf[2:4], "big")
            out.append(codec.decode(buf[:length]))
            buf = buf[length:]
    return out


def pap(ident: int, user: bytes, password: bytes) -> bytes:
    auth = codec.new_authenticator()
    return codec.encode_request(Code.ACCESS_REQUEST, ident, [
        (A.USER_NAME, user), (A.USER_PASSWORD, codec.hide_password(password, RADSEC, auth))],
        RADSEC, authenticator=auth)


def test_one_connection_carries_auth_accounting_and_status_pipelined(rad, certs):
    """Requests written back to back, each kind on the one port: every answer comes
    back signed with "radsec" for its own request; no Message-Authenticator needed."""
    acct = codec.encode_request(Code.ACCOUNTING_REQUEST, 2, [
        (A.USER_NAME, b"acct1"), (A.ACCT_STATUS_TYPE, codec.u32(1)),
        (A.ACCT_SESSION_ID, b"tls-pipe-1")], RADSEC)
    status = codec.encode_request(Code.STATUS_SERVER, 3, [], RADSEC, message_authenticator=True)
    requests = {1: pap(1, b"demo", b"demo"), 2: acct, 3: status, 4: pap(4, b"demo", b"no")}
    with connect(rad, tls_client(certs)) as sock:
        sock.sendall(b"".join(requests.values()))
        replies = {p.identifier: p for p in read_packets(sock, 4)}
    assert {i: Code(p.code).name for i, p in replies.items()} == {
        1: "ACCESS_ACCEPT", 2: "ACCOUNTING_RESPONSE", 3: "ACCESS_ACCEPT", 4: "ACCESS_REJECT"}
    for ident, reply in replies.items():
        request = codec.decode(requests[ident])
        assert codec.reply_authenticator_ok(reply, RADSEC, request.authenticator), ident


def test_broken_framing_closes_the_connection_and_is_counted(rad, certs):
    before = rad.dropped("bad_length")
    with connect(rad, tls_client(certs)) as sock:
        sock.sendall(b"\x01\x07\x00\x05" + b"\x00" * 16)  # a Length of 5
        assert sock.recv(100) == b""  # closed by ocsd
    assert rad.dropped("bad_length") == before + 1
    rad.wait_log(r"RADIUS/TLS connection from 127\.0\.0\.1 closed: a packet Length of 5")
    # A packet cut in two writes is read whole.
    with connect(rad, tls_client(certs)) as sock:
        data = pap(9, b"demo", b"demo")
        sock.sendall(data[:7])
        time.sleep(0.05)
        sock.sendall(data[7:])
        (reply,) = read_packets(sock, 1)
        assert reply.code == Code.ACCESS_ACCEPT


def test_a_nas_without_a_certificate_of_the_ca_is_refused(rad, certs, tmp_path):
    before = rad.dropped("tls_handshake")
    for ctx in (tls_client(certs, cert=None),
                tls_client(certificates(tmp_path), ca=certs["ca.pem"])):  # another CA
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with connect(rad, ctx) as sock:
                sock.sendall(pap(1, b"demo", b"demo"))
                assert sock.recv(100) == b""  # TLS 1.3: refused after the handshake
                raise ConnectionError("closed")
    assert rad.dropped("tls_handshake") == before + 2
    rad.wait_log(r"RADIUS/TLS connection from 127\.0\.0\.1 closed: the TLS handshake failed "
                 r"\(.*CERTIFICATE.*\); is its certificate signed by \[radius\] tls_ca\?")
    # The server goes on: a NAS with a good certificate is answered.
    with connect(rad, tls_client(certs)) as sock:
        sock.sendall(pap(1, b"demo", b"demo"))
        assert read_packets(sock, 1)[0].code == Code.ACCESS_ACCEPT


def test_an_unregistered_address_is_closed_with_a_warning(rad, certs):
    before = rad.dropped("unknown_client")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # closed before any TLS
        connect(rad, tls_client(certs), source="127.0.0.9")
    assert rad.dropped("unknown_client") == before + 1
    rad.wait_log(r"RADIUS/TLS connection from 127\.0\.0\.9 closed: no NAS is registered")


def test_an_idle_connection_is_closed_after_tls_idle_timeout(rad, certs):
    with connect(rad, tls_client(certs)) as sock:
        sock.sendall(pap(1, b"demo", b"demo"))
        assert read_packets(sock, 1)[0].code == Code.ACCESS_ACCEPT
        opened = metric(rad.metrics_text(), "ocs_radius_tls_connections", '{nas="localhost-nas"}')
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed by ocsd, not by this client's timeout
        assert 1.5 < time.monotonic() - started < 8
    rad.wait_log(r"RADIUS/TLS connection from 127\.0\.0\.1 closed: idle for 2 s")
    assert metric(rad.metrics_text(), "ocs_radius_tls_connections",
                  '{nas="localhost-nas"}') <= opened - 1


def test_a_missing_certificate_stops_the_start_naming_the_file(tmp_path, certs):
    missing = tmp_path / "nope.pem"
    d = RadiusOcsd(tmp_path, extra_radius=(
        f'tls_listen = "127.0.0.1:{free_port()}"\ntls_certificate = "{missing}"\n'
        f'tls_key = "{certs["ocs.key"]}"\ntls_ca = "{certs["ca.pem"]}"\n'))
    try:
        d.start(wait_ready=False)
        assert d.wait() == 1
        d.wait_log(r"cannot start: cannot load the RADIUS TLS certificate, key or CA "
                   rf"\(\[radius\] tls_certificate, tls_key, tls_ca\): .*{missing}.*"
                   r"No such file")
        assert "Traceback" not in d.log()
    finally:
        d.stop()


def test_sighup_reads_rotated_certificate_files_for_new_connections(tmp_path, certs):
    """Certificates are rotated in place (same paths): SIGHUP makes new connections use
    the new one. A file that cannot be loaded keeps the running certificate."""
    directory = certs["ca.pem"].parent
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(certs["ocs.pem"].read_bytes())
    key.write_bytes(certs["ocs.key"].read_bytes())
    port = free_port()
    d = RadiusOcsd(tmp_path, extra_radius=(
        f'tls_listen = "127.0.0.1:{port}"\ntls_certificate = "{cert}"\n'
        f'tls_key = "{key}"\ntls_ca = "{certs["ca.pem"]}"\n'))
    d.tls_port = port

    async def nas(store):
        await store.create_nas(name="local", address="127.0.0.1", secret="not-used-over-tls-1")
    d.seed(nas)

    def served_name() -> str:
        with connect(d, tls_client(certs)) as sock:
            sock.sendall(codec.encode_request(Code.STATUS_SERVER, 1, [], RADSEC,
                                              message_authenticator=True))
            assert read_packets(sock, 1)[0].code == Code.ACCESS_ACCEPT
            return dict(x[0] for x in sock.getpeercert()["subject"])["commonName"]
    try:
        d.start()
        assert served_name() == "ocs.test.example"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=rotated.example",
                        "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key")],
                       check=True, capture_output=True, timeout=30)
        d.reload()
        d.wait_log(r"RADIUS TLS certificate, key and CA reloaded for new connections")
        assert served_name() == "rotated.example"
        cert.write_text("not a certificate")
        d.reload()
        d.wait_log(r"RADIUS TLS certificates not reloaded, keeping the running ones")
        assert served_name() == "rotated.example"
    finally:
        d.stop()


def test_tls_listen_needs_a_ca_for_the_nas_certificates():
    from ocs.config import ConfigError, from_dict
    with pytest.raises(ConfigError, match="tls_listen needs tls_certificate, tls_key and "
                                          "tls_ca"):
        from_dict({"radius": {"tls_listen": "127.0.0.1:2083", "tls_certificate": "c.pem",
                              "tls_key": "k.pem"}})


def test_freeradius_connects_again_after_ocsd_was_killed(tmp_path, certs):
    """ocsd killed with SIGKILL under a RadSec proxy and started again: FreeRADIUS
    finds its TLS connection dead, opens a new one, and gets answers again; an
    accounting session begun before the crash ends charged once after it."""
    tls_port = free_port()
    extra = (f'tls_listen = "127.0.0.1:{tls_port}"\ntls_certificate = "{certs["ocs.pem"]}"\n'
             f'tls_key = "{certs["ocs.key"]}"\ntls_ca = "{certs["ca.pem"]}"\n')
    (tmp_path / "ocsd").mkdir()
    (tmp_path / "fr").mkdir()
    with started(tmp_path / "ocsd", seed, extra_radius=extra) as d:
        d.tls_port = tls_port
        fr = started_proxy(tmp_path / "fr", PROXY_CONF, FRONT_SECRET, tls_port=tls_port,
                           key=certs["fd.key"], cert=certs["fd.pem"], ca=certs["ca.pem"])
        try:
            pap = 'User-Name = "demo", User-Password = "demo", Message-Authenticator = 0x00'
            assert via(d, fr, "auth", pap)[0] == "Access-Accept", fr.text()[-3000:]
            account = d.ids["acct1"]
            before = d.buckets(account)["octets"]
            base = 'User-Name = "acct1", Acct-Session-Id = "tls-crash", '
            assert via(d, fr, "acct", base + "Acct-Status-Type = Start")[0] == \
                "Accounting-Response"

            d.proc.kill()
            d.proc.wait(10)
            d._log.close()
            d.start()
            deadline, code = time.monotonic() + 30, None
            while code != "Access-Accept" and time.monotonic() < deadline:
                code, _ = via(d, fr, "auth", pap)
            assert code == "Access-Accept", fr.text()[-3000:]
            stop = base + ("Acct-Status-Type = Stop, Acct-Input-Octets = 5000, "
                           "Acct-Session-Time = 50")
            assert via(d, fr, "acct", stop)[0] == "Accounting-Response"
            assert via(d, fr, "acct", stop)[0] == "Accounting-Response"  # once more
            assert d.buckets(account)["octets"] == before - 5000
        finally:
            fr.stop()
