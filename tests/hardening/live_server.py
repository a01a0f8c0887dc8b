"""A real `selfinstruct serve` subprocess with both tokens set, for the hardening tests that must
go through the network stack (fuzzing the live OpenAPI document)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.live import free_port, serve_api, wait_ready
from tests.conftest import _wipe

API_TOKEN = "hardening-api-token-3f9a1c"
WORKER_TOKEN = "hardening-worker-token-7b2e4d"


@dataclass(frozen=True)
class LiveServer:
    base: str
    data_dir: Path
    log: Path

    @property
    def api_auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {API_TOKEN}"}

    @property
    def worker_auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {WORKER_TOKEN}"}

    def auth_for(self, path: str) -> dict[str, str]:
        """Worker routes take the worker token, every other route the API token."""
        return self.worker_auth if path.startswith("/v1/workers/") else self.api_auth


@contextmanager
def live_server(db_url: str, root: Path, **env: str) -> Iterator[LiveServer]:
    """Serve on a clean database; the embedded worker is off so nothing runs a model."""
    _wipe(db_url)
    data_dir = root / "data"
    log = root / "server.log"
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(data_dir),
        "SELFINSTRUCT_API_TOKEN": API_TOKEN,
        "SELFINSTRUCT_WORKER_TOKEN": WORKER_TOKEN,
        "SELFINSTRUCT_EMBEDDED_WORKER": "false",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    process = serve_api(environment, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield LiveServer(base=base, data_dir=data_dir, log=log)
    finally:
        process.terminate()
        process.wait(timeout=30)
        _wipe(db_url)
