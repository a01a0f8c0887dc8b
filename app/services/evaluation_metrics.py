"""The figures of an evaluation, computed from its samples alone: each model's mean ROUGE-L and
rating counts, each pair's wins, ties and win rate (a tie counts half a win) with Wilson's 95%
interval, and the progress counts. Failed answers, ratings and comparisons are counted, never
scored: each figure states the `n` it is over. Creating an evaluation and every stored chunk
recompute them, so progress is readable while it runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from app.models import Evaluation, EvaluationSample
from app.schemas.evaluations import EvaluationProgress
from generators.judge_prompts import RATINGS

Z95 = 1.959963984540054


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


def evaluation_results(
    evaluation: Evaluation, samples: Sequence[EvaluationSample]
) -> dict[str, Any]:
    """Every figure from the answered samples only; failures are counted, never scored."""
    models = [_model_summary(evaluation, m, samples) for m in evaluation.models]
    pairwise = (
        [_pair_summary(a, b, samples) for a, b in combinations(evaluation.models, 2)]
        if evaluation.judge
        else []
    )
    return {"models": models, "pairwise": pairwise}


def evaluation_progress(
    evaluation: Evaluation, samples: Sequence[EvaluationSample]
) -> EvaluationProgress:
    """What is done out of what is asked, phase by phase, and how much of it failed."""
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
