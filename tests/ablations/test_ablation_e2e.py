"""An ablation end to end on a tiny base model: two strategies, three tiny fine-tunes, two
evaluations by a judge that prefers answers holding the reference. The junk strategy (questions
carrying the answers of unrelated arithmetic tasks) comes out first: leaving it out helps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, migrate
from app.main import create_app
from app.worker import Worker
from tests.ablations.conftest import ReferenceJudge, make_pool
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import _register_base, tiny_base_dir  # noqa: F401
from tests.judge.conftest import JUDGE_MODEL, judge_endpoints
from tests.recipes.conftest import wait_for_recipe

TUNE = {  # the same for every model: enough steps for the tiny model to learn a short answer
    "lora": {"r": 8, "alpha": 16},
    "max_seq_len": 64,
    "max_steps": 20,
    "seed": 1,
    "method": {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": 50, "batch_size": 4, "learning_rate_multiplier": 10}
        },
    },
}


def _wait(client: TestClient, ablation_id: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/ablations/{ablation_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"ablation {ablation_id} did not end: {body}")


@pytest.fixture
def world(
    sqlite_url: str,
    tmp_path: Path,
    reference_judge: ReferenceJudge,
    tiny_base_dir: Path,  # noqa: F811
) -> Iterator[tuple[TestClient, str]]:
    """The API with its generation worker, a fine-tune worker on the CPU and the tiny base."""
    from app.settings import Settings

    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        endpoints=judge_endpoints(reference_judge),
        worker_poll_seconds=0.05,
        worker_lease_seconds=10,
        finetune_device="cpu",
    )
    migrate(settings)
    _wipe(settings.db_url)
    base = _register_base(settings, tiny_base_dir)
    tuner = Worker(engine=make_engine(settings), settings=settings, kind="finetune", device="cpu")
    thread = tuner.start_thread()
    try:
        with TestClient(create_app(settings)) as client:
            make_pool(client, make_engine(settings), honest=8, junk=12, held_out=4)
            yield client, base
    finally:
        tuner.stop()
        thread.join(timeout=30)
        _wipe(settings.db_url)


def _check_report(done: dict[str, Any]) -> None:
    assert done["status"] == "succeeded", done["error"]
    assert done["full_model"]
    groups = done["groups"]
    assert [g["group"] for g in groups] == ["alpaca", "self_instruct"], groups
    assert {g["tasks"] for g in groups} == {8, 12}
    models = {done["full_model"], *(g["model"] for g in groups)}
    assert len(models) == 3  # three models trained
    junk = groups[0]
    assert junk["samples"] == 4 and junk["change"] > 0, groups
    assert junk["ci_low"] <= junk["change"] <= junk["ci_high"]
    assert groups[1]["change"] < junk["change"]


@pytest.mark.real
def test_the_junk_strategy_is_the_group_whose_removal_helps(
    world: tuple[TestClient, str],
) -> None:
    client, base = world
    version = client.post("/v1/datasets/pool/versions", json={"split": "all"}).json()["id"]
    created = client.post(
        "/v1/ablations",
        json={"dataset": "pool", "version": version, **_params(base)},
    )
    assert created.status_code == 202, created.text
    _check_report(_wait(client, created.json()["id"], timeout_s=300))


@pytest.mark.real
@pytest.mark.slow
def test_a_recipe_step_runs_an_ablation_of_its_version(world: tuple[TestClient, str]) -> None:
    client, base = world
    recipe = {
        "name": "which-helped",
        "dataset": "pool",
        "steps": [
            {"name": "freeze", "kind": "version", "params": {"split": "all"}},
            {"name": "ablate", "kind": "ablation", "params": _params(base)},
        ],
    }
    created = client.post("/v1/recipes", json=recipe)
    assert created.status_code == 202, created.text
    done = wait_for_recipe(client, created.json()["id"], timeout_s=300)
    assert done["status"] == "succeeded", (done["error"], done["steps"])
    child = done["steps"][1]["job"]
    assert child["kind"] == "ablation"
    _check_report(client.get(f"/v1/ablations/{child['id']}").json())


def _params(base: str) -> dict[str, Any]:
    return {
        "grouping": "strategy",
        "model": base,
        "judge": JUDGE_MODEL,
        "finetune": TUNE,
        "limit": 4,
        "max_tokens": 8,
    }
