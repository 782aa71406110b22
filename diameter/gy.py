"""Gy / Ro credit control (RFC 8506, 3GPP TS 32.299) over the charging core.

`parse_ccr` turns a Credit-Control-Request into a `CreditControl`: the
protocol-neutral `ChargeRequest` for `ocs.charging` plus what the answer must
echo. `cca` turns the core's `ChargeDecision` back into the
Credit-Control-Answer. Neither does I/O.

Services and their keys (the `service` the core and the tariffs see):

* Data, Service-Context-Id ``32251@3gpp.org`` (and any context we do not
  know): one service per Multiple-Services-Credit-Control, keyed
  ``rg:<Rating-Group>`` (``sid:<Service-Identifier>`` without a rating group;
  ``data`` for a single-service request without MSCC). MSCCs of one rating
  group in one request are merged into one service, answered by one MSCC
  that names all their Service-Identifiers.
* Voice, ``32260@3gpp.org`` (IMS / Ro): service ``voice`` in seconds, rated
  by destination: the Called-Party-Address (else Requested-Party-Address) of
  IMS-Information, ``tel:+41...`` or ``sip:+41...@host;user=phone`` giving
  ``+41...`` for the tariff's number normalisation.
* SMS, ``32274@3gpp.org``: service ``event:sms`` in events, destination the
  recipient's Address-Data.

The unit kind of a data service comes, in order, from the configured rating
group (`GyPolicy.rating_groups`), the Requested-Service-Unit, the
Used-Service-Unit (CC-Time alone means seconds; octets mean octets;
CC-Service-Specific-Units mean events), and the default: octets (events for
an event request). Requested units: the RSU's amount; an empty RSU, or no RSU
on an initial or event request, means "what the server sees fit" (the rating
group's configured quota, else the core's default quota); no RSU on an update
means no more units wanted.

Identity: Subscription-Id (E.164 -> msisdn without '+', IMSI -> imsi, SIP URI
-> sip_user as user@host, and msisdn when the user part is a number; NAI or
private -> username), the RFC 8506 Subscription-Id-Extension, then User-Name.

Answers follow the outcome table (`outcomes`): per MSCC a Result-Code,
Granted-Service-Unit, Validity-Time, the quota threshold of the unit's kind
(Volume-/Time-/Unit-Quota-Threshold), Quota-Holding-Time when configured,
and the plan's Final-Unit-Indication on the last grant or when nothing more
can be granted (with Validity-Time `exhausted_validity_time` for REDIRECT and
RESTRICT_ACCESS, after which the client asks again). The command-level
Result-Code is 2001 when any service succeeded, else the services' failure
(4012 when all ran out), as TS 32.299 section 6.3 describes. Every CCA but an
event's carries CC-Session-Failover = FAILOVER_SUPPORTED: session state is in
the store, so any ocsd node can continue the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from ocs.charging.types import (ChargeDecision, ChargeRequest, Identity, RequestKind,
                                ResultCode, ServiceGrant, ServiceUsage)
from ocs.errors import OcsError
from ocs.model import MAX_USAGE, Kind
from ocs.money import iso_numeric

from . import base
from . import tables as T
from .codec import FLAG_PROXIABLE, FLAG_REQUEST, Avp, Message, avp, encode_avp
from .outcomes import FINAL_UNIT_ACTIONS, RESULT_CODES

CONTEXT_DATA = "32251@3gpp.org"
CONTEXT_VOICE = "32260@3gpp.org"
CONTEXT_SMS = "32274@3gpp.org"

INITIAL, UPDATE, TERMINATION, EVENT = 1, 2, 3, 4
DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY = 0, 1, 2, 3
E164, IMSI, SIP_URI, NAI, PRIVATE = 0, 1, 2, 3, 4
FAILOVER_SUPPORTED = 1
URL = 2  # Redirect-Address-Type

_KINDS = {INITIAL: RequestKind.INITIAL, UPDATE: RequestKind.UPDATE,
          TERMINATION: RequestKind.TERMINATE}
#: Event timestamps further than this from our clock are not trusted for rating.
MAX_CLOCK_SKEW_US = 86_400 * 1_000_000

# Unit AVPs inside Requested/Granted/Used-Service-Unit (vendor 0: key == code).
_CC_TIME, _CC_TOTAL, _CC_INPUT, _CC_OUTPUT, _CC_SSU = (
    T.CC_TIME, T.CC_TOTAL_OCTETS, T.CC_INPUT_OCTETS, T.CC_OUTPUT_OCTETS,
    T.CC_SERVICE_SPECIFIC_UNITS)
_UNIT_CODES = frozenset({_CC_TIME, _CC_TOTAL, _CC_INPUT, _CC_OUTPUT, _CC_SSU})


class CcrInvalid(OcsError):
    """A CCR the core cannot be asked about: answer `result_code` with `failed_avp`."""

    def __init__(self, reason: str, result_code: int, failed_avp: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.result_code = result_code
        self.failed_avp = failed_avp


@dataclass(frozen=True, slots=True)
class GyPolicy:
    """The configuration the mapping needs (built from `[diameter]` by the component)."""

    #: rating group -> (unit kind or None, default quota or None)
    rating_groups: Mapping[int, tuple[Kind | None, int | None]] = field(
        default_factory=lambda: MappingProxyType({}))
    quota_holding_time: int = 0
    exhausted_validity_time: int = 300


# ServiceRequest and CreditControl are values nobody changes once parsed; like the
# core's ChargeRequest they are plain slots dataclasses because one is built per
# request, and a frozen one costs several times as much to build.
@dataclass(slots=True)
class ServiceRequest:
    """One service of a CCR as the answer must name it again."""

    usage: ServiceUsage
    rating_group: int | None = None
    service_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class CreditControl:
    """A parsed CCR: the charge request and what the answer echoes."""

    session_id: str
    origin_host: str
    origin_realm: str
    request_type: int
    request_number: int
    context: str
    multiple: bool                       # answered with MSCCs (else single-service AVPs)
    services: tuple[ServiceRequest, ...]
    charge: ChargeRequest
    requested_action: int | None = None  # event requests only

    @property
    def destination(self) -> str | None:
        """The called party of a voice or SMS request, when it names one."""
        for s in self.services:
            if s.usage.destination:
                return s.usage.destination
        return None

    @property
    def lacks_destination(self) -> bool:
        """A voice/SMS update or termination that does not repeat the called party."""
        return (self.context in (CONTEXT_VOICE, CONTEXT_SMS)
                and self.request_type in (UPDATE, TERMINATION)
                and any(s.usage.destination is None for s in self.services))

    @property
    def op(self) -> str:
        """'ccr-i' | 'ccr-u' | 'ccr-t' | 'ccr-e': the request-duration label."""
        return ("ccr-i", "ccr-u", "ccr-t", "ccr-e")[self.request_type - 1]


# ---------------------------------------------------------------------- parsing
def _units(group) -> tuple[int | None, int | None, int | None]:
    """(seconds, octets, events) in a *-Service-Unit group; None where absent.
    Raises CcrInvalid (5004) for a count beyond `MAX_USAGE`."""
    seconds = total = inp = out = events = out_avp = None
    if isinstance(group, tuple):
        for a in group:
            if a.vendor:
                continue
            c = a.code
            if c in _UNIT_CODES and a.value > MAX_USAGE:
                raise _invalid(a, f"{a.value} units is out of range")
            if c == _CC_TIME:
                seconds = a.value
            elif c == _CC_TOTAL:
                total = a.value
            elif c == _CC_INPUT:
                inp = a.value
            elif c == _CC_OUTPUT:
                out, out_avp = a.value, a
            elif c == _CC_SSU:
                events = a.value
    if total is None and (inp is not None or out is not None):
        total = (inp or 0) + (out or 0)
        if total > MAX_USAGE:  # each in range, the sum not: the second one is at fault
            raise _invalid(out_avp, f"CC-Input-Octets + CC-Output-Octets = {total} units "
                                    "is out of range")
    return seconds, total, events


def _amount(units: tuple, kind: Kind) -> int | None:
    if kind is Kind.OCTETS:
        return units[1]
    if kind is Kind.SECONDS:
        return units[0]
    return units[2]


def _kind_of(units: tuple) -> Kind | None:
    seconds, octets, events = units
    if octets is not None:
        return Kind.OCTETS
    if seconds is not None:
        return Kind.SECONDS
    if events is not None:
        return Kind.EVENTS
    return None


def party_number(address: str) -> str:
    """'tel:+41 79-123' or 'sip:+4179123@ims;user=phone' -> '+4179123'."""
    text = address.strip()
    lower = text.lower()
    for scheme in ("sips:", "sip:", "tel:"):
        if lower.startswith(scheme):
            text = text[len(scheme):]
            break
    text = text.split(";", 1)[0].split("@", 1)[0]
    compact = "".join(ch for ch in text if ch not in " -.()")
    return compact if compact.lstrip("+").isdigit() else text


def _sip_user(uri: str) -> tuple[str, str | None]:
    """('user@host', msisdn or None) from a SIP URI."""
    text = uri.strip()
    lower = text.lower()
    for scheme in ("sips:", "sip:"):
        if lower.startswith(scheme):
            text = text[len(scheme):]
            break
    text = text.split(";", 1)[0]
    user = text.split("@", 1)[0]
    number = party_number(user)
    return text, (number.lstrip("+") if number.lstrip("+").isdigit() else None)


def identity(msg: Message) -> Identity:
    found: dict[str, str] = {}

    def put(key: str, val) -> None:
        if isinstance(val, str) and val and key not in found:
            found[key] = val

    for group in msg.all(T.SUBSCRIPTION_ID):
        if not isinstance(group, tuple):
            continue
        kind, data = None, None
        for a in group:
            if a.code == T.SUBSCRIPTION_ID_TYPE and not a.vendor:
                kind = a.value
            elif a.code == T.SUBSCRIPTION_ID_DATA and not a.vendor:
                data = a.value
        if not isinstance(data, str):
            continue
        if kind == E164:
            put("msisdn", data.lstrip("+"))
        elif kind == IMSI:
            put("imsi", data)
        elif kind == SIP_URI:
            user, number = _sip_user(data)
            put("sip_user", user)
            if number:
                put("msisdn", number)
        elif kind in (NAI, PRIVATE):
            put("username", data)
    for group in msg.all(T.SUBSCRIPTION_ID_EXTENSION):
        if not isinstance(group, tuple):
            continue
        for a in group:
            if a.code == T.SUBSCRIPTION_ID_E164:
                put("msisdn", a.value.lstrip("+") if isinstance(a.value, str) else None)
            elif a.code == T.SUBSCRIPTION_ID_IMSI:
                put("imsi", a.value)
            elif a.code == T.SUBSCRIPTION_ID_SIP_URI and isinstance(a.value, str):
                user, number = _sip_user(a.value)
                put("sip_user", user)
                if number:
                    put("msisdn", number)
            elif a.code in (T.SUBSCRIPTION_ID_NAI, T.SUBSCRIPTION_ID_PRIVATE):
                put("username", a.value)
    put("username", msg.value(T.USER_NAME))
    return Identity(**found)


def _service_information(msg: Message, key: int):
    info = msg.value(T.SERVICE_INFORMATION)
    if not isinstance(info, tuple):
        return None
    for a in info:
        if a.key == key:
            return a.value
    return None


def called_party(msg: Message) -> str | None:
    ims = _service_information(msg, T.IMS_INFORMATION)
    if not isinstance(ims, tuple):
        return None
    for key in (T.CALLED_PARTY_ADDRESS, T.REQUESTED_PARTY_ADDRESS):
        for a in ims:
            if a.key == key and isinstance(a.value, str) and a.value:
                return party_number(a.value)
    return None


def sms_recipient(msg: Message) -> str | None:
    sms = _service_information(msg, T.SMS_INFORMATION)
    if not isinstance(sms, tuple):
        return None
    stack = list(reversed(sms))  # the next AVP in document order is at the end
    while stack:  # Recipient-Info / Recipient-Address / Address-Data, at any depth
        a = stack.pop()
        if a.key == T.ADDRESS_DATA and isinstance(a.value, str):
            return party_number(a.value)
        if a.key in (T.RECIPIENT_INFO, T.RECIPIENT_ADDRESS) and isinstance(a.value, tuple):
            stack.extend(reversed(a.value))
    return None


def framed_ip(msg: Message) -> str | None:
    ps = _service_information(msg, T.PS_INFORMATION)
    if isinstance(ps, tuple):
        for a in ps:
            if a.key == T.PDP_ADDRESS and not isinstance(a.value, (bytes, tuple)):
                return str(a.value)
    raw = msg.value(T.FRAMED_IP_ADDRESS)
    if isinstance(raw, bytes) and len(raw) == 4:
        return ".".join(str(b) for b in raw)
    return None


class AvpIndex:
    """The top-level AVPs of a message by key, built in one pass: `value`, `first`
    and `all` like `Message`'s, without a scan per lookup."""

    __slots__ = ("_first", "_more")

    def __init__(self, avps):
        first: dict[int, Avp] = {}
        more: dict[int, list[Avp]] = {}
        for a in avps:
            k = a.vendor << 32 | a.code
            if k in first:
                more.setdefault(k, [first[k]]).append(a)
            else:
                first[k] = a
        self._first, self._more = first, more

    def first(self, key: int) -> Avp | None:
        return self._first.get(key)

    def value(self, key: int, default=None):
        a = self._first.get(key)
        return default if a is None else a.value

    def all(self, key: int) -> list:
        many = self._more.get(key)
        if many is not None:
            return [a.value for a in many]
        a = self._first.get(key)
        return [] if a is None else [a.value]

    def missing(self, keys) -> int | None:
        """The first of `keys` with no AVP here (`base.missing` on the index)."""
        present = self._first
        for key in keys:
            if key not in present:
                return key
        return None


def _invalid(a: Avp, why: str) -> CcrInvalid:
    return CcrInvalid(why, T.DIAMETER_INVALID_AVP_VALUE, encode_avp(a))


def parse_ccr(msg: Message, policy: GyPolicy, *, now_us: int, nas: str | None = None,
              index: AvpIndex | None = None) -> CreditControl:
    """The CCR as a `CreditControl`. Raises CcrInvalid (5004/5005) for values the
    core cannot be asked about; required AVPs are checked before (`base.missing`).
    `index`: the message's `AvpIndex` when the caller already made one."""
    msg = index if index is not None else AvpIndex(msg.avps)
    session_id = msg.value(T.SESSION_ID)
    type_avp = msg.first(T.CC_REQUEST_TYPE)
    request_type = type_avp.value
    if request_type not in (INITIAL, UPDATE, TERMINATION, EVENT):
        raise _invalid(type_avp, f"CC-Request-Type {request_type} is not 1-4")
    number = msg.value(T.CC_REQUEST_NUMBER)
    context = msg.value(T.SERVICE_CONTEXT_ID)
    action = None
    if request_type == EVENT:
        action_avp = msg.first(T.REQUESTED_ACTION)
        if action_avp is None:  # RFC 8506 8.41: required in an event request
            raise CcrInvalid("an event request needs Requested-Action",
                             T.DIAMETER_MISSING_AVP, base.example_avp(T.REQUESTED_ACTION))
        action = action_avp.value
        if action not in (DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY):
            raise _invalid(action_avp, f"Requested-Action {action} is not 0-3")
        kind = RequestKind.REFUND if action == REFUND_ACCOUNT else RequestKind.EVENT
    else:
        kind = _KINDS[request_type]

    if context == CONTEXT_VOICE:
        fixed_service, fixed_kind, destination = "voice", Kind.SECONDS, called_party(msg)
    elif context == CONTEXT_SMS:
        fixed_service, fixed_kind, destination = "event:sms", Kind.EVENTS, sms_recipient(msg)
    else:
        fixed_service, fixed_kind, destination = None, None, None
    event = request_type == EVENT
    default_kind = Kind.EVENTS if event else Kind.OCTETS
    asks_by_default = request_type in (INITIAL, EVENT)

    def service(rg, sids, rsu_group, usu_groups) -> ServiceRequest:
        rsu = _units(rsu_group) if rsu_group is not None else None
        usus = [_units(g) for g in usu_groups]
        configured_kind, configured_quota = policy.rating_groups.get(rg, (None, None)) \
            if rg is not None else (None, None)
        kind_ = fixed_kind or configured_kind or (rsu and _kind_of(rsu))
        if not kind_:
            for u in usus:  # the first USU that says
                kind_ = _kind_of(u)
                if kind_ is not None:
                    break
            kind_ = kind_ or default_kind
        asked = _amount(rsu, kind_) if rsu is not None else None
        if asked is not None:
            requested = asked
        elif rsu is not None or asks_by_default:
            requested = configured_quota  # None: the core's default quota of the kind
        else:
            requested = 0
        used = 0
        for u in usus:
            used += _amount(u, kind_) or 0
        if used > MAX_USAGE:
            raise CcrInvalid(f"Used-Service-Unit: {used} units in all is out of range",
                             T.DIAMETER_INVALID_AVP_VALUE)
        if fixed_service is not None:
            key = fixed_service
        elif rg is not None:
            key = f"rg:{rg}"
        elif sids:
            key = f"sid:{sids[0]}"
        else:
            key = "event" if event else "data"
        usage = ServiceUsage(key, kind_, used=used, requested=requested,
                             destination=destination, rating_group=rg,
                             service_id=sids[0] if sids else None)
        return ServiceRequest(usage, rg, tuple(sids))

    services: list[ServiceRequest] = []
    msccs = msg.all(T.MULTIPLE_SERVICES_CREDIT_CONTROL)
    if msccs:
        for m in msccs:
            rg, sids, rsu, usus = None, [], None, []
            for a in m:
                if a.vendor:
                    continue
                c = a.code
                if c == T.RATING_GROUP:
                    rg = a.value
                elif c == T.SERVICE_IDENTIFIER:
                    sids.append(a.value)
                elif c == T.REQUESTED_SERVICE_UNIT:
                    rsu = a.value
                elif c == T.USED_SERVICE_UNIT:
                    usus.append(a.value)
            services.append(service(rg, sids, rsu, usus))
        services = _merge(services)
    else:
        rsu = msg.value(T.REQUESTED_SERVICE_UNIT)
        usus = msg.all(T.USED_SERVICE_UNIT)
        sid = msg.value(T.SERVICE_IDENTIFIER)
        if fixed_service is not None or rsu is not None or usus or event:
            services.append(service(msg.value(T.RATING_GROUP), [sid] if sid is not None else [],
                                    rsu, usus))

    ts = msg.value(T.EVENT_TIMESTAMP)
    timestamp = ts if isinstance(ts, int) and abs(ts - now_us) < MAX_CLOCK_SKEW_US else now_us
    origin_host = msg.value(T.ORIGIN_HOST)
    attrs = {}
    if request_type in (INITIAL, EVENT):
        attrs = {"origin_host": origin_host, "origin_realm": msg.value(T.ORIGIN_REALM),
                 "service_context": context}
        apn = msg.value(T.CALLED_STATION_ID)
        if isinstance(apn, str):
            attrs["apn"] = apn
        if destination:
            attrs["destination"] = destination
    charge = ChargeRequest(
        identity=identity(msg), session_id=session_id, kind=kind, seq=number,
        services=tuple([s.usage for s in services]), timestamp=timestamp, proto="diameter",
        nas=nas or origin_host, framed_ip=framed_ip(msg) if request_type == INITIAL else None,
        require_session=request_type in (UPDATE, TERMINATION), attrs=attrs)
    return CreditControl(session_id, origin_host, msg.value(T.ORIGIN_REALM), request_type,
                         number, context, bool(msccs), tuple(services), charge, action)


def with_destination(ccr: CreditControl, destination: str) -> CreditControl:
    """`ccr` with `destination` for the services that lack one."""
    services = tuple(s if s.usage.destination else ServiceRequest(
        replace(s.usage, destination=destination), s.rating_group, s.service_ids)
        for s in ccr.services)
    return replace(ccr, services=services,
                   charge=replace(ccr.charge, services=tuple(s.usage for s in services)))


def _merge(services: list[ServiceRequest]) -> list[ServiceRequest]:
    """One service per key: MSCCs of one rating group report and ask together."""
    if len(services) < 2 or len({s.usage.service for s in services}) == len(services):
        return services
    merged: dict[str, ServiceRequest] = {}
    seen_ids: dict[str, dict[int, None]] = {}  # ordered sets: membership in O(1)
    for s in services:
        key = s.usage.service
        prev = merged.get(key)
        if prev is None:
            merged[key] = s
            seen_ids[key] = dict.fromkeys(s.service_ids)
            continue
        a, b = prev.usage, s.usage
        requested = None if a.requested is None or b.requested is None else max(
            a.requested, b.requested)
        if a.used + b.used > MAX_USAGE:
            raise CcrInvalid(f"Multiple-Services-Credit-Control: {a.used + b.used} units "
                             f"in all for {key} is out of range",
                             T.DIAMETER_INVALID_AVP_VALUE)
        usage = ServiceUsage(a.service, a.kind, used=a.used + b.used, requested=requested,
                             destination=a.destination, rating_group=a.rating_group,
                             service_id=a.service_id)
        ids = seen_ids[key]
        ids.update(dict.fromkeys(s.service_ids))
        merged[key] = ServiceRequest(usage, prev.rating_group, tuple(ids))
    return list(merged.values())


# ---------------------------------------------------------------------- answers
def _unit_avp(kind: Kind, units: int) -> Avp:
    if kind is Kind.OCTETS:
        return avp(_CC_TOTAL, units)
    if kind is Kind.SECONDS:
        return avp(_CC_TIME, units)
    return avp(_CC_SSU, units)


_THRESHOLDS = {Kind.OCTETS: T.VOLUME_QUOTA_THRESHOLD, Kind.SECONDS: T.TIME_QUOTA_THRESHOLD,
               Kind.EVENTS: T.UNIT_QUOTA_THRESHOLD}


def final_unit_indication(fu) -> tuple[Avp, bool]:
    """(Final-Unit-Indication, whether the action restricts rather than ends)."""
    action = FINAL_UNIT_ACTIONS.get(fu.action, 0)
    inner = [avp(T.FINAL_UNIT_ACTION, action)]
    if action == 1 and fu.redirect_url:
        inner.append(avp(T.REDIRECT_SERVER, (avp(T.REDIRECT_ADDRESS_TYPE, URL),
                                             avp(T.REDIRECT_SERVER_ADDRESS, fu.redirect_url))))
    elif action == 1:  # a redirect with nowhere to go ends the service instead
        inner[0] = avp(T.FINAL_UNIT_ACTION, 0)
        action = 0
    elif action == 2 and fu.filter_id:
        inner.append(avp(T.FILTER_ID, fu.filter_id))
    return avp(T.FINAL_UNIT_INDICATION, tuple(inner)), action != 0


def _grant_avps(sr: ServiceRequest, grant: ServiceGrant | None, request_type: int,
                policy: GyPolicy, *, in_mscc: bool) -> list[Avp]:
    """GSU, Validity-Time, thresholds, FUI (and in an MSCC its ids and Result-Code)."""
    out: list[Avp] = []
    code = RESULT_CODES[grant.result] if grant is not None else T.DIAMETER_UNABLE_TO_COMPLY
    kind = sr.usage.kind
    units = 0
    if grant is not None:
        units = grant.charged if request_type == EVENT else grant.granted
    if units and grant.result == ResultCode.SUCCESS:
        out.append(avp(T.GRANTED_SERVICE_UNIT, (_unit_avp(kind, units),)))
    if in_mscc:
        out += [avp(T.SERVICE_IDENTIFIER, i) for i in sr.service_ids]
        if sr.rating_group is not None:
            out.append(base.constant(T.RATING_GROUP, sr.rating_group))
    validity = grant.validity_time if grant is not None and units else 0
    fui = None
    if grant is not None and grant.final_unit is not None and request_type != EVENT:
        fui, restricts = final_unit_indication(grant.final_unit)
        if restricts and not units and policy.exhausted_validity_time:
            validity = policy.exhausted_validity_time
    if validity and request_type != EVENT:
        out.append(base.constant(T.VALIDITY_TIME, validity))
    if in_mscc:
        out.append(base.constant(T.RESULT_CODE, code))
    if fui is not None:
        out.append(fui)
    if units and request_type != EVENT and grant.threshold:
        out.append(avp(_THRESHOLDS[kind], grant.threshold))
    if units and request_type != EVENT and policy.quota_holding_time:
        out.append(base.constant(T.QUOTA_HOLDING_TIME, policy.quota_holding_time))
    return out


def _echo(ccr_msg: Message) -> list[Avp]:
    """Auth-Application-Id, CC-Request-Type, CC-Request-Number as every CCA needs them."""
    return _echo_values(ccr_msg.value(T.CC_REQUEST_TYPE), ccr_msg.value(T.CC_REQUEST_NUMBER))


def _echo_values(request_type, number) -> list[Avp]:
    out = [base.constant(T.AUTH_APPLICATION_ID, T.APP_DIAMETER_CREDIT_CONTROL)]
    if isinstance(request_type, int):
        out.append(base.constant(T.CC_REQUEST_TYPE, request_type) if request_type in _KNOWN_TYPES
                   else avp(T.CC_REQUEST_TYPE, request_type))
    if isinstance(number, int):
        out.append(avp(T.CC_REQUEST_NUMBER, number))
    return out


_KNOWN_TYPES = frozenset((INITIAL, UPDATE, TERMINATION, EVENT))


def cca(msg: Message, ccr: CreditControl, decision: ChargeDecision,
        local: base.LocalIdentity, policy: GyPolicy) -> Message:
    """The Credit-Control-Answer for `decision`."""
    code = RESULT_CODES[decision.result]
    # The parsed CCR holds the first CC-Request-Type/-Number, as `_echo(msg)` reads them.
    body: list[Avp] = _echo_values(ccr.request_type, ccr.request_number)
    if ccr.request_type != EVENT:
        body.append(base.constant(T.CC_SESSION_FAILOVER, FAILOVER_SUPPORTED))
    if ccr.request_type != TERMINATION and decision.services:
        by_service = {g.service: g for g in decision.services}
        if ccr.multiple:
            for sr in ccr.services:
                grant = by_service.get(sr.usage.service)
                body.append(avp(T.MULTIPLE_SERVICES_CREDIT_CONTROL, tuple(
                    _grant_avps(sr, grant, ccr.request_type, policy, in_mscc=True))))
        elif ccr.services:
            sr = ccr.services[0]
            body += _grant_avps(sr, by_service.get(sr.usage.service), ccr.request_type, policy,
                                in_mscc=False)
    if code != T.DIAMETER_SUCCESS:
        # Why, for the operator reading a trace: the core's message, else the services.
        why = decision.message or "; ".join(
            f"{g.service}: {g.result.value.replace('_', ' ')}" for g in decision.services
            if g.result.value != "success")
        if why:
            body.append(avp(T.ERROR_MESSAGE, why[:200]))
    return base.answer(msg, local, code, body)


def cca_check_balance(msg: Message, local: base.LocalIdentity, enough: bool | None,
                      code: int, message: str = "") -> Message:
    body = _echo(msg)
    if enough is not None:
        body.append(avp(T.CHECK_BALANCE_RESULT, 0 if enough else 1))
    if message and code != T.DIAMETER_SUCCESS:
        body.append(avp(T.ERROR_MESSAGE, message[:200]))
    return base.answer(msg, local, code, body)


def unit_value(micro: int) -> Avp:
    """Unit-Value of an amount in micro-units: Value-Digits x 10^Exponent, with
    no trailing zero left in the digits (1.50 is 15 x 10^-1)."""
    digits, exponent = micro, -6
    while exponent < 0 and digits % 10 == 0:
        digits //= 10
        exponent += 1
    return avp(T.UNIT_VALUE, (avp(T.VALUE_DIGITS, digits), avp(T.EXPONENT, exponent)))


def cca_price(msg: Message, local: base.LocalIdentity, decision: ChargeDecision) -> Message:
    """The answer to a PRICE_ENQUIRY: Cost-Information (Unit-Value, Currency-Code
    as ISO 4217 numeric) with the price of the requested units, or why not."""
    code = RESULT_CODES[decision.result]
    if code != T.DIAMETER_SUCCESS:
        return base.answer(msg, local, code, _echo(msg), error_message=decision.message)
    numeric = iso_numeric(decision.currency or "")
    if numeric is None:
        return cca_error(msg, local, T.DIAMETER_UNABLE_TO_COMPLY,
                         f"currency {decision.currency} has no ISO 4217 numeric code here")
    return base.answer(msg, local, code, [*_echo(msg), avp(T.COST_INFORMATION, (
        unit_value(decision.cost), avp(T.CURRENCY_CODE, numeric)))])


def cca_error(msg: Message, local: base.LocalIdentity, code: int, message: str,
              failed_avp: bytes | None = None) -> Message:
    """A CCA refusing the request as a whole (5xxx) or a protocol error (3xxx)."""
    return base.answer(msg, local, code, _echo(msg), error_message=message,
                       failed_avp=failed_avp)


# ---------------------------------------------------------------------- server-initiated
def rar(local: base.LocalIdentity, session_id: str, destination_host: str,
        destination_realm: str, hop_by_hop: int, end_to_end: int,
        rating_group: int | None = None) -> Message:
    """Re-Auth-Request: the client should ask for quota again (RFC 8506 5.5)."""
    body = [avp(T.SESSION_ID, session_id), *base.origin(local),
            avp(T.DESTINATION_REALM, destination_realm),
            avp(T.DESTINATION_HOST, destination_host),
            avp(T.AUTH_APPLICATION_ID, T.APP_DIAMETER_CREDIT_CONTROL),
            avp(T.RE_AUTH_REQUEST_TYPE, 0)]  # AUTHORIZE_ONLY
    if rating_group is not None:
        body.append(avp(T.RATING_GROUP, rating_group))
    return Message(T.CMD_RE_AUTH, FLAG_REQUEST | FLAG_PROXIABLE, T.APP_DIAMETER_CREDIT_CONTROL,
                   hop_by_hop, end_to_end, tuple(body))


def asr(local: base.LocalIdentity, session_id: str, destination_host: str,
        destination_realm: str, hop_by_hop: int, end_to_end: int) -> Message:
    """Abort-Session-Request: the client should end the session (RFC 6733 8.5)."""
    return Message(T.CMD_ABORT_SESSION, FLAG_REQUEST | FLAG_PROXIABLE,
                   T.APP_DIAMETER_CREDIT_CONTROL, hop_by_hop, end_to_end, (
                       avp(T.SESSION_ID, session_id), *base.origin(local),
                       avp(T.DESTINATION_REALM, destination_realm),
                       avp(T.DESTINATION_HOST, destination_host),
                       avp(T.AUTH_APPLICATION_ID, T.APP_DIAMETER_CREDIT_CONTROL)))
