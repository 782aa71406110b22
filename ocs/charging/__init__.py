"""The protocol-neutral charging core that RADIUS and Diameter plug into."""

from .core import ChargingCore, PriceResolver, RatingFailed, fair_usage_period
from .prices import FlatPrices
from .relay import EventRelay
from .types import (Authorization, ChargeDecision, ChargeRequest, Identity, RequestKind, ResultCode,
                    ServiceGrant, ServiceUsage)

__all__ = ["Authorization", "ChargingCore", "PriceResolver", "RatingFailed", "FlatPrices", "EventRelay",
           "ChargeDecision", "ChargeRequest", "Identity", "RequestKind", "ResultCode",
           "ServiceGrant", "ServiceUsage", "fair_usage_period"]
