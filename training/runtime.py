"""Where and how a job runs: the device and autocast dtype, the attention and loss kernels,
activation checkpointing and torch.compile; each 'auto' resolved for the device at hand.
"""

from __future__ import annotations

import contextlib

import torch

from training.config import FinetuneConfig
from training.distributed import Ranks
from training.errors import InvalidConfig
from training.loss import liger_available, split_head


def resolve_device(
    config: FinetuneConfig, ranks: Ranks | None = None
) -> tuple[torch.device, torch.dtype | None]:
    """The device (this process's GPU under torchrun), and the autocast dtype (None: float32)."""
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise InvalidConfig("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'.")
    if want_cuda and ranks is not None and ranks.parallel:
        device = torch.device("cuda", ranks.local_rank)
    else:
        device = torch.device("cuda" if want_cuda else "cpu")
    return device, autocast_dtype(device, config.dtype)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA unless fp32 is asked for; float32 on the CPU (bf16 refused there)."""
    if device.type == "cpu" and dtype == "bf16":
        raise InvalidConfig("dtype='bf16' needs a CUDA GPU; use dtype='fp32' or 'auto' on the CPU.")
    return torch.bfloat16 if device.type == "cuda" and dtype in ("auto", "bf16") else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_attention(choice: str, device: torch.device) -> str:
    """attn_implementation 'auto': flex attention on CUDA, where it is the fastest kernel that
    keeps packed examples apart; sdpa on the CPU (flex there runs unfused and slower)."""
    if choice != "auto":
        return choice
    return "flex_attention" if device.type == "cuda" else "sdpa"


def resolve_loss_kernel(choice: str, device: torch.device, *, liger: bool | None = None) -> str:
    """loss_kernel 'auto': Liger's fused kernel on CUDA when liger-kernel is installed, else ours
    (chunked). `liger` overrides the import check (tests). Liger where it cannot run is refused."""
    liger = liger_available() if liger is None else liger
    if choice == "liger":
        if device.type != "cuda" or not liger:
            raise InvalidConfig(
                "loss_kernel='liger' needs a CUDA GPU and the liger-kernel package "
                "(pip install liger-kernel); use loss_kernel='auto' or 'chunked'."
            )
        return "liger"
    if choice == "auto" and device.type == "cuda" and liger:
        return "liger"
    return "chunked"


def use_gradient_checkpointing(config: FinetuneConfig, device: torch.device) -> bool:
    """'auto' recomputes activations on the CPU, where memory (not compute) bounds a job."""
    if config.gradient_checkpointing == "auto":
        return device.type == "cpu"
    return config.gradient_checkpointing == "on"


def compile_model(raw_model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    """Compile what loss_sum calls: the decoder in place when the chunked loss splits off the
    head (parameter names, and so checkpoints, stay the same), else the whole model."""
    parts = split_head(raw_model) if config.loss_chunk_tokens > 0 else None
    if parts is None:
        return torch.compile(raw_model)  # type: ignore[return-value]
    parts[0].compile()
    return raw_model
