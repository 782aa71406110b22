"""Prices the balance engine uses to turn usage into money and back.

A price answers two questions inside a store transaction: what `units` of
usage cost (`cost`) and how many units `money` can buy (`max_units`). The
rating engine (ocs/rating) supplies richer prices; `LinearPrice` is the simple
one: `price` micro-units per `per` units, billed in `first`/`next` increments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .accel import rounding


class Price(Protocol):
    def cost(self, units: int) -> int: ...
    def max_units(self, money: int) -> int: ...


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

    def cost(self, units: int) -> int:
        return rounding.linear_cost(self.billed(units), self.price, self.per)

    def max_units(self, money: int) -> int:
        return rounding.linear_max_units(money, self.price, self.per, self.first, self.next)


#: Money priced as itself: reserving 5 EUR of money costs 5 EUR.
MONEY = LinearPrice(price=1, per=1)
