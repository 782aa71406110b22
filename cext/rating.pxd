# Declarations of the compiled rating engine (cext/rating.pyx); the pure-Python
# twin is ocs/rating/engine.py, whose docstring defines what both compute.

cimport cython
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t

ctypedef long long i64

cdef extern from *:
    """
    typedef __int128 ocs_i128;
    static inline int ocs_top_bit(unsigned long long m) { return 63 - __builtin_clzll(m); }
    """
    # 128-bit intermediates for products of usage and prices; only ever used
    # in C arithmetic and cast back to 64 bits explicitly, never converted to Python.
    ctypedef long long i128 "ocs_i128"
    int ocs_top_bit(unsigned long long m) nogil
    void ocs_prefetch "__builtin_prefetch"(const void* p) nogil

cdef enum:
    NO_PREFIX = -2     # Slot.direct of an interval no prefix covers
    MAXB = 16          # bands
    BLOCK_DIGITS = 4   # the first digits index a direct table
    BLOCKS = 10000     # 10 ** BLOCK_DIGITS
    BATCH_GROUP = 32   # calls a batch carries through each stage together
    SUB_BLOCKS = 100   # a block with bounds inside is split by its next two digits

# Row layout of the destination tables (ocs.rating.decks.Deck.table).
cdef enum:
    COL_FROM = 0
    COL_TO = 1
    COL_FEE = 2
    COL_MIN = 3
    COL_INC1 = 4
    COL_INC2 = 5
    COL_PRICE = 6
    COL_KEY = 7
    FIXED_COLUMNS = 9

# One prefix entry (all rows of one prefix). Entries are sorted by the interval
# their prefix covers in the 15-digit number space: start = value * 10**(15 - length).
ctypedef struct Entry:
    int32_t first      # the row when count == 1, else the first position in `order`
    int32_t count      # rows under this prefix (decks, effective periods)
    int32_t parent     # the longest shorter prefix that is an entry, or -1
    int32_t length     # digits of the prefix

ctypedef struct Bound:       # only while the index is built
    i64 point
    int32_t owner

ctypedef struct Slot:
    uint32_t key       # where the interval starts within its 6-digit sub-block
    int32_t direct     # its prefix's (row << 4) | length when that prefix has one row,
                       # NO_PREFIX when no prefix covers the interval, else -1

ctypedef struct Block:
    int32_t lo         # the interval holding the block's first number
    int32_t sub        # its sub-block table when a bound falls inside the block, else -1

# A call on its way through the stages of rate_batch.
ctypedef struct CallState:
    i64 point
    i64 fx
    i64 lo             # intervals to search
    i64 hi
    i64 slot           # the interval found
    i64 e
    i64 row
    int n
    int status

ctypedef struct Dest:
    i64 per
    int piecewise
    i64 limit
    i64 nrows
    const i64* rows    # row-major, `stride` int64 per row
    i64 stride
    i64 pcol[MAXB]     # column of each band's price
    i64 nentries
    Entry* entries
    int32_t* order     # rows of the prefixes with several, by (prefix interval,
                       # priority desc, effective_from, row)
    # The 15-digit number space cut into elementary intervals: interval i starts at
    # a point p_i and its innermost prefix is owners[i] (-1: none). slots[i].key is
    # p_i within its 6-digit sub-block, in (0, 10**9] (p_0 = 0: key 0); the search
    # never reads the key of the interval a sub-block starts in.
    i64 nbounds
    Slot* slots
    int32_t* owners
    Block* blocks      # per 4-digit block (BLOCKS + 1 of them)
    int32_t* sub       # sub-block tables, SUB_BLOCKS + 1 interval indexes each
    i64 bytes_owned


@cython.final
cdef class Engine:
    cdef readonly str implementation
    cdef i64 quantum
    cdef int mode
    cdef int nbands
    cdef int ndests
    cdef Dest* dests
    cdef const i64* tz_at
    cdef const i64* tz_off
    cdef Py_ssize_t ntz
    cdef const i64* week_start
    cdef const i64* week_band
    cdef Py_ssize_t nweek
    cdef const i64* hol_day
    cdef const i64* hol_band
    cdef Py_ssize_t nhol
    cdef i64 day0             # first UTC day of tz_by_day
    cdef i64 ndays
    cdef int32_t* tz_by_day   # zone segment in force at the start of each UTC day
    cdef i64 hol_first        # local day numbers covered by hol_by_day
    cdef i64 hol_last
    cdef int32_t* hol_by_day  # holiday index of each local day, or -1
    cdef unsigned char c_intl[8]
    cdef unsigned char c_natl[8]
    cdef unsigned char c_cc[8]
    cdef int n_intl
    cdef int n_natl
    cdef int n_cc
    cdef Py_ssize_t nusage
    cdef const i64* u_unit
    cdef const i64* u_inc1
    cdef const i64* u_inc2
    cdef const i64* u_limit
    cdef const i64* u_first
    cdef const i64* u_count
    cdef const i64* t_upto
    cdef const i64* t_price
    cdef Py_ssize_t ntiers
    cdef list _keep

    cdef const i64* _column(self, object values, Py_ssize_t n) except NULL
    cdef int _day_tables(self) except -1
    cdef int _build_dest(self, int svc, Dest* d, object t) except -1
    cdef int _index(self, Dest* d, void* items, Py_ssize_t n) except -1
    cdef Dest* _dest(self, Py_ssize_t svc, i64 row) except NULL
    cdef int _usage(self, Py_ssize_t i) except -1
    cdef int _digits(self, const unsigned char* p, Py_ssize_t n, i64* vals) noexcept nogil
    cdef void _band_span(self, i64 t, int* band, i64* end) noexcept nogil
    cdef int _band_at(self, i64 t) noexcept nogil
    cdef i64 _money(self, i128 total, i64 fx) noexcept nogil
    cdef i128 _dest_num(self, Dest* d, i64 row, i64 t0, i64 skip, i64 n) noexcept nogil
    cdef i64 _dest_total(self, Dest* d, i64 row, i64 t0, i64 x, i64 fx) noexcept nogil
    cdef i64 _usage_total(self, Py_ssize_t i, i64 x, i64 fx) noexcept nogil
    cdef i64 _total(self, int dest, Py_ssize_t idx, i64 row, i64 t0, i64 x, i64 fx) noexcept nogil
    cdef void _stage_parse(self, const Dest* d, CallState* c, const unsigned char* p,
                           Py_ssize_t size, i64 t0, i64 x, const i64* fxf, const i64* fxr,
                           Py_ssize_t nfx) noexcept nogil
    cdef i64 _stage_rate(self, Dest* d, const CallState* c, i64 t0, i64 x, i64* cost,
                         i64* billed, i64* row_out, i64* status_out) noexcept nogil
    cdef i64 _max(self, int dest, Py_ssize_t idx, i64 row, i64 t0, i64 a, i64 money, i64 fx,
                  i64 hi) noexcept nogil
