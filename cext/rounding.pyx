# cython: language_level=3
"""Compiled twin of ocs/rounding.py: increments, linear cost and its inverse.

Inner arithmetic runs on C 64-bit integers with 128-bit intermediates where a
product could overflow; results are identical to the pure-Python twin for all
inputs in the documented range (0 <= value < 2**62).
"""

ctypedef long long i64
cdef extern from *:
    ctypedef long long i128 "__int128"  # GCC/Clang 128-bit integer

cdef i64 CAP_C = 4611686018427387904  # 1 << 62
CAP = CAP_C


cpdef i64 billed_units(i64 units, i64 first, i64 nxt):
    if units <= 0:
        return 0
    if units <= first:
        return first
    cdef i64 rest = units - first
    return first + ((rest + nxt - 1) // nxt) * nxt


cpdef i64 linear_cost(i64 units, i64 price, i64 per):
    if units <= 0 or price <= 0:
        return 0
    cdef i128 prod = <i128>units * <i128>price
    return <i64>((prod + per - 1) // per)


cpdef i64 linear_max_units(i64 money, i64 price, i64 per, i64 first, i64 nxt):
    if price <= 0:
        return CAP_C
    if money <= 0:
        return 0
    cdef i128 raw = (<i128>money * <i128>per) // price
    if raw < first:
        return 0
    if raw >= CAP_C:
        return CAP_C
    return first + ((<i64>raw - first) // nxt) * nxt
