"""A user starts generation runs over HTTP and watches them reach their target."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from filters.novelty import NoveltyIndex
from testbed.scripted_llm import Reply, StubLLM, completion_body
from tests.factories import seed
from tests.runs.conftest import STUB_MODEL, wait_for_run


def _tasks(client: TestClient, dataset: str = "default", **params: object) -> list[dict]:  # type: ignore[type-arg]
    return client.get(f"/v1/datasets/{dataset}/tasks", params={"limit": 1000, **params}).json()[
        "data"
    ]


@pytest.mark.both_databases
def test_run_reaches_target_with_counters_equal_to_rows(api: TestClient) -> None:
    created = api.post("/v1/datasets/default/runs", json={"target": 6, "model": STUB_MODEL})
    assert created.status_code == 201, created.text
    run = wait_for_run(api, created.json()["id"])
    assert run["status"] == "succeeded"
    assert run["stop_reason"] == "target_reached"
    counters = run["counters"]
    generated = _tasks(api, run_id=run["id"])
    accepted = [t for t in generated if t["status"] == "accepted"]
    rejected = [t for t in generated if t["status"] == "rejected"]
    assert counters["accepted"] == len(accepted) == 6
    assert counters["rejected"] == len(rejected)
    assert counters["candidates"] == len(generated)
    assert counters["rejected_by_reason"] == dict(Counter(t["rejection_reason"] for t in rejected))
    assert counters["instances"] == sum(len(t["instances"]) for t in accepted)
    assert counters["requests"] > 0 and counters["prompt_tokens"] > 0
    for task in accepted:
        assert task["origin"] == "generated"
        assert task["instances"], task
        assert task["max_rouge"] is not None and task["max_rouge"] <= 0.7
        assert task["nearest"] and task["nearest"][0]["score"] == task["max_rouge"]
        lineage = task["lineage"]
        assert lineage["model"] == STUB_MODEL
        assert lineage["template_version"].startswith("bootstrap-v1")
        assert len(lineage["example_task_ids"]) == 8
        assert lineage["sampling"]["temperature"] == 0.7
    instructions = [t["instruction"] for t in accepted]
    assert len(set(instructions)) == len(instructions)
    exported = api.get("/v1/datasets/default/export", params={"format": "alpaca"}).text
    assert len(exported.splitlines()) == counters["instances"]


def test_defaults_are_the_papers(api: TestClient) -> None:
    created = api.post("/v1/datasets/default/runs", json={"target": 20})
    assert created.status_code == 201
    params = created.json()["params"]
    assert created.json()["model"] == "SmolLM2-135M-Instruct"
    assert params["strategy"] == "self_instruct"
    assert params["sampling"] == {
        "temperature": 0.7,
        "top_p": 0.5,
        "presence_penalty": 2.0,
        "frequency_penalty": 0.0,
        "max_tokens": 1024,
    }
    assert params["prompt"]["examples_per_prompt"] == 8
    assert params["prompt"]["machine_examples"] == 2
    assert params["prompt"]["prompts_per_batch"] == 5
    assert params["prompt"]["stop_at"] == 16
    assert params["filters"]["rouge_threshold"] == 0.7
    cancelled = api.post(f"/v1/runs/{created.json()['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"


def test_impossible_runs_are_refused(api: TestClient) -> None:
    def post(body: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
        r = api.post("/v1/datasets/default/runs", json=body)
        return r.status_code, r.json()

    assert post({"target": 0})[0] == 422
    status, body = post({"target": 5, "colour": "red"})
    assert status == 422 and "colour" in body["detail"]
    status, body = post({"target": 5, "prompt": {"examples_per_prompt": 4, "machine_examples": 5}})
    assert status == 422 and "machine_examples" in body["detail"]
    status, body = post({"target": 5, "sampling": {"top_p": 0}})
    assert status == 422 and "top_p" in body["detail"]
    status, body = post({"target": 5, "model": "gpt-imaginary"})
    assert status == 404 and "GET /v1/models" in body["detail"]
    assert post({"target": 5, "strategy": "template"})[0] == 422
    assert post({"target": 10**9})[0] == 413
    assert api.post("/v1/datasets/nope/runs", json={"target": 1}).status_code == 404
    assert api.get("/v1/datasets/default/runs").json()["count"] == 0


@pytest.mark.both_databases
def test_cancel_stops_within_a_second_and_is_idempotent(api: TestClient, stub: StubLLM) -> None:
    """With dozens of requests in flight, cancel stops new requests and nothing more is
    stored: what was in flight is dropped, so counters still equal rows."""
    stub.delay_s = 0.05
    run_id = api.post(
        "/v1/datasets/default/runs", json={"target": 10_000, "model": STUB_MODEL}
    ).json()["id"]
    for _ in range(200):
        if api.get(f"/v1/runs/{run_id}").json()["counters"]["accepted"] >= 20:
            break
        time.sleep(0.05)
    first = api.post(f"/v1/runs/{run_id}/cancel").json()
    assert first["status"] == "cancelled"
    # the worker sees it within about a second (not asserted: a loaded machine is slower) and
    # sends nothing more
    sent, deadline = len(stub.received), time.monotonic() + 15
    while True:
        time.sleep(1.0)
        if len(stub.received) == sent:
            break
        sent = len(stub.received)
        assert time.monotonic() < deadline, "requests were still sent long after cancel"
    later = api.get(f"/v1/runs/{run_id}").json()
    assert later["status"] == "cancelled" and later["stop_reason"] == "cancelled"
    assert later["counters"]["candidates"] == first["counters"]["candidates"]
    assert len(_tasks(api, run_id=run_id)) == later["counters"]["candidates"]
    assert api.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"


@pytest.mark.both_databases
def test_caps_stop_the_run_and_say_which(api: TestClient) -> None:
    run_id = api.post(
        "/v1/datasets/default/runs",
        json={"target": 10_000, "model": STUB_MODEL, "caps": {"max_requests": 3}},
    ).json()["id"]
    run = wait_for_run(api, run_id)
    assert run["status"] == "succeeded"
    assert run["stop_reason"] == "max_requests"
    assert run["counters"]["requests"] == 3  # never one more, with 32 slots free
    run_id = api.post(
        "/v1/datasets/default/runs",
        json={"target": 10_000, "model": STUB_MODEL, "caps": {"max_tokens": 50}},
    ).json()["id"]
    assert wait_for_run(api, run_id)["stop_reason"] == "max_tokens"


def test_failing_backend_is_counted_and_fails_the_run_clearly(
    api: TestClient, stub: StubLLM
) -> None:
    stub.enqueue(*[Reply(status=500, body={"error": {"message": "boom"}})] * 200)
    run = wait_for_run(
        api,
        api.post("/v1/datasets/default/runs", json={"target": 3, "model": STUB_MODEL}).json()["id"],
    )
    assert run["status"] == "failed"
    assert run["stop_reason"] == "backend_failing"
    assert "500" in run["error"]
    assert run["counters"]["failed_requests"] == run["counters"]["requests"] >= 3
    assert run["counters"]["accepted"] == 0


def test_garbage_text_never_crashes_the_run(api: TestClient, stub: StubLLM) -> None:
    from testbed.scripted_llm import completion_body

    stub.enqueue(
        *[Reply(body=completion_body("%%%% ### \x00 ~~")) for _ in range(5)],
        Reply(body=b"{not json"),
        Reply(body={"choices": []}),
    )
    run = wait_for_run(
        api,
        api.post("/v1/datasets/default/runs", json={"target": 3, "model": STUB_MODEL}).json()["id"],
    )
    assert run["status"] == "succeeded"
    assert run["counters"]["accepted"] == 3


def test_event_stream_reports_verdicts_and_the_end(api: TestClient) -> None:
    run_id = api.post("/v1/datasets/default/runs", json={"target": 2, "model": STUB_MODEL}).json()[
        "id"
    ]
    kinds: list[str] = []
    candidates: list[dict] = []  # type: ignore[type-arg]
    with api.stream("GET", f"/v1/runs/{run_id}/events", params={"poll_seconds": 0.05}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                kinds.append(event)
            elif line.startswith("data:") and event == "candidate":
                candidates.append(json.loads(line.split(":", 1)[1])["data"])
    assert kinds[0] == "status" and kinds[-1] == "end"
    assert "counters" in kinds
    assert sum(c["status"] == "accepted" for c in candidates) == 2
    assert all("score" in c and "reason" in c for c in candidates)


def test_chinese_seeds_produce_chinese_tasks_with_no_setting(api: TestClient) -> None:
    api.post("/v1/datasets", json={"name": "zh"})  # no language: the seeds tell
    seeds = [
        seed(instruction=f"请用一句话介绍{city}的历史。")
        for city in ["北京", "上海", "西安", "南京", "成都", "杭州", "广州", "苏州", "重庆"]
    ]
    api.post("/v1/datasets/zh/seeds", json=seeds)
    run = wait_for_run(
        api, api.post("/v1/datasets/zh/runs", json={"target": 3, "model": STUB_MODEL}).json()["id"]
    )
    assert run["status"] == "succeeded", run
    accepted = _tasks(api, "zh", run_id=run["id"], status="accepted")
    assert len(accepted) == 3
    assert all("\u4e00" <= t["instruction"][0] <= "\u9fff" for t in accepted)
    assert "starts_with_symbol" not in run["counters"]["rejected_by_reason"]
    assert accepted[0]["lineage"]["template_version"].endswith(":zh")


def test_template_strategy_and_topic(api: TestClient) -> None:
    body = {
        "target": 4,
        "model": STUB_MODEL,
        "strategy": "template",
        "classify": False,
        "template": {
            "templates": ["Give three tips for {activity} in {season} weather."],
            "values": {
                "activity": ["running", "cycling", "sailing", "climbing"],
                "season": ["winter", "summer", "autumn"],
            },
        },
        "filters": {"rouge_threshold": 0.9},
    }
    run = wait_for_run(api, api.post("/v1/datasets/default/runs", json=body).json()["id"])
    assert run["status"] == "succeeded", run
    accepted = _tasks(api, run_id=run["id"], status="accepted")
    assert all(t["instruction"].startswith("Give three tips for") for t in accepted)
    assert accepted[0]["lineage"]["slots"]["season"] in {"winter", "summer", "autumn"}

    topic = wait_for_run(
        api,
        api.post(
            "/v1/datasets/default/runs",
            json={"target": 2, "model": STUB_MODEL, "topic": "email to a customer"},
        ).json()["id"],
    )
    task = _tasks(api, run_id=topic["id"], status="accepted")[0]
    shown = {int(i) for i in task["lineage"]["example_task_ids"]}
    pool = NoveltyIndex(
        (t["id"], t["instruction"])
        for t in _tasks(api, status="accepted")
        if t["run_id"] != topic["id"]
    )
    nearest = {key for key, _ in pool.nearest("email to a customer", k=16)}
    assert shown <= nearest, "examples must come from the tasks nearest to the topic"


def test_the_mixed_starter_pool_grows_in_both_languages_with_stats_for_each(
    api: TestClient,
) -> None:
    """No setting at all: the starter pool holds English and Chinese seeds, so a run accepts
    tasks in both, each judged by its own rules, and the stats report each language in its own
    unit, with verb-noun pairs from a tagger for Chinese and leading words for English."""
    dataset = api.get("/v1/datasets/default").json()
    assert dataset["language"] is None
    assert set(dataset["languages"]) == {"en", "zh"} and dataset["languages"]["en"] > 0.5
    run = wait_for_run(
        api,
        api.post("/v1/datasets/default/runs", json={"target": 30, "model": STUB_MODEL}).json()[
            "id"
        ],
    )
    assert run["status"] == "succeeded", run
    accepted = _tasks(api, run_id=run["id"], status="accepted")
    # the stub's English is random words: some are too odd for the detector to be sure of
    assert {"en", "zh"} <= {t["language"] for t in accepted} <= {"en", "zh", "unknown"}
    for task in accepted:
        chinese = "\u4e00" <= task["instruction"][0] <= "\u9fff"
        assert task["language"] in (("zh",) if chinese else ("en", "unknown"))
    stats = api.get("/v1/datasets/default/stats").json()["by_language"]
    assert stats["zh"]["unit"] == "characters" and stats["en"]["unit"] == "words"
    assert stats["zh"]["leading_kind"] == "verb_noun_pairs"
    assert all(pair.startswith("解释") for pair, _ in stats["zh"]["leading"])
    assert stats["en"]["leading_kind"] == "leading_words"
    assert sum(s["instructions"] for s in stats.values()) == 30
    zh = [t for t in accepted if t["language"] == "zh"]
    assert stats["zh"]["mean_instruction_length"] == pytest.approx(
        sum(len(t["instruction"]) - 1 for t in zh) / len(zh),
        abs=0.01,  # characters, no "。"
    )


def test_an_english_pool_rejects_a_chinese_candidate(api: TestClient, stub: StubLLM) -> None:
    api.post("/v1/datasets", json={"name": "en-only"})
    seeds = [
        seed(instruction=f"Explain the history of the city of {c} in two sentences.")
        for c in ["Paris", "Rome", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Hanoi"]
    ]
    api.post("/v1/datasets/en-only/seeds", json=seeds)
    stub.enqueue(
        Reply(
            body=completion_body(
                " 请解释量子纠缠的基本含义并举一个例子。\n"
                "10. Describe the rules of cricket to a child."
            )
        )
    )
    run = wait_for_run(
        api,
        api.post("/v1/datasets/en-only/runs", json={"target": 1, "model": STUB_MODEL}).json()["id"],
    )
    rejected = _tasks(api, "en-only", run_id=run["id"], status="rejected")
    chinese = [t for t in rejected if t["instruction"].startswith("请解释量子纠缠")]
    assert chinese and chinese[0]["rejection_reason"] == "language_not_in_pool"
    assert "holds en" in chinese[0]["rejection_detail"]


def test_a_run_may_ask_for_a_language_the_seeds_are_not_in(api: TestClient) -> None:
    api.post("/v1/datasets", json={"name": "en-seeds"})
    seeds = [
        seed(instruction=f"Explain the history of the city of {c} in two sentences.")
        for c in ["Paris", "Rome", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Hanoi"]
    ]
    api.post("/v1/datasets/en-seeds/seeds", json=seeds)
    assert api.get("/v1/datasets/en-seeds").json()["languages"] == {"en": 1.0}
    run = wait_for_run(
        api,
        api.post(
            "/v1/datasets/en-seeds/runs", json={"target": 3, "model": STUB_MODEL, "language": "zh"}
        ).json()["id"],
    )
    assert run["status"] == "succeeded", run
    accepted = _tasks(api, "en-seeds", run_id=run["id"], status="accepted")
    assert len(accepted) == 3 and {t["language"] for t in accepted} == {"zh"}
    refused = api.post(
        "/v1/datasets/en-seeds/runs", json={"target": 3, "model": STUB_MODEL, "language": "fr"}
    )
    assert refused.status_code == 422
    assert "has no prompts; supported: en, zh" in refused.text
    refused = api.post("/v1/datasets", json={"name": "fr", "language": "fr"})
    assert refused.status_code == 422 and "supported: en, zh" in refused.text


def test_stats_describe_the_grown_pool(api: TestClient) -> None:
    body = {"target": 5, "model": STUB_MODEL, "language": "en"}  # English tasks only
    run = wait_for_run(api, api.post("/v1/datasets/default/runs", json=body).json()["id"])
    stats = api.get("/v1/datasets/default/stats").json()
    accepted = _tasks(api, run_id=run["id"], status="accepted")
    assert stats["instructions"] == len(accepted) == 5
    assert stats["seeds"] == api.get("/v1/datasets/default").json()["seeds"]
    assert stats["classification"] + stats["non_classification"] == 5
    assert stats["instances"] == sum(len(t["instances"]) for t in accepted)
    assert sum(b["count"] for b in stats["rouge_to_nearest_seed"]) == 5
    assert stats["rejected_by_reason"] == run["counters"]["rejected_by_reason"]
    verbs = dict(stats["leading_words"])
    assert sum(verbs.values()) == 5
    assert set(verbs) <= {
        v.lower()
        for v in "Explain Describe Compare Summarise Suggest Outline Rank Critique "
        "Plan Define".split()
    }
    assert stats["mean_instruction_words"] == pytest.approx(
        sum(len(t["instruction"].split()) for t in accepted) / 5, abs=0.01
    )
    lengths = sorted(len(t["instruction"].split()) for t in accepted)
    bins = stats["instruction_length"]
    assert sum(b["count"] for b in bins) == 5
    assert [b["count"] for b in bins] == [
        sum(1 for w in lengths if b["low"] <= w < b["high"] or (b is bins[-1] and w >= b["low"]))
        for b in bins
    ]
    outputs = sum(b["count"] for b in stats["output_length"])
    assert outputs == sum(b["count"] for b in stats["input_length"]) == stats["instances"]
    assert api.get("/v1/datasets/nope/stats").status_code == 404


def test_cost_follows_the_price_table(settings_factory, stub: StubLLM) -> None:  # type: ignore[no-untyped-def]
    from app.main import create_app
    from tests.runs.conftest import stub_settings

    prices = {STUB_MODEL: {"prompt_per_1k": 1.0, "completion_per_1k": 2.0}}
    settings = stub_settings(settings_factory, stub, prices=prices)
    with TestClient(create_app(settings)) as client:
        run = wait_for_run(
            client,
            client.post(
                "/v1/datasets/default/runs", json={"target": 2, "model": STUB_MODEL}
            ).json()["id"],
        )
        c = run["counters"]
        assert c["cost"] == pytest.approx(
            c["prompt_tokens"] / 1000 + 2 * c["completion_tokens"] / 1000
        )
        capped = wait_for_run(
            client,
            client.post(
                "/v1/datasets/default/runs",
                json={"target": 10_000, "model": STUB_MODEL, "caps": {"max_cost": 0.01}},
            ).json()["id"],
        )
        assert capped["stop_reason"] == "max_cost" and capped["counters"]["cost"] >= 0.01


class ChineseAnswers(StubLLM):
    """Writes every instance's output in Chinese, whatever the task's language."""

    def answer(self, prompt: str) -> str:
        if prompt.rstrip().endswith(("Example 1", "示例 1")):
            return "\nInput: \nOutput: 这是一个用中文写的回答，与任务的语言不同。"
        return super().answer(prompt)


def test_outputs_in_a_language_nobody_asked_for_are_dropped_and_counted(
    settings_factory,  # type: ignore[no-untyped-def]
) -> None:
    from app.main import create_app
    from tests.conftest import _wipe
    from tests.runs.conftest import stub_settings

    llm = ChineseAnswers()
    llm.start()
    settings = stub_settings(settings_factory, llm)
    _wipe(settings.db_url)
    try:
        with TestClient(create_app(settings)) as client:
            body = {"target": 1, "model": STUB_MODEL, "language": "en"}
            run_id = client.post("/v1/datasets/default/runs", json=body).json()["id"]
            deadline = time.monotonic() + 60
            while (
                client.get(f"/v1/runs/{run_id}").json()["counters"]["instances_wrong_language"] < 3
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            run = client.post(f"/v1/runs/{run_id}/cancel").json()
    finally:
        llm.stop()
        _wipe(settings.db_url)
    assert run["counters"]["accepted"] == 0
    assert run["counters"]["rejected_by_reason"].get("no_valid_instances", 0) >= 3


def test_seeds_too_short_to_tell_are_kept_as_unknown(api: TestClient) -> None:
    api.post("/v1/datasets", json={"name": "mixed"})
    seeds = [
        seed(instruction="Explain the water cycle to a ten-year-old child."),
        seed(instruction="12 + 30 = ?"),
        seed(instruction="请解释水循环的过程。"),
        seed(instruction="Describe how bees make honey in a hive."),
    ]
    assert api.post("/v1/datasets/mixed/seeds", json=seeds).status_code in (200, 201)
    shares = api.get("/v1/datasets/mixed").json()["languages"]
    assert shares == {"en": 0.5, "unknown": 0.25, "zh": 0.25}
    tasks = _tasks(api, "mixed", origin="seed")
    assert {t["instruction"]: t["language"] for t in tasks}["12 + 30 = ?"] == "unknown"


def test_a_cost_cap_on_a_model_with_no_known_price_is_refused(api: TestClient) -> None:
    """It could never fire: the run would spend without limit while the user thinks it is capped."""
    response = api.post(
        "/v1/datasets/default/runs",
        json={"target": 5, "model": STUB_MODEL, "caps": {"max_cost": 1.0}},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "caps.max_cost"
    assert STUB_MODEL in response.json()["detail"]
    assert api.get("/v1/datasets/default/runs").json()["count"] == 0
    # the bundled model is known to cost nothing: its cap is accepted
    local = api.post("/v1/datasets/default/runs", json={"target": 1, "caps": {"max_cost": 1.0}})
    assert local.status_code == 201
    api.post(f"/v1/runs/{local.json()['id']}/cancel")


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_show_model_calls_replicas_and_verdicts_after_a_run(
    api: TestClient, stub: StubLLM
) -> None:
    before = api.get("/metrics").text
    run = wait_for_run(
        api,
        api.post("/v1/datasets/default/runs", json={"target": 4, "model": STUB_MODEL}).json()["id"],
    )
    text = api.get("/metrics").text
    ok = {"model": STUB_MODEL, "backend": "openai", "outcome": "ok"}
    sent = _metric(text, "selfinstruct_model_requests_total", **ok) - _metric(
        before, "selfinstruct_model_requests_total", **ok
    )
    assert sent == run["counters"]["requests"] - run["counters"]["failed_requests"] > 0
    for kind, counter in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        grew = _metric(text, "selfinstruct_model_tokens_total", model=STUB_MODEL, kind=kind) - (
            _metric(before, "selfinstruct_model_tokens_total", model=STUB_MODEL, kind=kind)
        )
        assert grew == run["counters"][counter]
    assert (
        _metric(text, "selfinstruct_model_request_duration_seconds_count", model=STUB_MODEL) >= sent
    )
    served = _metric(
        text, "selfinstruct_replica_attempts_total", base_url=stub.base_url, outcome="served"
    )
    assert served >= sent
    accepted = _metric(text, "selfinstruct_candidates", dataset="default", verdict="accepted")
    assert accepted == run["counters"]["accepted"] == 4
    for reason, n in run["counters"]["rejected_by_reason"].items():
        assert (
            _metric(
                text,
                "selfinstruct_candidates",
                dataset="default",
                verdict="rejected",
                reason=reason,
            )
            == n
        )
