"""CPU time of processes and threads, read from /proc (Linux), for the benchmarks'
"server CPU per request" figures: utime + stime, so it counts every core."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str | Path) -> float:
    """utime + stime of one /proc/.../stat file, in seconds (0 if it is gone)."""
    try:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return 0.0


def cpu_seconds(*pids: int) -> float:
    """CPU seconds used so far by these processes together."""
    return sum(_stat_cpu(f"/proc/{pid}/stat") for pid in pids)


def thread_cpu(pid: int) -> tuple[float, float]:
    """(main thread, every other thread) CPU seconds of `pid`: the event loop runs in
    the main thread, the SQLite driver and executors outside it."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        cpu = _stat_cpu(task / "stat")
        if int(task.name) == pid:
            main += cpu
        else:
            other += cpu
    return main, other
