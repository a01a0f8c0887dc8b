"""One candidate's steps: screen, classify, generate instances, judge, decide. Each LLM step is
one request, so the driver can send it the moment there is a free slot; none of them waits on
another candidate. The prompts that produce candidates are the strategy's (app/strategies/).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.models import TaskStatus
from app.pipeline.context import NEIGHBOURS, Item, RunContext, Verdict
from app.pipeline.loading import example_of
from app.strategies import Candidate
from filters.heuristics import check_echo, check_evolution, check_instruction
from filters.instances import filter_instances
from filters.language import UNKNOWN, asks_for_translation, detect_language, foreign_output
from filters.novelty import Neighbour, NoveltyVerdict, merge_verdicts
from generators.judge_prompts import JudgeTask, build_judge_prompt, judgement_from, meets
from generators.parsing import parse_classification_answer, parse_instances
from generators.prompts import (
    CLASSIFICATION_INSTANCE_SAMPLING,
    CLASSIFICATION_SAMPLING,
    INSTANCE_SAMPLING,
    build_classification_prompt,
    build_instance_prompt,
)


def neighbours(nearest: Sequence[Neighbour]) -> list[dict[str, Any]]:
    """Neighbours as stored; a task accepted but not committed yet has a pending key, which
    storage replaces with its task id."""
    return [{"task_id": key, "score": float(score)} for key, score in nearest]


def screen(ctx: RunContext, cand: Candidate, in_flight: set[str]) -> Item | Verdict:
    """Language, heuristics and novelty against the pool as it is: a rejection costs no
    request. Each candidate is judged by the rules of its own language."""
    cand.instruction = cand.instruction.strip()
    cand.language = detect_language(cand.instruction)
    filters = ctx.params.filters
    if cand.parent is not None:
        evolved = check_evolution(cand.parent, cand.instruction, filters.rouge_threshold)
        if not evolved.ok:
            return Verdict(cand, TaskStatus.rejected, evolved.reason, evolved.detail)
    if (
        filters.reject_other_languages
        and ctx.languages
        and cand.language != UNKNOWN
        and cand.language not in ctx.languages
    ):
        held = ", ".join(sorted(ctx.languages))
        return rejected(
            cand,
            "language_not_in_pool",
            f"written in {cand.language}; the pool holds {held} (set the run's `language` or "
            "filters.reject_other_languages=false to keep it)",
        )
    if filters.reject_echoes:
        echo = check_echo(cand.instruction, ctx.echo_references)
        if not echo.ok:
            return Verdict(cand, TaskStatus.rejected, echo.reason, echo.detail)
    verdict = check_instruction(cand.instruction, ctx.heuristics(cand.language))
    if not verdict.ok:
        return Verdict(cand, TaskStatus.rejected, verdict.reason, verdict.detail)
    mark = len(ctx.added)
    threshold = ctx.params.filters.rouge_threshold
    if ctx.neighbours is None:
        check = ctx.pool.index.check(cand.instruction, threshold=threshold, k=NEIGHBOURS)
    else:  # the verdict alone; scores and neighbours come from the neighbour process
        novel = ctx.pool.index.is_novel(cand.instruction, threshold)
        check = NoveltyVerdict(novel=novel, max_score=0.0, threshold=threshold, nearest=())
    if not check.novel:
        if ctx.neighbours is not None:
            return Verdict(
                cand,
                TaskStatus.rejected,
                check.reason,
                f"ROUGE-L > {threshold} against a pool task",
                query=ctx.ask_neighbours(cand.instruction),
            )
        return Verdict(
            cand,
            TaskStatus.rejected,
            check.reason,
            check.detail,
            max_rouge=check.max_score,
            nearest=neighbours(check.nearest),
        )
    if cand.instruction in in_flight:  # the same line is already on its way through the stages
        return Verdict(
            cand,
            TaskStatus.rejected,
            "duplicate_in_flight",
            "the same instruction was already being processed",
        )
    return Item(cand, check, mark)


async def classify(ctx: RunContext, item: Item) -> None:
    if not ctx.params.classify:
        return
    language = ctx.prompt_language(item.candidate.language)
    prompt = build_classification_prompt(item.candidate.instruction, language=language)
    gen = await ctx.complete(
        prompt.text, CLASSIFICATION_SAMPLING.as_dict(), prompt.stop_sequences, language=language
    )
    item.label = parse_classification_answer(gen.text) if gen else None


async def make_instances(ctx: RunContext, item: Item) -> None:
    """Output-first for classification tasks, input-first otherwise."""
    cand = item.candidate
    item.raw_instances = cand.instances
    if not ctx.params.generate_instances or cand.instances is not None:
        return
    if await ctx.strategy.write_instances(item):  # it wrote them its own way
        return
    output_first = bool(item.label)
    language = ctx.prompt_language(cand.language)
    prompt = build_instance_prompt(
        cand.instruction,
        is_classification=output_first,
        language=language,
        max_instances=ctx.params.filters.max_instances,
    )
    sampling = CLASSIFICATION_INSTANCE_SAMPLING if output_first else INSTANCE_SAMPLING
    gen = await ctx.complete(
        prompt.text, sampling.as_dict(), prompt.stop_sequences, language=language
    )
    if gen is not None:
        item.raw_instances = parse_instances(
            gen.text, output_first=output_first, finish_reason=gen.finish_reason
        )


def kept_instances(ctx: RunContext, item: Item) -> tuple[list[dict[str, str]], int]:
    """The instances the task keeps (filtered, outputs in another language dropped) and how
    many were dropped for their language; computed once, for the judge and the decision."""
    if item.kept is None:
        cand = item.candidate
        kept: list[dict[str, str]] = []
        if item.raw_instances is not None:
            kept = filter_instances(
                item.raw_instances, max_instances=ctx.params.filters.max_instances
            ).kept
        wrong_language = 0
        if kept and not asks_for_translation(cand.instruction):
            same = [i for i in kept if not foreign_output(cand.instruction, i)]
            wrong_language, kept = len(kept) - len(same), same
        item.kept = (kept, wrong_language)
    return item.kept


async def judge(ctx: RunContext, item: Item) -> None:
    """The run's judge rates a candidate the filters would accept; one they reject anyway (no
    instances left, or no longer novel) costs no judge request."""
    if ctx.judge is None:
        return
    cand = item.candidate
    kept, _ = kept_instances(ctx, item)
    needs_instances = ctx.params.generate_instances or cand.instances is not None
    if (needs_instances and not kept) or not recheck(ctx, item).novel:
        return
    prompt = build_judge_prompt(JudgeTask(cand.instruction, kept, cand.language))
    gen = await ctx.ask_judge(prompt)
    if gen is None:
        item.judge_failed = True
        return
    item.judgement = judgement_from(gen.text, model=ctx.judge.id, prompt_version=prompt.version)


def recheck(ctx: RunContext, item: Item) -> NoveltyVerdict:
    """The screening check brought up to date with what joined the pool since."""
    if item.added_mark >= len(ctx.added):
        return item.screened
    delta = ctx.added.check(
        item.candidate.instruction,
        since=item.added_mark,
        threshold=ctx.params.filters.rouge_threshold,
        k=NEIGHBOURS,
        skip=ctx.dropped,
    )
    return merge_verdicts(item.screened, delta, NEIGHBOURS)


def decide(ctx: RunContext, item: Item) -> Verdict:
    """The final verdict and, when accepted, the pool insertion, in one step with no await in
    between: no other candidate can be decided against a pool that lacks this one."""
    cand = item.candidate
    kept, wrong_language = kept_instances(ctx, item)
    needs_instances = ctx.params.generate_instances or cand.instances is not None
    check = recheck(ctx, item)
    v = Verdict(
        cand,
        TaskStatus.rejected,
        max_rouge=check.max_score,
        is_classification=item.label,
        nearest=neighbours(check.nearest),
        instances=kept,
        foreign_mark=len(ctx.foreign),
        wrong_language=wrong_language,
        judgement=item.judgement,
    )
    if ctx.neighbours is not None:  # asked before the task joins the pool: it is not its own
        v.max_rouge, v.nearest = None, []
        v.query = ctx.ask_neighbours(cand.instruction)
    if not check.novel:
        v.reason, v.detail = check.reason, check.detail
    elif item.raw_instances is None and needs_instances:
        v.reason, v.detail = "instance_generation_failed", "the model gave no usable answer"
    elif needs_instances and not kept:
        v.reason, v.detail = "no_valid_instances", "every generated instance was filtered out"
    elif ctx.judge is not None and (reason := _judged_out(ctx, item)) is not None:
        v.reason, v.detail = reason
    else:
        v.status = TaskStatus.accepted
        v.key = ctx.new_key()
        ctx.pool_add(v.key, cand.instruction)
        ctx.pool.add_example(_example(v), seed=False)
        ctx.strategy.accepted(v.key, cand)
    return v


def _judged_out(ctx: RunContext, item: Item) -> tuple[str, str] | None:
    """Why the judge keeps a candidate out, or None when it may be accepted.

    An answer with no rating is a rejection (`unjudged`), not an acceptance: a judge that
    cannot be read says nothing about the task, and a run asked for judged tasks."""
    assert ctx.params.judge is not None
    j = item.judgement
    if item.judge_failed or j is None:
        return "judge_failed", f"the judge request failed: {ctx.last_error}"
    if j.rating is None:
        return "unjudged", j.rationale
    if not meets(j.rating, ctx.params.judge.min_rating):
        return (
            "judged_low",
            f"rated {j.rating} (below {ctx.params.judge.min_rating}): {j.rationale}",
        )
    return None


def _example(v: Verdict) -> Any:
    return example_of(v.key, v.candidate.instruction, v.instances, v.candidate.language)


def drop(ctx: RunContext, v: Verdict) -> None:
    """Take an accepted verdict out of the pool again (demoted, or its commit never happened)."""
    ctx.pool.index.remove(v.key)
    ctx.dropped.add(v.key)
    if ctx.neighbours is not None:
        ctx.neighbours.remove(v.key)
    ctx.pool.drop_machine(v.key)


def rejected(cand: Candidate, reason: str, detail: str) -> Verdict:
    return Verdict(cand, TaskStatus.rejected, reason, detail)
