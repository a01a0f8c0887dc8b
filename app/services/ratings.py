"""Ratings as filters and fields: the SQL the task browser, stats and exports share, and the
latest judgement of tasks as clients see it. (Judgement jobs: app/services/judgement_jobs.py.)"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.models import Task, TaskJudgement
from app.schemas.judging import JudgementPublic
from generators.judge_prompts import ratings_at_least


def rating_clause(
    *, ratings: Sequence[str] | None = None, judged: bool | None = None
) -> list[sa.ColumnElement[bool]]:
    """SQL conditions on a task's latest judgement: its rating among `ratings`, and judged
    (any judgement stored, an unjudged one included) or never judged."""
    clauses: list[sa.ColumnElement[bool]] = []
    if ratings is not None:
        clauses.append(col(Task.rating).in_(list(ratings)))
    if judged is not None:
        clauses.append(
            col(Task.judgement_id).is_not(None) if judged else col(Task.judgement_id).is_(None)
        )
    return clauses


def min_rating_clause(min_rating: str | None) -> list[sa.ColumnElement[bool]]:
    """Tasks rated `min_rating` or better (A best); none when no minimum is asked."""
    return [] if min_rating is None else rating_clause(ratings=ratings_at_least(min_rating))


def judgements_of(
    session: Session, judgement_ids: Sequence[int | None]
) -> dict[int, TaskJudgement]:
    """The judgements named by tasks' `judgement_id`, in one query (a page of the browser)."""
    wanted = sorted({i for i in judgement_ids if i is not None})
    if not wanted:
        return {}
    rows = session.exec(select(TaskJudgement).where(col(TaskJudgement.id).in_(wanted)))
    return {j.id: j for j in rows if j.id is not None}


def judgement_public(judgement: TaskJudgement | None) -> JudgementPublic | None:
    if judgement is None:
        return None
    return JudgementPublic.model_validate(judgement, from_attributes=True)


def task_history(session: Session, task_id: int) -> list[TaskJudgement]:
    """Every judgement of a task, newest first."""
    return list(
        session.exec(
            select(TaskJudgement)
            .where(TaskJudgement.task_id == task_id)
            .order_by(col(TaskJudgement.id).desc())
        )
    )
