"""The `ferryman` command line: chat through the bus, list and call MCP tools, tail topics,
show worker health, inspect and replay dead letters.

Connection settings come from `KAFKA_*` environment variables (see `KafkaConnection`) and
the global options, which may be given before or after the command. Passwords are read
from the environment only (`KAFKA_SASL_PASSWORD`, `KAFKA_SSL_PASSWORD`), never from flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

from aiokafka.errors import (  # pyright: ignore[reportMissingTypeStubs]
    KafkaConnectionError,
    KafkaError,
)
from pydantic import ValidationError

from ferryman.cli_mcp_tools import add_tools_arguments, tools_command
from ferryman.cli_tools import dlq_command, health_command, tail_command
from ferryman.client import (
    ChatFailedError,
    FerrymanClient,
    RunRestarted,
    TopicSpec,
)
from ferryman.contracts import (
    DEFAULT_HEALTH_TOPIC,
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    ChatCompleted,
    ChatRestarted,
)
from ferryman.contracts.asyncapi import build_asyncapi
from ferryman.kafka_config import KafkaConnection
from ferryman.shortcuts import request_from_prompt

_CONNECTION_FLAGS = (
    "bootstrap_servers",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "client_id",
)


def package_version() -> str:
    """The installed version of the `ferryman` distribution."""
    try:
        return version("ferryman")
    except PackageNotFoundError:
        return "unknown"


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command must survive the subparser's defaults.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("connection (default: $KAFKA_* environment variables)")
    group.add_argument("-b", "--bootstrap-servers", help="Kafka brokers, host:port[,…]")
    group.add_argument(
        "--security-protocol", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    )
    group.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    group.add_argument("--sasl-username", help="password: $KAFKA_SASL_PASSWORD")
    group.add_argument("--ssl-cafile", help="PEM CA bundle that signs the brokers")
    group.add_argument("--ssl-certfile", help="PEM client certificate (mTLS)")
    group.add_argument("--ssl-keyfile", help="PEM client key (password: $KAFKA_SSL_PASSWORD)")
    group.add_argument("--client-id", help="client id shown in broker logs")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options accepted before and after the command)."""
    common = _global_options()
    parser = argparse.ArgumentParser(prog="ferryman", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=f"ferryman {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common])

    chat = command("chat", "send a prompt and print the answer as it streams")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="mock/echo", help="alias or provider/model")
    chat.add_argument("--no-stream", action="store_true", help="ask for the completed result only")
    chat.add_argument("--request-topic", default=DEFAULT_LLM_REQUEST_TOPIC)
    chat.add_argument("--reply-topic", default=DEFAULT_LLM_REPLY_TOPIC)
    chat.add_argument("--reply-partition", type=int, help="read only this reply partition")
    chat.add_argument(
        "--create-reply-topic", action="store_true", help="create a missing reply topic (dev)"
    )
    chat.add_argument("--tenant", help="the tenant the request is accounted to")
    chat.add_argument(
        "--expires-in", type=_positive_float, help="seconds after which it must not start"
    )
    chat.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    chat.add_argument("--json", action="store_true", help="print the completed event as JSON")

    tools = command("tools", "list the MCP tools your tenant may see, or call one")
    add_tools_arguments(tools, common)

    tail = command("tail", "print the events of a topic, one line each")
    tail.add_argument("topic")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    start.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        help="start this many events before the end of each partition (default 10)",
    )
    tail.add_argument("--max-events", type=int, help="stop after printing this many")

    health = command("health", "print the latest health report of every worker replica")
    health.add_argument("--topic", default=DEFAULT_HEALTH_TOPIC)
    health.add_argument("--json", action="store_true", help="print the reports as JSON")

    dlq = command("dlq", "inspect and replay a dead-letter topic")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="one line per dead letter", parents=[common])
    listing.add_argument("topic")
    show = dlq_commands.add_parser("show", help="print one dead letter", parents=[common])
    show.add_argument("topic")
    show.add_argument("--partition", type=int, default=None, help="default: any partition")
    show.add_argument("--offset", type=int, required=True)
    again = dlq_commands.add_parser(
        "replay", help="republish dead letters to their original topic", parents=[common]
    )
    again.add_argument("topic")
    again.add_argument("--partition", type=int, default=None)
    again.add_argument("--offset", type=int, default=None, help="only this offset")
    again.add_argument("--all", action="store_true", help="replay every (matching) dead letter")
    again.add_argument("--dry-run", action="store_true", help="list what would be replayed")

    spec = command("asyncapi", "print the AsyncAPI document of the events")
    spec.add_argument("--output", help="write to this file instead of stdout")
    return parser


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def connection_from(args: argparse.Namespace, environ: Mapping[str, str]) -> KafkaConnection:
    """The connection: `KAFKA_*` variables of `environ`, overridden by the global options.

    Raises:
        pydantic.ValidationError: the settings are inconsistent.
    """
    flags = {field: getattr(args, field, None) for field in _CONNECTION_FLAGS}
    return KafkaConnection.from_env(environ, overrides=flags)


def _asyncapi(args: argparse.Namespace) -> int:
    document = json.dumps(build_asyncapi(), indent=2, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(document)
    else:
        sys.stdout.write(document)
    return 0


async def _chat(connection: KafkaConnection, args: argparse.Namespace) -> int:
    request = request_from_prompt(args.prompt, model=args.model, stream=not args.no_stream)
    async with FerrymanClient(
        connection,
        request_topic=args.request_topic,
        reply_topic=args.reply_topic,
        reply_partition=args.reply_partition,
        create_reply_topic=TopicSpec() if args.create_reply_topic else False,
    ) as client:
        try:
            stream = client.chat_stream(
                request, timeout=args.timeout, tenant=args.tenant, expires_in=args.expires_in
            )
            async for event in stream:
                _print_chat_event(event, args)
        except ChatFailedError as exc:
            print(f"\nfailed: {exc}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"\nno result within {args.timeout:.0f}s (is a worker running?)", file=sys.stderr)
            return 2
    return 0


def _print_chat_event(event: object, args: argparse.Namespace) -> None:
    if isinstance(event, ChatCompleted):
        if args.json:
            print(event.model_dump_json(indent=2))
            return
        if args.no_stream:
            print(event.content, end="")
        print()
        usage = event.usage
        print(
            f"[{event.provider}/{event.model} · {event.finish_reason} · "
            f"{usage.input_tokens} in / {usage.output_tokens} out · "
            f"{event.latency_ms.total:.0f} ms]",
            file=sys.stderr,
        )
        for call in event.tool_calls:
            print(f"tool call {call.id}: {call.name}({call.arguments})")
    elif args.json:
        return
    elif isinstance(event, ChatRestarted):
        print(
            f"\n[restarted on {event.deployment}: {event.reason.code}; "
            f"discarding {event.discarded_chunks} chunks]",
            file=sys.stderr,
        )
    elif isinstance(event, RunRestarted):
        print(
            f"\n[the request runs again (run {event.run_id}); "
            f"discarding {event.discarded_chunks} chunks]",
            file=sys.stderr,
        )
    else:
        content = getattr(getattr(event, "delta", None), "content", None)
        if content:
            print(content, end="", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "asyncapi":
        return _asyncapi(args)
    try:
        connection = connection_from(args, os.environ)
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        print(f"ferryman: bad Kafka connection settings: {problems}", file=sys.stderr)
        return 2
    runners = {
        "chat": _chat,
        "tools": tools_command,
        "tail": tail_command,
        "health": health_command,
        "dlq": dlq_command,
    }
    try:
        return asyncio.run(runners[args.command](connection, args))
    except KeyboardInterrupt:
        return 130
    except (LookupError, ValueError) as exc:
        print(f"ferryman: {exc}", file=sys.stderr)
        return 1
    except KafkaConnectionError as exc:
        who = ""
        if connection.sasl_mechanism is not None:
            who = f" using {connection.sasl_mechanism} as {connection.sasl_username}"
        print(
            f"ferryman: cannot connect to Kafka at {connection.bootstrap_servers}{who} "
            f"({connection.security_protocol}): {exc}; check the address and the credentials",
            file=sys.stderr,
        )
        return 1
    except KafkaError as exc:
        print(f"ferryman: Kafka error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
