"""Start a job on one device in this process, or on several through torchrun.

    result = run(config, "train.jsonl", on_event=print, should_stop=lambda: False)

With config.devices > 1 the job runs as `python -m torch.distributed.run --standalone
--nproc_per_node N -m training.launch RUN_DIR`: torchrun starts one process per device and gives
each its rank; each joins the process group (training/distributed.py) and runs `train()`. They
talk to the caller through files in RUN_DIR, a fresh folder under the job's output_dir:

    job.json          what to train (the config, the data, the checkpoint to resume from)
    events.jsonl      rank 0's events, one JSON object a line, read here as they come
    stop              written here when `should_stop` says yes; rank 0 reads it before every
                      step and tells the others, so they all stop at the same step
    result.json       rank 0's TrainResult once the job ended (finished or cancelled)
    error-R.json      an exception of rank R, rebuilt here as the same kind of error
    torchrun.log      the processes' own output, quoted when they fail without an error file

If the processes do not stop within STOP_GRACE_S of a stop, their process group is terminated.
Rank 0 also stops when the calling process is gone, so no training outlives its worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.config import FinetuneConfig
from training.errors import InsufficientMemory, InvalidConfig, TrainingDataError, TrainingError

Event = dict[str, Any]

POLL_S = 0.2  # how often the caller reads new events
STOP_POLL_S = 1.0  # how often it asks should_stop (a database read, for a worker)
STOP_GRACE_S = 60.0  # time the processes get to finish their step after a stop
LOG_TAIL_CHARS = 4000


def device_count(device: str) -> int:
    """How many devices of this kind a job may ask for here: the visible GPUs for CUDA, the
    cores for the CPU (processes share them)."""
    if _uses_cuda(device):
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def _uses_cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def check_devices(config: FinetuneConfig) -> None:
    """Refuse a job that asks for more devices than this machine has, naming both numbers."""
    available = device_count(config.device)
    if config.devices > available:
        kind = "CUDA GPUs" if _uses_cuda(config.device) else "CPU cores"
        raise InvalidConfig(
            f"devices={config.devices} but this worker has {available} {kind}; ask for at most "
            f"{available}, or run the job on a worker with more."
        )


def run(
    config: FinetuneConfig,
    train_path: Path | str,
    valid_path: Path | str | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: Path | None = None,
) -> Any:
    """Train the job and return its TrainResult; torchrun's processes when config.devices > 1.

    Errors come back as the training library's own (TrainingDataError, InsufficientMemory,
    InvalidConfig, TrainingError); a process that dies without one is a TrainingError quoting
    its output."""
    if config.devices == 1:
        from training.train import train

        return train(
            config,
            train_path,
            valid_path,
            on_event=on_event,
            should_stop=should_stop,
            resume_from=resume_from,
        )
    check_devices(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob("launch-*"):  # left by a killed worker (whose processes stop)
        shutil.rmtree(stale, ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix="launch-", dir=output_dir))
    try:
        return _run_torchrun(
            config,
            run_dir,
            train_path=train_path,
            valid_path=valid_path,
            resume_from=resume_from,
            on_event=on_event or (lambda event: None),
            should_stop=should_stop or (lambda: False),
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_torchrun(
    config: FinetuneConfig,
    run_dir: Path,
    *,
    train_path: Path | str,
    valid_path: Path | str | None,
    resume_from: Path | None,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool],
) -> Any:
    job = {
        "config": config.to_dict(),
        "train_path": str(train_path),
        "valid_path": str(valid_path) if valid_path is not None else None,
        "resume_from": str(resume_from) if resume_from is not None else None,
        "caller_pid": os.getpid(),
    }
    (run_dir / "job.json").write_text(json.dumps(job))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on this machine only, on a free port
        f"--nproc_per_node={config.devices}",
        "-m",
        "training.launch",
        str(run_dir),
    ]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # processes share the cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.devices))
    with (run_dir / "torchrun.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            _follow(process, run_dir, on_event, should_stop)
        finally:
            _end(process)
    return _outcome(process.returncode, run_dir)


def _follow(
    process: subprocess.Popen[bytes],
    run_dir: Path,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool],
) -> None:
    """Pass rank 0's events on as they come, until the processes end; after a stop, give them
    STOP_GRACE_S to finish their step, then terminate them."""
    events_path = run_dir / "events.jsonl"
    offset = 0
    stop_at: float | None = None
    asked_at = 0.0
    while True:
        finished = process.poll() is not None
        if events_path.exists():
            with events_path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
            offset += len(complete)
            for line in complete.splitlines():
                if line.strip():
                    on_event(json.loads(line))
        if finished:
            return
        if stop_at is None and time.monotonic() - asked_at >= STOP_POLL_S:
            asked_at = time.monotonic()
            if should_stop():
                (run_dir / "stop").write_text("stop\n")
                stop_at = time.monotonic()
        if stop_at is not None and time.monotonic() - stop_at > STOP_GRACE_S:
            _end(process)
            return
        time.sleep(POLL_S)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Terminate torchrun and its processes (their own session) if they still run."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _outcome(returncode: int | None, run_dir: Path) -> Any:
    from training.train import TrainResult

    result_path = run_dir / "result.json"
    if returncode == 0 and result_path.is_file():
        return _result_from_json(TrainResult, json.loads(result_path.read_text()))
    reports = [json.loads(p.read_text()) for p in sorted(run_dir.glob("error-*.json"))]
    if reports:
        # the library's own errors first: another process then only saw its peer go away
        reports.sort(key=lambda r: (r["kind"] not in REBUILT, r["rank"]))
        raise _rebuild(reports[0])
    log = (run_dir / "torchrun.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
    cancelled = (run_dir / "stop").exists()
    if cancelled:
        raise TrainingError("the training processes did not stop in time and were terminated")
    raise TrainingError(
        f"the training processes ended with exit status {returncode} and no error report; "
        f"their last output:\n{log}"
    )


# --- the processes' side ---------------------------------------------------------------------


REBUILT = ("TrainingDataError", "InsufficientMemory", "InvalidConfig", "TrainingError")


def _describe(exc: BaseException, rank: int) -> dict[str, Any]:
    """An exception as data the caller turns back into the same kind of error."""
    kind = type(exc).__name__
    if isinstance(exc, TrainingError) and kind not in REBUILT:
        kind = "TrainingError"
    described: dict[str, Any] = {"kind": kind, "message": str(exc), "rank": rank}
    if isinstance(exc, TrainingDataError):
        described |= {"line": exc.line, "reason": exc.reason, "path": exc.path}
    elif isinstance(exc, InsufficientMemory):
        described |= {
            "needed": exc.needed,
            "available": exc.available,
            "detail": exc.detail,
            "device": exc.device,
        }
    return described


def _rebuild(described: dict[str, Any]) -> Exception:
    kind, message = described["kind"], described["message"]
    if kind == "TrainingDataError":
        return TrainingDataError(
            line=described["line"], reason=described["reason"], path=described["path"]
        )
    if kind == "InsufficientMemory":
        return InsufficientMemory(
            needed=described["needed"],
            available=described["available"],
            detail=described["detail"],
            device=described["device"],
        )
    if kind == "InvalidConfig":
        return InvalidConfig(message)
    if kind == "TrainingError":
        return TrainingError(message)
    return RuntimeError(f"{kind}: {message}")  # a crash: the worker reports it as such


def _result_to_json(result: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(result), default=str))


def _result_from_json(cls: Any, data: dict[str, Any]) -> Any:
    from training.data import DatasetStats

    def path(value: str | None) -> Path | None:
        return Path(value) if value is not None else None

    valid_stats = data["valid_stats"]
    return cls(
        **{
            **data,
            "final_dir": path(data["final_dir"]),
            "adapter_dir": path(data["adapter_dir"]),
            "checkpoints": [Path(p) for p in data["checkpoints"]],
            "train_stats": DatasetStats(**data["train_stats"]),
            "valid_stats": DatasetStats(**valid_stats) if valid_stats else None,
        }
    )


def _caller_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(run_dir: Path) -> None:
    """One torchrun process: join the group, train, report through run_dir (rank 0)."""
    import torch.distributed as dist

    from training.distributed import init_process_group, ranks_from_env
    from training.train import resolve_device, train

    ranks = ranks_from_env()
    try:
        job = json.loads((run_dir / "job.json").read_text())
        config = FinetuneConfig.from_dict(job["config"])
        device, _ = resolve_device(config)
        init_process_group(device.type)
        events = (run_dir / "events.jsonl").open("a", encoding="utf-8") if ranks.main else None

        def emit(event: Event) -> None:
            assert events is not None
            events.write(json.dumps(event, default=str) + "\n")
            events.flush()

        def should_stop() -> bool:
            return (run_dir / "stop").exists() or not _caller_alive(job["caller_pid"])

        resume = job["resume_from"]
        result = train(
            config,
            job["train_path"],
            job["valid_path"],
            on_event=emit,
            should_stop=should_stop,
            resume_from=Path(resume) if resume else None,
        )
        if ranks.main:
            partial = run_dir / "result.json.partial"
            partial.write_text(json.dumps(_result_to_json(result)))
            partial.rename(run_dir / "result.json")
    except BaseException as exc:
        (run_dir / f"error-{ranks.rank}.json").write_text(json.dumps(_describe(exc, ranks.rank)))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
