"""A two-round recipe with tiny fine-tunes, end to end: generate, judge, version, fine-tune and
evaluate twice, the second round generating with the first round's tuned model; the worker
executing it is killed (-9) once round 1's fine-tune ended, and the next one resumes it there."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, migrate
from app.main import create_app
from app.schemas.recipes import StopRules
from app.services.recipe_rounds import stop_reason
from app.worker import Worker
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import _register_base, tiny_base_dir  # noqa: F401
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, judge_endpoints
from tests.recipes.conftest import SMALL, make_pool, wait_for_recipe
from tests.recipes.test_recipe_resume import _worker


def _row(**values: Any) -> dict[str, Any]:
    row = {"requests": 10, "tokens": 100, "cost": 0.0, "win_rate": 0.6}
    row |= {"mean_rouge_l_to_pool": 0.3, "distinct_leading_words": 0.8}
    return row | values


def test_each_stopping_rule_stops_after_its_round() -> None:
    rules = StopRules()
    assert stop_reason([_row()], rules) is None
    assert stop_reason([_row(win_rate=0.5)], rules) == "win_rate_below_threshold"
    assert stop_reason([_row(), _row(mean_rouge_l_to_pool=0.32)], rules) is None
    assert stop_reason([_row(), _row(distinct_leading_words=0.73)], rules) is None
    assert stop_reason([_row(), _row(mean_rouge_l_to_pool=0.331)], rules) == "collapse"
    assert stop_reason([_row(), _row(distinct_leading_words=0.71)], rules) == "collapse"
    capped = StopRules.model_validate({"budget": {"max_requests": 20}})
    assert stop_reason([_row()], capped) is None
    assert stop_reason([_row(), _row()], capped) == "budget"


@pytest.mark.real
def test_a_two_round_recipe_with_tiny_fine_tunes_runs_end_to_end_through_a_kill_9(
    sqlite_url: str,
    tmp_path: Path,
    recipe_stub: JudgeStub,
    tiny_base_dir: Path,  # noqa: F811
) -> None:
    from app.settings import Settings

    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        endpoints=judge_endpoints(recipe_stub),
        worker_poll_seconds=0.05,
        worker_lease_seconds=10,
        finetune_device="cpu",
        embedded_worker=False,  # the recipe runs in `selfinstruct worker` processes, killed once
    )
    migrate(settings)
    _wipe(settings.db_url)
    base = _register_base(settings, tiny_base_dir)
    recipe = copy.deepcopy(SMALL)
    recipe["rounds"] = 2
    recipe["stop"] = {"min_win_rate": 0.0, "collapse_margin": 10}
    recipe["steps"][2]["params"] = {"include_seeds": True}
    # The tuned tiny model writes noise: a few short requests are enough to prove it generates.
    recipe["steps"][0]["params"] |= {"caps": {"max_requests": 4}, "sampling": {"max_tokens": 32}}
    recipe["steps"] += [
        {
            "name": "tune",
            "kind": "finetune",
            "params": {
                "model": base,
                "lora": {"r": 4, "alpha": 8},
                "max_seq_len": 64,
                "max_steps": 2,
                "seed": 1,
            },
        },
        {
            "name": "eval",
            "kind": "evaluate",
            "params": {"judge": JUDGE_MODEL, "limit": 3, "max_tokens": 8},
        },
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(settings.data_dir),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(judge_endpoints(recipe_stub)),
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.1",
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "1",
    }
    log = tmp_path / "workers.log"
    tuner = Worker(engine=make_engine(settings), settings=settings, kind="finetune", device="cpu")
    thread = tuner.start_thread()
    second = None
    try:
        with TestClient(create_app(settings)) as client:
            make_pool(client)
            created = client.post("/v1/recipes", json=recipe)
            assert created.status_code == 202, created.text
            # Dies as round 1's fourth step (the fine-tune) has ended, before the recipe moves on.
            first = _worker(env, log, "recipe:running@4")
            assert first.wait(timeout=300) == -9, log.read_text()[-3000:]
            second = _worker(env, log, None)
            done = wait_for_recipe(client, created.json()["id"], timeout_s=300)
            assert done["status"] == "succeeded", (done["error"], done["steps"])
            assert done["stop_reason"] == "rounds_done"
            assert [r["round"] for r in done["table"]] == [1, 2]
            first_round, second_round = done["table"]
            assert first_round["tuned_model"] and second_round["tuned_model"]
            assert first_round["tuned_model"] != second_round["tuned_model"]
            assert first_round["against"] == base
            assert second_round["against"] == first_round["tuned_model"]
            assert len(done["versions"]) == 2
            runs = [s["job"]["id"] for s in done["steps"] if s["kind"] == "generate"]
            second_run = client.get(f"/v1/runs/{runs[1]}").json()
            assert second_run["model"] == first_round["tuned_model"]  # the tuned model generated
            jobs = client.get("/v1/fine_tuning/jobs").json()["data"]
            trained = [j for j in jobs if j["model"] == base]
            assert len(trained) == 2, jobs  # round 1's was waited for again, not made again
            events = client.get(f"/v1/recipes/{created.json()['id']}/events")
            assert events.text.count("event: child_created") == 10, events.text[-2000:]
    finally:
        if second is not None:
            second.kill()
            second.wait()
        tuner.stop()
        thread.join(timeout=30)
        _wipe(settings.db_url)
