"""The usage report's cache columns: prompt-cache reads and writes, response-cache hits, and
a provider cache's storage events (cost, not requests)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ferryman.contracts.usage import UsageEvent
from ferryman.usage_report import build_report, format_csv, format_json, format_table

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SINCE, UNTIL = NOW - timedelta(hours=24), NOW


def _event(n: int, **changes: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "request_id": f"r{n}",
        "service": "llm_worker",
        "tenant": "acme",
        "operation": "chat",
        "model": "anthropic/claude-sonnet-4-5",
        "input_tokens": 1000,
        "output_tokens": 10,
        "cost_usd": 0.01,
        "latency_seconds": 1.0,
        "outcome": "completed",
        "finished_at": NOW - timedelta(hours=1),
    }
    return UsageEvent(**(fields | changes))


EVENTS = [
    _event(1, cache_write_tokens=800, response_cache="stored"),
    _event(2, cache_read_tokens=800),
    _event(3, input_tokens=0, output_tokens=0, cost_usd=0.0, response_cache="hit"),
    _event(4, tenant="beta", model="gemini/gemini-2.5-flash", cache_read_tokens=500),
    _event(
        5,
        tenant="beta",
        model="gemini/gemini-2.5-flash",
        operation="prompt_cache_storage",
        input_tokens=0,
        output_tokens=0,
        cache_storage_token_hours=1000.0,
        cost_usd=0.25,
        latency_seconds=0.0,
    ),
    _event(
        6,
        tenant="beta",
        model="gemini/unknown",
        operation="prompt_cache_storage",
        input_tokens=0,
        output_tokens=0,
        cache_storage_token_hours=10.0,
        cost_usd=None,
        latency_seconds=0.0,
    ),
]


def test_groups_and_total_carry_cache_reads_writes_and_hits() -> None:
    report = build_report(EVENTS, ("tenant",), since=SINCE, until=UNTIL)

    groups = {g.key: g for g in report.groups}
    acme, beta = groups[("acme",)], groups[("beta",)]
    assert (acme.requests, acme.cache_read_tokens, acme.cache_write_tokens, acme.cache_hits) == (
        3, 800, 800, 1
    )  # fmt: skip
    assert (beta.cache_read_tokens, beta.cache_write_tokens, beta.cache_hits) == (500, 0, 0)
    total = report.total
    assert (total.cache_read_tokens, total.cache_write_tokens, total.cache_hits) == (1300, 800, 1)


def test_storage_events_add_cost_but_no_request_or_latency() -> None:
    report = build_report(EVENTS, ("tenant",), since=SINCE, until=UNTIL)

    beta = next(g for g in report.groups if g.key == ("beta",))
    assert beta.requests == 1
    assert beta.cost_usd == pytest.approx(0.01 + 0.25)
    assert beta.latency_p50 == 1.0  # the storage events' 0 s are not request latencies
    assert beta.unpriced == 1  # the storage of a model the table has no price for


def test_every_format_shows_the_cache_columns() -> None:
    report = build_report(EVENTS, ("tenant",), since=SINCE, until=UNTIL)

    header = format_table(report).splitlines()[1].split()
    assert header[:9] == [
        "tenant", "requests", "errors", "error%", "in_tokens", "out_tokens", "cache_read",
        "cache_write", "cache_hits",
    ]  # fmt: skip
    acme_line = next(line for line in format_table(report).splitlines() if line.startswith("acme"))
    assert acme_line.split()[5:9] == ["20", "800", "800", "1"]  # out_tokens, then the cache columns
    rows = {r["tenant"]: r for r in csv.DictReader(io.StringIO(format_csv(report)))}
    acme = rows["acme"]
    assert (acme["cache_read"], acme["cache_write"], acme["cache_hits"]) == ("800", "800", "1")
    total = json.loads(format_json(report))["total"]
    assert (total["cache_read_tokens"], total["cache_write_tokens"], total["cache_hits"]) == (
        1300, 800, 1
    )  # fmt: skip
