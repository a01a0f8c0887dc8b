"""Start a job in this process, in a child process of its own, or on several devices through
torchrun.

    result = run(config, "train.jsonl", on_event=print, should_stop=lambda: False)

`isolated=True` (what a worker asks for) trains a one-device job in a child process,
`python -m training.launch RUN_DIR`, that exits when the job ends: the memory training took goes
back to the machine, and an out-of-memory kill takes the child, not the worker. With
config.devices > 1 the job runs as `python -m torch.distributed.run --standalone
--nproc_per_node N -m training.launch RUN_DIR`: torchrun starts one process per device and gives
each its rank; each joins the process group (training/distributed.py) and runs `train()`. Either
way they talk to the caller through files in RUN_DIR, a fresh folder under the job's output_dir:

    job.json          what to train (the config, the data, the checkpoint to resume from)
    events.jsonl      rank 0's events, one JSON object a line, read here as they come
    stop              written here when `should_stop` says yes; rank 0 reads it before every
                      step and tells the others, so they all stop at the same step
    result.json       rank 0's TrainResult once the job ended (finished or cancelled)
    error-R.json      an exception of rank R, rebuilt here as the same kind of error
    torchrun.log      the processes' own output, quoted when they fail without an error file

A job on several machines (config.nodes > 1) runs torchrun on each with a c10d rendezvous
(`Rendezvous`): the host's torchrun serves it at `endpoint` and the others join it there, as
Slurm and Kubernetes clusters run torchrun. The host's processes take the first ranks
(training/distributed.py `host_first`), so its caller alone gets the events and the result, as
on one machine; another node's caller only learns whether its part ended well (`run` returns
None). A rendezvous that does not gather every node within its timeout is a RendezvousTimeout;
any other end of the training that is not one of the library's own errors is a NodeLost: from
one node, a peer that went away and a crash look alike.

If the processes do not stop within STOP_GRACE_S of a stop, they are terminated (SIGTERM, then
SIGKILL). A process killed by a signal (the kernel's out-of-memory killer sends SIGKILL) becomes
a TrainingError naming the signal and the memory the processes held. The processes also end
with the calling process (Linux's parent-death signal, and rank 0 checks its pid before every
step), so no training outlives its worker. Nothing here imports torch in the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.config import FinetuneConfig
from training.data import DatasetStats
from training.errors import (
    InsufficientMemory,
    InvalidConfig,
    NodeLost,
    RendezvousTimeout,
    TrainingDataError,
    TrainingError,
)
from training.result import Event, TrainResult

POLL_S = 0.2  # how often the caller reads new events
STOP_POLL_S = 1.0  # how often it asks should_stop (a database read, for a worker)
# Time the processes get to stop at their next step after a stop, before SIGTERM: enough for
# torchrun's processes to start and agree on it; a CPU step of a real model may take longer, and
# nothing is kept from a step cut short.
STOP_GRACE_S = 60.0
KILL_GRACE_S = 15.0  # after SIGTERM, then SIGKILL
LOG_TAIL_CHARS = 4000
GB = 1e9
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# glibc serves allocations below its mmap threshold from heaps that keep freed memory, and the
# threshold rises (up to 32 MB) as large blocks are freed, so a training step's activations and
# logits end up fragmenting the heap. With 1 MB fixed, tensors are mmapped and go back when freed:
# a full fine-tune of SmolLM2-135M on 4 x 2,048 tokens (CPU, step 1) peaked at 2.84 GB instead of
# 5.59 GB, in the same time (327 s against 325 s on 2 cores).
MALLOC_MMAP_THRESHOLD = 1 << 20


@dataclass(frozen=True)
class Rendezvous:
    """Where and how the nodes of a job on several machines meet (torchrun's c10d rendezvous)."""

    endpoint: str  # HOST:PORT that the host's torchrun serves and every node joins
    run_id: str  # the same on every node of one attempt, and new for the next attempt
    nodes: int  # how many nodes must join before training starts
    host: bool  # this node serves the rendezvous; its processes report the job
    local_addr: str  # the address the other nodes reach this one at
    timeout_s: float  # the rendezvous fails when not every node joined within this

    def torchrun_args(self) -> list[str]:
        return [
            f"--nnodes={self.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={self.endpoint}",
            f"--rdzv-id={self.run_id}",
            # is_host stated, not guessed: on one machine every node's address is "local"
            f"--rdzv-conf=join_timeout={self.timeout_s:g},is_host={str(self.host).lower()}",
            f"--local-addr={self.local_addr}",
            "--max-restarts=0",  # a lost node ends the attempt; the caller decides what next
        ]


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
    isolated: bool = False,
    rendezvous: Rendezvous | None = None,
) -> TrainResult | None:
    """Train the job and return its TrainResult: in this process, or in child processes when
    `isolated`, config.devices > 1 or a `rendezvous` is given (config.nodes > 1). None: the
    processes were stopped and terminated before they could report (a stop that came in the
    middle of a long step), or this node is not the rendezvous host (its part ended well).

    Errors come back as the training library's own (TrainingDataError, InsufficientMemory,
    InvalidConfig, TrainingError, and RendezvousTimeout or NodeLost for several nodes); a
    process that dies without one is a TrainingError quoting its output, or naming the signal
    that killed it."""
    if (rendezvous is None) != (config.nodes == 1):
        raise InvalidConfig(
            f"nodes={config.nodes} needs a rendezvous where the nodes meet, and only then"
        )
    if config.devices == 1 and not isolated and rendezvous is None:
        from training.train import train

        return train(
            config,
            train_path,
            valid_path,
            on_event=on_event,
            should_stop=should_stop,
            resume_from=resume_from,
        )
    if config.devices > 1:
        check_devices(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rendezvous is None or rendezvous.host:
        for stale in output_dir.glob("launch-*"):  # left by a killed worker (its processes stop)
            shutil.rmtree(stale, ignore_errors=True)
        run_dir = Path(tempfile.mkdtemp(prefix="launch-", dir=output_dir))
    else:
        # another node's folder is its own, on its own disk: output_dir may be shared with the
        # host, whose folder is not to be touched
        run_dir = Path(tempfile.mkdtemp(prefix="selfinstruct-node-"))
    try:
        return _launch(
            config,
            run_dir,
            train_path=train_path,
            valid_path=valid_path,
            resume_from=resume_from,
            on_event=on_event or (lambda event: None),
            should_stop=should_stop or (lambda: False),
            rendezvous=rendezvous,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def launch_command(
    config: FinetuneConfig, run_dir: Path, rendezvous: Rendezvous | None = None
) -> list[str]:
    """One process for one device (torchrun's agent would only add a process of its own, with
    torch imported); torchrun for several, or for a node of a job on several machines."""
    if config.devices == 1 and rendezvous is None:
        return [sys.executable, "-m", "training.launch", str(run_dir)]
    meeting = (
        rendezvous.torchrun_args()
        if rendezvous is not None
        else ["--standalone"]  # a rendezvous on this machine only, on a free port
    )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *meeting,
        f"--nproc_per_node={config.devices}",
        "-m",
        "training.launch",
        str(run_dir),
    ]


def _launch(
    config: FinetuneConfig,
    run_dir: Path,
    *,
    train_path: Path | str,
    valid_path: Path | str | None,
    resume_from: Path | None,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool],
    rendezvous: Rendezvous | None,
) -> TrainResult | None:
    job = {
        "config": config.to_dict(),
        "train_path": str(train_path),
        "valid_path": str(valid_path) if valid_path is not None else None,
        "resume_from": str(resume_from) if resume_from is not None else None,
        "caller_pid": os.getpid(),
        "host": rendezvous.host if rendezvous is not None else None,
    }
    (run_dir / "job.json").write_text(json.dumps(job))
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MALLOC_MMAP_THRESHOLD))
    if config.devices > 1 and "OMP_NUM_THREADS" not in env:
        # processes share the cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.devices))
    oom_before = oom_kills()
    with (run_dir / "torchrun.log").open("wb") as log:
        # a session of its own: a Ctrl-C meant for the worker does not reach it, and killpg
        # reaches everything torchrun started
        process = subprocess.Popen(
            launch_command(config, run_dir, rendezvous),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            # torchrun's agent too ends with its caller (its processes end with it): a node
            # whose worker is gone must leave the job, not train on unheard
            preexec_fn=_die_with_parent,
        )
        try:
            peak = _follow(process, run_dir, on_event, should_stop)
        finally:
            _end(process)
    oom_after = oom_kills()
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    if rendezvous is None:
        return _outcome(process.returncode, run_dir, peak_rss=peak, oom_killed=oom)
    return _node_outcome(process.returncode, run_dir, rendezvous)


def _follow(
    process: subprocess.Popen[bytes],
    run_dir: Path,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool],
) -> int | None:
    """Pass rank 0's events on as they come, until the processes end; after a stop, give them
    STOP_GRACE_S to reach their next step, then terminate them. Returns the most memory the
    processes held together (sampled each STOP_POLL_S; None where /proc cannot say)."""
    events_path = run_dir / "events.jsonl"
    offset = 0
    stop_at: float | None = None
    asked_at = 0.0
    peak: int | None = None
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
            return peak
        if time.monotonic() - asked_at >= STOP_POLL_S:
            asked_at = time.monotonic()
            held = tree_rss(process.pid)
            if held is not None:
                peak = max(peak or 0, held)
            if stop_at is None and should_stop():
                (run_dir / "stop").write_text("stop\n")
                stop_at = time.monotonic()
        if stop_at is not None and time.monotonic() - stop_at > STOP_GRACE_S:
            _end(process)
            return peak
        time.sleep(POLL_S)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Terminate the processes (their own session) if they still run: SIGTERM, then SIGKILL
    after KILL_GRACE_S."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _outcome(
    returncode: int | None, run_dir: Path, *, peak_rss: int | None = None, oom_killed: bool = False
) -> TrainResult | None:
    result_path = run_dir / "result.json"
    if returncode == 0 and result_path.is_file():
        return _result_from_json(json.loads(result_path.read_text()))
    reports = [json.loads(p.read_text()) for p in sorted(run_dir.glob("error-*.json"))]
    if reports:
        # the library's own errors first: another process then only saw its peer go away
        reports.sort(key=lambda r: (r["kind"] not in REBUILT, r["rank"]))
        raise _rebuild(reports[0])
    if (run_dir / "stop").exists():
        return None  # stopped as asked, in the middle of a step
    if returncode is not None and returncode < 0:
        held = f"{peak_rss / GB:.2f} GB" if peak_rss is not None else "an unknown amount"
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
        raise TrainingError(
            f"the training process was {describe_exit(returncode, oom_killed=oom_killed)}; "
            f"it held {held} of memory at its largest, on a machine with {total:.1f} GB. A job "
            "that runs out of memory needs a smaller batch_size or max_seq_len, LoRA, or a "
            "machine with more memory."
        )
    log = (run_dir / "torchrun.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
    raise TrainingError(
        f"the training processes ended with exit status {returncode} and no error report; "
        f"their last output:\n{log}"
    )


def _node_outcome(
    returncode: int | None, run_dir: Path, rendezvous: Rendezvous
) -> TrainResult | None:
    """How one node's part of a job on several machines ended (see the module doc)."""
    if returncode == 0 and not rendezvous.host:
        return None  # the host's processes report the job
    try:
        return _outcome(returncode, run_dir)
    except (TrainingDataError, InsufficientMemory, InvalidConfig) as exc:
        raise exc from None
    except (TrainingError, RuntimeError) as exc:
        log = (run_dir / "torchrun.log").read_text(errors="replace")
        if "RendezvousTimeoutError" in log:
            raise RendezvousTimeout(
                f"the rendezvous at {rendezvous.endpoint} did not gather its {rendezvous.nodes} "
                f"nodes within {rendezvous.timeout_s:g} s"
            ) from None
        raise NodeLost(
            "the training ended on this node without finishing, as it does when another node's "
            f"processes go away (killed, out of memory, machine or network gone): {exc}"
        ) from None


def describe_exit(returncode: int, *, oom_killed: bool = False) -> str:
    """How a process ended, in words (`returncode` as `subprocess` reports it)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    how = f"killed by {name} (signal {number})"
    if number == signal.SIGKILL:
        how += (
            ": the kernel's out-of-memory killer was at work, likely out of memory"
            if oom_killed
            else ", as the kernel's out-of-memory killer or a `kill -9` does"
        )
    return how


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended since boot (Linux)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def tree_rss(pid: int) -> int | None:
    """Resident bytes of a process and all its descendants, from /proc (None elsewhere)."""
    parents: dict[int, int] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for member in tree:
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


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


def _result_from_json(data: dict[str, Any]) -> TrainResult:
    def path(value: str | None) -> Path | None:
        return Path(value) if value is not None else None

    valid_stats = data["valid_stats"]
    return TrainResult(
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


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies: a worker killed outright (by the
    supervisor, or the OOM killer) must not leave its trainer holding the memory. Elsewhere
    rank 0's check of the caller's pid before every step is all there is."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def main(run_dir: Path) -> None:
    """One trainer process (alone, or one of torchrun's): join the group if any, train, report
    through run_dir (rank 0)."""
    _die_with_parent()
    import torch.distributed as dist

    from training.distributed import init_process_group, ranks_from_env
    from training.runtime import resolve_device
    from training.train import train

    ranks = ranks_from_env()
    try:
        job = json.loads((run_dir / "job.json").read_text())
        config = FinetuneConfig.from_dict(job["config"])
        device, _ = resolve_device(config)
        ranks = init_process_group(device.type, host=job.get("host"))
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
