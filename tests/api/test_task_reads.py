"""A task read by id or in a page is byte for byte what the model built from the stored row
says: the fast read path (plain rows, orjson for JSON columns, async routes) changes no content."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlmodel import Session, select

from app.db import make_engine
from app.models import Dataset, Task, TaskJudgement
from app.schemas.datasets import TaskPublic, TasksPublic
from app.services.tasks import task_public
from app.settings import Settings


def _store(settings: Settings) -> list[int]:
    """A task with every field set (Chinese text, an integer past 64 bits, a tiny float,
    microseconds) edited into one with every optional field null."""
    engine = make_engine(settings)
    with Session(engine) as session:
        dataset_id = session.exec(select(Dataset.id).where(Dataset.name == "reads")).one()
        full = Task(
            dataset_id=dataset_id,
            seed_id="种子-1",
            name="翻译",
            instruction="把这句话翻译成英文：“今天天气很好。”",
            language="zh",
            instances=[{"input": "今天天气很好。", "output": "The weather is nice today."}],
            is_classification=True,
            origin="generated",
            status="rejected",
            rejection_reason="too_similar",
            rejection_detail="与任务 3 太相似 (0.71)",
            max_rouge=0.7142857142857143,
            nearest=[{"task_id": 3, "score": 1e-07}, {"task_id": 4, "score": 0.5}],
            lineage={
                "model": "模型",
                "seed": 2**70 + 1,
                "sampling": {"temperature": 0.7, "top_p": None},
                "example_task_ids": ["1", "2"],
            },
            contaminated=True,
            contamination={"evaluation": "评测", "task_id": 9, "score": 0.91},
            created_at=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
            updated_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        )
        session.add(full)
        session.flush()
        judgement = TaskJudgement(
            task_id=full.id,
            rating="B",
            rationale="基本正确，但略有瑕疵。",
            judge_model="judge",
            prompt_version="v1",
        )
        session.add(judgement)
        session.flush()
        full.rating, full.judgement_id = "B", judgement.id
        bare = Task(
            dataset_id=dataset_id,
            instruction="Name a colour.",
            origin="edited",
            edited_from_id=full.id,
        )
        session.add(bare)
        session.commit()
        ids = [full.id, bare.id]
    engine.dispose()
    assert None not in ids
    return [i for i in ids if i is not None]


def _as_before(settings: Settings, task_id: int) -> TaskPublic:
    """The model the ORM object gives, as the routes built it before the fast path: through an
    engine that reads JSON with `json.loads`."""
    engine = sa.create_engine(settings.db_url)
    with Session(engine) as session:
        task = session.get(Task, task_id)
        assert task is not None
        dataset = session.get(Dataset, task.dataset_id)
        assert dataset is not None
        judgement = session.get(TaskJudgement, task.judgement_id) if task.judgement_id else None
        public = task_public(task=task, dataset=dataset, judgement=judgement)
    engine.dispose()
    return public


@pytest.mark.both_databases  # JSON columns: SQLite's text, PostgreSQL's JSONB through psycopg
def test_task_and_page_reads_are_byte_for_byte_the_model_of_the_stored_row(
    client: TestClient, settings: Settings
) -> None:
    assert client.post("/v1/datasets", json={"name": "reads", "held_out_share": 0.5}).is_success
    ids = _store(settings)
    expected = [_as_before(settings, i) for i in ids]
    assert expected[0].judgement is not None and expected[1].judgement is None

    for task_id, model in zip(ids, expected, strict=True):
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.content == TypeAdapter(TaskPublic).dump_json(model)

    page = client.get("/v1/datasets/reads/tasks", params={"limit": 1})
    rest = client.get("/v1/datasets/reads/tasks", params={"after": page.json()["next_cursor"]})
    first: dict[str, Any] = {"data": expected[:1], "has_more": True, "next_cursor": str(ids[0])}
    second: dict[str, Any] = {"data": expected[1:], "has_more": False, "next_cursor": None}
    assert page.content == TypeAdapter(TasksPublic).dump_json(TasksPublic(**first))
    assert rest.content == TypeAdapter(TasksPublic).dump_json(TasksPublic(**second))
    stored = page.json()["data"][0]
    assert stored["lineage"]["seed"] == 2**70 + 1  # not read as a float
    assert (stored["created_at"], stored["updated_at"]) == (
        "2026-01-02T03:04:05.123456Z",
        "2026-01-02T03:04:06Z",
    )


def test_missing_task_and_dataset_are_404s_naming_them(client: TestClient) -> None:
    task = client.get("/v1/tasks/999999")
    assert task.status_code == 404
    assert "Task 999999 does not exist" in task.json()["detail"]
    dataset = client.get("/v1/datasets/nowhere/tasks")
    assert dataset.status_code == 404
    assert "Dataset 'nowhere' does not exist" in dataset.json()["detail"]
