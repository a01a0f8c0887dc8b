"""What a dataset version costs: storage per task and time to create, against the plain export
of the same tasks (the named baseline), and reading it back against exporting the live pool.

    python -m bench.versions [--tasks 1000000]

Builds a SQLite database of accepted tasks whose text is real English prose (testbed.corpus:
random words would compress far better than real data), with runs, ratings, languages and a
held-out key, then in this one process:

- baseline: `export_chunks(format=self_instruct)` of the tasks (the bytes a user would keep
  as "the data of this version" without versions), CPU time and size;
- `create_version` of the same selection: CPU and wall time, the bytes stored (compressed
  chunks) and the database file's growth, per task; peak memory of the process;
- the version's export against the live one (CPU time), and that both give the same records.
CPU time is the process's (`time.process_time`), so a loaded machine skews it less than wall.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, select

from app.db import make_engine, migrate
from app.models import Dataset
from app.schemas.datasets import ExportFormat, ExportSplit
from app.services.export import Selection, VersionPart, export_chunks
from app.services.versions import create_version
from app.settings import Settings
from testbed.corpus import real_sentences

STRATEGIES = ("self_instruct", "alpaca", "evolve")
RATINGS = ("A", "B", "C", "D", None)


def build_database(path: Path, tasks: int) -> Settings:
    """A migrated database with one dataset of `tasks` accepted generated tasks."""
    settings = Settings(database_url=f"sqlite:///{path}", data_dir=path.parent)
    migrate(settings)
    rng = random.Random(0)
    sentences = real_sentences(limit=50_000)
    now = datetime.now(UTC).isoformat(sep=" ")
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO dataset (name, description, language, held_out_share, "
        "decontaminate_against, decontamination_threshold, decontamination_state, created_at, "
        "updated_at) VALUES ('bench', '', NULL, 0.1, '[]', 0.7, '{}', ?, ?)",
        (now, now),
    )
    dataset_id = conn.execute("SELECT id FROM dataset WHERE name='bench'").fetchone()[0]
    for strategy in STRATEGIES:
        conn.execute(
            "INSERT INTO run (dataset_id, strategy, backend, model, params, target, shards, "
            "status, requests, failed_requests, prompt_tokens, completion_tokens, cost, "
            "candidates, accepted, rejected, rejected_by_reason, instances, state, lease_epoch, "
            "lost_count, progressed, created_at, updated_at) VALUES (?, ?, 'local', 'm', '{}', "
            "0, 1, 'succeeded', 0, 0, 0, 0, 0, 0, 0, 0, '{}', 0, '{}', 0, 0, 0, ?, ?)",
            (dataset_id, strategy, now, now),
        )
    run_ids = [r[0] for r in conn.execute("SELECT id FROM run ORDER BY id")]

    def rows():  # type: ignore[no-untyped-def]
        for i in range(tasks):
            instances = [
                {"input": rng.choice(sentences), "output": " ".join(rng.sample(sentences, 2))}
                for _ in range(rng.choice((1, 1, 2)))
            ]
            yield (
                dataset_id,
                f"{rng.choice(sentences)} ({i})",
                json.dumps(instances),
                rng.random() < 0.2,
                "generated",
                "accepted",
                "en",
                rng.choice(RATINGS),
                rng.choice(run_ids),
                rng.random(),
                now,
                now,
            )

    conn.executemany(
        "INSERT INTO task (dataset_id, instruction, instances, is_classification, origin, status, "
        "language, rating, run_id, holdout_key, nearest, lineage, contaminated, created_at, "
        "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,'[]','{}',0,?,?)",
        rows(),
    )
    conn.commit()
    conn.close()
    return settings


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux), so the next peak is the creation's; returns
    the resident size now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _drain(chunks) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Bytes and CPU seconds of consuming an export."""
    start, size = time.process_time(), 0
    for chunk in chunks:
        size += len(chunk)
    return size, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        path = Path(tmp) / "bench.db"
        t0 = time.perf_counter()
        settings = build_database(path, args.tasks)
        print(f"built {args.tasks:,} tasks in {time.perf_counter() - t0:.0f} s", flush=True)
        engine = make_engine(settings)
        with Session(engine) as session:
            dataset = session.exec(select(Dataset).where(Dataset.name == "bench")).one()
        assert dataset.id is not None
        selection = Selection(split=ExportSplit.all)
        fmt = ExportFormat.self_instruct

        export_bytes, export_cpu = _drain(
            export_chunks(engine=engine, dataset_id=dataset.id, fmt=fmt, selection=selection)
        )
        size_before = path.stat().st_size + Path(f"{path}-wal").stat().st_size
        rss_before = _reset_peak_rss()
        wall, cpu = time.perf_counter(), time.process_time()
        with Session(engine) as session:
            version = create_version(session=session, dataset=dataset, selection=selection)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        grown = path.stat().st_size - size_before
        peak_mb = _status_mb("VmHWM") - rss_before
        assert version.id is not None
        frozen_bytes, frozen_cpu = _drain(
            export_chunks(
                engine=engine,
                dataset_id=dataset.id,
                fmt=fmt,
                selection=VersionPart(version_id=version.id),
            )
        )
        assert frozen_bytes == export_bytes, (frozen_bytes, export_bytes)
        n = version.tasks
        print(f"tasks: {n:,}  (held out: {version.counts['split'].get('held_out', 0):,})")
        print(
            f"baseline, plain export (self_instruct JSONL): {export_bytes / n:.0f} B/task, "
            f"{export_bytes / 1e6:.0f} MB, CPU {export_cpu:.1f} s"
        )
        print(
            f"version, stored (zstd chunks): {version.stored_bytes / n:.0f} B/task, "
            f"{version.stored_bytes / 1e6:.0f} MB = {version.stored_bytes / export_bytes:.2f}x "
            f"the export; database file grew {grown / n:.0f} B/task"
        )
        print(
            f"version, create: CPU {cpu:.1f} s ({cpu / export_cpu:.2f}x the export's), wall "
            f"{wall:.1f} s, {n / wall:,.0f} tasks/s; memory peak +{peak_mb:.0f} MB"
        )
        print(
            f"export of the version: CPU {frozen_cpu:.1f} s "
            f"({frozen_cpu / export_cpu:.2f}x the live export's), same bytes"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
