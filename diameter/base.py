"""Base-protocol messages (RFC 6733): who we are, answers, CER/CEA, DWR/DWA, DPR/DPA.

Pure builders and checks over `codec.Message`; no I/O. Protocol errors
(3xxx) are answered with the E bit and the generic answer-message grammar
(RFC 6733 section 7.2); permanent failures (5xxx) with the command's own
answer and, when an AVP is to blame, a Failed-AVP (section 7.5).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from . import tables as T
from .codec import (FLAG_ERROR, FLAG_PROXIABLE, FLAG_REQUEST, Avp, Message, _make_message, avp,
                    first, value, values)
from .dictionary import DEFAULT, RELAY_APPLICATION, Dictionary, make_key

VENDOR_3GPP = 10415
#: Our Vendor-Id in CER/CEA: none registered, so 0 (RFC 6733 section 5.3.3 allows it).
VENDOR_ID = 0


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """What we say about ourselves in CER/CEA and every message's Origin-*."""

    origin_host: str
    origin_realm: str
    host_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    product_name: str = "ocsd"
    vendor_id: int = VENDOR_ID
    firmware_revision: int = 1
    origin_state_id: int = 1
    auth_applications: tuple[int, ...] = (T.APP_DIAMETER_CREDIT_CONTROL,)
    supported_vendors: tuple[int, ...] = (VENDOR_3GPP,)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What a peer told us in its CER."""

    origin_host: str
    origin_realm: str
    host_ip_addresses: tuple = ()
    vendor_id: int = 0
    product_name: str = ""
    origin_state_id: int | None = None
    applications: frozenset = field(default_factory=frozenset)
    supported_vendors: tuple = ()


@functools.lru_cache(maxsize=256)
def constant(key: int, val: int) -> Avp:
    """`avp(key, val)` for the integer AVPs answers repeat (Result-Code,
    Auth-Application-Id, Rating-Group, Validity-Time, ...): AVPs are immutable, so
    one object serves them all. Integers only (True would be served as 1)."""
    return avp(key, val)


# Our own Origin-Host/Realm, built once per identity (a daemon has one per local
# address); keyed by id() with the identity kept alive beside its AVPs.
_origins: dict[int, tuple[LocalIdentity, tuple[Avp, Avp]]] = {}


def origin(local: LocalIdentity) -> list[Avp]:
    hit = _origins.get(id(local))
    if hit is None or hit[0] is not local:
        if len(_origins) >= 64:
            _origins.clear()
        hit = _origins[id(local)] = (local, (avp(T.ORIGIN_HOST, local.origin_host),
                                             avp(T.ORIGIN_REALM, local.origin_realm)))
    return list(hit[1])


def answer(request: Message, local: LocalIdentity, result_code: int, avps=(), *,
           error_message: str | None = None, failed_avp: bytes | None = None,
           protocol_error: bool | None = None) -> Message:
    """The answer to `request`: same command, application and identifiers.

    Session-Id (first, as every grammar wants it) is copied when the request
    had one. A 3xxx result is a protocol error: E bit set and nothing but
    the answer-message AVPs (`avps` are dropped). Proxy-Info AVPs are copied, in
    their order, into every answer (RFC 6733 section 6.2): relays and agents on the
    path use them to find the state they kept for the request.
    """
    if protocol_error is None:
        protocol_error = 3000 <= result_code < 4000
    head: list = []
    sid = first(request.avps, T.SESSION_ID) if request.avps else None
    if sid is not None and isinstance(sid.value, str):
        # The request's own AVP when it has our flags: the same AVP, not built again.
        head.append(sid if sid.flags == _SESSION_ID_FLAGS else avp(T.SESSION_ID, sid.value))
    head.append(constant(T.RESULT_CODE, result_code))
    head += origin(local)
    tail: list = [a for a in request.avps if a.code == T.PROXY_INFO and not a.vendor] \
        if request.avps else []
    if error_message:
        tail.append(avp(T.ERROR_MESSAGE, error_message[:200]))
    if failed_avp is not None:
        tail.append(avp(T.FAILED_AVP, (failed_avp,) if failed_avp else ()))
    flags = request.flags & FLAG_PROXIABLE
    if protocol_error:
        flags |= FLAG_ERROR
        body = head + [avp(T.ORIGIN_STATE_ID, local.origin_state_id)] + tail
    else:
        body = head + list(avps) + tail
    return _make_message(request.code, flags, request.app_id, request.hop_by_hop,
                         request.end_to_end, tuple(body))


_SESSION_ID_FLAGS = avp(T.SESSION_ID, "").flags


def example_avp(key: int, dictionary: Dictionary = DEFAULT) -> bytes:
    """An example of a missing AVP for Failed-AVP (RFC 6733 7.1.5, 5005): the AVP
    with a zero-filled value of its type's minimum size."""
    from .codec import _zero_avp  # one rule for zero payloads, shared with the codec
    d = dictionary.get(key)
    type_id = d.type_id if d is not None else None
    flags = d.flags if d is not None else 0
    return _zero_avp(key & 0xFFFFFFFF, flags, key >> 32, type_id)


def missing(msg: Message, dictionary: Dictionary = DEFAULT) -> int | None:
    """The first AVP key the command's grammar requires that `msg` lacks, else None."""
    present = {a.vendor << 32 | a.code for a in msg.avps}
    for key in dictionary.required_for(msg.code, msg.request):
        if key not in present:
            return key
    return None


# ---------------------------------------------------------------------- capabilities exchange
def peer_info(cer: Message) -> PeerInfo:
    apps = set(values(cer.avps, T.AUTH_APPLICATION_ID)) | set(
        values(cer.avps, T.ACCT_APPLICATION_ID))
    for group in values(cer.avps, T.VENDOR_SPECIFIC_APPLICATION_ID):
        if isinstance(group, tuple):
            apps |= set(values(group, T.AUTH_APPLICATION_ID))
            apps |= set(values(group, T.ACCT_APPLICATION_ID))
    addresses = tuple(str(a) if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                      else repr(a) for a in values(cer.avps, T.HOST_IP_ADDRESS))
    return PeerInfo(
        origin_host=value(cer.avps, T.ORIGIN_HOST, ""),
        origin_realm=value(cer.avps, T.ORIGIN_REALM, ""),
        host_ip_addresses=addresses,
        vendor_id=value(cer.avps, T.VENDOR_ID, 0),
        product_name=value(cer.avps, T.PRODUCT_NAME, ""),
        origin_state_id=value(cer.avps, T.ORIGIN_STATE_ID),
        applications=frozenset(a for a in apps if isinstance(a, int)),
        supported_vendors=tuple(values(cer.avps, T.SUPPORTED_VENDOR_ID)))


def common_applications(local: LocalIdentity, peer: PeerInfo) -> tuple[int, ...]:
    """Applications both sides support; a relay (0xffffffff) supports them all."""
    if RELAY_APPLICATION in peer.applications:
        return local.auth_applications
    return tuple(a for a in local.auth_applications if a in peer.applications)


def capabilities(local: LocalIdentity) -> list[Avp]:
    out = [avp(T.HOST_IP_ADDRESS, a) for a in local.host_ip_addresses]
    out += [avp(T.VENDOR_ID, local.vendor_id), avp(T.PRODUCT_NAME, local.product_name),
            avp(T.ORIGIN_STATE_ID, local.origin_state_id)]
    out += [avp(T.SUPPORTED_VENDOR_ID, v) for v in local.supported_vendors]
    out += [avp(T.AUTH_APPLICATION_ID, a) for a in local.auth_applications]
    out.append(avp(T.FIRMWARE_REVISION, local.firmware_revision))
    return out


def cer(local: LocalIdentity, hop_by_hop: int, end_to_end: int) -> Message:
    """A CER (we send these only as a client: the test client and benchmark)."""
    return Message(T.CMD_CAPABILITIES_EXCHANGE, FLAG_REQUEST, 0, hop_by_hop, end_to_end,
                   tuple(origin(local) + capabilities(local)))


def cea(request: Message, local: LocalIdentity, result_code: int = T.DIAMETER_SUCCESS, *,
        error_message: str | None = None, failed_avp: bytes | None = None) -> Message:
    """The CEA: our capabilities on success, the answer-message on a protocol error."""
    if 3000 <= result_code < 4000:
        return answer(request, local, result_code, error_message=error_message,
                      failed_avp=failed_avp)
    body = [avp(T.RESULT_CODE, result_code), *origin(local), *capabilities(local)]
    if error_message:
        body.append(avp(T.ERROR_MESSAGE, error_message[:200]))
    if failed_avp is not None:
        body.append(avp(T.FAILED_AVP, (failed_avp,) if failed_avp else ()))
    return Message(request.code, 0, 0, request.hop_by_hop, request.end_to_end, tuple(body))


# ---------------------------------------------------------------------- watchdog, disconnect
def dwr(local: LocalIdentity, hop_by_hop: int, end_to_end: int) -> Message:
    return Message(T.CMD_DEVICE_WATCHDOG, FLAG_REQUEST, 0, hop_by_hop, end_to_end,
                   tuple(origin(local) + [avp(T.ORIGIN_STATE_ID, local.origin_state_id)]))


def dwa(request: Message, local: LocalIdentity, result_code: int = T.DIAMETER_SUCCESS) -> Message:
    return Message(request.code, 0, 0, request.hop_by_hop, request.end_to_end,
                   (avp(T.RESULT_CODE, result_code), *origin(local),
                    avp(T.ORIGIN_STATE_ID, local.origin_state_id)))


def dpr(local: LocalIdentity, hop_by_hop: int, end_to_end: int, cause: int = 0) -> Message:
    """Disconnect-Cause 0 REBOOTING: we are shutting down and will be back."""
    return Message(T.CMD_DISCONNECT_PEER, FLAG_REQUEST, 0, hop_by_hop, end_to_end,
                   tuple(origin(local) + [avp(T.DISCONNECT_CAUSE, cause)]))


def dpa(request: Message, local: LocalIdentity, result_code: int = T.DIAMETER_SUCCESS) -> Message:
    return Message(request.code, 0, 0, request.hop_by_hop, request.end_to_end,
                   (avp(T.RESULT_CODE, result_code), *origin(local)))


def result_code(msg: Message) -> int | None:
    """Result-Code, or Experimental-Result-Code inside Experimental-Result."""
    code = value(msg.avps, T.RESULT_CODE)
    if isinstance(code, int):
        return code
    exp = value(msg.avps, T.EXPERIMENTAL_RESULT)
    if isinstance(exp, tuple):
        code = value(exp, T.EXPERIMENTAL_RESULT_CODE)
        if isinstance(code, int):
            return code
    return None


__all__ = ["LocalIdentity", "PeerInfo", "answer", "cea", "cer", "dwr", "dwa", "dpr", "dpa",
           "missing", "example_avp", "peer_info", "common_applications", "result_code",
           "make_key", "VENDOR_3GPP"]
