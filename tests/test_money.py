"""Money as integer micro-units, and the currency codes protocols carry."""

import pytest

from ocs.errors import ValidationError
from ocs.money import format_money, iso_numeric, minor_units, parse_money


def test_amounts_parse_to_micro_units_and_format_back():
    assert parse_money("10.00") == parse_money(10) == 10_000_000
    assert parse_money("-0.000001") == -1
    assert format_money(10_000_000, "EUR") == "10.00"
    assert format_money(1_500, "JPY") == "0.0015"  # sub-unit rests are kept
    assert format_money(-2_500_000, "KWD") == "-2.500"
    for bad in ("1.0000001", "ten", "NaN", True):
        with pytest.raises(ValidationError):
            parse_money(bad)


def test_iso_4217_numeric_codes_and_minor_units():
    assert (iso_numeric("EUR"), iso_numeric("usd"), iso_numeric("CHF")) == (978, 840, 756)
    assert iso_numeric("XYZ") is None
    assert (minor_units("EUR"), minor_units("JPY"), minor_units("BHD")) == (2, 0, 3)
