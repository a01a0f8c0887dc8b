"""Examples longer than max_seq_len: truncated at the end by default, dropped, or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.training.helpers import chat_record, write_jsonl
from training.data import IGNORE_INDEX, load_chat_jsonl
from training.errors import TrainingDataError

SHORT = chat_record("Say hi", "Hello!")
LONG_ANSWER = chat_record("Count to forty.", " ".join(str(i) for i in range(1, 41)))
LONG_PROMPT = chat_record("Repeat after me: " + "blah " * 80, "OK.")
MAX_LEN = 48


@pytest.fixture()
def mixed_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "mixed.jsonl", [SHORT, LONG_ANSWER, LONG_PROMPT, SHORT])


def test_truncation_keeps_the_prompt_and_cuts_the_answer_end(
    tmp_path: Path, tokenizer: Any
) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [LONG_ANSWER])
    [whole], _ = load_chat_jsonl(path, tokenizer, max_seq_len=4096)
    [cut], stats = load_chat_jsonl(path, tokenizer, max_seq_len=MAX_LEN)
    assert len(whole) > MAX_LEN and len(cut) == MAX_LEN
    assert cut.input_ids == whole.input_ids[:MAX_LEN]  # the start is kept, the end cut
    assert cut.labels == whole.labels[:MAX_LEN]
    text = tokenizer.decode(cut.input_ids)
    assert "Count to forty." in text and "<|im_start|>assistant\n1 2 3" in text
    assert "40" not in tokenizer.decode([t for t in cut.labels if t != IGNORE_INDEX])
    assert (stats.n_truncated, stats.n_dropped, stats.n_examples) == (1, 0, 1)
    assert stats.n_tokens == MAX_LEN


def test_truncate_counts_and_drops_examples_with_no_answer_left(
    mixed_file: Path, tokenizer: Any
) -> None:
    examples, stats = load_chat_jsonl(mixed_file, tokenizer, max_seq_len=MAX_LEN)
    # the long prompt fills max_seq_len before its answer starts: nothing to learn, dropped
    assert [e.line for e in examples] == [1, 2, 4]
    assert (stats.n_examples, stats.n_truncated, stats.n_dropped) == (3, 1, 1)
    assert all(len(e) <= MAX_LEN for e in examples)
    assert all(any(t != IGNORE_INDEX for t in e.labels[1:]) for e in examples)


def test_truncate_is_the_default(mixed_file: Path, tokenizer: Any) -> None:
    _, stats = load_chat_jsonl(mixed_file, tokenizer, max_seq_len=MAX_LEN)
    _, explicit = load_chat_jsonl(
        mixed_file, tokenizer, max_seq_len=MAX_LEN, long_examples="truncate"
    )
    assert stats == explicit


def test_drop_leaves_every_long_example_out(mixed_file: Path, tokenizer: Any) -> None:
    examples, stats = load_chat_jsonl(
        mixed_file, tokenizer, max_seq_len=MAX_LEN, long_examples="drop"
    )
    assert [e.line for e in examples] == [1, 4]
    assert (stats.n_examples, stats.n_truncated, stats.n_dropped) == (2, 0, 2)


def test_fail_still_refuses_the_first_long_line(mixed_file: Path, tokenizer: Any) -> None:
    with pytest.raises(TrainingDataError) as caught:
        load_chat_jsonl(mixed_file, tokenizer, max_seq_len=MAX_LEN, long_examples="fail")
    assert caught.value.line == 2
    assert f"longer than max_seq_len={MAX_LEN}" in caught.value.reason


def test_a_file_left_empty_by_the_policy_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [LONG_ANSWER, LONG_PROMPT])
    with pytest.raises(TrainingDataError, match="left nothing to train on"):
        load_chat_jsonl(path, tokenizer, max_seq_len=MAX_LEN, long_examples="drop")


def test_a_job_reports_its_truncated_and_dropped_examples(
    mixed_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from training.config import FinetuneConfig
    from training.train import train

    config = FinetuneConfig(
        base_model=str(tiny_model_dir),
        output_dir=str(tmp_path / "out"),
        max_seq_len=MAX_LEN,
        batch_size=2,
        n_epochs=1,
        checkpoint_interval=0,
    )
    events: list[dict[str, Any]] = []
    result = train(config, mixed_file, on_event=events.append)
    start = next(e for e in events if e["type"] == "start")
    assert (start["truncated_examples"], start["dropped_examples"]) == (1, 1)
    assert start["n_train_examples"] == 3
    assert (result.train_stats.n_truncated, result.train_stats.n_dropped) == (1, 1)
