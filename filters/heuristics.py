"""Heuristic filters on a candidate instruction, each with a reason code, all switchable per run.

The rules are the Self-Instruct paper's, checked in its order: too short (3 words or fewer) or
too long (more than 150 words), a word asking for something a text model cannot read or produce
(image, file, audio...), "Write a program" (the model kept appending it to other tasks), a
leading punctuation mark, and a leading non-ASCII character, the last only when the run is in
English so that Chinese runs are not rejected wholesale.

Choices the paper leaves open:

* Word count. Text without CJK characters counts ``len(text.split())`` words, as the paper does.
  Chinese and Japanese are written without spaces, so each CJK character counts as one word and
  the remaining space-separated chunks count only if they hold a letter or digit (a lone "。" is
  not a word); a Chinese instruction is thus judged by its length, not rejected as one "word".
* Blacklist matching is whole-word and case-insensitive, with any whitespace inside a phrase
  ("go  to"). Word edges are letters and digits other than CJK characters, so "画一个image" still
  contains "image" while "imagery" and "mapping" do not match.
* Leading punctuation is any ASCII punctuation mark (the paper's `string.punctuation`, which
  includes symbols such as "$" and "<") or any Unicode punctuation ("“", "《", "。").
* "Write a program" matches case-insensitively, as the paper capitalises before comparing.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filters.errors import InvalidFilterConfig
from filters.tokenize import CJK_CHARACTERS, count_cjk, strip_cjk

DEFAULT_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
"""The paper's list plus the Alpaca additions (video, audio, music, flowchart, diagram)."""


class HeuristicReason(StrEnum):
    """Stable reason codes; they are stored with rejected candidates and counted per run."""

    EMPTY = "empty"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    BLACKLISTED_WORD = "blacklisted_word"
    WRITE_A_PROGRAM = "write_a_program"
    STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
    NON_ASCII_START = "non_ascii_start"


class HeuristicConfig(BaseModel):
    """Per-run settings; the defaults are the paper's rules. Every rule can be switched off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Length, in words as `count_words` counts them.
    reject_too_short: bool = Field(
        default=True, description="Reject instructions with fewer than `min_words` words."
    )
    min_words: int = Field(default=4, ge=0, le=1000, description="Fewest words (paper: 4).")
    reject_too_long: bool = Field(
        default=True, description="Reject instructions with more than `max_words` words."
    )
    max_words: int = Field(default=150, ge=1, le=100_000, description="Most words (paper: 150).")
    # Content.
    blacklist: tuple[str, ...] = Field(
        default=DEFAULT_BLACKLIST,
        max_length=1000,
        description="Whole words or phrases, matched case-insensitively; empty to disable.",
    )
    reject_write_a_program: bool = Field(
        default=True, description='Reject instructions starting with "Write a program".'
    )
    # First character.
    reject_punctuation_start: bool = Field(
        default=True, description="Reject a leading punctuation mark."
    )
    reject_non_ascii_start: bool = Field(
        default=True, description="Reject a leading non-ASCII character, in English runs only."
    )
    language: str = Field(
        default="en",
        min_length=2,
        max_length=16,
        description="The run's language: en, zh, en-US, ...",
    )

    @field_validator("blacklist")
    @classmethod
    def _clean_blacklist(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        words = tuple(" ".join(word.split()).lower() for word in value)
        if any(not word for word in words):
            raise ValueError("blacklist entries must not be blank; remove the empty strings")
        return words

    @model_validator(mode="after")
    def _length_range(self) -> Self:
        if self.reject_too_short and self.reject_too_long and self.max_words < self.min_words:
            raise ValueError(
                f"max_words ({self.max_words}) is below min_words ({self.min_words}), so every "
                "instruction would be rejected; raise max_words or lower min_words"
            )
        return self

    @property
    def is_english(self) -> bool:
        return self.language.lower().split("-")[0].split("_")[0] in ("en", "english")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Build from plain data (a run's stored parameters), raising `InvalidFilterConfig`."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "heuristics"
            raise InvalidFilterConfig(
                f"heuristics.{field}: {first['msg']} (got {first.get('input')!r}); "
                "fix the value or leave it out to use the paper's default",
                field=field,
            ) from exc


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a candidate passes; when not, a stable reason code and words for a reviewer."""

    ok: bool
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def reject(cls, reason: HeuristicReason, detail: str) -> Verdict:
        return cls(False, str(reason), detail)


PASS = Verdict(True)
DEFAULT_CONFIG = HeuristicConfig()

# "3. ", "3) ", "(3) ", "3: " and bullets, plus the full-width marks ) 、 . : of CJK text;
# "3.5 litres" keeps its number.
_NUMBERING = re.compile(
    r"^(?:\(?\d{1,3}\s*(?:[.:](?=\s)|[)\uff09\u3001\uff0e\uff1a])\s*|[-*\u2022]\s+)"
)
_ALNUM = re.compile(r"[^\W_]")
_WORD_CHAR = rf"[^\W_{CJK_CHARACTERS}]"  # letters and digits that can glue onto a word
_WRITE_A_PROGRAM = re.compile(r"write\s+a\s+program", re.IGNORECASE)


def normalize_instruction(text: str) -> str:
    """Collapse whitespace and drop a leading list marker ("3. ", "2) ", "1、", "- ").

    Parsers of numbered model output should call this before filtering, so that "12. Write a
    poem" is judged, stored and indexed as "Write a poem".
    """
    flat = " ".join(text.split())
    return _NUMBERING.sub("", flat, count=1).strip()


def count_words(text: str) -> int:
    """Words as the length rules count them (see the module docstring)."""
    cjk = count_cjk(text)
    if not cjk:
        return len(text.split())
    return cjk + sum(1 for chunk in strip_cjk(text).split() if _ALNUM.search(chunk))


@lru_cache(maxsize=64)
def _blacklist_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, word.split())) for word in words)
    return re.compile(rf"(?<!{_WORD_CHAR})(?:{alternatives})(?!{_WORD_CHAR})", re.IGNORECASE)


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def check_instruction(text: str, config: HeuristicConfig = DEFAULT_CONFIG) -> Verdict:
    """The first rule `text` breaks, in the paper's order, or `PASS`.

    `text` is judged as given apart from surrounding whitespace; normalise it first.
    """
    stripped = text.strip()
    if not stripped:
        return Verdict.reject(HeuristicReason.EMPTY, "the instruction is empty")
    words = count_words(stripped)
    if config.reject_too_short and words < config.min_words:
        return Verdict.reject(
            HeuristicReason.TOO_SHORT, f"{words} words; at least {config.min_words} are needed"
        )
    if config.reject_too_long and words > config.max_words:
        return Verdict.reject(
            HeuristicReason.TOO_LONG, f"{words} words; at most {config.max_words} are allowed"
        )
    pattern = _blacklist_pattern(config.blacklist)
    if pattern is not None and (found := pattern.search(stripped)):
        return Verdict.reject(
            HeuristicReason.BLACKLISTED_WORD,
            f"contains '{found.group(0)}', which a text-only model cannot handle",
        )
    if config.reject_write_a_program and _WRITE_A_PROGRAM.match(stripped):
        return Verdict.reject(HeuristicReason.WRITE_A_PROGRAM, 'starts with "Write a program"')
    first = stripped[0]
    if config.reject_punctuation_start and _is_punctuation(first):
        return Verdict.reject(
            HeuristicReason.STARTS_WITH_PUNCTUATION, f"starts with the punctuation mark {first!r}"
        )
    if config.reject_non_ascii_start and config.is_english and not first.isascii():
        return Verdict.reject(
            HeuristicReason.NON_ASCII_START,
            f"starts with the non-ASCII character {first!r} in an English run",
        )
    return PASS
