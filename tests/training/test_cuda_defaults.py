"""What a job runs with on CUDA by default: flex attention and a fused (Liger) or chunked linear
cross-entropy over target tokens. The choice is tested everywhere; the kernels' numbers against
sdpa's and ours need a GPU (and liger-kernel for Liger) and skip without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.helpers import build_tiny_llama
from tests.training.test_loss import VOCAB, _batch
from training.config import FinetuneConfig
from training.errors import InvalidConfig
from training.loss import liger_available, loss_sum
from training.runtime import autocast, resolve_attention, resolve_loss_kernel

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_defaults_are_flex_attention_and_a_fused_or_chunked_loss(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    config = FinetuneConfig(base_model=str(model), output_dir=str(tmp_path / "out"))
    assert (config.attn_implementation, config.loss_kernel) == ("auto", "auto")
    assert resolve_attention("auto", CUDA) == "flex_attention"
    assert resolve_attention("auto", CPU) == "sdpa"
    assert resolve_attention("sdpa", CUDA) == "sdpa"
    assert resolve_loss_kernel("auto", CUDA, liger=True) == "liger"
    assert resolve_loss_kernel("auto", CUDA, liger=False) == "chunked"
    assert resolve_loss_kernel("auto", CPU, liger=True) == "chunked"
    assert resolve_loss_kernel("chunked", CUDA, liger=True) == "chunked"
    with pytest.raises(InvalidConfig, match="liger-kernel"):
        resolve_loss_kernel("liger", CPU, liger=True)


def _loss_and_grads(model: Any, **kwargs: Any) -> tuple[float, dict[str, torch.Tensor]]:
    batch = _batch().to(CUDA)
    model.zero_grad(set_to_none=True)
    with autocast(CUDA, torch.bfloat16):
        loss = loss_sum(model, batch, **kwargs)
    (loss / batch.n_targets).backward()
    return loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}


@needs_cuda
def test_flex_attention_gives_sdpa_losses_and_gradients_on_cuda() -> None:
    model = build_tiny_llama(VOCAB, seed=5).to(CUDA).train()
    model.set_attn_implementation("sdpa")
    sdpa = _loss_and_grads(model)
    model.set_attn_implementation("flex_attention")
    flex = _loss_and_grads(model)
    assert flex[0] == pytest.approx(sdpa[0], rel=2e-2)  # bf16 kernels, different orders
    for name, grad in sdpa[1].items():
        torch.testing.assert_close(flex[1][name], grad, rtol=5e-2, atol=5e-3, msg=name)


@needs_cuda
@pytest.mark.skipif(not liger_available(), reason="needs liger-kernel")
def test_liger_fused_loss_gives_the_chunked_loss_and_gradients_on_cuda() -> None:
    model = build_tiny_llama(VOCAB, seed=6).to(CUDA).train()
    chunked = _loss_and_grads(model, loss_kernel="chunked")
    liger = _loss_and_grads(model, loss_kernel="liger")
    assert liger[0] == pytest.approx(chunked[0], rel=1e-2)
    for name, grad in chunked[1].items():
        torch.testing.assert_close(liger[1][name], grad, rtol=5e-2, atol=5e-3, msg=name)
