"""Rate decks: destination prefixes and their prices, from CSV or built in code.

A `Deck` is columnar (one `array` per column) so that a million-row deck costs
tens of megabytes rather than a Python object per row, and compiles without a
Python loop per row. `parse_deck_csv` validates every row before it returns:
either a complete deck or a `RateDeckError` listing every bad row by line and
column, so an import never stores half a deck.

CSV layout (a header row names the columns, in any order, case-insensitive):

    prefix,destination,price,connection_fee,min_duration,increment,next_increment,effective_from,effective_to,price_offpeak
    41,Switzerland,0.10,0,0,60,60,,,0.05
    4179,Switzerland mobile,0.30,0.05,30,30,6,2026-01-01,,

* `prefix` (required): 1-15 digits, no `+`.
* `price` (required): per minute for a voice deck (`unit="minute"`), per event
  for an SMS deck (`unit="event"`), as a decimal ("0.0123", at most 6 places).
* `price_<band>`: the price in that time band (`peak`, `offpeak`...); an empty
  cell, or no such column, means `price`.
* `connection_fee`, `min_duration` (units billed at least), `increment` and
  `next_increment` (60/60, 30/6, 1/1; `next_increment` defaults to
  `increment`, both to 1).
* `effective_from` / `effective_to`: ISO dates or date-times; the row applies in
  `[from, to)`; naive values are in the tariff's time zone (`tz`).

The same prefix may appear more than once only with effective windows that do
not overlap (a scheduled rate change).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import LineError, ValidationError, csv_problem
from ..money import format_money, parse_money
from .model import (_BAND, _NAME, MAX_DIGITS, MAX_INCREMENT, MAX_PRICE, OPEN_FROM, OPEN_TO,
                    US)

UNITS = ("minute", "event")
#: Largest minimum duration / increment a row may ask for.
MAX_MINIMUM = MAX_INCREMENT

_ALIASES = {
    "prefix": "prefix", "destination": "destination", "name": "destination",
    "description": "destination", "price": "price", "rate": "price",
    "connection_fee": "connection_fee", "setup_fee": "connection_fee",
    "connect_fee": "connection_fee", "min_duration": "min_duration",
    "minimum": "min_duration", "minimum_duration": "min_duration",
    "increment": "increment", "initial_increment": "increment",
    "next_increment": "next_increment", "subsequent_increment": "next_increment",
    "effective_from": "effective_from", "effective_to": "effective_to",
}
_REQUIRED = ("prefix", "price")


class RateDeckError(ValidationError):
    """A rate deck has bad rows; `errors` lists every one of them (`LineError`)."""

    def __init__(self, errors: list[LineError], source: str = "rate deck"):
        self.errors = list(errors)
        shown = "; ".join(str(e) for e in self.errors[:10])
        more = f"; and {len(self.errors) - 10} more" if len(self.errors) > 10 else ""
        super().__init__(f"{source}: {len(self.errors)} error(s): {shown}{more}")


@dataclass(frozen=True, slots=True)
class DeckRow:
    """One row of a deck, for code that builds or shows decks row by row."""

    prefix: str
    price: int
    destination: str = ""
    connection_fee: int = 0
    min_duration: int = 0
    increment: int = 1
    next_increment: int | None = None  # None: same as increment
    effective_from: int = OPEN_FROM
    effective_to: int = OPEN_TO
    band_prices: dict[str, int] = field(default_factory=dict)


def prefix_key(prefix: str) -> int:
    """The lookup key of a digit string: its value and its length (leading zeros count)."""
    return (int(prefix) << 4) | len(prefix)


def key_prefix(key: int) -> str:
    length = key & 15
    return f"{key >> 4:0{length}d}"


# Row layout of `Deck.table`: one int64 per field, `stride` fields per row.
COL_FROM, COL_TO, COL_FEE, COL_MIN, COL_INC1, COL_INC2, COL_PRICE, COL_KEY, COL_DEST = range(9)
FIXED_COLUMNS = 9  # band prices follow, one column per name in `Deck.bands`


class Deck:
    """Rows by destination prefix in one row-major int64 table.

    Row r occupies `table[r * stride : (r + 1) * stride]`: effective_from,
    effective_to, connection fee, minimum, increment, next increment, price,
    prefix key (see `prefix_key`), destination name index (into
    `destinations`), then one price per band named in `bands`. Row-major
    because rating reads whole rows: one or two cache lines per rated call,
    and the engines rate straight from this table without copying it.
    Columns are available as strided views (`keys`, `price`, ... `band_prices`).
    """

    __slots__ = ("name", "service", "unit", "priority", "effective_from", "effective_to",
                 "table", "stride", "bands", "destinations", "lines")

    def __init__(self, *, name: str, table: array, destinations: list[str],
                 bands: tuple[str, ...] = (), service: str = "voice", unit: str = "minute",
                 priority: int = 0, effective_from: int = OPEN_FROM,
                 effective_to: int = OPEN_TO, lines: array | None = None):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValidationError(f"deck name {name!r}: 1-64 letters, digits, _ . : -")
        if not isinstance(service, str) or not _NAME.fullmatch(service):
            raise ValidationError(f"deck service {service!r}: 1-64 letters, digits, _ . : -")
        if unit not in UNITS:
            raise ValidationError(f"deck unit must be minute or event, not {unit!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValidationError("deck priority must be an integer")
        if effective_from >= effective_to:
            raise ValidationError(f"deck {name}: effective_from must be before effective_to")
        bands = tuple(bands)
        for band in bands:
            if not _BAND.fullmatch(band):
                raise ValidationError(f"deck {name}: bad band name {band!r}")
        if len(set(bands)) != len(bands):
            raise ValidationError(f"deck {name}: a band appears twice")
        if not isinstance(table, array) or table.typecode != "q":
            table = array("q", table)
        self.name, self.service, self.unit, self.priority = name, service, unit, priority
        self.effective_from, self.effective_to = effective_from, effective_to
        self.table, self.stride, self.bands = table, FIXED_COLUMNS + len(bands), bands
        self.destinations = list(destinations)
        self.lines = lines
        if len(table) % self.stride or (lines is not None and len(lines) != len(self)):
            raise ValidationError(f"deck {name}: the table does not hold whole rows")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Whole-column range checks: a deck built from arrays must not carry
        values the engines refuse (they check again, row by row)."""
        if not len(self):
            return
        checks = [("price", COL_PRICE, 0, MAX_PRICE), ("fee", COL_FEE, 0, MAX_PRICE),
                  ("minimum", COL_MIN, 0, MAX_MINIMUM), ("increment", COL_INC1, 1, MAX_INCREMENT),
                  ("next_increment", COL_INC2, 1, MAX_INCREMENT),
                  ("dest", COL_DEST, 0, max(0, len(self.destinations) - 1))]
        checks += [(f"price_{b}", FIXED_COLUMNS + j, 0, MAX_PRICE)
                   for j, b in enumerate(self.bands)]
        for column, c, lo, hi in checks:
            values = self.column(c)
            if min(values) < lo or max(values) > hi:
                raise ValidationError(f"deck {self.name}: {column} values must be {lo}..{hi}")

    @classmethod
    def from_columns(cls, *, keys: array, price: array, destinations: list[str] | None = None,
                     dest: array | None = None, fee: array | None = None,
                     minimum: array | None = None, increment: array | None = None,
                     next_increment: array | None = None, valid_from: array | None = None,
                     valid_to: array | None = None, band_prices: dict[str, array] | None = None,
                     lines: array | None = None, **meta) -> "Deck":
        """A deck from one array per column (absent columns take their defaults)."""
        n = len(keys)
        bands = tuple(band_prices or ())
        stride = FIXED_COLUMNS + len(bands)
        table = array("q", bytes(8 * n * stride))

        def put(c: int, values, default: int) -> None:
            if values is None:
                values = array("q", [default]) * n
            elif not isinstance(values, array) or values.typecode != "q":
                values = array("q", values)
            if len(values) != n:
                raise ValidationError(f"deck {meta.get('name')}: columns have different "
                                      "lengths")
            table[c::stride] = values

        put(COL_FROM, valid_from, OPEN_FROM)
        put(COL_TO, valid_to, OPEN_TO)
        put(COL_FEE, fee, 0)
        put(COL_MIN, minimum, 0)
        put(COL_INC1, increment, 1)
        put(COL_INC2, next_increment if next_increment is not None else increment, 1)
        put(COL_PRICE, price, 0)
        put(COL_KEY, keys, 0)
        put(COL_DEST, dest, 0)
        for j, band in enumerate(bands):
            put(FIXED_COLUMNS + j, band_prices[band], 0)
        return cls(table=table, bands=bands, destinations=destinations or [""], lines=lines,
                   **meta)

    def column(self, c: int) -> memoryview:
        """A read-only strided view of column `c` (see the COL_* constants)."""
        return memoryview(self.table).toreadonly()[c::self.stride]

    keys = property(lambda self: self.column(COL_KEY))
    dest = property(lambda self: self.column(COL_DEST))
    price = property(lambda self: self.column(COL_PRICE))
    fee = property(lambda self: self.column(COL_FEE))
    minimum = property(lambda self: self.column(COL_MIN))
    increment = property(lambda self: self.column(COL_INC1))
    next_increment = property(lambda self: self.column(COL_INC2))
    valid_from = property(lambda self: self.column(COL_FROM))
    valid_to = property(lambda self: self.column(COL_TO))

    @property
    def band_prices(self) -> dict[str, memoryview]:
        return {b: self.column(FIXED_COLUMNS + j) for j, b in enumerate(self.bands)}

    def __len__(self) -> int:
        return len(self.table) // self.stride

    def __repr__(self) -> str:
        return (f"Deck({self.name!r}, service={self.service!r}, unit={self.unit!r}, "
                f"priority={self.priority}, rows={len(self)})")

    def value(self, row: int, c: int) -> int:
        return self.table[row * self.stride + c]

    def row(self, i: int) -> DeckRow:
        base = i * self.stride
        t = self.table
        return DeckRow(
            prefix=key_prefix(t[base + COL_KEY]), price=t[base + COL_PRICE],
            destination=self.destinations[t[base + COL_DEST]], connection_fee=t[base + COL_FEE],
            min_duration=t[base + COL_MIN], increment=t[base + COL_INC1],
            next_increment=t[base + COL_INC2], effective_from=t[base + COL_FROM],
            effective_to=t[base + COL_TO],
            band_prices={b: t[base + FIXED_COLUMNS + j] for j, b in enumerate(self.bands)
                         if t[base + FIXED_COLUMNS + j] != t[base + COL_PRICE]})

    def rows(self) -> Iterator[DeckRow]:
        return (self.row(i) for i in range(len(self)))

    def line_of(self, i: int) -> int:
        return self.lines[i] if self.lines is not None else i + 1

    def replace(self, **meta) -> "Deck":
        """The same rows under other deck settings (name, service, unit, priority, window)."""
        kw = {s: getattr(self, s) for s in self.__slots__ if s != "stride"}
        kw.update(meta)
        return Deck(**kw)

    @classmethod
    def from_rows(cls, rows: Iterable[DeckRow], *, name: str, service: str = "voice",
                  unit: str = "minute", priority: int = 0, effective_from: int = OPEN_FROM,
                  effective_to: int = OPEN_TO) -> "Deck":
        """A deck from `DeckRow`s, validated like a CSV import (rows count from 1)."""
        b = _Builder()
        for i, r in enumerate(rows, start=1):
            b.add(i, r.prefix, r.destination, r.price, r.connection_fee, r.min_duration,
                  r.increment, r.next_increment, r.effective_from, r.effective_to,
                  dict(r.band_prices))
        return b.finish(name=name, service=service, unit=unit, priority=priority,
                        effective_from=effective_from, effective_to=effective_to,
                        source=f"deck {name}")

    def to_csv(self) -> str:
        """The deck as CSV in the layout `parse_deck_csv` reads (times as UTC)."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["prefix", "destination", "price", "connection_fee", "min_duration",
                    "increment", "next_increment", "effective_from", "effective_to"]
                   + [f"price_{b}" for b in self.bands])
        for r in self.rows():
            w.writerow([r.prefix, r.destination, _money(r.price), _money(r.connection_fee),
                        r.min_duration, r.increment, r.next_increment,
                        _instant(r.effective_from, OPEN_FROM), _instant(r.effective_to, OPEN_TO)]
                       + [_money(r.band_prices[b]) if b in r.band_prices else ""
                          for b in self.bands])
        return out.getvalue()


def parse_deck_csv(text: str, *, name: str = "base", service: str = "voice",
                   unit: str = "minute", priority: int = 0, tz: str = "UTC",
                   effective_from: int = OPEN_FROM, effective_to: int = OPEN_TO) -> Deck:
    """Parse and validate a CSV rate deck (layout in the module docstring).

    Raises `RateDeckError` with every bad row (line-numbered, with the column)
    when anything is wrong; nothing is returned half-parsed.
    """
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {tz!r}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text))
    unreadable: list[LineError] = []  # where the CSV itself broke (reading stops there)
    rows = _read(reader, unreadable)
    errors: list[LineError] = []
    header = None
    for fields in rows:
        if fields and any(f.strip() for f in fields) and not fields[0].lstrip().startswith("#"):
            header = fields
            break
    if unreadable:
        raise RateDeckError(unreadable, f"deck {name}")
    if header is None:
        raise RateDeckError([LineError(1, None, "empty deck: no header row")], f"deck {name}")
    header_line = reader.line_num
    columns: dict[str, int] = {}
    bands: dict[str, int] = {}
    for idx, raw in enumerate(header):
        col = re.sub(r"\s+", "_", raw.strip().lower())
        if col.startswith("price_") and col not in _ALIASES:
            band = col[len("price_"):]
            if not _BAND.fullmatch(band):
                errors.append(LineError(header_line, raw, "bad band name in column"))
            elif band in bands:
                errors.append(LineError(header_line, raw, "column appears twice"))
            bands[band] = idx
            continue
        canonical = _ALIASES.get(col)
        if canonical is None:
            errors.append(LineError(header_line, raw or f"#{idx + 1}",
                                    "unknown column (expected prefix, destination, price, "
                                    "connection_fee, min_duration, increment, next_increment, "
                                    "effective_from, effective_to, price_<band>)"))
        elif canonical in columns:
            errors.append(LineError(header_line, raw, "column appears twice"))
        else:
            columns[canonical] = idx
    for col in _REQUIRED:
        if col not in columns:
            errors.append(LineError(header_line, col, "missing column"))
    if errors:
        raise RateDeckError(errors, f"deck {name}")

    width = len(header)
    b = _Builder()

    def cell(fields: list[str], col: str) -> str:
        idx = columns.get(col)
        return fields[idx].strip() if idx is not None else ""

    for fields in rows:
        line = reader.line_num
        if not fields or not any(f.strip() for f in fields) or fields[0].lstrip().startswith("#"):
            continue
        if len(fields) != width:
            b.errors.append(LineError(line, None, f"expected {width} fields, got {len(fields)}"))
            continue
        row_errors = len(b.errors)
        price = _money_cell(b.errors, line, "price", cell(fields, "price"), required=True)
        fee = _money_cell(b.errors, line, "connection_fee", cell(fields, "connection_fee"))
        minimum = _int_cell(b.errors, line, "min_duration", cell(fields, "min_duration"), 0)
        inc = _int_cell(b.errors, line, "increment", cell(fields, "increment"), 1)
        nxt_text = cell(fields, "next_increment")
        nxt = _int_cell(b.errors, line, "next_increment", nxt_text, 1) if nxt_text else None
        vfrom = _instant_cell(b.errors, line, "effective_from", cell(fields, "effective_from"),
                              zone, OPEN_FROM)
        vto = _instant_cell(b.errors, line, "effective_to", cell(fields, "effective_to"), zone,
                            OPEN_TO)
        band_prices = {}
        for band, idx in bands.items():
            text = fields[idx].strip()
            if text:
                band_prices[band] = _money_cell(b.errors, line, header[idx].strip(), text)
        if len(b.errors) > row_errors:
            # Still check the prefix so one pass reports everything about the row.
            b.check_prefix(line, cell(fields, "prefix"))
            continue
        b.add(line, cell(fields, "prefix"), cell(fields, "destination"), price, fee, minimum,
              inc, nxt, vfrom, vto, band_prices)
    b.errors.extend(unreadable)
    return b.finish(name=name, service=service, unit=unit, priority=priority,
                    effective_from=effective_from, effective_to=effective_to,
                    source=f"deck {name}", columns_bands=list(bands))


def _read(reader, unreadable: list[LineError]):
    """The reader's rows until the CSV itself breaks (a stray carriage return in an
    unquoted field, a NUL): that is noted in `unreadable`, not raised."""
    try:
        yield from reader
    except csv.Error as exc:
        unreadable.append(LineError(max(reader.line_num, 1), None,
                                    f"malformed CSV: {csv_problem(exc)} (nothing after this "
                                    "line was read)"))


class _Builder:
    """Validates rows one by one and collects them into columns."""

    def __init__(self):
        self.errors: list[LineError] = []
        self.keys = array("q")
        self.dest = array("q")
        self.price, self.fee, self.minimum = array("q"), array("q"), array("q")
        self.increment, self.next_increment = array("q"), array("q")
        self.valid_from, self.valid_to = array("q"), array("q")
        self.lines = array("q")
        self.band_cells: list[dict[str, int]] = []
        self.names: dict[str, int] = {}
        self.seen: dict[int, list[tuple[int, int, int]]] = {}  # key -> (from, to, line)

    def check_prefix(self, line: int, prefix: str) -> int | None:
        if not prefix:
            self.errors.append(LineError(line, "prefix", "empty prefix"))
        elif not (prefix.isascii() and prefix.isdigit()):
            self.errors.append(LineError(line, "prefix", f"prefix {prefix!r} is not all digits"))
        elif len(prefix) > MAX_DIGITS:
            self.errors.append(LineError(line, "prefix", f"prefix {prefix!r} is longer than "
                                         f"{MAX_DIGITS} digits"))
        else:
            return prefix_key(prefix)
        return None

    def add(self, line, prefix, destination, price, fee, minimum, inc, nxt, vfrom, vto,
            band_prices) -> None:
        n_errors = len(self.errors)
        key = self.check_prefix(line, str(prefix))
        for col, value in (("price", price), ("connection_fee", fee)):
            if not isinstance(value, int) or value < 0:
                self.errors.append(LineError(line, col, "must not be negative"))
            elif value > MAX_PRICE:
                self.errors.append(LineError(line, col, f"above the largest price "
                                             f"{_money(MAX_PRICE)}"))
        for band, value in band_prices.items():
            if not isinstance(value, int) or not 0 <= value <= MAX_PRICE:
                self.errors.append(LineError(line, f"price_{band}",
                                             f"must be 0..{_money(MAX_PRICE)}"))
        if not isinstance(minimum, int) or not 0 <= minimum <= MAX_MINIMUM:
            self.errors.append(LineError(line, "min_duration", f"must be 0..{MAX_MINIMUM}"))
        checks = [("increment", inc)]
        if nxt is None:
            nxt = inc  # a defaulted next increment is only as wrong as the first one
        else:
            checks.append(("next_increment", nxt))
        for col, value in checks:
            if not isinstance(value, int) or not 1 <= value <= MAX_INCREMENT:
                self.errors.append(LineError(line, col, f"must be 1..{MAX_INCREMENT} "
                                             f"(got {value})"))
        if vfrom >= vto:
            self.errors.append(LineError(line, "effective_to",
                                         "must be after effective_from"))
        if key is not None and len(self.errors) == n_errors:
            for other_from, other_to, other_line in self.seen.get(key, ()):
                if vfrom < other_to and other_from < vto:
                    self.errors.append(LineError(
                        line, "prefix", f"duplicate prefix {prefix} (line {other_line}) with "
                        "overlapping effective dates"))
                    break
        if len(self.errors) > n_errors:
            return
        self.seen.setdefault(key, []).append((vfrom, vto, line))
        self.keys.append(key)
        destination = destination or ""
        idx = self.names.get(destination)
        if idx is None:
            idx = self.names[destination] = len(self.names)
        self.dest.append(idx)
        self.price.append(price)
        self.fee.append(fee)
        self.minimum.append(minimum)
        self.increment.append(inc)
        self.next_increment.append(nxt)
        self.valid_from.append(vfrom)
        self.valid_to.append(vto)
        self.lines.append(line)
        self.band_cells.append(band_prices)

    def finish(self, *, source: str, columns_bands: list[str] | None = None, **meta) -> Deck:
        if not self.errors and not self.keys:
            self.errors.append(LineError(1, None, "the deck has no rows"))
        if self.errors:
            raise RateDeckError(self.errors, source)
        bands = list(columns_bands or ())
        for cells in self.band_cells:
            bands.extend(b for b in cells if b not in bands)
        band_prices = {}
        for band in bands:
            col = array("q", self.price)
            for i, cells in enumerate(self.band_cells):
                if band in cells:
                    col[i] = cells[band]
            band_prices[band] = col
        return Deck.from_columns(
            keys=self.keys, dest=self.dest, destinations=list(self.names), price=self.price,
            fee=self.fee, minimum=self.minimum, increment=self.increment,
            next_increment=self.next_increment, valid_from=self.valid_from,
            valid_to=self.valid_to, band_prices=band_prices, lines=self.lines, **meta)


def _money_cell(errors, line, column, text, *, required=False):
    if not text:
        if required:
            errors.append(LineError(line, column, "missing value"))
        return 0
    try:
        value = parse_money(text)
    except ValidationError as exc:
        errors.append(LineError(line, column, str(exc)))
        return 0
    if value < 0:
        errors.append(LineError(line, column, f"must not be negative (got {text})"))
    elif value > MAX_PRICE:
        errors.append(LineError(line, column, f"above the largest price {_money(MAX_PRICE)}"))
    return value


def _int_cell(errors, line, column, text, default):
    if not text:
        return default
    try:
        return int(text, 10)
    except ValueError:
        errors.append(LineError(line, column, f"not a whole number: {text!r}"))
        return default


def _instant_cell(errors, line, column, text, zone, default):
    if not text:
        return default
    try:
        return parse_instant(text, zone)
    except ValueError:
        errors.append(LineError(line, column, f"not a date (YYYY-MM-DD or ISO 8601 date-time): "
                                f"{text!r}"))
        return default


def parse_instant(text: str, zone: _dt.tzinfo) -> int:
    """An ISO date or date-time as microseconds since the epoch; naive values are in `zone`."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        moment = _dt.datetime.combine(_dt.date.fromisoformat(text), _dt.time())
    else:
        moment = _dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    delta = moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def _money(micro: int) -> str:
    return format_money(micro, None)


def _instant(us: int, open_value: int) -> str:
    if us == open_value:
        return ""
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=us)
    return moment.isoformat().replace("+00:00", "Z")
