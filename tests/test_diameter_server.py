"""The Diameter server in process, over real sockets, with the real charging core
and store: server-initiated RAR/ASR, two nodes sharing PostgreSQL and Redis,
money events and refunds, rating by the called party.

These need what the daemon process cannot show from outside: the API the
policy layer calls (`re_auth`, `abort_session`), and two nodes at once.
"""

from __future__ import annotations

import secrets

import pytest

from diameter import tables as T
from diameter.client import (EVENT, INITIAL, TERMINATION, UPDATE, DiameterClient,
                             ims_information, mscc, sms_information)
from diameter.codec import value
from diameter.gy import CONTEXT_SMS, CONTEXT_VOICE
from diameter.server import DiameterServer
from ocs.charging import ChargingCore, FlatPrices
from ocs.charging.tariffs import PlanTariffs
from ocs.cluster import build
from ocs.config import ChargingConfig, DiameterConfig, RedisConfig
from ocs.metrics import Metrics
from ocs.model import Kind
from ocs.pricing import LinearPrice
from ocs.store import Store, make_driver
from tests.test_balance import assert_ledger_matches

EUR = 1_000_000
MB = 1_000_000
CONFIG = DiameterConfig(listen="127.0.0.1:0", origin_host="ocs.test.example",
                        origin_realm="test.example", allowed_realms=["pgw.example"],
                        request_timeout=0.3, request_attempts=3)
CHARGING = ChargingConfig(default_quota={"octets": 2 * MB, "seconds": 60, "events": 1})


def retail_tariffs():
    """A real tariff (ocs.rating): voice by called prefix with 60/60 increments,
    SMS per event by recipient prefix, data per MB for rating group 10."""
    from ocs.rating import (TariffBook, TariffDefinition, Tier, UsageRate, compile,
                            parse_deck_csv)
    voice = parse_deck_csv("prefix,destination,price,increment,next_increment\n"
                           "4179,Switzerland mobile,0.50,60,60\n"
                           "4420,London,1.00,60,60\n", name="voice", service="voice")
    sms = parse_deck_csv("prefix,price\n41,0.10\n", name="sms", service="event:sms",
                         unit="event")
    data = UsageRate("rg:10", Kind.OCTETS, (Tier(None, 10_000),), unit=MB)  # 0.01 per MB
    book = TariffBook()
    book.put(compile(TariffDefinition(name="retail", currency="EUR", decks=(voice, sms),
                                      usage_rates=(data,))))
    return PlanTariffs(book)


class Node:
    def __init__(self, store, cluster, prices=None, config=CONFIG):
        self.store, self.cluster = store, cluster
        self.charging = ChargingCore(store, prices or retail_tariffs(), CHARGING)
        self.server = DiameterServer(config, charging=self.charging, cluster=cluster,
                                     metrics=Metrics(), session_ttl=600)

    async def start(self) -> "Node":
        await self.charging.reload()
        await self.server.listen("diameter", "127.0.0.1", 0)
        self.port = self.server.addresses["diameter"][1]
        return self

    async def close(self):
        await self.server.close(1.0)


@pytest.fixture
async def node(store):
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    n = await Node(store, cluster).start()
    yield n
    await n.close()
    await cluster.stop()


async def subscriber(store, msisdn: str, *, balance: int = 10 * EUR) -> int:
    """A prepaid subscriber on the plan rated by the "retail" tariff."""
    from ocs.errors import NotFound
    try:
        plan = await store.find_plan("retail")
    except NotFound:
        plan = await store.create_plan(name="retail", currency="EUR", tariff="retail")
    acct = await store.create_account(name=f"a{msisdn}", currency="EUR", billing="prepaid",
                                      opening_balance=balance)
    await store.create_subscriber(account_id=acct.id, msisdn=msisdn, plan_id=plan.id)
    return acct.id


async def connect(port: int, **kw) -> DiameterClient:
    c = DiameterClient("127.0.0.1", port, origin_host=kw.pop("origin_host", "pgw1.pgw.example"),
                       origin_realm="pgw.example", destination_realm="test.example", **kw)
    assert value((await c.connect()).avps, T.RESULT_CODE) == 2001
    return c


# ---------------------------------------------------------------------- listening
async def test_listening_on_every_interface_takes_ipv4_and_ipv6_peers(store):
    """listen = "[::]:PORT" is every interface of both families (asyncio alone binds
    "::" IPv6-only, and a dual-stack host's IPv4 peers would find the port closed)."""
    from ocs.components import split_listen
    from tests.services import free_port
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    node = Node(store, cluster)
    await node.charging.reload()
    port = free_port()
    await node.server.listen("diameter", *split_listen(f"[::]:{port}"))
    try:
        for host in ("127.0.0.1", "::1"):
            c = DiameterClient(host, port, origin_host="pgw1.pgw.example",
                               origin_realm="pgw.example", destination_realm="test.example")
            cea = await c.connect()
            assert value(cea.avps, T.RESULT_CODE) == 2001, host
            await c.close()
    finally:
        await node.close()
        await cluster.stop()


# ---------------------------------------------------------------------- RAR / ASR
async def test_re_auth_and_abort_session_reach_the_sessions_client(node, store):
    await subscriber(store, "41790000101")
    c = await connect(node.port)
    try:
        a = await c.request(c.ccr("s-rar", INITIAL, 0, msisdn="41790000101",
                                  msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        result = await node.server.re_auth("s-rar", rating_group=10)
        assert (result.answered, result.result_code, result.attempts) == (True, 2001, 1)
        assert result.peer == "pgw1.pgw.example"
        (rar,) = [m for m in c.server_requests if m.code == T.CMD_RE_AUTH]
        assert rar.app_id == 4 and rar.request and not rar.retransmit
        assert value(rar.avps, T.SESSION_ID) == "s-rar"
        assert value(rar.avps, T.DESTINATION_HOST) == "pgw1.pgw.example"
        assert value(rar.avps, T.DESTINATION_REALM) == "pgw.example"
        assert value(rar.avps, T.RE_AUTH_REQUEST_TYPE) == 0
        assert value(rar.avps, T.RATING_GROUP) == 10

        result = await node.server.abort_session("s-rar")
        assert (result.answered, result.result_code) == (True, 2001)
        (asr,) = [m for m in c.server_requests if m.code == T.CMD_ABORT_SESSION]
        assert value(asr.avps, T.AUTH_APPLICATION_ID) == 4

        # After CCR-T the session is gone from the directory: nothing to address.
        await c.request(c.ccr("s-rar", TERMINATION, 1, msisdn="41790000101",
                              msccs=[mscc(10, used={"total": 1})]))
        result = await node.server.re_auth("s-rar")
        assert not result.answered and "unknown to the session directory" in result.error
    finally:
        await c.close()


async def test_unanswered_re_auth_is_resent_with_the_t_flag(node, store):
    await subscriber(store, "41790000102")
    calls = []

    async def sometimes(msg):
        calls.append(msg)
        return None if len(calls) == 1 else T.DIAMETER_SUCCESS  # ignore the first one

    c = await connect(node.port, on_request=sometimes)
    try:
        await c.request(c.ccr("s-retry", INITIAL, 0, msisdn="41790000102",
                              msccs=[mscc(10, requested={})]))
        result = await node.server.re_auth("s-retry")
        assert (result.answered, result.result_code, result.attempts) == (True, 2001, 2)
        first, second = calls
        assert not first.retransmit and second.retransmit
        assert first.end_to_end == second.end_to_end
        assert first.hop_by_hop != second.hop_by_hop
    finally:
        await c.close()


async def test_re_auth_goes_to_the_clients_newest_connection_and_retries_another(node, store):
    """A PGW that restarted without DPR connects again while its old connection,
    never closed by a FIN, still looks open until the watchdog gives up on it.
    RAR goes to the newest connection; one left unanswered there is resent (T
    flag) on another connection of the same client."""
    await subscriber(store, "41790000104")
    never = []

    async def silent(msg):
        never.append(msg)
        return None

    older = await connect(node.port)
    stale = await connect(node.port, on_request=silent)
    try:
        await older.request(older.ccr("s-newest", INITIAL, 0, msisdn="41790000104",
                                      msccs=[mscc(10, requested={})]))
        result = await node.server.re_auth("s-newest")
        assert (result.answered, result.result_code, result.attempts) == (True, 2001, 2)
        (first,) = never
        (second,) = [m for m in older.server_requests if m.code == T.CMD_RE_AUTH]
        assert not first.retransmit and second.retransmit
        assert first.end_to_end == second.end_to_end

        newest = await connect(node.port)
        try:
            result = await node.server.abort_session("s-newest")
            assert (result.answered, result.attempts) == (True, 1)
            assert [m.code for m in newest.server_requests] == [T.CMD_ABORT_SESSION]
            assert len(never) == 1 and len(older.server_requests) == 1
        finally:
            await newest.close()
    finally:
        await stale.close()
        await older.close()


async def test_a_restarted_client_has_its_earlier_sessions_closed_and_released(node, store):
    """A PGW that connects again with another Origin-State-Id in its CER restarted
    and lost its sessions (RFC 6733 §8.16): those it started before are closed and
    their reservations released at once. A reconnect with the same Origin-State-Id
    (a network blip) closes nothing, and sessions started after the restart stay."""
    import asyncio
    account = await subscriber(store, "41790000105")

    async def reserved() -> int:
        return (await store.balance(account))["reserved"]

    first = await connect(node.port, origin_state_id=7)
    for sid in ("s-old-1", "s-old-2"):
        a = await first.request(first.ccr(sid, INITIAL, 0, msisdn="41790000105",
                                          msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
    held = await reserved()
    assert held > 0
    await first.close()

    blip = await connect(node.port, origin_state_id=7)
    await asyncio.sleep(0.3)
    assert (await store.get_session("s-old-1")).status == "active"
    assert await reserved() == held
    await blip.close()

    again = await connect(node.port, origin_state_id=8)
    try:
        a = await again.request(again.ccr("s-new", INITIAL, 0, msisdn="41790000105",
                                          msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        for _ in range(100):
            if (await store.get_session("s-old-2")).status == "closed":
                break
            await asyncio.sleep(0.05)
        for sid in ("s-old-1", "s-old-2"):
            closed = await store.get_session(sid)
            assert closed.status == "closed" and closed.attrs["closed_by"] == "peer restart"
        assert (await store.get_session("s-new")).status == "active"
        assert 0 < await reserved() < held  # only the new session's grant is held
        # A late update of an old session: its usage is charged, nothing granted,
        # and the client is told the session is gone (it then ends it).
        before = await store.balance(account)
        a = await again.request(again.ccr("s-old-1", UPDATE, 1, msisdn="41790000105",
                                          msccs=[mscc(10, requested={},
                                                      used={"total": 2 * MB})]))
        assert value(a.avps, T.RESULT_CODE) == T.DIAMETER_UNKNOWN_SESSION_ID
        assert value(a.avps, T.MULTIPLE_SERVICES_CREDIT_CONTROL) is None
        after = await store.balance(account)
        assert after["reserved"] == before["reserved"]
        assert before["available"] - after["available"] == 2 * 10_000  # 0.01 EUR per MB
        assert (await store.get_session("s-old-1")).status == "closed"
    finally:
        await again.close()


async def test_a_client_behind_a_relay_that_restarted_has_its_sessions_closed(node, store):
    """Behind a DRA ocsd never sees the PGW's CER, only the Origin-State-Id its CCRs
    carry (RFC 6733 §8.16). When that changes, the sessions the PGW had are closed
    and released; those of another PGW behind the same relay stay."""
    import asyncio
    from diameter.codec import avp
    account = await subscriber(store, "41790000107")
    relay = await connect(node.port, origin_host="dra1.pgw.example")

    def relayed(pgw: str, state: int, sid: str, kind: int, number: int, **kw):
        msg = relay.ccr(sid, kind, number, msisdn="41790000107", **kw)
        avps = [avp(T.ORIGIN_HOST, pgw) if a.code == T.ORIGIN_HOST and not a.vendor else a
                for a in msg.avps] + [avp(T.ORIGIN_STATE_ID, state)]
        return msg.with_avps(avps)

    try:
        for pgw, sid in (("pgw7.pgw.example", "p7-old"), ("pgw8.pgw.example", "p8")):
            a = await relay.request(relayed(pgw, 70, sid, INITIAL, 0,
                                            msccs=[mscc(10, requested={})]))
            assert value(a.avps, T.RESULT_CODE) == 2001
        held = (await store.balance(account))["reserved"]
        a = await relay.request(relayed("pgw7.pgw.example", 70, "p7-old", UPDATE, 1,
                                        msccs=[mscc(10, requested={}, used={"total": MB})]))
        assert value(a.avps, T.RESULT_CODE) == 2001  # the same state: nothing happens
        assert (await store.get_session("p7-old")).status == "active"
        # Only a request that opens a session speaks for a restart: an update with
        # another value (a client filling the AVP in oddly) closes nothing.
        a = await relay.request(relayed("pgw8.pgw.example", 99, "p8", UPDATE, 1,
                                        msccs=[mscc(10, requested={}, used={"total": MB})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        await asyncio.sleep(0.3)
        assert (await store.get_session("p8")).status == "active"
        # pgw7 restarts: its first CCR-I carries a new Origin-State-Id.
        a = await relay.request(relayed("pgw7.pgw.example", 71, "p7-new", INITIAL, 0,
                                        msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        for _ in range(100):
            if (await store.get_session("p7-old")).status == "closed":
                break
            await asyncio.sleep(0.05)
        closed = await store.get_session("p7-old")
        assert closed.status == "closed" and closed.attrs["closed_by"] == "peer restart"
        assert (await store.get_session("p7-new")).status == "active"
        assert (await store.get_session("p8")).status == "active"
        assert (await store.balance(account))["reserved"] == held  # one grant out, one in
        # A late CCR of the earlier run (a relay's retransmission) is no restart, and
        # the new run's next request is not one either.
        a = await relay.request(relayed("pgw7.pgw.example", 70, "p7-old", UPDATE, 2,
                                        msccs=[mscc(10, used={"total": MB})]))
        assert value(a.avps, T.RESULT_CODE) == T.DIAMETER_UNKNOWN_SESSION_ID
        a = await relay.request(relayed("pgw7.pgw.example", 71, "p7-new", UPDATE, 1,
                                        msccs=[mscc(10, requested={}, used={"total": MB})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        await asyncio.sleep(0.3)
        assert (await store.get_session("p7-new")).status == "active"
    finally:
        await relay.close()


async def test_a_client_restart_is_seen_after_ocsd_itself_restarted(store):
    """The last Origin-State-Id of a client is kept in the store, not in the memory
    of the node that saw it: a PGW that restarts while ocsd restarts too (a site
    power cut) has its old sessions closed when it reconnects to the new ocsd."""
    import asyncio
    account = await subscriber(store, "41790000106")
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    try:
        before = await Node(store, cluster).start()
        c = await connect(before.port, origin_state_id=41)
        a = await c.request(c.ccr("s-before", INITIAL, 0, msisdn="41790000106",
                                  msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert (await store.balance(account))["reserved"] > 0
        await c.close()
        await before.close()

        after = await Node(store, cluster).start()  # nothing of the first in memory
        c = await connect(after.port, origin_state_id=42)
        try:
            for _ in range(100):
                if (await store.get_session("s-before")).status == "closed":
                    break
                await asyncio.sleep(0.05)
            closed = await store.get_session("s-before")
            assert closed.status == "closed" and closed.attrs["closed_by"] == "peer restart"
            assert (await store.balance(account))["reserved"] == 0
        finally:
            await c.close()
            await after.close()
    finally:
        await cluster.stop()


async def test_the_store_swaps_a_peers_origin_state_id(store):
    assert await store.swap_peer_state("pgw1.example", 7) is None
    assert await store.swap_peer_state("pgw1.example", 7) == 7
    assert await store.swap_peer_state("pgw1.example", 8) == 7
    assert await store.swap_peer_state("pgw2.example", 0xFFFFFFFF) is None
    assert await store.swap_peer_state("pgw1.example", 8) == 8
    # A late message of the earlier run: told what is recorded, which stays.
    assert await store.swap_peer_state("pgw1.example", 7) == 8
    assert await store.swap_peer_state("pgw1.example", 9) == 8
    assert await store.swap_peer_state("pgw2.example", 1) == 0xFFFFFFFF


async def test_re_auth_reports_the_clients_answer_and_a_missing_peer(node, store):
    await subscriber(store, "41790000103")

    async def forgot(msg):
        return T.DIAMETER_UNKNOWN_SESSION_ID

    c = await connect(node.port, on_request=forgot)
    await c.request(c.ccr("s-gone", INITIAL, 0, msisdn="41790000103",
                          msccs=[mscc(10, requested={})]))
    result = await node.server.re_auth("s-gone")
    assert (result.answered, result.result_code) == (True, 5002)
    await c.close()
    result = await node.server.abort_session("s-gone")
    assert not result.answered and result.attempts == 0
    assert result.error == "peer pgw1.pgw.example is not connected to this node"


# ---------------------------------------------------------------------- money events, voice
async def test_sms_direct_debit_and_refund_move_money(node, store):
    account = await subscriber(store, "41790000104", balance=EUR // 4)  # 0.25: two SMS
    c = await connect(node.port)
    try:
        codes = []
        for i in range(3):
            a = await c.request(c.ccr(f"sms-{i}", EVENT, 0, context=CONTEXT_SMS,
                                      msisdn="41790000104", requested_action=0,
                                      requested={"units": 1},
                                      extra=[sms_information("41791112233")]))
            codes.append(value(a.avps, T.RESULT_CODE))
        assert codes == [2001, 2001, 4012]
        assert (await store.balance(account))["balance"] == EUR // 20
        a = await c.request(c.ccr("refund-1", EVENT, 0, context=CONTEXT_SMS,
                                  msisdn="41790000104", requested_action=1,
                                  requested={"units": 1},
                                  extra=[sms_information("41791112233")]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert (await store.balance(account))["balance"] == EUR // 20 + EUR // 10
        # The same refund again (same session and number): nothing more.
        a = await c.request(c.ccr("refund-1", EVENT, 0, context=CONTEXT_SMS,
                                  msisdn="41790000104", requested_action=1,
                                  requested={"units": 1},
                                  extra=[sms_information("41791112233")]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert (await store.balance(account))["balance"] == EUR // 20 + EUR // 10
        await assert_ledger_matches(store, account)
    finally:
        await c.close()


async def test_voice_is_rated_by_the_called_party(node, store):
    """The called party of IMS-Information is rated by the tariff's rate deck, and the
    CCR-T, which does not repeat it, is rated for the same destination."""
    account = await subscriber(store, "41790000105", balance=2 * EUR)
    c = await connect(node.port, origin_host="as.pgw.example")
    try:
        grants = {}
        for sid, called, talked in (("call-ch", "tel:+41791234567", 30),
                                    ("call-uk", "sip:+442071234567@ims.example;user=phone", 0)):
            a = await c.request(c.ccr(sid, INITIAL, 0, context=CONTEXT_VOICE,
                                      msisdn="41790000105",
                                      msccs=[mscc(100, requested={"time": 600})],
                                      extra=[ims_information(called)]))
            m = value(a.avps, T.MULTIPLE_SERVICES_CREDIT_CONTROL)
            grants[sid] = value(value(m, T.GRANTED_SERVICE_UNIT), T.CC_TIME)
            a = await c.request(c.ccr(sid, TERMINATION, 1, context=CONTEXT_VOICE,
                                      msisdn="41790000105",
                                      msccs=[mscc(100, used={"time": talked})]))
            assert value(a.avps, T.RESULT_CODE) == 2001
        # 2.00 EUR buys 240 s to Switzerland at 0.50/min; 30 s of it cost one 60 s
        # increment (0.50); the 1.50 left buy one minute to the UK at 1.00/min.
        assert grants == {"call-ch": 240, "call-uk": 60}
        assert (await store.balance(account))["balance"] == 3 * EUR // 2
        (cdr,) = await store.list_cdrs(session="call-ch")
        assert (cdr.units, cdr.cost) == (30, EUR // 2)
        a = await c.request(c.ccr("call-nowhere", INITIAL, 0, context=CONTEXT_VOICE,
                                  msisdn="41790000105", msccs=[mscc(100, requested={"time": 60})],
                                  extra=[ims_information("tel:+999123")]))
        assert value(a.avps, T.RESULT_CODE) == 5031  # DIAMETER_RATING_FAILED: no route
        assert value(a.avps, T.ERROR_MESSAGE) == "voice: rating failed"
        await assert_ledger_matches(store, account)
    finally:
        await c.close()


async def test_price_enquiry_quotes_the_tariff_and_charges_nothing(node, store):
    """PRICE_ENQUIRY (Requested-Action 3): Cost-Information carries the tariff's
    price of the requested units as Unit-Value and ISO 4217 Currency-Code (978,
    EUR); no balance moves, and what cannot be priced gets the matching result."""
    account = await subscriber(store, "41790000107", balance=EUR)

    def quoted(a) -> tuple:
        info = value(a.avps, T.COST_INFORMATION)
        unit = value(info, T.UNIT_VALUE)
        return value(unit, T.VALUE_DIGITS), value(unit, T.EXPONENT), value(info, T.CURRENCY_CODE)

    c = await connect(node.port, origin_host="as.pgw.example")
    try:
        # Three SMS at 0.10: 0.30, i.e. 3 x 10^-1.
        a = await c.request(c.ccr("price-sms", EVENT, 0, context=CONTEXT_SMS,
                                  msisdn="41790000107", requested_action=3,
                                  requested={"units": 3},
                                  extra=[sms_information("41791112233")]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert quoted(a) == (3, -1, 978)
        # 90 s to a Swiss mobile in 60/60 increments at 0.50 a minute: 1.00.
        a = await c.request(c.ccr("price-call", EVENT, 0, context=CONTEXT_VOICE,
                                  msisdn="41790000107", requested_action=3,
                                  requested={"time": 90},
                                  extra=[ims_information("tel:+41791234567")]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert quoted(a) == (1, 0, 978)
        # A destination the deck has no rate for, and a subscriber nobody knows.
        a = await c.request(c.ccr("price-nowhere", EVENT, 0, context=CONTEXT_VOICE,
                                  msisdn="41790000107", requested_action=3,
                                  requested={"time": 60}, extra=[ims_information("tel:+999123")]))
        assert value(a.avps, T.RESULT_CODE) == 5031
        assert value(a.avps, T.COST_INFORMATION) is None
        a = await c.request(c.ccr("price-who", EVENT, 0, context=CONTEXT_SMS,
                                  msisdn="41799999999", requested_action=3,
                                  requested={"units": 1},
                                  extra=[sms_information("41791112233")]))
        assert value(a.avps, T.RESULT_CODE) == 5030
        assert (await store.balance(account))["balance"] == EUR
        assert len(await store.ledger(account)) == 1  # the opening credit alone
    finally:
        await c.close()


# ---------------------------------------------------------------------- two nodes
class TwoNodes:
    """Nodes "node-a" and "node-b" sharing PostgreSQL and Redis, and the clients a
    test connects (added to `clients`); everything is closed on leaving."""

    def __init__(self, pg_dsn, pg_schema, redis_url):
        self.where = (pg_dsn, pg_schema, redis_url)
        self.stores, self.clusters, self.nodes, self.clients = [], [], [], []

    async def __aenter__(self) -> "TwoNodes":
        pg_dsn, pg_schema, redis_url = self.where
        prefix = f"ocs-t-{secrets.token_hex(4)}:"
        try:
            for name in ("node-a", "node-b"):
                st = Store(make_driver(pg_dsn, schema=pg_schema))
                await st.open(migrate_schema=True)
                self.stores.append(st)
                cl = build(RedisConfig(url=redis_url, key_prefix=prefix), node=name)
                await cl.start()
                self.clusters.append(cl)
                self.nodes.append(await Node(st, cl).start())
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        for c in self.clients:
            await c.close()
        for n in self.nodes:
            await n.close()
        for cl in self.clusters:
            await cl.stop()
        for st in self.stores:
            await st.close()


async def test_two_nodes_share_sessions_duplicates_and_re_auth(pg_dsn, pg_schema, redis_url):
    """A PGW connected to two ocsd nodes (shared PostgreSQL and Redis): the session
    starts on one node and continues on the other; a T-flagged resend of an update
    answered by one node is answered from the cache by the other; a RAR issued on
    either node reaches the client."""
    async with TwoNodes(pg_dsn, pg_schema, redis_url) as two:
        stores, nodes, clients = two.stores, two.nodes, two.clients
        account = await subscriber(stores[0], "41790000106", balance=EUR)  # 100 MB at 0.01/MB
        for n in nodes:
            clients.append(await connect(n.port))
        ca, cb = clients
        sid, who = "pgw1.pgw.example;multi;1", dict(msisdn="41790000106")
        a = await ca.request(ca.ccr(sid, INITIAL, 0, **who, msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        update = cb.ccr(sid, UPDATE, 1, **who, msccs=[mscc(10, requested={},
                                                           used={"total": 2 * MB})])
        a = await cb.request(update)
        assert value(a.avps, T.RESULT_CODE) == 2001
        after = (await stores[0].balance(account))["balance"]
        assert after == EUR - 20_000
        # The PGW fails over and resends the update to node A with the T flag.
        hbh, _ = ca.ids()
        from diameter.codec import Message
        resent = Message(update.code, update.flags | 0x10, update.app_id, hbh,
                         update.end_to_end, update.avps)
        again = await ca.request(resent)
        assert value(again.avps, T.RESULT_CODE) == 2001
        assert (await stores[0].balance(account))["balance"] == after
        # RAR from node A for the session node B served last: via the directory.
        cb_rar = len([m for m in cb.server_requests if m.code == T.CMD_RE_AUTH])
        result = await nodes[0].server.re_auth(sid)
        assert (result.answered, result.result_code) == (True, 2001)
        assert len([m for m in ca.server_requests if m.code == T.CMD_RE_AUTH]) \
            + len([m for m in cb.server_requests if m.code == T.CMD_RE_AUTH]) == cb_rar + 1
        a = await ca.request(ca.ccr(sid, TERMINATION, 2, **who,
                                    msccs=[mscc(10, used={"total": 1 * MB})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        assert (await stores[1].balance(account))["balance"] == EUR - 30_000
        await assert_ledger_matches(stores[1], account)


async def test_a_client_connected_to_one_node_gets_rar_and_asr_decided_on_another(
        pg_dsn, pg_schema, redis_url):
    """A PGW with one primary peer is connected to node B only. A RAR or ASR that
    node A must send (its policy worker took the action) goes through node B at
    once: A asks B, which sends it over its connection and reports the answer.
    When B is down, A says so after one bounded wait, for the action to be
    retried; when the client moves to A, A reaches it directly."""
    import time
    async with TwoNodes(pg_dsn, pg_schema, redis_url) as two:
        stores, clusters, nodes, clients = two.stores, two.clusters, two.nodes, two.clients
        node_a, node_b = nodes
        await subscriber(stores[0], "41790000107", balance=EUR)
        cb = await connect(node_b.port)
        clients.append(cb)
        sid, who = "pgw1.pgw.example;primary;1", dict(msisdn="41790000107")
        a = await cb.request(cb.ccr(sid, INITIAL, 0, **who, msccs=[mscc(10, requested={})]))
        assert value(a.avps, T.RESULT_CODE) == 2001

        started = time.monotonic()
        result = await node_a.server.re_auth(sid, rating_group=10)
        assert (result.answered, result.result_code, result.node) == (True, 2001, "node-b")
        assert time.monotonic() - started < CONFIG.request_timeout  # no wait for a connection
        rar = [m for m in cb.server_requests if m.code == T.CMD_RE_AUTH]
        assert len(rar) == 1 and value(rar[0].avps, T.SESSION_ID) == sid
        assert value(rar[0].avps, T.DESTINATION_HOST) == "pgw1.pgw.example"
        result = await node_a.server.abort_session(sid)
        assert (result.answered, result.result_code, result.node) == (True, 2001, "node-b")
        assert [m.code for m in cb.server_requests][-1] == T.CMD_ABORT_SESSION

        # The client leaves node B, which waits for it to come back, then says so.
        await cb.close()
        clients.remove(cb)
        result = await node_a.server.re_auth(sid)
        assert not result.answered and result.node == "node-b"
        assert result.error == ("peer pgw1.pgw.example is not connected to node node-b "
                                "(asked by node node-a)")

        # Node B goes away too: A reports it at once (B left the list of nodes).
        await node_b.close()
        await clusters[1].stop()
        started = time.monotonic()
        result = await node_a.server.re_auth(sid)
        waited = time.monotonic() - started
        assert not result.answered and result.node == "node-b"
        assert result.error.startswith("peer pgw1.pgw.example is connected to node node-b, "
                                       "not to this one, and node node-b was not reached: ")
        assert result.error.endswith("node node-b is not running (it is not in the list "
                                     "of nodes)")
        assert waited < CONFIG.request_timeout

        # The client fails over to node A: its next request moves the session there.
        ca = await connect(node_a.port)
        clients.append(ca)
        a = await ca.request(ca.ccr(sid, UPDATE, 1, **who,
                                    msccs=[mscc(10, requested={}, used={"total": MB})]))
        assert value(a.avps, T.RESULT_CODE) == 2001
        result = await node_a.server.re_auth(sid)
        assert (result.answered, result.result_code, result.node) == (True, 2001, None)
        assert [m.code for m in ca.server_requests] == [T.CMD_RE_AUTH]


# ---------------------------------------------------------------------- admission, quota settings
async def test_a_diameter_nas_record_admits_its_peer(store):
    """A NAS of kind "diameter" (`ocsctl nas add`) lets its address in; with
    control.origin_host it must also be that Origin-Host."""
    from ocs.components import Registry
    await store.create_nas(name="pgw-lab", address="127.0.0.0/8", kind="diameter",
                           control={"origin_host": "pgw9.lab.example"})
    registry = await Registry.load(store)
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    closed = DiameterConfig(listen="127.0.0.1:0", origin_host="ocs.test.example",
                            origin_realm="test.example")  # no allowed_* at all
    n = Node(store, cluster, config=closed)
    n.server.registry = lambda: registry
    await n.start()
    try:
        ok = DiameterClient("127.0.0.1", n.port, origin_host="pgw9.lab.example",
                            origin_realm="lab.example")
        assert value((await ok.connect()).avps, T.RESULT_CODE) == 2001
        await ok.close()
        other = DiameterClient("127.0.0.1", n.port, origin_host="pgw8.lab.example",
                               origin_realm="lab.example")
        cea = await other.connect()
        assert value(cea.avps, T.RESULT_CODE) == 3010
        assert value(cea.avps, T.ERROR_MESSAGE) == (
            "pgw8.lab.example is not the Origin-Host (pgw9.lab.example) of peer pgw-lab at "
            "127.0.0.1")
    finally:
        await n.close()
        await cluster.stop()


async def test_rating_group_settings_and_quota_holding_time(store):
    """[diameter] rating_groups: RG 30 is charged in seconds with its own default
    quota; quota_holding_time goes with every grant."""
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    config = CONFIG.model_copy(update={
        "quota_holding_time": 120,
        "rating_groups": {"30": DiameterConfig.RatingGroup(kind="seconds", quota=900)}})
    prices = FlatPrices(by_kind={Kind.OCTETS: LinearPrice(price=10_000, per=MB),
                                 Kind.SECONDS: LinearPrice(price=EUR // 100)})
    n = await Node(store, cluster, prices=prices, config=config).start()
    await subscriber(store, "41790000107")
    c = await connect(n.port)
    try:
        a = await c.request(c.ccr("qht", INITIAL, 0, msisdn="41790000107",
                                  msccs=[mscc(30, requested={}), mscc(10, requested={})]))
        by_rg = {value(m, T.RATING_GROUP): m for m in a.all(T.MULTIPLE_SERVICES_CREDIT_CONTROL)}
        assert value(value(by_rg[30], T.GRANTED_SERVICE_UNIT), T.CC_TIME) == 900
        assert value(by_rg[30], T.TIME_QUOTA_THRESHOLD) == 180  # 20 % of the grant
        assert value(value(by_rg[10], T.GRANTED_SERVICE_UNIT), T.CC_TOTAL_OCTETS) == 2 * MB
        assert value(by_rg[30], T.QUOTA_HOLDING_TIME) == 120
        assert value(by_rg[10], T.QUOTA_HOLDING_TIME) == 120
    finally:
        await c.close()
        await n.close()
        await cluster.stop()


async def test_component_publishes_its_api_and_disconnects_peers_on_stop(store, tmp_path):
    """The daemon component: listens, is `ctx.diameter` for the policy layer while it
    runs, sends DPR to its peers when stopped, and answers RAR calls after that
    with an error instead of raising."""
    from types import SimpleNamespace

    from diameter.component import DiameterComponent
    from ocs.components import Registry
    from ocs.config import from_dict
    from tests.services import free_port
    port = free_port()
    config = from_dict({"diameter": {"listen": f"127.0.0.1:{port}",
                                     "origin_host": "ocs.test.example",
                                     "allowed_realms": ["pgw.example"]}})
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    charging = ChargingCore(store, FlatPrices(), CHARGING)
    ctx = SimpleNamespace(config=config, charging=charging, cluster=cluster, metrics=Metrics(),
                          registry=Registry())
    component = DiameterComponent(ctx)
    await component.start()
    try:
        assert ctx.diameter is component
        c = await connect(port)
        await component.stop()
        assert ctx.diameter is None
        assert [m.code for m in c.server_requests] == [T.CMD_DISCONNECT_PEER]
        assert c.closed.is_set()
        result = await component.re_auth("any")
        assert not result.answered and result.error == "Diameter is not running"
        await c.close(dpr=False)
    finally:
        await component.stop()
        await cluster.stop()
