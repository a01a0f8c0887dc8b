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
update is the one a single process makes from the same rows. Rank 0 alone emits events and
writes checkpoints and the final model; every process asks its own `should_stop`, and all stop at
the step where any of them says yes.

Outputs under config.output_dir: checkpoints/step-N/, final/ and, for LoRA, adapter/ (see
training/checkpoint.py).

This module holds the job: its preparation and the loop. What the loop calls lives by idea:
training/runtime.py (device, dtype, kernels, compile), training/step.py (the schedule, AdamW,
one step, the validation loss), training/loss.py (the loss of a batch), training/memory.py (the
peak-memory check) and training/result.py (events and the TrainResult).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training import distributed
from training.checkpoint import check_resumable, restore_rng, save_checkpoint, save_final
from training.config import FinetuneConfig
from training.data import IGNORE_INDEX, DatasetStats, TokenizedExample, load_chat_jsonl
from training.data import split_validation as split_off_validation
from training.distributed import Parallel, sharded
from training.errors import InvalidConfig
from training.memory import batch_extent, check_memory
from training.model import (
    add_lora,
    count_params,
    flops_per_token,
    load_lora,
    load_model,
    load_tokenizer,
    peak_flops,
)
from training.packing import collate, plan_steps
from training.result import Event, TrainResult
from training.runtime import (
    compile_model,
    resolve_attention,
    resolve_device,
    resolve_loss_kernel,
    use_gradient_checkpointing,
)
from training.step import configure_optimizer, estimate_loss, get_lr, train_step


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
    if ranks.world_size != config.devices * config.nodes:
        raise InvalidConfig(
            f"devices={config.devices} on nodes={config.nodes} but this is {ranks.world_size} "
            "process(es): a job on several devices or nodes runs through training.launch.run, "
            "which starts torchrun."
        )
    # rank 0 speaks for the job; the others train in silence. Every process is asked whether
    # to stop (each has its own caller), and all stop at the step where any says yes.
    emit = (on_event if ranks.main else None) or (lambda event: None)
    ask_stop = should_stop
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
