"""One run across worker processes on PostgreSQL: accepted tasks/s with 1 and with N workers,
each executing a shard of the run (`shards` = N), against the scripted server at L = 10 ms
(the service, not the model, is the limit).

    python -m bench.shards [--seconds 20] [--workers 1,2] [--concurrency 64] [--latency 0.01]

The baseline is one worker process executing the same run unsharded, in the same invocation.
Printed per configuration: accepted tasks/s (and its ratio to the baseline), requests/s, the
CPU seconds per accepted task of each worker process (read from /proc), and the time sessions
spent waiting on row locks (PostgreSQL's pg_stat_activity sampled every 20 ms: the mean number of
sessions waiting, i.e. lock-wait seconds per second). With one process's accepted/s and its
lock-wait share, the figure for N machines can be projected: each machine adds what one process
does until the waits (commit groups take the dataset's lock one at a time) fill the second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from app.bootstrap import ensure_default_dataset
from app.db import make_engine, migrate
from app.models import Run
from app.schemas.runs import RunCreate
from app.services.datasets import get_dataset
from app.services.runs import cancel_run, create_run
from app.settings import EndpointConfig, Settings
from bench.throughput import MODEL, scripted_servers, stats
from testbed.postgres import postgres_server

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class LockWaits:
    """Samples how many sessions wait on a lock, in a thread, while the window runs."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                self.samples.append(int(conn.execute(query).scalar_one()))
                conn.commit()
                time.sleep(0.02)

    def __enter__(self) -> LockWaits:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean_waiting(self) -> float:
        return sum(self.samples) / max(1, len(self.samples))


@dataclass
class Figures:
    accepted_per_s: float
    requests_per_s: float
    cpu_ms_per_accepted: list[float]  # each worker process's CPU over the run's accepted tasks
    lock_waiting: float  # sessions waiting on a lock, on average


def measure(db_url: str, workers: int, concurrency: int, latency: float, seconds: float) -> Figures:
    with scripted_servers(1, latency) as urls, tempfile.TemporaryDirectory() as tmp:
        endpoint = EndpointConfig(
            name="bench", base_url=urls[0], models=[MODEL], max_concurrency=concurrency
        )
        settings = Settings(
            database_url=db_url, data_dir=Path(tmp), embedded_worker=False, endpoints=[endpoint]
        )
        migrate(settings)
        engine = make_engine(settings)
        with engine.begin() as conn:  # a fresh pool each time: the starter seeds alone
            conn.execute(sa.text("TRUNCATE job_part, run_event, task, run, dataset CASCADE"))
        ensure_default_dataset(engine=engine, settings=settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
        env.update(
            DATABASE_URL=db_url,
            SELFINSTRUCT_DATA_DIR=tmp,
            SELFINSTRUCT_ENDPOINTS=json.dumps([endpoint.model_dump(mode="json")]),
            SELFINSTRUCT_WORKER_POLL_SECONDS="0.1",
            SELFINSTRUCT_FINETUNE_WORKERS="0",
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], env=env, stderr=subprocess.DEVNULL
            )
            for _ in range(workers)
        ]
        try:
            time.sleep(3.0)  # every worker polls before the run exists: each takes a shard
            with Session(engine, expire_on_commit=False) as session:
                run = create_run(
                    session=session,
                    settings=settings,
                    dataset=get_dataset(session=session, name="default"),
                    body=RunCreate(target=100_000, model=MODEL, shards=workers),
                )
            run_id = run.id
            while stats(urls)[0] == 0:
                time.sleep(0.2)
            time.sleep(min(5.0, seconds / 4))
            a0, acc0 = stats(urls)[0], _accepted(engine, run_id)
            cpu0 = [cpu_seconds(p.pid) for p in procs]
            t0 = time.monotonic()
            with LockWaits(engine) as waits:
                time.sleep(seconds)
            t1 = time.monotonic()
            a1, acc1 = stats(urls)[0], _accepted(engine, run_id)
            cpu1 = [cpu_seconds(p.pid) for p in procs]
            with Session(engine, expire_on_commit=False) as session:
                row = session.get(Run, run_id)
                assert row is not None
                cancel_run(session=session, run=row)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
            engine.dispose()
    accepted = max(1, acc1 - acc0)
    return Figures(
        accepted_per_s=(acc1 - acc0) / (t1 - t0),
        requests_per_s=(a1 - a0) / (t1 - t0),
        cpu_ms_per_accepted=[
            round(1000 * (c1 - c0) / accepted, 2) for c0, c1 in zip(cpu0, cpu1, strict=True)
        ],
        lock_waiting=waits.mean_waiting,
    )


def _accepted(engine: sa.Engine, run_id: int | None) -> int:
    with Session(engine) as session:
        row = session.get(Run, run_id)
        return row.accepted if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", default="1,2", help="worker processes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a throwaway server)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    def run_all(db_url: str) -> None:
        print(
            f"C={args.concurrency}, L={args.latency}s, PostgreSQL, starter pool; "
            "baseline: 1 worker process, the run unsharded"
        )
        print(
            f"{'workers':>7} {'acc/s':>7} {'x base':>6} {'req/s':>7} {'lock wait':>9} "
            "cpu ms/acc per process"
        )
        base = None
        for n in counts:
            m = measure(db_url, n, args.concurrency, args.latency, args.seconds)
            base = base or m.accepted_per_s
            print(
                f"{n:>7} {m.accepted_per_s:>7.1f} {m.accepted_per_s / base:>6.2f} "
                f"{m.requests_per_s:>7.1f} {m.lock_waiting:>9.3f} {m.cpu_ms_per_accepted}",
                flush=True,
            )

    if args.database_url:
        run_all(args.database_url)
    else:
        with postgres_server() as url:
            run_all(url)


if __name__ == "__main__":
    main()
