"""A recipe's execution: its steps in order, round after round, each a child job made by its
kind's service function and waited for; the round's row and the stopping rules after each round.

Resuming. Where the recipe is (round, step) and every child's id are in its state, the id written
in the transaction that made the child (app/services/recipe_steps.py). A worker that claims the
recipe after kill -9 starts at the recorded step: a recorded child is waited for, never made
again; a step is passed only once its child ended well, in a fenced commit.

Who executes the children. A run (of one shard), a judgement job or an evaluation is work for a
generation worker, and the recipe holds one: with a single worker (the embedded one) waiting for
another would wait for ever. So the recipe's worker claims such a child itself, through the same
lease machinery, and executes it in place; when another worker took it first, it waits. A
fine-tune is claimed by a fine-tune worker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from app import faults
from app.errors import ServiceError
from app.leases import Keeper, Lease, Leased, LeaseHolder, claim, kept, release
from app.models import Dataset, Evaluation, JudgementJob, Recipe, RecipeEvent, Run, utcnow
from app.schemas.recipes import StopRules
from app.services.recipe_rounds import round_row, stop_reason, tuned_model_of
from app.services.recipe_steps import (
    STEP_CHILD,
    ChildState,
    LeaseLost,
    child_state,
    create_child,
    is_final,
    step_key,
)
from app.settings import Settings

log = logging.getLogger("selfinstruct.recipes")

POLL_SECONDS = 0.2  # how often a waited-for child's status is read
INLINE: dict[str, Leased] = {
    "run": Run,
    "judgement": JudgementJob,
    "evaluation": Evaluation,
    "ablation": Recipe,  # an ablation step's own recipe, walked in place
}


class Stopped(Exception):
    """The recipe's lease is gone (cancelled, taken over) or its worker is stopping."""


class StepFailed(Exception):
    """A step could not make its child, or its child did not succeed: the recipe fails."""


@dataclass
class ChildHolder:
    """The recipe's worker as the holder of a child it executes in place (its own lease)."""

    parent: LeaseHolder | None
    lease: Lease | None
    worker_id: str
    pools: Any = None

    @property
    def stopping(self) -> bool:
        return self.parent is not None and self.parent.stopping


class RecipeExecution:
    def __init__(
        self, *, engine: Engine, settings: Settings, recipe: Recipe, worker: LeaseHolder | None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.recipe_id: int = recipe.id  # type: ignore[assignment]
        self.dataset_id = recipe.dataset_id
        self.doc = recipe.document
        self.state: dict[str, Any] = dict(recipe.state)
        self.worker = worker
        self.lease: Lease | None = worker.lease if worker else None
        self.keeper: Keeper | None = None
        self.rules = StopRules.model_validate(self.doc.get("stop", {}))

    # --- fenced writes of the recipe ---

    def _held(self) -> sa.ColumnElement[bool]:
        return self.lease.held() if self.lease is not None else col(Recipe.id) == self.recipe_id

    def _write(self, values: dict[str, Any], event: tuple[str, dict[str, Any]] | None) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(Recipe)
                .where(self._held())
                .values(**values, progressed=True, updated_at=now)
            )
            if done.rowcount != 1:
                return False
            if event is not None:
                conn.execute(
                    sa.insert(RecipeEvent).values(
                        recipe_id=self.recipe_id, kind=event[0], data=event[1], created_at=now
                    )
                )
            if "status" in values:
                faults.point("recipe:finishing")
        return True

    def _save(self, event: tuple[str, dict[str, Any]] | None = None) -> None:
        if not self._write({"state": self.state}, event):
            raise Stopped

    def finish(self, status: str, *, stop: str | None = None, error: str | None = None) -> bool:
        values = {
            "status": status,
            "stop_reason": stop,
            "error": error,
            "state": self.state,
            "finished_at": utcnow(),
            "lease_expires_at": None,
        }
        end = {"status": status, "stop_reason": stop, "error": error}
        return self._write(values, ("end", end))

    # --- the walk ---

    async def drive(self) -> None:
        steps = self.doc["steps"]
        try:
            while self.state["round"] <= self.doc["rounds"]:
                r = self.state["round"]
                while self.state["step"] < len(steps):
                    await self._step(r, steps[self.state["step"]])
                reason = await asyncio.to_thread(self._end_round, r)
                if reason is not None:
                    await asyncio.to_thread(self.finish, "succeeded", stop=reason)
                    return
            await asyncio.to_thread(self.finish, "succeeded", stop="rounds_done")
        except Stopped:
            if self.worker is not None and self.worker.stopping and self.lease is not None:
                await asyncio.to_thread(release, self.engine, self.lease)
        except StepFailed as exc:
            await asyncio.to_thread(self.finish, "failed", error=str(exc))

    def _stopped(self) -> bool:
        lost = self.keeper is not None and self.keeper.lost.is_set()
        return lost or (self.worker is not None and self.worker.stopping)

    async def _step(self, r: int, step: dict[str, Any]) -> None:
        key = step_key(r, step["name"])
        kind = STEP_CHILD[step["kind"]]
        child = self.state["children"].get(key)
        if child is None:
            if self._stopped():
                raise Stopped
            try:
                made = await asyncio.to_thread(self._create, r, step, key, kind)
            except LeaseLost as exc:
                raise Stopped from exc
            except ServiceError as exc:
                raise StepFailed(f"step '{step['name']}' (round {r}): {exc.detail}") from exc
            child = {"kind": kind, "id": made.id}
            self.state["children"][key] = child
        ended = await self._wait(kind, child["id"])
        if ended is None or ended.status != "succeeded":
            status = ended.status if ended else "deleted"
            raise StepFailed(
                f"step '{step['name']}' (round {r}): its {kind} {child['id']} {status}"
                + (f": {ended.error}" if ended and ended.error else "")
            )
        faults.point("recipe:running")  # the child ended; the recipe has not moved on yet
        if kind == "finetune":
            tuned = await asyncio.to_thread(tuned_model_of, self.engine, str(child["id"]))
            self.state.setdefault("tuned", {})[str(r)] = tuned
        self.state["step"] += 1
        end = {"step": key, "kind": kind, "id": child["id"], "status": ended.status}
        await asyncio.to_thread(self._save, ("step_done", end))

    async def _wait(self, kind: str, child_id: Any) -> ChildState | None:
        while True:
            if self._stopped():
                raise Stopped
            now = await asyncio.to_thread(child_state, self.engine, kind, child_id)
            if is_final(now):
                return now
            if kind in INLINE and self.lease is not None:
                lease = await asyncio.to_thread(self._claim_child, kind, child_id)
                if lease is not None:
                    await self._execute_inline(lease)
                    continue
            await asyncio.sleep(POLL_SECONDS)

    def _claim_child(self, kind: str, child_id: Any) -> Lease | None:
        where = [col(Run.shards) == 1] if kind == "run" else []
        assert self.lease is not None
        return claim(
            self.engine,
            INLINE[kind],
            worker_id=self.lease.owner,
            lease_seconds=self.settings.worker_lease_seconds,
            attempts=self.settings.job_attempts,
            row_id=child_id,
            where=where,
        )

    async def _execute_inline(self, lease: Lease) -> None:
        from app.pipeline.execution import execute_run
        from app.pipeline.judgement_job import execute_judgement_job
        from app.services.evaluation_runner import execute_evaluation

        holder = ChildHolder(self.worker, lease, lease.owner, getattr(self.worker, "pools", None))
        common: dict[str, Any] = {"engine": self.engine, "settings": self.settings}
        if lease.model is Run:
            await execute_run(**common, run_id=lease.row_id, worker=holder)
        elif lease.model is JudgementJob:
            await execute_judgement_job(**common, job_id=lease.row_id, worker=holder)
        elif lease.model is Recipe:
            await execute_recipe(**common, recipe_id=lease.row_id, worker=holder)
        else:
            await execute_evaluation(**common, evaluation_id=lease.row_id, worker=holder)

    def _create(self, r: int, step: dict[str, Any], key: str, kind: str) -> Any:
        """Make the step's child with its kind's service function, recorded under `key`."""
        from app.services import recipe_children

        def make(session: Session) -> Any:
            dataset = session.get(Dataset, self.dataset_id)
            if dataset is None:
                raise StepFailed("the recipe's dataset was deleted")
            return recipe_children.make_child(
                session=session,
                settings=self.settings,
                dataset=dataset,
                round_no=r,
                step=step,
                steps=self.doc["steps"],
                state=self.state,
            )

        return create_child(
            engine=self.engine,
            lease=self.lease,
            recipe_id=self.recipe_id,
            key=key,
            kind=kind,
            create=make,
        )

    def _end_round(self, r: int) -> str | None:
        """Write the round's row and move to the next round; the stopping rule met, if any."""
        tuned = self.state.get("tuned", {}).get(str(r))
        row = round_row(
            self.engine,
            round_no=r,
            children=self.state["children"],
            tuned_model=tuned,
        )
        rows = [*self.state.get("rounds", []), row]
        row["stop"] = stop_reason(rows, self.rules)
        self.state["rounds"] = rows
        self.state["round"] = r + 1
        self.state["step"] = 0
        self._save(("round", row))
        return row["stop"]


async def execute_recipe(
    *, engine: Engine, settings: Settings, recipe_id: int, worker: LeaseHolder | None = None
) -> None:
    """Drive a claimed recipe to a final state (or until cancelled, taken over or stopped)."""
    with Session(engine, expire_on_commit=False) as session:
        recipe = session.get(Recipe, recipe_id)
        assert recipe is not None
        recipe.state = {**recipe.state, "executions": int(recipe.state.get("executions", 0)) + 1}
        session.add(recipe)
        session.add(RecipeEvent(recipe_id=recipe_id, kind="status", data={"status": "running"}))
        session.commit()
    runner = RecipeExecution(engine=engine, settings=settings, recipe=recipe, worker=worker)
    lease = worker.lease if worker is not None else None
    if lease is None:
        await runner.drive()
        return
    async with kept(engine, lease, lease_seconds=settings.worker_lease_seconds) as keeper:
        runner.keeper = keeper
        await runner.drive()
