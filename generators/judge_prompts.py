"""The judge: a model rates a task on the Self-Instruct paper's four levels, or compares two
answers to one task. No database and no HTTP server; callers store what it returns.

Levels (the paper's human evaluation, Wang et al. 2022 §4.4):
A valid and satisfying; B acceptable with minor imperfections; C responds to the instruction but
with significant errors; D irrelevant or invalid.

Public API
----------
- `judge_task(backend, task, chat=...)` -> `Judgement`: one request, one rating (or none).
- `compare(backend, instruction, input, first, second, chat=...)` -> `Preference`: which of two
  answers is better, or a tie. Position bias is the caller's to cancel: call it twice with the
  answers swapped; `Preference.winner` always names the argument (`"first"`/`"second"`), not
  the position it was shown in, so the two calls' winners can be compared directly.
- The pieces, for callers that send requests themselves (the run pipeline counts its own):
  `build_judge_prompt` / `parse_judgement`, `build_pairwise_prompt` / `parse_preference`; each
  prompt carries the `SamplingParams` to send it with and the prompt version to store.
- `meets(rating, min_rating)`, `RATINGS`, `JUDGE_PROMPT_VERSION`, `PAIRWISE_PROMPT_VERSION`.

Structured output: every prompt's `params.structured` holds the answer's JSON schema and the same
shape as a GBNF grammar. An OpenAI-compatible endpoint applies one of them when its
`structured_output` setting says it can; the in-process llama.cpp model applies the grammar;
otherwise the answer is free text. Either way it is parsed here, and an answer that holds no
rating is returned as unjudged (`rating=None`): never guessed.

A request that fails after the backend's retries raises its `GeneratorError`: it is not an
answer, so callers should try again later rather than store it as unjudged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from generators.base import Backend, ChatMessage, SamplingParams, StructuredOutput
from generators.prompt_text import (
    JUDGE_EXAMPLES,
    JUDGE_WORDS,
    NO_INPUT,
    PAIRWISE_EXAMPLES,
    PAIRWISE_WORDS,
)

Rating: TypeAlias = Literal["A", "B", "C", "D"]
Winner: TypeAlias = Literal["first", "second", "tie"]

RATINGS: tuple[Rating, ...] = ("A", "B", "C", "D")  # best first
JUDGE_PROMPT_VERSION = "judge-v1"
PAIRWISE_PROMPT_VERSION = "pairwise-v1"
FIELD_CHARS = 1200  # each instruction, input and output is cut to this many characters
MAX_INSTANCES = 5
RATIONALE_CHARS = 500  # a stored rationale is at most this long

# Greedy, and short: one line of JSON. The rationale is a sentence.
JUDGE_SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 160, "seed": 0}


def meets(rating: str | None, min_rating: str) -> bool:
    """Whether `rating` is `min_rating` or better (A is best); an unjudged task never is."""
    if rating not in RATINGS:
        return False
    return RATINGS.index(rating) <= RATINGS.index(min_rating)  # type: ignore[arg-type]


def ratings_at_least(min_rating: str) -> list[str]:
    """The levels at or above `min_rating`, for queries (`min_rating="B"` -> ["A", "B"])."""
    return list(RATINGS[: RATINGS.index(min_rating) + 1])  # type: ignore[arg-type]


# --- the answer's shape -------------------------------------------------------------------------

_STRING_GBNF = r'"\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrt] )* "\""'
_WS_GBNF = r"[ ]?"

RATING_SHAPE = StructuredOutput(
    name="judgement",
    json_schema={
        "type": "object",
        "properties": {
            "rating": {"type": "string", "enum": list(RATINGS)},
            "rationale": {"type": "string"},
        },
        "required": ["rating", "rationale"],
        "additionalProperties": False,
    },
    grammar=(
        f'root ::= "{{" ws "\\"rating\\"" ws ":" ws rating ws "," ws "\\"rationale\\"" ws ":" '
        f'ws string ws "}}"\n'
        'rating ::= "\\"A\\"" | "\\"B\\"" | "\\"C\\"" | "\\"D\\""\n'
        f"string ::= {_STRING_GBNF}\n"
        f"ws ::= {_WS_GBNF}\n"
    ),
)

PREFERENCE_SHAPE = StructuredOutput(
    name="preference",
    json_schema={
        "type": "object",
        "properties": {
            "winner": {"type": "string", "enum": ["1", "2", "tie"]},
            "rationale": {"type": "string"},
        },
        "required": ["winner", "rationale"],
        "additionalProperties": False,
    },
    grammar=(
        f'root ::= "{{" ws "\\"winner\\"" ws ":" ws winner ws "," ws "\\"rationale\\"" ws ":" '
        f'ws string ws "}}"\n'
        'winner ::= "\\"1\\"" | "\\"2\\"" | "\\"tie\\""\n'
        f"string ::= {_STRING_GBNF}\n"
        f"ws ::= {_WS_GBNF}\n"
    ),
)


# --- what is judged and what comes back -----------------------------------------------------------


@dataclass(frozen=True)
class JudgeTask:
    """One task as the judge sees it: instances are `{input, output}` mappings."""

    instruction: str
    instances: Sequence[Mapping[str, str]] = ()
    language: str = "en"  # the task's detected language; Chinese gets the Chinese prompt


@dataclass(frozen=True)
class JudgePrompt:
    """A prompt ready to send: raw text for completion models, `messages` for chat models."""

    text: str
    messages: list[ChatMessage]
    params: SamplingParams
    version: str  # stored with the judgement, e.g. "judge-v1:en"
    language: str

    def for_model(self, chat: bool) -> str | list[ChatMessage]:
        return self.messages if chat else self.text


@dataclass(frozen=True)
class Judgement:
    """A rating of one task. `rating` None: the answer held none (unjudged, never guessed);
    `rationale` then says what the answer was."""

    rating: Rating | None
    rationale: str
    model: str
    prompt_version: str
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def judged(self) -> bool:
        return self.rating is not None


@dataclass(frozen=True)
class Preference:
    """Which of two answers is better. `winner` names the argument (`first` is the answer
    passed as `first`), whatever position it was shown in; None: unparseable."""

    winner: Winner | None
    rationale: str
    model: str
    prompt_version: str
    shown_first: Literal["first", "second"] = "first"
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ParsedAnswer:
    value: str  # a rating, or "1" / "2" / "tie"
    rationale: str
    notes: list[str] = field(default_factory=list)


# --- prompts ------------------------------------------------------------------------------------


def prompt_language(language: str | None) -> str:
    """Chinese tasks get the Chinese wording; every other language the English one."""
    return "zh" if language == "zh" else "en"


def _field(label: str, value: str) -> str:
    """`label value`; no space after a full-width colon, as Chinese is written."""
    return f"{label}{value}" if label.endswith("：") else f"{label} {value}"


def _cut(text: str) -> str:
    text = (text or "").strip()
    return text if len(text) <= FIELD_CHARS else text[:FIELD_CHARS] + "…"


def _task_block(
    words: Mapping[str, str], instruction: str, instances: Sequence[Mapping[str, str]]
) -> str:
    lines = [_field(words["instruction"], _cut(instruction))]
    shown = list(instances)[:MAX_INSTANCES]
    for i, instance in enumerate(shown, start=1):
        if len(shown) > 1:
            lines.append(f"{words['example']} {i}")
        given = _cut(instance.get("input", ""))
        lines.append(_field(words["input"], given or NO_INPUT))
        lines.append(_field(words["output"], _cut(instance.get("output", ""))))
    if not shown:
        lines.append(_field(words["output"], ""))
    return "\n".join(lines)


def _answer_json(key: str, value: str, rationale: str) -> str:
    return json.dumps({key: value, "rationale": rationale}, ensure_ascii=False)


def _prompt(
    header: str, blocks: list[str], shape: StructuredOutput, version: str, language: str
) -> JudgePrompt:
    body = "\n\n".join(blocks)
    params = SamplingParams(**JUDGE_SAMPLING, structured=shape)  # type: ignore[arg-type]
    return JudgePrompt(
        text=f"{header}\n\n{body}",
        messages=[
            ChatMessage(role="system", content=header),
            ChatMessage(role="user", content=body),
        ],
        params=params,
        version=f"{version}:{language}",
        language=language,
    )


def build_judge_prompt(task: JudgeTask) -> JudgePrompt:
    """The rating prompt: the scale, one worked example per level, then the task."""
    language = prompt_language(task.language)
    words = JUDGE_WORDS[language]
    blocks = []
    for n, (instruction, pairs, rating, why) in enumerate(JUDGE_EXAMPLES[language], start=1):
        shown = [{"input": i, "output": o} for i, o in pairs]
        blocks.append(
            f"{words['task']} {n}\n{_task_block(words, instruction, shown)}\n"
            f"{_field(words['answer'], _answer_json('rating', rating, why))}"
        )
    n = len(JUDGE_EXAMPLES[language]) + 1
    blocks.append(
        f"{words['task']} {n}\n{_task_block(words, task.instruction, task.instances)}\n"
        f"{words['answer']}"
    )
    return _prompt(words["header"], blocks, RATING_SHAPE, JUDGE_PROMPT_VERSION, language)


def build_pairwise_prompt(
    instruction: str, input: str, answer_1: str, answer_2: str, *, language: str = "en"
) -> JudgePrompt:
    """The comparison prompt: answers shown in the order given (1, then 2)."""
    language = prompt_language(language)
    words = PAIRWISE_WORDS[language]

    def block(n: int, instr: str, given: str, one: str, two: str) -> str:
        return "\n".join(
            [
                f"{words['task']} {n}",
                _field(words["instruction"], _cut(instr)),
                _field(words["input"], _cut(given) or NO_INPUT),
                _field(words["first"], _cut(one)),
                _field(words["second"], _cut(two)),
                words["answer"],
            ]
        )

    blocks = [
        _field(block(n, i, g, a, b), _answer_json("winner", w, why))
        for n, (i, g, a, b, w, why) in enumerate(PAIRWISE_EXAMPLES[language], start=1)
    ]
    blocks.append(block(len(blocks) + 1, instruction, input, answer_1, answer_2))
    return _prompt(words["header"], blocks, PREFERENCE_SHAPE, PAIRWISE_PROMPT_VERSION, language)


# --- parsing ------------------------------------------------------------------------------------

_LABELLED_RATING = re.compile(
    r"(?:rating|grade|level|评级|等级|评分)\s*\**\s*[:：=]?\s*[\"'“「*]*\s*([ABCD])(?![A-Za-z])",
    re.IGNORECASE,
)
_BARE_RATING = re.compile(r"^[\s\"'“”「」*`(\[]*([ABCD])[\s\"'“”「」*`)\].。]*$")
_RATING_FIELD = re.compile(r'"rating"\s*:\s*"\s*([ABCDabcd])\s*"')
_WINNER_FIELD = re.compile(r'"winner"\s*:\s*"\s*(1|2|tie)\s*"', re.IGNORECASE)
_RATIONALE_FIELD = re.compile(r'"rationale"\s*:\s*"((?:[^"\\]|\\.)*)')
_BARE_WINNER = re.compile(r"^[\s\"'“”*`]*(1|2|tie|平局)[\s\"'“”*`.。]*$", re.IGNORECASE)
_LABELLED_WINNER = re.compile(
    r"(?:winner|better|verdict|胜者|更好)\s*\**\s*[:：=]?\s*[\"'“*]*\s*(?:answer\s*|回答\s*)?"
    r"(1|2|tie|平局)(?![0-9A-Za-z])",
    re.IGNORECASE,
)


def _json_objects(text: str) -> list[dict[str, object]]:
    """Every JSON object that parses, starting at each `{` of the text."""
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _rationale(text: str, obj: Mapping[str, object] | None) -> str:
    if obj is not None:
        why = str(obj["rationale"]) if isinstance(obj.get("rationale"), str) else ""
    else:
        partial = _RATIONALE_FIELD.search(text)
        if partial:
            try:
                why = json.loads(f'"{partial.group(1)}"')
            except ValueError:
                why = partial.group(1)
        else:
            why = text
    why = " ".join(why.split())
    return why if len(why) <= RATIONALE_CHARS else why[:RATIONALE_CHARS] + "…"


def _parse(
    text: str, key: str, allowed: Mapping[str, str], field_re: re.Pattern[str],
    labelled: re.Pattern[str], bare: re.Pattern[str] | None,
) -> ParsedAnswer | None:  # fmt: skip
    text = (text or "").strip()
    if not text:
        return None
    for obj in _json_objects(text):  # a complete JSON answer (structured, or free but tidy)
        value = obj.get(key)
        if isinstance(value, str) and value.strip().lower() in allowed:
            return ParsedAnswer(allowed[value.strip().lower()], _rationale(text, obj))
    # A JSON answer cut off by max_tokens after its value: the value was given, not guessed.
    for pattern in (field_re, labelled):
        match = pattern.search(text)
        if match and match.group(1).lower() in allowed:
            return ParsedAnswer(allowed[match.group(1).lower()], _rationale(text, None))
    if bare is not None:
        match = bare.match(text)
        if match:
            return ParsedAnswer(allowed[match.group(1).lower()], "")
    return None


_RATING_VALUES = {r.lower(): r for r in RATINGS}
_WINNER_VALUES = {"1": "1", "2": "2", "tie": "tie", "平局": "tie"}


def parse_judgement(text: str) -> tuple[Rating, str] | None:
    """(rating, rationale) from a judge's answer; None when it states no rating.

    Accepted: a JSON object with a `rating` of A-D (anywhere in the text); a JSON answer cut
    off after its rating; a labelled rating ("Rating: B", "评级：B"); or an answer that is a
    single letter A-D. Anything else (a letter inside prose, two conflicting formats) is not
    read as a rating.
    """
    parsed = _parse(text, "rating", _RATING_VALUES, _RATING_FIELD, _LABELLED_RATING, _BARE_RATING)
    if parsed is None:
        return None
    return parsed.value, parsed.rationale  # type: ignore[return-value]


def parse_preference(text: str) -> tuple[Literal["1", "2", "tie"], str] | None:
    """(winner as shown: "1", "2" or "tie", rationale) from a comparison answer; None when the
    answer names no winner."""
    parsed = _parse(text, "winner", _WINNER_VALUES, _WINNER_FIELD, _LABELLED_WINNER, _BARE_WINNER)
    if parsed is None:
        return None
    return parsed.value, parsed.rationale  # type: ignore[return-value]


def unjudged_note(text: str) -> str:
    """What an unparseable answer said, kept as the rationale of an unjudged task."""
    shown = " ".join((text or "").split())[:200]
    return f"the judge's answer held no rating: {shown!r}"


def judgement_from(text: str, *, model: str, prompt_version: str) -> Judgement:
    """A Judgement from a judge's answer text (the pipeline sends its own requests)."""
    parsed = parse_judgement(text)
    if parsed is None:
        return Judgement(None, unjudged_note(text), model, prompt_version, raw=text)
    rating, why = parsed
    return Judgement(rating, why, model, prompt_version, raw=text)


# --- one-call helpers ---------------------------------------------------------------------------


async def judge_task(backend: Backend, task: JudgeTask, *, chat: bool = False) -> Judgement:
    """Rate one task with one request (retried by the backend as any generation request).

    `chat`: send chat messages (a chat-only endpoint) instead of raw text. Raises the backend's
    GeneratorError when the request fails after its retries.
    """
    prompt = build_judge_prompt(task)
    generation = await backend.generate_one(prompt.for_model(chat), prompt.params)
    judgement = judgement_from(
        generation.text, model=generation.model, prompt_version=prompt.version
    )
    return Judgement(
        judgement.rating,
        judgement.rationale,
        judgement.model,
        judgement.prompt_version,
        raw=generation.text,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
    )


async def compare(
    backend: Backend,
    instruction: str,
    input: str,
    first: str,
    second: str,
    *,
    language: str = "en",
    chat: bool = False,
    swap: bool = False,
) -> Preference:
    """Which of two answers to one task is better, or a tie, with one request.

    `swap=True` shows `second` in position 1; the returned winner still names the argument
    (`"first"` means the answer passed as `first`). Call once with `swap=False` and once with
    `swap=True` to cancel the judge's position bias. Raises the backend's GeneratorError when
    the request fails after its retries.
    """
    shown = (second, first) if swap else (first, second)
    prompt = build_pairwise_prompt(instruction, input, *shown, language=language)
    generation = await backend.generate_one(prompt.for_model(chat), prompt.params)
    parsed = parse_preference(generation.text)
    winner: Winner | None
    if parsed is None:
        winner, why = None, unjudged_note(generation.text).replace("rating", "winner")
    else:
        position, why = parsed
        if position == "tie":
            winner = "tie"
        else:
            in_first_place = position == "1"
            winner = "first" if in_first_place != swap else "second"
    return Preference(
        winner=winner,
        rationale=why,
        model=generation.model,
        prompt_version=prompt.version,
        shown_first="second" if swap else "first",
        raw=generation.text,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
    )
