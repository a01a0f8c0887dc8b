"""A real API server in a subprocess, for tests (and benchmarks) that need one: kill -9,
the CLI, streaming exports."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_api(env: dict[str, str], port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`selfinstruct serve` with `env`; call `wait_ready` before using it.

    It starts no fine-tune worker of its own unless `env` sets SELFINSTRUCT_FINETUNE_WORKERS:
    tests that create jobs run the workers they mean to."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env={"SELFINSTRUCT_FINETUNE_WORKERS": "0", **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_ready(base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server at {base} did not become ready in {timeout_s}s")
