"""The OpenAPI bench's bookkeeping (no Kafka, no processes): the overhead of each mode over
the direct call, percentile by percentile, and the table's rows."""

from __future__ import annotations

from typing import Any

from tests.bench import tool_loop_report as tr
from tests.bench.report import Row

MODES = {
    "direct": "direct",
    "caller_off": "caller off",
    "caller_warn": "caller warn",
    "worker": "worker",
    "worker_cache_auto": "worker cache auto",
}
"""Modes by their JSON key: their names in the table."""


def with_overhead(modes: dict[str, Any]) -> dict[str, Any]:
    """`modes` plus, per mode, its latency minus direct's (mean, p50, p95, p99)."""
    base = modes.get("direct", {})
    over = {m: tr.minus(s, base) for m, s in modes.items() if isinstance(s, dict) and "p50" in s}
    over.pop("direct", None)
    return {**modes, "overhead": over}


def rows(results: dict[str, Any]) -> list[Row]:
    """The table. A mode's cell: latency p50 / p99 (ms) / CPU ms per call; its overhead:
    mode - direct, p50 / p99 (ms); concurrent runs: calls/s and latency p50 / p99."""
    q, qc, level = "p50/p99", "p50/p99/cpu_ms_per_call", results["args"]["concurrency"]
    table: list[Row] = []
    for tool, modes in results.get("tools", {}).items():
        at = ("tools", tool)
        table += [(f"{tool} direct", (*at, "direct"), qc, "", None)]
        for mode in (m for m in MODES if m != "direct" and m in modes):
            name = f"{tool} {MODES[mode]}"
            table += [
                (name, (*at, mode), qc, "", None),
                (f"{name} - direct", (*at, "overhead", mode), q, "", None),
            ]
        for mode in results.get("concurrent", {}).get(tool, {}):
            c, name = ("concurrent", tool, mode), f"{tool} x{level} {MODES.get(mode, mode)}"
            table += [(f"{name} calls/s", c, "calls_per_s", "", None), (name, c, q, "", None)]
    c, rss = ("cached",), "rss_idle_mb/rss_mb/peak_rss_mb"
    table += [
        ("getCached direct", (*c, "direct"), qc, "", None),
        ("getCached worker, cache answers", (*c, "worker_cached"), qc, "", None),
        ("getCached worker cached - direct", (*c, "overhead", "worker_cached"), q, "", None),
        ("getCached API requests, all calls", c, "api_requests", "1", lambda v: v == 1),
        ("getItem API requests, cache auto", c, "getItem_api_requests", "", None),
        ("worker RSS idle/after/peak MB", ("worker",), rss, "", None),
        ("worker cache auto RSS MB", ("worker_cache_auto",), rss, "", None),
        ("worker tool errors", ("worker",), "tool_errors", "0", lambda v: v == 0),
        (
            "worker cache auto tool errors",
            ("worker_cache_auto",),
            "tool_errors",
            "0",
            lambda v: v == 0,
        ),
    ]
    return table
