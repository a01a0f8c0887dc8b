"""What a job tells its caller: events (plain dicts) while it runs, a TrainResult when it ends.

Kept apart from training/train.py and free of torch, so a worker that only launches jobs
(training/launch.py) reads them back without importing torch, and the loop and the launcher
share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data import DatasetStats

Event = dict[str, Any]


@dataclass
class TrainResult:
    """What a finished (or cancelled) job produced."""

    steps: int  # optimizer steps completed, counting those before a resume
    total_steps: int
    trained_tokens: int  # real (non-padding) tokens through the model in training
    final_train_loss: float | None
    final_eval_loss: float | None
    cancelled: bool
    final_dir: Path | None  # None when cancelled
    adapter_dir: Path | None  # LoRA only
    train_stats: DatasetStats
    valid_stats: DatasetStats | None  # only for a separate validation file
    checkpoints: list[Path] = field(default_factory=list)  # written by this run
    elapsed_s: float = 0.0
