"""Rows, steps and batches: the data order of a whole job, and the tensors of one micro-batch.

Packing puts several examples into one row of at most max_seq_len tokens. They must not see each
other, so each example's position_ids restart at 0 and no attention_mask is passed: transformers
(>= 5) then derives a block-diagonal causal mask from the restarts for sdpa/eager/flex attention,
and varlen boundaries for flash-attention-2. `tests/training/test_packing.py` proves a packed
example's logits equal the same example run alone.

Targets are shifted here, per example (`targets[t]` is the label of token t+1 of the *same*
example), so a row's last token of one example never learns to predict the next example's first.

The data order is a pure function of (examples, seed, epoch), planned for every step up front:
resuming at step N replays exactly the batches an uninterrupted job would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.data import IGNORE_INDEX, TokenizedExample

Row = list[int]  # indices of the examples packed into one row, in order

OPEN_ROW_WINDOW = 64  # first-fit looks back over this many open rows: dense rows, linear time


@dataclass(frozen=True)
class StepPlan:
    """The rows of one optimizer step and the (1-based) epoch they belong to."""

    epoch: int
    rows: list[Row]


@dataclass
class Batch:
    """One micro-batch on its way to the model; all tensors are (B, T) int64."""

    input_ids: torch.Tensor
    targets: torch.Tensor  # IGNORE_INDEX where no loss is taken
    position_ids: torch.Tensor  # restart at 0 for every example, and for the padding tail
    n_tokens: int  # real (non-padding) tokens
    n_targets: int  # tokens that carry loss

    def to(self, device: torch.device) -> Batch:
        # pinned memory + non_blocking lets the copy overlap the previous step on CUDA
        pin = device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)

        return Batch(
            move(self.input_ids),
            move(self.targets),
            move(self.position_ids),
            self.n_tokens,
            self.n_targets,
        )


def pack_rows(lengths: Sequence[int], order: Sequence[int], max_len: int) -> list[Row]:
    """First-fit packing of examples, taken in `order`, into rows of at most max_len tokens."""
    rows: list[Row] = []
    room: list[int] = []
    open_rows: list[int] = []  # indices into rows that may still take an example
    for index in order:
        length = lengths[index]
        target = next((r for r in open_rows if room[r] >= length), None)
        if target is None:
            rows.append([])
            room.append(max_len)
            open_rows.append(len(rows) - 1)
            if len(open_rows) > OPEN_ROW_WINDOW:
                open_rows.pop(0)
            target = len(rows) - 1
        rows[target].append(index)
        room[target] -= length
    return rows


def plan_steps(
    lengths: Sequence[int],
    *,
    n_epochs: int,
    rows_per_step: int,
    max_len: int,
    packing: bool,
    seed: int,
) -> list[StepPlan]:
    """Every optimizer step of the job: shuffle per epoch, pack (or not), cut into steps."""
    steps = []
    for epoch in range(1, n_epochs + 1):
        order = list(range(len(lengths)))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        rows = pack_rows(lengths, order, max_len) if packing else [[i] for i in order]
        for start in range(0, len(rows), rows_per_step):
            steps.append(StepPlan(epoch, rows[start : start + rows_per_step]))
    return steps


def collate(
    rows: Sequence[Row],
    examples: Sequence[TokenizedExample],
    *,
    pad_id: int,
    pad_to_len: int | None = None,
    pad_to_rows: int | None = None,
) -> Batch:
    """Concatenate each row's examples and pad to a rectangle.

    Rows pad to the longest row, or to `pad_to_len`/`pad_to_rows` when torch.compile wants one
    static shape. Padding gets pad_id, IGNORE_INDEX targets and positions restarting at 0, which
    makes it a block of its own that no real token attends to.
    """
    row_ids, row_targets, row_positions = [], [], []
    n_tokens = n_targets = 0
    for row in rows:
        ids: list[int] = []
        shifted: list[int] = []
        positions: list[int] = []
        for index in row:
            example = examples[index]
            ids += example.input_ids
            shifted += [*example.labels[1:], IGNORE_INDEX]  # shift within the example
            positions += range(len(example))
        row_ids.append(ids)
        row_targets.append(shifted)
        row_positions.append(positions)
        n_tokens += len(ids)
        n_targets += sum(t != IGNORE_INDEX for t in shifted)
    length = pad_to_len or max(len(ids) for ids in row_ids)
    n_rows = max(pad_to_rows or 0, len(rows))
    input_ids = torch.full((n_rows, length), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    position_ids = torch.arange(length, dtype=torch.long).repeat(n_rows, 1)  # (B, T)
    for r, (ids, tgt, pos) in enumerate(zip(row_ids, row_targets, row_positions, strict=True)):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        targets[r, :n] = torch.tensor(tgt)
        position_ids[r, :n] = torch.tensor(pos)
        position_ids[r, n:] = torch.arange(length - n)
    return Batch(input_ids, targets, position_ids, n_tokens, n_targets)


def micro_batches(rows: Sequence[Row], batch_size: int) -> list[list[Row]]:
    """Split one step's rows into micro-batches of at most batch_size rows."""
    return [list(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
