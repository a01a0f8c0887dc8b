"""Fine-tune a causal LM on chat JSONL: one loop, readable top to bottom.

    train(config, "train.jsonl", on_event=print)

Each optimizer step takes its rows from a plan fixed up front (packing.plan_steps), runs them as
grad_accum_steps micro-batches, normalises the loss by the step's number of target tokens (so
every learned token weighs the same however the rows were cut), clips, sets the learning rate from
get_lr and steps AdamW. Memory follows the tokens in flight: the loss runs through the LM head on
target tokens only, a chunk at a time (training/loss.py), activation checkpointing is on by default
on the CPU, and the step's peak is estimated (training/memory.py) and refused before the first step
when it cannot fit. Events go to `on_event` as plain dicts; `should_stop` is asked before every
optimizer step, so a cancel takes effect within one step.

Run by torchrun on several processes (training/launch.py, config.devices > 1), each step's rows
are shared out among them and the model is wrapped in DDP or FSDP (training/distributed.py); the
update is the one a single process makes from the same rows. Rank 0 alone emits events, answers
`should_stop` for all of them, and writes checkpoints and the final model.

Outputs under config.output_dir: checkpoints/step-N/, final/ and, for LoRA, adapter/ (see
training/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training import distributed, memory
from training.checkpoint import check_resumable, restore_rng, save_checkpoint, save_final
from training.config import LOSS_CHUNK_TOKENS, FinetuneConfig
from training.data import IGNORE_INDEX, DatasetStats, TokenizedExample, load_chat_jsonl
from training.data import split_validation as split_off_validation
from training.distributed import Parallel, Ranks
from training.errors import InsufficientMemory, InvalidConfig
from training.launch import TrainResult
from training.loss import chunked_linear_cross_entropy, fused_linear_cross_entropy, liger_available
from training.model import (
    add_lora,
    count_params,
    flops_per_token,
    load_lora,
    load_model,
    load_tokenizer,
    peak_flops,
)
from training.packing import Batch, StepPlan, collate, pack_rows, plan_steps

Event = dict[str, Any]


# --- small pieces ------------------------------------------------------------------------------


def resolve_device(
    config: FinetuneConfig, ranks: Ranks | None = None
) -> tuple[torch.device, torch.dtype | None]:
    """The device (this process's GPU under torchrun), and the autocast dtype (None: float32)."""
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise InvalidConfig("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'.")
    if want_cuda and ranks is not None and ranks.parallel:
        device = torch.device("cuda", ranks.local_rank)
    else:
        device = torch.device("cuda" if want_cuda else "cpu")
    return device, autocast_dtype(device, config.dtype)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA unless fp32 is asked for; float32 on the CPU (bf16 refused there)."""
    if device.type == "cpu" and dtype == "bf16":
        raise InvalidConfig("dtype='bf16' needs a CUDA GPU; use dtype='fp32' or 'auto' on the CPU.")
    return torch.bfloat16 if device.type == "cuda" and dtype in ("auto", "bf16") else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


# Architectures whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no logit
# soft-capping or scaling between the two, so the chunked loss can call the head itself.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3"})


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder and LM head of a causal LM (LoRA-wrapped or not), or None where the logits
    are more than a plain Linear of the last hidden state; those models take the plain loss."""
    get_base = getattr(model, "get_base_model", None)  # peft: the model its layers were put in
    base: Any = get_base() if callable(get_base) else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # e.g. a LoRA layer on the head
        return None
    return base.get_decoder(), head


def loss_sum(
    model: torch.nn.Module,
    batch: Batch,
    *,
    loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
    loss_kernel: str = "chunked",
) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (a scalar; float32).

    With loss_chunk_tokens > 0 the head runs on target positions only, in chunks
    (training/loss.py) or through Liger's fused kernel (loss_kernel='liger'); 0, or a model
    split_head cannot split, takes the plain full-logits path.
    use_cache=False keeps the packed-sequence mask (no cache means training) on both paths.
    """
    parts = split_head(model) if loss_chunk_tokens > 0 else None
    if parts is None:
        logits = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits  # (B, T, V)
        return F.cross_entropy(
            logits.float().flatten(0, 1),  # (B*T, V)
            batch.targets.flatten(),  # (B*T,)
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    decoder, head = parts
    hidden = decoder(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state  # (B, T, H)
    where = (batch.targets != IGNORE_INDEX).nonzero(as_tuple=True)  # CPU-GPU sync: the count
    if loss_kernel == "liger":
        return fused_linear_cross_entropy(
            hidden[where], head.weight, batch.targets[where], bias=head.bias
        )
    return chunked_linear_cross_entropy(
        hidden[where],  # (N, H): target positions only
        head.weight,
        batch.targets[where],  # (N,)
        bias=head.bias,
        chunk_tokens=loss_chunk_tokens,
    )


def resolve_attention(choice: str, device: torch.device) -> str:
    """attn_implementation 'auto': flex attention on CUDA, where it is the fastest kernel that
    keeps packed examples apart; sdpa on the CPU (flex there runs unfused and slower)."""
    if choice != "auto":
        return choice
    return "flex_attention" if device.type == "cuda" else "sdpa"


def resolve_loss_kernel(choice: str, device: torch.device, *, liger: bool | None = None) -> str:
    """loss_kernel 'auto': Liger's fused kernel on CUDA when liger-kernel is installed, else ours
    (chunked). `liger` overrides the import check (tests). Liger where it cannot run is refused."""
    liger = liger_available() if liger is None else liger
    if choice == "liger":
        if device.type != "cuda" or not liger:
            raise InvalidConfig(
                "loss_kernel='liger' needs a CUDA GPU and the liger-kernel package "
                "(pip install liger-kernel); use loss_kernel='auto' or 'chunked'."
            )
        return "liger"
    if choice == "auto" and device.type == "cuda" and liger:
        return "liger"
    return "chunked"


def use_gradient_checkpointing(config: FinetuneConfig, device: torch.device) -> bool:
    """'auto' recomputes activations on the CPU, where memory (not compute) bounds a job."""
    if config.gradient_checkpointing == "auto":
        return device.type == "cpu"
    return config.gradient_checkpointing == "on"


def compile_model(raw_model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    """Compile what loss_sum calls: the decoder in place when the chunked loss splits off the
    head (parameter names, and so checkpoints, stay the same), else the whole model."""
    parts = split_head(raw_model) if config.loss_chunk_tokens > 0 else None
    if parts is None:
        return torch.compile(raw_model)  # type: ignore[return-value]
    parts[0].compile()
    return raw_model


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


def prepare_data(
    config: FinetuneConfig, tokenizer: Any, train_path: Path | str, valid_path: Path | str | None
) -> tuple[list[TokenizedExample], list[TokenizedExample], DatasetStats, DatasetStats | None]:
    """Training and validation examples: a validation file, a seeded held-out share, or none."""

    def load(path: Path | str) -> tuple[list[TokenizedExample], DatasetStats]:
        return load_chat_jsonl(
            path, tokenizer, max_seq_len=config.max_seq_len, long_examples=config.long_examples
        )

    examples, train_stats = load(train_path)
    if valid_path is not None:
        valid, valid_stats = load(valid_path)
        return examples, valid, train_stats, valid_stats
    examples, valid = split_off_validation(examples, config.validation_fraction, config.seed)
    return examples, valid, train_stats, None


def prepare_model(config: FinetuneConfig, device: torch.device, resume_from: Path | None) -> Any:
    """The model to train (LoRA-wrapped or not), restored from a checkpoint, on `device`."""
    resume = Path(resume_from) if resume_from is not None else None
    weights = str(resume / "model") if resume and config.method == "full" else config.base_model
    model: Any = load_model(
        weights, attn_implementation=resolve_attention(config.attn_implementation, device)
    )
    if config.method == "lora":
        model = load_lora(model, resume / "adapter") if resume else add_lora(model, config)
    if use_gradient_checkpointing(config, device):
        # non-reentrant: frozen inputs (LoRA) need no requires_grad trick, and it nests with
        # torch.compile
        base = model.get_base_model() if config.method == "lora" else model
        base.activation_checkpointing_enable({"use_reentrant": False})
    model.to(device)
    model.train()
    return model


def prepare_optimizer(
    config: FinetuneConfig,
    model: Any,
    device: torch.device,
    resume_from: Path | None,
    parallel: Parallel | None,
) -> torch.optim.AdamW:
    """AdamW over the (possibly FSDP-sharded) parameters, restored from a checkpoint; the RNG
    state is restored with it, last, so the data and dropout carry on where they stopped."""
    optimizer = configure_optimizer(
        model,
        lr=config.peak_lr,
        weight_decay=config.weight_decay,
        betas=(config.adam_beta1, config.adam_beta2),
        device=device,
    )
    if resume_from is not None:
        resume = Path(resume_from)
        saved = torch.load(resume / "optimizer.pt", map_location=device, weights_only=False)
        if sharded(parallel):
            assert parallel is not None
            distributed.load_full_optimizer_state(parallel, optimizer, saved)
        else:
            optimizer.load_state_dict(saved)
        restore_rng(resume)
    return optimizer


def sharded(parallel: Parallel | None) -> bool:
    """Whether parameters live in FSDP shards (checkpoints then gather them first)."""
    return parallel is not None and parallel.strategy == "fsdp"


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
) -> tuple[memory.MemoryEstimate, int | None]:
    """Estimate one process's peak; raise InsufficientMemory when it exceeds `available` (None:
    measure it now). Returns the estimate and the figure it was checked against.

    Under torchrun with FSDP each process keeps 1/N of the weights' state; on the CPU the
    processes of one machine share its memory, so each may count on its share of it."""
    ranks = ranks or Ranks()
    n_params, n_trainable = count_params(model)
    slots, longest, n_targets = extent
    base = model.get_base_model() if config.method == "lora" else model
    estimate = memory.estimate_memory(
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
        available = memory.available_memory(device)
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


# --- the job -----------------------------------------------------------------------------------


def train(
    config: FinetuneConfig,
    train_path: Path | str,
    valid_path: Path | str | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: Path | None = None,
    available_memory: int | None = None,
) -> TrainResult:
    """Run a fine-tune job to the end (or to a cancel) and save the model; see the module doc.

    Before the first step the job's peak memory is estimated (training/memory.py) and checked
    against `available_memory` bytes (None: what the device has free now); InsufficientMemory
    when it cannot fit."""
    ranks = distributed.current_ranks()
    if ranks.world_size != config.devices:
        raise InvalidConfig(
            f"devices={config.devices} but this is {ranks.world_size} process(es): a job on "
            "several devices runs through training.launch.run, which starts torchrun."
        )
    # rank 0 speaks for the job; the others train in silence and ask it whether to stop
    emit = (on_event if ranks.main else None) or (lambda event: None)
    ask_stop = should_stop if ranks.main else None
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    device, amp = resolve_device(config, ranks)
    torch.manual_seed(config.seed)

    tokenizer = load_tokenizer(config.base_model)
    pad_id = tokenizer.pad_token_id
    examples, valid, train_stats, valid_stats = prepare_data(
        config, tokenizer, train_path, valid_path
    )
    plan = plan_steps(
        [len(e) for e in examples],
        n_epochs=config.n_epochs,
        rows_per_step=config.batch_size * config.grad_accum_steps,
        max_len=config.max_seq_len,
        packing=config.packing,
        seed=config.seed,
    )
    total_steps = min(len(plan), config.max_steps) if config.max_steps else len(plan)
    warmup_steps = config.warmup_steps
    if warmup_steps < 0:
        warmup_steps = round(config.warmup_ratio * total_steps)

    loss_kernel = resolve_loss_kernel(config.loss_kernel, device)
    strategy = config.parallelism if ranks.parallel else None
    optimizer_format = "full" if strategy == "fsdp" else "plain"
    state: dict[str, Any] = {"step": 0, "trained_tokens": 0}
    if resume_from is not None:
        state = check_resumable(Path(resume_from), config)
        if state.get("optimizer_format", "plain") != optimizer_format:
            raise InvalidConfig(
                "resume_from was written with parallelism='fsdp' on several devices and this run "
                "is not, or the other way round; resume with the same parallelism."
            )
    raw_model = prepare_model(config, device, resume_from)
    static_shapes = config.torch_compile and device.type == "cuda"
    extent = batch_extent(
        plan[:total_steps],
        examples,
        batch_size=config.batch_size,
        pad_to_len=config.max_seq_len if static_shapes else None,
        world_size=ranks.world_size,
    )
    estimate, available = check_memory(
        config, raw_model, extent, device=device, amp=amp, available=available_memory, ranks=ranks
    )
    n_params, n_trainable = count_params(raw_model)
    step_flops, peak = flops_per_token(raw_model), peak_flops(device)
    parallel = None
    if strategy is not None:
        parallel = distributed.wrap(
            raw_model,
            strategy=strategy,
            ranks=ranks,
            device=device,
            loss_chunk_tokens=config.loss_chunk_tokens,
            loss_kernel=loss_kernel,
        )
    model = raw_model  # `model` runs the steps; `raw_model` is what gets saved
    if static_shapes:
        model = compile_model(raw_model, config)  # one static shape below: one compilation
    optimizer = prepare_optimizer(config, raw_model, device, resume_from, parallel)
    lengths = [len(e) for e in examples]
    targets = [sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in examples]
    emit(
        {
            "type": "start",
            "start_step": state["step"],
            "total_steps": total_steps,
            "n_train_examples": len(examples),
            "n_valid_examples": len(valid),
            "train_tokens": train_stats.n_tokens,
            # examples over max_seq_len, handled as config.long_examples says
            "truncated_examples": train_stats.n_truncated,
            "dropped_examples": train_stats.n_dropped,
            "params": n_params,
            "trainable_params": n_trainable,
            "device": str(device),
            "devices": ranks.world_size,
            "parallelism": strategy,
            "dtype": "bf16" if amp else "fp32",
            "compiled": static_shapes,
            "gradient_checkpointing": use_gradient_checkpointing(config, device),
            "loss_chunk_tokens": config.loss_chunk_tokens,
            "loss_kernel": loss_kernel if config.loss_chunk_tokens > 0 else "plain",
            "attn_implementation": resolve_attention(config.attn_implementation, device),
            "memory_estimate_bytes": estimate.total,
            "memory_available_bytes": available,
            "method": config.method,
        }
    )

    step, trained_tokens = state["step"], state["trained_tokens"]
    train_loss: float | None = state.get("train_loss")
    eval_loss: float | None = state.get("eval_loss")
    checkpoints: list[Path] = []
    cancelled = False

    def evaluate_at(step: int) -> float:
        # the eager model: eval shapes vary, and compiling each of them would not pay
        loss = estimate_loss(
            raw_model,
            valid,
            config=config,
            pad_id=pad_id,
            device=device,
            amp=amp,
            parallel=parallel,
            loss_kernel=loss_kernel,
        )
        emit({"type": "eval", "step": step, "eval_loss": loss})
        return loss

    if valid and step == 0:
        eval_loss = evaluate_at(0)  # the base model's loss: the yardstick for what training gains
    while step < total_steps:
        stop = ask_stop is not None and ask_stop()
        if distributed.agree(stop, ranks, device):
            cancelled = True
            break
        t0 = time.perf_counter()
        step += 1
        lr = get_lr(
            step,
            peak_lr=config.peak_lr,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=config.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr

        step_plan = plan[step - 1]
        pad_to_len = config.max_seq_len if static_shapes else None
        pad_to_rows = config.batch_size if static_shapes else None
        batches = [
            collate(rows, examples, pad_id=pad_id, pad_to_len=pad_to_len, pad_to_rows=pad_to_rows)
            if rows
            else distributed.empty_batch(pad_id, length=pad_to_len or 1, n_rows=pad_to_rows or 1)
            for rows in distributed.rank_micro_batches(step_plan.rows, ranks, config.batch_size)
        ]
        step_rows = [i for row in step_plan.rows for i in row]  # every process's, not only ours
        step_loss = train_step(
            model,
            optimizer,
            batches,
            device=device,
            amp=amp,
            grad_clip=config.grad_clip,
            loss_chunk_tokens=config.loss_chunk_tokens,
            parallel=parallel,
            step_targets=sum(targets[i] for i in step_rows),
            loss_kernel=loss_kernel,
        )
        train_loss = step_loss.item()  # .item(): CPU-GPU sync, once per step
        dt = time.perf_counter() - t0
        n_tokens = sum(lengths[i] for i in step_rows)
        trained_tokens += n_tokens
        event: Event = {
            "type": "step",
            "step": step,
            "total_steps": total_steps,
            "epoch": step_plan.epoch,
            "train_loss": train_loss,
            "lr": lr,
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / dt,
            "trained_tokens": trained_tokens,
            "elapsed_s": time.perf_counter() - started,
        }
        if peak:
            event["mfu"] = step_flops * n_tokens / dt / peak
        emit(event)

        last = step == total_steps
        if valid and (step % config.eval_interval == 0 or last):
            eval_loss = evaluate_at(step)
        if config.checkpoint_interval and (step % config.checkpoint_interval == 0 or last):
            state = {
                "step": step,
                "epoch": step_plan.epoch,
                "trained_tokens": trained_tokens,
                "train_loss": train_loss,
                "eval_loss": eval_loss,
                "optimizer_format": optimizer_format,
                # the schedule is a pure function of the step; these fix it
                "scheduler": {
                    "lr": lr,
                    "peak_lr": config.peak_lr,
                    "warmup_steps": warmup_steps,
                    "total_steps": total_steps,
                    "min_lr_ratio": config.min_lr_ratio,
                },
            }
            path = output_dir / "checkpoints" / f"step-{step}"
            model_state = optimizer_state = None
            if sharded(parallel):  # gathered on rank 0: every process takes part
                assert parallel is not None
                model_state, optimizer_state = distributed.full_state_dicts(parallel, optimizer)
            if ranks.main:
                save_checkpoint(
                    path,
                    model=raw_model,
                    optimizer=optimizer,
                    config=config,
                    state=state,
                    model_state=model_state,
                    optimizer_state=optimizer_state,
                )
                checkpoints.append(path)
            emit({"type": "checkpoint", "step": step, "path": str(path)})

    final_dir = adapter_dir = None
    if cancelled:
        emit({"type": "cancelled", "step": step})
    else:
        model_state = None
        if sharded(parallel):
            assert parallel is not None
            model_state, _ = distributed.full_state_dicts(parallel)
        if ranks.main:
            final_dir, adapter_dir = save_final(
                raw_model, tokenizer, config, output_dir, model_state=model_state
            )
        else:
            final_dir = output_dir / "final"  # where rank 0 writes it
        emit(
            {
                "type": "done",
                "step": step,
                "final_dir": str(final_dir),
                "trained_tokens": trained_tokens,
                "train_loss": train_loss,
                "eval_loss": eval_loss,
            }
        )
    return TrainResult(
        steps=step,
        total_steps=total_steps,
        trained_tokens=trained_tokens,
        final_train_loss=train_loss,
        final_eval_loss=eval_loss,
        cancelled=cancelled,
        final_dir=final_dir,
        adapter_dir=adapter_dir,
        checkpoints=checkpoints,
        train_stats=train_stats,
        valid_stats=valid_stats,
        elapsed_s=time.perf_counter() - started,
    )
