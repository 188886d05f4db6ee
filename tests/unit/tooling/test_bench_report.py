"""The benchmark's bookkeeping: the bare loop's figures joined to the worker's at each rate,
and the side-by-side table with its targets (no processes involved)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.bench.llm_bench import merge_bare, parse_args, sweep_rates, sweep_sizes
from tests.bench.report import report


def worker_at(rate: float, cpu_per_1k: float) -> dict[str, Any]:
    return {"rate": rate, "worker_cpu_s_per_1k": cpu_per_1k, "completed": 10, "failed": 0}


def test_merge_bare_adds_the_bare_figures_and_the_cpu_ratio_at_each_rate() -> None:
    out: dict[str, Any] = {"B": worker_at(100, 6.0)}
    out["sweep"] = {"100": out["B"], "10": worker_at(10, 12.0)}
    bare = {"100": {"rate": 100, "cpu_s_per_1k": 4.0, "added_ms_p50": 3.0},
            "10": {"rate": 10, "cpu_s_per_1k": 8.0}}  # fmt: skip

    merge_bare(out, bare)

    assert out["sweep"]["10"]["cpu_ratio_worker_over_bare"] == pytest.approx(1.5)
    assert out["sweep"]["100"]["bare_added_ms_p50"] == 3.0
    assert out["cpu_ratio_worker_over_bare"] == pytest.approx(1.5)
    assert "bare_cpu_s_per_1k" not in out["B"]  # phase B's own keys stay as they were


def test_report_prints_both_columns_and_judges_each(capsys: pytest.CaptureFixture[str]) -> None:
    results: dict[str, Any] = {
        "args": {"streams": 50},
        "A": {"peak_in_flight": 600},
        "C": {"cpu_s_per_1k": 4.0},
        "streams": {"worker_peak_in_flight": 50, "fake_peak_streams": 50},
    }
    results["baseline"] = {
        "ref": "bf3a7e6",
        "A": {"peak_in_flight": 256},
        "streams": {"worker_peak_in_flight": 50, "fake_peak_streams": 20},
    }

    report(results)

    out = capsys.readouterr().out
    table, line = out.rsplit("BENCH_JSON ", 1)
    printed = json.loads(line)
    assert "baseline bf3a7e6" in table
    assert "(same)" in next(row for row in table.splitlines() if row.startswith("C bare SDK CPU"))
    assert printed["targets"]["A peak in-flight streams"] == "PASS"
    assert printed["baseline"]["targets"]["A peak in-flight streams"] == "MISS"
    assert printed["targets"]["S fake peak concurrent streams"] == "PASS"
    assert printed["baseline"]["targets"]["S fake peak concurrent streams"] == "MISS"
    assert printed["targets"]["B added latency p50 (ms)"] == "n/a"  # not measured


def test_quick_sets_small_defaults_but_explicit_options_win() -> None:
    args = parse_args(["--quick", "--streams", "7", "--rate", "50"])
    assert (args.streams, args.burst, args.rate) == (7, 20, 50.0)
    assert sweep_rates(args) == [10.0, 100.0]  # --rate is covered by phases B and C
    assert sweep_sizes(args, 10.0) == (20, 10)
    full = parse_args(["--sweep-rates", "10,50"])
    assert (full.streams, full.sweep_rates, full.baseline_ref) == (5000, [10.0, 50.0], None)
