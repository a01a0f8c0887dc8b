"""A run in progress sees what other writers did between its commit groups: seeds imported
(even one whose ids were drawn before the run's and committed after), seeds posted again with
new text, reviews and edits. The run's next novelty check holds them: a candidate decided
before a task was known is demoted at its commit, and later candidates are screened against
the pool as the database has it.

The run is driven by hand (a RunContext, its commit groups and the driver's bookkeeping), so
the interleaving is exact; no model request is made."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.leases import claim_run
from app.llm import find_model
from app.main import create_app
from app.models import Dataset, Run, Task
from app.pipeline.context import Item, RunContext, Tally, Verdict
from app.pipeline.stages import decide, screen
from app.pipeline.storage import Committed, absorb, commit_group
from app.schemas.datasets import SeedTask, TaskEdit
from app.services.seeds import import_seeds
from app.services.tasks import edit_task
from app.settings import Settings
from app.strategies import Candidate
from filters.rouge import rouge_l
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.quality.conftest import seed
from tests.runs.conftest import STUB_MODEL, stub_settings

pytestmark = pytest.mark.both_databases

GLACIER = "Describe how a glacier carves a deep valley over thousands of years."
BUDGET = "Suggest a weekly food budget for a student who lives alone in a city."
BUDGET_NOW = "Compare the protein in walnut and almond snacks for a marathon runner."
HARBOR = "Explain why the harbor lights of a fishing town guide the boats at night."
SONNET = "Write a sonnet about a quiet orchard in the first frost of winter."
SONNET_EDITED = "Write a limerick about a noisy kettle that wakes the whole house up."


def near(text: str) -> str:
    """The text with its last word changed: ROUGE-L (n-1)/n, well above 0.7."""
    copy = " ".join([*text.split()[:-1], "today."])
    assert rouge_l(copy, text) > 0.7
    return copy


@pytest.fixture
def api(settings_factory: Callable[..., Settings], stub: StubLLM) -> Iterator[TestClient]:
    """The service with no worker of its own: this test is the run's worker."""
    settings = stub_settings(settings_factory, stub, embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


class HandRun:
    """One execution of a run, its commit groups driven one at a time."""

    def __init__(self, api: TestClient, dataset: str) -> None:
        settings: Settings = api.app.state.settings  # type: ignore[attr-defined]
        self.engine = make_engine(settings)
        body = {"target": 20, "model": STUB_MODEL, "classify": False, "generate_instances": False}
        created = api.post(f"/v1/datasets/{dataset}/runs", json=body)
        assert created.status_code == 201, created.text
        self.run_id: int = created.json()["id"]
        lease = claim_run(
            self.engine, worker_id="hand", run_id=self.run_id, lease_seconds=60, attempts=3
        )
        assert lease is not None
        with Session(self.engine, expire_on_commit=False) as session:
            run = session.exec(select(Run).where(Run.id == self.run_id)).one()
            found = session.exec(select(Dataset).where(Dataset.id == run.dataset_id)).one()
        model = find_model(settings, STUB_MODEL, self.engine)

        async def build() -> RunContext:  # a backend belongs to an event loop; none is used
            return RunContext(
                engine=self.engine, settings=settings, run=run, dataset=found, model=model
            )

        self.ctx = asyncio.run(build())
        self.ctx.lease = lease

    def decide(self, text: str) -> Verdict:
        """A candidate through screening and the decision, as the stream takes it."""
        item = screen(self.ctx, Candidate(instruction=text, lineage=dict(self.ctx.lineage)), set())
        assert isinstance(item, Item), item
        return decide(self.ctx, item)

    def screened(self, text: str) -> Item | Verdict:
        return screen(self.ctx, Candidate(instruction=text, lineage=dict(self.ctx.lineage)), set())

    def commit(self, verdicts: list[Verdict]) -> Committed:
        """One commit group and the driver's bookkeeping after it."""
        done = commit_group(self.ctx, verdicts, Tally(), self.ctx.foreign, {})
        assert done.running
        absorb(self.ctx, done)
        return done


def task_id(engine: sa.Engine, instruction: str) -> int:
    with Session(engine) as session:
        return session.exec(select(Task.id).where(Task.instruction == instruction)).one()  # type: ignore[return-value]


def too_similar_to(verdict: Item | Verdict, task: int) -> bool:
    return (
        isinstance(verdict, Verdict)
        and verdict.reason == "too_similar"
        and verdict.nearest[0]["task_id"] == task
    )


def commit_while_paused(hand: HandRun, write: Callable[[Session], Any], v: Verdict) -> Committed:
    """`write` runs in a session of its own and waits after its first flush (its task ids are
    drawn) while the run commits `v`; then it commits. The writer holds the dataset's lock, so
    the run's commit waits for it and reads what it wrote."""
    drawn, go = threading.Event(), threading.Event()

    def writer() -> None:
        with Session(hand.engine, expire_on_commit=False) as session:

            def pause(*_: Any) -> None:
                if not drawn.is_set():
                    drawn.set()
                    go.wait(timeout=30)

            sa.event.listen(session, "after_flush_postexec", pause)
            write(session)

    writing = threading.Thread(target=writer)
    writing.start()
    assert drawn.wait(timeout=30)
    done: list[Committed] = []
    committer = threading.Thread(target=lambda: done.append(hand.commit([v])))
    committer.start()
    committer.join(timeout=0.5)
    still_waiting = committer.is_alive()
    go.set()
    writing.join(timeout=30)
    committer.join(timeout=30)
    assert still_waiting, "the run's commit did not wait for the writer's lock"
    return done[0]


def test_a_run_sees_seeds_imported_and_tasks_changed_between_its_commits(api: TestClient) -> None:
    assert api.post("/v1/datasets", json={"name": "sync"}).status_code == 201
    seeds = [seed("glacier", GLACIER), seed("budget", BUDGET)]
    assert api.post("/v1/datasets/sync/seeds", json=seeds).status_code == 200
    hand = HandRun(api, "sync")
    try:
        first = hand.decide(SONNET)
        hand.commit([first])
        sonnet = task_id(hand.engine, SONNET)

        # A seed import draws its ids and waits; meanwhile the run decides a near-copy of that
        # seed (nothing in the pool is near it yet) and commits it.
        def import_harbor(session: Session) -> None:
            dataset = session.exec(select(Dataset).where(Dataset.name == "sync")).one()
            new = SeedTask.model_validate(seed("harbor", HARBOR))
            import_seeds(session=session, dataset=dataset, seeds=[new])

        copy = hand.decide(near(HARBOR))
        assert copy.status == "accepted"  # in memory: the import has not committed
        done = commit_while_paused(hand, import_harbor, copy)
        harbor = task_id(hand.engine, HARBOR)
        assert [r.id for r in done.foreign] == [harbor]
        assert done.stored[copy.key] > harbor  # its id was drawn after the seed's
        assert done.demoted == [copy] and too_similar_to(copy, harbor)
        # The next candidate near it is turned away at screening.
        assert too_similar_to(hand.screened(near(HARBOR) + " Please."), harbor)

        # A reviewer's edit of the run's own task draws the new task's id and waits; a
        # near-copy of the edited text is committed meanwhile. The edit replaces the original
        # in the pool.
        def edit_sonnet(session: Session) -> None:
            edit_task(session=session, task_id=sonnet, edit=TaskEdit(instruction=SONNET_EDITED))

        copy = hand.decide(near(SONNET_EDITED))
        done = commit_while_paused(hand, edit_sonnet, copy)
        edited = task_id(hand.engine, SONNET_EDITED)
        assert [r.id for r in done.foreign] == [edited] and done.withdrawn == [sonnet]
        assert too_similar_to(copy, edited)
        assert isinstance(hand.screened(near(SONNET)), Item)
        assert too_similar_to(hand.screened(near(SONNET_EDITED) + " Please."), edited)

        # The budget seed is posted again with new text (same id) while a near-copy of the new
        # text waits for its commit: the commit demotes it, and the old text no longer counts.
        budget = task_id(hand.engine, BUDGET)
        waiting = hand.decide(near(BUDGET_NOW))
        assert waiting.status == "accepted"
        again = api.post("/v1/datasets/sync/seeds", json=[seed("budget", BUDGET_NOW)])
        assert again.json()["updated"] == 1
        done = hand.commit([waiting])
        assert [r.id for r in done.changed] == [budget]
        assert too_similar_to(waiting, budget)
        assert isinstance(hand.screened(near(BUDGET)), Item)

        # A reviewer rejects the glacier seed: the pool lets a near-copy through; accepting it
        # again brings it back at the next commit.
        glacier = task_id(hand.engine, GLACIER)
        api.patch(f"/v1/tasks/{glacier}", json={"status": "rejected", "note": "off topic"})
        assert hand.commit([]).withdrawn == [glacier]
        assert isinstance(hand.screened(near(GLACIER)), Item)
        api.patch(f"/v1/tasks/{glacier}", json={"status": "accepted"})
        assert [r.id for r in hand.commit([]).changed] == [glacier]
        assert too_similar_to(hand.screened(near(GLACIER)), glacier)

        with Session(hand.engine) as session:
            stored = session.exec(select(Task).where(Task.instruction == near(HARBOR))).one()
        assert (stored.status, stored.rejection_reason) == ("rejected", "too_similar")
        assert stored.nearest[0]["task_id"] == harbor
    finally:
        hand.engine.dispose()
