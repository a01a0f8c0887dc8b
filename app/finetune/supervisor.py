"""`selfinstruct serve` runs fine-tune jobs itself: it starts one fine-tune worker in a process of
its own and keeps it running, so that training killed for lack of memory (or crashing) never
takes the API down with it.

The worker is `selfinstruct worker --kind finetune --parent-pid <api pid>` in a session of its own
(a Ctrl-C in the terminal reaches the API only, which then stops the worker). It dies with the
API even when the API is killed outright: the kernel sends it SIGTERM (Linux's
PR_SET_PDEATHSIG, armed by the worker) and the worker also watches its parent's pid. When the
worker dies, its job is handed back at once for its one retry (or fails as `worker_lost` if it
had it), and a new worker starts after a back-off that grows while workers keep dying young.
The worker trains each job in a child process (training/launch.py) that dies with it, so killing
the worker frees the training's memory too.

The same thread tells queued jobs that no worker can take them (a status message in the job's
progress and one event), whether or not this process runs a worker of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.finetune.service import add_event
from app.finetune.worker import worker_lost
from app.leases import held_rows, present_workers
from app.models import FineTuningJobRow, JobStatus
from app.settings import Settings
from app.worker_ids import worker_prefix
from training.launch import describe_exit, oom_kills

log = logging.getLogger("selfinstruct.finetune")

TRAINING_PACKAGES = ("torch", "transformers", "peft")
GRACE_S = 20.0  # a stopped worker's time to hand its job back before it is killed
YOUNG_S = 60.0  # a worker that dies sooner counts towards the restart back-off
MAX_YOUNG_DEATHS = 5  # then the supervisor stops restarting and says so
CHECK_INTERVAL_S = 1.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def training_stack_missing() -> list[str]:
    """The training packages this install lacks (found without importing them: torch is slow)."""
    return [name for name in TRAINING_PACKAGES if importlib.util.find_spec(name) is None]


def worker_command(parent_pid: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        "--kind",
        "finetune",
        "--parent-pid",
        str(parent_pid),
    ]


def no_worker_message(reason: str) -> str:
    return (
        f"No fine-tune worker is running ({reason}), so this job waits in the queue. Start one: "
        "`make finetune-worker`, or `selfinstruct worker --kind finetune` on a machine that "
        "shares this database and data folder (or `--api-url` and a worker token from "
        "elsewhere); or let `selfinstruct serve` run one (SELFINSTRUCT_FINETUNE_WORKERS=1, "
        "with the training stack that `make run` installs)."
    )


def note_unserved_jobs(engine: Engine, settings: Settings, *, reason: str | None) -> list[str]:
    """Tell queued jobs that no worker can take them, once per wait; `reason` None: a worker of
    this process is running or starting. Returns the jobs told.

    A worker counts as alive when its presence file is fresh (idle workers refresh it as they
    poll) or when some job runs under a lease that has not expired (a busy worker). When one
    shows up, the note goes from jobs still waiting (a claim removes it too)."""
    with Session(engine) as session:
        waiting = session.exec(
            select(FineTuningJobRow).where(FineTuningJobRow.status == JobStatus.queued)
        ).all()
    if not waiting:
        return []
    alive = (
        reason is None
        or bool(present_workers(settings.data_dir, "finetune"))
        or bool(held_rows(engine, FineTuningJobRow))
    )
    # only the jobs whose note is due or no longer true are locked and written
    due = [row.id for row in waiting if ("status_message" in row.progress) == alive]
    told = []
    with Session(engine) as session:
        for job_id in due:
            job = session.exec(
                select(FineTuningJobRow).where(FineTuningJobRow.id == job_id).with_for_update()
            ).first()
            if job is None or job.status != JobStatus.queued:
                continue
            noted = "status_message" in job.progress
            if alive and noted:
                job.progress = {k: v for k, v in job.progress.items() if k != "status_message"}
            elif not alive and not noted:
                message = no_worker_message(reason or "")
                job.progress = {**job.progress, "status_message": message}
                add_event(
                    session, job.id, message, level="warn", data={"code": "no_finetune_worker"}
                )
                told.append(job.id)
            else:
                continue
            session.add(job)
        session.commit()
    return told


class FinetuneSupervisor:
    """Keeps `settings.finetune_workers` (0 or 1) worker processes running while the API runs."""

    def __init__(
        self, *, engine: Engine, settings: Settings, command: list[str] | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.command = command or worker_command(os.getpid())
        self.process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._oom_at_start: int | None = None
        self._young_deaths = 0
        self._restart_at = 0.0
        self._stop = threading.Event()
        self._reason: str | None = None  # why no worker runs here, when none does
        self._thread = threading.Thread(target=self._run, name="finetune-supervisor", daemon=True)

    def start(self) -> None:
        if self.settings.finetune_workers == 0:
            self._reason = "SELFINSTRUCT_FINETUNE_WORKERS=0 turns off the one `serve` runs"
        elif missing := training_stack_missing():
            self._reason = (
                f"the training stack is not installed here ({', '.join(missing)} missing)"
            )
            log.warning(
                "fine-tune jobs: not starting a worker, as %s; `make run` installs it, or run "
                "workers elsewhere and set SELFINSTRUCT_FINETUNE_WORKERS=0",
                self._reason,
            )
        # The thread that starts a worker must outlive it: Linux sends the parent-death signal
        # when that thread ends, not the process.
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=GRACE_S + 15)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def _run(self) -> None:
        try:
            while True:
                if self._reason is None:
                    try:
                        self._tend()
                    except Exception:  # the database or a fork failed: try again next round
                        log.exception("could not tend the fine-tune worker")
                try:
                    note_unserved_jobs(self.engine, self.settings, reason=self._reason)
                except Exception:  # a database hiccup: look again next time
                    log.warning("could not check for jobs no worker can take", exc_info=True)
                if self._stop.wait(CHECK_INTERVAL_S):
                    return
        finally:
            self._terminate()

    def _tend(self) -> None:
        """Start the worker when it is due; notice when it died."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return
            self._died(self.process, code)
            self.process = None
        if time.monotonic() < self._restart_at or self._stop.is_set():
            return
        self._oom_at_start = oom_kills()
        self._started_at = time.monotonic()
        self.process = subprocess.Popen(self.command, start_new_session=True)
        log.warning("fine-tune worker started (pid %d)", self.process.pid)

    def _died(self, process: subprocess.Popen[bytes], code: int) -> None:
        before, after = self._oom_at_start, oom_kills()
        how = describe_exit(
            code, oom_killed=before is not None and after is not None and after > before
        )
        _kill_group(process.pid, signal.SIGKILL)  # anything it started (torchrun's workers)
        jobs = worker_lost(
            self.engine,
            worker_prefix=worker_prefix(process.pid),
            how=how,
            attempts=self.settings.finetune_attempts,
        )
        lived = time.monotonic() - self._started_at
        self._young_deaths = self._young_deaths + 1 if lived < YOUNG_S else 1
        held = f" while training {', '.join(jobs)}" if jobs else ""
        if self._young_deaths >= MAX_YOUNG_DEATHS:
            self._reason = "the one `serve` started kept dying; its log says why"
            log.error(
                "fine-tune worker (pid %d) %s%s; it died %d times within %.0fs of starting, "
                "so it is not restarted: fix the cause and restart the service",
                process.pid,
                how,
                held,
                self._young_deaths,
                YOUNG_S,
            )
            return
        delay = min(60.0, 2.0 ** (self._young_deaths - 1))
        self._restart_at = time.monotonic() + delay
        log.warning(
            "fine-tune worker (pid %d) %s%s; restarting it in %.0fs",
            process.pid,
            how,
            held,
            delay,
        )

    def _terminate(self) -> None:
        """SIGTERM (the worker hands its job back at its next step), then SIGKILL after the
        grace period; a job the worker still held is handed back without using its retry."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # the worker alone: it stops what it started itself (torchrun)
        try:
            process.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "fine-tune worker (pid %d) did not stop in %.0fs; killing it", process.pid, GRACE_S
            )
        _kill_group(process.pid, signal.SIGKILL)
        process.wait()
        with contextlib.suppress(Exception):
            worker_lost(
                self.engine,
                worker_prefix=worker_prefix(process.pid),
                how="",
                attempts=self.settings.finetune_attempts,
                counted=False,
            )


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def follow_parent(parent_pid: int, on_gone: Callable[[], None]) -> None:
    """In a supervised worker: end with the process that started it.

    On Linux the kernel sends SIGTERM when the parent dies; everywhere a thread also checks the
    parent's pid every second. `on_gone` should stop the worker; if it has not exited
    `GRACE_S` later, nobody is left to kill it, so it exits itself."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        log.warning("the API process %d is gone; this fine-tune worker stops", parent_pid)
        on_gone()
        time.sleep(GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
