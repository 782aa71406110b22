"""Prices the balance engine uses to turn usage into money and back.

A price answers two questions inside a store transaction: what `units` more
usage cost (`cost`) and how many more units `money` can buy (`max_units`),
given the units `already` charged in the same session and service. Rating is
always of the cumulative usage, cost(already + units) - cost(already), so
usage reported in several pieces is never rounded up twice: 30 s then 31 s at
60/60 costs two minutes, not two minutes plus a spare one.

The rating engine (ocs/rating) supplies richer prices; `LinearPrice` is the
simple one: `price` micro-units per `per` units, billed in `first`/`next`
increments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .accel import rounding


class Price(Protocol):
    def cost(self, units: int, already: int = 0) -> int:
        """Money for `units` more, after `already` units of the same session and service."""

    def max_units(self, money: int, already: int = 0) -> int:
        """The largest `units` with cost(units, already) <= money."""


@dataclass(frozen=True, slots=True)
class LinearPrice:
    price: int        # micro-units per `per` units
    per: int = 1
    first: int = 1    # first increment (e.g. 60 for 60/60 voice)
    next: int = 1     # subsequent increment

    def __post_init__(self):
        if self.price < 0 or self.per <= 0 or self.first <= 0 or self.next <= 0:
            raise ValueError("price must be >= 0 and per/first/next > 0")

    def billed(self, units: int) -> int:
        return rounding.billed_units(units, self.first, self.next)

    def total(self, units: int) -> int:
        """Money for `units` of usage from zero."""
        return rounding.linear_cost(self.billed(units), self.price, self.per)

    def cost(self, units: int, already: int = 0) -> int:
        if units <= 0:
            return 0
        if already == 0:
            return self.total(units)
        return self.total(already + units) - self.total(already)

    def max_units(self, money: int, already: int = 0) -> int:
        # Between two increment edges the cost is flat, so the largest affordable
        # total is an edge; what was already paid up to the next edge is free.
        budget = money + (self.total(already) if already else 0)
        best = rounding.linear_max_units(budget, self.price, self.per, self.first, self.next)
        return max(0, best - already)


#: Money priced as itself: reserving 5 EUR of money costs 5 EUR.
MONEY = LinearPrice(price=1, per=1)
