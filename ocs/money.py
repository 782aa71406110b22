"""Money as integer micro-units: parsing and formatting, never floats.

`parse_money("10.00") == 10_000_000`; `format_money(10_000_000, "EUR") == "10.00"`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from .errors import ValidationError
from .model import MICRO

# ISO 4217 minor units where they differ from 2.
_MINOR_UNITS = {
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}

# ISO 4217 numeric codes, for protocols that carry a currency as a number
# (Diameter Currency-Code, RFC 8506 §8.11).
_NUMERIC = {
    "AED": 784, "ARS": 32, "AUD": 36, "BDT": 50, "BGN": 975, "BHD": 48, "BRL": 986,
    "CAD": 124, "CHF": 756, "CLP": 152, "CNY": 156, "COP": 170, "CZK": 203, "DKK": 208,
    "EGP": 818, "EUR": 978, "GBP": 826, "GHS": 936, "HKD": 344, "HUF": 348, "IDR": 360,
    "ILS": 376, "INR": 356, "IQD": 368, "ISK": 352, "JOD": 400, "JPY": 392, "KES": 404,
    "KRW": 410, "KWD": 414, "KZT": 398, "MAD": 504, "MXN": 484, "MYR": 458, "NGN": 566,
    "NOK": 578, "NZD": 554, "OMR": 512, "PEN": 604, "PHP": 608, "PKR": 586, "PLN": 985,
    "RON": 946, "RSD": 941, "RUB": 643, "RWF": 646, "SAR": 682, "SEK": 752, "SGD": 702,
    "THB": 764, "TND": 788, "TRY": 949, "TWD": 901, "UAH": 980, "UGX": 800, "USD": 840,
    "VND": 704, "XAF": 950, "XOF": 952, "ZAR": 710,
}


def iso_numeric(currency: str) -> int | None:
    """The ISO 4217 numeric code of `currency` (None: not in this table)."""
    return _NUMERIC.get(currency.upper())


def minor_units(currency: str) -> int:
    """Decimal places customers see for `currency` (ISO 4217)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def parse_money(text: str | int) -> int:
    """Parse a decimal amount ("10", "10.5", "-0.000001") into micro-units.

    Integers are taken as whole currency units. More than six decimals is an
    error rather than a silent rounding.
    """
    if isinstance(text, bool):
        raise ValidationError(f"not an amount: {text!r}")
    if isinstance(text, int):
        return text * MICRO
    try:
        d = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValidationError(f"not an amount: {text!r}") from None
    if not d.is_finite():
        raise ValidationError(f"not an amount: {text!r}")
    micro = d * MICRO
    if micro != micro.to_integral_value():
        raise ValidationError(f"amount {text!r} has more than 6 decimals")
    return int(micro)


def format_money(micro: int, currency: str | None = None) -> str:
    """Format micro-units with the currency's minor units, keeping any sub-cent rest."""
    places = minor_units(currency) if currency else 2
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}".rstrip("0")
    digits = digits.ljust(places, "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
