"""Offline mediation of CDR files: FreeSWITCH mod_cdr_csv and Asterisk Master.csv
samples (tests/data/cdrs, written from the documented layouts, with malformed
lines), generic CSV; batch rating against hand-computed charges on both
engines, every reject with its line and reason.

The tariff (Europe/Zurich, peak Mon-Fri 08:00-19:00, national prefix 0 -> 41):
London 4420 is 1.00/min off-peak and 2.00/min peak at 60/60; UK mobile 4479 is
0.30/min, 0.10 connection fee, minimum 30 s, 30/6; Switzerland 41 0.10/min
60/60; USA 1 0.05/min 1/1.
"""

from __future__ import annotations

import csv
import io
import os

import pytest

from ocs import mediation
from ocs.errors import ValidationError
from ocs.rating import (BandRule, ExchangeRate, Numbering, RatingError, Rounding,
                        TariffDefinition, compile, parse_deck_csv)
from tests.test_rating import engine  # noqa: F401  (pure and compiled)

DATA = os.path.join(os.path.dirname(__file__), "data", "cdrs")
EUR = 1_000_000


def read(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


def retail(engine: str, **kw):
    deck = parse_deck_csv(read("retail-base.csv"), name="base", tz="Europe/Zurich")
    values = dict(name="retail", currency="EUR", timezone="Europe/Zurich",
                  rounding=Rounding(2, "up"), numbering=Numbering("00", "0", "41"),
                  bands=(BandRule.from_dict({"band": "peak", "days": "mon-fri",
                                             "from": "08:00", "to": "19:00"}),),
                  default_band="offpeak", decks=(deck,),
                  exchange_rates=(ExchangeRate("EUR", "CHF", 950_000_000, 0),))
    values.update(kw)
    return compile(TariffDefinition(**values), engine=engine)


def by_line(result):
    return ({c.line: c for c in result.rated}, {r.line: r for r in result.rejects})


def test_freeswitch_default_template_rated_by_hand(engine):
    tariff = retail(engine)
    result = mediation.rate_cdrs(tariff, read("freeswitch.csv"), "freeswitch")
    rated, rejects = by_line(result)
    # 18:59:00 answered, 185 s: 60 s peak at 2.00 + 180 s off-peak at 1.00 (240 s billed).
    alice = rated[1]
    assert (alice.callee, alice.billed, alice.cost, alice.destination, alice.prefix,
            alice.deck_line) == ("442079460000", 240, 5 * EUR, "London", "4420", 4)
    assert alice.call_id == "a1b2c3d4-0001-4000-8000-000000000001"
    assert mediation.iso_utc(alice.start) == "2026-11-25T17:59:00Z"  # Zurich is UTC+1
    # 00-prefixed UK mobile, 61 s: 30 s minimum + 6 x 6 s = 66 s at 0.30 + 0.10 fee.
    assert (rated[2].caller, rated[2].billed, rated[2].cost, rated[2].destination) == (
        "1002", 66, 430_000, "UK mobile")
    # A national number (0 + 442...) is Swiss: 41442079460000 at 0.10/min off-peak.
    assert (rated[8].destination, rated[8].billed, rated[8].cost) == ("Switzerland", 60,
                                                                      100_000)
    assert sorted(rated) == [1, 2, 8]
    assert {line: r.reason for line, r in rejects.items()} == {
        3: "zero_duration", 4: "unparseable", 5: "no_route", 6: "bad_number",
        7: "bad_duration", 10: "bad_time", 11: "negative_duration"}
    assert "not answered" in rejects[3].message
    assert "at least 13 fields" in rejects[4].message and "got 5" in rejects[4].message
    assert rejects[5].callee == "8612345678" and "no rate for 8612345678" in rejects[5].message
    assert (rejects[5].caller, rejects[5].call_id) == ("1005",
                                                       "a1b2c3d4-0005-4000-8000-000000000005")
    assert "'sixty'" in rejects[7].message
    assert "2026-13-45 99:00:00" in rejects[10].message
    assert result.total_cost == 5_530_000
    assert result.reasons()["no_route"] == 1 and sum(result.reasons().values()) == 7


def test_asterisk_master_csv_rated_by_hand(engine):
    tariff = retail(engine)
    result = mediation.rate_cdrs(tariff, read("Master.csv"), "asterisk")
    rated, rejects = by_line(result)
    assert {line: (c.cost, c.billed, c.destination) for line, c in rated.items()} == {
        1: (5 * EUR, 240, "London"), 3: (430_000, 66, "UK mobile"),
        5: (100_000, 120, "USA and Canada")}   # 120 s at 1/1 and 0.05/min
    assert rated[1].call_id == "1764093530.1"      # uniqueid, logged when configured
    assert rated[3].call_id == ""                  # 16 fields: uniqueid not logged
    assert rated[1].caller == "1001"
    assert {line: r.reason for line, r in rejects.items()} == {
        2: "zero_duration", 4: "unparseable", 6: "no_route", 7: "zero_duration"}
    assert "NO ANSWER" in rejects[2].message and "BUSY" in rejects[7].message
    assert "at least 16 fields" in rejects[4].message
    assert result.total_cost == 5_530_000


def test_batch_matches_rating_each_call_alone(engine):
    tariff = retail(engine)
    for name, fmt in (("freeswitch.csv", "freeswitch"), ("Master.csv", "asterisk")):
        for c in mediation.rate_cdrs(tariff, read(name), fmt).rated:
            alone = tariff.rate("voice", c.duration, start=c.start, to=c.callee)
            assert (alone.cost, alone.rated_units, alone.destination.line) == (
                c.cost, c.billed, c.deck_line)


def test_what_if_with_another_currency_and_time_zone(engine):
    tariff = retail(engine)
    chf = mediation.rate_cdrs(tariff, read("Master.csv"), "asterisk", currency="CHF")
    # Each charge converted at 0.95 and rounded up to cents: 4.75 + 0.41 (0.4085) + 0.10
    # (0.095).
    assert chf.currency == "CHF" and chf.total_cost == 5_260_000
    # The same wall-clock times read as UTC: Alice's call starts at 18:59 UTC,
    # 19:59 in Zurich, all off-peak: 240 s at 1.00.
    utc = mediation.rate_cdrs(tariff, read("Master.csv"), "asterisk", tz="UTC")
    assert utc.time_zone == "UTC"
    assert by_line(utc)[0][1].cost == 4 * EUR
    with pytest.raises(RatingError) as info:
        mediation.rate_cdrs(tariff, read("Master.csv"), "asterisk", currency="USD")
    assert info.value.reason == "no_fx"
    with pytest.raises(RatingError) as info:
        mediation.rate_cdrs(tariff, read("Master.csv"), "asterisk", service="sms")
    assert info.value.reason == "unknown_service"


def test_generic_csv_with_header_aliases(engine):
    tariff = retail(engine)
    text = ("Call_ID,Caller,Destination,Answer,Billsec,Notes\n"
            "c1,1001,+442079460000,2026-11-25T19:00:00,185,first\n"
            "c2,1001,+442079460000,2026-11-25T18:00:00Z,185,\n"
            "c3,1001,442079460000,yesterday,60,\n"
            "c4,1001,442079460000,2026-11-25T19:00:00,0,\n"
            "c5,1001\n")
    result = mediation.rate_cdrs(tariff, text, "generic")
    rated, rejects = by_line(result)
    assert rated[2].cost == 4 * EUR and rated[2].call_id == "c1"
    # 18:00Z is 19:00 in Zurich: the same off-peak charge.
    assert rated[3].cost == 4 * EUR
    assert {line: r.reason for line, r in rejects.items()} == {
        4: "bad_time", 5: "zero_duration", 6: "unparseable"}
    with pytest.raises(ValidationError, match="no column to, duration"):
        mediation.parse_cdrs("id,start\nx,2026-11-25T19:00\n", "generic")
    with pytest.raises(ValidationError, match="empty"):
        mediation.parse_cdrs("\n\n", "generic")
    with pytest.raises(ValidationError, match="unknown CDR format"):
        mediation.parse_cdrs("", "kamailio")
    with pytest.raises(ValidationError, match="time zone"):
        mediation.parse_cdrs("", "freeswitch", tz="Mars/Olympus")


def test_header_rows_blank_lines_and_quoted_fields(engine):
    tariff = retail(engine)
    header = ('"caller_id_name","caller_id_number","destination_number","context",'
              '"start_stamp","answer_stamp","end_stamp","duration","billsec","hangup_cause",'
              '"uuid","bleg_uuid","accountcode"\n')
    line = ('"O\'Brien, ""Pat""","1001","447911123456","default","2026-11-25 10:00:00",'
            '"2026-11-25 10:00:10","2026-11-25 10:01:11","71","61","NORMAL_CLEARING",'
            '"u-1","",""\n')
    # Without an answer time the billed part ends at the end time.
    no_answer = ('"x","1002","447911123456","default","2026-11-25 10:00:00","",'
                 '"2026-11-25 10:01:11","71","61","NORMAL_CLEARING","u-2","",""\n')
    result = mediation.rate_cdrs(tariff, header + "\n" + line + no_answer, "freeswitch")
    rated, rejects = by_line(result)
    assert not rejects and sorted(rated) == [3, 4]
    assert rated[3].cost == rated[4].cost == 430_000
    assert rated[4].start == rated[3].start
    # A quote left open runs to the end of the file: one unparseable record.
    broken = mediation.rate_cdrs(tariff, line + '"x","1002","4479\n', "freeswitch")
    assert [c.line for c in broken.rated] == [1]
    assert [(r.line, r.reason) for r in broken.rejects] == [(2, "unparseable")]
    # A field over the CSV reader's limit is refused on its line; reading goes on.
    huge = mediation.rate_cdrs(tariff, line + '"' + "x" * 200_000 + '",1\n' + line,
                               "freeswitch")
    assert [c.line for c in huge.rated] == [1, 3]
    assert [(r.line, r.reason) for r in huge.rejects] == [(2, "unparseable")]
    assert "field larger than field limit" in huge.rejects[0].message


def test_rated_csv_has_one_row_per_line_in_order(engine):
    tariff = retail(engine)
    result = mediation.rate_cdrs(tariff, read("freeswitch.csv"), "freeswitch")
    out = io.StringIO()
    n = mediation.write_csv(out, [mediation.call_dict(c, "EUR") for c in result.rated],
                            [mediation.reject_dict(r) for r in result.rejects], "EUR")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert n == len(rows) == 10
    assert tuple(rows[0]) == mediation.CSV_COLUMNS
    assert [r["line"] for r in rows] == ["1", "2", "3", "4", "5", "6", "7", "8", "10", "11"]
    assert rows[0]["status"] == "ok" and rows[0]["cost"] == "5.00" and rows[0]["billed"] == "240"
    assert rows[0]["start"] == "2026-11-25T17:59:00Z" and rows[0]["currency"] == "EUR"
    assert rows[4]["status"] == "no_route" and rows[4]["cost"] == ""
    assert "no rate for 8612345678" in rows[4]["message"]
