"""The `local` backend runs the bundled SmolLM2-135M-Instruct in this process, with no key and no
network: real text, real token counts, and the finish reasons the pipeline relies on."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from generators import (
    BUNDLED_MODEL_ID,
    BackendNotInstalled,
    Generation,
    LocalBackend,
    SamplingParams,
    UnsupportedRequest,
    create_backend,
)
from generators.local import default_threads, usable_cores

pytestmark = [pytest.mark.anyio, pytest.mark.real]

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
LIST_PROMPT = "Here is a list of fruits:\n1. Apple\n2. Banana\n3."


async def test_bundled_model_completes_raw_text_up_to_max_tokens() -> None:
    backend = create_backend("local")
    result = await backend.generate_one(LIST_PROMPT, GREEDY)
    assert result.text.strip(), "the model should continue the list"
    assert result.finish_reason == "length"
    assert result.completion_tokens == 8
    assert result.prompt_tokens >= 15
    assert result.model == BUNDLED_MODEL_ID == "SmolLM2-135M-Instruct"
    assert result.backend == "local" and result.attempts == 1 and result.latency_s > 0
    assert backend.stats.completion_tokens == 8


async def test_chat_uses_the_models_chat_template() -> None:
    backend = LocalBackend()
    question = "What is the capital of France?"
    chat = await backend.generate_one(
        [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": question},
        ],
        SamplingParams(max_tokens=24, temperature=0),
    )
    raw = await backend.generate_one(question, SamplingParams(max_tokens=1, temperature=0))
    assert "Paris" in chat.text
    assert chat.finish_reason in ("stop", "length") and chat.completion_tokens > 0
    # The template wraps the question in role markers, so the chat prompt is longer.
    assert chat.prompt_tokens > raw.prompt_tokens + 4


async def test_the_bundled_models_chat_template_comes_from_its_gguf_file() -> None:
    """Magpie's prompt is the template's text up to the user's message, exactly."""
    template = await LocalBackend().chat_template()
    assert template is not None
    system = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert template.user_prefix() == f"{system}<|im_end|>\n<|im_start|>user\n"
    assert template.user_prefix("Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    )
    assert template.answer_prompt("Hi") == (
        f"{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.stop_sequences() == ("<|im_end|>",)


async def test_stop_string_ends_the_choice_with_reason_stop() -> None:
    backend = LocalBackend()
    result = await backend.generate_one(
        LIST_PROMPT, SamplingParams(max_tokens=32, temperature=0, stop=["\n"])
    )
    assert result.finish_reason == "stop"
    assert "\n" not in result.text and result.text.strip()
    assert result.completion_tokens < 32


async def test_n_choices_with_a_seed_are_repeatable_and_counted() -> None:
    backend = LocalBackend()
    params = SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=11)
    first = await backend.generate_one(LIST_PROMPT, params)
    second = await backend.generate_one(LIST_PROMPT, params)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert 3 <= first.completion_tokens <= 18  # all three choices, at most 6 tokens each
    assert len({c.text for c in first.choices}) > 1, "each choice samples with its own seed"


async def test_chinese_prompt_generates_text() -> None:
    result = await LocalBackend().generate_one(
        [{"role": "user", "content": "请用一句话介绍北京。"}],
        SamplingParams(max_tokens=16, temperature=0),
    )
    assert result.text and result.completion_tokens > 0 and result.prompt_tokens > 5


async def test_model_is_loaded_once_and_shared_safely() -> None:
    first, second = LocalBackend(), LocalBackend()
    assert await first.load() is await second.load()
    assert first.options.n_threads is None and default_threads() == max(1, usable_cores() - 1)
    # Two backends on one llama.cpp context at once: the per-model lock serializes them.
    results = await asyncio.gather(
        first.generate(["One, two,", "Red, green,"], GREEDY),
        second.generate(["Monday, Tuesday,"], GREEDY),
    )
    texts = [g.text for batch in results for g in batch if isinstance(g, Generation)]
    assert len(texts) == 3 and all(texts)


async def test_prompt_longer_than_the_context_is_refused_clearly() -> None:
    backend = LocalBackend(n_ctx=256)
    with pytest.raises(UnsupportedRequest, match=r"n_ctx=256.*shorten the prompt or raise n_ctx"):
        await backend.generate_one("word " * 400, GREEDY)


async def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    backend = LocalBackend(model_path=tmp_path / "missing.gguf")
    assert await backend.check() is False
    with pytest.raises(BackendNotInstalled, match=r"missing\.gguf does not exist"):
        await backend.generate_one("Hi", GREEDY)
    assert await LocalBackend().check() is True


async def test_model_directory_without_transformers_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torch", None)
    backend = LocalBackend(model_path=tmp_path)
    assert backend.engine_kind() == "transformers"
    with pytest.raises(BackendNotInstalled, match=r"pip install -e '\.\[train\]'"):
        await backend.generate_one("Hi", GREEDY)


async def test_hugging_face_model_directory_generates(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    tokenizers = pytest.importorskip("tokenizers")

    # A tiny word-level model written by save_pretrained, as a fine-tune's output would be.
    words = ["<unk>", "<eos>", "one", "two", "three", "four", "five", "six"]
    tokenizer_core = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer_core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_core, unk_token="<unk>", eos_token="<eos>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    config = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    backend = LocalBackend(model_path=tmp_path)
    params = SamplingParams(max_tokens=5, temperature=1.0, presence_penalty=2.0, seed=3)
    completion = await backend.generate_one("one two", params)
    chat = await backend.generate_one([{"role": "user", "content": "three four"}], params)
    for result in (completion, chat):
        assert result.prompt_tokens == 2 and 0 < result.completion_tokens <= 5
        assert result.model == tmp_path.name
        assert result.finish_reason in ("stop", "length")
    template = await backend.chat_template()  # magpie reads the tokenizer's own template
    assert template is not None and template.eos_token == "<eos>"
    assert template.answer_prompt("five six") == "five six "
