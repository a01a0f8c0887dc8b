"""When and how long to wait before retrying a request to a model server.

Full jitter (a uniform draw between 0 and the exponential cap) spreads clients that failed together,
so an overloaded server is not hit again by all of them at the same instant.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from pydantic import BaseModel, ConfigDict, Field

# 408 Request Timeout and 429 Too Many Requests are the 4xx worth another try.
RETRYABLE_4XX = frozenset({408, 429})
# 501 Not Implemented means the endpoint does not exist there; retrying cannot help.
NOT_RETRYABLE_5XX = frozenset({501, 505})


class RetryPolicy(BaseModel):
    """How persistently to retry; the defaults ride out a minute of overload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(
        default=5, ge=0, le=100, description="Retries after the first attempt."
    )
    backoff_base_s: float = Field(default=0.5, ge=0.0, description="Cap of the first backoff draw.")
    backoff_max_s: float = Field(default=30.0, ge=0.0, description="Largest backoff draw.")
    retry_after_max_s: float = Field(
        default=60.0,
        ge=0.0,
        description="Longest Retry-After honoured; longer ones are cut to this.",
    )
    bad_response_retries: int = Field(
        default=1,
        ge=0,
        description="Retries for unusable 2xx bodies (an overloaded proxy's garbage).",
    )


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_4XX or (status >= 500 and status not in NOT_RETRYABLE_5XX)


def backoff_delay(retry: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `retry` (0-based), with full jitter."""
    cap = min(policy.backoff_max_s, policy.backoff_base_s * (2**retry))
    return (rng or random).uniform(0.0, cap)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a `Retry-After` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(
    retry: int,
    policy: RetryPolicy,
    retry_after: str | None = None,
    rng: random.Random | None = None,
) -> float:
    """The wait before retry number `retry`: the server's Retry-After (capped) when it sent one,
    the jittered backoff otherwise."""
    asked = parse_retry_after(retry_after)
    if asked is not None:
        return min(asked, policy.retry_after_max_s)
    return backoff_delay(retry, policy, rng)
