"""`ferryman llm-cache invalidate`: drop answers from the LLM workers' response cache by
publishing an invalidation event to the control topic (docs/caching.md)."""

from __future__ import annotations

import argparse
import os
import socket
from datetime import UTC, datetime

from pydantic import ValidationError

from ferryman.cache_control import publish_cache_invalidation
from ferryman.contracts.llm_cache import CacheInvalidation
from ferryman.contracts.mcp import DEFAULT_MCP_CONTROL_TOPIC
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher


def add_cache_arguments(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The `llm-cache` command's subcommands and options (`common`: the connection options)."""
    subcommands = parser.add_subparsers(dest="cache_command", required=True)
    invalidate = subcommands.add_parser(
        "invalidate",
        help="drop stored answers of one tenant (or of every tenant)",
        description="Publish a response-cache invalidation to the control topic: every LLM"
        " worker replica drops the matching answers stored before it.",
        parents=[common],
    )
    scope = invalidate.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", help="the tenant whose answers are dropped")
    scope.add_argument(
        "--all", action="store_true", dest="all_tenants", help="drop every tenant's answers"
    )
    invalidate.add_argument(
        "--prefix",
        default="",
        help="only keys under this prefix of the tenant's: NAMESPACE/ or"
        " NAMESPACE/PROVIDER/MODEL/ (default: all of the tenant's)",
    )
    invalidate.add_argument("--reason", help="why, for the workers' logs")
    invalidate.add_argument(
        "--topic", default=DEFAULT_MCP_CONTROL_TOPIC, help=f"default {DEFAULT_MCP_CONTROL_TOPIC}"
    )


def invalidation_from(args: argparse.Namespace) -> CacheInvalidation:
    """The invalidation the arguments ask for.

    Raises:
        ValueError: the arguments do not make a valid invalidation (the message says why).
    """
    try:
        return CacheInvalidation(
            tenant=args.tenant,
            all=args.all_tenants,
            prefix=args.prefix,
            reason=args.reason,
        )
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors(include_url=False))
        raise ValueError(f"invalid invalidation: {problems}") from None


async def cache_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """Run `ferryman llm-cache …`; print the event id.

    Raises:
        ValueError: bad arguments (nothing is published).
        aiokafka.errors.KafkaError: Kafka did not acknowledge the event.
    """
    invalidation = invalidation_from(args)
    publisher = KafkaPublisher(
        connection.bootstrap_servers,
        client_id=connection.client_id or "ferryman-cli",
        connection=connection.security_options(),
    )
    await publisher.start()
    try:
        event_id = await publish_cache_invalidation(
            publisher,
            invalidation,
            topic=args.topic,
            source=f"/ferryman/cli/{socket.gethostname()}-{os.getpid()}",
            now=datetime.now(UTC),
        )
    finally:
        await publisher.stop()
    target = "every tenant" if invalidation.all else f"tenant {invalidation.tenant}"
    where = f" under {invalidation.prefix!r}" if invalidation.prefix else ""
    print(f"invalidation {event_id} published to {args.topic}: {target}{where}")
    return 0
