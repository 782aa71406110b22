"""Prices from the plan's tariff: the `PriceResolver` the daemon uses.

A plan names a tariff (`Plan.tariff`); the compiled tariffs in force live in a
`TariffBook` that a reload swaps whole. A plan without a tariff has no
out-of-bundle price (only its buckets pay); a plan naming a tariff that is not
loaded, or a service the tariff cannot rate, fails rating (Diameter 5031).
"""

from __future__ import annotations

from ..errors import OcsError
from ..pricing import Price
from .core import RatingFailed
from .types import ServiceUsage


class PlanTariffs:
    """`book` is the `ocs.rating.TariffBook` in force (None until tariffs are loaded)."""

    def __init__(self, book=None):
        self.book = book

    def price(self, *, plan, account, usage: ServiceUsage, at: int) -> Price | None:
        if plan is None or not plan.tariff:
            return None
        if self.book is None or plan.tariff not in self.book:
            raise RatingFailed(f"plan {plan.name}: tariff {plan.tariff!r} is not loaded")
        try:
            tariff = self.book.get(plan.tariff)
            # TariffPrice speaks the balance engine's protocol: cost(units, used)
            # and max_units(money, used), `used` being the session's units so far.
            return tariff.price(usage.service, start=at, to=usage.destination,
                                currency=account.currency)
        except OcsError as exc:  # ocs.rating.RatingError: no route, bad number, no FX...
            raise RatingFailed(f"plan {plan.name}: {exc}") from exc
