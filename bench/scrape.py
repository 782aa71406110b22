"""ocsd's Prometheus text, as the benchmarks read it (group-commit batch sizes)."""

from __future__ import annotations

import urllib.request


def metrics(api_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_value(text: str, name: str) -> float:
    """The first sample of `name` (any labels); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def batch_mean(before: str, after: str) -> float | None:
    """Balance operations per group commit between two scrapes."""
    batches = (metric_value(after, "ocs_store_batch_size_count")
               - metric_value(before, "ocs_store_batch_size_count"))
    ops = (metric_value(after, "ocs_store_batch_size_sum")
           - metric_value(before, "ocs_store_batch_size_sum"))
    return round(ops / batches, 1) if batches else None
