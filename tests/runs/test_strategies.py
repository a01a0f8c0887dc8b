"""The construction strategies beyond the bootstrap, against a scripted server: evolve (and its
`evolution_failed` rules), backtranslate over posted documents, and magpie's exact prompts."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from filters.rouge import rouge_l
from testbed.scripted_llm import CHATML, Reply, StubLLM
from tests.conftest import _wipe
from tests.factories import seed
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows, stub_settings, wait_for_run

SMOLLM_USER_PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n"
)


def _tasks(client: TestClient, dataset: str = "default", **params: object) -> list[dict]:  # type: ignore[type-arg]
    page = client.get(f"/v1/datasets/{dataset}/tasks", params={"limit": 1000, **params})
    return page.json()["data"]  # type: ignore[no-any-return]


def _small_pool(api: TestClient, name: str = "small") -> None:
    assert api.post("/v1/datasets", json={"name": name}).status_code == 201
    seeds = [
        seed(id="s1", instruction="Write a short poem about the sea at night."),
        seed(id="s2", instruction="Explain how a bicycle gear system works to a child."),
        seed(id="s3", instruction="Suggest three names for a bakery that sells only bread."),
    ]
    assert api.post(f"/v1/datasets/{name}/seeds", json=seeds).status_code == 200


# --- evolve ----------------------------------------------------------------------------------


@pytest.fixture
def one_at_a_time(settings_factory: Callable[..., Settings], stub: StubLLM) -> Iterator[TestClient]:
    """One request in flight: each prompt sees every task accepted before it was sent."""
    settings = settings_factory(
        endpoints=[
            {
                "name": "stub",
                "base_url": stub.base_url,
                "models": [STUB_MODEL],
                "max_concurrency": 1,
            }
        ],
        worker_poll_seconds=0.05,
        worker_lease_seconds=5,
    )
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def test_evolve_rewrites_pool_tasks_with_lineage_depth_and_stats(
    one_at_a_time: TestClient,
) -> None:
    api = one_at_a_time
    _small_pool(api)
    body = {
        "target": 12,
        "model": STUB_MODEL,
        "strategy": "evolve",
        "evolve": {"operations": {"deepen": 1, "add_constraints": 1}, "max_depth": 2},
    }
    created = api.post("/v1/datasets/small/runs", json=body)
    assert created.status_code == 201, created.text
    run = wait_for_run(api, created.json()["id"])
    assert run["status"] == "succeeded", run
    assert_run_matches_rows(api.app.state.settings.db_url, run["id"])  # type: ignore[attr-defined]
    every = {t["id"]: t for t in _tasks(api, "small")}
    accepted = [t for t in every.values() if t["run_id"] == run["id"] and t["status"] == "accepted"]
    assert len(accepted) == 12
    depths: dict[str, int] = {}
    for task in accepted:
        assert task["origin"] == "evolved"
        lineage = task["lineage"]
        assert lineage["operation"] in {"deepen", "add_constraints"}
        assert lineage["template_version"].startswith(f"evolve-v1:{lineage['operation']}:")
        parent = every[int(lineage["parent_task_id"])]
        assert parent["status"] == "accepted"
        expected = 1 if parent["origin"] == "seed" else parent["lineage"]["evolution_depth"] + 1
        assert lineage["evolution_depth"] == expected <= 2
        depths[str(task["id"])] = expected
    # with three seeds, twelve evolutions must have evolved some evolved tasks again
    assert 2 in depths.values()
    stats = api.get("/v1/datasets/small/stats").json()
    assert stats["by_origin"]["evolved"] == 12
    by_op = stats["evolved"]
    assert set(by_op) <= {"deepen", "add_constraints"}
    assert sum(n for per_depth in by_op.values() for n in per_depth.values()) == 12
    assert sum(per_depth.get("2", 0) for per_depth in by_op.values()) == sum(
        1 for d in depths.values() if d == 2
    )


class FailedEvolutions(StubLLM):
    """Answers evolve prompts with what no evolution is: a copy, a near copy, a refusal."""

    def __init__(self) -> None:
        super().__init__()
        self.turn = 0

    def answer(self, prompt: str) -> str:
        if not prompt.rstrip().endswith("New task:"):
            return super().answer(prompt)
        given = re.search(r"Given task:\n(.*?)\n\nNew task:", prompt, re.S)
        assert given is not None
        parent = given.group(1)
        self.turn += 1
        return [
            parent,
            f"{parent.rstrip('.')} today.",
            "I'm sorry, but I cannot rewrite this task.",
            "抱歉，我无法完成这个请求。",
        ][self.turn % 4]


def test_no_real_evolution_is_rejected_as_evolution_failed(
    settings_factory: Callable[..., Settings],
) -> None:
    server = FailedEvolutions()
    server.start()
    try:
        settings = stub_settings(settings_factory, server)
        _wipe(settings.db_url)
        with TestClient(create_app(settings)) as api:
            _small_pool(api)
            body = {"target": 2, "model": STUB_MODEL, "strategy": "evolve", "prompt": {}}
            body["prompt"] = {"prompts_per_batch": 1}
            run = wait_for_run(api, api.post("/v1/datasets/small/runs", json=body).json()["id"])
            rows = _tasks(api, "small", run_id=run["id"])
    finally:
        server.stop()
    assert run["status"] == "failed" and run["stop_reason"] == "stalled", run
    assert rows and {t["rejection_reason"] for t in rows} == {"evolution_failed"}
    details = " ".join(t["rejection_detail"] for t in rows)
    assert "copies the task" in details and "declined" in details and "ROUGE-L" in details
    assert all(t["origin"] == "evolved" and t["lineage"]["parent_task_id"] for t in rows)


def test_evolve_refuses_unknown_operations(api: TestClient) -> None:
    response = api.post(
        "/v1/datasets/default/runs",
        json={"target": 2, "strategy": "evolve", "evolve": {"operations": {"shorten": 1}}},
    )
    assert response.status_code == 422
    assert "shorten" in response.text and "operations" in response.text
    zero = api.post(
        "/v1/datasets/default/runs",
        json={"target": 2, "strategy": "evolve", "evolve": {"operations": {"deepen": 0}}},
    )
    assert zero.status_code == 422 and "operations" in zero.text
    assert api.get("/v1/datasets/default/runs").json()["count"] == 0


# --- backtranslate -----------------------------------------------------------------------------

ENGLISH = (
    "Tea was first drunk in China as a medicine. Over centuries it became a daily drink, and "
    "traders carried it along the roads to Central Asia.\n\n"
    "In the seventeenth century Dutch ships brought tea to Europe, where it was at first a "
    "luxury of the rich.\n\n"
    "Today tea is the most widely drunk beverage after water."
)
CHINESE_MD = (
    "# 茶的历史\n\n茶最早在中国被当作药物饮用。几百年间，它逐渐成为日常饮品。\n\n"
    "# 茶的传播\n\n十七世纪，荷兰商船把茶叶带到欧洲，起初只是富人的奢侈品。今天，茶是仅次于水的"
    "第二大饮品。"
)


def test_backtranslate_writes_instructions_for_each_passage_once(api: TestClient) -> None:
    files = [
        ("file", ("tea.txt", ENGLISH.encode())),
        ("file", ("茶.md", CHINESE_MD.encode())),
        ("file", ("notes.jsonl", b'{"text": "Bread needs flour, water, salt."}\n')),
    ]
    posted = api.post("/v1/datasets/default/documents", files=files, params={"passage_chars": 200})
    assert posted.status_code == 201, posted.text
    docs = posted.json()["data"]
    assert [d["format"] for d in docs] == ["text", "markdown", "jsonl"]
    passages = {
        p["id"]: p
        for d in docs
        for p in api.get(f"/v1/datasets/default/documents/{d['id']}").json()["passage_list"]
    }
    assert len(passages) == sum(d["passages"] for d in docs) >= 5
    body = {"target": 100, "model": STUB_MODEL, "strategy": "backtranslate"}
    run = wait_for_run(api, api.post("/v1/datasets/default/runs", json=body).json()["id"])
    assert run["status"] == "succeeded" and run["stop_reason"] == "passages_used", (
        run["stop_reason"],
        run["error"],
        run["counters"],
    )
    assert_run_matches_rows(api.app.state.settings.db_url, run["id"])  # type: ignore[attr-defined]
    rows = _tasks(api, run_id=run["id"])
    used = [t["lineage"]["passage_id"] for t in rows]
    assert sorted(used) == sorted(passages)  # every passage once, none twice
    accepted = [t for t in rows if t["status"] == "accepted"]
    assert accepted
    for task in accepted:
        passage = passages[task["lineage"]["passage_id"]]
        assert task["origin"] == "backtranslated"
        assert task["instances"] == [{"input": "", "output": passage["text"]}]
        assert task["lineage"]["template_version"].startswith("backtranslate-v1:")
        # a Chinese passage, a Chinese task (the stub's English word salad may read as unknown)
        assert task["language"] in (passage["language"], "unknown")
    assert "zh" in {t["language"] for t in accepted}
    exported = api.get("/v1/datasets/default/export", params={"format": "alpaca"}).text
    outputs = {json.loads(line)["output"] for line in exported.splitlines()}
    assert {passages[t["lineage"]["passage_id"]]["text"] for t in accepted} <= outputs

    twice = {**body, "backtranslate": {"uses_per_passage": 2, "documents": [docs[0]["id"]]}}
    again = wait_for_run(api, api.post("/v1/datasets/default/runs", json=twice).json()["id"])
    used_again = [t["lineage"]["passage_id"] for t in _tasks(api, run_id=again["id"])]
    english = [p for p in passages if p in {q["id"] for q in _passages(api, docs[0]["id"])}]
    assert sorted(used_again) == sorted(english * 2)


def _passages(api: TestClient, document_id: int) -> list[dict[str, Any]]:
    return api.get(f"/v1/datasets/default/documents/{document_id}").json()["passage_list"]  # type: ignore[no-any-return]


class FailsOnePassage(StubLLM):
    """A server that always fails the prompt of one passage (a content filter, say)."""

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        if "POISON" in str((body or {}).get("prompt", "")):
            return Reply(status=500, body={"error": "filtered"})
        return super()._next_reply(body)


def test_a_passage_whose_requests_keep_failing_is_given_up_and_the_run_ends(
    settings_factory: Callable[..., Settings],
) -> None:
    server = FailsOnePassage()
    server.start()
    try:
        settings = stub_settings(settings_factory, server)
        _wipe(settings.db_url)
        with TestClient(create_app(settings)) as api:
            text = f"{ENGLISH}\n\nPOISON passage that the server refuses to read, every time."
            api.post(
                "/v1/datasets/default/documents",
                json={"documents": [{"name": "mixed.txt", "text": text}]},
                params={"passage_chars": 200},
            )
            body = {"target": 50, "model": STUB_MODEL, "strategy": "backtranslate"}
            run = wait_for_run(api, api.post("/v1/datasets/default/runs", json=body).json()["id"])
            rows = _tasks(api, run_id=run["id"])
    finally:
        server.stop()
    assert run["status"] == "succeeded" and run["stop_reason"] == "passages_used", (
        run["stop_reason"],
        run["error"],
        run["counters"],
    )
    assert run["counters"]["failed_requests"] == 3  # tried three times, then given up
    assert rows and all("POISON" not in t["instances"][0]["output"] for t in rows)


def test_backtranslate_needs_documents(api: TestClient) -> None:
    body = {"target": 2, "model": STUB_MODEL, "strategy": "backtranslate"}
    response = api.post("/v1/datasets/default/runs", json=body)
    assert response.status_code == 422 and "documents" in response.json()["detail"]
    unknown = {**body, "backtranslate": {"documents": [999]}}
    response = api.post("/v1/datasets/default/runs", json=unknown)
    assert response.status_code == 422 and "999" in response.json()["detail"]
    assert api.get("/v1/datasets/default/runs").json()["count"] == 0


# --- magpie ------------------------------------------------------------------------------------


@pytest.fixture
def magpie_api(
    settings_factory: Callable[..., Settings], stub: StubLLM
) -> Iterator[tuple[TestClient, StubLLM]]:
    """The stub as a llama.cpp server: it reports SmolLM2's chat template at /props."""
    stub.props = {"chat_template": CHATML, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    settings = stub_settings(settings_factory, stub)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client, stub
    _wipe(settings.db_url)


def test_magpie_prompt_is_exactly_the_templates_user_turn_prefix(
    magpie_api: tuple[TestClient, StubLLM],
) -> None:
    api, stub = magpie_api
    body = {"target": 3, "model": STUB_MODEL, "strategy": "magpie", "classify": False}
    run = wait_for_run(api, api.post("/v1/datasets/default/runs", json=body).json()["id"])
    assert run["status"] == "succeeded", run
    prompts = [r.body for r in stub.requests_to("/completions") if r.body]
    queries = [p for p in prompts if p["prompt"] == SMOLLM_USER_PREFIX]
    assert queries, [p["prompt"][:80] for p in prompts]
    assert all("<|im_end|>" in p["stop"] for p in queries)
    accepted = _tasks(api, run_id=run["id"], status="accepted")
    assert len(accepted) == 3
    answers = {p["prompt"] for p in prompts if p["prompt"] != SMOLLM_USER_PREFIX}
    for task in accepted:
        expected = f"{SMOLLM_USER_PREFIX}{task['instruction']}<|im_end|>\n<|im_start|>assistant\n"
        assert expected in answers
        assert task["instances"][0]["output"].startswith("Sure.")
        assert task["lineage"]["template_version"] == "magpie-v1"


def test_magpie_is_refused_on_chat_only_endpoints(
    settings_factory: Callable[..., Settings], stub: StubLLM
) -> None:
    settings = settings_factory(
        endpoints=[
            {"name": "chatty", "base_url": stub.base_url, "models": ["chat-only"], "mode": "chat"}
        ]
    )
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as api:
        response = api.post(
            "/v1/datasets/default/runs",
            json={"target": 2, "model": "chat-only", "strategy": "magpie"},
        )
        assert response.status_code == 422
        assert "chat-only" in response.json()["detail"] and "magpie" in response.json()["detail"]
        assert api.get("/v1/datasets/default/runs").json()["count"] == 0


def test_evolution_rules() -> None:
    from filters.heuristics import check_evolution

    parent = "Write a short poem about the sea at night."
    assert check_evolution(parent, "write a short poem about the sea at night.", 0.7).detail == (
        "copies the task it evolves"
    )
    near = check_evolution(parent, "Write a short poem about the sea at night today.", 0.7)
    assert near.reason == "evolution_failed" and rouge_l(parent, parent + " today") > 0.7
    assert not check_evolution(parent, "I cannot help with that request.", 0.7).ok
    assert not check_evolution("写一首关于海的诗。", "抱歉，我不能写这首诗。", 0.7).ok
    assert check_evolution(
        parent, "Write a sonnet about the sea at night in which every line rhymes with moon.", 0.7
    ).ok


def test_evolve_draws_a_parent_below_the_depth_limit_however_few_are_left() -> None:
    """Twenty random draws may all hit tasks at the limit; the seeds (never evolved) are then
    the parents, and only a pool with none left below the limit is out of work."""
    import random

    from app.strategies import Pool
    from app.strategies.evolve import EvolveSpec, evolve_job
    from generators.prompts import PromptExample

    pool = Pool()
    pool.add_example(PromptExample(id="s", instruction="Write a poem.", language="en"), seed=True)
    for i in range(500):
        example = PromptExample(id=f"m{i}", instruction=f"Task number {i}.", language="en")
        pool.add_example(example, seed=False)
    depths = {f"m{i}": 2 for i in range(500)}
    spec = EvolveSpec(max_depth=2)
    rng = random.Random(0)
    for _ in range(20):
        job = evolve_job(
            pool=pool, spec=spec, topic=None, language="en", wording="en", depths=depths, rng=rng
        )
        assert job is not None and job.parent.id == "s" and job.depth == 1
    no_seeds = Pool()
    for i in range(5):
        no_seeds.add_example(PromptExample(id=f"m{i}", instruction="x", language="en"), seed=False)
    assert (
        evolve_job(
            pool=no_seeds,
            spec=spec,
            topic=None,
            language="en",
            wording="en",
            depths=depths,
            rng=rng,
        )
        is None
    )
