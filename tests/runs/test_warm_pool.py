"""A worker keeps datasets' pools warm between runs (app/pipeline/pool_cache.py). What a warm
pool hands the next run must be what a cold load would build at that moment: the same tasks
under the same ids, held-out tasks kept out of the examples, the same verdicts and top-10
neighbours, whatever other runs, imports, edits and reviews did in between."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.main import create_app
from app.models import Dataset, Task
from app.pipeline.loading import load_pool
from app.pipeline.pool_cache import BYTES_PER_TASK, Loaded, PoolCache
from app.schemas.datasets import TaskEdit
from app.services.tasks import edit_task
from app.settings import Settings
from app.worker import Worker
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.quality.conftest import seed
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows, stub_settings, wait_for_run
from tests.runs.test_pool_sync import (
    BUDGET,
    BUDGET_NOW,
    GLACIER,
    HARBOR,
    SONNET,
    SONNET_EDITED,
    HandRun,
    task_id,
)

ORCHARD = "List five fruit trees that grow well in a cold and windy orchard."
KETTLE = "Explain how a kettle switches itself off once the water boils."
CHESS = "Teach a beginner the three most useful chess openings for white."


@pytest.fixture
def api(settings_factory: Callable[..., Settings], stub: StubLLM) -> Iterator[TestClient]:
    """The service with no worker of its own: each test drives loads (or a worker) itself."""
    settings = stub_settings(settings_factory, stub, embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def new_dataset(api: TestClient, name: str, texts: list[str], **fields: Any) -> int:
    assert api.post("/v1/datasets", json={"name": name, **fields}).status_code == 201
    seeds = [seed(f"{name}-{i}", text) for i, text in enumerate(texts)]
    assert api.post(f"/v1/datasets/{name}/seeds", json=seeds).status_code == 200
    engine = make_engine(api.app.state.settings)  # type: ignore[attr-defined]
    with Session(engine) as session:
        found = session.exec(select(Dataset.id).where(Dataset.name == name)).one()
    assert found is not None
    return found


def members(loaded: Loaded) -> dict[str, Any]:
    """Everything a run reads of its pool, order aside."""
    pool, texts, _ = loaded
    return {
        "texts": sorted(texts),
        "indexed": sorted(task for task, _ in texts if task in pool.index),
        "index_size": len(pool.index),
        "seeds": sorted(e.id for e in pool.seeds),
        "machine": sorted(e.id for e in pool.machine),
        "by_language": {
            code: (sorted(e.id for e in seeds), sorted(e.id for e in machine))
            for code, (seeds, machine) in pool.by_language.items()
        },
        "examples": sorted((e.id, e.instruction, e.input, e.output) for e in pool.seeds),
    }


def answers(loaded: Loaded, probes: list[str]) -> list[Any]:
    """Each probe's verdict, best score, and top-10: scores in order, and the tasks above the
    tenth score (equal scores at the cut may be listed in another order)."""
    out = []
    for probe in probes:
        check = loaded[0].index.check(probe, threshold=0.7, k=10)
        scores = [n.score for n in check.nearest]
        above = sorted(n.key for n in check.nearest if n.score > scores[-1])
        out.append((check.novel, check.max_score, scores, above))
    return out


def same_as_cold(api: TestClient, cache: PoolCache, dataset_id: int, share: float = 0.0) -> None:
    engine = make_engine(api.app.state.settings)  # type: ignore[attr-defined]
    warm = cache.load(engine, dataset_id=dataset_id, held_out_share=share)
    cold = load_pool(engine, dataset_id=dataset_id, held_out_share=share)
    assert members(warm) == members(cold)
    with Session(engine) as session:
        every = list(session.exec(select(Task.instruction).where(Task.dataset_id == dataset_id)))
    probes = [*every, *(f"{text} Please." for text in every), ORCHARD, KETTLE, CHESS]
    assert answers(warm, probes) == answers(cold, probes)


@pytest.mark.both_databases
def test_a_warm_pool_answers_as_a_cold_load_after_runs_imports_edits_and_reviews(
    api: TestClient,
) -> None:
    dataset_id = new_dataset(api, "warm", [GLACIER, BUDGET])
    engine = make_engine(api.app.state.settings)  # type: ignore[attr-defined]
    hand = HandRun(api, "warm")
    hand.commit([hand.decide(SONNET)])
    cache = PoolCache(max_bytes=1 << 30)
    first = cache.load(engine, dataset_id=dataset_id)
    # The run that got it changes its copy (pending keys, a demotion): the master stays clean.
    first[0].index.add("p1", ORCHARD)
    first[0].withdraw([task_id(engine, GLACIER)])

    # Another run accepts a task, an import adds a seed, a seed is posted again with new text,
    # a reviewer edits one task (a new task replaces it) and rejects another.
    hand.commit([hand.decide(KETTLE)])
    assert api.post("/v1/datasets/warm/seeds", json=[seed("harbor", HARBOR)]).status_code == 200
    assert api.post("/v1/datasets/warm/seeds", json=[seed("warm-1", BUDGET_NOW)]).status_code == 200
    with Session(engine) as session:
        edit_task(
            session=session,
            task_id=task_id(engine, SONNET),
            edit=TaskEdit(instruction=SONNET_EDITED),
        )
    glacier = task_id(engine, GLACIER)
    api.patch(f"/v1/tasks/{glacier}", json={"status": "rejected", "note": "off topic"})
    same_as_cold(api, cache, dataset_id)
    assert cache.warm_loads == 1

    # Accepted again, and one more run's task: the next load brings both in.
    api.patch(f"/v1/tasks/{glacier}", json={"status": "accepted"})
    hand.commit([hand.decide(CHESS)])
    same_as_cold(api, cache, dataset_id)
    assert cache.warm_loads == 2


def test_the_least_recently_used_pool_is_evicted_first(api: TestClient) -> None:
    engine = make_engine(api.app.state.settings)  # type: ignore[attr-defined]
    a = new_dataset(api, "a", [GLACIER, BUDGET])
    b = new_dataset(api, "b", [SONNET, HARBOR])
    c = new_dataset(api, "c", [KETTLE, CHESS])
    cache = PoolCache(max_bytes=4 * BYTES_PER_TASK)  # two pools of two tasks
    cache.load(engine, dataset_id=a)
    cache.load(engine, dataset_id=b)
    cache.load(engine, dataset_id=a)  # a is used again: b is now the least recent
    cache.load(engine, dataset_id=c)
    assert a in cache and c in cache and b not in cache
    assert cache.warm_loads == 1
    cache.load(engine, dataset_id=b)  # cold again; a goes now
    assert cache.warm_loads == 1 and a not in cache
    # A pool larger than the whole budget is never kept, and the run still gets it.
    tiny = PoolCache(max_bytes=BYTES_PER_TASK)
    pool, texts, _ = tiny.load(engine, dataset_id=a)
    assert len(texts) == 2 and len(pool.index) == 2 and a not in tiny


def test_a_held_out_share_change_rebuilds_the_pool(api: TestClient) -> None:
    texts = [f"{verb} the {noun} of a small {place} for a curious child." for verb, noun, place in [
        ("Describe", "history", "village"), ("Explain", "weather", "island"),
        ("Summarise", "economy", "harbour"), ("Compare", "festivals", "valley"),
        ("Outline", "architecture", "town"), ("Illustrate", "music", "county"),
        ("Narrate", "legends", "forest"), ("Portray", "cuisine", "coast"),
    ]]  # fmt: skip
    dataset_id = new_dataset(api, "share", texts)
    engine = make_engine(api.app.state.settings)  # type: ignore[attr-defined]
    cache = PoolCache(max_bytes=1 << 30)
    everything = cache.load(engine, dataset_id=dataset_id)
    assert len(everything[0].seeds) == len(texts)
    changed = api.patch("/v1/datasets/share", json={"held_out_share": 0.5})
    assert changed.status_code == 200, changed.text
    same_as_cold(api, cache, dataset_id, share=0.5)
    assert cache.warm_loads == 0  # rebuilt, not synced
    kept = cache.load(engine, dataset_id=dataset_id, held_out_share=0.5)
    assert cache.warm_loads == 1
    assert 0 < len(kept[0].seeds) < len(texts)  # held-out seeds are no examples...
    assert len(kept[0].index) == len(texts)  # ...but nothing near them is accepted


def test_a_workers_second_run_starts_from_its_warm_pool(api: TestClient) -> None:
    settings: Settings = api.app.state.settings  # type: ignore[attr-defined]
    engine = make_engine(settings)
    worker = Worker(engine=engine, settings=settings)
    body = {"target": 4, "model": STUB_MODEL, "classify": False, "generate_instances": False}
    runs = []
    for _ in range(2):
        created = api.post("/v1/datasets/default/runs", json=body)
        assert created.status_code == 201, created.text
        asyncio.run(worker.run_forever(once=True))
        runs.append(wait_for_run(api, created.json()["id"]))
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert worker.pools.warm_loads == 1
    for run in runs:
        assert_run_matches_rows(settings.db_url, run["id"])
    # The master learnt the first run's tasks from the database, not from the run's copy.
    with Session(engine) as session:
        default = session.exec(select(Dataset.id).where(Dataset.name == "default")).one()
    assert default is not None
    same_as_cold(api, worker.pools, default)
