"""An ablation is refused whole, naming the field, before anything starts: unknown version,
model, judge or grouping, a grouping of fewer than 2 groups, or a cost above the limit
without `confirm`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.cli import cli
from app.db import make_engine
from app.main import create_app
from app.models import FineTuningJobRow, Recipe
from app.settings import BUNDLED_MODEL_ID, Settings, get_settings
from tests.ablations.conftest import ReferenceJudge, make_version
from tests.conftest import _wipe
from tests.judge.conftest import JUDGE_MODEL, judge_settings


@pytest.fixture
def api(
    settings_factory: Callable[..., Settings], reference_judge: ReferenceJudge
) -> Iterator[tuple[TestClient, Settings, int]]:
    settings = judge_settings(settings_factory, reference_judge, finetune_device="cpu")
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        version = make_version(client, make_engine(settings), honest=4, junk=3, held_out=2)
        yield client, settings, version
    _wipe(settings.db_url)


def _body(version_id: int, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "dataset": "pool",
        "version": version_id,
        "grouping": "strategy",
        "model": BUNDLED_MODEL_ID,
        "judge": JUDGE_MODEL,
    }
    return body | changes


def _nothing_started(settings: Settings) -> None:
    with Session(make_engine(settings)) as session:
        assert session.exec(select(Recipe)).all() == []
        assert session.exec(select(FineTuningJobRow)).all() == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": 999}, "version"),
        ({"dataset": "nope"}, "dataset"),
        ({"model": "no-such-model"}, "model"),
        ({"judge": "no-such-judge"}, "judge"),
        ({"grouping": "colour"}, "grouping"),
        ({"grouping": "origin"}, "grouping"),  # every task is generated: one group
        ({"finetune": {"version": 1}}, "finetune.version"),
        ({"finetune": {"max_steps": 0}}, "finetune"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    api: tuple[TestClient, Settings, int], changes: dict[str, object], field: str
) -> None:
    client, settings, version = api
    response = client.post("/v1/ablations", json=_body(version, **changes))
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["errors"]]
    assert any(f == field or f.endswith("." + field) or f.startswith(field) for f in fields), fields
    _nothing_started(settings)


def test_above_the_limit_it_needs_confirm_and_states_its_cost(
    api: tuple[TestClient, Settings, int],
) -> None:
    client, settings, version = api
    settings.ablation_confirm_above = 2  # two strategies: three fine-tunes
    refused = client.post("/v1/ablations", json=_body(version))
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["confirm"]
    detail = refused.json()["detail"]
    assert "3 fine-tunes" in detail and "judge requests" in detail
    _nothing_started(settings)
    accepted = client.post("/v1/ablations", json=_body(version, confirm=True))
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["cost"]["fine_tunes"] == 3 and body["cost"]["evaluations"] == 2
    assert sorted(g["group"] for g in body["groups"]) == ["alpaca", "self_instruct"]
    assert client.get(f"/v1/ablations/{body['id']}").json()["id"] == body["id"]
    assert [a["id"] for a in client.get("/v1/ablations").json()["data"]] == [body["id"]]
    cancelled = client.post(f"/v1/ablations/{body['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"


def test_the_cli_states_the_cost_and_needs_confirm(
    api: tuple[TestClient, Settings, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, settings, version = api
    monkeypatch.setenv("DATABASE_URL", settings.db_url)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(settings.data_dir))
    endpoints = [e.model_dump(mode="json") for e in settings.endpoints]
    monkeypatch.setenv("SELFINSTRUCT_ENDPOINTS", json.dumps(endpoints))
    monkeypatch.setenv("SELFINSTRUCT_ABLATION_CONFIRM_ABOVE", "2")
    get_settings.cache_clear()
    try:
        args = ["ablate", "--dataset", "pool", "--version", str(version)]
        args += ["--model", BUNDLED_MODEL_ID, "--judge", JUDGE_MODEL]
        refused = CliRunner().invoke(cli, [*args, "--grouping", "strategy"])
        assert refused.exit_code == 2, refused.output
        assert "3 fine-tunes" in refused.output and "confirm: needed" in refused.output
        unknown = CliRunner().invoke(cli, [*args, "--grouping", "colour"])
        assert unknown.exit_code == 2 and "grouping" in unknown.output
    finally:
        get_settings.cache_clear()
    _nothing_started(settings)


def test_a_recipe_ablation_step_needs_an_earlier_version_step(
    api: tuple[TestClient, Settings, int],
) -> None:
    client, settings, _ = api
    step = {"grouping": "strategy", "model": BUNDLED_MODEL_ID, "judge": JUDGE_MODEL}
    recipe = {
        "name": "which",
        "dataset": "pool",
        "steps": [{"name": "ablate", "kind": "ablation", "params": step}],
    }
    alone = client.post("/v1/recipes", json=recipe)
    assert alone.status_code == 422 and alone.json()["errors"][0]["field"] == "steps.0.kind"
    recipe["steps"] = [  # type: ignore[index]
        {"name": "freeze", "kind": "version", "params": {"split": "all"}},
        {"name": "ablate", "kind": "ablation", "params": step | {"judge": "nope"}},
    ]
    bad_judge = client.post("/v1/recipes", json=recipe)
    assert bad_judge.status_code == 422, bad_judge.text
    assert bad_judge.json()["errors"][0]["field"] == "steps.1.params.judge"
    _nothing_started(settings)
