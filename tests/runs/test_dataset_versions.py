"""A user freezes a dataset version and gets the same data from it later, whatever the pool did
since; fine-tunes and evaluations say which version they used."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.cli import cli
from app.db import make_engine
from app.models import Dataset, Run, Task, TaskOrigin, TaskStatus
from app.settings import Settings, get_settings
from tests.factories import seed
from tests.runs.conftest import STUB_MODEL, wait_for_run


def _grow(api: TestClient, dataset: str, target: int) -> dict:  # type: ignore[type-arg]
    created = api.post(f"/v1/datasets/{dataset}/runs", json={"target": target, "model": STUB_MODEL})
    assert created.status_code == 201, created.text
    run = wait_for_run(api, created.json()["id"])
    assert run["status"] == "succeeded", run
    return run


def _exports(api: TestClient, version: int) -> dict[str, bytes]:
    out = {}
    for fmt in ("self_instruct", "openai_messages", "parquet"):
        response = api.get(
            "/v1/datasets/default/export", params={"version": version, "format": fmt}
        )
        assert response.status_code == 200, response.text
        out[fmt] = response.content
    return out


def _accepted_generated(api: TestClient) -> list[dict]:  # type: ignore[type-arg]
    params = {"origin": "generated", "status": "accepted", "limit": 100}
    return api.get("/v1/datasets/default/tasks", params=params).json()["data"]


@pytest.mark.both_databases
def test_a_versions_export_is_byte_identical_after_new_runs_rejections_and_edits(
    api: TestClient, db_url: str
) -> None:
    _grow(api, "default", 6)
    body = {"tag": "round-1", "include_seeds": True, "split": "all"}
    made = api.post("/v1/datasets/default/versions", json=body)
    assert made.status_code == 201, made.text
    version = made.json()
    before = _exports(api, version["id"])
    live_before = api.get("/v1/datasets/default/export", params={"split": "all"}).content

    # The pool moves on: a rejection, an edit, a task changed in place, a new run.
    generated = _accepted_generated(api)
    rejected, edited, changed = generated[0], generated[1], generated[2]
    review = api.patch(f"/v1/tasks/{rejected['id']}", json={"status": "rejected", "note": "meh"})
    assert review.status_code == 200, review.text
    edit = api.post(
        f"/v1/tasks/{edited['id']}/edits",
        json={"instruction": "Explain tides to a child.", "instances": [{"output": "The moon."}]},
    )
    assert edit.status_code == 201, edit.text
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        task = session.get(Task, changed["id"])
        assert task is not None
        task.instruction, task.rating = "Changed behind the version's back.", "D"
        session.add(task)
        session.commit()
    engine.dispose()
    _grow(api, "default", 3)

    assert api.get("/v1/datasets/default/export", params={"split": "all"}).content != live_before
    assert _exports(api, version["id"]) == before
    assert api.get(f"/v1/datasets/default/versions/{version['id']}").json() == version
    # The frozen content holds the tasks as they were, the rejected one included.
    lines = before["self_instruct"].decode().splitlines()
    assert len(lines) == version["tasks"]
    assert any(f"task_{rejected['id']}" in line for line in lines)
    assert not any("behind the version" in line for line in lines)

    # Equal content gives an equal hash; the changed pool a new one.
    again = api.post("/v1/datasets/default/versions", json=body).json()
    assert again["content_sha256"] != version["content_sha256"]
    twice = api.post("/v1/datasets/default/versions", json=body).json()
    assert (twice["id"], twice["content_sha256"]) == (again["id"] + 1, again["content_sha256"])
    listed = api.get("/v1/datasets/default/versions").json()
    assert [v["id"] for v in listed["data"]] == [twice["id"], again["id"], version["id"]]


def _pool_with_properties(settings: Settings) -> None:
    """Tasks of known origin, strategy, language and rating, written as runs and judges do."""
    engine = make_engine(settings)
    with Session(engine) as session:
        dataset = session.exec(select(Dataset).where(Dataset.name == "props")).one()
        runs = [Run(dataset_id=dataset.id, strategy=name) for name in ("alpaca", "evolve")]
        session.add_all(runs)
        session.flush()
        rows = [
            ("Summarise the news story in one line.", "en", "A", runs[0], TaskOrigin.generated),
            ("List three uses of vinegar at home.", "en", "B", runs[0], TaskOrigin.generated),
            ("把这句话翻译成英文。", "zh", "C", runs[1], TaskOrigin.evolved),
            ("Name a river that crosses Europe.", "en", None, runs[1], TaskOrigin.evolved),
        ]
        for instruction, language, rating, run, origin in rows:
            session.add(
                Task(
                    dataset_id=dataset.id,
                    instruction=instruction,
                    instances=[{"input": "", "output": "something"}],
                    is_classification=False,
                    origin=origin,
                    status=TaskStatus.accepted,
                    language=language,
                    rating=rating,
                    run_id=run.id,
                )
            )
        session.commit()
    engine.dispose()


def test_versions_count_by_origin_strategy_language_and_rating(
    api: TestClient, settings: Settings
) -> None:
    api.post("/v1/datasets", json={"name": "props"})
    api.post("/v1/datasets/props/seeds", json=[seed(id="s1"), seed(id="s2")])
    _pool_with_properties(settings)

    made = api.post("/v1/datasets/props/versions", json={"include_seeds": True})
    assert made.status_code == 201, made.text
    counts = made.json()["counts"]
    assert counts["origin"] == {"evolved": 2, "generated": 2, "seed": 2}
    assert counts["strategy"] == {"alpaca": 2, "evolve": 2, "none": 2}
    assert counts["language"] == {"en": 5, "zh": 1}
    assert counts["rating"] == {"A": 1, "B": 1, "C": 1, "not_rated": 3}
    assert made.json()["tasks"] == 6 and made.json()["selection"]["include_seeds"] is True

    rated = api.post("/v1/datasets/props/versions", json={"min_rating": "B"}).json()
    assert rated["counts"]["rating"] == {"A": 1, "B": 1} and rated["tasks"] == 2

    # Bad input: nothing selected, unknown versions, a selection beside a version.
    empty = api.post("/v1/datasets/props/versions", json={"min_rating": "A", "split": "held_out"})
    assert empty.status_code == 422
    assert "selects no task" in str(empty.json()["errors"]) and "split" in empty.json()["detail"]
    assert api.get("/v1/datasets/props/versions/999999").status_code == 404
    assert api.get("/v1/datasets/default/versions/" + str(rated["id"])).status_code == 404
    unknown = api.get("/v1/datasets/props/export", params={"version": 999999})
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "version"
    mixed = api.get("/v1/datasets/props/export", params={"version": rated["id"], "min_rating": "A"})
    assert mixed.status_code == 422 and mixed.json()["errors"][0]["field"] == "min_rating"
    bundle = api.get("/v1/datasets/props/bundle", params={"version": rated["id"]})
    assert bundle.status_code == 200, bundle.text
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        card = archive.read("props/README.md").decode()
    assert f"Version: {rated['id']}, " in card and rated["content_sha256"] in card


def test_fine_tunes_and_evaluations_record_their_version_and_hold_the_dataset(
    api: TestClient,
) -> None:
    api.post("/v1/datasets", json={"name": "tune", "held_out_share": 0.5})
    seeds = [
        seed(id=f"s{i}", instruction=f"Give tip {i} for keeping basil alive.") for i in range(12)
    ]
    api.post("/v1/datasets/tune/seeds", json=seeds)
    job_body = {"model": "SmolLM2-135M-Instruct", "dataset": "tune"}

    made_for_it = api.post("/v1/fine_tuning/jobs", json=job_body).json()
    version = api.get(f"/v1/datasets/tune/versions/{made_for_it['version']}").json()
    assert version["selection"] == {
        "include_seeds": True,
        "split": "train",
        "min_rating": None,
        "include_contaminated": False,
    }
    assert made_for_it["training_data"]["examples"] == version["counts"]["split"]["train"]
    # An unchanged pool: the next job trains on the same version.
    assert api.post("/v1/fine_tuning/jobs", json=job_body).json()["version"] == version["id"]

    everything = api.post("/v1/datasets/tune/versions", json={"split": "all", "include_seeds": 1})
    named = api.post(
        "/v1/fine_tuning/jobs", json={**job_body, "version": everything.json()["id"]}
    ).json()
    assert named["version"] == everything.json()["id"]
    # The held-out side of the named version stays out of training.
    assert named["training_data"]["examples"] == everything.json()["counts"]["split"]["train"]
    assert api.get(f"/v1/fine_tuning/jobs/{named['id']}").json()["version"] == named["version"]
    refused = api.post("/v1/fine_tuning/jobs", json={**job_body, "version": 999999})
    assert refused.status_code == 404 and refused.json()["errors"][0]["field"] == "version"

    evaluation = api.post(
        "/v1/evaluations", json={"models": [STUB_MODEL], "dataset": "tune", "limit": 3}
    ).json()
    reference = api.get(f"/v1/datasets/tune/versions/{evaluation['version']}").json()
    assert reference["selection"]["split"] == "held_out"
    assert set(reference["counts"]["split"]) == {"held_out"}
    named_eval = api.post(
        "/v1/evaluations",
        json={"models": [STUB_MODEL], "dataset": "tune", "version": everything.json()["id"]},
    ).json()
    assert named_eval["version"] == everything.json()["id"]
    assert named_eval["tasks"] == everything.json()["counts"]["split"]["held_out"]

    deleted = api.delete("/v1/datasets/tune")
    assert deleted.status_code == 409
    assert made_for_it["id"] in deleted.json()["detail"]
    for job in api.get("/v1/fine_tuning/jobs").json()["data"]:
        api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    for evaluation_id in (evaluation["id"], named_eval["id"]):
        api.post(f"/v1/evaluations/{evaluation_id}/cancel")
    assert api.delete("/v1/datasets/tune").status_code == 204


@pytest.fixture
def cli_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI in this process, reading the test's database."""
    monkeypatch.setenv("DATABASE_URL", settings.db_url)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_cli_creates_lists_and_exports_a_version(
    client: TestClient, cli_settings: Settings, tmp_path: Path
) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli, ["version", "create", "--include-seeds", "--split", "all", "--tag", "cli"]
    )
    assert created.exit_code == 0, created.output
    version_id = created.output.split()[1].rstrip(":")
    listed = runner.invoke(cli, ["version", "list"])
    assert listed.exit_code == 0 and f"{version_id}\tcli\t" in listed.output

    out = tmp_path / "v.jsonl"
    exported = runner.invoke(cli, ["export", "--version", version_id, "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    over_http = client.get("/v1/datasets/default/export", params={"version": version_id})
    assert out.read_bytes() == over_http.content and out.read_bytes()

    empty = runner.invoke(cli, ["version", "create", "--min-rating", "A"])
    assert empty.exit_code == 2 and "selects no task" in empty.output
