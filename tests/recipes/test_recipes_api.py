"""Recipes through the HTTP API on the scripted model server: a recipe runs its steps as jobs
of their own kinds, and a bad recipe is refused whole, naming the step and field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import yaml
from fastapi.testclient import TestClient

from tests.recipes.conftest import SMALL, wait_for_recipe


def test_a_yaml_recipe_runs_its_steps_as_jobs_and_records_them(recipe_api: TestClient) -> None:
    posted = recipe_api.post(
        "/v1/recipes",
        content=yaml.safe_dump(SMALL),
        headers={"content-type": "application/yaml"},
    )
    assert posted.status_code == 202, posted.text
    done = wait_for_recipe(recipe_api, posted.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["stop_reason"] == "rounds_done"
    jobs = {s["name"]: s["job"] for s in done["steps"]}
    assert [jobs[n]["kind"] for n in ("gen", "rate", "freeze")] == ["run", "judgement", "version"]
    assert all(j["status"] == "succeeded" for j in jobs.values()), jobs
    run = recipe_api.get(f"/v1/runs/{jobs['gen']['id']}").json()
    assert run["status"] == "succeeded" and run["counters"]["accepted"] >= 3
    judged = recipe_api.get(f"/v1/judgements/{jobs['rate']['id']}").json()
    assert judged["progress"]["done"] == judged["progress"]["total"] > 0
    assert done["versions"] == [jobs["freeze"]["id"]]
    version = recipe_api.get(f"/v1/datasets/pool/versions/{jobs['freeze']['id']}").json()
    assert version["tag"] == "grown" and version["tasks"] >= 3
    (row,) = done["table"]
    assert row["round"] == 1 and row["runs"] == [run["id"]] and row["new_tasks"] >= 3
    assert row["requests"] >= run["counters"]["requests"] + judged["progress"]["requests"]
    assert recipe_api.get("/v1/recipes").json()["count"] == 1


def _refused(client: TestClient, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    recipe = copy.deepcopy(SMALL)
    change(recipe)
    answer = client.post("/v1/recipes", json=recipe)
    assert answer.status_code == 422, answer.text
    assert client.get("/v1/recipes").json()["count"] == 0  # nothing started
    assert client.get("/v1/datasets/pool/runs").json()["count"] == 0
    body: dict[str, Any] = answer.json()
    return body


def _field(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["field"])


def test_bad_recipes_are_refused_whole_naming_the_step_and_field(recipe_api: TestClient) -> None:
    def kind(r: dict[str, Any]) -> None:
        r["steps"][1]["kind"] = "jugde"

    body = _refused(recipe_api, kind)
    assert _field(body) == "steps.1.kind" and "'rate'" in body["detail"]

    def model(r: dict[str, Any]) -> None:
        r["steps"][0]["params"]["model"] = "no-such-model"

    body = _refused(recipe_api, model)
    assert _field(body) == "steps.0.params.model" and "'gen'" in body["detail"]

    def dataset(r: dict[str, Any]) -> None:
        r["dataset"] = "nowhere"

    assert _field(_refused(recipe_api, dataset)) == "dataset"

    def cycle(r: dict[str, Any]) -> None:
        r["steps"].insert(
            0,
            {
                "name": "tune",
                "kind": "finetune",
                "uses": "freeze",
                "params": {"model": "SmolLM2-135M-Instruct"},
            },
        )

    body = _refused(recipe_api, cycle)
    assert _field(body) == "steps.0.uses" and "cycle" in body["detail"]

    def unknown_step(r: dict[str, Any]) -> None:
        r["steps"].append(
            {
                "name": "tune",
                "kind": "finetune",
                "uses": "frozen",
                "params": {"model": "SmolLM2-135M-Instruct"},
            }
        )

    assert _field(_refused(recipe_api, unknown_step)) == "steps.3.uses"

    def gpu(r: dict[str, Any]) -> None:
        r["steps"].append(
            {
                "name": "tune",
                "kind": "finetune",
                "params": {"model": "SmolLM2-135M-Instruct", "devices": 2},
            }
        )

    body = _refused(recipe_api, gpu)
    assert _field(body) == "steps.3.params.devices" and "GPU" in body["detail"]

    def bad_param(r: dict[str, Any]) -> None:
        r["steps"][0]["params"]["target"] = -1

    assert _field(_refused(recipe_api, bad_param)) == "steps.0.params.target"

    answer = recipe_api.post(
        "/v1/recipes", content=b"steps: [", headers={"content-type": "application/yaml"}
    )
    assert answer.status_code == 422 and "YAML" in answer.json()["detail"]


def test_cancel_stops_the_recipe_and_its_running_child(recipe_api: TestClient) -> None:
    recipe = copy.deepcopy(SMALL)
    recipe["steps"][0]["params"]["target"] = 100000
    recipe["steps"][0]["params"]["caps"] = {"max_requests": 100000}
    created = recipe_api.post("/v1/recipes", json=recipe).json()
    import time

    for _ in range(200):
        body = recipe_api.get(f"/v1/recipes/{created['id']}").json()
        if body["steps"][0]["job"] and body["steps"][0]["job"]["status"] == "running":
            break
        time.sleep(0.05)
    cancelled = recipe_api.post(f"/v1/recipes/{created['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["steps"][0]["job"]["status"] == "cancelled"
    assert cancelled["steps"][1]["job"] is None
