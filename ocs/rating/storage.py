"""Tariff definitions in the store: programs (see ocs.store.sql) and async helpers.

Every write is one program, so one transaction on either backend: a tariff is
replaced whole, or one deck of it is, and readers see the old definition or the
new one, never a mix. Definitions are validated (compiled) before anything is
written, so a bad deck never reaches the store; a failure while writing rolls
everything back.

Exchange rates belong to currency pairs, not to tariffs: saving a tariff
inserts or updates the rates it carries, and loading a tariff gives it every
rate from its currency.

    await save_tariff(store, definition)          # insert or replace, returns revision
    await save_deck(store, "retail", deck)        # replace one deck (CSV import)
    definition = await load_tariff(store, "retail")
    await reload_tariffs(store, book)             # compile all, swap atomically
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from array import array
from typing import Any

from ..errors import NotFound, ValidationError
from ..model import now_us
from ..store.sql import execute, executemany, fetch, fetchrow, fetchval
from .decks import (COL_DEST, COL_FEE, COL_FROM, COL_INC1, COL_INC2, COL_KEY, COL_MIN,
                    COL_PRICE, COL_TO, FIXED_COLUMNS, Deck, key_prefix, prefix_key)
from .model import (OPEN_FROM, OPEN_TO, BandRule, ExchangeRate, Holiday, Numbering, Rounding,
                    Tier, TariffDefinition, UsageRate, parse_days)

log = logging.getLogger("ocs.rating")

_ROW_INSERT = ("INSERT INTO tariff_deck_rows (deck_id, line, prefix, destination, price, "
               "connection_fee, min_duration, increment, next_increment, effective_from, "
               "effective_to, band_prices) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
               "$11, $12)")


def _bound(value: int, open_value: int) -> int | None:
    return None if value == open_value else value


def _unbound(value: int | None, open_value: int) -> int:
    return open_value if value is None else value


# --------------------------------------------------------------------------- writes

def save_tariff_program(defn: TariffDefinition, now: int):
    """Program: insert or replace a whole tariff; returns its new revision."""
    row = yield fetchrow("SELECT id, revision FROM tariffs WHERE name = $1 FOR UPDATE",
                         defn.name)
    values = (defn.currency, defn.timezone, defn.rounding.decimals, defn.rounding.mode,
              defn.numbering.international_prefix, defn.numbering.national_prefix,
              defn.numbering.country_code, defn.default_band, defn.holiday_band,
              defn.description)
    if row is None:
        tariff_id = yield fetchval(
            "INSERT INTO tariffs (name, currency, timezone, rounding_decimals, rounding_mode, "
            "international_prefix, national_prefix, country_code, default_band, holiday_band, "
            "description, revision, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, "
            "$7, $8, $9, $10, $11, 1, $12, $12) RETURNING id", defn.name, *values, now)
        revision = 1
    else:
        tariff_id, revision = row["id"], row["revision"] + 1
        yield execute(
            "UPDATE tariffs SET currency = $2, timezone = $3, rounding_decimals = $4, "
            "rounding_mode = $5, international_prefix = $6, national_prefix = $7, "
            "country_code = $8, default_band = $9, holiday_band = $10, description = $11, "
            "revision = $12, updated_at = $13 WHERE id = $1",
            tariff_id, *values, revision, now)
        for table in ("tariff_bands", "tariff_holidays", "tariff_usage_rates"):
            yield execute(f"DELETE FROM {table} WHERE tariff_id = $1", tariff_id)
        yield execute("DELETE FROM tariff_deck_rows WHERE deck_id IN "
                      "(SELECT id FROM tariff_decks WHERE tariff_id = $1)", tariff_id)
        yield execute("DELETE FROM tariff_decks WHERE tariff_id = $1", tariff_id)
    yield executemany(
        "INSERT INTO tariff_bands (tariff_id, position, band, days, start_s, end_s) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [(tariff_id, i, r.band, r.to_dict()["days"], r.start, r.end)
         for i, r in enumerate(defn.bands)])
    yield executemany(
        "INSERT INTO tariff_holidays (tariff_id, day, band, name) VALUES ($1, $2, $3, $4)",
        [(tariff_id, h.day.isoformat(), h.band, h.name) for h in defn.holidays])
    yield executemany(
        "INSERT INTO tariff_usage_rates (tariff_id, service, kind, unit, increment, "
        "next_increment, tiers, tier_scope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(tariff_id, u.service, u.kind.value, u.unit, u.increment, u.next_increment,
          json.dumps([[t.upto, t.price] for t in u.tiers]), u.tier_scope)
         for u in defn.usage_rates])
    for position, deck in enumerate(defn.decks):
        yield from _insert_deck(tariff_id, deck, position)
    yield from _upsert_rates(defn.exchange_rates, now)
    return revision


def save_deck_program(tariff: str, deck: Deck, now: int):
    """Program: replace (or add) one deck of an existing tariff; returns the revision."""
    row = yield fetchrow("SELECT id, revision FROM tariffs WHERE name = $1 FOR UPDATE", tariff)
    if row is None:
        raise NotFound(f"no tariff named {tariff!r}")
    old = yield fetchrow("SELECT id, position FROM tariff_decks WHERE tariff_id = $1 "
                         "AND name = $2", row["id"], deck.name)
    if old is not None:
        position = old["position"]
        yield execute("DELETE FROM tariff_deck_rows WHERE deck_id = $1", old["id"])
        yield execute("DELETE FROM tariff_decks WHERE id = $1", old["id"])
    else:
        last = yield fetchval("SELECT max(position) FROM tariff_decks WHERE tariff_id = $1",
                              row["id"])
        position = 0 if last is None else last + 1
    yield from _insert_deck(row["id"], deck, position)
    revision = row["revision"] + 1
    yield execute("UPDATE tariffs SET revision = $2, updated_at = $3 WHERE id = $1",
                  row["id"], revision, now)
    return revision


def delete_tariff_program(name: str):
    """Program: delete a tariff and everything under it; False when there was none."""
    tariff_id = yield fetchval("SELECT id FROM tariffs WHERE name = $1", name)
    if tariff_id is None:
        return False
    for table in ("tariff_bands", "tariff_holidays", "tariff_usage_rates"):
        yield execute(f"DELETE FROM {table} WHERE tariff_id = $1", tariff_id)
    yield execute("DELETE FROM tariff_deck_rows WHERE deck_id IN "
                  "(SELECT id FROM tariff_decks WHERE tariff_id = $1)", tariff_id)
    yield execute("DELETE FROM tariff_decks WHERE tariff_id = $1", tariff_id)
    yield execute("DELETE FROM tariffs WHERE id = $1", tariff_id)
    return True


def save_exchange_rates_program(rates: list[ExchangeRate], now: int):
    """Program: insert or update exchange rates (keyed by pair and effective_from)."""
    yield from _upsert_rates(rates, now)
    return len(rates)


def _insert_deck(tariff_id: int, deck: Deck, position: int):
    deck_id = yield fetchval(
        "INSERT INTO tariff_decks (tariff_id, name, position, service, unit, priority, "
        "effective_from, effective_to, bands) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "RETURNING id",
        tariff_id, deck.name, position, deck.service, deck.unit, deck.priority,
        _bound(deck.effective_from, OPEN_FROM), _bound(deck.effective_to, OPEN_TO),
        json.dumps(list(deck.bands)))
    t, stride, names = deck.table, deck.stride, deck.destinations
    rows = []
    for i in range(len(deck)):
        b = i * stride
        price = t[b + COL_PRICE]
        bands = [t[b + FIXED_COLUMNS + j] for j in range(len(deck.bands))]
        rows.append((deck_id, deck.line_of(i), key_prefix(t[b + COL_KEY]),
                     names[t[b + COL_DEST]], price, t[b + COL_FEE], t[b + COL_MIN],
                     t[b + COL_INC1], t[b + COL_INC2], _bound(t[b + COL_FROM], OPEN_FROM),
                     _bound(t[b + COL_TO], OPEN_TO),
                     json.dumps(bands) if any(p != price for p in bands) else None))
        if len(rows) >= 10_000:
            yield executemany(_ROW_INSERT, rows)
            rows = []
    yield executemany(_ROW_INSERT, rows)


def _upsert_rates(rates, now: int):
    for r in rates:
        updated = yield execute(
            "UPDATE exchange_rates SET rate = $4 WHERE from_currency = $1 AND to_currency = $2 "
            "AND effective_from = $3", r.from_currency, r.to_currency, r.effective_from, r.rate)
        if not updated:
            yield execute(
                "INSERT INTO exchange_rates (from_currency, to_currency, rate, effective_from, "
                "created_at) VALUES ($1, $2, $3, $4, $5)",
                r.from_currency, r.to_currency, r.rate, r.effective_from, now)


# --------------------------------------------------------------------------- reads

def load_tariff_program(name: str):
    """Program: the `TariffDefinition` named `name` (NotFound when absent)."""
    t = yield fetchrow("SELECT * FROM tariffs WHERE name = $1", name)
    if t is None:
        raise NotFound(f"no tariff named {name!r}")
    tid = t["id"]
    bands = yield fetch("SELECT * FROM tariff_bands WHERE tariff_id = $1 ORDER BY position", tid)
    holidays = yield fetch("SELECT * FROM tariff_holidays WHERE tariff_id = $1 ORDER BY day",
                           tid)
    usage = yield fetch("SELECT * FROM tariff_usage_rates WHERE tariff_id = $1 "
                        "ORDER BY service", tid)
    decks = yield fetch("SELECT * FROM tariff_decks WHERE tariff_id = $1 "
                        "ORDER BY position, name", tid)
    loaded = []
    for d in decks:
        rows = yield fetch("SELECT * FROM tariff_deck_rows WHERE deck_id = $1 ORDER BY line",
                           d["id"])
        loaded.append(_deck_from_rows(d, rows))
    rates = yield fetch("SELECT * FROM exchange_rates WHERE from_currency = $1 "
                        "ORDER BY to_currency, effective_from", t["currency"])
    return TariffDefinition(
        name=t["name"], currency=t["currency"], timezone=t["timezone"],
        rounding=Rounding(t["rounding_decimals"], t["rounding_mode"]),
        numbering=Numbering(t["international_prefix"], t["national_prefix"],
                            t["country_code"]),
        bands=tuple(BandRule(b["band"], parse_days(b["days"]), b["start_s"], b["end_s"])
                    for b in bands),
        default_band=t["default_band"], holiday_band=t["holiday_band"],
        holidays=tuple(Holiday(_dt.date.fromisoformat(h["day"]), h["band"], h["name"])
                       for h in holidays),
        usage_rates=tuple(UsageRate(u["service"], u["kind"],
                                    tuple(Tier(up, price) for up, price in json.loads(u["tiers"])),
                                    u["unit"], u["increment"], u["next_increment"],
                                    u["tier_scope"])
                          for u in usage),
        decks=tuple(loaded),
        exchange_rates=tuple(ExchangeRate(r["from_currency"], r["to_currency"], r["rate"],
                                          r["effective_from"]) for r in rates),
        description=t["description"], revision=t["revision"])


def _deck_from_rows(d, rows) -> Deck:
    bands = json.loads(d["bands"])
    n = len(rows)
    names: dict[str, int] = {}
    cols = {c: array("q", bytes(8 * n)) for c in ("keys", "dest", "price", "fee", "minimum",
                                                   "increment", "next_increment",
                                                   "valid_from", "valid_to", "lines")}
    band_cols = {b: array("q", bytes(8 * n)) for b in bands}
    for i, r in enumerate(rows):
        cols["keys"][i] = prefix_key(r["prefix"])
        cols["dest"][i] = names.setdefault(r["destination"], len(names))
        cols["price"][i] = r["price"]
        cols["fee"][i] = r["connection_fee"]
        cols["minimum"][i] = r["min_duration"]
        cols["increment"][i] = r["increment"]
        cols["next_increment"][i] = r["next_increment"]
        cols["valid_from"][i] = _unbound(r["effective_from"], OPEN_FROM)
        cols["valid_to"][i] = _unbound(r["effective_to"], OPEN_TO)
        cols["lines"][i] = r["line"]
        prices = json.loads(r["band_prices"]) if r["band_prices"] else None
        for j, b in enumerate(bands):
            band_cols[b][i] = prices[j] if prices else r["price"]
    lines = cols.pop("lines")
    return Deck.from_columns(
        name=d["name"], service=d["service"], unit=d["unit"], priority=d["priority"],
        effective_from=_unbound(d["effective_from"], OPEN_FROM),
        effective_to=_unbound(d["effective_to"], OPEN_TO), destinations=list(names),
        band_prices=band_cols, lines=lines, **cols)


def list_tariffs_program():
    """Program: [{name, currency, revision, updated_at, decks, rows}] by name."""
    rows = yield fetch(
        "SELECT t.name, t.currency, t.revision, t.updated_at, "
        "(SELECT count(*) FROM tariff_decks d WHERE d.tariff_id = t.id) AS decks, "
        "(SELECT count(*) FROM tariff_deck_rows r JOIN tariff_decks d ON r.deck_id = d.id "
        "WHERE d.tariff_id = t.id) AS deck_rows FROM tariffs t ORDER BY t.name")
    return [dict(r) for r in rows]


def revisions_program():
    """Program: {tariff name: revision}, cheap enough to poll for reloads."""
    rows = yield fetch("SELECT name, revision FROM tariffs")
    return {r["name"]: r["revision"] for r in rows}


def exchange_rates_program(from_currency: str | None = None):
    if from_currency is None:
        rows = yield fetch("SELECT * FROM exchange_rates "
                           "ORDER BY from_currency, to_currency, effective_from")
    else:
        rows = yield fetch("SELECT * FROM exchange_rates WHERE from_currency = $1 "
                           "ORDER BY to_currency, effective_from", from_currency)
    return [ExchangeRate(r["from_currency"], r["to_currency"], r["rate"], r["effective_from"])
            for r in rows]


# --------------------------------------------------------------------------- async helpers

async def save_tariff(store, definition: TariffDefinition, *, validate: bool = True) -> int:
    """Validate `definition` (it must compile) and store it; returns the new revision."""
    if validate:
        from .tariff import compile
        compile(definition)
    revision = await store.driver.run(save_tariff_program, definition, now_us())
    log.info("tariff %s saved (revision %d, %d decks)", definition.name, revision,
             len(definition.decks))
    return revision


async def save_deck(store, tariff: str, deck: Deck, *, validate: bool = True) -> int:
    """Replace (or add) one deck of `tariff`, checked against the rest of the tariff first."""
    if validate:
        from .tariff import compile
        current = await load_tariff(store, tariff)
        others = tuple(d for d in current.decks if d.name != deck.name)
        compile(_replace_decks(current, others + (deck,)))
    revision = await store.driver.run(save_deck_program, tariff, deck, now_us())
    log.info("tariff %s: deck %s imported (%d rows, revision %d)", tariff, deck.name,
             len(deck), revision)
    return revision


def _replace_decks(defn: TariffDefinition, decks: tuple) -> TariffDefinition:
    from dataclasses import replace
    return replace(defn, decks=decks)


async def load_tariff(store, name: str) -> TariffDefinition:
    return await store.driver.run(load_tariff_program, name, write=False)


async def list_tariffs(store) -> list[dict[str, Any]]:
    return await store.driver.run(list_tariffs_program, write=False)


async def delete_tariff(store, name: str) -> bool:
    return await store.driver.run(delete_tariff_program, name)


async def save_exchange_rates(store, rates: list[ExchangeRate]) -> int:
    return await store.driver.run(save_exchange_rates_program, list(rates), now_us())


async def reload_tariffs(store, book, *, engine: str | None = None) -> list[str]:
    """Compile the tariffs whose revision changed and swap them into `book`
    (a `TariffBook`) in one assignment; returns the names (re)compiled.

    A tariff that fails to compile keeps its previous compiled version and is
    logged; the others still reload.
    """
    from .tariff import compile
    revisions = await store.driver.run(revisions_program, write=False)
    current = {name: book.get(name) for name in book.names()}
    fresh = {}
    changed = []
    for name, revision in sorted(revisions.items()):
        old = current.get(name)
        if old is not None and old.revision == revision:
            fresh[name] = old
            continue
        try:
            fresh[name] = compile(await load_tariff(store, name), engine=engine)
            changed.append(name)
        except (ValidationError, NotFound) as exc:
            log.error("tariff %s (revision %s) not reloaded: %s", name, revision, exc)
            if old is not None:
                fresh[name] = old
    book.swap(fresh)
    if changed:
        log.info("tariffs reloaded: %s", ", ".join(changed))
    return changed
