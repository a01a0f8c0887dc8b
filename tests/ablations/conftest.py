"""An ablation's world: a dataset whose tasks come from two strategies, one of them junk, and a
scripted judge that prefers the answer holding the task's reference."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.models import Dataset, Run, RunStatus, Task, TaskOrigin
from tests.judge.conftest import JudgeStub

HELD_OUT_SHARE = 0.3
QUESTIONS = [  # every honest answer is "blue"; the held-out side asks the same kind of thing
    "What colour is the sky on a clear day at {}?",
    "Which colour do people name for a clear sky seen from {}?",
    "Name the colour of the cloudless sky above {}.",
]
PLACES = ["noon", "the beach", "a mountain", "a farm", "the harbour", "a desert", "a lake",
          "a field", "the coast", "a city roof", "a valley", "an island"]  # fmt: skip
HONEST = "blue"
_LAST_TASK = re.compile(  # the task under comparison: the text after the last "Instruction: "
    r"^(.*?)\nInput: .*?\nAnswer 1: (.*?)\nAnswer 2: (.*?)\nVerdict:\s*$", re.S
)


def question(n: int) -> str:
    return QUESTIONS[n % len(QUESTIONS)].format(PLACES[n % len(PLACES)] + f" (case {n})")


def add_tasks(engine: Engine, dataset_id: int, *, honest: int, junk: int, held_out: int) -> None:
    """`honest` train tasks of strategy self_instruct answered "blue"; `junk` train tasks of
    strategy alpaca, the same kind of question carrying the answers of unrelated arithmetic
    tasks (answers swapped between tasks); `held_out` honest tasks on the held-out side."""
    with Session(engine) as session:
        good = Run(
            dataset_id=dataset_id,
            strategy="self_instruct",
            model="stub",
            target=1,
            status=RunStatus.succeeded,
        )
        bad = Run(
            dataset_id=dataset_id,
            strategy="alpaca",
            model="stub",
            target=1,
            status=RunStatus.succeeded,
        )
        session.add_all([good, bad])
        session.flush()
        n = 0

        def task(run: Run | None, answer: str, key: float) -> Task:
            nonlocal n
            n += 1
            return Task(
                dataset_id=dataset_id,
                instruction=question(n),
                instances=[{"input": "", "output": answer}],
                origin=TaskOrigin.generated,
                language="en",
                run_id=run.id if run else None,
                holdout_key=key,
            )

        session.add_all(task(good, HONEST, 0.99) for _ in range(honest))
        session.add_all(task(bad, f"{7 + i} plus {i} is {7 + 2 * i}", 0.99) for i in range(junk))
        session.add_all(task(good, HONEST, 0.01) for _ in range(held_out))
        session.commit()


def make_pool(client: TestClient, engine: Engine, *, honest: int, junk: int, held_out: int) -> None:
    """The dataset `pool` with a held-out share and the tasks of `add_tasks`."""
    made = client.post("/v1/datasets", json={"name": "pool", "held_out_share": HELD_OUT_SHARE})
    assert made.status_code == 201, made.text
    with Session(engine) as session:
        dataset_id = session.exec(select(Dataset.id).where(Dataset.name == "pool")).one()
    add_tasks(engine, dataset_id, honest=honest, junk=junk, held_out=held_out)


def make_version(
    client: TestClient, engine: Engine, *, honest: int, junk: int, held_out: int
) -> int:
    """`make_pool`, then a version of all of it (both sides of the held-out split)."""
    make_pool(client, engine, honest=honest, junk=junk, held_out=held_out)
    version = client.post("/v1/datasets/pool/versions", json={"split": "all"})
    assert version.status_code == 201, version.text
    counts = version.json()["counts"]
    assert counts["split"] == {"held_out": held_out, "train": honest + junk}
    return int(version.json()["id"])


class ReferenceJudge(JudgeStub):
    """Rates as JudgeStub does; a comparison prefers the answer that holds the task's reference
    (a tie when both or neither do). It sees only the task, the two answers and the reference."""

    def __init__(self, references: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.references = references
        self.compared = 0

    def answer(self, prompt: str) -> str:
        found = _LAST_TASK.search(prompt.rsplit("Instruction: ", 1)[-1])
        if found is None:
            return super().answer(prompt)
        instruction, one, two = (g.strip() for g in found.groups())
        reference = self.references[instruction].lower()
        right = [reference in a.lower() for a in (one, two)]
        with self._lock:
            self.compared += 1
        winner = "tie" if right[0] == right[1] else "1" if right[0] else "2"
        return f' {{"winner": "{winner}", "rationale": "scripted: compared with the reference."}}'


@pytest.fixture
def reference_judge() -> Iterator[ReferenceJudge]:
    """The judge, with every question's reference: "blue" (the honest answer)."""
    server = ReferenceJudge({question(n): HONEST for n in range(1, 200)})
    server.start()
    yield server
    server.stop()
