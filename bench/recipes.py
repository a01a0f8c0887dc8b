"""What a recipe costs over the same jobs run by hand: generate -> judge -> version.

    python -m bench.recipes [--repeats 5] [--target 1000] [--latency 0.02]
    python -m bench.recipes --bundled --target 5

Against the scripted server (`bench.scripted_server`, its own process: every answer after exactly
`--latency` seconds; it rates judged tasks A-D), in this one process, each repetition on a fresh
data directory with the starter pool and the API's embedded worker (in-process TestClient):

- baseline, "the same jobs by hand": POST a run, poll GET /v1/runs/{id} until it ends, POST a
  judgement job over the dataset, poll it, POST a version; what a user's script does;
- the floor, "the same jobs direct": the same service functions called here, each job executed
  in this thread at once (no worker, no HTTP, no polling);
- the recipe of the same three steps: POST /v1/recipes, poll GET /v1/recipes/{id}.

The client polls every 0.05 s and the worker looks for work every 0.05 s. Printed: wall and
process CPU time of each (medians over the repetitions, the three taking turns so load drifts hit
each),
requests sent, and the recipe's wall and CPU time as ratios of each baseline's (goal: <= 1.05
against the jobs by hand).

With --bundled: one round of generate -> judge -> version -> finetune (LoRA, 2 steps, CPU) ->
evaluate on the bundled model, printing its requests, tokens and the fine-tune's time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.bootstrap import ensure_default_dataset
from app.db import make_engine, migrate
from app.main import create_app
from app.pipeline.execution import execute_run
from app.pipeline.judgement_job import execute_judgement_job
from app.schemas.judging import JudgementJobCreate
from app.schemas.runs import RunCreate
from app.services.datasets import get_dataset
from app.services.export import Selection
from app.services.judgement_jobs import create_job
from app.services.runs import create_run
from app.services.versions import create_version
from app.settings import EndpointConfig, Settings
from bench.throughput import MODEL, scripted_servers, stats

POLL_S = 0.05
FINAL = {"succeeded", "failed", "cancelled"}


def _wait(client: TestClient, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(path).json()
        if body["status"] in FINAL:
            assert body["status"] == "succeeded", body
            return body
        time.sleep(POLL_S)
    raise RuntimeError(f"{path} did not end")


def by_hand(client: TestClient, target: int) -> None:
    run = client.post("/v1/datasets/default/runs", json={"model": MODEL, "target": target})
    assert run.status_code == 201, run.text
    _wait(client, f"/v1/runs/{run.json()['id']}")
    job = client.post("/v1/datasets/default/judgements", json={"model": MODEL})
    assert job.status_code == 202, job.text
    _wait(client, f"/v1/judgements/{job.json()['id']}")
    version = client.post("/v1/datasets/default/versions", json={"tag": "by-hand"})
    assert version.status_code == 201, version.text


def direct(settings: Settings, target: int) -> None:
    """The floor: the same service functions, each job executed here at once (no worker, no
    polling), as bench.judge does."""
    engine = make_engine(settings)
    with Session(engine, expire_on_commit=False) as session:
        dataset = get_dataset(session=session, name="default")
        run = create_run(
            session=session,
            settings=settings,
            dataset=dataset,
            body=RunCreate(model=MODEL, target=target),
        )
        run.status = "running"
        session.add(run)
        session.commit()
    asyncio.run(execute_run(engine=engine, settings=settings, run_id=run.id))
    with Session(engine, expire_on_commit=False) as session:
        dataset = get_dataset(session=session, name="default")
        job = create_job(
            session=session,
            settings=settings,
            dataset=dataset,
            body=JudgementJobCreate(model=MODEL),
        )
        job.status = "running"
        session.add(job)
        session.commit()
    asyncio.run(execute_judgement_job(engine=engine, settings=settings, job_id=job.id))
    with Session(engine, expire_on_commit=False) as session:
        dataset = get_dataset(session=session, name="default")
        create_version(session=session, dataset=dataset, selection=Selection(), tag="direct")
    engine.dispose()


def as_recipe(client: TestClient, target: int) -> None:
    recipe = {
        "name": "bench",
        "dataset": "default",
        "steps": [
            {"name": "gen", "kind": "generate", "params": {"model": MODEL, "target": target}},
            {"name": "rate", "kind": "judge", "params": {"model": MODEL}},
            {"name": "freeze", "kind": "version", "params": {"tag": "recipe"}},
        ],
    }
    posted = client.post("/v1/recipes", json=recipe)
    assert posted.status_code == 202, posted.text
    _wait(client, f"/v1/recipes/{posted.json()['id']}")


def measure(url: str, how: Callable[[Any, int], None], target: int) -> tuple[float, float, int]:
    """Wall s, process CPU s and requests of one pass on a fresh data directory."""
    endpoint = EndpointConfig(
        name="bench", base_url=url, models=[MODEL], structured_output="json_schema"
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            endpoints=[endpoint],
            worker_poll_seconds=POLL_S,
            finetune_workers=0,
        )
        migrate(settings)
        if how is direct:
            ensure_default_dataset(engine=make_engine(settings), settings=settings)
            return _timed(url, lambda: direct(settings, target))
        with TestClient(create_app(settings)) as client:
            return _timed(url, lambda: how(client, target))


def _timed(url: str, work: Callable[[], None]) -> tuple[float, float, int]:
    before = stats([url])[0]
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, stats([url])[0] - before


def bundled_round(target: int) -> None:
    """One round of all five steps on the bundled model (in-process llama.cpp, CPU fine-tune):
    what it costs in requests, tokens and time, step by step."""
    from app.settings import BUNDLED_MODEL_ID as MODEL_ID

    recipe = {
        "name": "bundled",
        "dataset": "default",
        "steps": [
            {"name": "gen", "kind": "generate", "params": {"model": MODEL_ID, "target": target}},
            {"name": "rate", "kind": "judge", "params": {"model": MODEL_ID}},
            {"name": "freeze", "kind": "version", "params": {"include_seeds": True}},
            {
                "name": "tune",
                "kind": "finetune",
                "params": {
                    "model": MODEL_ID,
                    "lora": {"r": 8, "alpha": 16},
                    "max_steps": 2,
                    "max_seq_len": 256,
                },
            },
            {"name": "eval", "kind": "evaluate", "params": {"judge": MODEL_ID, "limit": 5}},
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), finetune_device="cpu", worker_poll_seconds=0.2)
        migrate(settings)
        from app.worker import Worker

        tuner = Worker(engine=make_engine(settings), settings=settings, kind="finetune")
        thread = tuner.start_thread()  # the API starts none in-process; `serve` would
        with TestClient(create_app(settings)) as client:
            wall, cpu = time.perf_counter(), time.process_time()
            posted = client.post("/v1/recipes", json=recipe)
            assert posted.status_code == 202, posted.text
            done = _wait(client, f"/v1/recipes/{posted.json()['id']}")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            steps = {s["name"]: s["job"] for s in done["steps"]}
            job = client.get(f"/v1/fine_tuning/jobs/{steps['tune']['id']}").json()
            run = client.get(f"/v1/runs/{steps['gen']['id']}").json()
            judged = client.get(f"/v1/judgements/{steps['rate']['id']}").json()
            evaluation = client.get(f"/v1/evaluations/{steps['eval']['id']}").json()
        tuner.stop()
        thread.join(timeout=60)
    (row,) = done["table"]
    print(f"one round on {MODEL_ID} (generate target {target}), this machine's CPU only")
    print(f"  round: {wall:.0f} s wall, {cpu:.0f} s CPU of this process")
    print(f"  requests {row['requests']}, tokens {row['tokens']}, new tasks {row['new_tasks']}")
    print(f"  run: {run['counters']['requests']} requests; judge: {judged['progress']}")
    print(
        f"  fine-tune: {job['finished_at'] - job['created_at']} s from queued to done, "
        f"{job['trained_tokens']} trained tokens"
    )
    print(f"  evaluation: {evaluation['progress']}, win rate {row['win_rate']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument(
        "--bundled", action="store_true", help="one round of five steps on the bundled model"
    )
    args = parser.parse_args()
    if args.bundled:
        bundled_round(args.target)
        return
    ways: dict[str, Callable[[Any, int], None]] = {
        "by hand": by_hand,
        "direct": direct,
        "recipe": as_recipe,
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in ways}
    with scripted_servers(1, args.latency) as urls:
        measure(urls[0], by_hand, args.target)  # warm-up: imports, first connections
        for _ in range(args.repeats):
            for name, how in ways.items():
                results[name].append(measure(urls[0], how, args.target))
    medians = {
        name: tuple(statistics.median(r[i] for r in rows) for i in range(3))
        for name, rows in results.items()
    }
    print(f"generate (target {args.target}) -> judge -> version, latency {args.latency}s")
    print(f"{'':10} {'wall s':>8} {'CPU s':>8} {'requests':>9}")
    for name, (wall, cpu, requests) in medians.items():
        print(f"{name:10} {wall:8.2f} {cpu:8.2f} {requests:9.0f}")
    for name, rows in results.items():
        print(f"  {name} walls: " + ", ".join(f"{r[0]:.2f}" for r in rows))
    for base in ("by hand", "direct"):
        ratio = medians["recipe"][0] / medians[base][0]
        cpu_ratio = medians["recipe"][1] / medians[base][1]
        print(f"recipe / the same jobs {base}: wall {ratio:.3f}x, CPU {cpu_ratio:.3f}x")


if __name__ == "__main__":
    main()
