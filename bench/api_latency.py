"""Latency of the two commonest reads with one client: one task, and a page of 50 tasks.

    python -m bench.api_latency [--requests 400] [--pool 100000] [--against DIR]

Builds two SQLite databases once: the starter pool plus a short run against a scripted model
(real generated tasks, with lineage and nearest neighbours), and a copy grown to `--pool` tasks
by repeating the generated rows. Against each, starts `selfinstruct serve` (embedded worker on,
nothing queued) and one client on one keep-alive connection reads random tasks by id
(`GET /v1/tasks/{id}`) and pages of 50 at random cursors (`GET /v1/datasets/default/tasks`),
interleaved. Prints p50 and p95 over loopback and the server process's CPU per request.

With `--against DIR`, a checkout of another commit (`git archive <commit> | tar -x -C DIR`;
its migrations must end at the same revision), the same databases are served by that tree too:
the baseline each figure is printed against. Both servers run at once and get each request in
turn, so a machine shared with other work loads both alike.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from generators.llama_server import free_port
from testbed.live import serve_api, wait_ready

HERE = Path(__file__).resolve().parent.parent
PAGE = 50
KINDS = ("task", "page")


@dataclass
class Figures:
    """Wall seconds per request kind and the server's CPU seconds per request (both kinds)."""

    wall: dict[str, list[float]]
    cpu_per_request: float

    def p(self, kind: str, q: float) -> float:
        values = sorted(self.wall[kind])
        return values[min(len(values) - 1, int(q * len(values)))]


def build_starter(path: Path, generated: int) -> None:
    """The starter pool and one finished run of `generated` tasks from the scripted model."""
    from testbed.load import serving
    from testbed.scripted_llm import StubLLM

    stub = StubLLM(seed=3)
    stub.start()
    try:
        with serving(f"sqlite:///{path}", path.parent, stub.base_url, "stub-model") as base:
            run = httpx.post(
                f"{base}/v1/datasets/default/runs",
                json={"target": generated, "model": "stub-model"},
            ).json()["id"]
            while httpx.get(f"{base}/v1/runs/{run}").json()["status"] in ("queued", "running"):
                time.sleep(0.2)
    finally:
        stub.stop()
    with sqlite3.connect(path) as conn:  # everything in the main file, so a copy holds it all
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def grow(path: Path, size: int) -> int:
    """Repeat the generated rows (new ids, same content) until the pool holds `size` tasks."""
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(task)") if r[1] not in ("id",)]
    names = ", ".join(columns)
    with conn:
        while (count := conn.execute("SELECT count(*) FROM task").fetchone()[0]) < size:
            conn.execute(
                f"INSERT INTO task ({names}) SELECT {names} FROM task "
                "WHERE origin = 'generated' ORDER BY id LIMIT ?",
                (size - count,),
            )
    conn.execute("ANALYZE")  # as a long-lived database would have been, by `optimize`
    conn.close()
    return count


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(tree: Path, db: Path, log: Path) -> Iterator[tuple[str, int]]:
    """`selfinstruct serve` from `tree` on `db`; yields its base URL and pid."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "SELFINSTRUCT_DATA_DIR": str(db.parent)}
    proc = serve_api(env, port, log, tree=tree)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(trees: list[Path], db: Path, requests: int, seed: int = 0) -> list[Figures]:
    """The same requests to one server per tree, each on its own copy of `db`, interleaved one
    request at a time so that every tree sees the same machine load."""
    ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM task ORDER BY id")]
    rng = random.Random(seed)
    plan = [("task", rng.choice(ids)) for _ in range(requests)]
    plan += [("page", rng.choice(ids[: max(1, len(ids) - PAGE)]) - 1) for _ in range(requests)]
    rng.shuffle(plan)
    walls: list[dict[str, list[float]]] = [{k: [] for k in KINDS} for _ in trees]
    with ExitStack() as stack:
        servers = []
        for n, tree in enumerate(trees):
            copy = db.with_name(f"tree{n}.sqlite")
            shutil.copy(db, copy)
            base, pid = stack.enter_context(server(tree, copy, db.parent / f"server{n}.log"))
            servers.append((stack.enter_context(httpx.Client(base_url=base)), pid))

        def get(client: httpx.Client, kind: str, key: int) -> float:
            started = time.perf_counter()
            if kind == "task":
                response = client.get(f"/v1/tasks/{key}")
            else:
                params = {"limit": PAGE, "after": key}
                response = client.get("/v1/datasets/default/tasks", params=params)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            return elapsed

        for kind, key in plan[:50]:  # warm-up: imports, caches, the connection pools
            for client, _ in servers:
                get(client, kind, key)
        cpu_before = [cpu_seconds(pid) for _, pid in servers]
        order = list(range(len(servers)))
        for kind, key in plan:
            rng.shuffle(order)
            for n in order:
                walls[n][kind].append(get(servers[n][0], kind, key))
        cpu = [
            cpu_seconds(pid) - before for (_, pid), before in zip(servers, cpu_before, strict=True)
        ]
    return [Figures(wall=w, cpu_per_request=c / len(plan)) for w, c in zip(walls, cpu, strict=True)]


def report(label: str, ours: Figures, base: Figures | None) -> None:
    for kind in KINDS:
        p50, p95 = ours.p(kind, 0.5) * 1000, ours.p(kind, 0.95) * 1000
        line = f"  {label:<22} {kind:<5} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"
        if base is not None:
            b50, b95 = base.p(kind, 0.5) * 1000, base.p(kind, 0.95) * 1000
            line += f"   baseline p50 {b50:6.2f} ms  p95 {b95:6.2f} ms  ({b50 / p50:.2f}x faster)"
        print(line)
    cpu = ours.cpu_per_request * 1000
    line = f"  {label:<22} server CPU per request {cpu:.2f} ms"
    if base is not None:
        b = base.cpu_per_request * 1000
        line += f"   baseline {b:.2f} ms ({b / cpu:.2f}x less)"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="Of each kind, per database.")
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--generated", type=int, default=100, help="Tasks of the short run.")
    parser.add_argument("--against", type=Path, help="A checkout to compare with (the baseline).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="selfinstruct-latency-") as tmp:
        starter = Path(tmp) / "starter" / "db.sqlite"
        starter.parent.mkdir()
        build_starter(starter, args.generated)
        large = Path(tmp) / "large" / "db.sqlite"
        large.parent.mkdir()
        shutil.copy(starter, large)
        size = grow(large, args.pool)
        small = sqlite3.connect(starter).execute("SELECT count(*) FROM task").fetchone()[0]
        print(f"one client, {args.requests} requests of each kind per database, server from:")
        for db, what in ((starter, f"starter pool ({small} tasks)"), (large, f"{size:,} tasks")):
            if args.against is None:
                report(what, measure([HERE], db, args.requests)[0], None)
            else:
                baseline, ours = measure([args.against.resolve(), HERE], db, args.requests)
                report(what, ours, baseline)


if __name__ == "__main__":
    main()
