"""A run keeps the model server as busy as its endpoint allows, on one server or a pool of
replicas, and its decisions stay exact however many candidates are in flight."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.settings import EndpointConfig, Settings
from filters.rouge import rouge_l
from generators.prompt_text import BOOTSTRAP_HEADERS
from generators.prompts import build_instance_prompt
from testbed.scripted_llm import Reply, StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows, wait_for_run

INSTANCE_MARK = build_instance_prompt("x", is_classification=False).text.split("\n", 1)[0][:40]


def _settings(
    settings_factory: Callable[..., Settings], endpoint: dict[str, Any], **overrides: Any
) -> Settings:
    return settings_factory(
        endpoints=[{"name": "stub", "models": [STUB_MODEL], "max_retries": 5, **endpoint}],
        worker_poll_seconds=0.05,
        worker_lease_seconds=5,
        **overrides,
    )


@pytest.fixture
def servers() -> Iterator[list[StubLLM]]:
    started: list[StubLLM] = []
    yield started
    for server in started:
        server.stop()


def _start(servers: list[StubLLM], **kwargs: Any) -> StubLLM:
    server = StubLLM(**kwargs)
    server.start()
    servers.append(server)
    return server


def test_requests_in_flight_reach_the_endpoint_concurrency(
    settings_factory: Callable[..., Settings], servers: list[StubLLM]
) -> None:
    """A batch-at-a-time run kept 5 bootstrap prompts in flight; a stream fills every slot,
    reports it on the run, and the target is met exactly."""
    stub = _start(servers)
    stub.delay_s = 0.2
    settings = _settings(settings_factory, {"base_url": stub.base_url, "max_concurrency": 16})
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        run_id = api.post(
            "/v1/datasets/default/runs", json={"target": 120, "model": STUB_MODEL}
        ).json()["id"]
        seen_in_flight, seen_rate = 0, 0.0
        while (run := api.get(f"/v1/runs/{run_id}").json())["status"] in ("queued", "running"):
            seen_in_flight = max(seen_in_flight, run["counters"]["in_flight"])
            seen_rate = max(seen_rate, run["counters"]["requests_per_s"])
            time.sleep(0.05)
    assert run["status"] == "succeeded", run
    assert run["counters"]["accepted"] == 120
    assert stub.max_in_flight == 16  # every slot used, never more
    assert seen_in_flight >= 8 and seen_rate > 0
    assert run["counters"]["in_flight"] == 0  # a finished run has nothing in flight
    assert_run_matches_rows(settings.db_url, run_id)
    _wipe(settings.db_url)


def test_over_target_candidates_cost_no_instance_requests(
    settings_factory: Callable[..., Settings], servers: list[StubLLM]
) -> None:
    stub = _start(servers, items_per_completion=7)
    stub.delay_s = 0.05
    settings = _settings(settings_factory, {"base_url": stub.base_url, "max_concurrency": 32})
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        run_id = api.post(
            "/v1/datasets/default/runs", json={"target": 5, "model": STUB_MODEL}
        ).json()["id"]
        run = wait_for_run(api, run_id)
        tasks = api.get("/v1/datasets/default/tasks", params={"run_id": run_id, "limit": 1000})
    assert run["status"] == "succeeded" and run["counters"]["accepted"] == 5
    rows = tasks.json()["data"]
    over = [t for t in rows if t["rejection_reason"] == "over_target"]
    assert over, "with 32 slots a run of 5 has more candidates than room"
    decided = [
        t
        for t in rows
        if t["status"] == "accepted"
        or t["rejection_reason"] in ("no_valid_instances", "instance_generation_failed")
        or (t["rejection_reason"] == "too_similar" and t["instances"])
    ]
    instance_requests = [
        r for r in stub.requests_to("/completions") if r.body["prompt"].startswith(INSTANCE_MARK)
    ]
    # only candidates that held a place before the target asked for instances
    assert len(instance_requests) <= len(decided) + run["counters"]["failed_requests"]
    assert all(not t["instances"] for t in over)
    assert_run_matches_rows(settings.db_url, run_id)
    _wipe(settings.db_url)


def test_a_replica_that_goes_down_gets_no_work_until_it_answers_again(
    settings_factory: Callable[..., Settings], servers: list[StubLLM]
) -> None:
    """Three replicas; one refuses connections mid-run, then comes back on the same port. The
    run loses no request (each attempt on the dead one is retried on a live one at once), the
    dead one is only probed while down, and it takes work again once it answers."""
    a, b, c = (_start(servers, seed=i) for i in range(3))
    for server in (a, b, c):
        server.delay_s = 0.05
    port = int(b.base_url.rsplit(":", 1)[1].split("/")[0])
    endpoint = {
        "replicas": [{"base_url": s.base_url, "max_concurrency": 8} for s in (a, b, c)],
    }
    settings = _settings(settings_factory, endpoint)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        run_id = api.post(
            "/v1/datasets/default/runs", json={"target": 100_000, "model": STUB_MODEL}
        ).json()["id"]

        def accepted() -> int:
            return int(api.get(f"/v1/runs/{run_id}").json()["counters"]["accepted"])

        def replica(url: str) -> dict[str, Any]:
            model = _stub_model(api)
            return next(r for r in model["replicas"] if r["base_url"] == url)

        _wait(lambda: accepted() >= 20)
        assert len(b.received) > 0  # it shared the work
        b.stop()  # the attempts it was answering fail now, and are retried elsewhere
        time.sleep(0.5)
        failed_at_stop = replica(b.base_url)["failed"]
        down_since = accepted()
        _wait(lambda: accepted() >= down_since + 60)
        probes_while_down = replica(b.base_url)["failed"] - failed_at_stop
        assert replica(b.base_url)["health"] in ("cooling_down", "failing")
        back = _start(servers, seed=7, port=port)
        back.delay_s = 0.05
        _wait(lambda: len(back.received) >= 10, timeout_s=60)
        _wait(lambda: replica(b.base_url)["health"] == "healthy")
        run = api.post(f"/v1/runs/{run_id}/cancel").json()
        run = wait_for_run(api, run_id)
    assert run["status"] == "cancelled"
    assert run["counters"]["failed_requests"] == 0
    # while down it was probed now and then (cooldowns of 1, 2, 4 s...), not sent work
    assert probes_while_down <= 6, probes_while_down
    assert run["counters"]["accepted"] >= 80
    assert_run_matches_rows(settings.db_url, run_id)
    _wipe(settings.db_url)


def test_a_429_storm_lowers_the_concurrency_and_the_run_still_finishes(
    settings_factory: Callable[..., Settings], servers: list[StubLLM]
) -> None:
    stub = _start(servers)
    stub.delay_s = 0.05
    stub.enqueue(*[Reply(status=429, body={"error": {"message": "slow down"}}) for _ in range(40)])
    settings = _settings(
        settings_factory, {"base_url": stub.base_url, "max_concurrency": 32, "max_retries": 8}
    )
    _wipe(settings.db_url)
    limits = []
    with TestClient(create_app(settings)) as api:
        run_id = api.post(
            "/v1/datasets/default/runs", json={"target": 60, "model": STUB_MODEL}
        ).json()["id"]
        while (run := api.get(f"/v1/runs/{run_id}").json())["status"] in ("queued", "running"):
            model = _stub_model(api)
            limits.append(model["replicas"][0]["concurrency_limit"])
            time.sleep(0.02)
    assert run["status"] == "succeeded", run
    assert run["counters"]["accepted"] == 60 and run["counters"]["failed_requests"] == 0
    assert run["counters"]["retries"] == 40
    assert min(limits) < 32  # halved on 429s, then raised again as answers succeed
    assert_run_matches_rows(settings.db_url, run_id)
    _wipe(settings.db_url)


def test_pool_settings_that_cannot_work_are_refused_naming_the_setting() -> None:
    base = {"name": "vllm", "models": ["m"]}
    with pytest.raises(ValidationError, match="has no server: set `base_url` or list `replicas`"):
        EndpointConfig.model_validate(base)
    with pytest.raises(ValidationError, match="lists http://a:1/v1 twice"):
        EndpointConfig.model_validate(
            {**base, "base_url": "http://a:1/v1", "replicas": [{"base_url": "http://a:1/v1/"}]}
        )
    with pytest.raises(ValidationError, match="max_concurrency"):
        EndpointConfig.model_validate(
            {**base, "replicas": [{"base_url": "http://a:1/v1", "max_concurrency": 0}]}
        )
    with pytest.raises(ValidationError, match="max_concurrency"):
        EndpointConfig.model_validate({**base, "base_url": "http://a:1/v1", "max_concurrency": 0})
    env = {
        **os.environ,
        "SELFINSTRUCT_ENDPOINTS": json.dumps([base]),
    }
    refused = subprocess.run(
        [sys.executable, "-c", "from app.settings import Settings; Settings()"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "endpoints" in refused.stderr and "has no server" in refused.stderr


# --- two workers, one dataset ---

BASES = [
    "Explain how {} tides shape the coastline of a small island",
    "Write a short poem about {} lanterns floating over a quiet river",
    "Suggest three ways to reduce {} waste in a busy office kitchen",
    "Compare the {} habits of owls and hawks hunting at night",
    "Describe how a {} violin is tuned before a concert begins",
    "Plan a weekend hiking trip through the {} canyon for beginners",
]
WORDS = ["old", "new", "green", "quiet"]
# Near-copies: variants of one sentence differ by one word (ROUGE-L well above 0.7).
FIXED = [b.format(w) for b, w in itertools.product(BASES, WORDS)]


class RepeatingLLM(StubLLM):
    """Answers every bootstrap prompt from a small fixed list, so two runs propose the same
    tasks and near-copies of them at the same time."""

    def sentence(self, chinese: bool) -> str:
        return str(self.rng.choice(FIXED))


# Unlike every FIXED task and every seed: only the other run's copy can make it a near-copy.
SHARED = "Invent a board game in which two players guard lighthouses along a stormy coast"


class MeetingLLM(RepeatingLLM):
    """Every list of new tasks starts with SHARED. The first two requests for SHARED's instances
    (one per run) are held until both have arrived and then answered together, so each run
    decides to accept SHARED against a pool that lacks the other's copy: the store of the run
    that commits second must find the other's copy and demote its own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.met = threading.Event()
        self.meeting = 0  # SHARED instance requests held so far (at most two are)
        self.meeting_lock = threading.Lock()

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        prompt = str((body or {}).get("prompt", ""))
        if prompt.startswith(INSTANCE_MARK) and SHARED in prompt:
            with self.meeting_lock:
                self.meeting += 1
                if self.meeting >= 2:
                    self.met.set()
            self.met.wait(timeout=60)  # the second worker process may take a while to start
        return super()._next_reply(body)

    def answer(self, prompt: str) -> str:
        text = super().answer(prompt)
        # Runs take turns asking in the pool's languages (English and Chinese): both ask.
        if not prompt.startswith(tuple(BOOTSTRAP_HEADERS.values())):
            return text
        return f" {SHARED}\n" + text.split("\n", 1)[-1]


def test_two_workers_on_postgres_never_accept_near_copies_of_each_other(
    postgres_url: str, tmp_path: Path, servers: list[StubLLM]
) -> None:
    """Two runs on one dataset, each in its own worker process, propose the same tasks. Both
    decide to accept SHARED at the same moment; the one stored second is demoted to a
    `too_similar` rejection naming the other's copy (a row that went through instance
    generation, so it was decided accepted, not screened out). Each run still reaches its
    target: 7 distinct tasks can be accepted and the two targets need 6."""
    from app.db import migrate

    llm = MeetingLLM(seed=3)
    llm.delay_s = 0.1
    llm.start()
    servers.append(llm)
    migrate(Settings(database_url=postgres_url))
    _wipe(postgres_url)
    endpoint = {"name": "stub", "base_url": llm.base_url, "models": [STUB_MODEL]}
    settings = Settings(
        database_url=postgres_url,
        data_dir=tmp_path / "data",
        embedded_worker=False,
        endpoints=[endpoint],
    )
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path / "data"),
        "SELFINSTRUCT_ENDPOINTS": json.dumps([endpoint]),
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.05",
    }
    with TestClient(create_app(settings)) as api:
        body = {"target": 3, "model": STUB_MODEL, "prompt": {"prompts_per_batch": 1}}
        ids = [api.post("/v1/datasets/default/runs", json=body).json()["id"] for _ in range(2)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            runs = [wait_for_run(api, i, timeout_s=120) for i in ids]
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
        tasks = api.get("/v1/datasets/default/tasks", params={"limit": 1000})
        everything = tasks.json()["data"]
    assert llm.met.is_set(), "the two runs never asked for SHARED's instances together"
    assert runs[0]["worker_id"] != runs[1]["worker_id"], "each run had its own worker"
    ends = [(r["status"], r["stop_reason"]) for r in runs]
    assert ends == [("succeeded", "target_reached")] * 2, [r["error"] for r in runs]
    accepted = [t for t in everything if t["status"] == "accepted"]
    generated = [t["instruction"] for t in accepted if t["origin"] == "generated"]
    assert len(generated) == 6, runs
    assert len(set(generated)) == len(generated), "an instruction was accepted twice"
    for x, y in itertools.combinations([t["instruction"] for t in accepted], 2):
        assert rouge_l(x, y) <= 0.7, (x, y)
    (kept,) = [t for t in accepted if t["instruction"] == SHARED]
    # The other run's copy: decided accepted (its instances were generated), then demoted.
    (demoted,) = [
        t
        for t in everything
        if t["instruction"] == SHARED and t["run_id"] != kept["run_id"] and t["instances"]
    ]
    assert demoted["status"] == "rejected" and demoted["rejection_reason"] == "too_similar"
    assert demoted["nearest"][0] == {"task_id": kept["id"], "score": 1.0}, demoted["nearest"]
    for run_id in ids:
        assert_run_matches_rows(postgres_url, run_id)
    _wipe(postgres_url)


class NearCopyLLM(StubLLM):
    """Starts every list of new tasks with a near-copy of an English task its prompt shows (the
    last word changed: ROUGE-L (n-1)/n, above 0.7 from four words on), so every run meets
    candidates the novelty filter must reject as well as novel ones."""

    def answer(self, prompt: str) -> str:
        text = super().answer(prompt)
        if not prompt.startswith(BOOTSTRAP_HEADERS["en"]):
            return text
        shown = re.findall(r"^\d+\. ([A-Za-z][^\n]*)$", prompt, flags=re.MULTILINE)
        long = [line for line in shown if len(line.split()) >= 6]
        if not long:
            return text
        with_one_word_changed = " ".join([*self.rng.choice(long).split()[:-1], "zebras."])
        return f" {with_one_word_changed}\n" + text.split("\n", 1)[-1]


def _stub_model(api: TestClient) -> dict[str, Any]:
    """The stub model's entry in GET /v1/models, with its replicas."""
    (model,) = [m for m in api.get("/v1/models").json()["data"] if m["id"] == STUB_MODEL]
    return model  # type: ignore[no-any-return]


def _wait(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.parametrize("neighbour_process", [False, True], ids=["inline", "process"])
@pytest.mark.both_databases
def test_stored_neighbours_are_exact_whether_computed_inline_or_in_their_own_process(
    settings_factory: Callable[..., Settings], servers: list[StubLLM], neighbour_process: bool
) -> None:
    """Large pools take the top-10 off the decision path (a process of its own); forced here
    on the starter pool. Either way each stored score is the ROUGE-L to the task it names, the
    best one is `max_rouge`, and verdicts agree with it."""
    stub = NearCopyLLM(seed=5)
    stub.start()
    servers.append(stub)
    stub.delay_s = 0.02
    settings = _settings(
        settings_factory,
        {"base_url": stub.base_url, "max_concurrency": 16},
        neighbours_process_min_pool=0 if neighbour_process else 10**9,
    )
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        run_id = api.post(
            "/v1/datasets/default/runs", json={"target": 40, "model": STUB_MODEL}
        ).json()["id"]
        run = wait_for_run(api, run_id)
        rows = api.get(
            "/v1/datasets/default/tasks", params={"run_id": run_id, "limit": 1000}
        ).json()["data"]
        everything = {
            t["id"]: t["instruction"]
            for t in api.get("/v1/datasets/default/tasks", params={"limit": 1000}).json()["data"]
        }
    assert run["status"] == "succeeded" and run["counters"]["accepted"] == 40
    scored = [
        t for t in rows if t["status"] == "accepted" or t["rejection_reason"] == "too_similar"
    ]
    # Both verdicts are checked below: the stub proposes near-copies as well as novel tasks.
    assert len([t for t in scored if t["status"] == "accepted"]) == 40
    assert any(t["rejection_reason"] == "too_similar" for t in scored), run["counters"]
    for task in scored:
        assert task["nearest"], task
        assert task["max_rouge"] == task["nearest"][0]["score"]
        assert (task["max_rouge"] > 0.7) == (task["status"] == "rejected"), task
        for neighbour in task["nearest"]:
            assert neighbour["task_id"] != task["id"]
            other = everything[neighbour["task_id"]]
            assert neighbour["score"] == pytest.approx(rouge_l(task["instruction"], other))
        scores = [n["score"] for n in task["nearest"]]
        assert scores == sorted(scores, reverse=True)
    assert_run_matches_rows(settings.db_url, run_id)
    _wipe(settings.db_url)


def test_a_pool_with_no_live_replica_fails_the_run_saying_so(
    settings_factory: Callable[..., Settings],
) -> None:
    from testbed.live import free_port

    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nobody listens there
    settings = _settings(
        settings_factory,
        {"replicas": [{"base_url": u} for u in dead], "max_retries": 2, "timeout_s": 2},
    )
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        run_id = api.post(
            "/v1/datasets/default/runs", json={"target": 5, "model": STUB_MODEL}
        ).json()["id"]
        run = wait_for_run(api, run_id, timeout_s=120)
        model = _stub_model(api)
    assert run["status"] == "failed" and run["stop_reason"] == "backend_failing", run
    assert "No replica of the pool's 2 answered" in run["error"], run["error"]
    assert "connection failed" in run["error"]
    assert not model["reachable"]
    assert {r["health"] for r in model["replicas"]} <= {"cooling_down", "failing"}
    assert run["counters"]["failed_requests"] == run["counters"]["requests"] > 0
    assert_run_matches_rows(settings.db_url, run_id)
    _wipe(settings.db_url)


@pytest.mark.both_databases
def test_max_requests_is_never_passed_with_dozens_in_flight(
    settings_factory: Callable[..., Settings], servers: list[StubLLM]
) -> None:
    """Requests in flight and those of a commit still being written count against the cap."""
    stub = _start(servers)
    stub.delay_s = 0.05
    settings = _settings(settings_factory, {"base_url": stub.base_url, "max_concurrency": 32})
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        body = {"target": 100_000, "model": STUB_MODEL, "caps": {"max_requests": 150}}
        run = wait_for_run(api, api.post("/v1/datasets/default/runs", json=body).json()["id"])
    assert run["status"] == "succeeded" and run["stop_reason"] == "max_requests", run
    assert run["counters"]["requests"] == 150
    assert len(stub.requests_to("/completions")) == 150
    assert_run_matches_rows(settings.db_url, run["id"])
    _wipe(settings.db_url)
