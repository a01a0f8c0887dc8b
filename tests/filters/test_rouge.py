"""Pairwise ROUGE-L equals rouge-score's float bit for bit; the threshold test is exact."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from filters.rouge import exceeds, lcs_from_f1, rouge_l, rouge_l_f1, rouge_l_f1_many

WORDS = ["the", "a", "of", "write", "poem", "story", "list", "three", "give", "me", "about", "dog"]
sentences_of_words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=25).map(" ".join)


def reference(scorer: rouge_scorer.RougeScorer, target: str, prediction: str) -> float:
    return float(scorer.score(target, prediction)["rougeL"].fmeasure)


def test_real_sentence_pairs_score_exactly_as_rouge_score(
    sentences: list[str], scorer: rouge_scorer.RougeScorer
) -> None:
    rng = random.Random(3)
    for _ in range(1500):
        a, b = rng.sample(sentences, 2)
        assert rouge_l(a, b) == reference(scorer, a, b)


@settings(max_examples=300, deadline=None)
@given(sentences_of_words, sentences_of_words)
def test_generated_pairs_score_exactly_as_rouge_score_in_both_orders(a: str, b: str) -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert rouge_l(a, b) == reference(scorer, a, b) == reference(scorer, b, a) == rouge_l(b, a)


def test_empty_or_punctuation_only_text_scores_zero(scorer: rouge_scorer.RougeScorer) -> None:
    for a, b in [("", "write a poem"), ("?!", "write a poem"), ("", ""), ("...", "...")]:
        assert rouge_l(a, b) == reference(scorer, a, b) == 0.0


def test_vectorised_scores_equal_the_scalar_ones() -> None:
    lcs = np.array([0, 1, 7, 7, 14, 21])
    lengths = np.array([5, 9, 13, 10, 26, 37])
    many = rouge_l_f1_many(lcs, 10, lengths)
    assert list(many) == [rouge_l_f1(int(x), 10, int(n)) for x, n in zip(lcs, lengths, strict=True)]


def test_rouge_scores_float_at_an_exact_tie_can_round_above_the_threshold(
    scorer: rouge_scorer.RougeScorer,
) -> None:
    # 7 of 10 against 10 tokens: F1 = 0.7, and the float is exactly 0.7.
    ten = "a b c d e f g h i j"
    assert reference(scorer, ten, "a b c d e f g x y z") == 0.7
    # 7 of 7 against 13 tokens: F1 = 14/20 = 0.7 too, but rouge-score's float is one ulp above.
    short, long_ = "a b c d e f g", "a b c d e f g h i j k l m"
    assert reference(scorer, short, long_) == rouge_l(short, long_) == 0.7000000000000001
    assert not exceeds(7, 7, 13, 0.7)
    assert not exceeds(7, 10, 10, 0.7)
    assert exceeds(8, 10, 10, 0.7)


def test_exceeds_is_the_real_number_comparison() -> None:
    for lcs, la, lb in itertools.product(range(0, 8), range(1, 12), range(1, 12)):
        if lcs > min(la, lb):
            continue
        for threshold in (0.0, 0.5, 0.7, 0.75, 1.0):
            expected = 200 * lcs > round(threshold * 100) * (la + lb)  # F1 > t, in integers
            assert exceeds(lcs, la, lb, threshold) is expected, (lcs, la, lb, threshold)


@pytest.mark.parametrize(
    ("lcs", "la", "lb"), [(0, 3, 4), (7, 7, 13), (21, 23, 37), (999, 1000, 3000)]
)
def test_lcs_is_recovered_from_the_float(lcs: int, la: int, lb: int) -> None:
    assert lcs_from_f1(rouge_l_f1(lcs, la, lb), la, lb) == lcs
