"""LLM backends, prompt building and response parsing; no database and no HTTP server.

Build a backend by name from plain options and generate:

    backend = create_backend("local")                       # the bundled model, offline
    backend = create_backend("openai", {"base_url": "http://127.0.0.1:8000/v1"})
    results = await backend.generate(prompts, SamplingParams(max_tokens=64))
"""

from generators.base import (
    Backend,
    BackendStats,
    ChatMessage,
    Choice,
    FinishReason,
    Generation,
    Prompt,
    SamplingParams,
    backend_names,
    create_backend,
    get_backend_class,
    register_backend,
)
from generators.bundled import BUNDLED_MODEL_ID, bundled_model_path
from generators.errors import (
    BackendNotInstalled,
    BackendUnavailable,
    BadResponse,
    GeneratorError,
    RequestRejected,
    RetryBudgetExhausted,
    UnknownBackend,
    UnsupportedRequest,
)
from generators.local import LocalBackend, unload_models
from generators.openai_compat import OpenAIBackend
from generators.pricing import DEFAULT_PRICES, ModelPrice, PriceTable, cost
from generators.ratelimit import RateLimiter, reset_shared_rate_limiters, shared_rate_limiter

__all__ = [
    "BUNDLED_MODEL_ID",
    "DEFAULT_PRICES",
    "Backend",
    "BackendNotInstalled",
    "BackendStats",
    "BackendUnavailable",
    "BadResponse",
    "ChatMessage",
    "Choice",
    "FinishReason",
    "Generation",
    "GeneratorError",
    "LocalBackend",
    "ModelPrice",
    "OpenAIBackend",
    "PriceTable",
    "Prompt",
    "RateLimiter",
    "RequestRejected",
    "RetryBudgetExhausted",
    "SamplingParams",
    "UnknownBackend",
    "UnsupportedRequest",
    "backend_names",
    "bundled_model_path",
    "cost",
    "create_backend",
    "get_backend_class",
    "register_backend",
    "reset_shared_rate_limiters",
    "shared_rate_limiter",
    "unload_models",
]
