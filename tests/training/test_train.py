"""Smoke tests on a tiny random Llama: the loss falls, weights move, jobs stop and resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.helpers import CHATS, chat_record, write_jsonl
from training.config import FinetuneConfig
from training.model import peak_flops
from training.result import TrainResult
from training.step import get_lr
from training.train import train


@dataclass
class Job:
    config: FinetuneConfig
    result: TrainResult
    events: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def tiny_config(base: Path, out: Path, **overrides: Any) -> FinetuneConfig:
    values: dict[str, Any] = {
        "base_model": str(base),
        "output_dir": str(out),
        "max_seq_len": 128,
        "batch_size": 2,
        "n_epochs": 2,
        "learning_rate": 1e-2,
        "warmup_steps": 1,
        "eval_interval": 2,
        "checkpoint_interval": 2,
        "seed": 0,
    }
    return FinetuneConfig(**(values | overrides))


def run_job(config: FinetuneConfig, data: Path, **kwargs: Any) -> Job:
    events: list[dict[str, Any]] = []
    result = train(config, data, data, on_event=events.append, **kwargs)
    return Job(config, result, events)


def weights(directory: Path | None) -> dict[str, torch.Tensor]:
    assert directory is not None
    return load_file(directory / "model.safetensors")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    return write_jsonl(directory / "train.jsonl", [chat_record(u, a) for u, a in CHATS])


@pytest.fixture(scope="module")
def full_job(
    tiny_model_dir: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Job:
    """One full fine-tune whose outputs several tests read (the same file is the validation set)."""
    out = tmp_path_factory.mktemp("full")
    return run_job(tiny_config(tiny_model_dir, out), data_file)


def test_full_finetune_lowers_the_loss_and_changes_the_weights(
    full_job: Job, tiny_model_dir: Path
) -> None:
    result = full_job.result
    assert not result.cancelled and result.steps == result.total_steps >= 4
    evals = full_job.of_type("eval")
    assert evals[0]["step"] == 0
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.1
    assert result.final_eval_loss == evals[-1]["eval_loss"]
    before, after = weights(tiny_model_dir), weights(result.final_dir)
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), "every weight trains in a full fine-tune"


def test_step_events_report_progress_and_real_token_counts(full_job: Job) -> None:
    steps = full_job.of_type("step")
    assert [e["step"] for e in steps] == list(range(1, full_job.result.total_steps + 1))
    assert {e["epoch"] for e in steps} == {1, 2}
    assert all(e["tokens_per_s"] > 0 and math.isfinite(e["train_loss"]) for e in steps)
    if full_job.of_type("start")[0]["device"] == "cpu":
        assert all("mfu" not in e for e in steps), "no peak FLOPs figure for a CPU"
    # real tokens only: each epoch sees every token of the file once, padding never counts
    assert full_job.result.trained_tokens == 2 * full_job.result.train_stats.n_tokens
    assert sum(e["tokens"] for e in steps) == full_job.result.trained_tokens
    lrs = [e["lr"] for e in steps]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-3)


def test_final_model_is_a_loadable_hugging_face_directory(full_job: Job) -> None:
    final = full_job.result.final_dir
    assert final is not None and (final / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    ids: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    assert model(input_ids=ids).logits.shape[-1] == len(tokenizer)
    saved = json.loads((final / "finetune_config.json").read_text())
    assert saved == full_job.config.to_dict()


def test_checkpoints_hold_everything_a_resume_needs(full_job: Job) -> None:
    assert [p.name for p in full_job.result.checkpoints][:2] == ["step-2", "step-4"]
    checkpoint = full_job.result.checkpoints[0]
    names = {p.name for p in checkpoint.iterdir()}
    assert {
        "model",
        "optimizer.pt",
        "rng.pt",
        "trainer_state.json",
        "finetune_config.json",
    } <= names
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["scheduler"]["total_steps"] == full_job.result.total_steps


def test_resume_continues_at_the_next_step_with_the_same_data_order(
    full_job: Job, data_file: Path, tmp_path: Path
) -> None:
    config = tiny_config(Path(full_job.config.base_model), tmp_path)
    resumed = run_job(config, data_file, resume_from=full_job.result.checkpoints[0])
    assert resumed.of_type("start")[0]["start_step"] == 2
    assert resumed.of_type("step")[0]["step"] == 3
    assert resumed.result.steps == full_job.result.steps
    uninterrupted = full_job.of_type("step")[2:]
    for a, b in zip(uninterrupted, resumed.of_type("step"), strict=True):
        assert (a["step"], a["tokens"], a["lr"]) == (b["step"], b["tokens"], b["lr"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    final, expected = weights(resumed.result.final_dir), weights(full_job.result.final_dir)
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-5, rtol=0)


def test_resume_refuses_a_config_that_changes_the_data_order(
    full_job: Job, data_file: Path, tmp_path: Path
) -> None:
    config = tiny_config(Path(full_job.config.base_model), tmp_path, seed=1)
    with pytest.raises(ValueError, match=r"different \['seed'\]"):
        train(config, data_file, resume_from=full_job.result.checkpoints[0])


def test_should_stop_cancels_within_one_step(
    tiny_model_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    result = train(
        tiny_config(tiny_model_dir, tmp_path, checkpoint_interval=0),
        data_file,
        on_event=events.append,
        should_stop=lambda: any(e["type"] == "step" for e in events),  # cancel after step 1
    )
    assert result.cancelled and result.steps == 1 < result.total_steps
    assert events[-1] == {"type": "cancelled", "step": 1}
    assert result.final_dir is None and not (tmp_path / "final").exists()


def test_lora_trains_the_adapter_only_and_saves_a_merged_model(
    tiny_model_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    config = tiny_config(tiny_model_dir, tmp_path, method="lora", lora_r=4, lora_dropout=0.0,
                         learning_rate=2e-2, checkpoint_interval=0)  # fmt: skip
    job = run_job(config, data_file)
    assert job.result.adapter_dir is not None and job.result.final_dir is not None
    evals = job.of_type("eval")
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    start = job.of_type("start")[0]
    assert 0 < start["trainable_params"] < start["params"] / 10

    adapter = load_file(job.result.adapter_dir / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "lora_B starts at zero; it moved"

    base, merged = weights(tiny_model_dir), weights(job.result.final_dir)
    assert merged.keys() == base.keys(), "the merged model is a plain model, no adapter left"
    targets = [n for n in base if n.endswith(("q_proj.weight", "down_proj.weight"))]
    assert all(not torch.equal(base[n], merged[n]) for n in targets)
    frozen = [n for n in base if "norm" in n or "embed_tokens" in n]
    assert frozen and all(torch.equal(base[n], merged[n]) for n in frozen)

    # merged weights compute what base + adapter compute
    ids = torch.tensor([[1, 520, 9531, 198, 19556, 2]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(job.result.final_dir, local_files_only=True)
        base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
        adapted = PeftModel.from_pretrained(base_model, job.result.adapter_dir)
        torch.testing.assert_close(
            plain(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-4, rtol=0
        )


def test_unpacked_rows_train_too(tiny_model_dir: Path, data_file: Path, tmp_path: Path) -> None:
    job = run_job(
        tiny_config(tiny_model_dir, tmp_path, packing=False, n_epochs=1, batch_size=4,
                    grad_accum_steps=2, checkpoint_interval=0),
        data_file,
    )  # fmt: skip
    assert job.result.total_steps == 2  # 12 examples, 8 rows per step
    assert job.result.trained_tokens == job.result.train_stats.n_tokens
    assert job.of_type("eval")[-1]["eval_loss"] < job.of_type("eval")[0]["eval_loss"]


def test_the_schedule_warms_up_then_decays_along_a_cosine() -> None:
    kwargs: dict[str, Any] = {
        "peak_lr": 1.0,
        "warmup_steps": 4,
        "total_steps": 104,
        "min_lr_ratio": 0.1,
    }
    assert [get_lr(s, **kwargs) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert get_lr(54, **kwargs) == pytest.approx(0.55)  # halfway down
    assert get_lr(104, **kwargs) == pytest.approx(0.1)
    assert get_lr(0 + 1, **(kwargs | {"warmup_steps": 0})) < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_trains_in_bf16_with_torch_compile(
    tiny_model_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    job = run_job(tiny_config(tiny_model_dir, tmp_path, checkpoint_interval=0), data_file)
    start = job.of_type("start")[0]
    assert (start["device"], start["dtype"], start["compiled"]) == ("cuda", "bf16", True)
    assert job.of_type("eval")[-1]["eval_loss"] < job.of_type("eval")[0]["eval_loss"]
    if peak_flops(torch.device("cuda")) is not None:  # a GPU we know the peak of
        assert all(0 < e["mfu"] < 1 for e in job.of_type("step"))
