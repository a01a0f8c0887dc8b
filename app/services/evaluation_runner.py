"""Executing an evaluation: a worker claims it with a lease (app/leases.py) and fills the
samples in three phases, each skipping what is stored already, so a job taken over after a kill
redoes nothing it had finished:

1. answers: every model answers every sample (greedy); ROUGE-L F1 against the reference, as the
   Self-Instruct paper reports it;
2. ratings (with a `judge`): the judge rates each answer on the paper's A-D scale;
3. pairwise (a judge and two or more models): each pair of answers is compared twice, once in
   each order. A model wins a task only when both orders prefer it; anything else (including a
   judge that always picks one position) is a tie.

A request that fails after the endpoint's retries is not an answer: an empty text would score
ROUGE-L 0, be rated and be compared, measuring the endpoint instead of the model. So a failed
answer, rating or comparison is stored as failed (app/services/evaluation_metrics.py leaves it
out of every figure) and asked again when the evaluation is taken up again; what depends on a
failed answer waits for it. Each chunk of samples is stored with the recomputed figures, while
this worker still holds the lease, which it renews on its own clock (`leases.kept`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import faults
from app.errors import NotFound
from app.leases import Lease, LeaseHolder, kept, release
from app.llm import ModelEntry, backend_for, find_model
from app.models import Evaluation, EvaluationEvent, EvaluationSample, EvaluationStatus, utcnow
from app.services.evaluation_metrics import (
    answered,
    combine_orders,
    evaluation_progress,
    evaluation_results,
    pair_key,
    rated,
)
from app.settings import Settings
from filters.language import detect_language
from filters.rouge import rouge_l
from generators.base import Generation, SamplingParams
from generators.judge_prompts import JudgeTask, compare, judge_task
from training.data import task_to_messages

log = logging.getLogger("selfinstruct.evaluations")

CHUNK = 8  # samples per stored step: the most a kill can lose, and the progress granularity
ERROR_CHARS = 300  # a failed request's error, as stored with the sample
ORDERS = ("a_shown_first", "b_shown_first")  # a pairwise verdict's two requests


class _Lost(Exception):
    """Cancelled, or taken over by another worker: stop without storing."""


class _Stopped(Exception):
    """The worker is stopping: what is stored stays, the rest is for the next worker."""


def _store(
    engine: Engine,
    *,
    evaluation_id: int,
    lease: Lease,
    changed: Sequence[EvaluationSample],
    kind: str = "progress",
) -> None:
    """One chunk's results, the refreshed metrics and a progress event, in one transaction,
    only while this worker still holds the evaluation."""
    with Session(engine, expire_on_commit=False) as session:
        evaluation = session.exec(
            select(Evaluation).where(Evaluation.id == evaluation_id).with_for_update()
        ).one()
        if not lease.holds(evaluation):
            raise _Lost
        if changed:  # the holder's death after this is not a lost attempt (app/leases.py)
            evaluation.progressed = True
        table = EvaluationSample.__table__  # type: ignore[attr-defined]
        if changed:
            session.connection().execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("sample_id"))
                .values(
                    answers=sa.bindparam("new_answers", type_=table.c.answers.type),
                    pairwise=sa.bindparam("new_pairwise", type_=table.c.pairwise.type),
                ),
                [
                    {"sample_id": s.id, "new_answers": s.answers, "new_pairwise": s.pairwise}
                    for s in changed
                ],
            )
        samples = list(
            session.exec(
                select(EvaluationSample).where(EvaluationSample.evaluation_id == evaluation_id)
            )
        )
        progress = evaluation_progress(evaluation, samples)
        evaluation.progress = progress.model_dump()
        evaluation.results = evaluation_results(evaluation, samples)
        evaluation.updated_at = utcnow()
        session.add(evaluation)
        session.add(
            EvaluationEvent(evaluation_id=evaluation_id, kind=kind, data=progress.model_dump())
        )
        if changed:
            faults.point("evaluation:committing")
        session.commit()


def _finish(
    engine: Engine,
    *,
    evaluation_id: int,
    lease: Lease,
    status: EvaluationStatus,
    error: str | None = None,
) -> None:
    """The fenced finish: only the lease's holder ends the evaluation; a stale holder's
    finish is refused and logged."""
    with Session(engine, expire_on_commit=False) as session:
        evaluation = session.exec(
            select(Evaluation).where(Evaluation.id == evaluation_id).with_for_update()
        ).one()
        if evaluation.status != EvaluationStatus.running or lease.refuses(
            evaluation, f"finish ({status.value})"
        ):
            return
        evaluation.status = status
        evaluation.error = error
        evaluation.finished_at = evaluation.updated_at = utcnow()
        evaluation.lease_expires_at = None
        session.add(evaluation)
        session.add(
            EvaluationEvent(
                evaluation_id=evaluation_id,
                kind="end",
                data={"status": status.value, "error": error, **evaluation.results},
            )
        )
        faults.point("evaluation:finishing")
        session.commit()


def _chat(entry: ModelEntry) -> bool:
    return entry.mode == "chat"


async def _answer(
    settings: Settings,
    entry: ModelEntry,
    chunk: list[EvaluationSample],
    max_tokens: int,
) -> None:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    prompts: list[Any] = [task_to_messages(s.instruction, s.input) for s in chunk]
    answers = await backend_for(settings, entry).generate(prompts, params, return_exceptions=True)
    for sample, answer in zip(chunk, answers, strict=True):
        stored: dict[str, Any]
        if isinstance(answer, Generation):
            score = rouge_l(answer.text, sample.reference)
            stored = {"text": answer.text, "failed": False, "rouge_l": score}
        else:  # not an answer: no score, no rating, no comparison until it is asked again
            stored = {"text": "", "failed": True, "rouge_l": None, "error": _error(answer)}
        # A comparison made against this model's earlier (failed) answer is stale.
        sample.pairwise = {
            k: v
            for k, v in sample.pairwise.items()
            if not (k.startswith(f"{entry.id}|") or k.endswith(f"|{entry.id}"))
        }
        sample.answers = {**sample.answers, entry.id: stored}


def _error(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:ERROR_CHARS]


async def _rate(
    settings: Settings, judge: ModelEntry, model: str, sample: EvaluationSample
) -> None:
    answer = sample.answers[model]
    task = JudgeTask(
        instruction=sample.instruction,
        instances=[{"input": sample.input, "output": answer["text"]}],
        language=detect_language(sample.instruction),
    )
    try:
        judgement = await judge_task(backend_for(settings, judge), task, chat=_chat(judge))
        rating, why, failed = judgement.rating, judgement.rationale, False
    except Exception as exc:  # failed after the backend's retries: asked again on resume
        rating, why, failed = None, f"the judge request failed: {_error(exc)}", True
    sample.answers = {
        **sample.answers,
        model: {**answer, "rating": rating, "rationale": why, "judge_failed": failed},
    }


async def _compare(
    settings: Settings, judge: ModelEntry, a: str, b: str, sample: EvaluationSample
) -> None:
    """Both orders, or only the ones whose request failed before: an order the judge answered
    is kept."""
    backend = backend_for(settings, judge)
    language = detect_language(sample.instruction)
    stored = sample.pairwise.get(pair_key(a, b), {})
    todo = stored.get("failed_orders") or ORDERS
    verdicts: dict[str, str | None] = {o: stored.get(o) for o in ORDERS}
    failed: list[str] = []
    for order in ORDERS:
        if order not in todo:
            continue
        try:
            preference = await compare(
                backend,
                sample.instruction,
                sample.input,
                sample.answers[a]["text"],
                sample.answers[b]["text"],
                language=language,
                chat=_chat(judge),
                swap=order == "b_shown_first",
            )
            verdicts[order] = preference.winner
        except Exception:  # failed after the backend's retries: not a verdict
            verdicts[order] = None
            failed.append(order)
    first, second = (verdicts[o] for o in ORDERS)
    sample.pairwise = {
        **sample.pairwise,
        pair_key(a, b): {
            **verdicts,
            "winner": None if failed else combine_orders(first, second),
            "failed_orders": failed,
        },
    }


async def execute_evaluation(
    *, engine: Engine, settings: Settings, evaluation_id: int, worker: LeaseHolder
) -> None:
    """Drive a claimed evaluation to its end; stored work is never redone."""
    with Session(engine, expire_on_commit=False) as session:
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        samples = list(
            session.exec(
                select(EvaluationSample)
                .where(EvaluationSample.evaluation_id == evaluation_id)
                .order_by(col(EvaluationSample.position))
            )
        )
    assert worker.lease is not None, "an evaluation is executed under its claim"
    store = {"engine": engine, "evaluation_id": evaluation_id, "lease": worker.lease}
    try:
        entries = [find_model(settings, m, engine) for m in evaluation.models]
        judge = find_model(settings, evaluation.judge, engine) if evaluation.judge else None
    except NotFound as exc:  # a model removed from the settings since it was queued
        _finish(**store, status=EvaluationStatus.failed, error=exc.detail)  # type: ignore[arg-type]
        return
    max_tokens = int(evaluation.params.get("max_tokens", 128))
    try:
        async with kept(
            engine, worker.lease, lease_seconds=settings.worker_lease_seconds
        ) as keeper:

            async def step(chunk: list[EvaluationSample], work: Any) -> None:
                if keeper.lost.is_set():
                    raise _Lost
                if worker.stopping:
                    raise _Stopped
                await work
                faults.point("evaluation:running")
                await asyncio.to_thread(_store, changed=chunk, **store)  # type: ignore[arg-type]

            # Each phase takes what is missing or failed; what needs a failed answer waits.
            for entry in entries:
                todo = [s for s in samples if not answered(s.answers.get(entry.id))]
                for start in range(0, len(todo), CHUNK):
                    chunk = todo[start : start + CHUNK]
                    await step(chunk, _answer(settings, entry, chunk, max_tokens))
            if judge is not None:
                for model in evaluation.models:
                    todo = [
                        s
                        for s in samples
                        if answered(s.answers.get(model)) and not rated(s.answers[model])
                    ]
                    for start in range(0, len(todo), CHUNK):
                        chunk = todo[start : start + CHUNK]
                        await step(
                            chunk,
                            asyncio.gather(*(_rate(settings, judge, model, s) for s in chunk)),
                        )
                for a, b in combinations(evaluation.models, 2):
                    todo = [
                        s
                        for s in samples
                        if answered(s.answers.get(a))
                        and answered(s.answers.get(b))
                        and (
                            pair_key(a, b) not in s.pairwise
                            or s.pairwise[pair_key(a, b)].get("failed_orders")
                        )
                    ]
                    for start in range(0, len(todo), CHUNK):
                        chunk = todo[start : start + CHUNK]
                        await step(
                            chunk,
                            asyncio.gather(*(_compare(settings, judge, a, b, s) for s in chunk)),
                        )
    except _Lost:
        log.info("evaluation %s: cancelled or taken over; stopping", evaluation_id)
        return
    except _Stopped:  # a graceful stop hands it back at once, at no cost to its attempts
        await asyncio.to_thread(release, engine, worker.lease)
        return
    except Exception as exc:
        log.exception("evaluation %s failed", evaluation_id)
        _finish(**store, status=EvaluationStatus.failed, error=str(exc))  # type: ignore[arg-type]
        return
    _finish(**store, status=EvaluationStatus.succeeded)  # type: ignore[arg-type]
