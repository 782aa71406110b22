"""Rating: what usage costs and how much usage money buys.

    definition = TariffDefinition(name="retail", currency="EUR", decks=(deck,), ...)
    tariff = compile(definition)                      # validate + build, once per reload
    charge = tariff.rate("voice", 185, start=t, to="+4420...")
    seconds = tariff.max_usage(5_000_000, "voice", start=t, to="+4420...")
    result = tariff.rate_batch("voice", numbers, starts, durations)   # many CDRs
    price = tariff.price("voice", start=t, to="+4420...", already=60)  # for ocs.balance

* `ocs.rating.model`: tariff definitions (bands, holidays, usage rates, exchange
  rates, rounding, numbering) and the units and limits rating works in;
* `ocs.rating.decks`: rate decks, CSV import with line-numbered validation;
* `ocs.rating.compile` / `ocs.rating.tariff`: compile, the compiled tariff,
  `Charge`, `TariffPrice`, `TariffBook` (atomic reload);
* `ocs.rating.engine`: the pure-Python engine, twin of `cext/rating.pyx`;
  `ocs.accel.rating` is the active one (`OCS_NO_EXTENSIONS=1` forces the twin);
* `ocs.rating.storage`: store programs that save and load tariffs.

This package does not import `ocs.accel` at import time (accel imports the twin
from here); the engine is picked when a tariff is compiled.
"""

from .decks import Deck, DeckRow, LineError, RateDeckError, parse_deck_csv
from .model import (CAP, FX_SCALE, OPEN_FROM, OPEN_TO, USAGE_LIMIT, BandRule, ExchangeRate,
                    Holiday, Numbering, RatingError, Rounding, Tier, TariffDefinition, UsageRate)
from .tariff import (BandUse, BatchResult, Charge, CompiledTariff, Destination, FxUsed,
                     PackedNumbers, TariffBook, TariffPrice, TierUse, compile, pack_numbers)

__all__ = [
    "BandRule", "BandUse", "BatchResult", "CAP", "Charge", "CompiledTariff", "Deck", "DeckRow",
    "Destination", "ExchangeRate", "FX_SCALE", "FxUsed", "Holiday", "LineError", "Numbering",
    "OPEN_FROM", "OPEN_TO", "PackedNumbers", "RateDeckError", "RatingError", "Rounding",
    "TariffBook", "TariffDefinition", "TariffPrice", "Tier", "TierUse", "USAGE_LIMIT",
    "UsageRate", "compile", "pack_numbers", "parse_deck_csv",
]
