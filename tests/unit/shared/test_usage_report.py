"""The usage report's aggregation and output (pure), and the CLI's argument errors."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ferryman.cli import main
from ferryman.cli_usage import decode_usage, draw_chart
from ferryman.codec import encode_binary
from ferryman.contracts.usage import USAGE_RECORDED, UsageEvent
from ferryman.usage_report import (
    build_report,
    format_csv,
    format_json,
    format_table,
    hourly_trend,
    parse_group_keys,
    parse_time,
    percentile,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SINCE, UNTIL = NOW - timedelta(hours=24), NOW


def _event(n: int, **changes: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "request_id": f"r{n}",
        "service": "llm_worker",
        "tenant": "acme",
        "user": "alice",
        "operation": "chat",
        "target": "default",
        "model": "openai/gpt-4o",
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": 0.01,
        "price_table_version": "2026-11-30",
        "latency_seconds": 1.0,
        "outcome": "completed",
        "finished_at": NOW - timedelta(hours=1),
    }
    return UsageEvent(**(fields | changes))


EVENTS = [
    *(_event(n, latency_seconds=float(n + 1)) for n in range(10)),  # acme/gpt-4o: 1..10 s
    _event(10, user="bob", outcome="rate_limited", cost_usd=0.0),
    _event(11, user="bob", outcome="cancelled", tools=["search/web", "files/read"]),
    _event(12, tenant="beta", model="anthropic/claude-haiku-4-5", cost_usd=0.5, user=None),
    _event(13, tenant="beta", model="azure/prod", cost_usd=None, price_table_version=None),
    _event(
        14,
        service="mcp_worker",
        tenant="beta",
        model=None,
        tool="search/web",
        operation="tool",
        input_tokens=0,
        output_tokens=0,
        cost_usd=None,
        outcome="upstream_error",
    ),
    _event(15, finished_at=SINCE - timedelta(seconds=1)),  # before the window
    _event(16, finished_at=UNTIL),  # the window's end is excluded
]


def test_groups_total_requests_errors_tokens_cost_latency_and_top_users() -> None:
    report = build_report(EVENTS, ("tenant", "model"), since=SINCE, until=UNTIL)

    groups = {g.key: g for g in report.groups}
    assert list(groups) == [
        ("beta", "anthropic/claude-haiku-4-5"),  # most expensive first
        ("acme", "openai/gpt-4o"),
        ("beta", "-"),
        ("beta", "azure/prod"),
    ]
    acme = groups["acme", "openai/gpt-4o"]
    assert (acme.requests, acme.errors) == (12, 1)  # cancelled is not an error
    assert acme.error_rate == pytest.approx(1 / 12)
    assert (acme.input_tokens, acme.output_tokens) == (1200, 120)
    assert acme.cost_usd == pytest.approx(0.11)
    assert (acme.latency_p50, acme.latency_p95) == (4.0, 10.0)  # nearest rank: 1,1,1,2..10
    assert acme.top_users == [("alice", 10), ("bob", 2)]
    assert acme.top_tools == [("search/web", 1), ("files/read", 1)]
    assert groups["beta", "azure/prod"].unpriced == 1
    assert groups["beta", "-"].top_tools == [("search/web", 1)]
    assert groups["beta", "-"].errors == 1
    total = report.total
    assert (total.requests, total.errors, total.unpriced) == (15, 2, 1)
    assert total.cost_usd == pytest.approx(0.61)
    assert report.price_table_versions == ["2026-11-30"]


def test_grouping_by_user_and_tool_uses_missing_for_events_without_them() -> None:
    report = build_report(EVENTS, ("user", "tool"), since=SINCE, until=UNTIL, top=1)

    keys = {g.key: g.requests for g in report.groups}
    assert keys == {("alice", "-"): 11, ("bob", "-"): 2, ("-", "-"): 1, ("alice", "search/web"): 1}
    assert all(len(g.top_users) <= 1 for g in report.groups)


def test_an_empty_window_reports_zero_without_percentiles() -> None:
    report = build_report([], ("tenant",), since=SINCE, until=UNTIL)

    assert report.groups == []
    assert (report.total.requests, report.total.latency_p50, report.total.error_rate) == (
        0,
        None,
        0.0,
    )
    assert "total" in format_table(report)


def test_the_table_aligns_columns_and_marks_unpriced_cost() -> None:
    report = build_report(EVENTS, ("tenant", "model"), since=SINCE, until=UNTIL, skipped=2)

    text = format_table(report)

    lines = text.splitlines()
    assert lines[0] == "usage 2026-11-29 12:00 .. 2026-11-30 12:00 UTC by tenant,model"
    assert lines[1].split()[:4] == ["tenant", "model", "requests", "errors"]
    acme = next(line for line in lines if line.startswith("acme"))
    assert acme.split()[:6] == ["acme", "openai/gpt-4o", "12", "1", "8.3%", "1200"]
    assert "alice (10), bob (2)" in acme
    assert "0.0000*" in next(line for line in lines if "azure/prod" in line)
    assert "* 1 requests with tokens have no price" in text
    assert "2 records skipped" in text


def test_csv_and_json_carry_the_same_totals() -> None:
    report = build_report(EVENTS, ("tenant",), since=SINCE, until=UNTIL)

    rows = list(csv.DictReader(io.StringIO(format_csv(report))))
    document = json.loads(format_json(report))

    assert [r["tenant"] for r in rows] == ["beta", "acme", "total"]
    assert rows[1]["requests"] == "12"
    assert rows[1]["top_users"] == "alice:10;bob:2"
    assert document["by"] == ["tenant"]
    assert [g["tenant"] for g in document["groups"]] == ["beta", "acme"]
    assert document["total"]["requests"] == 15
    assert document["total"]["cost_usd"] == pytest.approx(0.61)
    assert "tenant" not in document["total"]
    assert document["groups"][1]["top_tools"][0] == {"tool": "search/web", "calls": 1}


def test_the_hourly_trend_buckets_cost_or_requests_per_group() -> None:
    events = [
        _event(1, finished_at=NOW - timedelta(hours=2, minutes=30), cost_usd=1.0),
        _event(2, finished_at=NOW - timedelta(minutes=5), cost_usd=2.0),
        _event(3, tenant="beta", finished_at=NOW - timedelta(minutes=10), cost_usd=0.5),
    ]

    hours, cost = hourly_trend(events, ("tenant",), since=NOW - timedelta(hours=3), until=NOW)
    _, requests = hourly_trend(
        events, ("tenant",), since=NOW - timedelta(hours=3), until=NOW, metric="requests"
    )
    _, capped = hourly_trend(
        events, ("tenant",), since=NOW - timedelta(hours=3), until=NOW, max_series=1
    )

    assert hours == [NOW - timedelta(hours=h) for h in (3, 2, 1)]
    assert cost == {"acme": [1.0, 0.0, 2.0], "beta": [0.0, 0.0, 0.5]}
    assert requests == {"acme": [1, 0, 1], "beta": [0, 0, 1]}
    assert capped == {"acme": [1.0, 0.0, 2.0], "other": [0.0, 0.0, 0.5]}
    with pytest.raises(ValueError, match="cannot chart 'tokens'"):
        hourly_trend(events, ("tenant",), since=SINCE, until=UNTIL, metric="tokens")


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    hours, series = hourly_trend(EVENTS, ("tenant",), since=SINCE, until=UNTIL)
    path = tmp_path / "trend.png"

    draw_chart(path, hours, series, metric="cost", title="cost per hour by tenant")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("30m", NOW - timedelta(minutes=30)),
        ("7d", NOW - timedelta(days=7)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2026-11-29T08:00:00", datetime(2026, 11, 29, 8, tzinfo=UTC)),
        ("2026-11-29T08:00:00+01:00", datetime(2026, 11, 29, 7, tzinfo=UTC)),
    ],
)
def test_times_are_durations_before_now_or_iso_times(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


def test_bad_times_and_group_keys_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="'yesterday' is not a duration"):
        parse_time("yesterday", NOW)
    with pytest.raises(ValueError, match="cannot group by 'region': choose from tenant, user"):
        parse_group_keys("tenant,region")
    with pytest.raises(ValueError, match="cannot group by nothing"):
        parse_group_keys(" , ")
    assert parse_group_keys("tenant, model,tenant") == ("tenant", "model")


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.95) == 95.0


def test_records_that_are_not_valid_usage_events_are_skipped() -> None:
    event = _event(1)
    attributes = {
        "id": "x",
        "type": USAGE_RECORDED,
        "source": "/ferryman/llm-worker/r1",
        "datacontenttype": "application/json",
    }
    headers, value = encode_binary(attributes, event.model_dump_json().encode())
    other_headers, other_value = encode_binary(attributes | {"type": "ferryman.other"}, b"{}")
    bad_headers, bad_value = encode_binary(attributes, b'{"request_id": 1}')
    naive = event.model_dump(mode="json") | {"finished_at": "2026-11-30T11:00:00"}
    naive_headers, naive_value = encode_binary(attributes, json.dumps(naive).encode())

    assert decode_usage(list(headers), value) == event
    assert decode_usage(list(other_headers), other_value) is None
    assert decode_usage(list(bad_headers), bad_value) is None
    assert decode_usage(list(naive_headers), naive_value) is None  # no UTC offset: ambiguous
    assert decode_usage([], b"not an event") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--by", "tenant,region"], "cannot group by 'region'"),
        (["--since", "soon"], "'soon' is not a duration"),
        (["--since", "1h", "--until", "2h"], "is not after --since"),
    ],
)
def test_the_cli_refuses_bad_arguments_before_reading_kafka(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["usage", "report", "--bootstrap-servers", "127.0.0.1:1", *argv])

    assert code == 1
    assert message in capsys.readouterr().err
