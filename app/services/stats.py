"""The dataset's shape, as the Self-Instruct paper reports it (Table 1 and its figures)."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import Counter
from statistics import mean
from typing import Any

from sqlmodel import Session, col, func, select

from app.models import Dataset, Run, Task, TaskOrigin, TaskStatus
from app.schemas.stats import DatasetStats, HistogramBin, LanguageStats, RatingStats
from app.services.decontamination import contaminated_count
from filters.heuristics import count_words
from filters.language import UNKNOWN
from filters.novelty import NoveltyIndex
from filters.tokenize import is_cjk

HISTOGRAM_BINS = 10
TOP_VERBS = 20
# Word-count bin edges for the length histograms, close to the axes of the paper's Figure 3;
# the last bin is open-ended.
LENGTH_EDGES = (0, 5, 10, 15, 20, 30, 50, 100, 200)


def leading_word(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        return ""
    if is_cjk(stripped[0]):
        return stripped[:2]  # Chinese verbs are mostly two characters: 写出, 解释, 判断
    return stripped.split()[0].strip(".,:;!?\"'()").lower()


def dataset_stats(*, session: Session, dataset: Dataset) -> DatasetStats:
    rows = session.exec(
        select(  # type: ignore[call-overload]
            Task.instruction, Task.instances, Task.is_classification, Task.origin, Task.language
        ).where(Task.dataset_id == dataset.id, Task.status == TaskStatus.accepted.value)
    ).all()
    seeds = [r for r in rows if r[3] == TaskOrigin.seed.value]
    tasks = [r for r in rows if r[3] != TaskOrigin.seed.value]
    instances = [inst for r in tasks for inst in (r[1] or [])]
    seed_index = NoveltyIndex((i, r[0]) for i, r in enumerate(seeds))
    bins = [0] * HISTOGRAM_BINS
    for r in tasks:
        score = seed_index.max_score(r[0])
        bins[min(int(score * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    reasons: Counter[str] = Counter()
    for counts in session.exec(select(Run.rejected_by_reason).where(Run.dataset_id == dataset.id)):
        reasons.update(counts)
    instruction_words = [count_words(r[0]) for r in tasks]
    input_words = [count_words(i.get("input", "")) for i in instances]
    output_words = [count_words(i.get("output", "")) for i in instances]
    verbs = Counter(leading_word(r[0]) for r in tasks)
    verbs.pop("", None)
    return DatasetStats(
        instructions=len(tasks),
        classification=sum(1 for r in tasks if r[2]),
        non_classification=sum(1 for r in tasks if not r[2]),
        instances=len(instances),
        empty_inputs=sum(1 for i in instances if not i.get("input", "").strip()),
        mean_instruction_words=_mean(instruction_words),
        mean_input_words=_mean(input_words),
        mean_output_words=_mean(output_words),
        rouge_to_nearest_seed=[
            HistogramBin(low=b / HISTOGRAM_BINS, high=(b + 1) / HISTOGRAM_BINS, count=n)
            for b, n in enumerate(bins)
        ],
        instruction_length=length_histogram(instruction_words),
        input_length=length_histogram(input_words),
        output_length=length_histogram(output_words),
        rejected_by_reason=dict(reasons.most_common()),
        leading_words=verbs.most_common(TOP_VERBS),
        by_language=_by_language(tasks),
        ratings=rating_stats(session, dataset),
        seeds=len(seeds),
        by_origin=dict(Counter(r[3] for r in tasks).most_common()),
        evolved=_evolved(session, dataset),
        contaminated=contaminated_count(session, dataset),
    )


def rating_stats(session: Session, dataset: Dataset) -> RatingStats:
    """Accepted tasks per latest rating, counted in the database (one grouped query)."""
    judged = col(Task.judgement_id).is_not(None)
    rows = session.exec(
        select(Task.origin, Task.run_id, Task.rating, judged, func.count())  # type: ignore[call-overload]
        .where(Task.dataset_id == dataset.id, Task.status == TaskStatus.accepted.value)
        .group_by(Task.origin, Task.run_id, Task.rating, judged)
    ).all()
    overall: Counter[str] = Counter()
    by_origin: dict[str, Counter[str]] = {}
    by_run: dict[str, Counter[str]] = {}
    for origin, run_id, rating, was_judged, n in rows:
        level = rating or ("unjudged" if was_judged else "not_judged")
        overall[level] += n
        by_origin.setdefault(origin, Counter())[level] += n
        if run_id is not None:
            by_run.setdefault(str(run_id), Counter())[level] += n
    return RatingStats(
        overall=dict(sorted(overall.items())),
        by_origin={o: dict(sorted(c.items())) for o, c in sorted(by_origin.items())},
        by_run={r: dict(sorted(c.items())) for r, c in sorted(by_run.items(), key=_run_order)},
    )


def _run_order(item: tuple[str, Any]) -> int:
    return int(item[0])


def _evolved(session: Session, dataset: Dataset) -> dict[str, dict[str, int]]:
    """Operation -> depth -> accepted tasks; only evolved tasks' lineage is read."""
    counts: dict[str, Counter[str]] = {}
    for lineage in session.exec(
        select(Task.lineage).where(
            Task.dataset_id == dataset.id,
            Task.status == TaskStatus.accepted.value,
            Task.origin == TaskOrigin.evolved.value,
        )
    ):
        operation = str(lineage.get("operation", "unknown"))
        counts.setdefault(operation, Counter())[str(lineage.get("evolution_depth", 1))] += 1
    return {op: dict(sorted(c.items())) for op, c in sorted(counts.items())}


CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko"})
# Politeness and helper verbs that open Chinese requests without saying what to do.
_ZH_OPENERS = frozenset({"请", "请你", "帮", "帮我", "麻烦", "给", "让", "能", "可以"})


def _by_language(tasks: list[Any]) -> dict[str, LanguageStats]:
    groups: dict[str, list[Any]] = {}
    for row in tasks:
        groups.setdefault(row[4] or UNKNOWN, []).append(row)
    out = {}
    for language, group in sorted(groups.items()):
        instances = [i for r in group for i in (r[1] or [])]
        tagged = language == "zh"
        leading = Counter((verb_noun_zh(r[0]) if tagged else leading_word(r[0])) for r in group)
        leading.pop("", None)
        out[language] = LanguageStats(
            instructions=len(group),
            instances=len(instances),
            unit="characters" if language in CHARACTER_LANGUAGES else "words",
            mean_instruction_length=_mean([count_words(r[0]) for r in group]),
            mean_input_length=_mean([count_words(i.get("input", "")) for i in instances]),
            mean_output_length=_mean([count_words(i.get("output", "")) for i in instances]),
            leading=leading.most_common(TOP_VERBS),
            leading_kind="verb_noun_pairs" if tagged else "leading_words",
        )
    return out


def verb_noun_zh(text: str) -> str:
    """The first verb of a Chinese instruction and the first noun after it ("写 诗"), tagged by
    jieba; the verb alone when no noun follows; "" when there is no verb."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    verb = ""
    for token in jieba.posseg.cut(text):
        if not verb:
            if token.flag.startswith("v") and token.word not in _ZH_OPENERS:
                verb = token.word
        elif token.flag.startswith("n"):
            return f"{verb} {token.word}"
    return verb


def length_histogram(values: list[int]) -> list[HistogramBin]:
    """Fixed bins rather than data-driven ones, so two datasets' charts can be compared."""
    counts = [0] * len(LENGTH_EDGES)
    for value in values:
        counts[bisect_right(LENGTH_EDGES, value) - 1] += 1
    highs = [*LENGTH_EDGES[1:], max([LENGTH_EDGES[-1], *values])]
    return [
        HistogramBin(low=low, high=high, count=n)
        for low, high, n in zip(LENGTH_EDGES, highs, counts, strict=True)
    ]


def _mean(values: list[int]) -> float:
    return round(mean(values), 2) if values else 0.0
