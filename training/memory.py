"""How much memory a job will need at its peak, and how much the device has; checked before the
first step so a job that cannot fit fails with the numbers instead of being killed mid-way.

The estimate is arithmetic on the model's shape and the largest micro-batch of the plan:

    parameters + gradients + AdamW's two moments      4 + 4 + 8 bytes per trainable weight
    activations kept for backward, per token          see activation_bytes_per_token
    the loss                                          chunked: one chunk of logits, else B*T*V
    runtime                                           the Python process itself (CPU only)

Calibrated on the SmolLM2-135M shape, full fine-tuning, float32 on the CPU, measured peak RSS
against estimate: 1 row x 2,048 with checkpointing 3.6 GB / 3.4 GB; 4 rows x 2,048 without
checkpointing, full logits (the old trainer) 21.7 GB / 21.3 GB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import distributed
from training.config import FinetuneConfig
from training.data import IGNORE_INDEX, TokenizedExample
from training.distributed import Ranks
from training.errors import InsufficientMemory
from training.model import count_params
from training.packing import StepPlan
from training.runtime import resolve_attention, use_gradient_checkpointing

GIB = 1 << 30
CPU_RUNTIME_BYTES = 512 << 20  # torch, transformers and the interpreter, before any tensor
FLOAT32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes by what holds them."""

    weights: int  # parameters, their gradients and AdamW's moments
    activations: int
    loss: int
    runtime: int
    tokens_in_flight: int  # padded slots of the largest micro-batch

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.loss + self.runtime

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB: weights, gradients and AdamW state "
            f"{self.weights / GIB:.2f} GiB, activations for {self.tokens_in_flight} tokens in "
            f"flight {self.activations / GIB:.2f} GiB, loss {self.loss / GIB:.2f} GiB, runtime "
            f"{self.runtime / GIB:.2f} GiB"
        )


def activation_bytes_per_token(
    model_config: Any,
    *,
    longest_row: int,
    gradient_checkpointing: bool,
    attn_implementation: str,
    element_bytes: int,
) -> int:
    """Bytes kept for backward per token in flight.

    A Llama-style layer keeps about 10 hidden-size tensors (norms, q/k/v/o, residuals) and 4
    intermediate-size ones (gate, up, activation, product) per token, measured with
    saved_tensors_hooks. sdpa and eager also keep a row-length mask row per token and layer
    (the CPU flash kernel saves a float copy of the mask). Checkpointing keeps only each layer's
    input, plus one layer at a time while it is recomputed.
    """
    hidden = int(model_config.hidden_size)
    layers = int(model_config.num_hidden_layers)
    intermediate = int(getattr(model_config, "intermediate_size", 4 * hidden))
    one_layer = (10 * hidden + 4 * intermediate) * element_bytes
    if attn_implementation in ("sdpa", "eager"):
        one_layer += longest_row * FLOAT32
    if gradient_checkpointing:
        return layers * hidden * element_bytes + one_layer
    return layers * one_layer


def estimate_memory(
    model_config: Any,
    *,
    n_params: int,
    n_trainable: int,
    tokens_in_flight: int,
    longest_row: int,
    target_tokens_in_flight: int,
    gradient_checkpointing: bool,
    loss_chunk_tokens: int,
    attn_implementation: str,
    device: torch.device,
    amp: bool,
) -> MemoryEstimate:
    """The peak of one training step; see the module doc for what each part counts."""
    element_bytes = 2 if amp else FLOAT32
    weights = n_params * FLOAT32 + n_trainable * 3 * FLOAT32
    per_token = activation_bytes_per_token(
        model_config,
        longest_row=longest_row,
        gradient_checkpointing=gradient_checkpointing,
        attn_implementation=attn_implementation,
        element_bytes=element_bytes,
    )
    vocab, hidden = int(model_config.vocab_size), int(model_config.hidden_size)
    if loss_chunk_tokens > 0:
        # two chunks of float32 logits (the logits and their gradient), the head's float32
        # gradient accumulator and the gradient of every target position's hidden state
        chunk = min(loss_chunk_tokens, max(1, target_tokens_in_flight))
        loss = 2 * chunk * vocab * FLOAT32 + vocab * hidden * FLOAT32
        loss += target_tokens_in_flight * hidden * FLOAT32
    else:
        # logits, their float32 copy or log-softmax, and its gradient, for every position
        loss = 3 * tokens_in_flight * vocab * FLOAT32
    return MemoryEstimate(
        weights=weights,
        activations=tokens_in_flight * per_token,
        loss=loss,
        runtime=CPU_RUNTIME_BYTES if device.type == "cpu" else 0,
        tokens_in_flight=tokens_in_flight,
    )


def available_memory(device: torch.device) -> int | None:
    """Bytes a job may still take: free GPU memory on CUDA; on the CPU the kernel's
    MemAvailable, or less when a cgroup (a container's memory limit) allows less. None where
    it cannot be read (then no check is made)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    figures = [f for f in (_meminfo_available(), _cgroup_room()) if f is not None]
    return min(figures) if figures else None


def _meminfo_available() -> int | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # the file counts kB
    return None


def _cgroup_room() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        used = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return int(limit) - used if limit.isdigit() else None


def batch_extent(
    plan: Sequence[StepPlan],
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_to_len: int | None,
    world_size: int = 1,
) -> tuple[int, int, int]:
    """The largest micro-batch of the plan on any process: (padded token slots, longest row,
    target tokens); the same figures on every process, so they all refuse a job or none."""
    lengths = [len(e) for e in examples]
    targets = [sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in examples]
    slots = longest = n_targets = 0
    for step in plan:
        for rank in range(world_size):
            ranks = Ranks(rank=rank, world_size=world_size)
            for rows in distributed.rank_micro_batches(step.rows, ranks, batch_size):
                if not rows:
                    continue
                row_len = pad_to_len or max(sum(lengths[i] for i in row) for row in rows)
                n_rows = batch_size if pad_to_len else len(rows)
                slots = max(slots, n_rows * row_len)
                longest = max(longest, row_len)
                n_targets = max(n_targets, sum(targets[i] for row in rows for i in row))
    return slots, longest, n_targets


def check_memory(
    config: FinetuneConfig,
    model: Any,
    extent: tuple[int, int, int],
    *,
    device: torch.device,
    amp: torch.dtype | None,
    available: int | None,
    ranks: Ranks | None = None,
) -> tuple[MemoryEstimate, int | None]:
    """Estimate one process's peak; raise InsufficientMemory when it exceeds `available` (None:
    measure it now). Returns the estimate and the figure it was checked against.

    Under torchrun with FSDP each process keeps 1/N of the weights' state; on the CPU the
    processes of one machine share its memory, so each may count on its share of it."""
    ranks = ranks or Ranks()
    n_params, n_trainable = count_params(model)
    slots, longest, n_targets = extent
    base = model.get_base_model() if config.method == "lora" else model
    estimate = estimate_memory(
        base.config,
        n_params=n_params,
        n_trainable=n_trainable,
        tokens_in_flight=slots,
        longest_row=longest,
        target_tokens_in_flight=n_targets,
        gradient_checkpointing=use_gradient_checkpointing(config, device),
        loss_chunk_tokens=config.loss_chunk_tokens,
        attn_implementation=resolve_attention(config.attn_implementation, device),
        device=device,
        amp=amp is not None,
    )
    if ranks.parallel and config.parallelism == "fsdp":
        estimate = dataclasses.replace(estimate, weights=estimate.weights // ranks.world_size)
    if available is None:
        available = available_memory(device)
        if available is not None and device.type == "cpu":
            available //= ranks.local_world_size
    if available is not None and estimate.total > available:
        raise InsufficientMemory(
            needed=estimate.total,
            available=available,
            detail=estimate.describe(),
            device=str(device),
        )
    return estimate, available
