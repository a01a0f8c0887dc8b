"""Score a model on held-out tasks: greedy generation, then ROUGE-L F1 against the references.

The score is the novelty filter's own (filters/rouge.py over filters/tokenize.py): rouge-score's
tokens and float expression, with each CJK character counted as a token, so a held-out score and
a novelty verdict measure overlap the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from filters.rouge import rouge_l
from training.data import task_to_messages


@dataclass(frozen=True)
class EvalTask:
    """A held-out task: the prompt parts and the reference output."""

    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class EvalResult:
    mean_rouge_l: float
    scores: list[float]  # per task, in input order
    outputs: list[str]  # the model's generations, in input order


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: the generation config's EOS (one or several) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    return sorted({i for i in ids if i is not None})


@torch.no_grad()
def generate_outputs(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[EvalTask],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    system: str | None = None,
) -> list[str]:
    """Greedy completions of each task's chat prompt, batched with left padding."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [
        tokenizer.apply_chat_template(
            task_to_messages(t.instruction, t.input, system=system),
            tokenize=False,
            add_generation_prompt=True,
        )
        for t in tasks
    ]
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # new tokens line up
    outputs = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = tokenizer(
                prompts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,  # the chat template already has its special tokens
            ).to(device)
            generated = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=_stop_token_ids(model, tokenizer),
            )  # (B, prompt + new)
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            outputs += [text.strip() for text in texts]
    finally:
        tokenizer.padding_side = padding_side
    return outputs


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[EvalTask],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> EvalResult:
    """Generate for every task and score each output against its reference."""
    outputs = generate_outputs(
        model, tokenizer, tasks, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    scores = [rouge_l(out, task.output) for out, task in zip(outputs, tasks, strict=True)]
    mean = sum(scores) / len(scores) if scores else 0.0
    return EvalResult(mean_rouge_l=mean, scores=scores, outputs=outputs)


def load_for_eval(model_path: str, device: str = "auto") -> tuple[Any, Any]:
    """A model directory (e.g. a job's final/) or .gguf file, ready to generate on `device`."""
    from training.model import load_model, load_tokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = load_model(model_path)
    return model.to(device), load_tokenizer(model_path)
