"""Judgement jobs are a kind of job of their own: not runs (not listed, not counted, not on the
dataset card), with their own event stream, a fenced finish, and a failure that names the error
when judging a task goes wrong."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.leases import claim
from app.main import create_app
from app.models import JudgementEvent, JudgementJob, RunStatus, Task
from app.pipeline.judgement_job import finish_job
from app.settings import Settings
from tests.conftest import _wipe
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, judge_settings
from tests.judge.test_judge_api import wait_for_job
from tests.runs.conftest import STUB_MODEL


def _sse(text: str) -> list[dict[str, Any]]:
    """The events of a finished server-sent stream: id, event name and JSON data."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append(
                {"id": int(fields["id"]), "event": fields["event"], **json.loads(fields["data"])}
            )
    return events


def _card_body(api: TestClient, dataset: str) -> str:
    bundle = api.get(f"/v1/datasets/{dataset}/bundle")
    assert bundle.status_code == 200, bundle.text
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        return archive.read(f"{dataset}/README.md").decode("utf-8")


def test_a_judgement_job_is_not_a_run_nor_counted_against_the_active_run_limit(
    settings_factory: Callable[..., Settings], judge_stub: JudgeStub
) -> None:
    """No worker: the job stays queued (active) while runs are created against a limit of 1."""
    settings = judge_settings(
        settings_factory, judge_stub, embedded_worker=False, max_active_runs_per_dataset=1
    )
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        job = api.post("/v1/datasets/default/judgements", json={"model": JUDGE_MODEL}).json()
        assert job["status"] == "queued"
        assert api.get("/v1/datasets/default/runs").json() == {"data": [], "count": 0}
        assert "No generation runs are recorded for this dataset." in _card_body(api, "default")
        run = api.post("/v1/datasets/default/runs", json={"target": 2, "model": STUB_MODEL})
        assert run.status_code == 201, run.text  # the queued job took no place
        listed = api.get("/v1/datasets/default/runs").json()
        assert [r["id"] for r in listed["data"]] == [run.json()["id"]]
        assert {r["strategy"] for r in listed["data"]} == {"self_instruct"}
        refused = api.post("/v1/datasets/default/runs", json={"target": 2, "model": STUB_MODEL})
        assert refused.status_code == 409  # ...and the limit still counts runs
        assert "already has 1 queued or running runs" in refused.json()["detail"]
        card = _card_body(api, "default")
        assert f"| {run.json()['id']} | self_instruct |" in card and "| judgement |" not in card
        assert api.get(f"/v1/judgements/{job['id']}").json()["status"] == "queued"
    _wipe(settings.db_url)


def test_the_events_route_streams_a_judgement_jobs_progress_to_its_end(
    judge_api: TestClient, db_url: str
) -> None:
    created = judge_api.post(
        "/v1/datasets/default/judgements", json={"model": JUDGE_MODEL, "origin": "seed"}
    ).json()
    total = created["progress"]["total"]
    assert total > 10
    stream = judge_api.get(f"/v1/judgements/{created['id']}/events", params={"poll_seconds": 0.05})
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = _sse(stream.text)  # the stream ends when the job does
    job = judge_api.get(f"/v1/judgements/{created['id']}").json()
    assert job["status"] == "succeeded"
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["status", "status"] and kinds[-1] == "end"
    assert [e["data"]["status"] for e in events[:2]] == ["queued", "running"]
    assert all(e["judgement_job_id"] == created["id"] for e in events)
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert progress, kinds
    done = [p["done"] for p in progress]
    assert done == sorted(done) and done[-1] == total
    assert progress[-1] == job["progress"]  # the stream and GET say the same
    end = events[-1]["data"]
    assert (end["status"], end["stop_reason"], end["error"]) == ("succeeded", "done", None)
    assert end["done"] == end["total"] == total
    # A client that reconnects with Last-Event-ID gets only what came after.
    middle = events[len(events) // 2]["id"]
    again = _sse(
        judge_api.get(
            f"/v1/judgements/{created['id']}/events", headers={"Last-Event-ID": str(middle)}
        ).text
    )
    assert [e["id"] for e in again] == [e["id"] for e in events if e["id"] > middle]
    # The lease's progress mark was written with the judgements.
    engine = make_engine(Settings(database_url=db_url))
    try:
        with Session(engine) as session:
            row = session.get(JudgementJob, created["id"])
            assert row is not None and row.progressed and row.done == total
    finally:
        engine.dispose()
    assert judge_api.get("/v1/judgements/987654/events").status_code == 404


def test_a_task_the_judge_prompt_cannot_be_built_from_fails_the_job_naming_the_error(
    judge_api: TestClient, db_url: str
) -> None:
    """A seed row whose instance input is a number (written around the API and the ORM, which
    would refuse it) breaks the prompt builder. The job must fail and say so, not succeed
    without that task."""
    engine = make_engine(Settings(database_url=db_url))
    try:
        with engine.begin() as conn:
            broken = conn.execute(
                sa.select(sa.func.max(Task.id)).where(Task.origin == "seed")  # type: ignore[arg-type]
            ).scalar_one()
            conn.execute(
                sa.update(Task)
                .where(Task.id == broken)  # type: ignore[arg-type]
                .values(instances=[{"input": 5, "output": "five"}])
            )
    finally:
        engine.dispose()
    created = judge_api.post(
        "/v1/datasets/default/judgements", json={"model": JUDGE_MODEL, "origin": "seed"}
    ).json()
    job = wait_for_job(judge_api, created["id"])
    assert job["status"] == "failed", job
    assert job["stop_reason"] == "error"
    assert job["error"].startswith("AttributeError: "), job["error"]
    assert "strip" in job["error"]
    assert job["progress"]["done"] < job["progress"]["total"]
    events = _sse(judge_api.get(f"/v1/judgements/{created['id']}/events").text)
    assert events[-1]["event"] == "end"
    assert events[-1]["data"]["error"] == job["error"]


@pytest.mark.both_databases
def test_a_stale_holders_finish_of_a_judgement_job_is_refused_and_the_holders_lands_once(
    settings_factory: Callable[..., Settings],
    judge_stub: JudgeStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = judge_settings(settings_factory, judge_stub, embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        job_id = api.post("/v1/datasets/default/judgements", json={"model": JUDGE_MODEL}).json()[
            "id"
        ]
    engine = make_engine(settings)
    try:
        stale = claim(
            engine, JudgementJob, worker_id="worker-a", lease_seconds=-1, attempts=3, row_id=job_id
        )
        assert stale is not None and stale.row_id == job_id
        # worker-a stalls past its lease; worker-b takes the job over
        holder = claim(engine, JudgementJob, worker_id="worker-b", lease_seconds=30, attempts=3)
        assert holder is not None and holder.epoch == stale.epoch + 1
        with caplog.at_level(logging.WARNING, logger="selfinstruct.judging"):
            late = finish_job(
                engine,
                job_id=job_id,
                status=RunStatus.failed,
                stop_reason="error",
                error="worker-a's late failure",
                lease=stale,
            )
        assert late is False
        assert any("worker-a is refused" in r.getMessage() for r in caplog.records)
        with Session(engine) as session:
            job = session.exec(select(JudgementJob).where(JudgementJob.id == job_id)).one()
            assert job.status == RunStatus.running and job.error is None
        assert finish_job(
            engine,
            job_id=job_id,
            status=RunStatus.succeeded,
            stop_reason="done",
            lease=holder,
        )
        assert not finish_job(  # ended once: a second finish, even the holder's, changes nothing
            engine,
            job_id=job_id,
            status=RunStatus.failed,
            stop_reason="error",
            lease=holder,
        )
        with Session(engine) as session:
            job = session.exec(select(JudgementJob).where(JudgementJob.id == job_id)).one()
            assert (job.status, job.stop_reason, job.error) == ("succeeded", "done", None)
            ends = session.exec(
                select(JudgementEvent).where(
                    JudgementEvent.judgement_job_id == job_id, JudgementEvent.kind == "end"
                )
            ).all()
            assert len(ends) == 1 and ends[0].data["status"] == "succeeded"
    finally:
        engine.dispose()
        _wipe(settings.db_url)
