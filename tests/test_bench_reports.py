"""What the benchmarks report besides raw figures: the medians of repeated
runs, ratios against the baseline, and a judgement against the issues'
targets (met, missed, or unknown when the run lacks the baseline or offered
rate a target needs)."""

import json
import os
import socket
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from bench import diameter, radius
from bench.targets import judge
from ocs import accel


def test_judge_reports_met_missed_and_unknown():
    report = judge({"cpu": ("<=", 60), "ratio": (">=", 4), "p99": ("<", 10)},
                   {"cpu": 60, "ratio": 2.5, "p99": None})
    assert report == {
        "cpu": {"measured": 60, "target": "<= 60", "met": True},
        "ratio": {"measured": 2.5, "target": ">= 4", "met": False},
        "p99": {"measured": None, "target": "< 10", "met": None}}


def _radius_run(mode, rate, ratio):
    out = {"ocsd": {"server_cpu_us_per_request": 45.0,
                    "latency_ms": {"p50": 2.0, "p99": 8.5, "max": 20.0}}}
    if rate:  # held back by the server's backlog: later than when sent
        out["ocsd"]["latency_from_due_ms"] = {"p50": 2.5, "p99": 12.5, "max": 30.0}
    if ratio is not None:
        out["ratio"] = {"throughput_ocsd_over_freeradius": ratio}
    return radius.targets(SimpleNamespace(mode=mode, rate=rate), out)


def test_radius_targets_per_mode():
    acct = _radius_run("acct", 4000.0, 4.2)
    assert acct["server_cpu_us_per_request"]["met"] is True
    assert acct["throughput_x_freeradius"]["met"] is True
    assert acct["p99_ms"] == {"measured": 12.5, "target": "< 10", "met": False,
                              "offered_rate": 4000.0}   # from when due, not from sending
    closed = _radius_run("acct", 0.0, None)   # no FreeRADIUS, closed loop: cannot tell
    assert closed["throughput_x_freeradius"]["met"] is None
    assert closed["p99_ms"]["met"] is None
    # Closed loop against FreeRADIUS, then ocsd offered twice FreeRADIUS's rate.
    out = {"ocsd": {"server_cpu_us_per_request": 45.0},
           "ratio": {"throughput_ocsd_over_freeradius": 4.5},
           "ocsd_at_twice_freeradius": {"offered_rate": 2100.0,
                                        "latency_from_due_ms": {"p50": 3.0, "p99": 9.0}}}
    twice = radius.targets(SimpleNamespace(mode="acct", rate=0.0), out)
    assert twice["p99_ms"] == {"measured": 9.0, "target": "< 10", "met": True,
                               "offered_rate": 2100.0}
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


def _run(rate, cpu, p50, p99, peak, timeouts=0, batch=None, due_p99=None):
    run = {"requests_per_s": rate, "server_cpu_us_per_request": cpu,
           "server_cpu_split_us": {"daemon": cpu - 10, "database": 10.0} if cpu else None,
           "client_cpu_us_per_request": 15.0, "timeouts": timeouts,
           "latency_ms": {"p50": p50, "p99": p99, "max": peak}, "rows": {"cdrs": rate // 7}}
    if batch is not None:
        run["store_batch_mean"] = batch
    if due_p99 is not None:
        run["latency_from_due_ms"] = {"p50": p50 + 1, "p99": due_p99, "max": peak + 5}
    return run


def test_repeated_runs_report_medians_and_every_run():
    runs = [_run(7000, 140.0, 15, 30, 40, batch=60), _run(9000, 110.0, 12, 25, 90, 1, 64),
            _run(8000, 120.0, 14, 35, 50, 2, 62)]
    m = radius.medians(runs)
    assert m["requests_per_s"] == 8000 and m["server_cpu_us_per_request"] == 120.0
    assert m["latency_ms"] == {"p50": 14, "p99": 30, "max": 90}
    assert m["server_cpu_split_us"] == {"daemon": 110.0, "database": 10.0}
    assert m["timeouts"] == 3 and m["store_batch_mean"] == 62
    assert [r["requests_per_s"] for r in m["each_run"]] == [7000, 9000, 8000]
    assert [r["rows"] for r in m["each_run"]] == [{"cdrs": 1000}, {"cdrs": 1285},
                                                  {"cdrs": 1142}]  # what each stored
    assert "store_batch_mean" not in radius.medians([_run(1, 1.0, 1, 1, 1)])
    runs[0]["replies"] = {"ACCESS_ACCEPT": 5, "ACCESS_REJECT": 1}
    runs[2]["replies"] = {"ACCESS_ACCEPT": 4}
    summed = radius.medians(runs)
    assert summed["replies"] == {"ACCESS_ACCEPT": 9, "ACCESS_REJECT": 1}
    assert [r["replies"] for r in summed["each_run"]] == [runs[0]["replies"], None,
                                                          {"ACCESS_ACCEPT": 4}]
    open_loop = radius.medians([_run(1, 1.0, 2, 5, 9, due_p99=d) for d in (40, 11, 30)])
    assert open_loop["latency_from_due_ms"] == {"p50": 3, "p99": 30}


def test_ratio_of_ocsd_to_freeradius():
    o, f = _run(8000, 120.0, 14, 30, 50), _run(2000, 840.0, 50, 90, 150)
    assert radius.ratio(o, f) == {"throughput_ocsd_over_freeradius": 4.0,
                                  "cpu_per_request_freeradius_over_ocsd": 7.0}
    assert radius.ratio(o, _run(0, None, 0, 0, 0)) == {
        "throughput_ocsd_over_freeradius": None, "cpu_per_request_freeradius_over_ocsd": None}


def test_load_counts_replies_by_code():
    """An answer is not an accept: the generator reports what the server said."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():  # accepts odd identifiers, rejects even ones
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except socket.timeout:
                continue
            code = 2 if data[1] % 2 else 3
            sock.sendto(bytes((code, data[1], 0, 20)) + bytes(16), addr)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        out = radius.run_load(sock.getsockname()[1], "auth", 30, 0, 1, 8, 0.0, 2.0, "b",
                              lambda: [os.getpid()])
    finally:
        stop.set()
        thread.join()
        sock.close()
    assert out["answered"] == 60 and out["timeouts"] == 0
    replies = out["replies"]
    assert set(replies) == {"ACCESS_ACCEPT", "ACCESS_REJECT"}
    assert sum(replies.values()) == 60 and min(replies.values()) > 0


@pytest.mark.parametrize("mode", ["acct", "ccr"])
def test_request_path_compares_the_build_with_the_pure_python_twins(mode):
    """Both variants run the real request path (every request answered, and for
    `ccr` every CCA a success, else the child fails) and are what they say: the
    pure one runs the twins."""
    r = subprocess.run([sys.executable, "-m", "bench.request_path", "--mode", mode,
                        "--requests", "150", "--rounds", "2", "--pairs", "1"],
                       capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "OCS_NO_EXTENSIONS"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["pure_python"]["implementation"] == "pure-python"
    assert out["extensions"]["implementation"] == accel.ACTIVE
    for variant in ("pure_python", "extensions"):
        (run,) = out[variant]["each_run"]
        assert len(run["each_round"]) == 2 and run["cpu_us_best"] > 0
    assert out["extensions_over_pure_python"] > 0


def test_instruction_counts_cancel_the_start_up_and_repeat_exactly():
    """`bench.request_path --instructions`: two callgrind runs that differ only in
    the rounds of work; the start-up cancels out, and the count per unit is the
    same on a second measurement (what makes it usable on a busy machine)."""
    from bench.request_path import callgrind_per_unit

    def program(rounds: int) -> list[str]:  # a start-up, then 500 list sorts a round
        return [sys.executable, "-c",
                "import json, random; r = random.Random(7); data = [r.random() for _ in "
                f"range(200)]; [sorted(data) for _ in range({rounds} * 2000)]; "
                "print(json.dumps({'ok': 1}))"]
    first = callgrind_per_unit(program, 500)
    again = callgrind_per_unit(program, 500)
    assert first["last_output"] == {"ok": 1}
    small, big = first["instructions_total"]
    assert big > small > 0
    # Sorting 200 floats: thousands of instructions, not the start-up's millions.
    assert 5_000 < first["per_unit"] < 500_000, first
    # One hash seed for both: here the counts repeat to the instruction.
    assert abs(again["per_unit"] - first["per_unit"]) <= first["per_unit"] * 0.001, \
        (first, again)
