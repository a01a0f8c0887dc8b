"""A dataset's statistics as `GET /v1/datasets/{name}/stats` shows them."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)

# --- datasets ---


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
