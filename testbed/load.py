"""Load on a live API: concurrent clients that list task pages, read tasks and a run, and export
a dataset as JSONL (every line parsed), timing each request and keeping every error; and the
service to aim them at, with a run writing into the same dataset. bench/load.py turns the
figures into ratios against an idle baseline; tests/hardening/test_load.py asserts that nothing
failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.db import migrate
from app.settings import Settings
from testbed.live import running_api

KINDS = ("list", "read", "run", "export")
WEIGHTS = (4, 4, 2, 1)


@dataclass
class LoadResult:
    """Latencies per request kind, errors, and what the exports contained."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    export_lines: list[int] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu_s: float = 0.0  # the clients' own process, which shares the machine

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def quantile(self, kind: str, q: float) -> float:
        values = sorted(self.latencies.get(kind, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]


async def _one_client(
    http: httpx.AsyncClient,
    *,
    dataset: str,
    run_id: int | None,
    until: float,
    rng: random.Random,
    result: LoadResult,
) -> None:
    seen: list[int] = []
    cursor: str | None = None
    while time.monotonic() < until:
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind == "read" and not seen:
            kind = "list"
        if kind == "run" and run_id is None:
            kind = "list"
        started = time.perf_counter()
        try:
            if kind == "list":
                params: dict[str, str | int] = {"limit": 50}
                if cursor:
                    params["after"] = cursor
                response = await http.get(f"/v1/datasets/{dataset}/tasks", params=params)
                if response.status_code == 200:
                    page = response.json()
                    seen = [t["id"] for t in page["data"]] or seen
                    cursor = page.get("next_cursor")
            elif kind == "read":
                response = await http.get(f"/v1/tasks/{rng.choice(seen)}")
                if response.status_code == 200:
                    response.json()
            elif kind == "run":
                response = await http.get(f"/v1/runs/{run_id}")
                if response.status_code == 200:
                    response.json()
            else:
                lines = 0
                async with http.stream(
                    "GET",
                    f"/v1/datasets/{dataset}/export",
                    params={"format": "alpaca", "include_seeds": "true"},
                ) as response:
                    if response.status_code == 200:
                        async for line in response.aiter_lines():
                            if line:
                                row = json.loads(line)
                                assert {"instruction", "input", "output"} <= row.keys(), row
                                lines += 1
                        result.export_lines.append(lines)
                    else:
                        await response.aread()
        except (httpx.HTTPError, ValueError, AssertionError) as exc:
            cause = exc.__cause__ or exc.__context__
            result.errors.append(f"{kind}: {type(exc).__name__}: {exc} ({cause!r})"[:300])
            continue
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            result.errors.append(f"{kind}: HTTP {response.status_code}: {response.text[:200]}")
            continue
        result.latencies[kind].append(elapsed)


async def hammer(
    base: str, *, dataset: str, run_id: int | None, clients: int, seconds: float, seed: int = 0
) -> LoadResult:
    """`clients` concurrent clients, each an HTTP client of its own with one connection, for
    `seconds`. One client with a pool of 50 connections spent 3 ms of CPU per request looking
    after its pool, twice what the server spent answering, on the same two cores: ten times
    what one connection per client costs."""
    result = LoadResult()
    # Idle connections expire well before uvicorn's 5 s keep-alive: at equal timeouts a request
    # can go out on a connection the server is closing, which fails with a ReadError.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2.0)
    async with AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, timeout=60, limits=limits)
            )
            for _ in range(clients)
        ]
        started, cpu = time.monotonic(), time.process_time()
        until = started + seconds
        await asyncio.gather(
            *(
                _one_client(
                    http,
                    dataset=dataset,
                    run_id=run_id,
                    until=until,
                    rng=random.Random(seed * 1000 + i),
                    result=result,
                )
                for i, http in enumerate(https)
            )
        )
        result.seconds = time.monotonic() - started
        result.client_cpu_s = time.process_time() - cpu
    return result


@contextmanager
def serving(
    db_url: str,
    data_dir: Path,
    model_base_url: str,
    model: str,
    processes: int = 1,
    tree: Path | None = None,
) -> Iterator[str]:
    """A migrated database and `selfinstruct serve` on it (`--workers processes`, the code of
    `tree` when given); yields the base URL."""
    migrate(Settings(database_url=db_url, data_dir=data_dir))
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(data_dir),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(
            [{"name": "stub", "base_url": model_base_url, "models": [model], "max_retries": 1}]
        ),
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.1",
    }
    args = ["--workers", str(processes)] if processes > 1 else []
    with running_api(env, data_dir / "server.log", args, tree) as base:
        yield base


def serve_cpu_seconds(base: str) -> float:
    """CPU seconds so far of the `selfinstruct serve` listening on `base`'s port and of its
    descendants (the API processes of `--workers N`), read from Linux's /proc; a process that
    ended takes its figure with it."""
    port = base.rsplit(":", 1)[1].encode()
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    roots: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone in the meantime
            continue
        pid = int(entry.name)
        parent[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        if b"serve" in argv and port in argv:
            roots.add(pid)

    def in_tree(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parent.get(pid, 0)
        return False

    return sum(seconds for pid, seconds in cpu.items() if in_tree(pid))


def start_writing_run(base: str, model: str, dataset: str = "default") -> int:
    """A run with a target it will not reach in the window, once it has stored a batch."""
    run_id = int(
        httpx.post(
            f"{base}/v1/datasets/{dataset}/runs", json={"target": 50_000, "model": model}
        ).json()["id"]
    )
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/v1/runs/{run_id}").json()["counters"]["candidates"] == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} stored nothing in 60 s")
        time.sleep(0.1)
    return run_id
