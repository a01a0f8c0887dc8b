"""The migrations build exactly the schema the models describe, and move the data they must
(0007: judgement jobs out of `run`), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlmodel import Session, SQLModel, col, select

import app.models  # noqa: F401
from app.db import alembic_config, make_engine, migrate
from app.main import create_app
from app.models import JSONType, JudgementEvent, JudgementJob, Run, RunEvent, TaskJudgement
from app.settings import BUNDLED_MODEL_ID, Settings

pytestmark = pytest.mark.both_databases


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(Settings(database_url=db_url))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; write a revision for: {diff}"


# --- 0007: judgement jobs move out of `run` ----------------------------------------------------

BEFORE_0007 = "0006"  # the revision whose `run` table this test writes a judgement job into
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@contextmanager
def _fresh_database(db_url: str, tmp_path: Path) -> Iterator[Settings]:
    """An empty database beside the session's (that one is migrated to head already)."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'old.db'}", data_dir=tmp_path / "d")
        return
    name = f"migration_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        fresh = url.set(database=name).render_as_string(hide_password=False)
        yield Settings(database_url=fresh, data_dir=tmp_path / "d")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _type(value: object) -> sa.types.TypeEngine[Any] | None:
    if isinstance(value, datetime):
        return sa.DateTime(timezone=True)
    return JSONType if isinstance(value, dict | list) else None


def _insert(conn: sa.Connection, table: str, **values: object) -> int:
    """A row written with Core and this revision's column names only (the models are newer)."""
    t = sa.table(table, sa.column("id"), *(sa.column(k, _type(v)) for k, v in values.items()))
    return int(conn.execute(sa.insert(t).values(values).returning(t.c.id)).scalar_one())


def _run(conn: sa.Connection, dataset_id: int, strategy: str, **values: object) -> int:
    """A `run` row as the code before 0007 wrote it."""
    row: dict[str, object] = {
        "dataset_id": dataset_id,
        "strategy": strategy,
        "backend": "openai",
        "model": "judge-model",
        "params": {},
        "target": 0,
        "status": "succeeded",
        "requests": 0,
        "failed_requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": 0.0,
        "candidates": 0,
        "accepted": 0,
        "rejected": 0,
        "rejected_by_reason": {},
        "instances": 0,
        "state": {},
        "created_at": T0,
        "updated_at": T0,
    }
    return _insert(conn, "run", **{**row, **values})


def _old_judgement_job(settings: Settings) -> dict[str, int]:
    """At BEFORE_0007: a generation run with a judge, and a judgement job stored as a run of
    strategy `judgement` with events and two ratings of its own."""
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            ds = _insert(
                conn,
                "dataset",
                name="old",
                description="",
                language=None,
                held_out_share=0.0,
                decontaminate_against=[],
                decontamination_threshold=0.7,
                decontamination_state={},
                created_at=T0,
                updated_at=T0,
            )
            tasks = [
                _insert(
                    conn,
                    "task",
                    dataset_id=ds,
                    instruction=f"Name colour {i}.",
                    instances=[],
                    origin="seed",
                    status="accepted",
                    nearest=[],
                    lineage={},
                    contaminated=False,
                    created_at=T0,
                    updated_at=T0,
                )
                for i in range(3)
            ]
            generation = _run(
                conn,
                ds,
                "self_instruct",
                target=5,
                candidates=9,
                accepted=5,
                rejected=4,
                state={"judged": 1, "ratings": {"B": 1}},
            )
            job = _run(
                conn,
                ds,
                "judgement",
                target=3,
                candidates=2,
                accepted=1,
                rejected=1,
                requests=3,
                failed_requests=1,
                prompt_tokens=300,
                completion_tokens=40,
                cost=0.25,
                params={"model": "judge-model", "select": "all", "max_task_id": tasks[-1]},
                error=None,
                state=(
                    {
                        "ratings": {"A": 1},
                        "judged": 1,
                        "unjudged": 1,
                        "stop_reason": "done",
                        "executions": 2,
                        "last_error": "HTTP 500",
                        "in_flight": 0,
                    }
                ),
                started_at=T0,
                finished_at=T0,
            )
            counters = {
                "candidates": 2,
                "accepted": 1,
                "rejected": 1,
                "requests": 3,
                "failed_requests": 1,
                "prompt_tokens": 300,
                "completion_tokens": 40,
                "ratings": {"A": 1},
                "judged": 1,
                "unjudged": 1,
                "in_flight": 0,
            }
            events = [
                _insert(conn, "run_event", run_id=job, kind=kind, data=data, created_at=T0)
                for kind, data in [
                    ("status", {"status": "running"}),
                    ("counters", counters),
                    (
                        "end",
                        {"status": "succeeded", "stop_reason": "done", "error": None, **counters},
                    ),
                ]
            ]
            generation_event = _insert(
                conn,
                "run_event",
                run_id=generation,
                kind="status",
                data={"status": "running"},
                created_at=T0,
            )
            ratings = [
                _insert(
                    conn,
                    "judgement",
                    task_id=task,
                    rating=rating,
                    rationale="r",
                    judge_model="judge-model",
                    prompt_version="judge-v1:en",
                    run_id=run,
                    created_at=T0,
                )
                for task, rating, run in [
                    (tasks[0], "A", job),
                    (tasks[1], None, job),
                    (tasks[2], "B", generation),
                ]
            ]
            latest = sa.table(
                "task", sa.column("id"), sa.column("rating"), sa.column("judgement_id")
            )
            for task, rating, judgement in zip(tasks, ("A", None, "B"), ratings, strict=True):
                conn.execute(
                    sa.update(latest)
                    .where(latest.c.id == task)
                    .values(rating=rating, judgement_id=judgement)
                )
    finally:
        engine.dispose()
    return {
        "dataset": ds,
        "generation": generation,
        "job": job,
        "first_event": events[0],
        "last_event": events[-1],
        "generation_event": generation_event,
        "job_rating": ratings[0],
        "unjudged_rating": ratings[1],
        "generation_rating": ratings[2],
    }


def test_0007_moves_judgement_jobs_out_of_runs_and_back(db_url: str, tmp_path: Path) -> None:
    with _fresh_database(db_url, tmp_path) as settings:
        migrate(settings, BEFORE_0007)
        ids = _old_judgement_job(settings)
        job_id = ids["job"]
        migrate(settings)
        engine = make_engine(settings)
        try:
            with Session(engine) as session:
                assert session.exec(select(Run.id)).all() == [ids["generation"]]
                job = session.get(JudgementJob, job_id)
                assert job is not None and job.former_run_id == job_id
                assert (job.total, job.done, job.judged, job.unjudged) == (3, 2, 1, 1)
                assert (job.requests, job.failed_requests) == (3, 1)
                assert (job.prompt_tokens, job.completion_tokens, job.cost) == (300, 40, 0.25)
                assert job.ratings == {"A": 1} and job.stop_reason == "done"
                assert job.state == {"executions": 2, "last_error": "HTTP 500", "in_flight": 0}
                assert (job.lease_epoch, job.lost_count, job.progressed) == (2, 0, False)
                assert job.params["max_task_id"] > 0 and job.model == "judge-model"
                events = session.exec(select(JudgementEvent).order_by(col(JudgementEvent.id))).all()
                assert [e.id for e in events] == list(
                    range(ids["first_event"], ids["last_event"] + 1)
                )
                assert [e.kind for e in events] == ["status", "progress", "end"]
                assert {e.judgement_job_id for e in events} == {job_id}
                assert events[1].data == {
                    "total": 3,
                    "done": 2,
                    "judged": 1,
                    "unjudged": 1,
                    "failed_requests": 1,
                    "ratings": {"A": 1},
                    "requests": 3,
                    "prompt_tokens": 300,
                    "completion_tokens": 40,
                }
                assert events[2].data == {
                    "status": "succeeded",
                    "stop_reason": "done",
                    "error": None,
                    **events[1].data,
                }
                assert [e.id for e in session.exec(select(RunEvent))] == [ids["generation_event"]]
                judgements = {j.id: j for j in session.exec(select(TaskJudgement))}
                for mine in ("job_rating", "unjudged_rating"):
                    assert judgements[ids[mine]].judgement_job_id == job_id
                    assert judgements[ids[mine]].run_id is None
                kept = judgements[ids["generation_rating"]]
                assert (kept.run_id, kept.judgement_job_id) == (ids["generation"], None)
        finally:
            engine.dispose()

        with TestClient(create_app(settings.model_copy(update={"embedded_worker": False}))) as api:
            moved = api.get(f"/v1/runs/{job_id}")
            assert moved.status_code == 404
            assert f"/v1/judgements/{job_id}" in moved.json()["detail"]
            assert api.get(f"/v1/runs/{job_id}/events").status_code == 404
            assert api.get(f"/v1/runs/{ids['generation']}").status_code == 200
            assert [r["id"] for r in api.get("/v1/datasets/old/runs").json()["data"]] == [
                ids["generation"]
            ]
            read = api.get(f"/v1/judgements/{job_id}").json()
            assert (read["status"], read["stop_reason"]) == ("succeeded", "done")
            assert read["progress"]["done"] == 2 and read["progress"]["ratings"] == {"A": 1}
            listed = api.get("/v1/datasets/old/judgements").json()["data"]
            assert [j["id"] for j in listed] == [job_id]
            stream = api.get(f"/v1/judgements/{job_id}/events").text
            assert stream.count("event: ") == 3 and "event: end" in stream
            asked = {
                t["judgement"]["id"]: (t["judgement"]["run_id"], t["judgement"]["judgement_job_id"])
                for t in api.get("/v1/datasets/old/tasks").json()["data"]
            }
            assert asked == {
                ids["job_rating"]: (None, job_id),
                ids["unjudged_rating"]: (None, job_id),
                ids["generation_rating"]: (ids["generation"], None),
            }
            # A new job draws an id past the moved one (PostgreSQL: its sequence was set).
            new = api.post("/v1/datasets/old/judgements", json={"model": BUNDLED_MODEL_ID})
            assert new.status_code == 202, new.text
            assert new.json()["id"] > job_id

        # The downgrade makes it a run again, under its old id.
        command.downgrade(alembic_config(settings), _revision_before("0007", settings))
        engine = make_engine(settings)
        try:
            with engine.connect() as conn:
                back = conn.execute(
                    sa.text(
                        "SELECT id, strategy, target, candidates, accepted, rejected "
                        "FROM run WHERE id = :id"
                    ),
                    {"id": job_id},
                ).one()
                assert tuple(back) == (job_id, "judgement", 3, 2, 1, 1)
                kinds = conn.execute(
                    sa.text("SELECT kind FROM run_event WHERE run_id = :id ORDER BY id"),
                    {"id": job_id},
                ).scalars()
                assert list(kinds) == ["status", "counters", "end"]
                rated = conn.execute(
                    sa.text("SELECT run_id FROM judgement WHERE id = :id"),
                    {"id": ids["job_rating"]},
                ).scalar_one()
                assert rated == job_id
        finally:
            engine.dispose()


def _revision_before(revision: str, settings: Settings) -> str:
    down = ScriptDirectory.from_config(alembic_config(settings)).get_revision(revision)
    assert down is not None and isinstance(down.down_revision, str)
    return down.down_revision
