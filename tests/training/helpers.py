"""Builders shared by the training tests: chat records, JSONL files, a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}

CHATS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Give me a synonym for happy.", "Joyful."),
    ("Translate 'good morning' to Spanish.", "Buenos días."),
    ("Add 2 and 3.", "2 + 3 = 5."),
    ("把这句话翻译成英文。我喜欢猫。", "I like cats."),
    ("用一个词形容夏天。", "炎热。"),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Is 7 a prime number?", "Yes, 7 is prime."),
    ("Write a haiku about rain.", "Soft rain on the roof,\nquiet drums,\nthe garden drinks."),
    ("Classify the sentiment: 'I love this film.'", "Positive"),
    ("What is the opposite of cold?", "Hot."),
    ("Spell 'cat' backwards.", "tac"),
]


def chat_record(user: str, assistant: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_LLAMA
    )
    return LlamaForCausalLM(config).float()
