"""Pipeline overhead: the same prompts through a generation run and through a bare client.

    python -m bench.pipeline [--requests 20] [--max-tokens 128]

Starts a llama.cpp server with the bundled model, runs a `self_instruct` run against it (no
classification or instance steps, so every request is a bootstrap prompt) and records each batch
it sends. Then sends the recorded batches again through a bare `OpenAIBackend` with the same
sampling (seeded, so the server writes the same text) and compares wall times. The ratio is what
sampling, parsing, filtering, storing and the events cost on top of the model.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.db import make_engine, migrate
from app.leases import claim_run
from app.llm import backend_for, find_model
from app.models import Run
from app.pipeline import execute_run
from app.schemas.runs import RunCreate
from app.services.datasets import get_dataset
from app.services.runs import create_run
from app.settings import EndpointConfig, Settings
from app.worker import Worker
from generators.llama_server import serve_llama_cpp
from generators.openai_compat import OpenAIBackend

MODEL = "smollm2-bench"


async def through_pipeline(
    settings: Settings, requests: int, max_tokens: int
) -> tuple[float, list[Any], Run]:
    engine = make_engine(settings)
    from app.bootstrap import ensure_default_dataset

    ensure_default_dataset(engine=engine, settings=settings)
    body = RunCreate(
        target=100_000,
        model=MODEL,
        classify=False,
        generate_instances=False,
        sampling={"max_tokens": max_tokens},
        caps={"max_requests": requests},
        seed=1,
    )
    with Session(engine, expire_on_commit=False) as session:
        run = create_run(
            session=session,
            settings=settings,
            dataset=get_dataset(session=session, name="default"),
            body=body,
        )
    worker = Worker(engine=engine, settings=settings)
    assert run.id is not None
    worker.lease = claim_run(
        engine,
        worker_id=worker.worker_id,
        run_id=run.id,
        lease_seconds=settings.worker_lease_seconds,
        attempts=settings.job_attempts,
    )
    backend = backend_for(settings, find_model(settings, MODEL))
    recorded: list[Any] = []
    send = backend.execute

    async def recording(prompts: Any, params: Any) -> Any:
        recorded.append((prompts, params))
        return await send(prompts, params)

    backend.execute = recording  # type: ignore[method-assign]
    start = time.perf_counter()
    await execute_run(engine=engine, settings=settings, run_id=run.id, worker=worker)
    elapsed = time.perf_counter() - start
    with Session(engine) as session:
        final = session.get(Run, run.id)
    assert final is not None
    return elapsed, recorded, final


async def through_bare_client(base_url: str, recorded: list[Any]) -> float:
    client = OpenAIBackend(base_url=base_url, model=MODEL)
    start = time.perf_counter()
    for prompts, params in recorded:
        await client.generate(prompts, params)
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    with serve_llama_cpp(model_alias=MODEL) as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            embedded_worker=False,
            endpoints=[
                EndpointConfig(name="bench", base_url=url, models=[MODEL], max_concurrency=1)
            ],
        )
        migrate(settings)
        pipeline_s, recorded, run = asyncio.run(
            through_pipeline(settings, args.requests, args.max_tokens)
        )
        bare_s = asyncio.run(through_bare_client(url, recorded))
    n = sum(len(p) for p, _ in recorded)
    print(
        f"requests: {n} in {len(recorded)} batches; run: {run.candidates} candidates, "
        f"{run.accepted} accepted, {run.completion_tokens} completion tokens"
    )
    print(f"through the pipeline : {pipeline_s:8.2f} s")
    print(f"bare client (baseline): {bare_s:8.2f} s")
    print(f"overhead ratio        : {pipeline_s / bare_s:8.3f}x  (goal <= 1.10)")


if __name__ == "__main__":
    main()
