"""The pure-Python rating engine: the twin of `cext/rating.pyx`.

Both engines are built from the same integer tables (`ocs.rating.compile.Tables`)
and must return identical results on every input: tests run one contract
against both and a hypothesis differential test compares them on random
tariffs. `ocs.accel.rating` is whichever is active; this module is also the
reference for what the compiled one computes.

Definitions (all integers; `x` is cumulative usage from the start `t0`):

* billed(x) = 0 if x <= 0; else with m = max(x, minimum): `increment` if
  m <= increment, else increment + ceil((m - increment) / next) * next.
* Destination rows: the billed seconds are laid on the clock from `t0` (second
  k covers [t0 + k s, t0 + (k+1) s)) and each second is priced in the band its
  start falls in (voice decks; event decks use the band at `t0` for every
  unit). num = sum(seconds * band price); usage = ceil(num / per) with per = 60
  for a price per minute, 1 for a price per event; total = fee + usage.
* Usage rates (data, events): billed(x) with minimum 0 is split over the tiers;
  total = ceil(sum(units in tier * tier price) / unit).
* Money: the total (micro-units, tariff currency) is converted when an
  exchange rate `fx` (scaled by FX_SCALE) is given, then rounded once to a
  multiple of `quantum` with the tariff's mode. C(0) = 0. A result above CAP
  is an overflow.
* max usage: the largest u in [0, limit] with C(a + u) - C(a) <= money, found by
  galloping then bisection on C itself (so it respects increments, minimums,
  the fee and band changes by construction).

Prefix lookup: the longest prefix of the normalised number that has a row
effective at the instant; among the rows of one prefix, the highest deck
priority wins. A prefix with no row effective at that instant is skipped, so
a shorter prefix (or a lower-priority deck's) fills in.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

OK, BAD_NUMBER, NO_ROUTE, OUT_OF_RANGE, OVERFLOW, NO_FX = 0, 1, 2, 3, 4, 5
STATUS_NAMES = ("ok", "bad_number", "no_route", "out_of_range", "overflow", "no_fx")
MODE_UP, MODE_DOWN, MODE_HALF_UP, MODE_HALF_EVEN = 0, 1, 2, 3

US = 1_000_000
DAY_US = 86400 * US
WEEK_US = 7 * DAY_US
CAP = 1 << 62
OPEN_TO = 1 << 62
START_MAX = 1 << 61          # instants accepted as a start: [0, START_MAX]
FX_SCALE = 10 ** 9
MAX_DIGITS = 15
# Row layout of the destination tables (ocs.rating.decks.Deck.table).
COL_FROM, COL_TO, COL_FEE, COL_MIN, COL_INC1, COL_INC2, COL_PRICE, COL_KEY, COL_DEST = range(9)
FIXED_COLUMNS = 9
_POW10 = [10 ** i for i in range(19)]


def billed_units(x: int, minimum: int, first: int, nxt: int) -> int:
    if x <= 0:
        return 0
    if x < minimum:
        x = minimum
    if x <= first:
        return first
    return first + (x - first + nxt - 1) // nxt * nxt


def round_div(num: int, den: int, mode: int) -> int:
    """num / den rounded to an integer (num >= 0, den > 0)."""
    q, r = divmod(num, den)
    if r == 0 or mode == MODE_DOWN:
        return q
    if mode == MODE_UP:
        return q + 1
    twice = 2 * r
    if twice > den or (twice == den and (mode == MODE_HALF_UP or q & 1)):
        return q + 1
    return q


class _Dest:
    """One destination service (voice, sms...): its rows and prefix index."""

    def __init__(self, d, nbands: int):
        self.per = d.per
        if self.per < 1:
            raise ValueError("columns", -1, -1)
        self.piecewise = bool(d.piecewise)
        self.limit = d.limit
        cols = list(d.price_cols)
        if len(cols) != nbands:
            raise ValueError("bands", -1, -1)
        stride = d.stride
        rows = list(d.rows)
        if (stride < FIXED_COLUMNS or len(rows) % stride
                or any(not (c == COL_PRICE or FIXED_COLUMNS <= c < stride) for c in cols)):
            raise ValueError("columns", -1, -1)
        n = len(rows) // stride
        prio = list(d.prio) if d.prio is not None else [0] * n
        if len(prio) != n:
            raise ValueError("columns", -1, -1)
        # Column lists: the twin favours plain indexing over the row-major layout.
        keys = rows[COL_KEY::stride]
        self.fee, self.minimum = rows[COL_FEE::stride], rows[COL_MIN::stride]
        self.inc1, self.inc2 = rows[COL_INC1::stride], rows[COL_INC2::stride]
        self.vfrom, self.vto = rows[COL_FROM::stride], rows[COL_TO::stride]
        self.prices = [rows[c::stride] for c in cols]
        for r in range(n):
            k = keys[r]
            length, value = k & 15, k >> 4
            if not (1 <= length <= MAX_DIGITS and 0 <= value < _POW10[length]):
                raise ValueError("bad-prefix", r, -1)
            if self.vfrom[r] >= self.vto[r]:
                raise ValueError("bad-window", r, -1)
            if not (0 <= self.fee[r] <= d.max_price and 0 <= self.minimum[r] <= d.max_count
                    and 1 <= self.inc1[r] <= d.max_count and 1 <= self.inc2[r] <= d.max_count
                    and all(0 <= p[r] <= d.max_price for p in self.prices)):
                raise ValueError("bad-value", r, -1)
        # The compiled engine's order: by the interval a prefix covers in the 15-digit
        # space, then length, priority (highest first), effective_from, row.
        def place(r: int) -> tuple:
            length = keys[r] & 15
            return ((keys[r] >> 4) * _POW10[MAX_DIGITS - length], length, -prio[r],
                    self.vfrom[r], r)
        order = sorted(range(n), key=place)
        self.entries: dict[int, tuple[int, ...]] = {}
        i = 0
        while i < n:
            j = i
            key = keys[order[i]]
            while j < n and keys[order[j]] == key:
                j += 1
            group = order[i:j]
            run_prio = None
            max_to = max_row = 0
            for r in group:
                if prio[r] != run_prio:
                    run_prio, max_to, max_row = prio[r], self.vto[r], r
                    continue
                if self.vfrom[r] < max_to:
                    raise ValueError("overlap", max_row, r)
                if self.vto[r] > max_to:
                    max_to, max_row = self.vto[r], r
            self.entries[key] = tuple(group)
            i = j

    def find(self, digits: bytes, at: int) -> int:
        n = len(digits)
        value = int(digits)
        for length in range(n, 0, -1):
            rows = self.entries.get(((value // _POW10[n - length]) << 4) | length)
            if rows:
                for r in rows:
                    if self.vfrom[r] <= at < self.vto[r]:
                        return r
        return -NO_ROUTE


class Engine:
    """Rates with the tables of one compiled tariff. Not thread-safe to build,
    read-only afterwards (a reload builds a new engine)."""

    implementation = "pure-python"

    def __init__(self, t):
        self.quantum = t.quantum
        self.mode = t.mode
        self.nbands = t.nbands
        if not 1 <= self.nbands <= 16:
            raise ValueError("bands", -1, -1, -1)
        if not (1 <= self.quantum <= 1_000_000 and 0 <= self.mode <= 3):
            raise ValueError("money", -1, -1, -1)
        self.tz_at, self.tz_off = list(t.tz_at), list(t.tz_off)
        self.week_start, self.week_band = list(t.week_start), list(t.week_band)
        self.hol_day, self.hol_band = list(t.hol_day), list(t.hol_band)
        if len(self.tz_at) != len(self.tz_off) or len(self.week_start) != len(self.week_band) \
                or len(self.hol_day) != len(self.hol_band):
            raise ValueError("columns", -1, -1, -1)
        self.intl, self.natl, self.cc = bytes(t.intl), bytes(t.natl), bytes(t.cc)
        if len(self.intl) > 8 or len(self.natl) > 8 or len(self.cc) > 8:
            raise ValueError("numbering", -1, -1, -1)
        if not (self.tz_at and self.week_start and self.week_start[0] == 0):
            raise ValueError("clock", -1, -1, -1)
        if not all(0 <= b < self.nbands for b in self.week_band + self.hol_band):
            raise ValueError("clock", -1, -1, -1)
        self.dests = []
        for svc, d in enumerate(t.dests):
            try:
                self.dests.append(_Dest(d, self.nbands))
            except ValueError as exc:  # say which service: ("overlap", svc, row, other)
                raise ValueError(exc.args[0], svc, *exc.args[1:]) from None
        u = t.usage
        self.u_unit, self.u_inc1, self.u_inc2 = list(u.unit), list(u.inc1), list(u.inc2)
        self.u_limit = list(u.limit)
        self.u_first, self.u_count = list(u.tier_first), list(u.tier_count)
        self.t_upto, self.t_price = list(u.tier_upto), list(u.tier_price)
        n = len(self.u_unit)
        if any(len(c) != n for c in (self.u_inc1, self.u_inc2, self.u_limit, self.u_first,
                                     self.u_count)) or len(self.t_upto) != len(self.t_price):
            raise ValueError("columns", -1, -1, -1)
        for k in range(n):
            if (self.u_unit[k] < 1 or self.u_inc1[k] < 1 or self.u_inc2[k] < 1
                    or self.u_first[k] < 0 or self.u_count[k] < 1
                    or self.u_first[k] + self.u_count[k] > len(self.t_upto)):
                raise ValueError("usage", k, -1, -1)

    def nbytes(self) -> int:
        """Rough size of what the engine allocated itself (for the benchmark)."""
        import sys
        total = 0
        for d in self.dests:
            total += sys.getsizeof(d.entries) + sum(sys.getsizeof(v) for v in d.entries.values())
        return total

    # ------------------------------------------------------------------ numbers
    def normalise(self, number: bytes) -> bytes | None:
        if number[:1] == b"+":
            rest = number[1:]
        elif self.intl and number.startswith(self.intl):
            rest = number[len(self.intl):]
        elif self.natl and number.startswith(self.natl):
            rest = self.cc + number[len(self.natl):]
        else:
            rest = number
        if not 1 <= len(rest) <= MAX_DIGITS or not rest.isdigit():
            return None
        return rest

    def lookup(self, svc: int, number: bytes, at: int) -> int:
        """The row for `number` at `at`, or -BAD_NUMBER / -NO_ROUTE."""
        if not 0 <= svc < len(self.dests):
            raise IndexError("service index out of range")
        digits = self.normalise(number)
        if digits is None:
            return -BAD_NUMBER
        return self.dests[svc].find(digits, at)

    # ------------------------------------------------------------------ clock
    def band_span(self, t: int) -> tuple[int, int]:
        """(band at instant t, the next instant the band may change)."""
        i = bisect_right(self.tz_at, t) - 1
        if i < 0:
            i = 0
        off = self.tz_off[i]
        end = self.tz_at[i + 1] if i + 1 < len(self.tz_at) else OPEN_TO
        local = t + off
        day = local // DAY_US
        midnight = (day + 1) * DAY_US
        if self.hol_day:
            h = bisect_left(self.hol_day, day)
            if h < len(self.hol_day) and self.hol_day[h] == day:
                return self.hol_band[h], min(end, t + (midnight - local))
        sow = ((day + 3) % 7) * DAY_US + (local - day * DAY_US)
        k = bisect_right(self.week_start, sow) - 1
        change = self.week_start[k + 1] if k + 1 < len(self.week_start) else WEEK_US
        local_end = local + (change - sow)
        if self.hol_day and midnight < local_end:
            local_end = midnight
        return self.week_band[k], min(end, t + (local_end - local))

    def band_at(self, t: int) -> int:
        return self.band_span(t)[0] if self.nbands > 1 else 0

    # ------------------------------------------------------------------ money
    def _money(self, total: int, fx: int) -> int:
        """Converted and rounded; -1 on overflow."""
        if total > CAP:
            return -1
        q = self.quantum
        if fx:
            value = round_div(total * fx, FX_SCALE * q, self.mode) * q
        else:
            value = round_div(total, q, self.mode) * q
        return value if value <= CAP else -1

    # ------------------------------------------------------------------ destinations
    def _dest_num(self, d: _Dest, row: int, t0: int, skip: int, n: int) -> int:
        if self.nbands == 1:
            return n * d.prices[0][row]
        if not d.piecewise:
            return n * d.prices[self.band_at(t0)][row]
        pos, left, num = t0 + skip * US, n, 0
        while left > 0:
            band, end = self.band_span(pos)
            k = min((end - pos + US - 1) // US, left)
            num += k * d.prices[band][row]
            pos += k * US
            left -= k
        return num

    def _dest_total(self, d: _Dest, row: int, t0: int, x: int, fx: int) -> int:
        if x <= 0:
            return 0
        billed = billed_units(x, d.minimum[row], d.inc1[row], d.inc2[row])
        num = self._dest_num(d, row, t0, 0, billed)
        return self._money(d.fee[row] + (num + d.per - 1) // d.per, fx)

    def _dest(self, svc: int, row: int) -> _Dest:
        if not 0 <= svc < len(self.dests):
            raise IndexError("service index out of range")
        if not 0 <= row < len(self.dests[svc].fee):
            raise IndexError("row out of range")
        return self.dests[svc]

    def dest_billed(self, svc: int, row: int, x: int) -> int:
        d = self._dest(svc, row)
        _check_usage(x, d.limit)
        return billed_units(x, d.minimum[row], d.inc1[row], d.inc2[row])

    def dest_cost(self, svc: int, row: int, t0: int, x: int, fx: int) -> int:
        """C(x): the charge of cumulative usage x from t0 (OverflowError beyond CAP)."""
        d = self._dest(svc, row)
        _check_usage(x, d.limit)
        _check_start(t0)
        value = self._dest_total(d, row, t0, x, fx)
        if value < 0:
            raise OverflowError("rating result beyond 2**62")
        return value

    def dest_pieces(self, svc: int, row: int, t0: int, skip: int, n: int) -> list:
        """[(band, seconds)] of billed seconds [skip, skip + n) laid from t0."""
        d = self._dest(svc, row)
        _check_start(t0)
        if n <= 0:
            return []
        _check_usage(skip + n, d.limit + d.inc1[row] + d.inc2[row] + d.minimum[row])
        if self.nbands == 1 or not d.piecewise:
            return [(self.band_at(t0), n)]
        out: list = []
        pos, left = t0 + skip * US, n
        while left > 0:
            band, end = self.band_span(pos)
            k = min((end - pos + US - 1) // US, left)
            if out and out[-1][0] == band:
                out[-1] = (band, out[-1][1] + k)
            else:
                out.append((band, k))
            pos += k * US
            left -= k
        return out

    def dest_max(self, svc: int, row: int, t0: int, a: int, money: int, fx: int,
                 limit: int) -> int:
        d = self._dest(svc, row)
        _check_start(t0)
        return self._max(lambda x: self._dest_total(d, row, t0, x, fx), a, money,
                         min(limit, d.limit - a))

    # ------------------------------------------------------------------ usage rates
    def _usage_total(self, i: int, x: int, fx: int) -> int:
        if x <= 0:
            return 0
        billed = billed_units(x, 0, self.u_inc1[i], self.u_inc2[i])
        num, lo = 0, 0
        for t in range(self.u_first[i], self.u_first[i] + self.u_count[i]):
            if billed <= lo:
                break
            hi = self.t_upto[t]
            num += (min(billed, hi) - lo) * self.t_price[t]
            lo = hi
        unit = self.u_unit[i]
        return self._money((num + unit - 1) // unit, fx)

    def _usage(self, i: int) -> None:
        if not 0 <= i < len(self.u_unit):
            raise IndexError("usage rate index out of range")

    def usage_billed(self, i: int, x: int) -> int:
        self._usage(i)
        _check_usage(x, self.u_limit[i])
        return billed_units(x, 0, self.u_inc1[i], self.u_inc2[i])

    def usage_cost(self, i: int, x: int, fx: int) -> int:
        self._usage(i)
        _check_usage(x, self.u_limit[i])
        value = self._usage_total(i, x, fx)
        if value < 0:
            raise OverflowError("rating result beyond 2**62")
        return value

    def usage_max(self, i: int, a: int, money: int, fx: int, limit: int) -> int:
        self._usage(i)
        return self._max(lambda x: self._usage_total(i, x, fx), a, money,
                         min(limit, self.u_limit[i] - a))

    # ------------------------------------------------------------------ inverse
    @staticmethod
    def _max(total, a: int, money: int, hi: int) -> int:
        if hi <= 0 or money < 0 or a < 0:
            return 0
        base = total(a)
        if base < 0:
            return 0

        def fits(u: int) -> bool:
            c = total(a + u)
            return c >= 0 and c - base <= money

        if fits(hi):
            return hi
        lo, step = 0, 1
        while step < hi:
            if not fits(step):
                hi = step
                break
            lo = step
            step *= 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ batch
    def rate_batch(self, svc: int, numbers, offsets, starts, durations, fx_from, fx_rate,
                   out_cost, out_billed, out_row, out_status) -> int:
        """Rate whole calls: numbers[offsets[i]:offsets[i+1]] at starts[i] for
        durations[i]; writes one result per call into the out arrays and returns
        how many rated OK. A failed call gets cost 0, billed 0, row -1 and its
        status (BAD_NUMBER, NO_ROUTE, OUT_OF_RANGE, OVERFLOW, NO_FX)."""
        if not 0 <= svc < len(self.dests):
            raise IndexError("service index out of range")
        d = self.dests[svc]
        n = len(starts)
        if (len(offsets) != n + 1 or len(durations) != n or len(out_cost) < n
                or len(out_billed) < n or len(out_row) < n or len(out_status) < n
                or len(fx_from) != len(fx_rate)):
            raise ValueError("array lengths do not match")
        buf = bytes(numbers)
        for i in range(n + 1):
            if offsets[i] < 0 or offsets[i] > len(buf) or (i > 0 and offsets[i] < offsets[i - 1]):
                raise ValueError("offsets must rise within the number buffer")
        convert = len(fx_rate) > 0
        good = 0
        for i in range(n):
            t0, x = starts[i], durations[i]
            status, row, cost, billed = OK, -1, 0, 0
            if not (0 <= t0 <= START_MAX and 0 <= x <= d.limit):
                status = OUT_OF_RANGE
            else:
                fx = 0
                if convert:
                    j = bisect_right(fx_from, t0) - 1
                    if j < 0:
                        status = NO_FX
                    else:
                        fx = fx_rate[j]
                if status == OK:
                    found = self.lookup(svc, buf[offsets[i]:offsets[i + 1]], t0)
                    if found < 0:
                        status = -found
                    else:
                        total = self._dest_total(d, found, t0, x, fx)
                        if total < 0:
                            status = OVERFLOW
                        else:
                            row, cost = found, total
                            billed = billed_units(x, d.minimum[row], d.inc1[row], d.inc2[row])
                            good += 1
            out_cost[i], out_billed[i], out_row[i], out_status[i] = cost, billed, row, status
        return good


def _check_usage(x: int, limit: int) -> None:
    if x < 0 or x > limit:
        raise ValueError(f"usage {x} out of range 0..{limit}")


def _check_start(t0: int) -> None:
    if t0 < 0 or t0 > START_MAX:
        raise ValueError(f"start instant {t0} out of range")
