"""`selfinstruct serve --workers N`: N API processes on one port, and still exactly one
generation worker (every run is executed by the serving process itself) and one supervised
fine-tune worker; SIGTERM stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.db import migrate
from app.settings import Settings
from generators.llama_server import free_port
from testbed.live import wait_ready
from testbed.scripted_llm import StubLLM
from tests.runs.conftest import STUB_MODEL

pytestmark = pytest.mark.real


def children(pid: int) -> dict[int, str]:
    """A process's children and their command lines (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_n_api_processes_share_one_generation_worker_and_one_finetune_worker(
    tmp_path: Path,
) -> None:
    stub = StubLLM()
    stub.start()
    db_url = f"sqlite:///{tmp_path / 'selfinstruct.db'}"
    migrate(Settings(database_url=db_url, data_dir=tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
    env.update(
        DATABASE_URL=db_url,
        SELFINSTRUCT_DATA_DIR=str(tmp_path),
        SELFINSTRUCT_ENDPOINTS=json.dumps(
            [{"name": "stub", "base_url": stub.base_url, "models": [STUB_MODEL]}]
        ),
        SELFINSTRUCT_WORKER_POLL_SECONDS="0.1",
        SELFINSTRUCT_FINETUNE_WORKERS="1",
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--workers", "3", "--port", str(port)],
        env=env,
        stdout=(tmp_path / "server.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        deadline = time.monotonic() + 60
        while True:  # the API processes come up one by one
            kids = children(server.pid)
            api = [c for c in kids.values() if "multiprocessing.spawn" in c]
            finetune = [c for c in kids.values() if "worker --kind finetune" in c]
            if (len(api) == 3 and len(finetune) == 1) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (len(api), len(finetune)) == (3, 1), kids
        with httpx.Client(base_url=base, timeout=30) as client:
            ids = [
                client.post(
                    "/v1/datasets/default/runs", json={"target": 3, "model": STUB_MODEL}
                ).json()["id"]
                for _ in range(4)
            ]
            runs = []
            for run_id in ids:
                while (run := client.get(f"/v1/runs/{run_id}").json())["status"] in {
                    "queued",
                    "running",
                }:
                    assert time.monotonic() < deadline + 60, run
                    time.sleep(0.1)
                runs.append(run)
        assert [r["status"] for r in runs] == ["succeeded"] * 4, runs
        # worker ids are host:pid:random: every run was executed by the one worker, in `serve`
        pids = {int(r["worker_id"].split(":")[1]) for r in runs}
        assert pids == {server.pid}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        stub.stop()
    end = time.monotonic() + 15
    while (left := {p: c for p, c in kids.items() if alive(p)}) and time.monotonic() < end:
        time.sleep(0.1)
    assert not left, f"outlived serve: {left}"
