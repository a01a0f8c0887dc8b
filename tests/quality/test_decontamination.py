"""A dataset stays clean of the evaluation sets it names."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.models import Task
from app.settings import Settings
from testbed.scripted_llm import Reply, completion_body
from tests.quality.conftest import MODEL_A, JudgingStub, seed
from tests.runs.conftest import wait_for_run

BENCH = [
    seed("b1", "Translate the sentence 'the cat sleeps on the warm mat' into French."),
    seed("b2", "List three prime numbers larger than one hundred and explain why."),
]
MINE = [
    # A near-copy of b1 (ROUGE-L well above 0.7), and tasks that merely share a topic.
    seed("m1", "Translate the sentence 'the cat sleeps on the warm mat' to French."),
    seed("m2", "Write a short poem about a cat that loves to sleep in the sun."),
    seed("m3", "Describe how French bakers make croissants in the early morning."),
    seed("m4", "Give three reasons why prime numbers matter to modern cryptography."),
]


def _instructions(api: TestClient, name: str) -> set[str]:
    text = api.get(
        f"/v1/datasets/{name}/export", params={"format": "alpaca", "include_seeds": True}
    ).text
    return {json.loads(line)["instruction"] for line in text.splitlines()}


def test_a_contaminated_task_is_left_out_of_exports_and_shown_with_its_reason(
    api: TestClient,
) -> None:
    assert api.post("/v1/datasets", json={"name": "bench"}).status_code == 201
    assert api.post("/v1/datasets/bench/seeds", json=BENCH).status_code == 200
    created = api.post("/v1/datasets", json={"name": "mine", "decontaminate_against": ["bench"]})
    assert created.status_code == 201, created.text
    assert api.post("/v1/datasets/mine/seeds", json=MINE).status_code == 200

    assert _instructions(api, "mine") == {t["instruction"] for t in MINE[1:]}
    marked = api.get("/v1/datasets/mine/tasks", params={"contaminated": True}).json()["data"]
    assert [t["seed_id"] for t in marked] == ["m1"]
    reason = marked[0]["contamination"]
    bench_ids = {t["seed_id"]: t["id"] for t in api.get("/v1/datasets/bench/tasks").json()["data"]}
    assert reason["dataset"] == "bench" and reason["task_id"] == bench_ids["b1"]
    assert reason["score"] > 0.7 and reason["method"] == "rouge_l"
    assert api.get("/v1/datasets/mine/stats").json()["contaminated"] == 1
    assert api.get("/v1/datasets/mine").json()["contaminated"] == 1
    with_marked = api.get(
        "/v1/datasets/mine/export",
        params={"format": "alpaca", "include_seeds": True, "include_contaminated": True},
    ).text
    assert len(with_marked.splitlines()) == len(MINE)

    # The evaluation set grows: the next read re-checks, and a second task is marked.
    more = [seed("b3", "Write a short poem about a cat that loves to sleep in the sun today.")]
    assert api.post("/v1/datasets/bench/seeds", json=more).status_code == 200
    assert _instructions(api, "mine") == {MINE[2]["instruction"], MINE[3]["instruction"]}
    # ...and shrinks: a reviewer rejects b1, so m1 is clean again.
    api.patch(f"/v1/tasks/{bench_ids['b1']}", json={"status": "rejected", "note": "dropped"})
    marked = api.get("/v1/datasets/mine/tasks", params={"contaminated": True}).json()["data"]
    assert [t["seed_id"] for t in marked] == ["m2"]
    # No evaluation sets named: no marks at all.
    patched = api.patch("/v1/datasets/mine", json={"decontaminate_against": []})
    assert patched.status_code == 200 and patched.json()["contaminated"] == 0
    assert _instructions(api, "mine") == {t["instruction"] for t in MINE}


def test_unknown_or_own_evaluation_sets_are_refused_naming_the_field(api: TestClient) -> None:
    bad = api.post("/v1/datasets", json={"name": "x", "decontaminate_against": ["nope"]})
    assert bad.status_code == 404
    assert bad.json()["errors"][0]["field"] == "decontaminate_against.0"
    assert api.get("/v1/datasets/x").status_code == 404
    itself = api.patch("/v1/datasets/default", json={"decontaminate_against": ["default"]})
    assert itself.status_code == 422
    assert itself.json()["errors"][0]["field"] == "decontaminate_against.0"


@pytest.mark.both_databases
def test_a_run_marks_a_near_copy_of_an_evaluation_task_as_it_accepts_it(
    api: TestClient, judging_stub: JudgingStub, db_url: str
) -> None:
    """The run's commit marks the task itself: read from the database right after the run,
    with no API read in between that would refresh the marks lazily."""
    assert api.post("/v1/datasets", json={"name": "bench"}).status_code == 201
    assert api.post("/v1/datasets/bench/seeds", json=BENCH).status_code == 200
    created = api.post("/v1/datasets", json={"name": "mine", "decontaminate_against": ["bench"]})
    assert created.status_code == 201, created.text
    assert api.post("/v1/datasets/mine/seeds", json=MINE[1:]).status_code == 200
    copy = BENCH[0]["instruction"]
    # The first bootstrap answer continues its prompt with the evaluation task, word for word.
    judging_stub.script.append(Reply(body=completion_body(" " + copy)))
    run = api.post("/v1/datasets/mine/runs", json={"target": 40, "model": MODEL_A})
    assert run.status_code == 201, run.text
    finished = wait_for_run(api, run.json()["id"])
    assert finished["status"] == "succeeded", finished

    with Session(make_engine(Settings(database_url=db_url))) as session:
        bench_b1 = session.exec(select(Task.id).where(Task.seed_id == "b1")).one()
        rows = session.exec(
            select(Task).where(Task.instruction == copy, Task.origin != "seed")
        ).all()
    assert [(t.origin, t.status) for t in rows] == [("generated", "accepted")], [
        (t.rejection_reason, t.rejection_detail) for t in rows
    ]
    assert rows[0].contaminated and rows[0].contamination is not None
    assert rows[0].contamination["task_id"] == bench_b1
    assert rows[0].contamination["score"] > 0.7
    clean = api.get("/v1/datasets/mine/tasks", params={"contaminated": False}).json()["data"]
    assert copy not in {t["instruction"] for t in clean}
