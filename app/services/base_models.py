"""Base models a job may fine-tune: the bundled one, and the Hugging Face model folders a deployment
puts in SELFINSTRUCT_BASE_MODELS_DIR (each subfolder is one model; its name is the model id).

The API process checks a folder without torch or transformers: a config.json that parses and
names its architecture, weights, and a tokenizer. That is what loading it for training needs; a
folder that lacks any of them is not listed, and a job that names it is refused with the reason.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from app.settings import BUNDLED_MODEL_ID, Settings

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Where a Hugging Face config states the longest sequence the model was trained for.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class OwnBaseModel:
    """One fine-tunable model folder."""

    id: str
    path: Path
    context_length: int | None
    created: int


def problem(folder: Path) -> str | None:
    """Why `folder` cannot be fine-tuned, or None when it looks loadable."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return "it has no config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"its config.json cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return "its config.json names no model_type"
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        return "it holds no weights (*.safetensors or pytorch_model*.bin)"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return f"it has no tokenizer ({', '.join(TOKENIZER_FILES)})"
    return None


def context_length(config: dict[str, Any]) -> int | None:
    """The longest sequence a Hugging Face config says the model takes, if it says."""
    sections = [config, config.get("text_config") or {}]
    for section in sections:
        for key in CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _read(folder: Path) -> OwnBaseModel | None:
    if not folder.is_dir() or folder.name.startswith(".") or problem(folder) is not None:
        return None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return OwnBaseModel(
        id=folder.name,
        path=folder.resolve(),
        context_length=context_length(config),
        created=int((folder / "config.json").stat().st_mtime),
    )


def list_base_models(settings: Settings) -> list[OwnBaseModel]:
    """The loadable model folders of SELFINSTRUCT_BASE_MODELS_DIR, by name (none when unset)."""
    root = settings.base_models_dir
    if root is None or not root.is_dir():
        return []
    found = (_read(folder) for folder in sorted(root.iterdir()))
    return [model for model in found if model is not None and model.id != BUNDLED_MODEL_ID]


def folder_of(settings: Settings, model_id: str) -> Path | None:
    """The folder a model id names in SELFINSTRUCT_BASE_MODELS_DIR, loadable or not."""
    root = settings.base_models_dir
    if root is None or model_id in ("", ".", "..") or "/" in model_id or "\\" in model_id:
        return None
    folder = root / model_id
    return folder if folder.is_dir() and not model_id.startswith(".") else None


def find_base_model(settings: Settings, model_id: str) -> OwnBaseModel | None:
    folder = folder_of(settings, model_id)
    return _read(folder) if folder is not None else None


# --- the bundled GGUF's context length, read from its header --------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _value(fh: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        (length,) = struct.unpack("<Q", fh.read(8))
        return fh.read(length).decode("utf-8", errors="replace")
    if kind == _ARRAY:
        item_kind, count = struct.unpack("<IQ", fh.read(12))
        for _ in range(count):  # skipped: only scalar keys are wanted
            _value(fh, item_kind)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


@lru_cache(maxsize=8)
def gguf_context_length(path: Path) -> int | None:
    """`<architecture>.context_length` from a GGUF file's metadata (None if it has none)."""
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            return None
        _version, _tensors, n_keys = struct.unpack("<IQQ", fh.read(20))
        architecture = None
        for _ in range(n_keys):
            (length,) = struct.unpack("<Q", fh.read(8))
            key = fh.read(length).decode("utf-8", errors="replace")
            (kind,) = struct.unpack("<I", fh.read(4))
            value = _value(fh, kind)
            if key == "general.architecture":
                architecture = value
            elif architecture and key == f"{architecture}.context_length":
                return int(value)
    return None


def bundled_context_length() -> int | None:
    """The bundled model's context length, when its package is installed."""
    from training.config import bundled_base_model

    path = bundled_base_model()
    return gguf_context_length(path) if path is not None else None
