"""Ablations: which group of a version's tasks helped. One model is tuned per group left out,
plus one on the whole version, all with the same settings and seed; each is compared pairwise
with the full model on the version's held-out side by the judge.

An ablation runs as a recipe: it is checked here, then expanded into recipe steps (a version
less the group and its fine-tune per group, the full fine-tune, one evaluation per group), so
it is executed, resumed after kill -9 and cancelled by the recipe machinery
(app/pipeline/recipe_job.py). Its id is its recipe's id.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app.errors import InvalidInput, NotFound, ServiceError
from app.finetune.schemas import FineTuningJobCreate
from app.finetune.service import check_request
from app.llm import find_model
from app.models import (
    Dataset,
    DatasetVersion,
    Evaluation,
    FineTuningJobRow,
    JobStatus,
    Recipe,
    RunStatus,
)
from app.schemas.ablations import (
    ABLATION_FILLED,
    AblationCost,
    AblationCreate,
    AblationPublic,
    GroupResult,
)
from app.schemas.common import ErrorItem
from app.services import recipe_steps, versions
from app.settings import Settings

PAIRWISE_ORDERS = 2  # each pair of answers is compared in both orders


def _refuse(field: str, reason: str, detail: str) -> InvalidInput:
    return InvalidInput(detail, errors=[ErrorItem(field=field, reason=reason)])


def _as_field(prefix: str, exc: ServiceError) -> InvalidInput:
    """A refusal of a part (a 404 for a model too) as a 422 of the ablation's field."""
    fields = [e.field for e in exc.errors if e.field] or [""]
    items = [ErrorItem(field=(prefix + f).rstrip("."), reason=exc.detail) for f in fields]
    return InvalidInput(exc.detail, errors=items)


def _mean_finetune_seconds(session: Session, model: str) -> float | None:
    """The mean time of earlier succeeded fine-tunes of this base model (None if none)."""
    jobs = session.exec(
        select(FineTuningJobRow.started_at, FineTuningJobRow.finished_at)
        .where(
            FineTuningJobRow.model == model,
            FineTuningJobRow.status == JobStatus.succeeded.value,
            col(FineTuningJobRow.started_at).is_not(None),
            col(FineTuningJobRow.finished_at).is_not(None),
        )
        .order_by(col(FineTuningJobRow.created_at).desc())
        .limit(20)
    ).all()
    spans = [(end - start).total_seconds() for start, end in jobs if start and end]
    return sum(spans) / len(spans) if spans else None


def ablation_cost(
    session: Session, settings: Settings, body: AblationCreate, groups: int, held_out: int
) -> AblationCost:
    tasks = min(body.limit, held_out)
    per_tune = _mean_finetune_seconds(session, body.model)
    return AblationCost(
        fine_tunes=groups + 1,
        evaluations=groups,
        answer_requests=groups * 2 * tasks,
        judge_requests=groups * (2 * tasks + PAIRWISE_ORDERS * tasks),
        estimated_seconds=None if per_tune is None else round(per_tune * (groups + 1), 1),
        device=settings.finetune_device,
    )


def check_parts(
    session: Session, settings: Settings, body: AblationCreate, version_id: int | None = None
) -> None:
    """The fine-tune settings, the base model and the judge, as their own requests would be
    checked (also what a recipe's ablation step is checked for before its version exists)."""
    for name in ABLATION_FILLED:
        if name in body.finetune:
            raise _refuse(
                f"finetune.{name}",
                "filled in by the ablation",
                f"finetune.{name} is filled in by the ablation; drop it.",
            )
    engine = session.get_bind()
    try:
        tune = FineTuningJobCreate.model_validate(
            {**body.finetune, "model": body.model, "dataset": body.dataset, "version": version_id}
        )
        check_request(session, settings, tune)
    except ServiceError as exc:
        prefix = "" if [e.field for e in exc.errors] == ["model"] else "finetune."
        raise _as_field(prefix, exc) from exc
    except ValueError as exc:  # pydantic's ValidationError
        raise _refuse("finetune", "not fine-tune settings", f"finetune: {exc}") from exc
    try:
        find_model(settings, body.judge, engine, field="judge")  # type: ignore[arg-type]
    except ServiceError as exc:
        raise _as_field("", exc) from exc


def _checked(
    session: Session, settings: Settings, body: AblationCreate
) -> tuple[Dataset, DatasetVersion, list[tuple[str, int]], AblationCost]:
    """Everything a request can be refused for, before anything is stored."""
    dataset = session.exec(select(Dataset).where(Dataset.name == body.dataset)).first()
    if dataset is None:
        raise _refuse(
            "dataset", "no dataset of this name", f"dataset: no dataset is named '{body.dataset}'."
        )
    try:
        version = versions.get_version(session=session, dataset=dataset, version_id=body.version)
    except NotFound as exc:
        raise _refuse("version", "no version of this dataset with this id", exc.detail) from exc
    check_parts(session, settings, body, version.id)
    held_out = int(version.counts.get("split", {}).get("held_out", 0))
    if held_out == 0:
        raise _refuse(
            "version",
            "no held-out tasks",
            f"Version {version.id} holds no held-out tasks to evaluate the models on; make one "
            "with split=all of a dataset with a held-out share.",
        )
    groups = sorted(versions.version_groups(session, version, body.grouping).items())
    if len(groups) < 2:
        found = ", ".join(g for g, _ in groups) or "none"
        raise _refuse(
            "grouping",
            "fewer than 2 groups",
            f"grouping={body.grouping}: version {version.id}'s train side has {len(groups)} "
            f"group(s) ({found}); leaving one out needs at least 2. Choose another grouping.",
        )
    cost = ablation_cost(session, settings, body, len(groups), held_out)
    if cost.fine_tunes > settings.ablation_confirm_above and not body.confirm:
        time = f"~{cost.estimated_seconds:.0f} s" if cost.estimated_seconds else "unknown time"
        raise _refuse(
            "confirm",
            "needed above SELFINSTRUCT_ABLATION_CONFIRM_ABOVE",
            f"This ablation costs {cost.fine_tunes} fine-tunes ({time} on {cost.device}), "
            f"{cost.evaluations} evaluations, {cost.judge_requests} judge requests and "
            f"{cost.answer_requests} answers: more than "
            f"SELFINSTRUCT_ABLATION_CONFIRM_ABOVE={settings.ablation_confirm_above} fine-tunes. "
            "Send confirm: true to run it.",
        )
    return dataset, version, groups, cost


def ablation_steps(body: AblationCreate, groups: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The recipe steps an ablation is: the full fine-tune, then per group a version without it
    and its fine-tune, then per group the evaluation against the full model."""
    tune = {**body.finetune, "model": body.model}
    steps: list[dict[str, Any]] = [
        {
            "name": "full",
            "kind": "finetune",
            "uses": None,
            "params": {**tune, "version": body.version},
        }
    ]
    for i, (value, _) in enumerate(groups):
        leave_out = {"grouping": body.grouping, "value": value}
        steps.append(
            {
                "name": f"without-{i}",
                "kind": "version",
                "uses": None,
                "params": {"from_version": body.version, "leave_out": leave_out},
            }
        )
        steps.append(
            {"name": f"tune-{i}", "kind": "finetune", "uses": f"without-{i}", "params": tune}
        )
    for i in range(len(groups)):
        evaluation = {
            "judge": body.judge,
            "limit": body.limit,
            "max_tokens": body.max_tokens,
            "version": body.version,
            "split": "held_out",
            "against": "full",
        }
        steps.append(
            {"name": f"eval-{i}", "kind": "evaluate", "uses": f"tune-{i}", "params": evaluation}
        )
    return steps


def create_ablation(*, session: Session, settings: Settings, body: AblationCreate) -> Recipe:
    """Check the request and its cost, then queue the ablation as a recipe."""
    dataset, _, groups, cost = _checked(session, settings, body)
    assert dataset.id is not None
    name = f"ablation-{body.grouping}"
    document: dict[str, Any] = {
        "name": name,
        "dataset": dataset.name,
        "rounds": 1,
        "stop": {"min_win_rate": 0.0, "collapse_margin": 10.0, "budget": {}},
        "steps": ablation_steps(body, groups),
        "ablation": {
            **body.model_dump(mode="json", exclude={"confirm"}),
            "groups": [{"value": v, "tasks": n} for v, n in groups],
            "cost": cost.model_dump(mode="json"),
        },
    }
    return recipe_steps.queue(session, name=name, dataset_id=dataset.id, document=document)


def is_ablation(recipe: Recipe) -> bool:
    return "ablation" in recipe.document


def get_ablation(*, session: Session, ablation_id: int) -> Recipe:
    recipe = session.get(Recipe, ablation_id)
    if recipe is None or not is_ablation(recipe):
        raise NotFound(f"Ablation {ablation_id} does not exist; list them with GET /v1/ablations.")
    return recipe


def list_ablations(*, session: Session, limit: int = 100) -> list[Recipe]:
    """Newest first. Ablations are the recipes whose document says so."""
    rows = session.exec(select(Recipe).order_by(col(Recipe.id).desc()).limit(1000)).all()
    return [r for r in rows if is_ablation(r)][:limit]


def _tuned(session: Session, child: dict[str, Any] | None) -> str | None:
    job = session.get(FineTuningJobRow, child["id"]) if child else None
    return job.fine_tuned_model if job else None


def group_result(
    session: Session, i: int, group: dict[str, Any], children: dict[str, dict[str, Any]]
) -> GroupResult:
    """One group's row: its model's pairwise figures against the full model, as a change."""
    version = children.get(f"1:without-{i}")
    model = _tuned(session, children.get(f"1:tune-{i}"))
    child = children.get(f"1:eval-{i}")
    evaluation = session.get(Evaluation, child["id"]) if child else None
    pair: dict[str, Any] = {}
    if evaluation is not None and model is not None:
        pairs = evaluation.results.get("pairwise", [])
        pair = next((p for p in pairs if p.get("model_a") == model), {})
    rate, low, high = pair.get("win_rate_a"), pair.get("ci_low"), pair.get("ci_high")
    return GroupResult(
        group=group["value"],
        tasks=group["tasks"],
        version=version["id"] if version else None,
        model=model,
        evaluation=evaluation.id if evaluation else None,
        win_rate=rate,
        change=None if rate is None else round(rate - 0.5, 6),
        ci_low=None if low is None else round(low - 0.5, 6),
        ci_high=None if high is None else round(high - 0.5, 6),
        samples=int(pair.get("compared", 0)),
    )


def ablation_public(*, session: Session, recipe: Recipe) -> AblationPublic:
    spec = recipe.document["ablation"]
    children: dict[str, dict[str, Any]] = recipe.state.get("children", {})
    rows = [group_result(session, i, g, children) for i, g in enumerate(spec["groups"])]
    rows.sort(key=lambda r: (r.change is None, -(r.change or 0.0), r.group))
    return AblationPublic(
        id=recipe.id or 0,
        status=RunStatus(recipe.status),
        error=recipe.error,
        dataset=spec["dataset"],
        version=spec["version"],
        grouping=spec["grouping"],
        model=spec["model"],
        judge=spec["judge"],
        cost=AblationCost.model_validate(spec["cost"]),
        full_model=_tuned(session, children.get("1:full")),
        groups=rows,
        created_at=recipe.created_at,
        finished_at=recipe.finished_at,
    )
