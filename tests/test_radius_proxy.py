"""ocsd behind a real FreeRADIUS 3.2 proxy, as operators with a FreeRADIUS
front tier deploy it: radclient -> FreeRADIUS (proxy to realm "ocs") -> ocsd.

FreeRADIUS re-signs what it forwards with its own secret for ocsd, adds its
Proxy-State, and accepts an answer only if it carries that Proxy-State and a
valid Response Authenticator (and Message-Authenticator) for the request it
sent; radclient then checks FreeRADIUS's answer the same way."""

from __future__ import annotations

import re

import pytest

from tests.policy_harness import FREERADIUS_HEAD, FreeRadius
from tests.radius_harness import SECRET, free_udp_port, started
from tests.test_radius_daemon import GIB, seed

PROXY_SECRET = "proxy-front-secret-0123"

def proxy_conf(home_servers: str, auth_pool: str, acct_pool: str) -> str:
    """FreeRADIUS as a proxy: radclient's requests on {listen_auth}/{listen_acct}
    (secret {front_secret}) all go to realm "ocs", whose pools the caller's
    `home_servers` define."""
    return FREERADIUS_HEAD + """
client radclient {{
	ipaddr = 127.0.0.1
	secret = {front_secret}
}}
proxy_requests = yes
proxy server {{
	default_fallback = no
}}
""" + home_servers + f"""
realm ocs {{{{
	auth_pool = {auth_pool}
	acct_pool = {acct_pool}
}}}}
""" + """modules {{
}}
listen {{
	type = auth
	ipaddr = 127.0.0.1
	port = {listen_auth}
}}
listen {{
	type = acct
	ipaddr = 127.0.0.1
	port = {listen_acct}
}}
authorize {{
	update control {{
		&Proxy-To-Realm := "ocs"
	}}
}}
authenticate {{
}}
preacct {{
	update control {{
		&Proxy-To-Realm := "ocs"
	}}
}}
accounting {{
}}
post-proxy {{
}}
"""


PROXY_CONF = proxy_conf("""home_server ocsd-auth {{
	type = auth
	ipaddr = 127.0.0.1
	port = {auth_port}
	secret = {secret}
	response_window = 5
	status_check = none
}}
home_server ocsd-acct {{
	type = acct
	ipaddr = 127.0.0.1
	port = {acct_port}
	secret = {secret}
	response_window = 5
	status_check = none
}}
home_server_pool ocsd-auth-pool {{
	type = fail-over
	home_server = ocsd-auth
}}
home_server_pool ocsd-acct-pool {{
	type = fail-over
	home_server = ocsd-acct
}}""", "ocsd-auth-pool", "ocsd-acct-pool")


@pytest.fixture(scope="module")
def rad(tmp_path_factory):
    with started(tmp_path_factory.mktemp("radius-behind-proxy"), seed) as d:
        yield d


def started_proxy(directory, template: str, front_secret: str, **values) -> FreeRadius:
    """FreeRADIUS on `template` (from `proxy_conf`), listening on free ports."""
    listen_auth, listen_acct = free_udp_port(), free_udp_port()
    fr = FreeRadius(directory, template, front_secret=front_secret, listen_auth=listen_auth,
                    listen_acct=listen_acct, **values)
    fr.listen_auth, fr.listen_acct, fr.front_secret = listen_auth, listen_acct, front_secret
    return fr.start()


@pytest.fixture(scope="module")
def proxy(rad, tmp_path_factory):
    fr = started_proxy(tmp_path_factory.mktemp("freeradius-proxy"), PROXY_CONF, PROXY_SECRET,
                       secret=SECRET, auth_port=rad.auth_port, acct_port=rad.acct_port)
    yield fr
    fr.stop()


def via(rad, proxy, kind, text):
    """radclient's request to the proxy in front of ocsd, and its answer."""
    return rad.radclient(kind, text, secret=proxy.front_secret, timeout=5, retries=1,
                         port=proxy.listen_auth if kind == "auth" else proxy.listen_acct)


def test_pap_through_the_proxy_gets_ocsd_answers(rad, proxy):
    code, attrs = via(rad, proxy, "auth", 'User-Name = "timed1", User-Password = "pw-timed1", '
                                          'Message-Authenticator = 0x00')
    assert code == "Access-Accept", proxy.text()[-3000:]
    assert attrs["Framed-IP-Address"] == "10.9.9.9"
    assert 0 < int(attrs["Session-Timeout"]) <= 3600
    code, attrs = via(rad, proxy, "auth", 'User-Name = "timed1", User-Password = "wrong", '
                                          'Message-Authenticator = 0x00')
    assert code == "Access-Reject"
    assert "password" in attrs["Reply-Message"].lower()
    # FreeRADIUS did forward them, signed for ocsd (radclient's secret is not ocsd's),
    # and ocsd's answers carried back the Proxy-State it added (RFC 2865 §5.33).
    text = proxy.text()
    assert f"to 127.0.0.1:{rad.auth_port}" in text
    sent = re.findall(r"^\(\d+\)   Proxy-State = (0x[0-9a-f]+)$", text, re.M)
    assert len(sent) >= 4 and sent[0] == sent[1] and sent[2] == sent[3]  # request, answer


def test_accounting_through_the_proxy_is_charged(rad, proxy):
    acc = rad.ids["acct2"]
    before = rad.buckets(acc)["octets"]
    base = 'User-Name = "acct2", Acct-Session-Id = "px-1", '
    for text in ("Acct-Status-Type = Start",
                 "Acct-Status-Type = Interim-Update, Acct-Input-Octets = 4000, "
                 "Acct-Output-Octets = 1000, Acct-Session-Time = 60",
                 "Acct-Status-Type = Stop, Acct-Input-Octets = 8000, Acct-Output-Octets = 2000, "
                 "Acct-Session-Time = 120"):
        code, _ = via(rad, proxy, "acct", base + text)
        assert code == "Accounting-Response", proxy.text()[-3000:]
    assert rad.buckets(acc)["octets"] == before - 10_000
    assert before == 10 * GIB
    status, body = rad.api("GET", "/v1/sessions/radius:localhost-nas:px-1")
    assert status == 200 and body["status"] == "closed"


def test_nas_behind_the_proxy_are_told_apart_by_their_nas_identifier(rad, proxy):
    """With the proxy's entry marked `control.proxy`, two BRAS behind it may reuse an
    Acct-Session-Id, and one's Accounting-On closes only its own sessions."""
    _, page = rad.api("GET", "/v1/nas")
    (entry,) = [n for n in page["items"] if n["name"] == "localhost-nas"]
    status, body = rad.api("PATCH", f"/v1/nas/{entry['id']}", {"control": {"proxy": "no"}})
    assert status == 422 and "control.proxy is true or false" in str(body), body
    status, body = rad.api("PATCH", f"/v1/nas/{entry['id']}", {"control": {"proxy": True}})
    assert status == 200, body
    try:
        for box in ("bras-a", "bras-b"):
            code, _ = via(rad, proxy, "acct", f'User-Name = "on1", NAS-Identifier = "{box}", '
                                              'Acct-Session-Id = "same-1", '
                                              'Acct-Status-Type = Start')
            assert code == "Accounting-Response"

        def status_of(box: str) -> str:
            status, body = rad.api("GET", f"/v1/sessions/radius:localhost-nas/{box}:same-1")
            assert status == 200, body
            return body["status"]

        assert (status_of("bras-a"), status_of("bras-b")) == ("active", "active")
        code, _ = via(rad, proxy, "acct", 'NAS-Identifier = "bras-a", Acct-Session-Id = "0", '
                                          'Acct-Status-Type = Accounting-On')
        assert code == "Accounting-Response"
        assert (status_of("bras-a"), status_of("bras-b")) == ("closed", "active")
    finally:
        rad.api("PATCH", f"/v1/nas/{entry['id']}", {"control": {}})


def test_the_nas_behind_a_shared_entry_is_its_identifier_else_its_address():
    """Which NAS behind a prefix or proxy entry sent a report: NAS-Identifier, else
    NAS-IP-Address, else the source (an IPv4 sender of a dual-stack socket as IPv4)."""
    from radius import accounting as acct
    from radius.codec import A, Code, decode, encode_request

    def packet(*attrs):
        return decode(encode_request(Code.ACCOUNTING_REQUEST, 1, list(attrs), b"s"))

    ident, ip = (A.NAS_IDENTIFIER, b"bras-a"), (A.NAS_IP_ADDRESS, bytes([10, 0, 0, 9]))
    from ocs.components import unmapped

    for p, source, box in ((packet(ident, ip), "10.1.1.1", "bras-a"),
                           (packet(ip), "10.1.1.1", "10.0.0.9"),
                           (packet(), unmapped("::ffff:10.1.1.1"), "10.1.1.1"),
                           (packet(), unmapped("::FFFF:10.1.1.1"), "10.1.1.1"),
                           (packet(), unmapped("2001:db8::1"), "2001:db8::1")):
        assert acct.session_prefix("px", p, shared=True, source=source) == f"radius:px/{box}:"
    assert acct.session_prefix("px", packet(ident), shared=False, source="x") == "radius:px:"
    assert unmapped("::ffff:10.1.1.300") == "::ffff:10.1.1.300"  # not an address: as it is
    assert unmapped("::ffff:a01:101") == "::ffff:a01:101"  # hex form: no sender reports it
