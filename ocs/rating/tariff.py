"""The compiled tariff: `rate`, `max_usage`, `rate_batch` and the `Price` it lends
the balance engine.

Every charge is a difference of cumulative charges: rating `units` after
`already` units of the same call, session or period costs
C(already + units) - C(already), where C applies increments, minimum,
connection fee, tiers, conversion and money rounding to the cumulative usage.
Interim reports of cumulative counters are therefore never rounded twice, and
tiers apply across requests when the caller passes what the period used so far.
"""

from __future__ import annotations

import datetime as _dt
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

from ..errors import ValidationError
from ..model import Kind
from . import engine as _pure
from .compile import build_error, build_tables, check_exchange_rates, engine_class
from .decks import COL_DEST, key_prefix, parse_instant
from .model import FX_SCALE, USAGE_LIMIT, ExchangeRate, RatingError, TariffDefinition

START_MAX = _pure.START_MAX
STATUS_NAMES = _pure.STATUS_NAMES


@dataclass(frozen=True, slots=True)
class Destination:
    """The deck row a number matched."""

    deck: str
    prefix: str
    name: str
    row: int      # row index in the service's tables
    line: int     # source line of the row in its deck


@dataclass(frozen=True, slots=True)
class BandUse:
    """`seconds` (or units) billed in `band` at `price` micro-units per minute (or event)."""

    band: str
    seconds: int
    price: int


@dataclass(frozen=True, slots=True)
class TierUse:
    tier: int     # 0-based tier index
    units: int    # billed units that fell in this tier
    price: int    # micro-units per volume unit


@dataclass(frozen=True, slots=True)
class FxUsed:
    """The exchange rate a charge was converted with: 1 `source` = rate/scale `target`."""

    source: str
    target: str
    rate: int
    scale: int
    effective_from: int


@dataclass(frozen=True, slots=True)
class Charge:
    """What usage costs and how that was computed.

    `cost` is in `currency` (the account's); `tariff_cost` is the same charge
    in the tariff's currency before conversion (equal when no conversion).
    `rated_units` are the units billed after increments and minimum.
    """

    tariff: str
    service: str
    start: int
    units: int
    already: int
    rated_units: int
    cost: int
    currency: str
    tariff_cost: int
    tariff_currency: str
    destination: Destination | None = None
    bands: tuple[BandUse, ...] = ()
    tiers: tuple[TierUse, ...] = ()
    fx: FxUsed | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (rated CDR details, `ocsctl rate`, the API)."""
        d: dict[str, Any] = {
            "tariff": self.tariff, "service": self.service, "start": self.start,
            "units": self.units, "already": self.already, "rated_units": self.rated_units,
            "cost": self.cost, "currency": self.currency, "tariff_cost": self.tariff_cost,
            "tariff_currency": self.tariff_currency,
        }
        if self.destination is not None:
            dst = self.destination
            d["destination"] = {"deck": dst.deck, "prefix": dst.prefix, "name": dst.name,
                                "line": dst.line}
        if self.bands:
            d["bands"] = [{"band": b.band, "seconds": b.seconds, "price": b.price}
                          for b in self.bands]
        if self.tiers:
            d["tiers"] = [{"tier": t.tier, "units": t.units, "price": t.price}
                          for t in self.tiers]
        if self.fx is not None:
            d["fx"] = {"from": self.fx.source, "to": self.fx.target, "rate": self.fx.rate,
                       "scale": self.fx.scale, "effective_from": self.fx.effective_from}
        return d


@dataclass(frozen=True, slots=True)
class _Bound:
    """A service resolved for one start instant: engine indexes and the exchange rate."""

    service: str
    dest: bool
    index: int
    row: int                 # destination row, -1 for usage rates
    fx: int                  # 0: no conversion
    fx_used: FxUsed | None
    currency: str
    limit: int
    kind: Kind
    destination: Destination | None


class CompiledTariff:
    """An immutable, ready-to-rate tariff. Build it with `ocs.rating.compile`."""

    def __init__(self, definition: TariffDefinition, engine, tables, bands: list[str],
                 dest_index: dict[str, int], usage_index: dict[str, int],
                 fx: dict[str, list[ExchangeRate]]):
        self.definition = definition
        self.name = definition.name
        self.currency = definition.currency
        self.timezone = definition.timezone
        self.revision = definition.revision
        self.engine = engine
        self.implementation = engine.implementation
        self.bands = tuple(bands)
        self._tables = tables
        self._dest_index = dest_index
        self._usage_index = usage_index
        self._usage_rates = {r.service: r for r in definition.usage_rates}
        self._fx = fx
        self._fx_arrays = {c: (array("q", (r.effective_from for r in rates)),
                               array("q", (r.rate for r in rates))) for c, rates in fx.items()}

    def __repr__(self) -> str:
        return (f"CompiledTariff({self.name!r}, {self.currency}, services="
                f"{sorted(self.services())}, engine={self.implementation})")

    # ------------------------------------------------------------------ introspection
    def tier_scope(self, service: str) -> str:
        """"period" when `service`'s tiers count the billing period's usage, else "session"."""
        rate = self._usage_rates.get(service)
        return rate.tier_scope if rate is not None else "session"

    def services(self) -> dict[str, str]:
        """Service ids this tariff rates -> "seconds" (voice decks), "events" or "octets"."""
        out = {}
        for name, i in self._dest_index.items():
            out[name] = "seconds" if self._tables.dests[i].unit == "minute" else "events"
        for name, rate in self._usage_rates.items():
            out[name] = rate.kind.value
        return out

    def kind(self, service: str) -> Kind:
        """The kind of units `service` is rated in (for buckets)."""
        try:
            return Kind(self.services()[service])
        except KeyError:
            raise self._unknown(service) from None

    def instant(self, text: str) -> int:
        """An ISO date or date-time as µs since the epoch; without an offset it is
        read in the tariff's time zone (`ocsctl rate --at 2026-11-25T19:00`)."""
        try:
            return parse_instant(text, ZoneInfo(self.timezone))
        except ValueError:
            raise ValidationError(f"not a date or date-time: {text!r}") from None

    def normalise(self, number: str) -> str | None:
        """E.164 digits of a dialled number under this tariff's numbering rule."""
        return self.definition.numbering.normalise(number)

    def exchange_rate(self, currency: str, at: int) -> ExchangeRate | None:
        """The rate from the tariff currency to `currency` in force at `at`.

        None when no conversion is needed; RatingError when one is needed and
        none is in force.
        """
        if currency == self.currency:
            return None
        rates = self._fx.get(currency, [])
        i = bisect_right([r.effective_from for r in rates], at) - 1
        if i < 0:
            raise RatingError("no_fx", f"tariff {self.name}: no exchange rate {self.currency}->"
                              f"{currency} in force at {_iso(at)}")
        return rates[i]

    # ------------------------------------------------------------------ binding
    def _unknown(self, service: str) -> RatingError:
        return RatingError("unknown_service", f"tariff {self.name} does not rate service "
                           f"{service!r} (it rates {', '.join(sorted(self.services()))})")

    def _bind(self, service: str, start: int, to: str | None, currency: str | None) -> _Bound:
        if not isinstance(start, int) or not 0 <= start <= START_MAX:
            raise RatingError("out_of_range", f"start instant {start!r} out of range")
        currency = currency or self.currency
        rate = self.exchange_rate(currency, start)
        fx = rate.rate if rate is not None else 0
        fx_used = (FxUsed(self.currency, currency, rate.rate, FX_SCALE, rate.effective_from)
                   if rate is not None else None)
        if service in self._dest_index:
            i = self._dest_index[service]
            dest = self._tables.dests[i]
            if to is None:
                raise RatingError("bad_number", f"service {service} is rated by destination: "
                                  "give the number called")
            row = self.engine.lookup(i, to.encode("ascii", "replace"), start)
            if row == -_pure.BAD_NUMBER:
                raise RatingError("bad_number", f"{to!r} is not a valid number (E.164: up to "
                                  "15 digits after + / international / national prefix)")
            if row < 0:
                raise RatingError("no_route", f"tariff {self.name} has no rate for {to} "
                                  f"({service}) at {_iso(start)}")
            deck, j = dest.deck_row(row)
            match = Destination(deck=deck.name, prefix=key_prefix(dest.key(row)),
                                name=deck.destinations[deck.value(j, COL_DEST)], row=row,
                                line=deck.line_of(j))
            kind = Kind.SECONDS if dest.unit == "minute" else Kind.EVENTS
            return _Bound(service, True, i, row, fx, fx_used, currency, dest.limit, kind, match)
        if service in self._usage_index:
            rate_def = self._usage_rates[service]
            return _Bound(service, False, self._usage_index[service], -1, fx, fx_used, currency,
                          USAGE_LIMIT[rate_def.kind], rate_def.kind, None)
        raise self._unknown(service)

    def _total(self, b: _Bound, start: int, x: int, fx: int) -> int:
        try:
            if b.dest:
                return self.engine.dest_cost(b.index, b.row, start, x, fx)
            return self.engine.usage_cost(b.index, x, fx)
        except OverflowError:
            raise RatingError("overflow", f"the charge for {x} units of {b.service} is beyond "
                              "the largest amount") from None

    def _billed(self, b: _Bound, x: int) -> int:
        if b.dest:
            return self.engine.dest_billed(b.index, b.row, x)
        return self.engine.usage_billed(b.index, x)

    @staticmethod
    def _check_usage(b: _Bound, units: int, already: int) -> None:
        for name, value in (("units", units), ("already", already)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RatingError("out_of_range", f"{name} must be a non-negative integer")
        if already + units > b.limit:
            raise RatingError("out_of_range", f"{already + units} {b.kind.value} of "
                              f"{b.service} is beyond the {b.limit} one rating accepts")

    # ------------------------------------------------------------------ rating
    def rate(self, service: str, units: int, *, start: int, to: str | None = None,
             already: int = 0, currency: str | None = None) -> Charge:
        """The charge for `units` of `service` after `already` units of the same
        call/session/period, which started at `start` (µs), in `currency`
        (the tariff's by default). Raises `RatingError`."""
        b = self._bind(service, start, to, currency)
        self._check_usage(b, units, already)
        cost = self._total(b, start, already + units, b.fx) - self._total(b, start, already, b.fx)
        if b.fx:
            tariff_cost = (self._total(b, start, already + units, 0)
                           - self._total(b, start, already, 0))
        else:
            tariff_cost = cost
        lo, hi = self._billed(b, already), self._billed(b, already + units)
        bands: tuple[BandUse, ...] = ()
        tiers: tuple[TierUse, ...] = ()
        if b.dest:
            dest = self._tables.dests[b.index]
            bands = tuple(BandUse(self.bands[band], n, dest.price(b.row, band))
                          for band, n in self.engine.dest_pieces(b.index, b.row, start, lo,
                                                                 hi - lo))
        else:
            tiers = self._tier_uses(service, lo, hi)
        return Charge(tariff=self.name, service=service, start=start, units=units,
                      already=already, rated_units=hi - lo, cost=cost, currency=b.currency,
                      tariff_cost=tariff_cost, tariff_currency=self.currency,
                      destination=b.destination, bands=bands, tiers=tiers, fx=b.fx_used)

    def _tier_uses(self, service: str, lo: int, hi: int) -> tuple[TierUse, ...]:
        out, floor = [], 0
        for i, tier in enumerate(self._usage_rates[service].tiers):
            top = tier.upto if tier.upto is not None else hi
            part = max(0, min(hi, top) - max(lo, floor))
            if part:
                out.append(TierUse(i, part, tier.price))
            floor = top
        return tuple(out)

    def max_usage(self, money: int, service: str, *, start: int, to: str | None = None,
                  already: int = 0, currency: str | None = None,
                  limit: int | None = None) -> int:
        """The largest usage `money` pays for after `already` units (inverse rating):
        rate(result) <= money and one more unit would cost more, unless the
        result is `limit` (or the usage limit of the service)."""
        return self.price(service, start=start, to=to, already=already, currency=currency,
                          limit=limit).max_units(money)

    def price(self, service: str, *, start: int, to: str | None = None, already: int = 0,
              currency: str | None = None, limit: int | None = None) -> "TariffPrice":
        """A `Price` (ocs.pricing) for the balance engine, bound to this usage."""
        b = self._bind(service, start, to, currency)
        self._check_usage(b, 0, already)
        top = b.limit if limit is None else min(limit, b.limit)
        return TariffPrice(self, b, start, already, top)

    # ------------------------------------------------------------------ batch
    def rate_batch(self, service: str, numbers: "Sequence[str] | PackedNumbers",
                   starts: Sequence[int], durations: Sequence[int], *,
                   currency: str | None = None) -> "BatchResult":
        """Rate many whole calls (or SMS counts) of a destination service at once.

        `numbers` is a list of dialled numbers or a `PackedNumbers`; `starts`
        (µs) and `durations` are sequences of ints, ideally `array('q')` (no
        copy). Failed calls are marked in `status`, never raised.
        """
        if service not in self._dest_index:
            raise self._unknown(service)
        packed = numbers if isinstance(numbers, PackedNumbers) else pack_numbers(numbers)
        starts = _int64(starts)
        durations = _int64(durations)
        n = len(starts)
        if len(packed) != n or len(durations) != n:
            raise ValidationError(f"rate_batch: {len(packed)} numbers, {n} starts, "
                                  f"{len(durations)} durations")
        currency = currency or self.currency
        if currency == self.currency:
            fx_from, fx_rate = array("q"), array("q")
        else:
            fx_from, fx_rate = self._fx_arrays.get(currency, (array("q"), array("q")))
            if not fx_rate:
                raise RatingError("no_fx", f"tariff {self.name}: no exchange rate "
                                  f"{self.currency}->{currency}")
        result = BatchResult(self, service, currency, n)
        result.ok = self.engine.rate_batch(
            self._dest_index[service], packed.data, packed.offsets, starts, durations,
            fx_from, fx_rate, result.cost, result.billed, result.row, result.status)
        return result


class TariffPrice:
    """A `Price` (see ocs.pricing) over a compiled tariff, for the balance engine.

    Bound to one service (destination number, rating group or event id), the
    start instant of the call/session, and `already`: units charged before the
    session's own usage (e.g. what the billing period used before this session,
    so that data tiers apply across sessions). With `already` = a,

    * `cost(u, used=0)` = C(a + used + u) - C(a + used): the money for u more
      units after `used` units of this session (the balance engine passes the
      units it already charged, including those buckets paid);
    * `max_units(m, used=0)` is the largest u <= limit - a - used with
      cost(u, used) <= m.

    Cumulative usage is thus never rounded twice, whatever the pieces.
    """

    __slots__ = ("tariff", "bound", "start", "already", "limit")

    def __init__(self, tariff: CompiledTariff, bound: _Bound, start: int, already: int,
                 limit: int):
        self.tariff = tariff
        self.bound = bound
        self.start = start
        self.already = already
        self.limit = limit

    def __repr__(self) -> str:
        return (f"TariffPrice({self.tariff.name!r}, {self.bound.service!r}, start={self.start}, "
                f"already={self.already})")

    @property
    def kind(self) -> Kind:
        return self.bound.kind

    @property
    def tier_scope(self) -> str:
        return self.tariff.tier_scope(self.bound.service)

    def describe(self) -> dict[str, Any]:
        """How this usage is priced, for the session and its rated CDR: the tariff,
        the deck row of a destination, the exchange rate converting to the account's
        currency."""
        b = self.bound
        d: dict[str, Any] = {"tariff": self.tariff.name, "revision": self.tariff.revision,
                             "currency": b.currency}
        if b.destination is not None:
            dst = b.destination
            d["destination"] = {"deck": dst.deck, "prefix": dst.prefix, "name": dst.name,
                                "line": dst.line}
        if b.fx_used is not None:
            fx = b.fx_used
            d["fx"] = {"from": fx.source, "to": fx.target, "rate": fx.rate, "scale": fx.scale,
                       "effective_from": fx.effective_from}
        return d

    @property
    def service(self) -> str:
        return self.bound.service

    @property
    def destination(self) -> Destination | None:
        return self.bound.destination

    def cost(self, units: int, used: int = 0) -> int:
        b = self.bound
        base = self.already + used
        CompiledTariff._check_usage(b, units, base)
        return (self.tariff._total(b, self.start, base + units, b.fx)
                - self.tariff._total(b, self.start, base, b.fx))

    def max_units(self, money: int, used: int = 0) -> int:
        b, e = self.bound, self.tariff.engine
        base = self.already + used
        if used < 0 or base > b.limit:
            raise RatingError("out_of_range", f"{base} {b.kind.value} of {b.service} is "
                              f"beyond the {b.limit} one rating accepts")
        top = max(0, self.limit - base)
        if b.dest:
            return e.dest_max(b.index, b.row, self.start, base, money, b.fx, top)
        return e.usage_max(b.index, base, money, b.fx, top)

    def after(self, units: int) -> "TariffPrice":
        """The same price `units` later (`already` + units)."""
        return TariffPrice(self.tariff, self.bound, self.start, self.already + units, self.limit)


class PackedNumbers:
    """Dialled numbers packed for `rate_batch`: ASCII bytes and int64 offsets."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: bytes, offsets: array):
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data):
            raise ValidationError("packed numbers: offsets must run from 0 to len(data)")
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]:self.offsets[i + 1]].decode("ascii", "replace")


def pack_numbers(numbers: Iterable[str]) -> PackedNumbers:
    encoded = [n.encode("ascii", "replace") for n in numbers]
    offsets = array("q", [0])
    total = 0
    for e in encoded:
        total += len(e)
        offsets.append(total)
    return PackedNumbers(b"".join(encoded), offsets)


class BatchResult:
    """Per-call results of `rate_batch`, as int64 arrays (no object per call)."""

    def __init__(self, tariff: CompiledTariff, service: str, currency: str, n: int):
        self.tariff, self.service, self.currency = tariff, service, currency
        zero = bytes(8 * n)
        self.cost = array("q", zero)
        self.billed = array("q", zero)
        self.row = array("q", zero)
        self.status = array("q", zero)
        self.ok = 0

    def __len__(self) -> int:
        return len(self.cost)

    def status_name(self, i: int) -> str:
        return STATUS_NAMES[self.status[i]]

    def failures(self) -> list[tuple[int, str]]:
        """(index, reason) of every call that did not rate."""
        return [(i, STATUS_NAMES[s]) for i, s in enumerate(self.status) if s]


class TariffBook:
    """The tariffs in force, by name. A reload swaps the whole mapping in one
    assignment: readers never lock and never see half a reload."""

    def __init__(self, tariffs: Mapping[str, CompiledTariff] | None = None):
        self._tariffs: Mapping[str, CompiledTariff] = MappingProxyType(dict(tariffs or {}))

    def get(self, name: str) -> CompiledTariff:
        tariff = self._tariffs.get(name)
        if tariff is None:
            raise RatingError("unknown_tariff", f"no tariff named {name!r}")
        return tariff

    def names(self) -> list[str]:
        return sorted(self._tariffs)

    def __contains__(self, name: str) -> bool:
        return name in self._tariffs

    def __len__(self) -> int:
        return len(self._tariffs)

    def swap(self, tariffs: Mapping[str, CompiledTariff]) -> Mapping[str, CompiledTariff]:
        """Install a new set of tariffs; returns the previous one."""
        old, self._tariffs = self._tariffs, MappingProxyType(dict(tariffs))
        return old

    def put(self, tariff: CompiledTariff) -> None:
        """Install or replace one tariff (copy-on-write)."""
        new = dict(self._tariffs)
        new[tariff.name] = tariff
        self._tariffs = MappingProxyType(new)


def compile(definition: TariffDefinition, *, engine: str | None = None) -> CompiledTariff:
    """Validate `definition` and build a `CompiledTariff` with the active engine
    (or `engine="pure"` / `"compiled"`). Raises `ValidationError`."""
    cls = engine_class(engine)
    fx = check_exchange_rates(definition)
    tables, bands, dest_index, usage_index = build_tables(definition)
    try:
        built = cls(tables)
    except ValueError as exc:
        raise _locate(definition, tables, exc) from None
    return CompiledTariff(definition, built, tables, bands, dest_index, usage_index, fx)


def _locate(defn: TariffDefinition, tables, exc: ValueError) -> ValidationError:
    """An engine's build complaint (code, service, row, other) as a ValidationError."""
    args = tuple(exc.args) + (None, -1, -1, -1)
    code, svc, row, other = args[0], args[1], args[2], args[3]
    if isinstance(svc, int) and 0 <= svc < len(tables.dests):
        return build_error(defn, tables.dests[svc], ValueError(code, row, other))
    return ValidationError(f"tariff {defn.name}: inconsistent tables ({code})")


def _int64(values: Sequence[int]) -> array:
    if isinstance(values, array) and values.typecode == "q":
        return values
    return array("q", values)


def _iso(us: int) -> str:
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=us)
    return moment.isoformat().replace("+00:00", "Z")
