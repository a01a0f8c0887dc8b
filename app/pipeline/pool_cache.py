"""Warm pools: a generation worker keeps the pools of the datasets it ran on in memory (the
prompt examples, the novelty index and the texts `load_pool` builds) and brings one up to date
from the database when the next run on its dataset starts, instead of loading it again. A pool
of 1M tasks takes about 40 s to load; a warm one is current again in well under a second.

A clean master per dataset. Runs change their pool (accepted tasks join under pending keys and
are renamed once stored, demoted ones leave, strategies keep their own state), so a run gets a
copy (`Pool.copy`, which shares the immutable parts) and the master is only ever changed by the
sync below. The copy is what a cold `load_pool` would build at that moment: the same tasks
under the same ids, held-out tasks kept out of the examples the same way. One difference: a
task changed since the master was loaded comes after the others in the index and the example
lists (as within a run), so among neighbours of exactly equal score it may be listed later.

The sync is the one a run's commits do (app/pipeline/storage.py, `others_since`): tasks
accepted above the highest id seen, and, when the dataset's change clock moved, tasks changed
since (new text, accepted again, no longer accepted). A change of the dataset's held-out share,
a dataset made again under the same id, or an index with more removed items than live ones
(each change leaves a tombstone) rebuild it.

Memory. Masters obey `pool_cache_mb` (SELFINSTRUCT_POOL_CACHE_MB): the least recently used
dataset's goes first; a pool larger than the whole budget is never kept. A pool's size is
estimated per task (measured by bench/pool_start.py); a run's copy adds about an eighth of it
while the run goes (85 MiB at 1M tasks).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.models import Dataset, TaskOrigin
from app.pipeline.loading import example_of, load_pool
from app.pipeline.storage import others_since
from app.strategies import Pool

log = logging.getLogger("selfinstruct.pipeline")

Loaded = tuple[Pool, list[tuple[int, str]], datetime]
Loader = Callable[..., Loaded]

# What a pool holds per task (index, examples, texts): 695 live bytes measured with tracemalloc
# on bench/pool_start.py's pool of short generated sentences (the process grows about twice
# that while loading it: the allocator keeps the rows' memory for later use).
BYTES_PER_TASK = 700


@dataclass
class WarmPool:
    """A dataset's pool as of `clock` and `watermark`, the master runs get copies of."""

    dataset_id: int
    created_at: datetime  # a dataset deleted and made again under the same id is another
    held_out_share: float
    pool: Pool
    texts: list[tuple[int, str]]  # accepted tasks' ids and instructions, index order
    clock: datetime  # the dataset's change clock read before the pool was last brought up
    watermark: int  # the highest task id seen

    @property
    def size_bytes(self) -> int:
        return len(self.texts) * BYTES_PER_TASK


class PoolCache:
    """Warm pools of a worker's datasets, least recently used first, within `max_bytes`."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pools: OrderedDict[int, WarmPool] = OrderedDict()
        self._lock = threading.Lock()  # one load at a time: a sync changes a master
        self.warm_loads = 0  # loads answered from a warm pool (for tests and benchmarks)

    def __contains__(self, dataset_id: object) -> bool:
        return dataset_id in self._pools

    @property
    def size_bytes(self) -> int:
        return sum(warm.size_bytes for warm in self._pools.values())

    def load(self, engine: Engine, *, dataset_id: int, held_out_share: float = 0.0) -> Loaded:
        """The dataset's pool as `load_pool` would build it now: a copy of the warm master
        brought up to date, or a fresh load (kept as the master when it fits)."""
        with self._lock:
            warm = self._pools.pop(dataset_id, None)
            if warm is not None:
                warm = _brought_up(engine, warm, held_out_share)
                self.warm_loads += warm is not None
            if warm is None:
                created_at = _created_at(engine, dataset_id)
                pool, texts, clock = load_pool(
                    engine, dataset_id=dataset_id, held_out_share=held_out_share
                )
                warm = WarmPool(
                    dataset_id=dataset_id,
                    created_at=created_at,
                    held_out_share=held_out_share,
                    pool=pool,
                    texts=texts,
                    clock=clock,
                    watermark=max((task_id for task_id, _ in texts), default=0),
                )
                if warm.size_bytes > self.max_bytes:
                    return pool, texts, clock  # never kept: the run may have the only copy
            self._pools[dataset_id] = warm  # the most recently used, last
            self._evict()
            return warm.pool.copy(), list(warm.texts), warm.clock

    def _evict(self) -> None:
        """Least recently used datasets out until the rest fit."""
        while self._pools and self.size_bytes > self.max_bytes:
            dataset_id, warm = self._pools.popitem(last=False)
            log.info(
                "warm pool of dataset %s (%d tasks) evicted for memory (pool_cache_mb)",
                dataset_id,
                len(warm.texts),
            )


def _created_at(engine: Engine, dataset_id: int) -> datetime:
    with Session(engine) as session:
        return session.exec(select(Dataset.created_at).where(Dataset.id == dataset_id)).one()


def _brought_up(engine: Engine, warm: WarmPool, held_out_share: float) -> WarmPool | None:
    """The master with what other writers did since it last looked; None when a fresh load
    is needed (another held-out share, a dataset made again, mostly tombstones)."""
    if warm.held_out_share != held_out_share:
        return None
    with Session(engine) as session:
        found = session.exec(
            select(Dataset.updated_at, Dataset.created_at).where(Dataset.id == warm.dataset_id)
        ).first()
        if found is None or found[1] != warm.created_at:
            return None
        clock = found[0]  # read before the rows, as load_pool does
        added, changed, withdrawn = others_since(session, warm, clock)
    pool = warm.pool
    if changed or withdrawn:
        gone = {*withdrawn, *(row.id for row in changed)}
        pool.withdraw(gone)
        warm.texts = [item for item in warm.texts if item[0] not in gone]
    for row in [*added, *changed]:
        example = example_of(row.id, row.instruction, row.instances, row.language)
        pool.add_example(example, seed=row.origin == TaskOrigin.seed.value, key=row.holdout_key)
        pool.index.add(row.id, row.instruction)
        warm.texts.append((row.id, row.instruction))
    if pool.index.tombstones > len(pool.index):
        return None  # mostly removed items: a fresh index is smaller and faster
    warm.watermark = max([warm.watermark, *(row.id for row in added)])
    warm.clock = max(warm.clock, clock)
    return warm


def warm(holder: Any, cold: Loader) -> Loader:
    """How a run's pool is loaded: from the warm pools of the worker executing it when it
    keeps them (app/worker.py), else `cold`."""
    pools = getattr(holder, "pools", None)
    return pools.load if isinstance(pools, PoolCache) else cold
