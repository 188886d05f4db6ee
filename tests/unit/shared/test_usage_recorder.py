"""UsageRecorder: prices, counts and publishes usage events without ever failing or blocking
the request that records them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError  # pyright: ignore[reportMissingTypeStubs]
from prometheus_client import CollectorRegistry

from ferryman.codec import decode_event
from ferryman.contracts.usage import USAGE_RECORDED, UsageEvent
from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.pricing import ModelPrice, PriceTable
from ferryman_runtime.usage import UsageRecorder

FINISHED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PRICES = PriceTable("test-1", {"openai/gpt-4o": ModelPrice(2.5e-6, 1e-5)})


class FakePublisher:
    """Records what is sent. `acks` decides each send's acknowledgement in turn (then `ok`):
    "ok", "fail", "hold" (never acknowledged) or "refuse" (send itself raises)."""

    def __init__(self, *acks: str) -> None:
        self.acks = list(acks)
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.arrived = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> asyncio.Future[None]:
        if self.gate is not None:
            await self.gate.wait()
        ack = self.acks.pop(0) if self.acks else "ok"
        if ack == "refuse":
            raise KafkaConnectionError("no broker")
        self.sent.append((topic, key, value, list(headers)))
        self.arrived.set()
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if ack == "ok":
            acked.set_result(None)
        elif ack == "fail":
            acked.set_exception(KafkaConnectionError("lost"))
        return acked


def _event(**changes: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "service": "llm_worker",
        "tenant": "acme",
        "user": "u1",
        "operation": "chat",
        "target": "default",
        "model": "openai/gpt-4o-2024-08-06",
        "input_tokens": 1000,
        "output_tokens": 200,
        "latency_seconds": 1.5,
        "outcome": "completed",
        "finished_at": FINISHED,
    }
    return UsageEvent(**(fields | changes))


def _recorder(
    publisher: FakePublisher, registry: CollectorRegistry, **options: Any
) -> UsageRecorder:
    return UsageRecorder(
        lambda: publisher,  # type: ignore[arg-type,return-value]
        topic="usage.test",
        source="/ferryman/llm-worker/r1",
        service="llm_worker",
        registry=registry,
        **options,
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_recorded_event_is_priced_counted_and_published_as_a_keyed_cloudevent() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry, prices=PRICES)
    await recorder.start()

    recorder.record(_event())
    await recorder.stop()

    [(topic, key, value, headers)] = publisher.sent
    assert (topic, key) == ("usage.test", b"acme")
    incoming = decode_event(headers, value)
    assert (incoming.type, incoming.source) == (USAGE_RECORDED, "/ferryman/llm-worker/r1")
    sent = UsageEvent.model_validate_json(value or b"")
    assert sent.cost_usd == pytest.approx(1000 * 2.5e-6 + 200 * 1e-5)
    assert sent.price_table_version == "test-1"
    assert sent.request_id == "req-1"
    model = {"tenant": "acme", "gen_ai_request_model": "openai/gpt-4o-2024-08-06"}
    assert (
        _value(registry, "ferryman_usage_tokens_total", **model, gen_ai_token_type="input") == 1000
    )
    assert (
        _value(registry, "ferryman_usage_tokens_total", **model, gen_ai_token_type="output") == 200
    )
    assert _value(registry, "ferryman_usage_cost_usd_total", **model) == pytest.approx(0.0045)
    assert _value(registry, "ferryman_usage_events_total", outcome="published") == 1
    assert _value(registry, "ferryman_usage_events_total", outcome="dropped") == 0


async def test_an_event_without_a_tenant_is_keyed_by_its_request_id() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry)
    await recorder.start()

    recorder.record(_event(tenant=None, model=None, input_tokens=0, output_tokens=0))
    await recorder.stop()

    [(_, key, value, _)] = publisher.sent
    assert key == b"req-1"
    sent = UsageEvent.model_validate_json(value or b"")
    assert (sent.cost_usd, sent.price_table_version) == (None, None)
    assert registry.get_sample_value("ferryman_usage_tokens_total", {}) is None


async def test_an_unpriced_model_keeps_no_cost_and_counts_only_tokens() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry, prices=PRICES)
    await recorder.start()

    recorder.record(_event(model="azure/prod-chat"))
    await recorder.stop()

    sent = UsageEvent.model_validate_json(publisher.sent[0][2] or b"")
    assert (sent.cost_usd, sent.price_table_version) == (None, "test-1")
    labels = {"tenant": "acme", "gen_ai_request_model": "azure/prod-chat"}
    assert (
        _value(registry, "ferryman_usage_tokens_total", **labels, gen_ai_token_type="input") == 1000
    )
    assert registry.get_sample_value("ferryman_usage_cost_usd_total", labels) is None


async def test_a_cost_given_by_the_worker_is_kept() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry, prices=PRICES)
    await recorder.start()

    recorder.record(_event(cost_usd=0.5, price_table_version="own"))
    await recorder.stop()

    sent = UsageEvent.model_validate_json(publisher.sent[0][2] or b"")
    assert (sent.cost_usd, sent.price_table_version) == (0.5, "own")


async def test_tenants_and_models_past_their_budgets_are_counted_as_other() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(
        publisher,
        registry,
        tenants=LabelBudget(lambda: {"acme"}, max_dynamic=1),
        models=LabelBudget(max_dynamic=0),
    )
    for tenant in ("acme", "t1", "t2", "t3"):
        recorder.record(_event(tenant=tenant, input_tokens=1, output_tokens=0))

    tenants = {
        sample.labels["tenant"]: (sample.labels["gen_ai_request_model"], sample.value)
        for metric in registry.collect()
        if metric.name == "ferryman_usage_tokens"
        for sample in metric.samples
        if sample.name == "ferryman_usage_tokens_total"
    }
    assert tenants == {"acme": ("other", 1), "t1": ("other", 1), "other": ("other", 2)}


async def test_the_default_budgets_bound_the_label_values() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry)
    for n in range(200):
        recorder.record(_event(tenant=f"t{n}", model=f"openai/m{n}", input_tokens=1))

    series = {
        (sample.labels["tenant"], sample.labels["gen_ai_request_model"])
        for metric in registry.collect()
        if metric.name == "ferryman_usage_tokens"
        for sample in metric.samples
        if sample.name == "ferryman_usage_tokens_total"
    }
    assert len({tenant for tenant, _ in series}) == 51  # 50 tenants and `other`
    assert len({model for _, model in series}) == 21  # 20 models and `other`


async def test_a_full_queue_drops_and_counts_new_events_without_blocking() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry, max_queued=2)

    for n in range(5):  # not started: nothing leaves the queue
        recorder.record(_event(request_id=f"r{n}"))

    assert recorder.pending == 2
    assert _value(registry, "ferryman_usage_events_total", outcome="dropped") == 3
    await recorder.start()
    await recorder.stop()
    assert [
        UsageEvent.model_validate_json(v or b"").request_id for _, _, v, _ in publisher.sent
    ] == [
        "r0",
        "r1",
    ]
    assert _value(registry, "ferryman_usage_events_total", outcome="published") == 2


async def test_refused_and_unacknowledged_sends_count_as_failed_and_the_loop_goes_on() -> None:
    registry = CollectorRegistry()
    publisher = FakePublisher("refuse", "fail")
    recorder = _recorder(publisher, registry)
    await recorder.start()

    for request_id in ("refused", "lost", "kept"):
        recorder.record(_event(request_id=request_id))
    await recorder.stop()

    assert _value(registry, "ferryman_usage_events_total", outcome="failed") == 2
    assert _value(registry, "ferryman_usage_events_total", outcome="published") == 1
    assert _value(registry, "ferryman_usage_events_total", outcome="dropped") == 0
    last = UsageEvent.model_validate_json(publisher.sent[-1][2] or b"")
    assert last.request_id == "kept"


async def test_stop_counts_what_it_could_not_publish_in_time_as_dropped() -> None:
    registry = CollectorRegistry()
    publisher = FakePublisher("hold", "hold")
    recorder = _recorder(publisher, registry, stop_timeout=0.05)
    await recorder.start()

    recorder.record(_event(request_id="a"))
    recorder.record(_event(request_id="b"))
    await asyncio.wait_for(publisher.arrived.wait(), timeout=5)
    await recorder.stop()

    assert _value(registry, "ferryman_usage_events_total", outcome="dropped") == 2
    assert _value(registry, "ferryman_usage_events_total", outcome="published") == 0
    assert recorder.pending == 0


async def test_stop_gives_up_on_a_send_stuck_in_a_full_producer_buffer() -> None:
    registry = CollectorRegistry()
    publisher = FakePublisher()
    publisher.gate = asyncio.Event()  # send() waits, like a full producer buffer
    recorder = _recorder(publisher, registry, stop_timeout=0.05)
    await recorder.start()

    recorder.record(_event(request_id="a"))
    recorder.record(_event(request_id="b"))
    await recorder.stop()

    assert _value(registry, "ferryman_usage_events_total", outcome="dropped") == 2
    assert publisher.sent == []


async def test_records_after_stop_are_dropped_and_record_never_raises() -> None:
    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry)
    await recorder.start()
    await recorder.stop()

    recorder.record(_event())

    assert _value(registry, "ferryman_usage_events_total", outcome="dropped") == 1
    assert publisher.sent == []


async def test_a_broken_price_table_does_not_fail_the_record() -> None:
    class BrokenPrices(PriceTable):
        def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
            raise RuntimeError("boom")

    registry, publisher = CollectorRegistry(), FakePublisher()
    recorder = _recorder(publisher, registry, prices=BrokenPrices("x", {}))
    await recorder.start()

    recorder.record(_event())
    await recorder.stop()

    assert len(publisher.sent) == 1
    assert _value(registry, "ferryman_usage_events_total", outcome="published") == 1
