"""The MCP benchmark's bookkeeping: the bare loop's figures joined to the worker's at each
rate, the in-flight count, the table's judgements and the options (no processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_worker.registry import parse_registry
from tests.bench.mcp_bench import merge_bare, parse_args, rows
from tests.bench.mcp_phases import peak_overlap
from tests.bench.mcp_session import Toolbox
from tests.bench.report import report
from tests.bench.session import Req


def test_merge_bare_adds_the_added_latency_and_the_cpu_ratio_at_each_rate() -> None:
    out: dict[str, Any] = {"rates": {
        "100": {"rate": 100.0, "latency_ms_p50": 9.0, "latency_ms_p99": 30.0,
                "worker_cpu_ms_per_call": 3.0},
        "10": {"rate": 10.0, "latency_ms_p50": 8.0, "worker_cpu_ms_per_call": 4.0},
    }}  # fmt: skip
    bare = {"100": {"rate": 100.0, "calls": 5, "latency_ms_p50": 3.0, "latency_ms_p99": 10.0,
                    "cpu_ms_per_call": 2.0}}  # fmt: skip

    merge_bare(out, bare)

    at_100 = out["rates"]["100"]
    assert at_100["added_ms_p50"] == pytest.approx(6.0)
    assert at_100["added_ms_p99"] == pytest.approx(20.0)
    assert at_100["cpu_ratio_worker_over_bare"] == pytest.approx(1.5)
    assert at_100["bare_latency_ms_p50"] == 3.0
    assert at_100["rate"] == 100.0  # the worker's own keys are kept, not prefixed
    assert "added_ms_p50" not in out["rates"]["10"]  # no bare figure at 10: nothing invented
    assert "cpu_ratio_worker_over_bare" not in out["rates"]["10"]


def test_peak_overlap_counts_calls_in_flight_at_once_and_ignores_unfinished_ends() -> None:
    reqs = [Req(sent=0.0, done=2.0), Req(sent=0.5, done=1.0), Req(sent=1.5, done=3.0),
            Req(sent=2.5)]  # fmt: skip
    assert peak_overlap(reqs) == 2
    assert peak_overlap([]) == 0


def test_latency_targets_are_judged_at_100_calls_per_second_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results: dict[str, Any] = {
        "args": {"rates": [10.0, 100.0], "burst": 1000},
        "transports": {"http": {
            "rates": {"10": {"added_ms_p50": 9.0, "cpu_ratio_worker_over_bare": 2.0},
                      "100": {"added_ms_p50": 4.0, "added_ms_p99": 30.0,
                              "cpu_ratio_worker_over_bare": 1.2}},
            "in_flight": {"replies_on_time": 1000, "worker_peak_in_flight": 900},
        }},
    }  # fmt: skip

    report(results, rows(results))

    printed = json.loads(capsys.readouterr().out.rsplit("BENCH_JSON ", 1)[1])
    targets = printed["targets"]
    assert targets["http 100/s added p50 (ms)"] == "PASS"
    assert targets["http 100/s added p99 (ms)"] == "MISS"
    assert "http 10/s added p50 (ms)" not in targets
    assert targets["http 10/s CPU ratio worker / bare"] == "MISS"
    assert targets["http 100/s CPU ratio worker / bare"] == "PASS"
    assert targets["http C replies on time"] == "PASS"
    assert targets["http C worker peak in flight"] == "MISS"


def test_quick_sets_small_defaults_but_explicit_options_win() -> None:
    args = parse_args(["--quick", "--burst", "50", "--transports", "stdio"])
    assert (args.burst, args.seconds, args.transports) == (50, 3.0, ["stdio"])
    full = parse_args([])
    assert (full.burst, full.rates, full.transports) == (1000, [10.0, 50.0, 100.0],
                                                         ["http", "stdio"])  # fmt: skip
    with pytest.raises(SystemExit):
        parse_args(["--transports", "grpc"])


def test_the_registry_entries_parse_with_the_cache_off_and_stdio_unsandboxed() -> None:
    entries = {"stdio": Toolbox("stdio").registry_entry(2000),
               "http": Toolbox("http", "http://127.0.0.1:1/mcp").registry_entry(2000)}  # fmt: skip

    registry = parse_registry(json.dumps({"mcpServers": entries}).encode())

    assert registry.servers["stdio"].sandbox == "none"
    assert registry.servers["stdio"].transport == "stdio"
    assert registry.servers["http"].transport == "streamable-http"
    for server in registry.servers.values():
        assert server.cache.mode == "off"
        assert server.max_concurrency == 2000
