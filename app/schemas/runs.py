"""What clients send to start a run and what they read back. Every field has a default, so
`{"target": 20}` alone starts a paper-faithful run on the bundled model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from app.models import RunStatus
from app.schemas.common import Strict
from app.settings import BUNDLED_MODEL_ID
from app.strategies import DEFAULT_STRATEGY, STRATEGIES, Strategy, StrategyName, get_strategy
from filters.heuristics import HeuristicConfig
from generators.prompts import LANGUAGES, check_prompt_language


class SamplingOptions(Strict):
    """Bootstrap sampling; the paper's values are the defaults."""

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.5, gt=0.0, le=1.0)
    presence_penalty: float = Field(2.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int = Field(1024, ge=16, le=32768, description="Per bootstrap completion.")


class PromptMix(Strict):
    """How each bootstrap prompt is assembled. Rules between fields (beyond what JSON Schema
    states): machine_examples must not exceed examples_per_prompt;
    stop_at must be greater than examples_per_prompt + 1."""

    examples_per_prompt: int = Field(8, ge=1, le=32, description="Instructions shown.")
    machine_examples: int = Field(2, ge=0, le=32, description="At most this many generated.")
    prompts_per_batch: int = Field(
        5,
        ge=1,
        le=64,
        description="The paper's batch size. Prompts are sent as a stream; this sizes the "
        "windows that end a run: 3x useless answers in a row, 25x prompts without an acceptance.",
    )
    header: str | None = Field(None, max_length=4000, description="Replaces the default header.")
    numbering: str = Field(
        "{n}.",
        max_length=32,
        json_schema_extra={"pattern": "^[^{}]*\\{n\\}[^{}]*$"},
        description="Label style: `{n}` once, no other braces (e.g. '{n}.', 'Task {n}:').",
    )
    stop_at: int = Field(16, ge=3, le=200, description="The model stops before this item.")

    @model_validator(mode="after")
    def _consistent(self) -> PromptMix:
        if self.machine_examples > self.examples_per_prompt:
            raise ValueError("machine_examples must not exceed examples_per_prompt")
        if re.fullmatch(r"[^{}]*\{n\}[^{}]*", self.numbering) is None:
            raise ValueError(
                "numbering must contain '{n}' exactly once and no other braces, e.g. '{n}.'"
            )
        if self.stop_at <= self.examples_per_prompt + 1:
            raise ValueError("stop_at must be greater than examples_per_prompt + 1")
        return self


class FilterOptions(Strict):
    rouge_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="Reject when ROUGE-L to the pool is greater than this."
    )
    heuristics: HeuristicConfig = Field(default_factory=HeuristicConfig)
    max_instances: int = Field(5, ge=1, le=20, description="Instances kept per task.")
    reject_other_languages: bool = Field(
        True,
        description="Reject a candidate in a language the pool does not hold (or, with the "
        "run's `language`, in another language) as `language_not_in_pool`.",
    )
    reject_echoes: bool = Field(
        True, description="Reject a candidate that repeats the prompt's wording (`echoes_prompt`)."
    )


class Caps(Strict):
    """Budget caps; the run stops with status `succeeded` and says which cap it hit."""

    max_requests: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Prompt plus completion tokens.")
    max_cost: float | None = Field(None, gt=0, description="In the price table's currency.")


class JudgeSpec(Strict):
    """Judge every candidate that passed the filters on the paper's four levels (A best)."""

    model: str = Field(
        max_length=200, description="Any id from GET /v1/models (it may differ from the run's)."
    )
    min_rating: Literal["A", "B", "C", "D"] = Field(
        "B",
        description="Keep candidates rated this or better; the rest are rejected as "
        "`judged_low` with the judge's rationale. A candidate whose judgement holds no rating "
        "is rejected as `unjudged`; one whose judge request failed, as `judge_failed`.",
    )


def _strategies_described() -> str:
    return ", ".join(f"{s.name} ({s.summary})" for s in STRATEGIES.values()) + "."


class RunCommon(Strict):
    """The fields every run takes, whatever its strategy. RunCreate, what clients send, adds
    each strategy's own fields (app/strategies/) to these."""

    target: int = Field(ge=1, description="Accepted instructions to reach.")
    strategy: StrategyName = Field(DEFAULT_STRATEGY, description=_strategies_described())
    model: str = Field(BUNDLED_MODEL_ID, description="Any id from GET /v1/models.")
    sampling: SamplingOptions = Field(default_factory=SamplingOptions)
    prompt: PromptMix = Field(default_factory=PromptMix)
    filters: FilterOptions = Field(default_factory=FilterOptions)
    caps: Caps = Field(default_factory=Caps)
    classify: bool = Field(True, description="Ask the model whether each task is classification.")
    generate_instances: bool = Field(True, description="Generate input/output instances.")
    language: str | None = Field(
        None,
        json_schema_extra={"enum": [*LANGUAGES, None]},
        description="Ask for tasks in this language (prompts say so in it, examples are shown "
        "as they are); default: the pool's languages, each prompt in one of them in proportion.",
    )
    topic: str | None = Field(
        None,
        max_length=2000,
        description="Pick each prompt's examples among the pool tasks nearest to this text.",
    )
    judge: JudgeSpec | None = Field(
        None, description="Rate candidates with a judge model and reject those rated too low."
    )
    seed: int = Field(0, description="Random seed for example sampling.")
    shards: int = Field(
        1,
        ge=1,
        description="Workers that execute the run together (`selfinstruct worker` processes, on "
        "one machine or several sharing PostgreSQL). Each shard holds its own lease and its "
        "share of the target, the caps and the model's concurrency; novelty stays exact across "
        "the dataset, and a shard whose worker dies is taken over by another. PostgreSQL only; "
        "at most SELFINSTRUCT_MAX_RUN_SHARDS; at most `target`; not for a strategy that uses "
        "each of its sources once (backtranslate).",
    )

    @field_validator("language")
    @classmethod
    def _has_prompts(cls, value: str | None) -> str | None:
        return check_prompt_language(value)

    @model_validator(mode="after")
    def _strategy_needs(self) -> RunCommon:
        get_strategy(self.strategy).check_params(self)
        return self


def run_create_model(strategies: Mapping[str, type[Strategy]]) -> type[RunCommon]:
    """RunCommon plus each strategy's own fields; its description states their rules between
    fields, as the refusals word them."""
    fields: dict[str, Any] = {}
    for strategy in strategies.values():
        own = strategy.fields.model_fields if strategy.fields is not None else {}
        for name, info in own.items():
            if name in RunCommon.model_fields or name in fields:
                raise TypeError(
                    f"strategy {strategy.name!r} declares the run field {name!r}, which another "
                    "strategy or every run already has; name it after the strategy"
                )
            if info.is_required():
                raise TypeError(
                    f"strategy {strategy.name!r}: run field {name!r} needs a default, since "
                    "runs of other strategies do not send it"
                )
            fields[name] = (info.annotation, info)
    rules = [s.rule for s in strategies.values() if s.rule]
    doc = "A generation run; every field has a default but `target`."
    if rules:
        doc += f" Rule{'s' if len(rules) > 1 else ''} between fields:\n" + "; ".join(rules) + "."
    return create_model("RunCreate", __base__=RunCommon, __doc__=doc, __module__=__name__, **fields)


# What clients send to start a run. Type checkers see RunCommon: strategies read their own
# fields through app.strategies.base.setting_of.
if TYPE_CHECKING:
    RunCreate = RunCommon
else:
    RunCreate = run_create_model(STRATEGIES)


class StrategyPublic(BaseModel):
    """A way of constructing candidates, as a run's `strategy` names it."""

    name: str
    description: str
    default: bool = Field(description="The strategy of a run that names none.")
    uses_topic: bool = Field(
        description="Whether `topic` steers it; a run of one that does not is refused a topic."
    )
    needs: list[str] = Field(
        description="What it needs besides a model: `documents` (the dataset's documents), "
        "`chat_template` (the model's raw chat template: a completion endpoint or the bundled "
        "model)."
    )
    settings: dict[str, dict[str, Any]] = Field(
        description="Its own fields of a run's body, each with its JSON Schema (no `$ref`); "
        "a run takes them beside the fields every strategy shares."
    )


class StrategiesPublic(BaseModel):
    data: list[StrategyPublic]
    count: int


class RunCounters(BaseModel):
    requests: int
    failed_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    candidates: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    instances: int
    retries: int = Field(description="Extra attempts the model server needed (429, 5xx, timeouts).")
    unparseable_completions: int = Field(description="Answers that held no task at all.")
    instances_wrong_language: int = Field(
        0,
        description="Instances dropped because their output was in a language neither the "
        "instruction nor the input is in (and no translation was asked for).",
    )
    in_flight: int = Field(0, description="Model requests in flight at the last commit.")
    requests_per_s: float = Field(0.0, description="Model requests per second, recently.")
    accepted_per_s: float = Field(0.0, description="Tasks accepted per second, recently.")
    judged: int = Field(0, description="Candidates the run's judge rated (any level).")
    unjudged: int = Field(
        0, description="Candidates whose judge answer held no rating (rejected as `unjudged`)."
    )
    ratings: dict[str, int] = Field(
        default_factory=dict, description="Judged candidates per level, accepted or not."
    )


class ShardPublic(BaseModel):
    """One shard of a run held by several workers: who holds it and what it did."""

    shard: int = Field(description="0 to shards-1.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    worker_id: str | None = Field(description="The worker executing it now, or last.")
    target: int = Field(description="Its share of the run's target.")
    accepted: int
    rejected: int
    candidates: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    in_flight: int = Field(description="Model requests in flight at its last commit.")
    accepted_per_s: float = Field(description="Tasks it accepted per second, recently.")
    claims: int = Field(description="Times a worker took it: more than 1 after a takeover.")
    stop_reason: str | None
    error: str | None


class RunPublic(BaseModel):
    id: int
    dataset: str
    status: RunStatus
    strategy: str
    model: str
    target: int
    params: dict[str, Any]
    counters: RunCounters
    stop_reason: str | None = Field(description="Why a finished run stopped (target, a cap...).")
    error: str | None
    worker_id: str | None
    shards: list[ShardPublic] = Field(
        default_factory=list,
        description="A run of several shards: each one's worker and figures (the counters "
        "above are their sums); empty for a run of one.",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


class RunEventPublic(BaseModel):
    id: int
    run_id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime
