"""Cross-entropy through the LM head, only at target positions and a chunk of them at a time.

The plain path (`model(...).logits` then cross_entropy) holds B x T x V logits, their float32
copy, the log-softmax and its gradient at once: 4 rows x 2,048 tokens x 49,152 words of SmolLM2
are 1.6 GB each. Here the decoder's final hidden states are gathered at the positions that carry
a target (prompt tokens never reach the head), and each chunk of `chunk_tokens` of them goes
through the head, the log-sum-exp and its own gradient before the next chunk starts. The
gradients with respect to the hidden states and the head's weight are computed in the forward
pass (the softmax is at hand there) and kept, N x H and V x H: no logits survive a chunk, and
backward only scales them. The sum is the same number the plain path gives, to float tolerance.

`loss_sum` is a batch's loss as the loop (training/step.py) and torchrun's wrapped module
(training/distributed.py) both take it: this path, Liger's fused kernel, or the plain one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from training.config import LOSS_CHUNK_TOKENS
from training.data import IGNORE_INDEX
from training.packing import Batch


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden[i] @ weight.T (+ bias), targets[i]); see the module doc."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,  # (N, H)
        weight: torch.Tensor,  # (V, H)
        bias: torch.Tensor | None,  # (V,)
        targets: torch.Tensor,  # (N,)
        chunk_tokens: int,
    ) -> torch.Tensor:
        want_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # float32 accumulators: a bf16 sum over thousands of chunks would lose the small terms
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        grad_bias = (
            torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            if bias is not None and ctx.needs_input_grad[2]
            else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start : start + chunk_tokens]  # (n, H)
            y = targets[start : start + chunk_tokens]  # (n,)
            logits = h @ weight.T  # (n, V), in the compute dtype as the plain head would be
            if bias is not None:
                logits = logits + bias
            logits = logits.float()  # the softmax in float32, as the plain path's .float()
            log_z = torch.logsumexp(logits, dim=-1)  # (n,)
            total += (log_z - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if not want_grads:
                continue
            # d(loss)/d(logits) = softmax - one_hot, computed in place over the logits buffer
            d_logits = logits.sub_(log_z[:, None]).exp_()
            d_logits[torch.arange(len(y), device=y.device), y] -= 1.0
            if grad_bias is not None:
                grad_bias += d_logits.sum(0)
            d_logits = d_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_tokens] = d_logits @ weight
            if grad_weight is not None:
                grad_weight += (d_logits.T @ h).float()
        ctx.save_for_backward(
            *(t if t is not None else torch.empty(0) for t in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        has_hidden, has_weight, has_bias = ctx.has
        grad_hidden = (saved[0] * grad_output).to(hidden_dtype) if has_hidden else None
        grad_weight = (saved[1] * grad_output).to(weight_dtype) if has_weight else None
        grad_bias = (saved[2] * grad_output).to(weight_dtype) if has_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets`, without ever holding
    more than chunk_tokens x V logits; a float32 scalar.

    `hidden` (N, H) holds target positions only. Under autocast the matmuls run in the autocast
    dtype (the cast is an autograd op, so the float32 master weight still gets its gradient).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device_type, enabled=False):
        loss: torch.Tensor = _ChunkedLinearCrossEntropy.apply(
            hidden, weight, bias, targets, chunk_tokens
        )
    return loss


def liger_available() -> bool:
    """Whether Liger's kernels (the liger-kernel package, CUDA only) can be imported."""
    return importlib.util.find_spec("liger_kernel") is not None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same sum as chunked_linear_cross_entropy through Liger's fused Triton kernel, which
    computes the head, the softmax and both gradients a block at a time on the GPU; a float32
    scalar. Inputs and dtypes as chunked_linear_cross_entropy takes them."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device_type, enabled=False):
        loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets, bias)
    return loss.float()


# Architectures whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no logit
# soft-capping or scaling between the two, so the chunked loss can call the head itself.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3"})


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder and LM head of a causal LM (LoRA-wrapped or not), or None where the logits
    are more than a plain Linear of the last hidden state; those models take the plain loss."""
    get_base = getattr(model, "get_base_model", None)  # peft: the model its layers were put in
    base: Any = get_base() if callable(get_base) else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # e.g. a LoRA layer on the head
        return None
    return base.get_decoder(), head


def loss_sum(
    model: torch.nn.Module,
    batch: Batch,
    *,
    loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
    loss_kernel: str = "chunked",
) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (a scalar; float32).

    With loss_chunk_tokens > 0 the head runs on target positions only, in chunks
    (training/loss.py) or through Liger's fused kernel (loss_kernel='liger'); 0, or a model
    split_head cannot split, takes the plain full-logits path.
    use_cache=False keeps the packed-sequence mask (no cache means training) on both paths.
    """
    parts = split_head(model) if loss_chunk_tokens > 0 else None
    if parts is None:
        logits = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits  # (B, T, V)
        return F.cross_entropy(
            logits.float().flatten(0, 1),  # (B*T, V)
            batch.targets.flatten(),  # (B*T,)
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    decoder, head = parts
    hidden = decoder(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state  # (B, T, H)
    where = (batch.targets != IGNORE_INDEX).nonzero(as_tuple=True)  # CPU-GPU sync: the count
    if loss_kernel == "liger":
        return fused_linear_cross_entropy(
            hidden[where], head.weight, batch.targets[where], bias=head.bias
        )
    return chunked_linear_cross_entropy(
        hidden[where],  # (N, H): target positions only
        head.weight,
        batch.targets[where],  # (N,)
        bias=head.bias,
        chunk_tokens=loss_chunk_tokens,
    )
