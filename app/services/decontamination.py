"""Decontamination: a dataset stays clean of the evaluation datasets it names.

A task is `contaminated` when the ROUGE-L F1 of its instruction plus first input
(`app.models.holdout_text`) against some accepted task of those datasets is greater than the
dataset's `decontamination_threshold` (default 0.7, the novelty filter's bar: a near-copy, not a
shared topic). Scores come from the novelty index (`filters.novelty`), exact and CJK aware. The
mark names the evaluation dataset, task and score; exports and fine-tune files leave marked tasks
out unless asked.

When the check runs:
- when a run accepts a task: `mark_accepted` in the run's commit transaction;
- lazily before anything reads the marks (task browser, exports and fine-tune files, bundles,
  stats, the dataset's counts): `ensure_clean` compares what the last pass saw of the evaluation
  sets (per set: accepted tasks, highest id, latest change) with what is there now. A change (tasks
  imported, edited, reviewed or generated in an evaluation set, a set deleted, the list or the
  threshold changed) re-checks every task; otherwise only the dataset's tasks added or changed
  since the last pass are checked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.errors import InvalidInput, NotFound
from app.models import Dataset, Task, TaskStatus, holdout_text
from app.schemas import ErrorItem
from filters.novelty import NoveltyIndex

METHOD = "rouge_l"
BATCH = 1000


def check_evaluation_sets(
    *, session: Session, dataset_name: str, names: Sequence[str], field: str
) -> list[str]:
    """The names, deduplicated in order. An unknown name is a 404 naming the entry, as an
    unknown model is (the request is well formed; what it names does not exist); the dataset
    itself is a 422."""
    for i, name in enumerate(names):
        if name == dataset_name:
            raise InvalidInput(
                f"{field}.{i}: a dataset cannot be its own evaluation set.",
                errors=[ErrorItem(field=f"{field}.{i}", reason="a dataset cannot name itself")],
            )
    missing = [
        ErrorItem(field=f"{field}.{i}", reason=f"no dataset named '{name}'")
        for i, name in enumerate(names)
        if session.exec(select(Dataset.id).where(Dataset.name == name)).first() is None
    ]
    if missing:
        raise NotFound(
            f"{field}: {missing[0].reason} ({missing[0].field}); name existing evaluation "
            "datasets (GET /v1/datasets).",
            errors=missing,
        )
    return list(dict.fromkeys(names))


# --- the evaluation pool ---


def _view(session: Session, dataset: Dataset) -> dict[str, Any]:
    """What the evaluation sets hold now, compactly: a change in any of them changes this."""
    sets: dict[str, Any] = {}
    for name in dataset.decontaminate_against:
        eval_id = session.exec(select(Dataset.id).where(Dataset.name == name)).first()
        if eval_id is None:
            sets[name] = None
            continue
        count, top, latest = session.exec(
            select(  # type: ignore[call-overload]
                sa.func.count(), sa.func.max(col(Task.id)), sa.func.max(col(Task.updated_at))
            ).where(Task.dataset_id == eval_id, Task.status == TaskStatus.accepted.value)
        ).one()
        sets[name] = [eval_id, count, top, _iso(latest)]
    return {"threshold": dataset.decontamination_threshold, "sets": sets}


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


class _Pool:
    """The evaluation tasks of one view, indexed; owners maps a task id to its dataset's name."""

    def __init__(self, items: Iterable[tuple[int, str, str]]) -> None:
        self.owners: dict[int, str] = {}
        self.index = NoveltyIndex()
        pairs = []
        for task_id, name, text in items:
            self.owners[task_id] = name
            pairs.append((task_id, text))
        self.index.add_many(pairs)


_pools: dict[int, tuple[str, _Pool]] = {}  # dataset id -> (view, pool)
_pools_lock = threading.Lock()


def _pool(session: Session, dataset: Dataset, view: dict[str, Any]) -> _Pool:
    """The index of the evaluation tasks, built once per view of the evaluation sets."""
    assert dataset.id is not None
    stamp = repr(view)
    with _pools_lock:
        cached = _pools.get(dataset.id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    ids = {v[0]: name for name, v in view["sets"].items() if v is not None}
    rows: list[Any] = list(
        session.exec(
            select(Task.id, Task.dataset_id, Task.instruction, Task.instances).where(  # type: ignore[call-overload]
                col(Task.dataset_id).in_(list(ids)), Task.status == TaskStatus.accepted.value
            )
        ).all()
    )
    pool = _Pool((i, ids[d], holdout_text(text, inst)) for i, d, text, inst in rows)
    with _pools_lock:
        _pools[dataset.id] = (stamp, pool)
    return pool


def _marks(
    pool: _Pool, threshold: float, tasks: Iterable[tuple[int, str, list[dict[str, str]]]]
) -> dict[int, dict[str, Any] | None]:
    """Each task's contamination (None when clean)."""
    found: dict[int, dict[str, Any] | None] = {}
    for task_id, instruction, instances in tasks:
        verdict = pool.index.check(holdout_text(instruction, instances), threshold=threshold, k=1)
        if verdict.novel or not verdict.nearest:
            found[task_id] = None
            continue
        match = verdict.nearest[0]
        found[task_id] = {
            "dataset": pool.owners.get(int(match.key)),  # type: ignore[call-overload]
            "task_id": match.key,
            "method": METHOD,
            "score": round(match.score, 4),
            "threshold": threshold,
        }
    return found


def _write(session: Session, marks: dict[int, dict[str, Any] | None]) -> None:
    if not marks:
        return
    session.connection().execute(
        sa.update(Task)
        .where(col(Task.id) == sa.bindparam("task_id"))
        .values(
            contaminated=sa.bindparam("flag"),
            contamination=sa.bindparam("why", type_=Task.__table__.c.contamination.type),  # type: ignore[attr-defined]
        ),
        [{"task_id": i, "flag": why is not None, "why": why} for i, why in marks.items()],
    )


# --- checks ---


def mark_accepted(
    session: Session, *, dataset_id: int, tasks: Sequence[tuple[int, str, list[dict[str, str]]]]
) -> int:
    """Mark tasks a run is accepting, inside its commit transaction; returns how many are
    contaminated. Costs one small query when the dataset names no evaluation set."""
    if not tasks:
        return 0
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or not dataset.decontaminate_against:
        return 0
    pool = _pool(session, dataset, _view(session, dataset))
    marks = {i: why for i, why in _marks(pool, dataset.decontamination_threshold, tasks).items()}
    _write(session, {i: why for i, why in marks.items() if why is not None})
    return sum(why is not None for why in marks.values())


def ensure_clean(session: Session, dataset: Dataset) -> None:
    """Bring the dataset's marks up to date (see the module docstring) and commit."""
    assert dataset.id is not None
    state = dataset.decontamination_state or {}
    if not dataset.decontaminate_against and not state:
        return
    view = _view(session, dataset)
    full = state.get("view") != view
    query = select(Task.id, Task.instruction, Task.instances, Task.updated_at).where(  # type: ignore[call-overload]
        Task.dataset_id == dataset.id, Task.status == TaskStatus.accepted.value
    )
    if not full:
        since = datetime.fromisoformat(state["updated_at"]) if state.get("updated_at") else None
        changed = col(Task.id) > state.get("task_id", 0)
        query = query.where(sa.or_(changed, col(Task.updated_at) > since) if since else changed)
    pending: list[Any] = list(session.exec(query.order_by(col(Task.id))).all())
    if not pending and not full:
        return
    if full:  # marks of tasks no longer accepted, or of a set no longer named, go too
        session.connection().execute(
            sa.update(Task)
            .where(col(Task.dataset_id) == dataset.id, col(Task.contaminated))
            .values(contaminated=False, contamination=None)
        )
    top = state.get("task_id", 0)
    latest = state.get("updated_at")
    if dataset.decontaminate_against:
        pool = _pool(session, dataset, view)
        for start in range(0, len(pending), BATCH):
            batch = pending[start : start + BATCH]
            _write(
                session,
                _marks(
                    pool, dataset.decontamination_threshold, ((i, t, x) for i, t, x, _ in batch)
                ),
            )
    for task_id, _, _, updated in pending:
        top = max(top, task_id)
        stamp = _iso(updated)
        latest = stamp if latest is None or (stamp and stamp > latest) else latest
    dataset.decontamination_state = (
        {"view": view, "task_id": top, "updated_at": latest}
        if dataset.decontaminate_against
        else {}
    )
    session.add(dataset)
    session.commit()


def ensure_clean_by_id(engine: sa.engine.Engine, dataset_id: int) -> None:
    """`ensure_clean` in a session of its own (exports own their connection)."""
    with Session(engine, expire_on_commit=False) as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is not None:
            ensure_clean(session, dataset)


def contaminated_count(session: Session, dataset: Dataset) -> int:
    return session.exec(
        select(sa.func.count()).where(
            Task.dataset_id == dataset.id,
            Task.status == TaskStatus.accepted.value,
            col(Task.contaminated),
        )
    ).one()
