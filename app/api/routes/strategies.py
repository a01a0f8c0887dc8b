"""The strategies a run can use: the registry as clients see it (the dashboard builds its run
form from this)."""

from __future__ import annotations

from fastapi import APIRouter

from app.schemas.runs import StrategiesPublic, StrategyPublic
from app.strategies import DEFAULT_STRATEGY, STRATEGIES

router = APIRouter(tags=["runs"])


@router.get("/strategies")
def list_strategies() -> StrategiesPublic:
    """List the strategies a run can use, with what each needs and its own fields."""
    data = [
        StrategyPublic(
            name=strategy.name,
            description=strategy.summary,
            default=strategy.name == DEFAULT_STRATEGY,
            uses_topic=strategy.uses_topic,
            needs=list(strategy.needs),
            settings=strategy.settings_schema(),
        )
        for strategy in STRATEGIES.values()
    ]
    return StrategiesPublic(data=data, count=len(data))
