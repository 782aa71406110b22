"""Request bodies and query strings of /v1/tariffs, /v1/rate and /v1/rate-cdrs.

The tariff body is what `ocs.rating.TariffDefinition` holds, written the way
the rest of the API writes values: money as decimal strings in the tariff's
currency, instants as ISO 8601, exchange rates as decimal strings ("1.0823"
EUR per CHF). Band rules, holidays and usage rates keep the field names of
`TariffDefinition.settings_dict` (a band rule is `{"band", "days", "from",
"to"}`), so a definition reads the same in the store, the API and `ocsctl`.
Rules that span fields (bands named by decks exist, deck priorities differ,
tiers grow) are checked by compiling the tariff, which answers 422 naming
the problem.
"""

from __future__ import annotations

import datetime as _dt
import re
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, PlainValidator, StringConstraints, WithJsonSchema, \
    field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..model import MAX_USAGE
from ..rating.model import FX_SCALE, MAX_FX
from .schemas import Currency, Text, line
from .wire import Body, Instant, NonNegativeMoney, Query, int_in

# ---------------------------------------------------------------------------- field types

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
TariffName = Annotated[str, StringConstraints(pattern=_NAME, max_length=64)]
DeckName = Annotated[str, StringConstraints(pattern=_NAME, max_length=64)]
ServiceId = Annotated[str, StringConstraints(pattern=_NAME, max_length=64)]
BandName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,31}$",
                                            max_length=32)]
Digits = Annotated[str, StringConstraints(pattern=r"^[0-9]{0,4}$", max_length=4)]
_DAY = "(?:mon|tue|wed|thu|fri|sat|sun)"
Days = Annotated[str, StringConstraints(
    pattern=rf"^{_DAY}(?:-{_DAY})?(?:,{_DAY}(?:-{_DAY})?)*$", max_length=100),
    Field(description="Weekdays: names and ranges, e.g. \"mon-fri\" or \"sat,sun\".")]
Clock = Annotated[str, StringConstraints(
    pattern=r"^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9])?|24:00(?::00)?)$",
    max_length=8), Field(description="Local time of day HH:MM[:SS]; 24:00 is midnight at "
                                     "the end of the day.")]
Date = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                                        max_length=10)]
Priority = int_in(-1_000_000, 1_000_000)
Units = int_in(1, MAX_USAGE)
Revision = int_in(0, 2**62)

_FX_PATTERN = r"^(?:0|[1-9][0-9]{0,5})(?:\.[0-9]{1,9})?$"
_FX_RE = re.compile(_FX_PATTERN[1:-1])


def _zone(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise PydanticCustomError("time_zone", "a time zone is an IANA name such as "
                                  "\"Europe/Zurich\" or \"UTC\"")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError("time_zone", "unknown time zone {value} (use an IANA name "
                                  "such as \"Europe/Zurich\")",
                                  {"value": repr(value[:64])}) from None
    return value


TimeZone = Annotated[str, PlainValidator(_zone), WithJsonSchema({
    "type": "string", "minLength": 1, "maxLength": 64,
    "description": "IANA time zone name (tz database).", "examples": ["Europe/Zurich", "UTC"]})]


def _fx_rate(value: Any) -> int:
    if not isinstance(value, str) or not _FX_RE.fullmatch(value):
        raise PydanticCustomError("fx_rate", "an exchange rate is a decimal string such as "
                                  "\"1.0823\" (at most 9 decimals)")
    scaled = int(Decimal(value) * FX_SCALE)
    if not 0 < scaled <= MAX_FX:
        raise PydanticCustomError("fx_rate", "an exchange rate must be greater than zero and "
                                  "at most {limit}", {"limit": MAX_FX // FX_SCALE})
    return scaled


FxRate = Annotated[int, PlainValidator(_fx_rate), WithJsonSchema({
    "type": "string", "pattern": _FX_PATTERN,
    "description": "Target currency units per source unit, as a decimal string (at most 9 "
                   "decimals).", "examples": ["1.0823"]})]


def _at(value: Any) -> str:
    """An ISO 8601 date or date-time; read in the tariff's zone later when it has no offset."""
    if not isinstance(value, str) or len(value) > 64:
        raise PydanticCustomError("at_type", "`at` is an ISO 8601 date-time string such as "
                                  "\"2026-11-25T19:00\"")
    try:
        if len(value) == 10:
            _dt.date.fromisoformat(value)
        else:
            _dt.datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("at_format", "{value} is not an ISO 8601 date or date-time",
                                  {"value": repr(value[:40])}) from None
    return value


LocalInstant = Annotated[str, PlainValidator(_at), WithJsonSchema({
    "type": "string", "maxLength": 64,
    "description": "ISO 8601 date or date-time; without an offset it is local time in the "
                   "tariff's time zone.", "examples": ["2026-11-25T19:00", "2026-11-25T18:00Z"]})]


class _Aliased(Body):
    """A body with fields named like Python keywords ("from"), given by their alias."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


# ---------------------------------------------------------------------------- tariff parts

class RoundingIn(Body):
    """Money rounding of every charge: to `decimals` places with `mode`."""

    decimals: int_in(0, 6) = 6
    mode: Literal["up", "down", "half-up", "half-even"] = "up"


class NumberingIn(Body):
    """How dialled numbers become E.164 digits: a leading + or `international_prefix` is
    stripped; a leading `national_prefix` is replaced by `country_code`."""

    international_prefix: Digits = "00"
    national_prefix: Digits = ""
    country_code: Digits = ""


class BandRuleIn(_Aliased):
    """Local times on `days` from `from` to `to` (exclusive) belong to `band`; the first
    matching rule wins, other times are in the default band."""

    band: BandName
    days: Days = "mon-sun"
    from_: Clock = Field("00:00", alias="from")
    to: Clock = "24:00"


class HolidayIn(Body):
    """A local calendar day rated entirely in `band` (else the tariff's holiday band)."""

    day: Date
    band: BandName | None = None
    name: line(0, 200) = ""

    @field_validator("day")
    @classmethod
    def _real_day(cls, value: str) -> str:
        try:
            _dt.date.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("date", "{value} is not a calendar date",
                                      {"value": repr(value)}) from None
        return value


class TierIn(Body):
    """`price` per `unit` for cumulative usage up to `upto` units (the last tier has none)."""

    upto: Units | None = None
    price: NonNegativeMoney


class UsageRateIn(Body):
    """Data (octets) or events priced by service id / rating group, with tiers."""

    service: ServiceId
    kind: Literal["octets", "events"]
    unit: Units = Field(1, description="Volume the price is for, e.g. 1000000000 for a price "
                                       "per GB.")
    increment: Units = 1
    next_increment: Units | None = Field(None, description="Defaults to `increment`.")
    tiers: Annotated[list[TierIn], Field(min_length=1, max_length=100)]
    tier_scope: Literal["session", "period"] = Field(
        "session", description="What the tiers count: the session's usage, or the "
                               "subscriber's usage of the service in the billing period.")


class ExchangeRateIn(_Aliased):
    """From `effective_from` on, 1 `from` = `rate` `to`. Rates belong to the currency pair,
    not to the tariff: every tariff in `from` converts with them."""

    from_: Currency | None = Field(None, alias="from",
                                   description="Defaults to the tariff's currency.")
    to: Currency
    rate: FxRate
    effective_from: Instant | None = Field(None, description="Omitted: since always.")


class DeckIn(Body):
    """One rate deck. With `csv` its rows are replaced; without, the stored deck of that
    name keeps its rows and takes these settings."""

    name: DeckName
    service: ServiceId = "voice"
    unit: Literal["minute", "event"] = "minute"
    priority: Priority = 0
    effective_from: Instant | None = None
    effective_to: Instant | None = None
    csv: Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")] | None = Field(
        None, description="The rows as CSV, in the deck import layout (header row first).")


class TariffPut(Body):
    """A whole tariff. `decks` omitted: the stored decks are kept. `revision` given: the
    change is refused with 409 unless it is the stored revision (0: the tariff must not
    exist yet). Exchange rates given are added or updated; none is removed."""

    name: TariffName | None = Field(None, description="If given, the name in the path.")
    revision: Revision | None = None
    currency: Currency
    timezone: TimeZone = "UTC"
    rounding: RoundingIn = Field(default_factory=RoundingIn)
    numbering: NumberingIn = Field(default_factory=NumberingIn)
    bands: Annotated[list[BandRuleIn], Field(max_length=64)] = []
    default_band: BandName = "standard"
    holiday_band: BandName | None = None
    holidays: Annotated[list[HolidayIn], Field(max_length=1000)] = []
    usage_rates: Annotated[list[UsageRateIn], Field(max_length=1000)] = []
    exchange_rates: Annotated[list[ExchangeRateIn], Field(max_length=1000)] = []
    description: Text = ""
    decks: Annotated[list[DeckIn], Field(max_length=100)] | None = None


# ---------------------------------------------------------------------------- rating

class RateIn(Body):
    """Rate one call, SMS, data volume or event. Give `duration` (seconds) or `units`."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "oneOf": [{"required": ["duration"]}, {"required": ["units"]}]})

    tariff: TariffName
    service: ServiceId = "voice"
    to: Annotated[str, StringConstraints(min_length=1, max_length=64,
                                         pattern=r"^[^\x00-\x20\x7f]+$")] | None = Field(
        None, description="The number called, for services rated by destination.")
    duration: int_in(0, MAX_USAGE) | None = None
    units: int_in(0, MAX_USAGE) | None = None
    already: int_in(0, MAX_USAGE) = Field(0, description="Units of the same call, session "
                                                         "or period rated before these.")
    at: LocalInstant | None = Field(None, description="When it started; default now.")
    currency: Currency | None = Field(None, description="Currency of the answer; default the "
                                                        "tariff's.")

    @model_validator(mode="after")
    def _one_amount(self):
        if (self.duration is None) == (self.units is None):
            raise PydanticCustomError("amount", "give exactly one of duration or units")
        return self

    @property
    def amount(self) -> int:
        return self.duration if self.duration is not None else self.units


class DeckImportQuery(Query):
    """Settings of an imported deck; omitted ones keep the stored deck's (or the defaults:
    service voice, unit minute, priority 0)."""

    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000,
                          description="Higher wins where decks of a service overlap.")
    service: str | None = Field(None, pattern=_NAME, max_length=64)
    unit: Literal["minute", "event"] | None = Field(None, description="Price per minute (voice) or "
                                                                "per event (SMS).")


class RateCdrsQuery(Query):
    tariff: str = Field(pattern=_NAME, max_length=64, description="Tariff to rate with.")
    format: Literal["freeswitch", "asterisk", "generic"] = Field(
        "generic", description="freeswitch: mod_cdr_csv default template; asterisk: cdr_csv "
                               "Master.csv; generic: a header row naming to, start, "
                               "duration.")
    service: str = Field("voice", pattern=_NAME, max_length=64)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="Default: the tariff's.")
    tz: str | None = Field(None, max_length=64, description="Time zone of time stamps without an "
                                                     "offset; default the tariff's.")

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value):
        return None if value is None else _zone(value)


__all__ = ["BandRuleIn", "DeckIn", "DeckImportQuery", "ExchangeRateIn", "HolidayIn",
           "NumberingIn", "RateCdrsQuery", "RateIn", "RoundingIn", "TariffPut",
           "TierIn", "UsageRateIn"]
