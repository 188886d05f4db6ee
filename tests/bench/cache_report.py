"""The response-cache bench's table: per backend, the provider phase (every request a miss,
answered by the fake) against the hit phase (the same requests served from the cache)."""

from __future__ import annotations

from typing import Any

PHASES = {"provider": "provider call (miss + store)", "hit": "cache hit"}
LATENCIES = ("first_chunk", "completed")


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    """A plain-text table of `results["backends"]` (one block per backend)."""
    lines: list[str] = []
    for backend, figures in results.get("backends", {}).items():
        if "skipped" in figures:
            lines.append(f"{backend}: skipped ({figures['skipped']})")
            continue
        if "error" in figures:
            lines.append(f"{backend}: failed ({figures['error']})")
            continue
        lines.append(f"backend {backend}")
        header = (
            f"  {'phase':<30}{'first chunk p50/p95/p99 ms':>30}{'completed p50/p95/p99 ms':>28}"
        )
        lines.append(header + f"{'CPU s/1k req':>14}{'fake calls':>12}")
        for phase, title in PHASES.items():
            f = figures.get(phase, {})
            cells = [
                "/".join(_cell(f.get(f"{name}_p{q}_ms")) for q in (50, 95, 99))
                for name in LATENCIES
            ]
            lines.append(
                f"  {title:<30}{cells[0]:>30}{cells[1]:>28}"
                f"{_cell(f.get('cpu_s_per_1k'), 2):>14}{_cell(f.get('fake_calls')):>12}"
            )
        lines.append(
            f"  hit/provider: first chunk p50 x{_cell(figures.get('first_chunk_ratio'), 3)},"
            f" completed p50 x{_cell(figures.get('completed_ratio'), 3)},"
            f" CPU x{_cell(figures.get('cpu_ratio'), 3)};"
            f" {_cell(figures.get('bytes_per_entry'), 0)} bytes stored per entry"
        )
    return "\n".join(lines)
