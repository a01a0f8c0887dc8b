"""Loading base models offline, attaching LoRA, and the FLOP arithmetic behind MFU.

A base model is a local Hugging Face directory or a .gguf file. A GGUF file is dequantised to
float32 on load (transformers reads it; the `gguf` package must be installed) and the result is a
plain model that trains and saves like any other. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from training.config import FinetuneConfig
from training.errors import TrainingError

# Dense bf16 tensor-core peaks (FLOP/s) by a substring of torch.cuda.get_device_name(); first match.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)


def _locate(base_model: str) -> tuple[Path, dict[str, Any]]:
    """Directory to load from, plus the from_pretrained kwargs that pick a GGUF file in it."""
    path = Path(base_model)
    if not path.exists():
        raise TrainingError(f"base model {base_model!r} does not exist on this machine")
    if path.is_file():
        if path.suffix != ".gguf":
            raise TrainingError(f"base model file {path.name!r} is not a .gguf file")
        return path.parent, {"gguf_file": path.name}
    return path, {}


def load_tokenizer(base_model: str) -> Any:
    """The base model's tokenizer, with a pad token (EOS when it has none; labels never use it)."""
    directory, gguf = _locate(base_model)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **gguf)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(base_model: str, *, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A float32 causal LM; GGUF weights are dequantised into plain Linear layers."""
    directory, gguf = _locate(base_model)
    kwargs: dict[str, Any] = {"local_files_only": True, "attn_implementation": attn_implementation}
    if gguf:
        # dequantize=True: trainable dense weights, even where packed GGUF kernels are installed
        kwargs |= gguf | {"quantization_config": GgufConfig(dequantize=True, **gguf)}
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # a leftover marker would make save_pretrained refuse
        quantizer.remove_quantization_config(model)
    return model.float()


def add_lora(model: PreTrainedModel, config: FinetuneConfig) -> Any:
    """Wrap the model with a trainable LoRA adapter; the base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_lora(model: PreTrainedModel, adapter_dir: Path) -> Any:
    """Re-attach a saved adapter for further training (resume)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); tied embeddings count once."""
    params = list(model.parameters())  # parameters() already yields a tied tensor once
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token: 2N forward + 2N input-gradients + 2 per trainable weight.

    That is the usual 6N for a full fine-tune and about 4N for LoRA, whose frozen weights need no
    weight gradient. Attention score FLOPs are left out, as in the common 6N estimate.
    """
    total, trainable = count_params(model)
    return 4.0 * total + 2.0 * trainable


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where unknown (the CPU included: MFU is omitted)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
