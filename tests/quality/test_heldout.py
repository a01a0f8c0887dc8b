"""A dataset's held-out share stays out of fine-tuning, and evaluations read it by default."""

from __future__ import annotations

import io
import json
import zipfile

from fastapi.testclient import TestClient

from app.models import holdout_key
from tests.quality.conftest import MODEL_A, seed
from tests.quality.helpers import wait_for_evaluation

TOPICS = "tea rivers violins glaciers harbors orchards comets lanterns".split()
SEEDS = [
    seed(f"s{i}", f"Explain in two sentences what makes {TOPICS[i % 8]} special, case {i}.")
    for i in range(40)
]


def _tasks(api: TestClient, name: str, **params: object) -> list[dict]:
    return api.get(f"/v1/datasets/{name}/tasks", params={"limit": 1000, **params}).json()["data"]


def test_held_out_tasks_never_reach_a_fine_tune_and_evaluations_read_them(
    api: TestClient,
) -> None:
    created = api.post("/v1/datasets", json={"name": "pool", "held_out_share": 0.3})
    assert created.status_code == 201 and created.json()["held_out_share"] == 0.3
    assert api.post("/v1/datasets/pool/seeds", json=SEEDS).status_code == 200

    held = _tasks(api, "pool", split="held_out")
    train = _tasks(api, "pool", split="train")
    assert held and train and len(held) + len(train) == len(SEEDS)
    assert {t["split"] for t in held} == {"held_out"} and {t["split"] for t in train} == {"train"}
    # The rule is the content's hash, not ids or order: the same as computing it here.
    for task in held + train:
        expected = holdout_key(task["instruction"], task["instances"]) < 0.3
        assert (task["split"] == "held_out") == expected
    assert api.get("/v1/datasets/pool").json()["held_out"] == len(held)

    job = api.post(
        "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "pool"}
    ).json()
    frozen = api.get(f"/v1/files/{job['training_file']}/content").text
    api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    prompts = [json.loads(line)["messages"][0]["content"] for line in frozen.splitlines()]
    assert len(prompts) == len(train)
    for task in held:
        assert not any(task["instruction"] in p for p in prompts), task["instruction"]
    for task in train:
        assert any(task["instruction"] in p for p in prompts), task["instruction"]

    exported = {
        split: {
            json.loads(line)["instruction"]
            for line in api.get(
                "/v1/datasets/pool/export",
                params={"format": "alpaca", "include_seeds": True, **params},
            ).text.splitlines()
        }
        for split, params in (
            ("train", {}),
            ("held_out", {"split": "held_out"}),
            ("all", {"split": "all"}),
        )
    }
    assert exported["train"] == {t["instruction"] for t in train}  # the default is train
    assert exported["held_out"] == {t["instruction"] for t in held}
    assert exported["all"] == exported["train"] | exported["held_out"]

    bundle = api.get(
        "/v1/datasets/pool/bundle", params={"file_format": "jsonl", "include_seeds": True}
    )
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        test_rows = archive.read("pool/data/test-00000-of-00001.jsonl").decode().splitlines()
        assert "pool/data/train-00000-of-00001.jsonl" in archive.namelist()
    assert {json.loads(r)["instruction"] for r in test_rows} == exported["held_out"]

    evaluation = api.post("/v1/evaluations", json={"models": [MODEL_A], "dataset": "pool"}).json()
    assert evaluation["split"] == "held_out" and evaluation["tasks"] == min(len(held), 20)
    done = wait_for_evaluation(api, evaluation["id"])
    assert done["status"] == "succeeded", done


def test_held_out_share_outside_the_range_is_refused(api: TestClient) -> None:
    for share in (-0.1, 0.51, 2):
        response = api.post("/v1/datasets", json={"name": "bad", "held_out_share": share})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "held_out_share"
    assert api.get("/v1/datasets/bad").status_code == 404
    patched = api.patch("/v1/datasets/default", json={"held_out_share": 0.9})
    assert patched.status_code == 422 and patched.json()["errors"][0]["field"] == "held_out_share"
    assert api.get("/v1/datasets/default").json()["held_out_share"] == 0.0
