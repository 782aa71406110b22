"""SNMP SETs for gear without CoA (pysnmp, SNMPv2c or SNMPv3 USM).

Each NAS record says in ``control.snmp`` where its agent is, how to
authenticate, and one SET template per action it supports::

    {"snmp": {"host": "10.0.0.9", "port": 161, "version": "2c", "community": "private",
              "templates": {
                "disconnect": [{"oid": "1.3.6.1.2.1.2.2.1.7.{port}", "type": "i", "value": "2"}],
                "restore":    [{"oid": "1.3.6.1.2.1.2.2.1.7.{port}", "type": "i", "value": "1"}]},
              "port_attr": "NAS-Port"}}

    SNMPv3: "version": "3", "user": "ocs", "auth_protocol": "sha" (md5, sha, sha224,
    sha256, sha384, sha512), "auth_key": "...", "priv_protocol": "aes" (des, 3des, aes,
    aes192, aes256), "priv_key": "..." (noAuthNoPriv / authNoPriv without the keys).
    Optional: "timeout" (seconds per try, default [policy] control_timeout / 2)
    and "retries" (default 1).

The example is IF-MIB ifAdminStatus of the subscriber's port: down(2) cuts
it, up(1) restores it. Types are net-snmp's letters: i INTEGER, u Unsigned32,
g Gauge32, c Counter32, t TimeTicks, a IpAddress, o OBJECT IDENTIFIER,
s OCTET STRING, x hex octets. OIDs and values are templates over:
{port} (the session's ``port_attr``, default NAS-Port, else NAS-Port-Id),
{username}, {framed_ip}, {session}, {nas_session_id}, {down_kbps},
{up_kbps}, {down_bps}, {up_bps}, {profile}, and {attrs[Name]} for any
attribute kept on the session. All varbinds of an action go in one SET PDU,
so the agent applies all or none (RFC 3416 §4.2.5).

An agent that does not answer is retried (the queue's back-off); an error
status (notWritable, wrongType, noAccess...) is a refusal: dead-lettered for
an operator to fix the template.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyasn1.error import PyAsn1Error
from pysnmp.hlapi.v3arch import asyncio as hl
from pysnmp.proto import rfc1902

from ocs.model import Nas

from .model import SNMP, Action, ActuatorError, Attempt

log = logging.getLogger("ocs.policy")

_AUTH = {"md5": hl.usmHMACMD5AuthProtocol, "sha": hl.usmHMACSHAAuthProtocol,
         "sha224": hl.usmHMAC128SHA224AuthProtocol, "sha256": hl.usmHMAC192SHA256AuthProtocol,
         "sha384": hl.usmHMAC256SHA384AuthProtocol, "sha512": hl.usmHMAC384SHA512AuthProtocol}
_PRIV = {"des": hl.usmDESPrivProtocol, "3des": hl.usm3DESEDEPrivProtocol,
         "aes": hl.usmAesCfb128Protocol, "aes128": hl.usmAesCfb128Protocol,
         "aes192": hl.usmAesCfb192Protocol, "aes256": hl.usmAesCfb256Protocol}
_TYPES = {"i": rfc1902.Integer32, "u": rfc1902.Unsigned32, "g": rfc1902.Gauge32,
          "c": rfc1902.Counter32, "t": rfc1902.TimeTicks, "a": rfc1902.IpAddress,
          "o": rfc1902.ObjectName, "s": rfc1902.OctetString}


def _value(kind: str, text: str):
    if kind == "x":
        return rfc1902.OctetString(hexValue=text.replace(":", "").replace(" ", ""))
    cls = _TYPES.get(kind)
    if cls is None:
        raise ActuatorError(f"SNMP type {kind!r} is not one of i u g c t a o s x", retry=False)
    if kind in ("i", "u", "g", "c", "t"):
        return cls(int(text))
    return cls(text)


def _values(action: Action, conf: dict[str, Any]) -> dict[str, Any]:
    t = action.target
    attrs = dict(t.attrs)
    port_attr = conf.get("port_attr")
    port = attrs.get(port_attr) if port_attr else (attrs.get("NAS-Port")
                                                     or attrs.get("NAS-Port-Id"))
    profile = action.profile or {}
    return {"port": port if port is not None else "", "username": t.username or "",
            "framed_ip": t.framed_ip or "", "session": t.session,
            "nas_session_id": t.nas_session_id or "",
            "down_kbps": profile.get("down_kbps", ""), "up_kbps": profile.get("up_kbps", ""),
            "down_bps": profile.get("down_kbps", 0) * 1000 if profile else "",
            "up_bps": profile.get("up_kbps", 0) * 1000 if profile else "",
            "profile": profile.get("name") or "", "attrs": attrs}


def varbinds(action: Action, conf: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(oid, type, value) of the action's SET, templates filled in."""
    templates = (conf.get("templates") or {}).get(action.action)
    if not templates:
        raise ActuatorError(f"control.snmp.templates has no {action.action!r}", retry=False)
    values = _values(action, conf)
    out = []
    for item in templates:
        try:
            oid = str(item["oid"]).format(**values)
            value = str(item["value"]).format(**values)
            kind = str(item.get("type", "s"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ActuatorError(f"SNMP template {item!r}: {exc}", retry=False) from None
        if not all(p.isdigit() for p in oid.strip(".").split(".")):
            raise ActuatorError(f"SNMP template gives OID {oid!r} for session "
                                f"{action.session} (is {{port}} known?)", retry=False)
        out.append((oid.strip("."), kind, value))
    return out


class SnmpActuator:
    backend = SNMP

    def __init__(self, timeout: float, retries: int = 1):
        self.timeout = timeout
        self.retries = retries
        self.engine: hl.SnmpEngine | None = None

    async def start(self) -> None:
        self.engine = hl.SnmpEngine()

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.close_dispatcher()
            self.engine = None

    def _auth(self, conf: dict[str, Any]):
        version = str(conf.get("version", "2c"))
        if version in ("1", "2c"):
            if not conf.get("community"):
                raise ActuatorError("control.snmp.community is needed for SNMPv"
                                    f"{version}", retry=False)
            return hl.CommunityData(str(conf["community"]), mpModel=0 if version == "1" else 1)
        if version != "3":
            raise ActuatorError(f"control.snmp.version {version!r}: use 2c or 3", retry=False)
        if not conf.get("user"):
            raise ActuatorError("control.snmp.user is needed for SNMPv3", retry=False)
        auth = _AUTH.get(str(conf.get("auth_protocol", "sha")).lower())
        priv = _PRIV.get(str(conf.get("priv_protocol", "aes")).lower())
        if auth is None or priv is None:
            raise ActuatorError("control.snmp auth_protocol/priv_protocol unknown", retry=False)
        return hl.UsmUserData(
            str(conf["user"]), authKey=conf.get("auth_key"), privKey=conf.get("priv_key"),
            authProtocol=auth if conf.get("auth_key") else hl.usmNoAuthProtocol,
            privProtocol=priv if conf.get("priv_key") else hl.usmNoPrivProtocol)

    async def execute(self, action: Action, nas: Nas | None) -> Attempt:
        if nas is None:
            raise ActuatorError("the session's NAS is not registered", retry=False)
        conf = (nas.control or {}).get("snmp")
        if not isinstance(conf, dict):
            raise ActuatorError(f"NAS {nas.name} has no control.snmp", retry=False)
        host = str(conf.get("host") or nas.address)
        port = int(conf.get("port", 161))
        binds = varbinds(action, conf)
        request = {"to": f"{host}:{port}", "version": str(conf.get("version", "2c")),
                   "set": [{"oid": o, "type": t, "value": v} for o, t, v in binds]}
        try:
            objects = [hl.ObjectType(hl.ObjectIdentity(o), _value(t, v)) for o, t, v in binds]
        except (ValueError, TypeError, PyAsn1Error) as exc:   # "i" with "abc", "a" with "x"
            raise ActuatorError(f"SNMP template value: {exc}", retry=False) from None
        assert self.engine is not None, "start() first"
        started = time.perf_counter()
        target = await hl.UdpTransportTarget.create(
            (host, port), timeout=float(conf.get("timeout", self.timeout)),
            retries=int(conf.get("retries", self.retries)))
        error, status, index, answer_binds = await hl.set_cmd(
            self.engine, self._auth(conf), target, hl.ContextData(), *objects)
        ms = (time.perf_counter() - started) * 1000
        if error:
            return Attempt(False, "timeout" if "timeout" in str(error).lower() else "error",
                           request=request, retry=True, error=f"SNMP: {error}", latency_ms=ms)
        answer = {"varbinds": [{"oid": str(n), "value": v.prettyPrint()}
                               for n, v in answer_binds]}
        if status:
            where = binds[int(index) - 1][0] if index and int(index) <= len(binds) else "-"
            answer["error_status"] = status.prettyPrint()
            return Attempt(False, "refused", request=request, answer=answer, retry=False,
                           error=f"SNMP SET refused: {status.prettyPrint()} at {where}",
                           latency_ms=ms)
        return Attempt(True, "ok", request=request, answer=answer, latency_ms=ms)


__all__ = ["SnmpActuator", "varbinds"]
