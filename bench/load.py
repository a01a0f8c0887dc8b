"""Read latency under load, with a run writing: the real server against an idle baseline.

    python -m bench.load [--clients 50] [--seconds 15] [--db sqlite,postgres]

For each database, starts `selfinstruct serve` in a subprocess (embedded worker on) with a
scripted model endpoint on loopback, and lets `--clients` concurrent HTTP clients list tasks
(cursor pages), read single tasks, read the run, and export the dataset as JSONL (every line
parsed) for `--seconds`. First with nothing else going on (the baseline), then while a run
writes batches into the same dataset. Prints p50/p99 per request kind, their ratio against the
idle baseline, requests/s and every error (a 5xx, a connection error, an export that does not
parse). PostgreSQL comes from Debian's packages, as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.db import migrate
from app.settings import Settings

KINDS = ("list", "read", "run", "export")
WEIGHTS = (4, 4, 2, 1)


@dataclass
class LoadResult:
    """Latencies per request kind, errors, and what the exports contained."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    export_lines: list[int] = field(default_factory=list)
    seconds: float = 0.0

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
    """`clients` concurrent clients, each on its own connection, for `seconds`."""
    result = LoadResult()
    # Idle connections expire well before uvicorn's 5 s keep-alive: at equal timeouts a request
    # can go out on a connection the server is closing, which fails with a ReadError.
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        started = time.monotonic()
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
                for i in range(clients)
            )
        )
        result.seconds = time.monotonic() - started
    return result


@contextmanager
def serving(db_url: str, data_dir: Path, model_base_url: str, model: str) -> Iterator[str]:
    """A migrated database and `selfinstruct serve` on it; yields the base URL."""
    from tests.live import running_api

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
    with running_api(env, data_dir / "server.log") as base:
        yield base


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


def measure(db_url: str, data_dir: Path, clients: int, seconds: float) -> dict[str, object]:
    from tests.runs.stub_llm import StubLLM

    stub = StubLLM(seed=5)
    stub.delay_s = 0.01
    stub.start()
    try:
        with serving(db_url, data_dir, stub.base_url, "stub-model") as base:
            # The baseline reads a finished run, so every kind has an idle figure.
            done = httpx.post(
                f"{base}/v1/datasets/default/runs", json={"target": 2, "model": "stub-model"}
            ).json()["id"]
            while httpx.get(f"{base}/v1/runs/{done}").json()["status"] in ("queued", "running"):
                time.sleep(0.1)
            idle = asyncio.run(
                hammer(base, dataset="default", run_id=done, clients=clients, seconds=seconds)
            )
            run_id = start_writing_run(base, "stub-model")
            before = httpx.get(f"{base}/v1/runs/{run_id}").json()["counters"]
            busy = asyncio.run(
                hammer(base, dataset="default", run_id=run_id, clients=clients, seconds=seconds)
            )
            after = httpx.post(f"{base}/v1/runs/{run_id}/cancel").json()["counters"]
    finally:
        stub.stop()
    return {
        "idle": idle,
        "busy": busy,
        "written": after["candidates"] - before["candidates"],
        "accepted": after["accepted"] - before["accepted"],
    }


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'load.db'}"
        return
    from tests.pg import postgres_server

    with postgres_server() as url:
        yield url


def report(kind: str, figures: dict[str, object], clients: int, seconds: float) -> None:
    idle, busy = figures["idle"], figures["busy"]
    assert isinstance(idle, LoadResult) and isinstance(busy, LoadResult)
    print(
        f"\n{kind}: {clients} clients, {seconds:.0f} s per phase; the run stored "
        f"{figures['written']} candidates ({figures['accepted']} accepted) during the busy phase"
    )
    print(
        f"{'kind':>7} {'idle p50':>9} {'idle p99':>9} {'busy p50':>9} {'busy p99':>9} "
        f"{'p50 ratio':>9} {'p99 ratio':>9} {'busy n':>7}"
    )
    for k in KINDS:
        i50, i99 = idle.quantile(k, 0.5) * 1000, idle.quantile(k, 0.99) * 1000
        b50, b99 = busy.quantile(k, 0.5) * 1000, busy.quantile(k, 0.99) * 1000
        r50, r99 = (b50 / i50 if i50 else float("nan")), (b99 / i99 if i99 else float("nan"))
        print(
            f"{k:>7} {i50:>7.1f}ms {i99:>7.1f}ms {b50:>7.1f}ms {b99:>7.1f}ms "
            f"{r50:>8.2f}x {r99:>8.2f}x {len(busy.latencies.get(k, [])):>7}"
        )
    rows = statistics.median(busy.export_lines) if busy.export_lines else 0
    print(
        f"requests/s idle {idle.requests / idle.seconds:,.0f}, "
        f"busy {busy.requests / busy.seconds:,.0f}; median rows per export (busy) {rows:.0f}"
    )
    errors = idle.errors + busy.errors
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--db", default="sqlite,postgres")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for kind in args.db.split(","):
        with (
            tempfile.TemporaryDirectory(prefix="selfinstruct-load-") as tmp,
            database(kind, Path(tmp)) as url,
        ):
            figures = measure(url, Path(tmp), args.clients, args.seconds)
            report(kind, figures, args.clients, args.seconds)


if __name__ == "__main__":
    main()
