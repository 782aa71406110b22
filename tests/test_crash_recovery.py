"""Exactly-once charging across crashes of the daemon itself.

ocsd is killed with SIGKILL, three times, while NAS and PGWs are charging
through it, and started again on the same store each time. The clients do what
real ones do: a NAS sends each unanswered Accounting-Request again, unchanged,
until it is answered (RFC 2866 §2, RFC 5080 §2.2.1); a PGW connects again and
sends each unanswered CCR again with the T flag and its End-to-End-Identifier
(RFC 6733 §5.5.4). Some requests die in the daemon before they are stored,
some after they are stored but before the answer left. With two nodes on one
PostgreSQL and Redis, the clients fail over to the other node instead, and
it carries on their sessions.

At the end every session's usage is charged exactly once: each balance is its
opening one less what its session reported, to the octet and the micro-unit,
nothing stays reserved, and each session has one CDR.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time

import asyncpg
import pytest

from diameter import tables as T
from diameter.client import INITIAL, TERMINATION, UPDATE, DiameterClient, mscc
from diameter.codec import value
from ocs.model import Kind
from ocs.rating import TariffDefinition, Tier, UsageRate
from ocs.rating.storage import save_tariff
from radius import codec
from tests.radius_harness import SECRET, A, Code, RadiusOcsd, acct_packet
from tests.services import (ClusterRedis, ReplicatedPostgres, SentinelRedis, ThrowawayRedis,
                            free_port)
from tests.test_diameter_daemon import diameter_config

RADIUS_SESSIONS = 24      # half on an octets allowance, half paying money
DIAMETER_SESSIONS = 12    # over three PGW connections
INTERIMS = 8
ALLOWANCE = 10**9         # octets
OPENING = 100_000_000     # 100.00 in micro-units
PRICE = 7                 # micro-units per 1,000 octets
IN, OUT = 97_000, 23_000  # octets per interim, each way
USED = 151_000            # octets per CCR-U
DEADLINE = 90.0           # seconds for the whole load, crashes and restarts included
NAS_TRIES = 40            # a NAS gives up on a request after 40 sends 0.3 s apart


RADIUS_TOTAL = INTERIMS * (IN + OUT) + 5_000  # the Stop adds 5,000 octets


DIAMETER_TOTAL = INTERIMS * USED + 17_000  # the CCR-T reports 17,000 more


async def seed(store) -> dict[str, list[int]]:
    await store.create_nas(name="crash-nas", address="127.0.0.1", secret=SECRET)
    tariff = TariffDefinition(name="per-kb", currency="EUR", usage_rates=(
        UsageRate("data", Kind.OCTETS, (Tier(None, PRICE),), unit=1000),))
    await save_tariff(store, tariff)
    bytes_plan = await store.create_plan(name="bytes", currency="EUR", allowances=[
        {"kind": "octets", "units": ALLOWANCE, "validity_days": 30}])
    money_plan = await store.create_plan(name="money", currency="EUR", tariff="per-kb")
    ids: dict[str, list[int]] = {"bytes": [], "money": [], "gy": []}
    for n in range(RADIUS_SESSIONS):
        kind = "bytes" if n % 2 == 0 else "money"
        a = await store.create_account(name=f"r{n}", currency="EUR", billing="prepaid",
                                       opening_balance=OPENING)
        await store.create_subscriber(account_id=a.id, username=f"r{n}", password="pw",
                                      plan_id=(bytes_plan if kind == "bytes" else money_plan).id)
        ids[kind].append(a.id)
    for n in range(DIAMETER_SESSIONS):
        a = await store.create_account(name=f"g{n}", currency="EUR", billing="prepaid")
        await store.create_subscriber(account_id=a.id, msisdn=f"4179100{n:04d}",
                                      plan_id=bytes_plan.id)
        ids["gy"].append(a.id)
    return ids


CRASH_BEFORE = (3, 5, 7)  # the reports each crash comes before (gates)
TRIGGER = 12              # answers after a gate opens until its crash


class Crasher:
    """Kills the serving daemon with SIGKILL three times, and starts it again on
    the same configuration and store. With two nodes, the clients fail over to
    the other one meanwhile, as a NAS with a secondary server and a PGW with an
    alternate peer do.

    Each session waits at a gate before reports 3, 5 and 7. A gate opens once
    every session reached it and the last crash's node is back; TRIGGER answers
    later, with requests in flight, the next crash comes. So every crash comes
    mid-session, and no request lives through two of them."""

    def __init__(self, nodes: list[RadiusOcsd], sessions: int,
                 redis: list[ThrowawayRedis] | None = None, database: str | None = None,
                 replicated: ReplicatedPostgres | SentinelRedis | None = None):
        self.nodes = nodes
        self.redis = redis  # throwaway Redis servers, the last one running: what crashes
        self.database = database  # or: PostgreSQL (DSN) cuts the daemon's connections
        self.replicated = replicated  # or: the PostgreSQL or Redis primary fails over
        self.live = 0  # the node the clients talk to
        self.sessions = sessions
        self.arrived = [0] * len(CRASH_BEFORE)
        self.gates = [asyncio.Event() for _ in CRASH_BEFORE]
        self.opened = -1  # the last gate opened
        self.since_gate = 0  # answers since it opened
        self.crashes = 0
        self.lost = 0
        self.restarted = asyncio.Event()  # the clients have a node to talk to
        self.restarted.set()
        self.restarting = False
        self._task: asyncio.Task | None = None

    @property
    def node(self) -> RadiusOcsd:
        return self.nodes[self.live]

    async def gate(self, report: int) -> None:
        if report not in CRASH_BEFORE:
            return
        g = CRASH_BEFORE.index(report)
        self.arrived[g] += 1
        self._open()
        await self.gates[g].wait()

    def _open(self) -> None:
        g = self.opened + 1
        if g < len(self.gates) and self.arrived[g] == self.sessions and not self.restarting:
            self.opened, self.since_gate = g, 0
            self.gates[g].set()

    def answer(self) -> bool:
        """Count an answer; False when it is lost: the one that sets off a crash,
        and those arriving while no node serves (sent before the daemon died).
        Their requests were stored, and are sent again."""
        if not self.restarted.is_set():
            self.lost += 1
            return False
        self.since_gate += 1
        if self.crashes != self.opened or self.since_gate < TRIGGER:
            return True  # no crash due: its gate is not open, or it came already
        self.restarting = True
        self.crashes += 1
        self.lost += 1
        if self.redis is not None:
            self.redis[-1].proc.kill()  # its data is gone: it keeps nothing on disk
            self._task = asyncio.get_running_loop().create_task(self._restart_redis())
            return False
        if self.database is not None:
            self._task = asyncio.get_running_loop().create_task(self._cut_database())
            return False
        if self.replicated is not None:
            self._task = asyncio.get_running_loop().create_task(self._fail_over())
            return False
        victim = self.node
        victim.proc.kill()  # at once, with requests in flight
        if len(self.nodes) > 1:
            self.live = (self.live + 1) % len(self.nodes)
        else:
            self.restarted.clear()
        self._task = asyncio.get_running_loop().create_task(self._restart(victim))
        return False

    async def _cut_database(self) -> None:
        """Every connection of the daemon terminated by the server at once, some in
        the middle of a transaction or its COMMIT (as a failover or a restart of
        PostgreSQL does): whether those committed, the daemon cannot know."""
        conn = await asyncpg.connect(self.database)
        try:
            for _ in range(10):  # again and again for half a second: some are busy
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = 'ocsd' "
                                   "AND pid <> pg_backend_pid()")
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        self.restarting = False
        self._open()

    async def _fail_over(self) -> None:
        await asyncio.to_thread(self.replicated.fail_over)
        self.restarting = False
        self._open()

    async def _restart_redis(self) -> None:
        await asyncio.sleep(1.0)  # an outage, not a blink
        self.redis[-1].proc.wait(10)
        self.redis.append(await asyncio.to_thread(ThrowawayRedis, self.redis[-1].port))
        self.restarting = False
        self._open()

    async def _restart(self, d: RadiusOcsd) -> None:
        def again():
            d.proc.wait(10)
            d._log.close()
            d.start()  # waits for READY=1
        await asyncio.to_thread(again)
        self.restarting = False
        self.restarted.set()
        self._open()

    async def settle(self) -> None:
        if self._task is not None:
            await self._task


async def nas_session(crasher: Crasher, n: int, stamp: int) -> int:
    """One NAS session, Start, interims and Stop, each sent until answered;
    returns the octets it reported in all."""
    loop = asyncio.get_running_loop()
    sid = f"crash-{n}-{secrets.token_hex(3)}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    reports = [("Start", 0, 0, 0)]
    reports += [("Interim-Update", i * IN, i * OUT, i * 60) for i in range(1, INTERIMS + 1)]
    reports.append(("Stop", INTERIMS * IN + 5_000, INTERIMS * OUT, INTERIMS * 60 + 30))
    status = {"Start": 1, "Stop": 2, "Interim-Update": 3}
    try:
        for ident, (kind, octets_in, octets_out, seconds) in enumerate(reports):
            await crasher.gate(ident)
            raw = acct_packet([
                (A.USER_NAME, f"r{n}".encode()), (A.ACCT_SESSION_ID, sid.encode()),
                (A.ACCT_STATUS_TYPE, codec.u32(status[kind])),
                (A.NAS_IP_ADDRESS, socket.inet_aton("127.0.0.1")),
                (A.NAS_PORT, codec.u32(n)),
                (A.EVENT_TIMESTAMP, codec.u32(stamp + seconds)),
                (A.ACCT_INPUT_OCTETS, codec.u32(octets_in)),
                (A.ACCT_OUTPUT_OCTETS, codec.u32(octets_out)),
                (A.ACCT_SESSION_TIME, codec.u32(seconds))], ident=ident)
            tries = 0
            while True:  # the same packet again and again, as a NAS retransmits
                if crasher.restarted.is_set():  # while it is down, the NAS would fail over
                    tries += 1
                    assert tries <= NAS_TRIES, f"the NAS gave up on {kind} of {sid}"
                await loop.sock_sendto(sock, raw, ("127.0.0.1", crasher.node.acct_port))
                try:
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.3)
                except asyncio.TimeoutError:
                    continue
                if reply[0] == Code.ACCOUNTING_RESPONSE and reply[1] == ident \
                        and crasher.answer():
                    break
        return reports[-1][1] + reports[-1][2]
    finally:
        sock.close()


class Pgw:
    """One PGW connection that connects again after the daemon went away."""

    def __init__(self, crasher: Crasher, name: str):
        self.crasher, self.name = crasher, name
        self.client: DiameterClient | None = None
        self._lock = asyncio.Lock()

    async def connection(self, broken: DiameterClient | None = None) -> DiameterClient:
        async with self._lock:
            if self.client is not None and self.client is not broken \
                    and not self.client.closed.is_set():
                return self.client
            if self.client is not None:
                await self.client.close(dpr=False)
            while True:
                c = DiameterClient("127.0.0.1", self.crasher.node.diameter_port,
                                   origin_host=f"{self.name}.pgw.example",
                                   origin_realm="pgw.example",
                                   destination_realm="test.example")
                try:
                    cea = await c.connect(timeout=2.0)
                except (OSError, asyncio.TimeoutError):
                    await c.close(dpr=False)
                    await asyncio.sleep(0.2)
                    continue
                assert value(cea.avps, T.RESULT_CODE) == 2001
                self.client = c
                return c


async def pgw_session(pgw: Pgw, crasher: Crasher, n: int) -> tuple[int, list[int]]:
    """CCR-I, CCR-U x INTERIMS, CCR-T, each sent until answered; returns the octets
    reported and the Result-Codes of the answers."""
    sid = f"{pgw.name}.pgw.example;crash;{n};{secrets.token_hex(3)}"
    msisdn = f"4179100{n:04d}"
    steps = [(INITIAL, None)] + [(UPDATE, USED)] * INTERIMS + [(TERMINATION, 17_000)]
    codes: list[int] = []
    for number, (kind, used) in enumerate(steps):
        await crasher.gate(number)
        client = await pgw.connection()
        e2e = client.ids()[1]
        group = mscc(10, requested=None if kind == TERMINATION else {"total": 1},
                     used=None if used is None else {"total": used})
        resend = False
        while True:
            hbh = client.ids()[0]
            msg = client.ccr(sid, kind, number, msisdn=msisdn, msccs=[group],
                             retransmit=resend, ids=(hbh, e2e))
            try:
                answer = await client.request(msg, timeout=2.0)
                if 3000 <= value(answer.avps, T.RESULT_CODE) < 4000:
                    await asyncio.sleep(0.3)  # a transient failure: the PGW tries again
                    resend = True
                    continue
                if crasher.answer():
                    break
            except (ConnectionError, asyncio.TimeoutError):
                pass
            resend = True
            await crasher.restarted.wait()
            client = await pgw.connection(broken=client)
        codes.append(value(answer.avps, T.RESULT_CODE))
        for group in answer.all(T.MULTIPLE_SERVICES_CREDIT_CONTROL):
            codes.append(value(group, T.RESULT_CODE))
    return DIAMETER_TOTAL, codes


async def load(nodes: list[RadiusOcsd], redis=None, database=None, replicated=None
               ) -> tuple[Crasher, list[int], list[tuple[int, list[int]]]]:
    crasher = Crasher(nodes, RADIUS_SESSIONS + DIAMETER_SESSIONS, redis, database, replicated)
    stamp = int(time.time()) - 3600
    pgws = [Pgw(crasher, f"pgw{k}") for k in range(3)]
    radius = asyncio.gather(*[nas_session(crasher, n, stamp) for n in range(RADIUS_SESSIONS)])
    gy = asyncio.gather(*[pgw_session(pgws[n % 3], crasher, n)
                          for n in range(DIAMETER_SESSIONS)])
    reported, answered = await asyncio.wait_for(asyncio.gather(radius, gy), DEADLINE)
    await crasher.settle()
    for pgw in pgws:
        if pgw.client is not None:
            await pgw.client.close()
    return crasher, reported, answered


def charge_through_crashes(tmp_path, request, backend: str, nodes: int = 1,
                           redis: list[ThrowawayRedis] | None = None,
                           cut_database: bool = False,
                           replicated: ReplicatedPostgres | SentinelRedis | None = None
                           ) -> Crasher:
    """The load on `nodes` daemons sharing one store, with three crashes (of
    `redis` when given, of the daemon's database connections with
    `cut_database`, failovers of the `replicated` PostgreSQL or Redis); then
    what every session was charged, read back through the API."""
    kw, options, extra = {}, {}, ""
    if isinstance(replicated, ReplicatedPostgres):
        kw = dict(store_url=replicated.dsn)
    elif backend.startswith("postgres"):
        from tests.conftest import pg_store_target
        url, options = pg_store_target(request, request.getfixturevalue("pg_dsn"))
        kw = dict(store_url=url, extra_store=f'schema = "{options["schema"]}"')
    if isinstance(replicated, SentinelRedis):
        extra = (f'\n[redis]\nsentinels = ["{replicated.sentinel}"]\n'
                 f'sentinel_master = "{replicated.MASTER}"\n')
    elif backend.endswith("redis-cluster"):
        servers = ClusterRedis()
        request.addfinalizer(servers.stop)
        extra = f'\n[redis]\ncluster_nodes = {servers.nodes!r}\n'.replace("'", '"')
    elif backend.endswith("redis"):
        redis_url = redis[0].url if redis else request.getfixturevalue("redis_url")
        extra = f'\n[redis]\nurl = "{redis_url}"\nkey_prefix = "crash-{secrets.token_hex(4)}:"\n'
    daemons = []
    for n in range(nodes):
        port = free_port()
        home = tmp_path / f"node{n}"
        home.mkdir()
        d = RadiusOcsd(home, extra_radius="\n[charging]\n"
                       "default_quota = { octets = 2000000, seconds = 600, events = 1 }\n"
                       + diameter_config(port) + extra, **kw)
        d.config.write_text(d.config.read_text().replace('node_name = "test-node"',
                                                         f'node_name = "node{n}"'))
        d.diameter_port = port
        daemons.append(d)
    d = daemons[0]
    ids = d.seed(seed, **options)
    try:
        for each in daemons:
            each.start()
        database = request.getfixturevalue("pg_dsn") if cut_database else None
        crasher, reported, answered = asyncio.run(load(daemons, redis, database, replicated))
        assert crasher.crashes == 3 and crasher.lost >= 3
        odd = [(n, k, code) for n, (_, codes) in enumerate(answered)
               for k, code in enumerate(codes) if code != 2001]
        assert not odd, (odd, crasher.node.log()[-4000:])  # (session, request, code)
        assert reported == [RADIUS_TOTAL] * RADIUS_SESSIONS

        d = crasher.node
        for account in ids["bytes"]:
            assert d.buckets(account) == {"money": OPENING,
                                          "octets": ALLOWANCE - RADIUS_TOTAL}
        for account in ids["money"]:
            assert d.buckets(account) == {"money": OPENING - RADIUS_TOTAL // 1000 * PRICE}
        for account in ids["gy"]:
            assert d.buckets(account) == {"money": 0, "octets": ALLOWANCE - DIAMETER_TOTAL}
        for account in ids["bytes"] + ids["money"] + ids["gy"]:
            status, detail = d.api("GET", f"/v1/accounts/{account}")
            assert status == 200 and detail["balance"]["reserved"] in (0, "0.00"), detail
            status, cdrs = d.api("GET", f"/v1/cdrs?account_id={account}")
            assert status == 200 and cdrs["count"] == 1, cdrs
        status, sessions = d.api("GET", "/v1/sessions")
        assert status == 200 and sessions["count"] == 0, sessions
        return crasher
    finally:
        for each in daemons:
            each.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "postgres+redis",
                                     "postgres+redis-cluster"])
def test_sigkill_mid_load_charges_every_session_exactly_once(tmp_path, request, backend):
    """With Redis, the duplicate cache outlives the daemon: the claims the killed
    daemon held on requests in flight must not keep their retransmissions from
    being answered after the restart. A Redis Cluster of three primaries holds the
    keys of the same load spread over its slots."""
    charge_through_crashes(tmp_path, request, backend)


def test_two_nodes_take_over_each_others_sessions_when_one_dies(tmp_path, request):
    """Two nodes on one PostgreSQL and Redis. The NAS and PGWs talk to one; it is
    killed, they fail over to the other mid-session and carry on there; later
    that one is killed and they go back to the first, restarted meanwhile."""
    crasher = charge_through_crashes(tmp_path, request, "postgres+redis", nodes=2)
    assert crasher.live == 1  # three crashes: node0, node1, node0


def test_losing_redis_mid_load_charges_every_session_exactly_once(tmp_path, request):
    """Redis keeps nothing on disk: it is killed three times mid-load and comes back
    empty, losing the duplicate cache and the session directory. Meanwhile the
    daemon answers no NAS (RFC 2866: no answer while a record cannot be handled)
    and tells PGWs 3002 (they send the request again); afterwards the store
    alone keeps every session charged once."""
    servers = [ThrowawayRedis()]
    try:
        crasher = charge_through_crashes(tmp_path, request, "postgres+redis", redis=servers)
    finally:
        for server in servers:
            server.stop()  # also the killed ones: their directories
    # The outages are logged, each kind of failure once a minute, not once a request.
    log = crasher.node.log()
    assert len(re.findall(r"no answer to accounting from crash-nas: store unavailable \(redis "
                          r"at \S+ unavailable", log)) == 1, log[-3000:]
    assert "no answer to status" not in log
    refusals = re.findall(r"CCR from (\S+) not answered with a grant", log)
    assert refusals and len(refusals) == len(set(refusals)), refusals  # once for each PGW


def test_database_connections_cut_mid_load_charge_every_session_exactly_once(tmp_path,
                                                                             request):
    """PostgreSQL terminates every connection of the daemon, again and again for
    half a second, three times mid-load (as a restart or failover does). Some
    die inside a transaction or its COMMIT, so the daemon cannot know whether
    those committed: it answers none of their requests (RADIUS) or answers 3002
    (Diameter), and the retransmissions are charged once. Others are found dead
    before their transaction began: those run again on a new connection."""
    crasher = charge_through_crashes(tmp_path, request, "postgres", cut_database=True)
    log = crasher.node.log()
    # A connection found dead before its transaction began is replaced, quietly;
    # no batch is taken for a fault of its own.
    assert "Traceback" not in log and "retrying one by one" not in log, log[-3000:]


def test_postgresql_failover_mid_load_charges_every_session_exactly_once(tmp_path, request):
    """The store is a PostgreSQL primary with a synchronous standby, and the daemon's
    DSN names both, the standby first. Three times mid-load the primary dies, the
    standby is promoted, and the old primary comes back as the new one's standby
    (as Patroni does). The daemon finds the primary each time, on its own: each
    new connection skips a server that takes no writes. Requests caught in the
    failover go unanswered (RADIUS) or get 3002 (Diameter), and their
    retransmissions are charged once."""
    pair = ReplicatedPostgres()
    try:
        crasher = charge_through_crashes(tmp_path, request, "postgres", replicated=pair)
    finally:
        pair.stop()
    assert "Traceback" not in crasher.node.log(), crasher.node.log()[-3000:]


def test_redis_sentinel_failover_mid_load_charges_every_session_exactly_once(tmp_path,
                                                                            request):
    """Redis is a primary and a replica under a Sentinel ([redis] sentinels). Three
    times mid-load the primary is killed and the Sentinel promotes the replica;
    the old primary comes back empty as the new one's replica. Replication is
    asynchronous, so the promoted one may lack the last claims, answers and
    events. The daemon follows the Sentinel to each new primary on its own, and
    the store keeps every session charged once."""
    servers = SentinelRedis()
    try:
        crasher = charge_through_crashes(tmp_path, request, "postgres+redis",
                                         replicated=servers)
    finally:
        servers.stop()
    log = crasher.node.log()
    assert "Traceback" not in log, log[-3000:]
    assert f"sentinel primary 'ocs-primary' via {servers.sentinel}" in log
