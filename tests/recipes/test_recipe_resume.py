"""kill -9 of the worker executing a recipe: the next worker resumes it at its step, waits for
(and finishes) the child it had made, and makes no child twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from app.db import make_engine
from app.main import create_app
from app.models import DatasetVersion, JudgementJob, Recipe, RecipeEvent, Run
from app.settings import Settings
from tests.conftest import _wipe
from tests.judge.conftest import JudgeStub, judge_endpoints
from tests.recipes.conftest import SMALL, make_pool, wait_for_recipe


def _worker(env: dict[str, str], log: Path, fault: str | None) -> subprocess.Popen[bytes]:
    run_env = {**env, **({"SELFINSTRUCT_TEST_FAULT": fault} if fault else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=run_env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


# Fencing and the child's id written in its own commit are the database's locking: both, with
# the PostgreSQL case (8 s) in `make test-all`.
@pytest.mark.both_databases
@pytest.mark.postgres_slow
def test_a_recipe_resumes_at_its_step_after_kill_9_with_no_child_made_twice(
    settings_factory: Callable[..., Settings], recipe_stub: JudgeStub, tmp_path: Path
) -> None:
    endpoints = judge_endpoints(recipe_stub, judge_concurrency=1)
    settings = settings_factory(endpoints=endpoints, embedded_worker=False)
    _wipe(settings.db_url)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(settings.data_dir),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(endpoints),
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.1",
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "1",
    }
    log = tmp_path / "workers.log"
    with TestClient(create_app(settings)) as client:
        make_pool(client)
        recipe_id = client.post("/v1/recipes", json=SMALL).json()["id"]
        # Dies while the recipe's judge step executes its child in place (the 2nd task judged).
        first = _worker(env, log, "judgement:running@2")
        assert first.wait(timeout=60) == -9, log.read_text()
        second = _worker(env, log, None)
        try:
            done = wait_for_recipe(client, recipe_id)
        finally:
            second.kill()
            second.wait()
    assert done["status"] == "succeeded", (done, log.read_text())
    engine = make_engine(settings)
    with Session(engine) as session:
        recipe = session.get(Recipe, recipe_id)
        assert recipe is not None and recipe.state["executions"] == 2
        for model in (Run, JudgementJob, DatasetVersion):
            assert session.exec(select(func.count()).select_from(model)).one() == 1, model
        (job,) = session.exec(select(JudgementJob)).all()
        assert job.state["executions"] == 2 and job.done == job.total  # resumed, not remade
        made = session.exec(
            select(func.count()).where(
                RecipeEvent.recipe_id == recipe_id, RecipeEvent.kind == "child_created"
            )
        ).one()
        assert made == 3
    engine.dispose()
    _wipe(settings.db_url)


def test_recipe_run_sends_a_yaml_file_and_prints_the_round_table(
    settings_factory: Callable[..., Settings], recipe_stub: JudgeStub, tmp_path: Path
) -> None:
    import yaml

    endpoints = judge_endpoints(recipe_stub)
    settings = settings_factory(endpoints=endpoints, embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        make_pool(client)
    recipe = tmp_path / "grow.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(settings.data_dir),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(endpoints),
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "recipe", "run", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "round 1 freeze: version" in done.stdout
    assert lines[-3].startswith("round\tnew_tasks") and lines[-2].startswith("1\t")
    assert lines[-1] == "recipe 1 succeeded (rounds_done)"
    _wipe(settings.db_url)
