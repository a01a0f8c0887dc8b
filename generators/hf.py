"""A local Hugging Face model directory (config.json + safetensors) run with transformers.

This is how a model fine-tuned by `training/` generates before anyone converts it to GGUF.
transformers and torch are optional, so they are imported only when such a model is loaded.
Files are read with `local_files_only=True`: nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from generators.base import ChatMessage, FinishReason, SamplingParams
from generators.chat_template import ChatTemplate
from generators.engine import Sample
from generators.errors import BackendNotInstalled, UnsupportedRequest

TRAIN_EXTRA_HINT = "install them with: pip install -e '.[train]'"


def _import_stack() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendNotInstalled(
            f"running a Hugging Face model directory needs transformers and torch "
            f"({exc.name or exc} is missing); {TRAIN_EXTRA_HINT}"
        ) from exc
    return torch, transformers


class TransformersModel:
    """A causal LM and its tokenizer; `complete` and `chat` mirror the llama.cpp engine
    (`extra` holds llama.cpp-only sampler settings, which do not apply here)."""

    def __init__(self, path: Path, *, device: str = "cpu", n_threads: int | None = None) -> None:
        torch, transformers = _import_stack()
        if not (path / "config.json").is_file():
            raise BackendNotInstalled(
                f"model_path: {path} has no config.json; point it at a directory written by "
                "save_pretrained (config.json + *.safetensors) or at a .gguf file"
            )
        self.lock = threading.Lock()
        self._torch = torch
        if device == "cpu" and n_threads:
            torch.set_num_threads(n_threads)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        # transformers 4.56 renamed torch_dtype to dtype; 5.x warns about the old name.
        major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
        dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, **{dtype_arg: "auto"}
        ).to(device)
        self.model.eval()
        self.device = device
        self.n_ctx = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def chat_template(self) -> ChatTemplate | None:
        source = getattr(self.tokenizer, "chat_template", None)
        if not isinstance(source, str):
            return None
        return ChatTemplate(
            source,
            bos_token=self.tokenizer.bos_token or "",
            eos_token=self.tokenizer.eos_token or "",
        )

    def complete(
        self, prompt: str, params: SamplingParams, seed: int, extra: Mapping[str, Any]
    ) -> Sample:
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        return self._generate(ids, params, seed)

    def chat(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        seed: int,
        extra: Mapping[str, Any],
    ) -> Sample:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UnsupportedRequest(
                "this model's tokenizer has no chat template; send raw text prompts instead"
            )
        ids = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, return_tensors="pt"
        )
        if not hasattr(ids, "shape"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return self._generate(ids, params, seed)

    def _generate(self, input_ids: Any, params: SamplingParams, seed: int) -> Sample:
        torch = self._torch
        prompt_len = int(input_ids.shape[-1])
        if self.n_ctx and prompt_len >= self.n_ctx:
            raise UnsupportedRequest(
                f"the prompt has {prompt_len} tokens, more than the model's context window "
                f"({self.n_ctx}); shorten it"
            )
        torch.manual_seed(seed)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": params.temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.presence_penalty or params.frequency_penalty:
            kwargs["logits_processor"] = [
                _penalty_processor(
                    torch, prompt_len, params.presence_penalty, params.frequency_penalty
                )
            ]
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        input_ids = input_ids.to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        new_tokens = output[0, prompt_len:].tolist()
        eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        ended = bool(new_tokens) and new_tokens[-1] in eos_ids
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, ended = text[:cut], True
        finish: FinishReason = "stop" if ended or len(new_tokens) < params.max_tokens else "length"
        return Sample(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=len(new_tokens),
        )


def _eos_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list | tuple) else {int(eos)}


def _penalty_processor(torch: Any, prompt_len: int, presence: float, frequency: float) -> Any:
    """OpenAI's penalties on the tokens generated so far: `presence` once per distinct token,
    `frequency` per occurrence (transformers only ships a multiplicative repetition penalty)."""

    def process(input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, prompt_len:]
        if generated.shape[-1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    return process
