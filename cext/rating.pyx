# cython: language_level=3, cdivision=True, boundscheck=False, wraparound=False
# cython: initializedcheck=False
"""Compiled twin of ocs/rating/engine.py: prefix lookup, band walk, rating, inverse.

Identical results to the pure-Python engine on every input (its docstring is
the specification; tests/test_rating_twins.py compares them); only the how
differs:

* rows stay in the deck's row-major int64 table (a memoryview export pins it,
  and it is hinted onto huge pages): one or two cache lines per rated call;
* prefixes are intervals of the 15-digit number space (prefix 447 covers
  447000000000000 up to 448000000000000); nested intervals are cut into
  elementary intervals, each owned by its innermost prefix. A number is padded
  to 15 digits; a direct table by its first 4 digits, then (when an interval
  starts inside that block) one by the next 2, gives the few intervals of its
  6-digit sub-block, found by a branch-free binary search on 8-byte slots: the
  interval's start within the sub-block (it fits 32 bits) and the row of its
  prefix when that prefix has one row. A million-prefix deck rarely puts more
  than a cache line or two of slots in a sub-block, so a lookup touches the
  sub-block table, those slots and the row. Owners (a separate array, read only
  off the common path) link to their longest shorter prefix, which serves both
  prefixes longer than the number and rows not in effect at the instant.
  Compared with probing a hash once per prefix length, this touches three or
  four cache lines per lookup whatever the deck's lengths;
* `rate_batch` runs without the GIL in groups of calls, stage by stage, each
  stage prefetching what the next needs, so the cache misses of a group overlap
  (32 calls to a group measured best: fewer leave misses exposed, more exceed
  the misses a core keeps in flight);
* products of usage and prices use 128-bit intermediates; divisions by the
  time constants are by compile-time constants;
* the clock keeps per-day indexes for the zone and the holidays.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport calloc, free, malloc, qsort

from array import array

# Compile-time constants (C macros), so that divisions by them become multiplications.
cdef extern from *:
    """
    #define OCS_US 1000000LL
    #define OCS_DAY_US 86400000000LL
    #define OCS_WEEK_US 604800000000LL
    #define OCS_CAP 4611686018427387904LL
    #define OCS_START_MAX 2305843009213693952LL
    #define OCS_FX_SCALE 1000000000LL
    #define OCS_BLOCK_SCALE 100000000000LL
    #define OCS_SUB_SCALE 1000000000LL
    """
    const i64 US "OCS_US"
    const i64 DAY_US "OCS_DAY_US"
    const i64 WEEK_US "OCS_WEEK_US"
    const i64 CAP "OCS_CAP"                  # 1 << 62
    const i64 OPEN_TO "OCS_CAP"
    const i64 START_MAX "OCS_START_MAX"      # 1 << 61
    const i64 FX_SCALE "OCS_FX_SCALE"
    const i64 BLOCK_SCALE "OCS_BLOCK_SCALE"  # 10 ** (15 - BLOCK_DIGITS)
    const i64 SUB_SCALE "OCS_SUB_SCALE"      # 10 ** (15 - BLOCK_DIGITS - 2)

cdef enum:
    MAX_DIGITS = 15

cdef extern from *:
    """
    #include <stdlib.h>
    #include <stdint.h>
    #include <sys/mman.h>
    #define OCS_HUGE (2u << 20)
    #ifndef MADV_COLLAPSE
    #define MADV_COLLAPSE 25
    #endif
    /* Large tables on transparent huge pages where the kernel offers them: a
       random row or bound then costs one TLB miss less. Hints only: any failure
       leaves ordinary pages. */
    static void *ocs_table_alloc(size_t size) {
        void *p = NULL;
        if (size < OCS_HUGE)
            return malloc(size ? size : 1);
        if (posix_memalign(&p, OCS_HUGE, size) != 0)
            return NULL;
    #ifdef MADV_HUGEPAGE
        madvise(p, size, MADV_HUGEPAGE);
    #endif
        return p;
    }
    /* Scratch for building an index: mapped and unmapped whole, so it leaves
       neither resident pages nor a raised malloc threshold behind. */
    static void *ocs_scratch_alloc(size_t size) {
        void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    static void ocs_scratch_free(void *p, size_t size) {
        if (p != NULL)
            munmap(p, size ? size : 1);
    }
    static void ocs_huge_hint(const void *start, size_t size) {
    #ifdef MADV_HUGEPAGE
        uintptr_t lo = ((uintptr_t)start + OCS_HUGE - 1) & ~(uintptr_t)(OCS_HUGE - 1);
        uintptr_t hi = ((uintptr_t)start + size) & ~(uintptr_t)(OCS_HUGE - 1);
        if (hi > lo) {
            madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
            madvise((void *)lo, hi - lo, MADV_COLLAPSE);
        }
    #endif
    }
    """
    void* ocs_table_alloc(size_t size) nogil
    void ocs_huge_hint(const void* start, size_t size) nogil
    void* ocs_scratch_alloc(size_t size) nogil
    void ocs_scratch_free(void* p, size_t size) nogil
cdef i64 POW10[19]
cdef i64 _EMPTY[1]

OK, BAD_NUMBER, NO_ROUTE, OUT_OF_RANGE, OVERFLOW, NO_FX = 0, 1, 2, 3, 4, 5
cdef enum:
    C_OK = 0
    C_BAD_NUMBER = 1
    C_NO_ROUTE = 2
    C_OUT_OF_RANGE = 3
    C_OVERFLOW = 4
    C_NO_FX = 5
    MODE_UP = 0
    MODE_DOWN = 1
    MODE_HALF_UP = 2
    MODE_HALF_EVEN = 3

cdef int _i
POW10[0] = 1
for _i in range(1, 19):
    POW10[_i] = POW10[_i - 1] * 10
_EMPTY[0] = 0


ctypedef struct SortItem:
    i64 start          # value * 10 ** (15 - length)
    i64 length
    i64 nprio
    i64 vfrom
    i64 row


cdef int _cmp_items(const void* pa, const void* pb) noexcept nogil:
    cdef const SortItem* a = <const SortItem*>pa
    cdef const SortItem* b = <const SortItem*>pb
    if a.start != b.start:
        return -1 if a.start < b.start else 1
    if a.length != b.length:
        return -1 if a.length < b.length else 1
    if a.nprio != b.nprio:
        return -1 if a.nprio < b.nprio else 1
    if a.vfrom != b.vfrom:
        return -1 if a.vfrom < b.vfrom else 1
    if a.row != b.row:
        return -1 if a.row < b.row else 1
    return 0


cdef inline i64 _floordiv(i64 a, i64 b) noexcept nogil:
    cdef i64 q = a / b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline Py_ssize_t _bisect_right(const i64* a, Py_ssize_t n, i64 x) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline bint _starts(const unsigned char* p, const unsigned char* q, int n) noexcept nogil:
    cdef int k
    for k in range(n):
        if p[k] != q[k]:
            return False
    return True


cdef inline i64 _billed(i64 x, i64 minimum, i64 first, i64 nxt) noexcept nogil:
    if x <= 0:
        return 0
    if x < minimum:
        x = minimum
    if x <= first:
        return first
    return first + (x - first + nxt - 1) / nxt * nxt


cdef inline i64 _round_div64(i64 num, i64 den, int mode) noexcept nogil:
    cdef i64 q = num / den
    cdef i64 r = num - q * den
    if r == 0 or mode == MODE_DOWN:
        return q
    if mode == MODE_UP:
        return q + 1
    if 2 * r > den or (2 * r == den and (mode == MODE_HALF_UP or (q & 1))):
        return q + 1
    return q


cdef inline i128 _round_div(i128 num, i128 den, int mode) noexcept nogil:
    cdef i128 q = num / den
    cdef i128 r = num - q * den
    cdef i128 twice
    if r == 0 or mode == MODE_DOWN:
        return q
    if mode == MODE_UP:
        return q + 1
    twice = 2 * r
    if twice > den or (twice == den and (mode == MODE_HALF_UP or (q & 1))):
        return q + 1
    return q


cdef inline i64 _interval_end(const Dest* d, int32_t e) noexcept nogil:
    """Where entry e's prefix interval ends in the 15-digit space."""
    cdef const Entry* en = &d.entries[e]
    cdef i64 row = en.first if en.count == 1 else d.order[en.first]
    cdef i64 key = d.rows[row * d.stride + COL_KEY]
    return ((key >> 4) + 1) * POW10[MAX_DIGITS - en.length]


cdef inline Py_ssize_t _emit(Bound* bounds, Py_ssize_t nb, i64 point,
                             int32_t owner) noexcept nogil:
    """Record that from `point` on the innermost prefix is `owner`."""
    if bounds[nb - 1].point == point:
        bounds[nb - 1].owner = owner
        return nb
    if bounds[nb - 1].owner == owner:
        return nb
    bounds[nb].point = point
    bounds[nb].owner = owner
    return nb + 1


cdef inline i64 _point(const i64* vals, int n) noexcept nogil:
    """The number padded to 15 digits: its place in the space prefixes cut up."""
    return vals[n] * POW10[MAX_DIGITS - n]


cdef inline void _range(const Dest* d, i64 point, i64* lo, i64* hi) noexcept nogil:
    """The intervals `point` may fall in, lo..hi: the one its 6-digit sub-block
    starts in and those starting inside the sub-block (or at its end, which the
    search never picks). A block with no interval starting inside has lo == hi."""
    cdef i64 blk = point / BLOCK_SCALE
    cdef const int32_t* tab
    cdef int32_t s = d.blocks[blk].sub
    if s < 0:
        lo[0] = d.blocks[blk].lo
        hi[0] = lo[0]
    else:
        tab = d.sub + <i64>s * (SUB_BLOCKS + 1)
        blk = (point / SUB_SCALE) % SUB_BLOCKS
        lo[0] = tab[blk]
        hi[0] = tab[blk + 1]


cdef inline i64 _search(const Dest* d, i64 point, i64 base, i64 top) noexcept nogil:
    """The last interval of base..top starting at or before `point`. The key of
    `base` is never read: interval base holds the sub-block's first number."""
    cdef i64 size = top - base + 1, half
    cdef uint32_t off = <uint32_t>(point % SUB_SCALE)
    # 8-byte slots, 8 to a cache line; branch-free halving (a conditional move).
    while size > 1:
        half = size >> 1
        base = base + half if d.slots[base + half].key <= off else base
        size -= half
    return base


cdef inline i64 _locate(const Dest* d, i64 point) noexcept nogil:
    """The elementary interval holding `point`."""
    cdef i64 base, top
    _range(d, point, &base, &top)
    return _search(d, point, base, top)


cdef inline i64 _resolve(const Dest* d, i64 e, int n, i64 at) noexcept nogil:
    """From the innermost prefix entry e around the number's point to the row:
    skip prefixes longer than the number (they contain its padded point without
    matching it), then take the first effective row, walking to shorter prefixes."""
    cdef const Entry* en
    cdef const i64* row
    cdef i64 r
    cdef int32_t j
    while e >= 0 and d.entries[e].length > n:
        e = d.entries[e].parent
    while e >= 0:
        en = &d.entries[e]
        if en.count == 1:
            row = d.rows + <i64>en.first * d.stride
            if row[COL_FROM] <= at and at < row[COL_TO]:
                return en.first
        else:
            for j in range(en.count):
                r = d.order[en.first + j]
                row = d.rows + r * d.stride
                if row[COL_FROM] <= at and at < row[COL_TO]:
                    return r
        e = en.parent
    return -C_NO_ROUTE


cdef inline i64 _find(const Dest* d, const i64* vals, int n, i64 at) noexcept nogil:
    """Row for the digits whose prefix values are vals[1..n], effective at `at`."""
    return _resolve(d, d.owners[_locate(d, _point(vals, n))], n, at)


cdef inline void _stage_range(const Dest* d, CallState* c) noexcept nogil:
    """Batch stage 2: the intervals to search; prefetch their slots (a sub-block
    rarely holds more than two cache lines of them)."""
    if c.status != C_OK:
        return
    _range(d, c.point, &c.lo, &c.hi)
    ocs_prefetch(&d.slots[c.lo])
    if c.hi > c.lo:
        ocs_prefetch(&d.slots[c.hi])
        if c.hi - c.lo > 8:
            ocs_prefetch(&d.slots[(c.lo + c.hi) >> 1])


cdef inline void _stage_search(const Dest* d, CallState* c) noexcept nogil:
    """Batch stage 3: the interval; prefetch the row of a one-row prefix, else the
    interval's owner."""
    cdef const Slot* slot
    cdef const i64* row
    if c.status != C_OK:
        return
    c.slot = _search(d, c.point, c.lo, c.hi)
    slot = &d.slots[c.slot]
    c.row = -1
    c.e = -1
    if slot.direct >= 0 and (slot.direct & 15) <= c.n:
        c.row = slot.direct >> 4
        row = d.rows + c.row * d.stride
        ocs_prefetch(row)
        ocs_prefetch(row + d.stride - 1)
    elif slot.direct != NO_PREFIX:
        ocs_prefetch(&d.owners[c.slot])


cdef inline void _stage_entry(const Dest* d, CallState* c) noexcept nogil:
    """Batch stage 4: the owner of an interval with no usable direct row; prefetch
    its entry."""
    if c.status == C_OK and c.row < 0 and d.slots[c.slot].direct != NO_PREFIX:
        c.e = d.owners[c.slot]
        if c.e >= 0:
            ocs_prefetch(&d.entries[c.e])


cdef class Engine:
    """Rates with the tables of one compiled tariff (see ocs.rating.engine.Engine)."""

    def __cinit__(self):
        self.tz_by_day = NULL
        self.hol_by_day = NULL
        self.dests = NULL
        self.ndests = 0
        self._keep = []
        self.implementation = "compiled"

    def __dealloc__(self):
        cdef int i
        cdef Dest* d
        free(self.tz_by_day)
        free(self.hol_by_day)
        if self.dests != NULL:
            for i in range(self.ndests):
                d = &self.dests[i]
                free(d.order)
                free(d.entries)
                free(d.slots)
                free(d.owners)
                free(d.blocks)
                free(d.sub)
            free(self.dests)
            self.dests = NULL

    def __init__(self, t):
        cdef Py_ssize_t k
        cdef int svc
        self.quantum = t.quantum
        self.mode = t.mode
        self.nbands = t.nbands
        if not (1 <= self.nbands <= MAXB):
            raise ValueError("bands", -1, -1, -1)
        if not (1 <= self.quantum <= 1000000 and 0 <= self.mode <= 3):
            raise ValueError("money", -1, -1, -1)
        self.ntz = len(t.tz_at)
        self.tz_at = self._column(t.tz_at, self.ntz)
        self.tz_off = self._column(t.tz_off, self.ntz)
        self.nweek = len(t.week_start)
        self.week_start = self._column(t.week_start, self.nweek)
        self.week_band = self._column(t.week_band, self.nweek)
        self.nhol = len(t.hol_day)
        self.hol_day = self._column(t.hol_day, self.nhol)
        self.hol_band = self._column(t.hol_band, self.nhol)
        intl, natl, cc = bytes(t.intl), bytes(t.natl), bytes(t.cc)
        if len(intl) > 8 or len(natl) > 8 or len(cc) > 8:
            raise ValueError("numbering", -1, -1, -1)
        self.n_intl, self.n_natl, self.n_cc = len(intl), len(natl), len(cc)
        for k in range(self.n_intl):
            self.c_intl[k] = intl[k]
        for k in range(self.n_natl):
            self.c_natl[k] = natl[k]
        for k in range(self.n_cc):
            self.c_cc[k] = cc[k]
        if not (self.ntz > 0 and self.nweek > 0 and self.week_start[0] == 0):
            raise ValueError("clock", -1, -1, -1)
        for k in range(self.nweek):
            if not 0 <= self.week_band[k] < self.nbands:
                raise ValueError("clock", -1, -1, -1)
        for k in range(self.nhol):
            if not 0 <= self.hol_band[k] < self.nbands:
                raise ValueError("clock", -1, -1, -1)
        self._day_tables()
        dests = list(t.dests)
        self.dests = <Dest*>calloc(max(1, len(dests)), sizeof(Dest))
        if self.dests == NULL:
            raise MemoryError()
        self.ndests = len(dests)
        for svc in range(self.ndests):
            self._build_dest(svc, &self.dests[svc], dests[svc])
        u = t.usage
        self.nusage = len(u.unit)
        self.u_unit = self._column(u.unit, self.nusage)
        self.u_inc1 = self._column(u.inc1, self.nusage)
        self.u_inc2 = self._column(u.inc2, self.nusage)
        self.u_limit = self._column(u.limit, self.nusage)
        self.u_first = self._column(u.tier_first, self.nusage)
        self.u_count = self._column(u.tier_count, self.nusage)
        self.ntiers = len(u.tier_upto)
        self.t_upto = self._column(u.tier_upto, self.ntiers)
        self.t_price = self._column(u.tier_price, self.ntiers)
        for k in range(self.nusage):
            if (self.u_unit[k] < 1 or self.u_inc1[k] < 1 or self.u_inc2[k] < 1
                    or self.u_first[k] < 0 or self.u_count[k] < 1
                    or self.u_first[k] + self.u_count[k] > self.ntiers):
                raise ValueError("usage", k, -1, -1)

    cdef int _day_tables(self) except -1:
        """Per-day shortcuts for the clock (same answers as the binary searches)."""
        cdef Py_ssize_t k, i = 0
        cdef i64 day
        self.day0 = 0
        self.ndays = 0
        if self.ntz > 1:
            # UTC days from the first transition's day to the last one's.
            self.day0 = _floordiv(self.tz_at[1], DAY_US)
            self.ndays = _floordiv(self.tz_at[self.ntz - 1], DAY_US) - self.day0 + 1
            self.tz_by_day = <int32_t*>malloc(self.ndays * sizeof(int32_t))
            if self.tz_by_day == NULL:
                raise MemoryError()
            for k in range(self.ndays):
                day = (self.day0 + k) * DAY_US
                while i + 1 < self.ntz and self.tz_at[i + 1] <= day:
                    i += 1
                self.tz_by_day[k] = <int32_t>i
        if self.nhol:
            self.hol_first = self.hol_day[0]
            self.hol_last = self.hol_day[self.nhol - 1]
            if self.hol_last - self.hol_first > 1000000:
                raise ValueError("clock", -1, -1, -1)
            self.hol_by_day = <int32_t*>malloc((self.hol_last - self.hol_first + 1)
                                               * sizeof(int32_t))
            if self.hol_by_day == NULL:
                raise MemoryError()
            for k in range(self.hol_last - self.hol_first + 1):
                self.hol_by_day[k] = -1
            for k in range(self.nhol):
                if k and self.hol_day[k] <= self.hol_day[k - 1]:
                    raise ValueError("clock", -1, -1, -1)
                self.hol_by_day[self.hol_day[k] - self.hol_first] = <int32_t>k
        return 0

    cdef const i64* _column(self, object values, Py_ssize_t n) except NULL:
        if not (isinstance(values, array) and values.typecode == "q"):
            values = array("q", values)
        if len(values) != n:
            raise ValueError("columns", -1, -1, -1)
        if n == 0:
            return _EMPTY
        cdef const i64[::1] view = values
        self._keep.append(memoryview(values))  # pins the buffer: it cannot be resized now
        return &view[0]

    cdef int _build_dest(self, int svc, Dest* d, object t) except -1:
        cdef Py_ssize_t n, r, i, j, k, b
        cdef i64 max_price = t.max_price, max_count = t.max_count, stride = t.stride
        cdef i64 key, length, value, run_prio, max_to, max_row, ne
        cdef bint ok
        cdef const i64* prio = NULL
        cdef const i64* row
        cdef SortItem* items = NULL
        d.per = t.per
        d.piecewise = 1 if t.piecewise else 0
        d.limit = t.limit
        if d.per < 1:
            raise ValueError("columns", svc, -1, -1)
        cols = list(t.price_cols)
        if len(cols) != self.nbands:
            raise ValueError("bands", svc, -1, -1)
        table = t.rows
        if stride < FIXED_COLUMNS or len(table) % stride or any(
                not (c == COL_PRICE or FIXED_COLUMNS <= c < stride) for c in cols):
            raise ValueError("columns", svc, -1, -1)
        n = len(table) // stride
        if n >= (1 << 27):  # rows are packed with their prefix length in 31 bits
            raise ValueError("columns", svc, -1, -1)
        d.nrows = n
        d.stride = stride
        for b in range(self.nbands):
            d.pcol[b] = cols[b]
        try:
            d.rows = self._column(table, n * stride)
            with nogil:
                ocs_huge_hint(d.rows, n * stride * sizeof(i64))
            if t.prio is not None:
                prio = self._column(t.prio, n)
        except ValueError:
            raise ValueError("columns", svc, -1, -1)
        for r in range(n):
            row = d.rows + r * stride
            key = row[COL_KEY]
            length = key & 15
            value = key >> 4
            if not (1 <= length <= MAX_DIGITS and 0 <= value < POW10[length]):
                raise ValueError("bad-prefix", svc, r, -1)
            if row[COL_FROM] >= row[COL_TO]:
                raise ValueError("bad-window", svc, r, -1)
            ok = (0 <= row[COL_FEE] <= max_price and 0 <= row[COL_MIN] <= max_count
                  and 1 <= row[COL_INC1] <= max_count and 1 <= row[COL_INC2] <= max_count)
            b = 0
            while ok and b < self.nbands:
                ok = 0 <= row[d.pcol[b]] <= max_price
                b += 1
            if not ok:
                raise ValueError("bad-value", svc, r, -1)

        items = <SortItem*>malloc(max(1, n) * sizeof(SortItem))
        if items == NULL:
            raise MemoryError()
        try:
            for r in range(n):
                row = d.rows + r * stride
                length = row[COL_KEY] & 15
                items[r].start = (row[COL_KEY] >> 4) * POW10[MAX_DIGITS - length]
                items[r].length = length
                items[r].nprio = -prio[r] if prio != NULL else 0
                items[r].vfrom = row[COL_FROM]
                items[r].row = r
            with nogil:
                qsort(items, n, sizeof(SortItem), _cmp_items)
            # Overlapping effective windows at one priority, checked exactly as the twin does.
            i = 0
            while i < n:
                j = i + 1
                while j < n and items[j].start == items[i].start \
                        and items[j].length == items[i].length:
                    j += 1
                run_prio = items[i].nprio
                max_row = items[i].row
                max_to = d.rows[max_row * stride + COL_TO]
                for k in range(i + 1, j):
                    r = items[k].row
                    if items[k].nprio != run_prio:
                        run_prio = items[k].nprio
                        max_to = d.rows[r * stride + COL_TO]
                        max_row = r
                        continue
                    if d.rows[r * stride + COL_FROM] < max_to:
                        raise ValueError("overlap", svc, max_row, r)
                    if d.rows[r * stride + COL_TO] > max_to:
                        max_to = d.rows[r * stride + COL_TO]
                        max_row = r
                i = j
            self._index(d, items, n)
        finally:
            free(items)
        return 0

    cdef int _index(self, Dest* d, void* sorted_items, Py_ssize_t n) except -1:
        """Entries, parent links, elementary intervals and the block tables."""
        cdef SortItem* items = <SortItem*>sorted_items
        cdef Py_ssize_t i, j, k, ne = 0, nb = 0, top = 0, blk, nsub = 0, no = 0
        cdef int32_t* tab
        cdef i64 end, point
        cdef int32_t* stack = NULL
        cdef Bound* bounds = NULL
        cdef size_t scratch
        i = 0
        while i < n:
            j = i + 1
            while j < n and items[j].start == items[i].start \
                    and items[j].length == items[i].length:
                j += 1
            ne += 1
            if j - i > 1:
                no += j - i
            i = j
        d.nentries = ne
        scratch = (2 * ne + 1) * sizeof(Bound)
        d.entries = <Entry*>ocs_table_alloc(max(1, ne) * sizeof(Entry))
        d.order = <int32_t*>ocs_table_alloc(max(1, no) * sizeof(int32_t))
        d.blocks = <Block*>malloc((BLOCKS + 1) * sizeof(Block))
        stack = <int32_t*>malloc((MAX_DIGITS + 2) * sizeof(int32_t))
        bounds = <Bound*>ocs_scratch_alloc(scratch)
        if (d.entries == NULL or d.order == NULL or d.blocks == NULL or stack == NULL
                or bounds == NULL):
            free(stack)
            ocs_scratch_free(bounds, scratch)
            raise MemoryError()
        with nogil:
            bounds[0].point = 0
            bounds[0].owner = -1
            nb = 1
            ne = 0
            no = 0
            i = 0
            while i < n:
                j = i + 1
                while j < n and items[j].start == items[i].start \
                        and items[j].length == items[i].length:
                    j += 1
                if j - i > 1:
                    for k in range(i, j):
                        d.order[no + k - i] = <int32_t>items[k].row
                # Close the intervals that end at or before this one starts.
                while top > 0:
                    end = _interval_end(d, stack[top - 1])
                    if end > items[i].start:
                        break
                    top -= 1
                    nb = _emit(bounds, nb, end, stack[top - 1] if top > 0 else -1)
                d.entries[ne].first = <int32_t>(items[i].row if j - i == 1 else no)
                if j - i > 1:
                    no += j - i
                d.entries[ne].count = <int32_t>(j - i)
                d.entries[ne].parent = stack[top - 1] if top > 0 else -1
                d.entries[ne].length = <int32_t>items[i].length
                nb = _emit(bounds, nb, items[i].start, <int32_t>ne)
                stack[top] = <int32_t>ne
                top += 1
                ne += 1
                i = j
            while top > 0:
                end = _interval_end(d, stack[top - 1])
                top -= 1
                nb = _emit(bounds, nb, end, stack[top - 1] if top > 0 else -1)
        free(stack)
        d.nbounds = nb
        d.slots = <Slot*>ocs_table_alloc(nb * sizeof(Slot))
        d.owners = <int32_t*>ocs_table_alloc(nb * sizeof(int32_t))
        if d.slots == NULL or d.owners == NULL:
            ocs_scratch_free(bounds, scratch)
            raise MemoryError()
        with nogil:
            for j in range(nb):
                # Where the interval starts within its 6-digit sub-block, in (0, 10**9]:
                # one starting exactly on a sub-block's edge only ever ends the search
                # range of the sub-block before it, where it must never be picked.
                point = bounds[j].point
                d.slots[j].key = <uint32_t>((point - 1) % SUB_SCALE + 1) if point > 0 else 0
                k = bounds[j].owner
                d.owners[j] = <int32_t>k
                if k < 0:
                    d.slots[j].direct = NO_PREFIX
                elif d.entries[k].count == 1:
                    d.slots[j].direct = (d.entries[k].first << 4) | d.entries[k].length
                else:
                    d.slots[j].direct = -1
            j = 0
            for blk in range(BLOCKS + 1):
                while j + 1 < nb and bounds[j + 1].point <= blk * BLOCK_SCALE:
                    j += 1
                d.blocks[blk].lo = <int32_t>j
                d.blocks[blk].sub = -1
            for blk in range(BLOCKS):
                # Sub-blocks when an interval starts strictly inside the block.
                j = d.blocks[blk + 1].lo
                if j > d.blocks[blk].lo and (j - d.blocks[blk].lo > 1
                                            or bounds[j].point != (blk + 1) * BLOCK_SCALE):
                    d.blocks[blk].sub = <int32_t>nsub
                    nsub += 1
        d.sub = <int32_t*>malloc(max(1, nsub) * (SUB_BLOCKS + 1) * sizeof(int32_t))
        if d.sub == NULL:
            ocs_scratch_free(bounds, scratch)
            raise MemoryError()
        with nogil:
            for blk in range(BLOCKS):
                if d.blocks[blk].sub < 0:
                    continue
                j = d.blocks[blk].lo
                tab = d.sub + <i64>d.blocks[blk].sub * (SUB_BLOCKS + 1)
                for k in range(SUB_BLOCKS + 1):
                    point = blk * BLOCK_SCALE + k * SUB_SCALE
                    while j + 1 < nb and bounds[j + 1].point <= point:
                        j += 1
                    tab[k] = <int32_t>j
            ocs_scratch_free(bounds, scratch)
        d.bytes_owned = (ne * sizeof(Entry) + no * sizeof(int32_t)
                         + nb * (sizeof(Slot) + sizeof(int32_t))
                         + (BLOCKS + 1) * sizeof(Block)
                         + nsub * (SUB_BLOCKS + 1) * sizeof(int32_t))
        return 0

    def nbytes(self):
        """Bytes the engine allocated itself (the rows stay in the caller's arrays)."""
        cdef i64 total = 0
        cdef int i
        for i in range(self.ndests):
            total += self.dests[i].bytes_owned
        return total

    # ------------------------------------------------------------------ numbers
    cdef int _digits(self, const unsigned char* p, Py_ssize_t n, i64* vals) noexcept nogil:
        """Normalise; vals[L] = value of the first L digits. Returns the digit count or -1."""
        cdef Py_ssize_t i = 0, k
        cdef int count = 0
        cdef i64 v = 0
        cdef unsigned char c
        if n > 0 and p[0] == 43:  # '+'
            i = 1
        elif self.n_intl and n >= self.n_intl and _starts(p, self.c_intl, self.n_intl):
            i = self.n_intl
        elif self.n_natl and n >= self.n_natl and _starts(p, self.c_natl, self.n_natl):
            i = self.n_natl
            for k in range(self.n_cc):
                count += 1
                v = v * 10 + (self.c_cc[k] - 48)
                vals[count] = v
        while i < n:
            c = p[i]
            if c < 48 or c > 57:
                return -1
            count += 1
            if count > MAX_DIGITS:
                return -1
            v = v * 10 + (c - 48)
            vals[count] = v
            i += 1
        if count == 0:
            return -1
        return count

    def normalise(self, bytes number):
        cdef i64 vals[20]
        cdef int n = self._digits(<const unsigned char*>PyBytes_AS_STRING(number),
                                  PyBytes_GET_SIZE(number), vals)
        if n < 0:
            return None
        return f"{vals[n]:0{n}d}".encode()

    def lookup(self, Py_ssize_t svc, bytes number, i64 at):
        """The row for `number` at `at`, or -BAD_NUMBER / -NO_ROUTE."""
        if not 0 <= svc < self.ndests:
            raise IndexError("service index out of range")
        cdef i64 vals[20]
        cdef int n = self._digits(<const unsigned char*>PyBytes_AS_STRING(number),
                                  PyBytes_GET_SIZE(number), vals)
        if n < 0:
            return -C_BAD_NUMBER
        return _find(&self.dests[svc], vals, n, at)

    # ------------------------------------------------------------------ clock
    cdef void _band_span(self, i64 t, int* band, i64* end) noexcept nogil:
        cdef Py_ssize_t i, h, k
        cdef i64 off, nxt, local, day, midnight, sow, change, local_end, utc_day
        # The zone segment: from the per-day index when the day is covered (at most
        # one transition per UTC day, so a short walk), else by binary search.
        utc_day = _floordiv(t, DAY_US) - self.day0
        if 0 <= utc_day < self.ndays:
            i = self.tz_by_day[utc_day]
            while i + 1 < self.ntz and self.tz_at[i + 1] <= t:
                i += 1
        else:
            i = _bisect_right(self.tz_at, self.ntz, t) - 1
            if i < 0:
                i = 0
        off = self.tz_off[i]
        nxt = self.tz_at[i + 1] if i + 1 < self.ntz else OPEN_TO
        local = t + off
        day = _floordiv(local, DAY_US)
        midnight = (day + 1) * DAY_US
        if self.nhol and self.hol_first <= day <= self.hol_last:
            h = self.hol_by_day[day - self.hol_first]
            if h >= 0:
                band[0] = <int>self.hol_band[h]
                end[0] = min(nxt, t + (midnight - local))
                return
        sow = (((day + 3) % 7 + 7) % 7) * DAY_US + (local - day * DAY_US)
        k = 0
        while k + 1 < self.nweek and self.week_start[k + 1] <= sow:
            k += 1
        change = self.week_start[k + 1] if k + 1 < self.nweek else WEEK_US
        local_end = local + (change - sow)
        if self.nhol and midnight < local_end:
            local_end = midnight
        band[0] = <int>self.week_band[k]
        end[0] = min(nxt, t + (local_end - local))

    cdef int _band_at(self, i64 t) noexcept nogil:
        cdef int band = 0
        cdef i64 end
        if self.nbands == 1:
            return 0
        self._band_span(t, &band, &end)
        return band

    def band_span(self, i64 t):
        cdef int band = 0
        cdef i64 end = 0
        self._band_span(t, &band, &end)
        return band, end

    def band_at(self, i64 t):
        return self._band_at(t)

    # ------------------------------------------------------------------ money
    cdef i64 _money(self, i128 total, i64 fx) noexcept nogil:
        cdef i128 q = self.quantum, value
        cdef i64 t64
        if total > CAP:
            return -1
        t64 = <i64>total
        if fx == 0:  # 64-bit division suffices: total <= CAP
            t64 = _round_div64(t64, self.quantum, self.mode) * self.quantum
            return t64 if t64 <= CAP else -1
        value = _round_div(total * fx, <i128>FX_SCALE * q, self.mode) * q
        if value > CAP:
            return -1
        return <i64>value

    # ------------------------------------------------------------------ destinations
    cdef i128 _dest_num(self, Dest* d, i64 row, i64 t0, i64 skip, i64 n) noexcept nogil:
        cdef i64 pos, left, k, end = 0
        cdef int band = 0
        cdef i128 num = 0
        cdef const i64* r = d.rows + row * d.stride
        if self.nbands == 1:
            return <i128>n * r[d.pcol[0]]
        if not d.piecewise:
            return <i128>n * r[d.pcol[self._band_at(t0)]]
        pos = t0 + skip * US
        left = n
        while left > 0:
            self._band_span(pos, &band, &end)
            k = (end - pos + US - 1) / US
            if k > left:
                k = left
            num += <i128>k * r[d.pcol[band]]
            pos += k * US
            left -= k
        return num

    cdef i64 _dest_total(self, Dest* d, i64 row, i64 t0, i64 x, i64 fx) noexcept nogil:
        cdef i64 billed
        cdef i128 num
        cdef const i64* r = d.rows + row * d.stride
        if x <= 0:
            return 0
        billed = _billed(x, r[COL_MIN], r[COL_INC1], r[COL_INC2])
        num = self._dest_num(d, row, t0, 0, billed)
        if num < CAP:  # the common case: 64-bit division
            return self._money(r[COL_FEE] + (<i64>num + d.per - 1) / d.per, fx)
        return self._money(<i128>r[COL_FEE] + (num + d.per - 1) / d.per, fx)

    cdef Dest* _dest(self, Py_ssize_t svc, i64 row) except NULL:
        if not 0 <= svc < self.ndests:
            raise IndexError("service index out of range")
        if not 0 <= row < self.dests[svc].nrows:
            raise IndexError("row out of range")
        return &self.dests[svc]

    def dest_billed(self, Py_ssize_t svc, i64 row, i64 x):
        cdef Dest* d = self._dest(svc, row)
        _check_usage(x, d.limit)
        cdef const i64* r = d.rows + row * d.stride
        return _billed(x, r[COL_MIN], r[COL_INC1], r[COL_INC2])

    def dest_cost(self, Py_ssize_t svc, i64 row, i64 t0, i64 x, i64 fx):
        """C(x): the charge of cumulative usage x from t0 (OverflowError beyond CAP)."""
        cdef Dest* d = self._dest(svc, row)
        _check_usage(x, d.limit)
        _check_start(t0)
        cdef i64 value = self._dest_total(d, row, t0, x, fx)
        if value < 0:
            raise OverflowError("rating result beyond 2**62")
        return value

    def dest_pieces(self, Py_ssize_t svc, i64 row, i64 t0, i64 skip, i64 n):
        """[(band, seconds)] of billed seconds [skip, skip + n) laid from t0."""
        cdef Dest* d = self._dest(svc, row)
        _check_start(t0)
        if n <= 0:
            return []
        cdef const i64* r = d.rows + row * d.stride
        _check_usage(skip + n, d.limit + r[COL_INC1] + r[COL_INC2] + r[COL_MIN])
        if self.nbands == 1 or not d.piecewise:
            return [(self._band_at(t0), n)]
        out = []
        cdef i64 pos = t0 + skip * US, left = n, k, end = 0
        cdef int band = 0
        while left > 0:
            self._band_span(pos, &band, &end)
            k = (end - pos + US - 1) / US
            if k > left:
                k = left
            last = len(out) - 1
            if last >= 0 and out[last][0] == band:
                out[last] = (band, out[last][1] + k)
            else:
                out.append((band, k))
            pos += k * US
            left -= k
        return out

    def dest_max(self, Py_ssize_t svc, i64 row, i64 t0, i64 a, i64 money, i64 fx, i64 limit):
        cdef Dest* d = self._dest(svc, row)
        _check_start(t0)
        return self._max(1, svc, row, t0, a, money, fx, min(limit, d.limit - a))

    # ------------------------------------------------------------------ usage rates
    cdef i64 _usage_total(self, Py_ssize_t i, i64 x, i64 fx) noexcept nogil:
        cdef i64 billed, lo = 0, hi, t, unit
        cdef i128 num = 0
        if x <= 0:
            return 0
        billed = _billed(x, 0, self.u_inc1[i], self.u_inc2[i])
        for t in range(self.u_first[i], self.u_first[i] + self.u_count[i]):
            if billed <= lo:
                break
            hi = self.t_upto[t]
            num += <i128>(min(billed, hi) - lo) * self.t_price[t]
            lo = hi
        unit = self.u_unit[i]
        return self._money((num + unit - 1) / unit, fx)

    cdef int _usage(self, Py_ssize_t i) except -1:
        if not 0 <= i < self.nusage:
            raise IndexError("usage rate index out of range")
        return 0

    def usage_billed(self, Py_ssize_t i, i64 x):
        self._usage(i)
        _check_usage(x, self.u_limit[i])
        return _billed(x, 0, self.u_inc1[i], self.u_inc2[i])

    def usage_cost(self, Py_ssize_t i, i64 x, i64 fx):
        self._usage(i)
        _check_usage(x, self.u_limit[i])
        cdef i64 value = self._usage_total(i, x, fx)
        if value < 0:
            raise OverflowError("rating result beyond 2**62")
        return value

    def usage_max(self, Py_ssize_t i, i64 a, i64 money, i64 fx, i64 limit):
        self._usage(i)
        return self._max(0, i, -1, 0, a, money, fx, min(limit, self.u_limit[i] - a))

    # ------------------------------------------------------------------ inverse
    cdef i64 _total(self, int dest, Py_ssize_t idx, i64 row, i64 t0, i64 x,
                    i64 fx) noexcept nogil:
        if dest:
            return self._dest_total(&self.dests[idx], row, t0, x, fx)
        return self._usage_total(idx, x, fx)

    cdef i64 _max(self, int dest, Py_ssize_t idx, i64 row, i64 t0, i64 a, i64 money, i64 fx,
                  i64 hi) noexcept nogil:
        cdef i64 base, lo = 0, step = 1, mid, c
        if hi <= 0 or money < 0 or a < 0:
            return 0
        base = self._total(dest, idx, row, t0, a, fx)
        if base < 0:
            return 0
        c = self._total(dest, idx, row, t0, a + hi, fx)
        if c >= 0 and c - base <= money:
            return hi
        while step < hi:
            c = self._total(dest, idx, row, t0, a + step, fx)
            if not (c >= 0 and c - base <= money):
                hi = step
                break
            lo = step
            step *= 2
        while hi - lo > 1:
            mid = (lo + hi) / 2
            c = self._total(dest, idx, row, t0, a + mid, fx)
            if c >= 0 and c - base <= money:
                lo = mid
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ batch
    cdef void _stage_parse(self, const Dest* d, CallState* c, const unsigned char* p,
                           Py_ssize_t size, i64 t0, i64 x, const i64* fxf, const i64* fxr,
                           Py_ssize_t nfx) noexcept nogil:
        """Batch stage 1: checks, exchange rate, digits; prefetch the sub-block table."""
        cdef i64 vals[20]
        cdef i64 blk
        cdef Py_ssize_t j
        c.status = C_OK
        c.fx = 0
        if not (0 <= t0 <= START_MAX and 0 <= x <= d.limit):
            c.status = C_OUT_OF_RANGE
            return
        if nfx > 0:
            j = _bisect_right(fxf, nfx, t0) - 1
            if j < 0:
                c.status = C_NO_FX
                return
            c.fx = fxr[j]
        c.n = self._digits(p, size, vals)
        if c.n < 0:
            c.status = C_BAD_NUMBER
            return
        c.point = _point(vals, c.n)
        blk = c.point / BLOCK_SCALE
        if d.blocks[blk].sub >= 0:
            ocs_prefetch(d.sub + <i64>d.blocks[blk].sub * (SUB_BLOCKS + 1)
                         + (c.point / SUB_SCALE) % SUB_BLOCKS)

    cdef i64 _stage_rate(self, Dest* d, const CallState* c, i64 t0, i64 x, i64* cost,
                         i64* billed, i64* row_out, i64* status_out) noexcept nogil:
        """Batch stage 5: resolve the row (effective dates, shorter prefixes), rate, write."""
        cdef i64 found, total
        cdef const i64* row
        cost[0] = 0
        billed[0] = 0
        row_out[0] = -1
        status_out[0] = c.status
        if c.status != C_OK:
            return 0
        found = c.row
        if found < 0:
            found = _resolve(d, c.e, c.n, t0)
        elif not (d.rows[found * d.stride + COL_FROM] <= t0
                  and t0 < d.rows[found * d.stride + COL_TO]):
            # The prefix's one row is not in effect: shorter prefixes may be.
            found = _resolve(d, d.owners[c.slot], c.n, t0)
        if found < 0:
            status_out[0] = -found
            return 0
        total = self._dest_total(d, found, t0, x, c.fx)
        if total < 0:
            status_out[0] = C_OVERFLOW
            return 0
        row = d.rows + found * d.stride
        row_out[0] = found
        cost[0] = total
        billed[0] = _billed(x, row[COL_MIN], row[COL_INC1], row[COL_INC2])
        return 1

    def rate_batch(self, Py_ssize_t svc, numbers, offsets, starts, durations, fx_from, fx_rate,
                   out_cost, out_billed, out_row, out_status):
        """Rate whole calls; see ocs.rating.engine.Engine.rate_batch."""
        if not 0 <= svc < self.ndests:
            raise IndexError("service index out of range")
        cdef const unsigned char[::1] buf = numbers
        cdef const i64[::1] off = offsets, t0s = starts, xs = durations
        cdef const i64[::1] fxf = fx_from, fxr = fx_rate
        cdef i64[::1] oc = out_cost, ob = out_billed, orow = out_row, ost = out_status
        cdef Py_ssize_t n = t0s.shape[0], i, nbuf = buf.shape[0], nfx = fxr.shape[0], j
        if (off.shape[0] != n + 1 or xs.shape[0] != n or oc.shape[0] < n or ob.shape[0] < n
                or orow.shape[0] < n or ost.shape[0] < n or fxf.shape[0] != nfx):
            raise ValueError("array lengths do not match")
        for i in range(n + 1):
            if off[i] < 0 or off[i] > nbuf or (i > 0 and off[i] < off[i - 1]):
                raise ValueError("offsets must rise within the number buffer")
        cdef Dest* d = &self.dests[svc]
        cdef const unsigned char* text = &buf[0] if nbuf > 0 else <const unsigned char*>_EMPTY
        cdef CallState group[BATCH_GROUP]
        cdef i64 good = 0
        cdef Py_ssize_t first, m, g
        cdef const i64* fxf_p = &fxf[0] if nfx else <const i64*>_EMPTY
        cdef const i64* fxr_p = &fxr[0] if nfx else <const i64*>_EMPTY
        # Calls go through in groups, stage by stage: each stage starts the memory
        # fetches the next one needs for the whole group, so the cache misses of a
        # group's lookups overlap instead of queueing one call after another.
        with nogil:
            first = 0
            while first < n:
                m = min(BATCH_GROUP, n - first)
                for g in range(m):
                    i = first + g
                    self._stage_parse(d, &group[g], text + off[i], off[i + 1] - off[i],
                                      t0s[i], xs[i], fxf_p, fxr_p, nfx)
                for g in range(m):
                    _stage_range(d, &group[g])
                for g in range(m):
                    _stage_search(d, &group[g])
                for g in range(m):
                    _stage_entry(d, &group[g])
                for g in range(m):
                    i = first + g
                    good += self._stage_rate(d, &group[g], t0s[i], xs[i], &oc[i], &ob[i],
                                             &orow[i], &ost[i])
                first += m
        return good


cdef int _check_usage(i64 x, i64 limit) except -1:
    if x < 0 or x > limit:
        raise ValueError(f"usage {x} out of range 0..{limit}")
    return 0


cdef int _check_start(i64 t0) except -1:
    if t0 < 0 or t0 > START_MAX:
        raise ValueError(f"start instant {t0} out of range")
    return 0
