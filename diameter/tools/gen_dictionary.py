"""Generate `diameter/tables.py` from `diameter/tools/dictionary.txt`.

    python -m diameter.tools.gen_dictionary            # rewrite diameter/tables.py
    python -m diameter.tools.gen_dictionary --check    # exit 1 if it is out of date

The source is a plain-text transcription of the AVP, command and result-code
tables of the RFCs and 3GPP specifications it names; its header documents the
line formats. The generator validates it (known types, unique names and
codes, enumerations and grammars naming defined AVPs) and writes a module of
plain data plus one integer constant per AVP (its lookup key,
``vendor << 32 | code``), result code, command and application, so code reads
``T.SESSION_ID`` rather than a bare number. The output is deterministic: the
test suite regenerates it and compares with the committed file.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "dictionary.txt"
TARGET = HERE.parent / "tables.py"

TYPES = ("OctetString", "Integer32", "Integer64", "Unsigned32", "Unsigned64", "Float32",
         "Float64", "Grouped", "Address", "Time", "UTF8String", "DiameterIdentity",
         "DiameterURI", "Enumerated", "IPFilterRule", "QoSFilterRule")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


class SourceError(ValueError):
    """The dictionary source is inconsistent; names the line."""


@dataclass
class Source:
    vendors: dict[int, str] = field(default_factory=dict)
    applications: dict[int, str] = field(default_factory=dict)
    commands: dict[int, tuple[str, str, bool, str]] = field(default_factory=dict)
    avps: list[tuple[str, int, int, str, bool]] = field(default_factory=list)
    enums: dict[str, dict[int, str]] = field(default_factory=dict)
    results: dict[int, str] = field(default_factory=dict)
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)


def parse(text: str) -> Source:
    src = Source()
    vendor_ids: dict[str, int] = {}
    names: dict[str, int] = {}
    keys: set[tuple[int, int]] = set()
    abbrevs: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue

        def fail(why: str) -> SourceError:
            return SourceError(f"{SOURCE.name}:{number}: {why}: {raw.strip()}")

        kind, args = words[0], words[1:]
        try:
            if kind == "vendor":
                vid, name = int(args[0]), args[1]
                src.vendors[vid] = name
                vendor_ids[name] = vid
            elif kind == "application":
                src.applications[int(args[0])] = " ".join(args[1:])
            elif kind == "command":
                code, req, ans, flags, name = int(args[0]), args[1], args[2], args[3], args[4]
                if flags not in ("P", "-"):
                    raise fail("command flags are P or -")
                if req in abbrevs or ans in abbrevs:
                    raise fail("duplicate command abbreviation")
                abbrevs.update((req, ans))
                src.commands[code] = (req, ans, flags == "P", name)
            elif kind == "avp":
                name, code, typ, flags = args[0], int(args[1]), args[2], args[3]
                vendor = vendor_ids[args[4]] if len(args) > 4 else 0
                if len(args) > 5:
                    raise fail("too many fields")
                if not _NAME.fullmatch(name):
                    raise fail("bad AVP name")
                if typ not in TYPES:
                    raise fail(f"unknown type {typ}")
                if flags not in ("M", "-"):
                    raise fail("AVP flags are M or -")
                if name in names or (code, vendor) in keys:
                    raise fail("duplicate AVP name or code")
                names[name] = len(src.avps)
                keys.add((code, vendor))
                src.avps.append((name, code, vendor, typ, flags == "M"))
            elif kind == "enum":
                avp, value, label = args[0], int(args[1]), args[2]
                if avp not in names or src.avps[names[avp]][3] != "Enumerated":
                    raise fail("enum of an AVP that is not a defined Enumerated")
                values = src.enums.setdefault(avp, {})
                if value in values:
                    raise fail("duplicate enum value")
                values[value] = label
            elif kind == "result":
                src.results[int(args[0])] = args[1]
            elif kind == "require":
                command, avps = args[0], tuple(args[1:])
                if command not in abbrevs:
                    raise fail("unknown command")
                unknown = [a for a in avps if a not in names]
                if unknown:
                    raise fail(f"unknown AVP {unknown[0]}")
                src.required[command] = avps
            else:
                raise fail("unknown line kind")
        except (IndexError, ValueError, KeyError) as exc:
            if isinstance(exc, SourceError):
                raise
            raise fail(f"malformed ({exc})") from None
    return src


def ident(name: str) -> str:
    """'3GPP-Charging-Id' -> 'TGPP_CHARGING_ID' (a Python identifier)."""
    name = re.sub(r"^3GPP", "TGPP", name)
    return name.upper().replace("-", "_")


def render(src: Source) -> str:
    out: list[str] = []
    w = out.append
    w('"""Diameter dictionary tables: AVPs, enumerations, commands, applications, results.')
    w("")
    w("Generated by diameter/tools/gen_dictionary.py from diameter/tools/dictionary.txt.")
    w("Do not edit: change the source and run `python -m diameter.tools.gen_dictionary`.")
    w('"""')
    w("# fmt: off")
    w("# flake8: noqa")
    w("")
    w("VENDORS = {")
    for vid, name in sorted(src.vendors.items()):
        w(f"    {vid}: {name!r},")
    w("}")
    w("")
    w("APPLICATIONS = {")
    for aid, name in sorted(src.applications.items()):
        w(f"    {aid}: {name!r},")
    w("}")
    w("")
    w("#: code -> (request abbreviation, answer abbreviation, proxiable, name)")
    w("COMMANDS = {")
    for code, (req, ans, pxy, name) in sorted(src.commands.items()):
        w(f"    {code}: ({req!r}, {ans!r}, {pxy!r}, {name!r}),")
    w("}")
    w("")
    w("#: (name, code, vendor, type, M bit required)")
    w("AVPS = (")
    for name, code, vendor, typ, mandatory in src.avps:
        w(f"    ({name!r}, {code}, {vendor}, {typ!r}, {mandatory!r}),")
    w(")")
    w("")
    w("#: AVP name -> {value: label}")
    w("ENUMS = {")
    for avp in sorted(src.enums):
        w(f"    {avp!r}: {{")
        for value, label in sorted(src.enums[avp].items()):
            w(f"        {value}: {label!r},")
        w("    },")
    w("}")
    w("")
    w("RESULT_CODES = {")
    for code, name in sorted(src.results.items()):
        w(f"    {code}: {name!r},")
    w("}")
    w("")
    w("#: command abbreviation -> AVPs its grammar requires ({ } in the ABNF)")
    w("REQUIRED = {")
    for command in sorted(src.required):
        w(f"    {command!r}: {src.required[command]!r},")
    w("}")
    w("")
    w("# AVP keys: vendor << 32 | code.")
    for name, code, vendor, _typ, _m in src.avps:
        key = f"{vendor} << 32 | {code}" if vendor else f"{code}"
        w(f"{ident(name)} = {key}")
    w("")
    w("# Result codes.")
    for code, name in sorted(src.results.items()):
        w(f"{name} = {code}")
    w("")
    w("# Command codes.")
    for code, (_req, _ans, _pxy, name) in sorted(src.commands.items()):
        w(f"CMD_{ident(name)} = {code}")
    w("")
    w("# Application ids.")
    for aid, name in sorted(src.applications.items()):
        w(f"APP_{ident(name.replace(' ', '-'))} = {aid}")
    w("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the committed module differs")
    args = parser.parse_args(argv)
    try:
        text = render(parse(SOURCE.read_text(encoding="utf-8")))
    except SourceError as exc:
        print(f"gen_dictionary: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"gen_dictionary: {TARGET.name} is out of date; run "
                  "python -m diameter.tools.gen_dictionary", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
