"""The Diameter server: listeners, peers, credit-control requests, RAR/ASR.

`DiameterServer` is the `transport.Handler` of every connection. It decides
which peers may connect (admission), dispatches requests (Credit-Control to
the charging core; anything else answered 3001/3007), bounds the work in
flight (3004 beyond `max_in_flight`), detects duplicates, keeps the metrics,
and sends server-initiated Re-Auth and Abort-Session requests.

Duplicates (RFC 6733 section 6.1.9 / 5.5.4). The answer to every request is
kept in the cluster's duplicate cache under Origin-Host + End-to-End
Identifier for `duplicate_ttl` (at least 4 minutes, as the identifiers must
not be reused sooner). A request marked T (resent after a failover, maybe to
another node) first claims that key: if an answer is cached it is sent again
with the new Hop-by-Hop Identifier and nothing is charged; if the first copy
is still being worked on (here or on another node) the duplicate is dropped
and the client resends. The charging core is exactly-once on (Session-Id,
CC-Request-Number) as well, so a repeated CCR that misses the cache still
charges nothing more and gets the first decision back.

Session directory. On a successful CCR-I the Origin-Host and Origin-Realm of
the client are written to the cluster session directory (Redis when there
are several nodes) so that a Re-Auth or Abort-Session for the session can be
addressed by any node; CCR-T removes the record. The record also names the
node that served the session last: a client connected to that node and not
to this one (a PGW with one primary peer) gets its RAR/ASR from that node,
which this one asks at once (`Cluster.calls`) instead of waiting for a
connection that is not coming.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import logging
import random
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

from ocs.cluster import DIAMETER_PEERS, DIAMETER_SERVER_REQUEST, ClusterError
from ocs.config import diameter_request_budget
from ocs.errors import OcsError, StoreUnavailable
from ocs.logs import Throttled
from ocs.model import Kind, PeerKind, now_us

from . import base, gy, outcomes
from . import tables as T
from .codec import AvpError, Message, describe, with_hop_by_hop
from .dictionary import DEFAULT
from .peer import PeerMachine
from .transport import Connection, PeerGone

log = logging.getLogger("ocs.diameter")
#: One line per credit-control request: at info when [diameter] log_credit_control
#: is on or the answer is not 2001, else at debug. Its own logger, so that an
#: operator can also set its level apart ([log] levels).
access_log = logging.getLogger("ocs.diameter.access")
_SUCCESS = T.DIAMETER_SUCCESS
_OPENING = (gy.INITIAL, gy.EVENT)  # CC-Request-Types a new session (or event) starts with

PRODUCT_NAME = "ocsd"


@dataclass(frozen=True, slots=True)
class ServerRequestResult:
    """How a Re-Auth-Request or Abort-Session-Request ended.

    `answered` with the client's `result_code` (2001: it will ask again /
    end the session; 5002: it no longer knows the session), or not answered
    after `attempts` tries with `error` saying why.
    """

    session_id: str
    command: str  # "RAR" | "ASR"
    answered: bool
    result_code: int | None = None
    peer: str | None = None
    attempts: int = 0
    error: str = ""
    #: The node that sent it, when not this one (the client is connected there).
    node: str | None = None


class NoRoute(OcsError):
    """The session's client is unknown to the session directory."""


def policy_from_config(cfg) -> gy.GyPolicy:
    groups = {int(rg): (Kind(g.kind) if g.kind else None, g.quota)
              for rg, g in cfg.rating_groups.items()}
    return gy.GyPolicy(rating_groups=MappingProxyType(groups),
                       quota_holding_time=cfg.quota_holding_time,
                       exhausted_validity_time=cfg.exhausted_validity_time)


def end_to_end_ids(rng: random.Random) -> Callable[[], int]:
    """RFC 6733 section 3: high 12 bits from the clock at start, low 20 random, then +1."""
    state = [((int(time.time()) & 0xFFF) << 20) | rng.getrandbits(20)]

    def nxt() -> int:
        state[0] = (state[0] + 1) & 0xFFFFFFFF
        return state[0]
    return nxt


class DiameterServer:
    """Everything behind the listening sockets; see the module docstring."""

    def __init__(self, config, *, charging, cluster, metrics=None,
                 registry: Callable[[], Any] | None = None, session_ttl: float = 7200.0):
        self.config = config
        self.charging = charging
        self.cluster = cluster
        self.metrics = metrics
        self._warnings = Throttled(log)  # an outage fails every request: a line a minute
        self.registry = registry or (lambda: None)
        self.session_ttl = session_ttl
        self.policy = policy_from_config(config)
        self.origin_state_id = int(time.time()) & 0xFFFFFFFF
        self.rng = random.Random()
        self.next_e2e = end_to_end_ids(self.rng)
        self.connections: set[Connection] = set()
        # connection -> when it opened (a count): a client that reconnects while its
        # old connection still looks open is reached on the newest (see _route)
        self._opened: dict[Connection, int] = {}
        self._opens = itertools.count()
        # Origin-Host -> the Origin-State-Id it sent last, in a CER or a request (see
        # _note_state)
        self._peer_states: dict[str, int] = {}
        self._background: set[asyncio.Task] = set()
        self.in_flight = 0
        self.tasks: set[asyncio.Task] = set()
        self.listeners: list[asyncio.AbstractServer] = []
        self.addresses: dict[str, tuple] = {}
        self._networks = tuple(ipaddress.ip_network(a, strict=False)
                               for a in config.allowed_addresses)
        self._locals: dict[str, base.LocalIdentity] = {}
        self._counters: dict[tuple, Any] = {}
        self._durations: dict[str, Any] = {}
        # session id -> (monotonic time of our last directory write, destination)
        self._directory_put: dict[str, tuple[float, str | None]] = {}
        self.stopping = False

    # ------------------------------------------------------------ identity, admission
    def local_identity(self, local_address: str) -> base.LocalIdentity:
        ident = self._locals.get(local_address)
        if ident is None:
            cfg = self.config
            addresses = tuple(cfg.host_ip_addresses) or (local_address,)
            ident = self._locals[local_address] = base.LocalIdentity(
                origin_host=cfg.origin_host, origin_realm=cfg.origin_realm,
                host_ip_addresses=addresses, product_name=PRODUCT_NAME,
                origin_state_id=self.origin_state_id)
        return ident

    def admit(self, info: base.PeerInfo, address: str) -> str | None:
        """None when the peer may connect, else why not (answered 3010)."""
        cfg = self.config
        if info.origin_host in cfg.allowed_hosts or info.origin_realm in cfg.allowed_realms:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None and any(ip.version == n.version and ip in n for n in self._networks):
            return None
        registry = self.registry()
        nas = registry.nas_for(address) if registry is not None else None
        if nas is not None and nas.kind is PeerKind.DIAMETER:
            wanted = (nas.control or {}).get("origin_host")
            if not wanted or wanted == info.origin_host:
                return None
            return (f"{info.origin_host} is not the Origin-Host ({wanted}) of peer "
                    f"{nas.name} at {address}")
        return (f"{info.origin_host or '?'} (realm {info.origin_realm or '?'}) from {address} "
                "is not an allowed peer")

    def new_machine(self, conn: Connection, address: str) -> PeerMachine:
        cfg = self.config
        return PeerMachine(self.local_identity(conn.local_address), address=address,
                           admission=self.admit, now=asyncio.get_running_loop().time(),
                           tw=cfg.watchdog_interval, cer_timeout=cfg.cer_timeout,
                           dpa_timeout=cfg.disconnect_timeout, end_to_end=self.next_e2e,
                           rng=self.rng)

    def connection(self, tls: bool = False) -> Connection:
        conn = Connection(self, max_message=self.config.max_message_size, tls=tls)
        self.connections.add(conn)
        return conn

    # ------------------------------------------------------------ connection events
    def on_open(self, conn: Connection) -> None:
        self._opened[conn] = next(self._opens)
        self._gauge()
        info = conn.machine.peer if conn.machine is not None else None
        if info is not None and info.origin_state_id is not None:
            self._note_state(info.origin_host, info.origin_state_id, info.origin_host)

    def _note_state(self, host: str, state: int, via: str) -> None:
        """RFC 6733 §8.16: a client that sends a higher Origin-State-Id than before
        restarted and lost its sessions. Seen in a CER (`via` is the client itself)
        or in a request a relay agent passed on (`via`: the agent, whose connection
        the client's sessions came over). Only a change is looked into (in the
        background): the store keeps the last value for every node."""
        before = self._peer_states.get(host)
        if before is not None and state <= before:  # the same run, or a late message
            return
        self._peer_states[host] = state
        task = asyncio.get_running_loop().create_task(
            self._peer_state(host, state, before, now_us(), via))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _peer_state(self, host: str, state: int, before: int | None, at: int,
                          via: str) -> None:
        """Record `state` as the client's Origin-State-Id, and close its earlier
        sessions if the one recorded before (by any node; `before`, this node's own
        memory, when the store cannot be reached) is lower."""
        store = getattr(self.charging, "store", None)
        if store is not None:
            try:
                before = await store.swap_peer_state(host, state)
            except Exception as exc:  # noqa: BLE001 - a background task: logged, never lost
                log.warning("Origin-State-Id %d of %s not recorded: %s", state, host, exc,
                            extra={"peer": host})
                if self._peer_states.get(host) == state:
                    del self._peer_states[host]  # so that the next message tries again
        if before is None or state <= before:
            return
        relayed = f" (through {via})" if via != host else ""
        if not self.config.close_sessions_on_peer_restart:
            log.warning("peer %s%s restarted (Origin-State-Id %d, was %d); its sessions are "
                        "left to supervision (close_sessions_on_peer_restart is off)",
                        host, relayed, state, before, extra={"peer": host})
            return
        log.warning("peer %s%s restarted (Origin-State-Id %d, was %d): closing the "
                    "sessions it started before", host, relayed, state, before,
                    extra={"peer": host})
        await self._peer_restarted(host, at, via)

    async def _peer_restarted(self, host: str, at: int, via: str | None = None) -> int:
        """Close the sessions a restarted client had (those whose record was written
        before `at`, µs), releasing what they hold, so a prepaid balance is not kept
        reserved until they time out. Its sessions are those whose requests named it
        as Origin-Host and came over `via`'s connections (its own by default); those
        it only relayed for other clients are not its own."""
        close = getattr(self.charging, "close_session", None)
        store = getattr(self.charging, "store", None)
        if close is None or store is None:  # a stand-in core (bench --frontend)
            return 0
        try:
            mine, offset = [], 0
            while True:
                page = await store.list_sessions(nas=via or host, status="active",
                                                 updated_before=at, limit=500, offset=offset)
                if not page:
                    break
                offset += len(page)
                mine += [x for x in page if x.proto == "diameter"
                         and x.attrs.get("origin_host", host) == host]
            for k in range(0, len(mine), 500):
                chunk = mine[k:k + 500]
                await asyncio.gather(*(close(x, "peer restart") for x in chunk))
                for x in chunk:
                    self._directory_put.pop(x.id, None)
        except StoreUnavailable as exc:
            log.error("sessions of restarted peer %s not closed: %s (supervision closes "
                      "them once they are idle)", host, exc, extra={"peer": host})
            return 0
        except Exception:  # noqa: BLE001 - a background task: logged, never lost
            log.exception("closing the sessions of restarted peer %s failed", host,
                          extra={"peer": host})
            return 0
        log.info("peer %s restarted: closed %d sessions", host, len(mine),
                 extra={"peer": host})
        return len(mine)

    def on_closed(self, conn: Connection, reason: str) -> None:
        was_open = conn._opened
        self.connections.discard(conn)
        self._opened.pop(conn, None)
        self._gauge()
        if was_open:
            log.info("peer closed: %s %s: %s", conn.peer_host, conn.address, reason,
                     extra={"peer": conn.peer_host})

    def peers(self) -> list[dict]:
        """The connections of this node, oldest first: who is at the other end (as its
        CER said), how long it has been connected and how its watchdog stands."""
        out = []
        for conn in sorted(self.connections, key=lambda c: c.connected_at or 0.0):
            m = conn.machine
            info = m.peer if m is not None else None
            out.append({
                "origin_host": info.origin_host if info else None,
                "origin_realm": info.origin_realm if info else None,
                "address": conn.address, "local_address": conn.local_address,
                "transport": "tls" if conn.tls else "tcp",
                "state": m.state.value if m is not None else "connecting",
                "watchdog": m.watchdog.value if m is not None else None,
                "connected_at": conn.connected_at,
                "product_name": info.product_name if info else None,
                "vendor_id": info.vendor_id if info else None,
                "origin_state_id": info.origin_state_id if info else None,
                "applications": sorted(info.applications) if info else [],
            })
        return out

    def on_problem(self, conn: Connection, reason: str, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.diameter_errors.labels(reason=reason).inc()

    def on_message(self, conn: Connection, msg: Message, sent: bool) -> None:
        if self.metrics is None:
            return
        code = base.result_code(msg) if not msg.request else None
        key = (conn.peer_host, msg.code, msg.request, code)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.diameter_messages.labels(
                peer=conn.peer_host, cmd=DEFAULT.command_name(msg.code, msg.request),
                result_code="" if code is None else str(code))
        child.inc()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.diameter_connections.set(sum(1 for c in self.connections if c.is_open))

    def _observe(self, op: str, seconds: float) -> None:
        if self.metrics is None:
            return
        child = self._durations.get(op)
        if child is None:
            child = self._durations[op] = self.metrics.request_duration.labels(
                proto="diameter", op=op)
        child.observe(seconds)

    # ------------------------------------------------------------ requests
    def on_request(self, conn: Connection, msg: Message) -> None:
        local = conn.machine.local
        if msg.app_id != T.APP_DIAMETER_CREDIT_CONTROL:
            code = outcomes.APPLICATION_UNSUPPORTED if msg.app_id != 0 \
                else outcomes.COMMAND_UNSUPPORTED
            what = DEFAULT.applications.get(msg.app_id, f"application {msg.app_id}")
            conn.send(base.answer(msg, local, code,
                                  error_message=f"{what} is not served here; only Diameter "
                                                "Credit Control (4)"))
            return
        if msg.code != T.CMD_CREDIT_CONTROL:
            conn.send(base.answer(msg, local, outcomes.COMMAND_UNSUPPORTED,
                                  error_message=f"{describe(msg)} is not supported"))
            return
        if self.in_flight >= self.config.max_in_flight:
            if self.metrics is not None:
                self.metrics.diameter_errors.labels(reason="overload").inc()
            conn.send(gy.cca_error(msg, local, outcomes.OVERLOADED,
                                   f"more than {self.config.max_in_flight} requests in flight"))
            return
        self.in_flight += 1
        task = conn.loop.create_task(self._credit_control(conn, msg))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def on_bad_request(self, conn: Connection, exc: AvpError) -> None:
        """A request with a bad AVP: the codec's Result-Code and Failed-AVP, in a CCA
        (echoing what was decodable) for credit control."""
        req = exc.header.with_avps(exc.avps)
        local = conn.machine.local
        if req.code == T.CMD_CREDIT_CONTROL and req.app_id == T.APP_DIAMETER_CREDIT_CONTROL:
            conn.send(gy.cca_error(req, local, exc.result_code, exc.reason, exc.failed_avp))
        else:
            conn.send(base.answer(req, local, exc.result_code, error_message=exc.reason,
                                  failed_avp=exc.failed_avp))

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight -= 1
        self.tasks.discard(task)

    async def _credit_control(self, conn: Connection, msg: Message) -> None:
        try:
            await self._handle_ccr(conn, msg)
        except Exception:  # noqa: BLE001 - a bug must cost one answer, not the daemon
            log.exception("CCR from %s failed unexpectedly", conn.peer_host,
                          extra={"peer": conn.peer_host})
            try:
                conn.send(gy.cca_error(msg, conn.machine.local, outcomes.INTERNAL,
                                       "internal error"))
            except Exception:  # noqa: BLE001 - e.g. the request itself cannot be echoed
                log.exception("cannot answer a failed CCR from %s", conn.peer_host)

    async def _handle_ccr(self, conn: Connection, msg: Message) -> None:
        started = time.perf_counter()
        local = conn.machine.local
        index = gy.AvpIndex(msg.avps)
        lacking = index.missing(DEFAULT.required_for(msg.code, msg.request))
        if lacking is not None:
            name = DEFAULT.name(lacking)
            log.info("CCR from %s refused: missing %s", conn.peer_host, name,
                     extra={"peer": conn.peer_host})
            conn.send(gy.cca_error(msg, local, T.DIAMETER_MISSING_AVP, f"missing {name}",
                                   base.example_avp(lacking)))
            return
        origin_host = index.value(T.ORIGIN_HOST)
        state = index.value(T.ORIGIN_STATE_ID)
        if state is not None and state != self._peer_states.get(origin_host) \
                and index.value(T.CC_REQUEST_TYPE) in _OPENING:
            # A restarted client's first request opens a session: only those are looked
            # at, so a client that fills in Origin-State-Id oddly on its updates cannot
            # close its sessions from under it.
            self._note_state(origin_host, state, conn.peer_host)
        dedup = self.cluster.dedup
        key = f"diameter:{origin_host}:{msg.end_to_end}"
        ttl = self.config.duplicate_ttl
        claimed = False
        try:
            if msg.retransmit:
                if not await dedup.claim(key):  # a short claim: see [redis] dedup_claim_ttl
                    cached = await dedup.get(key)
                    if cached is not None:
                        conn.write(with_hop_by_hop(cached, msg.hop_by_hop))
                        log.info("duplicate CCR from %s answered from the cache",
                                 conn.peer_host, extra={"peer": conn.peer_host,
                                                        "session": msg.value(T.SESSION_ID)})
                        self.on_problem(conn, "duplicate", "answered from cache")
                    else:
                        log.info("duplicate CCR from %s dropped: first copy in progress",
                                 conn.peer_host, extra={"peer": conn.peer_host})
                        self.on_problem(conn, "duplicate-in-progress", "dropped")
                    return
                claimed = True
            answer, op, ccr = await self._answer(conn, msg, local, index)
        except StoreUnavailable as exc:
            self._warnings.warning(("store", conn.peer_host),
                                   "CCR from %s not answered with a grant: %s", conn.peer_host,
                                   exc, extra={"peer": conn.peer_host,
                                               "session": msg.value(T.SESSION_ID)})
            self.on_problem(conn, "store-unavailable", str(exc))
            conn.send(gy.cca_error(msg, local, outcomes.STORE_UNAVAILABLE,
                                   "charging store unavailable"))
            if claimed:
                await self._release(key)
            return
        raw = conn.send(answer)
        self._observe(op, time.perf_counter() - started)
        if ccr is not None:
            await self._directory(conn, ccr, answer)
        try:
            await dedup.store(key, raw, ttl)
        except StoreUnavailable as exc:
            self._warnings.warning("dedup", "duplicate cache unavailable: %s", exc)

    async def _answer(self, conn: Connection, msg: Message, local: base.LocalIdentity,
                      index: gy.AvpIndex):
        """(answer, op label, parsed CCR or None). Raises StoreUnavailable."""
        try:
            ccr = gy.parse_ccr(msg, self.policy, now_us=now_us(), nas=conn.peer_host,
                               index=index)
        except gy.CcrInvalid as exc:
            log.info("CCR from %s refused: %s (%d)", conn.peer_host, exc.reason,
                     exc.result_code, extra={"peer": conn.peer_host,
                                             "session": msg.value(T.SESSION_ID)})
            return gy.cca_error(msg, local, exc.result_code, exc.reason, exc.failed_avp), \
                "ccr-invalid", None
        try:
            if ccr.requested_action in (gy.CHECK_BALANCE, gy.PRICE_ENQUIRY):
                answer = await self._enquiry(msg, ccr, local)
                self._access(conn, ccr, base.result_code(answer))
                return answer, ccr.op, None
            ccr = await self._known_destination(ccr)
            decision = await self.charging.charge(ccr.charge)
        except StoreUnavailable:
            raise
        except OcsError as exc:
            log.error("CCR %s from %s failed: %s", ccr.session_id, conn.peer_host, exc,
                      extra={"peer": conn.peer_host, "session": ccr.session_id})
            return gy.cca_error(msg, local, outcomes.INTERNAL, "charging failed"), ccr.op, None
        except Exception:  # noqa: BLE001 - a bug must cost one answer, not the daemon
            log.exception("CCR %s from %s failed unexpectedly", ccr.session_id, conn.peer_host,
                          extra={"peer": conn.peer_host, "session": ccr.session_id})
            return gy.cca_error(msg, local, outcomes.INTERNAL, "internal error"), ccr.op, None
        answer = gy.cca(msg, ccr, decision, local, self.policy)
        self._access(conn, ccr, outcomes.result_code(decision.result), decision)
        return answer, ccr.op, ccr

    async def _enquiry(self, msg: Message, ccr: gy.CreditControl,
                       local: base.LocalIdentity) -> Message:
        usage = ccr.charge.services[0] if ccr.charge.services else None
        if ccr.requested_action == gy.PRICE_ENQUIRY:
            if usage is None:
                return gy.cca_error(msg, local, T.DIAMETER_MISSING_AVP,
                                    "a price enquiry names the service to price",
                                    base.example_avp(T.REQUESTED_SERVICE_UNIT))
            decision = await self.charging.quote(ccr.charge.identity, usage,
                                                 at=ccr.charge.timestamp)
            return gy.cca_price(msg, local, decision)
        auth = await self.charging.authorize(ccr.charge.identity, usage,
                                             at=ccr.charge.timestamp)
        code = outcomes.result_code(auth.result)
        if code != T.DIAMETER_SUCCESS and auth.result.value != "credit_limit_reached":
            return gy.cca_check_balance(msg, local, None, code, auth.message)
        wanted = (usage.requested or usage.used or 1) if usage is not None else 1
        enough = auth.max_units is None or auth.max_units >= wanted
        return gy.cca_check_balance(msg, local, enough, T.DIAMETER_SUCCESS)

    def _access(self, conn: Connection, ccr: gy.CreditControl, code: int | None,
                decision=None) -> None:
        # Answers other than success (unknown user, denied, no credit) are always
        # worth a line; the routine ones only when asked for.
        level = (logging.INFO if self.config.log_credit_control or code != _SUCCESS
                 else logging.DEBUG)
        if not access_log.isEnabledFor(level):
            return
        parts = []
        for s in ccr.services:
            u = s.usage
            text = f"{u.service}"
            if u.used:
                text += f" used={u.used}"
            if decision is not None:
                g = decision.grant(u.service)
                if g is not None and g.granted:
                    text += f" granted={g.granted}"
                if g is not None and g.final_unit is not None:
                    text += f" fui={g.final_unit.action}"
            parts.append(text)
        access_log.log(level, "%s #%d %s -> %s%s", ccr.op.upper(), ccr.request_number,
                       " ".join(parts) or "-", code,
                       " (replayed)" if decision is not None and decision.replayed else "",
                       extra={"peer": conn.peer_host, "session": ccr.session_id})

    async def _release(self, key: str) -> None:
        try:
            await self.cluster.dedup.release(key)
        except StoreUnavailable:
            pass  # the claim lapses by itself after duplicate_ttl

    async def _directory(self, conn: Connection, ccr: gy.CreditControl,
                         answer: Message) -> None:
        """Keep the session's client (for RAR/ASR) and called party (to rate the
        usage of later requests that do not repeat it) in the session directory.
        A CCR relayed by an agent (a DRA) came over that agent's connection, not
        the client's: the agent is kept too (`via`), to send RAR/ASR through it."""
        sid = ccr.session_id
        try:
            if ccr.request_type == gy.TERMINATION:
                self._directory_put.pop(sid, None)
                await self.cluster.sessions.delete(sid)
                return
            if ccr.request_type == gy.EVENT or base.result_code(answer) != T.DIAMETER_SUCCESS:
                return
            now = time.monotonic()
            via = conn.peer_host if conn.peer_host != ccr.origin_host else None
            last = self._directory_put.get(sid)
            if last is not None and now - last[0] < self.session_ttl / 2 and last[2] == via:
                return
            destination = ccr.destination or (last[1] if last else None)
            record = {"origin_host": ccr.origin_host, "origin_realm": ccr.origin_realm,
                      "proto": "diameter"}
            if destination:
                record["destination"] = destination
            if via:
                record["via"] = via
            await self.cluster.sessions.put(sid, record, self.session_ttl)
            self._remember(sid, now, destination, via)
        except (StoreUnavailable, ValueError) as exc:
            self._warnings.warning("directory", "session directory not updated for %s: %s",
                                   sid, exc)

    def _remember(self, sid: str, now: float, destination: str | None,
                  via: str | None = None) -> None:
        known = self._directory_put
        known[sid] = (now, destination, via)
        if len(known) > 100_000 and len(known) % 10_000 == 0:
            # Sessions that ended without CCR-T (closed by supervision) are forgotten
            # once their directory record has expired anyway.
            cutoff = now - self.session_ttl
            for key in [k for k, entry in known.items() if entry[0] < cutoff]:
                del known[key]

    async def _known_destination(self, ccr: gy.CreditControl) -> gy.CreditControl:
        """A voice/SMS update or termination without a called party: the one of its
        CCR-I, from this node's memory or the session directory."""
        if not ccr.lacks_destination:
            return ccr
        last = self._directory_put.get(ccr.session_id)
        destination = last[1] if last else None
        if destination is None:
            record = await self.cluster.sessions.get(ccr.session_id)
            destination = (record or {}).get("destination")
        return gy.with_destination(ccr, destination) if destination else ccr

    # ------------------------------------------------------------ server-initiated
    async def re_auth(self, session_id: str, *, rating_group: int | None = None
                      ) -> ServerRequestResult:
        """Send a Re-Auth-Request: the client asks for quota again (after a top-up
        or a plan change). Retried with the T flag on timeout or lost connection."""
        return await self._server_request("RAR", session_id, rating_group)

    async def abort_session(self, session_id: str) -> ServerRequestResult:
        """Send an Abort-Session-Request: the client ends the session (suspension)."""
        return await self._server_request("ASR", session_id, None)

    async def _server_request(self, command: str, session_id: str, rating_group: int | None,
                              *, asked_by: str | None = None) -> ServerRequestResult:
        """Send it over this node's connection to the client (or its agent); else
        ask the node that served the session last, when that is another node
        (not when this node is being asked by another: `asked_by`)."""
        try:
            record = await self.cluster.sessions.get(session_id)
        except StoreUnavailable as exc:
            return ServerRequestResult(session_id, command, False,
                                       error=f"session directory unavailable: {exc}")
        if not record or not record.get("origin_host"):
            return ServerRequestResult(session_id, command, False,
                                       error="session unknown to the session directory")
        host = record["origin_host"]
        realm = record.get("origin_realm") or host
        via = record.get("via")  # the agent its requests came through, if not direct
        cfg = self.config
        e2e = self.next_e2e()
        error = ""
        sent = 0
        deadline = time.monotonic() + cfg.request_timeout * cfg.request_attempts
        failed: set[Connection] = set()  # tried without an answer: others go first
        served_by = record.get("node")
        for attempt in range(1, cfg.request_attempts + 1):
            conn = self._route(host, via, failed)
            if (conn is None and attempt == 1 and asked_by is None and served_by
                    and served_by != self.cluster.node):
                return await self._ask_node(served_by, command, session_id, rating_group,
                                            host)
            while conn is None and time.monotonic() < deadline and not self.stopping:
                await asyncio.sleep(0.05)  # the client may be reconnecting
                conn = self._route(host, via, failed)
            if conn is None:
                here = "this node" if asked_by is None else (
                    f"node {self.cluster.node} (asked by node {asked_by})")
                error = f"peer {host} is not connected to {here}" + (
                    f", nor the agent {via} its requests came through" if via else "")
                break
            local = conn.machine.local
            hbh = conn.machine.next_hop_by_hop()
            if command == "RAR":
                msg = gy.rar(local, session_id, host, realm, hbh, e2e, rating_group)
            else:
                msg = gy.asr(local, session_id, host, realm, hbh, e2e)
            if attempt > 1:
                msg = Message(msg.code, msg.flags | 0x10, msg.app_id, hbh, e2e, msg.avps)
            log.info("%s %s to %s%s (attempt %d)", command, session_id, host,
                     "" if conn.peer_host == host else f" via {conn.peer_host}", attempt,
                     extra={"peer": host, "session": session_id})
            sent += 1
            try:
                answer = await conn.request(msg, cfg.request_timeout)
            except asyncio.TimeoutError:
                error = f"no answer within {cfg.request_timeout:g}s"
                failed.add(conn)
            except PeerGone as exc:
                error = f"connection lost: {exc}"
                failed.add(conn)
            else:
                code = base.result_code(answer)
                log.info("%s %s answered %s by %s", command, session_id, code, host,
                         extra={"peer": host, "session": session_id})
                return ServerRequestResult(session_id, command, True, code, host, sent)
            log.warning("%s %s to %s: %s", command, session_id, host, error,
                        extra={"peer": host, "session": session_id})
            if self.metrics is not None:
                self.metrics.diameter_errors.labels(reason="server-request-retry").inc()
        return ServerRequestResult(session_id, command, False, None, host, sent, error)

    async def _ask_node(self, node: str, command: str, session_id: str,
                        rating_group: int | None, host: str) -> ServerRequestResult:
        """Have `node`, which served the session last, send the request over its
        connection to the client. It may wait for the client and retry, as this
        node would: the call allows for that."""
        cfg = self.config
        timeout = diameter_request_budget(cfg)
        log.info("%s %s to %s: asking node %s, which served the session last", command,
                 session_id, host, node, extra={"peer": host, "session": session_id})
        body = {"command": command, "session_id": session_id, "rating_group": rating_group,
                "from": self.cluster.node}
        try:
            answer = await self.cluster.calls.call(node, DIAMETER_SERVER_REQUEST, body, timeout)
            result = ServerRequestResult(**{**answer, "node": node})
        except (ClusterError, StoreUnavailable, TypeError) as exc:
            if self.metrics is not None:
                self.metrics.diameter_errors.labels(reason="server-request-node").inc()
            error = (f"peer {host} is connected to node {node}, not to this one, and node "
                     f"{node} was not reached: {exc}")
            log.warning("%s %s: %s", command, session_id, error,
                        extra={"peer": host, "session": session_id})
            return ServerRequestResult(session_id, command, False, None, host, 0, error, node)
        log.info("%s %s %s by node %s", command, session_id,
                 f"answered {result.result_code}" if result.answered
                 else f"not answered: {result.error}", node,
                 extra={"peer": host, "session": session_id})
        return result

    async def _asked(self, body: dict) -> dict:
        """Another node asks this one for a RAR/ASR to a client connected here."""
        command = body.get("command")
        if command not in ("RAR", "ASR") or not isinstance(body.get("session_id"), str):
            raise ValueError(f"not a RAR or ASR call: {body!r}")
        rating_group = body.get("rating_group")
        result = await self._server_request(
            command, body["session_id"], rating_group if isinstance(rating_group, int) else None,
            asked_by=str(body.get("from") or "another node"))
        return dataclasses.asdict(result)

    async def _peers_asked(self, body: dict) -> dict:
        """Another node lists every node's peers (`GET /v1/diameter/peers?nodes=all`)."""
        return {"items": self.peers()}

    def _route(self, host: str, via: str | None = None,
               failed: set[Connection] | frozenset = frozenset()) -> Connection | None:
        """The connection to `host` itself, else to the agent `via` that relays to it
        (RFC 6733 §6.1: Destination-Host names the client either way).

        Of several connections to one peer, the newest: a client that restarted
        without DPR connects again while its old connection, never closed by a
        FIN, still looks open until the watchdog gives up on it (2 Tw). One that
        already left this request unanswered (`failed`) comes last."""
        best: dict[str, tuple] = {}
        opened = self._opened
        for conn in self.connections:
            m = conn.machine
            if m is not None and m.available and m.peer is not None:
                name = m.peer.origin_host
                if name == host or name == via:
                    rank = (conn not in failed, opened.get(conn, -1))
                    if name not in best or rank > best[name][0]:
                        best[name] = (rank, conn)
        found = best.get(host) or (best.get(via) if via is not None else None)
        return found[1] if found else None

    # ------------------------------------------------------------ lifecycle
    async def listen(self, name: str, host: str | None, port: int, ssl=None) -> None:
        if not self.listeners:  # other nodes may ask this one for RAR/ASR, and its peers
            self.cluster.calls.serve(DIAMETER_SERVER_REQUEST, self._asked)
            self.cluster.calls.serve(DIAMETER_PEERS, self._peers_asked)
        loop = asyncio.get_running_loop()
        tls = ssl is not None
        server = await loop.create_server(lambda: self.connection(tls), host, port,
                                          ssl=ssl, reuse_address=True)
        self.listeners.append(server)
        self.addresses[name] = server.sockets[0].getsockname()

    async def close(self, drain: float) -> None:
        """Stop accepting, finish requests in flight, DPR every peer, close."""
        self.stopping = True
        self.cluster.calls.serve(DIAMETER_SERVER_REQUEST, None)
        self.cluster.calls.serve(DIAMETER_PEERS, None)
        for server in self.listeners:
            server.close()
        if self.tasks or self._background:
            done, pending = await asyncio.wait(set(self.tasks) | self._background,
                                               timeout=drain)
            if pending & self.tasks:
                log.warning("%d credit-control requests still in flight at shutdown",
                            len(pending & self.tasks))
            for task in pending & self._background:
                # Closing a restarted peer's sessions, cut short: supervision closes
                # what is left once it is idle.
                task.cancel()
        for conn in list(self.connections):
            conn.disconnect()
        waiting = [c.closed.wait() for c in list(self.connections)]
        if waiting:
            try:
                await asyncio.wait_for(asyncio.gather(*waiting),
                                       self.config.disconnect_timeout + 0.5)
            except asyncio.TimeoutError:
                for conn in list(self.connections):
                    conn.abort("shutdown")
        for server in self.listeners:
            await server.wait_closed()
        self.listeners.clear()
