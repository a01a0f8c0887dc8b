"""An evaluation job end to end through a real llama.cpp server serving the bundled model, as
the answering model and as the judge. Its answers and ratings are poor; this checks the
mechanics and the stored records, not quality."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db import migrate
from app.main import create_app
from app.settings import EndpointConfig, Settings
from tests.conftest import LLAMA_ALIAS, _wipe
from tests.quality.conftest import seed
from tests.quality.helpers import all_samples, wait_for_evaluation

ALIAS = LLAMA_ALIAS


@pytest.mark.real
def test_evaluation_job_through_a_real_llama_cpp_server(
    sqlite_url: str, tmp_path: Path, llama_server: str
) -> None:
    """On SQLite only: the job's storage is tested on both databases with the scripted server,
    and each pass here costs over a minute of CPU."""
    endpoint = EndpointConfig(name="llamacpp", base_url=llama_server, models=[ALIAS])
    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path / "data",
        endpoints=[endpoint],
        worker_poll_seconds=0.1,
    )
    migrate(settings)
    _wipe(settings.db_url)
    references = [
        seed("r1", "What is the capital of France?", "Paris."),
        seed("r2", "把“你好”翻译成英语。", "Hello."),
    ]
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/datasets", json={"name": "ref"}).status_code == 201
        assert client.post("/v1/datasets/ref/seeds", json=references).status_code == 200
        created = client.post(
            "/v1/evaluations",
            json={"models": [ALIAS], "dataset": "ref", "judge": ALIAS, "max_tokens": 24},
        )
        assert created.status_code == 202, created.text
        done = wait_for_evaluation(client, created.json()["id"], timeout_s=600)
        assert done["status"] == "succeeded", done
        (result,) = done["results"]
        assert result["answered"] == 2 and result["failed"] == 0
        assert 0.0 <= result["mean_rouge_l"] <= 1.0
        assert sum(result["ratings"].values()) + result["unjudged"] == 2
        samples = all_samples(client, created.json()["id"])
        assert [s["reference"] for s in samples] == ["Paris.", "Hello."]
        for sample in samples:
            answer = sample["answers"][ALIAS]
            assert answer["text"].strip() and "rating" in answer and answer["rationale"]
    _wipe(settings.db_url)
