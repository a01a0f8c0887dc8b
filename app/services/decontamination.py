"""Decontamination: a dataset stays clean of the evaluation datasets it names.

A task is `contaminated` when the ROUGE-L F1 of its instruction plus first input
(`app.models.holdout_text`) against some accepted task of those datasets is greater than the
dataset's `decontamination_threshold` (default 0.7, the novelty filter's bar: a near-copy, not a
shared topic). Scores come from the novelty index (`filters.novelty`), exact and CJK aware. The
mark names the evaluation dataset, task and score; exports and fine-tune files leave marked tasks
out unless asked.

Marks are brought up to date by the writes that make them stale, never by a read (a GET only
reads, so it may run on a read-only connection):
- a run's commit marks the tasks it accepts (`mark_accepted`, in its transaction);
- a seed import, a review or an edit refreshes its dataset's marks in its own transaction
  (`commit_with_marks`); a change of the evaluation list or threshold, right after it commits;
- once a write to a dataset's tasks has committed (a run's commit group too) or the dataset is
  deleted, the datasets that name it as an evaluation set are refreshed, each in a transaction
  of its own (`refresh_dependents`): a transaction holds one dataset's lock at a time
  (app/services/dataset_lock.py). Nothing is missed between the two sides: a write commits
  before it looks for the datasets that name it, and a new evaluation list commits before its
  refresh reads the sets, so whichever comes second sees the other;
- at start-up, every dataset (`refresh_all`): a process killed between a commit and the refresh
  of the datasets that name its dataset left them behind.

A refresh compares what the last one saw of the evaluation sets (per set: its id, its change
clock, its highest accepted task id and how many) with what is there now. The threshold, the
list, or a set's id or clock changed (tasks imported, edited or reviewed in a set, a set
deleted): every task is checked again. Only the highest ids grew (a run accepted tasks in a
set): every task is checked against the new evaluation tasks alone. Either way, the dataset's
own tasks added or changed since the last refresh are checked against all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.db import retry_transient
from app.errors import InvalidInput, NotFound
from app.models import Dataset, Task, TaskStatus, holdout_text
from app.schemas.common import ErrorItem
from app.services.dataset_lock import changed_since, lock_dataset
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
    """What the evaluation sets hold now, compactly: per set its id, its change clock, its
    highest accepted task id and how many it accepts (one statement, one snapshot), or None
    for a name no dataset has."""
    sets: dict[str, Any] = {}
    for name in dataset.decontaminate_against:
        row = session.exec(
            select(  # type: ignore[call-overload]
                Dataset.id,
                Dataset.updated_at,
                sa.func.coalesce(sa.func.max(col(Task.id)), 0),
                sa.func.count(col(Task.id)),
            )
            .select_from(Dataset)
            .outerjoin(
                Task,
                sa.and_(
                    col(Task.dataset_id) == col(Dataset.id),
                    col(Task.status) == TaskStatus.accepted.value,
                ),
            )
            .where(Dataset.name == name)
            .group_by(col(Dataset.id), col(Dataset.updated_at))
        ).first()
        sets[name] = None if row is None else [row[0], _iso(row[1]), row[2], row[3]]
    return {"threshold": dataset.decontamination_threshold, "sets": sets}


def _grown(
    before: dict[str, Any] | None, now: dict[str, Any]
) -> list[tuple[int, int, int, int]] | None:
    """The sets that only gained accepted tasks since `before` (a run's commits leave a set's
    clock alone), as (set id, highest id before, highest id now, tasks gained); None when
    anything else changed, which a full pass answers."""
    if before is None or before.get("threshold") != now["threshold"]:
        return None
    if set(before.get("sets", {})) != set(now["sets"]):
        return None
    grown = []
    for name, current in now["sets"].items():
        earlier = before["sets"][name]
        if current is None or earlier is None:
            if current != earlier:
                return None
            continue
        if current[:2] != earlier[:2] or current[2] < earlier[2]:
            return None
        if current[2] > earlier[2] or current[3] != earlier[3]:
            grown.append((current[0], earlier[2], current[2], current[3] - earlier[3]))
    return grown


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


def refresh(session: Session, dataset: Dataset) -> None:
    """Bring the dataset's marks up to date (see the module docstring). The caller holds the
    dataset's lock, read `dataset` under it, and commits."""
    assert dataset.id is not None
    state = dataset.decontamination_state or {}
    if not dataset.decontaminate_against:
        if state:  # the list was emptied: no marks at all
            _clear(session, dataset.id)
            dataset.decontamination_state = {}
            session.add(dataset)
        return
    view = _view(session, dataset)
    threshold = dataset.decontamination_threshold
    grown = _grown(state.get("view"), view)
    fresh: list[Any] | None = []
    if grown:
        fresh = _new_evaluation_tasks(session, grown)
        if fresh is None:
            grown = None
    accepted = (
        select(Task.id, Task.instruction, Task.instances, Task.contamination)  # type: ignore[call-overload]
        .where(Task.dataset_id == dataset.id, Task.status == TaskStatus.accepted.value)
        .order_by(col(Task.id))  # task rows are written in id order
    )
    top = 0
    if grown is None:  # a full pass: marks of tasks no longer accepted, or of a set gone, go too
        _clear(session, dataset.id)
        pending: list[Any] = list(session.exec(accepted).all())
    else:
        top = state.get("task_id", 0)
        seen = datetime.fromisoformat(state["clock"]) if state.get("clock") else None
        mine = col(Task.id) > top
        pending = list(
            session.exec(accepted.where(sa.or_(mine, changed_since(seen)) if seen else mine)).all()
        )
    if pending:
        pool = _pool(session, dataset, view)
        marks = _marks(pool, threshold, ((i, t, x) for i, t, x, _ in pending))
        _write(session, marks if grown is not None else {i: m for i, m in marks.items() if m})
        top = max(top, *(i for i, _, _, _ in pending))
    if grown and fresh:  # only the new evaluation tasks can add marks to the other tasks
        _mark_against_new(session, dataset, view, fresh, accepted, {i for i, *_ in pending})
    dataset.decontamination_state = {
        "view": view,
        "task_id": top,
        "clock": _iso(dataset.updated_at),
    }
    session.add(dataset)


def _new_evaluation_tasks(
    session: Session, grown: list[tuple[int, int, int, int]]
) -> list[Any] | None:
    """The accepted tasks the grown sets gained; None when the counts say more than tasks
    were added (a writer that bypassed the dataset's clock), which a full pass answers."""
    found: list[Any] = []
    for set_id, before, now, gained in grown:
        rows: list[Any] = list(
            session.exec(
                select(Task.id, Task.dataset_id, Task.instruction, Task.instances).where(  # type: ignore[call-overload]
                    Task.dataset_id == set_id,
                    Task.status == TaskStatus.accepted.value,
                    col(Task.id) > before,
                )
            ).all()
        )
        if sum(1 for task_id, *_ in rows if task_id <= now) != gained:
            return None
        found.extend(rows)
    return found


def _mark_against_new(
    session: Session,
    dataset: Dataset,
    view: dict[str, Any],
    fresh: list[Any],
    accepted: Any,
    checked: set[int],
) -> None:
    """Check the dataset's tasks not checked yet against the evaluation tasks added since the
    last refresh; a task gets a mark, or a higher-scoring one, from them."""
    names = {v[0]: name for name, v in view["sets"].items() if v is not None}
    pool = _Pool((i, names[d], holdout_text(text, inst)) for i, d, text, inst in fresh)
    rows = [r for r in session.exec(accepted).all() if r[0] not in checked]
    found = _marks(pool, dataset.decontamination_threshold, ((i, t, x) for i, t, x, _ in rows))
    earlier = {i: why for i, _, _, why in rows}
    _write(
        session,
        {
            i: why
            for i, why in found.items()
            if why is not None and (earlier[i] is None or why["score"] > earlier[i]["score"])
        },
    )


def _clear(session: Session, dataset_id: int) -> None:
    session.connection().execute(
        sa.update(Task)
        .where(col(Task.dataset_id) == dataset_id, col(Task.contaminated))
        .values(contaminated=False, contamination=None)
    )


def commit_with_marks(session: Session, dataset: Dataset) -> None:
    """Commit a write to the dataset's tasks (its lock held) with its marks brought up to date,
    then refresh the datasets that name it as an evaluation set."""
    session.flush()
    refresh(session, dataset)
    session.commit()
    refresh_dependents(session, dataset.name)


def refresh_locked(session: Session, dataset: Dataset) -> None:
    """`refresh` in a transaction of its own: take the lock, read the dataset again, commit."""
    lock_dataset(session, dataset)
    refresh(session, dataset)
    session.commit()


def _dependents(session: Session, name: str) -> list[int]:
    """The datasets that name `name` as an evaluation set, by id (the order they are locked)."""
    rows = session.exec(select(Dataset.id, Dataset.decontaminate_against)).all()
    return sorted(i for i, against in rows if i is not None and name in (against or []))


def refresh_dependents(session: Session, name: str) -> None:
    """After a write to dataset `name` committed (or its deletion): the datasets that name it,
    each in a transaction of its own."""
    for dataset_id in _dependents(session, name):
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            continue
        try:
            refresh_locked(session, dataset)
        except NotFound:  # deleted meanwhile
            session.rollback()


def refresh_dependents_of(engine: Engine, dataset_id: int) -> None:
    """`refresh_dependents` for a run's commit group, each dataset retried on transient
    errors as the commit itself is."""
    with Session(engine) as session:
        name = session.exec(select(Dataset.name).where(Dataset.id == dataset_id)).first()
        ids = _dependents(session, name) if name is not None else []
    for dependent in ids:
        _refresh_retrying(engine, dependent)


def _refresh_retrying(engine: Engine, dataset_id: int) -> None:
    """`refresh_locked` in a session of its own, run again after a transient error."""

    def attempt() -> None:
        with Session(engine, expire_on_commit=False) as session:
            dataset = session.get(Dataset, dataset_id)
            if dataset is None:
                return
            try:
                refresh_locked(session, dataset)
            except NotFound:  # deleted meanwhile
                session.rollback()

    retry_transient(f"decontamination of dataset {dataset_id}", attempt)


def refresh_all(engine: Engine) -> None:
    """Every dataset that names evaluation sets or holds marks, at start-up."""
    with Session(engine) as session:
        ids = [
            i
            for i, against, state in session.exec(
                select(Dataset.id, Dataset.decontaminate_against, Dataset.decontamination_state)
            ).all()
            if i is not None and (against or state)
        ]
    for dataset_id in ids:
        _refresh_retrying(engine, dataset_id)


def contaminated_count(session: Session, dataset: Dataset) -> int:
    return session.exec(
        select(sa.func.count()).where(
            Task.dataset_id == dataset.id,
            Task.status == TaskStatus.accepted.value,
            col(Task.contaminated),
        )
    ).one()
