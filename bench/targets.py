"""An issue's benchmark targets read against one run's figures.

Each target is a bound on one figure; `judge` reports, per target, what the
run measured, the bound, and whether it was met: None when the run cannot tell
(the figure needs a baseline or an offered rate this run did not have).
"""

from __future__ import annotations

import operator

_TESTS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


def judge(goals: dict[str, tuple[str, float]], measured: dict[str, float | None]) -> dict:
    """`goals`: name -> (comparison, bound), e.g. {"p99_ms": ("<", 10)};
    `measured`: name -> this run's figure, or None when it has none."""
    report = {}
    for name, (how, bound) in goals.items():
        value = measured.get(name)
        met = None if value is None else _TESTS[how](value, bound)
        report[name] = {"measured": value, "target": f"{how} {bound}", "met": met}
    return report
