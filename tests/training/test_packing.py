"""Packing: several examples share a row without seeing each other."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.training.helpers import build_tiny_llama
from training.data import IGNORE_INDEX, TokenizedExample
from training.packing import collate, pack_rows, plan_steps


def _example(ids: list[int], n_prompt: int) -> TokenizedExample:
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return TokenizedExample(input_ids=ids, labels=labels, line=1)


@pytest.mark.parametrize(
    "attn_implementation",
    [
        "sdpa",
        "eager",
        # flex attention is the CUDA default; on the CPU it compiles its kernel first (~40 s), so
        # its CPU case is in the exhaustive tier (make test-all) and the CUDA tests cover it on GPU
        pytest.param("flex_attention", marks=pytest.mark.slow),
    ],
)
def test_packed_example_logits_equal_the_example_alone(attn_implementation: str) -> None:
    model = build_tiny_llama(vocab_size=128, seed=1)
    model.set_attn_implementation(attn_implementation)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [7, 12, 5]
    examples = [
        _example(torch.randint(3, 128, (n,), generator=generator).tolist(), 2) for n in lengths
    ]
    packed = collate([[0, 1, 2]], examples, pad_id=2, pad_to_len=30)  # 24 real + 6 padding
    assert packed.position_ids[0].tolist() == [*range(7), *range(12), *range(5), *range(6)]

    with torch.no_grad():
        logits = model(
            input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False
        ).logits  # (1, 30, V)
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits
            n = len(example)
            torch.testing.assert_close(logits[0, start : start + n], alone[0], atol=1e-4, rtol=0)
            start += n


def test_packing_differs_from_plain_concatenation() -> None:
    """The check above has teeth: without restarting positions the examples would mix."""
    model = build_tiny_llama(vocab_size=128, seed=1).eval()
    ids = list(range(10, 30))
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids[10:]])).logits
        mixed = model(input_ids=torch.tensor([ids])).logits[:, 10:]
    assert (alone - mixed).abs().max() > 1e-3


def test_targets_shift_within_each_example_only() -> None:
    a = _example([5, 6, 7, 8], n_prompt=1)  # labels: -100 6 7 8
    b = _example([9, 10, 11], n_prompt=1)  # labels: -100 10 11
    batch = collate([[0, 1]], [a, b], pad_id=0, pad_to_len=9)
    assert batch.targets[0].tolist() == [6, 7, 8, -100, 10, 11, -100, -100, -100]
    assert batch.n_tokens == 7 and batch.n_targets == 5
    assert batch.input_ids[0, 7:].tolist() == [0, 0]


def test_rows_hold_every_example_once_and_never_overflow() -> None:
    lengths = [50, 600, 300, 120, 80, 500, 33, 250, 410, 90] * 20
    rows = pack_rows(lengths, list(range(len(lengths))), 1024)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 1024 for row in rows)
    fill = sum(lengths) / (len(rows) * 1024)
    assert fill > 0.9, f"rows are only {fill:.0%} full"


def test_the_plan_is_a_pure_function_of_the_seed() -> None:
    lengths = [10, 20, 30, 40, 50, 60, 70]
    kwargs: dict[str, Any] = {"n_epochs": 2, "rows_per_step": 2, "max_len": 64, "packing": True}
    assert plan_steps(lengths, seed=3, **kwargs) == plan_steps(lengths, seed=3, **kwargs)
    assert plan_steps(lengths, seed=3, **kwargs) != plan_steps(lengths, seed=4, **kwargs)
    unpacked = plan_steps(lengths, seed=3, **(kwargs | {"packing": False}))
    assert [s.epoch for s in unpacked] == [1, 1, 1, 1, 2, 2, 2, 2]


def test_packed_loss_equals_the_sum_of_losses_alone() -> None:
    from training.loss import loss_sum

    model = build_tiny_llama(vocab_size=128, seed=2).eval()
    generator = torch.Generator().manual_seed(1)
    examples = [
        _example(torch.randint(3, 128, (n,), generator=generator).tolist(), n // 2)
        for n in (9, 4, 15, 6)
    ]
    with torch.no_grad():
        packed = loss_sum(model, collate([[0, 1], [2, 3]], examples, pad_id=2))
        alone = sum(loss_sum(model, collate([[i]], examples, pad_id=2)) for i in range(4))
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)
