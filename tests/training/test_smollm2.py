"""The real bundled SmolLM2-135M-Instruct, dequantised from its GGUF, fine-tuned with LoRA."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.training.helpers import CHATS, chat_record, write_jsonl
from training.config import FinetuneConfig
from training.evaluate import EvalTask, evaluate_model, load_for_eval
from training.train import train


# In the exhaustive tier: the service-level test_cpu_job_trains_and_the_tuned_model_generates
# trains the bundled model with LoRA through a job in make test, and each costs half a minute.
@pytest.mark.real
@pytest.mark.slow
def test_lora_finetunes_the_bundled_model(gguf_path: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [chat_record(u, a) for u, a in CHATS[:8]])
    config = FinetuneConfig(
        base_model=str(gguf_path),
        output_dir=str(tmp_path / "job"),
        method="lora",
        max_seq_len=128,
        batch_size=1,
        n_epochs=1,
        max_steps=2,
        learning_rate=1e-3,
        warmup_steps=0,
        eval_interval=2,
        checkpoint_interval=0,
    )
    events: list[dict[str, Any]] = []
    result = train(config, data, data, on_event=events.append)

    assert result.steps == 2 and not result.cancelled
    assert all(math.isfinite(e["train_loss"]) for e in events if e["type"] == "step")
    evals = [e["eval_loss"] for e in events if e["type"] == "eval"]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_config.json").is_file()

    assert result.final_dir is not None
    model, tokenizer = load_for_eval(str(result.final_dir), device="cpu")
    assert tokenizer.chat_template, "the final model keeps the chat template"
    scored = evaluate_model(
        model, tokenizer, [EvalTask("What is the capital of France?", "", "Paris.")],
        max_new_tokens=12,
    )  # fmt: skip
    assert scored.outputs[0].strip() and 0.0 <= scored.mean_rouge_l <= 1.0
