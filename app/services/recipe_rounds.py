"""A recipe's round table and stopping rules: what each round made, spent and won, read from its
children, and whether the recipe stops after it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.models import Evaluation, FineTuningJobRow, JudgementJob, Run, Task, TaskStatus
from app.schemas.recipes import StopRules
from app.services.stats import leading_word


def _children(children: dict[str, dict[str, Any]], round_no: int, kind: str) -> list[Any]:
    prefix = f"{round_no}:"
    return [c["id"] for k, c in children.items() if k.startswith(prefix) and c["kind"] == kind]


def diversity(instructions_and_nearest: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Mean highest ROUGE-L to the pool (the stored nearest neighbour's score, as the novelty
    filter measured it at acceptance) and distinct leading words over the tasks (a share)."""
    if not instructions_and_nearest:
        return {"mean_rouge_l_to_pool": None, "distinct_leading_words": None}
    scores = [
        max((float(m.get("score", 0.0)) for m in n), default=0.0)
        for _, n in instructions_and_nearest
    ]
    words = {leading_word(text) for text, _ in instructions_and_nearest}
    return {
        "mean_rouge_l_to_pool": sum(scores) / len(scores),
        "distinct_leading_words": len(words) / len(instructions_and_nearest),
    }


def round_row(
    engine: Engine,
    *,
    round_no: int,
    children: dict[str, dict[str, Any]],
    tuned_model: str | None,
) -> dict[str, Any]:
    """The round's row of the table (app/schemas/recipes.py RoundRow), without `stop`."""
    runs = [int(i) for i in _children(children, round_no, "run")]
    judgements = [int(i) for i in _children(children, round_no, "judgement")]
    versions = _children(children, round_no, "version")
    evaluations = [int(i) for i in _children(children, round_no, "evaluation")]
    with Session(engine) as session:
        tasks = (
            session.exec(
                select(Task.instruction, Task.nearest).where(  # type: ignore[call-overload]
                    col(Task.run_id).in_(runs), Task.status == TaskStatus.accepted
                )
            ).all()
            if runs
            else []
        )
        spend: list[Run | JudgementJob] = [
            *session.exec(select(Run).where(col(Run.id).in_(runs))).all(),
            *session.exec(select(JudgementJob).where(col(JudgementJob.id).in_(judgements))).all(),
        ]
        evaluation = session.get(Evaluation, evaluations[-1]) if evaluations else None
    pair = _pair(evaluation, tuned_model)
    return {
        "round": round_no,
        "runs": runs,
        "new_tasks": len(tasks),
        "version": versions[-1] if versions else None,
        "tuned_model": tuned_model,
        "evaluation": evaluation.id if evaluation else None,
        "against": evaluation.models[-1] if evaluation and len(evaluation.models) > 1 else None,
        "win_rate": pair.get("win_rate_a"),
        "ci_low": pair.get("ci_low"),
        "ci_high": pair.get("ci_high"),
        "compared": int(pair.get("compared", 0)),
        **diversity([(t, list(n or [])) for t, n in tasks]),
        "requests": sum(j.requests for j in spend),
        "tokens": sum(j.prompt_tokens + j.completion_tokens for j in spend),
        "cost": round(sum(j.cost for j in spend), 6),
        "stop": None,
    }


def _pair(evaluation: Evaluation | None, tuned_model: str | None) -> dict[str, Any]:
    """The tuned model's pairwise figures, as model_a (it is named first)."""
    if evaluation is None or tuned_model is None:
        return {}
    for pair in evaluation.results.get("pairwise", []):
        if pair.get("model_a") == tuned_model:
            return dict(pair)
    return {}


def tuned_model_of(engine: Engine, job_id: str) -> str | None:
    with Session(engine) as session:
        job = session.get(FineTuningJobRow, job_id)
        return job.fine_tuned_model if job else None


def stop_reason(rows: list[dict[str, Any]], rules: StopRules) -> str | None:
    """Which rule, if any, stops the recipe after the last of `rows` (the rounds so far)."""
    row, first = rows[-1], rows[0]
    budget = rules.budget
    spent = {
        "requests": sum(r["requests"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "cost": sum(r["cost"] for r in rows),
    }
    if (
        (budget.max_requests is not None and spent["requests"] >= budget.max_requests)
        or (budget.max_tokens is not None and spent["tokens"] >= budget.max_tokens)
        or (budget.max_cost is not None and spent["cost"] >= budget.max_cost)
    ):
        return "budget"
    if row["win_rate"] is not None and row["win_rate"] < rules.min_win_rate:
        return "win_rate_below_threshold"
    if row is not first:
        margin = rules.collapse_margin
        rouge, rouge0 = row["mean_rouge_l_to_pool"], first["mean_rouge_l_to_pool"]
        words, words0 = row["distinct_leading_words"], first["distinct_leading_words"]
        if rouge is not None and rouge0 is not None and rouge > rouge0 * (1 + margin):
            return "collapse"
        if words is not None and words0 is not None and words < words0 * (1 - margin):
            return "collapse"
    return None
