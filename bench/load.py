"""Read latency under load, with a run writing: the real server against an idle baseline.

    python -m bench.load [--clients 50] [--seconds 15] [--db sqlite,postgres] [--api-processes N]
                         [--against DIR]

For each database, starts `selfinstruct serve` in a subprocess (embedded worker on) with a
scripted model endpoint on loopback, and lets `--clients` concurrent HTTP clients list tasks
(cursor pages), read single tasks, read the run, and export the dataset as JSONL (every line
parsed) for `--seconds`. First with nothing else going on (the baseline), then while a run
writes batches into the same dataset. Prints p50/p99 per request kind, their ratio against the
idle baseline, requests/s and every error (a 5xx, a connection error, an export that does not
parse). PostgreSQL comes from Debian's packages, as in the tests. With `--api-processes N`
the same is measured again on a fresh database with `selfinstruct serve --workers N`, and the
requests/s of N processes are printed as a ratio against one (the baseline). With `--against
DIR`, a checkout of another commit (`git archive <commit> | tar -x -C DIR`), every measurement
is made first with that tree's server, and this tree's requests/s are printed against it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from testbed.load import KINDS, LoadResult, hammer, serve_cpu_seconds, serving, start_writing_run


def measure(
    db_url: str,
    data_dir: Path,
    clients: int,
    seconds: float,
    processes: int = 1,
    tree: Path | None = None,
) -> dict[str, object]:
    from testbed.scripted_llm import StubLLM

    stub = StubLLM(seed=5)
    stub.delay_s = 0.01
    stub.start()
    try:
        with serving(db_url, data_dir, stub.base_url, "stub-model", processes, tree) as base:
            # The baseline reads a finished run, so every kind has an idle figure.
            done = httpx.post(
                f"{base}/v1/datasets/default/runs", json={"target": 2, "model": "stub-model"}
            ).json()["id"]
            while httpx.get(f"{base}/v1/runs/{done}").json()["status"] in ("queued", "running"):
                time.sleep(0.1)
            cpu = serve_cpu_seconds(base)
            idle = asyncio.run(
                hammer(base, dataset="default", run_id=done, clients=clients, seconds=seconds)
            )
            idle_cpu = serve_cpu_seconds(base) - cpu
            run_id = start_writing_run(base, "stub-model")
            before = httpx.get(f"{base}/v1/runs/{run_id}").json()["counters"]
            cpu = serve_cpu_seconds(base)
            busy = asyncio.run(
                hammer(base, dataset="default", run_id=run_id, clients=clients, seconds=seconds)
            )
            busy_cpu = serve_cpu_seconds(base) - cpu
            after = httpx.post(f"{base}/v1/runs/{run_id}/cancel").json()["counters"]
    finally:
        stub.stop()
    return {
        "idle": idle,
        "busy": busy,
        "server_cpu": (idle_cpu, busy_cpu),
        "written": after["candidates"] - before["candidates"],
        "accepted": after["accepted"] - before["accepted"],
    }


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'load.db'}"
        return
    from testbed.postgres import postgres_server

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
        f"busy {busy.requests / busy.seconds:,.0f}; median rows per export (busy) {rows:.0f}; "
        f"the clients' CPU per request {idle.client_cpu_s / max(1, idle.requests) * 1000:.2f} ms "
        f"idle, {busy.client_cpu_s / max(1, busy.requests) * 1000:.2f} ms busy"
    )
    idle_cpu, busy_cpu = figures["server_cpu"]  # type: ignore[misc]
    print(
        f"the server's CPU per request {idle_cpu / max(1, idle.requests) * 1000:.2f} ms idle, "
        f"{busy_cpu / max(1, busy.requests) * 1000:.2f} ms while the run writes (its own included)"
    )
    errors = idle.errors + busy.errors
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--against", type=Path, help="A checkout to compare with (the baseline).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    trees: dict[str, Path | None] = {"this tree": None}
    if args.against is not None:
        trees = {f"baseline {args.against}": args.against.resolve(), **trees}
    for kind in args.db.split(","):
        rates: dict[tuple[str, int], tuple[float, float]] = {}
        cpu_per_request: dict[tuple[str, int], float] = {}
        for processes in sorted({1, args.api_processes}):
            for label, tree in trees.items():
                with (
                    tempfile.TemporaryDirectory(prefix="selfinstruct-load-") as tmp,
                    database(kind, Path(tmp)) as url,
                ):
                    figures = measure(url, Path(tmp), args.clients, args.seconds, processes, tree)
                    what = f"{kind}, {label}, {processes} API process(es)"
                    report(what, figures, args.clients, args.seconds)
                    idle, busy = figures["idle"], figures["busy"]
                    assert isinstance(idle, LoadResult) and isinstance(busy, LoadResult)
                    rates[label, processes] = (
                        idle.requests / idle.seconds,
                        busy.requests / busy.seconds,
                    )
                    idle_cpu, _ = figures["server_cpu"]  # type: ignore[misc]
                    cpu_per_request[label, processes] = idle_cpu / max(1, idle.requests)
        print()
        for label in trees:
            if args.api_processes > 1:
                (i1, b1), (i_n, b_n) = rates[label, 1], rates[label, args.api_processes]
                print(
                    f"{kind}, {label}: requests/s with {args.api_processes} API processes "
                    f"against one: idle {i_n:,.0f} vs {i1:,.0f} ({i_n / i1:.2f}x), "
                    f"while a run writes {b_n:,.0f} vs {b1:,.0f} ({b_n / b1:.2f}x)"
                )
        if args.against is not None:
            base = next(iter(trees))
            for processes in sorted({1, args.api_processes}):
                (bi, bb), (oi, ob) = rates[base, processes], rates["this tree", processes]
                bc, oc = cpu_per_request[base, processes], cpu_per_request["this tree", processes]
                print(
                    f"{kind}, {processes} API process(es): this tree against the baseline: "
                    f"idle {oi:,.0f} vs {bi:,.0f} requests/s ({oi / bi:.2f}x), "
                    f"while a run writes {ob:,.0f} vs {bb:,.0f} ({ob / bb:.2f}x); "
                    f"the server's CPU per request idle {oc * 1000:.2f} vs {bc * 1000:.2f} ms "
                    f"({bc / oc:.2f}x less)"
                )


if __name__ == "__main__":
    main()
