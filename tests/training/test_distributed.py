"""Several devices through torchrun, tested on the CPU: two gloo processes make the updates one
process makes from the same global batch (DDP and FSDP), resume from their checkpoints, stop when
told, and report errors as the training library's own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import CHATS, chat_record, write_jsonl
from training import launch
from training.config import FinetuneConfig
from training.errors import InsufficientMemory, InvalidConfig, TrainingDataError
from training.result import TrainResult

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real


def config(base: Path, out: Path, **overrides: Any) -> FinetuneConfig:
    # 12 examples, 5 a step: steps of 5, 5 and 2 rows, so the two processes get 3+2 and 1+1 rows
    # (uneven shares, and one empty micro-batch); batch_size 1 makes every share accumulate
    values: dict[str, Any] = {
        "base_model": str(base),
        "output_dir": str(out),
        "max_seq_len": 128,
        "packing": False,
        "batch_size": 1,
        "grad_accum_steps": 5,
        "n_epochs": 2,
        "learning_rate": 1e-2,
        "warmup_steps": 1,
        "eval_interval": 2,
        "checkpoint_interval": 2,
        "seed": 0,
    }
    return FinetuneConfig(**(values | overrides))


def run(cfg: FinetuneConfig, data: Path, **kwargs: Any) -> tuple[TrainResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    result = launch.run(cfg, data, data, on_event=events.append, **kwargs)
    return result, events


def losses(events: list[dict[str, Any]], kind: str = "step") -> list[float]:
    key = "train_loss" if kind == "step" else "eval_loss"
    return [e[key] for e in events if e["type"] == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    return write_jsonl(directory / "train.jsonl", [chat_record(u, a) for u, a in CHATS])


@pytest.fixture(scope="module")
def one_process(
    tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, list[dict[str, Any]]]:
    torch.set_num_threads(1)
    return run(config(tiny_model_dir, tmp_path_factory.mktemp("one")), data)


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_processes(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[FinetuneConfig, TrainResult, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp(request.param)
    cfg = config(tiny_model_dir, out, devices=2, parallelism=request.param)
    return (cfg, *run(cfg, data))


def test_two_processes_give_the_losses_and_weights_of_one(
    one_process: tuple[TrainResult, list[dict[str, Any]]],
    two_processes: tuple[FinetuneConfig, TrainResult, list[dict[str, Any]]],
) -> None:
    (single, single_events), (cfg, double, events) = one_process, two_processes
    assert double.steps == single.steps == 6 and not double.cancelled
    assert losses(events) == pytest.approx(losses(single_events), rel=1e-5)
    assert losses(events, "eval") == pytest.approx(losses(single_events, "eval"), rel=1e-5)
    assert double.trained_tokens == single.trained_tokens
    # rank 0 alone speaks: one start, one event per step and checkpoint
    [start] = [e for e in events if e["type"] == "start"]
    assert (start["devices"], start["parallelism"]) == (2, cfg.parallelism)
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 4, 6]
    assert single.final_dir is not None and double.final_dir is not None
    ours, theirs = (
        load_file(double.final_dir / "model.safetensors"),
        load_file(single.final_dir / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-4, atol=1e-5)
    assert not list(Path(cfg.output_dir).glob("launch-*")), "the run folder is cleaned up"


def test_two_processes_resume_from_their_checkpoint(
    two_processes: tuple[FinetuneConfig, TrainResult, list[dict[str, Any]]],
    data: Path,
    tmp_path: Path,
) -> None:
    cfg, _, events = two_processes
    checkpoint = tmp_path / "step-2"
    shutil.copytree(Path(cfg.output_dir) / "checkpoints" / "step-2", checkpoint)
    resumed_cfg = FinetuneConfig.from_dict(cfg.to_dict() | {"output_dir": str(tmp_path / "out")})
    if cfg.parallelism == "ddp":
        # a DDP checkpoint is a plain one: one process takes it up (fast) as two would
        resumed_cfg = FinetuneConfig.from_dict(resumed_cfg.to_dict() | {"devices": 1})
    result, resumed = run(resumed_cfg, data, resume_from=checkpoint)
    assert result.steps == 6
    assert losses(resumed) == pytest.approx(losses(events)[2:], rel=1e-5)


def test_a_stop_reaches_every_process(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir, tmp_path, devices=2)
    result, events = run(cfg, data, should_stop=lambda: True)
    assert result.cancelled and result.steps == 0 and result.final_dir is None
    assert events[-1] == {"type": "cancelled", "step": 0}
    assert not (tmp_path / "final").exists()


def test_more_devices_than_the_machine_has_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    too_many = (os.cpu_count() or 1) + 1
    cfg = config(tiny_model_dir, tmp_path, devices=too_many, device="cpu")
    with pytest.raises(InvalidConfig, match=f"devices={too_many}.*CPU cores"):
        launch.run(cfg, tmp_path / "never-read.jsonl")


def test_errors_of_a_process_come_back_as_the_same_errors() -> None:
    data_error = TrainingDataError(line=3, reason="not JSON", path="train.jsonl")
    memory = InsufficientMemory(needed=10, available=5, detail="10 B", device="cpu")
    for error in (data_error, memory, InvalidConfig("devices=3 ...")):
        rebuilt = launch._rebuild(launch._describe(error, rank=1))
        assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    crash = launch._rebuild(launch._describe(KeyError("x"), rank=0))
    assert isinstance(crash, RuntimeError) and "KeyError" in str(crash)
