"""The training library's exceptions; `app/` maps them to problem responses in one handler."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class: anything the training library refuses or fails to do."""


class InvalidConfig(TrainingError, ValueError):
    """A FinetuneConfig field holds an impossible value; the message names it and the fix."""


class TrainingDataError(TrainingError):
    """One line of a training JSONL file is unusable; `line` is 1-based, as editors count."""

    def __init__(self, *, line: int, reason: str, path: str | None = None) -> None:
        self.line = line
        self.reason = reason
        self.path = path
        where = f"{path}, line {line}" if path else f"line {line}"
        super().__init__(f"{where}: {reason}")


class InsufficientMemory(TrainingError):
    """A job's estimated peak memory exceeds what the device has available; nothing was run."""

    def __init__(self, *, needed: int, available: int, detail: str, device: str) -> None:
        self.needed = needed
        self.available = available
        self.detail = detail
        self.device = device
        gib = 1 << 30
        super().__init__(
            f"the job needs about {detail}, but only {available / gib:.1f} GiB is available on "
            f"{device}; lower batch_size or max_seq_len, turn gradient_checkpointing on, or use "
            "LoRA"
        )


class RendezvousTimeout(TrainingError):
    """Not every node of a job on several machines reached the rendezvous in time; nothing
    trained."""


class NodeLost(TrainingError):
    """A job on several machines ended because the processes of another node went away (killed,
    out of memory, its machine or the network gone), as seen from this node."""
