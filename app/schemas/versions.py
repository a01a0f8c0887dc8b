"""Dataset versions: a frozen selection of a dataset's tasks, named by id and content hash."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.datasets import ExportSplit
from generators.judge_prompts import Rating


class VersionSelection(BaseModel):
    """Which accepted tasks a version holds; the same fields, defaults and meaning as an
    export's query parameters."""

    model_config = ConfigDict(extra="forbid")

    include_seeds: bool = Field(False, description="Add the seed tasks.")
    split: ExportSplit = Field(
        ExportSplit.train,
        description="`train` (default): the tasks outside the dataset's held-out share; "
        "`held_out`: only that share; `all`: both (each task keeps its side).",
    )
    min_rating: Rating | None = Field(
        None, description="Only tasks whose latest judge rating is this or better (A best)."
    )
    include_contaminated: bool = Field(
        False, description="Also tasks marked contaminated (left out by default)."
    )


class VersionCreate(VersionSelection):
    tag: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[^\u0000-\u001f]+$",
        description="A name of your choosing (e.g. `round-1`); need not be unique.",
    )


class LeaveOut(BaseModel):
    grouping: str
    value: str


class VersionCounts(BaseModel):
    """Tasks of the version by each property, as frozen."""

    origin: dict[str, int]
    strategy: dict[str, int] = Field(
        description="The strategy of the run that made each task; `none` for seeds and tasks "
        "no run made."
    )
    language: dict[str, int] = Field(description="Detected language; `unknown` when undetected.")
    rating: dict[str, int] = Field(description="Latest judge rating A-D; `not_rated` otherwise.")
    split: dict[str, int] = Field(description="`train` and `held_out` sides.")


class VersionPublic(BaseModel):
    id: int
    dataset: str
    tag: str | None
    selection: VersionSelection
    from_version: int | None = Field(
        None,
        description="An ablation's version: the version it is a copy of, less `leave_out`'s "
        "group (its selection is that version's).",
    )
    leave_out: LeaveOut | None = Field(
        None, description="An ablation's version: the group left out (grouping and value)."
    )
    held_out_share: float = Field(description="The dataset's held-out share when it was made.")
    tasks: int
    instances: int
    content_sha256: str = Field(
        description="SHA-256 of the frozen records (one canonical JSON line per task, in task "
        "id order): equal content, equal hash (docs/DECISIONS.md)."
    )
    counts: VersionCounts
    stored_bytes: int = Field(description="What the frozen records take in the database.")
    created_at: datetime


class VersionsPublic(BaseModel):
    data: list[VersionPublic]
    count: int
