"""The bench's table (current worker, and the baseline side by side) and its `BENCH_JSON` line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Check = Callable[[float], bool]
Row = tuple[str, tuple[str, ...], str, str, Check | None]  # label, section, keys, target, check
SHARED = ("C",)  # measured once (no worker involved): shown in the current column only


def rate_key(rate: float) -> str:
    """The sweep's JSON key of a rate: `10`, `50`, `12.5`."""
    return f"{rate:g}"


def rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows; the sweep's and the streams phase's depend on the run's options."""
    table: list[Row] = [
        ("A peak in-flight streams", ("A",), "peak_in_flight", "≥ 500", lambda v: v >= 500),
        ("A fake peak concurrent streams", ("A",), "fake_peak_streams", "", None),
        ("A completed / failed", ("A",), "completed/failed", "", None),
        ("B added latency p50 (ms)", ("B",), "added_ms_p50", "≤ 5", lambda v: v <= 5),
        ("B added latency p95 (ms)", ("B",), "added_ms_p95", "", None),
        ("B added latency p99 (ms)", ("B",), "added_ms_p99", "≤ 25", lambda v: v <= 25),
        ("B added latency max (ms)", ("B",), "added_ms_p100", "", None),
        ("B completed / failed", ("B",), "completed/failed", "", None),
        ("B completed req/s", ("B",), "completed_per_s", "", None),
        ("B worker CPU-s / 1k req", ("B",), "worker_cpu_s_per_1k", "", None),
        ("B worker peak RSS (MB)", ("B",), "worker_peak_rss_mb", "", None),
        ("B calls per upstream conn", ("B",), "calls_per_connection", "", None),
        ("B bench client CPU (%)", ("B",), "bench_client_cpu_pct", "", None),
        ("B fake server CPU (%)", ("B",), "fake_server_cpu_pct", "", None),
        ("B host CPU busy (%)", ("B",), "host_cpu_busy_pct", "", None),
        ("C bare SDK CPU-s / 1k req", ("C",), "cpu_s_per_1k", "", None),
        ("C bare SDK added p50 (ms)", ("C",), "added_ms_p50", "", None),
        ("C bare SDK added p99 (ms)", ("C",), "added_ms_p99", "", None),
        ("C bare SDK calls per conn", ("C",), "calls_per_connection", "", None),
        ("C worker idle CPU (%)", ("C",), "worker_idle_cpu_pct", "", None),
        ("CPU ratio worker / bare", (), "cpu_ratio_worker_over_bare", "≤ 1.5",
         lambda v: v <= 1.5),
    ]  # fmt: skip
    for key in sorted(results.get("sweep", {}), key=float):
        at = ("sweep", key)
        table += [
            (f"{key} req/s added p50 / p99 (ms)", at, "added_ms_p50/added_ms_p99", "", None),
            (f"{key} req/s bare added p50 / p99", at, "bare_added_ms_p50/bare_added_ms_p99",
             "", None),
            (f"{key} req/s worker CPU-s / 1k req", at, "worker_cpu_s_per_1k", "", None),
            (f"{key} req/s bare CPU-s / 1k req", at, "bare_cpu_s_per_1k", "", None),
            (f"{key} req/s CPU ratio worker/bare", at, "cpu_ratio_worker_over_bare", "≤ 1.5",
             lambda v: v <= 1.5),
            (f"{key} req/s calls per upstream conn", at, "calls_per_connection", "", None),
            (f"{key} req/s chunk events / req", at, "chunk_events_per_request", "", None),
            (f"{key} req/s completed / failed", at, "completed/failed", "", None),
        ]  # fmt: skip
    if streams := results.get("args", {}).get("streams"):
        reach: Check = lambda v, n=streams: v >= n  # noqa: E731 - binds n per run
        table += [
            ("S worker peak in flight", ("streams",), "worker_peak_in_flight", f"≥ {streams}",
             reach),
            ("S fake peak concurrent streams", ("streams",), "fake_peak_streams",
             f"≥ {streams}", reach),
            ("S completed / failed / unfinished", ("streams",), "completed/failed/unfinished",
             "", None),
            ("S worker RSS idle / peak (MB)", ("streams",),
             "worker_idle_rss_mb/worker_peak_rss_mb", "", None),
            ("S worker RSS per stream (KB)", ("streams",), "worker_rss_kb_per_stream", "", None),
            ("S calls per upstream conn", ("streams",), "calls_per_connection", "", None),
            ("S publish / wall (s)", ("streams",), "publish_s/wall_s", "", None),
        ]  # fmt: skip
    return table


def _lookup(data: dict[str, Any], section: tuple[str, ...], keys: str) -> list[Any]:
    for name in section:
        data = data.get(name) or {}
    return [data.get(k) for k in keys.split("/")]


def _cell(values: list[Any], check: Check | None) -> tuple[str, str]:
    text = " / ".join("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
                      for v in values)  # fmt: skip
    if check is None:
        return text, ""
    first = values[0]
    if not isinstance(first, int | float):
        return text, "n/a"
    return text, "PASS" if check(first) else "MISS"


def report(results: dict[str, Any], table: list[Row] | None = None) -> None:
    """Print the table (with a baseline column when there is one) and `BENCH_JSON {...}`;
    record each target's PASS/MISS under `targets` (and `baseline.targets`). `table`: the
    rows to print (default: the LLM bench's `rows(results)`)."""
    baseline = results.get("baseline")
    head = f"\n{'metric':<36} {'current':>20} {'':<4}"
    if baseline is not None:
        head += f" {'baseline ' + str(baseline.get('ref', '')):>20} {'':<4}"
    print(f"{head} target")
    for label, section, keys, target, check in rows(results) if table is None else table:
        text, status = _cell(_lookup(results, section, keys), check)
        if status:
            results.setdefault("targets", {})[label] = status
        line = f"{label:<36} {text:>20} {status:<4}"
        if baseline is not None:
            shared = bool(section) and section[0] in SHARED
            b_text, b_status = ("(same)", "") if shared else _cell(
                _lookup(baseline, section, keys), check)  # fmt: skip
            if b_status:
                baseline.setdefault("targets", {})[label] = b_status
            line += f" {b_text:>20} {b_status:<4}"
        print(f"{line} {target}")
    print("BENCH_JSON " + json.dumps(results, default=str), flush=True)
