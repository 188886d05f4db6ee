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
token (`*_cost_per_token`, as in LiteLLM's map). A model is looked up exactly, then
without a date suffix (`openai/gpt-4o-2024-08-06` is priced as `openai/gpt-4o`,
`anthropic/claude-sonnet-4-5-20250929` as `anthropic/claude-sonnet-4-5`), then against the
keys holding `*` (fnmatch patterns; the longest matching pattern wins).
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

    @model_validator(mode="after")
    def _one_unit_per_direction(self) -> Self:
        for direction in ("input", "output"):
            per_million = getattr(self, f"{direction}_usd_per_million")
            per_token = getattr(self, f"{direction}_cost_per_token")
            if (per_million is None) == (per_token is None):
                raise ValueError(
                    f"give exactly one of {direction}_usd_per_million and "
                    f"{direction}_cost_per_token"
                )
        return self

    def price(self) -> ModelPrice:
        def per_token(per_million: float | None, per_token: float | None) -> float:
            return per_million / _PER_MILLION if per_million is not None else per_token or 0.0

        return ModelPrice(
            input_per_token=per_token(self.input_usd_per_million, self.input_cost_per_token),
            output_per_token=per_token(self.output_usd_per_million, self.output_cost_per_token),
        )


class _TableFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str = Field(min_length=1, max_length=64)
    source: str = ""
    models: dict[Annotated[str, Field(pattern=r"^[^/\s]+/\S+$")], _Entry]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per input token and per output token of one model."""

    input_per_token: float
    output_per_token: float


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
        price = self.price(model)
        if price is None:
            return None
        return input_tokens * price.input_per_token + output_tokens * price.output_per_token
