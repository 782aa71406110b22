"""Rating contract, run against both engines: hand-computed charges, inverse
rating, prefixes, decks, time bands, tiers, rounding, currencies, batches and
the `Price` the balance engine uses."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from ocs.balance import AccountState, BatchState, BucketState, Commit, Outcome, Reserve, apply
from ocs.errors import ValidationError
from ocs.model import AccountStatus, Billing, Kind
from ocs.rating import (BandRule, Deck, DeckRow, ExchangeRate, Holiday, Numbering, RatingError,
                        Rounding, TariffBook, TariffDefinition, Tier, UsageRate, compile)
from ocs.rating.clock import zone_table
from tests.compiled import compiled

ZURICH = ZoneInfo("Europe/Zurich")
EUR = 1_000_000


def at(text: str, zone=ZURICH) -> int:
    """Local ISO date-time -> microseconds since the epoch."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()) * 1_000_000


def require_compiled():
    compiled("rating")


@pytest.fixture(params=["pure", "compiled"])
def engine(request):
    if request.param == "compiled":
        require_compiled()
    return request.param


def deck(rows, **meta) -> Deck:
    meta.setdefault("name", "base")
    return Deck.from_rows([DeckRow(**r) if isinstance(r, dict) else r for r in rows], **meta)


def tariff(engine, *decks, **kw):
    kw.setdefault("name", "t")
    kw.setdefault("currency", "EUR")
    return compile(TariffDefinition(decks=decks, **kw), engine=engine)


PEAK = dict(timezone="Europe/Zurich", default_band="offpeak",
            bands=(BandRule.from_dict({"band": "peak", "days": "mon-fri", "from": "08:00",
                                       "to": "19:00"}),
                   BandRule.from_dict({"band": "weekend", "days": "sat,sun"})),
            holiday_band="weekend",
            holidays=(Holiday.from_dict({"day": "2026-12-25", "name": "Christmas"}),))
WED_1859 = at("2026-11-25T18:59:00")


# ---------------------------------------------------------------------- increments, fees

def test_61s_at_60_60_is_billed_120s(engine):
    t = tariff(engine, deck([dict(prefix="44", price=100_000, increment=60)]))
    c = t.rate("voice", 61, start=WED_1859, to="+44201234567")
    assert (c.rated_units, c.cost) == (120, 200_000)


def test_61s_at_30_6_is_billed_66s(engine):
    t = tariff(engine, deck([dict(prefix="44", price=600_000, increment=30, next_increment=6)]))
    c = t.rate("voice", 61, start=WED_1859, to="+44201234567")
    assert (c.rated_units, c.cost) == (66, 660_000)
    assert t.rate("voice", 30, start=WED_1859, to="+4420").rated_units == 30
    assert t.rate("voice", 31, start=WED_1859, to="+4420").rated_units == 36


def test_connection_fee_and_minimum_duration(engine):
    t = tariff(engine, deck([dict(prefix="44", price=600_000, connection_fee=50_000,
                                  min_duration=30)]))
    # 10 s is billed as the 30 s minimum (0.30) plus the 0.05 fee.
    c = t.rate("voice", 10, start=WED_1859, to="+4420")
    assert (c.rated_units, c.cost) == (30, 350_000)
    # Past the minimum, every second counts: 45 s -> 0.45 + 0.05.
    assert t.rate("voice", 45, start=WED_1859, to="+4420").cost == 500_000
    # An unanswered call (0 s) costs nothing, not even the fee.
    assert t.rate("voice", 0, start=WED_1859, to="+4420").cost == 0


def test_money_rounding_per_tariff(engine):
    rows = [dict(prefix="44", price=12_300)]  # 0.0123 per minute, 1/1
    # 61 s cost 12505 micro exactly (61 * 12300 / 60); rounded up to a cent: 0.02.
    assert tariff(engine, deck(rows), rounding=Rounding(2, "up")).rate(
        "voice", 61, start=WED_1859, to="+44").cost == 20_000
    assert tariff(engine, deck(rows), rounding=Rounding(2, "half-even")).rate(
        "voice", 61, start=WED_1859, to="+44").cost == 10_000
    assert tariff(engine, deck(rows)).rate("voice", 61, start=WED_1859, to="+44").cost == 12_505


# ---------------------------------------------------------------------- time bands

def test_call_from_1859_to_1902_is_rated_across_the_peak_boundary(engine):
    t = tariff(engine, deck([DeckRow("44", 300_000, band_prices={"offpeak": 100_000})]), **PEAK)
    c = t.rate("voice", 180, start=WED_1859, to="+4420")
    # 60 s peak at 0.30/min + 120 s off-peak at 0.10/min = 0.30 + 0.20.
    assert c.cost == 500_000
    assert [(b.band, b.seconds, b.price) for b in c.bands] == [
        ("peak", 60, 300_000), ("offpeak", 120, 100_000)]


def test_billed_seconds_are_laid_from_the_start(engine):
    t = tariff(engine, deck([DeckRow("44", 300_000, increment=60,
                                     band_prices={"offpeak": 100_000})]), **PEAK)
    # 18:59:30 + 61 s at 60/60: 120 billed seconds, 30 of them before 19:00.
    c = t.rate("voice", 61, start=at("2026-11-25T18:59:30"), to="+4420")
    assert c.rated_units == 120
    assert c.cost == (30 * 300_000 + 90 * 100_000) // 60


def test_local_times_are_read_in_the_tariff_zone(engine):
    t = tariff(engine, deck([dict(prefix="44", price=1)]), **PEAK)
    assert t.instant("2026-11-25T18:59") == WED_1859
    assert t.instant("2026-11-25T17:59:00Z") == WED_1859
    assert t.instant("2026-11-25") == at("2026-11-25T00:00")
    with pytest.raises(ValidationError):
        t.instant("yesterday")


def test_weekend_holiday_and_dst(engine):
    t = tariff(engine, deck([DeckRow("44", 300_000, band_prices={"offpeak": 100_000,
                                                                 "weekend": 50_000})]), **PEAK)
    assert t.rate("voice", 60, start=at("2026-11-28T10:00"), to="+44").cost == 50_000  # Sat
    assert t.rate("voice", 60, start=at("2026-12-25T10:00"), to="+44").cost == 50_000  # holiday
    assert t.rate("voice", 60, start=at("2026-12-24T10:00"), to="+44").cost == 300_000
    # 08:30 local is peak on both sides of the switch to summer time (2026-03-29),
    # although it is 07:30 UTC before it and 06:30 UTC after it.
    assert t.rate("voice", 60, start=at("2026-03-27T08:30"), to="+44").bands[0].band == "peak"
    assert t.rate("voice", 60, start=at("2026-03-30T08:30"), to="+44").bands[0].band == "peak"
    utc = ZoneInfo("UTC")
    assert t.rate("voice", 60, start=at("2026-03-30T07:30", utc), to="+44").cost == 300_000
    assert t.rate("voice", 60, start=at("2026-03-27T06:30", utc), to="+44").cost == 100_000


def test_zone_tables_agree_with_zoneinfo():
    at_, off = zone_table("Europe/Zurich")
    zone = ZoneInfo("Europe/Zurich")
    for text in ("2026-03-29T00:59:59", "2026-03-29T01:00:00", "2026-10-25T00:59:59",
                 "2026-10-25T01:00:00", "1999-07-01T12:00:00", "2080-12-31T23:00:00"):
        moment = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
        us = int(moment.timestamp()) * 1_000_000
        i = max(k for k in range(len(at_)) if at_[k] <= us)
        assert off[i] == int(moment.astimezone(zone).utcoffset().total_seconds()) * 1_000_000


# ---------------------------------------------------------------------- data and events

def data_tariff(engine):
    gb = 10 ** 9
    return tariff(engine, usage_rates=(
        UsageRate("rg10", Kind.OCTETS, (Tier(gb, 2 * EUR), Tier(None, 1 * EUR)), unit=gb,
                  increment=10 ** 6, next_increment=10 ** 6),
        UsageRate("sms-flat", Kind.EVENTS, (Tier(None, 50_000),))))


def test_tiered_data_across_the_tier_edge(engine):
    t = data_tariff(engine)
    start = WED_1859
    # 1.5 GB: the first GB at 2.00, the next half at 1.00.
    c = t.rate("rg10", 1_500_000_000, start=start)
    assert c.cost == 2_500_000
    assert [(u.tier, u.units) for u in c.tiers] == [(0, 10 ** 9), (1, 500_000_000)]
    # The period already used 0.8 GB: 0.4 GB more crosses the edge -> 0.2 at 2 + 0.2 at 1.
    assert t.rate("rg10", 400_000_000, start=start, already=800_000_000).cost == 600_000
    # Usage rounds up to the 1 MB increment: one octet past 1.2 GB bills 1.201 GB.
    c = t.rate("rg10", 1_200_000_001, start=start)
    assert c.rated_units == 1_201_000_000


def test_events_at_a_fixed_price(engine):
    t = data_tariff(engine)
    assert t.rate("sms-flat", 3, start=WED_1859).cost == 150_000
    assert t.max_usage(120_000, "sms-flat", start=WED_1859) == 2


def test_sms_deck_prices_per_event_by_destination(engine):
    sms = deck([dict(prefix="41", price=80_000), dict(prefix="44", price=120_000)],
               name="sms", service="sms", unit="event")
    t = tariff(engine, sms)
    assert t.rate("sms", 2, start=WED_1859, to="+447700900123").cost == 240_000
    assert t.services() == {"sms": "events"}


# ---------------------------------------------------------------------- inverse rating

def test_inverse_rating_lands_on_increment_edges(engine):
    t = tariff(engine, deck([dict(prefix="44", price=EUR, increment=60),
                             dict(prefix="41", price=600_000, increment=30, next_increment=6),
                             dict(prefix="49", price=EUR, increment=60, connection_fee=100_000)]))
    def mx(money, to):
        return t.max_usage(money, "voice", start=WED_1859, to=to)
    assert mx(2 * EUR, "+44") == 120          # exactly two minutes
    assert mx(2 * EUR - 1, "+44") == 60
    assert mx(360_000, "+41") == 36           # 30 + one 6 s step at 0.01/s
    assert mx(359_999, "+41") == 30
    assert mx(2 * EUR, "+49") == 60           # the fee leaves 1.90: one minute
    assert mx(99_999, "+49") == 0             # not even the fee
    for money, to in ((2 * EUR, "+44"), (360_000, "+41"), (2 * EUR, "+49")):
        u = mx(money, to)
        assert t.rate("voice", u, start=WED_1859, to=to).cost <= money
        assert t.rate("voice", u + 1, start=WED_1859, to=to).cost > money


def test_inverse_rating_follows_band_changes(engine):
    t = tariff(engine, deck([DeckRow("44", 300_000, band_prices={"offpeak": 100_000})]), **PEAK)
    # 0.50 from 18:59: 60 s of peak (0.30), then 0.20 buys 120 s off-peak.
    assert t.max_usage(500_000, "voice", start=WED_1859, to="+44") == 180
    # The same money from 19:00 buys five off-peak minutes.
    assert t.max_usage(500_000, "voice", start=at("2026-11-25T19:00"), to="+44") == 300


def test_inverse_rating_is_capped(engine):
    free = tariff(engine, deck([dict(prefix="44", price=0)]))
    assert free.max_usage(0, "voice", start=WED_1859, to="+44") == 10 ** 7
    assert free.max_usage(0, "voice", start=WED_1859, to="+44", limit=3600) == 3600


# ---------------------------------------------------------------------- prefixes and decks

def test_longest_prefix_wins(engine):
    t = tariff(engine, deck([dict(prefix="44", price=100_000, destination="UK"),
                             dict(prefix="447", price=200_000, destination="UK mobile"),
                             dict(prefix="4475", price=300_000, destination="UK mobile X")]))
    def match(number):
        return t.rate("voice", 60, start=WED_1859, to=number).destination
    assert (match("+447512345678").prefix, match("+447512345678").name) == ("4475",
                                                                             "UK mobile X")
    assert match("+447612345678").prefix == "447"
    assert match("+442012345678").prefix == "44"
    assert match("+44").prefix == "44"
    with pytest.raises(RatingError) as err:
        t.rate("voice", 60, start=WED_1859, to="+4")  # shorter than every prefix
    assert err.value.reason == "no_route"
    with pytest.raises(RatingError) as err:
        t.rate("voice", 60, start=WED_1859, to="+33123456789")
    assert err.value.reason == "no_route"


def test_longest_prefix_at_the_edges_of_the_index(engine):
    # The compiled index cuts the 15-digit space into 4-digit blocks and 6-digit
    # sub-blocks: prefixes that start or end exactly on those edges, blocks with a
    # single interval edge inside, 15-digit prefixes, the first and last numbers of
    # the space, and a number whose padded digits start a longer prefix.
    prefixes = ["0", "4420", "442099", "44209999", "4421000", "442100000000000",
                "99999", "999999999999999", "1", "12345678901234", "123456",
                "55129", "55130", "7", "71239"]
    t = tariff(engine, deck([dict(prefix=p, price=1000 * (i + 1), destination=p)
                             for i, p in enumerate(prefixes)]))

    def match(number):
        try:
            return t.rate("voice", 60, start=WED_1859, to=number).destination.prefix
        except RatingError as exc:
            return exc.reason
    expected = {
        "+0": "0", "+000000000000000": "0", "+099999999999999": "0",
        "+442098": "4420", "+442099": "442099", "+4420991": "442099",
        "+4420999": "442099", "+442099999": "44209999", "+44209999123": "44209999",
        "+442100000000000": "442100000000000", "+442100000000001": "4421000",
        "+44210001": "4421000", "+4421001": "no_route", "+4421": "no_route",
        "+442199": "no_route", "+4419": "no_route", "+44": "no_route",
        "+999999999999999": "999999999999999", "+999999999999998": "99999",
        "+99999": "99999", "+9999": "no_route", "+100000000000000": "1", "+1": "1",
        "+12345678901234": "12345678901234", "+123456789012349": "12345678901234",
        "+12345678901235": "123456", "+1234567": "123456", "+123457": "1",
        "+5512912": "55129", "+551299": "55129", "+5512812": "no_route",
        "+5513012": "55130", "+5513512": "no_route", "+5513": "no_route",
        "+7123912": "71239", "+7123812": "7", "+71240": "7", "+7": "7",
    }
    assert {n: match(n) for n in expected} == expected


def test_a_crowded_sub_block_is_searched_exactly(engine):
    # Hundreds of prefixes inside one 6-digit sub-block (442099), some nested: the
    # search there takes many steps.
    prefixes = ["4420", "442099"] + [f"442099{k:03d}" for k in range(0, 1000, 3)] + \
        [f"442099{k:03d}5" for k in range(0, 1000, 7)]
    t = tariff(engine, deck([dict(prefix=p, price=1000, destination=p) for p in prefixes]))
    for k in range(1000):
        number = f"+442099{k:03d}{k % 10}7"
        want = max((p for p in prefixes if number[1:].startswith(p)), key=len)
        assert t.rate("voice", 60, start=WED_1859, to=number).destination.prefix == want


def test_promo_deck_over_base_deck(engine):
    dec1, jan1 = at("2026-12-01T00:00"), at("2027-01-01T00:00")
    base = deck([dict(prefix="44", price=100_000), dict(prefix="4420", price=80_000),
                 dict(prefix="33", price=90_000)])
    promo = deck([dict(prefix="44", price=10_000)], name="december", priority=10,
                 effective_from=dec1, effective_to=jan1)
    t = tariff(engine, base, promo)
    def price(number, when):
        c = t.rate("voice", 60, start=when, to=number)
        return c.cost, c.destination.deck
    mid_dec, nov = at("2026-12-15T10:00"), at("2026-11-15T10:00")
    assert price("+447700900123", mid_dec) == (10_000, "december")  # promo beats base
    assert price("+447700900123", nov) == (100_000, "base")          # outside its window
    assert price("+447700900123", jan1) == (100_000, "base")         # window is [from, to)
    assert price("+442079460000", mid_dec) == (80_000, "base")       # longer prefix first
    assert price("+33123456789", mid_dec) == (90_000, "base")        # base fills the rest


def test_effective_dates_of_rows(engine):
    change = at("2026-12-01T00:00")
    t = tariff(engine, deck([DeckRow("49", 100_000, effective_to=change),
                             DeckRow("49", 50_000, effective_from=change),
                             DeckRow("491", 200_000, effective_to=change)]))
    def rate(number, when):
        return t.rate("voice", 60, start=when, to=number).cost
    assert rate("+4930123", change - 1) == 100_000
    assert rate("+4930123", change) == 50_000
    assert rate("+4915123", change - 1) == 200_000
    assert rate("+4915123", change) == 50_000  # 491 expired: falls back to 49


def test_national_prefix_normalisation(engine):
    t = tariff(engine, deck([dict(prefix="41", price=100_000),
                             dict(prefix="4179", price=300_000)]),
               numbering=Numbering(international_prefix="00", national_prefix="0",
                                   country_code="41"))
    for number in ("0791234567", "+41791234567", "0041791234567", "41791234567"):
        assert t.rate("voice", 60, start=WED_1859, to=number).destination.prefix == "4179"
    assert t.normalise("0791234567") == "41791234567"
    for bad in ("07912a4567", "", "+", "1234567890123456", "+41 79 123"):
        with pytest.raises(RatingError) as err:
            t.rate("voice", 60, start=WED_1859, to=bad)
        assert err.value.reason == "bad_number"


# ---------------------------------------------------------------------- currencies

def test_currency_conversion_with_rounding(engine):
    rates = (ExchangeRate("EUR", "USD", 1_082_300_000, at("2026-11-01T00:00")),
             ExchangeRate("EUR", "USD", 500_000_000, at("2026-12-01T00:00")))
    rows = [dict(prefix="44", price=200_000), dict(prefix="33", price=250_000)]
    t = tariff(engine, deck(rows), exchange_rates=rates, rounding=Rounding(2, "half-even"))
    c = t.rate("voice", 60, start=WED_1859, to="+44", currency="USD")
    # 0.20 EUR * 1.0823 = 0.21646 USD -> 0.22; the rate is recorded on the charge.
    assert (c.cost, c.currency, c.tariff_cost, c.tariff_currency) == (220_000, "USD", 200_000,
                                                                      "EUR")
    assert (c.fx.rate, c.fx.scale, c.fx.effective_from) == (1_082_300_000, 10 ** 9,
                                                            at("2026-11-01T00:00"))
    # From December 1 EUR = 0.5 USD: 0.25 EUR -> 0.125 USD, a tie: half-even keeps 0.12...
    dec = at("2026-12-05T10:00")
    assert t.rate("voice", 60, start=dec, to="+33", currency="USD").cost == 120_000
    # ...while rounding up gives 0.13.
    up = tariff(engine, deck(rows), exchange_rates=rates, rounding=Rounding(2, "up"))
    assert up.rate("voice", 60, start=dec, to="+33", currency="USD").cost == 130_000
    with pytest.raises(RatingError) as err:
        t.rate("voice", 60, start=at("2026-10-01T00:00"), to="+44", currency="USD")
    assert err.value.reason == "no_fx"
    with pytest.raises(RatingError):
        t.rate("voice", 60, start=WED_1859, to="+44", currency="CHF")
    # Inverse rating in the account currency, after rounding: 123 s cost 0.41 EUR =
    # 0.4437 USD -> 0.44; 124 s cost 0.413334 EUR = 0.4474 USD -> 0.45.
    assert t.max_usage(440_000, "voice", start=WED_1859, to="+44", currency="USD") == 123


# ---------------------------------------------------------------------- batch

def test_batch_matches_single_ratings(engine):
    t = tariff(engine, deck([DeckRow("44", 300_000, increment=30, next_increment=6,
                                     connection_fee=10_000, band_prices={"offpeak": 100_000}),
                             DeckRow("4475", 500_000, min_duration=60)]), **PEAK,
               exchange_rates=(ExchangeRate("EUR", "USD", 1_100_000_000, 0),))
    calls = [("+447512345", WED_1859, 61), ("+442012345", WED_1859, 185), ("bad!", 0, 5),
             ("+3312345", WED_1859, 60), ("+4420", WED_1859, -1), ("+4420", WED_1859, 0),
             ("00447599", at("2026-12-25T10:00"), 3600)]
    for currency in ("EUR", "USD"):
        r = t.rate_batch("voice", [c[0] for c in calls], [c[1] for c in calls],
                         [c[2] for c in calls], currency=currency)
        assert r.failures() == [(2, "bad_number"), (3, "no_route"), (4, "out_of_range")]
        assert r.ok == 4
        for i, (number, start, seconds) in enumerate(calls):
            if r.status[i] == 0:
                c = t.rate("voice", seconds, start=start, to=number, currency=currency)
                assert (r.cost[i], r.billed[i], r.row[i]) == (c.cost, c.rated_units,
                                                              c.destination.row)
            else:
                assert (r.cost[i], r.billed[i], r.row[i]) == (0, 0, -1)


# ---------------------------------------------------------------------- prices for balances

def test_tariff_price_never_rounds_cumulative_usage_twice(engine):
    t = tariff(engine, deck([dict(prefix="44", price=EUR, increment=60)]))
    first = t.price("voice", start=WED_1859, to="+44")
    assert first.cost(61) == 2 * EUR           # two minutes billed
    later = t.price("voice", start=WED_1859, to="+44", already=61)
    assert later.cost(59) == 0                 # still inside the second minute
    assert later.cost(60) == EUR               # 121 s: a third minute
    assert later.max_units(EUR) == 119         # up to 180 s cumulative
    assert later.after(59).already == 120
    # The balance engine's form: units already charged in the session as an argument.
    assert first.cost(59, 61) == 0 and first.cost(60, 61) == EUR
    assert first.max_units(EUR, 61) == 119
    assert first.cost(61, 30) == first.cost(91) - first.cost(30) == EUR
    assert first.kind is Kind.SECONDS and first.destination.prefix == "44"


def test_tariff_price_reserves_and_commits_in_the_balance_engine(engine):
    t = tariff(engine, deck([dict(prefix="44", price=EUR, increment=60, connection_fee=100_000)]))
    price = t.price("voice", start=WED_1859, to="+44")

    def state(balance):
        acct = AccountState(1, Billing.PREPAID, 0, AccountStatus.ACTIVE)
        acct.buckets[10] = BucketState(10, Kind.MONEY, None, balance, 0, 10, None, None, True, 0)
        return BatchState(now=WED_1859, accounts={1: acct})

    # 3.50 buys the fee and three whole minutes: 180 s are granted, 3.10 held.
    s = state(3_500_000)
    [res], _ = apply(s, [Reserve(1, "call-1", 600, kind=Kind.SECONDS, service="voice",
                                 price=price)])
    assert (res.outcome, res.granted) == (Outcome.OK, 180)
    assert s.accounts[1].buckets[10].reserved == 3_100_000
    # 61 s used: 0.10 + two minutes debited.
    [res], _ = apply(s, [Commit(1, "call-1", 61, kind=Kind.SECONDS, service="voice",
                                price=price, seq=1, final=True)])
    assert (res.charged, res.cost) == (61, 2_100_000)
    assert s.accounts[1].buckets[10].balance == 1_400_000
    # 0.50 cannot pay the fee and a minute: nothing is granted.
    s = state(500_000)
    [res], _ = apply(s, [Reserve(1, "call-2", 600, kind=Kind.SECONDS, service="voice",
                                 price=price)])
    assert res.outcome is Outcome.INSUFFICIENT


# ---------------------------------------------------------------------- definitions

def test_compile_rejects_inconsistent_definitions(engine):
    base = deck([DeckRow("44", 100_000, band_prices={"night": 1})])
    with pytest.raises(ValidationError, match="band 'night'"):
        tariff(engine, base)
    a = deck([dict(prefix="44", price=1)], name="a", priority=1)
    b = deck([dict(prefix="44", price=2)], name="b", priority=1)
    with pytest.raises(ValidationError, match="same priority"):
        tariff(engine, a, b)
    # Overlapping rows of one prefix: named by deck and line.
    d2 = Deck.from_columns(name="raw", keys=list(a.keys) * 2, price=list(a.price) * 2)
    with pytest.raises(ValidationError, match=r"deck raw line 2 \(prefix 44\) overlaps deck "
                                              r"raw line 1"):
        tariff(engine, d2)
    with pytest.raises(ValidationError, match="unknown time zone"):
        tariff(engine, a, timezone="Mars/Olympus")


def test_unknown_service_and_out_of_range_usage(engine):
    t = tariff(engine, deck([dict(prefix="44", price=1)]))
    with pytest.raises(RatingError) as err:
        t.rate("video", 1, start=WED_1859, to="+44")
    assert err.value.reason == "unknown_service"
    with pytest.raises(RatingError) as err:
        t.rate("voice", 10 ** 7 + 1, start=WED_1859, to="+44")
    assert err.value.reason == "out_of_range"
    with pytest.raises(RatingError):
        t.rate("voice", -1, start=WED_1859, to="+44")


def test_tariff_book_swaps_whole_sets(engine):
    one = tariff(engine, deck([dict(prefix="44", price=1)]), name="one")
    two = tariff(engine, deck([dict(prefix="44", price=2)]), name="two")
    book = TariffBook({"one": one})
    old = book.swap({"two": two})
    assert list(old) == ["one"] and book.names() == ["two"]
    with pytest.raises(RatingError):
        book.get("one")
    book.put(one)
    assert book.get("one") is one and len(book) == 2
