"""What /v1/tariffs, /v1/rate and /v1/rate-cdrs answer, and the functions that fill it.

A tariff is shown as its definition in the very shape PUT accepts
(`TariffDetail.definition`), so `GET`, edit, `PUT` round-trips; decks appear
as summaries (their rows are imported as CSV, never shown in JSON). Money is a
decimal string: prices and costs in the tariff's currency, a rated charge in
the currency it was asked in.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import ConfigDict, Field

from ..rating.model import FX_SCALE, OPEN_FROM, OPEN_TO
from .wire import Out, iso, money


class _Aliased(Out):
    """Fields named like Python keywords ("from") are written under their alias."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def model_dump_json(self, **kw) -> str:  # the API renders with model_dump_json()
        kw.setdefault("by_alias", True)
        return super().model_dump_json(**kw)

    def model_dump(self, **kw) -> dict[str, Any]:
        kw.setdefault("by_alias", True)
        return super().model_dump(**kw)


# ---------------------------------------------------------------------------- definitions

class RoundingView(Out):
    decimals: int
    mode: Literal["up", "down", "half-up", "half-even"]


class NumberingView(Out):
    international_prefix: str
    national_prefix: str
    country_code: str


class BandRuleView(_Aliased):
    band: str
    days: str
    from_: str = Field(alias="from")
    to: str


class HolidayView(Out):
    day: str
    band: str | None
    name: str


class TierView(Out):
    upto: int | None
    price: str


class UsageRateView(Out):
    service: str
    kind: Literal["octets", "events"]
    unit: int
    increment: int
    next_increment: int
    tiers: list[TierView]
    tier_scope: Literal["session", "period"]


class ExchangeRateView(_Aliased):
    from_: str = Field(alias="from")
    to: str
    rate: str = Field(description="target units per source unit")
    effective_from: str | None


class DefinitionView(_Aliased):
    """A tariff's settings in the shape PUT /v1/tariffs/{name} accepts."""

    currency: str
    timezone: str
    rounding: RoundingView
    numbering: NumberingView
    bands: list[BandRuleView]
    default_band: str
    holiday_band: str | None
    holidays: list[HolidayView]
    usage_rates: list[UsageRateView]
    exchange_rates: list[ExchangeRateView]
    description: str


class DeckSummary(Out):
    name: str
    service: str
    unit: Literal["minute", "event"]
    priority: int
    rows: int
    bands: list[str] = Field(description="time bands with their own price column")
    effective_from: str | None
    effective_to: str | None


class TariffDetail(_Aliased):
    """A tariff: its definition (without deck rows) and a summary of each deck."""

    name: str
    revision: int
    services: dict[str, Literal["seconds", "events", "octets"]] = Field(
        description="service id -> the units it is rated in")
    definition: DefinitionView
    decks: list[DeckSummary]


class DeckSize(Out):
    name: str
    service: str
    unit: Literal["minute", "event"]
    priority: int
    rows: int


class TariffSummary(Out):
    name: str
    currency: str
    revision: int
    services: list[str]
    decks: list[DeckSize]
    updated_at: str


class DeckImported(Out):
    """The deck as stored, and the tariff's new revision."""

    tariff: str
    revision: int
    deck: DeckSummary


def fx_text(rate: int) -> str:
    """A scaled integer exchange rate as a decimal string ("1.0823")."""
    text = format(Decimal(rate) / FX_SCALE, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _window(value: int, open_value: int) -> str | None:
    return None if value == open_value else iso(value)


def deck_summary(deck) -> DeckSummary:
    return DeckSummary(name=deck.name, service=deck.service, unit=deck.unit,
                       priority=deck.priority, rows=len(deck), bands=list(deck.bands),
                       effective_from=_window(deck.effective_from, OPEN_FROM),
                       effective_to=_window(deck.effective_to, OPEN_TO))


def services_of(defn) -> dict[str, str]:
    """Service id -> units, from the definition alone (decks and usage rates)."""
    out = {d.service: "seconds" if d.unit == "minute" else "events" for d in defn.decks}
    out.update({u.service: u.kind.value for u in defn.usage_rates})
    return dict(sorted(out.items()))


def definition_view(defn) -> DefinitionView:
    cur = defn.currency
    return DefinitionView(
        currency=cur, timezone=defn.timezone,
        rounding=RoundingView(decimals=defn.rounding.decimals, mode=defn.rounding.mode),
        numbering=NumberingView(international_prefix=defn.numbering.international_prefix,
                                national_prefix=defn.numbering.national_prefix,
                                country_code=defn.numbering.country_code),
        bands=[BandRuleView(**r.to_dict()) for r in defn.bands],
        default_band=defn.default_band, holiday_band=defn.holiday_band,
        holidays=[HolidayView(**h.to_dict()) for h in defn.holidays],
        usage_rates=[UsageRateView(service=u.service, kind=u.kind.value, unit=u.unit,
                                   increment=u.increment, next_increment=u.next_increment,
                                   tier_scope=u.tier_scope,
                                   tiers=[TierView(upto=t.upto, price=money(t.price, cur))
                                          for t in u.tiers])
                     for u in defn.usage_rates],
        exchange_rates=[ExchangeRateView(**{"from": r.from_currency}, to=r.to_currency,
                                         rate=fx_text(r.rate),
                                         effective_from=_window(r.effective_from, OPEN_FROM))
                        for r in defn.exchange_rates],
        description=defn.description)


def tariff_detail(defn) -> TariffDetail:
    return TariffDetail(name=defn.name, revision=defn.revision, services=services_of(defn),
                        definition=definition_view(defn),
                        decks=[deck_summary(d) for d in defn.decks])


# ---------------------------------------------------------------------------- rating

class DeckRowView(Out):
    """The deck row that priced a call: where it is and its terms."""

    deck: str
    line: int = Field(description="line of the row in the imported CSV (header = line 1)")
    prefix: str
    destination: str
    price: str = Field(description="default-band price per minute (or per event)")
    connection_fee: str
    min_duration: int
    increment: int
    next_increment: int


class BandPiece(Out):
    """Part of a call billed in one time band, at that band's price."""

    band: str
    units: int = Field(description="seconds (or events) billed in this band")
    price: str = Field(description="per minute for voice, per event otherwise")


class TierPiece(Out):
    tier: int = Field(description="1 for the first tier")
    units: int
    price: str = Field(description="per `unit` of volume")
    unit: int


class FxView(_Aliased):
    from_: str = Field(alias="from")
    to: str
    rate: str
    effective_from: str | None


class RateView(_Aliased):
    """A charge and how it was computed."""

    tariff: str
    revision: int
    engine: str = Field(description="rating engine that computed it: compiled or pure")
    service: str
    kind: Literal["seconds", "events", "octets"]
    to: str | None
    number: str | None = Field(description="the number as E.164 digits after normalisation")
    at: str = Field(description="the start, UTC")
    local_time: str = Field(description="the start in the tariff's time zone")
    time_zone: str
    units: int
    already: int
    billed_units: int = Field(description="units billed after increments and minimum")
    cost: str
    currency: str
    tariff_cost: str = Field(description="the same charge in the tariff's currency")
    tariff_currency: str
    destination: DeckRowView | None
    bands: list[BandPiece]
    tiers: list[TierPiece]
    fx: FxView | None = Field(description="the exchange rate used, when converted")


# ---------------------------------------------------------------------------- mediation

class RatedCallView(Out):
    line: int
    call_id: str
    caller: str
    callee: str
    start: str = Field(description="when billing started (the answer), UTC")
    duration: int = Field(description="billable seconds read from the CDR")
    billed: int = Field(description="seconds billed after increments and minimum")
    cost: str
    destination: str
    prefix: str
    deck: str
    deck_line: int


class RejectView(Out):
    line: int
    reason: Literal["unparseable", "bad_time", "bad_duration", "zero_duration",
                    "negative_duration", "bad_number", "no_route", "out_of_range", "overflow",
                    "no_fx"]
    message: str
    call_id: str
    caller: str
    callee: str


class RateCdrsSummary(Out):
    lines: int = Field(description="CDR lines read (rated + rejected)")
    rated: int
    rejected: int
    total_cost: str
    reasons: dict[str, int] = Field(description="rejected lines per reason")


class RateCdrsView(Out):
    """CDRs rated in one batch (nothing is stored): each rated call, each rejected line."""

    tariff: str
    revision: int
    service: str
    currency: str
    format: Literal["freeswitch", "asterisk", "generic"]
    time_zone: str = Field(description="zone of time stamps written without an offset")
    summary: RateCdrsSummary
    rated: list[RatedCallView]
    rejects: list[RejectView]


__all__ = ["DeckImported", "DefinitionView", "RateCdrsView", "RateView", "TariffDetail",
           "TariffSummary", "deck_summary", "definition_view", "fx_text", "services_of",
           "tariff_detail"]
