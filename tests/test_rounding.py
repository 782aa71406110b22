"""The compiled rounding module and its pure-Python twin agree on every input,
and both give the hand-computed answers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from ocs import accel
from ocs import rounding as twin
from ocs.pricing import LinearPrice
from tests.compiled import compiled


def compiled_module():
    return compiled("rounding")


IMPLS = ["pure", "compiled"]


@pytest.fixture(params=IMPLS)
def impl(request):
    return twin if request.param == "pure" else compiled_module()


@pytest.mark.parametrize("units, first, nxt, billed", [
    (0, 60, 60, 0), (1, 60, 60, 60), (60, 60, 60, 60), (61, 60, 60, 120),
    (61, 30, 6, 66), (30, 30, 6, 30), (31, 30, 6, 36), (185, 1, 1, 185),
])
def test_billed_units_golden(impl, units, first, nxt, billed):
    assert impl.billed_units(units, first, nxt) == billed


def test_linear_cost_rounds_up_to_the_micro_unit(impl):
    # 0.10 per minute, 1 second costs 1666.66.. micro -> 1667
    assert impl.linear_cost(1, 100_000, 60) == 1667
    assert impl.linear_cost(60, 100_000, 60) == 100_000
    assert impl.linear_cost(0, 100_000, 60) == 0
    # Products beyond 64 bits stay exact through the 128-bit intermediate...
    assert impl.linear_cost(2**40, 10**9, 10**9 - 1) == -(-(2**40 * 10**9) // (10**9 - 1))
    # ...and a result beyond the documented range is an error, not a wrapped number.
    with pytest.raises(OverflowError):
        impl.linear_cost(2**40, 10**9, 3)


def test_max_units_lands_on_an_increment_edge(impl):
    # 1 EUR/min at 60/60: 2.50 EUR buys two whole minutes, not 150 s.
    assert impl.linear_max_units(2_500_000, 1_000_000, 60, 60, 60) == 120
    # 30/6 at 0.60/min (10_000 micro per s): 0.35 buys 35 s -> 30 + 0*6 = 30, 0.36 buys 36.
    assert impl.linear_max_units(350_000, 600_000, 60, 30, 6) == 30
    assert impl.linear_max_units(360_000, 600_000, 60, 30, 6) == 36
    assert impl.linear_max_units(0, 1, 1, 1, 1) == 0
    assert impl.linear_max_units(5, 0, 1, 1, 1) == twin.CAP
    assert impl.linear_max_units(5, 0, 1, 60, 60) == twin.CAP // 60 * 60


VALUES = st.integers(min_value=0, max_value=2**40)
PRICES = st.integers(min_value=0, max_value=10**9)
PER = st.integers(min_value=1, max_value=10**9)
INCR = st.integers(min_value=1, max_value=3600)


@settings(max_examples=3000, deadline=None)
@given(units=VALUES, first=INCR, nxt=INCR, price=PRICES, per=PER, money=VALUES)
def test_compiled_and_pure_agree(units, first, nxt, price, per, money):
    c = compiled_module()
    assert c.billed_units(units, first, nxt) == twin.billed_units(units, first, nxt)
    assert outcome(c.linear_cost, units, price, per) == outcome(twin.linear_cost, units,
                                                                price, per)
    assert (c.linear_max_units(money, price, per, first, nxt)
            == twin.linear_max_units(money, price, per, first, nxt))


def outcome(fn, *args):
    try:
        return fn(*args)
    except OverflowError:
        return "overflow"


@settings(max_examples=1500, deadline=None)
@given(money=VALUES, first=INCR, nxt=INCR, price=st.integers(1, 10**9), per=PER)
def test_max_units_is_the_largest_affordable_usage(money, first, nxt, price, per):
    p = LinearPrice(price=price, per=per, first=first, next=nxt)
    u = p.max_units(money)
    assert p.cost(u) <= money
    bigger = first if u == 0 else u + nxt
    try:
        assert p.cost(bigger) > money
    except OverflowError:
        pass  # one more increment costs more than 2**62: certainly more than money


def test_version_reports_the_active_implementation():
    code = "import ocs.accel as a; print(a.ACTIVE)"
    forced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OCS_NO_EXTENSIONS": "1"}, check=True)
    assert forced.stdout.strip() == "pure-python"
    compiled_module()
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items()
                                  if k != "OCS_NO_EXTENSIONS"}, check=True)
    assert default.stdout.strip() == "compiled"
    assert accel.ACTIVE in ("compiled", "pure-python")
