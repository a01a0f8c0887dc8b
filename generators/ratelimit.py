"""Client-side rate limiting by requests and tokens per minute, shared per endpoint and key.

A provider counts usage per API key, not per client object, so every backend that talks to the
same base URL with the same key draws on one `RateLimiter` from a module-level registry.

Each limit is a token bucket that refills continuously (`limit / 60` per second) up to `limit`.
A caller reserves its cost at once, letting the level go negative, and then sleeps until the
bucket would have covered it. Reserving without holding a lock across the sleep keeps callers in
arrival order, works from any event loop or thread, and a later `settle` corrects the estimate
with the real token count.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time


class TokenBucket:
    """A bucket of `capacity` units refilled at `capacity / period_s` units per second."""

    def __init__(self, capacity: float, period_s: float = 60.0) -> None:
        if capacity <= 0:
            raise ValueError(f"rate limit must be positive, got {capacity}")
        self.capacity = float(capacity)
        self.rate = self.capacity / period_s
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` now and return the seconds until the bucket has paid for it."""
        self._refill(now)
        # A single request larger than the bucket could never fit; let it through at full cost.
        self.level -= min(amount, self.capacity)
        return max(0.0, -self.level / self.rate)

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits; `None` means unlimited."""

    def __init__(
        self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None
    ) -> None:
        self._lock = threading.Lock()
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.tighten(requests_per_minute, tokens_per_minute)

    def tighten(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        """Adopt the stricter of the current and the given limits."""
        with self._lock:
            if requests_per_minute is not None and (
                self.requests is None or requests_per_minute < self.requests.capacity
            ):
                self.requests = TokenBucket(requests_per_minute)
            if tokens_per_minute is not None and (
                self.tokens is None or tokens_per_minute < self.tokens.capacity
            ):
                self.tokens = TokenBucket(tokens_per_minute)

    @property
    def unlimited(self) -> bool:
        return self.requests is None and self.tokens is None

    def reserve(self, tokens: int) -> float:
        """Reserve one request and `tokens` tokens; return how long to wait before sending."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            if self.requests is not None:
                wait = max(wait, self.requests.reserve(1, now))
            if self.tokens is not None:
                wait = max(wait, self.tokens.reserve(tokens, now))
            return wait

    async def acquire(self, tokens: int) -> None:
        """Wait until one request costing about `tokens` tokens may be sent."""
        wait = self.reserve(tokens)
        if wait <= 0:
            return
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            self.cancel(tokens)
            raise

    def cancel(self, tokens: int) -> None:
        """Return a reservation that was never sent."""
        now = time.monotonic()
        with self._lock:
            if self.requests is not None:
                self.requests.give_back(1, now)
            if self.tokens is not None:
                self.tokens.give_back(tokens, now)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct a reservation once the server reports the real token count."""
        if self.tokens is None or actual == estimated:
            return
        now = time.monotonic()
        with self._lock:
            # Negative amounts take more; the bucket may go into debt, which later callers wait off.
            self.tokens.give_back(estimated - actual, now)


_SHARED: dict[tuple[str, str], RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def _key_fingerprint(api_key: str | None) -> str:
    # Hash the key so the registry never holds secrets in memory dumps or reprs.
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


def shared_rate_limiter(
    base_url: str,
    api_key: str | None,
    *,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> RateLimiter:
    """The one limiter for this endpoint and key; the strictest limits configured win."""
    key = (base_url.rstrip("/"), _key_fingerprint(api_key))
    with _SHARED_LOCK:
        limiter = _SHARED.get(key)
        if limiter is None:
            limiter = _SHARED[key] = RateLimiter(requests_per_minute, tokens_per_minute)
            return limiter
    limiter.tighten(requests_per_minute, tokens_per_minute)
    return limiter


def reset_shared_rate_limiters() -> None:
    """Forget every shared limiter (tests, or after changing limits at run time)."""
    with _SHARED_LOCK:
        _SHARED.clear()
