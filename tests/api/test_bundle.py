"""A user publishes a dataset: Parquet exports and Hub-ready bundles that `datasets` loads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.models import Dataset, Run
from app.services.bundle import split_of
from app.services.dataset_card import size_category
from app.services.export import ExportRow
from app.settings import Settings
from tests.api.test_tasks_export import _add_generated
from tests.factories import seed

FLAT_COLUMNS = ["id", "instruction", "input", "output", "is_classification", "origin", "language"]


def _generated(n: int) -> list[dict[str, Any]]:
    """Accepted tasks with one or two instances each, plus two rejected ones."""
    tasks: list[dict[str, Any]] = [
        {
            "instruction": f"Write a haiku about harbour number {i}.",
            "instances": [{"input": "", "output": f"Harbour {i} sleeps"}]
            + ([{"input": "at dawn", "output": f"Dawn at harbour {i}"}] if i % 3 == 0 else []),
            "is_classification": False,
            "language": "en",
            "status": "accepted",
        }
        for i in range(n)
    ]
    tasks.append({"instruction": "列出三种水果。", "instances": [{"input": "", "output": "苹果"}],
                  "language": "zh", "status": "accepted"})  # fmt: skip
    for reason in ("rouge_too_similar", "rouge_too_similar", "blacklisted_word"):
        tasks.append(
            {"instruction": "Draw a cat.", "status": "rejected", "rejection_reason": reason}
        )
    return tasks


@pytest.fixture
def published(client: TestClient, settings: Settings) -> TestClient:
    """A dataset with two seeds and 61 accepted generated tasks (81 rows), 3 rejected."""
    client.post("/v1/datasets", json={"name": "pub", "description": "Haiku about harbours."})
    client.post("/v1/datasets/pub/seeds", json=[seed(), seed()])
    _add_generated(settings, "pub", _generated(60))
    engine = make_engine(settings)
    with Session(engine) as session:
        dataset_id = session.exec(select(Dataset.id).where(Dataset.name == "pub")).one()
        session.add(
            Run(
                dataset_id=dataset_id,
                strategy="evolve",
                backend="openai",
                model="scripted-model",
                params={"filters": {"rouge_threshold": 0.65}},
                status="succeeded",
                accepted=61,
            )
        )
        session.commit()
    engine.dispose()
    return client


def _card(path: Path) -> tuple[dict[str, Any], str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def _load(directory: Path, tmp_path: Path) -> Any:
    from datasets import load_dataset

    return load_dataset(str(directory), cache_dir=str(tmp_path / "hf-cache"))


def _unzip(content: bytes, into: Path) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        archive.extractall(into)
        return sorted(archive.namelist())


def test_parquet_export_holds_the_jsonl_exports_rows(published: TestClient) -> None:
    response = published.get("/v1/datasets/pub/export", params={"format": "parquet"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert 'filename="pub.parquet"' in response.headers["content-disposition"]
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == FLAT_COLUMNS
    rows = table.to_pylist()

    alpaca = [
        json.loads(line)
        for line in published.get(
            "/v1/datasets/pub/export", params={"format": "alpaca"}
        ).text.splitlines()
    ]
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in rows] == alpaca
    assert len(rows) == 81
    self_instruct = published.get("/v1/datasets/pub/export").text.splitlines()
    assert {r["id"] for r in rows} == {json.loads(line)["id"] for line in self_instruct}
    assert {r["origin"] for r in rows} == {"generated"}
    assert rows[-1]["language"] == "zh"

    with_seeds = published.get(
        "/v1/datasets/pub/export", params={"format": "parquet", "include_seeds": True}
    )
    seeds = [r for r in pq.read_table(io.BytesIO(with_seeds.content)).to_pylist()[:2]]
    assert [r["origin"] for r in seeds] == ["seed", "seed"]


def test_large_parquet_export_is_written_in_row_groups(
    client: TestClient, settings: Settings
) -> None:
    client.post("/v1/datasets", json={"name": "big"})
    _add_generated(settings, "big", _generated(6000)[:6000])
    response = client.get("/v1/datasets/big/export", params={"format": "parquet"})
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    assert parquet.metadata.num_rows == 8000
    assert parquet.metadata.num_row_groups == 2  # 5,000 rows a group, written as they are read


def test_empty_dataset_exports_a_valid_empty_parquet_file(client: TestClient) -> None:
    client.post("/v1/datasets", json={"name": "empty"})
    response = client.get("/v1/datasets/empty/export", params={"format": "parquet"})
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    assert table.num_rows == 0
    assert table.column_names == FLAT_COLUMNS


def test_unknown_format_is_refused_with_the_formats(published: TestClient) -> None:
    refused = published.get("/v1/datasets/pub/export", params={"format": "xlsx"})
    assert refused.status_code == 422
    for name in ("self_instruct", "alpaca", "openai_messages", "prompt_completion", "parquet"):
        assert name in json.dumps(refused.json()), name
    refused = published.get("/v1/datasets/pub/bundle", params={"file_format": "csv"})
    assert refused.status_code == 422
    assert "'parquet'" in json.dumps(refused.json()) and "'jsonl'" in json.dumps(refused.json())
    assert published.get("/v1/datasets/pub/bundle", params={"license": "MIT!"}).status_code == 422
    assert published.get("/v1/datasets/nope/bundle").status_code == 404


def test_bundle_loads_in_datasets_with_both_splits_and_a_hub_card(
    published: TestClient, tmp_path: Path
) -> None:
    response = published.get("/v1/datasets/pub/bundle", params={"license": "apache-2.0"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    names = _unzip(response.content, tmp_path)
    assert names == [
        "pub/README.md",
        "pub/data/train-00000-of-00001.parquet",
        "pub/data/validation-00000-of-00001.parquet",
    ]
    loaded = _load(tmp_path / "pub", tmp_path)
    assert set(loaded) == {"train", "validation"}
    assert loaded["validation"].num_rows > 0
    assert loaded["train"].num_rows + loaded["validation"].num_rows == 81
    assert loaded["train"].column_names == FLAT_COLUMNS
    train_ids = set(loaded["train"]["id"])
    assert not train_ids & set(loaded["validation"]["id"])  # a task never straddles splits

    meta, body = _card(tmp_path / "pub" / "README.md")
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == ["en", "zh"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation"]
    for split in ("train", "validation"):
        tasks = len(set(loaded[split]["id"]))
        assert f"| {split} | {tasks} | {loaded[split].num_rows} |" in body
    assert "2 seed tasks" in body
    assert "Accepted machine-made tasks: 61" in body
    assert "rouge_too_similar: 2" in body and "blacklisted_word: 1" in body
    assert "| evolve | scripted-model | openai | succeeded | 61 |" in body
    assert '"rouge_threshold": 0.65' in body
    assert "No judge has rated these tasks." in body
    assert "SHA-256" in body and "version 0.1.0" in body


def test_bundle_in_jsonl_loads_the_same_rows(published: TestClient, tmp_path: Path) -> None:
    parquet = published.get("/v1/datasets/pub/bundle")
    jsonl = published.get("/v1/datasets/pub/bundle", params={"file_format": "jsonl"})
    _unzip(parquet.content, tmp_path / "p")
    names = _unzip(jsonl.content, tmp_path / "j")
    assert "pub/data/train-00000-of-00001.jsonl" in names
    from_parquet = _load(tmp_path / "p" / "pub", tmp_path)
    from_jsonl = _load(tmp_path / "j" / "pub", tmp_path)
    for split in ("train", "validation"):
        assert from_jsonl[split].to_list() == from_parquet[split].to_list()
    assert _card(tmp_path / "p" / "pub" / "README.md")[0]["license"] == "other"


def test_empty_dataset_bundle_is_valid_with_its_card(client: TestClient, tmp_path: Path) -> None:
    client.post("/v1/datasets", json={"name": "empty"})
    for file_format in ("parquet", "jsonl"):
        response = client.get("/v1/datasets/empty/bundle", params={"file_format": file_format})
        assert response.status_code == 200
        names = _unzip(response.content, tmp_path / file_format)
        root = tmp_path / file_format / "empty"
        assert len(names) == 3
        for split in ("train", "validation"):
            path = root / "data" / f"{split}-00000-of-00001.{file_format}"
            if file_format == "parquet":
                table = pq.read_table(path)
                assert (table.num_rows, table.column_names) == (0, FLAT_COLUMNS)
            else:
                assert path.read_bytes() == b""
        meta, body = _card(root / "README.md")
        assert meta["size_categories"] == ["n<1K"]
        assert meta["license"] == "other"
        assert [f["name"] for f in meta["dataset_info"]["features"]] == FLAT_COLUMNS
        assert "No generation runs are recorded" in body
        # `datasets` itself cannot load a split with no rows yet (huggingface/datasets#8401).


def test_a_small_pool_still_gets_both_splits(client: TestClient, settings: Settings) -> None:
    """Three tasks: 5% of them is none, yet `datasets` needs a row in each split."""
    client.post("/v1/datasets", json={"name": "small"})
    _add_generated(settings, "small", _generated(3)[:3])
    with zipfile.ZipFile(io.BytesIO(client.get("/v1/datasets/small/bundle").content)) as archive:
        rows = {
            split: pq.read_table(
                io.BytesIO(archive.read(f"small/data/{split}-00000-of-00001.parquet"))
            ).num_rows
            for split in ("train", "validation")
        }
    assert rows["train"] > 0 and rows["validation"] > 0
    assert sum(rows.values()) == 4


def test_split_rule_and_size_categories() -> None:
    def task(instruction: str, inputs: int) -> ExportRow:
        instances = [{"input": str(i), "output": "o"} for i in range(inputs)]
        return ExportRow(1, None, None, instruction, instances, False, "generated", "en")

    # A task's split depends on its content only (instruction, first input): not on its id,
    # its other instances or the pool.
    picks = [split_of(task(f"Instruction {i}", 1)) for i in range(2000)]
    assert picks == [split_of(task(f"Instruction {i}", 3)) for i in range(2000)]
    assert 0.03 < picks.count("validation") / len(picks) < 0.07
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 1_000_000, 10**13)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
        "n>1T",
    ]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_bundle_writes_what_the_download_holds(
    published: TestClient, settings: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path),
        "HF_TOKEN": "",
        "HF_HOME": str(tmp_path / "hf-home"),  # no saved login either
    }
    target = tmp_path / "bundle"
    result = _cli(env, "export", "--dataset", "pub", "--bundle", str(target))
    assert result.returncode == 0, result.stderr
    _unzip(published.get("/v1/datasets/pub/bundle").content, tmp_path / "zip")
    downloaded = tmp_path / "zip" / "pub"
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == sorted(
        str(p.relative_to(downloaded)) for p in downloaded.rglob("*") if p.is_file()
    )
    for name in ("data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"):
        assert pq.read_table(target / name).equals(pq.read_table(downloaded / name))
    assert _card(target / "README.md")[0] == _card(downloaded / "README.md")[0]

    again = _cli(env, "export", "--dataset", "pub", "--bundle", str(target))
    assert again.returncode == 2
    assert "new or empty directory" in again.stderr

    parquet = _cli(
        env, "export", "--dataset", "pub", "--format", "parquet", "-o", str(tmp_path / "x")
    )
    assert parquet.returncode == 0, parquet.stderr
    assert pq.read_table(tmp_path / "x").num_rows == 81

    push = _cli(env, "export", "--dataset", "pub", "--push-to-hub", "someone/pub")
    assert push.returncode == 2
    assert "needs a Hugging Face token" in push.stderr and "HF_TOKEN" in push.stderr
