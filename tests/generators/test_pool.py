"""Replica pools: least-loaded first, failing replicas cooled down, AIMD on 429s."""

from __future__ import annotations

import asyncio

import pytest

from generators.pool import Replica, ReplicaPool

pytestmark = pytest.mark.anyio


def _pool(*limits: int) -> ReplicaPool:
    return ReplicaPool(
        [Replica(base_url=f"http://r{i}/v1", max_concurrency=c) for i, c in enumerate(limits)],
        cooldown_base_s=0.2,
    )


async def test_requests_go_to_the_replica_with_the_fewest_in_flight() -> None:
    pool = _pool(4, 4, 4)
    taken = [await pool.acquire() for _ in range(6)]
    assert [r.in_flight for r in pool.replicas] == [2, 2, 2]
    pool.release(taken[0], "ok")
    nxt = await pool.acquire()
    assert nxt is taken[0]


async def test_a_full_pool_makes_callers_wait_for_a_free_slot() -> None:
    pool = _pool(1)
    first = await pool.acquire()
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    pool.release(first, "ok")
    assert await asyncio.wait_for(waiting, 1) is first


async def test_a_failing_replica_is_cooled_down_and_probed_once_when_it_may_return() -> None:
    pool = _pool(4, 4)
    bad = await pool.acquire()
    pool.release(bad, "failed", error="connection refused")
    for _ in range(4):
        assert await pool.acquire() is not bad  # cooling down: the other takes the work
    assert pool.capacity() == 4
    await asyncio.sleep(0.25)  # the cooldown is over: one probe at a time
    other = pool.replicas[1] if bad is pool.replicas[0] else pool.replicas[0]
    for _ in range(4):
        pool.release(other, "ok")
    probe = await pool.acquire()
    assert probe is bad and bad.free() == 0
    pool.release(bad, "ok")
    assert bad.free() == 4 and bad.snapshot()["health"] == "healthy"


async def test_when_every_replica_is_down_requests_still_go_out() -> None:
    pool = _pool(2)
    only = await pool.acquire()
    pool.release(only, "failed", error="timed out")
    assert await asyncio.wait_for(pool.acquire(), 1) is only  # its own retries space them


async def test_429_halves_the_limit_once_per_gap_and_successes_raise_it_again() -> None:
    pool = _pool(32)
    replica = pool.replicas[0]
    taken = [await pool.acquire() for _ in range(3)]
    for r in taken:
        pool.release(r, "overloaded")  # one overload answers many requests at once
    assert replica.limit == 16
    pool.decrease_gap_s = 0.0
    for _ in range(3):
        pool.release(await pool.acquire(), "overloaded")
    assert replica.limit == 2
    for _ in range(200):
        pool.release(await pool.acquire(), "ok")
    assert 2 < replica.limit <= 32
    for _ in range(2000):
        pool.release(await pool.acquire(), "ok")
    assert replica.limit == 32  # never above the configured concurrency


async def test_retry_after_pauses_the_replica() -> None:
    pool = _pool(4, 4)
    paused = await pool.acquire()
    pool.release(paused, "overloaded", retry_after_s=0.3)
    assert paused.snapshot()["health"] == "rate_limited"
    assert all([await pool.acquire() is not paused for _ in range(4)])


async def test_a_pool_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        ReplicaPool([])
