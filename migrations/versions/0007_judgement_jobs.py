"""judgement jobs get their own tables; the judgement jobs stored as runs move there

Until now a judgement job was a `run` row of strategy `judgement` whose counters meant something
else (accepted: judged, rejected: unjudged, candidates: done, target: total). Each such row
becomes a `judgement_job` row with the same id (and `former_run_id`, so GET /v1/runs/{id} can
point to it), its events move to `judgement_event` (same ids; `counters` events become
`progress` events in the job's own words), its judgements name it in `judgement_job_id`
instead of `run_id`, and the run row and its events are deleted.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 18:30:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JUDGEMENT = "judgement"  # the strategy name judgement jobs had as runs
LEASE_COLUMNS = ("lease_epoch", "lost_count", "progressed")
# What a run-shaped judgement job kept in `state` that now has a column of its own.
MOVED_STATE = ("ratings", "judged", "unjudged", "stop_reason")
CHUNK = 500


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "judgement_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("former_run_id", sa.Integer(), nullable=True),
        sa.Column("backend", _str(32), nullable=False),
        sa.Column("model", _str(200), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("stop_reason", _str(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("judged", sa.Integer(), nullable=False),
        sa.Column("unjudged", sa.Integer(), nullable=False),
        sa.Column("ratings", _json(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("failed_requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("state", _json(), nullable=False),
        sa.Column("worker_id", _str(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lost_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("progressed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name=op.f("fk_judgement_job_dataset_id_dataset"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgement_job")),
    )
    with op.batch_alter_table("judgement_job") as batch:
        batch.create_index("ix_judgement_job_status", ["status", "id"], unique=False)
        batch.create_index("ix_judgement_job_dataset", ["dataset_id", "id"], unique=False)
        batch.create_index("ix_judgement_job_former_run", ["former_run_id"], unique=False)
    op.create_table(
        "judgement_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("judgement_job_id", sa.Integer(), nullable=False),
        sa.Column("kind", _str(32), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["judgement_job_id"],
            ["judgement_job.id"],
            name=op.f("fk_judgement_event_judgement_job_id_judgement_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgement_event")),
    )
    with op.batch_alter_table("judgement_event") as batch:
        batch.create_index("ix_judgement_event_job", ["judgement_job_id", "id"], unique=False)
    with op.batch_alter_table("judgement") as batch:
        batch.add_column(sa.Column("judgement_job_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_judgement_judgement_job_id_judgement_job"),
            "judgement_job",
            ["judgement_job_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(
            "ix_judgement_judgement_job_task", ["judgement_job_id", "task_id"], unique=False
        )
    _move_out_of_runs(op.get_bind())


def downgrade() -> None:
    _move_back_to_runs(op.get_bind())
    with op.batch_alter_table("judgement") as batch:
        batch.drop_index("ix_judgement_judgement_job_task")
        batch.drop_constraint(
            op.f("fk_judgement_judgement_job_id_judgement_job"), type_="foreignkey"
        )
        batch.drop_column("judgement_job_id")
    op.drop_table("judgement_event")
    op.drop_table("judgement_job")


# --- the tables as this revision knows them (a migration never imports app) --------------------


def _shared_columns() -> list[sa.Column[Any]]:
    """What a run and a judgement job both have, under the same names."""
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer),
        sa.Column("backend", sa.String),
        sa.Column("model", sa.String),
        sa.Column("params", _json()),
        sa.Column("status", sa.String),
        sa.Column("error", sa.Text),
        sa.Column("requests", sa.Integer),
        sa.Column("failed_requests", sa.Integer),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("cost", sa.Float),
        sa.Column("state", _json()),
        sa.Column("worker_id", sa.String),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    ]


def _tables() -> tuple[sa.Table, sa.Table, sa.Table, sa.Table, sa.Table, sa.Table]:
    """run (with the lease columns 0006 added), run_event, judgement_job, judgement_event,
    judgement, task."""
    meta = sa.MetaData()
    run_lease = [
        sa.Column(c, sa.Boolean if c == "progressed" else sa.Integer) for c in LEASE_COLUMNS
    ]
    run = sa.Table(
        "run",
        meta,
        *_shared_columns(),
        sa.Column("strategy", sa.String),
        sa.Column("target", sa.Integer),
        sa.Column("candidates", sa.Integer),
        sa.Column("accepted", sa.Integer),
        sa.Column("rejected", sa.Integer),
        sa.Column("rejected_by_reason", _json()),
        sa.Column("instances", sa.Integer),
        *run_lease,
    )
    job = sa.Table(
        "judgement_job",
        meta,
        *_shared_columns(),
        sa.Column("former_run_id", sa.Integer),
        sa.Column("stop_reason", sa.String),
        sa.Column("total", sa.Integer),
        sa.Column("done", sa.Integer),
        sa.Column("judged", sa.Integer),
        sa.Column("unjudged", sa.Integer),
        sa.Column("ratings", _json()),
        sa.Column("lease_epoch", sa.Integer),
        sa.Column("lost_count", sa.Integer),
        sa.Column("progressed", sa.Boolean),
    )

    def events(name: str, owner: str) -> sa.Table:
        return sa.Table(
            name,
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(owner, sa.Integer),
            sa.Column("kind", sa.String),
            sa.Column("data", _json()),
            sa.Column("created_at", sa.DateTime(timezone=True)),
        )

    judgement = sa.Table(
        "judgement",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer),
        sa.Column("judgement_job_id", sa.Integer),
    )
    task = sa.Table("task", meta, sa.Column("id", sa.Integer), sa.Column("run_id", sa.Integer))
    return (
        run,
        events("run_event", "run_id"),
        job,
        events("judgement_event", "judgement_job_id"),
        judgement,
        task,
    )


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]


def _progress(counters: dict[str, Any], total: int) -> dict[str, Any]:
    """A run-shaped `counters` payload in a judgement job's words (JudgementProgress)."""
    return {
        "total": total,
        "done": counters.get("candidates", 0),
        "judged": counters.get("accepted", 0),
        "unjudged": counters.get("rejected", 0),
        "failed_requests": counters.get("failed_requests", 0),
        "ratings": dict(counters.get("ratings") or {}),
        "requests": counters.get("requests", 0),
        "prompt_tokens": counters.get("prompt_tokens", 0),
        "completion_tokens": counters.get("completion_tokens", 0),
    }


def _counters(progress: dict[str, Any]) -> dict[str, Any]:
    """The reverse, for a downgrade: the run-shaped counters the code before 0007 wrote."""
    return {
        "requests": progress.get("requests", 0),
        "failed_requests": progress.get("failed_requests", 0),
        "prompt_tokens": progress.get("prompt_tokens", 0),
        "completion_tokens": progress.get("completion_tokens", 0),
        "candidates": progress.get("done", 0),
        "accepted": progress.get("judged", 0),
        "rejected": progress.get("unjudged", 0),
        "judged": progress.get("judged", 0),
        "unjudged": progress.get("unjudged", 0),
        "ratings": dict(progress.get("ratings") or {}),
    }


def _event_as_job(kind: str, data: dict[str, Any], total: int) -> tuple[str, dict[str, Any]]:
    if kind == "counters":
        return "progress", _progress(data, total)
    if kind == "end":
        head = {k: data.get(k) for k in ("status", "stop_reason", "error")}
        return "end", {**head, **_progress(data, total)}
    return kind, data


def _event_as_run(kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if kind == "progress":
        return "counters", _counters(data)
    if kind == "end":
        head = {k: data.get(k) for k in ("status", "stop_reason", "error")}
        return "end", {**head, **_counters(data)}
    return kind, data


def _move_out_of_runs(conn: Connection) -> None:
    run, run_event, job, job_event, judgement, task = _tables()
    rows = conn.execute(
        sa.select(run).where(run.c.strategy == JUDGEMENT).order_by(run.c.id)
    ).mappings()
    moved: list[int] = []
    for r in rows.all():
        state = dict(r["state"] or {})
        lease = {c: r[c] for c in LEASE_COLUMNS if c in run.c}
        conn.execute(
            sa.insert(job).values(
                id=r["id"],
                former_run_id=r["id"],
                dataset_id=r["dataset_id"],
                backend=r["backend"],
                model=r["model"],
                params=r["params"] or {},
                status=r["status"],
                stop_reason=state.get("stop_reason"),
                error=r["error"],
                total=r["target"],
                done=r["candidates"],
                judged=r["accepted"],
                unjudged=r["rejected"],
                ratings=dict(state.get("ratings") or {}),
                requests=r["requests"],
                failed_requests=r["failed_requests"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
                cost=r["cost"],
                state={k: v for k, v in state.items() if k not in MOVED_STATE},
                worker_id=r["worker_id"],
                lease_expires_at=r["lease_expires_at"],
                # Claims so far: each claim executed the job once, and claims made before
                # 0006 added the column left it at 0.
                lease_epoch=max(
                    int(lease.get("lease_epoch") or 0), int(state.get("executions", 0))
                ),
                lost_count=lease.get("lost_count", 0),
                progressed=bool(lease.get("progressed", False)),
                created_at=r["created_at"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                updated_at=r["updated_at"],
            )
        )
        events = conn.execute(
            sa.select(run_event).where(run_event.c.run_id == r["id"]).order_by(run_event.c.id)
        ).mappings()
        copies = []
        for e in events.all():
            kind, data = _event_as_job(e["kind"], dict(e["data"] or {}), r["target"])
            copies.append(
                {
                    "id": e["id"],  # kept, so a client's Last-Event-ID still means the same place
                    "judgement_job_id": r["id"],
                    "kind": kind,
                    "data": data,
                    "created_at": e["created_at"],
                }
            )
        if copies:
            conn.execute(sa.insert(job_event), copies)
        moved.append(r["id"])
    for ids in _chunks(moved):
        conn.execute(
            sa.update(judgement)
            .where(judgement.c.run_id.in_(ids))
            .values(judgement_job_id=judgement.c.run_id, run_id=None)
        )
        # A judgement job made no tasks; this only keeps SQLite (no cascades here) consistent.
        conn.execute(sa.update(task).where(task.c.run_id.in_(ids)).values(run_id=None))
        conn.execute(sa.delete(run_event).where(run_event.c.run_id.in_(ids)))
        conn.execute(sa.delete(run).where(run.c.id.in_(ids)))
    if moved and conn.dialect.name == "postgresql":
        # Explicit ids do not advance a sequence: new jobs and events must start past them.
        for table in ("judgement_job", "judgement_event"):
            conn.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            )


def _move_back_to_runs(conn: Connection) -> None:
    """The downgrade: each judgement job becomes a run of strategy `judgement` again, under its
    former run id while no run has taken that id, under a new one otherwise."""
    run, run_event, job, job_event, judgement, _task = _tables()
    rows = conn.execute(sa.select(job).order_by(job.c.id)).mappings()
    for r in rows.all():
        state = {
            **dict(r["state"] or {}),
            "ratings": dict(r["ratings"] or {}),
            "judged": r["judged"],
            "unjudged": r["unjudged"],
        }
        if r["stop_reason"] is not None:
            state["stop_reason"] = r["stop_reason"]
        values: dict[str, Any] = {
            "dataset_id": r["dataset_id"],
            "strategy": JUDGEMENT,
            "backend": r["backend"],
            "model": r["model"],
            "params": r["params"] or {},
            "target": r["total"],
            "status": r["status"],
            "requests": r["requests"],
            "failed_requests": r["failed_requests"],
            "prompt_tokens": r["prompt_tokens"],
            "completion_tokens": r["completion_tokens"],
            "cost": r["cost"],
            "candidates": r["done"],
            "accepted": r["judged"],
            "rejected": r["unjudged"],
            "rejected_by_reason": {},
            "instances": 0,
            "state": state,
            "error": r["error"],
            "worker_id": r["worker_id"],
            "lease_expires_at": r["lease_expires_at"],
            "created_at": r["created_at"],
            "started_at": r["started_at"],
            "finished_at": r["finished_at"],
            "updated_at": r["updated_at"],
            **{c: r[c] for c in LEASE_COLUMNS if c in run.c},
        }
        former = r["former_run_id"]
        taken = (
            former is None or conn.execute(sa.select(run.c.id).where(run.c.id == former)).first()
        )
        if taken:
            run_id = conn.execute(sa.insert(run).values(values).returning(run.c.id)).scalar_one()
        else:
            conn.execute(sa.insert(run).values(id=former, **values))
            run_id = former
        events = conn.execute(
            sa.select(job_event)
            .where(job_event.c.judgement_job_id == r["id"])
            .order_by(job_event.c.id)
        ).mappings()
        copies = []
        for e in events.all():
            kind, data = _event_as_run(e["kind"], dict(e["data"] or {}))
            copies.append(
                {"run_id": run_id, "kind": kind, "data": data, "created_at": e["created_at"]}
            )
        if copies:
            conn.execute(sa.insert(run_event), copies)
        conn.execute(
            sa.update(judgement)
            .where(judgement.c.judgement_job_id == r["id"])
            .values(run_id=run_id, judgement_job_id=None)
        )
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('run', 'id'), "
                "(SELECT coalesce(max(id), 0) + 1 FROM run), false)"
            )
        )
