"""Judging: a task's stored rating, and judgement jobs that rate a dataset's existing tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
)

from app.models import RunStatus
from app.schemas.common import Strict


class JudgementPublic(BaseModel):
    """One judge's rating of a task; `rating` null: the answer held none (unjudged)."""

    id: int
    rating: Literal["A", "B", "C", "D"] | None
    rationale: str
    judge_model: str
    prompt_version: str
    run_id: int | None = Field(description="The generation run (its judge stage) that asked.")
    judgement_job_id: int | None = Field(None, description="The judgement job that asked.")
    created_at: datetime


# --- judgement jobs: a job of its own kind that rates a dataset's existing tasks -------------


class JudgementJobCreate(Strict):
    """Judge a dataset's existing tasks; the filters combine (all must hold)."""

    model: str = Field(max_length=200, description="Any id from GET /v1/models.")
    select: Literal["all", "unjudged"] = Field(
        "all",
        description="all: every matching task (judged ones get a new judgement, which then "
        "counts); unjudged: only tasks with no rating yet (never judged, or unparseable).",
    )
    origin: (
        Literal["seed", "generated", "edited", "evolved", "backtranslated", "machine"] | None
    ) = Field(None, description="Only tasks of this origin; `machine`: every origin but seed.")
    run_id: int | None = Field(
        None, ge=1, le=2**31 - 1, description="Only tasks this run produced."
    )
    status: Literal["accepted", "rejected", "any"] = Field(
        "accepted", description="Accepted tasks (the dataset) by default."
    )


class JudgementProgress(BaseModel):
    total: int = Field(description="Tasks that matched the filters when the job was created.")
    done: int = Field(description="Tasks with a stored judgement from this job.")
    judged: int = Field(description="Of those, rated A-D.")
    unjudged: int = Field(description="Of those, the judge's answer held no rating.")
    failed_requests: int = Field(
        description="Judge requests that failed after retries; their tasks stay unjudged."
    )
    ratings: dict[str, int]
    requests: int
    prompt_tokens: int
    completion_tokens: int


class JudgementJobPublic(BaseModel):
    id: int = Field(description="GET /v1/judgements/{id}/events streams its progress.")
    object: Literal["judgement_job"] = "judgement_job"
    dataset: str
    status: RunStatus
    model: str
    filters: dict[str, Any]
    progress: JudgementProgress
    stop_reason: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JudgementJobsPublic(BaseModel):
    data: list[JudgementJobPublic]
    count: int


class JudgementEventPublic(BaseModel):
    """One event of a judgement job's stream: `status`, `progress` (a JudgementProgress) or
    `end` (status, stop_reason, error and the final progress)."""

    id: int
    judgement_job_id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime
