"""The memory estimate: what the options save, and a job that cannot fit refused before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig

from tests.training.helpers import CHATS, chat_record, write_jsonl
from training.config import FinetuneConfig
from training.errors import InsufficientMemory
from training.memory import GIB, available_memory, estimate_memory

SMOLLM2_135M = LlamaConfig(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
)
N_PARAMS = 134_515_008


def _smollm2_estimate(rows: int, *, checkpointing: bool, chunk: int) -> float:
    estimate = estimate_memory(
        SMOLLM2_135M,
        n_params=N_PARAMS,
        n_trainable=N_PARAMS,
        tokens_in_flight=rows * 2048,
        longest_row=2048,
        target_tokens_in_flight=rows * 1024,
        gradient_checkpointing=checkpointing,
        loss_chunk_tokens=chunk,
        attn_implementation="sdpa",
        device=torch.device("cpu"),
        amp=False,
    )
    return estimate.total / 1e9


def test_the_estimate_tracks_the_measured_peaks_of_the_bundled_model() -> None:
    # measured peak RSS, full fine-tune on the CPU: old trainer 4 x 2,048 21.7 GB
    assert 19 < _smollm2_estimate(4, checkpointing=False, chunk=0) < 24
    # the defaults (checkpointing, chunked loss) stay inside the 6 GB goal for 4 x 2,048
    assert _smollm2_estimate(4, checkpointing=True, chunk=1024) < 6
    assert _smollm2_estimate(1, checkpointing=True, chunk=1024) < _smollm2_estimate(
        1, checkpointing=False, chunk=1024
    )


def test_available_memory_is_read_on_this_machine() -> None:
    free = available_memory(torch.device("cpu"))
    assert free is not None and 0 < free < 1 << 50


def test_a_job_that_cannot_fit_is_refused_before_its_first_step(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from training.train import train

    data = write_jsonl(tmp_path / "train.jsonl", [chat_record(u, a) for u, a in CHATS])
    config = FinetuneConfig(
        base_model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), max_seq_len=128
    )
    events: list[dict[str, Any]] = []
    with pytest.raises(InsufficientMemory) as caught:
        train(config, data, on_event=events.append, available_memory=GIB // 100)
    assert caught.value.available == GIB // 100 < caught.value.needed
    assert "only 0.0 GiB is available on cpu" in str(caught.value)
    assert events == [] and not (tmp_path / "out").exists()
