"""End to end with real parts: the bundled model in process, a real llama.cpp server, and a
serving process killed with SIGKILL in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine, migrate
from app.main import create_app
from app.models import Task
from app.settings import EndpointConfig, Settings
from testbed.live import free_port, serve_api, wait_ready
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import (
    STUB_MODEL,
    assert_run_matches_rows,
    stub_settings,
    wait_for_run,
)

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

SMALL_RUN = {
    "target": 1,
    "sampling": {"max_tokens": 160},
    "prompt": {"prompts_per_batch": 2},
    "seed": 3,
}


def _counts_match_rows(client: TestClient | httpx.Client, run: dict) -> None:  # type: ignore[type-arg]
    rows = client.get(
        f"/v1/datasets/{run['dataset']}/tasks", params={"run_id": run["id"], "limit": 1000}
    ).json()["data"]
    c = run["counters"]
    assert c["candidates"] == len(rows)
    assert c["accepted"] == sum(r["status"] == "accepted" for r in rows)
    rejected = Counter(r["rejection_reason"] for r in rows if r["status"] == "rejected")
    assert c["rejected_by_reason"] == dict(rejected)
    accepted = [r["instruction"] for r in rows if r["status"] == "accepted"]
    assert len(accepted) == len(set(accepted))


@pytest.fixture
def sqlite_settings(sqlite_url: str, tmp_path: Path) -> Settings:
    """The slow real-model tests run once each: this one on SQLite, the next on PostgreSQL."""
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data")
    migrate(settings)
    return settings


@pytest.fixture
def postgres_settings(postgres_url: str, tmp_path: Path) -> Settings:
    settings = Settings(database_url=postgres_url, data_dir=tmp_path / "data")
    migrate(settings)
    return settings


@pytest.mark.real
def test_bundled_model_grows_the_default_pool(sqlite_settings: Settings) -> None:
    settings = sqlite_settings
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/v1/datasets/default/runs", json=SMALL_RUN).json()["id"]
        run = wait_for_run(client, run_id, timeout_s=900)
        assert run["status"] == "succeeded", run
        assert run["counters"]["accepted"] == 1
        assert run["counters"]["completion_tokens"] > 0
        _counts_match_rows(client, run)
        task = client.get(
            "/v1/datasets/default/tasks", params={"run_id": run_id, "status": "accepted"}
        ).json()["data"][0]
        assert task["lineage"]["model"] == "SmolLM2-135M-Instruct"
        assert task["instances"] and task["instances"][0]["output"]
    _wipe(settings.db_url)


@pytest.mark.real
def test_run_through_a_real_llama_cpp_server(
    postgres_settings: Settings, llama_server: str
) -> None:
    endpoint = EndpointConfig(name="llamacpp", base_url=llama_server, models=["smollm2-llamacpp"])
    settings = postgres_settings.model_copy(update={"endpoints": [endpoint]})
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["smollm2-llamacpp"]["reachable"] is True
        run_id = client.post(
            "/v1/datasets/default/runs", json={**SMALL_RUN, "model": "smollm2-llamacpp"}
        ).json()["id"]
        run = wait_for_run(client, run_id, timeout_s=900)
        assert run["status"] == "succeeded", run
        _counts_match_rows(client, run)
    _wipe(settings.db_url)


def _accepted_ids(db_url: str, run_id: int) -> set[int]:
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        ids = session.exec(
            select(Task.id).where(Task.run_id == run_id, Task.status == "accepted")
        ).all()
    engine.dispose()
    return {i for i in ids if i is not None}


@pytest.mark.both_databases
def test_kill9_mid_run_then_restart_finishes_consistently(
    settings_factory: Callable[..., Settings], stub: StubLLM, tmp_path: Path
) -> None:
    """kill -9 of the serving process (embedded worker inside) with one run mid-stream and one
    queued behind it, on SQLite and PostgreSQL: after a restart both runs end, every task
    accepted before the crash is still there, none is stored twice, and each run's counters
    equal its rows in the database."""
    settings = stub_settings(settings_factory, stub)
    _wipe(settings.db_url)
    stub.delay_s = 0.3  # with dozens of requests in flight, a run of 150 takes a few seconds
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(
            [{"name": "stub", "base_url": stub.base_url, "models": [STUB_MODEL]}]
        ),
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "2",
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.1",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve_api(env, port, tmp_path / "server.log")
    try:
        wait_ready(base)
        run_id = httpx.post(
            f"{base}/v1/datasets/default/runs", json={"target": 150, "model": STUB_MODEL}
        ).json()["id"]
        queued_id = httpx.post(
            f"{base}/v1/datasets/default/runs", json={"target": 6, "model": STUB_MODEL}
        ).json()["id"]
        for _ in range(600):
            if httpx.get(f"{base}/v1/runs/{run_id}").json()["counters"]["accepted"] >= 8:
                break
            time.sleep(0.05)
        # one worker, busy with the first run: the second waits (after the restart either may
        # be claimed first, since the dead worker's lease has not run out yet)
        assert httpx.get(f"{base}/v1/runs/{queued_id}").json()["status"] == "queued"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        before = _accepted_ids(settings.db_url, run_id)
        assert_run_matches_rows(settings.db_url, run_id)  # the crash left no half batch
        server = serve_api(env, port, tmp_path / "server.log")
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=10) as client:
            mid = client.get(f"/v1/runs/{run_id}").json()
            assert 8 <= mid["counters"]["accepted"] < 150, mid
            deadline = time.monotonic() + 120
            for rid, target in ((run_id, 150), (queued_id, 6)):
                while (run := client.get(f"/v1/runs/{rid}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    assert time.monotonic() < deadline, run
                    time.sleep(0.2)
                assert run["status"] == "succeeded", run
                assert run["counters"]["accepted"] == target
                _counts_match_rows(client, run)
                assert_run_matches_rows(settings.db_url, rid)
        assert before <= _accepted_ids(settings.db_url, run_id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        _wipe(settings.db_url)


def _starter(chinese: bool) -> list[dict]:  # type: ignore[type-arg]
    path = Path(__file__).resolve().parents[2] / "app" / "seeds" / "starter_seed_tasks.jsonl"
    seeds = [json.loads(line) for line in path.read_text().splitlines()]
    return [s for s in seeds if any("\u4e00" <= c <= "\u9fff" for c in s["instruction"]) == chinese]


@pytest.mark.real
@pytest.mark.parametrize(
    ("seeds", "run_language", "expected"),
    [("zh", None, {"zh"}), ("en", "zh", {"zh"})],
    ids=["chinese-seeds-no-setting", "chinese-from-english-seeds"],
)
def test_bundled_model_writes_chinese_tasks(
    sqlite_settings: Settings, seeds: str, run_language: str | None, expected: set[str]
) -> None:
    """As a user who sets nothing: a dataset created without a language, seeded in Chinese,
    reaches its target with Chinese tasks; and a run that asks for Chinese from English seeds
    gets Chinese tasks."""
    settings = sqlite_settings
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/datasets", json={"name": "pool"}).status_code == 201
        imported = client.post("/v1/datasets/pool/seeds", json=_starter(seeds == "zh"))
        assert imported.status_code in (200, 201), imported.text
        body = {**SMALL_RUN, "seed": 5, **({"language": run_language} if run_language else {})}
        run_id = client.post("/v1/datasets/pool/runs", json=body).json()["id"]
        run = wait_for_run(client, run_id, timeout_s=900)
        assert run["status"] == "succeeded", run
        accepted = client.get(
            "/v1/datasets/pool/tasks", params={"run_id": run_id, "status": "accepted"}
        ).json()["data"]
        assert {t["language"] for t in accepted} == expected, accepted
        assert "non_ascii_start" not in run["counters"]["rejected_by_reason"]
        _counts_match_rows(client, run)
    _wipe(settings.db_url)


@pytest.mark.real
def test_bundled_model_grows_the_mixed_starter_pool_in_both_languages(
    sqlite_settings: Settings,
) -> None:
    """No setting at all: the starter pool is English and Chinese, and a run on it keeps
    accepting tasks of either language until it has both."""
    settings = sqlite_settings
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        found: set[str] = set()
        for attempt in range(3):  # about every fourth prompt is in Chinese
            body = {**SMALL_RUN, "target": 4, "seed": 11 + attempt}
            run_id = client.post("/v1/datasets/default/runs", json=body).json()["id"]
            run = wait_for_run(client, run_id, timeout_s=900)
            assert run["status"] == "succeeded", run
            _counts_match_rows(client, run)
            accepted = client.get(
                "/v1/datasets/default/tasks", params={"run_id": run_id, "status": "accepted"}
            ).json()["data"]
            found |= {t["language"] for t in accepted}
            if found >= {"en", "zh"}:
                break
        assert found == {"en", "zh"}, found
    _wipe(settings.db_url)


TEA = (
    "Green tea is made from leaves that are not oxidised. After picking, the leaves are heated "
    "quickly, by steaming or pan-firing, which keeps their colour and fresh taste.\n\n"
    "To brew green tea, use water below boiling, about 80 degrees Celsius, and steep the leaves "
    "for two to three minutes. Water that is too hot makes the tea bitter.\n\n"
    "Black tea is fully oxidised before it is dried. It has a stronger taste and keeps longer, "
    "which is why it travelled well on long sea voyages."
)


@pytest.mark.real
@pytest.mark.parametrize("strategy", ["evolve", "backtranslate", "magpie"])
def test_bundled_model_constructs_tasks_with_each_strategy(
    sqlite_settings: Settings, strategy: str
) -> None:
    """Each strategy, with no other setting, on the bundled model in this process: the run
    reaches a small target and every stored task says where it came from."""
    settings = sqlite_settings
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        passages: dict[int, str] = {}
        if strategy == "backtranslate":
            posted = client.post(
                "/v1/datasets/default/documents",
                json={"documents": [{"name": "tea.txt", "text": TEA}]},
                params={"passage_chars": 200},
            ).json()["data"][0]
            shown = client.get(f"/v1/datasets/default/documents/{posted['id']}").json()
            passages = {p["id"]: p["text"] for p in shown["passage_list"]}
            assert len(passages) == 3
        body = {**SMALL_RUN, "strategy": strategy, "prompt": {"prompts_per_batch": 1}}
        run_id = client.post("/v1/datasets/default/runs", json=body).json()["id"]
        run = wait_for_run(client, run_id, timeout_s=900)
        assert run["status"] == "succeeded", run
        assert run["counters"]["accepted"] == 1, run
        _counts_match_rows(client, run)
        rows = client.get("/v1/datasets/default/tasks", params={"run_id": run_id}).json()["data"]
    _wipe(settings.db_url)
    accepted = [t for t in rows if t["status"] == "accepted"]
    for task in rows:
        lineage = task["lineage"]
        assert lineage["model"] == "SmolLM2-135M-Instruct" and lineage["strategy"] == strategy
        if strategy == "evolve":
            assert task["origin"] == "evolved"
            assert lineage["operation"] and lineage["evolution_depth"] == 1
            assert int(lineage["parent_task_id"]) > 0
        elif strategy == "backtranslate":
            assert task["origin"] == "backtranslated"
            assert task["instances"][0]["output"] == passages[lineage["passage_id"]]
        else:
            assert task["origin"] == "generated"
            assert lineage["template_version"] == "magpie-v1"
    assert accepted[0]["instances"] and accepted[0]["instances"][0]["output"]
