"""Heuristic filters on a candidate instruction, each with a reason code, all switchable per run.

The rules are the Self-Instruct paper's, checked in its order: too short (3 words or fewer) or
too long (more than 150 words), a word asking for something a text model cannot read or produce
(image, file, audio...), "Write a program" (the model kept appending it to other tasks) and a
leading punctuation mark. The paper's last rule, "starts with a non-ASCII character", was an
English-only proxy for junk that rejects every Chinese task; here a leading character is rejected
only when it is neither a letter nor a digit in any script (a symbol, an emoji, a control
character).

Each candidate is judged in its own language (`language`, as `filters.language` detects it):
lengths and the blacklist default to that language's (`LENGTHS`, `BLACKLISTS`), calibrated so
that the project's seeds of every language pass.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filters.errors import InvalidFilterConfig
from filters.rouge import rouge_l
from filters.tokenize import CJK_CHARACTERS, count_cjk, strip_cjk

DEFAULT_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
"""The paper's list plus the Alpaca additions (video, audio, music, flowchart, diagram)."""

BLACKLISTS: dict[str, tuple[str, ...]] = {
    "en": DEFAULT_BLACKLIST,
    # The same things in Chinese; English words are checked too, since mixed text is common.
    "zh": (
        "图片", "图像", "照片", "画图", "绘图", "绘制", "视频", "音频", "音乐", "文件",
        "地图", "流程图", "示意图", "图表", "录音",
    ),
}  # fmt: skip
"""Blacklists by language; a language without one uses the English list."""

# (fewest, most) words, in the unit of the language: characters for Chinese, Japanese, Korean.
# The paper's 4..150 for English; the starter seeds in Chinese have 13 to 40 characters.
LENGTHS: dict[str, tuple[int, int]] = {
    "en": (4, 150),
    "zh": (6, 300),
    "ja": (6, 300),
    "ko": (6, 300),
}


# The characters str.split() breaks on, as a regex class: a blacklist entry needs one other.
PYTHON_WHITESPACE = (
    "\\t\\n\\v\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f"
    "\\u205f\\u3000"
)


_NonBlank = Annotated[str, Field(json_schema_extra={"pattern": f"[^{PYTHON_WHITESPACE}]"})]


class HeuristicReason(StrEnum):
    """Stable reason codes; they are stored with rejected candidates and counted per run."""

    EMPTY = "empty"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    BLACKLISTED_WORD = "blacklisted_word"
    WRITE_A_PROGRAM = "write_a_program"
    STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
    STARTS_WITH_SYMBOL = "starts_with_symbol"
    ECHOES_PROMPT = "echoes_prompt"
    LANGUAGE_NOT_IN_POOL = "language_not_in_pool"
    EVOLUTION_FAILED = "evolution_failed"
    NON_ASCII_START = "non_ascii_start"  # stored on candidates of earlier versions; no longer used


class HeuristicConfig(BaseModel):
    """Per-run settings; the defaults are the paper's rules. Every rule can be switched off.
    Rule between fields: max_words must not be below min_words when both length rules are on
    (every instruction would be rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Length, in words as `count_words` counts them.
    reject_too_short: bool = Field(
        default=True, description="Reject instructions with fewer than `min_words` words."
    )
    min_words: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Fewest words (characters for Chinese, Japanese, Korean); default: the "
        "candidate language's (English 4, as in the paper; Chinese 6).",
    )
    reject_too_long: bool = Field(
        default=True, description="Reject instructions with more than `max_words` words."
    )
    max_words: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most words (characters for Chinese, Japanese, Korean); default: the "
        "candidate language's (English 150, as in the paper; Chinese 300).",
    )
    # Content.
    # The pattern states the blank rule in the schema; the validator below enforces it in words.
    blacklist: tuple[_NonBlank, ...] | None = Field(
        default=None,
        max_length=1000,
        description="Whole words or phrases, matched case-insensitively; empty to disable; "
        "default: the candidate language's list plus the English one.",
    )
    reject_write_a_program: bool = Field(
        default=True, description='Reject instructions starting with "Write a program".'
    )
    # First character.
    reject_punctuation_start: bool = Field(
        default=True, description="Reject a leading punctuation mark."
    )
    reject_symbol_start: bool = Field(
        default=True,
        description="Reject a leading character that is neither a letter nor a digit in any "
        "script (a symbol, an emoji); letters of every script pass.",
    )
    reject_non_ascii_start: bool | None = Field(
        default=None,
        description="Deprecated: the paper's English-only rule. Setting it sets "
        "`reject_symbol_start`; no letter is rejected for its script.",
    )
    language: str = Field(
        default="en",
        min_length=2,
        max_length=16,
        description="The candidate's language (the pipeline sets it per candidate).",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_start_rule(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("reject_non_ascii_start") is not None:
            data = {**data}
            data.setdefault("reject_symbol_start", data["reject_non_ascii_start"])
        return data

    @field_validator("blacklist")
    @classmethod
    def _clean_blacklist(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        words = tuple(" ".join(word.split()).lower() for word in value)
        if any(not word for word in words):
            raise ValueError("blacklist entries must not be blank; remove the empty strings")
        return words

    @model_validator(mode="after")
    def _length_range(self) -> Self:
        low, high = self.min_words, self.max_words
        both = self.reject_too_short and self.reject_too_long
        if both and low is not None and high is not None and high < low:
            raise ValueError(
                "max_words must not be below min_words when both length rules are on "
                f"(max_words {high}, min_words {low}: raise max_words or lower min_words)"
            )
        return self

    @property
    def base_language(self) -> str:
        return self.language.lower().replace("_", "-").split("-")[0]

    def length_bounds(self) -> tuple[int, int]:
        """(fewest, most) words for this language, the explicit settings first."""
        low, high = LENGTHS.get(self.base_language, LENGTHS["en"])
        return (
            low if self.min_words is None else self.min_words,
            high if self.max_words is None else self.max_words,
        )

    def words(self) -> tuple[str, ...]:
        """The blacklist for this language."""
        if self.blacklist is not None:
            return self.blacklist
        own = BLACKLISTS.get(self.base_language, ())
        return tuple(dict.fromkeys((*own, *DEFAULT_BLACKLIST)))

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
class HeuristicVerdict:
    """Whether a candidate passes; when not, a stable reason code and words for a reviewer."""

    ok: bool
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def reject(cls, reason: HeuristicReason, detail: str) -> HeuristicVerdict:
        return cls(False, str(reason), detail)


PASS = HeuristicVerdict(True)
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


ECHO_THRESHOLD = 0.5
"""ROUGE-L to a sentence of the prompt's own wording at or above which a candidate is an echo.
"The list of tasks is a numbered list of varied tasks" (the bundled model's) scores 0.54 against
the English header; "Create a numbered list of tasks for moving house" 0.40."""


def check_echo(text: str, references: Sequence[str]) -> HeuristicVerdict:
    """Reject a candidate that repeats the prompt's own instructions instead of a task."""
    for reference in references:
        if rouge_l(text, reference) >= ECHO_THRESHOLD:
            return HeuristicVerdict.reject(
                HeuristicReason.ECHOES_PROMPT, f"repeats the prompt's own words: {reference!r}"
            )
    return PASS


def check_instruction(text: str, config: HeuristicConfig = DEFAULT_CONFIG) -> HeuristicVerdict:
    """The first rule `text` breaks, in the paper's order, or `PASS`.

    `text` is judged as given apart from surrounding whitespace; normalise it first.
    """
    stripped = text.strip()
    if not stripped:
        return HeuristicVerdict.reject(HeuristicReason.EMPTY, "the instruction is empty")
    words = count_words(stripped)
    low, high = config.length_bounds()
    if config.reject_too_short and words < low:
        return HeuristicVerdict.reject(
            HeuristicReason.TOO_SHORT, f"{words} words; at least {low} are needed"
        )
    if config.reject_too_long and words > high:
        return HeuristicVerdict.reject(
            HeuristicReason.TOO_LONG, f"{words} words; at most {high} are allowed"
        )
    pattern = _blacklist_pattern(config.words())
    if pattern is not None and (found := pattern.search(stripped)):
        return HeuristicVerdict.reject(
            HeuristicReason.BLACKLISTED_WORD,
            f"contains '{found.group(0)}', which a text-only model cannot handle",
        )
    if config.reject_write_a_program and _WRITE_A_PROGRAM.match(stripped):
        return HeuristicVerdict.reject(
            HeuristicReason.WRITE_A_PROGRAM, 'starts with "Write a program"'
        )
    first = stripped[0]
    if config.reject_punctuation_start and _is_punctuation(first):
        return HeuristicVerdict.reject(
            HeuristicReason.STARTS_WITH_PUNCTUATION, f"starts with the punctuation mark {first!r}"
        )
    if config.reject_symbol_start and not unicodedata.category(first).startswith(("L", "N")):
        return HeuristicVerdict.reject(
            HeuristicReason.STARTS_WITH_SYMBOL,
            f"starts with {first!r}, which is neither a letter nor a digit",
        )
    return PASS


# How a model declines, at the start of its answer, in the languages prompts are written in.
_REFUSAL = re.compile(
    r"^\W*(?:i(?:'m| am) sorry|sorry\b|i apologi[sz]e|i(?: cannot|can't|can not|'m unable|"
    r" am unable| won't)|as an ai\b|as a language model|unfortunately,? i\b"
    r"|抱歉|对不起|很抱歉|我不能|我无法|作为一个?(?:ai|人工智能|语言模型))",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Whether `text` opens by declining (an evolved task that refuses is no task)."""
    return bool(_REFUSAL.match(text.strip()))


def check_evolution(parent: str, child: str, threshold: float) -> HeuristicVerdict:
    """Reject a rewrite that is no real evolution of `parent`: a copy, one that scores above
    the run's novelty threshold against it, or a refusal."""
    if normalize_instruction(child).casefold() == normalize_instruction(parent).casefold():
        return HeuristicVerdict.reject(
            HeuristicReason.EVOLUTION_FAILED, "copies the task it evolves"
        )
    if is_refusal(child):
        return HeuristicVerdict.reject(
            HeuristicReason.EVOLUTION_FAILED, "the model declined instead of rewriting the task"
        )
    score = rouge_l(child, parent)
    if score > threshold:
        return HeuristicVerdict.reject(
            HeuristicReason.EVOLUTION_FAILED,
            f"ROUGE-L {score:.2f} to the task it evolves, above the threshold {threshold}",
        )
    return PASS
