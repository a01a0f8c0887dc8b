"""A recipe's steps as child jobs: each is made by its kind's own service function (the same one
its endpoint calls), and the child's id is written into the recipe's state in the transaction
that makes the child, so a recipe resumed after kill -9 finds every child it made and makes none
twice.

How one transaction holds both: the service functions commit by themselves, so the recipe's
write rides on that commit through two session hooks: `after_flush` spots the child row among
the new ones, `before_commit` writes its id into the recipe (fenced by the recipe's lease). A
recipe that lost its lease raises there, and the child is rolled back with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from app import faults
from app.leases import FINAL, Lease
from app.models import (
    DatasetVersion,
    Evaluation,
    FineTuningJobRow,
    JudgementJob,
    Recipe,
    RecipeEvent,
    Run,
    utcnow,
)


def queue(session: Session, *, name: str, dataset_id: int, document: dict[str, Any]) -> Recipe:
    """A checked recipe (or an ablation written as one) queued: its row, at round 1 step 0, and
    its `queued` event."""
    recipe = Recipe(
        name=name,
        dataset_id=dataset_id,
        document=document,
        status="queued",
        state={"round": 1, "step": 0, "children": {}, "rounds": []},
    )
    session.add(recipe)
    session.flush()
    assert recipe.id is not None
    session.add(RecipeEvent(recipe_id=recipe.id, kind="status", data={"status": "queued"}))
    session.commit()
    session.refresh(recipe)
    return recipe


# A child's kind (as the recipe's state and API name it) and its table.
CHILD_MODELS: dict[str, type[SQLModel]] = {
    "run": Run,
    "judgement": JudgementJob,
    "version": DatasetVersion,
    "finetune": FineTuningJobRow,
    "evaluation": Evaluation,
    "ablation": Recipe,  # an ablation runs as a recipe of its own
}
STEP_CHILD = {
    "generate": "run",
    "judge": "judgement",
    "version": "version",
    "finetune": "finetune",
    "evaluate": "evaluation",
    "ablation": "ablation",
}


class LeaseLost(Exception):
    """The recipe was cancelled or taken over while a child was being made: nothing was."""


@dataclass(frozen=True)
class ChildState:
    status: str
    error: str | None
    lease_expires_at: Any = None


def step_key(round_no: int, step: str) -> str:
    return f"{round_no}:{step}"


def create_child(
    *,
    engine: Engine,
    lease: Lease | None,
    recipe_id: int,
    key: str,
    kind: str,
    create: Callable[[Session], Any],
) -> Any:
    """Call `create(session)` (a service function that commits) and record the child it made
    under `key` in the recipe's state, in that commit. Raises what `create` raises (nothing is
    recorded then) or LeaseLost."""
    model = CHILD_MODELS[kind]
    made: list[Any] = []
    recorded: list[bool] = []

    def after_flush(session: Session, _context: Any) -> None:
        if not made:
            made.extend(obj for obj in session.new if isinstance(obj, model))

    def before_commit(session: Session) -> None:
        session.flush()  # the child's id, when the service left it unflushed
        if not made or recorded:
            return  # an earlier commit of the service (a stored file): not the child's
        child_id = made[0].id
        held = lease.held() if lease is not None else col(Recipe.id) == recipe_id
        conn = session.connection()
        state = conn.execute(
            sa.select(col(Recipe.state)).where(held).with_for_update()
        ).scalar_one_or_none()
        if state is None:
            raise LeaseLost(f"recipe {recipe_id} is no longer this worker's")
        children = {**state.get("children", {}), key: {"kind": kind, "id": child_id}}
        now = utcnow()
        conn.execute(
            sa.update(Recipe)
            .where(held)
            .values(state={**state, "children": children}, progressed=True, updated_at=now)
        )
        conn.execute(
            sa.insert(RecipeEvent).values(
                recipe_id=recipe_id,
                kind="child_created",
                data={"step": key, "kind": kind, "id": child_id},
                created_at=now,
            )
        )
        recorded.append(True)
        faults.point("recipe:committing")

    with Session(engine, expire_on_commit=False) as session:
        event.listen(session, "after_flush", after_flush)
        event.listen(session, "before_commit", before_commit)
        return create(session)


def _message(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, dict):  # a fine-tune job's OpenAI-shaped error
        return f"{error.get('code')}: {error.get('message')}"
    return str(error)


def child_state(engine: Engine, kind: str, child_id: Any) -> ChildState | None:
    """A child's status and error now; None when the row is gone (its dataset was deleted)."""
    if kind == "version":
        with Session(engine) as session:
            found = session.get(DatasetVersion, child_id)
        return ChildState("succeeded", None) if found is not None else None
    model: Any = CHILD_MODELS[kind]
    with Session(engine) as session:
        row = session.exec(
            select(model.status, model.error, model.lease_expires_at).where(model.id == child_id)
        ).first()
    if row is None:
        return None
    status, error, expires = row
    return ChildState(str(status), _message(error), expires)


def is_final(state: ChildState | None) -> bool:
    return state is None or state.status in FINAL


def cancel_child(session: Session, kind: str, child_id: Any) -> None:
    """Cancel a recipe's running child with its kind's own cancel (a version has none)."""
    from app import leases

    if kind == "version":
        return
    row = session.get(CHILD_MODELS[kind], child_id)
    if row is not None and getattr(row, "status", None) not in FINAL:
        leases.cancel(session, row)
