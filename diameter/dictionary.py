"""The Diameter dictionary at run time: AVP definitions by key and by name.

Built once from the generated `diameter.tables`. An AVP's *key* is the
integer ``vendor << 32 | code``: one dict lookup finds its definition, and
the generated constants (``tables.SESSION_ID``, ``tables.VOLUME_QUOTA_THRESHOLD``)
are keys. The codec asks the dictionary two things per AVP: its type (to
decode or encode the value) and, when encoding, the flags the definition
requires (M; V follows from the vendor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from . import tables

# Type ids: small integers the codec dispatches on.
OCTETS, INT32, INT64, UINT32, UINT64, FLOAT32, FLOAT64, GROUPED, ADDRESS, TIME, UTF8, \
    IDENTITY, URI, ENUMERATED, IPFILTER, QOSFILTER = range(16)
TYPE_IDS = {"OctetString": OCTETS, "Integer32": INT32, "Integer64": INT64,
            "Unsigned32": UINT32, "Unsigned64": UINT64, "Float32": FLOAT32, "Float64": FLOAT64,
            "Grouped": GROUPED, "Address": ADDRESS, "Time": TIME, "UTF8String": UTF8,
            "DiameterIdentity": IDENTITY, "DiameterURI": URI, "Enumerated": ENUMERATED,
            "IPFilterRule": IPFILTER, "QoSFilterRule": QOSFILTER}

FLAG_V, FLAG_M, FLAG_P = 0x80, 0x40, 0x20

RELAY_APPLICATION = 0xFFFFFFFF


def make_key(code: int, vendor: int = 0) -> int:
    return vendor << 32 | code


@dataclass(frozen=True, slots=True)
class AvpDef:
    """One AVP as its specification defines it."""

    name: str
    code: int
    vendor: int
    type: str
    mandatory: bool  # the M bit must be set when sending it
    enum: Mapping[int, str]

    @property
    def key(self) -> int:
        return self.vendor << 32 | self.code

    @property
    def type_id(self) -> int:
        return TYPE_IDS[self.type]

    @property
    def flags(self) -> int:
        """Header flags to send it with."""
        return (FLAG_V if self.vendor else 0) | (FLAG_M if self.mandatory else 0)


class Dictionary:
    """Lookups over one set of definitions. Immutable after construction."""

    def __init__(self, avps, enums: Mapping[str, Mapping[int, str]],
                 commands: Mapping[int, tuple], applications: Mapping[int, str],
                 results: Mapping[int, str], required: Mapping[str, tuple[str, ...]]):
        by_key: dict[int, AvpDef] = {}
        by_name: dict[str, AvpDef] = {}
        for name, code, vendor, typ, mandatory in avps:
            d = AvpDef(name, code, vendor, typ, mandatory,
                       MappingProxyType(dict(enums.get(name, {}))))
            by_key[d.key] = d
            by_name[name] = d
        self.by_key: Mapping[int, AvpDef] = MappingProxyType(by_key)
        self.by_name: Mapping[str, AvpDef] = MappingProxyType(by_name)
        # The codec's hot lookups are plain dicts (a mapping proxy costs a third more
        # per lookup); nothing writes to them after construction.
        #: key -> type id.
        self.types: dict[int, int] = {k: d.type_id for k, d in by_key.items()}
        #: key -> flags to send with.
        self.flags: dict[int, int] = {k: d.flags for k, d in by_key.items()}
        self.commands = MappingProxyType(dict(commands))
        self.applications = MappingProxyType(dict(applications))
        self.results = MappingProxyType(dict(results))
        self._abbrev = {}
        for code, (req, ans, _pxy, _name) in commands.items():
            self._abbrev[req] = (code, True)
            self._abbrev[ans] = (code, False)
        self.required: Mapping[tuple[int, bool], tuple[int, ...]] = MappingProxyType({
            self._abbrev[abbrev]: tuple(by_name[n].key for n in names)
            for abbrev, names in required.items()})

    @classmethod
    def from_tables(cls) -> "Dictionary":
        return cls(tables.AVPS, tables.ENUMS, tables.COMMANDS, tables.APPLICATIONS,
                   tables.RESULT_CODES, tables.REQUIRED)

    def __getitem__(self, name: str) -> AvpDef:
        return self.by_name[name]

    def get(self, key: int) -> AvpDef | None:
        return self.by_key.get(key)

    def key(self, name: str) -> int:
        return self.by_name[name].key

    def name(self, key: int) -> str:
        d = self.by_key.get(key)
        if d is not None:
            return d.name
        vendor, code = key >> 32, key & 0xFFFFFFFF
        return f"AVP {code}" + (f" (vendor {vendor})" if vendor else "")

    def command_name(self, code: int, request: bool) -> str:
        """'CCR', 'CEA', ... or 'command 999 request' for one we do not know."""
        entry = self.commands.get(code)
        if entry is None:
            return f"command {code} {'request' if request else 'answer'}"
        return entry[0] if request else entry[1]

    def result_name(self, code: int) -> str:
        return self.results.get(code, str(code))

    def required_for(self, code: int, request: bool) -> tuple[int, ...]:
        """Keys of the AVPs the command's grammar requires, () when unknown."""
        return self.required.get((code, request), ())

    def enum_label(self, key: int, value: int) -> str | None:
        d = self.by_key.get(key)
        return d.enum.get(value) if d is not None else None


#: The dictionary every module uses unless told otherwise.
DEFAULT = Dictionary.from_tables()
