"""Ablations: which part of a dataset version helped, found by leaving each group out in turn."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.models import RunStatus
from app.schemas.common import DATASET_NAME_PATTERN, MAX_ID, Strict

Grouping = Literal["strategy", "origin", "run", "language", "rating"]
# What the ablation fills in for its fine-tunes, so `finetune` may not name them.
ABLATION_FILLED = ("model", "dataset", "version", "training_file", "validation_file")


class AblationCreate(Strict):
    dataset: str = Field(pattern=DATASET_NAME_PATTERN)
    version: int = Field(
        ge=1,
        le=MAX_ID,
        description="The version to take apart: its train side is trained on, its held-out "
        "side is what every model is evaluated on.",
    )
    grouping: Grouping = Field(description="What a group is: the tasks of one value of this.")
    model: str = Field(description="The base model every fine-tune starts from.")
    judge: str = Field(description="The model that compares each pair of answers.")
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="Fine-tune settings shared by every model (the fields of POST "
        "/v1/fine_tuning/jobs less model, dataset, version): lora, max_steps, seed, ...",
    )
    limit: int = Field(20, ge=1, le=500, description="Held-out tasks each evaluation uses.")
    max_tokens: int = Field(128, ge=1, le=4096, description="Longest answer each model writes.")
    confirm: bool = Field(
        False,
        description="Needed when the ablation trains more models than "
        "SELFINSTRUCT_ABLATION_CONFIRM_ABOVE; the refusal states the cost.",
    )


class AblationCost(BaseModel):
    """What the ablation will spend, stated before it starts."""

    fine_tunes: int = Field(description="One per group left out, plus the model on everything.")
    evaluations: int
    answer_requests: int = Field(description="Answers the tuned models write (two per task).")
    judge_requests: int = Field(
        description="Judge requests: each answer rated, each pair compared in both orders."
    )
    estimated_seconds: float | None = Field(
        description="Fine-tunes times the mean time of earlier succeeded fine-tunes of this base "
        "model on this service's fine-tune device; None before there is one."
    )
    device: str = Field(description="Where the fine-tunes train (SELFINSTRUCT_FINETUNE_DEVICE).")


class GroupResult(BaseModel):
    group: str
    tasks: int = Field(description="Train-side tasks of the group: what its model did not see.")
    version: int | None = Field(description="The version without the group.")
    model: str | None = Field(description="The model tuned without the group.")
    evaluation: int | None
    win_rate: float | None = Field(
        description="The model without the group against the model on everything."
    )
    change: float | None = Field(
        description="win_rate - 0.5: above 0, leaving the group out helped; below, it hurt."
    )
    ci_low: float | None = Field(description="The change's Wilson 95% interval, low end.")
    ci_high: float | None
    samples: int = Field(description="Pairwise comparisons the win rate is over.")


class AblationPublic(BaseModel):
    id: int = Field(description="Also its recipe's id: an ablation runs as a recipe.")
    object: Literal["ablation"] = "ablation"
    status: RunStatus
    error: str | None
    dataset: str
    version: int
    grouping: str
    model: str
    judge: str
    cost: AblationCost
    full_model: str | None = Field(description="The model tuned on the whole version.")
    groups: list[GroupResult] = Field(
        description="Most helpful removal first (largest change); groups not yet evaluated last."
    )
    created_at: datetime
    finished_at: datetime | None


class AblationsPublic(BaseModel):
    data: list[AblationPublic]
    count: int
