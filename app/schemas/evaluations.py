"""Evaluation jobs: models answering a frozen reference set, scored and compared pairwise."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from app.models import EvaluationStatus, TaskOrigin
from app.schemas.common import MAX_ID
from app.schemas.datasets import ExportSplit

# --- evaluations ---


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1, max_length=4, description="E.g. a base and its tune.")
    dataset: str = Field(
        description="Where the reference tasks come from: any dataset (its held-out share by "
        "default), e.g. reference tasks imported as seeds."
    )
    split: ExportSplit | None = Field(
        None,
        description="Which tasks: default `held_out` when the dataset keeps a held-out share, "
        "else `all`.",
    )
    version: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="Draw the references from this version of the dataset (its tasks on the "
        "`split` side as frozen). Left out: a version of the split's accepted tasks as they are "
        "now is made (or an identical one reused) and recorded on the evaluation.",
    )
    judge: str | None = Field(
        None,
        description="A model from GET /v1/models that rates every answer A-D and, with two or "
        "more models, compares each pair of answers in both orders.",
    )
    task_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None, max_length=1000, description="Only these tasks."
    )
    origin: TaskOrigin | None = None
    limit: int = Field(20, ge=1, le=500, description="Tasks to evaluate, oldest first.")
    max_tokens: int = Field(128, ge=1, le=4096)


class ModelScore(BaseModel):
    """One model's figures, each over the samples it states (`*_n`): a request that failed is
    no answer, so it is counted in `failed` and left out of every figure until it is asked
    again (when the evaluation is taken up again)."""

    model: str
    answered: int = Field(description="Tasks the model answered so far (failed requests not).")
    failed: int = Field(
        description="Tasks whose answer request failed after the endpoint's retries: not scored, "
        "rated or compared."
    )
    mean_rouge_l: float | None = Field(
        description="Mean ROUGE-L F1 against the references, over `rouge_l_n` answers."
    )
    rouge_l_n: int = Field(0, description="Answers `mean_rouge_l` is over.")
    ratings: dict[str, int] | None = Field(
        None, description="The judge's A-D ratings of the answers (with a judge)."
    )
    ratings_n: int | None = Field(
        None, description="Answers the judge rated A-D: the sum of `ratings` (with a judge)."
    )
    unjudged: int | None = Field(
        None, description="Answers the judge answered about without a rating (never guessed)."
    )
    judge_failed: int | None = Field(
        None,
        description="Answers whose rating request failed after the endpoint's retries: not "
        "counted in `ratings`, asked again when the evaluation is taken up again.",
    )


class PairwiseScore(BaseModel):
    """`model_a` against `model_b`, each task judged twice with the answers in both positions;
    a win counts only when both orders agree, anything else is a tie. Only tasks both models
    answered and the judge answered in both orders count."""

    model_a: str
    model_b: str
    compared: int = Field(description="Tasks with a verdict: the n of `win_rate_a`.")
    wins_a: int
    wins_b: int
    ties: int
    win_rate_a: float | None = Field(description="(wins_a + ties/2) / compared.")
    ci_low: float | None
    ci_high: float | None
    interval: Literal["wilson_95"] = Field(
        "wilson_95", description="Wilson score interval, 95%, on win_rate_a."
    )
    undecided: int = Field(0, description="Tasks where an order's answer named no winner.")
    failed: int = Field(
        0,
        description="Tasks where a comparison request failed after the endpoint's retries: "
        "not counted, asked again when the evaluation is taken up again.",
    )
    unanswered: int = Field(
        0, description="Tasks not compared because a model's answer is missing or failed."
    )


class EvaluationProgress(BaseModel):
    answers: int = Field(0, description="Answers received (failed requests not counted).")
    answers_total: int = 0
    ratings: int = 0
    ratings_total: int = 0
    comparisons: int = 0
    comparisons_total: int = 0
    failed: int = Field(
        0,
        description="Answer, rating and comparison requests that failed after the endpoint's "
        "retries; each is asked again when the evaluation is taken up again.",
    )


class EvaluationPublic(BaseModel):
    id: int
    object: Literal["evaluation"] = "evaluation"
    metric: Literal["rougeL_f1"] = "rougeL_f1"
    dataset: str
    status: EvaluationStatus
    models: list[str]
    judge: str | None
    split: ExportSplit
    version: int | None = Field(
        None, description="The dataset version its reference tasks were drawn from."
    )
    tasks: int
    progress: EvaluationProgress
    results: list[ModelScore]
    pairwise: list[PairwiseScore]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EvaluationsPublic(BaseModel):
    data: list[EvaluationPublic]
    count: int


class SampleAnswer(BaseModel):
    text: str
    failed: bool = Field(description="The request failed: no answer, so no score or rating.")
    rouge_l: float | None = Field(description="Against the reference; null when `failed`.")
    error: str | None = Field(None, description="Why the request failed.")
    rating: str | None = None
    rationale: str | None = None
    judge_failed: bool = Field(
        False, description="The rating request failed; `rating` is null until asked again."
    )


class Sample(BaseModel):
    position: int
    task_id: int | None
    instruction: str
    input: str
    reference: str
    answers: dict[str, SampleAnswer] = Field(description="Each model's answer, by model id.")
    pairwise: dict[str, Any] = Field(
        description="Per pair `a|b`: the verdict with a shown first, with b shown first, the "
        "winner (null until both orders are answered) and `failed_orders` (requests that failed, "
        "asked again when the evaluation is taken up again)."
    )


class SamplesPublic(BaseModel):
    data: list[Sample]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `after` to get the next page.")


class EvaluationEventPublic(BaseModel):
    id: int
    evaluation_id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime
