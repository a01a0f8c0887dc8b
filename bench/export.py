"""Export throughput and memory: the HTTP route against a plain sqlite3 query written to a file,
and the Parquet export against the JSONL one.

    python -m bench.export [--rows 1000000]

Builds a SQLite database of generated tasks, starts the real server in a subprocess, streams
`GET /v1/datasets/bench/export?format=alpaca` to a file, and reports rows/s and the server's
peak resident memory at two sizes (a tenth of the rows, then all of them), so flat memory shows
as equal peaks. The baseline is the same rows read by one `sqlite3` query and written as JSONL.
Then `format=parquet` through a fresh server: its rows/s and peak against the JSONL export's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from app.db import migrate
from app.settings import Settings

WORDS = (
    "explain summarise list compare describe classify rewrite translate suggest outline the a of "
    "for with recipe budget email paragraph sentence reasons benefits risks steps customer review "
    "poem story plan schedule argument example"
).split()


def build_database(path: Path, rows: int) -> None:
    """Fill a migrated database with generated tasks through sqlite3, fast."""
    settings = Settings(database_url=f"sqlite:///{path}", data_dir=path.parent)
    migrate(settings)
    rng = random.Random(0)
    now = datetime.now(UTC).isoformat(sep=" ")
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO dataset (name, description, language, created_at, updated_at) "
        "VALUES ('bench', '', 'en', ?, ?)",
        (now, now),
    )
    dataset_id = conn.execute("SELECT id FROM dataset WHERE name='bench'").fetchone()[0]

    def task_rows(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            instruction = " ".join(rng.choices(WORDS, k=rng.randint(6, 18))) + f" #{i}"
            instances = [
                {
                    "input": " ".join(rng.choices(WORDS, k=8)),
                    "output": " ".join(rng.choices(WORDS, k=20)),
                }
            ]
            yield (
                dataset_id,
                instruction,
                json.dumps(instances),
                0,
                "generated",
                "accepted",
                "[]",
                "{}",
                now,
                now,
            )

    conn.executemany(
        "INSERT INTO task (dataset_id, instruction, instances, is_classification, origin, status, "
        "nearest, lineage, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
        task_rows(rows),
    )
    conn.commit()
    conn.close()


def baseline(path: Path, out: Path, limit: int) -> float:
    """rows/s of one plain sqlite3 query written to a file as the same JSONL lines."""
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    n = 0
    with out.open("w") as fh:
        for instruction, instances in conn.execute(
            "SELECT instruction, instances FROM task WHERE status='accepted' ORDER BY id LIMIT ?",
            (limit,),
        ):
            for inst in json.loads(instances):
                fh.write(
                    json.dumps(
                        {
                            "instruction": instruction,
                            "input": inst["input"],
                            "output": inst["output"],
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
                n += 1
    conn.close()
    return n / (time.perf_counter() - start)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def through_http(path: Path, out: Path, fmt: str = "alpaca") -> tuple[int, float, float]:
    """Rows, rows/s and the server's peak RSS for one export through a fresh server."""
    from testbed.live import free_port, serve_api, wait_ready

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{path}",
        "SELFINSTRUCT_DATA_DIR": str(path.parent),
        "SELFINSTRUCT_LOAD_STARTER_SEEDS": "false",
    }
    server = serve_api(env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        rss_before = peak_rss_mb(server.pid)
        start = time.perf_counter()
        n = 0
        with (
            out.open("wb") as fh,
            httpx.stream(
                "GET", f"{base}/v1/datasets/bench/export", params={"format": fmt}, timeout=600
            ) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                fh.write(chunk)
                n += chunk.count(b"\n")
        elapsed = time.perf_counter() - start
        if fmt == "parquet":  # the whole file has arrived: its footer counts the rows
            n = pq.ParquetFile(out).metadata.num_rows
        return n, n / elapsed, max(rss_before, peak_rss_mb(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfinstruct-bench-") as tmp:
        results = []
        parquet: list[tuple[int, float, float, float]] = []  # rows, rows/s, peak MB, MB on disk
        for rows in (args.rows // 10, args.rows):
            db = Path(tmp) / f"export-{rows}.db"
            t0 = time.perf_counter()
            build_database(db, rows)
            print(f"built {rows:,} tasks in {time.perf_counter() - t0:.1f}s", flush=True)
            n, http_rate, peak = through_http(db, Path(tmp) / "http.jsonl")
            assert n == rows, f"exported {n} of {rows} rows"
            base_rate = baseline(db, Path(tmp) / "baseline.jsonl", rows)
            results.append((rows, http_rate, base_rate, peak))
            out = Path(tmp) / "http.parquet"
            n, pq_rate, pq_peak = through_http(db, out, fmt="parquet")
            assert n == rows, f"exported {n} of {rows} rows as Parquet"
            parquet.append((rows, pq_rate, pq_peak, out.stat().st_size / 2**20))
            print(f"exported {rows:,} rows as JSONL and Parquet", flush=True)
            db.unlink()
        print(
            f"\n{'rows':>10} {'HTTP rows/s':>12} {'sqlite3 rows/s':>15} {'ratio':>6} "
            f"{'server peak RSS MB':>19}"
        )
        for rows, http_rate, base_rate, peak in results:
            print(
                f"{rows:>10,} {http_rate:>12,.0f} {base_rate:>15,.0f} "
                f"{http_rate / base_rate:>6.2f} {peak:>19.1f}"
            )
        growth = results[1][3] - results[0][3]
        print(
            f"\npeak memory growth from {results[0][0]:,} to {results[1][0]:,} rows: "
            f"{growth:+.1f} MB (flat streaming keeps this near zero)"
        )
        print(
            f"\nParquet against JSONL (alpaca), each through a fresh server:\n"
            f"{'rows':>10} {'Parquet rows/s':>15} {'JSONL rows/s':>13} {'ratio':>6} "
            f"{'Parquet peak MB':>16} {'JSONL peak MB':>14} {'Parquet file MB':>16}"
        )
        for (rows, pq_rate, pq_peak, size), (_, http_rate, _, peak) in zip(
            parquet, results, strict=True
        ):
            print(
                f"{rows:>10,} {pq_rate:>15,.0f} {http_rate:>13,.0f} {pq_rate / http_rate:>6.2f} "
                f"{pq_peak:>16.1f} {peak:>14.1f} {size:>16.1f}"
            )
        print(
            f"Parquet peak memory growth from {parquet[0][0]:,} to {parquet[1][0]:,} rows: "
            f"{parquet[1][2] - parquet[0][2]:+.1f} MB"
        )


if __name__ == "__main__":
    main()
