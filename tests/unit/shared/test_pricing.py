"""PriceTable: the packaged table, lookups of dated and wildcard model names, and clear errors
for a bad file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ferryman_runtime.pricing import PriceTable, PriceTableError
from ferryman_runtime.settings import WorkerSettings


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_the_packaged_table_prices_the_common_models_per_million_tokens() -> None:
    table = PriceTable.load()

    assert table.version
    assert "transcribed on" in table.source
    million = 1_000_000
    expected = {
        "openai/gpt-4o": (2.5, 10.0),
        "openai/gpt-4o-mini": (0.15, 0.6),
        "openai/gpt-4.1": (2.0, 8.0),
        "openai/gpt-4.1-mini": (0.4, 1.6),
        "openai/o3": (2.0, 8.0),
        "openai/o4-mini": (1.1, 4.4),
        "anthropic/claude-sonnet-4-5": (3.0, 15.0),
        "anthropic/claude-haiku-4-5": (1.0, 5.0),
        "anthropic/claude-opus-4-1": (15.0, 75.0),
        "gemini/gemini-2.5-pro": (1.25, 10.0),
        "gemini/gemini-2.5-flash": (0.3, 2.5),
    }
    for model, (per_million_in, per_million_out) in expected.items():
        assert table.cost(model, million, 0) == pytest.approx(per_million_in), model
        assert table.cost(model, 0, million) == pytest.approx(per_million_out), model


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("openai/gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai/gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("openai/gpt-4.1-nano-2025-04-14", "openai/gpt-4.1-nano"),
        ("anthropic/claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic/claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku"),
        ("gemini/gemini-2.5-flash-preview-05-20", "gemini/gemini-2.5-flash"),
        ("gemini/gemini-2.5-flash-lite-preview-06-17", "gemini/gemini-2.5-flash-lite"),
        ("gemini/gemini-2.5-pro-preview-06-05", "gemini/gemini-2.5-pro"),
    ],
)
def test_dated_and_preview_model_names_take_their_family_price(model: str, priced_as: str) -> None:
    table = PriceTable.load()

    assert table.price(model) == table.price(priced_as)
    assert table.price(model) is not None


def test_a_model_the_table_does_not_know_has_no_price() -> None:
    table = PriceTable.load()

    assert table.cost("azure/prod-chat", 10, 10) is None
    assert table.cost("openai/gpt-4o-audio-preview", 10, 10) is None  # not gpt-4o's price
    assert table.cost("gpt-4o", 10, 10) is None  # the provider is part of the name


def test_an_operator_table_accepts_per_token_prices_and_the_longest_pattern_wins(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path / "prices.json",
        {
            "version": "acme-2026-12",
            "source": "negotiated",
            "models": {
                "azure/prod-chat": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                "openai/*": {"input_usd_per_million": 1, "output_usd_per_million": 1},
                "openai/gpt-5*": {"input_usd_per_million": 3, "output_usd_per_million": 4},
            },
        },
    )

    table = PriceTable.load(path)

    assert (table.version, table.source) == ("acme-2026-12", "negotiated")
    assert table.cost("azure/prod-chat", 1000, 500) == pytest.approx(0.002)
    assert table.cost("openai/gpt-5-mini", 1_000_000, 1_000_000) == pytest.approx(7)
    assert table.cost("openai/anything", 1_000_000, 0) == pytest.approx(1)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{not json", "not JSON"),
        ({"models": {}}, "version: Field required"),
        ({"version": "1", "models": {"gpt-4o": {}}}, "models.gpt-4o.[key]"),
        (
            {"version": "1", "models": {"openai/x": {"input_usd_per_million": 1}}},
            "give exactly one of output_usd_per_million and output_cost_per_token",
        ),
        (
            {
                "version": "1",
                "models": {"openai/x": {"input_usd_per_million": -1, "output_usd_per_million": 1}},
            },
            "greater than or equal to 0",
        ),
        (
            {
                "version": "1",
                "models": {
                    "openai/x": {
                        "input_usd_per_million": 1,
                        "input_cost_per_token": 1e-6,
                        "output_usd_per_million": 1,
                    }
                },
            },
            "give exactly one of input_usd_per_million and input_cost_per_token",
        ),
    ],
)
def test_a_bad_table_is_refused_naming_the_file_and_the_problem(
    tmp_path: Path, document: Any, problem: str
) -> None:
    path = _write(tmp_path / "bad.json", document)

    with pytest.raises(PriceTableError) as raised:
        PriceTable.load(path)

    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_a_missing_table_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"

    with pytest.raises(PriceTableError, match=r"nowhere\.json.*cannot be read"):
        PriceTable.load(path)


def test_the_workers_read_the_table_path_from_ferryman_price_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert WorkerSettings().price_table is None
    monkeypatch.setenv("FERRYMAN_PRICE_TABLE", str(tmp_path / "prices.json"))

    assert WorkerSettings().price_table == tmp_path / "prices.json"
