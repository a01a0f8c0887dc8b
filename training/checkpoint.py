"""Checkpoints a job can resume from, and the final model in Hugging Face format.

checkpoints/step-N/  model/ (full) or adapter/ (LoRA), optimizer.pt, rng.pt,
                     trainer_state.json, finetune_config.json
final/               safetensors + config + tokenizer + finetune_config.json (LoRA: merged)
adapter/             the LoRA adapter alone (method='lora')
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from training.config import FinetuneConfig
from training.errors import InvalidConfig

# Fields that fix the data order and the model's shape: a resumed job must keep them.
RESUME_INVARIANTS = (
    "base_model",
    "method",
    "seed",
    "n_epochs",
    "batch_size",
    "grad_accum_steps",
    "max_seq_len",
    "packing",
    "validation_fraction",
    "lora_r",
    "lora_target_modules",
)


def save_checkpoint(
    directory: Path,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    config: FinetuneConfig,
    state: dict[str, Any],
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write step-N atomically (to a temporary name, then rename) so a crash leaves no half copy.

    `model_state`/`optimizer_state`: the whole states gathered from FSDP shards, saved instead of
    what the (sharded) model and optimizer hold in this process."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(
        partial / ("adapter" if config.method == "lora" else "model"), state_dict=model_state
    )
    torch.save(
        optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        partial / "optimizer.pt",
    )
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / "rng.pt")
    (partial / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    config.save(partial / "finetune_config.json")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory


def check_resumable(checkpoint: Path, config: FinetuneConfig) -> dict[str, Any]:
    """The checkpoint's trainer state, after checking it was made by a compatible config."""
    if not (checkpoint / "trainer_state.json").is_file():
        raise InvalidConfig(f"resume_from={str(checkpoint)!r} is not a checkpoint directory.")
    saved = json.loads((checkpoint / "finetune_config.json").read_text())
    changed = [k for k in RESUME_INVARIANTS if saved.get(k) != getattr(config, k)]
    if changed:
        raise InvalidConfig(
            f"resume_from was written with different {changed}; resume with the same values."
        )
    return json.loads((checkpoint / "trainer_state.json").read_text())


def restore_rng(checkpoint: Path) -> None:
    rng = torch.load(checkpoint / "rng.pt")
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_final(
    model: Any,
    tokenizer: Any,
    config: FinetuneConfig,
    output_dir: Path,
    model_state: dict[str, Any] | None = None,
) -> tuple[Path, Path | None]:
    """final/ in Hugging Face format; for LoRA also adapter/, and final/ holds the merged model.
    `model_state`: the whole weights gathered from FSDP shards (full fine-tuning only)."""
    final_dir, adapter_dir = output_dir / "final", None
    if config.method == "lora":
        adapter_dir = output_dir / "adapter"
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        model = model.merge_and_unload()  # folds W + (alpha/r)·BA into plain Linear weights
    model.save_pretrained(final_dir, state_dict=model_state)
    tokenizer.save_pretrained(final_dir)
    config.save(final_dir / "finetune_config.json")
    return final_dir, adapter_dir
