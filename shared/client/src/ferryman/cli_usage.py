"""`ferryman usage report`: read the usage topic over a time window and print who used what,
what it cost, how often it failed and how long it took (see `usage_report`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ferryman.codec import DecodeError, decode_event
from ferryman.contracts.usage import USAGE_RECORDED, USAGE_TOPIC, UsageEvent
from ferryman.kafka_config import KafkaConnection
from ferryman.topic_reader import read_topic_records
from ferryman.usage_report import (
    GROUP_KEYS,
    UsageReport,
    build_report,
    format_csv,
    format_json,
    format_table,
    hourly_trend,
    parse_group_keys,
    parse_time,
)

_FORMATS: dict[str, Callable[[UsageReport], str]] = {
    "table": format_table,
    "csv": format_csv,
    "json": format_json,
}


def add_usage_arguments(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The `usage` command's subcommands and options (`common`: the connection options)."""
    subcommands = parser.add_subparsers(dest="usage_command", required=True)
    report = subcommands.add_parser(
        "report",
        help="totals, cost, error rate, p50/p95 latency, top users and tools per group",
        description="Read the usage topic from SINCE to UNTIL and print one row per group.",
        parents=[common],
    )
    report.add_argument(
        "--since", default="24h", help="a duration before now (24h, 30m, 7d) or an ISO time"
    )
    report.add_argument("--until", help="the window's end: a duration before now or an ISO time")
    report.add_argument(
        "--by",
        default="tenant,model",
        help=f"comma-separated group keys among {','.join(GROUP_KEYS)} (default tenant,model)",
    )
    report.add_argument("--topic", default=USAGE_TOPIC, help=f"default {USAGE_TOPIC}")
    report.add_argument("--format", choices=sorted(_FORMATS), default="table")
    report.add_argument("--top", type=int, default=3, help="users and tools shown per group")
    report.add_argument("--chart", type=Path, help="also draw the hourly trend to this PNG")
    report.add_argument(
        "--chart-metric",
        choices=["cost", "requests"],
        default="cost",
        help="what the chart shows per hour (default cost)",
    )


def decode_usage(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> UsageEvent | None:
    """The usage event in a record, or None when the record is not a valid one."""
    try:
        event = decode_event(headers, value)
    except DecodeError:
        return None
    if event.type != USAGE_RECORDED:
        return None
    data: Any = event.data
    try:
        if isinstance(data, bytes | bytearray | str):
            return UsageEvent.model_validate_json(data)
        return UsageEvent.model_validate(data)
    except ValidationError:
        return None


async def read_usage(
    connection: KafkaConnection, topic: str, since: datetime
) -> tuple[list[UsageEvent], int]:
    """The usage events of `topic` written since `since` (by record timestamp), and how
    many records were skipped as not usage events.

    Raises:
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    events: list[UsageEvent] = []
    skipped = 0
    since_ms = int(since.timestamp() * 1000)
    async for record in read_topic_records(connection, topic, since_ms=since_ms):
        event = decode_usage(record.headers, record.value)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return events, skipped


def draw_chart(
    path: Path, buckets: list[datetime], series: dict[str, list[float]], *, metric: str, title: str
) -> None:
    """Draw one line per group over the hours to a PNG at `path`.

    Raises:
        ValueError: matplotlib is not installed (the `ferryman[charts]` extra).
        OSError: the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise ValueError(
            "--chart needs matplotlib: install the charts extra (pip install 'ferryman[charts]')"
        ) from None
    figure, axes = plt.subplots(figsize=(10, 5), layout="constrained")  # pyright: ignore[reportUnknownMemberType]
    try:
        for label, values in series.items():
            # matplotlib plots datetimes on a date axis; its stubs only name arrays.
            axes.plot(buckets, values, marker="o", markersize=3, label=label)  # pyright: ignore[reportUnknownMemberType, reportArgumentType]
        axes.set_title(title)  # pyright: ignore[reportUnknownMemberType]
        axes.set_xlabel("hour (UTC)")  # pyright: ignore[reportUnknownMemberType]
        axes.set_ylabel("cost (USD)" if metric == "cost" else "requests")  # pyright: ignore[reportUnknownMemberType]
        axes.grid(True, alpha=0.3)  # pyright: ignore[reportUnknownMemberType]
        if series:
            axes.legend(fontsize="small")  # pyright: ignore[reportUnknownMemberType]
        figure.autofmt_xdate()
        figure.savefig(path, format="png", dpi=100)  # pyright: ignore[reportUnknownMemberType]
    finally:
        plt.close(figure)


async def usage_command(
    connection: KafkaConnection,
    args: argparse.Namespace,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    write: Callable[[str], object] = print,
) -> int:
    """`ferryman usage report`: print the report (and draw the chart with `--chart`).

    Raises:
        ValueError: a bad `--by`, `--since`, `--until` or `--top`, or no matplotlib for
            `--chart`.
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    by = parse_group_keys(args.by)
    moment = now()
    since = parse_time(args.since, moment)
    until = parse_time(args.until, moment) if args.until else moment
    if until <= since:
        raise ValueError(
            f"--until ({until.isoformat()}) is not after --since ({since.isoformat()})"
        )
    if args.top < 0:
        raise ValueError("--top must be 0 or more")
    events, skipped = await read_usage(connection, args.topic, since)
    report = build_report(events, by, since=since, until=until, top=args.top, skipped=skipped)
    write(_FORMATS[args.format](report).rstrip("\n"))
    if args.chart is not None:
        buckets, series = hourly_trend(
            events, by, since=since, until=until, metric=args.chart_metric
        )
        title = f"{args.chart_metric} per hour by {','.join(by)}"
        draw_chart(args.chart, buckets, series, metric=args.chart_metric, title=title)
    return 0
