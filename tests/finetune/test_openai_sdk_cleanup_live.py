"""The official `openai` SDK against a real `selfinstruct serve` with private reads on: a client
lists its files page by page, deletes them (not while a job reads one), deletes a fine-tuned
model, and /metrics refuses a scrape without the token."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from app.settings import BUNDLED_MODEL_ID, Settings
from tests.finetune.test_files_and_models_api import make_tuned_model
from tests.finetune.test_finetune_api import chat_jsonl
from tests.hardening.live_server import API_TOKEN, live_server

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real


def test_the_sdk_lists_and_deletes_files_and_models_on_a_private_server(
    db_url: str, tmp_path: Path
) -> None:
    with live_server(db_url, tmp_path, SELFINSTRUCT_PRIVATE_READS="true") as server:
        sdk = OpenAI(base_url=f"{server.base}/v1", api_key=API_TOKEN, max_retries=0)
        mine = [
            sdk.files.create(file=(f"train-{n}.jsonl", chat_jsonl(n)), purpose="fine-tune").id
            for n in (2, 3, 4)
        ]
        # Pages of two, followed by the SDK's own cursor (`after` = the last id of a page).
        page = sdk.files.list(limit=2)
        assert [f.id for f in page.data] == mine[::-1][:2] and page.has_more is True
        newest_first = [f.id for f in sdk.files.list(limit=2, purpose="fine-tune")]
        assert newest_first[:3] == mine[::-1]
        assert [f.id for f in sdk.files.list(order="asc")][-3:] == mine
        assert list(sdk.files.list(purpose="assistants")) == []

        job = sdk.fine_tuning.jobs.create(model=BUNDLED_MODEL_ID, training_file=mine[0])
        assert job.status == "queued"
        with pytest.raises(openai.ConflictError) as in_use:
            sdk.files.delete(mine[0])
        detail = in_use.value.body["detail"]  # type: ignore[index]
        assert job.id in detail and "training_file" in detail
        assert sdk.files.retrieve(mine[0]).id == mine[0]
        sdk.fine_tuning.jobs.cancel(job.id)
        deleted = sdk.files.delete(mine[0])
        assert (deleted.id, deleted.object, deleted.deleted) == (mine[0], "file", True)
        assert not (server.data_dir / "files" / f"{mine[0]}.jsonl").exists()
        with pytest.raises(openai.NotFoundError):
            sdk.files.retrieve(mine[0])
        assert mine[0] not in [f.id for f in sdk.files.list()]

        settings = Settings(database_url=db_url, data_dir=server.data_dir)
        with httpx.Client(base_url=server.base, headers=server.api_auth) as http:
            model_id = make_tuned_model(http, settings, "sdk")
        assert model_id in [m.id for m in sdk.models.list()]
        removed = sdk.models.delete(model_id)
        assert (removed.id, removed.object, removed.deleted) == (model_id, "model", True)
        assert model_id not in [m.id for m in sdk.models.list()]
        assert not (server.data_dir / "artifacts" / model_id.rsplit(":", 1)[1]).exists()
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.PermissionDeniedError):
            sdk.models.delete(BUNDLED_MODEL_ID)
        with pytest.raises(openai.NotFoundError):
            sdk.models.delete(model_id)

        scrape = httpx.get(f"{server.base}/metrics")
        assert scrape.status_code == 401 and "SELFINSTRUCT_API_TOKEN" in scrape.json()["detail"]
        authorised = httpx.get(f"{server.base}/metrics", headers=server.api_auth)
        assert authorised.status_code == 200
        assert 'route="/v1/files/{file_id}"' in authorised.text  # the deletes were counted
        log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
