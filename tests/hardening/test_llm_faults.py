"""Runs against a model server that misbehaves: created over HTTP, executed by the embedded
worker, pointed at the server through settings, with the default endpoint concurrency (dozens of
requests in flight). A run rides out faults that its retry budget covers, counts them, recovers
when the server does, and fails with a reason and an error that name the fault only when
3 x prompts_per_batch generation answers in a row were useless.

The fault server is the scripted stub model with a switch: its first `fault_budget` answers are
the fault, then it answers normally. Requests get 2 attempts each (max_retries=1), so every
faulty answer is either a retry or the second half of a failed request:
retries + failed_requests == the faulty answers.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.main import create_app
from app.models import RunEvent
from app.settings import Settings
from app.worker import Worker
from testbed.scripted_llm import Reply, StubLLM, completion_body
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows, wait_for_run

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

BATCH = {"prompt": {"prompts_per_batch": 2}, "model": STUB_MODEL}
HANG_TIMEOUT_S = 0.3


def _fault_reply(kind: str) -> Reply:
    body = json.dumps(completion_body("Explain the rules of chess to a child.")).encode()
    return {
        "http_500": Reply(status=500, body={"error": {"message": "upstream exploded"}}),
        "http_429_retry_after": Reply(
            status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0.2"}
        ),
        "http_429": Reply(status=429, body={"error": {"message": "slow down"}}),
        "http_429_long": Reply(
            status=429, body={"error": {"message": "busy"}}, headers={"Retry-After": "3"}
        ),
        "hang": Reply(delay_s=30),
        "truncated_json": Reply(body=body[: len(body) // 2]),
        "not_json": Reply(body=b"<html><body>502 Bad Gateway</body></html>"),
        "no_tasks": Reply(body=completion_body("\n\n")),
    }[kind]


class FaultLLM(StubLLM):
    """The stub model, whose next `fault_budget` answers are `fault` (`cut_connection` sends
    headers and half a body, then closes the socket)."""

    def __init__(self) -> None:
        super().__init__(seed=11)
        self.fault = "http_500"
        self.fault_budget = 0
        self.faulted = 0

    def take_fault(self) -> str | None:
        with self._lock:
            if self.fault_budget <= 0:
                return None
            self.fault_budget -= 1
            self.faulted += 1
            return self.fault

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        fault = self.take_fault()
        return super()._next_reply(body) if fault is None else _fault_reply(fault)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self
        base = super()._handler_class()

        class Handler(base):  # type: ignore[valid-type,misc]
            def _answer(self) -> None:
                cut = self.command == "POST" and server.fault == "cut_connection"
                if cut and server.take_fault() is not None:
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "4000")
                    self.end_headers()
                    self.wfile.write(b'{"id": "cmpl-1", "choices": [{"te')
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                super()._answer()

            do_GET = _answer
            do_POST = _answer

        return Handler


@pytest.fixture
def fault_llm() -> Iterator[FaultLLM]:
    server = FaultLLM()
    server.start()
    yield server
    server.stop()


def _settings(db_url: str, data_dir: Path, llm: FaultLLM, **overrides: Any) -> Settings:
    endpoint = {
        "name": "faulty",
        "base_url": llm.base_url,
        "models": [STUB_MODEL],
        "max_retries": 1,
        "timeout_s": HANG_TIMEOUT_S,
    }
    values: dict[str, Any] = {
        "database_url": db_url,
        "data_dir": data_dir,
        "endpoints": [endpoint],
        "worker_poll_seconds": 0.05,
        "worker_lease_seconds": 5,
        **overrides,
    }
    return Settings(**values)


def _trouble_events(db_url: str, run_id: int) -> list[dict[str, Any]]:
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        rows = session.exec(
            select(RunEvent.data)
            .where(RunEvent.run_id == run_id, RunEvent.kind == "llm_errors")
            .order_by(RunEvent.id)  # type: ignore[arg-type]
        )
        events = list(rows)
    engine.dispose()
    return events


# kind -> (stop_reason when it persists, words the error must contain)
FAULTS: dict[str, tuple[str, str]] = {
    "http_500": ("backend_failing", "HTTP 500: upstream exploded"),
    "http_429_retry_after": ("backend_failing", "HTTP 429: slow down"),
    "http_429": ("backend_failing", "HTTP 429: slow down"),
    "hang": ("backend_failing", "timed out"),
    "truncated_json": ("backend_failing", "not JSON (truncated or garbage)"),
    "not_json": ("backend_failing", "502 Bad Gateway"),
    "cut_connection": ("backend_failing", "connection failed"),
    "no_tasks": ("unparseable_output", "no task in them"),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_run_survives_a_fault_recovers_with_the_server_and_fails_clearly_when_it_persists(
    kind: str, any_db: str, tmp_path: Path, fault_llm: FaultLLM
) -> None:
    stop_reason, words = FAULTS[kind]
    fault_llm.fault = kind
    request_fault = kind != "no_tasks"
    with TestClient(create_app(_settings(any_db, tmp_path, fault_llm))) as api:
        # The server never recovers: 3 x 2 useless generation answers in a row end the run.
        fault_llm.fault_budget = 10**6
        run_id = api.post("/v1/datasets/default/runs", json={**BATCH, "target": 3}).json()["id"]
        failed = wait_for_run(api, run_id, timeout_s=60)
        assert failed["status"] == "failed", failed
        assert failed["stop_reason"] == stop_reason
        assert words in failed["error"], failed["error"]
        counters = failed["counters"]
        assert counters["accepted"] == 0 and counters["requests"] >= 6
        trouble = _trouble_events(any_db, run_id)
        assert trouble, "every commit group with trouble writes an llm_errors event"
        if request_fault:
            assert counters["failed_requests"] == counters["requests"]
            assert counters["retries"] == counters["requests"]  # one retry each, both failed
            assert sum(e["failed_requests"] for e in trouble) == counters["failed_requests"]
        else:
            assert counters["failed_requests"] == 0
            assert counters["unparseable_completions"] == counters["requests"]
            assert sum(e["unparseable_completions"] for e in trouble) == counters["requests"]
        assert_run_matches_rows(any_db, run_id)

        # The server fails for a while and comes back: the run carries on to its target, and the
        # failures stay on its record.
        budget = 6 if request_fault else 4
        fault_llm.fault_budget = budget
        run_id = api.post("/v1/datasets/default/runs", json={**BATCH, "target": 4}).json()["id"]
        run = wait_for_run(api, run_id, timeout_s=60)
        assert run["status"] == "succeeded", run
        assert run["counters"]["accepted"] == 4 and run["error"] is None
        assert fault_llm.fault_budget == 0
        trouble = _trouble_events(any_db, run_id)
        counters = run["counters"]
        if request_fault:
            assert counters["retries"] + counters["failed_requests"] == budget
            assert sum(e["retries"] for e in trouble) == counters["retries"]
            assert sum(e["failed_requests"] for e in trouble) == counters["failed_requests"]
        else:
            assert counters["failed_requests"] == 0
            assert counters["unparseable_completions"] == budget
            assert sum(e["unparseable_completions"] for e in trouble) == budget
        assert_run_matches_rows(any_db, run_id)


@pytest.fixture
def any_db(db_url: str) -> Iterator[str]:
    _wipe(db_url)
    yield db_url
    _wipe(db_url)


@pytest.mark.both_databases
def test_retry_after_longer_than_the_lease_never_lets_a_second_worker_take_the_run(
    any_db: str, tmp_path: Path, fault_llm: FaultLLM
) -> None:
    """A 429 storm asking for waits (3 s) longer than the lease (1.5 s) keeps the first requests
    in flight past the lease. The worker renews its lease meanwhile, so a second worker polling
    the same database never takes the run over (which would send the requests again and write
    the run from two pools), and the run is written once."""
    settings = _settings(any_db, tmp_path, fault_llm, worker_lease_seconds=1.5)
    settings.endpoints[0].timeout_s = 5
    fault_llm.fault = "http_429_long"
    fault_llm.fault_budget = 2  # the first two attempts the server sees
    second = Worker(engine=make_engine(settings), settings=settings)
    with TestClient(create_app(settings)) as api:
        run_id = api.post("/v1/datasets/default/runs", json={**BATCH, "target": 4}).json()["id"]
        while (first := api.get(f"/v1/runs/{run_id}").json())["worker_id"] is None:
            time.sleep(0.02)
        thread = second.start_thread()
        try:
            run = wait_for_run(api, run_id, timeout_s=60)
        finally:
            second.stop()
            thread.join(timeout=10)
            second.engine.dispose()
    assert run["status"] == "succeeded", run
    assert run["worker_id"] == first["worker_id"] != second.worker_id
    assert run["counters"]["accepted"] == 4 and run["counters"]["failed_requests"] == 0
    assert fault_llm.fault_budget == 0
    trouble = _trouble_events(any_db, run_id)
    assert run["counters"]["retries"] == 2, trouble
    assert sum(e["retries"] for e in trouble) == 2, trouble
    assert_run_matches_rows(any_db, run_id)
