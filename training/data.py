"""Chat JSONL in, token ids and loss labels out.

The file format is OpenAI's fine-tuning format: one `{"messages": [{"role", "content"}, ...]}`
object per line, roles system | user | assistant, and an optional `"weight": 0 | 1` on assistant
messages (0: shown as context, not learned). Every refusal names the 1-based line.

Labels are built from character spans of the rendered chat template, never by comparing ids with
the pad token: SmolLM2's pad token *is* its end-of-turn token `<|im_end|>`, and that token must be
learned, or the tuned model never learns to stop. So the loss covers each assistant message's text
plus the end-of-turn token after it, and nothing else (no system, user, role headers, newlines).

No torch here: the API process can validate an upload with `read_chat_jsonl` alone.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from training.errors import TrainingDataError, TrainingError

IGNORE_INDEX = -100  # label of a token that carries no loss (torch's cross_entropy default)
ROLES = ("system", "user", "assistant")
LONG_EXAMPLES = ("truncate", "drop", "fail")  # what to do with an example over max_seq_len

LongExamples = Literal["truncate", "drop", "fail"]

Message = dict[str, Any]


@dataclass(frozen=True)
class ChatExample:
    """One validated conversation and the line it came from."""

    messages: list[Message]
    line: int


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one rendered conversation; `labels[t]` is `input_ids[t]` or IGNORE_INDEX."""

    input_ids: list[int]
    labels: list[int]
    line: int

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class DatasetStats:
    """What the job record shows about a training file."""

    n_examples: int
    n_tokens: int  # all tokens of the rendered conversations
    n_target_tokens: int  # tokens that carry loss (assistant text + end-of-turn)
    sha256: str  # of the file's bytes, so a job names exactly the data it saw
    n_truncated: int = 0  # examples cut to max_seq_len (their end was dropped)
    n_dropped: int = 0  # examples left out: too long, or no target token left after the cut


def task_to_messages(
    instruction: str, input: str = "", output: str | None = None, *, system: str | None = None
) -> list[Message]:
    """The chat form of a Self-Instruct task; export and evaluation share it so prompts match."""
    user = f"{instruction.strip()}\n\n{input.strip()}" if input.strip() else instruction.strip()
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


# --- reading and validation --------------------------------------------------------------------


def read_chat_jsonl(path: Path | str) -> tuple[list[ChatExample], str]:
    """Parse and validate every line; returns the examples and the sha256 of the file's bytes."""
    raw = Path(path).read_bytes()
    examples = []
    text = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
    for number, line_bytes in enumerate(text.splitlines(), start=1):
        if not line_bytes.strip():
            continue  # blank lines (a trailing newline, say) carry nothing
        examples.append(ChatExample(_parse_line(line_bytes, number, str(path)), number))
    if not examples:
        raise TrainingDataError(line=0, reason="the file holds no examples", path=str(path))
    return examples, hashlib.sha256(raw).hexdigest()


def _parse_line(line_bytes: bytes, number: int, path: str) -> list[Message]:
    def refuse(reason: str) -> TrainingDataError:
        return TrainingDataError(line=number, reason=reason, path=path)

    try:
        record = json.loads(line_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise refuse(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise refuse('expected an object with a "messages" list')
    messages = record["messages"]
    if not messages:
        raise refuse('"messages" is empty')
    for index, message in enumerate(messages):
        _check_message(message, index, refuse)
    if messages[0]["role"] == "assistant":
        raise refuse("the conversation starts with an assistant message; start with system or user")
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        raise refuse("no assistant message to learn from (add one, or give one weight 1)")
    return [dict(m) for m in messages]


def _check_message(message: object, index: int, refuse: Any) -> None:
    if not isinstance(message, dict):
        raise refuse(f"messages[{index}] is not an object")
    role = message.get("role")
    if role not in ROLES:
        raise refuse(f"messages[{index}] has role {role!r}; use one of {list(ROLES)}")
    content = message.get("content")
    if not isinstance(content, str):
        raise refuse(f"messages[{index}].content must be a string")
    if not content.strip():
        raise refuse(f"messages[{index}] ({role}) has empty content")
    if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
        raise refuse(f"messages[{index}].weight must be 0 or 1, and only on assistant messages")


# --- chat template and labels ------------------------------------------------------------------


def tokenize_conversations(
    examples: Sequence[ChatExample], tokenizer: Any
) -> list[TokenizedExample]:
    """Render each conversation with the tokenizer's chat template and label assistant spans."""
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError("the base model's tokenizer has no chat template; pick a chat model")
    texts, spans = [], []
    for example in examples:
        text, example_spans = _render_with_spans(example, tokenizer)
        texts.append(text)
        spans.append(example_spans)
    # One batched call: the Rust tokenizer runs the whole file at once.
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    tokenized = []
    for example, ids, offsets, example_spans in zip(
        examples, encoded["input_ids"], encoded["offset_mapping"], spans, strict=True
    ):
        labels = [
            token if _inside_any(start, end, example_spans) else IGNORE_INDEX
            for token, (start, end) in zip(ids, offsets, strict=True)
        ]
        if all(label == IGNORE_INDEX for label in labels):
            raise TrainingDataError(
                line=example.line,
                reason="no assistant token could be located in the tokenized conversation; the "
                "tokenizer gives no character offsets for this template",
            )
        tokenized.append(TokenizedExample(list(ids), labels, example.line))
    return tokenized


def _render_with_spans(example: ChatExample, tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its learned assistant turns.

    A turn's span runs from the end of the prompt before it (the template's generation prompt,
    e.g. `<|im_start|>assistant\\n`) to the end of the conversation cut after that turn, minus
    trailing whitespace: the text plus the end-of-turn token, but not the newline after it.
    """
    messages = example.messages
    render = tokenizer.apply_chat_template
    full = render(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render(messages[:index], tokenize=False, add_generation_prompt=True)
        through_turn = render(messages[: index + 1], tokenize=False)
        if not (full.startswith(through_turn) and through_turn.startswith(prompt)):
            raise TrainingDataError(
                line=example.line,
                reason="the chat template does not render this conversation incrementally, so "
                "assistant turns cannot be located; use a base model with a plain chat template",
            )
        spans.append((len(prompt), len(through_turn.rstrip())))
    return full, spans


def _inside_any(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return end > start and any(low <= start and end <= high for low, high in spans)


# --- the whole file ----------------------------------------------------------------------------


def load_chat_jsonl(
    path: Path | str,
    tokenizer: Any,
    *,
    max_seq_len: int,
    long_examples: LongExamples = "truncate",
) -> tuple[list[TokenizedExample], DatasetStats]:
    """Read, validate and tokenize a chat JSONL file; `long_examples` decides what happens to an
    example longer than max_seq_len (see `fit_to_length`). Stats count what was kept."""
    chats, sha256 = read_chat_jsonl(path)
    examples, n_truncated, n_dropped = fit_to_length(
        tokenize_conversations(chats, tokenizer),
        max_seq_len=max_seq_len,
        long_examples=long_examples,
        path=str(path),
    )
    if not examples:
        raise TrainingDataError(
            line=0,
            reason=f"all {n_dropped} examples are longer than max_seq_len={max_seq_len} and "
            f"long_examples={long_examples!r} left nothing to train on; raise max_seq_len or use "
            "long_examples='truncate'",
            path=str(path),
        )
    stats = DatasetStats(
        n_examples=len(examples),
        n_tokens=sum(len(e) for e in examples),
        n_target_tokens=sum(t != IGNORE_INDEX for e in examples for t in e.labels),
        sha256=sha256,
        n_truncated=n_truncated,
        n_dropped=n_dropped,
    )
    return examples, stats


def fit_to_length(
    examples: Sequence[TokenizedExample],
    *,
    max_seq_len: int,
    long_examples: LongExamples,
    path: str | None = None,
) -> tuple[list[TokenizedExample], int, int]:
    """Apply the long-example policy; returns (kept examples, number truncated, number dropped).

    'truncate' keeps the first max_seq_len tokens: the prompt survives and the answer is cut at
    its end, as OpenAI and the usual trainers do. Cutting the start instead would leave answers
    to questions the model never sees. An example whose cut leaves no target token (the prompt
    alone fills max_seq_len) has nothing to learn and is dropped. Target tokens are counted from
    position 1, because the label of the first token is never predicted (see packing.collate).
    'drop' leaves every long example out; 'fail' refuses the file, naming the line.
    """
    if long_examples not in LONG_EXAMPLES:
        raise TrainingError(
            f"long_examples={long_examples!r} is not supported; use one of {list(LONG_EXAMPLES)}"
        )
    kept: list[TokenizedExample] = []
    n_truncated = n_dropped = 0
    for example in examples:
        if len(example) <= max_seq_len:
            kept.append(example)
            continue
        if long_examples == "fail":
            raise TrainingDataError(
                line=example.line,
                reason=f"{len(example)} tokens, longer than max_seq_len={max_seq_len}; shorten "
                "the conversation, raise max_seq_len, or set long_examples='truncate'",
                path=path,
            )
        labels = example.labels[:max_seq_len]
        if long_examples == "drop" or all(t == IGNORE_INDEX for t in labels[1:]):
            n_dropped += 1
            continue
        kept.append(TokenizedExample(example.input_ids[:max_seq_len], labels, example.line))
        n_truncated += 1
    return kept, n_truncated, n_dropped


def split_validation(
    examples: Sequence[TokenizedExample], fraction: float, seed: int
) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """Hold out a seeded random share (at least one example when fraction > 0) for eval loss."""
    if fraction <= 0:
        return list(examples), []
    if len(examples) < 2:
        raise TrainingError("validation_fraction needs at least 2 training examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_valid = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    held_out = set(order[:n_valid])
    train = [e for i, e in enumerate(examples) if i not in held_out]
    valid = [e for i, e in enumerate(examples) if i in held_out]
    return train, valid
