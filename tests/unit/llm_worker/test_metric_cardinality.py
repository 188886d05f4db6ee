"""The LLM worker's `/metrics` stays bounded whatever producers send (design §2.3): 1,000
chat requests with random tenants, random direct models and random reply topics add no
series past the tenant budget; no random model, reply topic or request id becomes a label
value (an unconfigured model is `provider/*`)."""

from __future__ import annotations

import random
from pathlib import Path

from prometheus_client import CollectorRegistry

from ferryman_runtime.metric_labels import NONE, OTHER
from ferryman_runtime.sent_messages import REPLY, configured_topics
from llm_worker.app import LlmWorker
from llm_worker.settings import LlmWorkerSettings
from tests.unit.llm_worker.test_direct_model_bounds import AnyModel
from tests.unit.shared.metric_cardinality import (
    REQUESTS,
    Broker,
    pick_tenant,
    random_name,
    random_tenants,
    request_record,
    scrape,
    tenant_values,
)

CONFIGURED_TENANTS = {"acme", "globex"}
MAX_TENANTS = 50
CONFIGURED_MODELS = {"ok-main", "fuzz/ok-main"}
MODEL_VALUES = CONFIGURED_MODELS | {"fuzz/*"}
"""Every `gen_ai_request_model` a direct request may leave: configured ones or `fuzz/*`."""

FIXED_SERIES = 600
"""Series without a tenant, whatever producers send: about 40 of the kit and the worker
(upstreams, circuits, config), per operation, target and outcome (chat on `chat` or
`direct`, completed, rate limited or unavailable) a counter and a 17-series histogram, per
upstream and model the GenAI histograms (operation duration and first chunk 17 series
each, token usage 2 × 28), and the stream counters. Each tenant adds its usage token series
(per model and token type) on top."""


def _settings(tmp_path: Path) -> LlmWorkerSettings:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  main: {provider: fuzz, model: ok-main}\n"
        "routes:\n"
        "  chat: {deployments: [main]}\n"
        "tenants:\n"
        "  acme: {requests: 1000000, window: 60}\n"
        "  globex: {requests: 1000000, window: 60}\n"
        '  "*": {requests: 1000000, window: 60}\n'
    )
    return LlmWorkerSettings(
        _env_file=None,  # type: ignore[call-arg]
        request_topic="t.llm.requests",
        default_reply_topic="t.llm.results",
        reply_topics=["*.results"],
        routing_file=routing,
        retry_max_attempts=1,
        metrics_max_tenants=MAX_TENANTS,
    )


def _model(rng: random.Random) -> str:
    """Mostly a random direct model (answering, rate limited or down), else the route."""
    pick = rng.random()
    if pick < 0.2:
        return "chat"
    kind = rng.choice(["ok", "ok", "busy", "down"])
    return f"fuzz/{random_name(kind + '-', rng)}"


async def test_random_tenants_models_and_reply_topics_keep_the_scrape_bounded(
    tmp_path: Path,
) -> None:
    worker = LlmWorker(
        _settings(tmp_path), providers={"fuzz": AnyModel()}, registry=CollectorRegistry()
    )
    rng = random.Random(13)
    pool = random_tenants(rng)
    replies = [random_name("reply-", rng) + ".results" for _ in range(REQUESTS)]
    broker = Broker(topics=set(replies))
    await broker.attach(worker.worker)
    await worker.usage.start()
    chosen: set[str] = set()
    halfway: dict[str, set[str]] = {}
    try:
        for offset in range(REQUESTS):
            model = _model(rng)
            request_id = random_name("req-", rng, 20)
            record = request_record(
                worker.worker.settings.request_topic,
                offset,
                "ferryman.llm.chat.requested",
                {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                request_id=request_id,
                tenant=pick_tenant(rng, CONFIGURED_TENANTS, pool),
                reply_to=replies[offset],
            )

            await worker.worker.pipeline(record, 1)

            chosen.update({model.removeprefix("fuzz/"), request_id})
            if offset == REQUESTS // 2 - 1:
                halfway = scrape(worker.worker).label_values()
    finally:
        await worker.usage.stop()

    assert sum(1 for topic, _ in broker.sent if topic in replies) >= REQUESTS
    metrics = scrape(worker.worker)
    tenants = metrics.values("tenant")
    assert len(tenants - CONFIGURED_TENANTS - {NONE, OTHER}) == MAX_TENANTS  # budget used up
    assert OTHER in tenants
    assert metrics.per_tenant() <= tenant_values(CONFIGURED_TENANTS, MAX_TENANTS)
    assert metrics.values("gen_ai_request_model") <= MODEL_VALUES
    assert metrics.values("upstream") <= {"main", "fuzz/*"}
    assert metrics.values("target") <= {"chat", "direct"}
    destinations = metrics.values("messaging_destination_name")
    assert destinations <= configured_topics(worker.worker.settings) | {REPLY}
    assert REPLY in destinations
    assert metrics.leaked(chosen - {"chat"}) == set()
    assert metrics.leaked(replies) == set()
    # The budgets filled in the first half: the second brings no new label value.
    assert {k: v - halfway.get(k, set()) for k, v in metrics.label_values().items()} == {
        k: set() for k in metrics.label_values()
    }
    per_tenant = len(MODEL_VALUES) * 2 + len(MODEL_VALUES)  # tokens (in, out) and cost
    bound = FIXED_SERIES + per_tenant * tenant_values(CONFIGURED_TENANTS, MAX_TENANTS)
    assert metrics.series <= bound
