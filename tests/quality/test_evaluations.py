"""Evaluations are jobs: queued at once, run by the embedded worker, every answer stored."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.main import create_app
from app.models import Evaluation, EvaluationSample, utcnow
from app.settings import Settings
from testbed.scripted_llm import Reply, chat_body
from tests.conftest import _wipe
from tests.quality.conftest import (
    JUDGE,
    MODEL_A,
    MODEL_B,
    PAIRWISE_HEADER,
    RATING_HEADER,
    JudgingStub,
    quality_settings,
    refused,
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
        assert result["answered"] == result["rouge_l_n"] == 7 and result["failed"] == 0
        assert result["ratings_n"] == 7 and result["judge_failed"] == 0
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


def _number(task: str) -> int:
    """The reference task's number (REFERENCES' `country number {i}`)."""
    match = re.search(r"number (\d+) ", task)
    assert match, task
    return int(match.group(1))


def _knowing(model: str, task: str) -> str:
    """Model A names the city, sometimes with padding; model B never knows."""
    i = _number(task)
    if model != MODEL_A:
        return "I do not know."
    return f"City {i}." if i % 2 == 0 else f"City {i}, I think, or one near it."


def test_a_judge_that_knows_better_wins_in_both_orders(
    api: TestClient, judging_stub: JudgingStub
) -> None:
    """The judge prefers the answer that names the city wherever it is shown, so model A wins
    every task in both orders: position bias cannot make the win, and a tie never appears."""
    _reference_set(api)
    judging_stub.answer_for = _knowing
    judging_stub.prefers = "City"
    created = api.post(
        "/v1/evaluations",
        json={"models": [MODEL_A, MODEL_B], "dataset": "bench", "judge": JUDGE, "limit": 4},
    ).json()
    done = wait_for_evaluation(api, created["id"])
    assert done["status"] == "succeeded", done
    (pair,) = done["pairwise"]
    assert (pair["compared"], pair["wins_a"], pair["wins_b"], pair["ties"]) == (4, 4, 0, 0)
    assert pair["win_rate_a"] == 1.0 and pair["ci_low"] > 0.5
    for sample in all_samples(api, created["id"]):
        verdict = sample["pairwise"][f"{MODEL_A}|{MODEL_B}"]
        # "first" names A's answer: shown first it won as answer 1, shown second as answer 2.
        assert (verdict["a_shown_first"], verdict["b_shown_first"]) == ("first", "first")
        assert verdict["winner"] == "a"
    shown = [r.body["prompt"] for r in judging_stub.received if r.body and "prompt" in r.body]
    asked = [p.rsplit("Task ", 1)[-1] for p in shown if p.startswith(PAIRWISE_HEADER)]
    # Both positions were asked about: A's answer once as answer 1, once as answer 2.
    assert sum("Answer 1: City" in p for p in asked) == sum("Answer 2: City" in p for p in asked)
    assert len(asked) == 8
    a, b = done["results"]
    assert a["ratings"] == {"A": 4, "B": 0, "C": 0, "D": 0} and a["mean_rouge_l"] > 0.5
    assert b["ratings"] == {"A": 0, "B": 0, "C": 4, "D": 0} and b["mean_rouge_l"] == 0.0


def test_an_unreadable_rating_is_unjudged_never_guessed(
    api: TestClient, judging_stub: JudgingStub
) -> None:
    _reference_set(api)
    judging_stub.rating_answer = "I would rather not say."
    created = api.post(
        "/v1/evaluations",
        json={"models": [MODEL_A], "dataset": "bench", "judge": JUDGE, "limit": 3},
    ).json()
    done = wait_for_evaluation(api, created["id"])
    assert done["status"] == "succeeded", done
    (result,) = done["results"]
    assert result["ratings"] == {"A": 0, "B": 0, "C": 0, "D": 0} and result["ratings_n"] == 0
    assert result["unjudged"] == 3 and result["judge_failed"] == 0


FAILING = {1, 4}  # tasks model A's endpoint refuses
JUDGE_FAILS_RATING = 6  # the task whose rating requests fail, for both models
JUDGE_FAILS_ORDER = 3  # the task whose comparison fails with A's answer shown first


def _failing_answers(model: str, task: str) -> str | Reply:
    if model == MODEL_A and _number(task) in FAILING:
        return refused()
    return _knowing(model, task)


def _failing_judge(prompt: str) -> bool:
    asked = prompt.rsplit("Task ", 1)[-1]
    if prompt.startswith(RATING_HEADER):
        return f"number {JUDGE_FAILS_RATING} " in asked
    return f"number {JUDGE_FAILS_ORDER} " in asked and "Answer 1: City" in asked


def _asked(stub: JudgingStub) -> Counter[str]:
    """Requests the stub received so far, by kind: each model's answers, ratings, comparisons."""
    kinds: Counter[str] = Counter()
    for request in stub.received:
        body = request.body or {}
        if "messages" in body:
            kinds[str(body.get("model"))] += 1
        elif str(body.get("prompt", "")).startswith(RATING_HEADER):
            kinds["rating"] += 1
        elif str(body.get("prompt", "")).startswith(PAIRWISE_HEADER):
            kinds["pairwise"] += 1
    return kinds


def test_failed_requests_are_left_out_of_every_figure_and_asked_again_on_resume(
    api: TestClient, settings_factory: Callable[..., Settings], judging_stub: JudgingStub
) -> None:
    """Model A's endpoint refuses two of eight tasks, and some judge requests fail. The figures
    are those of an evaluation that never failed, over the tasks answered; the failures are
    counted. Taken up again, only the failed requests are asked again, and then it is whole."""
    _reference_set(api)
    judging_stub.answer_for = _failing_answers
    judging_stub.fail_judge = _failing_judge
    judging_stub.prefers = "City"
    body = {"models": [MODEL_A, MODEL_B], "dataset": "bench", "judge": JUDGE, "limit": 8}
    failing = wait_for_evaluation(api, api.post("/v1/evaluations", json=body).json()["id"])
    assert failing["status"] == "succeeded", failing
    a, b = failing["results"]
    assert (a["answered"], a["failed"], a["rouge_l_n"]) == (6, 2, 6)
    assert (a["ratings_n"], a["judge_failed"], a["unjudged"]) == (5, 1, 0)
    assert a["ratings"] == {"A": 5, "B": 0, "C": 0, "D": 0}
    assert (b["answered"], b["failed"], b["rouge_l_n"]) == (8, 0, 8)
    assert (b["ratings_n"], b["judge_failed"]) == (7, 1)
    (pair,) = failing["pairwise"]
    assert (pair["compared"], pair["wins_a"], pair["failed"], pair["unanswered"]) == (5, 5, 1, 2)
    assert failing["progress"]["failed"] == 2 + 2 + 1
    samples = all_samples(api, failing["id"])
    for sample in samples:
        answer = sample["answers"][MODEL_A]
        if _number(sample["instruction"]) in FAILING:
            assert answer["failed"] and answer["rouge_l"] is None and "400" in answer["error"]
            assert answer["rating"] is None and not answer["judge_failed"]  # never asked
            assert f"{MODEL_A}|{MODEL_B}" not in sample["pairwise"]
        else:
            assert not answer["failed"] and answer["text"].startswith("City")

    # The same tasks A answered, asked of a model server that never fails.
    judging_stub.answer_for, judging_stub.fail_judge = _knowing, None
    answered = [s["task_id"] for s in samples if not s["answers"][MODEL_A]["failed"]]
    clean = wait_for_evaluation(
        api, api.post("/v1/evaluations", json={**body, "task_ids": answered}).json()["id"]
    )
    assert clean["status"] == "succeeded", clean
    clean_a = clean["results"][0]
    assert (clean_a["answered"], clean_a["failed"], clean_a["rouge_l_n"]) == (6, 0, 6)
    assert a["mean_rouge_l"] == pytest.approx(clean_a["mean_rouge_l"])
    assert a["mean_rouge_l"] > clean_a["mean_rouge_l"] * 6 / 8 + 0.05  # zeros would drag it
    assert clean_a["ratings"] == {"A": 6, "B": 0, "C": 0, "D": 0}  # A's share: 100% in both
    assert clean["pairwise"][0]["win_rate_a"] == pair["win_rate_a"] == 1.0

    # Taken up again (its worker "died" after the end): only the failed requests are asked.
    before = _asked(judging_stub)
    engine = make_engine(settings_factory())
    with Session(engine) as session:
        evaluation = session.get(Evaluation, failing["id"])
        assert evaluation is not None
        evaluation.status, evaluation.worker_id = "running", "dead-worker"
        evaluation.lease_expires_at = utcnow() - timedelta(seconds=1)
        session.add(evaluation)
        session.commit()
    engine.dispose()
    resumed = wait_for_evaluation(api, failing["id"])
    assert resumed["status"] == "succeeded", resumed
    asked = _asked(judging_stub) - before
    # A's two answers; ratings: those two, plus A's and B's failed one; comparisons: both
    # orders of the two new answers, plus the one failed order.
    assert asked == Counter({MODEL_A: 2, "rating": 4, "pairwise": 2 * 2 + 1}), asked
    a, b = resumed["results"]
    assert (a["answered"], a["failed"], a["ratings_n"], a["judge_failed"]) == (8, 0, 8, 0)
    assert (b["answered"], b["failed"], b["ratings_n"], b["judge_failed"]) == (8, 0, 8, 0)
    (pair,) = resumed["pairwise"]
    assert (pair["compared"], pair["wins_a"], pair["failed"], pair["unanswered"]) == (8, 8, 0, 0)
    progress = resumed["progress"]
    assert progress["failed"] == 0 and progress["answers"] == progress["answers_total"] == 16


@pytest.mark.both_databases
def test_cancel_stops_an_evaluation_and_keeps_what_it_stored(
    api: TestClient, judging_stub: JudgingStub
) -> None:
    """The first chunk of answers is stored; the last two answers are slow and come back after
    the cancel: the stored chunk stays, and the late answers are never stored."""
    _reference_set(api)

    def slow_tail(model: str, task: str) -> str | Reply:
        text = _knowing(model, task)
        return Reply(body=chat_body(text), delay_s=2.0) if _number(task) >= 8 else text

    judging_stub.answer_for = slow_tail
    created = api.post(
        "/v1/evaluations", json={"models": [MODEL_A], "dataset": "bench", "limit": 10}
    ).json()
    deadline = time.monotonic() + 60
    while api.get(f"/v1/evaluations/{created['id']}").json()["progress"]["answers"] < 8:
        assert time.monotonic() < deadline, "the first chunk was never stored"
        time.sleep(0.05)
    stored_before = [s["answers"] for s in all_samples(api, created["id"], limit=50)]
    assert sum(len(a) for a in stored_before) == 8
    cancelled = api.post(f"/v1/evaluations/{created['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/v1/evaluations/{created['id']}/cancel").json()
    assert again["status"] == "cancelled"  # idempotent
    time.sleep(2.5)  # the slow answers have come back by now
    after = api.get(f"/v1/evaluations/{created['id']}").json()
    assert after["status"] == "cancelled" and after["finished_at"] is not None
    assert after["progress"]["answers"] == 8 and after["results"][0]["answered"] == 8
    assert [s["answers"] for s in all_samples(api, created["id"], limit=50)] == stored_before
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
