"""The novelty index gives the brute-force answers: rouge-score's scores, verdicts and top-k."""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Hashable, Sequence
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer, tokenizers

import filters.novelty as novelty
from filters.errors import DuplicateKey, InvalidFilterConfig, UnknownKey
from filters.novelty import Neighbour, NoveltyIndex
from filters.rouge import exceeds, rouge_l_f1
from filters.tokenize import tokenize

THRESHOLD = 0.7
WORDS = ["the", "a", "of", "write", "poem", "story", "list", "three", "give", "me", "about", "dog"]


def perturb(sentence: str, rng: random.Random, vocabulary: Sequence[str]) -> str:
    """One or two words replaced or dropped: a near-duplicate, as a model would produce."""
    words = sentence.split()
    for _ in range(rng.choice((1, 2))):
        at = rng.randrange(len(words))
        if rng.random() < 0.5 and len(words) > 4:
            del words[at]
        else:
            words[at] = rng.choice(vocabulary)
    return " ".join(words)


def rouge_top(
    scorer: rouge_scorer.RougeScorer, pool: Sequence[tuple[Hashable, str]], text: str, k: int
) -> list[tuple[Hashable, float]]:
    """The paper's computation: score every item, then rank (ties by insertion order)."""
    scores = [scorer.score(text, item)["rougeL"].fmeasure for _, item in pool]
    ranked = sorted((-s, i) for i, s in enumerate(scores) if s > 0)[:k]
    return [(pool[i][0], -s) for s, i in ranked]


def fast_top(
    pool: Sequence[tuple[Hashable, str]], text: str, k: int
) -> list[tuple[Hashable, float]]:
    """Brute force with the same arithmetic as rouge-score (test_rouge checks the two agree)."""
    query = tokenize(text)
    scores = []
    for tokens in _tokenized(tuple(item for _, item in pool)):
        lcs = int(LCSseq.similarity(query, tokens)) if query and tokens else 0
        scores.append(rouge_l_f1(lcs, len(query), len(tokens)))
    ranked = sorted((-s, i) for i, s in enumerate(scores) if s > 0)[:k]
    return [(pool[i][0], -s) for s, i in ranked]


@functools.lru_cache(maxsize=4)
def _tokenized(texts: tuple[str, ...]) -> list[list[str]]:
    return [tokenize(text) for text in texts]


@pytest.fixture(params=["index", "scan"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through the inverted index, then through the full scan of small pools."""
    if request.param == "index":
        monkeypatch.setattr(novelty, "_SCAN_MAX_VERDICT", 0)
        monkeypatch.setattr(novelty, "_SCAN_MAX_TOP_K", 0)
    else:
        monkeypatch.setattr(novelty, "_SCAN_MAX_VERDICT", 10**9)
        monkeypatch.setattr(novelty, "_SCAN_MAX_TOP_K", 10**9)
    return str(request.param)


@pytest.fixture(scope="module")
def real_pool(sentences: list[str]) -> list[tuple[int, str]]:
    return list(enumerate(sentences[:2500]))


@pytest.fixture(scope="module")
def real_candidates(sentences: list[str], real_pool: list[tuple[int, str]]) -> list[str]:
    rng = random.Random(11)
    vocabulary = " ".join(sentences[2500:2600]).split()
    pool_texts = [text for _, text in real_pool]
    unseen = sentences[2500:2620]
    edited = [perturb(rng.choice(pool_texts), rng, vocabulary) for _ in range(120)]
    copies = rng.sample(pool_texts, 20)
    return unseen + edited + copies


# --------------------------------------------------------------------- agreement with rouge-score


@pytest.fixture(scope="module")
def rouge_case(
    sentences: list[str], scorer: rouge_scorer.RougeScorer
) -> tuple[list[tuple[int, str]], list[str], list[float]]:
    """A 250-sentence pool, candidates (unseen, edited, copied) and rouge-score's maxima."""
    rng = random.Random(7)
    pool = list(enumerate(sentences[:250]))
    vocabulary = " ".join(sentences[2600:2700]).split()
    candidates = (
        sentences[2700:2730]
        + [perturb(rng.choice(sentences[:250]), rng, vocabulary) for _ in range(30)]
        + rng.sample(sentences[:250], 5)
    )
    best = [max(scorer.score(c, item)["rougeL"].fmeasure for _, item in pool) for c in candidates]
    return pool, candidates, best


def test_max_score_and_verdicts_equal_rouge_score_on_real_sentences(
    rouge_case: tuple[list[tuple[int, str]], list[str], list[float]], path: str
) -> None:
    pool, candidates, maxima = rouge_case
    exact, paper = NoveltyIndex(pool), NoveltyIndex(pool, compare="float")
    for text, best in zip(candidates, maxima, strict=True):
        assert exact.max_score(text) == paper.max_score(text) == best
        paper_rejects = best > THRESHOLD
        assert paper.is_novel(text) is not paper_rejects
        assert paper.check(text).novel is not paper_rejects
        if abs(best - THRESHOLD) > 1e-9:  # exact ties are the one place the rules differ
            assert exact.is_novel(text) is not paper_rejects
            assert exact.check(text).novel is not paper_rejects
    rejected = sum(best > THRESHOLD for best in maxima)
    assert 10 < rejected < len(candidates) - 10, "both verdicts should occur"


def test_nearest_equals_rouge_score_ranking(
    real_pool: list[tuple[int, str]],
    real_candidates: list[str],
    scorer: rouge_scorer.RougeScorer,
    path: str,
) -> None:
    pool = real_pool[:200]
    index = NoveltyIndex(pool)
    for text in real_candidates[::12]:
        expected = rouge_top(scorer, pool, text, 10)
        assert index.nearest(text, k=10) == expected
        assert all(isinstance(n, Neighbour) for n in index.nearest(text, k=3))


@pytest.mark.parametrize(
    "knobs",
    [
        {"_SCAN_MAX_VERDICT": 10**9, "_SCAN_MAX_TOP_K": 10**9},  # score everything
        {},
        {"_REFINE_MIN": 0},  # search unread lists even for a handful of survivors
        {"_REFINE_MIN": 10**9},  # never search them
        {"_PILOT_BUDGET": 1, "_PILOT_SHARDS": 1},  # a weak first bar
        {"_CDIST_MIN": 10**9},  # exact LCS one pair at a time
    ],
)
def test_pruned_top_k_equals_brute_force_on_a_large_pool(
    real_pool: list[tuple[int, str]],
    real_candidates: list[str],
    monkeypatch: pytest.MonkeyPatch,
    knobs: dict[str, int],
) -> None:
    monkeypatch.setattr(novelty, "_SCAN_MAX_VERDICT", 0)
    monkeypatch.setattr(novelty, "_SCAN_MAX_TOP_K", 0)
    for name, value in knobs.items():
        monkeypatch.setattr(novelty, name, value)
    index = NoveltyIndex(real_pool)
    for text in real_candidates[::9]:
        expected = fast_top(real_pool, text, 25)
        assert index.nearest(text, k=25) == expected
        assert index.nearest(text, k=1) == expected[:1]
        best = expected[0][1] if expected else 0.0
        assert index.max_score(text) == best
        for threshold in (0.3, 0.5, THRESHOLD, 0.9):
            assert index.is_novel(text, threshold) is not (best > threshold)


settings_pool = settings(max_examples=120, deadline=None)
sentence = st.lists(st.sampled_from(WORDS), min_size=0, max_size=14).map(" ".join)


@settings_pool
@given(
    pool_texts=st.lists(sentence, min_size=0, max_size=90),
    query=sentence,
    k=st.integers(min_value=1, max_value=12),
    bulk=st.booleans(),
    scan=st.booleans(),
)
def test_generated_pools_give_rouge_scores_answers(
    pool_texts: list[str], query: str, k: int, bulk: bool, scan: bool
) -> None:
    limit = 10**9 if scan else 0
    with (
        mock.patch.object(novelty, "_SCAN_MAX_VERDICT", limit),
        mock.patch.object(novelty, "_SCAN_MAX_TOP_K", limit),
    ):
        check_against_rouge_score(pool_texts, query, k, bulk)


def check_against_rouge_score(pool_texts: list[str], query: str, k: int, bulk: bool) -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = [(f"task-{i}", text) for i, text in enumerate(pool_texts)]
    if bulk:
        index = NoveltyIndex(pool)
    else:
        index = NoveltyIndex()
        for key, text in pool:
            index.add(key, text)
    expected = rouge_top(scorer, pool, query, k)
    assert index.nearest(query, k) == expected
    best = expected[0][1] if expected else 0.0
    assert index.max_score(query) == best
    for threshold in (0.0, 0.5, THRESHOLD, 1.0):
        verdict = index.check(query, threshold=threshold, k=k)
        assert verdict.max_score == best
        assert verdict.nearest == tuple(expected)
        if abs(best - threshold) > 1e-9:
            assert verdict.novel is not (best > threshold)
            assert index.is_novel(query, threshold) is not (best > threshold)


# --------------------------------------------------------------------- the threshold


def test_a_score_of_exactly_the_threshold_passes(path: str) -> None:
    index = NoveltyIndex([("ten", "alpha beta gamma delta epsilon zeta eta theta iota kappa")])
    candidate = "alpha beta gamma delta epsilon zeta eta x y z"  # LCS 7 of 10 and 10: F1 = 0.7
    assert index.max_score(candidate) == 0.7
    assert index.is_novel(candidate)
    verdict = index.check(candidate)
    assert verdict.novel and verdict.ok and verdict.reason is None
    assert verdict.detail == "ROUGE-L 0.7000 <= 0.7 (closest: 'ten')"
    one_more = "alpha beta gamma delta epsilon zeta eta theta y z"  # LCS 8: F1 = 0.8
    assert not index.is_novel(one_more)
    assert index.check(one_more).reason == "too_similar"


def test_an_exact_tie_whose_float_rounds_up_passes_unless_float_comparison_is_asked(
    path: str,
) -> None:
    pool = [("thirteen", "a b c d e f g h i j k l m")]
    candidate = "a b c d e f g"  # LCS 7 of 7 and 13: F1 = 0.7, rouge-score: 0.7000000000000001
    assert not exceeds(7, 7, 13, THRESHOLD)
    exact, paper = NoveltyIndex(pool), NoveltyIndex(pool, compare="float")
    assert exact.max_score(candidate) == paper.max_score(candidate) == 0.7000000000000001
    assert exact.is_novel(candidate) and exact.check(candidate).novel
    assert not paper.is_novel(candidate) and not paper.check(candidate).novel


def test_threshold_and_k_are_validated_with_helpful_messages() -> None:
    index = NoveltyIndex([(1, "write a poem about the sea")])
    with pytest.raises(InvalidFilterConfig) as error:
        index.is_novel("write a poem", threshold=1.5)
    assert error.value.field == "threshold"
    assert "between 0 and 1, got 1.5" in str(error.value)
    with pytest.raises(InvalidFilterConfig, match="k \\(number of nearest neighbours\\)"):
        index.nearest("write a poem", k=-1)
    with pytest.raises(InvalidFilterConfig, match="compare must be 'exact' or 'float'"):
        NoveltyIndex(compare="fuzzy")  # type: ignore[arg-type]
    assert index.nearest("write a poem", k=0) == []


# --------------------------------------------------------------------- edge cases


def test_empty_pool_and_empty_texts_score_zero(path: str) -> None:
    index = NoveltyIndex()
    assert len(index) == 0
    assert index.max_score("write a poem") == 0.0
    assert index.nearest("write a poem") == []
    assert index.is_novel("write a poem")
    verdict = index.check("write a poem")
    assert verdict.novel and verdict.max_score == 0.0 and verdict.nearest == ()

    index.add("blank", "")
    index.add("marks", "?!... ---")
    index.add("poem", "Write a poem.")
    assert len(index) == 3
    for text in ("", "   ", "?!"):
        assert index.max_score(text) == 0.0
        assert index.nearest(text) == []
    assert index.nearest("write a poem!") == [("poem", 1.0)]


def test_very_long_texts(scorer: rouge_scorer.RougeScorer, path: str) -> None:
    rng = random.Random(5)
    words = [f"w{i}" for i in range(400)] + WORDS * 20

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    medium = [(i, text(300)) for i in range(20)]
    index = NoveltyIndex(medium)
    probe = perturb(medium[4][1], rng, words)
    assert index.nearest(probe, k=5) == rouge_top(scorer, medium, probe, 5)

    huge = [(i, text(4000)) for i in range(30)] + [(99, "a short one")]
    index = NoveltyIndex(huge)
    probe = " ".join(huge[7][1].split()[:3500])
    expected = fast_top(huge, probe, 10)
    assert index.nearest(probe, k=10) == expected
    assert expected[0][0] == 7 and not index.is_novel(probe)


def test_duplicate_texts_tie_in_insertion_order(path: str) -> None:
    index = NoveltyIndex([("second", "write a poem"), ("first", "write a poem")])
    index.add("third", "write a poem")
    assert index.nearest("write a poem", k=2) == [("second", 1.0), ("first", 1.0)]


# --------------------------------------------------------------------- Chinese and mixed text


def test_chinese_instructions_one_character_apart_are_near_duplicates(path: str) -> None:
    index = NoveltyIndex([(1, "写一首关于春天的诗。"), (2, "解释量子计算的基本原理。")])
    autumn = "写一首关于秋天的诗。"  # 8 of 9 characters in order: F1 = 8/9
    assert index.max_score(autumn) == pytest.approx(8 / 9, abs=1e-12)
    assert not index.is_novel(autumn)
    assert index.check(autumn).nearest[0].key == 1
    unrelated = "列出三种常见的水果。"
    assert index.is_novel(unrelated)
    assert index.max_score(unrelated) < 0.3


def test_mixed_chinese_and_english_text_matches_rouge_score_with_the_project_tokenizer(
    path: str,
) -> None:
    class ProjectTokenizer(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            return tokenize(text)

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=ProjectTokenizer())
    pool = [
        (1, "用Python写一个排序函数"),
        (2, "用Java写一个sort函数"),
        (3, "Translate 这句话 into English"),
        (4, "write a sorting function in Python"),
    ]
    index = NoveltyIndex(pool)
    for text in ("用Python写一个快速排序函数", "请把这句话 translate into English", "排序 python"):
        assert index.nearest(text, k=4) == rouge_top(scorer, pool, text, 4)
    assert not index.is_novel("用Python写一个快速排序函数")


# --------------------------------------------------------------------- building and changing


def test_check_and_add_lets_later_candidates_of_a_batch_see_accepted_ones(path: str) -> None:
    index = NoveltyIndex([(0, "Give three tips for staying healthy.")])
    batch = [
        ("a", "Write a short story about a lost dog."),
        ("b", "Write a short story about a lost cat."),  # near-duplicate of "a"
        ("c", "List three tips for staying healthy."),  # near-duplicate of seed 0
        ("d", "Explain how photosynthesis works."),
    ]
    verdicts = {key: index.check_and_add(key, text) for key, text in batch}
    assert [key for key, v in verdicts.items() if v.novel] == ["a", "d"]
    assert verdicts["b"].nearest[0] == ("a", pytest.approx(0.875))
    assert verdicts["c"].nearest[0].key == 0
    assert len(index) == 3 and "a" in index and "b" not in index
    with pytest.raises(DuplicateKey, match="'a' is already in the novelty index"):
        index.check_and_add("a", "Something else entirely, not a duplicate.")


def test_remove_and_add_again(path: str) -> None:
    index = NoveltyIndex([(1, "write a poem about the sea"), (2, "summarise this article")])
    assert not index.is_novel("write a poem about the sea")
    index.remove(1)
    assert 1 not in index and len(index) == 1
    assert index.is_novel("write a poem about the sea")
    assert index.nearest("write a poem about the sea") == []
    index.add(1, "write a poem about the mountains")
    assert index.nearest("write a poem about the sea", k=1)[0].key == 1
    with pytest.raises(UnknownKey, match="key 99 is not in the novelty index"):
        index.remove(99)
    with pytest.raises(DuplicateKey):
        index.add(2, "again")


def test_bulk_loading_and_single_additions_build_the_same_index(
    real_pool: list[tuple[int, str]], real_candidates: list[str], path: str
) -> None:
    pool = real_pool[:600]
    bulk = NoveltyIndex()
    assert bulk.add_many(iter(pool[:500])) == 500  # one sort for the whole batch
    for key, text in pool[500:]:  # then appends that must copy the shared buffers
        bulk.add(key, text)
    single = NoveltyIndex()
    for key, text in pool:
        single.add(key, text)
    for text in real_candidates[::5]:
        assert bulk.nearest(text, k=10) == single.nearest(text, k=10)


def test_a_duplicate_key_inside_add_many_keeps_the_items_before_it() -> None:
    index = NoveltyIndex()
    items = [(i, f"instruction number {i} about topic {i % 7}") for i in range(100)]
    with pytest.raises(DuplicateKey):
        index.add_many([*items, (5, "a repeated key")])
    assert len(index) == 100
    assert index.nearest("instruction number 42 about topic 0", k=1) == [(42, 1.0)]


def test_concurrent_check_and_add_accepts_one_of_identical_candidates() -> None:
    index = NoveltyIndex([(0, "Summarise the following paragraph in one sentence.")])
    start = threading.Barrier(8)
    accepted: list[str] = []

    def worker(n: int) -> None:
        start.wait()
        for round_ in range(20):
            text = f"Translate sentence number {round_} of the batch into French please."
            if index.check_and_add(f"{n}-{round_}", text).novel:
                accepted.append(text)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == len(set(accepted)) == len(index) - 1


def test_token_ids_beyond_unicode_fall_back_to_lists_that_compare_by_value() -> None:
    big = 0x110000 + 3
    encoded = novelty._encode([big, 5, 6])
    assert encoded == [big, 5, 6]
    assert novelty._encode([5, 6]) == "\x05\x06"
    assert LCSseq.similarity(encoded, "\x05\x06") == 2  # mixed forms still compare by id
    assert LCSseq.similarity([0x110000 + 5], "\x05") == 0


def test_a_check_brought_up_to_date_equals_a_check_of_the_whole_pool(
    real_pool: list[tuple[int, str]], real_candidates: list[str]
) -> None:
    """The streaming pipeline screens a candidate against the index, then, when it decides,
    checks only what joined the pool since (`RecentItems`); the two together must give what
    one check of the pool as it is then gives: verdict, maximum and top-10, ties included."""
    rng = random.Random(5)
    split = len(real_pool) - 300
    index = NoveltyIndex()
    index.add_many(real_pool[:split])
    recent = novelty.RecentItems()
    for key, text in real_pool[split:]:
        recent.append(key, text)
    whole = NoveltyIndex()
    whole.add_many(real_pool)
    dropped = {real_pool[split + i][0] for i in rng.sample(range(300), 20)}
    for key in dropped:
        whole.remove(key)
    for text in real_candidates[:120]:
        since = rng.randrange(0, 300)
        earlier = NoveltyIndex()
        earlier.add_many(real_pool[: split + since])
        for key in dropped:
            if key in earlier:
                earlier.remove(key)
        first = earlier.check(text, threshold=THRESHOLD, k=10)
        later = recent.check(text, since=since, threshold=THRESHOLD, k=10, skip=dropped)
        merged = novelty.merge_verdicts(first, later, 10)
        expected = whole.check(text, threshold=THRESHOLD, k=10)
        assert merged.novel == expected.novel, text
        assert merged.max_score == expected.max_score
        assert [n.score for n in merged.nearest] == [n.score for n in expected.nearest]
        assert [n.key for n in merged.nearest] == [n.key for n in expected.nearest]


def test_recent_items_checked_whole_equal_an_index_of_them(real_candidates: list[str]) -> None:
    items = [(i, real_candidates[i]) for i in range(40)]
    index = NoveltyIndex()
    index.add_many(items)
    recent = novelty.RecentItems()
    for key, text in items:
        recent.append(key, text)
    for text in real_candidates[40:100]:
        direct = recent.check(text, since=0, threshold=THRESHOLD, k=5)
        assert direct == index.check(text, threshold=THRESHOLD, k=5)


def test_a_copy_and_its_original_grow_apart_without_touching_each_other(
    real_pool: list[tuple[int, str]], real_candidates: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sides add to lists they share (bulk-built ones and ones with spare room after
    single additions) and remove items: each answers as an index built from its own items."""
    monkeypatch.setattr(novelty, "_SCAN_MAX_TOP_K", 0)  # read the inverted lists
    base, extra = real_pool[:300], real_pool[300:340]
    original = NoveltyIndex(base)
    for key, text in extra[:10]:  # single additions leave spare room in the lists' buffers
        original.add(key, text)
    twin = original.copy()
    mine, theirs = extra[10:25], extra[25:40]
    for key, text in mine:
        original.add(key, text)
    for key, text in theirs:
        twin.add(key, text)
    original.remove(base[0][0])
    twin.remove(base[1][0])
    kept = [*base, *extra[:10]]
    expected_original = NoveltyIndex([item for item in [*kept, *mine] if item != base[0]])
    expected_twin = NoveltyIndex([item for item in [*kept, *theirs] if item != base[1]])
    probes = [*real_candidates[::7], *(text for _, text in [*mine, *theirs, *base[:2]])]
    for text in probes:
        assert original.nearest(text, k=10) == expected_original.nearest(text, k=10)
        assert twin.nearest(text, k=10) == expected_twin.nearest(text, k=10)
    assert len(original) == len(twin) == len(kept) + 14
