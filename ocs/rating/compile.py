"""From a `TariffDefinition` to the integer tables both engines build from.

`compile(definition)` validates the definition as a whole (bands named by
decks exist, deck priorities differ within a service, services are not both a
destination service and a usage rate...), lays the decks of each destination
service side by side (without copying when a service has a single deck),
turns bands, holidays and the time zone into tables (`ocs.rating.clock`) and
hands everything to an engine, which builds its prefix index. The result is an
immutable `CompiledTariff`; a reload compiles a new one and swaps the
reference (`ocs.rating.TariffBook`), so rating never takes a lock.
"""

from __future__ import annotations

import importlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from ..errors import ValidationError
from ..model import Kind
from .clock import holiday_table, week_table, zone_table
from .decks import COL_FROM, COL_KEY, COL_PRICE, COL_TO, FIXED_COLUMNS, Deck, key_prefix
from .model import (MAX_BANDS, MAX_INCREMENT, MAX_PRICE, OPEN_FROM, OPEN_TO, USAGE_LIMIT,
                    ROUNDING_MODES, ExchangeRate, TariffDefinition)

ENGINES = ("pure", "compiled")


@dataclass
class DestTables:
    """One destination service: the rows of all its decks in one row-major int64
    table (the `Deck.table` layout, see ocs.rating.decks COL_*)."""

    service: str
    unit: str                   # "minute" | "event"
    per: int                    # 60 for a price per minute, 1 per event
    piecewise: bool             # rated second by second across band changes
    limit: int                  # largest cumulative usage
    max_price: int
    max_count: int
    rows: array                 # row-major table
    stride: int                 # int64 fields per row
    price_cols: list[int]       # column holding each band's price, in band order
    prio: array | None          # deck priority per row; None: one deck
    decks: list[Deck] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # first row of each deck

    def __len__(self) -> int:
        return len(self.rows) // self.stride

    def key(self, row: int) -> int:
        return self.rows[row * self.stride + COL_KEY]

    def price(self, row: int, band: int) -> int:
        return self.rows[row * self.stride + self.price_cols[band]]

    def deck_row(self, row: int) -> tuple[Deck, int]:
        j = bisect_right(self.offsets, row) - 1
        return self.decks[j], row - self.offsets[j]


@dataclass
class UsageTables:
    unit: array
    inc1: array
    inc2: array
    limit: array
    tier_first: array
    tier_count: array
    tier_upto: array
    tier_price: array


@dataclass
class Tables:
    quantum: int
    mode: int
    nbands: int
    tz_at: array
    tz_off: array
    week_start: array
    week_band: array
    hol_day: array
    hol_band: array
    intl: bytes
    natl: bytes
    cc: bytes
    dests: list[DestTables]
    usage: UsageTables


def engine_class(engine: str | None = None):
    """The engine to build with: the active one (`ocs.accel`), or "pure" / "compiled"."""
    if engine is None:
        from .. import accel
        return accel.rating.Engine
    if engine == "pure":
        from . import engine as pure
        return pure.Engine
    if engine == "compiled":
        return importlib.import_module("cext.rating").Engine
    raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")


def build_tables(defn: TariffDefinition) -> tuple[Tables, list[str], dict, dict]:
    """(tables, band names, destination services -> index, usage services -> index)."""
    bands = defn.band_names()
    if len(bands) > MAX_BANDS:
        raise ValidationError(f"tariff {defn.name}: at most {MAX_BANDS} bands")
    band_index = {b: i for i, b in enumerate(bands)}
    tz_at, tz_off = zone_table(defn.timezone)
    week_start, week_band = week_table(defn.bands, band_index, 0)
    hol_day, hol_band = holiday_table(defn.holidays, defn.holiday_band, band_index)

    by_service: dict[str, list[Deck]] = {}
    names = set()
    for deck in defn.decks:
        if deck.name in names:
            raise ValidationError(f"tariff {defn.name}: two decks named {deck.name}")
        names.add(deck.name)
        by_service.setdefault(deck.service, []).append(deck)
    usage_index: dict[str, int] = {}
    for rate in defn.usage_rates:
        if rate.service in usage_index:
            raise ValidationError(f"tariff {defn.name}: two usage rates for {rate.service}")
        if rate.service in by_service:
            raise ValidationError(f"tariff {defn.name}: service {rate.service} has both rate "
                                  "decks and a usage rate")
        usage_index[rate.service] = len(usage_index)

    dests, dest_index = [], {}
    for service, decks in by_service.items():
        dest_index[service] = len(dests)
        dests.append(_dest_tables(defn, service, decks, bands))

    u = UsageTables(*(array("q") for _ in range(8)))
    for rate in defn.usage_rates:
        u.unit.append(rate.unit)
        u.inc1.append(rate.increment)
        u.inc2.append(rate.next_increment)
        u.limit.append(USAGE_LIMIT[rate.kind])
        u.tier_first.append(len(u.tier_upto))
        u.tier_count.append(len(rate.tiers))
        for t in rate.tiers:
            u.tier_upto.append(OPEN_TO if t.upto is None else t.upto)
            u.tier_price.append(t.price)

    tables = Tables(
        quantum=defn.rounding.quantum, mode=ROUNDING_MODES.index(defn.rounding.mode),
        nbands=len(bands), tz_at=tz_at, tz_off=tz_off, week_start=week_start,
        week_band=week_band, hol_day=hol_day, hol_band=hol_band,
        intl=defn.numbering.international_prefix.encode(),
        natl=defn.numbering.national_prefix.encode(), cc=defn.numbering.country_code.encode(),
        dests=dests, usage=u)
    return tables, bands, dest_index, usage_index


def _dest_tables(defn: TariffDefinition, service: str, decks: list[Deck],
                 bands: list[str]) -> DestTables:
    units = {d.unit for d in decks}
    if len(units) > 1:
        raise ValidationError(f"tariff {defn.name}: decks of service {service} mix units "
                              f"({', '.join(sorted(units))})")
    unit = units.pop()
    by_priority: dict[int, Deck] = {}
    for deck in decks:
        if deck.priority in by_priority:
            raise ValidationError(f"tariff {defn.name}: decks {by_priority[deck.priority].name} "
                                  f"and {deck.name} of service {service} have the same "
                                  f"priority {deck.priority}")
        by_priority[deck.priority] = deck
        for band in deck.bands:
            if band not in bands:
                raise ValidationError(f"tariff {defn.name}: deck {deck.name} has prices for "
                                      f"band {band!r}, which the tariff does not define "
                                      f"(bands: {', '.join(bands)})")
    decks = sorted(decks, key=lambda d: -d.priority)
    kind = Kind.SECONDS if unit == "minute" else Kind.EVENTS
    common = dict(service=service, unit=unit, per=60 if unit == "minute" else 1,
                  piecewise=unit == "minute", limit=USAGE_LIMIT[kind], max_price=MAX_PRICE,
                  max_count=MAX_INCREMENT, decks=decks)
    only = decks[0]
    if len(decks) == 1 and only.effective_from == OPEN_FROM and only.effective_to == OPEN_TO:
        # The common case, and the one a million-row deck takes: rate from its table.
        cols = [FIXED_COLUMNS + only.bands.index(b) if b in only.bands else COL_PRICE
                for b in bands]
        return DestTables(rows=only.table, stride=only.stride, price_cols=cols, prio=None,
                          offsets=[0], **common)
    stride = FIXED_COLUMNS + len(bands)
    rows, prio, offsets = array("q"), array("q"), []
    for deck in decks:
        n = len(deck)
        offsets.append(len(prio))
        block = array("q", bytes(8 * n * stride))
        for c in range(FIXED_COLUMNS):
            block[c::stride] = _copy(deck.column(c))
        for b, band in enumerate(bands):
            src = FIXED_COLUMNS + deck.bands.index(band) if band in deck.bands else COL_PRICE
            block[FIXED_COLUMNS + b::stride] = _copy(deck.column(src))
        if deck.effective_from != OPEN_FROM or deck.effective_to != OPEN_TO:
            # A promotion window narrows every row of its deck.
            lo, hi = deck.effective_from, deck.effective_to
            for r in range(n):
                block[r * stride + COL_FROM] = max(block[r * stride + COL_FROM], lo)
                block[r * stride + COL_TO] = min(block[r * stride + COL_TO], hi)
        rows.extend(block)
        prio.extend(array("q", [deck.priority]) * n)
    return DestTables(rows=rows, stride=stride, price_cols=[FIXED_COLUMNS + b for b in
                                                            range(len(bands))],
                      prio=prio, offsets=offsets, **common)


def _copy(view: memoryview) -> array:
    out = array("q")
    out.frombytes(view.tobytes())
    return out


def build_error(defn: TariffDefinition, dest: DestTables, exc: ValueError) -> ValidationError:
    """An engine's build complaint ("overlap", row, other) as a message naming decks and lines."""
    code, row, other = (tuple(exc.args) + (None, -1, -1))[:3]

    def where(r: int) -> str:
        deck, i = dest.deck_row(r)
        return f"deck {deck.name} line {deck.line_of(i)} (prefix {key_prefix(dest.key(r))})"

    if code == "overlap":
        return ValidationError(f"tariff {defn.name}: {where(other)} overlaps {where(row)}: the "
                               "same prefix at the same priority needs disjoint effective dates")
    if code == "bad-window" and row >= 0:
        return ValidationError(f"tariff {defn.name}: {where(row)} has no effective time left "
                               "inside its deck's effective window")
    if code in ("bad-prefix", "bad-value") and row >= 0:
        return ValidationError(f"tariff {defn.name}: {where(row)}: value out of range "
                               f"({code})")
    return ValidationError(f"tariff {defn.name}: inconsistent tables ({code})")


def check_exchange_rates(defn: TariffDefinition) -> dict[str, list[ExchangeRate]]:
    """Rates by target currency, sorted by effective_from."""
    out: dict[str, list[ExchangeRate]] = {}
    for r in defn.exchange_rates:
        if r.from_currency != defn.currency:
            raise ValidationError(f"tariff {defn.name}: exchange rate {r.from_currency}->"
                                  f"{r.to_currency} does not start from the tariff currency "
                                  f"{defn.currency}")
        if r.to_currency == defn.currency:
            raise ValidationError(f"tariff {defn.name}: exchange rate {r.from_currency}->"
                                  f"{r.to_currency} converts to the same currency")
        out.setdefault(r.to_currency, []).append(r)
    for currency, rates in out.items():
        rates.sort(key=lambda r: r.effective_from)
        for a, b in zip(rates, rates[1:]):
            if a.effective_from == b.effective_from:
                raise ValidationError(f"tariff {defn.name}: two {defn.currency}->{currency} "
                                      "rates effective at the same instant")
    return out
