"""`ferryman storage put|get|ls|rm|presign|head|cp|process`: objects through the
storage_worker.

Exit codes: 0 done; 2 the request failed (`ferryman.storage.failed`: `failed: CODE: message`
is printed, e.g. `not_found` for a `get` of a missing key), no reply came in time, or the
input was invalid (nothing is published then); 3 a `get` without `--url` was answered with
a presigned URL (the object is over the inline limit): the URL is on stdout and nothing was
written. Like every command, 1 when Kafka cannot be reached or the reply topic is missing.

A presigned URL grants access by itself until it expires: it is printed on stdout only, and
only when it is the answer (`presign`, `get`); never in a message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ferryman.cli_mcp_tools import describe_failure
from ferryman.cli_storage_format import (
    describe_invalid,
    describe_object,
    describe_progress,
    object_line,
    pair,
    pairs_to_dict,
    read_content,
    render_listing,
    when,
)
from ferryman.cli_storage_process import (
    add_process_arguments,
    process_command,
    validate_process,
)
from ferryman.cli_tools import add_reply_arguments, positive_float, positive_int
from ferryman.client import RunRestarted, TopicSpec
from ferryman.contracts.storage import (
    DEFAULT_INLINE_LIMIT,
    DEFAULT_STORAGE_REPLY_TOPIC,
    DEFAULT_STORAGE_REQUEST_TOPIC,
    DeleteRequest,
    GetRequest,
    HeadRequest,
    ListCompleted,
    ListRequest,
    ObjectInfo,
    StorageProgress,
)
from ferryman.kafka_config import KafkaConnection
from ferryman.storage_client import DEFAULT_TIMEOUT, TRANSFER_TIMEOUT, StorageClient
from ferryman.storage_requests import (
    StorageFailedError,
    copy_request,
    inline_content,
    presign_request,
    put_request,
)

EXIT_FAILED = 2
EXIT_URL_NOT_WRITTEN = 3


def add_storage_arguments(
    storage: argparse.ArgumentParser, common: argparse.ArgumentParser
) -> None:
    """Add the subcommands to the `storage` command's parser (`common`: the global options,
    accepted after the subcommand too)."""
    subcommands = storage.add_subparsers(dest="storage_command", required=True)

    def subcommand(
        name: str, help_text: str, timeout: float = DEFAULT_TIMEOUT
    ) -> argparse.ArgumentParser:
        parser = subcommands.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        _client_arguments(parser, timeout)
        return parser

    put = subcommand("put", "store a file (or stdin) under a key, inline up to the inline limit")
    put.add_argument("key")
    put.add_argument("file", help="the file to store; - for stdin")
    put.add_argument("--content-type", help="checked against the bytes (default: detected)")
    put.add_argument(
        "--meta",
        action="append",
        type=pair,
        default=[],
        metavar="NAME=VALUE",
        help="user metadata (repeatable)",
    )
    put.add_argument(
        "--tag",
        action="append",
        type=pair,
        default=[],
        metavar="NAME=VALUE",
        help="a tag (repeatable)",
    )
    put.add_argument("--if-absent", action="store_true", help="fail (conflict) when the key exists")
    put.add_argument(
        "--inline-limit",
        type=positive_int,
        default=DEFAULT_INLINE_LIMIT,
        metavar="BYTES",
        help=f"the worker's inline limit (default {DEFAULT_INLINE_LIMIT})",
    )

    get = subcommand("get", "write an object's bytes out (or print the URL it is delivered by)")
    get.add_argument("key")
    get.add_argument(
        "-o", "--output", default="-", metavar="FILE", help="where the bytes go (default -: stdout)"
    )
    get.add_argument("--url", action="store_true", help="ask for a presigned GET URL and print it")
    get.add_argument(
        "--expires",
        type=positive_int,
        default=900,
        metavar="SECONDS",
        help="the URL's lifetime (default 900)",
    )

    listing = subcommand("ls", "list the objects under a prefix (every page)")
    listing.add_argument("prefix", nargs="?", default="")
    listing.add_argument(
        "--delimiter", choices=["/"], help="roll keys below the next / up into folders"
    )
    listing.add_argument(
        "--page-size", type=positive_int, default=1000, help="objects per request (1-1000)"
    )
    listing.add_argument("--json", action="store_true", help="print objects and prefixes as JSON")

    remove = subcommand("rm", "delete an object (a missing key is no error)")
    remove.add_argument("key")

    presign = subcommand("presign", "print a presigned URL to GET or PUT an object directly")
    presign.add_argument("key")
    presign.add_argument("--method", choices=["GET", "PUT"], default="GET")
    presign.add_argument(
        "--expires",
        type=positive_int,
        default=900,
        metavar="SECONDS",
        help="the URL's lifetime (default 900)",
    )
    presign.add_argument("--content-type", help="for PUT: the content type the upload must send")
    presign.add_argument("--json", action="store_true", help="print the completed event as JSON")

    head = subcommand("head", "show an object's size, type, checksum, metadata and tags")
    head.add_argument("key")
    head.add_argument("--json", action="store_true", help="print the object as JSON")

    copy = subcommand("cp", "copy an object to another key (or backend)", TRANSFER_TIMEOUT)
    copy.add_argument("source")
    copy.add_argument("key")
    copy.add_argument("--move", action="store_true", help="delete the source once copied")
    copy.add_argument(
        "--if-absent", action="store_true", help="fail (conflict) when the key exists"
    )
    copy.add_argument(
        "--source-backend", help="the source's backend (default: the tenant's default)"
    )

    add_process_arguments(
        subcommand("process", "run a pipeline on an object (derived objects)", TRANSFER_TIMEOUT)
    )


def _client_arguments(parser: argparse.ArgumentParser, timeout: float) -> None:
    parser.add_argument("--tenant", help="the tenant whose space it is")
    parser.add_argument("--backend", help="one of the tenant's backends (default: its default)")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=timeout,
        help=f"seconds to wait for the reply (default {timeout:g})",
    )
    parser.add_argument("--request-topic", default=DEFAULT_STORAGE_REQUEST_TOPIC)
    parser.add_argument("--reply-topic", default=DEFAULT_STORAGE_REPLY_TOPIC)
    add_reply_arguments(parser)


def _client(connection: KafkaConnection, args: argparse.Namespace) -> StorageClient:
    return StorageClient(
        connection,
        request_topic=args.request_topic,
        reply_topic=args.reply_topic,
        reply_partition=args.reply_partition,
        create_reply_topic=TopicSpec() if args.create_reply_topic else False,
        inline_limit=getattr(args, "inline_limit", DEFAULT_INLINE_LIMIT),
    )


async def storage_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """`ferryman storage …` (exit codes: see the module docstring).

    Raises:
        LookupError: the reply topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    name = args.storage_command
    try:
        _validate(args)
    except ValidationError as exc:
        print(f"ferryman storage {name}: {describe_invalid(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        where = f"cannot read {exc.filename}: " if exc.filename else ""
        print(f"ferryman storage {name}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"ferryman storage {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    async with _client(connection, args) as client:
        try:
            return await _COMMANDS[name](client, args)
        except StorageFailedError as exc:
            print(describe_failure(exc.error), file=sys.stderr)
        except TimeoutError:
            print(
                f"no reply within {args.timeout:g}s (is a storage_worker reading"
                f" {args.request_topic}?)",
                file=sys.stderr,
            )
    return EXIT_FAILED


def _validate(args: argparse.Namespace) -> None:
    """Check the input before connecting: nothing is published for bad input (put reads its
    content here, into `args.content`).

    Raises:
        pydantic.ValidationError: a malformed key, backend, name or expiry.
        OSError: put's file cannot be read.
        ValueError: put's content is over the inline limit, or a name is given twice.
    """
    backend = args.backend
    match args.storage_command:
        case "put":
            args.metadata = pairs_to_dict(args.meta, "--meta")
            args.tags = pairs_to_dict(args.tag, "--tag")
            args.content = read_content(args.file, args.inline_limit)
            put_request(
                args.key,
                args.content,
                content_type=args.content_type,
                metadata=args.metadata,
                tags=args.tags,
                backend=backend,
                inline_limit=args.inline_limit,
            )
        case "get":
            GetRequest(key=args.key, backend=backend, url_expires_in=args.expires)
        case "ls":
            ListRequest(prefix=args.prefix, backend=backend, page_size=args.page_size)
        case "rm":
            DeleteRequest(key=args.key, backend=backend)
        case "presign":
            presign_request(
                args.key,
                args.method,
                expires_in=args.expires,
                content_type=args.content_type,
                backend=backend,
            )
        case "head":
            HeadRequest(key=args.key, backend=backend)
        case "process":
            validate_process(args)
        case _:
            copy_request(args.source, args.key, source_backend=args.source_backend, backend=backend)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"backend": args.backend, "tenant": args.tenant, "timeout": args.timeout}


async def _put(client: StorageClient, args: argparse.Namespace) -> int:
    completed = await client.put(
        args.key,
        args.content,
        content_type=args.content_type,
        metadata=args.metadata,
        tags=args.tags,
        if_absent=args.if_absent,
        backend=args.backend,
        tenant=args.tenant,
        timeout=args.timeout,
    )
    verb = "stored" if completed.created else "already stored (by an earlier run of this request)"
    print(f"{verb} {object_line(completed.object)}")
    return 0


async def _get(client: StorageClient, args: argparse.Namespace) -> int:
    completed = await client.get(
        args.key,
        delivery="url" if args.url else "auto",
        url_expires_in=args.expires,
        backend=args.backend,
        tenant=args.tenant,
        timeout=args.timeout,
    )
    data = inline_content(completed)
    if data is not None:
        if args.output == "-":
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return 0
        try:
            await asyncio.to_thread(Path(args.output).write_bytes, data)
        except OSError as exc:
            print(f"cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"wrote {len(data)} bytes to {args.output}", file=sys.stderr)
        return 0
    if completed.url is None:
        print("failed: the worker answered with neither the bytes nor a URL", file=sys.stderr)
        return EXIT_FAILED
    print(completed.url)
    until = f"valid until {when(completed.url_expires_at)} UTC"
    if args.url:
        print(f"[{object_line(completed.object)} · {until}]", file=sys.stderr)
        return 0
    print(
        f"{object_line(completed.object)} is over the inline limit: nothing written;"
        f" download it from the URL printed ({until})",
        file=sys.stderr,
    )
    return EXIT_URL_NOT_WRITTEN


async def _ls(client: StorageClient, args: argparse.Namespace) -> int:
    objects: list[ObjectInfo] = []
    prefixes: dict[str, None] = {}
    pages = client.list_pages(
        args.prefix, delimiter=args.delimiter, page_size=args.page_size, **_options(args)
    )
    async for page in pages:
        objects += page.objects
        prefixes.update(dict.fromkeys(page.prefixes))
    if args.json:
        listing = ListCompleted(objects=objects, prefixes=list(prefixes))
        print(listing.model_dump_json(indent=2, exclude={"next_page_token"}))
    elif objects or prefixes:
        print(render_listing(objects, list(prefixes)))
    else:
        print(f"no objects under {args.prefix or '/'}", file=sys.stderr)
    return 0


async def _rm(client: StorageClient, args: argparse.Namespace) -> int:
    completed = await client.delete(args.key, **_options(args))
    if completed.deleted:
        print(f"deleted {completed.key}")
    else:
        print(f"no object {completed.key}: nothing deleted", file=sys.stderr)
    return 0


async def _presign(client: StorageClient, args: argparse.Namespace) -> int:
    completed = await client.presign(
        args.key,
        args.method,
        expires_in=args.expires,
        content_type=args.content_type,
        **_options(args),
    )
    if args.json:
        print(completed.model_dump_json(indent=2))
        return 0
    print(completed.url)
    for name, value in sorted(completed.headers.items()):
        print(f"{name}: {value}")
    print(f"[{completed.method} · valid until {when(completed.expires_at)} UTC]", file=sys.stderr)
    return 0


async def _head(client: StorageClient, args: argparse.Namespace) -> int:
    info = await client.head(args.key, **_options(args))
    print(info.model_dump_json(indent=2) if args.json else describe_object(info))
    return 0


async def _cp(client: StorageClient, args: argparse.Namespace) -> int:
    stream = client.copy_stream(
        args.source,
        args.key,
        move=args.move,
        if_absent=args.if_absent,
        source_backend=args.source_backend,
        **_options(args),
    )
    async for event in stream:
        if isinstance(event, StorageProgress):
            print(describe_progress(event), file=sys.stderr, flush=True)
        elif isinstance(event, RunRestarted):
            print(f"[the request runs again (run {event.run_id})]", file=sys.stderr)
        else:
            verb = "moved" if event.moved else "copied"
            print(f"{verb} {args.source} to {object_line(event.object)}")
    return 0


_COMMANDS = {
    "put": _put,
    "get": _get,
    "ls": _ls,
    "rm": _rm,
    "presign": _presign,
    "head": _head,
    "cp": _cp,
    "process": process_command,
}
