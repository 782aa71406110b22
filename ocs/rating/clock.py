"""Time bands as integer tables the engines can walk without a time-zone library.

Rating needs, for any UTC instant, the band it falls in and the next instant
the band may change. Three sorted tables answer that with binary searches:

* the time zone as UTC transition instants with their offsets, sampled from
  `zoneinfo` once per zone (1970-2100; the offsets in force at either end hold
  beyond it);
* the week as change points in local time (microseconds after Monday 00:00)
  with the band from each point on, built from the tariff's `BandRule`s;
* holidays as local day numbers (days since 1970-01-01) with their band, which
  apply to the whole local day and take precedence over the week.

Both engines (`ocs.rating.engine` and `cext/rating.pyx`) read these same
tables, so they agree on every boundary, including DST changes.
"""

from __future__ import annotations

import datetime as _dt
from array import array
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ValidationError
from .model import OPEN_FROM, US, BandRule, Holiday

DAY_US = 86400 * US
WEEK_US = 7 * DAY_US
_SAMPLE_FROM = 0                 # 1970-01-01T00:00Z
_SAMPLE_TO = 4102444800          # 2100-01-01T00:00Z
_STEP = 86400                    # zone offsets change at most once a day


@lru_cache(maxsize=64)
def zone_table(name: str) -> tuple[array, array]:
    """(transition instants in µs, offset in µs from each instant on) for a zone.

    The first instant is `OPEN_FROM`. Offsets are sampled daily and each change
    is then located to the second by bisection.
    """
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {name!r}") from None

    def offset(ts: int) -> int:
        return int(_dt.datetime.fromtimestamp(ts, zone).utcoffset().total_seconds())

    at, off = array("q", [OPEN_FROM]), array("q", [offset(_SAMPLE_FROM) * US])
    prev_ts, prev = _SAMPLE_FROM, offset(_SAMPLE_FROM)
    for ts in range(_SAMPLE_FROM + _STEP, _SAMPLE_TO + 1, _STEP):
        cur = offset(ts)
        if cur != prev:
            lo, hi = prev_ts, ts  # offset(lo) == prev, offset(hi) == cur
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == prev:
                    lo = mid
                else:
                    hi = mid
            at.append(hi * US)
            off.append(cur * US)
            prev = cur
        prev_ts = ts
    return at, off


def week_table(rules: tuple[BandRule, ...], band_index: dict[str, int],
               default: int) -> tuple[array, array]:
    """(change points in µs after local Monday 00:00, band from each point on)."""
    points = {0}
    for rule in rules:
        for day in rule.days:
            points.add(day * 86400 + rule.start)
            points.add(day * 86400 + rule.end % 86400 if rule.end < 86400
                       else (day + 1) * 86400)
    for day in range(1, 7):
        points.add(day * 86400)
    starts, bands = array("q"), array("q")
    for p in sorted(p for p in points if p < 7 * 86400):
        weekday, second = divmod(p, 86400)
        band = default
        for rule in rules:
            if rule.covers(weekday, second):
                band = band_index[rule.band]
                break
        if not bands or bands[-1] != band:
            starts.append(p * US)
            bands.append(band)
    return starts, bands


def holiday_table(holidays: tuple[Holiday, ...], holiday_band: str | None,
                  band_index: dict[str, int]) -> tuple[array, array]:
    """(sorted local day numbers, band of each day)."""
    epoch = _dt.date(1970, 1, 1)
    days: dict[int, int] = {}
    for h in holidays:
        band = h.band or holiday_band
        if band is None:
            raise ValidationError(f"holiday {h.day.isoformat()} has no band and the tariff "
                                  "has no holiday_band")
        number = (h.day - epoch).days
        if number in days:
            raise ValidationError(f"holiday {h.day.isoformat()} is listed twice")
        days[number] = band_index[band]
    ordered = sorted(days)
    return array("q", ordered), array("q", (days[d] for d in ordered))
