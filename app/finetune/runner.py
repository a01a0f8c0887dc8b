"""Training a claimed job, the same on both workers: the database worker and the remote one
differ only in how they get the spec and the data and where the events and the outcome go.

No database here: a remote worker imports this on a machine that has none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.finetune.protocol import Failed, JobErrorReport, JobSpec, Outcome, Succeeded

if TYPE_CHECKING:
    from training.launch import Rendezvous

log = logging.getLogger("selfinstruct.finetune")


def run_training(
    spec: JobSpec,
    *,
    train_path: Path,
    valid_path: Path | None,
    output_dir: Path,
    device: str,
    on_event: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    rendezvous: Rendezvous | None = None,
) -> Outcome | None:
    """Train, resuming from the newest checkpoint in `output_dir`; returns how the job ends,
    or None when it was cancelled or taken over.

    `on_event` gets training's events as it emits them (plain dicts; the caller turns them into
    the protocol's models). The job trains in a child process that exits when it ends, or in
    torchrun's processes for several devices (training/launch.py): the worker gets its memory
    back, and an out-of-memory kill takes the trainer, which fails the job saying so, not the
    worker. Their rank 0's events come to `on_event` here, and a stop reaches them all.

    With a `rendezvous` this is one node of a job on several machines (app/finetune/nodes.py):
    a node that is not the host returns None when its part ended well; a rendezvous that timed
    out fails as `rendezvous_timeout`, a node gone from under the training as `node_lost`."""
    from training.config import FinetuneConfig, bundled_base_model
    from training.errors import (
        InsufficientMemory,
        NodeLost,
        RendezvousTimeout,
        TrainingDataError,
        TrainingError,
    )
    from training.launch import run

    checkpoints = complete_checkpoints(output_dir)
    try:
        config = FinetuneConfig(
            base_model=spec.base_model or str(bundled_base_model()),
            output_dir=str(output_dir),
            device=device,  # type: ignore[arg-type]
            **spec.config.training_kwargs(),
        )
        result = run(
            config,
            train_path,
            valid_path,
            on_event=on_event,
            should_stop=should_stop,
            resume_from=checkpoints[-1] if checkpoints else None,
            isolated=True,
            rendezvous=rendezvous,
        )
    except Exception as exc:
        if isinstance(exc, RendezvousTimeout):
            code, message = "rendezvous_timeout", str(exc)
        elif isinstance(exc, NodeLost):
            code, message = "node_lost", str(exc)
        elif isinstance(exc, TrainingDataError):
            code, message = "invalid_training_file", str(exc)
        elif isinstance(exc, InsufficientMemory):
            code, message = "insufficient_memory", str(exc)
        elif isinstance(exc, TrainingError):
            code, message = "training_failed", str(exc)
        else:
            log.exception("fine-tune job %s failed", spec.job_id)
            code, message = "server_error", f"{type(exc).__name__}: {exc}"
        return Failed(status="failed", error=JobErrorReport(code=code, message=message))
    if result is None or result.cancelled:
        return None
    return Succeeded(
        status="succeeded",
        trained_tokens=result.trained_tokens,
        steps=result.steps,
        total_steps=result.total_steps,
        model_dir=str(result.final_dir) if result.final_dir else None,
    )


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoints/step-N` directories that were fully written, oldest first.

    A worker killed while saving leaves `step-N.partial` behind; it is not a checkpoint (and its
    name is not a number), so resuming must skip it rather than fail on it.
    """
    found = []
    for path in (output_dir / "checkpoints").glob("step-*"):
        number = path.name.removeprefix("step-")
        if number.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


class Heartbeat:
    """Renews a lease every third of its length from a thread, until stopped.

    Training events alone cannot keep a lease: loading a large base model, or one long step,
    can outlast it, and another worker would then take over a job that is still alive.
    `lost` turns true when a renewal is refused (the job was cancelled or taken over).
    """

    def __init__(self, renew_once: Callable[[], bool], lease_seconds: float) -> None:
        self._renew_once = renew_once
        self._interval = lease_seconds / 3
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._renew_once():
                    self.lost = True
                    return
            except Exception:  # a database or network hiccup: try again next beat
                log.warning("lease renewal failed; retrying", exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
