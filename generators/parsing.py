"""Parsing model completions back into instructions, labels and instances.

Models, small local ones above all, answer sloppily: they repeat the label they were meant to
continue from, add a chatty preface, skip a number, use full-width punctuation, or get cut off.
Every parser here is total: on any text it returns a (possibly empty) result and never raises,
because one bad completion must cost one candidate, not a run.
"""

# Chinese text and full-width punctuation are deliberate here.

from __future__ import annotations

import re
from collections.abc import Sequence

from generators.prompts import DEFAULT_NUMBERING

# A list label may skip at most this many numbers; a larger jump ("2024: ...") is item text.
_MAX_NUMBER_GAP = 3

_DIGITS = "[0-9０-９]{1,6}"  # bounded: int() of a huge digit run would raise
# ASCII separators need a non-digit after them, so "3.5 kg" and "10:30" stay text; full-width
# ones are used by Chinese writers with no space at all ("10、写一首诗").
_SEPARATORS = r"[.:)](?![0-9])|[．、：）]"


# Control characters are never meant text, and PostgreSQL refuses NUL in a text column.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _lines(text: str) -> list[str]:
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.split("\n")


def _label_pattern(numbering: str) -> re.Pattern[str]:
    """Line-start list label for ``numbering`` (e.g. "{n}." or "Task {n}:"), loosely matched."""
    prefix, _, suffix = numbering.partition("{n}")
    prefix_words = r"[ \t]*+".join(re.escape(w) for w in prefix.split())
    prefix_part = rf"(?:{prefix_words}[ \t]*+)?" if prefix_words else ""
    separators = _SEPARATORS
    if suffix.strip() and not re.fullmatch(_SEPARATORS, suffix.strip()):
        separators += "|" + re.escape(suffix.strip())
    return re.compile(
        rf"^[ \t]*+(?:\*\*)?{prefix_part}(?P<num>{_DIGITS})[ \t]*+(?:{separators})(?:\*\*)?"
        r"[ \t]*+(?P<rest>.*)$",
        re.IGNORECASE,
    )


def parse_bootstrap_completion(
    completion: str | None,
    *,
    next_number: int,
    finish_reason: str | None = None,
    numbering: str = DEFAULT_NUMBERING,
    stop_at: int | None = None,
) -> list[str]:
    """Split a bootstrap continuation into instructions, in order.

    The text before the first label belongs to item ``next_number`` (the prompt already wrote
    its label). Two exceptions: a model that repeats that label on a line of its own has a
    preface before it, which is dropped; a model that opens with a label of its own (a chat
    model restarting at "1.") is followed in its numbering.

    An item runs over following lines until the next label or a blank line; text after a blank
    line that carries no label is trailing junk. Labels must rise, by at most
    ``_MAX_NUMBER_GAP``; anything else is item text. An item at or past ``stop_at`` ends the
    list (for servers that ignore stop sequences). When the completion stopped on length the
    last item is cut short, so it is dropped.
    """
    if not isinstance(completion, str):
        return []
    label_re = _label_pattern(numbering)
    lines = _lines(completion)
    labels = [label_re.match(line) for line in lines]
    start = next(
        (i for i, m in enumerate(labels) if m and int(m["num"]) == next_number),
        None,
    )
    current = next_number - 1
    if start is None:
        # A model that renumbered its list ("1. ...") opens with a label of its own.
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        match = labels[first] if first is not None else None
        if match:
            start, current = first, int(match["num"]) - 1
    items: list[list[str]] = []
    closed = False
    reached_stop = False
    if start is None:
        items.append([])
        current, start = next_number, 0
    for line, match in zip(lines[start:], labels[start:], strict=True):
        number = int(match["num"]) if match else -1
        if match and current < number <= current + _MAX_NUMBER_GAP:
            if stop_at is not None and number >= stop_at:
                reached_stop = True
                break
            items.append([match["rest"]])
            current, closed = number, False
        elif not line.strip():
            closed = closed or any(part.strip() for part in items[-1])
        elif not closed:
            items[-1].append(line)
    if finish_reason == "length" and not reached_stop and items:
        items.pop()
    texts = (re.sub(r"\s+", " ", " ".join(parts)).strip() for parts in items)
    return [text for text in texts if text]


# --- Classification answer ----------------------------------------------------------------------

_ANSWER_NOISE = re.compile(r"^[\s\"'“”‘’「」*`_>#.:：\-]+")
_ANSWER_PREFIX = re.compile(
    r"^(?:answer|fixed set of labels\?|is it classification\?|答案|回答|答)[ \t]*+[:：?？]?",
    re.IGNORECASE,
)
_EN_ANSWER = re.compile(r"^(yes|no|true|false)\b", re.IGNORECASE)
_EN_WORDS = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_ZH_NO = ("不是", "否", "不", "非")
_ZH_YES = ("是", "对", "属于")


def parse_classification_answer(completion: str | None) -> bool | None:
    """Read a Yes/No (是/否) verdict; None when the answer cannot be told apart.

    None matters: the caller should retry or skip rather than guess a task type, since a wrong
    type picks the wrong instance template.
    """
    if not isinstance(completion, str):
        return None
    text = _ANSWER_NOISE.sub("", completion)
    text = _ANSWER_NOISE.sub("", _ANSWER_PREFIX.sub("", text))
    match = _EN_ANSWER.match(text)
    if match:
        return match[1].lower() in ("yes", "true")
    if text.startswith(_ZH_NO):
        return False
    if text.startswith(_ZH_YES):
        return True
    first_line = text.split("\n", 1)[0]
    found = {word.lower() for word in _EN_WORDS.findall(first_line)}
    if len(found) == 1:
        return found == {"yes"}
    return None


# --- Field blocks: instances and alpaca tasks ---------------------------------------------------

# Field names (English and Chinese) mapped to the key they fill.
_FIELD_KEYS: dict[str, str] = {
    "instruction": "instruction",
    "instructions": "instruction",
    "response": "output",
    "指令": "instruction",
    "input": "input",
    "输入": "input",
    "output": "output",
    "输出": "output",
    "class label": "output",
    "label": "output",
    "类别标签": "output",
    "标签": "output",
    "类别": "output",
}
_FIELD_RE = re.compile(
    r"^[ \t]*+(?:[0-9]{1,3}[ \t]*+[.．、)][ \t]*+)?(?:\*\*)?[ \t]*+"
    r"(?P<name>class[ \t]++label|instructions?|input|output|response|label"
    r"|指令|输入|输出|类别标签|标签|类别)"
    r"[ \t]*+(?:\*\*)?[ \t]*+[:：](?:\*\*(?=\s|$))?[ \t]*+(?P<value>.*)$",
    re.IGNORECASE,
)
_EXAMPLE_RE = re.compile(
    rf"^[ \t]*+(?:#++[ \t]*+)?(?:\*\*)?[ \t]*+(?:example|示例|例子)[ \t]*+(?:{_DIGITS})?"
    r"[ \t]*+[:：.．]?[ \t]*+(?:\*\*)?[ \t]*+$",
    re.IGNORECASE,
)
_TASK_LINE_RE = re.compile(
    r"^[ \t]*+(?:\*\*)?[ \t]*+(?:task|任务)[ \t]*+(?:\*\*)?[ \t]*+[:：]", re.IGNORECASE
)
_ALPACA_BOUNDARY_RE = re.compile(
    rf"^[ \t]*+(?:#{{2,}}+[ \t]*+(?:(?:task|任务)[ \t]*+)?(?:{_DIGITS})?"
    rf"|(?:task|任务)[ \t]*+{_DIGITS})[ \t]*+[.:：]?[ \t]*+$",
    re.IGNORECASE,
)
_NO_INPUT_RE = re.compile(
    r"[<＜(（\[]\s*+(?:no[\s_-]*+input|no[\s_-]*+output|无输入|无|none|empty)\s*+[>＞)）\]]"
    r"|no[\s_-]*+input|无输入",
    re.IGNORECASE,
)


def _clean_value(parts: Sequence[str]) -> str:
    value = "\n".join(parts).strip()
    return "" if _NO_INPUT_RE.fullmatch(value) else value


def _parse_field_blocks(
    text: str,
    *,
    order: Sequence[str],
    boundary: re.Pattern[str],
    leading_key: str | None,
    truncated: bool,
) -> list[dict[str, str]]:
    """Group ``Field: value`` lines into blocks, one per instance or task.

    A block ends at a ``boundary`` line, or when a field comes that does not move forward in
    ``order`` (a second "Input:" starts the next instance even without an "Example" header).
    Lines without a field name continue the previous field, so multi-line outputs survive.
    A "Task:" line ends everything, except as the first line (a chat model echoing the task).
    """
    blocks: list[dict[str, list[str]]] = [{}]
    key = leading_key
    position = -1
    seen_text = False
    hit_stop = False
    for line in _lines(text):
        if _TASK_LINE_RE.match(line):
            if seen_text:
                hit_stop = True
                break
            continue
        seen_text = seen_text or bool(line.strip())
        if boundary.match(line):
            if blocks[-1]:
                blocks.append({})
            key, position = leading_key, -1
            continue
        field_match = _FIELD_RE.match(line)
        field_key = (
            _FIELD_KEYS.get(re.sub(r"\s+", " ", field_match["name"]).lower())
            if field_match
            else None
        )
        if field_match and field_key is not None and field_key in order:
            new_position = order.index(field_key)
            if new_position <= position or field_key in blocks[-1]:
                blocks.append({})
            blocks[-1][field_key] = [field_match["value"]]
            key, position = field_key, new_position
        elif key is not None and (line.strip() or key in blocks[-1]):
            blocks[-1].setdefault(key, []).append(line)
    if truncated and not hit_stop:
        blocks.pop()
    return [{k: _clean_value(v) for k, v in block.items()} for block in blocks]


def parse_instances(
    completion: str | None,
    *,
    output_first: bool,
    finish_reason: str | None = None,
) -> list[dict[str, str]]:
    """Turn an instance completion into ``[{"input": ..., "output": ...}]``.

    ``output_first`` matches the prompt: classification tasks give "Class label:" (the output)
    before "Input:". A missing or ``<noinput>`` input becomes ""; an instance without an output
    is dropped; the last one is dropped when the completion stopped on length.
    """
    if not isinstance(completion, str):
        return []
    order = ("output", "input") if output_first else ("input", "output")
    blocks = _parse_field_blocks(
        completion,
        order=order,
        boundary=_EXAMPLE_RE,
        leading_key=None,
        truncated=finish_reason == "length",
    )
    return [
        {"input": block.get("input", ""), "output": block["output"]}
        for block in blocks
        if block.get("output")
    ]


def parse_alpaca_completion(
    completion: str | None,
    *,
    finish_reason: str | None = None,
) -> list[dict[str, str]]:
    """Turn an alpaca-strategy completion into ``[{"instruction", "input", "output"}]``.

    The prompt ends on "Instruction:", so text before the first field is the first task's
    instruction. Tasks without an instruction or an output are dropped; so is the last one when
    the completion stopped on length.
    """
    if not isinstance(completion, str):
        return []
    blocks = _parse_field_blocks(
        completion,
        order=("instruction", "input", "output"),
        boundary=_ALPACA_BOUNDARY_RE,
        leading_key="instruction",
        truncated=finish_reason == "length",
    )
    return [
        {
            "instruction": re.sub(r"\s+", " ", block["instruction"]).strip(),
            "input": block.get("input", ""),
            "output": block["output"],
        }
        for block in blocks
        if block.get("instruction") and block.get("output")
    ]


_EVOLVED_LABEL_RE = re.compile(
    r"^\W*(?:new|rewritten|evolved|created)?\s*(?:task|prompt|instruction)\s*[:：]\s*"
    r"|^\W*(?:新任务|改写后的任务|任务|指令)\s*[:：]\s*",
    re.IGNORECASE,
)
# Where a model starts answering the task it was asked to write: not part of the task.
_ANSWER_RE = re.compile(
    r"\n\s*(?:\*\*)?(?:answer|output|response|solution|回答|答案|输出|解答)(?:\*\*)?\s*[:：]",
    re.IGNORECASE,
)


_INPUT_LINE_RE = re.compile(r"^\s*(?:\*\*)?(?:input|输入)(?:\*\*)?\s*[:：]", re.I | re.M)


def parse_evolved_task(completion: str | None, *, finish_reason: str | None = None) -> str | None:
    """The rewritten task of an evolve answer (its input, if any, stays on its own lines);
    None when there is none or the answer was cut off mid-task."""
    if not isinstance(completion, str) or finish_reason == "length":
        return None
    text = _CONTROL.sub("", completion.replace("\r\n", "\n"))
    answer = _ANSWER_RE.search(text)
    if answer:
        text = text[: answer.start()]
    text = _EVOLVED_LABEL_RE.sub("", text.strip(), count=1).strip().strip('"“”').strip()
    match = _INPUT_LINE_RE.search(text)
    head, given = (text[: match.start()], text[match.end() :]) if match else (text, "")
    instruction = " ".join(head.split())
    lines = [line.rstrip() for line in given.strip("\n").split("\n") if line.strip()]
    if not instruction:
        return None
    return "\n".join([instruction, *lines])


def parse_backtranslation(
    completion: str | None, *, finish_reason: str | None = None
) -> tuple[str, str] | None:
    """(instruction, input) of a back-translation answer; the input is "" when there is none.
    The prompt ends on "Instruction:", so the first text is the instruction."""
    if not isinstance(completion, str):
        return None
    blocks = _parse_field_blocks(
        completion,
        order=("instruction", "input", "output"),
        boundary=_ALPACA_BOUNDARY_RE,
        leading_key="instruction",
        truncated=False,
    )
    first = blocks[0] if blocks else {}
    instruction = re.sub(r"\s+", " ", first.get("instruction", "")).strip()
    if not instruction or (finish_reason == "length" and "input" not in first):
        return None
    return instruction, first.get("input", "")
