"""How values look on the wire of the REST API, in both directions.

* Money is a decimal string in the account's currency ("10.00", "-0.5"),
  never a float. Inputs also accept a JSON integer meaning whole currency
  units. Internally it is integer micro-units (`ocs.money`).
* Usage (octets, seconds, events) is a JSON integer.
* Instants are ISO 8601 strings in UTC on output
  ("2026-11-25T19:00:00.123456Z"); inputs accept any ISO 8601 instant
  (a missing offset means UTC).

The input types here are pydantic annotations whose JSON schema is written
next to the code that validates them, so /openapi.json says exactly what the
validators accept. Patterns use `[0-9]` rather than `\\d` because the JSON
Schema (ECMA-262) and Python meanings of `\\d` differ for non-ASCII digits.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      WithJsonSchema)
from pydantic_core import PydanticCustomError

from ..model import MICRO
from ..money import format_money, parse_money

MAX_WHOLE_UNITS = 10**12   # largest amount accepted in one request, in currency units

# Money strings: no leading zeros, at most 12 integer and 6 fraction digits.
_WHOLE = r"(?:0|[1-9][0-9]{0,11})"
_FRACTION = r"(?:\.[0-9]{1,6})?"
# A fraction that is not all zeros, without look-ahead (not every JSON Schema
# tool supports it): k leading zeros, then a non-zero digit, at most 6 digits.
_NONZERO_FRACTION = "|".join(
    "0" * k + "[1-9]" + (f"[0-9]{{0,{5 - k}}}" if k < 5 else "") for k in range(6))
_POSITIVE = rf"(?:[1-9][0-9]{{0,11}}{_FRACTION}|0\.(?:{_NONZERO_FRACTION}))"

MONEY_PATTERNS = {
    "positive": rf"^{_POSITIVE}$",
    "nonnegative": rf"^{_WHOLE}{_FRACTION}$",
    "nonzero": rf"^-?{_POSITIVE}$",
}
_INTEGER_RANGES = {
    "positive": [(1, MAX_WHOLE_UNITS)],
    "nonnegative": [(0, MAX_WHOLE_UNITS)],
    "nonzero": [(1, MAX_WHOLE_UNITS), (-MAX_WHOLE_UNITS, -1)],
}
_SIGN_WORDS = {"positive": "greater than zero", "nonnegative": "zero or more",
               "nonzero": "non-zero (negative to debit)"}


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer, so the API does too; 5.5 stays a float."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
"""A JSON integer (an integral number such as 5.0 is one too)."""


def int_in(lo: int, hi: int, **field: Any):
    """A JSON integer between `lo` and `hi` inclusive (constraints before the
    coercion of integral floats, so that they appear in the JSON schema)."""
    return Annotated[int, Field(ge=lo, le=hi, **field), BeforeValidator(_integral)]


def _money_validator(sign: str):
    pattern = re.compile(MONEY_PATTERNS[sign][1:-1])
    ranges = _INTEGER_RANGES[sign]
    words = _SIGN_WORDS[sign]

    def validate(value: Any) -> int:
        value = _integral(value)
        if isinstance(value, bool):
            raise PydanticCustomError("money_type", "money must be a decimal string such as "
                                      "\"10.50\" or an integer, not a boolean")
        if isinstance(value, float):
            raise PydanticCustomError(
                "money_float", "money must be a decimal string such as \"10.50\" (at most 6 "
                "decimals) or an integer number of whole units, never a fractional number")
        if isinstance(value, int):
            if not any(lo <= value <= hi for lo, hi in ranges):
                raise PydanticCustomError(
                    "money_range", "amount must be {words} and at most {limit} units",
                    {"words": words, "limit": MAX_WHOLE_UNITS})
            return value * MICRO
        if isinstance(value, str):
            if not pattern.fullmatch(value):
                raise PydanticCustomError(
                    "money_format", "{value} is not an amount {words} written like \"10.50\" "
                    "(digits, optional '.' and at most 6 decimals, at most {limit} units)",
                    {"value": repr(value[:40]), "words": words, "limit": MAX_WHOLE_UNITS})
            return parse_money(value)
        raise PydanticCustomError("money_type", "money must be a decimal string such as "
                                  "\"10.50\" or an integer")
    return validate


def _money_schema(sign: str) -> dict[str, Any]:
    integers = [{"type": "integer", "minimum": lo, "maximum": hi}
                for lo, hi in _INTEGER_RANGES[sign]]
    return {
        "anyOf": [*integers, {"type": "string", "pattern": MONEY_PATTERNS[sign]}],
        "description": f"Money {_SIGN_WORDS[sign]}, in the account's currency: a decimal "
                       "string (at most 6 decimals) or an integer number of whole units.",
        "examples": ["10.00", 5],
    }


def _money(sign: str):
    return Annotated[int, PlainValidator(_money_validator(sign)),
                     WithJsonSchema(_money_schema(sign))]


PositiveMoney = _money("positive")
NonNegativeMoney = _money("nonnegative")
NonZeroMoney = _money("nonzero")


def _instant(value: Any) -> int:
    if not isinstance(value, str):
        raise PydanticCustomError("instant_type", "an instant is an ISO 8601 string such as "
                                  "\"2026-11-25T19:00:00Z\"")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("instant_format", "{value} is not an ISO 8601 instant",
                                  {"value": repr(value[:40])}) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * MICRO + dt.microsecond


Instant = Annotated[int, PlainValidator(_instant),
                    WithJsonSchema({"type": "string", "format": "date-time",
                                    "description": "ISO 8601 instant; no offset means UTC.",
                                    "examples": ["2026-11-25T19:00:00Z"]})]


IP_OR_CIDR_FORMAT = "ip-or-cidr"


def _ip_or_cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("address_type", "an address is a string")
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise PydanticCustomError(
            "address_format", "{value} is not an IPv4/IPv6 address or CIDR prefix",
            {"value": repr(value[:60])}) from None


IpOrCidr = Annotated[str, PlainValidator(_ip_or_cidr),
                     WithJsonSchema({"type": "string", "format": IP_OR_CIDR_FORMAT,
                                     "description": "IPv4 or IPv6 address, or CIDR prefix "
                                                    "(host bits are cleared).",
                                     "examples": ["192.0.2.10", "198.51.100.0/24"]})]


def _ip(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("ip_type", "an IP address is a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise PydanticCustomError("ip_format", "{value} is not an IPv4 or IPv6 address",
                                  {"value": repr(value[:60])}) from None


IpAddress = Annotated[str, PlainValidator(_ip),
                      WithJsonSchema({"anyOf": [{"type": "string", "format": "ipv4"},
                                                {"type": "string", "format": "ipv6"}],
                                      "examples": ["192.0.2.10"]})]


# --------------------------------------------------------------------------- output

def iso(us: int | None) -> str | None:
    """Microseconds since the epoch as an ISO 8601 UTC string with microseconds."""
    if us is None:
        return None
    seconds, micro = divmod(us, MICRO)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=micro)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def money(micro: int | None, currency: str | None) -> str | None:
    return None if micro is None else format_money(micro, currency)


def units(kind: str, amount: int | None, currency: str | None) -> str | int | None:
    """Money as a decimal string, usage as an integer."""
    if amount is None:
        return None
    kind = getattr(kind, "value", kind)
    return format_money(amount, currency) if kind == "money" else amount


# --------------------------------------------------------------------------- base models

class Body(BaseModel):
    """A request body: unknown fields are refused and JSON types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Query-string parameters: text converted to the declared types; unknown names refused."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """A response: fields not in the model are refused so responses match the document."""

    model_config = ConfigDict(extra="forbid")
