"""Replica pools: one model served by several base URLs, each with its own concurrency limit.

A request takes a slot on the live replica with the fewest requests in flight. A replica that
fails (connection refused, timeout, 5xx, an unusable body) is cooled down for a while that doubles
with each failure in a row, so its work goes to the others; the first request after the cooldown
is its probe, and one success brings it back. When no replica is live the pool still sends to the
cooling ones (the request's own backoff spaces the attempts), so a single-URL endpoint keeps
retrying as before and a dead pool fails through the retry budget, not by waiting forever.

Concurrency adapts to the server: a 429 halves the replica's limit (at most once per
`decrease_gap_s`, since one overload answers many requests at once) and pauses it for the server's
Retry-After; each success adds 1/limit, so the limit climbs back by about one per round of answers
(additive increase, multiplicative decrease, as TCP does) up to the configured `max_concurrency`.

State is shared by every backend of the process that names the same replica (`shared_replica`),
so the embedded worker and the API's own calls count against one limit, and `GET /v1/models` sees
the health the worker sees. Waiting is per event loop: a release wakes the first waiter of its
own loop; waiters of other loops look again every `_IDLE_POLL_S`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

# neutral: the server worked but refused the request (a 4xx), or the caller gave up on it.
Outcome = Literal["ok", "overloaded", "failed", "neutral"]

_POLL_S = 0.05
# Releases in another event loop (the API's and a worker's share replicas) wake nobody here.
_IDLE_POLL_S = 0.25


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class Replica:
    """One base URL of a pool and what the pool knows of its health."""

    base_url: str
    max_concurrency: int
    limit: float = 0.0  # the AIMD limit, between 1 and max_concurrency
    in_flight: int = 0
    failures: int = 0  # failed attempts in a row
    cooldown_until: float = 0.0
    paused_until: float = 0.0  # Retry-After
    last_decrease: float = 0.0
    served: int = 0  # attempts answered with a usable result
    failed: int = 0  # attempts that failed (any reason)
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.limit:
            self.limit = float(self.max_concurrency)

    def live(self, now: float) -> bool:
        return now >= self.cooldown_until and now >= self.paused_until

    def free(self) -> int:
        # A replica coming back from a cooldown gets one probe at a time until it answers.
        if self.failures:
            return 1 - self.in_flight
        return max(1, int(self.limit)) - self.in_flight

    def snapshot(self, now: float | None = None) -> dict[str, object]:
        now = time.monotonic() if now is None else now
        if now < self.cooldown_until:
            health = "cooling_down"
        elif now < self.paused_until:
            health = "rate_limited"
        else:
            health = "failing" if self.failures else "healthy"
        return {
            "base_url": self.base_url,
            "health": health,
            "in_flight": self.in_flight,
            "concurrency_limit": max(1, int(self.limit)),
            "max_concurrency": self.max_concurrency,
            "served": self.served,
            "failed": self.failed,
            "last_error": self.last_error,
        }


_SHARED: dict[tuple[str, str], Replica] = {}
_SHARED_LOCK = threading.Lock()


def shared_replica(base_url: str, api_key: str | None, max_concurrency: int) -> Replica:
    """The process-wide state of one replica; the smallest configured concurrency wins."""
    key = (base_url.rstrip("/"), hashlib.sha256((api_key or "").encode()).hexdigest()[:16])
    with _SHARED_LOCK:
        replica = _SHARED.get(key)
        if replica is None:
            replica = _SHARED[key] = Replica(base_url=base_url, max_concurrency=max_concurrency)
        elif max_concurrency < replica.max_concurrency:
            replica.max_concurrency = max_concurrency
            replica.limit = min(replica.limit, float(max_concurrency))
        return replica


def shared_replicas() -> list[Replica]:
    """Every replica this process has state for (the metrics read them)."""
    with _SHARED_LOCK:
        return list(_SHARED.values())


def reset_shared_replicas() -> None:
    """Forget every replica's health (tests, or after changing endpoints at run time)."""
    with _SHARED_LOCK:
        _SHARED.clear()


def capacity(replicas: list[Replica]) -> int:
    """Requests a pool takes at once now: the limits of live replicas (of all when none is live,
    since requests then still go to the cooling ones)."""
    now = time.monotonic()
    live = [r for r in replicas if r.live(now)] or replicas
    return sum(max(1, int(r.limit)) for r in live)


class ReplicaPool:
    """Slots on a set of replicas for one event loop; `acquire` then `release` per attempt."""

    def __init__(
        self,
        replicas: list[Replica],
        *,
        cooldown_base_s: float = 1.0,
        cooldown_max_s: float = 30.0,
        decrease_gap_s: float = 0.5,
    ) -> None:
        if not replicas:
            raise ValueError("a pool needs at least one replica")
        self.replicas = replicas
        self.cooldown_base_s = cooldown_base_s
        self.cooldown_max_s = cooldown_max_s
        self.decrease_gap_s = decrease_gap_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def capacity(self) -> int:
        return capacity(self.replicas)

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def any_live_besides(self, replica: Replica) -> bool:
        now = time.monotonic()
        return any(r is not replica and r.live(now) for r in self.replicas)

    def _pick(self, now: float, avoid: Replica | None) -> Replica | None:
        live = [r for r in self.replicas if r.live(now)]
        if not live:
            # Nothing is live: cooling replicas still take work (never the rate-limited ones,
            # which asked for a pause), so a request fails through its retries, not by waiting.
            live = [r for r in self.replicas if now >= r.paused_until]
        if avoid is not None and len(live) > 1:
            live = [r for r in live if r is not avoid] or live
        best: Replica | None = None
        for replica in live:
            with replica.lock:
                if replica.free() <= 0:
                    continue
                if best is None or replica.in_flight < best.in_flight:
                    best = replica
        return best

    async def acquire(self, avoid: Replica | None = None) -> Replica:
        """A slot on the least-loaded live replica (not `avoid`, the one that just failed,
        while another can serve); waits in line while every replica is full or paused."""
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            replica = self._pick(now, avoid)
            if replica is not None:
                with replica.lock:
                    if replica.free() > 0:
                        replica.in_flight += 1
                        return replica
                continue
            wake = min((r.paused_until for r in self.replicas if r.paused_until > now), default=now)
            timeout = min(max(wake - now, _POLL_S), 1.0) if wake > now else _IDLE_POLL_S
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            handle = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                if not waiter.done():
                    waiter.cancel()

    def _wake_one(self) -> None:
        """A freed slot wakes the first waiter still waiting, not all of them."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(
        self,
        replica: Replica,
        outcome: Outcome,
        *,
        retry_after_s: float | None = None,
        error: str | None = None,
    ) -> None:
        """Give the slot back and learn from how the attempt went."""
        now = time.monotonic()
        with replica.lock:
            replica.in_flight -= 1
            if outcome == "ok":
                replica.served += 1
                replica.failures = 0
                replica.cooldown_until = 0.0
                replica.limit = min(
                    float(replica.max_concurrency), replica.limit + 1 / replica.limit
                )
            elif outcome == "neutral":
                pass
            elif outcome == "overloaded":
                replica.failed += 1
                replica.last_error = error
                if now - replica.last_decrease >= self.decrease_gap_s:
                    replica.limit = max(1.0, replica.limit / 2)
                    replica.last_decrease = now
                if retry_after_s:
                    replica.paused_until = max(replica.paused_until, now + retry_after_s)
            else:
                replica.failed += 1
                replica.last_error = error
                # Requests that fail together (a restart with 64 in flight) are one failure:
                # only a failure after the cooldown ran out lengthens the next one.
                if now >= replica.cooldown_until:
                    replica.failures = min(replica.failures + 1, 32)
                    wait = self.cooldown_base_s * 2 ** min(replica.failures - 1, 16)
                    replica.cooldown_until = now + min(self.cooldown_max_s, wait)
        self._wake_one()

    def snapshot(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [r.snapshot(now) for r in self.replicas]
