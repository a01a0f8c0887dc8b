"""The whole service's memory during a full fine-tune of the bundled model, against a 6 GB goal.

Starts `selfinstruct serve` as `make run` does (a fresh SQLite database in a temporary data
folder, the fine-tune worker it supervises), uploads a file of chats longer than the sequence
length (each truncated to exactly `--seq-len` tokens, so every row of a step is full), creates
a full fine-tune of SmolLM2-135M-Instruct with `batch_size` = rows and `max_steps` = `--steps`
(2 by default: AdamW's moments exist from the first step's update on, so the second step's
backward holds them too, and the first step alone would understate the peak), and sums
the resident memory (RSS) of the service's whole process tree every 0.2 s until the job ends.
Then it waits `--settle-s` and reads each process again: the idle worker's figure is what it
keeps between jobs.

    python -m bench.finetune_memory                 # 1 x 2,048 and 4 x 2,048
    python -m bench.finetune_memory --rows 4 --repo /tmp/ft-before   # another checkout's code

`--repo` runs the service from another checkout (a `git worktree` of an older commit) with
this interpreter, so before and after are measured by the same script on the same machine.
Decimal units: 1 GB = 10^9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from generators.llama_server import free_port

GOAL_BYTES = 6_000_000_000
GB = 1e9
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figures:
    rows: int
    seq_len: int
    steps: int
    status: str
    peak_total: int  # the largest sum over the tree at one sample
    peak_by_role: dict[str, int]  # each role's own largest figure
    idle_api: int
    idle_worker: int
    idle_others: int  # anything still running under the service after the job (should be 0)
    seconds: float


def roles(server: psutil.Process) -> dict[str, list[psutil.Process]]:
    """The service's processes by role: the API, its fine-tune worker, what the worker started
    (the trainer) and anything else."""
    found: dict[str, list[psutil.Process]] = {"api": [server], "worker": [], "trainer": []}
    try:
        for child in server.children():
            if "worker" in child.cmdline():
                found["worker"].append(child)
                found["trainer"] += child.children(recursive=True)
            else:
                found.setdefault("other", []).append(child)
    except psutil.NoSuchProcess:
        pass
    return found


def rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def chats(n: int, seq_len: int) -> bytes:
    """Chats of a short question and an answer of ~1.5 tokens a word, longer than seq_len."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    lines = []
    for i in range(n):
        answer = " ".join(words[(i + j) % len(words)] for j in range(seq_len + 200))
        record = {
            "messages": [
                {"role": "user", "content": f"Recite the words of list {i}."},
                {"role": "assistant", "content": answer},
            ]
        }
        lines.append(json.dumps(record))
    return "\n".join(lines).encode()


def measure(
    repo: Path, rows: int, seq_len: int, steps: int, settle_s: float, timeout_s: float
) -> Figures:
    data_dir = Path(tempfile.mkdtemp(prefix="ft-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
    env.pop("DATABASE_URL", None)
    env |= {"SELFINSTRUCT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    env |= {"TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(repo)}
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "migrate"], cwd=repo, env=env, check=True, capture_output=True)
    port = free_port()
    log = (data_dir / "server.log").open("wb")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)], cwd=repo, env=env, stdout=log, stderr=log
    )
    api = psutil.Process(server.pid)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {data_dir / 'server.log'}")
            time.sleep(0.5)
        upload = client.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("long.jsonl", chats(rows * steps, seq_len), "application/jsonl")},
        )
        upload.raise_for_status()
        created = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "SmolLM2-135M-Instruct",
                "training_file": upload.json()["id"],
                "max_seq_len": seq_len,
                "max_steps": steps,
                "seed": 1,
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": rows}},
                },
            },
        )
        created.raise_for_status()
        job_id = created.json()["id"]
        peak_total, peak_by_role = 0, {"api": 0, "worker": 0, "trainer": 0}
        started = time.monotonic()
        status = "running"
        while time.monotonic() - started < timeout_s:
            by_role = roles(api)
            figures = {role: rss(processes) for role, processes in by_role.items()}
            peak_total = max(peak_total, sum(figures.values()))
            for role, value in figures.items():
                peak_by_role[role] = max(peak_by_role.get(role, 0), value)
            status = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
        seconds = time.monotonic() - started
        if status != "succeeded":
            print(client.get(f"/v1/fine_tuning/jobs/{job_id}").json().get("error"))
        time.sleep(settle_s)
        idle = roles(api)
        return Figures(
            rows=rows,
            seq_len=seq_len,
            steps=steps,
            status=status,
            peak_total=peak_total,
            peak_by_role=peak_by_role,
            idle_api=rss(idle["api"]),
            idle_worker=rss(idle["worker"]),
            idle_others=rss(idle["trainer"] + idle.get("other", [])),
            seconds=seconds,
        )
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout to serve from")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / GB:.1f} GB, CPU only; code: {args.repo}"
    )
    for rows in args.rows:
        f = measure(
            args.repo.resolve(), rows, args.seq_len, args.steps, args.settle_s, args.timeout_s
        )
        roles_text = ", ".join(f"{k} {v / GB:.2f}" for k, v in f.peak_by_role.items())
        print(
            f"{f.rows} x {f.seq_len}, {f.steps} steps: {f.status} in {f.seconds:.0f}s; "
            f"service peak "
            f"{f.peak_total / GB:.2f} GB ({f.peak_total / GOAL_BYTES:.2f} of the 6 GB goal; "
            f"peaks by role: {roles_text}); after the job: API {f.idle_api / GB:.2f} GB, "
            f"worker {f.idle_worker / GB:.2f} GB, other processes {f.idle_others / GB:.2f} GB"
        )


if __name__ == "__main__":
    main()
