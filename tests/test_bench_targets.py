"""The benchmarks judge a run against the issues' targets: met, missed, or
unknown when the run lacks the baseline or offered rate a target needs."""

from types import SimpleNamespace

from bench import diameter, radius
from bench.targets import judge


def test_judge_reports_met_missed_and_unknown():
    report = judge({"cpu": ("<=", 60), "ratio": (">=", 4), "p99": ("<", 10)},
                   {"cpu": 60, "ratio": 2.5, "p99": None})
    assert report == {
        "cpu": {"measured": 60, "target": "<= 60", "met": True},
        "ratio": {"measured": 2.5, "target": ">= 4", "met": False},
        "p99": {"measured": None, "target": "< 10", "met": None}}


def _radius_run(mode, rate, ratio):
    out = {"ocsd": {"server_cpu_us_per_request": 45.0,
                    "latency_ms": {"p50": 2.0, "p99": 12.5, "max": 20.0}}}
    if ratio is not None:
        out["ratio"] = {"throughput_ocsd_over_freeradius": ratio}
    return radius.targets(SimpleNamespace(mode=mode, rate=rate), out)


def test_radius_targets_per_mode():
    acct = _radius_run("acct", 4000.0, 4.2)
    assert acct["server_cpu_us_per_request"]["met"] is True
    assert acct["throughput_x_freeradius"]["met"] is True
    assert acct["p99_ms"] == {"measured": 12.5, "target": "< 10", "met": False,
                              "offered_rate": 4000.0}
    closed = _radius_run("acct", 0.0, None)   # no FreeRADIUS, closed loop: cannot tell
    assert closed["throughput_x_freeradius"]["met"] is None
    assert closed["p99_ms"]["met"] is None
    auth = _radius_run("auth", 3000.0, 4.9)
    assert set(auth) == {"server_cpu_us_per_request", "throughput_x_freeradius"}
    assert auth["server_cpu_us_per_request"]["target"] == "<= 50"
    assert auth["throughput_x_freeradius"]["met"] is False


def test_diameter_targets_per_backend():
    upd = {"server_cpu_us_per_ccr_u": {"total": 70.0}, "p95_ms": 2.5, "p99_ms": 9.0}
    assert diameter.targets("sqlite", upd, None)["server_cpu_us_per_ccr_u"]["met"] is False
    pg = diameter.targets("postgres", upd, 5000.0)
    assert pg["server_cpu_us_per_ccr_u"]["met"] is True
    assert pg["p95_ms"]["met"] is True and pg["p99_ms"]["offered_rate"] == 5000.0
    assert diameter.targets("postgres", upd, None)["p99_ms"]["met"] is None
