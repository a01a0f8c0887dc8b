"""Compare models on held-out tasks with ROUGE-L."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter

from app.api.deps import EngineDep, LocalQueueDep, SessionDep, SettingsDep
from app.llm import find_model
from app.schemas import ErrorResponse, Evaluation, EvaluationCreate
from app.services.datasets import get_dataset
from app.services.evaluations import evaluate

router = APIRouter(tags=["evaluations"])


@router.post(
    "/evaluations",
    responses={
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "In-process models are busy: Retry-After."},
    },
)
async def create_evaluation(
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    queue: LocalQueueDep,
    body: EvaluationCreate,
) -> Evaluation:
    """Generate answers with each model and score them against the reference outputs."""
    dataset = get_dataset(session=session, name=body.dataset)
    local = any(
        find_model(settings, m, engine, field=f"models.{i}").backend == "local"
        for i, m in enumerate(body.models)
    )
    with queue.admit("this evaluation") if local else contextlib.nullcontext():
        return await evaluate(engine=engine, settings=settings, dataset=dataset, body=body)
