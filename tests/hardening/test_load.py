"""50 concurrent clients list, read and export over loopback while a run writes into the same
dataset, on SQLite and PostgreSQL: no request fails (no 5xx, no connection error, no "database
is locked"), every export is complete JSONL, and the run's counters still equal its rows.
Timings are `python -m bench.load`'s business, not this test's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.load import KINDS, hammer, serving, start_writing_run
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows

pytestmark = [pytest.mark.both_databases, pytest.mark.real]

CLIENTS = 50
SECONDS = 8.0
STARTER_SEED_LINES = 48  # the starter pool's seeds have at least one instance each


def server_errors(log: Path) -> list[str]:
    """The server's unhandled errors, each the last line of its traceback, so a failure here
    says what went wrong inside the server and not only that a request failed."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), i)
            found.append(lines[end])
    return found[:10]


@pytest.fixture
def clean_db(db_url: str) -> Iterator[str]:
    _wipe(db_url)
    yield db_url
    _wipe(db_url)


def test_fifty_clients_read_and_export_while_a_run_writes(clean_db: str, tmp_path: Path) -> None:
    stub = StubLLM(seed=9)
    stub.delay_s = 0.01
    stub.start()
    try:
        with serving(clean_db, tmp_path, stub.base_url, STUB_MODEL) as base:
            run_id = start_writing_run(base, STUB_MODEL)
            before = httpx.get(f"{base}/v1/runs/{run_id}").json()["counters"]["candidates"]
            result = asyncio.run(
                hammer(base, dataset="default", run_id=run_id, clients=CLIENTS, seconds=SECONDS)
            )
            run = httpx.get(f"{base}/v1/runs/{run_id}").json()
            httpx.post(f"{base}/v1/runs/{run_id}/cancel").raise_for_status()
    finally:
        stub.stop()
    assert result.errors == [], (result.errors[:10], server_errors(tmp_path / "server.log"))
    assert all(result.latencies[kind] for kind in KINDS), {
        k: len(v) for k, v in result.latencies.items()
    }
    assert result.export_lines and min(result.export_lines) >= STARTER_SEED_LINES
    assert run["status"] == "running" and run["counters"]["candidates"] > before, (
        "the run must have been writing while the clients read"
    )
    assert_run_matches_rows(clean_db, run_id)
