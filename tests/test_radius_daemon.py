"""The RADIUS front-end of a running ocsd, driven by FreeRADIUS's radclient (and a
raw UDP client for what radclient cannot send): authentication, authorisation
attributes, accounting = charging with balances read back through the API,
retransmissions, secrets and Message-Authenticator rules, Accounting-On,
malformed input, events."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time

import pytest

from ocs import demo
from ocs.passwords import md4
from radius import codec, mschap
from radius.auth import MS_CHAP2_RESPONSE, MS_CHAP2_SUCCESS, MS_CHAP_CHALLENGE, \
    MS_MPPE_RECV_KEY, MS_MPPE_SEND_KEY
from tests.radius_harness import A, Code, RadiusOcsd, SECRET, acct_packet, s, started

GIB = 2**30


async def seed(store) -> dict:
    info = await demo.seed(store)
    ids = {sub.label: sub.account_id for sub in info.subscribers}
    garden = await store.create_plan(
        name="garden", currency="EUR", allowances=[{"kind": "octets", "units": 10**6}],
        final_unit={"action": "redirect", "redirect_url": "http://pay.example/",
                    "filter_id": "walled"})
    tiny = await store.create_plan(name="tiny", currency="EUR",
                                   allowances=[{"kind": "octets", "units": 1_000_000}])
    timed = await store.create_plan(name="timed", currency="EUR",
                                    allowances=[{"kind": "seconds", "units": 3600}],
                                    speed_profile={"down_kbps": 8000, "up_kbps": 1000})
    nothing = await store.create_plan(name="nothing", currency="EUR")

    async def sub(name, plan, *, status="active", max_sessions=1, framed_ip=None):
        acct = await store.create_account(name=name, currency="EUR", billing="prepaid")
        await store.create_subscriber(account_id=acct.id, plan_id=plan.id, username=name,
                                      password="pw-" + name, max_sessions=max_sessions,
                                      framed_ip=framed_ip)
        if status != "active":
            await store.set_account_status(acct.id, status, reason="test")
        ids[name] = acct.id

    data_plan = await store.find_plan("demo-data")
    for name in ("acct1", "acct2", "retx", "on1", "on2", "fs", "ast", "kam", "mschap",
                 "burst", "reuse1", "wrap1", "realm1", "reset1", "ipa", "ipb"):
        await sub(name, data_plan, max_sessions=5)
    await sub("garden1", garden, status="suspended")
    await sub("suspended1", tiny, status="suspended")
    await sub("empty1", nothing)
    await sub("tiny1", tiny)
    await sub("timed1", timed, framed_ip="10.9.9.9")
    await sub("timed2", timed, framed_ip="10.9.9.10")  # only for the Proxy-State test
    await sub("single", data_plan, max_sessions=1)
    voice = await store.find_plan("demo-voice")
    for name in ("fs", "ast", "kam"):
        acct_id = ids[name]
        await store.create_subscriber(account_id=acct_id, plan_id=voice.id,
                                      sip_user="sip-" + name)
    return ids


@pytest.fixture(scope="module")
def rad(tmp_path_factory):
    with started(tmp_path_factory.mktemp("radius"), seed,
                 extra_radius='strip_realms = ["isp.example", "corp"]') as d:
        yield d


def auth(rad, user, password, extra=""):
    return rad.radclient("auth", f'User-Name = "{user}", User-Password = "{password}", '
                                 f'Message-Authenticator = 0x00{extra}')


def acct(rad, text: str):
    code, _ = rad.radclient("acct", text)
    return code


# ---------------------------------------------------------------- authentication
def test_pap_accept_carries_plan_attributes_and_message_authenticator_first(rad):
    code, attrs = auth(rad, "demo", "demo")
    assert code == "Access-Accept", attrs
    assert list(attrs)[0] == "Message-Authenticator"
    assert attrs["Filter-Id"] == "20M"  # generic NAS: the speed profile's name
    assert attrs["Acct-Interim-Interval"] == "300"
    assert attrs["Class"].startswith("0x" + b"ocs1:".hex())
    assert "Session-Timeout" not in attrs  # volume plan: no time limit


def test_pap_wrong_password_unknown_user_and_no_credentials(rad):
    code, attrs = auth(rad, "demo", "nope")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"
    code, attrs = auth(rad, "nobody-here", "x")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Unknown subscriber"
    code, attrs = rad.radclient("auth", 'User-Name = "demo", Message-Authenticator = 0x00')
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"


def test_rejects_are_logged_at_info_and_accepts_only_when_asked(rad):
    """Default [radius] log_accepts = false: a reject gets its info line with the
    reason, an accept none (debug only)."""
    code, _ = auth(rad, "demo", "demo")
    assert code == "Access-Accept"
    code, _ = auth(rad, "demo", "not-the-password")
    assert code == "Access-Reject"
    rad.wait_log(r"reject demo via \S+ \(pap\): Wrong password")
    assert "accept demo via" not in rad.log()


def test_chap_accept_and_reject(rad):
    code, attrs = rad.radclient("auth", 'User-Name = "demo", CHAP-Password = "demo", '
                                        'Message-Authenticator = 0x00')
    assert code == "Access-Accept", attrs
    code, attrs = rad.radclient("auth", 'User-Name = "demo", CHAP-Password = "wrong", '
                                        'Message-Authenticator = 0x00')
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"
    # RFC 2865 §5.3: never both. The right PAP password does not let a CHAP one ride along.
    code, attrs = rad.radclient("auth", 'User-Name = "demo", User-Password = "demo", '
                                        'CHAP-Password = "demo", Message-Authenticator = 0x00')
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"
    rad.wait_log(r"reject demo via \S+ \(pap\+chap\): Wrong password \(both User-Password "
                 r"and CHAP-Password in the request\)")


def test_eap_is_refused_with_an_eap_failure_and_dropped_unsigned(rad):
    """A NAS doing 802.1X forwards EAP; ocsd serves no EAP method, so it answers
    at once with Access-Reject carrying an EAP-Failure for the peer's packet (its
    Identifier) and a Reply-Message saying why (RFC 3579, RFC 3748 §4.2).
    EAP without Message-Authenticator is discarded, whatever the NAS's mode."""
    eap_identity = bytes((2, 7, 0, 9, 1)) + b"demo"  # Response/Identity, Identifier 7
    code, attrs = rad.radclient("auth", f'User-Name = "demo", '
                                        f'EAP-Message = 0x{eap_identity.hex()}, '
                                        'Message-Authenticator = 0x00')
    assert code == "Access-Reject", attrs
    assert list(attrs)[0] == "Message-Authenticator"
    assert attrs["EAP-Message"] == "0x04070004"
    assert attrs["Reply-Message"] == "EAP is not supported; use PAP, CHAP or MS-CHAPv2"
    rad.wait_log(r"reject demo via \S+ \(eap\): EAP is not supported")

    status, listing = rad.api("GET", "/v1/nas")
    nas_id = next(n["id"] for n in listing["items"] if n["name"] == "localhost-nas")
    rad.api("PATCH", f"/v1/nas/{nas_id}", {"require_message_authenticator": "no"})
    try:
        before = rad.dropped("missing_message_authenticator")
        unsigned = codec.encode_request(Code.ACCESS_REQUEST, 9, [
            (A.USER_NAME, b"demo"), (A.EAP_MESSAGE, eap_identity)], SECRET.encode())
        assert rad.send_raw(unsigned, port="auth", timeout=0.5) is None
        assert rad.dropped("missing_message_authenticator") == before + 1
        # ... while PAP without it is still served in this mode
        assert rad.radclient("auth", 'User-Name = "demo", User-Password = "demo"'
                             )[0] == "Access-Accept"
    finally:
        rad.api("PATCH", f"/v1/nas/{nas_id}", {"require_message_authenticator": "auto"})


def test_mschapv2_success_and_mppe_keys(rad):
    challenge = os.urandom(16)
    peer = os.urandom(16)
    response = mschap.client_response(auth_challenge=challenge, username=b"mschap",
                                      password="pw-mschap", ident=5, peer_challenge=peer)
    req = codec.encode_request(Code.ACCESS_REQUEST, 77, [
        (A.USER_NAME, b"mschap"), (MS_CHAP_CHALLENGE, challenge),
        (MS_CHAP2_RESPONSE, response)], SECRET.encode(), message_authenticator=True)
    request = codec.decode(req)
    raw = rad.send_raw(req, port="auth")
    assert raw is not None, "no answer to MS-CHAPv2"
    reply = codec.decode(raw)
    assert reply.code == Code.ACCESS_ACCEPT
    assert codec.reply_authenticator_ok(reply, SECRET.encode(), request.authenticator)
    nt = mschap.nt_hash_of("pw-mschap")
    expect = mschap.authenticator_response(nt, response[26:], peer, challenge, b"mschap")
    assert reply.get(MS_CHAP2_SUCCESS) == b"\x05" + expect
    send, recv = mschap.server_mppe_keys(nt, response[26:])
    assert codec.salt_decrypt(reply.get(MS_MPPE_SEND_KEY), SECRET.encode(),
                              request.authenticator) == send
    assert codec.salt_decrypt(reply.get(MS_MPPE_RECV_KEY), SECRET.encode(),
                              request.authenticator) == recv
    # A wrong password: Access-Reject with MS-CHAP-Error.
    bad = mschap.client_response(auth_challenge=challenge, username=b"mschap", password="x")
    raw = rad.send_raw(codec.encode_request(Code.ACCESS_REQUEST, 78, [
        (A.USER_NAME, b"mschap"), (MS_CHAP_CHALLENGE, challenge), (MS_CHAP2_RESPONSE, bad)],
        SECRET.encode(), message_authenticator=True), port="auth")
    rej = codec.decode(raw)
    assert rej.code == Code.ACCESS_REJECT and b"E=691" in rej.get(codec.vsa(311, 2))


def test_mschap_v1_from_radclient_accepts_with_mppe_keys(rad):
    """radclient's own MS-CHAP (v1) from MS-CHAP-Password (what `radtest -t mschap`
    sends): Access-Accept with MS-CHAP-MPPE-Keys, which radclient decrypts with the
    secret; a wrong password gets Access-Reject with MS-CHAP-Error."""
    code, attrs = rad.radclient("auth", 'User-Name = "mschap", MS-CHAP-Password = "pw-mschap", '
                                        'Message-Authenticator = 0x00')
    assert code == "Access-Accept", attrs
    nt = mschap.nt_hash_of("pw-mschap")
    keys = mschap.mschap1_mppe_keys(nt)
    assert keys == bytes(8) + md4(nt) + bytes(8)
    # radclient decrypts them with the secret and strips the zero padding (as for
    # User-Password).
    assert attrs["MS-CHAP-MPPE-Keys"] == "0x" + keys.rstrip(b"\0").hex()
    assert attrs["MS-MPPE-Encryption-Policy"] == "Encryption-Allowed"
    assert list(attrs)[0] == "Message-Authenticator"
    code, attrs = rad.radclient("auth", 'User-Name = "mschap", MS-CHAP-Password = "wrong", '
                                        'Message-Authenticator = 0x00')
    assert code == "Access-Reject", attrs
    assert attrs["MS-CHAP-Error"].endswith("E=691 R=0")  # radclient's ident is 0
    assert attrs["Reply-Message"] == "Wrong password"
    assert "MS-CHAP-MPPE-Keys" not in attrs
    rad.wait_log(r"reject mschap via \S+ \(mschap\): Wrong password")


def test_a_realm_the_operator_named_is_taken_off_the_user_name(rad):
    """[radius] strip_realms = ["isp.example"]: "realm1@isp.example" (any case) is
    the subscriber realm1, in authentication (the password is checked as sent) and
    in accounting; another realm is not taken off."""
    for name in ("realm1@isp.example", "realm1@ISP.Example", "CORP\\\\realm1"):
        code, attrs = auth(rad, name, "pw-realm1")
        assert code == "Access-Accept", (name, attrs)
    code, attrs = auth(rad, "realm1@isp.example", "wrong")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"
    code, attrs = auth(rad, "realm1@other.example", "pw-realm1")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Unknown subscriber"
    code, attrs = rad.radclient("auth", 'User-Name = "mschap@isp.example", '
                                        'MS-CHAP-Password = "pw-mschap", '
                                        'Message-Authenticator = 0x00')
    assert code == "Access-Accept", attrs
    acc = rad.ids["realm1"]
    before = rad.buckets(acc)["octets"]
    base = 'User-Name = "realm1@isp.example", Acct-Session-Id = "rl-1", Acct-Status-Type = '
    assert acct(rad, base + "Start") == "Accounting-Response"
    assert acct(rad, base + "Stop, Acct-Output-Octets = 4321, Acct-Session-Time = 9") \
        == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - 4321


def test_time_rated_plan_gets_session_timeout_speed_and_framed_ip(rad):
    code, attrs = auth(rad, "timed1", "pw-timed1")
    assert code == "Access-Accept", attrs
    assert attrs["Session-Timeout"] == "3600"   # what the seconds allowance buys
    assert attrs["Framed-IP-Address"] == "10.9.9.9"
    assert attrs["Filter-Id"] == "8000/1000"


def test_refusals_suspended_no_balance_and_walled_garden(rad):
    code, attrs = auth(rad, "suspended1", "pw-suspended1")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Account suspended"
    code, attrs = auth(rad, "empty1", "pw-empty1")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "No balance left"
    # Suspended, but the plan's final unit says redirect: a walled-garden accept.
    code, attrs = auth(rad, "garden1", "pw-garden1")
    assert code == "Access-Accept", attrs
    assert attrs["Filter-Id"] == "walled" and attrs["Session-Timeout"] == "600"
    assert attrs["Reply-Message"] == "Account suspended"
    # A wrong password never reveals the account state.
    code, attrs = auth(rad, "garden1", "wrong")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Wrong password"


def test_simultaneous_use_limit(rad):
    assert auth(rad, "single", "pw-single")[0] == "Access-Accept"
    assert acct(rad, 'User-Name = "single", Acct-Status-Type = Start, '
                     'Acct-Session-Id = "single-1"') == "Accounting-Response"
    code, attrs = auth(rad, "single", "pw-single")
    assert code == "Access-Reject" and attrs["Reply-Message"] == "Too many sessions (limit 1)"
    assert acct(rad, 'User-Name = "single", Acct-Status-Type = Stop, '
                     'Acct-Session-Id = "single-1", Acct-Session-Time = 5') \
        == "Accounting-Response"
    assert auth(rad, "single", "pw-single")[0] == "Access-Accept"


def test_a_device_logging_in_again_replaces_its_stale_session(rad):
    """A BRAS that crashed sent no Stop and no Accounting-On: the subscriber's session
    stays open here. When the same device logs in again on the same port, that
    session is stale: it is closed and released, and the login is accepted. Another
    device, or the same one on another port, is still held to the limit."""
    device = 'Calling-Station-Id = "00:11:22:33:44:55", NAS-Port-Id = "eth0.100:7"'
    assert acct(rad, 'User-Name = "single", Acct-Status-Type = Start, '
                     f'Acct-Session-Id = "ghost-1", {device}') == "Accounting-Response"
    assert acct(rad, 'User-Name = "single", Acct-Status-Type = Interim-Update, '
                     'Acct-Session-Id = "ghost-1", Acct-Output-Octets = 1000, '
                     f'Acct-Session-Time = 60, {device}') == "Accounting-Response"
    for other in ('Calling-Station-Id = "66:77:88:99:aa:bb", NAS-Port-Id = "eth0.100:7"',
                  'Calling-Station-Id = "00:11:22:33:44:55", NAS-Port-Id = "eth0.100:8"',
                  'NAS-Port-Id = "eth0.100:7"'):
        code, attrs = auth(rad, "single", "pw-single", ", " + other)
        assert code == "Access-Reject", other
        assert attrs["Reply-Message"] == "Too many sessions (limit 1)"
    status, sess = rad.api("GET", "/v1/sessions/radius:localhost-nas:ghost-1")
    assert sess["status"] == "active"
    assert auth(rad, "single", "pw-single", ", " + device)[0] == "Access-Accept"
    status, sess = rad.api("GET", "/v1/sessions/radius:localhost-nas:ghost-1")
    assert sess["status"] == "closed" and sess["attrs"]["closed_by"] == \
        "same device logged in again"
    status, cdrs = rad.api("GET", "/v1/cdrs?session=radius:localhost-nas:ghost-1")
    assert [c["units"] for c in cdrs["items"]] == [1000]  # what it reported stays charged
    assert acct(rad, 'User-Name = "single", Acct-Status-Type = Start, '
                     f'Acct-Session-Id = "ghost-2", {device}') == "Accounting-Response"
    assert acct(rad, 'User-Name = "single", Acct-Status-Type = Stop, '
                     f'Acct-Session-Id = "ghost-2", Acct-Session-Time = 5, {device}') \
        == "Accounting-Response"


def test_a_nas_with_unique_addresses_closes_the_session_whose_address_a_start_reuses(rad):
    """A session whose Stop was lost still holds its Framed-IP-Address here. By
    default another session's Start with that address changes nothing (a BRAS with
    VRFs gives one private address to several subscribers). A NAS marked
    `control.unique_framed_ip` never does: the older session is closed as stale,
    what it reported stays charged and what it held is released."""
    _, page = rad.api("GET", "/v1/nas")
    (entry,) = [n for n in page["items"] if n["name"] == "localhost-nas"]
    ip = "Framed-IP-Address = 10.77.0.1, "

    def session(sid):
        status, body = rad.api("GET", f"/v1/sessions/radius:localhost-nas:{sid}")
        assert status == 200, body
        return body

    def reserved(name):
        _, body = rad.api("GET", f"/v1/accounts/{rad.ids[name]}")
        return sum(b["reserved"] for b in body["balance"]["buckets"] if b["kind"] == "octets")

    before = rad.buckets(rad.ids["ipa"])["octets"]
    assert acct(rad, f'User-Name = "ipa", Acct-Session-Id = "ip-1", {ip}'
                     'Acct-Status-Type = Start') == "Accounting-Response"
    assert acct(rad, f'User-Name = "ipa", Acct-Session-Id = "ip-1", {ip}'
                     'Acct-Status-Type = Interim-Update, Acct-Output-Octets = 1000, '
                     'Acct-Session-Time = 60') == "Accounting-Response"
    assert reserved("ipa") > 0
    assert acct(rad, f'User-Name = "ipb", Acct-Session-Id = "ip-2", {ip}'
                     'Acct-Status-Type = Start') == "Accounting-Response"
    assert (session("ip-1")["status"], session("ip-2")["status"]) == ("active", "active")
    assert acct(rad, f'User-Name = "ipb", Acct-Session-Id = "ip-2", {ip}'
                     'Acct-Status-Type = Stop, Acct-Session-Time = 5') == "Accounting-Response"

    status, body = rad.api("PATCH", f"/v1/nas/{entry['id']}",
                           {"control": {"unique_framed_ip": "yes"}})
    assert status == 422 and "control.unique_framed_ip is true or false" in str(body), body
    status, body = rad.api("PATCH", f"/v1/nas/{entry['id']}",
                           {"control": {"unique_framed_ip": True}})
    assert status == 200, body
    try:
        start = f'User-Name = "ipb", Acct-Session-Id = "ip-3", {ip}Acct-Status-Type = Start'
        assert acct(rad, start) == "Accounting-Response"
        old = session("ip-1")
        assert old["status"] == "closed" and old["attrs"]["closed_by"] == "framed ip reused"
        assert session("ip-3")["status"] == "active"
        rad.wait_log(r"closing stale session radius:localhost-nas:ip-1: NAS localhost-nas "
                     r"gave its address 10\.77\.0\.1 to session radius:localhost-nas:ip-3")
        _, cdrs = rad.api("GET", "/v1/cdrs?session=radius:localhost-nas:ip-1")
        assert [(c["units"], c["details"]["closed_by"]) for c in cdrs["items"]] == \
            [(1000, "framed ip reused")]
        assert rad.buckets(rad.ids["ipa"])["octets"] == before - 1000
        assert reserved("ipa") == 0
        # The same Start again (a NAS that resends it as a new request) closes nothing.
        assert acct(rad, start + ", Acct-Delay-Time = 2") == "Accounting-Response"
        assert session("ip-3")["status"] == "active"
    finally:
        rad.api("PATCH", f"/v1/nas/{entry['id']}", {"control": {}})


def test_wireshark_reads_every_kind_of_reply_without_complaint(rad, tmp_path):
    """tshark (Wireshark's RADIUS dissector and dictionaries) reads what ocsd sends:
    Access-Accept with each vendor's speed and quota attributes, MS-CHAPv2 success
    with MPPE keys, rejects (an EAP one too), accounting responses and the
    Status-Server answer. No malformed packet, no expert warning, every reply's
    code and identifier as the request's, and the vendor attributes named."""
    from tests import pcap
    _, page = rad.api("GET", "/v1/nas")
    vendors = ("mikrotik", "cisco", "juniper", "huawei", "chillispot", "wispr", "accel-ppp")
    added = []
    for k, vendor in enumerate(vendors):
        status, nas = rad.api("POST", "/v1/nas", {
            "name": f"ws-{vendor}", "address": f"127.0.0.{10 + k}", "secret": SECRET,
            "vendor": vendor})
        assert status == 201, nas
        added.append(nas["id"])
    exchanged: list[tuple[bool, int, bytes]] = []

    def ask(req: bytes, port: str = "auth", source: str = "127.0.0.1") -> int:
        raw = None
        for _ in range(20):  # the registry reloads a moment after the API change
            raw = rad.send_raw(req, port=port, source=source, timeout=0.5)
            if raw is not None:
                break
        assert raw is not None, (port, source)
        number = 1812 if port == "auth" else 1813
        exchanged.extend([(True, number, req), (False, number, raw)])
        return raw[0]

    def pap(user: str, password: str, ident: int, extra=()) -> bytes:
        auth = codec.new_authenticator()
        return codec.encode_request(Code.ACCESS_REQUEST, ident, [
            (A.USER_NAME, user.encode()),
            (A.USER_PASSWORD, codec.hide_password(password.encode(), SECRET.encode(), auth)),
            *extra], SECRET.encode(), authenticator=auth, message_authenticator=True)

    try:
        for k, vendor in enumerate(vendors):
            assert ask(pap("timed1", "pw-timed1", k), source=f"127.0.0.{10 + k}") == 2, vendor
            assert ask(pap("demo", "demo", 20 + k), source=f"127.0.0.{10 + k}") == 2, vendor
        assert ask(pap("demo", "wrong", 40)) == 3
        assert ask(codec.encode_request(Code.ACCESS_REQUEST, 41, [
            (A.USER_NAME, b"demo"), (A.EAP_MESSAGE, bytes([2, 7, 0, 9, 1]) + b"demo")],
            SECRET.encode(), message_authenticator=True)) == 3
        challenge, peer = os.urandom(16), os.urandom(16)
        response = mschap.client_response(auth_challenge=challenge, username=b"mschap",
                                          password="pw-mschap", ident=5, peer_challenge=peer)
        assert ask(codec.encode_request(Code.ACCESS_REQUEST, 42, [
            (A.USER_NAME, b"mschap"), (MS_CHAP_CHALLENGE, challenge),
            (MS_CHAP2_RESPONSE, response)], SECRET.encode(), message_authenticator=True)) == 2
        assert ask(codec.encode_request(Code.STATUS_SERVER, 43, [], SECRET.encode(),
                                        message_authenticator=True)) == 2
        for ident, status in ((44, 1), (45, 3), (46, 2)):
            assert ask(acct_packet([(A.USER_NAME, b"acct2"), (A.ACCT_SESSION_ID, b"ws-1"),
                                    (A.ACCT_STATUS_TYPE, codec.u32(status)),
                                    (A.ACCT_OUTPUT_OCTETS, codec.u32(ident))], ident=ident),
                       port="acct") == 5
    finally:
        for nas_id in added:
            rad.api("DELETE", f"/v1/nas/{nas_id}")
    capture = tmp_path / "radius.pcap"
    pcap.write(capture, pcap.udp_exchange(exchanged))
    secret = ("-o", f"radius.shared_secret:{SECRET}")
    assert pcap.problems(capture, *secret) == []
    rows = [line.split("|") for line in pcap.tshark(
        capture, *secret, "-Y", "radius", "-T", "fields", "-E", "separator=|",
        "-e", "radius.code", "-e", "radius.id").splitlines()]
    assert len(rows) == len(exchanged)
    for (_, _, req), (code, ident) in zip(exchanged, rows):
        assert int(ident) == req[1]
    assert [int(code) for code, _ in rows[1::2]] == [x[2][0] for x in exchanged[1::2]]
    text = pcap.tshark(capture, *secret, "-V")
    for name in ("Mikrotik-Rate-Limit", "Mikrotik-Total-Limit", "Cisco-AVPair",
                 "Unisphere-Qos-Profile-Name", "Unisphere-Service-Activate",
                 "Huawei-Input-Average-Rate", "Huawei-Remanent-Volume",
                 "ChilliSpot-Bandwidth-Max-Down", "ChilliSpot-Max-Total-Octets",
                 "WISPr-Bandwidth-Max-Down", "MS-CHAP2-Success", "MS-MPPE-Send-Key",
                 "EAP-Message", "Message-Authenticator"):
        assert f"t={name}(" in text, name


# ---------------------------------------------------------------- accounting = charging
def test_start_interim_stop_charge_octets_with_gigawords(rad):
    acc = rad.ids["acct1"]
    before = rad.buckets(acc)["octets"]
    assert before == 10 * GIB
    base = 'User-Name = "acct1", Acct-Session-Id = "a1-1", '
    assert acct(rad, base + "Acct-Status-Type = Start, Framed-IP-Address = 10.0.0.7") \
        == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before  # nothing used yet (held, not spent)
    assert acct(rad, base + "Acct-Status-Type = Interim-Update, Acct-Input-Octets = 1000, "
                            "Acct-Output-Octets = 5000, Acct-Session-Time = 60") \
        == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - 6000
    # Gigawords: 1 * 2**32 + 1000 in, 9000 out.
    assert acct(rad, base + "Acct-Status-Type = Interim-Update, Acct-Input-Octets = 1000, "
                            "Acct-Input-Gigawords = 1, Acct-Output-Octets = 9000, "
                            "Acct-Session-Time = 120") == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - (2**32 + 10_000)
    assert acct(rad, base + "Acct-Status-Type = Stop, Acct-Input-Octets = 2000, "
                            "Acct-Input-Gigawords = 1, Acct-Output-Octets = 9000, "
                            "Acct-Session-Time = 180, Acct-Terminate-Cause = User-Request") \
        == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - (2**32 + 11_000)
    status, body = rad.api("GET", "/v1/sessions/radius:localhost-nas:a1-1")
    assert status == 200 and body["status"] == "closed" and body["framed_ip"] == "10.0.0.7"
    status, cdrs = rad.api("GET", f"/v1/cdrs?account_id={acc}")
    assert [(c["service"], c["units"]) for c in cdrs["items"]] == [("data", 2**32 + 11_000)]
    assert cdrs["items"][0]["details"]["Acct-Terminate-Cause"] == "User-Request"


def test_counters_reset_mid_session_charge_nothing_back_and_are_said(rad):
    """A NAS that resets a session's counters mid-session (a line-card switchover)
    reports less than before in a newer interim. Nothing is refunded and nothing
    charged for it; the log says so once a minute, and a metric counts each such
    report. A late copy of an older interim is no reset: it says nothing. Once the
    counters pass the old total again, what is beyond it is charged."""
    acc = rad.ids["reset1"]
    before = rad.buckets(acc)["octets"]

    def resets() -> float:
        m = re.search(r'^ocs_charging_counter_resets_total\{proto="radius"\} (\S+)$',
                      rad.metrics_text(), re.M)
        return float(m.group(1)) if m else 0.0

    def interim(octets: int, seconds: int) -> None:
        assert acct(rad, base + f"Acct-Status-Type = Interim-Update, Acct-Input-Octets = "
                                f"{octets}, Acct-Input-Gigawords = 0, "
                                f"Acct-Session-Time = {seconds}") == "Accounting-Response"

    base = 'User-Name = "reset1", Acct-Session-Id = "reset-1", '
    assert acct(rad, base + "Acct-Status-Type = Start") == "Accounting-Response"
    counted = resets()
    interim(900_000, 60)
    interim(800_000, 50)  # an older report, arriving late
    assert resets() == counted
    interim(100_000, 120)  # newer, and below: the counters were reset
    interim(300_000, 180)
    assert rad.buckets(acc)["octets"] == before - 900_000
    assert resets() == counted + 2
    said = [line for line in rad.log().splitlines()
            if "session radius:localhost-nas:reset-1 reported" in line]
    assert len(said) == 1 and "800000 octets of data below its total so far" in said[0], said
    interim(1_000_000, 240)  # past the old total: the 100,000 beyond it are charged
    assert rad.buckets(acc)["octets"] == before - 1_000_000
    assert resets() == counted + 2


def test_accounting_signed_with_message_authenticator_is_answered_and_charged_once(rad):
    """Some NAS (and FreeRADIUS proxies) sign every Accounting-Request with a
    Message-Authenticator. radclient checks each Accounting-Response it gets and
    drops one it cannot verify, as such a NAS would: every step is answered, the
    repeated interim charges nothing, and a wrong signature is dropped."""
    acc = rad.ids["acct2"]
    before = rad.buckets(acc)["octets"]
    base = ('User-Name = "acct2", Acct-Session-Id = "ma-1", Message-Authenticator = 0x00, '
            'Acct-Status-Type = ')
    interim = base + ("Interim-Update, Acct-Input-Octets = 700, Acct-Output-Octets = 300, "
                      "Acct-Session-Time = 60")
    assert acct(rad, base + "Start") == "Accounting-Response"
    assert acct(rad, interim) == "Accounting-Response"
    assert acct(rad, interim) == "Accounting-Response"  # sent again: charged once
    assert rad.buckets(acc)["octets"] == before - 1000
    assert acct(rad, base + "Stop, Acct-Input-Octets = 900, Acct-Output-Octets = 300, "
                            "Acct-Session-Time = 90") == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - 1200
    req = bytearray(codec.encode_request(
        Code.ACCOUNTING_REQUEST, 6, [(A.USER_NAME, b"acct2"), (A.ACCT_STATUS_TYPE, codec.u32(3)),
                                     (A.ACCT_SESSION_ID, b"ma-1")],
        SECRET.encode(), message_authenticator=True))
    req[20 + 2] ^= 0xFF  # the Message-Authenticator is the first attribute
    req[4:20] = bytes(16)  # signed again, so only the Message-Authenticator is wrong
    req[4:20] = hashlib.md5(bytes(req) + SECRET.encode()).digest()
    before_drops = rad.dropped("bad_message_authenticator")
    assert rad.send_raw(bytes(req), port="acct", timeout=0.3) is None
    assert rad.dropped("bad_message_authenticator") == before_drops + 1


def test_a_nas_counting_without_gigawords_is_charged_across_the_32_bit_wrap(rad):
    """A NAS that sends no Acct-*-Gigawords counts octets modulo 2**32: past 4 GiB its
    counter starts again from zero. The newer report (later Acct-Session-Time) below
    the session's total is read as a wrap, not as nothing used. An older one (a
    late, reordered interim) still charges nothing."""
    acc = rad.ids["wrap1"]
    before = rad.buckets(acc)["octets"]
    base = 'User-Name = "wrap1", Acct-Session-Id = "w-1", '

    def interim(octets_in: int, octets_out: int, seconds: int, status="Interim-Update"):
        assert acct(rad, base + f"Acct-Status-Type = {status}, Acct-Input-Octets = "
                                f"{octets_in}, Acct-Output-Octets = {octets_out}, "
                                f"Acct-Session-Time = {seconds}") == "Accounting-Response"
        return before - rad.buckets(acc)["octets"]
    assert acct(rad, base + "Acct-Status-Type = Start") == "Accounting-Response"
    wrap = 2**32
    assert interim(4_200_000_000, 4_000_000_000, 600) == 8_200_000_000
    # The input counter passed 2**32: 4,400,000,000 in is reported as 4,400,000,000 - 2**32.
    assert interim(4_400_000_000 - wrap, 4_100_000_000, 900) == 8_500_000_000
    # A late copy of the first interim (earlier session time) charges nothing.
    assert interim(4_200_000_000, 4_000_000_000, 600) == 8_500_000_000
    # Since then the output counter wrapped too; the Stop closes with the whole session.
    total = interim(4_500_000_000 - wrap, 4_300_000_000 - wrap, 1200, status="Stop")
    assert total == 8_800_000_000
    status, cdrs = rad.api("GET", f"/v1/cdrs?account_id={acc}")
    assert [(c["service"], c["units"]) for c in cdrs["items"]] == [("data", total)]


def test_a_nas_that_restarts_and_reuses_a_session_id_is_charged_for_both_runs(rad):
    """A BRAS that crashed (no Stop, no Accounting-On) and numbers its sessions from
    the start again: the new Start ends the silent first run with what it reported,
    and the new run's counters, from zero, are charged in full (before, they were
    taken as the first run's and charged nothing until they passed its totals)."""
    acc = rad.ids["reuse1"]
    before = rad.buckets(acc)["octets"]
    base = 'User-Name = "reuse1", Acct-Session-Id = "81a00001", '
    t0 = int(time.time()) - 3600
    assert acct(rad, base + f"Acct-Status-Type = Start, Event-Timestamp = {t0}") \
        == "Accounting-Response"
    assert acct(rad, base + "Acct-Status-Type = Interim-Update, Acct-Output-Octets = 30000, "
                            f"Acct-Session-Time = 300, Event-Timestamp = {t0 + 300}") \
        == "Accounting-Response"

    async def silent(store):  # the crash: nothing heard of the run for a while
        from ocs.store.sql import execute

        def program():
            yield execute("UPDATE accounts SET version = version + 1")
            yield execute("UPDATE sessions SET updated_at = updated_at - 600000000 "
                          "WHERE id = 'radius:localhost-nas:81a00001'")
        await store.driver.run(program)
    rad.seed(silent)
    now = int(time.time())
    assert acct(rad, base + f"Acct-Status-Type = Start, Event-Timestamp = {now}") \
        == "Accounting-Response"
    assert acct(rad, base + "Acct-Status-Type = Interim-Update, Acct-Output-Octets = 5000, "
                            f"Acct-Session-Time = 60, Event-Timestamp = {now + 60}") \
        == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - 35000
    status, cdrs = rad.api("GET", "/v1/cdrs?session=radius:localhost-nas:81a00001")
    assert [(c["units"], c["details"]["closed_by"]) for c in cdrs["items"]] == \
        [(30000, "session id reused")]


def test_time_rated_session_charges_seconds_with_and_without_the_class_echo(rad):
    acc = rad.ids["timed1"]
    before = rad.buckets(acc)["seconds"]
    # A NAS that does not echo Class: the plan is looked up once for the session.
    base = 'User-Name = "timed1", Acct-Session-Id = "t-1", '
    for text in ("Acct-Status-Type = Start",
                 "Acct-Status-Type = Interim-Update, Acct-Session-Time = 60",
                 "Acct-Status-Type = Interim-Update, Acct-Session-Time = 100",
                 "Acct-Status-Type = Stop, Acct-Session-Time = 120"):
        assert acct(rad, base + text) == "Accounting-Response"
    assert rad.buckets(acc)["seconds"] == before - 120
    # A NAS that echoes the Class of the Access-Accept: no lookup, the same charge.
    code, attrs = auth(rad, "timed1", "pw-timed1")
    assert code == "Access-Accept" and bytes.fromhex(attrs["Class"][2:]).endswith(b":t")
    base = f'User-Name = "timed1", Acct-Session-Id = "t-2", Class = {attrs["Class"]}, '
    for text in ("Acct-Status-Type = Start",
                 "Acct-Status-Type = Interim-Update, Acct-Session-Time = 30",
                 "Acct-Status-Type = Stop, Acct-Session-Time = 45"):
        assert acct(rad, base + text) == "Accounting-Response"
    assert rad.buckets(acc)["seconds"] == before - 165


def test_retransmissions_are_not_charged_twice(rad):
    acc = rad.ids["retx"]
    before = rad.buckets(acc)["octets"]
    start = acct_packet([(A.USER_NAME, s("retx")), (A.ACCT_STATUS_TYPE, codec.u32(1)),
                         (A.ACCT_SESSION_ID, s("r-1"))], ident=10)
    assert rad.send_raw(start) is not None
    interim = acct_packet([(A.USER_NAME, s("retx")), (A.ACCT_STATUS_TYPE, codec.u32(3)),
                           (A.ACCT_SESSION_ID, s("r-1")), (A.ACCT_INPUT_OCTETS, codec.u32(700)),
                           (A.ACCT_SESSION_TIME, codec.u32(30))], ident=11)
    first = rad.send_raw(interim)
    # Another socket: another source port, so not an RFC 5080 duplicate; the same
    # content is the same (session, seq) and the core answers it from the first time.
    again = rad.send_raw(interim)
    assert first is not None and again is not None
    assert rad.buckets(acc)["octets"] == before - 700
    # The same datagram from the same socket: answered from the RFC 5080 cache, same octets.
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(interim, ("127.0.0.1", rad.acct_port))
        one = sock.recv(100)
        sock.sendto(interim, ("127.0.0.1", rad.acct_port))
        two = sock.recv(100)
    assert one == two
    assert 'ocs_radius_duplicates_total{nas="localhost-nas"}' in rad.metrics_text()
    # RFC 2866 retransmission with a bigger Acct-Delay-Time (new Identifier and
    # Authenticator): recognised by its content, charged once.
    for delay in (0, 5, 10):
        assert acct(rad, 'User-Name = "retx", Acct-Session-Id = "r-1", '
                         'Acct-Status-Type = Interim-Update, Acct-Input-Octets = 1700, '
                         f'Acct-Session-Time = 90, Acct-Delay-Time = {delay}') \
            == "Accounting-Response"
    assert rad.buckets(acc)["octets"] == before - 1700
    # A reordered (older) interim charges nothing more.
    assert rad.send_raw(acct_packet([(A.USER_NAME, s("retx")), (A.ACCT_STATUS_TYPE,
                                                                 codec.u32(3)),
                                     (A.ACCT_SESSION_ID, s("r-1")),
                                     (A.ACCT_INPUT_OCTETS, codec.u32(1200)),
                                     (A.ACCT_SESSION_TIME, codec.u32(60))], ident=12)) is not None
    assert rad.buckets(acc)["octets"] == before - 1700


def test_vendor_numbers_beyond_16_bits_are_charged(rad):
    # Private Enterprise Numbers go past 65535; a VSA of one is part of the report's
    # content like any other attribute (it once stopped the interim with an error).
    acc = rad.ids["acct2"]
    before = rad.buckets(acc)["octets"]
    base = [(A.USER_NAME, s("acct2")), (A.ACCT_SESSION_ID, s("v-1")),
            (codec.vsa(70_000, 1), s("cpe-7")), (codec.vsa(4_000_000_000, 9), s("x"))]
    assert rad.send_raw(acct_packet(base + [(A.ACCT_STATUS_TYPE, codec.u32(1))],
                                    ident=20)) is not None
    reply = rad.send_raw(acct_packet(base + [(A.ACCT_STATUS_TYPE, codec.u32(3)),
                                             (A.ACCT_INPUT_OCTETS, codec.u32(4321)),
                                             (A.ACCT_SESSION_TIME, codec.u32(30))], ident=21))
    assert reply is not None and reply[0] == Code.ACCOUNTING_RESPONSE
    assert rad.buckets(acc)["octets"] == before - 4321


def test_a_burst_from_one_socket_gets_every_answer_signed_for_its_request(rad):
    """Replies leave together at the end of the event loop's turn: none is lost,
    each answers its own request, and the interims are charged once each."""
    import socket
    acc = rad.ids["burst"]
    before = rad.buckets(acc)["octets"]

    def interim(ident: int) -> bytes:
        status = 1 if ident == 0 else 3
        return acct_packet([(A.USER_NAME, s("burst")), (A.ACCT_STATUS_TYPE, codec.u32(status)),
                            (A.ACCT_SESSION_ID, s("b-1")),
                            (A.ACCT_INPUT_OCTETS, codec.u32(100 * ident)),
                            (A.ACCT_SESSION_TIME, codec.u32(ident))], ident=ident)
    assert rad.send_raw(interim(0)) is not None
    sent = {ident: interim(ident) for ident in range(1, 41)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", rad.acct_port))
        for data in sent.values():
            sock.send(data)
        replies = [codec.decode(sock.recv(100)) for _ in sent]
    assert sorted(r.identifier for r in replies) == sorted(sent)
    for r in replies:
        assert r.code == Code.ACCOUNTING_RESPONSE
        assert codec.reply_authenticator_ok(r, SECRET.encode(), sent[r.identifier][4:20])
    assert rad.buckets(acc)["octets"] == before - 4000


def test_accounting_on_closes_every_open_session_of_the_nas(rad):
    for user in ("on1", "on2"):
        assert acct(rad, f'User-Name = "{user}", Acct-Status-Type = Start, '
                         f'Acct-Session-Id = "{user}-s"') == "Accounting-Response"
        assert acct(rad, f'User-Name = "{user}", Acct-Status-Type = Interim-Update, '
                         f'Acct-Session-Id = "{user}-s", Acct-Output-Octets = 4242, '
                         'Acct-Session-Time = 10') == "Accounting-Response"
    status, body = rad.api("GET", "/v1/sessions?status=active&nas=localhost-nas")
    assert {"radius:localhost-nas:on1-s", "radius:localhost-nas:on2-s"} <= \
        {x["id"] for x in body["items"]}
    assert acct(rad, 'Acct-Status-Type = Accounting-On, NAS-IP-Address = 127.0.0.1') \
        == "Accounting-Response"
    for user in ("on1", "on2"):
        status, sess = rad.api("GET", f"/v1/sessions/radius:localhost-nas:{user}-s")
        assert sess["status"] == "closed", sess
        status, cdrs = rad.api("GET", f"/v1/cdrs?account_id={rad.ids[user]}")
        assert [(c["units"], c["details"].get("closed_by")) for c in cdrs["items"]] == \
            [(4242, "accounting-on/off")]


def test_sessions_started_right_after_accounting_on_stay_open(rad):
    """A rebooted BRAS sends Accounting-On, then its subscribers' Starts at once.
    Closing its earlier sessions takes a while when it had many; the sessions
    those Starts open meanwhile are not among them and stay open."""
    from ocs.model import Session, now_us

    async def old_sessions(store):
        sub = await store.find_subscriber(username="on2")
        at = now_us() - 60_000_000
        for i in range(1500):
            await store.upsert_session(Session(
                id=f"radius:localhost-nas:old-{i}", account_id=sub.account_id,
                subscriber_id=sub.id, proto="radius", nas="localhost-nas",
                nas_session_id=f"old-{i}", framed_ip=None, status="active", last_seq=1,
                started_at=at, updated_at=at, ended_at=None, attrs={}))
    rad.seed(old_sessions)
    on = acct_packet([(A.NAS_IP_ADDRESS, bytes([127, 0, 0, 1])),
                      (A.ACCT_STATUS_TYPE, codec.u32(7))], ident=201)
    start = acct_packet([(A.USER_NAME, b"on1"), (A.ACCT_SESSION_ID, b"fresh-1"),
                         (A.ACCT_STATUS_TYPE, codec.u32(1))], ident=202)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(30)
        sock.connect(("127.0.0.1", rad.acct_port))
        sock.send(on)
        time.sleep(0.02)
        assert rad.send_raw(start, timeout=10) is not None  # answered while On works
        assert codec.decode(sock.recv(100)).code == Code.ACCOUNTING_RESPONSE
    for sid, wanted in (("old-0", "closed"), ("old-1499", "closed"), ("fresh-1", "active")):
        status, body = rad.api("GET", f"/v1/sessions/radius:localhost-nas:{sid}")
        assert (status, body["status"]) == (200, wanted), (sid, body)


def test_accounting_on_behind_a_proxy_finds_its_sessions_among_many_others(rad):
    """Behind a shared entry (a proxy), one BRAS's Accounting-On closes its sessions
    however many the other BRAS behind it have open: they are not searched 500 at
    a time (before, a BRAS whose sessions were older than 500 of the others'
    had none closed)."""
    _, page = rad.api("GET", "/v1/nas")
    (entry,) = [n for n in page["items"] if n["name"] == "localhost-nas"]
    assert rad.api("PATCH", f"/v1/nas/{entry['id']}", {"control": {"proxy": True}})[0] == 200

    def report(box: bytes, status: int, sid: bytes, ident: int) -> None:
        packet = acct_packet([(A.USER_NAME, b"on2"), (A.NAS_IDENTIFIER, box),
                              (A.ACCT_SESSION_ID, sid), (A.ACCT_STATUS_TYPE, codec.u32(status))],
                             ident=ident)
        assert rad.send_raw(packet, timeout=5) is not None

    def status_of(box: str, sid: str) -> str:
        status, body = rad.api("GET", f"/v1/sessions/radius:localhost-nas/{box}:{sid}")
        assert status == 200, body
        return body["status"]

    try:
        report(b"bras-x", 1, b"x-1", 1)
        for i in range(520):
            report(b"bras-y", 1, b"y-%d" % i, (i + 2) % 256)
        report(b"bras-x", 7, b"0", 3)  # Accounting-On
        assert status_of("bras-x", "x-1") == "closed"
        assert {status_of("bras-y", sid) for sid in ("y-0", "y-519")} == {"active"}
        report(b"bras-y", 7, b"0", 4)
        assert {status_of("bras-y", sid) for sid in ("y-0", "y-300", "y-519")} == {"closed"}
    finally:
        rad.api("PATCH", f"/v1/nas/{entry['id']}", {"control": {}})


def test_exhausted_event_when_the_allowance_runs_out(rad):
    acc = rad.ids["tiny1"]
    base = 'User-Name = "tiny1", Acct-Session-Id = "tiny-1", '
    assert acct(rad, base + "Acct-Status-Type = Start") == "Accounting-Response"
    assert acct(rad, base + "Acct-Status-Type = Interim-Update, Acct-Input-Octets = 1500000, "
                            "Acct-Session-Time = 60") == "Accounting-Response"
    events = rad.seed(lambda store: store.events(account_id=acc))
    assert "exhausted" in [e["type"] for e in events], events
    assert rad.buckets(acc).get("octets", 0) == 0  # drained, not below zero
    # What the allowance could not pay is not charged, but kept: the CDR has all the
    # usage and says how much of it went unpaid, and the metric counts it.
    def unpaid() -> float:
        m = re.search(r'^ocs_charging_unpaid_units_total\{kind="octets"\} (\S+)$',
                      rad.metrics_text(), re.M)
        return float(m.group(1)) if m else 0.0
    before = unpaid()
    status, sess = rad.api("GET", "/v1/sessions/radius:localhost-nas:tiny-1")
    assert status == 200
    assert [(c["service"], c["units"], c["unpaid"], c["closed"]) for c in sess["charges"]] \
        == [("data", 1_500_000, 500_000, False)]
    assert acct(rad, base + "Acct-Status-Type = Stop, Acct-Input-Octets = 1600000, "
                            "Acct-Session-Time = 70") == "Accounting-Response"
    status, cdrs = rad.api("GET", "/v1/cdrs?session=radius:localhost-nas:tiny-1")
    (cdr,) = cdrs["items"]
    assert cdr["units"] == 1_600_000 and cdr["details"]["unpaid_units"] == 600_000
    assert unpaid() == before + 100_000  # this Stop's part (the interim's came before)


# ---------------------------------------------------------------- VoIP
def test_freeswitch_call_is_rated_and_keeps_call_identifiers(rad):
    acc = rad.ids["fs"]
    before = rad.buckets(acc)["seconds"]
    base = ('User-Name = "sip-fs", Acct-Session-Id = "fs-call-1", Calling-Station-Id = "1001", '
            'Called-Station-Id = "sip:+442071234567@gw", Freeswitch-Dst = "442071234567", ')
    assert acct(rad, base + "Acct-Status-Type = Start") == "Accounting-Response"
    assert acct(rad, base + 'Acct-Status-Type = Stop, Acct-Session-Time = 125, '
                            'Freeswitch-Hangupcause = 16, Freeswitch-Billusec = 125000000') \
        == "Accounting-Response"
    assert rad.buckets(acc)["seconds"] == before - 125
    status, cdrs = rad.api("GET", f"/v1/cdrs?account_id={acc}")
    (cdr,) = cdrs["items"]
    assert cdr["service"] == "voice" and cdr["units"] == 125
    assert cdr["details"]["Freeswitch-Hangupcause"] == 16
    assert cdr["details"]["Acct-Session-Id"] == "fs-call-1"


def test_asterisk_and_kamailio_durations(rad):
    acc = rad.ids["ast"]
    before = rad.buckets(acc)["seconds"]
    assert acct(rad, 'User-Name = "sip-ast", Acct-Session-Id = "ast-1", '
                     'Acct-Status-Type = Stop, Asterisk-Dst = "0041791234567", '
                     'Asterisk-Bill-Sec = 61, Asterisk-Unique-ID = "1700000000.42"') \
        == "Accounting-Response"
    assert rad.buckets(acc)["seconds"] == before - 61
    acc = rad.ids["kam"]
    before = rad.buckets(acc)["seconds"]
    t0 = int(time.time()) - 100
    base = ('User-Name = "sip-kam", Acct-Session-Id = "kam-callid@host", Service-Type = 15, '
            'Called-Station-Id = "sip:0041791234567@example.net", ')
    assert acct(rad, base + f"Acct-Status-Type = Start, Event-Timestamp = {t0}") \
        == "Accounting-Response"
    assert acct(rad, base + f"Acct-Status-Type = Stop, Event-Timestamp = {t0 + 42}") \
        == "Accounting-Response"
    assert rad.buckets(acc)["seconds"] == before - 42


# ---------------------------------------------------------------- secrets, Status-Server
def test_accounting_for_an_unknown_subscriber_is_kept_for_reconciliation(rad):
    """Acknowledged (RFC 2866: the NAS then forgets the report), so kept: one entry
    per session with its latest cumulative usage, listed by the API, counted."""
    def unmatched() -> float:
        m = re.search(r'^ocs_radius_unmatched_accounting_total{nas="localhost-nas"} (\S+)$',
                      rad.metrics_text(), re.M)
        return float(m.group(1)) if m else 0.0

    before = unmatched()
    base = 'User-Name = "nobody-here", Acct-Session-Id = "nb-1", '
    for text in ("Acct-Status-Type = Start",
                 "Acct-Status-Type = Interim-Update, Acct-Input-Octets = 700, "
                 "Acct-Output-Octets = 300, Acct-Session-Time = 60",
                 "Acct-Status-Type = Stop, Acct-Input-Octets = 1500, Acct-Output-Octets = 500, "
                 "Acct-Session-Time = 90, Acct-Terminate-Cause = User-Request"):
        assert acct(rad, base + text) == "Accounting-Response"
    assert unmatched() == before + 3
    status, page = rad.api("GET", "/v1/accounting/unmatched?nas=localhost-nas")
    assert status == 200
    (entry,) = [e for e in page["items"] if e["nas_session_id"] == "nb-1"]
    assert entry["identity"] == "username=nobody-here"
    assert (entry["status"], entry["units"], entry["reports"]) == ("closed", {"data": 2000}, 3)
    assert entry["attrs"]["Acct-Terminate-Cause"] == "User-Request"
    status, _ = rad.api("DELETE", f"/v1/accounting/unmatched/{entry['session']}")
    assert status == 204
    status, page = rad.api("GET", "/v1/accounting/unmatched?status=closed")
    assert all(e["session"] != entry["session"] for e in page["items"])
    assert rad.api("DELETE", f"/v1/accounting/unmatched/{entry['session']}")[0] == 404


def test_wrong_secret_is_silently_dropped_and_counted(rad):
    """No answer (RFC 2865), but the operator learns which NAS has another secret:
    a warning naming it (at most one a minute) and a counter by NAS."""
    def bad_secret() -> float:
        m = re.search(r'^ocs_radius_bad_secret_total\{nas="localhost-nas"\} (\S+)$',
                      rad.metrics_text(), re.M)
        return float(m.group(1)) if m else 0.0
    before, counted = rad.dropped("bad_authenticator"), bad_secret()
    code, _ = rad.radclient("acct", 'User-Name = "demo", Acct-Status-Type = Start, '
                                    'Acct-Session-Id = "ws-1"', secret="not-the-secret",
                            timeout=0.5, retries=1)
    assert code is None
    assert rad.dropped("bad_authenticator") >= before + 1
    code, _ = rad.radclient("auth", 'User-Name = "demo", User-Password = "demo", '
                                    'Message-Authenticator = 0x00', secret="not-the-secret",
                            timeout=0.5, retries=1)
    assert code is None  # the Message-Authenticator does not verify
    assert bad_secret() >= counted + 2
    rad.wait_log(r"WARNING.*RADIUS packets from NAS localhost-nas \(127\.0\.0\.1\) "
                 r"dropped: the (Request |Message-)Authenticator does not verify, so its "
                 r"shared secret differs")
    assert len(re.findall("its shared secret differs", rad.log())) == 1  # once a minute


def test_status_server_on_both_ports(rad):
    assert rad.radclient("status-auth", "Message-Authenticator = 0x00")[0] == "Access-Accept"
    assert rad.radclient("status", "Message-Authenticator = 0x00")[0] == "Accounting-Response"


def test_unknown_source_address_is_dropped(rad):
    """Dropped and counted; the log says which address sent it (a NAS nobody
    registered, or one whose source address is not the one registered), once a
    minute however often it retries."""
    before = rad.dropped("unknown_client")
    pkt = acct_packet([(A.ACCT_STATUS_TYPE, codec.u32(1)), (A.ACCT_SESSION_ID, s("x"))])
    for _ in range(3):
        assert rad.send_raw(pkt, source="127.0.0.99", timeout=0.3) is None
    assert rad.dropped("unknown_client") == before + 3
    rad.wait_log(r"WARNING.*RADIUS packets from 127\.0\.0\.99 dropped: no NAS is registered "
                 r"for this address \(ocsctl nas add NAME 127\.0\.0\.99")
    assert len(re.findall(r"from 127\.0\.0\.99 dropped", rad.log())) == 1


def test_a_second_daemon_on_the_same_radius_ports_refuses_to_start(rad, tmp_path):
    """Two servers must not share a RADIUS port by accident: the kernel would hand
    the NAS's packets to whichever bound last. The second ocsd says why and exits;
    the first keeps answering."""
    second = RadiusOcsd(tmp_path)
    second.config.write_text(second.config.read_text()
                             .replace(f":{second.auth_port}\"", f":{rad.auth_port}\"")
                             .replace(f":{second.acct_port}\"", f":{rad.acct_port}\""))
    second.start(wait_ready=False)
    try:
        assert second.proc.wait(30) != 0
    finally:
        second.stop()
    assert re.search(rf"cannot listen on 127\.0\.0\.1:{rad.auth_port} \(radius auth\): "
                     "Address already in use", second.log()), second.log()
    assert auth(rad, "demo", "demo")[0] == "Access-Accept"
    assert rad.radclient("status", "Message-Authenticator = 0x00")[0] == "Accounting-Response"


def test_a_dual_stack_listener_serves_ipv4_and_ipv6_nas(tmp_path):
    """auth_listen = "[::]:PORT" takes both families: an IPv4 NAS's packets arrive
    from an IPv4-mapped address (::ffff:127.0.0.1) and are still its own. Behind a
    shared (proxy) entry, a report naming no NAS is keyed by the sender's IPv4
    address, as it would be on an IPv4 socket."""
    def free6() -> int:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::", 0))
            return sock.getsockname()[1]

    d = RadiusOcsd(tmp_path)
    port, acct_port = free6(), free6()
    d.config.write_text(d.config.read_text().replace(
        f'auth_listen = "127.0.0.1:{d.auth_port}"', f'auth_listen = "[::]:{port}"').replace(
        f'acct_listen = "127.0.0.1:{d.acct_port}"', f'acct_listen = "[::]:{acct_port}"'))
    d.seed(seed)
    d.start()
    try:
        _, listed = d.api("GET", "/v1/nas")
        (local,) = [n for n in listed["items"] if n["address"].startswith("127.0.0.1")]
        status, _ = d.api("PATCH", f"/v1/nas/{local['id']}", {"control": {"proxy": True}})
        assert status == 200
        start = acct_packet([(A.USER_NAME, s("acct1")), (A.ACCT_SESSION_ID, s("ds-1")),
                             (A.ACCT_STATUS_TYPE, codec.u32(1))], ident=3)
        deadline = time.monotonic() + 10
        while True:  # the registry's reload after the PATCH is asynchronous
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1)
                sock.sendto(start, ("127.0.0.1", acct_port))
                assert codec.decode(sock.recv(4096)).code == Code.ACCOUNTING_RESPONSE
            status, _ = d.api("GET", f"/v1/sessions/radius:{local['name']}/127.0.0.1:ds-1")
            if status == 200 or time.monotonic() > deadline:
                break
            start = acct_packet([(A.USER_NAME, s("acct1")), (A.ACCT_SESSION_ID, s("ds-1")),
                                 (A.ACCT_STATUS_TYPE, codec.u32(1)),
                                 (A.ACCT_DELAY_TIME, codec.u32(1))], ident=4)
            time.sleep(0.2)
        assert status == 200
        status, _ = d.api("PATCH", f"/v1/nas/{local['id']}", {"control": {}})
        assert status == 200
        status, _ = d.api("POST", "/v1/nas", {"name": "v6-bras", "address": "::1",
                                              "secret": "v6-secret-0123456789"})
        assert status == 201
        for family, host, secret in ((socket.AF_INET, "127.0.0.1", SECRET),
                                     (socket.AF_INET6, "::1", "v6-secret-0123456789")):
            auth = os.urandom(16)
            request = codec.encode_request(
                Code.ACCESS_REQUEST, 9, [(A.USER_NAME, s("timed1")), (A.USER_PASSWORD,
                                         codec.hide_password(s("pw-timed1"), s(secret), auth))],
                s(secret), authenticator=auth, message_authenticator=True)
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(request, (host, port))
                assert codec.decode(sock.recv(4096)).code == Code.ACCESS_ACCEPT, host
    finally:
        d.stop()


def test_counters_beyond_any_real_session_are_dropped_counted_and_not_charged(rad):
    acc = rad.ids["acct2"]
    base = [(A.USER_NAME, s("acct2")), (A.ACCT_SESSION_ID, s("big-1"))]
    assert rad.send_raw(acct_packet(base + [(A.ACCT_STATUS_TYPE, codec.u32(1))],
                                    ident=30)) is not None
    before, dropped = rad.buckets(acc)["octets"], rad.dropped("invalid_attribute")
    absurd = acct_packet(base + [(A.ACCT_STATUS_TYPE, codec.u32(3)),
                                 (A.ACCT_INPUT_GIGAWORDS, codec.u32(0xFFFFFFFF)),
                                 (A.ACCT_INPUT_OCTETS, codec.u32(0xFFFFFFFF)),
                                 (A.ACCT_SESSION_TIME, codec.u32(60))], ident=31)
    assert rad.send_raw(absurd, timeout=0.5) is None  # not recorded, so not answered
    assert rad.dropped("invalid_attribute") == dropped + 1
    assert rad.dropped("store_unavailable") == 0 and rad.dropped("internal_error") == 0
    rad.wait_log(r"dropped: Acct-Input/Output-Octets and -Gigawords out of range")
    # The session goes on from its last good report.
    assert rad.send_raw(acct_packet(base + [(A.ACCT_STATUS_TYPE, codec.u32(3)),
                                            (A.ACCT_INPUT_OCTETS, codec.u32(5000)),
                                            (A.ACCT_SESSION_TIME, codec.u32(120))],
                                    ident=32)) is not None
    assert rad.buckets(acc)["octets"] == before - 5000


def test_accounting_without_a_status_type_is_not_acknowledged(rad):
    """RFC 2866 §5.1: Acct-Status-Type is in every Accounting-Request. Without it
    nothing can be recorded, so nothing is acknowledged (the NAS keeps the record);
    a status with nothing to charge (Failed, tunnel records) is acknowledged."""
    base = [(A.USER_NAME, s("demo")), (A.ACCT_SESSION_ID, s("nostatus-1"))]
    before = rad.dropped("missing_attribute")
    assert rad.send_raw(acct_packet(base, ident=40), timeout=0.5) is None
    assert rad.dropped("missing_attribute") == before + 1
    rad.wait_log(r"dropped: missing Acct-Status-Type")
    for status in (15, 9):  # Failed, Tunnel-Start (RFC 2867)
        assert rad.send_raw(acct_packet(base + [(A.ACCT_STATUS_TYPE, codec.u32(status))],
                                        ident=41 + status)) is not None, status


def test_a_reply_that_cannot_fit_beside_the_proxy_states_is_dropped_and_counted(rad):
    """A request carrying almost 4 KiB of Proxy-State (RFC 2865 §5.33: copied into the
    reply) leaves no room for an Access-Accept's attributes: no answer, counted and
    warned about, and the daemon goes on answering."""
    auth_attr = codec.new_authenticator()
    attrs = [(A.USER_NAME, s("timed2")),
             (A.USER_PASSWORD, codec.hide_password(b"pw-timed2", SECRET.encode(), auth_attr))]
    room = codec.MAX_PACKET - 20 - 18 - sum(2 + len(v) for _, v in attrs)  # 18: M-A
    states = [(A.PROXY_STATE, bytes([i]) * 253) for i in range(room // 255)]
    states.append((A.PROXY_STATE, b"z" * (room % 255 - 2)))
    data = codec.encode_request(Code.ACCESS_REQUEST, 50, attrs + states, SECRET.encode(),
                                authenticator=auth_attr, message_authenticator=True)
    assert len(data) == codec.MAX_PACKET
    before = rad.dropped("reply_too_long")
    assert rad.send_raw(data, port="auth", timeout=0.5) is None
    assert rad.dropped("reply_too_long") == before + 1
    rad.wait_log(r"no answer to access from \S+: the reply does not fit in a RADIUS packet")
    assert rad.dropped("internal_error") == 0
    assert auth(rad, "demo", "demo")[0] == "Access-Accept"


def test_malformed_packets_are_dropped_counted_and_the_daemon_keeps_answering(rad):
    good = acct_packet([(A.USER_NAME, s("demo")), (A.ACCT_STATUS_TYPE, codec.u32(3)),
                        (A.ACCT_SESSION_ID, s("m-1"))])
    with_len = lambda d, n: d[:2] + n.to_bytes(2, "big") + d[4:]  # noqa: E731
    cases = {
        "bad_length": with_len(good, len(good) + 10),
        "attribute_length": with_len(good + b"\x01\x00", len(good) + 2),
        "truncated_attribute": with_len(good + b"\x01\x09ab", len(good) + 4),
        "too_long": good + b"\x00" * 4100,
        "unknown_code": bytes([77]) + good[1:],
        "too_short": b"\x04\x01\x00",
    }
    before = {reason: rad.dropped(reason) for reason in cases}
    for reason, data in cases.items():
        assert rad.send_raw(data, timeout=0.2) is None, reason
    assert rad.send_raw(os.urandom(200), timeout=0.2) is None  # garbage
    for reason in cases:
        assert rad.dropped(reason) >= before[reason] + 1, reason
    assert rad.radclient("status", "Message-Authenticator = 0x00")[0] == "Accounting-Response"


# ---------------------------------------------------------------- BlastRADIUS rules
def test_message_authenticator_rules(rad):
    status, listing = rad.api("GET", "/v1/nas")
    nas_id = next(n["id"] for n in listing["items"] if n["name"] == "localhost-nas")
    # The demo NAS is in "auto" mode and has sent Message-Authenticator above:
    # from now on an Access-Request without one is dropped.
    code, _ = rad.radclient("auth", 'User-Name = "demo", User-Password = "demo"',
                            timeout=0.5, retries=1)
    assert code is None
    assert rad.dropped("missing_message_authenticator") >= 1
    # A wrong Message-Authenticator is dropped whatever the mode.
    req = bytearray(codec.encode_request(Code.ACCESS_REQUEST, 5, [(A.USER_NAME, b"demo")],
                                         SECRET.encode(), message_authenticator=True))
    req[-1] ^= 0xFF
    before = rad.dropped("bad_message_authenticator")
    assert rad.send_raw(bytes(req), port="auth", timeout=0.3) is None
    assert rad.dropped("bad_message_authenticator") == before + 1
    # "no": accepted without, and the NAS is listed as still omitting it.
    status, _ = rad.api("PATCH", f"/v1/nas/{nas_id}", {"require_message_authenticator": "no"})
    assert status == 200
    code, attrs = rad.radclient("auth", 'User-Name = "demo", User-Password = "demo"')
    assert code == "Access-Accept"
    assert attrs["Message-Authenticator"].startswith("0x")  # still added to the reply
    assert ('ocs_radius_nas_without_message_authenticator{nas="localhost-nas"} 1.0'
            in rad.metrics_text())
    # "yes": required.
    rad.api("PATCH", f"/v1/nas/{nas_id}", {"require_message_authenticator": "yes"})
    assert rad.radclient("auth", 'User-Name = "demo", User-Password = "demo"',
                         timeout=0.5, retries=1)[0] is None
    assert auth(rad, "demo", "demo")[0] == "Access-Accept"
    rad.api("PATCH", f"/v1/nas/{nas_id}", {"require_message_authenticator": "auto"})
