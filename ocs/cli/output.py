"""What `ocsctl` prints: aligned tables and key/value blocks for people, JSON for scripts."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import click

_SIZE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Rows aligned under headers; numbers (and money strings) right-aligned."""
    text = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    numeric = [all(_numeric(row[i]) for row in text) and bool(text) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in text]
    return "\n".join(out)


def _numeric(text: str) -> bool:
    t = text.lstrip("-")
    return t == "" or t.replace(".", "", 1).isdigit() or t == "-"


def fields(pairs: Iterable[tuple[str, Any]], indent: int = 2) -> str:
    """A key/value block, keys aligned."""
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(" " * indent + f"{k.ljust(width)}  {cell(v)}" for k, v in pairs)


def when(iso: str | None) -> str:
    """An API instant ("2026-11-25T19:00:00.123456Z") shortened to the second."""
    if not iso:
        return "-"
    return iso[:19].replace("T", " ") + "Z"


def _cut(units: int, factor: int) -> str:
    """units / factor with at most two decimals, cut rather than rounded: what is left
    is never shown as more than it is (10 GiB less 3 MB reads 9.99 GiB, not 10 GiB)."""
    hundredths = abs(units) * 100 // factor
    text = f"{hundredths // 100}.{hundredths % 100:02d}".rstrip("0").rstrip(".")
    return "-" + text if units < 0 else text


def size(octets: int) -> str:
    for factor, unit in _SIZE_UNITS:
        if abs(octets) >= factor:
            return f"{_cut(octets, factor)} {unit}"
    return f"{octets} B"


def duration(seconds: int) -> str:
    """Whole hours as hours, else minutes (voice allowances are sold in minutes)."""
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if abs(seconds) >= 60:
        return f"{_cut(seconds, 60)} min"
    return f"{seconds} s"


def amount(kind: str, value: Any, currency: str | None = None) -> str:
    """A bucket or ledger amount as a person reads it."""
    if value is None:
        return "-"
    if kind == "money":
        return f"{value} {currency}" if currency else str(value)
    if kind == "octets":
        return size(int(value))
    if kind == "seconds":
        return duration(int(value))
    return f"{value} {kind}"
