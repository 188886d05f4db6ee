"""`ferryman llm-cache invalidate` and the invalidation event it (and
`FerrymanClient.invalidate_llm_cache`) publishes to the control topic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from ferryman.cache_control import (
    encode_cache_invalidation,
    invalidation_key,
    publish_cache_invalidation,
)
from ferryman.cli import build_parser, main
from ferryman.cli_cache import invalidation_from
from ferryman.client import FerrymanClient
from ferryman.codec import decode_event
from ferryman.contracts import LLM_CACHE_INVALIDATE_REQUESTED, CacheInvalidation

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class RecordingPublisher:
    """Takes `send_and_wait` calls (the only publisher method the control path uses)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> None:
        self.sent.append((topic, key, value, list(headers)))


def test_the_event_is_a_binary_cloudevent_of_the_invalidate_type_with_the_data() -> None:
    invalidation = CacheInvalidation(tenant="acme", prefix="docs-v3/", reason="reindexed")

    event_id, headers, value = encode_cache_invalidation(invalidation, source="/me", now=NOW)

    event = decode_event(headers, value)
    assert event.id == event_id
    assert (event.type, event.source, event.mode) == (
        LLM_CACHE_INVALIDATE_REQUESTED,
        "/me",
        "binary",
    )
    assert CacheInvalidation.model_validate(event.data) == invalidation
    assert event.data == {"tenant": "acme", "prefix": "docs-v3/", "reason": "reindexed"}


def test_tenant_invalidations_are_keyed_by_tenant_and_all_by_star() -> None:
    assert invalidation_key(CacheInvalidation(tenant="acme")) == b"acme"
    assert invalidation_key(CacheInvalidation(all=True)) == b"*"


async def test_publishing_sends_to_the_control_topic_and_returns_the_event_id() -> None:
    publisher = RecordingPublisher()

    event_id = await publish_cache_invalidation(
        publisher,  # type: ignore[arg-type]
        CacheInvalidation(all=True),
        topic="mcp.control.test",
        source="/me",
        now=NOW,
    )

    [(topic, key, value, headers)] = publisher.sent
    assert (topic, key) == ("mcp.control.test", b"*")
    event = decode_event(headers, value)
    assert event.id == event_id
    assert event.data == {"all": True}


def test_the_command_parses_tenant_prefix_and_topic() -> None:
    args = build_parser({}).parse_args(
        ["llm-cache", "invalidate", "--tenant", "acme", "--prefix", "docs-v3/openai/gpt-4o/",
         "--reason", "bad answers", "--topic", "ctl"]
    )  # fmt: skip

    assert args.topic == "ctl"
    assert invalidation_from(args) == CacheInvalidation(
        tenant="acme", prefix="docs-v3/openai/gpt-4o/", reason="bad answers"
    )
    everything = build_parser({}).parse_args(["llm-cache", "invalidate", "--all"])
    assert invalidation_from(everything) == CacheInvalidation(all=True)
    assert everything.topic == "mcp.control"


def test_tenant_and_all_together_or_neither_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--tenant", "acme", "--all"], []):
        with pytest.raises(SystemExit) as exited:
            build_parser({}).parse_args(["llm-cache", "invalidate", *argv])
        assert exited.value.code == 2
    assert "--tenant" in capsys.readouterr().err


def test_a_prefix_with_all_fails_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # The bootstrap address is unreachable: reaching Kafka would fail differently.
    code = main(["llm-cache", "invalidate", "--all", "--prefix", "docs/", "-b", "127.0.0.1:1"])

    assert code == 1
    err = capsys.readouterr().err
    assert "invalid invalidation" in err
    assert "prefix is relative to a tenant" in err


async def test_the_client_publishes_a_valid_invalidation_and_refuses_a_bad_one() -> None:
    client = FerrymanClient("127.0.0.1:1", source="/client", clock=lambda: NOW)
    publisher = RecordingPublisher()
    client._publisher = publisher  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage]

    event_id = await client.invalidate_llm_cache(tenant="acme", prefix="docs-v3/")
    with pytest.raises(ValidationError, match="exactly one of tenant and all"):
        await client.invalidate_llm_cache()
    with pytest.raises(ValidationError, match="exactly one of tenant and all"):
        await client.invalidate_llm_cache(tenant="acme", all=True)

    [(topic, key, value, headers)] = publisher.sent  # the refused ones published nothing
    assert (topic, key) == ("mcp.control", b"acme")
    event = decode_event(headers, value)
    assert (event.id, event.source, event.attributes["time"]) == (event_id, "/client", NOW)
    assert event.data == {"tenant": "acme", "prefix": "docs-v3/"}
