"""Run throughput against a model server of known latency and unlimited capacity.

    python -m bench.throughput [--seconds 20] [--only C,L]

A scripted OpenAI-compatible server (`bench.scripted_server`, its own process) answers every
request after exactly L seconds and takes any number at once. A run, on the embedded defaults
(SQLite, the starter pool), is given an endpoint with concurrency C. The physical limit of the
run is C/L requests per second: the baseline every figure is printed against. Measured over the
middle of the run (the ramp-up and the drain are left out): requests/s as a share of C/L,
accepted tasks/s, the most requests the server saw in flight, and the service's CPU seconds per
accepted task. The last configuration splits C over three replicas (three server processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import Session

from app.bootstrap import ensure_default_dataset
from app.db import make_engine, migrate
from app.models import Run, Task, utcnow
from app.pipeline import execute_run
from app.schemas.runs import RunCreate
from app.services.datasets import get_dataset
from app.services.runs import cancel_run, create_run
from app.settings import EndpointConfig, ReplicaConfig, Settings
from generators.llama_server import free_port

MODEL = "scripted"


@contextlib.contextmanager
def scripted_servers(n: int, latency: float) -> Iterator[list[str]]:
    ports = [free_port() for _ in range(n)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.scripted_server",
                "--port",
                str(p),
                "--latency",
                str(latency),
            ],
        )
        for p in ports
    ]
    urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
    try:
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    httpx.get(f"{url}/models", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def stats(urls: list[str]) -> tuple[int, int]:
    answered = peak = 0
    for url in urls:
        data = httpx.get(f"{url}/stats", timeout=5).json()
        answered += data["answered"]
        peak += data["max_in_flight"]
    return answered, peak


def grow_pool(engine: Any, size: int, seed: int = 5) -> None:
    """`size` accepted generated tasks in `default`: made-up sentences like the server's."""
    from bench.scripted_server import VERBS, VOCAB

    rng = random.Random(seed)
    with Session(engine) as session:
        dataset = get_dataset(session=session, name="default")
        dataset_id = dataset.id
    now = utcnow()
    with engine.begin() as conn:
        for start in range(0, size, 50_000):
            conn.execute(
                sa.insert(Task),
                [
                    {
                        "dataset_id": dataset_id,
                        "instruction": f"{rng.choice(VERBS)} the " + " ".join(rng.sample(VOCAB, 9)),
                        "instances": [{"input": "", "output": "An answer."}],
                        "origin": "generated",
                        "status": "accepted",
                        "nearest": [],
                        "lineage": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for _ in range(min(50_000, size - start))
                ],
            )


def measure(
    concurrency: int, latency: float, replicas: int, seconds: float, pool: int = 0
) -> dict[str, float]:
    with scripted_servers(replicas, latency) as urls, tempfile.TemporaryDirectory() as tmp:
        per = concurrency // replicas
        endpoint = (
            EndpointConfig(name="bench", base_url=urls[0], models=[MODEL], max_concurrency=per)
            if replicas == 1
            else EndpointConfig(
                name="bench",
                replicas=[ReplicaConfig(base_url=u, max_concurrency=per) for u in urls],
                models=[MODEL],
            )
        )
        settings = Settings(data_dir=Path(tmp), embedded_worker=False, endpoints=[endpoint])
        migrate(settings)
        engine = make_engine(settings)
        ensure_default_dataset(engine=engine, settings=settings)
        if pool:
            grow_pool(engine, pool)
        with Session(engine, expire_on_commit=False) as session:
            run = create_run(
                session=session,
                settings=settings,
                dataset=get_dataset(session=session, name="default"),
                body=RunCreate(target=100_000, model=MODEL),
            )
        assert run.id is not None
        run_id = run.id
        with Session(engine) as session:
            row = session.get(Run, run_id)
            assert row is not None
            row.status = "running"
            session.add(row)
            session.commit()
        thread = threading.Thread(
            target=lambda: asyncio.run(execute_run(engine=engine, settings=settings, run_id=run_id))
        )
        thread.start()
        # the first answers arrive once the pool is loaded (about 25 s for 1M tasks)
        _wait_for_requests(urls)
        time.sleep(min(5.0, seconds / 4))
        a0, _ = stats(urls)
        acc0, t0, c0 = _accepted(engine, run_id), time.monotonic(), time.process_time()
        time.sleep(seconds)
        a1, peak = stats(urls)
        acc1, t1, c1 = _accepted(engine, run_id), time.monotonic(), time.process_time()
        with Session(engine, expire_on_commit=False) as session:
            row = session.get(Run, run_id)
            assert row is not None
            cancel_run(session=session, run=row)
        thread.join(timeout=60)
        engine.dispose()
    rate = (a1 - a0) / (t1 - t0)
    accepted_rate = (acc1 - acc0) / (t1 - t0)
    return {
        "requests_per_s": rate,
        "share": rate / (concurrency / latency),
        "accepted_per_s": accepted_rate,
        "peak_in_flight": peak,
        "cpu_s_per_accepted": (c1 - c0) / max(1, acc1 - acc0),
    }


def _wait_for_requests(urls: list[str]) -> None:
    deadline = time.monotonic() + 600
    while stats(urls)[0] == 0:
        assert time.monotonic() < deadline, "the run sent nothing"
        time.sleep(0.2)


def _accepted(engine: object, run_id: int) -> int:
    with Session(engine) as session:  # type: ignore[arg-type]
        row = session.get(Run, run_id)
        return row.accepted if row else 0


# (C, L, replicas, pool size): the goals' two configurations, one pool against three replicas
# of a third of its concurrency each, and the service as the limit (L = 10 ms) on the starter
# pool and on 1M tasks.
CONFIGS = [
    (64, 0.5, 1, 0),
    (256, 1.0, 1, 0),
    (96, 0.5, 1, 0),
    (96, 0.5, 3, 0),
    (64, 0.01, 1, 0),
    (64, 0.01, 1, 1_000_000),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", help="C,L[,replicas[,pool]] of one configuration")
    args = parser.parse_args()
    configs = CONFIGS
    if args.only:
        parts = [*args.only.split(","), "1", "0"][:4] if args.only.count(",") == 1 else None
        parts = parts or [*args.only.split(","), "0"][:4]
        configs = [(int(parts[0]), float(parts[1]), int(parts[2]), int(parts[3]))]
    print(
        f"{'C':>5} {'L s':>5} {'replicas':>8} {'pool':>9} {'limit/s':>8} {'req/s':>8} "
        f"{'share':>6} {'acc/s':>7} {'peak':>5} {'cpu s/acc':>9}"
    )
    for c, latency, replicas, pool in configs:
        m = measure(c, latency, replicas, args.seconds, pool)
        print(
            f"{c:>5} {latency:>5} {replicas:>8} {pool or 'starter':>9} {c / latency:>8.0f} "
            f"{m['requests_per_s']:>8.1f} {m['share']:>6.2f} {m['accepted_per_s']:>7.1f} "
            f"{m['peak_in_flight']:>5.0f} {m['cpu_s_per_accepted']:>9.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
