"""Token prices: what a request's tokens cost, from a versioned price table.

The table is a JSON file. The one packaged with the runtime (`data/prices.v1.json`) holds
list prices of the common OpenAI, Anthropic and Gemini models; an operator with other prices
(negotiated rates, another provider) points the workers at their own file. Every usage
event names the table's `version`, so a cost can always be traced to the prices it used.

Format::

    {
      "version": "2026-11-30",
      "source": "where the prices come from, and when",
      "models": {
        "openai/gpt-4o": {"input_usd_per_million": 2.5, "output_usd_per_million": 10},
        "anthropic/claude-sonnet-4-5": {"input_cost_per_token": 3e-06,
                                        "output_cost_per_token": 1.5e-05},
        "gemini/gemini-2.5-pro*": {"input_usd_per_million": 1.25, "output_usd_per_million": 10}
      }
    }

Keys are `provider/model`. A price is per million tokens (`*_usd_per_million`) or per
token (`*_cost_per_token`, as in LiteLLM's map). Prompt-cache prices are optional:

- reads: `cache_read_usd_per_million` or `cache_read_input_token_cost`;
- writes: `cache_write_usd_per_million` or `cache_creation_input_token_cost`;
- long (1h) writes: `cache_write_long_usd_per_million` or
  `cache_creation_input_token_cost_above_1hr`;
- storage (Gemini cached contents): `cache_storage_usd_per_million_hour`.

An unset read or write price is the input price (conservative: no discount assumed), an
unset long-write price the write price, an unset storage price unknown.

A model is looked up exactly, then without a date suffix (`openai/gpt-4o-2024-08-06` is
priced as `openai/gpt-4o`, `anthropic/claude-sonnet-4-5-20250929` as
`anthropic/claude-sonnet-4-5`), then against the keys holding `*` (fnmatch patterns; the
longest matching pattern wins).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PACKAGED_TABLE = "prices.v1.json"
"""The price table shipped in `ferryman_runtime/data/`."""

_DATE_SUFFIX = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest)$")
"""Date (or `-latest`) suffixes providers add to a model name for one snapshot of it."""

_PER_MILLION = 1_000_000

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PriceTableError(ValueError):
    """A price table file could not be read or is not valid."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    input_usd_per_million: NonNegative | None = None
    output_usd_per_million: NonNegative | None = None
    input_cost_per_token: NonNegative | None = None
    output_cost_per_token: NonNegative | None = None
    cache_read_usd_per_million: NonNegative | None = None
    cache_read_input_token_cost: NonNegative | None = None
    cache_write_usd_per_million: NonNegative | None = None
    cache_creation_input_token_cost: NonNegative | None = None
    cache_write_long_usd_per_million: NonNegative | None = None
    cache_creation_input_token_cost_above_1hr: NonNegative | None = None
    cache_storage_usd_per_million_hour: NonNegative | None = None

    @model_validator(mode="after")
    def _one_unit_per_price(self) -> Self:
        for per_million, per_token in _REQUIRED_PAIRS:
            if (getattr(self, per_million) is None) == (getattr(self, per_token) is None):
                raise ValueError(f"give exactly one of {per_million} and {per_token}")
        for per_million, per_token in _OPTIONAL_PAIRS:
            if getattr(self, per_million) is not None and getattr(self, per_token) is not None:
                raise ValueError(f"give at most one of {per_million} and {per_token}")
        return self

    def price(self) -> ModelPrice:
        def per_token(per_million: float | None, per_token: float | None) -> float | None:
            return per_million / _PER_MILLION if per_million is not None else per_token

        storage = self.cache_storage_usd_per_million_hour
        return ModelPrice(
            input_per_token=per_token(self.input_usd_per_million, self.input_cost_per_token) or 0.0,
            output_per_token=per_token(self.output_usd_per_million, self.output_cost_per_token)
            or 0.0,
            cache_read_per_token=per_token(
                self.cache_read_usd_per_million, self.cache_read_input_token_cost
            ),
            cache_write_per_token=per_token(
                self.cache_write_usd_per_million, self.cache_creation_input_token_cost
            ),
            cache_write_long_per_token=per_token(
                self.cache_write_long_usd_per_million,
                self.cache_creation_input_token_cost_above_1hr,
            ),
            storage_per_token_hour=None if storage is None else storage / _PER_MILLION,
        )


_REQUIRED_PAIRS = (
    ("input_usd_per_million", "input_cost_per_token"),
    ("output_usd_per_million", "output_cost_per_token"),
)
_OPTIONAL_PAIRS = (
    ("cache_read_usd_per_million", "cache_read_input_token_cost"),
    ("cache_write_usd_per_million", "cache_creation_input_token_cost"),
    ("cache_write_long_usd_per_million", "cache_creation_input_token_cost_above_1hr"),
)


class _TableFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str = Field(min_length=1, max_length=64)
    source: str = ""
    models: dict[Annotated[str, Field(pattern=r"^[^/\s]+/\S+$")], _Entry]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per token of one model: input, output, and the prompt cache's reads, writes and
    storage (None: not in the table; see `PriceTable.cost_of` for the fallbacks)."""

    input_per_token: float
    output_per_token: float
    cache_read_per_token: float | None = None
    cache_write_per_token: float | None = None
    cache_write_long_per_token: float | None = None
    """Writes with the long (1h) retention."""
    storage_per_token_hour: float | None = None
    """Keeping one token in a provider-side cache for an hour (Gemini)."""


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """What one request used, as priced. Cache reads and writes are parts of `input`; long
    writes are part of `cache_write`."""

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    cache_write_long: int = 0
    storage_token_hours: float = 0.0


class PriceTable:
    """Prices by `provider/model`, and the cost of a request's tokens.

    Args:
        version: names the table in usage events (`price_table_version`).
        prices: `provider/model` (or an fnmatch pattern such as `gemini/gemini-2.5-pro*`)
            → its price.
        source: where the prices come from.
    """

    def __init__(self, version: str, prices: dict[str, ModelPrice], *, source: str = "") -> None:
        self.version = version
        self.source = source
        self._exact = {key: price for key, price in prices.items() if "*" not in key}
        self._patterns = sorted(
            ((key, price) for key, price in prices.items() if "*" in key),
            key=lambda item: len(item[0]),
            reverse=True,
        )

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The table in `path`, or the packaged one when `path` is None.

        Raises:
            PriceTableError: the file cannot be read, is not JSON, or is not a valid price
                table; the message names the file and what is wrong.
        """
        if path is None:
            resource = files("ferryman_runtime").joinpath("data", PACKAGED_TABLE)
            name, reader = f"packaged price table {PACKAGED_TABLE}", resource.read_bytes
        else:
            name, reader = f"price table {str(path)!r}", path.read_bytes
        try:
            raw = reader()
        except OSError as exc:
            raise PriceTableError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        try:
            parsed = _TableFile.model_validate(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise PriceTableError(
                f"{name}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'document'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise PriceTableError(f"{name}: not a valid price table ({problems})") from None
        prices = {key: entry.price() for key, entry in parsed.models.items()}
        return cls(parsed.version, prices, source=parsed.source)

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model` (`provider/model`), or None when the table has none."""
        found = self._exact.get(model)
        if found is not None:
            return found
        undated = _DATE_SUFFIX.sub("", model)
        found = self._exact.get(undated)
        if found is not None:
            return found
        for pattern, price in self._patterns:
            if fnmatchcase(model, pattern):
                return price
        return None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """USD that `input_tokens` and `output_tokens` of `model` cost, or None when the
        table has no price for it."""
        return self.cost_of(model, TokenCounts(input=input_tokens, output=output_tokens))

    def cost_of(self, model: str, counts: TokenCounts) -> float | None:
        """USD that `counts` of `model` cost, or None when the table has no price for it
        (or has none for storage and `counts` holds some).

        `(input - read - write)·input + read·cache_read + (write - long)·cache_write
        + long·cache_write_long + output·output + storage_token_hours·storage`. Counts a
        provider reported inconsistently (reads and writes above the input) are clamped,
        never priced negative.
        """
        price = self.price(model)
        if price is None:
            return None
        if counts.storage_token_hours and price.storage_per_token_hour is None:
            return None
        read_rate = _or(price.cache_read_per_token, price.input_per_token)
        write_rate = _or(price.cache_write_per_token, price.input_per_token)
        long_rate = _or(price.cache_write_long_per_token, write_rate)
        read = min(counts.cache_read, counts.input)
        write = min(counts.cache_write, counts.input - read)
        long = min(counts.cache_write_long, write)
        return (
            (counts.input - read - write) * price.input_per_token
            + read * read_rate
            + (write - long) * write_rate
            + long * long_rate
            + counts.output * price.output_per_token
            + counts.storage_token_hours * (price.storage_per_token_hour or 0.0)
        )


def _or(value: float | None, fallback: float) -> float:
    return fallback if value is None else value
