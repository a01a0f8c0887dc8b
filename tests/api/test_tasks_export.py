"""A user browses the pool and exports it in the formats fine-tuning tools read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.models import Dataset, Task, TaskOrigin, TaskStatus
from app.settings import Settings
from tests.factories import seed


def _add_generated(settings: Settings, dataset: str, tasks: list[dict]) -> None:  # type: ignore[type-arg]
    """Stand-in for a generation run: writes generated tasks the way a run stores them."""
    engine = make_engine(settings)
    with Session(engine) as session:
        dataset_id = session.exec(select(Dataset.id).where(Dataset.name == dataset)).one()
        for t in tasks:
            session.add(Task(dataset_id=dataset_id, origin=TaskOrigin.generated, **t))
        session.commit()
    engine.dispose()


@pytest.fixture
def pool(client: TestClient, settings: Settings) -> TestClient:
    client.post("/v1/datasets", json={"name": "pool"})
    client.post("/v1/datasets/pool/seeds", json=[seed(id="s1", is_classification=True), seed()])
    _add_generated(
        settings,
        "pool",
        [
            {
                "instruction": "Summarise the paragraph in one sentence.",
                "instances": [
                    {"input": "Cats sleep a lot. They like sun.", "output": "Cats nap in sun."},
                    {"input": "Rain fell all day.", "output": "It rained all day."},
                ],
                "is_classification": False,
                "status": TaskStatus.accepted,
            },
            {
                "instruction": "列出三种常见的水果。",
                "instances": [{"input": "", "output": "苹果、香蕉、橙子"}],
                "is_classification": False,
                "status": TaskStatus.accepted,
            },
            {
                "instruction": "Draw a picture of a cat.",
                "instances": [],
                "is_classification": False,
                "status": TaskStatus.rejected,
                "rejection_reason": "blacklisted_word",
            },
            {
                "instruction": "Is this review positive or negative?",
                "instances": [{"input": "Great phone!", "output": "positive"}],
                "is_classification": True,
                "status": TaskStatus.accepted,
            },
        ],
    )
    return client


@pytest.mark.both_databases
def test_filters_select_what_the_user_asked_for(pool: TestClient) -> None:
    def ids(**params: object) -> list[str]:
        rows = pool.get("/v1/datasets/pool/tasks", params=params).json()["data"]
        return [r["instruction"] for r in rows]

    assert len(ids()) == 6
    assert len(ids(origin="seed")) == 2
    assert ids(status="rejected") == ["Draw a picture of a cat."]
    assert ids(origin="generated", is_classification=True) == [
        "Is this review positive or negative?"
    ]
    assert ids(contains="PARAGRAPH") == ["Summarise the paragraph in one sentence."]
    assert ids(contains="水果") == ["列出三种常见的水果。"]
    assert ids(contains="%") == []
    rejected = pool.get("/v1/datasets/pool/tasks", params={"status": "rejected"}).json()["data"][0]
    assert rejected["rejection_reason"] == "blacklisted_word"
    assert pool.get("/v1/datasets/pool/tasks", params={"origin": "alien"}).status_code == 422


@pytest.mark.both_databases
def test_cursor_pagination_walks_every_task_once(pool: TestClient) -> None:
    seen: list[int] = []
    after = None
    for _ in range(10):
        params = {"limit": 4, **({"after": after} if after else {})}
        page = pool.get("/v1/datasets/pool/tasks", params=params).json()
        seen += [t["id"] for t in page["data"]]
        after = page["next_cursor"]
        if not page["has_more"]:
            assert after is None
            break
    assert len(seen) == 6
    assert seen == sorted(set(seen))
    assert pool.get("/v1/datasets/pool/tasks", params={"after": "xyz"}).status_code == 422
    assert pool.get("/v1/datasets/pool/tasks", params={"limit": 0}).status_code == 422
    assert pool.get("/v1/datasets/pool/tasks", params={"limit": 10**6}).status_code == 422


def test_read_one_task_and_unknown_task(pool: TestClient) -> None:
    first = pool.get("/v1/datasets/pool/tasks").json()["data"][0]
    one = pool.get(f"/v1/tasks/{first['id']}")
    assert one.json() == first
    assert one.json()["dataset"] == "pool"
    missing = pool.get("/v1/tasks/999999")
    assert missing.status_code == 404
    assert "999999" in missing.json()["detail"]


def _lines(client: TestClient, **params: object) -> list[dict]:  # type: ignore[type-arg]
    response = client.get("/v1/datasets/pool/export", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_export_formats(pool: TestClient) -> None:
    si = _lines(pool, format="self_instruct")
    assert [r["instruction"] for r in si] == [
        "Summarise the paragraph in one sentence.",
        "列出三种常见的水果。",
        "Is this review positive or negative?",
    ]
    assert set(si[0]) == {"id", "name", "instruction", "instances", "is_classification"}
    assert len(_lines(pool, format="self_instruct", include_seeds=True)) == 5

    alpaca = _lines(pool, format="alpaca")
    assert len(alpaca) == 4  # one line per instance
    assert alpaca[2] == {
        "instruction": "列出三种常见的水果。",
        "input": "",
        "output": "苹果、香蕉、橙子",
    }

    messages = _lines(pool, format="openai_messages")
    assert messages[0]["messages"] == [
        {
            "role": "user",
            "content": "Summarise the paragraph in one sentence.\n\n"
            "Cats sleep a lot. They like sun.",
        },
        {"role": "assistant", "content": "Cats nap in sun."},
    ]
    assert messages[2]["messages"][0]["content"] == "列出三种常见的水果。"

    pc = _lines(pool, format="prompt_completion")
    assert pc[3] == {
        "prompt": "Is this review positive or negative?\n\nGreat phone!",
        "completion": "positive",
    }
    assert pool.get("/v1/datasets/pool/export", params={"format": "csv"}).status_code == 422


def test_every_export_format_loads_with_hf_datasets(pool: TestClient, tmp_path: Path) -> None:
    from datasets import load_dataset

    for fmt in ("self_instruct", "alpaca", "openai_messages", "prompt_completion"):
        path = tmp_path / f"{fmt}.jsonl"
        path.write_bytes(
            pool.get(
                "/v1/datasets/pool/export", params={"format": fmt, "include_seeds": True}
            ).content
        )
        loaded = load_dataset(
            "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
        )
        expected = sum(1 for _ in path.read_text().splitlines())
        assert loaded.num_rows == expected > 0, fmt
    messages = load_dataset(
        "json",
        data_files=str(tmp_path / "openai_messages.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert messages[0]["messages"][1]["role"] == "assistant"
