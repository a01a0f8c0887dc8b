"""ROUGE-L F1 with rouge-score's exact floating-point results, and an exact threshold test.

rouge-score computes ``precision = lcs / len(prediction)``, ``recall = lcs / len(target)`` and
``2 * precision * recall / (precision + recall)`` (0.0 when either text has no tokens or nothing
is shared). Reproducing that expression, in that operation order, makes our scores equal to its
scores bit for bit rather than to within rounding, so a verdict at exactly the threshold comes out
the same. Multiplication and addition commute in IEEE arithmetic, so the score does not depend
on which text is the target.

Comparing that float with a threshold is not quite "greater than" in real numbers: LCS 7 between
texts of 7 and 13 tokens is F1 = 14/20 = 0.7 exactly, yet rouge-score's float is
0.7000000000000001, so the paper's ``max_score > 0.7`` rejects it, while 7 of 10 against 10 gives
0.7 and passes. `exceeds` compares the real F1 with the threshold read as the decimal it was
written as, so "exactly the threshold passes" holds at every length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from rapidfuzz.distance import LCSseq

from filters.tokenize import tokenize


def rouge_l_f1(lcs: int, len_a: int, len_b: int) -> float:
    """F1 for an LCS length and the two token counts, rounded as rouge-score rounds it."""
    if lcs == 0:
        return 0.0
    precision = lcs / len_b
    recall = lcs / len_a
    return 2 * precision * recall / (precision + recall)


def rouge_l_f1_many(
    lcs: NDArray[np.integer], len_a: int, len_b: NDArray[np.integer]
) -> NDArray[np.float64]:
    """`rouge_l_f1` of one text against many, element for element identical to it."""
    lcs_f = lcs.astype(np.float64)
    precision = lcs_f / np.maximum(len_b, 1)  # no tokens means lcs 0: fixed up below
    recall = lcs_f / max(len_a, 1)
    total = precision + recall
    total[lcs == 0] = 1.0  # 0 / 1 = 0.0, rouge-score's value, without a 0 / 0 warning
    return 2 * precision * recall / total


def rouge_l(
    text_a: str, text_b: str, *, tokenizer: Callable[[str], Sequence[str]] = tokenize
) -> float:
    """ROUGE-L F1 of two texts with the project tokenizer (CJK-aware); symmetric."""
    tokens_a, tokens_b = list(tokenizer(text_a)), list(tokenizer(text_b))
    if not tokens_a or not tokens_b:
        return 0.0
    return rouge_l_f1(int(LCSseq.similarity(tokens_a, tokens_b)), len(tokens_a), len(tokens_b))


@lru_cache(maxsize=32)
def _decimal(threshold: float) -> Fraction:
    return Fraction(repr(threshold))  # 0.7 -> 7/10, not the binary 0.69999999999999995...


def exceeds(lcs: int, len_a: int, len_b: int, threshold: float) -> bool:
    """Whether the real F1 ``2*lcs/(len_a+len_b)`` is strictly greater than `threshold`."""
    if lcs == 0:
        return threshold < 0
    bar = _decimal(threshold)
    return 2 * lcs * bar.denominator > bar.numerator * (len_a + len_b)


def lcs_from_f1(f1: float, len_a: int, len_b: int) -> int:
    """The LCS length behind one of rouge-score's F1 floats (exact: F1 = 2*lcs/(len_a+len_b))."""
    return round(f1 * (len_a + len_b) / 2)
