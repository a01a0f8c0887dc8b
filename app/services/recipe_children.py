"""What each step kind of a recipe makes, with the service function its own endpoint calls:
the step's params, completed with what the recipe fills in (the previous round's tuned model as
generator, the version a fine-tune trains on, the two models an evaluation compares)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.errors import InvalidInput
from app.finetune import service as finetune
from app.finetune.schemas import FineTuningJobCreate
from app.models import Dataset, FineTuningJobRow
from app.schemas.ablations import AblationCreate
from app.schemas.evaluations import EvaluationCreate
from app.schemas.judging import JudgementJobCreate
from app.schemas.runs import RunCreate
from app.schemas.versions import VersionCreate
from app.services import evaluations, judgement_jobs, runs, versions
from app.services.export import Selection
from app.services.recipe_steps import step_key
from app.settings import Settings


def _child_id(state: dict[str, Any], round_no: int, step: str | None) -> Any:
    child = state["children"].get(step_key(round_no, step or ""))
    if child is None:
        raise InvalidInput(f"step '{step}' of round {round_no} made nothing to use")
    return child["id"]


def make_child(
    *,
    session: Session,
    settings: Settings,
    dataset: Dataset,
    round_no: int,
    step: dict[str, Any],
    steps: list[dict[str, Any]],
    state: dict[str, Any],
) -> Any:
    """Make (and commit) the child of `step` in round `round_no`."""
    params = dict(step["params"])
    kind = step["kind"]
    tuned: dict[str, str] = state.get("tuned", {})
    if kind == "generate":
        if round_no > 1 and tuned.get(str(round_no - 1)):
            params["model"] = tuned[str(round_no - 1)]
        return runs.create_run(
            session=session, settings=settings, dataset=dataset, body=RunCreate(**params)
        )
    if kind == "judge":
        return judgement_jobs.create_job(
            session=session, settings=settings, dataset=dataset, body=JudgementJobCreate(**params)
        )
    if kind == "version" and "leave_out" in params:  # an ablation's version less one group
        source = versions.get_version(
            session=session, dataset=dataset, version_id=params["from_version"]
        )
        leave = params["leave_out"]
        return versions.create_version(
            session=session,
            dataset=dataset,
            selection=Selection(),
            tag=f"{step['name']}-round-{round_no}",
            source=source,
            leave_out=(leave["grouping"], leave["value"]),
        )
    if kind == "version":
        body = VersionCreate(**params)
        return versions.create_version(
            session=session,
            dataset=dataset,
            selection=Selection(**body.model_dump(exclude={"tag"})),
            tag=body.tag or f"{step['name']}-round-{round_no}",
        )
    if kind == "ablation":
        from app.services import ablations

        body_ab = AblationCreate(
            **params, dataset=dataset.name, version=_child_id(state, round_no, step["uses"])
        )
        return ablations.create_ablation(session=session, settings=settings, body=body_ab)
    if kind == "finetune":
        if step.get("uses"):
            params["version"] = _child_id(state, round_no, step["uses"])
        body_ft = FineTuningJobCreate(**params, dataset=dataset.name)
        return finetune.create_job(session=session, settings=settings, body=body_ft)
    # evaluate: this round's tuned model against the previous round's (round 1: its base)
    job_id = _child_id(state, round_no, step["uses"])
    tuned_job = session.get(FineTuningJobRow, job_id)
    model = tuned_job.fine_tuned_model if tuned_job else None
    tune_step = next(s for s in steps if s["name"] == step["uses"])
    against = params.pop("against", None)  # an ablation's: the model of a named step
    if against is not None:
        other = session.get(FineTuningJobRow, _child_id(state, round_no, against))
        previous = (other.fine_tuned_model if other else None) or ""
    else:
        previous = tuned.get(str(round_no - 1)) or tune_step["params"]["model"]
    body_ev = EvaluationCreate(**params, models=[model or "", previous], dataset=dataset.name)
    return evaluations.create_evaluation(session=session, settings=settings, body=body_ev)
