"""`ferryman tail`, `ferryman health` and `ferryman dlq`: reading topics for people."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from ferryman.codec import DecodeError, decode_event
from ferryman.contracts import HEALTH_REPORTED
from ferryman.contracts import events as ev
from ferryman.dlq import DeadLetter, read_dead_letters, replay
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher
from ferryman.topic_reader import TopicRecord, read_topic_records

SUMMARY_CHARS = 160
_STATUS_RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def format_record(record: TopicRecord) -> str:
    """One line for a record: where, when, type, id, correlation, run and a data summary.

    The reply token and other extensions are not shown (the token is a secret).
    """
    when = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    where = f"{record.partition}/{record.offset}"
    try:
        event = decode_event(record.headers, record.value)
    except DecodeError:
        size = len(record.value or b"")
        return f"{where}\t{when}\t(not a CloudEvent, {size} bytes)"
    parts = [where, when, event.type, f"id={event.id}"]
    for label, name in (("corr", ev.EXT_CORRELATION_ID), ("run", ev.EXT_RUN_ID)):
        value = event.extension(name)
        if value is not None:
            parts.append(f"{label}={value}")
    parts.append(_summary(event.data))
    return "\t".join(parts)


def _summary(data: Any) -> str:
    if data is None:
        return "-"
    if isinstance(data, bytes | bytearray):
        text = bytes(data).decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            return f"<{len(data)} bytes>"
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


async def tail_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """`ferryman tail TOPIC`: print events, one line each (see `format_record`).

    Raises:
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    printed = 0
    last = None if args.from_beginning else max(args.lines, 0)
    async for record in read_topic_records(connection, args.topic, last=last, follow=args.follow):
        print(format_record(record), flush=args.follow)
        printed += 1
        if args.max_events is not None and printed >= args.max_events:
            break
    return 0


def latest_health(records: list[TopicRecord]) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest health report data per (service, instance); other events are skipped."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        try:
            event = decode_event(record.headers, record.value)
        except DecodeError:
            continue
        data = event.data
        if isinstance(data, bytes | bytearray):
            try:
                data = json.loads(data)
            except ValueError:
                continue
        if event.type != HEALTH_REPORTED or not isinstance(data, dict):
            continue
        report = cast(dict[str, Any], data)
        key = (str(report.get("service", "?")), str(report.get("instance", "?")))
        previous = latest.get(key)
        if previous is None or str(report.get("reported_at", "")) >= str(
            previous.get("reported_at", "")
        ):
            latest[key] = report
    return latest


def health_row(report: Mapping[str, Any]) -> list[str]:
    """Table cells for one report, read defensively (fields may be missing or new)."""
    upstreams = report.get("upstreams", report.get("deployments"))  # older workers: deployments
    counts: dict[str, int] = {}
    if isinstance(upstreams, list):
        for item in cast(list[Any], upstreams):
            status = cast(dict[str, Any], item).get("status") if isinstance(item, dict) else None
            name = str(cast(object, status) or "unknown")
            counts[name] = counts.get(name, 0) + 1
    status = report.get("status")
    if not isinstance(status, str):
        worst = max(counts, key=lambda name: _STATUS_RANK.get(name, -1), default=None)
        status = worst or "-"
    detail = ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "-"
    version = report.get("config_version", report.get("routing_version"))
    if version:
        detail += f"; config {str(version)[:12]}"
    return [
        str(report.get("service", "?")),
        str(report.get("instance", "?")),
        str(report.get("reported_at", "-")),
        status,
        detail,
    ]


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


async def health_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """`ferryman health`: the latest report of every service instance, as a table or JSON.

    Raises:
        LookupError: the health topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    records = [record async for record in read_topic_records(connection, args.topic)]
    latest = latest_health(records)
    if args.json:
        print(json.dumps([latest[key] for key in sorted(latest)], indent=2))
        return 0
    if not latest:
        print(f"no health reports on {args.topic}", file=sys.stderr)
        return 1
    header = ["SERVICE", "INSTANCE", "REPORTED AT", "STATUS", "UPSTREAMS"]
    print(render_table(header, [health_row(latest[key]) for key in sorted(latest)]))
    return 0


def _dlq_summary(letter: DeadLetter) -> str:
    return (
        f"{letter.partition}/{letter.offset}\t{letter.header(ev.DLQ_REASON)}\t"
        f"{letter.header(ev.DLQ_ERROR_TYPE)}\tfrom {letter.header(ev.DLQ_ORIGINAL_TOPIC)}/"
        f"{letter.header(ev.DLQ_ORIGINAL_PARTITION)}/{letter.header(ev.DLQ_ORIGINAL_OFFSET)}\t"
        f"ce_id={letter.header('ce_id')}\t{(letter.header(ev.DLQ_ERROR_MESSAGE) or '')[:120]}"
    )


def _dlq_show(letter: DeadLetter) -> str:
    def text(raw: bytes | None) -> str | None:
        return None if raw is None else raw.decode("utf-8", errors="backslashreplace")

    return json.dumps(
        {
            "location": letter.location,
            "key": text(letter.key),
            "headers": [[k, text(v)] for k, v in letter.headers],
            "value": text(letter.value),
        },
        indent=2,
    )


async def dlq_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """`ferryman dlq list|show|replay TOPIC`.

    `replay` without `--offset` replays every (matching) dead letter only with `--all`;
    `--dry-run` prints what would be replayed and publishes nothing.

    Raises:
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    command = args.dlq_command
    if command == "replay" and args.offset is None and not args.all:
        print(
            f"refusing to replay every dead letter of {args.topic}: pass --offset, or --all "
            "(try --dry-run first)",
            file=sys.stderr,
        )
        return 2
    matched = 0
    publisher: KafkaPublisher | None = None
    try:
        async for letter in read_dead_letters(connection, args.topic):
            if command == "list":
                print(_dlq_summary(letter))
                matched += 1
                continue
            if args.partition is not None and letter.partition != args.partition:
                continue
            if args.offset is not None and letter.offset != args.offset:
                continue
            matched += 1
            if command == "show":
                print(_dlq_show(letter))
            elif args.dry_run:
                print(f"would replay {letter.location} -> {letter.header(ev.DLQ_ORIGINAL_TOPIC)}")
            else:
                if publisher is None:
                    publisher = KafkaPublisher(
                        connection.bootstrap_servers,
                        client_id=connection.client_id or "ferryman-cli",
                        connection=connection.security_options(),
                    )
                    await publisher.start()
                try:
                    target = await replay(publisher, letter)
                except ValueError as exc:
                    print(f"skipped: {exc}", file=sys.stderr)
                    continue
                print(f"replayed {letter.location} -> {target}")
    finally:
        if publisher is not None:
            await publisher.stop()
    if command == "list":
        print(f"{matched} dead letter(s)", file=sys.stderr)
    elif matched == 0:
        print("no matching dead letter", file=sys.stderr)
        return 1
    return 0


def positive_float(text: str) -> float:
    """An argparse type: a number above zero.

    Raises:
        argparse.ArgumentTypeError: zero or less.
    """
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number above zero.

    Raises:
        argparse.ArgumentTypeError: zero or less.
    """
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def add_reply_arguments(parser: argparse.ArgumentParser) -> None:
    """`--reply-partition` and `--create-reply-topic`, as every request command takes them."""
    parser.add_argument("--reply-partition", type=int, help="read only this reply partition")
    parser.add_argument(
        "--create-reply-topic", action="store_true", help="create a missing reply topic (dev)"
    )
