"""Deleting a fine-tuned model, as OpenAI lets its owner (`client.models.delete()`).

A model tuned here is the `fine_tuned_model` of a succeeded job. Deleting it clears that field
(so the catalogue, chat, runs, evaluations and new fine-tunes no longer find it: each looks models
up through `app.llm.catalogue` or the succeeded job that made them), records an event on the job,
and removes the job's artifacts under the data dir (the model, its checkpoints, the adapter).
Models this server did not tune (the bundled one, an endpoint's, a base model folder) are
refused with 403, as OpenAI refuses deleting a model you do not own; an unknown id is 404.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlmodel import Session, col, select

from app.errors import Conflict, NotFound, ServiceError
from app.finetune.service import add_event, artifacts_dir, tuned_model_dir
from app.llm import catalogue
from app.models import (
    Evaluation,
    EvaluationStatus,
    FineTuningJobRow,
    JobStatus,
    JudgementJob,
    Run,
    RunStatus,
)
from app.schemas.common import ErrorItem
from app.settings import Settings

ACTIVE_RUNS = (RunStatus.queued.value, RunStatus.running.value)
ACTIVE_EVALUATIONS = (EvaluationStatus.queued.value, EvaluationStatus.running.value)
ACTIVE_JOBS = (JobStatus.validating_files.value, JobStatus.queued.value, JobStatus.running.value)


class ModelNotOwned(ServiceError):
    """A model the catalogue serves but this server did not tune: it has nothing to delete."""

    status_code = 403
    code = "forbidden"


def get_tuned_model(*, session: Session, settings: Settings, model_id: str) -> FineTuningJobRow:
    """The succeeded job whose `fine_tuned_model` is `model_id`; 403 for a model this server
    serves but did not tune, 404 for an id it does not know."""
    job = session.exec(
        select(FineTuningJobRow).where(
            FineTuningJobRow.fine_tuned_model == model_id,
            FineTuningJobRow.status == JobStatus.succeeded.value,
        )
    ).first()
    if job is not None:
        return job
    if any(entry.id == model_id for entry in catalogue(settings)):
        raise ModelNotOwned(
            f"Model '{model_id}' was not fine-tuned here, so it cannot be deleted; only models "
            "whose id a succeeded fine-tuning job reports (ft:...) can be.",
            errors=[ErrorItem(field="model", reason="not a fine-tuned model")],
        )
    raise NotFound(
        f"Model '{model_id}' does not exist; GET /v1/models lists the models, and a deleted "
        "model is gone from it.",
        errors=[ErrorItem(field="model", reason="no such model")],
    )


def _users(session: Session, model_id: str) -> list[tuple[str, str]]:
    """Queued or running work that will call or train from `model_id`: (what, how to stop it)."""
    users: list[tuple[str, str]] = []
    for run in session.exec(select(Run).where(col(Run.status).in_(ACTIVE_RUNS))):
        judge = (run.params or {}).get("judge") or {}
        if run.model == model_id or judge.get("model") == model_id:
            users.append((f"run {run.id}", f"POST /v1/runs/{run.id}/cancel"))
    for judging in session.exec(
        select(JudgementJob).where(
            col(JudgementJob.status).in_(ACTIVE_RUNS), JudgementJob.model == model_id
        )
    ):
        users.append((f"judgement job {judging.id}", f"POST /v1/judgements/{judging.id}/cancel"))
    for evaluation in session.exec(
        select(Evaluation).where(col(Evaluation.status).in_(ACTIVE_EVALUATIONS))
    ):
        if model_id in evaluation.models or evaluation.judge == model_id:
            users.append(
                (f"evaluation {evaluation.id}", f"POST /v1/evaluations/{evaluation.id}/cancel")
            )
    for job in session.exec(
        select(FineTuningJobRow).where(
            col(FineTuningJobRow.status).in_(ACTIVE_JOBS), FineTuningJobRow.model == model_id
        )
    ):
        users.append((f"fine-tuning job {job.id}", f"POST /v1/fine_tuning/jobs/{job.id}/cancel"))
    return users


def delete_tuned_model(*, session: Session, settings: Settings, job: FineTuningJobRow) -> str:
    """Delete the model `job` made and return its id; 409 naming the first queued or running
    run, judgement job, evaluation or fine-tune job that uses it.

    The row changes first and the files go after the commit: a crash in between leaves files
    nobody lists, never a listed model without weights. Only folders under this server's data
    dir are removed; a remote worker's model folder elsewhere is left where it wrote it, and the
    job's event says so."""
    model_id = job.fine_tuned_model
    assert model_id is not None  # get_tuned_model only returns jobs that made a model
    users = _users(session, model_id)
    if users:
        what, stop = users[0]
        more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
        raise Conflict(
            f"Model '{model_id}' is in use by {what}{more}; cancel it ({stop}) or wait until it "
            "ends, then delete the model.",
            errors=[ErrorItem(field="model", reason=f"in use by {what}")],
        )
    own = artifacts_dir(settings, job.id)
    model_dir = Path(tuned_model_dir(settings, job))
    note = ""
    if not model_dir.resolve().is_relative_to(own.resolve()):
        note = f"; its folder {model_dir} is outside this server's data dir and was left"
    job.fine_tuned_model = None
    add_event(
        session,
        job.id,
        f"Model {model_id} deleted; its artifacts were removed{note}",
        data={"deleted_model": model_id},
    )
    session.add(job)
    session.commit()
    shutil.rmtree(own, ignore_errors=True)
    return model_id
