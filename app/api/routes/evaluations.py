"""Compare models on held-out tasks with ROUGE-L."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep, SessionDep, SettingsDep
from app.schemas import ErrorResponse
from app.services.datasets import get_dataset
from app.services.evaluations import Evaluation, EvaluationCreate, evaluate

router = APIRouter(tags=["evaluations"])


@router.post(
    "/evaluations", responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
)
async def create_evaluation(
    session: SessionDep, engine: EngineDep, settings: SettingsDep, body: EvaluationCreate
) -> Evaluation:
    """Generate answers with each model and score them against the reference outputs."""
    dataset = get_dataset(session=session, name=body.dataset)
    return await evaluate(engine=engine, settings=settings, dataset=dataset, body=body)
