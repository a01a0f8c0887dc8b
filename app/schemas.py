"""What clients send and receive. Table models never leave `app/`; these classes are the API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.models import EvaluationStatus, TaskOrigin, TaskStatus
from generators.base import ChatMessage
from generators.prompts import LANGUAGES, check_prompt_language

DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# The largest id the tables hold: their ids are INTEGER, 32 bits on PostgreSQL. A larger one
# cannot name anything, and the schema says so rather than the database refusing it.
MAX_ID = 2**31 - 1


class ErrorItem(BaseModel):
    line: int | None = Field(default=None, description="1-based line (or array index + 1).")
    field: str | None = Field(default=None, description="The offending field, dotted.")
    reason: str


class ErrorResponse(BaseModel):
    """Every error body has this shape; `errors` lists each problem when there are several."""

    detail: str
    code: str
    errors: list[ErrorItem] = Field(default_factory=list)


# --- datasets ---


DatasetNames = list[Annotated[str, Field(pattern=DATASET_NAME_PATTERN)]]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DATASET_NAME_PATTERN, description="Unique; letters, digits, _ . -")
    description: str = Field(default="", max_length=2000)
    language: str | None = Field(
        default=None,
        json_schema_extra={"enum": [*LANGUAGES, None]},
        description="Leave out: the pool's languages are those of its seeds, as detected. "
        "A code fixes them to one language (one of the languages prompts exist for).",
    )

    held_out_share: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Share of accepted tasks kept out of fine-tuning for evaluation, chosen by "
        "a hash of each task's instruction and first input (it never moves as the pool grows).",
    )
    decontaminate_against: DatasetNames = Field(
        default_factory=list,
        max_length=20,
        description="Evaluation datasets this one must stay clean of: a task too similar to one "
        "of theirs is marked `contaminated` and left out of exports and fine-tunes. Rule "
        "between fields: a dataset cannot name itself.",
    )
    decontamination_threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="A task is contaminated when the ROUGE-L F1 of its instruction and input "
        "against an evaluation task's is greater than this.",
    )

    @field_validator("language")
    @classmethod
    def _has_prompts(cls, value: str | None) -> str | None:
        return check_prompt_language(value)


class DatasetUpdate(BaseModel):
    """Settings to change; fields left out keep their values."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=2000)
    held_out_share: float | None = Field(default=None, ge=0.0, le=0.5)
    decontaminate_against: DatasetNames | None = Field(default=None, max_length=20)
    decontamination_threshold: float | None = Field(default=None, gt=0.0, le=1.0)


class DatasetPublic(BaseModel):
    name: str
    description: str
    language: str | None = Field(description="The override, if one was set.")
    languages: dict[str, float] = Field(
        description="Share of the seeds in each detected language (`unknown`: too short to "
        "tell); the pool's languages unless `language` overrides them."
    )
    created_at: datetime
    updated_at: datetime
    seeds: int = Field(description="Seed tasks in the pool.")
    accepted: int = Field(description="Accepted generated or edited tasks.")
    rejected: int = Field(description="Rejected candidates kept for review.")
    held_out_share: float = 0.0
    decontaminate_against: list[str] = Field(default_factory=list)
    decontamination_threshold: float = 0.7
    held_out: int = Field(0, description="Accepted tasks (seeds included) in the held-out share.")
    contaminated: int = Field(0, description="Accepted tasks marked contaminated.")


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


# --- seeds ---


# What `str.strip()` removes (the characters `str.isspace()` calls whitespace), spelled out so a
# JSON Schema pattern states the same "not blank" rule the validators apply.
PY_WHITESPACE = "\t-\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL = "^[^\u0000]*$"
NOT_BLANK = f"^[^\u0000]*[^\u0000{PY_WHITESPACE}][^\u0000]*$"
SEED_ID_CHARS = 200  # the column's length
SEED_ID_MAX = 2**63 - 1  # an integer id as large as a 64-bit database integer


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store a NUL character; SQLite can, so refuse it on both alike.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


def _not_blank(value: str) -> str:
    if not _no_nul(value).strip():
        raise ValueError("must not be empty or only whitespace")
    return value


SeedText = Annotated[
    StrictStr, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": NO_NUL})
]


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: SeedText
    output: SeedText


class SeedTask(BaseModel):
    """One line of a Self-Instruct `seed_tasks.jsonl`; unknown keys are ignored. Text may be in
    any language but holds no NUL character."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | int = Field(
        description="Unique within the dataset: a task with an id already there replaces it.",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "maxLength": SEED_ID_CHARS, "pattern": NOT_BLANK},
                {"type": "integer", "minimum": -SEED_ID_MAX, "maximum": SEED_ID_MAX},
            ]
        },
    )
    name: SeedText = ""
    instruction: Annotated[
        StrictStr, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": NOT_BLANK})
    ]
    instances: list[Instance]
    is_classification: StrictBool

    @field_validator("id", mode="before")
    @classmethod
    def _id_not_bool(cls, value: object) -> object:
        # JSON true is no integer (JSON Schema says so), though Python's int accepts it.
        if isinstance(value, bool):
            raise ValueError("must be text or an integer, not true or false")
        return value

    @field_validator("id")
    @classmethod
    def _id_text(cls, value: str | int) -> str:
        if isinstance(value, int):
            if abs(value) > SEED_ID_MAX:
                raise ValueError(f"an integer id must lie within +-{SEED_ID_MAX}")
            return str(value)
        if len(value) > SEED_ID_CHARS:
            raise ValueError(f"must be at most {SEED_ID_CHARS} characters")
        return _not_blank(value).strip()

    @field_validator("instruction")
    @classmethod
    def _instruction_text(cls, value: str) -> str:
        return value.strip()


class SeedImportResult(BaseModel):
    dataset: str
    received: int = Field(description="Tasks in the request.")
    created: int = Field(description="New seed tasks.")
    updated: int = Field(description="Seed tasks whose id already existed and were replaced.")


# --- documents ---


# Whitespace as JSON Schema's `\s` defines it, so the schema's rule and the service's agree.
JSON_WHITESPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
SOME_TEXT = f"^[^\u0000]*[^\u0000{JSON_WHITESPACE}][^\u0000]*$"


class DocumentText(BaseModel):
    """One document sent as JSON; JSONL, and files of any kind, go as multipart uploads."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, pattern="^[^\u0000]+$")
    text: str = Field(
        pattern=SOME_TEXT, description="Plain text or Markdown: not empty, no NUL characters."
    )
    format: Literal["text", "markdown"] | None = Field(
        default=None, description="Default: markdown for a name ending in .md, else text."
    )


class DocumentsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentText] = Field(min_length=1, max_length=100)


class DocumentPublic(BaseModel):
    id: int
    dataset: str
    name: str
    format: Literal["text", "markdown", "jsonl"]
    bytes: int
    sha256: str
    passages: int = Field(description="Pieces it was split into; each is one candidate's output.")
    created_at: datetime


class PassagePublic(BaseModel):
    id: int
    position: int = Field(description="Order in the document, from 0.")
    text: str
    language: str


class DocumentDetail(DocumentPublic):
    passage_list: list[PassagePublic]


class DocumentsPublic(BaseModel):
    data: list[DocumentPublic]
    count: int


# --- tasks ---


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


class TaskPublic(BaseModel):
    id: int
    dataset: str
    seed_id: str | None
    name: str | None
    instruction: str
    language: str | None = Field(
        description="Detected language of the instruction (ISO 639-1, or `unknown`)."
    )
    rating: Literal["A", "B", "C", "D"] | None = Field(
        None,
        description="The latest judge's rating (A valid and satisfying, B minor imperfections, "
        "C significant errors, D irrelevant or invalid); null when never judged or unjudged.",
    )
    judgement: JudgementPublic | None = Field(
        None, description="The latest judgement, with its rationale; null when never judged."
    )
    instances: list[dict[str, str]]
    is_classification: bool | None
    origin: TaskOrigin
    status: TaskStatus
    rejection_reason: str | None
    rejection_detail: str | None
    max_rouge: float | None = Field(description="Highest ROUGE-L F1 against the pool.")
    nearest: list[dict[str, Any]] = Field(description="Nearest pool tasks with their scores.")
    run_id: int | None
    lineage: dict[str, Any]
    edited_from_id: int | None
    split: Literal["train", "held_out"] = Field(
        "train", description="`held_out` when the task falls in the dataset's held-out share."
    )
    contaminated: bool = Field(
        False, description="Too similar to a task of an evaluation set (see `contamination`)."
    )
    contamination: dict[str, Any] | None = Field(
        None,
        description="Why: the evaluation dataset and task it matches, the method and score.",
    )
    created_at: datetime
    updated_at: datetime


class TaskReview(BaseModel):
    """A reviewer's verdict; the pipeline's own verdict stays in the task's review history."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus
    note: str | None = Field(
        default=None, max_length=2000, description="Why; kept with a rejection and in the history."
    )


class InstanceEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Annotated[
        str,
        AfterValidator(_no_nul),
        Field(max_length=20_000, json_schema_extra={"pattern": NO_NUL}),
    ] = ""
    output: Annotated[
        str,
        AfterValidator(_not_blank),
        Field(min_length=1, max_length=20_000, json_schema_extra={"pattern": NOT_BLANK}),
    ]


class TaskEdit(BaseModel):
    """A corrected copy of a task; fields left out keep the original's values."""

    model_config = ConfigDict(extra="forbid")

    instruction: (
        Annotated[
            str,
            AfterValidator(_not_blank),
            Field(min_length=1, max_length=5_000, json_schema_extra={"pattern": NOT_BLANK}),
        ]
        | None
    ) = None
    instances: list[InstanceEdit] | None = Field(default=None, min_length=1, max_length=5)
    is_classification: bool | None = None
    note: (
        Annotated[
            str,
            AfterValidator(_no_nul),
            Field(max_length=2000, json_schema_extra={"pattern": NO_NUL}),
        ]
        | None
    ) = None

    @field_validator("instruction")
    @classmethod
    def _instruction_stripped(cls, value: str | None) -> str | None:
        return value.strip() if value is not None else None


class TasksPublic(BaseModel):
    data: list[TaskPublic]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `after` to get the next page.")


# --- export ---


class ExportFormat(StrEnum):
    """What one export holds: a JSONL record shape, or Parquet (one fixed flat table)."""

    self_instruct = "self_instruct"
    alpaca = "alpaca"
    openai_messages = "openai_messages"
    prompt_completion = "prompt_completion"
    # Parquet is a file format, not a fifth record shape: its table is alpaca's flat
    # instruction/input/output plus id, origin, language and is_classification (FLAT_SCHEMA in
    # app/services/export.py). It sits in this enum so `?format=parquet` is all a user types.
    parquet = "parquet"


class ExportSplit(StrEnum):
    """Which of a dataset's tasks an export holds (its held-out share, or the rest)."""

    train = "train"
    held_out = "held_out"
    all = "all"


class BundleFileFormat(StrEnum):
    """The files a dataset bundle's splits are written in; both hold the same flat rows."""

    parquet = "parquet"
    jsonl = "jsonl"


# A Hub license id (apache-2.0, cc-by-4.0, mit, other, ...): lowercase letters, digits, dots and
# dashes. The Hub keeps the list; this only refuses what could never be one.
HUB_LICENSE_PATTERN = r"^[a-z0-9][a-z0-9.\-]{0,63}$"


# --- health ---


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    schema_revision: str | None


# --- dataset statistics ---


class HistogramBin(BaseModel):
    low: float
    high: float
    count: int


class LanguageStats(BaseModel):
    """Table 1 of the paper for the tasks of one language, in that language's unit."""

    instructions: int
    instances: int
    unit: Literal["words", "characters"] = Field(
        description="Characters for Chinese, Japanese and Korean, words otherwise."
    )
    mean_instruction_length: float
    mean_input_length: float
    mean_output_length: float
    leading: list[tuple[str, int]] = Field(
        description="The paper's Figure 2 where a part-of-speech tagger exists for the language "
        "(Chinese: jieba), as 'verb noun' pairs; elsewhere the leading words."
    )
    leading_kind: Literal["verb_noun_pairs", "leading_words"]


class RatingStats(BaseModel):
    """Counts per level A-D, `unjudged` (the judge's answer held no rating) and `not_judged`."""

    overall: dict[str, int] = Field(default_factory=dict)
    by_origin: dict[str, dict[str, int]] = Field(default_factory=dict)
    by_run: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Run id -> counts, for tasks a run produced."
    )


class DatasetStats(BaseModel):
    instructions: int = Field(description="Accepted instructions of every origin but seed.")
    classification: int
    non_classification: int
    instances: int
    empty_inputs: int = Field(description="Instances whose input is empty.")
    mean_instruction_words: float = Field(description="Words; each CJK character is a word.")
    mean_input_words: float
    mean_output_words: float
    rouge_to_nearest_seed: list[HistogramBin] = Field(
        description="Each generated instruction's ROUGE-L to its most similar seed."
    )
    instruction_length: list[HistogramBin] = Field(
        description="Words per instruction; the last bin's `high` is the longest seen."
    )
    input_length: list[HistogramBin] = Field(description="Words per instance input.")
    output_length: list[HistogramBin] = Field(description="Words per instance output.")
    rejected_by_reason: dict[str, int]
    leading_words: list[tuple[str, int]] = Field(
        description="Most common first words, all languages together (Chinese: two characters)."
    )
    by_language: dict[str, LanguageStats] = Field(
        description="Per detected language (`unknown`: too short to tell)."
    )
    ratings: RatingStats = Field(
        default_factory=lambda: RatingStats(),
        description="The judge's ratings of accepted tasks (seeds included), by their latest "
        "judgement: overall, per origin and per run.",
    )
    seeds: int
    by_origin: dict[str, int] = Field(
        default_factory=dict,
        description="Accepted tasks by origin (generated, evolved, backtranslated, edited).",
    )
    evolved: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Accepted evolved tasks by operation, then by depth (times evolved).",
    )
    contaminated: int = Field(
        0,
        description="Accepted tasks (seeds included) marked contaminated: too similar to a task "
        "of an evaluation set the dataset names; left out of exports and fine-tunes.",
    )


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


# --- chat completions (OpenAI's shape) ---


# Fields some clients use to pick a server. Ignoring them would let a client believe it chose
# the host; refusing them says plainly that only SELFINSTRUCT_ENDPOINTS picks servers.
SERVER_FIELDS = ("base_url", "api_base", "api_url", "url", "endpoint", "host")


StopText = Annotated[str, Field(min_length=1)]


class ChatStreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(
        False, description="End the stream with a chunk holding `usage` and no choices."
    )


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI fields (user, logprobs...) are ignored: clients send them routinely.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_server_choice(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in SERVER_FIELDS:
                if name in data:
                    raise PydanticCustomError(
                        "server_not_selectable",
                        "`{field}` is not accepted: the server's SELFINSTRUCT_ENDPOINTS decide "
                        "which hosts are called; name a model from GET /v1/models instead",
                        {"field": name},
                    )
        return data

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, le=32768, description="At most SELFINSTRUCT_CHAT_MAX_TOKENS (default 4096)."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=32768, description="At most SELFINSTRUCT_CHAT_MAX_TOKENS (default 4096)."
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: StopText | list[StopText] | None = Field(
        None, description="Text that ends a choice (left out of it); an empty one would end all."
    )
    n: int = Field(1, ge=1, le=32, description="At most SELFINSTRUCT_CHAT_MAX_N (default 8).")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Sampling seed (uint32).")
    stream: bool = Field(
        False,
        description="Send server-sent `chat.completion.chunk`s as the tokens are made, each with "
        "its choice's `index`; with n > 1 the choices may come one after another.",
    )
    stream_options: ChatStreamOptions | None = None


class ChatChoice(BaseModel):
    index: int
    message: dict[str, str]
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]
