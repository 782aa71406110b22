"""Offline mediation: CDR files from softswitches, rated in one batch.

`rate_cdrs(tariff, text, "freeswitch")` reads a CSV of call detail records,
keeps every line it can bill, rates them all with one
`CompiledTariff.rate_batch` call and says, line by line, why the others were
refused. Nothing is stored: it answers "what did (or would) these calls cost
under this tariff", for reconciliation and for what-if re-rating of past
usage with another tariff.

Layouts (positions are 0-based; extra trailing fields are ignored, so the
longer templates shipped with each switch read the same way):

``freeswitch``
    mod_cdr_csv's default template: caller_id_name, caller_id_number,
    destination_number, context, start_stamp, answer_stamp, end_stamp,
    duration, billsec, hangup_cause, uuid, bleg_uuid, accountcode (the vanilla
    configuration's "example" template adds read_codec and write_codec). At
    least 13 fields.
``asterisk``
    cdr_csv's Master.csv: accountcode, src, dst, dcontext, clid, channel,
    dstchannel, lastapp, lastdata, start, answer, end, duration, billsec,
    disposition, amaflags, then uniqueid and userfield when cdr.conf logs
    them. At least 16 fields.
``generic``
    A header row naming the columns, in any order: ``to`` (or destination,
    dst, callee, number), ``start`` (or answer, at), ``duration`` (or billsec,
    seconds, units); optional ``id`` (call_id, uuid, uniqueid) and ``from``
    (caller, src). Other columns are ignored.

What is billed: ``billsec`` seconds from the answer time (FreeSWITCH and
Asterisk count billsec from answer). Without an answer time the billed part
is taken to end at the end time. Time stamps without an offset are local
time in `tz` (the tariff's time zone by default; FreeSWITCH and Asterisk
write the switch's local time unless told to write UTC).

Reject reasons: ``unparseable`` (not a record of the layout), ``bad_time``,
``bad_duration``, ``zero_duration`` (includes unanswered calls),
``negative_duration``, and the rating outcomes ``bad_number``, ``no_route``,
``out_of_range``, ``overflow``, ``no_fx``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ValidationError, csv_problem
from .money import format_money
from .rating.decks import parse_instant
from .rating.model import US

log = logging.getLogger("ocs.mediation")

FORMATS = ("freeswitch", "asterisk", "generic")


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the fields are in a positional (header-less) layout."""

    name: str
    min_fields: int
    call_id: int | None
    caller: int
    callee: int
    start: int
    answer: int
    end: int
    billsec: int
    disposition: int | None = None
    extra_call_id: int | None = None   # used when present and `call_id` is None


FREESWITCH = _Layout("FreeSWITCH mod_cdr_csv default template", 13, call_id=10, caller=1,
                     callee=2, start=4, answer=5, end=6, billsec=8)
ASTERISK = _Layout("Asterisk cdr_csv Master.csv", 16, call_id=None, caller=1, callee=2,
                   start=9, answer=10, end=11, billsec=13, disposition=14, extra_call_id=16)
_LAYOUTS = {"freeswitch": FREESWITCH, "asterisk": ASTERISK}

_GENERIC_ALIASES = {
    "to": "to", "destination": "to", "destination_number": "to", "dst": "to",
    "callee": "to", "called": "to", "number": "to",
    "start": "start", "answer": "start", "answer_time": "start", "answer_stamp": "start",
    "at": "start", "start_time": "start",
    "duration": "duration", "billsec": "duration", "seconds": "duration", "units": "duration",
    "id": "id", "call_id": "id", "uuid": "id", "uniqueid": "id",
    "from": "from", "caller": "from", "src": "from", "caller_id_number": "from",
}
_GENERIC_REQUIRED = ("to", "start", "duration")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_TEXT = 128   # longest call id / number carried into the answer


@dataclass(frozen=True, slots=True)
class Cdr:
    """One billable call read from a file: `duration` seconds from `start` (µs)."""

    line: int
    call_id: str
    caller: str
    callee: str
    start: int
    duration: int


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that was not rated: `reason` is one word (see the module docstring)."""

    line: int
    reason: str
    message: str
    call_id: str = ""
    callee: str = ""
    caller: str = ""


@dataclass(frozen=True, slots=True)
class RatedCall:
    """A rated call: `billed` units after increments and minimum, `cost` in micro-units
    of the result's currency, and the deck row that priced it."""

    line: int
    call_id: str
    caller: str
    callee: str
    start: int
    duration: int
    billed: int
    cost: int
    destination: str
    prefix: str
    deck: str
    deck_line: int


@dataclass
class Mediation:
    """The outcome of rating one file."""

    tariff: str
    revision: int
    service: str
    currency: str
    format: str
    time_zone: str
    rated: list[RatedCall] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def total_cost(self) -> int:
        return sum(c.cost for c in self.rated)

    def reasons(self) -> dict[str, int]:
        """How many lines were rejected for each reason, most frequent first."""
        return dict(Counter(r.reason for r in self.rejects).most_common())


# ----------------------------------------------------------------------------- parsing

def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {tz!r}") from None


def _records(text: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(first line of the record, fields, None) or (line, None, csv error) per record;
    blank lines are skipped."""
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text))
    last = 0
    while True:
        first = last + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last = reader.line_num if reader.line_num > last else first
            yield first, None, csv_problem(exc)
            continue
        last = reader.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        yield first, fields, None


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


def _time(text: str, zone) -> int | None:
    try:
        return parse_instant(text.strip(), zone)
    except (ValueError, OverflowError):
        return None


def _seconds(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _duration_reject(line: int, seconds: int | None, raw: str, call_id: str, callee: str,
                     caller: str, what: str) -> Reject | None:
    if seconds is None:
        return Reject(line, "bad_duration", f"{what} {_clip(raw)!r} is not a whole number of "
                      "seconds", call_id, callee, caller)
    if seconds < 0:
        return Reject(line, "negative_duration", f"{what} is negative ({seconds})", call_id,
                      callee, caller)
    return None


def _positional(text: str, layout: _Layout, zone) -> tuple[list[Cdr], list[Reject]]:
    cdrs: list[Cdr] = []
    rejects: list[Reject] = []
    first_record = True
    for line, fields, error in _records(text):
        if fields is None:
            rejects.append(Reject(line, "unparseable", f"not CSV: {error}"))
            continue
        header = first_record and fields[layout.billsec if len(fields) > layout.billsec
                                         else -1].strip().lower() in ("billsec", "duration")
        first_record = False
        if header:  # a header row someone added: not a call
            continue
        if len(fields) < layout.min_fields:
            rejects.append(Reject(line, "unparseable", f"expected at least {layout.min_fields} "
                                  f"fields ({layout.name}), got {len(fields)}"))
            continue
        call_id = ""
        if layout.call_id is not None:
            call_id = _clip(fields[layout.call_id])
        elif layout.extra_call_id is not None and len(fields) > layout.extra_call_id:
            call_id = _clip(fields[layout.extra_call_id])
        callee = _clip(fields[layout.callee])
        caller = _clip(fields[layout.caller])
        billsec = _seconds(fields[layout.billsec])
        bad = _duration_reject(line, billsec, fields[layout.billsec], call_id, callee, caller,
                               "billsec")
        if bad is not None:
            rejects.append(bad)
            continue
        if billsec == 0:
            state = (fields[layout.disposition].strip() if layout.disposition is not None
                     else "") or ("not answered" if not fields[layout.answer].strip()
                                  else "answered")
            rejects.append(Reject(line, "zero_duration", f"nothing to bill: billsec 0 ({state})",
                                  call_id, callee, caller))
            continue
        start = _billing_start(fields, layout, billsec, zone)
        if isinstance(start, str):
            rejects.append(Reject(line, "bad_time", start, call_id, callee, caller))
            continue
        cdrs.append(Cdr(line, call_id, caller, callee, start, billsec))
    return cdrs, rejects


def _billing_start(fields: list[str], layout: _Layout, billsec: int, zone) -> int | str:
    """When the billed part began (µs), or what is wrong with the time stamps."""
    answer = fields[layout.answer].strip()
    if answer:
        at = _time(answer, zone)
        return at if at is not None else f"answer time {_clip(answer)!r} is not a date-time"
    end = fields[layout.end].strip()
    if end:
        at = _time(end, zone)
        return at - billsec * US if at is not None else \
            f"end time {_clip(end)!r} is not a date-time"
    start = fields[layout.start].strip()
    at = _time(start, zone) if start else None
    return at if at is not None else f"no answer, end or start time ({_clip(start)!r})"


def _generic(text: str, zone) -> tuple[list[Cdr], list[Reject]]:
    records = _records(text)
    header: list[str] | None = None
    header_line = 0
    rejects: list[Reject] = []
    for line, fields, error in records:
        if fields is None:
            raise ValidationError(f"line {line}: the header row is not CSV: {error}")
        header, header_line = fields, line
        break
    if header is None:
        raise ValidationError("the file is empty: a generic CDR file starts with a header row "
                              "naming the columns to, start and duration")
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        canonical = _GENERIC_ALIASES.get(re.sub(r"\s+", "_", name.strip().lower()))
        if canonical is not None and canonical not in columns:
            columns[canonical] = i
    missing = [c for c in _GENERIC_REQUIRED if c not in columns]
    if missing:
        raise ValidationError(f"line {header_line}: the header row has no column "
                              f"{', '.join(missing)} (generic CDRs need to, start and "
                              "duration; see the aliases in the documentation)")
    width = max(columns.values()) + 1
    cdrs: list[Cdr] = []
    for line, fields, error in records:
        if fields is None:
            rejects.append(Reject(line, "unparseable", f"not CSV: {error}"))
            continue
        if len(fields) < width:
            rejects.append(Reject(line, "unparseable", f"expected at least {width} fields "
                                  f"(the header names {len(header)}), got {len(fields)}"))
            continue
        call_id = _clip(fields[columns["id"]]) if "id" in columns else ""
        caller = _clip(fields[columns["from"]]) if "from" in columns else ""
        callee = _clip(fields[columns["to"]])
        raw = fields[columns["duration"]]
        seconds = _seconds(raw)
        bad = _duration_reject(line, seconds, raw, call_id, callee, caller, "duration")
        if bad is not None:
            rejects.append(bad)
            continue
        if seconds == 0:
            rejects.append(Reject(line, "zero_duration", "nothing to bill: duration 0",
                                  call_id, callee, caller))
            continue
        start_text = fields[columns["start"]]
        start = _time(start_text, zone)
        if start is None:
            rejects.append(Reject(line, "bad_time", f"start {_clip(start_text)!r} is not an "
                                  "ISO 8601 date-time", call_id, callee, caller))
            continue
        cdrs.append(Cdr(line, call_id, caller, callee, start, seconds))
    return cdrs, rejects


def parse_cdrs(text: str, fmt: str, *, tz: str = "UTC") -> tuple[list[Cdr], list[Reject]]:
    """The billable calls of a CDR file and the lines refused, each with its reason.

    Raises `ValidationError` only when the file as a whole cannot be read in
    `fmt` (unknown format or time zone, a generic file without its header).
    """
    zone = _zone(tz)
    if fmt == "generic":
        return _generic(text, zone)
    layout = _LAYOUTS.get(fmt)
    if layout is None:
        raise ValidationError(f"unknown CDR format {fmt!r}: use {', '.join(FORMATS)}")
    return _positional(text, layout, zone)


# ----------------------------------------------------------------------------- rating

def rate_cdrs(tariff, text: str, fmt: str, *, service: str = "voice",
              currency: str | None = None, tz: str | None = None) -> Mediation:
    """Parse `text` as `fmt` and rate every billable call with `tariff` (a
    `CompiledTariff`) in one batch. Raises `RatingError` when the tariff cannot
    rate `service` at all or has no exchange rate to `currency`."""
    zone_name = tz or tariff.timezone
    cdrs, rejects = parse_cdrs(text, fmt, tz=zone_name)
    currency = currency or tariff.currency
    result = Mediation(tariff=tariff.name, revision=tariff.revision, service=service,
                       currency=currency, format=fmt, time_zone=zone_name)
    if cdrs or service not in tariff.services():
        # Rated even when empty so that an unknown service is an error, not an empty answer.
        batch = tariff.rate_batch(service, [c.callee for c in cdrs],
                                  array("q", (c.start for c in cdrs)),
                                  array("q", (c.duration for c in cdrs)), currency=currency)
        destinations: dict[int, tuple[str, str, str, int]] = {}
        for i, cdr in enumerate(cdrs):
            status = batch.status[i]
            if status:
                rejects.append(_rating_reject(tariff, cdr, batch.status_name(i), currency))
                continue
            row = batch.row[i]
            dest = destinations.get(row)
            if dest is None:
                dest = destinations[row] = _destination(tariff, service, cdr, currency)
            result.rated.append(RatedCall(cdr.line, cdr.call_id, cdr.caller, cdr.callee,
                                          cdr.start, cdr.duration, batch.billed[i],
                                          batch.cost[i], *dest))
    rejects.sort(key=lambda r: r.line)
    result.rejects = rejects
    log.info("rated %d %s CDRs with tariff %s (%s, %s): %d rejected %s", len(result.rated), fmt,
             tariff.name, service, currency, len(rejects), result.reasons() or "")
    return result


def _destination(tariff, service: str, cdr: Cdr, currency: str) -> tuple[str, str, str, int]:
    """(name, prefix, deck, line) of the deck row a batch matched. Looked up once per
    distinct row through the tariff's public binding, which matches the same row."""
    dest = tariff.price(service, start=cdr.start, to=cdr.callee, currency=currency).destination
    return dest.name, dest.prefix, dest.deck, dest.line


def _rating_reject(tariff, cdr: Cdr, reason: str, currency: str) -> Reject:
    when = iso_utc(cdr.start)
    messages = {
        "bad_number": f"{cdr.callee!r} is not a valid number (E.164: up to 15 digits after + "
                      "or the international / national prefix)",
        "no_route": f"tariff {tariff.name} has no rate for {cdr.callee} at {when}",
        "out_of_range": f"duration {cdr.duration} s or start {when} is out of range",
        "overflow": "the charge is beyond the largest amount",
        "no_fx": f"no exchange rate {tariff.currency}->{currency} in force at {when}",
    }
    return Reject(cdr.line, reason, messages.get(reason, reason), cdr.call_id, cdr.callee,
                  cdr.caller)


# ----------------------------------------------------------------------------- output

CSV_COLUMNS = ("line", "status", "call_id", "caller", "callee", "start", "duration", "billed",
               "cost", "currency", "destination", "prefix", "deck", "deck_line", "message")


def iso_utc(us: int) -> str:
    """µs since the epoch as ISO 8601 UTC to the second ("2026-11-25T18:00:00Z")."""
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond:06d}"
                                                   if moment.microsecond else "") + "Z"


def call_dict(c: RatedCall, currency: str) -> dict[str, Any]:
    """A rated call as the API shows it (money as a decimal string)."""
    return {"line": c.line, "call_id": c.call_id, "caller": c.caller, "callee": c.callee,
            "start": iso_utc(c.start), "duration": c.duration, "billed": c.billed,
            "cost": format_money(c.cost, currency), "destination": c.destination,
            "prefix": c.prefix, "deck": c.deck, "deck_line": c.deck_line}


def reject_dict(r: Reject) -> dict[str, Any]:
    return {"line": r.line, "reason": r.reason, "message": r.message, "call_id": r.call_id,
            "caller": r.caller, "callee": r.callee}


def write_csv(out: TextIO, rated: Iterable[dict[str, Any]], rejects: Iterable[dict[str, Any]],
              currency: str) -> int:
    """One CSV row per input line in line order, rated (`status` ok) and rejected
    (`status` the reason, `message` why), from the dicts of `call_dict` and
    `reject_dict` (or the API's JSON answer). Returns the number of rows."""
    rows = [dict(r, status="ok", currency=currency, message="") for r in rated]
    rows += [{"line": r["line"], "status": r["reason"], "call_id": r.get("call_id", ""),
              "caller": r.get("caller", ""), "callee": r.get("callee", ""),
              "message": r["message"]} for r in rejects]
    rows.sort(key=lambda r: r["line"])
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n",
                            extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


__all__ = ["Cdr", "CSV_COLUMNS", "FORMATS", "Mediation", "RatedCall", "Reject", "call_dict",
           "iso_utc", "parse_cdrs", "rate_cdrs", "reject_dict", "write_csv"]
