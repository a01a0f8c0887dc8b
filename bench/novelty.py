"""Novelty filter: `NoveltyIndex` against the paper's rouge-score loop, in one process.

Baseline: for each candidate, ``RougeScorer(["rougeL"]).score(candidate, item)`` for every pool
item and ``max(...) > 0.7`` — the original method, without its process pool. A second reference is
an exact full scan with rapidfuzz over the same tokens (no pruning), to show what pruning adds.

Pool: distinct English sentences from the documentation installed packages ship (see
`testbed.corpus`). Candidates: half unseen sentences, half pool sentences with one or two words
replaced or dropped, so both verdicts occur. The 1M pool needs more sentences than are installed;
it is completed with spliced sentences (the head of one real sentence joined to the tail of
another) and the output says how many.

Run from the repository root: ``python -m bench.novelty`` (add ``--quick`` for a smoke run;
``--large 10000000`` measures only a pool of that size).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # `python bench/novelty.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer

from filters.novelty import DEFAULT_THRESHOLD, NoveltyIndex
from filters.tokenize import tokenize
from testbed.corpus import real_sentences

THRESHOLD = DEFAULT_THRESHOLD
T = TypeVar("T")


def make_candidates(unseen: Sequence[str], pool: Sequence[str], count: int, seed: int) -> list[str]:
    """Half unseen sentences, half lightly edited pool sentences (near-duplicates)."""
    rng = random.Random(seed)
    vocabulary = [word for sentence in unseen[:500] for word in sentence.split()]
    out = list(rng.sample(list(unseen), min(count // 2, len(unseen))))
    while len(out) < count:
        words = rng.choice(pool).split()
        for _ in range(rng.choice((1, 2))):
            at = rng.randrange(len(words))
            if rng.random() < 0.5 and len(words) > 4:
                del words[at]
            else:
                words[at] = rng.choice(vocabulary)
        out.append(" ".join(words))
    rng.shuffle(out)
    return out


def splice(sentences: Sequence[str], needed: int, seed: int, taken: set[str]) -> list[str]:
    """New distinct sentences made of the head of one real sentence and the tail of another."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < needed:
        head, tail = rng.choice(sentences).split(), rng.choice(sentences).split()
        joined = " ".join(
            head[: rng.randint(2, len(head) - 1)] + tail[rng.randint(1, len(tail) - 2) :]
        )
        if 5 <= len(joined.split()) <= 40 and joined not in taken:
            taken.add(joined)
            out.append(joined)
    return out


def rouge_max(scorer: rouge_scorer.RougeScorer, candidate: str, pool: Sequence[str]) -> float:
    """The paper's computation: score against every item, keep the maximum."""
    return max(scorer.score(candidate, item)["rougeL"].fmeasure for item in pool)


class FullScan:
    """Exact maximum by scoring every pool item with rapidfuzz (no index, no pruning)."""

    def __init__(self, pool: Sequence[str]) -> None:
        self.vocab: dict[str, int] = {}
        self.encoded = [self._encode(text, grow=True) for text in pool]
        self.lengths = np.array([len(e) for e in self.encoded])

    def _encode(self, text: str, *, grow: bool) -> str:
        ids = []
        for token in tokenize(text):
            tid = self.vocab.get(token)
            if tid is None:
                tid = len(self.vocab) if not grow else self.vocab.setdefault(token, len(self.vocab))
            ids.append(tid)
        return "".join(map(chr, ids))

    def max_score(self, text: str) -> float:
        query = self._encode(text, grow=False)
        if not query:
            return 0.0
        lcs = process.cdist([query], self.encoded, scorer=LCSseq.similarity, dtype=np.int64)[0]
        # rouge-score's expression, in its operation order, so the floats are identical.
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = lcs / self.lengths
            recall = lcs / len(query)
            f1 = np.where(lcs > 0, 2 * precision * recall / (precision + recall), 0.0)
        return float(f1.max())


def timed(fn: Callable[[str], T], candidates: Sequence[str]) -> tuple[list[T], float]:
    """Results and CPU milliseconds per call: steadier than wall time on a shared machine, and
    the same thing here, since every step runs in this one thread."""
    start = time.process_time()
    results = [fn(candidate) for candidate in candidates]
    return results, (time.process_time() - start) / len(candidates) * 1e3


def per_candidate_ms(fn: Callable[[str], object], candidates: Sequence[str]) -> float:
    return timed(fn, candidates)[1]


def rss_mib() -> float:
    """Resident memory now (Linux), else the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def agree(index: NoveltyIndex, candidates: Sequence[str], maxima: Sequence[float]) -> str:
    """How many index maxima and verdicts equal the reference's (the paper's ``max > 0.7``).

    A score of exactly 0.7 whose float rounds up is the one case where the index (real-number
    comparison, DESIGN: exactly 0.7 passes) and the paper's float comparison differ; such
    candidates are counted separately.
    """
    same_max = same_verdict = ties = 0
    for candidate, best in zip(candidates, maxima, strict=True):
        same_max += index.max_score(candidate) == best
        if abs(best - THRESHOLD) < 1e-9 and best > THRESHOLD:
            ties += 1
            continue
        same_verdict += (
            index.is_novel(candidate) == index.check(candidate).novel == (not best > THRESHOLD)
        )
    tie_note = f" ({ties} exact ties)" if ties else ""
    total = len(candidates)
    return f"maxima {same_max}/{total}, verdicts {same_verdict}/{total - ties}{tie_note}"


def bench_pool(
    size: int,
    pool: Sequence[str],
    held_out: Sequence[str],
    rouge_count: int,
    index_count: int,
    scorer: rouge_scorer.RougeScorer,
) -> None:
    candidates = make_candidates(held_out, pool, index_count, seed=size)
    index = NoveltyIndex(enumerate(pool))
    scan = FullScan(pool)

    rouge_candidates = candidates[:rouge_count]
    rouge_best, rouge_ms = timed(lambda c: rouge_max(scorer, c, pool), rouge_candidates)
    scan_candidates = candidates[:200]
    scan_best, scan_ms = timed(scan.max_score, scan_candidates)

    novel_ms = per_candidate_ms(index.is_novel, candidates)
    max_ms = per_candidate_ms(index.max_score, candidates)
    check_ms = per_candidate_ms(index.check, candidates)
    rejected = sum(best > THRESHOLD for best in rouge_best)
    print(
        f"{size:>9,} {rouge_ms:>11.1f} {scan_ms:>9.2f} {novel_ms:>8.3f} {max_ms:>9.3f} "
        f"{check_ms:>10.3f} {rouge_ms / novel_ms:>8,.0f}x {rouge_ms / check_ms:>7,.0f}x"
    )
    print(
        f"{'':>9} vs rouge-score ({rouge_count} candidates, {rejected} rejected): "
        f"{agree(index, rouge_candidates, rouge_best)}; "
        f"vs full scan: {agree(index, scan_candidates, scan_best)}"
    )


def bench_large(
    size: int, sentences: Sequence[str], held_out: Sequence[str], index_count: int, quick: bool
) -> None:
    pool = list(sentences[:size])
    spliced = splice(sentences, size - len(pool), seed=1, taken=set(pool) | set(held_out))
    pool += spliced
    print(f"\n{size:,} pool: {size - len(spliced):,} real + {len(spliced):,} spliced sentences")
    before = rss_mib()
    start = time.process_time()
    index = NoveltyIndex(enumerate(pool))
    build_s = time.process_time() - start
    print(
        f"build {build_s:.1f} s ({size / build_s:,.0f} items/s); "
        f"index memory about {rss_mib() - before:,.0f} MiB"
    )
    candidates = make_candidates(held_out, pool, index_count, seed=7)
    novel_ms = per_candidate_ms(index.is_novel, candidates)
    max_ms = per_candidate_ms(index.max_score, candidates)
    check_ms = per_candidate_ms(index.check, candidates)
    print(
        f"ms per candidate ({len(candidates)} candidates): is_novel {novel_ms:.3f}, "
        f"max_score {max_ms:.3f}, check(k=10) {check_ms:.3f}"
    )
    scan = FullScan(pool)
    checked = candidates[: 10 if quick else 20]
    scan_best, scan_ms = timed(scan.max_score, checked)
    print(
        f"full scan {scan_ms:.0f} ms per candidate ({scan_ms / novel_ms:,.0f}x is_novel, "
        f"{scan_ms / check_ms:,.0f}x check); {agree(index, checked, scan_best)}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small pools, few candidates")
    parser.add_argument(
        "--large",
        type=int,
        help="only the large pool, of this many items, with 100 candidates (10M: about 8 GiB)",
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; threshold {THRESHOLD}; one process, one thread"
    )
    started = time.perf_counter()
    sentences = real_sentences(30_000 if quick else None)
    random.Random(0).shuffle(sentences)
    held_out, sentences = sentences[:2_000], sentences[2_000:]
    print(
        f"corpus: {len(sentences) + len(held_out):,} distinct real sentences "
        f"({time.perf_counter() - started:.0f} s to extract); candidates: half unseen, "
        "half edited pool sentences"
    )

    if args.large:
        bench_large(args.large, sentences, held_out, 100, quick)
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    plan = {1_000: 40, 10_000: 8} if quick else {1_000: 100, 10_000: 20, 50_000: 6}
    index_count = 200 if quick else 1_000
    print("\nCPU ms per candidate; speed-up = rouge-score / index")
    print(
        f"{'pool':>9} {'rouge-score':>11} {'full scan':>9} {'is_novel':>8} {'max_score':>9} "
        f"{'check k=10':>10} {'is_novel':>9} {'check':>8}"
    )
    scorer_pool = sentences
    for size, rouge_count in plan.items():
        bench_pool(size, scorer_pool[:size], held_out, rouge_count, index_count, scorer)

    bench_large(100_000 if quick else 1_000_000, sentences, held_out, index_count, quick)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
