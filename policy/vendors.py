"""CoA profiles: which attributes address a session on a NAS, and what to send.

The speed and walled-garden attributes are the RADIUS front-end's vendor
profiles (`radius.profiles`), so a CoA writes the same attributes a login
with that profile gets. The session-identification keys (RFC 5176 §3) and
the "unshaped" restore are this module's, read from ``conf/policy/coa.toml``
(shipped) merged with ``[policy] coa_profiles`` (the operator's file: a
vendor section there replaces the shipped one).
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from ocs.errors import ConfigError
from ocs.model import FinalUnit, Nas, SpeedProfile
from ocs.paths import shipped
from radius.dictionary import Dictionary
from radius.profiles import profile_for

from .model import DISCONNECT, REDIRECT, RESTORE, THROTTLE, Action, ActuatorError, Target

#: The shipped profiles (conf/policy/coa.toml, or share/ocsd/policy when installed).
SHIPPED = shipped("policy/coa.toml")
_KEYS = frozenset({"identify", "unshaped", "redirect_filter", "speed"})

Attrs = list[tuple[int, bytes]]


@dataclass(frozen=True)
class CoaProfile:
    vendor: str
    identify: tuple[str, ...]
    unshaped: Mapping[str, Any] = field(default_factory=dict)
    redirect_filter: str = "walled-garden"
    speed: Mapping[str, Any] | None = None


def _templates(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError("must be a table of attribute = value", key=where)
    out: dict[str, list[str]] = {}
    for name, v in value.items():
        values = v if isinstance(v, list) else [v]
        if not all(isinstance(x, (str, int)) for x in values):
            raise ConfigError(f"attribute {name}: values are strings or integers", key=where)
        out[name] = [str(x) for x in values]
    return out


def load_profiles(extra: str | None = None, *,
                  dictionary: Dictionary | None = None) -> dict[str, CoaProfile]:
    """The shipped profiles with `extra` (a TOML file) merged over them.

    Every attribute named must be in the RADIUS dictionary: a typo is a
    configuration error at start, not a NAK at the first suspension.
    """
    dictionary = dictionary or Dictionary()
    vendors: dict[str, Any] = {}
    for path in [str(SHIPPED)] + ([extra] if extra else []):
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("file not found", file=path, key="policy.coa_profiles") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", file=path) from None
        unknown = set(data) - {"vendors"}
        if unknown:
            raise ConfigError("unknown key", file=path, key=sorted(unknown)[0])
        vendors.update(data.get("vendors", {}))
    profiles = {}
    for vendor, section in vendors.items():
        where = f"vendors.{vendor}"
        unknown = set(section) - _KEYS
        if unknown:
            raise ConfigError("unknown key", key=f"{where}.{sorted(unknown)[0]}")
        identify = section.get("identify") or []
        if not identify or not all(isinstance(n, str) for n in identify):
            raise ConfigError("needs a list of attribute names", key=f"{where}.identify")
        unshaped = _templates(section.get("unshaped", {}), f"{where}.unshaped")
        speed = _templates(section["speed"], f"{where}.speed") if "speed" in section else None
        for name in list(identify) + list(unshaped) + list(speed or {}):
            if name not in dictionary:
                raise ConfigError(f"attribute {name!r} is not in the RADIUS dictionary",
                                  key=where)
        profiles[vendor.lower()] = CoaProfile(
            vendor.lower(), tuple(identify), unshaped,
            str(section.get("redirect_filter", "walled-garden")), speed)
    if "generic" not in profiles:
        raise ConfigError("a [vendors.generic] section is needed", key="vendors.generic")
    return profiles


def nas_host(nas: Nas, target: Target) -> str:
    """Where a NAS takes CoA: ``control.coa_address``, else its address; a NAS
    registered by prefix is reached at the box the session key names."""
    control = nas.control or {}
    if control.get("coa_address"):
        return str(control["coa_address"])
    address = nas.address
    if "/" in address:
        net = ipaddress.ip_network(address, strict=False)
        if net.num_addresses == 1:
            return str(net.network_address)
        # radius:<nas>/<box>:<Acct-Session-Id> (radius.accounting.session_key)
        rest = target.session.split(":", 1)[1] if ":" in target.session else ""
        box = rest.split("/", 1)[1].split(":", 1)[0] if "/" in rest.split(":", 1)[0] else ""
        try:
            return str(ipaddress.ip_address(box))
        except ValueError:
            raise ActuatorError(f"NAS {nas.name} is registered by prefix {address} and the "
                                f"session does not say which box it is on; set "
                                f"control.coa_address", retry=False) from None
    return address


class CoaWriter:
    """Builds the attributes of CoA and Disconnect requests for one action."""

    def __init__(self, profiles: dict[str, CoaProfile], dictionary: Dictionary):
        self.profiles = profiles
        self.dictionary = dictionary

    def profile(self, vendor: str | None) -> CoaProfile:
        return self.profiles.get((vendor or "generic").lower(), self.profiles["generic"])

    def _encode(self, name: str, value: Any) -> tuple[int, bytes]:
        try:
            return self.dictionary.encode(name, value)
        except (ValueError, KeyError, OverflowError) as exc:
            raise ActuatorError(f"cannot encode {name} = {value!r}: {exc}", retry=False) \
                from None

    def identify(self, nas: Nas, target: Target) -> Attrs:
        prof = self.profile(nas.vendor)
        out: Attrs = []
        for name in prof.identify:
            value: Any
            if name == "User-Name":
                value = target.username or target.attrs.get("User-Name")
            elif name == "Acct-Session-Id":
                value = target.nas_session_id
            elif name == "Framed-IP-Address":
                value = target.framed_ip
            elif name == "NAS-IP-Address":
                value = nas_host(nas, target)
                try:
                    if ipaddress.ip_address(value).version != 4:
                        value = None
                except ValueError:
                    value = None
            else:
                value = target.attrs.get(name)
            if value in (None, ""):
                continue
            out.append(self._encode(name, value))
        if not out:
            raise ActuatorError(f"session {target.session} has none of the attributes "
                                f"{', '.join(prof.identify)} that identify it on a "
                                f"{prof.vendor} NAS", retry=False)
        return out

    def _templated(self, templates: Mapping[str, list[str]], values: Mapping[str, Any]) -> Attrs:
        out: Attrs = []
        for name, texts in templates.items():
            for text in texts:
                try:
                    rendered = text.format(**values)
                except (KeyError, IndexError, ValueError) as exc:
                    raise ActuatorError(f"template {name} = {text!r}: {exc}", retry=False) \
                        from None
                out.append(self._encode(name, rendered))
        return out

    def speed(self, nas: Nas, profile: Mapping[str, Any]) -> Attrs:
        sp = SpeedProfile(int(profile["down_kbps"]), int(profile["up_kbps"]),
                          profile.get("name"))
        prof = self.profile(nas.vendor)
        if prof.speed is not None:
            return self._templated(prof.speed, {
                "down_kbps": sp.down_kbps, "up_kbps": sp.up_kbps, "down_bps": sp.down_kbps * 1000,
                "up_bps": sp.up_kbps * 1000, "name": sp.name or ""})
        return list(profile_for(nas.vendor).speed(sp))

    def request(self, nas: Nas, action: Action) -> tuple[str, Attrs]:
        """("disconnect" | "coa", attributes) for `action` on `nas`."""
        target = action.target
        attrs = self.identify(nas, target)
        kind = action.action
        if kind == DISCONNECT:
            return "disconnect", attrs
        prof = self.profile(nas.vendor)
        if kind == THROTTLE:
            if not action.profile:
                raise ActuatorError("throttle without a speed profile", retry=False)
            return "coa", attrs + self.speed(nas, action.profile)
        if kind == RESTORE:
            if action.profile:
                return "coa", attrs + self.speed(nas, action.profile)
            return "coa", attrs + self._templated(prof.unshaped, {})
        if kind == REDIRECT:
            final = FinalUnit("redirect", action.params.get("redirect_url"),
                              action.params.get("filter_id") or prof.redirect_filter)
            return "coa", attrs + list(profile_for(nas.vendor).walled_garden(final))
        raise ActuatorError(f"CoA cannot {kind}", retry=False)


__all__ = ["CoaProfile", "CoaWriter", "load_profiles", "nas_host", "SHIPPED"]
