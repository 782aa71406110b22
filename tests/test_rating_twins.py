"""The compiled rating engine and its pure-Python twin agree on random tariffs,
calls and balances, and inverse rating is exact: rate(max_usage(b)) <= b while
one more unit (so one more increment) would cost more than b."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from array import array

from hypothesis import HealthCheck, given, settings, strategies as st

from ocs import accel
from ocs.errors import ValidationError
from ocs.model import Kind
from ocs.rating import (BandRule, Deck, ExchangeRate, Holiday, Numbering, RatingError, Rounding,
                        TariffDefinition, Tier, UsageRate, compile, pack_numbers)
from ocs.rating import engine as twin
from ocs.rating.compile import build_tables
from ocs.rating.model import OPEN_FROM, OPEN_TO
from tests.compiled import compiled

US = 1_000_000
T0 = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * US
SPAN = 3 * 365 * 86400 * US
ZONES = ["UTC", "Europe/Zurich", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
         "Asia/Kathmandu"]
BANDS = ["peak", "evening", "weekend", "night"]


instants = st.integers(T0, T0 + SPAN)
prefixes = st.text("1234", min_size=1, max_size=5)


@st.composite
def band_rules(draw):
    rules = []
    for _ in range(draw(st.integers(0, 5))):
        start = draw(st.integers(0, 95)) * 900 + draw(st.sampled_from([0, 0, 37]))
        end = draw(st.integers(1, 96)) * 900
        if start == end:
            continue
        days = draw(st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True))
        rules.append(BandRule(draw(st.sampled_from(BANDS)), tuple(sorted(days)), start, end))
    return tuple(rules)


@st.composite
def decks(draw, bands):
    out, priorities = [], draw(st.lists(st.integers(-5, 20), min_size=1, max_size=3,
                                        unique=True))
    windows = [OPEN_FROM, OPEN_TO] + draw(st.lists(instants, max_size=3))
    for d, priority in enumerate(priorities):
        names = draw(st.lists(prefixes, min_size=1, max_size=12, unique=True))
        if draw(st.integers(0, 4)) == 0:  # now and then a prefix twice: a rate change
            names.append(draw(st.sampled_from(names)))   # (or an overlap both must refuse)
        keys, cols = [], {c: [] for c in ("price", "fee", "minimum", "increment",
                                          "next_increment", "valid_from", "valid_to")}
        band_cols = {b: [] for b in draw(st.lists(st.sampled_from(bands), unique=True))}
        for p in names:
            keys.append((int(p) << 4) | len(p))
            price = draw(st.one_of(st.integers(0, 10 ** 6), st.just(10 ** 12)))
            cols["price"].append(price)
            cols["fee"].append(draw(st.sampled_from([0, 0, 10_000, 123_457])))
            cols["minimum"].append(draw(st.sampled_from([0, 0, 1, 30, 61])))
            cols["increment"].append(draw(st.sampled_from([1, 6, 30, 60, 7])))
            cols["next_increment"].append(draw(st.sampled_from([1, 6, 60, 11])))
            a, b = OPEN_FROM, OPEN_TO
            if draw(st.integers(0, 3)) == 0:
                a, b = sorted(draw(st.lists(st.sampled_from(windows), min_size=2, max_size=2)))
                if a >= b:
                    a, b = OPEN_FROM, OPEN_TO
            cols["valid_from"].append(a)
            cols["valid_to"].append(b)
            for col in band_cols.values():
                col.append(draw(st.integers(0, 10 ** 6)))
        window = {}
        if draw(st.integers(0, 4)) == 0 and len(set(windows[2:])) >= 2:
            lo, hi = sorted(draw(st.lists(st.sampled_from(windows[2:]), min_size=2,
                                          max_size=2, unique=True)))
            window = dict(effective_from=lo, effective_to=hi)
        if len(names) > len(set(names)) and draw(st.integers(0, 7)) > 0:
            first, cut = names.index(names[-1]), draw(instants)
            cols["valid_from"][first], cols["valid_to"][first] = OPEN_FROM, cut
            cols["valid_from"][-1], cols["valid_to"][-1] = cut, OPEN_TO
        out.append(Deck.from_columns(name=f"d{d}", priority=priority, keys=keys,
                                     band_prices=band_cols, **cols, **window))
    if draw(st.booleans()):
        out.append(Deck.from_columns(name="sms", service="sms", unit="event",
                                     keys=[(1 << 4) | 1, (12 << 4) | 2],
                                     price=[draw(st.integers(0, 10 ** 6)), 50_000]))
    return out


@st.composite
def tariffs(draw):
    rules = draw(band_rules())
    default = draw(st.sampled_from(["offpeak", "standard"]))
    names = [default] + [r.band for r in rules]
    holiday_band = draw(st.sampled_from([None] + names))
    holidays = ()
    if holiday_band is not None:
        days = draw(st.lists(st.integers(0, 3 * 365), max_size=3, unique=True))
        holidays = tuple(Holiday(dt.date(2025, 1, 1) + dt.timedelta(days=d)) for d in days)
    usage = []
    for i in range(draw(st.integers(0, 2))):
        edges = sorted(draw(st.lists(st.integers(1, 10 ** 7), max_size=2, unique=True)))
        tiers = tuple(Tier(e, draw(st.integers(0, 10 ** 6))) for e in edges)
        tiers += (Tier(None, draw(st.integers(0, 10 ** 6))),)
        usage.append(UsageRate(f"rg{i}", draw(st.sampled_from([Kind.OCTETS, Kind.EVENTS])),
                               tiers, unit=draw(st.sampled_from([1, 1000, 10 ** 6])),
                               increment=draw(st.sampled_from([1, 1024, 10 ** 5])),
                               next_increment=draw(st.sampled_from([1, 512, 10 ** 5]))))
    numbering = draw(st.sampled_from([Numbering(), Numbering("00", "0", "41"),
                                      Numbering("011", "1", "1"), Numbering("", "", "")]))
    fx = tuple(ExchangeRate("EUR", "USD", draw(st.integers(1, 10 ** 12)), t)
               for t in sorted(set(draw(st.lists(instants, max_size=2)))))
    return TariffDefinition(
        name="rand", currency="EUR", timezone=draw(st.sampled_from(ZONES)),
        rounding=Rounding(draw(st.integers(0, 6)), draw(st.sampled_from(
            ["up", "down", "half-up", "half-even"]))),
        numbering=numbering, bands=rules, default_band=default, holiday_band=holiday_band,
        holidays=holidays, decks=tuple(draw(decks(sorted(set(names))))),
        usage_rates=tuple(usage), exchange_rates=fx)


@st.composite
def numbers(draw):
    digits = draw(st.one_of(prefixes.flatmap(lambda p: st.text("0123456789", max_size=8)
                                             .map(lambda s: p + s)),
                            st.text("0123456789", min_size=0, max_size=17)))
    form = draw(st.sampled_from(["", "+", "00", "0", "011", "1", "x"]))
    if form == "x":
        return digits[:3] + draw(st.sampled_from(["a", " ", "-", "\u0663"])) + digits[3:]
    return form + digits


def outcome(fn, *args):
    try:
        return fn(*args)
    except (OverflowError, ValueError, IndexError) as exc:
        return type(exc).__name__, str(exc)


def build(cls, tables):
    try:
        return cls(tables), None
    except ValueError as exc:
        return None, exc.args


SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(defn=tariffs(), calls=st.lists(st.tuples(numbers(), instants,
                                                st.one_of(st.integers(0, 600),
                                                          st.integers(0, 200_000))),
                                      min_size=1, max_size=25),
       data=st.data())
def test_engines_agree_on_random_tariffs(defn, calls, data):
    c = compiled("rating")
    tables, _, dests, usage = build_tables(defn)
    e_py, err_py = build(twin.Engine, tables)
    e_c, err_c = build(c.Engine, tables)
    assert err_py == err_c  # both refuse the same row pair, or both build
    if e_py is None:
        return
    packed = pack_numbers([n for n, _, _ in calls])
    starts = [t for _, t, _ in calls]
    durations = [x for _, _, x in calls]
    for svc in dests.values():
        for fx_from, fx_rate in (((), ()), ([r.effective_from for r in defn.exchange_rates],
                                            [r.rate for r in defn.exchange_rates])):
            results = []
            for e in (e_py, e_c):
                out = [bytearray(8 * len(calls)) for _ in range(4)]
                arrays = [memoryview(o).cast("q") for o in out]
                ok = e.rate_batch(svc, packed.data, packed.offsets, array("q", starts),
                                  array("q", durations), array("q", fx_from),
                                  array("q", fx_rate), *arrays)
                results.append((ok, [list(a) for a in arrays]))
            assert results[0] == results[1]
        for number, t0, x in calls:
            raw = number.encode("ascii", "replace")
            assert e_py.normalise(raw) == e_c.normalise(raw)
            row = e_py.lookup(svc, raw, t0)
            assert row == e_c.lookup(svc, raw, t0)
            if row < 0:
                continue
            fx = data.draw(st.sampled_from([0] + [r.rate for r in defn.exchange_rates]))
            for units in (x, x + 1, data.draw(st.integers(0, 10 ** 7))):
                assert outcome(e_py.dest_cost, svc, row, t0, units, fx) == \
                    outcome(e_c.dest_cost, svc, row, t0, units, fx)
                assert outcome(e_py.dest_billed, svc, row, units) == \
                    outcome(e_c.dest_billed, svc, row, units)
            skip = data.draw(st.integers(0, 5000))
            assert outcome(e_py.dest_pieces, svc, row, t0, skip, x) == \
                outcome(e_c.dest_pieces, svc, row, t0, skip, x)
            a = data.draw(st.integers(0, 4000))
            money = data.draw(st.one_of(st.integers(0, 5 * 10 ** 6), st.integers(0, 1 << 62)))
            limit = data.draw(st.sampled_from([10 ** 7, 3600, 0]))
            u = e_py.dest_max(svc, row, t0, a, money, fx, limit)
            assert u == e_c.dest_max(svc, row, t0, a, money, fx, limit)
            check_inverse(lambda v: e_py.dest_cost(svc, row, t0, v, fx), a, money, u,
                          min(limit, 10 ** 7 - a))
    for i in usage.values():
        fx = data.draw(st.sampled_from([0] + [r.rate for r in defn.exchange_rates]))
        for units in data.draw(st.lists(st.integers(0, 1 << 56), min_size=1, max_size=4)):
            assert outcome(e_py.usage_cost, i, units, fx) == outcome(e_c.usage_cost, i, units,
                                                                     fx)
        a = data.draw(st.integers(0, 10 ** 9))
        money = data.draw(st.integers(0, 10 ** 9))
        limit = data.draw(st.sampled_from([1 << 56, 10 ** 8]))
        u = e_py.usage_max(i, a, money, fx, limit)
        assert u == e_c.usage_max(i, a, money, fx, limit)
        check_inverse(lambda v: e_py.usage_cost(i, v, fx), a, money, u,
                      min(limit, tables.usage.limit[i] - a))


# Digits that pile prefixes up near the edges of the compiled index (4-digit blocks,
# 6-digit sub-blocks): long runs of 0 and 9 under a few shared stems.
edge_digits = st.text("0995", min_size=0, max_size=11)
edge_stems = st.sampled_from(["", "0", "44", "4420", "44209", "442099", "9999", "1"])
long_prefixes = st.builds(lambda stem, tail: (stem + tail)[:15] or "4",
                          edge_stems, edge_digits)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(long_prefixes, min_size=1, max_size=80, unique=True),
       change=instants, data=st.data())
def test_engines_agree_on_long_prefixes_at_index_edges(names, change, data):
    c = compiled("rating")
    keys = [(int(p) << 4) | len(p) for p in names]
    valid_from, valid_to = [OPEN_FROM] * len(names), [OPEN_TO] * len(names)
    # Some prefixes end at `change`, others start there: shorter ones fill in.
    for i in data.draw(st.lists(st.integers(0, len(names) - 1), max_size=8, unique=True)):
        if data.draw(st.booleans()):
            valid_to[i] = change
        else:
            valid_from[i] = change
    # Numbers under the deck's prefixes (some shorter than them) and anywhere else.
    under = st.builds(lambda p, d, cut: (p + d)[:max(1, len(p) - cut)],
                      st.sampled_from(names), st.text("0123456789", max_size=4),
                      st.sampled_from([0, 0, 0, 1, 3]))
    calls = data.draw(st.lists(st.tuples(st.one_of(under, long_prefixes),
                                         st.one_of(instants, st.just(change),
                                                   st.just(change - 1))),
                               min_size=1, max_size=40))
    deck = Deck.from_columns(name="edges", keys=keys, price=list(range(1, len(names) + 1)),
                             valid_from=valid_from, valid_to=valid_to)
    tables, _, dests, _ = build_tables(TariffDefinition("edges", "EUR", decks=(deck,)))
    e_py, e_c = twin.Engine(tables), c.Engine(tables)
    numbers = ["+" + n[:15] for n, _ in calls]
    starts = [t for _, t in calls]
    for number, t0 in zip(numbers, starts):
        raw = number.encode()
        assert e_py.lookup(0, raw, t0) == e_c.lookup(0, raw, t0), number
    packed = pack_numbers(numbers)
    results = []
    for e in (e_py, e_c):
        out = [bytearray(8 * len(calls)) for _ in range(4)]
        arrays = [memoryview(o).cast("q") for o in out]
        ok = e.rate_batch(0, packed.data, packed.offsets, array("q", starts),
                          array("q", [60] * len(calls)), array("q"), array("q"), *arrays)
        results.append((ok, [list(a) for a in arrays]))
    assert results[0] == results[1]


def check_inverse(cost, a, money, u, top):
    """rate(max_usage(b)) <= b, and one more unit costs more (unless capped)."""
    base = cost(a)
    assert cost(a + u) - base <= money
    if u < top:
        try:
            assert cost(a + u + 1) - base > money
        except OverflowError:
            pass  # beyond the largest amount: certainly more than money


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(defn=tariffs(), money=st.integers(0, 10 ** 7), start=instants,
       already=st.integers(0, 3600), number=numbers())
def test_max_usage_is_the_largest_affordable_usage(defn, money, start, already, number):
    compiled("rating")
    for engine in ("pure", "compiled"):
        try:
            t = compile(defn, engine=engine)
        except ValidationError:  # random rows may overlap; the differential test
            return               # checks that both engines refuse them alike
        for service in t.services():
            to = number if service in ("voice", "sms") else None
            try:
                price = t.price(service, start=start, to=to, currency="EUR")
            except RatingError as exc:
                assert exc.reason in ("no_route", "bad_number")
                continue
            u = price.max_units(money, already)
            assert price.cost(u, already) <= money
            if u < price.limit - already:
                try:
                    assert price.cost(u + 1, already) > money
                except RatingError as exc:  # beyond the largest amount: more than money
                    assert exc.reason == "overflow"
            charge = t.rate(service, u, start=start, to=to, already=already)
            assert charge.cost == price.cost(u, already)


def test_selector_reports_the_rating_engine():
    code = "import ocs.accel as a; print(a.ACTIVE, a.rating.Engine.__module__)"
    forced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OCS_NO_EXTENSIONS": "1"}, check=True)
    assert forced.stdout.split() == ["pure-python", "ocs.rating.engine"]
    compiled("rating")
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items()
                                  if k != "OCS_NO_EXTENSIONS"}, check=True)
    assert default.stdout.split() == ["compiled", "cext.rating"]
    assert accel.rating.Engine(build_tables(TariffDefinition("x", "EUR"))[0]).implementation \
        in ("compiled", "pure-python")
