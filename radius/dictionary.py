"""Attribute names and types from FreeRADIUS-format dictionary files.

pyrad parses the files (``$INCLUDE``, ``VENDOR``, ``BEGIN-VENDOR``, ``VALUE``,
``has_tag``, ``encrypt=``); this module turns its tables into the integer
keys of `radius.codec` (``type`` or ``vendor * 65536 + type``) and converts
values between octets and Python values. The hot path never uses it: the
handler reads the few attributes it needs by number; names are for what is
kept on sessions and CDRs, for logs and for vendor profiles.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from pyrad.dictionary import Dictionary as _PyradDictionary

from ocs.errors import OcsError
from ocs.paths import shipped

from .wire import VENDOR_SHIFT

#: The dictionaries shipped with ocsd (conf/dictionaries, or share/ocsd when installed).
DEFAULT_PATH = str(shipped("dictionaries/dictionary"))


class DictionaryError(OcsError):
    """A dictionary file cannot be read or does not parse."""


@dataclass(frozen=True, slots=True)
class AttrDef:
    key: int
    name: str
    type: str
    has_tag: bool = False
    encrypt: int = 0
    values: dict[str, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)


class Dictionary:
    def __init__(self, path: str | None = None):
        path = path or DEFAULT_PATH
        if not os.path.exists(path):
            raise DictionaryError(f"{path}: dictionary file not found")
        try:
            parsed = _PyradDictionary(path)
        except Exception as exc:  # noqa: BLE001 - pyrad raises several types; name the file
            raise DictionaryError(f"{path}: {exc}") from None
        self.path = path
        self.by_name: dict[str, AttrDef] = {}
        self.by_key: dict[int, AttrDef] = {}
        for name, attr in parsed.attributes.items():
            if attr.is_sub_attribute:
                continue
            vendor = parsed.vendors.GetForward(attr.vendor) if attr.vendor else 0
            key = vendor * VENDOR_SHIFT + attr.code if vendor else attr.code
            values = {}
            if attr.values:
                for vname in list(attr.values.forward):
                    raw = attr.values.GetForward(vname)
                    values[vname] = raw if isinstance(raw, int) else int.from_bytes(raw, "big")
            d = AttrDef(key, name, attr.type, bool(attr.has_tag), int(attr.encrypt or 0), values,
                        {v: k for k, v in values.items()})
            self.by_name[name] = d
            self.by_key.setdefault(key, d)
        self.vendors = {name: parsed.vendors.GetForward(name)
                        for name in parsed.vendors.forward if name}

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def key(self, name: str) -> int:
        try:
            return self.by_name[name].key
        except KeyError:
            raise KeyError(f"attribute {name!r} is not in the dictionary") from None

    def name(self, key: int) -> str:
        d = self.by_key.get(key)
        if d is not None:
            return d.name
        if key >= VENDOR_SHIFT:
            vendor, vtype = divmod(key, VENDOR_SHIFT)
            return f"Vendor-{vendor}-Attr-{vtype}"
        return f"Attr-{key}"

    # ------------------------------------------------------------ values
    def encode(self, name: str, value: Any, *, tag: int | None = None) -> tuple[int, bytes]:
        """(key, octets) of attribute `name` with a Python value (or a VALUE name)."""
        d = self.by_name.get(name)
        if d is None:
            raise KeyError(f"attribute {name!r} is not in the dictionary")
        if isinstance(value, str) and d.values and value in d.values:
            value = d.values[value]
        raw = encode_value(d.type, value)
        if d.has_tag:
            t = tag or 0
            raw = bytes((t,)) + raw[1:] if d.type == "integer" else (
                bytes((t,)) + raw if t else raw)
        return d.key, raw

    def decode(self, key: int, raw: bytes) -> Any:
        """A Python value for attribute `key` (octets as hex when unknown or malformed)."""
        d = self.by_key.get(key)
        if d is None:
            return raw.hex()
        if d.has_tag and raw:
            if d.type == "integer" and len(raw) == 4:
                raw = b"\x00" + raw[1:]
            elif raw[0] <= 0x1F:
                raw = raw[1:]
        try:
            value = decode_value(d.type, raw)
        except (ValueError, struct.error, UnicodeDecodeError):
            return raw.hex()
        if isinstance(value, int) and d.names:
            return d.names.get(value, value)
        return value

    def named(self, attributes, *, skip: frozenset[int] = frozenset()) -> dict[str, Any]:
        """{name: value} of decoded attributes (repeats become lists), for records and logs."""
        out: dict[str, Any] = {}
        for key, raw in attributes:
            if key in skip:
                continue
            name, value = self.name(key), self.decode(key, raw)
            if name in out:
                prev = out[name]
                out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                out[name] = value
        return out


def encode_value(kind: str, value: Any) -> bytes:
    if kind in ("string",):
        return value.encode() if isinstance(value, str) else bytes(value)
    if kind in ("octets", "abinary", "tlv"):
        return bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if kind in ("integer", "date"):
        return int(value).to_bytes(4, "big")
    if kind == "signed":
        return int(value).to_bytes(4, "big", signed=True)
    if kind == "integer64":
        return int(value).to_bytes(8, "big")
    if kind == "short":
        return int(value).to_bytes(2, "big")
    if kind == "byte":
        return int(value).to_bytes(1, "big")
    if kind == "ipaddr":
        return ipaddress.IPv4Address(value).packed
    if kind == "ipv6addr":
        return ipaddress.IPv6Address(value).packed
    if kind == "ipv6prefix":  # RFC 3162 §2.3: reserved, prefix length, prefix
        net = ipaddress.IPv6Network(value, strict=False)
        n = (net.prefixlen + 7) // 8
        return bytes((0, net.prefixlen)) + net.network_address.packed[:n]
    if kind in ("ifid", "ether"):
        return bytes.fromhex(str(value).replace(":", "").replace("-", ""))
    raise ValueError(f"cannot encode type {kind}")


def decode_value(kind: str, raw: bytes) -> Any:
    if kind == "string":
        return raw.decode("utf-8")
    if kind in ("integer", "date"):
        if len(raw) != 4:
            raise ValueError("not 4 octets")
        return int.from_bytes(raw, "big")
    if kind == "signed":
        return struct.unpack("!i", raw)[0]
    if kind == "integer64":
        return struct.unpack("!Q", raw)[0]
    if kind == "short":
        return struct.unpack("!H", raw)[0]
    if kind == "byte":
        return struct.unpack("!B", raw)[0]
    if kind == "ipaddr":
        return str(ipaddress.IPv4Address(raw))
    if kind == "ipv6addr":
        return str(ipaddress.IPv6Address(raw))
    if kind == "ipv6prefix":
        if len(raw) < 2 or raw[1] > 128 or len(raw) - 2 > 16:
            raise ValueError("bad prefix")
        addr = ipaddress.IPv6Address(raw[2:].ljust(16, b"\x00"))
        return str(ipaddress.IPv6Network(f"{addr}/{raw[1]}", strict=False))
    if kind in ("ifid", "ether"):
        return ":".join(f"{b:02x}" for b in raw)
    return raw.hex()
