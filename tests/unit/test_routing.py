"""Routes: weighted deployments, fallbacks, open circuits skipped, failover before a chunk."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from llm_worker.providers import ModelRouter
from llm_worker.replies import ReplyStream
from llm_worker.routing import RoutingConfig
from llm_worker.service import ChatJob, ChatService, LlmMetrics
from shared.contracts import ChatRequest, ErrorCode, FerrymanError
from shared.runtime.codec import header_value
from shared.runtime.resilience import Breakers, RetryPolicy
from tests.unit.test_handler import RawPublisher
from tests.unit.test_resilience import FlakyModel

CONFIG = {
    "deployments": {
        "a": {"provider": "flaky", "model": "a", "weight": 3},
        "b": {"provider": "flaky", "model": "b", "weight": 1},
        "c": {"provider": "healthy", "model": "c"},
    },
    "routes": {"chat": {"deployments": ["a", "b"], "fallbacks": ["backup"]},
               "backup": {"deployments": ["c"]}},
}  # fmt: skip


def test_weighted_order_then_fallbacks_each_deployment_once() -> None:
    config, rng = RoutingConfig.model_validate(CONFIG), random.Random(3)

    orders = [[n for n, _ in config.candidates("chat", allowed=lambda _: True, rng=rng)]
              for _ in range(400)]  # fmt: skip

    assert all(sorted(o[:2]) == ["a", "b"] and o[2:] == ["c"] for o in orders)
    firsts = Counter(o[0] for o in orders)
    assert 240 < firsts["a"] < 360  # weight 3 : 1


def test_deployments_that_are_not_allowed_are_skipped() -> None:
    config = RoutingConfig.model_validate(CONFIG)

    order = [n for n, _ in config.candidates("chat", allowed=lambda name: name != "a")]

    assert order == ["b", "c"]


def test_a_routing_file_with_unknown_references_is_rejected_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text("deployments: {}\nroutes:\n  chat: {deployments: [nope]}\n")

    with pytest.raises(ValueError, match="unknown deployments"):
        RoutingConfig.load(bad)


async def test_a_retryable_failure_fails_over_and_the_fallback_serves() -> None:
    registry, publisher = CollectorRegistry(), RawPublisher()
    down = FlakyModel(100, FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True))
    healthy = FlakyModel(0, FerrymanError(ErrorCode.INTERNAL, "unused"))
    healthy.provider = "healthy"
    service = ChatService(
        ModelRouter({"flaky": down, "healthy": healthy}, {}),
        LlmMetrics(registry),
        breakers=Breakers(registry, "t", fail_max=10, reset_timeout=30),
        retry=RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002),
        routing=RoutingConfig.model_validate(CONFIG),
    )
    request = ChatRequest.model_validate(
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    )
    replies = ReplyStream(publisher, topic="r", request_id="q", source="/s", extensions={})  # type: ignore[arg-type]

    await service.execute(ChatJob(request=request, replies=replies))

    types = [header_value(h, "ce_type") for _, _, _, h in publisher.sent]
    assert types[-1] == "ferryman.llm.chat.completed"
    assert b'"provider":"healthy"' in publisher.sent[-1][2]
    assert down.calls == 4  # two deployments of the primary route, two attempts each
    assert healthy.calls == 1
    completed = json.loads(publisher.sent[-1][2] or b"")
    assert completed["deployment"] == "c"
    attempts = completed["attempts"]
    assert [(a["outcome"], a.get("error_code")) for a in attempts] == [
        ("failed", "unavailable")
    ] * 4 + [("completed", None)]
    assert sorted(a["deployment"] for a in attempts[:4]) == ["a", "a", "b", "b"]
    assert attempts[4]["deployment"] == "c"
