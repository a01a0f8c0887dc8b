"""Accepted tasks per 100 model requests, for each construction strategy against `self_instruct`.

    python -m bench.strategies [--requests 300] [--model-requests 40] [--skip-model]

Each strategy runs on the embedded defaults (SQLite, the starter pool; backtranslate also gets a
document of 400 passages) until `caps.max_requests` stops it, twice: against the scripted server
(`bench.scripted_server`: every answer well formed and new, so the figure is the pipeline's own
cost per task: requests spent on classification, instances and rejections) and against the
bundled model in this process (what a small real model yields). The baseline is `self_instruct`
on the same server or model in the same process; each line prints its ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.bootstrap import ensure_default_dataset
from app.db import make_engine, migrate
from app.models import Run
from app.pipeline import execute_run
from app.schemas.runs import RunCreate
from app.services.datasets import get_dataset
from app.services.documents import add_documents, parse_document
from app.services.runs import create_run
from app.settings import BUNDLED_MODEL_ID, EndpointConfig, Settings
from app.strategies import get_strategy
from bench.scripted_server import VOCAB
from bench.throughput import MODEL, scripted_servers

STRATEGIES = ("self_instruct", "evolve", "backtranslate", "magpie")


def _document(passages: int) -> bytes:
    """Paragraphs of made-up words, one passage each: every back-translation is new."""
    rng = random.Random(3)
    paragraphs = [
        " ".join(rng.sample(VOCAB, 12)).capitalize() + ". " + " ".join(rng.sample(VOCAB, 12)) + "."
        for _ in range(passages)
    ]
    return "\n\n".join(paragraphs).encode()


def run_strategy(
    strategy: str, *, model: str, endpoints: list[EndpointConfig], max_requests: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), embedded_worker=False, endpoints=endpoints)
        migrate(settings)
        engine = make_engine(settings)
        ensure_default_dataset(engine=engine, settings=settings)
        with Session(engine, expire_on_commit=False) as session:
            dataset = get_dataset(session=session, name="default")
            if "documents" in get_strategy(strategy).needs:
                doc = parse_document(
                    "bench.txt", _document(400), declared=None, max_bytes=10**8, max_chars=200
                )
                add_documents(session=session, dataset=dataset, parsed=[doc])
            body: dict[str, Any] = {
                "target": 100_000,
                "model": model,
                "strategy": strategy,
                "caps": {"max_requests": max_requests},
                "sampling": {"max_tokens": 256},
            }
            run = create_run(
                session=session,
                settings=settings,
                dataset=dataset,
                body=RunCreate.model_validate(body),
            )
            run.status = "running"
            session.add(run)
            session.commit()
            run_id = run.id
        assert run_id is not None
        asyncio.run(execute_run(engine=engine, settings=settings, run_id=run_id))
        with Session(engine) as session:
            done = session.get(Run, run_id)
            assert done is not None
            result = {
                "requests": done.requests,
                "accepted": done.accepted,
                "candidates": done.candidates,
                "stop": done.state.get("stop_reason"),
                "top_rejections": sorted(done.rejected_by_reason.items(), key=lambda kv: -kv[1])[
                    :3
                ],
            }
        engine.dispose()
    return result


def report(title: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    base = results["self_instruct"]
    base_rate = 100 * base["accepted"] / max(1, base["requests"])
    for strategy, r in results.items():
        rate = 100 * r["accepted"] / max(1, r["requests"])
        ratio = rate / base_rate if base_rate else float("nan")
        print(
            f"  {strategy:14s} {rate:6.1f} accepted / 100 requests  ({ratio:4.2f}x self_instruct)"
            f"  requests={r['requests']} accepted={r['accepted']} candidates={r['candidates']}"
            f"  stop={r['stop']}  top rejections={r['top_rejections']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="Cap per scripted run.")
    parser.add_argument("--model-requests", type=int, default=40, help="Cap per bundled run.")
    parser.add_argument("--skip-model", action="store_true", help="Scripted server only.")
    args = parser.parse_args()
    with scripted_servers(1, 0.005) as urls:
        endpoint = EndpointConfig(name="bench", base_url=urls[0], models=[MODEL])
        scripted = {
            s: run_strategy(s, model=MODEL, endpoints=[endpoint], max_requests=args.requests)
            for s in STRATEGIES
        }
    report("Scripted server (every answer new and well formed):", scripted)
    if args.skip_model:
        return
    bundled = {
        s: run_strategy(s, model=BUNDLED_MODEL_ID, endpoints=[], max_requests=args.model_requests)
        for s in STRATEGIES
    }
    report(f"Bundled model ({BUNDLED_MODEL_ID}, in process, CPU):", bundled)


if __name__ == "__main__":
    main()
