"""Tariff definitions: what an operator writes down and the store keeps.

A `TariffDefinition` is plain data: rate decks by destination (`Deck`, see
`ocs.rating.decks`), usage rates for data and events by service id, time bands
with a holiday calendar in the tariff's time zone, money rounding, number
normalisation and exchange rates. `ocs.rating.compile` turns it into a
`CompiledTariff` that rates; nothing here rates.

Units and limits (integers only, no floats anywhere on the rating path):

* money: micro-units (1.00 == 1_000_000); a price is per minute (voice decks),
  per event (SMS decks, event rates) or per `unit` of volume (data rates) and
  may not exceed `MAX_PRICE`;
* instants: microseconds since the epoch (UTC); effective windows are
  half-open `[from, to)` with `OPEN_FROM` / `OPEN_TO` meaning "no bound";
* exchange rates: an integer scaled by `FX_SCALE` (10**9): 1 EUR = 1.0823 USD is
  `ExchangeRate("EUR", "USD", 1_082_300_000, ...)`; the largest rate is
  `MAX_FX` (10**6 target units per source unit);
* usage: seconds, events or octets, up to `USAGE_LIMIT[kind]` per rating
  (cumulative usage of one call, session or period).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import OcsError, ValidationError
from ..model import Kind

if TYPE_CHECKING:  # pragma: no cover
    from .decks import Deck

US = 1_000_000                 # microseconds per second
CAP = 1 << 62                  # largest money result; beyond it rating reports an overflow
OPEN_FROM = -(1 << 62)         # "effective since always"
OPEN_TO = 1 << 62              # "effective forever"
FX_SCALE = 10 ** 9             # exchange rates are integers scaled by this
MAX_FX = 10 ** 15              # 1 source unit buys at most 1,000,000 target units
MAX_PRICE = 10 ** 12           # 1,000,000.00 per minute, event or volume unit
MAX_DIGITS = 15                # E.164: at most 15 digits
MAX_BANDS = 16
MAX_INCREMENT = 10 ** 7

#: Largest cumulative usage one rating accepts, per kind of unit. Voice is
#: rated piecewise across time bands, so its bound also bounds the work per call
#: (10**7 s is about 115 days).
USAGE_LIMIT = {Kind.SECONDS: 10 ** 7, Kind.EVENTS: 1 << 40, Kind.OCTETS: 1 << 56}

#: Money rounding modes, applied to the charge (`Rounding`).
ROUNDING_MODES = ("up", "down", "half-up", "half-even")

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")
_BAND = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")
_CURRENCY = re.compile(r"[A-Z]{3}")


class RatingError(OcsError):
    """Usage cannot be rated: no route, no exchange rate, usage out of range...

    `reason` is a short machine-readable word (`no_route`, `bad_number`,
    `no_fx`, `out_of_range`, `overflow`, `unknown_service`).
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Rounding:
    """Money rounding of a charge: to `decimals` places (0..6) with `mode`."""

    decimals: int = 6
    mode: str = "up"

    def __post_init__(self):
        if not isinstance(self.decimals, int) or not 0 <= self.decimals <= 6:
            raise ValidationError(f"rounding decimals must be 0..6, not {self.decimals!r}")
        if self.mode not in ROUNDING_MODES:
            raise ValidationError(f"rounding mode must be one of {', '.join(ROUNDING_MODES)}, "
                                  f"not {self.mode!r}")

    @property
    def quantum(self) -> int:
        """The charge is a multiple of this many micro-units."""
        return 10 ** (6 - self.decimals)


@dataclass(frozen=True, slots=True)
class Numbering:
    """How dialled numbers become E.164 digits before the prefix lookup.

    A leading `+` or `international_prefix` is stripped; otherwise a leading
    `national_prefix` is replaced by `country_code` (national prefix "0" and
    country code "41" turn 0791234567 into 41791234567); anything else is taken
    as already international.
    """

    international_prefix: str = "00"
    national_prefix: str = ""
    country_code: str = ""

    def __post_init__(self):
        for name in ("international_prefix", "national_prefix", "country_code"):
            value = getattr(self, name)
            if not isinstance(value, str) or (value and not value.isdigit()) or len(value) > 4:
                raise ValidationError(f"numbering {name} must be up to 4 digits, not {value!r}")
        if self.national_prefix and not self.country_code:
            raise ValidationError("numbering national_prefix needs a country_code")

    def normalise(self, number: str) -> str | None:
        """The E.164 digits of `number`, or None when it is not a valid number."""
        if number.startswith("+"):
            rest = number[1:]
        elif self.international_prefix and number.startswith(self.international_prefix):
            rest = number[len(self.international_prefix):]
        elif self.national_prefix and number.startswith(self.national_prefix):
            rest = self.country_code + number[len(self.national_prefix):]
        else:
            rest = number
        if not rest or len(rest) > MAX_DIGITS or not (rest.isascii() and rest.isdigit()):
            return None
        return rest


@dataclass(frozen=True, slots=True)
class BandRule:
    """Local times that belong to `band`: on `days` (0 = Monday) from `start` to
    `end` seconds after midnight (end exclusive, 86400 = midnight; a rule with
    start > end covers [start, midnight) and [midnight, end) of each listed day).
    The first matching rule wins; times no rule covers get the default band."""

    band: str
    days: tuple[int, ...]
    start: int
    end: int

    def __post_init__(self):
        if not isinstance(self.band, str) or not _BAND.fullmatch(self.band):
            raise ValidationError(f"band name {self.band!r}: use lowercase letters, digits, _ -")
        if not self.days or any(d not in range(7) for d in self.days):
            raise ValidationError(f"band {self.band}: days must be weekdays 0..6 (Monday = 0)")
        if not (0 <= self.start < 86400 and 0 < self.end <= 86400) or self.start == self.end:
            raise ValidationError(f"band {self.band}: times must be 00:00..24:00 and differ")

    def covers(self, weekday: int, second: int) -> bool:
        if weekday not in self.days:
            return False
        if self.start < self.end:
            return self.start <= second < self.end
        return second >= self.start or second < self.end

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BandRule":
        try:
            return cls(band=d["band"], days=parse_days(d.get("days", "mon-sun")),
                       start=parse_clock(d.get("from", "00:00")),
                       end=parse_clock(d.get("to", "24:00")))
        except KeyError as exc:
            raise ValidationError(f"band rule needs {exc.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"band": self.band, "days": ",".join(DAY_NAMES[d] for d in self.days),
                "from": format_clock(self.start), "to": format_clock(self.end)}


@dataclass(frozen=True, slots=True)
class Holiday:
    """A local calendar day rated entirely in `band` (the tariff's holiday band when None)."""

    day: _dt.date
    band: str | None = None
    name: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Holiday":
        try:
            day = _dt.date.fromisoformat(str(d["day"]))
        except (KeyError, ValueError):
            raise ValidationError(f"holiday needs a day as YYYY-MM-DD, got {d.get('day')!r}") \
                from None
        return cls(day=day, band=d.get("band"), name=d.get("name", ""))

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "band": self.band, "name": self.name}


@dataclass(frozen=True, slots=True)
class Tier:
    """`price` micro-units per volume unit for cumulative usage below `upto` units
    (and above the previous tier's `upto`); the last tier has `upto=None`."""

    upto: int | None
    price: int


@dataclass(frozen=True, slots=True)
class UsageRate:
    """Data (octets) or events priced by service id / rating group, with tiers.

    Cumulative usage is rounded up to the increments (`increment` first, then
    `next_increment`), then each tier prices the part of it that falls inside
    the tier, at `price` per `unit` units (e.g. unit=10**9 for a price per GB).
    `tier_scope` says what "cumulative" counts: the session's usage
    ("session") or the subscriber's usage of the service in the billing period
    ("period": the first 10 GB of the month at one price, across sessions).
    """

    service: str
    kind: Kind
    tiers: tuple[Tier, ...]
    unit: int = 1
    increment: int = 1
    next_increment: int = 1
    tier_scope: str = "session"

    def __post_init__(self):
        kind = Kind(self.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "tiers", tuple(self.tiers))
        where = f"usage rate {self.service!r}"
        if not isinstance(self.service, str) or not _NAME.fullmatch(self.service):
            raise ValidationError(f"{where}: service ids are 1-64 letters, digits, _ . : -")
        if kind not in (Kind.OCTETS, Kind.EVENTS):
            raise ValidationError(f"{where}: kind must be octets or events")
        if not self.tiers:
            raise ValidationError(f"{where}: needs at least one tier")
        if self.tier_scope not in ("session", "period"):
            raise ValidationError(f"{where}: tier_scope must be session or period")
        for name in ("unit", "increment", "next_increment"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= USAGE_LIMIT[kind]:
                raise ValidationError(f"{where}: {name} must be a positive integer")
        previous = 0
        for i, t in enumerate(self.tiers):
            last = i == len(self.tiers) - 1
            if not isinstance(t.price, int) or not 0 <= t.price <= MAX_PRICE:
                raise ValidationError(f"{where}: tier {i + 1} price must be 0..{MAX_PRICE}")
            if last and t.upto is not None:
                raise ValidationError(f"{where}: the last tier must be open (upto = none)")
            if not last and (not isinstance(t.upto, int) or t.upto <= previous):
                raise ValidationError(f"{where}: tier {i + 1} upto must grow past {previous}")
            previous = t.upto or previous

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UsageRate":
        try:
            tiers = tuple(Tier(upto=t.get("upto"), price=int(t["price"])) for t in d["tiers"])
            return cls(service=d["service"], kind=Kind(d["kind"]), tiers=tiers,
                       unit=int(d.get("unit", 1)), increment=int(d.get("increment", 1)),
                       next_increment=int(d.get("next_increment", d.get("increment", 1))),
                       tier_scope=d.get("tier_scope", "session"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"bad usage rate {d!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "kind": self.kind.value, "unit": self.unit,
                "increment": self.increment, "next_increment": self.next_increment,
                "tier_scope": self.tier_scope,
                "tiers": [{"upto": t.upto, "price": t.price} for t in self.tiers]}


@dataclass(frozen=True, slots=True)
class ExchangeRate:
    """From `effective_from` on, 1 `from_currency` = rate / FX_SCALE `to_currency`."""

    from_currency: str
    to_currency: str
    rate: int
    effective_from: int = OPEN_FROM

    def __post_init__(self):
        for c in (self.from_currency, self.to_currency):
            if not isinstance(c, str) or not _CURRENCY.fullmatch(c):
                raise ValidationError(f"currency must be 3 capital letters, not {c!r}")
        if not isinstance(self.rate, int) or not 0 < self.rate <= MAX_FX:
            raise ValidationError(f"exchange rate {self.from_currency}->{self.to_currency} "
                                  f"must be 1..{MAX_FX} (scaled by {FX_SCALE})")


@dataclass(frozen=True)
class TariffDefinition:
    """Everything one tariff rates with. See the module docstring for units."""

    name: str
    currency: str
    timezone: str = "UTC"
    rounding: Rounding = field(default_factory=Rounding)
    numbering: Numbering = field(default_factory=Numbering)
    bands: tuple[BandRule, ...] = ()
    default_band: str = "standard"
    holiday_band: str | None = None
    holidays: tuple[Holiday, ...] = ()
    decks: tuple["Deck", ...] = ()
    usage_rates: tuple[UsageRate, ...] = ()
    exchange_rates: tuple[ExchangeRate, ...] = ()
    description: str = ""
    revision: int = 0

    def __post_init__(self):
        for name in ("bands", "holidays", "decks", "usage_rates", "exchange_rates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValidationError(f"tariff name {self.name!r}: 1-64 letters, digits, _ . : -")
        if not isinstance(self.currency, str) or not _CURRENCY.fullmatch(self.currency):
            raise ValidationError(f"tariff currency must be 3 capital letters, "
                                  f"not {self.currency!r}")
        if not _BAND.fullmatch(self.default_band):
            raise ValidationError(f"default band {self.default_band!r}: use lowercase letters, "
                                  "digits, _ -")

    def band_names(self) -> list[str]:
        """Bands in index order: the default band first, then in order of appearance."""
        names = [self.default_band]
        for rule in self.bands:
            if rule.band not in names:
                names.append(rule.band)
        for band in [self.holiday_band] + [h.band for h in self.holidays]:
            if band is not None and band not in names:
                names.append(band)
        return names

    def settings_dict(self) -> dict[str, Any]:
        """The scalar settings, bands and holidays as JSON-able data (no decks)."""
        return {
            "name": self.name, "currency": self.currency, "timezone": self.timezone,
            "rounding": {"decimals": self.rounding.decimals, "mode": self.rounding.mode},
            "numbering": {"international_prefix": self.numbering.international_prefix,
                          "national_prefix": self.numbering.national_prefix,
                          "country_code": self.numbering.country_code},
            "bands": [r.to_dict() for r in self.bands], "default_band": self.default_band,
            "holiday_band": self.holiday_band,
            "holidays": [h.to_dict() for h in self.holidays],
            "usage_rates": [u.to_dict() for u in self.usage_rates],
            "description": self.description,
        }

    @classmethod
    def from_settings(cls, d: Mapping[str, Any], *, decks=(), exchange_rates=(),
                      revision: int = 0) -> "TariffDefinition":
        """The inverse of `settings_dict` (also the shape `ocsctl` and the API accept)."""
        try:
            return cls(
                name=d["name"], currency=str(d["currency"]).upper(),
                timezone=d.get("timezone", "UTC"),
                rounding=Rounding(**d.get("rounding", {})),
                numbering=Numbering(**d.get("numbering", {})),
                bands=tuple(BandRule.from_dict(b) for b in d.get("bands", ())),
                default_band=d.get("default_band", "standard"),
                holiday_band=d.get("holiday_band"),
                holidays=tuple(Holiday.from_dict(h) for h in d.get("holidays", ())),
                usage_rates=tuple(UsageRate.from_dict(u) for u in d.get("usage_rates", ())),
                description=d.get("description", ""),
                decks=tuple(decks), exchange_rates=tuple(exchange_rates), revision=revision)
        except KeyError as exc:
            raise ValidationError(f"tariff definition needs {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValidationError(f"bad tariff definition: {exc}") from None


def parse_days(spec: str | list | tuple) -> tuple[int, ...]:
    """"mon-fri", "sat,sun", ["mon", "wed"] or weekday numbers -> sorted weekday numbers."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    days: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if item not in range(7):
                raise ValidationError(f"weekday {item} is not 0..6")
            days.add(item)
            continue
        text = str(item).strip().lower()
        lo, _, hi = text.partition("-")
        try:
            a = DAY_NAMES.index(lo[:3])
            b = DAY_NAMES.index(hi[:3]) if hi else a
        except ValueError:
            raise ValidationError(f"unknown weekday in {spec!r}: use mon..sun") from None
        days.update(range(a, b + 1) if a <= b else list(range(a, 7)) + list(range(0, b + 1)))
    if not days:
        raise ValidationError(f"no weekdays in {spec!r}")
    return tuple(sorted(days))


def parse_clock(text: str) -> int:
    """"HH:MM" or "HH:MM:SS" (24:00 allowed) -> seconds after midnight."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", str(text).strip())
    if not m:
        raise ValidationError(f"time of day {text!r}: use HH:MM")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    value = h * 3600 + mi * 60 + s
    if mi > 59 or s > 59 or value > 86400:
        raise ValidationError(f"time of day {text!r} is out of range")
    return value


def format_clock(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")
