"""CSV rate decks: a good deck parses completely; a bad one is refused whole, with
every bad row named by line and column."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from ocs.errors import ValidationError
from ocs.rating import Deck, DeckRow, RateDeckError, parse_deck_csv
from ocs.rating.model import OPEN_FROM, OPEN_TO

GOOD = """\ufeffPrefix,Destination,Price,Connection_Fee,Min_Duration,Increment,Next_Increment,Effective_From,Effective_To,Price_Offpeak
# comment lines and blank lines are skipped

41,Switzerland,0.10,0,0,60,60,,,0.05
4179,Switzerland mobile,0.30,0.05,30,30,6,2026-01-01,,
44,United Kingdom,0.0123,,,1,,,2026-12-01T00:00:00Z,
44,United Kingdom,0.011,,,1,,2026-12-01T00:00:00Z,,
"""


def errors_of(text: str, **kw) -> list[tuple[int, str | None, str]]:
    with pytest.raises(RateDeckError) as err:
        parse_deck_csv(text, **kw)
    assert isinstance(err.value, ValidationError)
    return [(e.line, e.column, e.message) for e in err.value.errors]


def test_a_good_deck_parses_every_row():
    deck = parse_deck_csv(GOOD, name="base", tz="Europe/Zurich")
    assert len(deck) == 4 and deck.bands == ("offpeak",)
    rows = list(deck.rows())
    assert rows[0] == DeckRow("41", 100_000, "Switzerland", 0, 0, 60, 60, OPEN_FROM, OPEN_TO,
                              {"offpeak": 50_000})
    mobile = rows[1]
    assert (mobile.price, mobile.connection_fee, mobile.min_duration, mobile.increment,
            mobile.next_increment) == (300_000, 50_000, 30, 30, 6)
    # A naive date is midnight in the tariff's zone; an empty band price means `price`.
    zurich = dt.datetime(2026, 1, 1, tzinfo=ZoneInfo("Europe/Zurich"))
    assert mobile.effective_from == int(zurich.timestamp()) * 1_000_000
    assert mobile.band_prices == {}
    assert (rows[2].price, rows[2].next_increment) == (12_300, 1)  # next defaults to first
    assert rows[2].effective_to == rows[3].effective_from  # a scheduled rate change
    assert [deck.line_of(i) for i in range(4)] == [4, 5, 6, 7]


def test_round_trip_through_csv():
    deck = parse_deck_csv(GOOD, tz="UTC")
    again = parse_deck_csv(deck.to_csv(), tz="UTC")
    assert list(again.rows()) == list(deck.rows())


def test_every_bad_row_is_reported_with_line_and_column():
    text = """prefix,destination,price,increment,effective_from,effective_to
44,UK,0.10,60,,
44,UK again,0.20,60,,
4a,Letters,0.10,60,,
+33,Plus,0.10,60,,
49,Germany,-0.10,60,,
39,Italy,0.10,0,,
34,Spain,0.10,60,2026-13-01,
351,Portugal,0.10,60,2026-12-01,2026-11-01
352,Luxembourg,0.1234567,60,,
353,Ireland,0.10,sixty,,
354,Iceland,0.10
,Nowhere,0.10,60,,
"""
    assert errors_of(text) == [
        (3, "prefix", "duplicate prefix 44 (line 2) with overlapping effective dates"),
        (4, "prefix", "prefix '4a' is not all digits"),
        (5, "prefix", "prefix '+33' is not all digits"),
        (6, "price", "must not be negative (got -0.10)"),
        (7, "increment", "must be 1..10000000 (got 0)"),
        (8, "effective_from", "not a date (YYYY-MM-DD or ISO 8601 date-time): '2026-13-01'"),
        (9, "effective_to", "must be after effective_from"),
        (10, "price", "amount '0.1234567' has more than 6 decimals"),
        (11, "increment", "not a whole number: 'sixty'"),
        (12, None, "expected 6 fields, got 3"),
        (13, "prefix", "empty prefix"),
    ]


def test_missing_and_unknown_columns():
    assert errors_of("destination,price\nUK,0.1\n") == [(1, "prefix", "missing column")]
    errs = errors_of("prefix,prce\n44,0.1\n")
    assert (1, "price", "missing column") in errs
    assert any(line == 1 and col == "prce" and msg.startswith("unknown column")
               for line, col, msg in errs)
    assert errors_of("prefix,price,price\n44,1,1\n") == [(1, "price", "column appears twice")]
    assert errors_of("") == [(1, None, "empty deck: no header row")]
    assert errors_of("prefix,price\n") == [(1, None, "the deck has no rows")]


def test_the_error_message_names_the_rows():
    with pytest.raises(RateDeckError) as err:
        parse_deck_csv("prefix,price\n44,1\n44,2\nx,1\n", name="promo")
    text = str(err.value)
    assert text.startswith("deck promo: 2 error(s): line 3, column prefix: duplicate prefix 44")
    assert "line 4, column prefix: prefix 'x' is not all digits" in text


def test_same_prefix_with_disjoint_dates_is_a_rate_change():
    deck = parse_deck_csv("prefix,price,effective_from,effective_to\n"
                          "44,0.10,,2026-12-01\n44,0.05,2026-12-01,\n")
    assert [r.price for r in deck.rows()] == [100_000, 50_000]
    assert errors_of("prefix,price,effective_from,effective_to\n"
                     "44,0.10,,2026-12-02\n44,0.05,2026-12-01,\n")[0][:2] == (3, "prefix")


def test_programmatic_decks_are_validated_like_csv():
    with pytest.raises(RateDeckError) as err:
        Deck.from_rows([DeckRow("44", 1), DeckRow("44", 2), DeckRow("1", -5, increment=0)],
                       name="code")
    assert [(e.line, e.column) for e in err.value.errors] == [
        (2, "prefix"), (3, "price"), (3, "increment")]
    with pytest.raises(ValidationError, match="price values must be"):
        Deck.from_columns(name="raw", keys=[(44 << 4) | 2], price=[-1])
    with pytest.raises(ValidationError, match="deck unit"):
        parse_deck_csv(GOOD, unit="hour")
    with pytest.raises(ValidationError, match="unknown time zone"):
        parse_deck_csv(GOOD, tz="Nowhere/City")
