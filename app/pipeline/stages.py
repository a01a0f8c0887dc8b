"""One candidate's steps: screen, classify, generate instances, decide; and the prompts that
produce candidates. Each LLM step is one request, so the driver can send it the moment there is a
free slot; none of them waits on another candidate.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

from app.models import TaskOrigin, TaskStatus
from app.pipeline.context import NEIGHBOURS, Item, RunContext, Verdict, example_of
from app.strategies import (
    Candidate,
    backtranslate_prompt,
    backtranslated_candidate,
    candidates_from,
    evolve_job,
    evolved_candidate,
    magpie_candidate,
    prompt_jobs,
    template_candidates,
)
from filters.heuristics import check_echo, check_evolution, check_instruction
from filters.instances import filter_instances
from filters.language import UNKNOWN, asks_for_translation, detect_language, foreign_output
from filters.novelty import Neighbour, NoveltyVerdict, merge_verdicts
from generators.judge import JudgeTask, build_judge_prompt, judgement_from, meets
from generators.parsing import parse_classification_answer, parse_instances
from generators.prompts import (
    BACKTRANSLATE_SAMPLING,
    CLASSIFICATION_INSTANCE_SAMPLING,
    CLASSIFICATION_SAMPLING,
    EVOLVE_SAMPLING,
    INSTANCE_SAMPLING,
    build_classification_prompt,
    build_instance_prompt,
)

MAGPIE_QUERY_TOKENS = 512  # a user's message; a longer one is cut off and dropped
MAGPIE_ANSWER_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024}


def neighbours(nearest: Sequence[Neighbour]) -> list[dict[str, Any]]:
    """Neighbours as stored; a task accepted but not committed yet has a pending key, which
    storage replaces with its task id."""
    return [{"task_id": key, "score": float(score)} for key, score in nearest]


async def generate_candidates(ctx: RunContext, rng: random.Random) -> list[Candidate] | None:
    """One prompt's candidates (a template draw needs no model); None when the request failed."""
    if ctx.params.strategy == "template":
        assert ctx.params.template is not None
        return template_candidates(
            ctx.params.template,
            n=ctx.params.prompt.prompts_per_batch * 4,
            rng=rng,
            lineage=ctx.lineage,
        )
    if ctx.params.strategy == "backtranslate":
        return await _backtranslate(ctx, rng)
    if ctx.params.strategy == "magpie":
        return await _magpie(ctx, rng)
    language = pick_language(ctx, rng)
    wording = ctx.prompt_language(language)
    if ctx.params.strategy == "evolve":
        return await _evolve(ctx, rng, language, wording)
    (job,) = prompt_jobs(
        pool=ctx.pool,
        params=ctx.params,
        language=wording,
        rng=rng,
        n=1,
        examples_language=language,
    )
    gen = await ctx.complete(job.text, ctx.sampling(), job.stop, language=wording)
    if gen is None:
        return None
    return _found(ctx, candidates_from(job, gen, ctx.lineage), gen.text)


def _found(
    ctx: RunContext, found: list[Candidate] | Candidate | None, text: str
) -> list[Candidate]:
    """The candidates of one answer, counted as a completion; none counted as unparseable."""
    ctx.tally.completions += 1
    if isinstance(found, Candidate):
        found = [found]
    if not found:
        ctx.tally.unparseable += 1
        ctx.tally.last_unparseable = ctx.last_unparseable = text[:200]
        return []
    return found


async def _evolve(
    ctx: RunContext, rng: random.Random, language: str, wording: str
) -> list[Candidate] | None:
    evolution = evolve_job(
        pool=ctx.pool,
        spec=ctx.params.evolve,
        topic=ctx.params.topic,
        language=language,
        wording=wording,
        depths=ctx.depths,
        rng=rng,
    )
    if evolution is None:
        ctx.nothing_to_evolve = True
        return []
    sampling = {**EVOLVE_SAMPLING.as_dict(), "seed": _request_seed(rng)}
    prompt = evolution.prompt
    gen = await ctx.complete(prompt.text, sampling, prompt.stop_sequences, language=wording)
    if gen is None:
        return None
    return _found(ctx, evolved_candidate(evolution, gen, ctx.lineage), gen.text)


def _request_seed(rng: random.Random) -> int:
    """A sampling seed per request, drawn from the run's: the same prompt sent twice (magpie's
    always is; a passage used twice) must not get the same answer twice."""
    return rng.randrange(2**31)


PASSAGE_ATTEMPTS = 3  # failed requests after which a passage is given up for this run


async def _backtranslate(ctx: RunContext, rng: random.Random) -> list[Candidate] | None:
    if not ctx.passages:  # the driver sends no prompt then; a requeued passage may come back
        return []
    passage = ctx.passages.popleft()
    wording = ctx.prompt_language(passage.language)
    prompt = backtranslate_prompt(passage, wording)
    sampling = {**BACKTRANSLATE_SAMPLING.as_dict(), "seed": _request_seed(rng)}
    gen = await ctx.complete(prompt.text, sampling, prompt.stop_sequences, language=wording)
    if gen is None:
        ctx.passage_failures[passage.id] += 1
        if ctx.passage_failures[passage.id] < PASSAGE_ATTEMPTS:
            ctx.passages.append(passage)  # still owed: tried again after the others
        else:
            ctx.last_error = (
                f"passage {passage.id} given up after {PASSAGE_ATTEMPTS} failed requests"
            )
        return None
    return _found(ctx, backtranslated_candidate(passage, prompt, gen, ctx.lineage), gen.text)


async def _magpie(ctx: RunContext, rng: random.Random) -> list[Candidate] | None:
    template = await ctx.chat_template()
    spec = ctx.params.magpie
    sampling = {
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "max_tokens": MAGPIE_QUERY_TOKENS,
        "seed": _request_seed(rng),
    }
    prefix = template.user_prefix(spec.system_prompt)
    gen = await ctx.complete(prefix, sampling, template.stop_sequences(), raw=True)
    if gen is None:
        return None
    return _found(ctx, magpie_candidate(gen, ctx.lineage), gen.text)


def pick_language(ctx: RunContext, rng: random.Random) -> str:
    """The language of one prompt: the run's, or one of the pool's in proportion to its seeds.

    Smooth weighted round-robin (as nginx balances upstreams) rather than a random draw: every
    window of prompts holds each language in proportion, so a pool of 73% English and 27%
    Chinese asks in Chinese about every fourth prompt, from the first ones on.
    """
    if ctx.params.language:
        return ctx.params.language
    if not ctx.languages:
        return "en"
    if ctx.topic_language in ctx.languages:  # a topic steers toward its own language too
        return ctx.topic_language
    credit = ctx.language_credit
    total = sum(ctx.languages.values())
    if not credit:  # where in the cycle a run starts comes from its seed
        credit.update({code: rng.random() * total for code in ctx.languages})
    for code, weight in ctx.languages.items():
        credit[code] += weight
    chosen = max(sorted(credit), key=lambda code: credit[code])
    credit[chosen] -= total
    return chosen


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
    if ctx.params.strategy == "magpie":
        await _magpie_answer(ctx, item)
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


async def _magpie_answer(ctx: RunContext, item: Item) -> None:
    """The model answers its own query through the same chat template: one instance."""
    template = await ctx.chat_template()
    prompt = template.answer_prompt(item.candidate.instruction, ctx.params.magpie.system_prompt)
    # a seed of its own per query, reproducible from the run's seed and the query
    seed = (ctx.params.seed * 1_000_003 + zlib.crc32(prompt.encode())) % 2**31
    sampling = {**MAGPIE_ANSWER_SAMPLING, "seed": seed}
    gen = await ctx.complete(prompt, sampling, template.stop_sequences(), raw=True)
    if gen is None:
        return
    answer = gen.text.strip()
    usable = answer and gen.finish_reason != "length"
    item.raw_instances = [{"input": "", "output": answer}] if usable else []


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
        if cand.origin == TaskOrigin.evolved:
            ctx.depths[v.key] = int(cand.lineage["evolution_depth"])
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
