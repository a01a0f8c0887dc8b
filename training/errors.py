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
