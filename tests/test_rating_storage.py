"""Tariff definitions in the store, on both backends: what is saved is what
loads and rates; a failed save leaves the previous definition whole; reloads
swap compiled tariffs atomically; a tariff price plugs into real reservations."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from ocs.errors import Conflict, NotFound, ValidationError
from ocs.model import Kind
from ocs.rating import (BandRule, ExchangeRate, Holiday, Numbering, Rounding, TariffBook,
                        TariffDefinition, Tier, UsageRate, compile, parse_deck_csv)
from ocs.rating.storage import (delete_tariff, list_tariffs, load_tariff, reload_tariffs,
                                save_deck, save_exchange_rates, save_tariff)

ZURICH = ZoneInfo("Europe/Zurich")
START = int(dt.datetime(2026, 11, 25, 18, 59, tzinfo=ZURICH).timestamp()) * 1_000_000

BASE = """prefix,destination,price,connection_fee,min_duration,increment,next_increment,effective_to,price_offpeak
41,Switzerland,0.10,0,0,60,60,,0.05
4179,Switzerland mobile,0.30,0.05,30,30,6,,
44,United Kingdom,0.06,,,1,1,2026-12-01,0.03
"""
PROMO = """prefix,destination,price,effective_from,effective_to
44,UK promo,0.01,2026-12-01,2027-01-01
"""


def definition(**kw) -> TariffDefinition:
    base = parse_deck_csv(BASE, name="base", tz="Europe/Zurich")
    promo = parse_deck_csv(PROMO, name="promo", priority=10, tz="Europe/Zurich")
    values = dict(
        name="retail", currency="CHF", timezone="Europe/Zurich",
        rounding=Rounding(2, "half-even"),
        numbering=Numbering("00", "0", "41"),
        bands=(BandRule.from_dict({"band": "peak", "days": "mon-fri", "from": "08:00",
                                   "to": "19:00"}),),
        default_band="offpeak", holiday_band="offpeak",
        holidays=(Holiday.from_dict({"day": "2026-12-25", "name": "Christmas"}),),
        decks=(base, promo),
        usage_rates=(UsageRate("rg10", Kind.OCTETS, (Tier(10 ** 9, 2_000_000),
                                                     Tier(None, 1_000_000)), unit=10 ** 9),),
        exchange_rates=(ExchangeRate("CHF", "EUR", 1_050_000_000, 0),),
        description="retail voice and data")
    values.update(kw)
    return TariffDefinition(**values)


def same_definition(a: TariffDefinition, b: TariffDefinition) -> None:
    assert a.settings_dict() == b.settings_dict()
    assert [(d.name, d.service, d.unit, d.priority, d.effective_from, d.effective_to, d.bands)
            for d in a.decks] == [(d.name, d.service, d.unit, d.priority, d.effective_from,
                                   d.effective_to, d.bands) for d in b.decks]
    for x, y in zip(a.decks, b.decks):
        assert list(x.rows()) == list(y.rows())
        assert [x.line_of(i) for i in range(len(x))] == [y.line_of(i) for i in range(len(y))]
    assert a.exchange_rates == b.exchange_rates


async def test_a_saved_tariff_loads_and_rates_the_same(store):
    original = definition()
    assert await save_tariff(store, original) == 1
    loaded = await load_tariff(store, "retail")
    same_definition(original, loaded)
    assert loaded.revision == 1
    a, b = compile(original), compile(loaded)
    for to, seconds in (("0791234567", 61), ("+441234", 185), ("0041443000000", 3600)):
        assert a.rate("voice", seconds, start=START, to=to, currency="EUR") == \
            b.rate("voice", seconds, start=START, to=to, currency="EUR")
    listed = await list_tariffs(store)
    assert [(t["name"], t["revision"], t["decks"], t["deck_rows"]) for t in listed] == [
        ("retail", 1, 2, 4)]
    with pytest.raises(NotFound):
        await load_tariff(store, "nope")


async def test_saving_again_replaces_and_bumps_the_revision(store):
    await save_tariff(store, definition())
    smaller = definition(decks=(parse_deck_csv("prefix,price\n41,0.20\n", name="base"),),
                         holidays=(), usage_rates=())
    assert await save_tariff(store, smaller) == 2
    loaded = await load_tariff(store, "retail")
    same_definition(smaller, loaded)
    assert loaded.revision == 2


async def test_a_failed_save_leaves_the_previous_definition_whole(store):
    await save_tariff(store, definition())
    # Two decks with one name pass no validation here, so the store itself refuses
    # the second one after the first deck's rows were written: all of it rolls back.
    twice = definition(decks=(parse_deck_csv(BASE, name="base"),
                              parse_deck_csv(PROMO, name="base", priority=10)))
    with pytest.raises(Conflict):
        await save_tariff(store, twice, validate=False)
    loaded = await load_tariff(store, "retail")
    assert loaded.revision == 1
    same_definition(definition(), loaded)
    # With validation (the default) a bad definition never reaches the store.
    with pytest.raises(ValidationError, match="two decks named base"):
        await save_tariff(store, twice)
    assert (await load_tariff(store, "retail")).revision == 1


async def test_deck_import_replaces_one_deck(store):
    await save_tariff(store, definition())
    new_promo = parse_deck_csv("prefix,price\n4179,0.02\n", name="promo", priority=10)
    assert await save_deck(store, "retail", new_promo) == 2
    loaded = await load_tariff(store, "retail")
    assert [d.name for d in loaded.decks] == ["base", "promo"]
    assert [r.prefix for r in loaded.decks[1].rows()] == ["4179"]
    # A deck that contradicts the rest of the tariff (a band it does not have) is refused.
    bad = parse_deck_csv("prefix,price,price_night\n41,0.1,0.05\n", name="night", priority=5)
    with pytest.raises(ValidationError, match="band 'night'"):
        await save_deck(store, "retail", bad)
    with pytest.raises(NotFound):
        await save_deck(store, "nope", new_promo, validate=False)
    assert (await load_tariff(store, "retail")).revision == 2


async def test_reload_compiles_what_changed_and_swaps(store):
    book = TariffBook()
    await save_tariff(store, definition())
    await save_tariff(store, definition(name="wholesale"))
    assert await reload_tariffs(store, book) == ["retail", "wholesale"]
    first = book.get("retail")
    assert await reload_tariffs(store, book) == []          # nothing changed
    assert book.get("retail") is first
    await save_deck(store, "retail", parse_deck_csv("prefix,price\n41,0.50\n", name="base"))
    assert await reload_tariffs(store, book) == ["retail"]
    assert book.get("retail") is not first
    assert book.get("retail").rate("voice", 60, start=START, to="0441").cost == 500_000
    assert await delete_tariff(store, "wholesale") is True
    await reload_tariffs(store, book)
    assert book.names() == ["retail"]


async def test_exchange_rates_are_effective_dated(store):
    await save_tariff(store, definition(exchange_rates=()))
    dec = int(dt.datetime(2026, 12, 1, tzinfo=ZURICH).timestamp()) * 1_000_000
    await save_exchange_rates(store, [ExchangeRate("CHF", "EUR", 1_000_000_000, 0),
                                      ExchangeRate("CHF", "EUR", 2_000_000_000, dec)])
    await save_exchange_rates(store, [ExchangeRate("CHF", "EUR", 1_100_000_000, 0)])  # update
    t = compile(await load_tariff(store, "retail"))
    nov = t.rate("voice", 60, start=START, to="0441", currency="EUR")
    assert (nov.cost, nov.fx.rate) == (110_000, 1_100_000_000)
    assert t.rate("voice", 60, start=dec + 1, to="0441", currency="EUR").fx.rate == \
        2_000_000_000


async def test_tariff_price_holds_and_charges_through_the_store(store):
    await save_tariff(store, definition())
    tariff = compile(await load_tariff(store, "retail"))
    account = await store.create_account(name="caller", currency="CHF", billing="prepaid",
                                         opening_balance=1_000_000)
    # CH mobile: 0.05 fee + 0.30/min at 30/6 with a 30 s minimum: 1.00 buys 186 s.
    price = tariff.price("voice", start=START, to="0791234567")
    res = await store.reserve(account.id, "call-1", 3600, kind=Kind.SECONDS, service="voice",
                              price=price)
    assert res.ok and res.granted == 186
    res = await store.commit(account.id, "call-1", 61, kind=Kind.SECONDS, service="voice",
                             price=price, seq=1, final=True)
    # 61 s bill 66 s: 0.05 + 66 * 0.005 = 0.38.
    assert (res.charged, res.cost, res.balance) == (61, 380_000, 620_000)
