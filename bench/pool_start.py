"""Time to the first prompt of a run on a large pool: loaded cold, and from a worker's warm pool.

    python -m bench.pool_start [--pool 1000000]

A generation worker (app/worker.py, default settings) executes runs on the `default` dataset of
SQLite grown to `--pool` accepted tasks, against a scripted server (bench.scripted_server,
10 ms per answer). Measured: seconds (and the service's CPU seconds) from the worker taking the
run to the first request the server receives. Baseline: the first run, which loads the pool
cold as every run did before warm pools. Between the runs other writers change the dataset (a
run's 1,000 tasks, 20 edits), so the second run's warm pool is brought up to date first.
Memory: the process's growth while a pool is loaded (the master a worker keeps), and while a
run's copy of it is made.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.bootstrap import ensure_default_dataset
from app.db import make_engine, migrate
from app.models import Run, Task
from app.pipeline.loading import load_pool
from app.schemas.datasets import TaskEdit
from app.schemas.runs import RunCreate
from app.services.datasets import get_dataset
from app.services.runs import cancel_run, create_run
from app.services.tasks import edit_task
from app.settings import EndpointConfig, Settings
from app.worker import Worker
from bench.novelty import rss_mib
from bench.throughput import MODEL, grow_pool, scripted_servers, stats


def first_prompt(engine: Any, settings: Settings, worker: Worker, url: str) -> tuple[float, float]:
    """Queue a run, let `worker` take it; seconds and CPU seconds to the server's first request.
    The run is cancelled then."""
    with Session(engine, expire_on_commit=False) as session:
        run = create_run(
            session=session,
            settings=settings,
            dataset=get_dataset(session=session, name="default"),
            body=RunCreate(target=100_000, model=MODEL),
        )
    before, _ = stats([url])
    t0, c0 = time.perf_counter(), time.process_time()
    thread = threading.Thread(target=lambda: asyncio.run(worker.run_forever(once=True)))
    thread.start()
    while stats([url])[0] == before:
        time.sleep(0.02)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(Run, run.id)
        assert row is not None
        cancel_run(session=session, run=row)
    thread.join(timeout=300)
    return seconds, cpu


def other_writers(engine: Any, dataset_id: int) -> None:
    """What happens between two runs: another run's 1,000 tasks, a reviewer's 20 edits."""
    grow_pool(engine, 1_000, seed=11)
    with Session(engine) as session:
        ids = session.exec(
            select(Task.id)
            .where(Task.dataset_id == dataset_id, Task.status == "accepted")
            .order_by(col(Task.id).desc())
            .limit(20)
        ).all()
    for n, task_id in enumerate(ids):
        with Session(engine) as session:
            edit = TaskEdit(instruction=f"Explain edit number {n} of the warm pool benchmark.")
            assert task_id is not None
            edit_task(session=session, task_id=task_id, edit=edit)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pool", type=int, default=1_000_000)
    size = parser.parse_args().pool
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with scripted_servers(1, 0.01) as urls, tempfile.TemporaryDirectory() as tmp:
        endpoint = EndpointConfig(name="bench", base_url=urls[0], models=[MODEL], max_concurrency=8)
        settings = Settings(data_dir=Path(tmp), embedded_worker=False, endpoints=[endpoint])
        migrate(settings)
        engine = make_engine(settings)
        ensure_default_dataset(engine=engine, settings=settings)
        start = time.perf_counter()
        grow_pool(engine, size)
        with Session(engine) as session:
            dataset_id = get_dataset(session=session, name="default").id
            total = session.exec(sa.select(sa.func.count()).select_from(Task)).one()[0]
        assert dataset_id is not None
        print(f"pool: {total:,} tasks ({time.perf_counter() - start:.0f} s to insert)")

        gc.collect()
        rss0 = rss_mib()
        tracemalloc.start()  # live bytes; RSS also keeps the allocator's slack from the load
        pool, texts, _ = load_pool(engine, dataset_id=dataset_id)
        gc.collect()
        live = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        rss1, c1 = rss_mib(), time.process_time()
        twin = pool.copy(), list(texts)
        copy_cpu = time.process_time() - c1
        tracemalloc.start()
        again = pool.copy(), list(texts)
        copy_mib = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        print(
            f"memory: the pool holds {live / 2**20:,.0f} MiB ({live / total:,.0f} bytes a task; "
            f"the process grew {rss1 - rss0:,.0f} MiB loading it); a run's copy "
            f"{copy_mib:,.0f} MiB ({copy_cpu:.2f} CPU s)"
        )
        del pool, texts, twin, again
        gc.collect()

        worker = Worker(engine=engine, settings=settings)
        cold, cold_cpu = first_prompt(engine, settings, worker, urls[0])
        held = rss_mib()
        other_writers(engine, dataset_id)
        warm, warm_cpu = first_prompt(engine, settings, worker, urls[0])
        assert worker.pools.warm_loads == 1, "the second run did not get the warm pool"
        print(f"process RSS with the warm pool held: {held:,.0f} MiB")
        print(f"first prompt, cold (baseline): {cold:.2f} s ({cold_cpu:.1f} CPU s)")
        print(
            f"first prompt, warm after 1,000 added and 20 edited: {warm:.2f} s "
            f"({warm_cpu:.1f} CPU s); {cold / warm:.1f}x faster than cold"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
