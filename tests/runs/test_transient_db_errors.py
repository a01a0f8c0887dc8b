"""A transient database error at a commit (SQLite's busy database, a PostgreSQL deadlock) is
retried with back-off and the run finishes with every counter equal to its rows; an error that
stays past the retries fails the run, naming it."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import RETRY_DELAYS_S
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows, wait_for_run

pytestmark = pytest.mark.both_databases


class FailingCommits:
    """Makes the statement that stores a commit group's tasks fail, `times` times in all, with
    the error the engine's own database gives a transaction that lost a lock: the driver raises
    it, and SQLAlchemy wraps it as it would a real one."""

    def __init__(self, engine: sa.Engine, times: int) -> None:
        self.engine, self.left, self.failed = engine, times, 0
        self.lock = threading.Lock()

    def __enter__(self) -> FailingCommits:
        sa.event.listen(self.engine, "before_cursor_execute", self._execute)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._execute)

    def _execute(self, conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith("INSERT INTO TASK "):
            return
        with self.lock:
            if self.left == 0:
                return
            self.left -= 1
            self.failed += 1
        if conn.dialect.name == "postgresql":
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        raise sqlite3.OperationalError("database is locked")


def test_failed_commits_are_retried_and_the_run_finishes(api: TestClient, db_url: str) -> None:
    engine = api.app.state.engine  # type: ignore[attr-defined]
    with FailingCommits(engine, times=3) as faults:
        created = api.post("/v1/datasets/default/runs", json={"target": 8, "model": STUB_MODEL})
        run = wait_for_run(api, created.json()["id"])
    assert faults.failed == 3
    assert run["status"] == "succeeded", run
    assert run["counters"]["accepted"] == 8
    assert_run_matches_rows(db_url, run["id"])  # nothing lost, nothing stored twice


def test_an_error_that_stays_fails_the_run_and_names_it(api: TestClient) -> None:
    engine = api.app.state.engine  # type: ignore[attr-defined]
    with FailingCommits(engine, times=10_000) as faults:
        created = api.post("/v1/datasets/default/runs", json={"target": 8, "model": STUB_MODEL})
        run = wait_for_run(api, created.json()["id"], timeout_s=60)
    assert faults.failed == len(RETRY_DELAYS_S) + 1  # the first try and every retry
    assert run["status"] == "failed", run
    assert "locked" in run["error"] or "deadlock" in run["error"], run["error"]
    tasks = api.get("/v1/datasets/default/tasks", params={"run_id": run["id"]}).json()["data"]
    assert tasks == []  # nothing half-written
