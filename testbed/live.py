"""A real API server in a subprocess, for tests (and benchmarks) that need one: kill -9,
the CLI, streaming exports."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from generators.llama_server import free_port


def serve_api(
    env: dict[str, str],
    port: int,
    log: Path | None = None,
    args: Sequence[str] = (),
    tree: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`selfinstruct serve` with `env`; call `wait_ready` before using it. `tree`: the code of
    another checkout (a benchmark's baseline) instead of this one.

    It starts no fine-tune worker of its own unless `env` sets SELFINSTRUCT_FINETUNE_WORKERS:
    tests that create jobs run the workers they mean to."""
    out = log.open("ab") if log else subprocess.DEVNULL
    code = {"PYTHONPATH": str(tree.resolve())} if tree else {}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *args],
        env={"SELFINSTRUCT_FINETUNE_WORKERS": "0", **env, **code},
        cwd=tree,
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


@contextmanager
def running_api(
    env: dict[str, str], log: Path, args: Sequence[str] = (), tree: Path | None = None
) -> Iterator[str]:
    """`selfinstruct serve` with `env` on a free port, ready; yields its base URL and stops it
    with SIGTERM (SIGKILL after 30 s) when the block ends."""
    port = free_port()
    server = serve_api(env, port, log, args, tree)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
