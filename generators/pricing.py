"""What generation costs: per-model prices per 1,000 prompt and completion tokens.

A run's budget caps need a price for each answering model. Servers often answer with a dated
snapshot id (`gpt-4o-mini-2024-07-18`) for a requested alias, so a model id that is not listed
matches the longest listed id it starts with. Unknown and local models cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from generators.base import Generation
from generators.bundled import BUNDLED_MODEL_ID


class ModelPrice(BaseModel):
    """Prices in the table's currency per 1,000 tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_per_1k: float = Field(ge=0.0)
    completion_per_1k: float = Field(ge=0.0)


class PriceTable(BaseModel):
    """Model id → price; build one from settings to override or extend the defaults."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "USD"
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    def price_for(self, model: str) -> ModelPrice | None:
        """The price of `model`, or of the longest listed id it starts with, or None."""
        if model in self.prices:
            return self.prices[model]
        prefixes = [m for m in self.prices if model.startswith(m)]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of one call; 0 for models not in the table (local or unknown)."""
        price = self.price_for(model)
        if price is None:
            return 0.0
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


# Published list prices (USD) at the time of writing; settings should override them when they
# change. The bundled model is listed at zero so reports show it as known and free.
DEFAULT_PRICES = PriceTable(
    prices={
        BUNDLED_MODEL_ID: ModelPrice(prompt_per_1k=0.0, completion_per_1k=0.0),
        "gpt-4o-mini": ModelPrice(prompt_per_1k=0.00015, completion_per_1k=0.0006),
        "gpt-4o": ModelPrice(prompt_per_1k=0.0025, completion_per_1k=0.01),
        "gpt-3.5-turbo-instruct": ModelPrice(prompt_per_1k=0.0015, completion_per_1k=0.002),
    }
)


def cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    table: PriceTable = DEFAULT_PRICES,
) -> float:
    """The price of one call under `table` (the defaults unless given); 0 when unknown."""
    return table.cost(model, prompt_tokens, completion_tokens)
