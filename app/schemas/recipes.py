"""Recipes: a document of named steps, each a child job of its own kind, run for rounds.

A step's `params` are the fields of the child's own request (POST /v1/datasets/{name}/runs for
`generate`, .../judgements for `judge`, .../versions for `version`, /v1/fine_tuning/jobs for
`finetune`, /v1/evaluations for `evaluate`), less the ones the recipe fills in: the dataset,
the version a fine-tune trains on, the models an evaluation compares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.models import RunStatus
from app.schemas.common import DATASET_NAME_PATTERN, Strict

StepKind = Literal["generate", "judge", "version", "finetune", "evaluate", "ablation"]
STEP_KINDS: tuple[str, ...] = ("generate", "judge", "version", "finetune", "evaluate", "ablation")
STEP_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_\-]{0,39}$"


class Budget(Strict):
    """Spend of the recipe's runs and judgement jobs together; checked at the end of each
    round (a round is never cut in half): the recipe stops once one is reached."""

    max_requests: int | None = Field(None, ge=1, description="LLM requests.")
    max_tokens: int | None = Field(None, ge=1, description="Prompt plus completion tokens.")
    max_cost: float | None = Field(None, gt=0, description="Cost as SELFINSTRUCT_PRICES states it.")


class StopRules(Strict):
    """When a recipe of several rounds stops early (it ends `succeeded` with the reason)."""

    min_win_rate: float = Field(
        0.55,
        ge=0,
        le=1,
        description="Stop (`win_rate_below_threshold`) when a round's tuned model wins less "
        "than this share of the pairwise comparisons against the previous round's model (round "
        "1: against the fine-tune's base model), judged on the evaluate step's tasks.",
    )
    collapse_margin: float = Field(
        0.10,
        ge=0,
        le=10,
        description="Stop (`collapse`) when a round's new tasks' mean ROUGE-L to the pool rises, "
        "or their share of distinct leading words falls, by more than this fraction of round "
        "1's value.",
    )
    budget: Budget = Field(default_factory=Budget)


class RecipeStep(Strict):
    name: str = Field(pattern=STEP_NAME_PATTERN, description="Unique in the recipe.")
    kind: str = Field(description="One of generate, judge, version, finetune, evaluate, ablation.")
    uses: str | None = Field(
        None,
        description="An earlier step whose result this one takes: a `version` step for a "
        "`finetune` (it trains on that round's version), a `finetune` step for an `evaluate` "
        "(it evaluates that round's tuned model), a `version` step for an `ablation` (it takes "
        "that round's version apart). Left out: the nearest earlier step of that kind, if any.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The child's request fields. generate: a run's (strategy, model, target, "
        "...; from round 2 `model` is the previous round's tuned model); judge: a judgement "
        "job's; version: tag and selection fields; finetune: a fine-tune job's, without "
        "dataset and version; evaluate: an evaluation's, without models and dataset (judge "
        "needed for the win rate); ablation: an ablation's (POST /v1/ablations), without dataset "
        "and version.",
    )


class RecipeCreate(Strict):
    """A recipe as posted, in JSON or YAML (`content-type: application/yaml`)."""

    name: str = Field(pattern=STEP_NAME_PATTERN, description="For you; need not be unique.")
    dataset: str = Field(
        pattern=DATASET_NAME_PATTERN,
        description="The dataset every step uses; a name no dataset has is refused (422: no "
        "dataset of this name).",
    )
    rounds: int = Field(
        1,
        ge=1,
        le=20,
        description="Times the steps run, in order. From round 2 each `generate` step uses the "
        "previous round's tuned model; more than one round needs a finetune step (422: no "
        "finetune step).",
    )
    stop: StopRules = Field(default_factory=StopRules)
    steps: list[RecipeStep] = Field(min_length=1, max_length=20)


class ChildJob(BaseModel):
    kind: Literal["run", "judgement", "version", "finetune", "evaluation", "ablation"]
    id: int | str
    status: str = Field(description="The child's own status (a version is `succeeded`).")
    error: str | None = None


class StepPublic(BaseModel):
    round: int
    name: str
    kind: str
    job: ChildJob | None = Field(description="None until the step starts.")


class RoundRow(BaseModel):
    """One round's results, as the recipe's stopping rules read them."""

    round: int
    runs: list[int]
    new_tasks: int = Field(description="Tasks the round's runs accepted.")
    version: int | None
    tuned_model: str | None
    evaluation: int | None
    against: str | None = Field(description="The model the tuned one was compared with.")
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    compared: int
    mean_rouge_l_to_pool: float | None = Field(
        description="The new tasks' mean highest ROUGE-L to the pool when accepted."
    )
    distinct_leading_words: float | None = Field(
        description="Distinct first words over the new tasks: 1.0 when every one differs."
    )
    requests: int
    tokens: int
    cost: float
    stop: str | None = Field(description="The stopping rule this round met, if any.")


class RecipePublic(BaseModel):
    id: int
    object: Literal["recipe"] = "recipe"
    name: str
    dataset: str
    status: RunStatus
    stop_reason: str | None = Field(
        description="rounds_done, win_rate_below_threshold, collapse, budget; else None."
    )
    error: str | None
    rounds: int
    round: int = Field(description="The round it is in (or ended in).")
    step: str | None = Field(description="The step it is at; None once ended.")
    steps: list[StepPublic]
    versions: list[int] = Field(description="Dataset versions its steps made.")
    table: list[RoundRow]
    document: dict[str, Any]
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RecipesPublic(BaseModel):
    data: list[RecipePublic]
    count: int


class RecipeEventPublic(BaseModel):
    id: int
    recipe_id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime
