"""Start llama-cpp-python's OpenAI-compatible server as a child process.

The reference server for the `openai` backend in tests and benchmarks, and a quick way to serve
the bundled model to other machines: `python -m generators.llama_server`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from generators.bundled import BUNDLED_MODEL_ID, bundled_model_path
from generators.errors import BackendUnavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_llama_cpp(
    model_path: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 2048,
    model_alias: str | None = BUNDLED_MODEL_ID,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Run `python -m llama_cpp.server` until the block ends; yield its base URL (…/v1).

    Waits until `GET /v1/models` answers, and fails with the server's log if it exits or does
    not answer within `startup_timeout_s`.
    """
    path = model_path or bundled_model_path()
    port = port or free_port(host)
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(path),
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        *(["--model_alias", model_alias] if model_alias else []),
        *extra_args,
    ]  # fmt: skip
    base_url = f"http://{host}:{port}/v1"
    with tempfile.TemporaryFile(mode="w+b") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            _wait_until_ready(process, base_url, startup_timeout_s, log)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(
    process: subprocess.Popen[bytes], base_url: str, timeout_s: float, log: object
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BackendUnavailable(
                f"llama.cpp server exited with code {process.returncode} before answering "
                f"{base_url}/models; its log:\n{_tail(log)}",
                endpoint=f"{base_url}/models",
            )
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BackendUnavailable(
        f"llama.cpp server did not answer {base_url}/models within {timeout_s:.0f}s; "
        f"its log:\n{_tail(log)}",
        endpoint=f"{base_url}/models",
    )


def _tail(log: object, limit: int = 4000) -> str:
    try:
        log.seek(0)  # type: ignore[attr-defined]
        return log.read().decode("utf-8", "replace")[-limit:]  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return "(no log)"


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the bundled (or given) GGUF until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args(argv)
    with serve_llama_cpp(args.model, host=args.host, port=args.port, n_ctx=args.n_ctx) as url:
        print(f"serving {args.model or bundled_model_path()} at {url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
