"""Processing of one RADIUS request: from a verified packet to the reply octets.

The transport (`radius.server`) has already found the NAS, decoded the
packet and checked its signatures; this module authenticates, authorises
and charges through the protocol-neutral core (`ocs.charging`) and encodes
the reply through the outcome table (`radius.outcomes`). Returning None
means "no answer" (the store is unavailable: `StoreUnavailable` propagates
to the transport, which stays silent so the NAS retries or fails over).

Which services a data session charges: octets under `[radius] data_service`
always, and seconds under `time_service` when the plan is time-rated (a
seconds allowance for that service or for any, or a tariff that rates it).
Access-Accept records that choice in the Class attribute
(``ocs1:<subscriber id>:<t|d>``), which the NAS echoes in every
Accounting-Request (RFC 2865 §5.25), so accounting needs no lookup; a NAS
that does not echo Class costs one subscriber lookup per session.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ocs.charging import ChargeRequest, Identity, RequestKind, ResultCode, ServiceUsage
from ocs.charging.core import fair_usage_period
from ocs.errors import NotFound, ValidationError
from ocs.model import MAX_USAGE, Kind, Nas, Plan, now_us

from . import accounting as acct
from . import auth, outcomes
from .codec import A, AcctStatus, Code, Packet, encode_reply, u32
from .dictionary import Dictionary
from .profiles import VOICE_VENDORS, VendorProfile, profile_for

log = logging.getLogger("ocs.radius")

_KIND = {AcctStatus.START: RequestKind.INITIAL, AcctStatus.INTERIM_UPDATE: RequestKind.UPDATE,
         AcctStatus.STOP: RequestKind.TERMINATE}
# Enum members the accounting path reads per request, read once here: reading a
# member off its class costs about 100 ns on Python 3.11.
_INITIAL, _UPDATE, _TERMINATE = RequestKind.INITIAL, RequestKind.UPDATE, RequestKind.TERMINATE
_OCTETS = Kind.OCTETS
_OCTETS_WRAP = 1 << 32  # Acct-Input/Output-Octets alone count modulo 2**32 (RFC 2869 §5.1)
_UNKNOWN_SUBSCRIBER, _ACCOUNTING_RESPONSE = ResultCode.UNKNOWN_SUBSCRIBER, Code.ACCOUNTING_RESPONSE
_NAS_RESTART = frozenset({AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF})
_CLASS_PREFIX = b"ocs1:"
_METERING_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class NasState:
    """What the hot path needs of one NAS, computed once per registry load."""

    nas: Nas
    name: str
    secret: bytes
    profile: VendorProfile
    # The entry stands for several NAS, told apart by the NAS-Identifier or
    # NAS-IP-Address of their requests: an address prefix, or a RADIUS proxy
    # forwarding for many (`control.proxy`); see session_key.
    shared: bool
    voice: bool
    require_ma: str  # yes | no | auto
    vendor: str      # lower case ("generic" when the record names none)
    # The NAS never gives one address to two sessions at once (no VRFs, no
    # overlapping pools): a Start with the address of a session still open here
    # shows that session gone (`control.unique_framed_ip`).
    unique_framed_ip: bool = False


def nas_state(nas: Nas, voice_vendors: frozenset[str] = VOICE_VENDORS) -> NasState:
    vendor = (nas.vendor or "generic").lower()
    shared = ("/" in nas.address and not nas.address.endswith(("/32", "/128"))) \
        or nas.control.get("proxy") is True
    return NasState(nas, nas.name, nas.secret.encode(), profile_for(vendor), shared,
                    vendor in voice_vendors, nas.require_message_authenticator or "yes", vendor,
                    nas.control.get("unique_framed_ip") is True)


class Handler:
    def __init__(self, ctx, dictionary: Dictionary):
        self.ctx = ctx
        self.dictionary = dictionary
        self.cfg = ctx.config.radius
        self._metering: OrderedDict[str, str] = OrderedDict()
        # (NAS name, reply code) -> bound counter child, so the hot path skips .labels()
        self._replies: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------ Access-Request
    async def access(self, st: NasState, p: Packet) -> bytes:
        cfg = self.cfg
        username = p.get_str(A.USER_NAME)
        if A.EAP_MESSAGE in p:
            return self._eap_reject(st, p, username or "-")
        if not username:
            return self._reject(st, p, outcomes.NO_USER_NAME, "-", "none")
        charging = self.ctx.charging
        called = acct.called_number(p) if st.voice else None
        name = self._subscriber_name(username)
        if st.voice:
            identity = Identity(sip_user=name, msisdn=acct.calling_number(p))
            usage = ServiceUsage(cfg.voice_service, Kind.SECONDS, destination=called)
        else:
            identity = Identity(username=name, msisdn=acct.calling_number(p))
            usage = ServiceUsage(cfg.data_service, _OCTETS)
        authz = await charging.authorize(identity, usage, count_sessions=True)
        if authz.subscriber is None:
            return self._reject(st, p, outcomes.access(authz.result)[1], username, "none")
        proof = auth.check(p, st.secret, authz.subscriber)
        if not proof.ok:
            return self._reject(st, p, outcomes.WRONG_CREDENTIALS, username, proof.method,
                                why=proof.reason, extra=proof.reject_attrs)
        time_rated = st.voice
        if not st.voice and self._time_rated(authz.plan):
            time_rated = True
            authz = await charging.authorize(identity, ServiceUsage(cfg.time_service,
                                                                    Kind.SECONDS),
                                             count_sessions=True)
        code, message, garden_ok = outcomes.access(authz.result)
        plan = authz.plan
        if code is not Code.ACCESS_ACCEPT:
            final = plan.final_unit if plan is not None else None
            if garden_ok and final is not None and final.action in outcomes.WALLED_GARDEN_ACTIONS:
                return self._walled_garden(st, p, proof, final, username, message)
            return self._reject(st, p, message, username, proof.method, why=authz.message)
        sub = authz.subscriber
        if sub.max_sessions > 0:
            active = authz.active_sessions  # counted with the balance, when it was read
            if active is None:
                active = await self.ctx.store.active_sessions(sub.id, limit=sub.max_sessions)
            if active >= sub.max_sessions and cfg.replace_stale_sessions \
                    and await self._close_stale(st, p, sub.id, username):
                # counted again: the count above stops at the limit
                active = await self.ctx.store.active_sessions(sub.id, limit=sub.max_sessions)
            if active >= sub.max_sessions:
                return self._reject(st, p, outcomes.TOO_MANY_SESSIONS.format(
                    limit=sub.max_sessions), username, proof.method)
        attrs: list[tuple[int, bytes]] = list(proof.accept_attrs)
        units = authz.max_units
        if time_rated and units is not None:
            attrs.append((A.SESSION_TIMEOUT, u32(self._cap_timeout(units))))
        elif units is not None and st.profile.supports_volume_quota and units > 0:
            attrs.extend(st.profile.volume_quota(units))
        if cfg.acct_interim_interval and not st.voice:
            attrs.append((A.ACCT_INTERIM_INTERVAL, u32(cfg.acct_interim_interval)))
        if plan is not None and plan.speed_profile is not None and not st.voice:
            speed = plan.speed_profile
            if plan.fair_usage is not None and await self._over_fair_usage(sub.id, plan):
                speed = plan.fair_usage.throttle_profile
            attrs.extend(st.profile.speed(speed))
        if sub.framed_ip and not st.voice:
            attrs.append(self._framed(sub.framed_ip))
        elif cfg.framed_pool and not st.voice:
            attrs.append((A.FRAMED_POOL, cfg.framed_pool.encode()))
        if cfg.send_class:
            attrs.append((A.CLASS, b"%s%d:%s" % (_CLASS_PREFIX, sub.id,
                                                 b"t" if time_rated else b"d")))
        self._count(st, "access-accept")
        log.log(logging.INFO if cfg.log_accepts else logging.DEBUG, "accept %s via %s (%s)",
                username, st.name, proof.method)
        return encode_reply(p, Code.ACCESS_ACCEPT, attrs, st.secret)

    def _framed(self, ip: str) -> tuple[int, bytes]:
        if ":" in ip:
            return self.dictionary.encode("Framed-IPv6-Prefix",
                                          ip if "/" in ip else ip + "/128")
        return self.dictionary.encode("Framed-IP-Address", ip)

    def _cap_timeout(self, seconds: int) -> int:
        cap = self.cfg.session_timeout_max
        return max(1, min(seconds, cap) if cap else min(seconds, 0xFFFFFFFF))

    async def _over_fair_usage(self, subscriber_id: int, plan: Plan) -> bool:
        period = fair_usage_period(now_us(), self.ctx.config.charging.fair_usage_period)
        used = await self.ctx.store.usage_counter(f"fup:{subscriber_id}:{period}")
        return used >= plan.fair_usage.threshold_octets

    def _walled_garden(self, st, p, proof, final, username, message) -> bytes:
        attrs = list(proof.accept_attrs) + st.profile.walled_garden(final)
        attrs.append((A.SESSION_TIMEOUT, u32(self.cfg.walled_garden_session_timeout)))
        attrs.append((A.REPLY_MESSAGE, message.encode()))
        self._count(st, "access-accept")
        log.info("walled garden for %s via %s: %s", username, st.name, message)
        return encode_reply(p, Code.ACCESS_ACCEPT, attrs, st.secret)

    def _reject(self, st, p, message: str, username: str, method: str, *, why: str = "",
                extra=()) -> bytes:
        self._count(st, "access-reject")
        log.info("reject %s via %s (%s): %s%s", username, st.name, method, message,
                 f" ({why})" if why and why != message else "")
        attrs = list(extra) + [(A.REPLY_MESSAGE, message.encode())]
        return encode_reply(p, Code.ACCESS_REJECT, attrs, st.secret)

    def _eap_reject(self, st, p, username: str) -> bytes:
        """EAP (802.1X, WPA-Enterprise, EAP-TLS/PEAP/TTLS) is not served here. The
        reject carries an EAP-Failure answering the peer's EAP packet (its
        Identifier), so the NAS ends the EAP conversation at once (RFC 3579,
        RFC 3748 §4.2) instead of waiting for a method to start."""
        first = p.get(A.EAP_MESSAGE) or b""
        identifier = first[1] if len(first) > 1 else 0
        return self._reject(st, p, outcomes.EAP_UNSUPPORTED, username, "eap",
                            extra=[(A.EAP_MESSAGE, bytes((4, identifier, 0, 4)))])

    def _time_rated(self, plan: Plan | None) -> bool:
        if plan is None:
            return False
        svc = self.cfg.time_service
        if any(a.kind is Kind.SECONDS and a.service in (None, svc) for a in plan.allowances):
            return True
        book = self.ctx.tariffs
        if plan.tariff and book is not None:
            try:
                return svc in book.get(plan.tariff).services()
            except Exception:  # noqa: BLE001 - a tariff not loaded is "not time-rated"
                return False
        return False

    def _count(self, st: NasState, code: str) -> None:
        child = self._replies.get((st.name, code))
        if child is None:
            child = self._replies[st.name, code] = self.ctx.metrics.radius_replies.labels(
                nas=st.name, code=code)
        child.inc()

    # ------------------------------------------------------------ Status-Server
    def status(self, st: NasState, p: Packet, port: str) -> bytes:
        """RFC 5997: Access-Accept on the auth port (and over RADIUS/TLS, which carries
        both), Accounting-Response on the acct port."""
        code = Code.ACCOUNTING_RESPONSE if port == "acct" else Code.ACCESS_ACCEPT
        self._count(st, "status")
        return encode_reply(p, code, [(A.REPLY_MESSAGE, b"ocsd alive")], st.secret)

    # ------------------------------------------------------------ Accounting-Request
    async def accounting(self, st: NasState, p: Packet, source: str) -> bytes | None:
        status = acct.status_of(p)
        if status in _NAS_RESTART:
            closed = await self._close_nas_sessions(st, p, source)
            log.info("%s from %s: closed %d open sessions",
                     "Accounting-On" if status == AcctStatus.ACCOUNTING_ON else "Accounting-Off",
                     st.name, closed)
            return self._acct_response(st, p)
        if status is None:  # RFC 2866 §5.1: every Accounting-Request carries one
            raise MissingAttribute("Acct-Status-Type")
        kind = _KIND.get(status)
        if kind is None:  # Failed, tunnel records...: acknowledged, nothing to charge
            log.debug("accounting status %s from %s acknowledged", status, st.name)
            return self._acct_response(st, p)
        u = acct.usage_of(p)
        if not u.acct_session_id:
            raise MissingAttribute("Acct-Session-Id")
        if u.octets_in + u.octets_out > MAX_USAGE:
            raise InvalidAttribute("Acct-Input/Output-Octets and -Gigawords",
                                   f"{u.octets_in} + {u.octets_out} octets")
        session_id = acct.session_key(st.name, p, u, shared=st.shared, source=source)
        username = p.get_str(A.USER_NAME)
        delay = p.get_int(A.ACCT_DELAY_TIME, 0) or 0
        at = u.event_time * 1_000_000 if u.event_time else now_us() - delay * 1_000_000
        cfg = self.cfg
        name = self._subscriber_name(username)
        if st.voice or acct.is_call(p, st.vendor, VOICE_VENDORS):
            identity = Identity(sip_user=name, msisdn=acct.calling_number(p))
            seconds = acct.call_seconds(p, u)
            if seconds is None and kind is RequestKind.TERMINATE:
                seconds = await self._elapsed(session_id, at)
            services = (ServiceUsage(cfg.voice_service, Kind.SECONDS, used=seconds or 0,
                                     destination=acct.called_number(p)),)
            keys = acct.CALL_ID_KEYS
        else:
            identity = Identity(username=name, msisdn=acct.calling_number(p))
            data = ServiceUsage(cfg.data_service, _OCTETS, used=u.octets_in + u.octets_out)
            first = p.first
            if A.ACCT_INPUT_GIGAWORDS not in first and A.ACCT_OUTPUT_GIGAWORDS not in first:
                data.wraps = _OCTETS_WRAP  # a NAS counting without Gigawords: 32-bit counters
            metered = self._metered_time(p, session_id)
            if metered is None:
                metered = await self._look_up_metered_time(session_id, identity)
            if metered:
                services = (data, ServiceUsage(cfg.time_service, Kind.SECONDS,
                                               used=u.session_time))
            else:
                services = (data,)
            keys = acct.DATA_KEYS
        attrs: dict[str, Any] = {}
        if kind is not _UPDATE:
            wanted = set(keys)
            attrs = self.dictionary.named([(k, v) for k, v in p.attributes if k in wanted])
        req = ChargeRequest(identity, session_id, kind, acct.seq_of(p, u), services, at,
                            proto="radius", nas=st.name, nas_session_id=u.acct_session_id,
                            framed_ip=acct.framed_ip(p), cumulative=True, attrs=attrs,
                            keep_unmatched=True)
        arrived = now_us() if st.unique_framed_ip else 0
        decision = await self.ctx.charging.charge(req)
        if decision.result is _UNKNOWN_SUBSCRIBER:
            log.warning("accounting for unknown subscriber %s from %s (session %s): kept "
                        "as unmatched accounting", identity, st.name, u.acct_session_id)
            self.ctx.metrics.radius_unmatched.labels(nas=st.name).inc()
        elif cfg.log_accounting:
            log.info("accounting %s %s via %s: %s cost %d%s", kind.value, session_id, st.name,
                     decision.result.value, decision.cost,
                     " (replayed)" if decision.replayed else "")
        if kind is _TERMINATE:
            self._metering.pop(session_id, None)
        elif kind is _INITIAL and st.unique_framed_ip and req.framed_ip \
                and decision.result is not _UNKNOWN_SUBSCRIBER:
            await self._close_address_holders(st, p, source, session_id, req.framed_ip, arrived)
        return self._acct_response(st, p)

    def _subscriber_name(self, username: str | None) -> str | None:
        """The name the subscriber is looked up by: `username` without its realm
        ("alice@realm", or "REALM\\alice" as Windows clients send it) when `[radius]
        strip_realms` names it (or is "*")."""
        realms = self.cfg.strip_realms
        if not realms or not username:
            return username
        if "@" in username:
            user, _, realm = username.rpartition("@")
        elif "\\" in username:
            realm, _, user = username.partition("\\")
        else:
            return username
        if user and ("*" in realms or realm.lower() in realms):
            return user
        return username

    def _acct_response(self, st: NasState, p: Packet) -> bytes:
        # No Message-Authenticator, even when the request was signed with one: no RFC
        # defines it in an Accounting-Response, FreeRADIUS sends none, and clients do
        # not agree on how to check one (FreeRADIUS's radclient and proxy take a zero
        # Authenticator, others the request's), so any reply would be dropped by some.
        # The Response Authenticator signs it (RFC 2866 §3).
        self._count(st, "accounting-response")
        return encode_reply(p, _ACCOUNTING_RESPONSE, (), st.secret, message_authenticator=False)

    async def _elapsed(self, session_id: str, at: int) -> int:
        """Kamailio reports no duration: the call lasted from its Start to this Stop."""
        try:
            session = await self.ctx.store.get_session(session_id)
        except NotFound:
            return 0
        return max(0, -(-(at - session.started_at) // 1_000_000))

    def _metered_time(self, p: Packet, session_id: str) -> bool | None:
        """Whether a data session charges time too, from the Class the NAS echoes or
        an earlier report; None when neither says (`_look_up_metered_time`)."""
        cls = p.get(A.CLASS)
        if cls is not None and cls.startswith(_CLASS_PREFIX):
            return cls.endswith(b":t")
        flag = self._metering.get(session_id)
        return None if flag is None else flag == "t"

    async def _look_up_metered_time(self, session_id: str, identity: Identity) -> bool:
        flag = "d"
        sub = await self.ctx.charging.subscriber(identity)  # the cached lookup charging uses
        if sub is not None:
            plan = self.ctx.registry.plan(sub.plan_id) if sub.plan_id else None
            flag = "t" if self._time_rated(plan) else "d"
        self._metering[session_id] = flag
        if len(self._metering) > _METERING_CACHE:
            self._metering.popitem(last=False)
        return flag == "t"

    async def _close_stale(self, st: NasState, p: Packet, subscriber_id: int,
                           username: str) -> int:
        """Close the subscriber's sessions that this login shows to be gone: on this
        NAS entry, from the same device (Calling-Station-Id) and port (NAS-Port-Id,
        when both sessions name one). A NAS authenticates a device on a port again
        only once its session there ended; one still open here lost its Stop (a NAS
        that crashed without Accounting-On). Returns how many were closed."""
        device = p.get_str(A.CALLING_STATION_ID)
        if not device:
            return 0
        port = p.get_str(A.NAS_PORT_ID)
        open_ = await self.ctx.store.list_sessions(subscriber_id=subscriber_id,
                                                   status="active", limit=100)
        stale = [x for x in open_ if x.proto == "radius" and x.nas == st.name
                 and x.attrs.get("Calling-Station-Id") == device
                 and (not port or x.attrs.get("NAS-Port-Id", port) == port)]
        for x in stale:
            log.warning("closing stale session %s of %s: %s authenticates the same device "
                        "(%s) again", x.id, username, st.name, device,
                        extra={"session": x.id, "account": x.account_id})
            await self._close(x, "same device logged in again")
        return len(stale)

    async def _close_address_holders(self, st: NasState, p: Packet, source: str,
                                     session_id: str, address: str, arrived: int) -> int:
        """A NAS that never gives one address to two sessions (`unique_framed_ip`)
        started `session_id` with `address`: the sessions of that NAS still open
        here with the same address ended without their Stop (a NAS that crashed
        without Accounting-On, a lost Stop). They are closed (what they reported
        stays charged, what they hold is released), so no action meant for them,
        a tc rule on the address or a Disconnect naming it, reaches the new one.
        Only sessions last heard of before this Start arrived: of two Starts with
        one address that cross, neither closes the other."""
        prefix = acct.session_prefix(st.name, p, shared=True, source=source) \
            if st.shared else None
        holders = [x for x in await self.ctx.store.list_sessions(
                       nas=st.name, status="active", framed_ip=address, id_prefix=prefix,
                       updated_before=arrived, limit=100)
                   if x.id != session_id and x.proto == "radius"]
        for x in holders:
            log.warning("closing stale session %s: NAS %s gave its address %s to session %s",
                        x.id, st.name, address, session_id,
                        extra={"session": x.id, "account": x.account_id})
            await self._close(x, "framed ip reused")
        return len(holders)

    async def _close_nas_sessions(self, st: NasState, p: Packet, source: str) -> int:
        """Accounting-On/Off (RFC 2866 §5.1): the NAS restarted, its sessions are gone."""
        store, closed = self.ctx.store, 0
        prefix = acct.session_prefix(st.name, p, shared=True, source=source) \
            if st.shared else None  # else every session of the entry is the NAS's
        # Only sessions from before this report: a rebooted NAS sends Starts right
        # after it, and the sessions they open must stay open.
        at = now_us()
        seen: set[str] = set()
        while True:
            # Each round closes what it found, so the next finds the rest; one that
            # stayed open (it should not) is not tried again.
            batch = [s for s in await store.list_sessions(nas=st.name, status="active",
                                                          id_prefix=prefix, updated_before=at,
                                                          limit=500)
                     if s.id not in seen]
            if not batch:
                return closed
            seen.update(s.id for s in batch)
            # Closed together, so they commit in a few batches, not one by one: a BRAS
            # with thousands of sessions is answered before it retransmits.
            done = await asyncio.gather(*(self._close(s, "accounting-on/off") for s in batch),
                                        return_exceptions=True)
            failed = next((x for x in done if isinstance(x, BaseException)), None)
            if failed is not None:
                raise failed  # no answer: the NAS sends it again, the rest is closed then
            closed += len(batch)

    async def _close(self, session, reason: str) -> None:
        """Close a session whose NAS will not report its end (what it reported stays
        charged, what it holds is released), and forget its metering."""
        await self.ctx.charging.close_session(session, reason)
        self._metering.pop(session.id, None)


class MissingAttribute(ValidationError):
    """A request lacks an attribute the RFC makes mandatory: dropped and counted."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"missing {name}")


class InvalidAttribute(ValidationError):
    """A request carries a value no real client sends (counters beyond
    `ocs.model.MAX_USAGE`): dropped and counted, never charged."""

    def __init__(self, name: str, value: str):
        self.name = name
        super().__init__(f"{name} out of range ({value})")
