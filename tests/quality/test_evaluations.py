"""Evaluations are jobs: queued at once, run by the embedded worker, every answer stored."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.main import create_app
from app.models import Evaluation, EvaluationSample, utcnow
from app.settings import Settings
from tests.conftest import _wipe
from tests.quality.conftest import (
    JUDGE,
    MODEL_A,
    MODEL_B,
    JudgingStub,
    quality_settings,
    seed,
)
from tests.quality.helpers import all_samples, wait_for_evaluation

REFERENCES = [
    seed(f"r{i}", f"Name the capital city of country number {i} in the list.", f"City {i}.")
    for i in range(10)
]


def _reference_set(api: TestClient, name: str = "bench") -> None:
    assert api.post("/v1/datasets", json={"name": name}).status_code == 201
    assert api.post(f"/v1/datasets/{name}/seeds", json=REFERENCES).status_code == 200


def test_evaluation_runs_in_the_background_with_ratings_and_a_bias_free_win_rate(
    api: TestClient,
) -> None:
    """A reference set imported as seeds serves as the evaluation set (it keeps no held-out
    share, so all of it is read). The scripted judge always prefers the answer shown first: judged
    in both orders, every comparison is a tie and the win rate is exactly one half."""
    _reference_set(api)
    created = api.post(
        "/v1/evaluations",
        json={"models": [MODEL_A, MODEL_B], "dataset": "bench", "judge": JUDGE, "limit": 7},
    )
    assert created.status_code == 202, created.text
    queued = created.json()
    assert queued["status"] in {"queued", "running"} and queued["tasks"] == 7
    assert queued["split"] == "all" and queued["progress"]["answers_total"] == 14

    done = wait_for_evaluation(api, queued["id"])
    assert done["status"] == "succeeded", done
    progress = done["progress"]
    assert progress["answers"] == progress["answers_total"] == 14
    assert progress["ratings"] == progress["ratings_total"] == 14
    assert progress["comparisons"] == progress["comparisons_total"] == 7
    for result in done["results"]:
        assert result["answered"] == 7 and result["failed"] == 0
        assert 0.0 <= result["mean_rouge_l"] <= 1.0
        assert result["ratings"] == {"A": 7, "B": 0, "C": 0, "D": 0}
        assert result["unjudged"] == 0
    (pair,) = done["pairwise"]
    assert (pair["model_a"], pair["model_b"]) == (MODEL_A, MODEL_B)
    assert (pair["compared"], pair["wins_a"], pair["wins_b"], pair["ties"]) == (7, 0, 0, 7)
    assert pair["win_rate_a"] == 0.5
    assert pair["ci_low"] < 0.5 < pair["ci_high"] and pair["interval"] == "wilson_95"

    samples = all_samples(api, queued["id"])
    assert [s["position"] for s in samples] == list(range(7))
    for sample, reference in zip(samples, REFERENCES, strict=False):
        assert sample["reference"] == reference["instances"][0]["output"]
        assert set(sample["answers"]) == {MODEL_A, MODEL_B}
        for answer in sample["answers"].values():
            assert answer["text"] and answer["rating"] == "A" and answer["rationale"]
        verdict = sample["pairwise"][f"{MODEL_A}|{MODEL_B}"]
        # The first order favoured A (shown first), the swapped one B: the bias cancels.
        assert (verdict["a_shown_first"], verdict["b_shown_first"]) == ("first", "second")
        assert verdict["winner"] == "tie"

    listed = api.get("/v1/evaluations").json()
    assert [e["id"] for e in listed["data"]] == [queued["id"]]
    with api.stream("GET", f"/v1/evaluations/{queued['id']}/events") as stream:
        events = [line[7:] for line in stream.iter_lines() if line.startswith("event: ")]
    assert events[0] == "status" and "progress" in events and events[-1] == "end"


def test_a_judge_that_knows_better_wins_in_both_orders(
    api: TestClient, judging_stub: JudgingStub
) -> None:
    """Unparseable ratings are unjudged, never guessed."""
    _reference_set(api)
    judging_stub.rating_answer = "I would rather not say."
    judging_stub.pairwise_answer = '{"winner": "tie", "rationale": "Both the same."}'
    created = api.post(
        "/v1/evaluations",
        json={"models": [MODEL_A, MODEL_B], "dataset": "bench", "judge": JUDGE, "limit": 3},
    ).json()
    done = wait_for_evaluation(api, created["id"])
    assert done["status"] == "succeeded", done
    for result in done["results"]:
        assert result["ratings"] == {"A": 0, "B": 0, "C": 0, "D": 0}
        assert result["unjudged"] == 3
    assert done["pairwise"][0]["ties"] == 3


@pytest.mark.both_databases
def test_cancel_stops_an_evaluation_and_keeps_what_it_stored(
    api: TestClient, judging_stub: JudgingStub
) -> None:
    _reference_set(api)
    judging_stub.delay_s = 0.3
    created = api.post(
        "/v1/evaluations", json={"models": [MODEL_A], "dataset": "bench", "limit": 10}
    ).json()
    cancelled = api.post(f"/v1/evaluations/{created['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/v1/evaluations/{created['id']}/cancel").json()
    assert again["status"] == "cancelled"  # idempotent
    time.sleep(1.5)
    after = api.get(f"/v1/evaluations/{created['id']}").json()
    assert after["status"] == "cancelled" and after["finished_at"] is not None
    stored = sum(len(s["answers"]) for s in all_samples(api, created["id"], limit=50))
    assert stored == after["progress"]["answers"] < 10
    with api.stream("GET", f"/v1/evaluations/{created['id']}/events") as stream:
        data = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert data[-1]["kind"] == "end" and data[-1]["data"]["status"] == "cancelled"


def test_bad_evaluations_name_the_field_and_queue_nothing(api: TestClient) -> None:
    _reference_set(api)
    assert api.post("/v1/datasets", json={"name": "empty"}).status_code == 201
    no_output = [{**seed("x", "Say nothing at all here."), "instances": []}]
    assert api.post("/v1/datasets/empty/seeds", json=no_output).status_code == 200
    cases = [
        ({"models": ["no-such-model"], "dataset": "bench"}, 404, "models.0"),
        ({"models": [MODEL_A], "dataset": "bench", "judge": "no-judge"}, 404, "judge"),
        ({"models": [MODEL_A], "dataset": "nowhere"}, 404, "dataset"),
        ({"models": [MODEL_A], "dataset": "empty"}, 422, "dataset"),
        ({"models": [MODEL_A], "dataset": "bench", "split": "held_out"}, 422, "dataset"),
        ({"models": [MODEL_A, MODEL_A], "dataset": "bench"}, 422, "models"),
    ]
    for body, status, field in cases:
        response = api.post("/v1/evaluations", json=body)
        assert response.status_code == status, (body, response.text)
        assert field in {e["field"] for e in response.json()["errors"]}, response.json()
    assert api.get("/v1/evaluations").json()["count"] == 0


@pytest.mark.both_databases
def test_a_dead_workers_evaluation_resumes_without_asking_stored_answers_again(
    settings_factory: Callable[..., Settings], judging_stub: JudgingStub
) -> None:
    """A worker died (kill -9) after storing the first answers: its lease runs out, the next
    worker takes the evaluation over and asks the model only for the rest."""
    settings = quality_settings(settings_factory, judging_stub)
    _wipe(settings.db_url)
    idle = settings.model_copy(update={"embedded_worker": False})
    with TestClient(create_app(idle)) as api:
        _reference_set(api)
        created = api.post(
            "/v1/evaluations", json={"models": [MODEL_A], "dataset": "bench", "limit": 6}
        ).json()
    engine = make_engine(settings)
    with Session(engine) as session:  # what the dead worker had done
        evaluation = session.get(Evaluation, created["id"])
        assert evaluation is not None
        evaluation.status, evaluation.worker_id = "running", "dead-worker"
        evaluation.lease_expires_at = utcnow() - timedelta(seconds=1)
        session.add(evaluation)
        for sample in session.exec(select(EvaluationSample).where(EvaluationSample.position < 2)):
            sample.answers = {MODEL_A: {"text": "stored", "failed": False, "rouge_l": 0.0}}
            session.add(sample)
        session.commit()
    engine.dispose()
    asked_before = len(judging_stub.requests_to("/v1/chat/completions"))
    with TestClient(create_app(settings)) as api:
        done = wait_for_evaluation(api, created["id"])
        assert done["status"] == "succeeded", done
        samples = all_samples(api, created["id"])
    assert len(judging_stub.requests_to("/v1/chat/completions")) - asked_before == 4
    assert [s["answers"][MODEL_A]["text"] == "stored" for s in samples] == [True] * 2 + [False] * 4
    assert done["results"][0]["answered"] == 6
    _wipe(settings.db_url)
