"""What generation costs: per-model prices per 1,000 prompt and completion tokens.

A run's budget caps need a price for each answering model. Prices come from two places, in this
order: the table built from settings (`SELFINSTRUCT_PRICES`, and the bundled model at zero), then
`genai-prices`, a price list maintained on the package registry and read from its offline
snapshot (never fetched at run time). Servers often answer with a dated snapshot id
(`gpt-4o-mini-2024-07-18`) for a requested alias: a model id that is not listed matches the
longest listed id it starts with, and genai-prices matches such ids itself. A model neither
knows has no price: `known()` says so, so that a cost cap is refused instead of never firing.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from generators.base import Generation
from generators.bundled import BUNDLED_MODEL_ID


class ModelPrice(BaseModel):
    """Prices in the table's currency per 1,000 tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_per_1k: float = Field(ge=0.0)
    completion_per_1k: float = Field(ge=0.0)


class PriceTable(BaseModel):
    """Model id → price, ahead of genai-prices; build one from settings to override it."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "USD"
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    def price_for(self, model: str) -> ModelPrice | None:
        """The listed price of `model`, or of the longest listed id it starts with, or None."""
        if model in self.prices:
            return self.prices[model]
        prefixes = [m for m in self.prices if model.startswith(m)]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def known(self, model: str) -> bool:
        """Whether `model` has a price here or in genai-prices."""
        return self.price_for(model) is not None or _registry_entry(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of one call; 0 for a model with no known price (see `known`)."""
        price = self.price_for(model)
        if price is None:
            return _registry_cost(model, prompt_tokens, completion_tokens) or 0.0
        return (
            prompt_tokens * price.prompt_per_1k + completion_tokens * price.completion_per_1k
        ) / 1000.0

    def cost_of(self, generation: Generation) -> float:
        return self.cost(generation.model, generation.prompt_tokens, generation.completion_tokens)

    def merged(self, extra: Mapping[str, ModelPrice | Mapping[str, float]]) -> PriceTable:
        """A copy with `extra` prices added or replacing listed ones."""
        prices = dict(self.prices)
        for model, price in extra.items():
            prices[model] = (
                price if isinstance(price, ModelPrice) else ModelPrice.model_validate(price)
            )
        return PriceTable(currency=self.currency, prices=prices)


@lru_cache(maxsize=256)
def _registry_entry(model: str) -> tuple[Any, Any] | None:
    """genai-prices' (provider, model) for `model`, matched once per id: matching walks the
    whole price list, which cost more than the price itself on every request."""
    from genai_prices import data_snapshot

    try:
        return data_snapshot.get_snapshot().find_provider_model(model, None, None, None)  # type: ignore[no-any-return]
    except LookupError:
        return None


def _registry_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """The cost in USD by genai-prices' offline snapshot; None for a model it does not list."""
    entry = _registry_entry(model)
    if entry is None:
        return None
    from genai_prices import Usage

    provider, priced = entry
    usage = Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens)
    return float(priced.calc_price(usage, provider).total_price)


# The bundled model is listed at zero so reports show it as known and free; every other price
# comes from genai-prices unless settings list it.
DEFAULT_PRICES = PriceTable(
    prices={BUNDLED_MODEL_ID: ModelPrice(prompt_per_1k=0.0, completion_per_1k=0.0)}
)


def cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    table: PriceTable = DEFAULT_PRICES,
) -> float:
    """The price of one call under `table` (the defaults unless given); 0 when unknown."""
    return table.cost(model, prompt_tokens, completion_tokens)
