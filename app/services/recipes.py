"""Recipes: check a whole recipe before anything starts, queue it, read it, cancel it.

Every refusal is a 422 that names the step (by name and as `steps.<i>`) and the field; a model,
dataset or reference that does not exist is refused here too (not 404: the recipe document is
what is wrong), so a recipe that is accepted has nothing left to fail on but the work itself.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import leases
from app.errors import InvalidInput, NotFound, ServiceError
from app.finetune.schemas import FineTuningJobCreate
from app.finetune.service import check_request
from app.llm import find_model
from app.models import Dataset, Recipe, RecipeEvent, RunStatus
from app.schemas.ablations import AblationCreate
from app.schemas.common import ErrorItem
from app.schemas.evaluations import EvaluationCreate
from app.schemas.judging import JudgementJobCreate
from app.schemas.recipes import (
    STEP_KINDS,
    ChildJob,
    RecipeCreate,
    RecipeEventPublic,
    RecipePublic,
    RecipeStep,
    RoundRow,
    StepPublic,
)
from app.schemas.runs import RunCreate
from app.schemas.versions import VersionCreate
from app.services import recipe_steps
from app.services.recipe_steps import STEP_CHILD, child_state, step_key
from app.settings import Settings

# What the recipe fills in for a step, so its params may not name them.
FILLED = {
    "generate": (),
    "judge": (),
    "version": (),
    "finetune": ("dataset", "version", "training_file", "validation_file"),
    "evaluate": ("models", "dataset", "version"),
    "ablation": ("dataset", "version"),
}
USES = {
    "finetune": "version",
    "evaluate": "finetune",
    "ablation": "version",
}  # what a step's `uses` must name
M = TypeVar("M", bound=BaseModel)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


def parse_document(raw: bytes, content_type: str) -> RecipeCreate:
    """The posted body, JSON or YAML, as a RecipeCreate; 422 naming the field otherwise."""
    try:
        data = yaml.safe_load(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        kind = "YAML" if content_type.split(";")[0].strip() in YAML_TYPES else "JSON"
        raise InvalidInput(
            f"The recipe is not valid {kind}: {exc}",
            errors=[ErrorItem(field=None, reason=f"not {kind}")],
        ) from exc
    if not isinstance(data, dict):
        raise InvalidInput(
            "A recipe is a mapping with name, dataset, steps (and rounds, stop).",
            errors=[ErrorItem(field=None, reason="not a mapping")],
        )
    return _validated(RecipeCreate, data, "")


def _validated(model: type[M], data: dict[str, Any], prefix: str, step: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        items = [
            ErrorItem(field=prefix + ".".join(str(p) for p in err["loc"]), reason=str(err["msg"]))
            for err in exc.errors()
        ]
        where = f"step '{step}' ({prefix.rstrip('.')}): " if step else ""
        detail = "; ".join(f"{i.field}: {i.reason}" for i in items)
        raise InvalidInput(f"{where}{detail}", errors=items) from exc


def _refuse(i: int, step: RecipeStep, field: str, reason: str, detail: str) -> InvalidInput:
    name = f"steps.{i}.{field}"
    return InvalidInput(
        f"step '{step.name}' ({name}): {detail}", errors=[ErrorItem(field=name, reason=reason)]
    )


def _as_step_error(i: int, step: RecipeStep, exc: ServiceError) -> InvalidInput:
    """A child's own refusal (a 404 for a model too), as a 422 of this step's params."""
    fields = [e.field for e in exc.errors if e.field] or ["params"]
    prefix = f"steps.{i}.params."
    return InvalidInput(
        f"step '{step.name}' (steps.{i}): {exc.detail}",
        errors=[
            ErrorItem(field=prefix + f if f != "params" else f"steps.{i}.params", reason=r)
            for f, r in zip(fields, [e.reason for e in exc.errors] or [exc.detail], strict=False)
        ],
    )


def _check_references(body: RecipeCreate) -> dict[str, str | None]:
    """Each step's `uses`, resolved: an earlier step of the right kind (a later one, or itself,
    would be a cycle). Returns step name -> the step it takes its input from."""
    seen: dict[str, str] = {}
    resolved: dict[str, str | None] = {}
    for i, step in enumerate(body.steps):
        if step.name in seen:
            raise _refuse(i, step, "name", "used twice", f"the name '{step.name}' is used twice.")
        if step.kind not in STEP_KINDS:
            raise _refuse(
                i,
                step,
                "kind",
                "unknown step kind",
                f"unknown kind '{step.kind}'; one of {', '.join(STEP_KINDS)}.",
            )
        want = USES.get(step.kind)
        if step.uses is not None:
            names = [s.name for s in body.steps]
            if want is None:
                raise _refuse(i, step, "uses", "not taken", f"a {step.kind} step takes no `uses`.")
            if step.uses not in names:
                raise _refuse(
                    i, step, "uses", "unknown step", f"`uses` names no step: '{step.uses}'."
                )
            if step.uses not in seen:
                raise _refuse(
                    i,
                    step,
                    "uses",
                    "a later step (a cycle)",
                    f"`uses` names '{step.uses}', which runs after this step (or is it): a "
                    "cycle. A step takes its input from an earlier step.",
                )
            if seen[step.uses] != want:
                raise _refuse(
                    i,
                    step,
                    "uses",
                    f"not a {want} step",
                    f"`uses` must name a {want} step; '{step.uses}' is a {seen[step.uses]} step.",
                )
            resolved[step.name] = step.uses
        elif want is not None:
            earlier = [n for n, k in seen.items() if k == want]
            if step.kind == "evaluate" and not earlier:
                raise _refuse(
                    i,
                    step,
                    "kind",
                    "no earlier finetune step",
                    "an evaluate step compares a round's tuned model with the one before it: "
                    "put a finetune step before it.",
                )
            if step.kind == "ablation" and not earlier:
                raise _refuse(
                    i,
                    step,
                    "kind",
                    "no earlier version step",
                    "an ablation step takes a round's version apart: put a version step (with "
                    "split: all, so it holds held-out tasks) before it.",
                )
            resolved[step.name] = earlier[-1] if earlier else None
        seen[step.name] = step.kind
    if body.rounds > 1 and "finetune" not in seen.values():
        raise InvalidInput(
            "rounds: a recipe of several rounds needs a finetune step (each round's tuned model "
            "generates the next round's candidates).",
            errors=[ErrorItem(field="rounds", reason="no finetune step")],
        )
    return resolved


def _check_step(
    session: Session, settings: Settings, body: RecipeCreate, i: int, step: RecipeStep
) -> None:
    engine = session.get_bind()
    prefix = f"steps.{i}.params."
    for name in FILLED[step.kind]:
        if name in step.params:
            raise _refuse(
                i,
                step,
                f"params.{name}",
                "filled in by the recipe",
                f"`{name}` is filled in by the recipe; drop it (use `uses` to choose a step).",
            )
    try:
        if step.kind == "generate":
            run = _validated(RunCreate, step.params, prefix, step.name)
            find_model(settings, run.model, engine)  # type: ignore[arg-type]
            if run.judge is not None:
                find_model(settings, run.judge.model, engine, field="judge.model")  # type: ignore[arg-type]
        elif step.kind == "judge":
            job = _validated(JudgementJobCreate, step.params, prefix, step.name)
            find_model(settings, job.model, engine)  # type: ignore[arg-type]
        elif step.kind == "version":
            _validated(VersionCreate, step.params, prefix, step.name)
        elif step.kind == "finetune":
            tune = _validated(
                FineTuningJobCreate, {**step.params, "dataset": body.dataset}, prefix, step.name
            )
            if settings.finetune_device == "cpu" and (
                tune.devices > 1 or tune.nodes > 1 or tune.parallelism == "fsdp"
            ):
                field = (
                    "devices" if tune.devices > 1 else "nodes" if tune.nodes > 1 else "parallelism"
                )
                raise _refuse(
                    i,
                    step,
                    f"params.{field}",
                    "needs a GPU",
                    f"{field} asks for GPUs, and this service fine-tunes on the CPU "
                    "(SELFINSTRUCT_FINETUNE_DEVICE=cpu); drop it or run a GPU worker.",
                )
            check_request(session, settings, tune)
        elif step.kind == "ablation":
            from app.services.ablations import check_parts

            check = {**step.params, "dataset": body.dataset, "version": 1}
            check_parts(session, settings, _validated(AblationCreate, check, prefix, step.name))
        else:
            check = {**step.params, "models": ["-"], "dataset": body.dataset}
            evaluation = _validated(EvaluationCreate, check, prefix, step.name)
            if evaluation.judge is not None:
                find_model(settings, evaluation.judge, engine, field="judge")  # type: ignore[arg-type]
    except InvalidInput as exc:
        if exc.detail.startswith("step '"):
            raise
        raise _as_step_error(i, step, exc) from exc
    except ServiceError as exc:
        raise _as_step_error(i, step, exc) from exc


def create_recipe(*, session: Session, settings: Settings, body: RecipeCreate) -> Recipe:
    """Check every step, then queue the recipe; a generation worker walks its steps."""
    dataset = session.exec(select(Dataset).where(Dataset.name == body.dataset)).first()
    if dataset is None:
        raise InvalidInput(
            f"dataset: no dataset is named '{body.dataset}'; list them with GET /v1/datasets.",
            errors=[ErrorItem(field="dataset", reason="no dataset of this name")],
        )
    uses = _check_references(body)
    for i, step in enumerate(body.steps):
        _check_step(session, settings, body, i, step)
    assert dataset.id is not None
    document = body.model_dump(mode="json")
    for step in document["steps"]:
        step["uses"] = uses.get(step["name"])
    return recipe_steps.queue(session, name=body.name, dataset_id=dataset.id, document=document)


def get_recipe(*, session: Session, recipe_id: int) -> Recipe:
    recipe = session.get(Recipe, recipe_id)
    if recipe is None:
        raise NotFound(f"Recipe {recipe_id} does not exist; list them with GET /v1/recipes.")
    return recipe


def list_recipes(*, session: Session, limit: int = 100) -> list[Recipe]:
    return list(session.exec(select(Recipe).order_by(col(Recipe.id).desc()).limit(limit)))


def cancel_recipe(*, session: Session, recipe: Recipe) -> Recipe:
    """Cancel the recipe and the child it waits for; idempotent."""
    from app.services.recipe_steps import cancel_child

    result: Recipe = leases.cancel(session, recipe)
    for child in recipe.state.get("children", {}).values():
        cancel_child(session, child["kind"], child["id"])
    return result


def recipe_public(*, session: Session, recipe: Recipe) -> RecipePublic:
    engine: Engine = session.get_bind()  # type: ignore[assignment]
    dataset = session.get(Dataset, recipe.dataset_id)
    state = recipe.state
    children: dict[str, dict[str, Any]] = state.get("children", {})
    doc_steps = recipe.document.get("steps", [])
    current = int(state.get("round", 1))
    last_round = min(current, int(recipe.document.get("rounds", 1)))
    steps: list[StepPublic] = []
    for r in range(1, last_round + 1):
        for s in doc_steps:
            child = children.get(step_key(r, s["name"]))
            job = None
            if child is not None:
                now = child_state(engine, child["kind"], child["id"])
                job = ChildJob(
                    kind=child["kind"],
                    id=child["id"],
                    status=now.status if now else "deleted",
                    error=now.error if now else None,
                )
            steps.append(StepPublic(round=r, name=s["name"], kind=s["kind"], job=job))
    running = recipe.status in (RunStatus.queued, RunStatus.running)
    at = int(state.get("step", 0))
    return RecipePublic(
        id=recipe.id or 0,
        name=recipe.name,
        dataset=dataset.name if dataset else "",
        status=RunStatus(recipe.status),
        stop_reason=recipe.stop_reason,
        error=recipe.error,
        rounds=int(recipe.document.get("rounds", 1)),
        round=last_round,
        step=doc_steps[at]["name"] if running and at < len(doc_steps) else None,
        steps=steps,
        versions=[c["id"] for c in children.values() if c["kind"] == STEP_CHILD["version"]],
        table=[RoundRow.model_validate(row) for row in state.get("rounds", [])],
        document=recipe.document,
        worker_id=recipe.worker_id,
        created_at=recipe.created_at,
        started_at=recipe.started_at,
        finished_at=recipe.finished_at,
    )


def events_after(engine: Engine, *, recipe_id: int, after: int) -> list[RecipeEvent]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(RecipeEvent)
                .where(RecipeEvent.recipe_id == recipe_id, col(RecipeEvent.id) > after)
                .order_by(col(RecipeEvent.id))
                .limit(500)
            )
        )


def recipe_status(engine: Engine, *, recipe_id: int) -> str | None:
    with Session(engine) as session:
        return session.exec(select(Recipe.status).where(Recipe.id == recipe_id)).first()


def event_public(event: RecipeEvent) -> dict[str, Any]:
    assert event.id is not None
    return RecipeEventPublic(
        id=event.id,
        recipe_id=event.recipe_id,
        kind=event.kind,
        data=event.data,
        created_at=event.created_at,
    ).model_dump(mode="json")
