"""Held-out tasks are for evaluation only: no prompt a run sends ever shows one, whether as a
bootstrap example, an evolve parent or a topic's neighbour, while the novelty filter still knows
them (a near-copy of a held-out task is not accepted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from testbed.scripted_llm import WORDS, StubLLM
from tests.runs.conftest import STUB_MODEL, wait_for_run

SHARE = 0.3


def _seeds(count: int) -> list[dict[str, Any]]:
    """Distinct English seeds of plain words, so a held-out one is found verbatim in a prompt."""
    return [
        {
            "id": f"seed_{i}",
            "instruction": f"Describe how {WORDS[i]} relates to {WORDS[-1 - i]} in daily life.",
            "instances": [{"input": "", "output": f"{WORDS[i]} and {WORDS[-1 - i]} meet often."}],
            "is_classification": False,
        }
        for i in range(count)
    ]


def _prompts(stub: StubLLM) -> list[str]:
    texts = []
    for request in stub.received:
        body = request.body or {}
        texts.append(body.get("prompt") or json.dumps(body.get("messages", []), ensure_ascii=False))
    return texts


@pytest.mark.parametrize(
    "strategy",
    [
        {},
        {"strategy": "evolve", "evolve": {"operations": {"deepen": 1}, "max_depth": 2}},
        {"topic": "daily life"},
    ],
    ids=["self_instruct", "evolve", "topic"],
)
def test_no_held_out_task_is_ever_shown_to_the_model(
    api: TestClient, stub: StubLLM, strategy: dict[str, Any]
) -> None:
    assert (
        api.post("/v1/datasets", json={"name": "held", "held_out_share": SHARE}).status_code == 201
    )
    assert api.post("/v1/datasets/held/seeds", json=_seeds(40)).status_code == 200
    tasks = api.get("/v1/datasets/held/tasks", params={"limit": 100}).json()["data"]
    held = [t["instruction"] for t in tasks if t["split"] == "held_out"]
    train = [t["instruction"] for t in tasks if t["split"] == "train"]
    assert held and train

    created = api.post(
        "/v1/datasets/held/runs", json={"target": 12, "model": STUB_MODEL, **strategy}
    )
    assert created.status_code == 201, created.text
    run = wait_for_run(api, created.json()["id"])
    assert run["status"] == "succeeded", run

    prompts = _prompts(stub)
    shown = [t for t in train if any(t in p for p in prompts)]
    assert shown, "the prompts show no pool task at all: the test would prove nothing"
    leaked = [t for t in held if any(t in p for p in prompts)]
    assert leaked == [], f"{len(leaked)} of {len(held)} held-out instructions reached a prompt"
