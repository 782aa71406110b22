"""Gy/Ro scenarios against the real `ocsd` process, driven by a client built on the codec.

One daemon (sqlite store, in-process cluster state) serves the module's
scenarios; tests that need another configuration (watchdog, overload, shutdown)
start their own. What is asserted is what a PGW or an operator notices: the
Result-Codes and grants in the answers, Failed-AVPs, connections kept or
closed, balances and CDRs through the REST API, log lines and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import signal
import time

import pytest

from diameter import base
from diameter import tables as T
from diameter.client import (EVENT, INITIAL, TERMINATION, UPDATE, DiameterClient,
                             ims_information, mscc)
from diameter.codec import FLAG_REQUEST, Message, avp, encode, encode_avp, value, values
from diameter.gy import CONTEXT_SMS, CONTEXT_VOICE
from ocs.model import MAX_USAGE
from tests.services import free_port
from tests.test_daemon import Ocsd, http, in_store, metric

TOKEN = "diameter-test-" + secrets.token_hex(12)
MB = 1_000_000
REDIRECT = "http://topup.example.net/"


def diameter_config(port: int, **settings) -> str:
    lines = [f'listen = "127.0.0.1:{port}"', 'origin_host = "ocs.test.example"',
             'origin_realm = "test.example"', 'allowed_realms = ["pgw.example"]',
             'allowed_hosts = ["as.ims.example"]']
    lines += [f"{k} = {json.dumps(v) if isinstance(v, (str, bool)) else v}"
              for k, v in settings.items()]
    return "\n[diameter]\n" + "\n".join(lines) + "\n"


CHARGING = """
[charging]
default_quota = { octets = 2000000, seconds = 60, events = 1 }
quota_threshold_percent = 20
"""


async def prepare(store) -> dict[str, int]:
    """Plans and subscribers of the scenarios; returns account ids by name."""
    data = await store.create_plan(
        name="gy-data", currency="EUR",
        allowances=[{"kind": "octets", "units": 5 * MB, "validity_days": 30}],
        final_unit={"action": "redirect", "redirect_url": REDIRECT})
    voice = await store.create_plan(
        name="ro-voice", currency="EUR",
        allowances=[{"kind": "seconds", "units": 120, "validity_days": 30}],
        final_unit={"action": "terminate"})
    sms = await store.create_plan(
        name="sms", currency="EUR", allowances=[{"kind": "events", "units": 2}])
    ids = {}
    for name, plan, identity in (
            ("gy", data, dict(msisdn="41790000001", imsi="228011234567891")),
            ("voice", voice, dict(msisdn="41790000002", sip_user="alice@ims.example")),
            ("sms", sms, dict(msisdn="41790000003")),
            ("suspend", data, dict(msisdn="41790000004")),
            ("dup", data, dict(msisdn="41790000005")),
            ("misc", data, dict(msisdn="41790000006"))):
        acct = await store.create_account(name=name, currency="EUR", billing="prepaid")
        await store.create_subscriber(account_id=acct.id, plan_id=plan.id, **identity)
        ids[name] = acct.id
    return ids


def scenario_daemon(tmp, **settings) -> Ocsd:
    """An ocsd (not started) with the scenarios' plans and subscribers, and rating
    group 20 configured with a 1 MB quota; `settings` go to [diameter]."""
    port = free_port()
    d = Ocsd(tmp, extra=f'bootstrap_token = "{TOKEN}"\n' + CHARGING + diameter_config(
        port, rating_groups={}, **settings).replace(
            "rating_groups = {}", "rating_groups = { 20 = { quota = 1000000 } }"))
    d.accounts = in_store(d.store_url, prepare)
    d.diameter_port = port
    return d


@pytest.fixture(scope="module")
def ocsd(tmp_path_factory):
    d = scenario_daemon(tmp_path_factory.mktemp("diameter-daemon"), log_credit_control=True)
    d.start()
    yield d
    d.stop()


def api(d: Ocsd, path: str, method: str = "GET", body: dict | None = None) -> dict:
    status, answer = d.api(method, path, TOKEN, body)
    assert status < 300, (status, answer)
    return answer


def bucket(d: Ocsd, account: str, kind: str) -> dict:
    """The account's bucket of `kind` as the API shows it (an emptied one is not listed)."""
    detail = api(d, f"/v1/accounts/{d.accounts[account]}")
    found = [b for b in detail["balance"]["buckets"] if b["kind"] == kind]
    assert len(found) <= 1
    return found[0] if found else {"kind": kind, "balance": 0, "reserved": 0}


async def client(d: Ocsd, **kw) -> DiameterClient:
    kw.setdefault("origin_host", "pgw1.pgw.example")
    kw.setdefault("origin_realm", "pgw.example")
    c = DiameterClient("127.0.0.1", d.diameter_port, destination_realm="test.example", **kw)
    cea = await c.connect()
    assert value(cea.avps, T.RESULT_CODE) == 2001
    return c


def msccs_of(answer: Message) -> dict[int, tuple]:
    return {value(m, T.RATING_GROUP): m for m in answer.all(T.MULTIPLE_SERVICES_CREDIT_CONTROL)}


def granted(group) -> int | None:
    gsu = value(group, T.GRANTED_SERVICE_UNIT)
    return None if gsu is None else value(gsu, T.CC_TOTAL_OCTETS, value(gsu, T.CC_TIME))


def fui(group) -> tuple | None:
    f = value(group, T.FINAL_UNIT_INDICATION)
    if f is None:
        return None
    server = value(f, T.REDIRECT_SERVER)
    return (value(f, T.FINAL_UNIT_ACTION),
            value(server, T.REDIRECT_SERVER_ADDRESS) if server else value(f, T.FILTER_ID))


# ---------------------------------------------------------------------- capabilities exchange
async def test_capabilities_exchange_and_refusals(ocsd):
    c = DiameterClient("127.0.0.1", ocsd.diameter_port, origin_host="pgw1.pgw.example",
                       origin_realm="pgw.example")
    cea = await c.connect()
    assert value(cea.avps, T.RESULT_CODE) == 2001 and not cea.error
    assert value(cea.avps, T.ORIGIN_HOST) == "ocs.test.example"
    assert value(cea.avps, T.AUTH_APPLICATION_ID) == 4
    assert values(cea.avps, T.SUPPORTED_VENDOR_ID) == [10415]
    assert str(value(cea.avps, T.HOST_IP_ADDRESS)) == "127.0.0.1"
    assert isinstance(value(cea.avps, T.ORIGIN_STATE_ID), int)
    assert (await c.close()) is not None

    # An unknown peer: 3010 with the E bit, then the connection is closed.
    stranger = DiameterClient("127.0.0.1", ocsd.diameter_port, origin_host="evil.example",
                              origin_realm="evil.example")
    cea = await stranger.connect()
    assert value(cea.avps, T.RESULT_CODE) == 3010 and cea.error
    await asyncio.wait_for(stranger.closed.wait(), 5)
    ocsd.wait_log(r"peer refused from 127\.0\.0\.1: evil\.example \(realm evil\.example\) "
                  r"from 127\.0\.0\.1 is not an allowed peer \(3010\)")

    # No application in common: 5010, closed.
    other = DiameterClient("127.0.0.1", ocsd.diameter_port, origin_host="pcrf.pgw.example",
                           origin_realm="pgw.example")
    cer = base.cer(base.LocalIdentity("pcrf.pgw.example", "pgw.example",
                                      auth_applications=(16777238,)), 1, 1)
    cea = await other.connect(cer)
    assert value(cea.avps, T.RESULT_CODE) == 5010
    await asyncio.wait_for(other.closed.wait(), 5)

    # A CER without Origin-Realm: 5005 naming it in Failed-AVP.
    lacking = DiameterClient("127.0.0.1", ocsd.diameter_port, origin_host="x.pgw.example")
    cer = base.cer(lacking.local, 2, 2)
    cer = cer.with_avps(a for a in cer.avps if a.code != T.ORIGIN_REALM)
    cea = await lacking.connect(cer)
    assert value(cea.avps, T.RESULT_CODE) == 5005
    failed = value(cea.avps, T.FAILED_AVP)
    assert [a.code for a in failed] == [T.ORIGIN_REALM]
    await asyncio.wait_for(lacking.closed.wait(), 5)

    # Anything before CER closes the connection.
    early = DiameterClient("127.0.0.1", ocsd.diameter_port)
    await early.open()
    early.write(encode(early.ccr("early", INITIAL, 0, msisdn="41790000001")))
    await asyncio.wait_for(early.closed.wait(), 5)
    ocsd.wait_log(r"CCR before the capabilities exchange")


# ---------------------------------------------------------------------- Gy data
async def test_data_session_with_two_rating_groups_to_exhaustion(ocsd):
    """CCR-I/U/U/T of two rating groups drawing one 5 MB allowance: grants, the last
    grant with the plan's redirect, 4012 per MSCC then at command level, balances
    and CDRs as the API shows them."""
    c = await client(ocsd)
    sid, who = "pgw1.pgw.example;gy;1", dict(msisdn="41790000001")
    try:
        a = await c.request(c.ccr(sid, INITIAL, 0, **who,
                                  msccs=[mscc(10, requested={}), mscc(20, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert value(a.avps, T.CC_SESSION_FAILOVER) == 1
        m = msccs_of(a)
        # RG 10: [charging] default quota; RG 20: its [diameter.rating_groups] quota.
        assert granted(m[10]) == 2 * MB and granted(m[20]) == 1 * MB
        assert value(m[10], T.VOLUME_QUOTA_THRESHOLD) == 400_000
        assert value(m[10], T.VALIDITY_TIME) == 3600 and value(m[10], T.RESULT_CODE) == 2001
        b = bucket(ocsd, "gy", "octets")
        assert (b["balance"], b["reserved"]) == (5 * MB, 3 * MB)

        a = await c.request(c.ccr(sid, UPDATE, 1, **who, msccs=[
            mscc(10, requested={}, used={"total": 1_500_000}),
            mscc(20, requested={}, used={"input": 400_000, "output": 600_000})]))
        m = msccs_of(a)
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert granted(m[10]) == 2 * MB and fui(m[10]) is None
        # Only 0.5 MB left for RG 20: the last grant carries the redirect.
        assert granted(m[20]) == 500_000 and fui(m[20]) == (1, REDIRECT)
        b = bucket(ocsd, "gy", "octets")
        assert (b["balance"], b["reserved"]) == (2_500_000, 2_500_000)

        a = await c.request(c.ccr(sid, UPDATE, 2, **who, msccs=[
            mscc(10, requested={}, used={"total": 2 * MB}),
            mscc(20, requested={}, used={"total": 500_000})]))
        m = msccs_of(a)
        assert value(a.avps, T.RESULT_CODE) == 4012  # nothing for any service
        for rg in (10, 20):
            assert value(m[rg], T.RESULT_CODE) == 4012 and granted(m[rg]) is None
            assert fui(m[rg]) == (1, REDIRECT)
            assert value(m[rg], T.VALIDITY_TIME) == 300  # ask again after a top-up
        b = bucket(ocsd, "gy", "octets")
        assert (b["balance"], b["reserved"]) == (0, 0)

        a = await c.request(c.ccr(sid, TERMINATION, 3, **who, msccs=[mscc(10, used={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001 and not a.all(
            T.MULTIPLE_SERVICES_CREDIT_CONTROL)
        cdrs = {x["service"]: x for x in api(ocsd, f"/v1/cdrs?session={sid}")["items"]}
        assert cdrs["rg:10"]["units"] == 3_500_000 and cdrs["rg:20"]["units"] == 1_500_000
        session = api(ocsd, f"/v1/sessions/{sid}")
        assert session["status"] == "closed" and session["proto"] == "diameter"
        ocsd.wait_log(r"CCR-U #1 rg:10 used=1500000 granted=2000000 "
                      r"rg:20 used=1000000 granted=500000 fui=redirect -> 2001")
    finally:
        await c.close()


async def test_unknown_user_suspended_account_and_unknown_session(ocsd):
    c = await client(ocsd)
    try:
        a = await c.request(c.ccr("u1", INITIAL, 0, msisdn="41799999999",
                                  msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 5030
        assert "no subscriber" in value(a.avps, T.ERROR_MESSAGE)

        api(ocsd, f"/v1/accounts/{ocsd.accounts['suspend']}/suspend", "POST",
            {"reason": "unpaid invoice"})
        a = await c.request(c.ccr("u2", INITIAL, 0, msisdn="41790000004",
                                  msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 4010
        assert value(msccs_of(a)[10], T.RESULT_CODE) == 4010

        a = await c.request(c.ccr("never-started", UPDATE, 1, msisdn="41790000006",
                                  msccs=[mscc(10, requested={}, used={"total": 10})]))
        assert value(a.avps, T.RESULT_CODE) == 5002
    finally:
        await c.close()


async def test_duplicate_ccr_is_answered_from_cache_and_charges_nothing_more(ocsd):
    c = await client(ocsd)
    sid, who = "pgw1.pgw.example;dup;1", dict(msisdn="41790000005")
    try:
        await c.request(c.ccr(sid, INITIAL, 0, **who, msccs=[mscc(10, requested={})]))
        update = c.ccr(sid, UPDATE, 1, **who, msccs=[mscc(10, requested={},
                                                          used={"total": 1_000_000})])
        first = await c.request(update)
        before = bucket(ocsd, "dup", "octets")
        assert before["balance"] == 4 * MB

        # The same request again after a "failover": T flag, same End-to-End id,
        # new Hop-by-Hop id -> the cached answer, byte for byte but that id.
        again = Message(update.code, update.flags | 0x10, update.app_id, update.hop_by_hop + 7,
                        update.end_to_end, update.avps)
        second = await c.request(again)
        assert second.hop_by_hop == again.hop_by_hop
        assert encode(second)[16:] == encode(first)[16:]
        ocsd.wait_log(r"duplicate CCR from pgw1\.pgw\.example answered from the cache")

        # The same CC-Request-Number in a new request (another End-to-End id): the core
        # replays its first decision.
        third = await c.request(c.ccr(sid, UPDATE, 1, **who, msccs=[
            mscc(10, requested={}, used={"total": 1_000_000})]))
        assert msccs_of(third)[10] == msccs_of(first)[10]
        ocsd.wait_log(r"CCR-U #1 rg:10 used=1000000 granted=2000000 -> 2001 \(replayed\)")
        assert bucket(ocsd, "dup", "octets") == before
        # The same number with a service the first request did not have: the first
        # answer for rg 10, 5031 for rg 20 (a number already answered charges nothing more).
        fourth = await c.request(c.ccr(sid, UPDATE, 1, **who, msccs=[
            mscc(10, requested={}, used={"total": 1_000_000}),
            mscc(20, requested={}, used={"total": 3_000_000})]))
        assert value(fourth.avps, T.RESULT_CODE) == 2001
        assert msccs_of(fourth)[10] == msccs_of(first)[10]
        assert value(msccs_of(fourth)[20], T.RESULT_CODE) == 5031
        assert bucket(ocsd, "dup", "octets") == before
    finally:
        await c.close()


# ---------------------------------------------------------------------- validation
async def test_bad_requests_get_their_result_codes_and_the_connection_stays(ocsd):
    c = await client(ocsd)
    try:
        ccr = c.ccr("v1", INITIAL, 0, msisdn="41790000006", msccs=[mscc(10, requested={})])
        # Missing mandatory AVP -> 5005 with an example of it in Failed-AVP.
        no_number = ccr.with_avps(a for a in ccr.avps if a.code != T.CC_REQUEST_NUMBER)
        a = await c.request(no_number)
        assert value(a.avps, T.RESULT_CODE) == 5005
        assert [x.code for x in value(a.avps, T.FAILED_AVP)] == [T.CC_REQUEST_NUMBER]
        assert value(a.avps, T.SESSION_ID) == "v1"

        # Unknown AVP with the M bit -> 5001 with that AVP.
        hbh, e2e = c.ids()
        odd = Message(ccr.code, ccr.flags, ccr.app_id, hbh, e2e,
                      ccr.avps + (avp(777 | (10415 << 32), b"?"),))
        raw = bytearray(encode(odd))
        raw[-16 + 4] |= 0x40  # its M bit (the AVP is the last 16 octets)
        a = await c.request_raw(bytes(raw), hbh)
        assert value(a.avps, T.RESULT_CODE) == 5001
        (failed,) = value(a.avps, T.FAILED_AVP)
        assert (failed.code, failed.vendor) == (777, 10415)

        # An Unsigned32 of 3 octets -> 5014; an invalid CC-Request-Type -> 5004.
        hbh, e2e = c.ids()
        raw = bytearray(encode(c.ccr("v1", INITIAL, 0, msisdn="41790000006", ids=(hbh, e2e))))
        i = raw.find(bytes.fromhex("0000019f4000000c"))
        raw[i + 7] = 11
        a = await c.request_raw(bytes(raw), hbh)
        assert value(a.avps, T.RESULT_CODE) == 5014
        bad_type = c.ccr("v1", 9, 0, msisdn="41790000006")
        a = await c.request(bad_type)
        assert value(a.avps, T.RESULT_CODE) == 5004
        assert value(value(a.avps, T.FAILED_AVP), T.CC_REQUEST_TYPE) == 9
        # Used units no network reports (beyond 2**53) -> 5004 naming the AVP, not charged.
        absurd = c.ccr("v1", UPDATE, 1, msisdn="41790000006",
                       msccs=[mscc(10, requested={}, used={"total": 2**64 - 1})])
        a = await c.request(absurd)
        assert value(a.avps, T.RESULT_CODE) == 5004
        assert value(value(a.avps, T.FAILED_AVP), T.CC_TOTAL_OCTETS) == 2**64 - 1
        # Each count in range, their sum not: input + output, several USUs, or MSCCs
        # of one rating group. Refused the same way, before the charging core.
        for n, msccs in enumerate((
                [mscc(10, used={"input": MAX_USAGE, "output": MAX_USAGE})],
                [mscc(10, used=[{"total": MAX_USAGE}, {"total": MAX_USAGE}])],
                [mscc(10, used={"total": MAX_USAGE}), mscc(10, used={"total": 1})])):
            a = await c.request(c.ccr("v1", UPDATE, 1, msisdn="41790000006", msccs=msccs))
            assert value(a.avps, T.RESULT_CODE) == 5004, msccs
            if n == 0:  # the second of the two counts is named
                assert value(value(a.avps, T.FAILED_AVP), T.CC_OUTPUT_OCTETS) == MAX_USAGE
        # CCR-Event without Requested-Action -> 5005.
        a = await c.request(c.ccr("v2", EVENT, 0, msisdn="41790000006", context=CONTEXT_SMS))
        assert value(a.avps, T.RESULT_CODE) == 5005

        # Not our application: 3007 (E bit); a command credit control lacks: 3001.
        hbh, e2e = c.ids()
        acr = Message(T.CMD_ACCOUNTING, FLAG_REQUEST | 0x40, 3, hbh, e2e,
                      (avp(T.SESSION_ID, "acct"), *base.origin(c.local)))
        a = await c.request(acr)
        assert value(a.avps, T.RESULT_CODE) == 3007 and a.error
        hbh, e2e = c.ids()
        str_ = Message(T.CMD_SESSION_TERMINATION, FLAG_REQUEST | 0x40, 4, hbh, e2e,
                       (avp(T.SESSION_ID, "v1"), *base.origin(c.local)))
        a = await c.request(str_)
        assert value(a.avps, T.RESULT_CODE) == 3001 and a.error

        # After all that the connection still serves.
        a = await c.request(ccr)
        assert value(a.avps, T.RESULT_CODE) == 2001
    finally:
        await c.close()


def _with_m(a):
    """`a` and, in a group, all it holds, with the M bit set (as some PGWs send them)."""
    kids = a.value
    if isinstance(kids, tuple) and kids and all(hasattr(k, "flags") for k in kids):
        kids = tuple(_with_m(k) for k in kids)
    return dataclasses.replace(a, value=kids, flags=a.flags | 0x40)


async def test_a_pgw_sending_all_of_ps_information_with_m_bits_is_served(ocsd):
    """PS-Information as a PGW fills it: node, CSG, presence area, 3GPP2 and ETSI
    location, rate control, low priority, AoC, each with the M bit set. All are AVPs
    of TS 32.299 that Gy does not read; none is refused as unknown. An AVP nobody
    defines, with the M bit, deep inside it is still refused: 5001, and Failed-AVP
    holds it inside its groups (RFC 6733 §7.5)."""
    ps = [avp(T.TGPP_CHARGING_ID, bytes.fromhex("0000abcd")), avp(T.NODE_ID, "pgw-1"),
          avp(T.PDN_CONNECTION_ID, b"\x05"), avp(T.PDP_ADDRESS, "10.45.0.7"),
          avp(T.USER_LOCATION_INFO_TIME, 1_700_000_000),
          avp(T.USER_CSG_INFORMATION, (avp(T.CSG_ID, 7), avp(T.CSG_ACCESS_MODE, 0),
                                       avp(T.CSG_MEMBERSHIP_INDICATION, 1))),
          avp(T.PRESENCE_REPORTING_AREA_INFORMATION, (
              avp(T.PRESENCE_REPORTING_AREA_IDENTIFIER, b"\x00\x00\x01"),
              avp(T.PRESENCE_REPORTING_AREA_STATUS, 0))),
          avp(T.TGPP2_BSID, "0x1234"), avp(T.LOGICAL_ACCESS_ID, b"port-7"),
          avp(T.LOW_PRIORITY_INDICATOR, 0), avp(T.MME_NAME, "mme1.epc.example"),
          avp(T.SERVING_PLMN_RATE_CONTROL, (avp(T.UPLINK_RATE_LIMIT, 10),
                                            avp(T.DOWNLINK_RATE_LIMIT, 20))),
          avp(T.TERMINAL_INFORMATION, (avp(T.IMEI, "35209900176148"),
                                       avp(T.SOFTWARE_VERSION, "01"))),
          avp(T.QOS_INFORMATION, (   # with the TS 29.212 rates beyond 4 Gbit/s
              avp(T.QOS_CLASS_IDENTIFIER, 9), avp(T.EXTENDED_APN_AMBR_UL, 5_000_000),
              avp(T.CONDITIONAL_APN_AGGREGATE_MAX_BITRATE, (
                  avp(T.IP_CAN_TYPE, 5), avp(T.RAT_TYPE, 1004),
                  avp(T.EXTENDED_APN_AMBR_DL, 8_000_000)))))]
    info = _with_m(avp(T.SERVICE_INFORMATION, (avp(T.PS_INFORMATION, tuple(ps)),)))
    c = await client(ocsd)
    try:
        a = await c.request(c.ccr("ps1", INITIAL, 0, msisdn="41790000006",
                                  msccs=[mscc(10, requested={})],
                                  extra=[_with_m(avp(T.AOC_REQUEST_TYPE, 0)), info]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert value(msccs_of(a)[10], T.RESULT_CODE) == 2001
        a = await c.request(c.ccr("ps1", TERMINATION, 1, msisdn="41790000006",
                                  msccs=[mscc(10, used={"total": 0})], extra=[info]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        unknown = _with_m(avp(65000 | (10415 << 32), b"?"))
        odd = _with_m(avp(T.SERVICE_INFORMATION, (avp(T.PS_INFORMATION, (
            avp(T.NODE_ID, "pgw-1"), avp(T.USER_CSG_INFORMATION, (avp(T.CSG_ID, 7), unknown)),
        )),)))
        a = await c.request(c.ccr("ps2", INITIAL, 0, msisdn="41790000006",
                                  msccs=[mscc(10, requested={})], extra=[odd]))
        assert value(a.avps, T.RESULT_CODE) == 5001
        (failed,) = value(a.avps, T.FAILED_AVP)
        (ps_failed,) = failed.value
        (csg,) = ps_failed.value
        assert [(x.code, x.vendor) for x in csg.value] == [(65000, 10415)]
    finally:
        await c.close()


async def test_proxy_info_comes_back_in_every_answer_in_order(ocsd):
    """RFC 6733 6.2: an answer carries the request's Proxy-Info AVPs, unchanged and in
    their order, whether it grants, refuses or is a protocol error; a relay on the
    path depends on them (its state is in Proxy-State)."""
    c = await client(ocsd)
    # Two relays' worth; the second carries an AVP of no dictionary, which must survive.
    hops = (avp(T.PROXY_INFO, (avp(T.PROXY_HOST, "dra1.relay.example"),
                               avp(T.PROXY_STATE, b"\x00state-one\xff"))),
            avp(T.PROXY_INFO, (avp(T.PROXY_HOST, "dra2.relay.example"),
                               avp(T.PROXY_STATE, b"two"), avp(1234567, b"extra"))))
    wire = [encode_avp(h) for h in hops]

    def echoed(answer: Message) -> list[bytes]:
        return [encode_avp(a) for a in answer.avps if a.code == T.PROXY_INFO]

    try:
        ccr = c.ccr("px1", INITIAL, 0, msisdn="41790000006", msccs=[mscc(10, requested={})])
        a = await c.request(ccr.with_avps(ccr.avps + hops))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert echoed(a) == wire
        no_number = ccr.with_avps(tuple(x for x in ccr.avps if x.code != T.CC_REQUEST_NUMBER)
                                  + hops)
        a = await c.request(no_number)
        assert value(a.avps, T.RESULT_CODE) == 5005
        assert echoed(a) == wire
        hbh, e2e = c.ids()
        acr = Message(T.CMD_ACCOUNTING, FLAG_REQUEST | 0x40, 3, hbh, e2e,
                      (avp(T.SESSION_ID, "acct"), *base.origin(c.local), *hops))
        a = await c.request(acr)
        assert value(a.avps, T.RESULT_CODE) == 3007 and a.error
        assert echoed(a) == wire
        # A request without Proxy-Info gets an answer without one.
        a = await c.request(c.ccr("px1", UPDATE, 1, msisdn="41790000006",
                                  msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001 and echoed(a) == []
    finally:
        await c.close()


# ---------------------------------------------------------------------- Ro voice and events
async def test_ro_voice_call_and_sms_events(ocsd):
    c = await client(ocsd, origin_host="as.ims.example", origin_realm="ims.example")
    sid = "as.ims.example;call;1"
    try:
        a = await c.request(c.ccr(
            sid, INITIAL, 0, context=CONTEXT_VOICE, sip_uri="sip:alice@ims.example",
            msccs=[mscc(100, requested={"time": 300})],
            extra=[ims_information("tel:+41 79 123 45 67", "sip:alice@ims.example")]))
        m = msccs_of(a)[100]
        # 120 s allowance: all of it, as the final units, then the call must end.
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert granted(m) == 120 and fui(m) == (0, None)
        assert value(m, T.TIME_QUOTA_THRESHOLD) == 24
        a = await c.request(c.ccr(sid, TERMINATION, 1, context=CONTEXT_VOICE,
                                  sip_uri="sip:alice@ims.example",
                                  msccs=[mscc(100, used={"time": 95})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert bucket(ocsd, "voice", "seconds")["balance"] == 25
        (cdr,) = api(ocsd, f"/v1/cdrs?session={sid}")["items"]
        assert (cdr["service"], cdr["units"]) == ("voice", 95)

        # SMS: two events in the allowance, the third is refused.
        results = []
        for i in range(3):
            a = await c.request(c.ccr(f"as.ims.example;sms;{i}", EVENT, 0, context=CONTEXT_SMS,
                                      msisdn="41790000003", requested_action=0,
                                      requested={"units": 1}))
            gsu = value(a.avps, T.GRANTED_SERVICE_UNIT)
            results.append((value(a.avps, T.RESULT_CODE),
                            value(gsu, T.CC_SERVICE_SPECIFIC_UNITS) if gsu else None))
        assert results == [(2001, 1), (2001, 1), (4012, None)]
        assert bucket(ocsd, "sms", "events")["balance"] == 0

        # CHECK_BALANCE: an enquiry, nothing charged. One octet is within what is
        # left of a data allowance (ENOUGH_CREDIT, 0), a terabyte is not (NO_CREDIT, 1).
        before = bucket(ocsd, "misc", "octets")
        assert before["balance"] - before["reserved"] > 0
        for n, (wanted, result) in enumerate(((1, 0), (10 ** 12, 1))):
            a = await c.request(c.ccr(f"as.ims.example;check;{n}", EVENT, 0,
                                      msisdn="41790000006", requested_action=2,
                                      requested={"total": wanted}))
            assert value(a.avps, T.RESULT_CODE) == 2001
            assert value(a.avps, T.CHECK_BALANCE_RESULT) == result
        assert bucket(ocsd, "misc", "octets") == before
    finally:
        await c.close()


# ---------------------------------------------------------------------- peers
async def test_watchdog_and_disconnect_from_the_client(ocsd):
    c = await client(ocsd)
    hbh, e2e = c.ids()
    dwa = await c.request(base.dwr(c.local, hbh, e2e))
    assert value(dwa.avps, T.RESULT_CODE) == 2001
    assert value(dwa.avps, T.ORIGIN_HOST) == "ocs.test.example"
    dpa = await c.close()
    assert value(dpa.avps, T.RESULT_CODE) == 2001
    ocsd.wait_log(r"peer pgw1\.pgw\.example: peer disconnects \(REBOOTING\)")


async def test_malformed_framing_closes_that_connection_only(ocsd):
    good = await client(ocsd)
    bad = await client(ocsd, origin_host="pgw2.pgw.example")
    try:
        bad.write(b"\x02\x00\x00\x14" + b"\x00" * 16)  # version 2
        await asyncio.wait_for(bad.closed.wait(), 5)
        ocsd.wait_log(r"from 127\.0\.0\.1: unsupported Diameter version 2; closing")
        hbh, e2e = good.ids()
        assert value((await good.request(base.dwr(good.local, hbh, e2e))).avps,
                     T.RESULT_CODE) == 2001
        assert http(ocsd.url + "/healthz")[0] == 200
    finally:
        await good.close()
        await bad.close(dpr=False)


async def test_metrics_count_messages_by_peer_command_and_result(ocsd):
    c = await client(ocsd, origin_host="pgw3.pgw.example")
    await c.request(c.ccr("m1", INITIAL, 0, msisdn="41799999999"))
    status, _, body = http(ocsd.url + "/metrics")
    text = body.decode()
    assert metric(text, "ocs_diameter_messages_total",
                  '{cmd="CCA",peer="pgw3.pgw.example",result_code="5030"}') == 1
    assert metric(text, "ocs_diameter_messages_total",
                  '{cmd="CEA",peer="pgw3.pgw.example",result_code="2001"}') == 1
    assert metric(text, "ocs_diameter_connections") >= 1
    assert metric(text, "ocs_request_duration_seconds_count",
                  '{op="ccr-i",proto="diameter"}') >= 1
    await c.close()


async def test_the_api_and_ocsctl_list_the_connected_peers(ocsd):
    from tests.test_cli_local import ocsctl
    c = await client(ocsd, origin_host="pgw4.pgw.example", origin_state_id=4242)
    try:
        peers = api(ocsd, "/v1/diameter/peers")["items"]
        (mine,) = [p for p in peers if p["origin_host"] == "pgw4.pgw.example"]
        assert mine["origin_realm"] == "pgw.example" and mine["address"] == "127.0.0.1"
        assert (mine["state"], mine["watchdog"], mine["transport"]) == ("open", "okay", "tcp")
        assert mine["origin_state_id"] == 4242 and mine["applications"] == [4]
        assert mine["connected_at"].endswith("Z") and mine["node"] == "test-node"
        # One node (no Redis): every node's peers are this node's.
        everywhere = api(ocsd, "/v1/diameter/peers?nodes=all")
        assert everywhere["unreachable"] == [] and mine in everywhere["items"]
        run = ocsctl("--api", ocsd.url, "--token", TOKEN, "diameter", "peers",
                     cwd=str(ocsd.tmp))
        assert run.code == 0, run.err
        (line,) = [x for x in run.out.splitlines() if "pgw4.pgw.example" in x]
        assert "open" in line and "okay" in line and "4242" in line
    finally:
        await c.close()
    for _ in range(50):  # the server sees the close a moment later
        peers = api(ocsd, "/v1/diameter/peers")["items"]
        if not any(p["origin_host"] == "pgw4.pgw.example" for p in peers):
            break
        await asyncio.sleep(0.05)
    assert not any(p["origin_host"] == "pgw4.pgw.example" for p in peers)


# ---------------------------------------------------------------------- own daemons
def test_watchdog_detects_a_dead_peer_within_two_intervals(tmp_path):
    """Tw = 1 s: a peer that answers DWRs stays; one that does not is suspect after
    about 2 Tw and disconnected after about 3 Tw."""
    port = free_port()
    d = Ocsd(tmp_path, extra=diameter_config(port, watchdog_interval=1)).start()

    async def run():
        alive = DiameterClient("127.0.0.1", port, origin_host="ok.pgw.example",
                               origin_realm="pgw.example")
        dead = DiameterClient("127.0.0.1", port, origin_host="dead.pgw.example",
                              origin_realm="pgw.example", answer_watchdog=False)
        await alive.connect()
        await dead.connect()
        opened = time.monotonic()
        await asyncio.wait_for(dead.closed.wait(), 6)
        gone = time.monotonic() - opened
        assert 2.5 < gone < 4.5, gone
        await asyncio.sleep(0.5)
        assert not alive.closed.is_set()
        assert sum(1 for m in alive.server_requests if m.code == T.CMD_DEVICE_WATCHDOG) >= 2
        await alive.close()
    try:
        asyncio.run(run())
        suspect = d.wait_log(r"peer dead\.pgw\.example suspect: watchdog: no DWA within 1s")
        d.wait_log(r"watchdog: peer silent for 3s, disconnecting")
        assert "ok.pgw.example suspect" not in d.log()
        assert suspect
    finally:
        d.stop()


def test_overload_is_answered_too_busy(tmp_path):
    """Beyond max_in_flight: 3004 with the E bit, counted. (This daemon also keeps
    the default log_credit_control = false: the answer 2001 gets no line at info,
    the refusal 5030 does.)"""
    port = free_port()
    d = Ocsd(tmp_path, extra=diameter_config(port, max_in_flight=1))
    in_store(d.store_url, prepare)
    d.start()

    async def run():
        c = DiameterClient("127.0.0.1", port, origin_host="pgw1.pgw.example",
                           origin_realm="pgw.example")
        await c.connect()
        reqs = [c.ccr(f"busy{i}", INITIAL, 0, msisdn="41790000001",
                      msccs=[mscc(10, requested={"total": 1000})]) for i in range(4)]
        futs = []
        loop = asyncio.get_running_loop()
        for r in reqs:
            fut = loop.create_future()
            c._pending[r.hop_by_hop] = fut
            futs.append(fut)
        c.write(b"".join(encode(r) for r in reqs))  # one segment: all arrive together
        answers = await asyncio.wait_for(asyncio.gather(*futs), 10)
        codes = [value(a.avps, T.RESULT_CODE) for a in answers]
        assert codes == [2001, 3004, 3004, 3004], codes
        assert all(a.error for a in answers[1:])
        a = await c.request(c.ccr("stranger", INITIAL, 0, msisdn="41799999999"))
        assert value(a.avps, T.RESULT_CODE) == 5030
        await c.close()
    try:
        asyncio.run(run())
        status, _, body = http(d.url + "/metrics")
        assert metric(body.decode(), "ocs_diameter_errors_total", '{reason="overload"}') == 3
        assert "peer open: pgw1.pgw.example" in d.log()
        d.wait_log(r"CCR-I #0 - -> 5030")
        assert "-> 2001" not in d.log()
    finally:
        d.stop()


def test_shutdown_sends_dpr_to_every_peer_and_exits_0(tmp_path):
    port = free_port()
    d = Ocsd(tmp_path, extra=diameter_config(port)).start()

    async def run():
        clients = [DiameterClient("127.0.0.1", port, origin_host=f"p{i}.pgw.example",
                                  origin_realm="pgw.example") for i in range(2)]
        for c in clients:
            await c.connect()
        d.signal(signal.SIGTERM)
        for c in clients:
            await asyncio.wait_for(c.closed.wait(), 8)
            (dpr,) = [m for m in c.server_requests if m.code == T.CMD_DISCONNECT_PEER]
            assert value(dpr.avps, T.DISCONNECT_CAUSE) == 0  # REBOOTING
    asyncio.run(run())
    assert d.wait() == 0
    d.wait_log(r"Diameter stopped \(2 peers sent DPR\)")
    d.stop()
