"""Judging through the API with a scripted judge: a run that rejects low-rated candidates,
judgement jobs (progress, re-judging, cancel), ratings in the task browser, stats and exports,
and bad input refused with nothing queued. On SQLite and PostgreSQL."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import _wipe
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, judge_settings, scripted_rating
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows, wait_for_run


def _all_tasks(api: TestClient, dataset: str = "default", **params: Any) -> list[dict[str, Any]]:
    tasks, after = [], None
    while True:
        page = api.get(
            f"/v1/datasets/{dataset}/tasks",
            params={**params, "limit": 1000, **({"after": after} if after else {})},
        ).json()
        tasks += page["data"]
        if not page["has_more"]:
            return tasks
        after = page["next_cursor"]


def wait_for_job(api: TestClient, job_id: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get(f"/v1/judgements/{job_id}").json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(0.1)
    raise AssertionError(f"judgement job {job_id} did not finish in {timeout_s}s: {job}")


def test_a_run_with_a_judge_rejects_low_rated_candidates(
    judge_api: TestClient, judge_stub: JudgeStub, db_url: str
) -> None:
    body = {"target": 6, "model": STUB_MODEL, "judge": {"model": JUDGE_MODEL, "min_rating": "B"}}
    run = wait_for_run(
        judge_api, judge_api.post("/v1/datasets/default/runs", json=body).json()["id"]
    )
    assert run["status"] == "succeeded", run
    assert run["counters"]["accepted"] == 6
    assert_run_matches_rows(db_url, run["id"])
    rows = _all_tasks(judge_api, run_id=run["id"])  # accepted and rejected
    judged = [r for r in rows if r["judgement"] is not None]
    assert judged, "no candidate was judged"
    for row in judged:
        expected = scripted_rating(row["instruction"])
        assert row["rating"] == expected
        assert row["judgement"]["judge_model"] == JUDGE_MODEL
        language = "zh" if row["language"] == "zh" else "en"
        assert row["judgement"]["prompt_version"] == f"judge-v1:{language}"
        assert row["judgement"]["run_id"] == run["id"]
        assert row["judgement"]["judgement_job_id"] is None
        if expected in ("A", "B"):
            assert row["status"] == "accepted", row
        elif expected is None:
            assert (row["status"], row["rejection_reason"]) == ("rejected", "unjudged")
        else:
            assert (row["status"], row["rejection_reason"]) == ("rejected", "judged_low")
            assert f"scripted {expected} rationale." in row["rejection_detail"]
    assert all(r["rating"] in ("A", "B") for r in rows if r["status"] == "accepted")
    counters = run["counters"]
    ratings = Counter(r["rating"] for r in judged if r["rating"])
    assert counters["ratings"] == dict(ratings)
    assert counters["judged"] == sum(ratings.values())
    assert counters["unjudged"] == sum(1 for r in judged if r["rating"] is None)
    assert counters["rejected_by_reason"].get("judged_low", 0) == ratings["C"] + ratings["D"]
    # judge requests are the run's requests too, and carry the answer's JSON schema
    posts = judge_stub.requests_to("/completions")
    judge_posts = [p for p in posts if "response_format" in (p.body or {})]
    assert len(judge_posts) == len(judged)
    assert counters["requests"] == len(posts)
    stats = judge_api.get("/v1/datasets/default/stats").json()["ratings"]
    assert stats["by_run"][str(run["id"])] == {k: v for k, v in ratings.items() if k in "AB"}


def test_bad_judge_input_is_refused_and_nothing_is_queued(judge_api: TestClient) -> None:
    bad_model = judge_api.post(
        "/v1/datasets/default/runs",
        json={"target": 2, "model": STUB_MODEL, "judge": {"model": "no-such-model"}},
    )
    assert bad_model.status_code == 404  # as an unknown run model: the id names nothing
    assert [e["field"] for e in bad_model.json()["errors"]] == ["judge.model"]
    bad_level = judge_api.post(
        "/v1/datasets/default/runs",
        json={"target": 2, "model": STUB_MODEL, "judge": {"model": JUDGE_MODEL, "min_rating": "E"}},
    )
    assert bad_level.status_code == 422
    assert "judge.min_rating" in [e["field"] for e in bad_level.json()["errors"]]
    assert judge_api.get("/v1/datasets/default/runs").json()["count"] == 0
    for body, field, code in [
        ({"model": "no-such-model"}, "model", 404),
        ({"model": JUDGE_MODEL, "run_id": 999}, "run_id", 404),
        ({"model": JUDGE_MODEL, "select": "some"}, "select", 422),
        ({"model": JUDGE_MODEL, "origin": "alien"}, "origin", 422),
    ]:
        answer = judge_api.post("/v1/datasets/default/judgements", json=body)
        assert answer.status_code == code, (body, answer.json())
        assert field in [e["field"] for e in answer.json()["errors"]], answer.json()
    assert (
        judge_api.post("/v1/datasets/nope/judgements", json={"model": JUDGE_MODEL}).status_code
        == 404
    )
    assert judge_api.get("/v1/datasets/default/judgements").json()["count"] == 0
    assert judge_api.get("/v1/datasets/default/runs").json()["count"] == 0
    assert judge_api.get("/v1/judgements/12345").status_code == 404


def test_a_judgement_job_rates_tasks_that_then_filter_and_export_by_rating(
    judge_api: TestClient, judge_stub: JudgeStub
) -> None:
    seeds = _all_tasks(judge_api, origin="seed")
    assert len(seeds) > 10
    created = judge_api.post(
        "/v1/datasets/default/judgements", json={"model": JUDGE_MODEL, "origin": "seed"}
    )
    assert created.status_code == 202, created.json()
    assert created.json()["progress"]["total"] == len(seeds)
    job = wait_for_job(judge_api, created.json()["id"])
    assert job["status"] == "succeeded", (job["error"], job["stop_reason"])
    progress = job["progress"]
    expected = {s["id"]: scripted_rating(s["instruction"]) for s in seeds}
    levels = Counter(r for r in expected.values() if r)
    assert progress["done"] == progress["total"] == len(seeds)
    assert progress["ratings"] == dict(levels)
    assert progress["unjudged"] == sum(1 for r in expected.values() if r is None)
    assert progress["requests"] == len(seeds)
    tasks = {t["id"]: t for t in _all_tasks(judge_api, origin="seed")}
    for task_id, rating in expected.items():
        task = tasks[task_id]
        assert task["rating"] == rating
        language = "zh" if task["language"] == "zh" else "en"
        assert task["judgement"]["prompt_version"] == f"judge-v1:{language}"
        assert task["judgement"]["judgement_job_id"] == job["id"]
        assert task["judgement"]["run_id"] is None  # a job is not a run
    # the task browser's filters
    rated_a = _all_tasks(judge_api, rating="A")
    assert sorted(t["id"] for t in rated_a) == sorted(i for i, r in expected.items() if r == "A")
    a_or_d = _all_tasks(judge_api, rating=["A", "D"])
    assert {t["rating"] for t in a_or_d} <= {"A", "D"} and len(a_or_d) == levels["A"] + levels["D"]
    assert _all_tasks(judge_api, origin="seed", judged="false") == []
    assert len(_all_tasks(judge_api, origin="seed", judged="true")) == len(seeds)
    # stats: the distribution overall and per origin
    stats = judge_api.get("/v1/datasets/default/stats").json()["ratings"]
    unjudged = progress["unjudged"]
    assert stats["by_origin"]["seed"] == {
        **dict(levels),
        **({"unjudged": unjudged} if unjudged else {}),
    }
    # exports: only tasks rated B or better, JSONL and Parquet
    at_least_b = {s["instruction"] for s in seeds if expected[s["id"]] in ("A", "B")}
    jsonl = judge_api.get(
        "/v1/datasets/default/export",
        params={"include_seeds": "true", "min_rating": "B", "split": "all"},
    )
    assert jsonl.status_code == 200
    exported = {line.split('"instruction":')[1] for line in jsonl.text.splitlines() if line}
    assert len(exported) == len(at_least_b)
    parquet = judge_api.get(
        "/v1/datasets/default/export",
        params={"include_seeds": "true", "min_rating": "B", "split": "all", "format": "parquet"},
    )
    table = pq.read_table(io.BytesIO(parquet.content))
    assert set(table.column("instruction").to_pylist()) == at_least_b
    bad = judge_api.get("/v1/datasets/default/export", params={"min_rating": "F"})
    assert bad.status_code == 422
    # a second job over the unjudged ones only: new judgements, the latest counts
    before = {t["id"]: t["judgement"]["id"] for t in tasks.values()}
    calls = len(judge_stub.judged)
    again = wait_for_job(
        judge_api,
        judge_api.post(
            "/v1/datasets/default/judgements", json={"model": JUDGE_MODEL, "select": "unjudged"}
        ).json()["id"],
    )
    assert again["status"] == "succeeded"
    assert again["progress"]["total"] == unjudged == len(judge_stub.judged) - calls
    after = {t["id"]: t for t in _all_tasks(judge_api, origin="seed")}
    changed = [i for i in before if after[i]["judgement"]["id"] != before[i]]
    assert sorted(changed) == sorted(i for i, r in expected.items() if r is None)
    listed = judge_api.get("/v1/datasets/default/judgements").json()
    assert [j["id"] for j in listed["data"]] == [again["id"], job["id"]]


@pytest.mark.both_databases
def test_a_judgement_job_can_be_cancelled_and_keeps_what_it_stored(
    settings_factory: Callable[..., Settings], judge_stub: JudgeStub
) -> None:
    # Two judge requests at a time, 0.4 s each: the 48 starter tasks take about 10 s, so the
    # cancel lands mid-way however fast the machine is.
    judge_stub.delay_s = 0.4
    settings = judge_settings(settings_factory, judge_stub, judge_concurrency=2)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as judge_api:
        _cancel_mid_way(judge_api)
    _wipe(settings.db_url)


def _cancel_mid_way(judge_api: TestClient) -> None:
    job_id = judge_api.post("/v1/datasets/default/judgements", json={"model": JUDGE_MODEL}).json()[
        "id"
    ]
    deadline = time.monotonic() + 30
    while judge_api.get(f"/v1/judgements/{job_id}").json()["progress"]["done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = judge_api.post(f"/v1/judgements/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(1.5)  # anything still in flight would have been stored by now
    job = judge_api.get(f"/v1/judgements/{job_id}").json()
    assert job["status"] == "cancelled"
    assert 1 <= job["progress"]["done"] < job["progress"]["total"]
    stored = [t for t in _all_tasks(judge_api, judged="true")]
    assert len(stored) == job["progress"]["done"]
    assert judge_api.post(f"/v1/judgements/{job_id}/cancel").json()["status"] == "cancelled"
