"""`selfinstruct serve` runs fine-tune jobs itself, in a worker process it supervises: a job
trains with no other command, a worker killed mid-job gets the job back once and then fails it
with the reason, the API outlives its workers, and a job no worker can take says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.db import make_engine, migrate
from app.finetune.supervisor import note_unserved_jobs
from app.finetune.worker import begin_attempt
from app.leases import Lease, claim, mark_present
from app.main import create_app
from app.models import FineTuningJobRow
from app.settings import Settings
from testbed.live import free_port, wait_ready
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import (  # noqa: F401 (a fixture)
    GREETINGS,
    _greet_dataset,
    _register_base,
    tiny_base_dir,
)

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

T = TypeVar("T")
HANG_GUARD_S = 300.0  # only a hung test waits this long; a working one is done in seconds


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = HANG_GUARD_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f}s")


def running(pid: int) -> bool:
    """A live process (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def user_env(db_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment a user starts `selfinstruct serve` with: our defaults, except these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
    env.update(DATABASE_URL=db_url, SELFINSTRUCT_DATA_DIR=str(data_dir))
    env.update({f"SELFINSTRUCT_{key.upper()}": value for key, value in settings.items()})
    return env


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], httpx.Client]]]:
    """Starts `selfinstruct serve`; whatever is left running is killed afterwards."""
    started: list[tuple[subprocess.Popen[bytes], httpx.Client]] = []

    def start(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], httpx.Client]:
        port = free_port()
        server = subprocess.Popen(  # not testbed.live.serve_api, which turns the worker off
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=(tmp_path / "server.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        client = httpx.Client(base_url=base, timeout=60)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        orphans = children(server.pid)
        if server.poll() is None:
            server.kill()
            server.wait()
        for pid in orphans:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def job_row(db_url: str, job_id: str) -> FineTuningJobRow:
    engine = make_engine(Settings(database_url=db_url))
    try:
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(FineTuningJobRow, job_id)
            assert job is not None
            return job
    finally:
        engine.dispose()


def worker_pid(db_url: str, job_id: str) -> int | None:
    """The pid of the worker holding a job (worker ids are host:pid:random)."""
    worker = job_row(db_url, job_id).worker_id
    return int(worker.split(":")[1]) if worker else None


def events(client: httpx.Client, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Newest first."""
    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": limit})
    return list(page.json()["data"])


def event_number(event: dict[str, Any]) -> int:
    return int(event["id"].removeprefix("ftevent-"))


@pytest.mark.real
def test_serve_alone_trains_a_job_to_succeeded(
    sqlite_url: str, tmp_path: Path, live: Callable[..., Any]
) -> None:
    """What a user of `make run` does: start the service, create a job over HTTP, wait; the
    service trains it in its own worker, and stopping the service leaves no process behind."""
    migrate(Settings(database_url=sqlite_url))
    _wipe(sqlite_url)
    server, client = live(user_env(sqlite_url, tmp_path / "data"))
    _greet_dataset(client)  # type: ignore[arg-type]
    created = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "SmolLM2-135M-Instruct",
            "dataset": "greet",
            "suffix": "served",
            "lora": {"r": 4},
            "max_seq_len": 64,
            "max_steps": 2,
            "seed": 5,
        },
    )
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

    done = wait_for("the job to finish", finished)
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"] == f"ft:SmolLM2-135M-Instruct:served:{job_id}"
    assert done["progress"]["step"] == 2 and done["trained_tokens"] > 0
    assert done["progress"]["status_message"] is None
    assert not any(e["data"].get("code") == "no_finetune_worker" for e in events(client, job_id))
    models = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert done["fine_tuned_model"] in models

    trainer = worker_pid(sqlite_url, job_id)
    assert trainer is not None and trainer != server.pid
    assert trainer in children(server.pid)  # trained by the worker `serve` started
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    assert not running(trainer)  # stopped with the service, not left behind
    assert "did not stop" not in (tmp_path / "server.log").read_text()  # it stopped when asked
    _wipe(sqlite_url)


def _long_job(client: httpx.Client, model: str) -> str:
    """A job on the tiny model that would take many minutes: 600 examples, 50 epochs of one
    example a step."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Reply with the single word {word}. ({i})"},
                    {"role": "assistant", "content": word.upper()},
                ]
            }
        )
        for i in range(100)
        for word in GREETINGS
    ]
    upload = client.post(
        "/v1/files",
        data={"purpose": "fine-tune"},
        files={"file": ("long.jsonl", "\n".join(lines).encode(), "application/jsonl")},
    )
    assert upload.status_code == 200, upload.text
    created = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": model,
            "training_file": upload.json()["id"],
            "lora": {"r": 4},
            "max_seq_len": 64,
            "seed": 6,
            "checkpoint_interval": 5,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}},
            },
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


@pytest.mark.real
@pytest.mark.both_databases
def test_a_job_whose_worker_is_killed_twice_fails_with_the_reason(
    db_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811 (the fixture imported above)
    live: Callable[..., Any],
) -> None:
    """kill -9 of the supervised worker mid-job: the job is handed back at once and resumed by
    the worker the service starts next; a second kill fails it as worker_lost, saying how the
    worker died, instead of handing it to a third. The API answers throughout."""
    data_dir = tmp_path / "data"
    _wipe(db_url)
    model = _register_base(Settings(database_url=db_url, data_dir=data_dir), tiny_base_dir)
    env = user_env(
        db_url, data_dir, worker_lease_seconds="5", worker_poll_seconds="0.2", embedded_worker="0"
    )
    env["OMP_NUM_THREADS"] = "1"
    server, client = live(env)
    job_id = _long_job(client, model)

    def training_under_a_new_worker(after_event: int, old: set[int]) -> int | None:
        pid = worker_pid(db_url, job_id)
        newest = events(client, job_id, limit=5)
        stepping = any(e["type"] == "metrics" and event_number(e) > after_event for e in newest)
        return pid if pid is not None and pid not in old and stepping else None

    first = wait_for("the first worker to train", lambda: training_under_a_new_worker(0, set()))
    assert first in children(server.pid)
    os.kill(first, signal.SIGKILL)

    def handed_back() -> dict[str, Any] | None:
        return next((e for e in events(client, job_id) if e["level"] == "warn"), None)

    died = wait_for("the job to be handed back", handed_back)
    assert "killed by SIGKILL (signal 9)" in died["message"], died
    assert died["data"] == {"code": "worker_lost", "attempt": 1}
    assert client.get("/readyz").status_code == 200  # the API did not go down with its worker
    second = wait_for(
        "a new worker to resume the job",
        lambda: training_under_a_new_worker(event_number(died), {first}),
    )
    assert second in children(server.pid)
    assert job_row(db_url, job_id).lost_count == 1  # its one retry
    os.kill(second, signal.SIGKILL)

    def failed() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return job if job["status"] != "running" and job["status"] != "queued" else None

    job = wait_for("the job to fail", failed)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "worker_lost"
    assert "died twice" in job["error"]["message"]
    assert "killed by SIGKILL (signal 9)" in job["error"]["message"]
    assert job["progress"]["step"] < job["progress"]["total_steps"]
    # never a third try: the job stays failed while the service starts its next worker
    third = wait_for("the next worker", lambda: children(server.pid) - {first, second})
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "failed"
    assert job_row(db_url, job_id).lost_count == 2
    server.kill()  # a hard kill of the API takes its worker along
    server.wait()
    wait_for("the worker to end with the API", lambda: not any(running(p) for p in third))
    _wipe(db_url)


def test_the_api_outlives_its_worker_and_starts_another(
    db_url: str, tmp_path: Path, live: Callable[..., Any]
) -> None:
    _wipe(db_url)
    server, client = live(user_env(db_url, tmp_path / "data", embedded_worker="0"))
    first = wait_for("the supervised worker", lambda: children(server.pid))
    assert len(first) == 1
    (pid,) = first
    os.kill(pid, signal.SIGKILL)
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/fine_tuning/jobs").status_code == 200
    restarted = wait_for("a new worker", lambda: children(server.pid) - first)
    assert len(restarted) == 1 and server.poll() is None
    log = (tmp_path / "server.log").read_text()
    assert f"fine-tune worker (pid {pid}) killed by SIGKILL (signal 9)" in log
    server.kill()
    server.wait()
    wait_for("the worker to end with the API", lambda: not any(running(p) for p in restarted))
    _wipe(db_url)


def test_with_the_setting_off_a_job_says_no_worker_can_take_it(
    db_url: str, tmp_path: Path, live: Callable[..., Any]
) -> None:
    _wipe(db_url)
    server, client = live(user_env(db_url, tmp_path / "data", finetune_workers="0"))
    _greet_dataset(client)  # type: ignore[arg-type]
    job_id = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "SmolLM2-135M-Instruct", "dataset": "greet", "max_steps": 1},
    ).json()["id"]

    def told() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return job if job["progress"]["status_message"] else None

    job = told() or wait_for("the job to say no worker can take it", told)
    assert job["status"] == "queued"
    message = job["progress"]["status_message"]
    assert "No fine-tune worker is running" in message
    assert "SELFINSTRUCT_FINETUNE_WORKERS=0" in message
    assert (
        "`make finetune-worker`" in message and "`selfinstruct worker --kind finetune`" in message
    )
    time.sleep(3)  # several rounds of the check: still one event, not one per round
    notes = [e for e in events(client, job_id) if e["data"].get("code") == "no_finetune_worker"]
    assert [e["message"] for e in notes] == [message]
    assert notes[0]["level"] == "warn"
    assert children(server.pid) == set()  # no worker was started
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"
    _wipe(db_url)


def test_the_no_worker_note_goes_when_a_worker_shows_up(db_url: str, tmp_path: Path) -> None:
    """Idle workers are seen by their presence files, busy ones by their jobs' leases; a claim
    ends the wait and removes the note."""
    settings = Settings(database_url=db_url, data_dir=tmp_path, embedded_worker=False)
    _wipe(db_url)
    engine = make_engine(settings)
    reason = "none here"
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_ids = [
            client.post(
                "/v1/fine_tuning/jobs",
                json={"model": "SmolLM2-135M-Instruct", "dataset": "greet", "seed": seed},
            ).json()["id"]
            for seed in (1, 2)
        ]
        assert set(note_unserved_jobs(engine, settings, reason=reason)) == set(job_ids)
        assert note_unserved_jobs(engine, settings, reason=reason) == []  # once per wait
        first = client.get(f"/v1/fine_tuning/jobs/{job_ids[0]}").json()
        assert "No fine-tune worker is running (none here)" in first["progress"]["status_message"]

        mark_present(tmp_path, "finetune", "host:1:idle")  # an idle worker polls
        assert note_unserved_jobs(engine, settings, reason=reason) == []
        for job_id in job_ids:
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            assert job["progress"]["status_message"] is None
            notes = [e for e in events(client, job_id) if e["data"].get("code")]
            assert [e["data"]["code"] for e in notes] == ["no_finetune_worker"]

        (tmp_path / "workers" / "finetune" / "host:1:idle").unlink()
        note_unserved_jobs(engine, settings, reason=reason)
        assert client.get(f"/v1/fine_tuning/jobs/{job_ids[1]}").json()["progress"]["status_message"]
        # a worker claims one job: the other waits for a busy worker, which is no reason to note
        claimed = claim(
            engine, FineTuningJobRow, worker_id="host:2:busy", lease_seconds=60, attempts=2
        )
        assert claimed is not None and begin_attempt(engine, str(claimed.row_id))
        note_unserved_jobs(engine, settings, reason=reason)
        for job_id in job_ids:
            assert (
                client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["progress"]["status_message"]
                is None
            )
    engine.dispose()
    _wipe(db_url)


@pytest.mark.both_databases
def test_a_job_gets_one_retry_after_its_lease_runs_out_and_a_stop_costs_none(
    db_url: str, tmp_path: Path
) -> None:
    """Without a supervisor to see a death, a lease that runs out is the sign: the second claim
    resumes the job, the third fails it. A worker that hands its job back on purpose (stopping)
    does not use up the retry."""
    from app.finetune.worker import release_job

    settings = Settings(database_url=db_url, data_dir=tmp_path, embedded_worker=False)
    _wipe(db_url)
    engine = make_engine(settings)
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_id = client.post(
            "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "greet"}
        ).json()["id"]

        leases: dict[str, Lease] = {}

        def claimed_by(worker: str) -> bool:
            # a lease that has already run out: as if the worker died right after its claim
            got = claim(engine, FineTuningJobRow, worker_id=worker, lease_seconds=-1, attempts=2)
            if got is None:
                return False
            assert got.row_id == job_id
            leases[worker] = got
            return begin_attempt(engine, job_id)

        assert claimed_by("host:1:stopping")
        assert release_job(engine, leases["host:1:stopping"])
        stopped = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert stopped["status"] == "queued" and job_row(db_url, job_id).lost_count == 0
        assert claimed_by("host:2:dies") and claimed_by("host:3:dies")  # the first and the retry
        assert not claimed_by("host:4:never")
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"
        assert "died twice (last: its lease ran out without a renewal)" in job["error"]["message"]
        assert not release_job(engine, leases["host:3:dies"])  # a failed job stays failed
    engine.dispose()
    _wipe(db_url)


@pytest.mark.real
def test_a_worker_stopped_mid_job_hands_it_back_without_using_the_retry(
    sqlite_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    """SIGTERM (docker stop, the service stopping) ends a dedicated worker at its next step; the
    job is queued again at once, its claim not counted."""
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False)
    migrate(settings)
    _wipe(sqlite_url)
    model = _register_base(settings, tiny_base_dir)
    env = user_env(sqlite_url, tmp_path, worker_poll_seconds="0.2")
    env["OMP_NUM_THREADS"] = "1"
    with TestClient(create_app(settings)) as client:
        job_id = _long_job(client, model)
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--kind", "finetune", "--device", "cpu"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                "the worker to train",
                lambda: any(e["type"] == "metrics" for e in events(client, job_id, limit=5)),
            )
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=HANG_GUARD_S) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "queued", job
        assert job_row(sqlite_url, job_id).lost_count == 0
        assert events(client, job_id, limit=1)[0]["message"].startswith("The worker was stopped")
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    _wipe(sqlite_url)


def test_make_run_installs_the_pinned_training_stack(tmp_path: Path) -> None:
    """`make run` on a clean checkout installs what the worker `serve` starts needs: torch at
    its pin (never whatever is newest) and the train extra, both held to the lock."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[2]
    plan = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'venv'}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in plan.splitlines() if " -m pip install " in line]
    torch = [line for line in installs if "torch" in line.split("#")[0]]
    assert torch and all(
        "torch==2.13.0" in line and "-c requirements.lock" in line for line in torch
    )
    assert any("'.[local,train]'" in line and "-c requirements.lock" in line for line in installs)
    lock = (root / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0" in lock
    assert plan.index("torch==2.13.0") < plan.index("selfinstruct serve")


def test_a_worker_that_keeps_dying_is_not_restarted_for_ever(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that dies young five times in a row (it cannot start: a broken install, say) is
    restarted with a growing back-off, then left for good, which the log and a waiting job
    say."""
    from app.finetune.supervisor import MAX_YOUNG_DEATHS, FinetuneSupervisor

    settings = Settings(database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False)
    migrate(settings)
    _wipe(sqlite_url)
    engine = make_engine(settings)
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_id = client.post(
            "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "greet"}
        ).json()["id"]
        supervisor = FinetuneSupervisor(
            engine=engine, settings=settings, command=[sys.executable, "-c", "exit(3)"]
        )
        with caplog.at_level("WARNING", logger="selfinstruct.finetune"):
            supervisor.start()
            try:
                job = wait_for(
                    "the supervisor to give up",
                    lambda: (
                        j
                        if (j := client.get(f"/v1/fine_tuning/jobs/{job_id}").json())["progress"][
                            "status_message"
                        ]
                        else None
                    ),
                )
            finally:
                supervisor.stop()
        assert "kept dying" in job["progress"]["status_message"]
        deaths = [r.getMessage() for r in caplog.records if "exited with code 3" in r.getMessage()]
        assert len(deaths) == MAX_YOUNG_DEATHS
        assert [d.rsplit(" ", 1)[-1] for d in deaths[:-1]] == ["1s", "2s", "4s", "8s"]
        assert "it is not restarted" in deaths[-1]
    engine.dispose()
    _wipe(sqlite_url)


def test_how_a_worker_died_is_said_in_words() -> None:
    from app.finetune.worker import describe_exit

    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-11) == "killed by SIGSEGV (signal 11)"
    assert "likely out of memory" in describe_exit(-9, oom_killed=True)
    assert "likely" not in describe_exit(-9)  # a kill -9 by hand is not blamed on memory


def test_without_the_training_stack_no_worker_starts_and_the_log_says_so_once(
    sqlite_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An install without torch (the API image) starts no worker; one line in the log says why,
    and a job says so too."""
    from app.finetune import supervisor as finetune_supervisor
    from app.finetune.supervisor import FinetuneSupervisor

    # this install has the training stack; an API image's lacks it
    monkeypatch.setattr(finetune_supervisor, "training_stack_missing", lambda: ["torch"])
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False)
    migrate(settings)
    _wipe(sqlite_url)
    engine = make_engine(settings)
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_id = client.post(
            "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "greet"}
        ).json()["id"]
        supervisor = FinetuneSupervisor(engine=engine, settings=settings)
        with caplog.at_level("WARNING", logger="selfinstruct.finetune"):
            supervisor.start()
            try:
                job = wait_for(
                    "the job to say why it waits",
                    lambda: (
                        j
                        if (j := client.get(f"/v1/fine_tuning/jobs/{job_id}").json())["progress"][
                            "status_message"
                        ]
                        else None
                    ),
                )
                time.sleep(2.5)  # more rounds of the supervisor: still one line
                assert supervisor.pid is None
            finally:
                supervisor.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "training stack is not installed here (torch missing)" in lines[0]
    assert "training stack is not installed" in job["progress"]["status_message"]
    engine.dispose()
    _wipe(sqlite_url)
