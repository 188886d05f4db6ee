"""The `ferryman` command line: chat through the bus, list and call MCP tools, store and fetch
objects, tail topics, show worker health, inspect and replay dead letters.

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

from ferryman.cli_cache import add_cache_arguments, cache_command
from ferryman.cli_chat import add_chat_arguments, chat_command
from ferryman.cli_mcp_tools import add_tools_arguments, tools_command
from ferryman.cli_plugins import CommandPlugin, installed_plugins
from ferryman.cli_storage import add_storage_arguments, storage_command
from ferryman.cli_tools import dlq_command, health_command, tail_command
from ferryman.cli_usage import add_usage_arguments, usage_command
from ferryman.contracts import DEFAULT_HEALTH_TOPIC
from ferryman.contracts.asyncapi import build_asyncapi
from ferryman.kafka_config import KafkaConnection

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


def build_parser(plugins: Mapping[str, CommandPlugin] | None = None) -> argparse.ArgumentParser:
    """The argument parser (global options accepted before and after the command), with the
    commands of `plugins` (installed packages' commands, see `cli_plugins`)."""
    common = _global_options()
    parser = argparse.ArgumentParser(prog="ferryman", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=f"ferryman {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common])

    chat = command("chat", "send a prompt and print the answer as it streams; tools with --tools")
    add_chat_arguments(chat)

    tools = command("tools", "list the MCP tools your tenant may see, or call one")
    add_tools_arguments(tools, common)

    storage = command("storage", "put, get, list, delete, copy and sign objects (storage_worker)")
    add_storage_arguments(storage, common)

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

    add_usage_arguments(command("usage", "usage report: cost, tokens, errors, latency"), common)
    add_cache_arguments(command("llm-cache", "invalidate the LLM response cache"), common)

    spec = command("asyncapi", "print the AsyncAPI document of the events")
    spec.add_argument("--output", help="write to this file instead of stdout")
    for name, plugin in sorted((plugins or {}).items()):
        if name not in commands.choices:  # a built-in command wins
            plugin.configure(command(name, plugin.help))
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    plugins = installed_plugins()
    args = build_parser(plugins).parse_args(argv)
    if args.command == "asyncapi":
        return _asyncapi(args)
    if args.command in plugins:
        return plugins[args.command].run(args)
    try:
        connection = connection_from(args, os.environ)
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        print(f"ferryman: bad Kafka connection settings: {problems}", file=sys.stderr)
        return 2
    runners = {
        "chat": chat_command,
        "tools": tools_command,
        "storage": storage_command,
        "tail": tail_command,
        "health": health_command,
        "dlq": dlq_command,
        "usage": usage_command,
        "llm-cache": cache_command,
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
