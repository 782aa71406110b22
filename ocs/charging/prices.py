"""Flat prices per kind of usage: the simplest `PriceResolver`.

Maps a unit kind (and optionally a service key) to a `LinearPrice`; services
with no entry have no out-of-bundle price (only buckets pay them). The tariff
engine (ocs.rating) resolves prices from rate decks instead; this one serves
flat-rate operators and the scenario tests of the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import Kind
from ..pricing import LinearPrice, Price
from .core import RatingFailed
from .types import ServiceUsage


@dataclass(frozen=True)
class FlatPrices:
    by_kind: dict[Kind, LinearPrice] = field(default_factory=dict)
    by_service: dict[str, LinearPrice] = field(default_factory=dict)
    unrateable: frozenset[str] = frozenset()  # services that must fail rating

    def price(self, *, plan, account, usage: ServiceUsage, at: int) -> Price | None:
        if usage.service in self.unrateable:
            raise RatingFailed(f"no rate for {usage.service}")
        return self.by_service.get(usage.service) or self.by_kind.get(usage.kind)
