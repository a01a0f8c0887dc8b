"""Datasets and their tasks: creating and editing datasets, importing seeds, documents,
reviewing and editing tasks, exports and statistics."""

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
)

from app.models import TaskOrigin, TaskStatus
from app.schemas.common import DATASET_NAME_PATTERN
from app.schemas.judging import JudgementPublic
from generators.prompts import LANGUAGES, check_prompt_language

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
