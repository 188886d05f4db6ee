"""What `ferryman usage report` computes from usage events: pure functions, no Kafka.

Events are grouped by the chosen keys; each group gets its request and error counts, token
and cost totals (prompt-cache reads and writes, and response-cache hits, among them), latency
percentiles, and its top users and tools. Errors are requests that ended with an error code
(`cancelled` is not an error: the producer asked for it). A provider cache's storage events
(`prompt_cache_storage`) add their cost, not a request.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ferryman.contracts.usage import UsageEvent

GROUP_KEYS: Final = ("tenant", "user", "service", "model", "tool", "operation", "target", "outcome")
"""The fields a report may be grouped by."""

NOT_AN_ERROR: Final = frozenset({"completed", "cancelled"})

CACHE_STORAGE: Final = "prompt_cache_storage"
"""The `operation` of usage events that bill a provider cache's storage, not a request."""

MISSING: Final = "-"
"""How a group key the event does not have (no tenant, no model…) is shown."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_group_keys(text: str) -> tuple[str, ...]:
    """The keys of `--by` (`tenant,model`), in order, without repeats.

    Raises:
        ValueError: a key is not one of `GROUP_KEYS`, or none is given.
    """
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown or not keys:
        shown = ", ".join(repr(k) for k in unknown) or "nothing"
        raise ValueError(f"cannot group by {shown}: choose from {', '.join(GROUP_KEYS)}")
    return keys


def parse_time(text: str, now: datetime) -> datetime:
    """A point in time: a duration before `now` (`90s`, `30m`, `24h`, `7d`, `2w`) or an ISO
    8601 time (UTC when it has no offset).

    Raises:
        ValueError: `text` is neither.
    """
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration (24h, 30m, 7d…) or an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def group_value(event: UsageEvent, key: str) -> str:
    """The value of group key `key` for `event` (`-` when the event has none)."""
    value: Any = getattr(event, key)
    return str(value) if value else MISSING


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ascending `sorted_values` (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    latencies: list[float] = field(default_factory=list[float])
    users: Counter[str] = field(default_factory=Counter[str])
    tools: Counter[str] = field(default_factory=Counter[str])

    def add(self, event: UsageEvent) -> None:
        if event.cost_usd is not None:
            self.cost_usd += event.cost_usd
        elif event.input_tokens or event.output_tokens or event.cache_storage_token_hours:
            self.unpriced += 1
        if event.operation == CACHE_STORAGE:
            return
        self.requests += 1
        self.errors += event.outcome not in NOT_AN_ERROR
        self.input_tokens += event.input_tokens
        self.output_tokens += event.output_tokens
        self.cache_read_tokens += event.cache_read_tokens
        self.cache_write_tokens += event.cache_write_tokens
        self.cache_hits += event.response_cache == "hit"
        self.latencies.append(event.latency_seconds)
        if event.user:
            self.users[event.user] += 1
        called: list[str] = [event.tool] if event.tool else []
        for tool in dict.fromkeys([*called, *event.tools]):
            self.tools[tool] += 1


@dataclass(frozen=True)
class GroupSummary:
    """The totals of one group (or of the whole report)."""

    key: tuple[str, ...]
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced: int
    """Events with tokens (or cache storage) but no price (their cost is not in
    `cost_usd`)."""
    latency_p50: float | None
    latency_p95: float | None
    top_users: list[tuple[str, int]]
    top_tools: list[tuple[str, int]]
    cache_read_tokens: int = 0
    """Input tokens read from providers' prompt caches (part of `input_tokens`)."""
    cache_write_tokens: int = 0
    """Input tokens written to providers' prompt caches (part of `input_tokens`)."""
    cache_hits: int = 0
    """Requests answered from the response cache."""

    @property
    def error_rate(self) -> float:
        """Errors ÷ requests (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self, by: Sequence[str]) -> dict[str, Any]:
        """This summary as a JSON object, with the group keys named `by` (none for a total)."""
        return {
            **(dict(zip(by, self.key, strict=True)) if by else {}),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_hits": self.cache_hits,
            "cost_usd": round(self.cost_usd, 6),
            "unpriced": self.unpriced,
            "latency_p50_seconds": self.latency_p50,
            "latency_p95_seconds": self.latency_p95,
            "top_users": [{"user": u, "requests": n} for u, n in self.top_users],
            "top_tools": [{"tool": t, "calls": n} for t, n in self.top_tools],
        }


def _summary(key: tuple[str, ...], tally: _Tally, top: int) -> GroupSummary:
    latencies = sorted(tally.latencies)
    return GroupSummary(
        key=key,
        requests=tally.requests,
        errors=tally.errors,
        input_tokens=tally.input_tokens,
        output_tokens=tally.output_tokens,
        cost_usd=tally.cost_usd,
        unpriced=tally.unpriced,
        latency_p50=percentile(latencies, 0.5),
        latency_p95=percentile(latencies, 0.95),
        top_users=tally.users.most_common(top),
        top_tools=tally.tools.most_common(top),
        cache_read_tokens=tally.cache_read_tokens,
        cache_write_tokens=tally.cache_write_tokens,
        cache_hits=tally.cache_hits,
    )


@dataclass(frozen=True)
class UsageReport:
    """The groups (most expensive first, then most requests) and the total."""

    by: tuple[str, ...]
    since: datetime
    until: datetime
    groups: list[GroupSummary]
    total: GroupSummary
    price_table_versions: list[str]
    skipped: int = 0
    """Records of the topic that were not usage events (or not valid ones)."""


def in_window(event: UsageEvent, since: datetime, until: datetime) -> bool:
    """Whether `event` finished in [`since`, `until`)."""
    return since <= event.finished_at < until


def build_report(
    events: Iterable[UsageEvent],
    by: Sequence[str],
    *,
    since: datetime,
    until: datetime,
    top: int = 3,
    skipped: int = 0,
) -> UsageReport:
    """Aggregate the `events` that finished in [`since`, `until`) by the keys `by`."""
    by = tuple(by)
    groups: dict[tuple[str, ...], _Tally] = {}
    total = _Tally()
    versions: set[str] = set()
    for event in events:
        if not in_window(event, since, until):
            continue
        key = tuple(group_value(event, k) for k in by)
        groups.setdefault(key, _Tally()).add(event)
        total.add(event)
        if event.price_table_version:
            versions.add(event.price_table_version)
    summaries = [_summary(key, tally, top) for key, tally in groups.items()]
    summaries.sort(key=lambda s: (-s.cost_usd, -s.requests, s.key))
    return UsageReport(
        by=by,
        since=since,
        until=until,
        groups=summaries,
        total=_summary(tuple("total" if i == 0 else "" for i in range(len(by))), total, top),
        price_table_versions=sorted(versions),
        skipped=skipped,
    )


def hourly_trend(
    events: Iterable[UsageEvent],
    by: Sequence[str],
    *,
    since: datetime,
    until: datetime,
    metric: str = "cost",
    max_series: int = 8,
) -> tuple[list[datetime], dict[str, list[float]]]:
    """Per hour from `since` to `until`, the cost (or `metric="requests"`) of each group.

    Groups beyond the `max_series` largest are summed as `other`. Returns the hour starts
    and, per group label (`acme/openai/gpt-4o`), one value per hour.

    Raises:
        ValueError: `metric` is not `cost` or `requests`.
    """
    if metric not in ("cost", "requests"):
        raise ValueError(f"cannot chart {metric!r}: choose cost or requests")
    start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = max(1, math.ceil((until - start).total_seconds() / 3600))
    buckets = [start + timedelta(hours=h) for h in range(hours)]
    series: dict[str, list[float]] = {}
    for event in events:
        if not in_window(event, since, until):
            continue
        label = "/".join(group_value(event, k) for k in by)
        hour = int((event.finished_at - start).total_seconds() // 3600)
        values = series.setdefault(label, [0.0] * hours)
        values[min(hour, hours - 1)] += (event.cost_usd or 0.0) if metric == "cost" else 1
    ranked = sorted(series, key=lambda label: -sum(series[label]))
    kept = {label: series[label] for label in ranked[:max_series]}
    rest = ranked[max_series:]
    if rest:
        kept["other"] = [sum(series[label][h] for label in rest) for h in range(hours)]
    return buckets, kept


def _top(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in pairs) or MISSING


def _seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _row(summary: GroupSummary) -> list[str]:
    return [
        *summary.key,
        str(summary.requests),
        str(summary.errors),
        f"{summary.error_rate:.1%}",
        str(summary.input_tokens),
        str(summary.output_tokens),
        str(summary.cache_read_tokens),
        str(summary.cache_write_tokens),
        str(summary.cache_hits),
        f"{summary.cost_usd:.4f}" + ("*" if summary.unpriced else ""),
        _seconds(summary.latency_p50),
        _seconds(summary.latency_p95),
        _top(summary.top_users),
        _top(summary.top_tools),
    ]


_COLUMNS = (
    "requests", "errors", "error%", "in_tokens", "out_tokens", "cache_read", "cache_write",
    "cache_hits", "cost_usd",
)  # fmt: skip
_TAIL = ("p50_s", "p95_s", "top_users", "top_tools")


def format_table(report: UsageReport) -> str:
    """The report as an aligned text table, the total last."""
    header = [*report.by, *_COLUMNS, *_TAIL]
    rows = [_row(s) for s in report.groups] + [_row(report.total)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = set(range(len(report.by), len(report.by) + len(_COLUMNS) + 2))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [
        f"usage {report.since:%Y-%m-%d %H:%M} .. {report.until:%Y-%m-%d %H:%M} UTC"
        f" by {','.join(report.by)}",
        line(header),
        rule,
        *(line(r) for r in rows[:-1]),
        rule,
        line(rows[-1]),
    ]
    notes: list[str] = []
    if report.total.unpriced:
        notes.append(f"* {report.total.unpriced} requests with tokens have no price")
    if report.price_table_versions:
        notes.append(f"price table {', '.join(report.price_table_versions)}")
    if report.skipped:
        notes.append(f"{report.skipped} records skipped (not usage events)")
    return "\n".join(out + notes) + "\n"


def format_csv(report: UsageReport) -> str:
    """The report as CSV: one row per group, then the total; top lists as `name:n;…`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*report.by, *(c.replace("error%", "error_rate") for c in _COLUMNS), *_TAIL])
    for summary in [*report.groups, report.total]:
        writer.writerow(
            [
                *summary.key,
                summary.requests,
                summary.errors,
                f"{summary.error_rate:.6f}",
                summary.input_tokens,
                summary.output_tokens,
                summary.cache_read_tokens,
                summary.cache_write_tokens,
                summary.cache_hits,
                f"{summary.cost_usd:.6f}",
                "" if summary.latency_p50 is None else f"{summary.latency_p50:.6f}",
                "" if summary.latency_p95 is None else f"{summary.latency_p95:.6f}",
                ";".join(f"{u}:{n}" for u, n in summary.top_users),
                ";".join(f"{t}:{n}" for t, n in summary.top_tools),
            ]
        )
    return buffer.getvalue()


def format_json(report: UsageReport) -> str:
    """The report as one JSON document."""
    document = {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "by": list(report.by),
        "groups": [s.to_json(report.by) for s in report.groups],
        "total": report.total.to_json(()),
        "price_table_versions": report.price_table_versions,
        "skipped": report.skipped,
    }
    return json.dumps(document, indent=2) + "\n"
