"""Chat JSONL: refusals name the line; the loss covers assistant text and end-of-turn only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.training.helpers import chat_record, write_jsonl
from training.data import (
    IGNORE_INDEX,
    ChatExample,
    load_chat_jsonl,
    read_chat_jsonl,
    split_validation,
    task_to_messages,
    tokenize_conversations,
)
from training.errors import TrainingDataError

GOOD = chat_record("Say hi", "Hello!")


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({"prompt": "x", "completion": "y"}, 'with a "messages" list'),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
            "role 'bot'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "  "},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "messages[0] (user) has empty content",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]},
            "content must be a string",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                ]
            },
            "no assistant message to learn from",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "starts with an assistant message",
        ),
    ],
)
def test_a_bad_line_is_refused_by_number(tmp_path: Path, bad_line: Any, reason: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(TrainingDataError) as caught:
        read_chat_jsonl(path)
    assert caught.value.line == 3
    assert reason in caught.value.reason
    assert "line 3" in str(caught.value)


def test_with_fail_an_example_longer_than_max_seq_len_is_refused_by_number(
    tmp_path: Path, tokenizer: Any
) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, chat_record("Say hi", "word " * 80)])
    with pytest.raises(TrainingDataError) as caught:
        load_chat_jsonl(path, tokenizer, max_seq_len=64, long_examples="fail")
    assert caught.value.line == 2
    assert "longer than max_seq_len=64" in caught.value.reason


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(TrainingDataError, match="no examples"):
        read_chat_jsonl(path)


def test_stats_count_examples_tokens_and_hash_the_bytes(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, chat_record("Add 2 and 2", "4", "Be terse.")])
    examples, stats = load_chat_jsonl(path, tokenizer, max_seq_len=256)
    assert stats.n_examples == 2
    assert stats.n_tokens == sum(len(e) for e in examples)
    assert 0 < stats.n_target_tokens < stats.n_tokens
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _labelled(tokenizer: Any, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    [example] = tokenize_conversations([ChatExample(messages, 1)], tokenizer)
    assert example.labels == [
        t if lab != IGNORE_INDEX else IGNORE_INDEX
        for t, lab in zip(example.input_ids, example.labels, strict=True)
    ]
    return [
        (tokenizer.decode([t]), lab != IGNORE_INDEX)
        for t, lab in zip(example.input_ids, example.labels, strict=True)
    ]


def test_loss_covers_assistant_text_and_end_of_turn_only(tokenizer: Any) -> None:
    # SmolLM2 pads with its end-of-turn token; the label must survive that.
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "And bye?"},
        {"role": "assistant", "content": "Bye."},
    ]
    tokens = _labelled(tokenizer, messages)
    learned = "".join(text for text, on in tokens if on)
    assert learned == "Hello there!<|im_end|>Bye.<|im_end|>"
    # one end-of-turn per message: only those closing an answer carry loss
    end_of_turn = [on for text, on in tokens if text == "<|im_end|>"]
    assert end_of_turn == [False, False, True, False, True]
    # newlines, role headers, system and user text carry none
    assert not any(on for text, on in tokens if text in ("\n", "system", "user", "ass", "istant"))
    assert "".join(text for text, _ in tokens).startswith("<|im_start|>system\nBe brief.")


def test_weight_zero_turns_are_context_not_targets(tokenizer: Any) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Wrong answer", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Right answer"},
    ]
    learned = "".join(text for text, on in _labelled(tokenizer, messages) if on)
    assert learned == "Right answer<|im_end|>"


def test_chinese_answers_are_learned_whole(tokenizer: Any) -> None:
    messages = task_to_messages("把这句话翻译成中文", "Good morning", "早上好。")
    [example] = tokenize_conversations([ChatExample(messages, 1)], tokenizer)
    learned = [t for t in example.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "早上好。<|im_end|>"


def test_task_to_messages_joins_instruction_and_input() -> None:
    assert task_to_messages("Sum these.", "2, 3", "5") == [
        {"role": "user", "content": "Sum these.\n\n2, 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert task_to_messages("Tell a joke.", "")[0]["content"] == "Tell a joke."


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path, tokenizer: Any) -> None:
    records = [chat_record(f"Question {i}?", f"Answer {i}.") for i in range(20)]
    examples, _ = load_chat_jsonl(
        write_jsonl(tmp_path / "d.jsonl", records), tokenizer, max_seq_len=128
    )
    train, valid = split_validation(examples, 0.2, seed=7)
    assert len(valid) == 4 and len(train) == 16
    assert {e.line for e in train}.isdisjoint({e.line for e in valid})
    assert split_validation(examples, 0.2, seed=7)[1] == valid
    assert json.dumps([e.line for e in valid]) != json.dumps(
        [e.line for e in split_validation(examples, 0.2, seed=8)[1]]
    )


def test_a_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    examples, sha = read_chat_jsonl(path)
    assert len(examples) == 1 and sha == hashlib.sha256(path.read_bytes()).hexdigest()
