"""The bounded-memory loss path gives today's numbers: same loss, same gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.training.helpers import build_tiny_llama
from training.data import IGNORE_INDEX, TokenizedExample
from training.loss import chunked_linear_cross_entropy, loss_sum, split_head
from training.packing import Batch, collate, pack_rows

VOCAB = 96


def _batch(seed: int = 0, n_examples: int = 9, rows_len: int = 40) -> Batch:
    """Packed rows of random examples whose first ~40% is prompt (no loss), with padding."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for line in range(n_examples):
        n = int(torch.randint(6, 20, (1,), generator=generator))
        ids = torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        n_prompt = max(1, round(0.4 * n))
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:], line))
    rows = pack_rows([len(e) for e in examples], range(len(examples)), rows_len)
    return collate(rows, examples, pad_id=2, pad_to_len=rows_len)


def _loss_and_grads(model: Any, batch: Batch, chunk: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_sum(model, batch, loss_chunk_tokens=chunk)
    (loss / batch.n_targets).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def _assert_same(
    old: tuple[float, dict[str, torch.Tensor]], new: tuple[float, dict[str, torch.Tensor]]
) -> None:
    assert new[0] == pytest.approx(old[0], rel=1e-5)
    assert new[1].keys() == old[1].keys() and old[1]
    for name, grad in old[1].items():
        torch.testing.assert_close(new[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_loss_equals_the_full_logits_loss_with_the_same_gradients(chunk: int) -> None:
    model = build_tiny_llama(VOCAB, seed=3).train()
    batch = _batch()
    assert split_head(model) is not None
    _assert_same(_loss_and_grads(model, batch, 0), _loss_and_grads(model, batch, chunk))


def test_gradient_checkpointing_changes_neither_loss_nor_gradients() -> None:
    model = build_tiny_llama(VOCAB, seed=4).train()
    batch = _batch(seed=1)
    old = _loss_and_grads(model, batch, 0)  # today's path: full logits, activations kept
    model.activation_checkpointing_enable({"use_reentrant": False})
    _assert_same(old, _loss_and_grads(model, batch, 5))


def test_lora_gradients_match_on_the_chunked_path() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(build_tiny_llama(VOCAB, seed=5), lora).train()
    for name, param in model.named_parameters():  # lora_B starts at zero; move it off zero
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    batch = _batch(seed=2)
    assert split_head(model) is not None
    old, new = _loss_and_grads(model, batch, 0), _loss_and_grads(model, batch, 3)
    assert all("lora_" in name for name in old[1])
    _assert_same(old, new)


def test_the_linear_cross_entropy_with_a_bias_matches_autograd() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, requires_grad=True)
    bias = torch.randn(50, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (23,), generator=generator)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(2.5 * loss, (hidden, weight, bias)))

    plain = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    chunked = chunked_linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_tokens=4)
    torch.testing.assert_close(chunked, plain)
    for ours, expected in zip(grads(chunked), grads(plain), strict=True):
        torch.testing.assert_close(ours, expected)
    with torch.no_grad():  # evaluation: the loss alone, no gradient buffers
        torch.testing.assert_close(
            chunked_linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_tokens=4), plain
        )


def test_a_head_that_is_not_plain_takes_the_full_logits_path() -> None:
    model = build_tiny_llama(VOCAB, seed=6)
    model.config.model_type = "gemma2"  # soft-capped logits: the head alone would be wrong
    assert split_head(model) is None
    batch = _batch(seed=3)
    assert loss_sum(model, batch, loss_chunk_tokens=8).item() == pytest.approx(
        loss_sum(model, batch, loss_chunk_tokens=0).item()
    )
