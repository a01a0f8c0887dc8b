"""Evaluations as jobs: models answer a frozen list of reference tasks, in the background.

Creating one checks everything (models, judge, dataset, references) and stores the reference
tasks as samples, so a bad request queues nothing and a later change to the dataset does not
change what is being measured. A worker claims it with a lease (app/leases.py) and fills the
samples in three phases, each skipping what is stored already, so a job taken over after a kill
redoes nothing it had finished:

1. answers: every model answers every sample (greedy); ROUGE-L F1 against the reference, as the
   Self-Instruct paper reports it;
2. ratings (with a `judge`): the judge rates each answer on the paper's A-D scale;
3. pairwise (a judge and two or more models): each pair of answers is compared twice, once in
   each order. A model wins a task only when both orders prefer it; anything else (including a
   judge that always picks one position) is a tie. The win rate counts a tie as half a win; its
   interval is Wilson's score interval at 95%.

A request that fails after the endpoint's retries is not an answer: an empty text would score
ROUGE-L 0, be rated and be compared, measuring the endpoint instead of the model. So a failed
answer, rating or comparison is stored as failed, left out of every mean, count and rate (each
figure states the `n` it is over, and `failed` says what is missing), and asked again when the
evaluation is taken up again; what depends on a failed answer waits for it.

Results are recomputed from the samples after every chunk, so progress is readable while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import faults, leases
from app.errors import InvalidInput, NotFound
from app.leases import Lease, LeaseHolder, kept, release
from app.llm import ModelEntry, backend_for, find_model
from app.models import (
    Dataset,
    Evaluation,
    EvaluationEvent,
    EvaluationSample,
    EvaluationStatus,
    Task,
    TaskStatus,
    utcnow,
)
from app.schemas import (
    ErrorItem,
    EvaluationCreate,
    EvaluationEventPublic,
    EvaluationProgress,
    EvaluationPublic,
    ExportSplit,
    ModelScore,
    PairwiseScore,
    Sample,
    SampleAnswer,
    SamplesPublic,
)
from app.services.heldout import default_evaluation_split, split_clause
from app.settings import Settings
from filters.language import detect_language
from filters.rouge import rouge_l
from generators.base import Generation, SamplingParams
from generators.judge import RATINGS, JudgeTask, compare, judge_task
from training.data import task_to_messages

log = logging.getLogger("selfinstruct.evaluations")

CHUNK = 8  # samples per stored step: the most a kill can lose, and the progress granularity
Z95 = 1.959963984540054
ERROR_CHARS = 300  # a failed request's error, as stored with the sample
ORDERS = ("a_shown_first", "b_shown_first")  # a pairwise verdict's two requests


# --- creating ---


def _references(
    session: Session, dataset: Dataset, body: EvaluationCreate, split: ExportSplit
) -> list[EvaluationSample]:
    """The first `limit` accepted tasks (oldest first) of the split with an output to compare
    against; each contributes its first instance that has one."""
    query = select(Task).where(
        Task.dataset_id == dataset.id,
        Task.status == TaskStatus.accepted.value,
        split_clause(split, dataset.held_out_share),
    )
    if body.task_ids is not None:
        query = query.where(col(Task.id).in_(body.task_ids))
    if body.origin is not None:
        query = query.where(Task.origin == body.origin)
    samples: list[EvaluationSample] = []
    for task in session.exec(query.order_by(col(Task.id)).execution_options(yield_per=500)):
        instance = next((i for i in task.instances if i.get("output", "").strip()), None)
        if instance is None:
            continue
        samples.append(
            EvaluationSample(
                evaluation_id=0,
                position=len(samples),
                task_id=task.id,
                instruction=task.instruction,
                input=instance.get("input", ""),
                reference=instance["output"],
            )
        )
        if len(samples) >= body.limit:
            break
    return samples


def create_evaluation(
    *, session: Session, settings: Settings, body: EvaluationCreate
) -> Evaluation:
    """Validate, freeze the reference tasks and queue; 4xx naming the field, nothing stored."""
    engine = session.get_bind()
    entries = [
        find_model(settings, m, engine, field=f"models.{i}")  # type: ignore[arg-type]
        for i, m in enumerate(body.models)
    ]
    if len({e.id for e in entries}) != len(entries):
        raise InvalidInput(
            "models: each model may be named once.",
            errors=[ErrorItem(field="models", reason="a model is named twice")],
        )
    judge = (
        find_model(settings, body.judge, engine, field="judge")  # type: ignore[arg-type]
        if body.judge is not None
        else None
    )
    dataset = session.exec(select(Dataset).where(Dataset.name == body.dataset)).first()
    if dataset is None:
        raise NotFound(
            f"Dataset '{body.dataset}' does not exist (field `dataset`); list them with "
            "GET /v1/datasets.",
            errors=[ErrorItem(field="dataset", reason="no dataset of this name")],
        )
    split = body.split or default_evaluation_split(dataset)
    samples = _references(session, dataset, body, split)
    if not samples:
        raise InvalidInput(
            f"Dataset '{dataset.name}' has no accepted tasks with a reference output in split "
            f"'{split.value}' to evaluate on; import reference tasks (e.g. as seeds), set a "
            "held_out_share, or choose another split, task_ids or origin.",
            errors=[ErrorItem(field="dataset", reason=f"no references in split {split.value}")],
        )
    assert dataset.id is not None
    evaluation = Evaluation(
        dataset_id=dataset.id,
        models=[e.id for e in entries],
        judge=judge.id if judge else None,
        params={**body.model_dump(mode="json", exclude={"models", "judge"}), "split": split},
        status=EvaluationStatus.queued,
        tasks=len(samples),
    )
    session.add(evaluation)
    session.flush()
    assert evaluation.id is not None
    for sample in samples:
        sample.evaluation_id = evaluation.id
    session.add_all(samples)
    evaluation.progress = _progress(evaluation, samples).model_dump()
    evaluation.results = _summary(evaluation, samples)
    session.add(
        EvaluationEvent(evaluation_id=evaluation.id, kind="status", data={"status": "queued"})
    )
    session.commit()
    session.refresh(evaluation)
    return evaluation


# --- reading ---


def get_evaluation(*, session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"Evaluation {evaluation_id} does not exist.")
    return evaluation


def list_evaluations(*, session: Session, limit: int = 100) -> list[Evaluation]:
    return list(session.exec(select(Evaluation).order_by(col(Evaluation.id).desc()).limit(limit)))


def evaluation_public(*, session: Session, evaluation: Evaluation) -> EvaluationPublic:
    assert evaluation.id is not None
    dataset = session.get(Dataset, evaluation.dataset_id)
    results = evaluation.results or {}
    return EvaluationPublic(
        id=evaluation.id,
        dataset=dataset.name if dataset else "",
        status=EvaluationStatus(evaluation.status),
        models=list(evaluation.models),
        judge=evaluation.judge,
        split=ExportSplit(evaluation.params.get("split", ExportSplit.all.value)),
        tasks=evaluation.tasks,
        progress=EvaluationProgress(**evaluation.progress),
        results=[ModelScore(**r) for r in results.get("models", [])],
        pairwise=[PairwiseScore(**p) for p in results.get("pairwise", [])],
        error=evaluation.error,
        created_at=evaluation.created_at,
        started_at=evaluation.started_at,
        finished_at=evaluation.finished_at,
    )


def list_samples(
    *, session: Session, evaluation: Evaluation, after: int, limit: int
) -> SamplesPublic:
    """Samples in task order from position `after` on (exclusive), every model's answer side by
    side."""
    rows = session.exec(
        select(EvaluationSample)
        .where(
            EvaluationSample.evaluation_id == evaluation.id,
            col(EvaluationSample.position) > after,
        )
        .order_by(col(EvaluationSample.position))
        .limit(limit + 1)
    ).all()
    page = rows[:limit]
    has_more = len(rows) > limit
    return SamplesPublic(
        data=[
            Sample(
                position=s.position,
                task_id=s.task_id,
                instruction=s.instruction,
                input=s.input,
                reference=s.reference,
                answers={m: SampleAnswer(**a) for m, a in s.answers.items()},
                pairwise=s.pairwise,
            )
            for s in page
        ],
        has_more=has_more,
        next_cursor=str(page[-1].position) if has_more and page else None,
    )


def cancel_evaluation(*, session: Session, evaluation: Evaluation) -> Evaluation:
    """Idempotent; a worker stops at its next chunk, storing nothing more."""
    result: Evaluation = leases.cancel(session, evaluation)
    return result


def events_after(engine: Engine, *, evaluation_id: int, after: int) -> list[EvaluationEvent]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(EvaluationEvent)
                .where(
                    EvaluationEvent.evaluation_id == evaluation_id,
                    col(EvaluationEvent.id) > after,
                )
                .order_by(col(EvaluationEvent.id))
                .limit(500)
            )
        )


def evaluation_status(engine: Engine, *, evaluation_id: int) -> str | None:
    with Session(engine) as session:
        return session.exec(select(Evaluation.status).where(Evaluation.id == evaluation_id)).first()


def event_public(event: EvaluationEvent) -> dict[str, Any]:
    assert event.id is not None
    return EvaluationEventPublic(
        id=event.id,
        evaluation_id=event.evaluation_id,
        kind=event.kind,
        data=event.data,
        created_at=event.created_at,
    ).model_dump(mode="json")


# --- metrics ---


def pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


def combine_orders(first: str | None, second: str | None) -> str | None:
    """The pair's verdict from the two orders' winners ("first" names model a whatever position
    it was shown in): a win needs both orders; no answer in either order is no verdict."""
    if first is None or second is None:
        return None
    if first == second and first in ("first", "second"):
        return "a" if first == "first" else "b"
    return "tie"


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (ties count half a success)."""
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def answered(answer: dict[str, Any] | None) -> bool:
    """A stored answer the model gave (not a failed request)."""
    return answer is not None and not answer.get("failed", False)


def rated(answer: dict[str, Any]) -> bool:
    """The judge answered about this answer (a rating, or an answer that held none)."""
    return "rating" in answer and not answer.get("judge_failed", False)


def _model_summary(
    evaluation: Evaluation, model: str, samples: Sequence[EvaluationSample]
) -> dict[str, Any]:
    stored = [s.answers[model] for s in samples if model in s.answers]
    answers = [a for a in stored if answered(a)]
    scores = [a["rouge_l"] for a in answers]
    entry: dict[str, Any] = {
        "model": model,
        "answered": len(answers),
        "failed": len(stored) - len(answers),
        "mean_rouge_l": sum(scores) / len(scores) if scores else None,
        "rouge_l_n": len(scores),
    }
    if evaluation.judge:
        judged = [a for a in answers if rated(a)]
        levels = Counter(a["rating"] for a in judged if a["rating"] in RATINGS)
        entry["ratings"] = {r: levels.get(r, 0) for r in RATINGS}
        entry["ratings_n"] = sum(levels.values())
        entry["unjudged"] = len(judged) - entry["ratings_n"]
        entry["judge_failed"] = sum(1 for a in answers if a.get("judge_failed", False))
    return entry


def _pair_summary(a: str, b: str, samples: Sequence[EvaluationSample]) -> dict[str, Any]:
    verdicts: Counter[str | None] = Counter()
    failed = unanswered = 0
    for s in samples:
        if not (answered(s.answers.get(a)) and answered(s.answers.get(b))):
            unanswered += 1
            continue
        entry = s.pairwise.get(pair_key(a, b))
        if entry is None:
            continue
        if entry.get("failed_orders"):
            failed += 1
        else:
            verdicts[entry.get("winner")] += 1
    wins_a, wins_b, ties = verdicts["a"], verdicts["b"], verdicts["tie"]
    compared = wins_a + wins_b + ties
    low, high = wilson(wins_a + ties / 2, compared) if compared else (None, None)
    return {
        "model_a": a,
        "model_b": b,
        "compared": compared,
        "wins_a": wins_a,
        "wins_b": wins_b,
        "ties": ties,
        "win_rate_a": (wins_a + ties / 2) / compared if compared else None,
        "ci_low": low,
        "ci_high": high,
        "undecided": verdicts[None],
        "failed": failed,
        "unanswered": unanswered,
    }


def _summary(evaluation: Evaluation, samples: Sequence[EvaluationSample]) -> dict[str, Any]:
    """Every figure from the answered samples only; failures are counted, never scored."""
    models = [_model_summary(evaluation, m, samples) for m in evaluation.models]
    pairwise = (
        [_pair_summary(a, b, samples) for a, b in combinations(evaluation.models, 2)]
        if evaluation.judge
        else []
    )
    return {"models": models, "pairwise": pairwise}


def _progress(evaluation: Evaluation, samples: Sequence[EvaluationSample]) -> EvaluationProgress:
    n, m = len(samples), len(evaluation.models)
    judged = evaluation.judge is not None
    pairs = m * (m - 1) // 2 if judged else 0
    answers = [a for s in samples for a in s.answers.values()]
    comparisons = [p for s in samples for p in s.pairwise.values()]
    return EvaluationProgress(
        answers=sum(1 for a in answers if answered(a)),
        answers_total=n * m,
        ratings=sum(1 for a in answers if answered(a) and rated(a)),
        ratings_total=n * m if judged else 0,
        comparisons=sum(1 for p in comparisons if not p.get("failed_orders")),
        comparisons_total=n * pairs,
        failed=sum(1 for a in answers if not answered(a))
        + sum(1 for a in answers if answered(a) and a.get("judge_failed", False))
        + sum(1 for p in comparisons if p.get("failed_orders")),
    )


# --- executing ---


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
        progress = _progress(evaluation, samples)
        evaluation.progress = progress.model_dump()
        evaluation.results = _summary(evaluation, samples)
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
        if not lease.holds(evaluation):
            if evaluation.status == EvaluationStatus.running:
                log.warning(
                    "evaluation %s: the finish (%s) of worker %s is refused: worker %s holds it",
                    evaluation_id,
                    status.value,
                    lease.owner,
                    evaluation.worker_id,
                )
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
