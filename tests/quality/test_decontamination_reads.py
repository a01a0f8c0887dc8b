"""Reads only read: the writes keep contamination marks current, so the routes that show them
answer on a read-only database connection, with the marks as of the latest write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.main import create_app
from app.models import Dataset, Task
from app.services.dataset_lock import lock
from app.settings import Settings
from testbed.scripted_llm import Reply, completion_body
from tests.quality.conftest import MODEL_A, JudgingStub, seed
from tests.quality.test_decontamination import BENCH, MINE
from tests.runs.conftest import wait_for_run


def read_only_engine(db_url: str) -> sa.Engine:
    """SQLite: the file opened read-only; PostgreSQL: every transaction read-only."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return sa.create_engine(f"sqlite:///file:{url.database}?mode=ro&uri=true")
    options = {"options": "-c default_transaction_read_only=on"}
    return sa.create_engine(url, connect_args=options)


@contextmanager
def read_only(api: TestClient, db_url: str) -> Iterator[None]:
    """The app's requests go through a read-only engine meanwhile; a write would fail."""
    app = api.app
    engine = read_only_engine(db_url)
    with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE dataset SET description = 'x'"))
    writable, app.state.engine = app.state.engine, engine  # type: ignore[attr-defined]
    try:
        yield
    finally:
        app.state.engine = writable  # type: ignore[attr-defined]
        engine.dispose()


def marked(api: TestClient, name: str) -> dict[str, str]:
    """Marked tasks of `name` (seed id -> the evaluation set named), as the task list shows."""
    page = api.get(f"/v1/datasets/{name}/tasks", params={"contaminated": True})
    assert page.status_code == 200, page.text
    return {
        t["seed_id"] or t["instruction"]: t["contamination"]["dataset"] for t in page.json()["data"]
    }


def exported(api: TestClient, name: str) -> set[str]:
    answer = api.get(
        f"/v1/datasets/{name}/export", params={"format": "alpaca", "include_seeds": True}
    )
    assert answer.status_code == 200, answer.text
    return {json.loads(line)["instruction"] for line in answer.text.splitlines()}


@pytest.mark.both_databases
def test_the_routes_that_show_marks_answer_on_a_read_only_connection(
    api: TestClient, db_url: str
) -> None:
    assert api.post("/v1/datasets", json={"name": "bench"}).status_code == 201
    assert api.post("/v1/datasets/bench/seeds", json=BENCH).status_code == 200
    created = api.post("/v1/datasets", json={"name": "mine", "decontaminate_against": ["bench"]})
    assert created.status_code == 201, created.text
    assert api.post("/v1/datasets/mine/seeds", json=MINE).status_code == 200
    # The last write before the reads is to the evaluation set: m2 becomes a near-copy.
    more = [seed("b3", "Write a short poem about a cat that loves to sleep in the sun today.")]
    assert api.post("/v1/datasets/bench/seeds", json=more).status_code == 200

    with read_only(api, db_url):
        assert marked(api, "mine") == {"m1": "bench", "m2": "bench"}
        dataset = api.get("/v1/datasets/mine")
        assert dataset.status_code == 200 and dataset.json()["contaminated"] == 2
        listed = api.get("/v1/datasets")
        assert listed.status_code == 200
        assert {d["name"]: d["contaminated"] for d in listed.json()["data"]}["mine"] == 2
        stats = api.get("/v1/datasets/mine/stats")
        assert stats.status_code == 200 and stats.json()["contaminated"] == 2
        assert exported(api, "mine") == {MINE[2]["instruction"], MINE[3]["instruction"]}


@pytest.mark.both_databases
def test_a_run_in_an_evaluation_set_marks_the_datasets_that_name_it(
    api: TestClient, judging_stub: JudgingStub, db_url: str
) -> None:
    """The run's commits refresh the marks of `mine` (only against the tasks the run added):
    read right after the run, on a read-only connection."""
    assert api.post("/v1/datasets", json={"name": "bench"}).status_code == 201
    assert api.post("/v1/datasets/bench/seeds", json=BENCH).status_code == 200
    created = api.post("/v1/datasets", json={"name": "mine", "decontaminate_against": ["bench"]})
    assert created.status_code == 201, created.text
    assert api.post("/v1/datasets/mine/seeds", json=MINE).status_code == 200
    poem = MINE[1]["instruction"].replace("the sun.", "the sun all day.")
    judging_stub.script.append(Reply(body=completion_body(" " + poem)))
    run = api.post("/v1/datasets/bench/runs", json={"target": 40, "model": MODEL_A})
    assert run.status_code == 201, run.text
    finished = wait_for_run(api, run.json()["id"])
    assert finished["status"] == "succeeded", finished
    bench = api.get("/v1/datasets/bench/tasks", params={"contains": "all day"}).json()["data"]
    assert [(t["instruction"], t["status"]) for t in bench] == [(poem, "accepted")], bench

    with read_only(api, db_url):
        reasons = api.get("/v1/datasets/mine/tasks", params={"contaminated": True}).json()
        by_seed = {t["seed_id"]: t["contamination"] for t in reasons["data"]}
        assert set(by_seed) == {"m1", "m2"}
        assert by_seed["m2"]["task_id"] == bench[0]["id"] and by_seed["m2"]["score"] > 0.7
        assert api.get("/v1/datasets/mine").json()["contaminated"] == 2


def test_the_start_refreshes_marks_a_killed_process_left_behind(api: TestClient) -> None:
    """A process killed after a write to an evaluation set committed, before it refreshed the
    datasets that name the set: the next start of the service brings them up to date."""
    assert api.post("/v1/datasets", json={"name": "bench"}).status_code == 201
    assert api.post("/v1/datasets/bench/seeds", json=BENCH).status_code == 200
    created = api.post("/v1/datasets", json={"name": "mine", "decontaminate_against": ["bench"]})
    assert created.status_code == 201, created.text
    assert api.post("/v1/datasets/mine/seeds", json=MINE).status_code == 200
    settings: Settings = api.app.state.settings  # type: ignore[attr-defined]
    engine = make_engine(settings)
    with Session(engine) as session:  # what the killed process committed, and no more
        bench = session.exec(select(Dataset).where(Dataset.name == "bench")).one()
        assert bench.id is not None
        lock(session, bench.id)
        poem = "Write a short poem about a cat that loves to sleep in the sun today."
        session.add(Task(dataset_id=bench.id, seed_id="b3", instruction=poem))
        session.commit()
    engine.dispose()
    assert marked(api, "mine") == {"m1": "bench"}

    with TestClient(create_app(settings)) as restarted:
        assert marked(restarted, "mine") == {"m1": "bench", "m2": "bench"}
