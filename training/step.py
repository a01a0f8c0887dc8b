"""One optimizer step and the validation loss: the learning-rate schedule, AdamW, the step over
micro-batches whose gradients add up, and the mean loss per target token on held-out examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from training import distributed
from training.config import LOSS_CHUNK_TOKENS, FinetuneConfig
from training.data import TokenizedExample
from training.distributed import Parallel, Ranks
from training.loss import loss_sum
from training.packing import Batch, collate, pack_rows
from training.runtime import autocast


def get_lr(
    step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """Linear warm-up to peak_lr, then cosine decay to peak_lr * min_lr_ratio; step is 1-based."""
    if step <= warmup_steps:
        return peak_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    min_lr = peak_lr * min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def configure_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms or biases); fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type == "cuda")


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    *,
    device: torch.device,
    amp: torch.dtype | None,
    grad_clip: float,
    loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
    parallel: Parallel | None = None,
    step_targets: int | None = None,
    loss_kernel: str = "chunked",
) -> torch.Tensor:
    """One optimizer step over micro-batches whose gradients add up; returns the loss per target
    token as a device tensor (reading it is the caller's CPU-GPU sync).

    With `parallel` these are this process's share of the step, `step_targets` the whole step's
    target tokens: DDP and FSDP average gradients over the processes, so each loss is scaled by
    their number to make the average the sum one process would have computed."""
    n_targets = step_targets if step_targets is not None else sum(b.n_targets for b in batches)
    n_targets = max(1, n_targets)  # the whole step's, so every token weighs the same
    scale = parallel.ranks.world_size if parallel is not None else 1
    step_loss = torch.zeros((), device=device)
    for index, batch in enumerate(batches):
        batch = batch.to(device)
        if parallel is None:
            with autocast(device, amp):
                loss = loss_sum(
                    model, batch, loss_chunk_tokens=loss_chunk_tokens, loss_kernel=loss_kernel
                )
            (loss / n_targets).backward()
        else:
            with parallel.accumulating(last=index == len(batches) - 1):
                with autocast(device, amp):
                    loss = parallel.loss(batch)
                (loss * (scale / n_targets)).backward()
        step_loss += loss.detach()
    if parallel is not None:
        step_loss = distributed.sum_across(step_loss, parallel.ranks)
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss / n_targets


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    config: FinetuneConfig,
    pad_id: int,
    device: torch.device,
    amp: torch.dtype | None,
    parallel: Parallel | None = None,
    loss_kernel: str = "chunked",
) -> float:
    """Mean loss per target token over every validation example (shared out among the
    processes under torchrun, and summed over them)."""
    model.eval()
    lengths = [len(e) for e in examples]
    order = range(len(examples))
    rows = pack_rows(lengths, order, config.max_seq_len) if config.packing else [[i] for i in order]
    ranks = parallel.ranks if parallel is not None else Ranks()
    total = torch.zeros((), device=device)
    n_targets = torch.zeros((), device=device, dtype=torch.long)
    for rows_chunk in distributed.rank_micro_batches(rows, ranks, config.batch_size):
        if rows_chunk:
            batch = collate(rows_chunk, examples, pad_id=pad_id)
        else:
            batch = distributed.empty_batch(pad_id)
        batch = batch.to(device)
        with autocast(device, amp):
            if parallel is None:
                total += loss_sum(
                    model,
                    batch,
                    loss_chunk_tokens=config.loss_chunk_tokens,
                    loss_kernel=loss_kernel,
                )
            else:
                total += parallel.loss(batch)
        n_targets += batch.n_targets
    model.train()
    if parallel is not None:
        total = distributed.sum_across(total, ranks)
        n_targets = distributed.sum_across(n_targets, ranks)
    # .item(): CPU-GPU sync, once per evaluation
    return total.item() / max(1, int(n_targets.item()))
