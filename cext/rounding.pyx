# cython: language_level=3, cdivision=True
"""Compiled twin of ocs/rounding.py: increments, linear cost and its inverse.

Inner arithmetic runs on C 64-bit integers; the two products that can exceed
64 bits go through small C helpers with a 128-bit intermediate (Cython itself
has no 128-bit type). Arguments are in [0, 2**62]; a result beyond 2**62
raises OverflowError, exactly like the pure-Python twin.
"""

cdef extern from *:
    """
    #define OCS_CAP (1LL << 62)
    /* ceil(a * b / d), or -1 when the result exceeds OCS_CAP */
    static inline long long ocs_mul_div_ceil(long long a, long long b, long long d) {
        __int128 q = ((__int128)a * (__int128)b + (d - 1)) / d;
        return q > OCS_CAP ? -1 : (long long)q;
    }
    /* min(floor(a * b / d), OCS_CAP) */
    static inline long long ocs_mul_div_floor_capped(long long a, long long b, long long d) {
        __int128 q = ((__int128)a * (__int128)b) / d;
        return q > OCS_CAP ? OCS_CAP : (long long)q;
    }
    """
    long long ocs_mul_div_ceil(long long a, long long b, long long d) nogil
    long long ocs_mul_div_floor_capped(long long a, long long b, long long d) nogil

ctypedef long long i64

cdef i64 CAP_C = 4611686018427387904  # 1 << 62
CAP = CAP_C


cpdef i64 billed_units(i64 units, i64 first, i64 nxt) except -1:
    if units <= 0:
        return 0
    if units <= first:
        return first
    cdef i64 blocks = (units - first + nxt - 1) / nxt
    if blocks > (CAP_C - first) / nxt:
        raise OverflowError("rating result beyond 2**62")
    return first + blocks * nxt


cpdef i64 linear_cost(i64 units, i64 price, i64 per) except -1:
    if units <= 0 or price <= 0:
        return 0
    cdef i64 cost = ocs_mul_div_ceil(units, price, per)
    if cost < 0:
        raise OverflowError("rating result beyond 2**62")
    return cost


cpdef i64 linear_max_units(i64 money, i64 price, i64 per, i64 first, i64 nxt) except -1:
    cdef i64 raw
    if price <= 0:
        raw = CAP_C
    elif money <= 0:
        return 0
    else:
        raw = ocs_mul_div_floor_capped(money, per, price)
    if raw < first:
        return 0
    return first + ((raw - first) / nxt) * nxt
