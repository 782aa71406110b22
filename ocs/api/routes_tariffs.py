"""/v1/tariffs, /v1/rate and /v1/rate-cdrs: tariffs and rate decks, and rating on demand.

Writes need the admin role, reads (and rating, which stores nothing) read-only.
Every write is validated by compiling the whole tariff before anything is
stored, is one store transaction, and is refused with 409 when the tariff
changed between reading it and writing it (a concurrent import is never
silently overwritten). After each write the `CATALOG_CHANGED` listeners hear
"tariff", so the daemon recompiles and swaps its tariffs at once.

Rating uses the compiled tariff of the stored revision: the daemon's own
compiled tariff when it is current, else one compiled here and kept per store
until the revision changes. Parsing big decks or CDR files and compiling run
in a worker thread so that the event loop keeps serving the network while an
operator imports a million-row deck.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import io
import logging
import re
import weakref
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from .. import mediation
from ..components import CONTEXT
from ..errors import Conflict, NotFound
from ..model import Kind, Role, now_us
from ..rating import (BandRule, ExchangeRate, Holiday, Numbering, RateDeckError, RatingError,
                      Rounding, TariffDefinition, Tier, UsageRate, compile, parse_deck_csv)
from ..rating.decks import COL_DEST
from ..rating.model import OPEN_FROM, OPEN_TO, parse_clock, parse_days
from ..rating.storage import (delete_tariff, load_tariff, save_deck_program,
                              save_tariff_program)
from ..store.sql import fetch, fetchval
from . import schemas_tariffs as s
from . import views as v
from . import views_tariffs as tv
from .app import catalog_changed
from .problems import ApiError
from .routing import Call, route
from .wire import iso, money

log = logging.getLogger("ocs.api")

TAG = "tariffs"
NAME = "/v1/tariffs/{name}"
_DECK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")

# Compiled tariffs per store (a test process may serve several stores), by name.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------- store programs

def _revision_program(name: str):
    return (yield fetchval("SELECT revision FROM tariffs WHERE name = $1", name))


def _expect_revision(name: str, expected: int | None):
    """Refuse (Conflict) unless the stored revision is `expected` (0: no such tariff)."""
    if expected is None:
        return
    current = yield fetchval("SELECT revision FROM tariffs WHERE name = $1 FOR UPDATE", name)
    if (current or 0) != expected:
        if expected == 0:
            raise Conflict(f"tariff {name} exists already (revision {current})")
        raise Conflict(f"tariff {name} changed meanwhile: it is at revision "
                       f"{current or 'none (deleted)'}, not {expected}; read it again and retry")


def _save_tariff_checked(defn: TariffDefinition, expected: int | None, now: int):
    yield from _expect_revision(defn.name, expected)
    return (yield from save_tariff_program(defn, now))


def _save_deck_checked(tariff: str, deck, expected: int, now: int):
    yield from _expect_revision(tariff, expected)
    return (yield from save_deck_program(tariff, deck, now))


def _listing_program():
    tariffs = yield fetch("SELECT id, name, currency, revision, updated_at FROM tariffs "
                          "ORDER BY name")
    decks = yield fetch(
        "SELECT d.tariff_id, d.name, d.service, d.unit, d.priority, "
        "(SELECT count(*) FROM tariff_deck_rows r WHERE r.deck_id = d.id) AS deck_rows "
        "FROM tariff_decks d ORDER BY d.tariff_id, d.position, d.name")
    usage = yield fetch("SELECT tariff_id, service FROM tariff_usage_rates "
                        "ORDER BY tariff_id, service")
    return [dict(r) for r in tariffs], [dict(r) for r in decks], [dict(r) for r in usage]


# ---------------------------------------------------------------------------- compiled tariffs

async def _revision(call: Call, name: str) -> int:
    revision = await call.store.driver.run(_revision_program, name, write=False, quick=True)
    if revision is None:
        raise NotFound(f"no tariff named {name!r}")
    return revision


def _cached(call: Call, name: str, revision: int):
    ctx = call.request.app.get(CONTEXT)
    book = getattr(ctx, "tariffs", None) if ctx is not None else None
    if book is not None and name in book:
        tariff = book.get(name)
        if tariff.revision == revision:
            return tariff
    tariff = _COMPILED.get(call.store, {}).get(name)
    return tariff if tariff is not None and tariff.revision == revision else None


async def _compiled(call: Call, name: str):
    """The compiled tariff of the stored revision (NotFound when there is none)."""
    tariff = _cached(call, name, await _revision(call, name))
    if tariff is None:
        definition = await load_tariff(call.store, name)
        tariff = await asyncio.to_thread(compile, definition)
        _COMPILED.setdefault(call.store, {})[name] = tariff
    return tariff


async def _definition(call: Call, name: str) -> TariffDefinition:
    """The stored definition, from a compiled tariff of its revision when there is one."""
    tariff = _cached(call, name, await _revision(call, name))
    return tariff.definition if tariff is not None else await load_tariff(call.store, name)


def _import_rejected(exc: RateDeckError, field: str | None = None) -> ApiError:
    details = [{"line": e.line, "column": e.column, "message": e.message} for e in exc.errors]
    if field is not None:
        for d in details:
            d["field"] = field
    return ApiError(422, str(exc), code="import_rejected", details=details)


async def _changed(call: Call, name: str) -> None:
    _COMPILED.get(call.store, {}).pop(name, None)
    await catalog_changed(call.request, "tariff")


# ---------------------------------------------------------------------------- definitions

def _build(name: str, b: s.TariffPut, current: TariffDefinition | None) -> TariffDefinition:
    """The definition a PUT body describes (decks parsed), compiled once to validate it."""
    stored = {d.name: d for d in current.decks} if current is not None else {}
    if b.decks is None:
        decks = tuple(current.decks) if current is not None else ()
    else:
        names = [d.name for d in b.decks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ApiError(422, f"deck {twice[0]} is given twice", code="invalid",
                           details=[{"field": "decks", "message": f"deck {twice[0]} is given "
                                                                 "twice"}])
        decks = tuple(_deck(i, d, stored.get(d.name), b.timezone)
                      for i, d in enumerate(b.decks))
    definition = TariffDefinition(
        name=name, currency=b.currency, timezone=b.timezone,
        rounding=Rounding(b.rounding.decimals, b.rounding.mode),
        numbering=Numbering(b.numbering.international_prefix, b.numbering.national_prefix,
                            b.numbering.country_code),
        bands=tuple(BandRule(r.band, parse_days(r.days), parse_clock(r.from_),
                             parse_clock(r.to)) for r in b.bands),
        default_band=b.default_band, holiday_band=b.holiday_band,
        holidays=tuple(Holiday(_dt.date.fromisoformat(h.day), h.band, h.name)
                       for h in b.holidays),
        decks=decks,
        usage_rates=tuple(UsageRate(u.service, Kind(u.kind),
                                    tuple(Tier(t.upto, t.price) for t in u.tiers), u.unit,
                                    u.increment, u.next_increment or u.increment,
                                    u.tier_scope)
                          for u in b.usage_rates),
        exchange_rates=tuple(ExchangeRate(r.from_ or b.currency, r.to, r.rate,
                                          OPEN_FROM if r.effective_from is None
                                          else r.effective_from)
                             for r in b.exchange_rates),
        description=b.description)
    compile(definition)
    return definition


def _deck(i: int, d: s.DeckIn, stored, tz: str):
    """Deck `i` of a PUT body: parsed from its CSV, or the stored deck with new settings."""
    given = d.model_fields_set
    meta: dict[str, Any] = {}
    for key in ("service", "unit", "priority"):
        if key in given or stored is None:
            meta[key] = getattr(d, key)
    for key, open_value in (("effective_from", OPEN_FROM), ("effective_to", OPEN_TO)):
        if key in given or stored is None:
            value = getattr(d, key)
            meta[key] = open_value if value is None else value
    if d.csv is not None:
        base = {"service": stored.service, "unit": stored.unit, "priority": stored.priority,
                "effective_from": stored.effective_from,
                "effective_to": stored.effective_to} if stored is not None else {}
        try:
            return parse_deck_csv(d.csv, name=d.name, tz=tz, **{**base, **meta})
        except RateDeckError as exc:
            raise _import_rejected(exc, f"decks.{i}.csv") from None
    if stored is None:
        raise ApiError(422, f"deck {d.name}: no stored deck of that name; give its rows as "
                            "csv", code="invalid",
                       details=[{"field": f"decks.{i}.csv", "message": "required for a new "
                                                                       "deck"}])
    return stored.replace(**meta)


@route("GET", "/v1/tariffs", role=Role.READ_ONLY, tag=TAG, summary="List tariffs",
       response=v.Page[tv.TariffSummary])
async def list_tariffs(call: Call):
    """Each tariff with the services it rates and the size of each deck."""
    tariffs, decks, usage = await call.store.driver.run(_listing_program, write=False)
    items = []
    for t in tariffs:
        own = [d for d in decks if d["tariff_id"] == t["id"]]
        services = {d["service"] for d in own} | {u["service"] for u in usage
                                                  if u["tariff_id"] == t["id"]}
        items.append(tv.TariffSummary(
            name=t["name"], currency=t["currency"], revision=t["revision"],
            services=sorted(services), updated_at=iso(t["updated_at"]),
            decks=[tv.DeckSize(name=d["name"], service=d["service"], unit=d["unit"],
                               priority=d["priority"], rows=d["deck_rows"]) for d in own]))
    return v.Page[tv.TariffSummary](items=items, count=len(items))


@route("GET", NAME, role=Role.READ_ONLY, tag=TAG, summary="Show a tariff",
       response=tv.TariffDetail)
async def get_tariff(call: Call):
    """The definition in the shape PUT accepts, and a summary of each deck (no rows)."""
    return tv.tariff_detail(await _definition(call, call.params["name"]))


@route("PUT", NAME, role=Role.ADMIN, tag=TAG, summary="Create or replace a tariff",
       body=s.TariffPut, response=tv.TariffDetail, target="tariff")
async def put_tariff(call: Call):
    """The whole definition; stored only if the tariff compiles. Without `decks` the
    stored decks are kept; a deck given without `csv` keeps its rows and takes the
    settings given. 409 when `revision` is given and is not the stored one."""
    name, b = call.params["name"], call.body
    if b.name is not None and b.name != name:
        raise ApiError(422, f"the body names tariff {b.name}, the path {name}",
                       details=[{"field": "name", "message": "must be the name in the path"}])
    expected = b.revision
    current = None
    if b.decks is None or any(d.csv is None for d in b.decks):
        try:
            current = await _definition(call, name)
        except NotFound:
            pass
        if expected is None:  # keep the decks of exactly the revision read
            expected = current.revision if current is not None else 0
    definition = await asyncio.to_thread(_build, name, b, current)
    revision = await call.store.driver.run(_save_tariff_checked, definition, expected, now_us())
    log.info("tariff %s saved by %s (revision %d, %d decks)", name, call.actor, revision,
             len(definition.decks))
    await _changed(call, name)
    return tv.tariff_detail(await _definition(call, name))


@route("DELETE", NAME, role=Role.ADMIN, tag=TAG, summary="Delete a tariff", target="tariff")
async def delete_tariff_route(call: Call):
    """Refused with 409 while a plan names the tariff."""
    name = call.params["name"]
    users = sorted(p.name for p in await call.store.list_plans() if p.tariff == name)
    if users:
        raise Conflict(f"tariff {name} is the tariff of plan{'s' if len(users) > 1 else ''} "
                       f"{', '.join(users)}; give them another tariff first")
    if not await delete_tariff(call.store, name):
        raise NotFound(f"no tariff named {name!r}")
    log.info("tariff %s deleted by %s", name, call.actor)
    await _changed(call, name)


# Any segment matches {deck} so that a bad deck name gets a 422 naming it, not a 404.
@route("POST", NAME + "/decks/{deck:[^/]+}", role=Role.ADMIN, tag=TAG,
       summary="Import one rate deck from CSV", content_type="text/csv",
       query=s.DeckImportQuery, response=tv.DeckImported, target="tariff")
async def import_deck(call: Call):
    """Replaces (or adds) the deck with the rows of the CSV body, all or nothing: any bad
    row refuses the whole file with 422 `import_rejected`, every bad row listed by line
    and column (the header is line 1). Effective dates without an offset are in the
    tariff's time zone. Layout: prefix, destination, price, connection_fee, min_duration,
    increment, next_increment, effective_from, effective_to, price_<band>."""
    name, deck_name = call.params["name"], call.params["deck"]
    if not _DECK_NAME.fullmatch(deck_name):
        raise ApiError(422, f"deck name {deck_name[:80]!r}: 1-64 letters, digits, _ . : -",
                       code="invalid")
    current = await _definition(call, name)
    stored = next((d for d in current.decks if d.name == deck_name), None)
    q = call.query
    settings = {
        "service": q.service or (stored.service if stored else "voice"),
        "unit": q.unit or (stored.unit if stored else "minute"),
        "priority": q.priority if q.priority is not None else (stored.priority if stored
                                                               else 0),
        "effective_from": stored.effective_from if stored else OPEN_FROM,
        "effective_to": stored.effective_to if stored else OPEN_TO,
    }

    def build():
        try:
            deck = parse_deck_csv(call.body, name=deck_name, tz=current.timezone, **settings)
        except RateDeckError as exc:
            raise _import_rejected(exc) from None
        others = tuple(d for d in current.decks if d.name != deck_name)
        compile(replace(current, decks=others + (deck,)))
        return deck

    deck = await asyncio.to_thread(build)
    revision = await call.store.driver.run(_save_deck_checked, name, deck, current.revision,
                                           now_us())
    log.info("tariff %s: deck %s imported by %s (%d rows, revision %d)", name, deck_name,
             call.actor, len(deck), revision)
    await _changed(call, name)
    return tv.DeckImported(tariff=name, revision=revision, deck=tv.deck_summary(deck))


# ---------------------------------------------------------------------------- rating

_FIELD_OF = {"bad_number": "to", "no_route": "to", "unknown_service": "service",
             "no_fx": "currency", "out_of_range": "units", "overflow": "units"}


def _rating_failed(exc: RatingError) -> ApiError:
    return ApiError(422, str(exc), code="invalid", details=[{
        "field": _FIELD_OF.get(exc.reason, "(body)"), "message": str(exc),
        "type": exc.reason}])


def _deck_row(definition: TariffDefinition, dest) -> tv.DeckRowView:
    deck = next(d for d in definition.decks if d.name == dest.deck)
    j = dest.line - 1 if deck.lines is None else deck.lines.index(dest.line)
    row = deck.row(j)
    cur = definition.currency
    return tv.DeckRowView(deck=deck.name, line=dest.line, prefix=dest.prefix,
                          destination=deck.destinations[deck.value(j, COL_DEST)],
                          price=money(row.price, cur),
                          connection_fee=money(row.connection_fee, cur),
                          min_duration=row.min_duration, increment=row.increment,
                          next_increment=row.next_increment)


@route("POST", "/v1/rate", role=Role.READ_ONLY, tag=TAG, changes=False,
       summary="Rate one call, message, volume or event", body=s.RateIn,
       response=tv.RateView)
async def rate(call: Call):
    """What the usage costs under the tariff and how that was computed: the deck row,
    the time bands the call crossed with their prices, the tiers, the exchange rate.
    Nothing is charged. `at` without an offset is local time in the tariff's zone."""
    b = call.body
    tariff = await _compiled(call, b.tariff)
    start = tariff.instant(b.at) if b.at is not None else now_us()
    try:
        charge = tariff.rate(b.service, b.amount, start=start, to=b.to, already=b.already,
                             currency=b.currency)
    except RatingError as exc:
        raise _rating_failed(exc) from None
    cur, tcur = charge.currency, charge.tariff_currency
    usage = {u.service: u for u in tariff.definition.usage_rates}.get(b.service)
    local = _dt.datetime.fromtimestamp(start // 1_000_000, ZoneInfo(tariff.timezone))
    fx = charge.fx
    return tv.RateView(
        tariff=tariff.name, revision=tariff.revision, engine=tariff.implementation,
        service=b.service, kind=tariff.kind(b.service).value, to=b.to,
        number=tariff.normalise(b.to) if b.to is not None else None, at=iso(start),
        local_time=local.isoformat(timespec="seconds"), time_zone=tariff.timezone,
        units=charge.units, already=charge.already, billed_units=charge.rated_units,
        cost=money(charge.cost, cur), currency=cur, tariff_cost=money(charge.tariff_cost, tcur),
        tariff_currency=tcur,
        destination=_deck_row(tariff.definition, charge.destination)
        if charge.destination is not None else None,
        bands=[tv.BandPiece(band=p.band, units=p.seconds, price=money(p.price, tcur))
               for p in charge.bands],
        tiers=[tv.TierPiece(tier=t.tier + 1, units=t.units, price=money(t.price, tcur),
                            unit=usage.unit if usage else 1) for t in charge.tiers],
        fx=tv.FxView(**{"from": fx.source}, to=fx.target, rate=tv.fx_text(fx.rate),
                     effective_from=None if fx.effective_from == OPEN_FROM
                     else iso(fx.effective_from)) if fx is not None else None)


def _wants_csv(request: web.Request) -> bool:
    """True when the Accept header prefers text/csv to JSON."""
    best_csv = best_json = -1.0
    for part in request.headers.get("Accept", "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media == "text/csv":
            best_csv = max(best_csv, q)
        elif media in ("application/json", "*/*", "application/*"):
            best_json = max(best_json, q)
    return best_csv > 0 and best_csv > best_json


@route("POST", "/v1/rate-cdrs", role=Role.READ_ONLY, tag=TAG, changes=False,
       summary="Rate a file of CDRs with a tariff (offline mediation, what-if)",
       content_type="text/csv", query=s.RateCdrsQuery, response=tv.RateCdrsView)
async def rate_cdrs(call: Call):
    """The body is a CDR file: FreeSWITCH mod_cdr_csv (default template), Asterisk
    cdr_csv Master.csv, or generic CSV with a header row (to, start, duration). Every
    billable call is rated in one batch with any stored tariff; nothing is stored.
    Lines that cannot be rated are listed with their line number and reason. With
    `Accept: text/csv` the answer is CSV instead: one row per CDR line in order
    (status `ok` or the reject reason), counts in X-Rated / X-Rejected and the total in
    X-Total-Cost."""
    q = call.query
    tariff = await _compiled(call, q.tariff)
    try:
        result = await asyncio.to_thread(mediation.rate_cdrs, tariff, call.body, q.format,
                                         service=q.service, currency=q.currency, tz=q.tz)
    except RatingError as exc:
        raise _rating_failed(exc) from None
    cur = result.currency
    total = money(result.total_cost, cur)
    rated = [mediation.call_dict(c, cur) for c in result.rated]
    rejects = [mediation.reject_dict(r) for r in result.rejects]
    if _wants_csv(call.request):
        out = io.StringIO()
        mediation.write_csv(out, rated, rejects, cur)
        return web.Response(text=out.getvalue(), content_type="text/csv", headers={
            "X-Rated": str(len(rated)), "X-Rejected": str(len(rejects)),
            "X-Total-Cost": f"{total} {cur}"})
    return tv.RateCdrsView(
        tariff=result.tariff, revision=result.revision, service=result.service, currency=cur,
        format=q.format, time_zone=result.time_zone,
        summary=tv.RateCdrsSummary(lines=len(rated) + len(rejects), rated=len(rated),
                                   rejected=len(rejects), total_cost=total,
                                   reasons=result.reasons()),
        rated=[tv.RatedCallView(**c) for c in rated],
        rejects=[tv.RejectView(**r) for r in rejects])
