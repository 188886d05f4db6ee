"""The storage bench's table (no Kafka, no processes): per size, put and get through the
worker against the SDK directly; per copy, speed, CPU and the worker's memory growth."""

from __future__ import annotations

from typing import Any

from tests.bench.report import Row

RSS_GROWTH_LIMIT_MB = 64.0
"""The issue's bound on the worker's RSS growth during a 1 GiB streamed copy."""
MODES = {"worker": "worker", "direct": "SDK direct"}


def size_label(size: int) -> str:
    """`4 KiB`, `256 KiB`, `8 MiB`."""
    return f"{size // 2**20} MiB" if size >= 2**20 else f"{size // 1024} KiB"


def _transfers(results: dict[str, Any], phase: str, title: str) -> list[Row]:
    table: list[Row] = []
    for label in results.get(phase, {}):
        at = (phase, label)
        for verb in ("put", "get"):
            for mode, name in MODES.items():
                cpu = "worker_cpu_ms_per_op" if mode == "worker" else "client_cpu_ms_per_op"
                table.append((f"{title} {verb} {label} {name}", (*at, f"{mode}_{verb}"),
                              f"mib_per_s/p50/{cpu}", "", None))  # fmt: skip
            table.append((f"{title} {verb} {label} worker/SDK MiB/s", at,
                          f"{verb}_speed_ratio", "", None))  # fmt: skip
    return table


def rows(results: dict[str, Any]) -> list[Row]:
    """The table. Transfer cells: MiB/s / latency p50 (ms) / CPU ms per operation (the
    worker's for worker rows, this process's for SDK rows). Copy cells as labelled."""
    table = _transfers(results, "inline", "inline") + _transfers(results, "url", "by URL")
    for name, target in (("local_to_local2", "local2"), ("local_to_s3", "s3")):
        copy = results.get("copy", {}).get(name)
        if copy is None:
            continue
        at, title = ("copy", name), f"copy→{target} {copy['bytes'] // 2**20} MiB"
        table += [
            (f"{title} MiB/s / s", at, "mib_per_s/wall_s", "", None),
            (f"{title} CPU s, s/GiB", at, "worker_cpu_s/worker_cpu_s_per_gib", "", None),
            (f"{title} RSS growth MB", at, "rss_growth_mb", f"< {RSS_GROWTH_LIMIT_MB:g}",
             lambda v: v < RSS_GROWTH_LIMIT_MB),
            (f"{title} RSS base/peak", at, "rss_after_warmup_mb/peak_rss_mb", "", None),
            (f"{title} progress/sum ok", at, "progress_events/checksum_ok", "", None),
        ]  # fmt: skip
    table.append(("worker RSS start/pre-copy/end MB", ("worker",),
                  "rss_start_mb/rss_before_copies_mb/rss_end_mb", "", None))  # fmt: skip
    return table
