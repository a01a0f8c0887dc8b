"""What judging costs: judgement throughput through the streaming pipeline, and the requests and
tokens judging adds per accepted task in a run.

    python -m bench.judge [--seconds 15] [--target 300]

Against the scripted server (`bench.scripted_server`: every answer after exactly L seconds, any
number at once; it rates each judged task A-D by a hash of its prompt):

1. Throughput, C=64, L=0.5 s (the physical limit is C/L = 128 requests/s). Baseline: a
   generation run on the same endpoint, measured over the same window length. Then a judgement
   job over a pool of generated tasks. Printed: requests/s of each, as a share of C/L, and the
   job's judgements/s against the run's requests/s.
2. Cost, C=32, L=0.02 s. Baseline: a run to `--target` accepted tasks without a judge. Then the
   same run with `judge: {model, min_rating: "B"}` (about half of the judged candidates pass).
   Printed: requests and tokens per accepted task, and their ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.bootstrap import ensure_default_dataset
from app.db import make_engine, migrate
from app.models import JudgementJob, Run
from app.pipeline import execute_run
from app.pipeline.judgement_job import execute_judgement_job
from app.schemas.judging import JudgementJobCreate
from app.schemas.runs import JudgeSpec, RunCreate
from app.services.datasets import get_dataset
from app.services.judgement_jobs import cancel_job, create_job
from app.services.runs import cancel_run, create_run
from app.settings import EndpointConfig, Settings
from bench.throughput import MODEL, grow_pool, scripted_servers, stats

POOL = 20_000  # generated tasks a judgement job may judge (more than a window can reach)


def _setup(url: str, concurrency: int, tmp: str) -> tuple[Settings, Any]:
    endpoint = EndpointConfig(
        name="bench",
        base_url=url,
        models=[MODEL],
        max_concurrency=concurrency,
        structured_output="json_schema",
    )
    settings = Settings(data_dir=Path(tmp), embedded_worker=False, endpoints=[endpoint])
    migrate(settings)
    engine = make_engine(settings)
    ensure_default_dataset(engine=engine, settings=settings)
    return settings, engine


def _start(
    engine: Any, settings: Settings, row_id: int, *, judging: bool = False
) -> threading.Thread:
    """Execute a run (or, `judging`, a judgement job) in a thread, with no worker's lease."""
    with Session(engine) as session:
        row = session.get(JudgementJob if judging else Run, row_id)
        assert row is not None
        row.status = "running"
        session.add(row)
        session.commit()

    async def work() -> None:
        if judging:
            await execute_judgement_job(engine=engine, settings=settings, job_id=row_id)
        else:
            await execute_run(engine=engine, settings=settings, run_id=row_id)

    thread = threading.Thread(target=lambda: asyncio.run(work()))
    thread.start()
    return thread


def _window(urls: list[str], seconds: float) -> float:
    """Requests/s the server answered over the middle of a job (ramp-up left out)."""
    deadline = time.monotonic() + 120
    while stats(urls)[0] == 0:
        assert time.monotonic() < deadline, "nothing was sent"
        time.sleep(0.1)
    time.sleep(min(3.0, seconds / 4))
    a0, t0 = stats(urls)[0], time.monotonic()
    time.sleep(seconds)
    return (stats(urls)[0] - a0) / (time.monotonic() - t0)


def _stop(engine: Any, row_id: int, thread: threading.Thread, *, judging: bool = False) -> None:
    with Session(engine, expire_on_commit=False) as session:
        if judging:
            job = session.get(JudgementJob, row_id)
            assert job is not None
            cancel_job(session=session, job=job)
        else:
            run = session.get(Run, row_id)
            assert run is not None
            cancel_run(session=session, run=run)
    thread.join(timeout=60)


def throughput(seconds: float, concurrency: int = 64, latency: float = 0.5) -> dict[str, float]:
    out: dict[str, float] = {"limit": concurrency / latency}
    for kind in ("generation run (baseline)", "judgement job"):
        with scripted_servers(1, latency) as urls, tempfile.TemporaryDirectory() as tmp:
            settings, engine = _setup(urls[0], concurrency, tmp)
            judging = kind == "judgement job"
            if judging:
                grow_pool(engine, POOL)
            with Session(engine, expire_on_commit=False) as session:
                dataset = get_dataset(session=session, name="default")
                if judging:
                    row: Run | JudgementJob = create_job(
                        session=session,
                        settings=settings,
                        dataset=dataset,
                        body=JudgementJobCreate(model=MODEL, origin="machine"),
                    )
                else:
                    row = create_run(
                        session=session,
                        settings=settings,
                        dataset=dataset,
                        body=RunCreate(target=100_000, model=MODEL),
                    )
            assert row.id is not None
            thread = _start(engine, settings, row.id, judging=judging)
            out[kind] = _window(urls, seconds)
            _stop(engine, row.id, thread, judging=judging)
            engine.dispose()
    return out


def cost(target: int, concurrency: int = 32, latency: float = 0.02) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, judge in (("without a judge (baseline)", None), ("with a judge (min B)", "B")):
        with scripted_servers(1, latency) as urls, tempfile.TemporaryDirectory() as tmp:
            settings, engine = _setup(urls[0], concurrency, tmp)
            spec = JudgeSpec(model=MODEL, min_rating=judge) if judge else None  # type: ignore[arg-type]
            with Session(engine, expire_on_commit=False) as session:
                run = create_run(
                    session=session,
                    settings=settings,
                    dataset=get_dataset(session=session, name="default"),
                    body=RunCreate(target=target, model=MODEL, judge=spec),
                )
            assert run.id is not None
            thread = _start(engine, settings, run.id)
            thread.join(timeout=600)
            with Session(engine) as session:
                row = session.get(Run, run.id)
                assert row is not None and row.status == "succeeded", row
                accepted = max(1, row.accepted)
                out[kind] = {
                    "accepted": row.accepted,
                    "requests_per_accepted": row.requests / accepted,
                    "tokens_per_accepted": (row.prompt_tokens + row.completion_tokens) / accepted,
                    "judged_low": row.rejected_by_reason.get("judged_low", 0),
                }
            engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--target", type=int, default=300)
    args = parser.parse_args()
    t = throughput(args.seconds)
    base = t["generation run (baseline)"]
    print(f"throughput, C=64 L=0.5 s, limit C/L = {t['limit']:.0f} requests/s")
    for kind in ("generation run (baseline)", "judgement job"):
        print(
            f"  {kind:<28} {t[kind]:>7.1f} req/s  {t[kind] / t['limit']:>5.2f} of C/L  "
            f"{t[kind] / base:>5.2f}x baseline",
            flush=True,
        )
    c = cost(args.target)
    b = c["without a judge (baseline)"]
    print(f"cost per accepted task, run to {args.target} accepted, C=32 L=0.02 s")
    for kind, m in c.items():
        print(
            f"  {kind:<28} requests/accepted {m['requests_per_accepted']:>6.2f} "
            f"({m['requests_per_accepted'] / b['requests_per_accepted']:.2f}x)  "
            f"tokens/accepted {m['tokens_per_accepted']:>7.0f} "
            f"({m['tokens_per_accepted'] / b['tokens_per_accepted']:.2f}x)  "
            f"judged_low {m['judged_low']:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
