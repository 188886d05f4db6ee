"""Prompt-cache pricing: `PriceTable.cost_of` with reads, writes, long writes and storage;
the LiteLLM-named fields; the fallbacks; and the usage recorder pricing and counting them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts.usage import UsageEvent
from ferryman_runtime.pricing import ModelPrice, PriceTable, PriceTableError, TokenCounts
from ferryman_runtime.usage import UsageRecorder

M = 1e-6  # one USD per million tokens, per token
RATES = ModelPrice(
    input_per_token=3 * M,
    output_per_token=15 * M,
    cache_read_per_token=0.3 * M,
    cache_write_per_token=3.75 * M,
    cache_write_long_per_token=6 * M,
    storage_per_token_hour=1 * M,
)


def _table(**prices: ModelPrice) -> PriceTable:
    return PriceTable("t", {name.replace("__", "/"): p for name, p in prices.items()})


def test_cost_of_prices_every_component_at_its_own_rate() -> None:
    table = _table(p__m=RATES)
    counts = TokenCounts(
        input=10_000,
        output=1_000,
        cache_read=6_000,
        cache_write=3_000,
        cache_write_long=1_000,
        storage_token_hours=500_000,
    )

    cost = table.cost_of("p/m", counts)

    expected = (
        1_000 * 3 * M  # uncached input: 10k - 6k read - 3k written
        + 6_000 * 0.3 * M
        + 2_000 * 3.75 * M  # short writes
        + 1_000 * 6 * M  # long writes
        + 1_000 * 15 * M
        + 500_000 * 1 * M
    )
    assert cost == pytest.approx(expected)


def test_cost_without_cache_counts_is_the_plain_input_and_output_price() -> None:
    table = _table(p__m=RATES)

    assert table.cost("p/m", 1_000, 100) == pytest.approx(1_000 * 3 * M + 100 * 15 * M)
    assert table.cost_of("p/m", TokenCounts(input=1_000, output=100)) == table.cost(
        "p/m", 1_000, 100
    )


def test_unset_cache_rates_fall_back_to_input_and_write_prices() -> None:
    plain = _table(p__m=ModelPrice(2 * M, 8 * M))
    writes_only = _table(p__m=ModelPrice(2 * M, 8 * M, cache_write_per_token=2.5 * M))
    counts = TokenCounts(
        input=1_000, output=0, cache_read=400, cache_write=300, cache_write_long=100
    )

    # No read or write price: every input token at the input price (no discount assumed).
    assert plain.cost_of("p/m", counts) == pytest.approx(1_000 * 2 * M)
    # No long-write price: long writes at the write price.
    assert writes_only.cost_of("p/m", counts) == pytest.approx(
        300 * 2 * M + 400 * 2 * M + 300 * 2.5 * M
    )


def test_storage_without_a_storage_price_has_no_known_cost() -> None:
    table = _table(p__m=ModelPrice(2 * M, 8 * M))

    assert table.cost_of("p/m", TokenCounts(input=0, output=0, storage_token_hours=10.0)) is None
    assert table.cost_of("p/m", TokenCounts(input=0, output=0)) == 0


def test_counts_above_the_input_are_clamped_never_priced_negative() -> None:
    table = _table(p__m=RATES)

    cost = table.cost_of(
        "p/m", TokenCounts(input=100, output=0, cache_read=80, cache_write=50, cache_write_long=90)
    )

    # 80 read, 20 written (what is left of the input), all 20 of them long.
    assert cost == pytest.approx(80 * 0.3 * M + 20 * 6 * M)


def test_an_operator_table_takes_litellm_and_per_million_cache_fields(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "version": "v",
                "models": {
                    "anthropic/claude-x": {
                        "input_cost_per_token": 3e-06,
                        "output_cost_per_token": 1.5e-05,
                        "cache_read_input_token_cost": 3e-07,
                        "cache_creation_input_token_cost": 3.75e-06,
                        "cache_creation_input_token_cost_above_1hr": 6e-06,
                    },
                    "gemini/gemini-x": {
                        "input_usd_per_million": 0.3,
                        "output_usd_per_million": 2.5,
                        "cache_read_usd_per_million": 0.03,
                        "cache_write_usd_per_million": 0.3,
                        "cache_write_long_usd_per_million": 0.3,
                        "cache_storage_usd_per_million_hour": 1.0,
                    },
                },
            }
        )
    )

    table = PriceTable.load(path)

    assert table.price("anthropic/claude-x") == ModelPrice(
        3e-06, 1.5e-05, cache_read_per_token=3e-07, cache_write_per_token=3.75e-06,
        cache_write_long_per_token=6e-06,
    )  # fmt: skip
    gemini = table.price("gemini/gemini-x")
    assert gemini is not None
    assert gemini.cache_read_per_token == pytest.approx(0.03 * M)
    assert gemini.storage_per_token_hour == pytest.approx(1.0 * M)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            {"cache_read_usd_per_million": 0.1, "cache_read_input_token_cost": 1e-7},
            "at most one of cache_read_usd_per_million and cache_read_input_token_cost",
        ),
        (
            {"cache_write_usd_per_million": 1, "cache_creation_input_token_cost": 1e-6},
            "at most one of cache_write_usd_per_million and cache_creation_input_token_cost",
        ),
        ({"cache_read_usd_per_million": -1}, "greater than or equal to 0"),
    ],
)
def test_a_cache_price_given_twice_or_negative_is_refused(
    tmp_path: Path, pair: dict[str, Any], message: str
) -> None:
    path = tmp_path / "prices.json"
    entry = {"input_usd_per_million": 1, "output_usd_per_million": 2, **pair}
    path.write_text(json.dumps({"version": "v", "models": {"p/m": entry}}))

    with pytest.raises(PriceTableError, match=message):
        PriceTable.load(path)


@pytest.mark.parametrize(
    ("model", "read", "write", "write_long"),
    [
        ("openai/gpt-4o", 0.5, 1.0, 1.0),
        ("openai/gpt-4o-mini", 0.5, 1.0, 1.0),
        ("openai/gpt-4.1", 0.25, 1.0, 1.0),
        ("openai/o3", 0.25, 1.0, 1.0),
        ("openai/o4-mini", 0.25, 1.0, 1.0),
        ("anthropic/claude-sonnet-4-5-20250929", 0.1, 1.25, 2.0),
        ("anthropic/claude-opus-4-5", 0.1, 1.25, 2.0),
        ("anthropic/claude-haiku-4-5", 0.1, 1.25, 2.0),
        ("gemini/gemini-2.5-flash", 0.1, 1.0, 1.0),
        ("gemini/gemini-2.5-pro-preview-06-05", 0.1, 1.0, 1.0),
    ],
)
def test_the_packaged_table_has_the_providers_cache_ratios(
    model: str, read: float, write: float, write_long: float
) -> None:
    table = PriceTable.load()
    price = table.price(model)
    assert price is not None

    def ratio(**counts: int) -> float:
        cost = table.cost_of(model, TokenCounts(input=1_000_000, output=0, **counts))
        assert cost is not None
        return cost / (1_000_000 * price.input_per_token)

    assert ratio(cache_read=1_000_000) == pytest.approx(read)
    assert ratio(cache_write=1_000_000) == pytest.approx(write)
    assert ratio(cache_write=1_000_000, cache_write_long=1_000_000) == pytest.approx(write_long)
    assert "Prompt-cache rates" in table.source
    assert "Cached-input" not in table.source  # the old "not modelled" sentence


@pytest.mark.parametrize(
    ("model", "per_million_hour"),
    [("gemini/gemini-2.5-flash", 1.0), ("gemini/gemini-2.5-pro", 4.5)],
)
def test_the_packaged_table_prices_gemini_cache_storage(
    model: str, per_million_hour: float
) -> None:
    table = PriceTable.load()

    cost = table.cost_of(model, TokenCounts(input=0, output=0, storage_token_hours=1_000_000))

    assert cost == pytest.approx(per_million_hour)


class _Publisher:
    """Never called: these tests only record (pricing and counting happen in `record`)."""


def _usage(**changes: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "service": "llm_worker",
        "tenant": "acme",
        "operation": "chat",
        "model": "p/m",
        "input_tokens": 10_000,
        "output_tokens": 1_000,
        "latency_seconds": 1.0,
        "outcome": "completed",
        "finished_at": datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    }
    return UsageEvent(**(fields | changes))


def _recorder(registry: CollectorRegistry) -> UsageRecorder:
    return UsageRecorder(
        lambda: _Publisher(),  # type: ignore[arg-type,return-value]
        topic="usage.test",
        source="/test",
        service="llm_worker",
        registry=registry,
        prices=_table(p__m=RATES),
    )


def _queued(recorder: UsageRecorder) -> UsageEvent:
    return recorder._queue.get_nowait()  # pyright: ignore[reportPrivateUsage]


def test_the_recorder_prices_cache_tokens_and_counts_them_by_token_type() -> None:
    registry = CollectorRegistry()
    recorder = _recorder(registry)

    recorder.record(_usage(cache_read_tokens=6_000, cache_write_tokens=3_000))

    event = _queued(recorder)
    assert event.cost_usd == pytest.approx(
        1_000 * 3 * M + 6_000 * 0.3 * M + 3_000 * 3.75 * M + 1_000 * 15 * M
    )
    labels = {"tenant": "acme", "gen_ai_request_model": "p/m"}
    tokens = "ferryman_usage_tokens_total"
    for token_type, count in [
        ("input", 10_000), ("output", 1_000), ("cache_read", 6_000), ("cache_write", 3_000)
    ]:  # fmt: skip
        assert registry.get_sample_value(tokens, {**labels, "gen_ai_token_type": token_type}) == (
            count
        ), token_type


def test_a_storage_event_without_tokens_is_still_priced_and_counted_in_cost() -> None:
    registry = CollectorRegistry()
    recorder = _recorder(registry)

    recorder.record(
        _usage(
            operation="prompt_cache_storage",
            input_tokens=0,
            output_tokens=0,
            cache_storage_token_hours=2_000.0,
        )
    )

    event = _queued(recorder)
    assert event.cost_usd == pytest.approx(2_000 * 1 * M)
    labels = {"tenant": "acme", "gen_ai_request_model": "p/m"}
    assert registry.get_sample_value("ferryman_usage_cost_usd_total", labels) == pytest.approx(
        2_000 * M
    )
    assert (
        registry.get_sample_value(
            "ferryman_usage_tokens_total", {**labels, "gen_ai_token_type": "input"}
        )
        is None
    )


def test_a_response_cache_hit_costs_nothing() -> None:
    recorder = _recorder(CollectorRegistry())

    recorder.record(_usage(input_tokens=0, output_tokens=0, response_cache="hit"))

    event = _queued(recorder)
    assert (event.cost_usd, event.response_cache) == (0, "hit")
