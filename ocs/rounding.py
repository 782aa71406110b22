"""Integer rounding for rating: the pure-Python twin of `cext/rounding.pyx`.

Both modules define the same functions with identical results on every input
(tests/test_rounding.py compares them on random input); `ocs.accel` picks one.
Arguments are ints in [0, 2**62]; a result beyond 2**62 raises OverflowError
(in both twins: 2**62 micro-units is 4.6 trillion currency units). No floats.

* `billed_units(units, first, nxt)`: usage rounded up to the increments: the
  first `first` units are billed as a block, then blocks of `nxt`
  (60/60, 30/6, 1/1 ...). Zero usage bills zero.
* `linear_cost(units, price, per)`: `price` micro-units per `per` units,
  rounded up to the micro-unit.
* `linear_max_units(money, price, per, first, nxt)`: the largest usage, aligned
  to the increments, whose cost fits in `money`; for a zero price, the largest
  aligned usage below `CAP` ("unlimited").
"""

CAP = (1 << 62)  # "unlimited" for free usage; fits a signed 64-bit column


def billed_units(units: int, first: int, nxt: int) -> int:
    if units <= 0:
        return 0
    if units <= first:
        return first
    rest = units - first
    return _checked(first + -(-rest // nxt) * nxt)


def linear_cost(units: int, price: int, per: int) -> int:
    if units <= 0 or price <= 0:
        return 0
    return _checked(-(-(units * price) // per))


def linear_max_units(money: int, price: int, per: int, first: int, nxt: int) -> int:
    if price <= 0:
        raw = CAP
    elif money <= 0:
        return 0
    else:
        raw = min(money * per // price, CAP)  # largest u with u * price <= money * per
    if raw < first:
        return 0
    return first + (raw - first) // nxt * nxt


def _checked(value: int) -> int:
    if value > CAP:
        raise OverflowError("rating result beyond 2**62")
    return value
