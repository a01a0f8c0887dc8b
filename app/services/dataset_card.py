"""The dataset card of a bundle: the Hub's YAML header (license, languages, size category, task
categories, configs, features), then how the data was made, read from the database."""

from __future__ import annotations

import importlib.metadata
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from huggingface_hub import DatasetCardData
from sqlmodel import Session, col, select

from app.models import (
    MACHINE_ORIGINS,
    Dataset,
    DatasetVersion,
    Run,
    Task,
    TaskJudgement,
    TaskOrigin,
    TaskStatus,
)
from app.services.datasets import pool_languages, seed_languages
from app.services.export import FLAT_SCHEMA
from filters.language import base_language
from generators.judge_prompts import RATINGS


@dataclass
class SplitFacts:
    """What the card says of the splits; the bundle writer fills it in."""

    rows: dict[str, int]
    tasks: dict[str, int]
    paths: dict[str, str]  # split -> its file in the bundle, in the order the card lists them
    languages: list[str]  # detected in the exported rows
    rule: str  # how tasks were assigned to splits, in words


@dataclass
class RunFacts:
    id: int
    strategy: str
    backend: str
    model: str
    status: str
    accepted: int
    filters: dict[str, Any]


@dataclass
class CardFacts:
    """Everything the card states, read from the database in one place."""

    name: str
    description: str
    seeds: int
    accepted: int
    rejected_by_reason: dict[str, int]
    runs: list[RunFacts]
    pool_languages: list[str]
    # Accepted tasks (seeds included) by their latest judgement: a level A-D, `unjudged` (the
    # judge's answer held no rating) or `not_judged`; and by the judge model that gave it.
    ratings: dict[str, int] = field(default_factory=dict)
    judges: dict[str, int] = field(default_factory=dict)


def _ratings(session: Session, dataset_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """Accepted tasks per latest rating and per judge model, in one grouped query."""
    rows = session.exec(
        select(Task.rating, TaskJudgement.judge_model, sa.func.count())  # type: ignore[call-overload]
        .select_from(Task)
        .outerjoin(TaskJudgement, col(TaskJudgement.id) == col(Task.judgement_id))
        .where(Task.dataset_id == dataset_id, Task.status == TaskStatus.accepted.value)
        .group_by(col(Task.rating), col(TaskJudgement.judge_model))
    ).all()
    ratings: Counter[str] = Counter()
    judges: Counter[str] = Counter()
    for rating, judge, n in rows:
        if judge is None:
            ratings["not_judged"] += n
            continue
        ratings[rating if rating in RATINGS else "unjudged"] += n
        judges[judge] += n
    return dict(ratings), dict(judges.most_common())


def card_facts(*, session: Session, dataset: Dataset) -> CardFacts:
    assert dataset.id is not None
    by_status = session.exec(
        select(Task.origin, Task.status, Task.rejection_reason, sa.func.count())
        .where(Task.dataset_id == dataset.id)
        .group_by(col(Task.origin), col(Task.status), col(Task.rejection_reason))
    ).all()
    seeds = accepted = 0
    rejected: Counter[str] = Counter()
    for origin, status, reason, n in by_status:
        if origin == TaskOrigin.seed.value:
            seeds += n if status == TaskStatus.accepted.value else 0
        elif origin in MACHINE_ORIGINS and status == TaskStatus.accepted.value:
            accepted += n
        elif origin in MACHINE_ORIGINS:
            rejected[reason or "unspecified"] += n
    runs = session.exec(select(Run).where(Run.dataset_id == dataset.id).order_by(col(Run.id))).all()
    languages = pool_languages(
        dataset=dataset, seeds=seed_languages(session, [dataset.id]).get(dataset.id, {})
    )
    ratings, judges = _ratings(session, dataset.id)
    return CardFacts(
        name=dataset.name,
        description=dataset.description,
        seeds=seeds,
        accepted=accepted,
        rejected_by_reason=dict(rejected.most_common()),
        runs=[
            RunFacts(
                id=run.id or 0,
                strategy=run.strategy,
                backend=run.backend,
                model=run.model,
                status=run.status,
                accepted=run.accepted,
                filters=dict(run.params.get("filters") or {}),
            )
            for run in runs
        ],
        pool_languages=sorted({c for c in map(base_language, languages) if c}),
        ratings=ratings,
        judges=judges,
    )


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for a row count (its list: n<1K ... n>1T)."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if rows < 1_000:
        return "n<1K"
    for i, upper in enumerate(bounds[1:]):
        if rows < 10 ** (i + 4):
            return f"{bounds[i]}<n<{upper}"
    return "n>1T"


def service_version() -> str:
    """The installed package's version, the one the API reports too (pyproject's)."""
    try:
        return importlib.metadata.version("selfinstruct")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


RATING_WORDS = {
    "A": "valid and satisfying",
    "B": "acceptable with minor imperfections",
    "C": "responds with significant errors",
    "D": "irrelevant or invalid",
}


def judge_ratings_section(facts: CardFacts) -> str | None:
    """The judge's ratings of the accepted tasks and who gave them, so a reader of the card can
    weigh the data without the service; None when no task was ever judged."""
    if not facts.judges:
        return None
    rated = sum(facts.ratings.get(r, 0) for r in RATINGS)
    judges = ", ".join(
        f"`{model}` ({n:,} task{'s' if n != 1 else ''})" for model, n in facts.judges.items()
    )
    lines = [
        "Each accepted task's latest rating (seeds included) on the Self-Instruct paper's "
        "human-evaluation scale, given by a model acting as judge: "
        f"{judges}. Shares are of the {rated:,} tasks rated A-D.",
        "",
        "| rating | meaning | tasks | share |",
        "|---|---|---:|---:|",
    ]
    for level in RATINGS:
        n = facts.ratings.get(level, 0)
        share = f"{n / rated:.1%}" if rated else "-"
        lines.append(f"| {level} | {RATING_WORDS[level]} | {n:,} | {share} |")
    lines += [
        f"| unjudged | the judge's answer held no rating | {facts.ratings.get('unjudged', 0):,} "
        "| - |",
        f"| not judged | never sent to a judge | {facts.ratings.get('not_judged', 0):,} | - |",
    ]
    return "\n".join(lines)


def _card_metadata(*, facts: CardFacts, splits: SplitFacts, license: str) -> DatasetCardData:
    languages = splits.languages or facts.pool_languages
    total = sum(splits.rows.values())
    features = [
        {"name": f.name, "dtype": "bool" if pa.types.is_boolean(f.type) else "string"}
        for f in FLAT_SCHEMA
    ]
    extra: dict[str, Any] = {}
    if languages:
        extra["language"] = languages
        extra["multilinguality"] = "multilingual" if len(languages) > 1 else "monolingual"
    return DatasetCardData(
        license=license,
        pretty_name=facts.name,
        size_categories=[size_category(total)],
        task_categories=["text-generation"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"],
        tags=["self-instruct", "synthetic", "instruction-tuning"],
        configs=[
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": path} for split, path in splits.paths.items()
                ],
            }
        ],
        # Features only: `datasets` wants a split's Arrow size next to its row count, which
        # the card's body states instead.
        dataset_info={"features": features},
        **extra,
    )


def version_line(version: DatasetVersion | None, dataset_name: str) -> str:
    """Which data the splits hold: a named version, or the pool as it was at export time."""
    if version is None:
        return (
            "Version: none; the splits hold the pool as it stood at export time. Make a version "
            f"(POST /v1/datasets/{dataset_name}/versions) and export it to get the same data "
            "again."
        )
    tag = f" ({version.tag})" if version.tag else ""
    return (
        f"Version: {version.id}{tag}, made {version.created_at:%Y-%m-%d %H:%M} UTC, "
        f"{version.tasks:,} tasks, content SHA-256 `{version.content_sha256}`."
    )


def _body(
    *, facts: CardFacts, splits: SplitFacts, include_seeds: bool, version: DatasetVersion | None
) -> str:
    lines = [f"# {facts.name}", ""]
    if facts.description:
        lines += [facts.description, ""]
    seeds_note = "included" if include_seeds else "not included"
    lines += [
        "Instruction-tuning data grown from a seed pool with the Self-Instruct method "
        "(Wang et al., 2022, arXiv:2212.10560) by the `selfinstruct` service, version "
        f"{service_version()}, exported {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        version_line(version, facts.name),
        "",
        "## Data",
        "",
        "One row per instance: `instruction`, `input` (may be empty), `output`, plus `id` (the "
        "task's id; a task's instances share it), `is_classification`, `origin` (seed, "
        "generated, edited, evolved, backtranslated) and `language` (detected; null if never "
        "detected).",
        "",
        "| split | tasks | rows |",
        "|---|---:|---:|",
        *(f"| {s} | {splits.tasks[s]:,} | {splits.rows[s]:,} |" for s in splits.paths),
        "",
        f"Splits: {splits.rule}."
        + (
            ""
            if "test" in splits.paths  # the held-out share, which the rule already names
            else " This is a fixed rule, not a held-out set chosen before generation."
        ),
        "",
        "## How it was made",
        "",
        f"- Seeds: {facts.seeds:,} seed tasks ({seeds_note} in the splits).",
        f"- Accepted machine-made tasks: {facts.accepted:,}.",
        f"- Rejected candidates: {sum(facts.rejected_by_reason.values()):,}"
        + (":" if facts.rejected_by_reason else "."),
        *(f"  - {reason}: {n:,}" for reason, n in facts.rejected_by_reason.items()),
        "",
    ]
    if facts.runs:
        lines += [
            "### Runs",
            "",
            "| run | strategy | model | backend | status | accepted |",
            "|---:|---|---|---|---|---:|",
            *(
                f"| {r.id} | {r.strategy} | {r.model or '-'} | {r.backend} | {r.status} "
                f"| {r.accepted:,} |"
                for r in facts.runs
            ),
            "",
            "### Filters",
            "",
            "Each distinct filter setting and the runs that used it:",
            "",
        ]
        by_setting: dict[str, list[int]] = {}
        for r in facts.runs:
            by_setting.setdefault(json.dumps(r.filters, sort_keys=True, indent=2), []).append(r.id)
        for setting, run_ids in by_setting.items():
            lines += [f"Runs {', '.join(map(str, run_ids))}:", "", "```json", setting, "```", ""]
    else:
        lines += ["No generation runs are recorded for this dataset.", ""]
    lines += ["## Judge ratings", ""]
    lines += [judge_ratings_section(facts) or "No judge has rated these tasks.", ""]
    return "\n".join(lines)


def card_text(
    *,
    facts: CardFacts,
    splits: SplitFacts,
    license: str,
    include_seeds: bool,
    version: DatasetVersion | None = None,
) -> str:
    """The README.md: the Hub's YAML header between `---` lines, then the body."""
    metadata = _card_metadata(facts=facts, splits=splits, license=license)
    body = _body(facts=facts, splits=splits, include_seeds=include_seeds, version=version)
    return f"---\n{metadata.to_yaml()}\n---\n\n{body}"
