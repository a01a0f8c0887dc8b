"""One fine-tune job on a CUDA GPU at SmolLM2-135M's shape, interrupted and resumed.

For a GPU machine that cannot hold the 98 MB bundled model: the weights are random (the shape is
the bundled model's, from bench.finetune), the tokenizer is a saved copy of the bundled one, and
the data is the starter seed pool in the chat form that export writes. The job stops itself after
a few steps, as a lost worker would, then resumes from its newest checkpoint through the same
`training.train.train` the fine-tune worker calls, and must end with a lower validation loss.

    python scripts/gpu_job.py TOKENIZER_DIR OUTPUT_DIR [--cpu-smoke]

`--cpu-smoke` runs two layers for a few steps on the CPU, only to check the script before
spending GPU time.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.finetune import SMOLLM2_135M
from training.config import FinetuneConfig
from training.data import task_to_messages
from training.train import train

SEEDS = Path(__file__).resolve().parent.parent / "app" / "seeds" / "starter_seed_tasks.jsonl"


def write_chat_file(path: Path) -> int:
    lines = []
    for raw in SEEDS.read_text(encoding="utf-8").splitlines():
        task = json.loads(raw)
        for instance in task["instances"]:
            messages = task_to_messages(task["instruction"], instance["input"], instance["output"])
            lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main(tokenizer_dir: Path, out: Path, cpu_smoke: bool = False) -> int:
    if not cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    base, job_dir = out / "base", out / "job"
    torch.manual_seed(0)
    shape = SMOLLM2_135M | ({"num_hidden_layers": 2} if cpu_smoke else {})
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(base)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, base / item.name)
    data = out / "train.jsonl"
    n_examples = write_chat_file(data)
    settings: dict[str, Any] = {
        "base_model": str(base),
        "output_dir": str(job_dir),
        "device": "cpu" if cpu_smoke else "cuda",
        "max_seq_len": 1024,
        "batch_size": 4,
        "n_epochs": 2 if cpu_smoke else 30,
        "learning_rate": 3e-4,
        "warmup_steps": 2,
        "eval_interval": 5,
        "checkpoint_interval": 5,
        "seed": 0,
    }
    events: list[dict[str, Any]] = []

    def show(event: dict[str, Any]) -> None:
        events.append(event)
        brief = {k: v for k, v in event.items() if k not in ("config",)}
        print(json.dumps(brief, default=str)[:300], flush=True)

    where = "CPU smoke run" if cpu_smoke else torch.cuda.get_device_name()
    print(f"{n_examples} chat examples from the starter seeds; {where}")
    started = time.perf_counter()
    first = train(
        FinetuneConfig(**settings),
        data,
        data,
        on_event=show,
        should_stop=lambda: sum(e["type"] == "step" for e in events) >= (6 if cpu_smoke else 12),
    )
    print(f"first attempt: cancelled={first.cancelled} at step {first.steps}")
    checkpoints = sorted(
        (job_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])
    )
    print("checkpoints after the interruption:", [p.name for p in checkpoints])
    second = train(
        FinetuneConfig(**settings), data, data, on_event=show, resume_from=checkpoints[-1]
    )
    elapsed = time.perf_counter() - started
    evals = [e["eval_loss"] for e in events if e["type"] == "eval"]
    start = next(e for e in events if e["type"] == "start")
    ok = (
        not second.cancelled
        and second.steps == second.total_steps
        and evals[-1] < evals[0]
        and (
            cpu_smoke
            or (start["device"], start["dtype"], start["compiled"]) == ("cuda", "bf16", True)
        )
    )
    print(
        f"resumed from {checkpoints[-1].name}, finished at step {second.steps}/{second.total_steps}"
        f" in {elapsed:.0f} s; eval loss {evals[0]:.3f} -> {evals[-1]:.3f}; "
        f"saved: {sorted(p.name for p in Path(second.final_dir or job_dir).iterdir())}"
    )
    print("JOB", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2]), "--cpu-smoke" in sys.argv[3:]))
