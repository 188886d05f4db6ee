"""How `ferryman storage` reads its input (`NAME=VALUE` pairs, content to put) and shows
objects, listings, progress and malformed requests."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from ferryman.cli_tools import render_table
from ferryman.contracts.storage import ObjectInfo, StorageProgress


def pair(text: str) -> tuple[str, str]:
    """Parse `NAME=VALUE` (`--meta`, `--tag`); the message never repeats the value.

    Raises:
        argparse.ArgumentTypeError: no `=`, or an empty name.
    """
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def pairs_to_dict(pairs: Sequence[tuple[str, str]], option: str) -> dict[str, str]:
    """The pairs of a repeated option as a dict.

    Raises:
        ValueError: a name is given twice.
    """
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise ValueError(f"{option} {name} is given twice")
        values[name] = value
    return values


def read_content(file: str, limit: int) -> bytes:
    """The bytes of `file` (`-`: stdin), reading at most `limit` + 1 of them.

    Raises:
        OSError: the file cannot be read.
        ValueError: the content is over `limit` bytes.
    """
    if file == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open(file, "rb") as handle:
            data = handle.read(limit + 1)
    if len(data) > limit:
        source = "stdin" if file == "-" else file
        raise ValueError(
            f"{source} is over the inline limit ({limit} bytes): get an upload URL with"
            " `ferryman storage presign KEY --method PUT` and upload the file to it"
        )
    return data


def when(moment: datetime | None) -> str:
    """A moment as `YYYY-MM-DD HH:MM:SS` in UTC (`-` for None)."""
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def listing_rows(objects: Sequence[ObjectInfo], prefixes: Sequence[str]) -> list[list[str]]:
    """Rows of `ls`: folders first (`PRE`, `-`, `-`, prefix), then one row per object: size
    in bytes, content type, last modified (UTC), key."""
    rows = [["PRE", "-", "-", prefix] for prefix in prefixes]
    for info in objects:
        rows.append([str(info.size), info.content_type or "-", when(info.last_modified), info.key])
    return rows


def render_listing(objects: Sequence[ObjectInfo], prefixes: Sequence[str]) -> str:
    """The `ls` table (see `listing_rows`)."""
    return render_table(["SIZE", "TYPE", "MODIFIED", "KEY"], listing_rows(objects, prefixes))


def describe_object(info: ObjectInfo) -> str:
    """An object for people, one `name: value` line each (metadata and tags as `name=value`)."""
    checksum = "-" if info.checksum is None else f"{info.checksum.algorithm}:{info.checksum.value}"
    lines = [
        f"key: {info.key}",
        f"backend: {info.backend}",
        f"size: {info.size}",
        f"content type: {info.content_type or '-'}",
        f"checksum: {checksum}",
        f"modified: {when(info.last_modified)}",
    ]
    lines += [
        f"{label}: {value}"
        for label, value in (("etag", info.etag), ("version", info.version))
        if value
    ]
    lines += [f"metadata: {name}={value}" for name, value in sorted(info.metadata.items())]
    lines += [f"tag: {name}={value}" for name, value in sorted(info.tags.items())]
    if info.lineage is not None:
        lineage = info.lineage
        lines.append(f"derived from: {lineage.source_key} by {lineage.pipeline}/{lineage.step}")
    return "\n".join(lines)


def object_line(info: ObjectInfo) -> str:
    """`KEY (SIZE bytes, TYPE)`."""
    return f"{info.key} ({info.size} bytes, {info.content_type or '-'})"


def describe_progress(progress: StorageProgress) -> str:
    """A progress line: `[copy 1048576/4194304 bytes]`."""
    total = "" if progress.bytes_total is None else f"/{progress.bytes_total}"
    return f"[{progress.stage} {progress.bytes_done}{total} bytes]"


def describe_invalid(exc: ValidationError) -> str:
    """Where a request is malformed (field and reason, never the value given)."""
    problems: list[str] = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"])) or "request"
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
