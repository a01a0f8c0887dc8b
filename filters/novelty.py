"""Exact ROUGE-L novelty checks against the whole pool, without scoring the whole pool.

The paper's filter scores a candidate against every instruction in the pool with rouge-score and
rejects it when the best F1 is greater than 0.7; that takes seconds per candidate at 50K
instructions. `NoveltyIndex` returns the same numbers, bit for bit, in about a millisecond or less
by computing the exact LCS only for pool items that could matter.

Scores. Tokens come from `filters.tokenize.tokenize` (rouge-score's tokens plus CJK characters).
For a candidate of ``lc`` tokens and a pool item of ``lp`` tokens with LCS length ``L``, the score
is rouge-score's own float expression (`filters.rouge.rouge_l_f1`), so it equals
``RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure`` exactly, in either argument order. The
LCS comes from rapidfuzz (C++, bit-parallel): each token is mapped to an integer id and each text
to the string of those code points.

Bounds. The inverted index has one list per *token occurrence*: the j-th copy of a token lists
the pool items holding that token at least j times. The number of the candidate's lists that
contain an item is the size of the multiset intersection of the two token bags, and
``L <= min(intersection, lc, lp)`` since an LCS is a common sub-multiset. As F1 = 2L/(lc+lp) in
real numbers, ``2*min(intersection, lc, lp)/(lc+lp)`` bounds the score from above. The ``s`` longest
lists ("the", "a") may be left unread: each adds at most one to an intersection, so counting them
as shared keeps the bound, and an item sharing nothing else scores at most
``2*min(s, lp)/(lc+lp)``; ``s`` is chosen so that this stays below the bar for every length in a
shard (`filters._postings`). The unread lists are then searched for the surviving items only,
which tightens their bounds while they are fewer than the list's entries. Pools of up to a few
thousand items are simply scored in full with one rapidfuzz call, which is faster there.

Why pruning never changes a verdict or a top-k score. An item is left out only when its bound is
below ``bar - 1e-9``, where ``bar`` is the threshold (verdicts) or a score that at least k pool
items are known to reach (top-k: the k-th best of a few items scored first, rising as exact scores
arrive). Its real F1 is at most the
bound, and rouge-score's float is within about 1e-16 of the real value, so the item's score as
rouge-score computes it is strictly below ``bar``: it cannot exceed the threshold, and it cannot
enter or tie into a top-k whose k-th score is at least ``bar``. Every other item gets its exact
LCS and rouge-score's float, so results equal a brute-force scan's, including a score of exactly
the threshold (kept: only *greater than* rejects) and ties, which go to the earlier insertion.

Threshold. A candidate is rejected when its best F1 is strictly greater than the threshold. By
default ("exact") that is decided in real numbers (`filters.rouge.exceeds`), so a score of
exactly the threshold passes at every pair of lengths; ``compare="float"`` instead compares
rouge-score's float, as the paper's code does, which also rejects the rare exact ties whose float
rounds up (LCS 7 between 7 and 13 tokens gives 0.7000000000000001). Scores are rouge-score's floats
either way, and pruning keeps every item that could tie, so both rules are exact.

Thread safety. One lock guards every public method, so an index can be shared by threads:
queries and additions are serialised (a query takes about a millisecond), and `check_and_add` is
atomic, so two threads cannot both accept near-copies of each other.

Removal leaves a tombstone that queries skip; rebuild the index when most of a pool is removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from filters._postings import (
    SHARD_BITS,
    LengthShard,
    Slots,
    best_f1,
    count,
    member,
    shard_number,
    skippable,
)
from filters.errors import DuplicateKey, InvalidFilterConfig, UnknownKey
from filters.rouge import exceeds, lcs_from_f1, rouge_l_f1_many
from filters.tokenize import tokenize

DEFAULT_THRESHOLD = 0.7
"""The paper's value: reject when the best ROUGE-L F1 is strictly greater than this."""
DEFAULT_NEIGHBOURS = 10
TOO_SIMILAR = "too_similar"
"""Reason code of a candidate rejected by the novelty check."""

_SLACK = 1e-9  # far above the float error of an F1, far below the gap between distinct F1s
_PILOT_BUDGET = 4096  # list entries read per shard to find a first k-th best score
_PILOT_SHARDS = 2  # shards the pilot looks at, most promising lengths first
_PILOT_TRIED = 32  # items per shard the pilot scores exactly (at least 4k)
_REFINE_MIN = 32  # search unread lists while more items than this survive in a shard
_CDIST_MIN = 24  # below this many LCS computations a Python loop beats one cdist call
_BULK_MIN = 64  # add_many batches at least this big build their lists with one sort
# Up to these pool sizes, scoring every item in one C++ call beats the index's numpy steps
# (measured on real sentences; a top-k needs more of those steps than a verdict).
_SCAN_MAX_VERDICT = 1000
_SCAN_MAX_TOP_K = 6000

Encoded = str | list[int]


class Neighbour(NamedTuple):
    """A pool item and its ROUGE-L F1 against the query."""

    key: Hashable
    score: float


@dataclass(frozen=True, slots=True)
class NoveltyVerdict:
    """Outcome of a novelty check: ``novel`` unless the best score exceeds ``threshold``.

    ``ok``, ``reason`` and ``detail`` mirror the heuristic filters' `HeuristicVerdict`.
    """

    novel: bool
    max_score: float
    threshold: float
    nearest: tuple[Neighbour, ...]

    @property
    def ok(self) -> bool:
        return self.novel

    @property
    def reason(self) -> str | None:
        return None if self.novel else TOO_SIMILAR

    @property
    def detail(self) -> str:
        closest = f" (closest: {self.nearest[0].key!r})" if self.nearest else ""
        relation = "<=" if self.novel else ">"
        return f"ROUGE-L {self.max_score:.4f} {relation} {self.threshold}{closest}"


@dataclass(slots=True)
class _Query:
    length: int
    encoded: Encoded
    list_ids: list[int]  # one per occurrence of a token the pool knows


@dataclass(slots=True)
class _Survivors:
    """Items whose bound reaches the bar, with what the bound is made of."""

    slots: Slots
    lengths: NDArray[np.int32]
    bound: NDArray[np.float64]


def _encode(ids: list[int]) -> Encoded:
    # One code point per token keeps rapidfuzz on its fast string path; ids past the Unicode
    # range (a vocabulary over 1.1M tokens) fall back to int lists, which it compares by value.
    try:
        return "".join(map(chr, ids))
    except ValueError:
        return ids


class NoveltyIndex:
    """The pool's instructions, indexed for exact ROUGE-L maximum, verdict and top-k queries.

    Keys are any hashable ids (task ids); a key can be added once, removed, and added again.
    """

    def __init__(
        self,
        items: Iterable[tuple[Hashable, str]] = (),
        *,
        tokenizer: Callable[[str], Sequence[str]] = tokenize,
        compare: Literal["exact", "float"] = "exact",
    ) -> None:
        if compare not in ("exact", "float"):
            raise InvalidFilterConfig(
                f"compare must be 'exact' or 'float', got {compare!r}; 'exact' lets a score of "
                "exactly the threshold pass, 'float' reproduces the paper's float comparison",
                field="compare",
            )
        self._tokenizer = tokenizer
        self._compare = compare
        self._lock = threading.RLock()
        self._vocab: dict[str, int] = {}
        # List ids: the first occurrence of token t has _first_list[t]; the j-th further
        # occurrence has _repeat_list[(t, j)].
        self._first_list: list[int] = []
        self._repeat_list: dict[tuple[int, int], int] = {}
        self._list_count = 0
        self._shards: dict[int, LengthShard] = {}
        self._keys: list[Hashable] = []
        self._encoded: list[Encoded] = []
        self._slot_of: dict[Hashable, int] = {}
        self._lengths: NDArray[np.int32] = np.zeros(1024, np.int32)
        self._alive: NDArray[np.bool_] = np.zeros(1024, np.bool_)
        self._slots = 0
        self._removed = 0
        self.add_many(items)

    # ----------------------------------------------------------------- building

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, key: object) -> bool:
        return key in self._slot_of

    @property
    def tombstones(self) -> int:
        """Removed items whose slots queries still skip (a rebuild drops them)."""
        return self._removed

    def copy(self) -> NoveltyIndex:
        """An independent index with the same items, keys and insertion order (so the same
        answers, ties included), sharing the immutable parts: texts' encodings and the filled
        part of each inverted list. A list is copied only when one side adds to it: the copy's
        buffers are exactly as long as its lists, so its first `push` reallocates, and the
        original's pushes write past the end the copy can see. At 1M items it takes about 0.05 s
        and, with a pool's lists, 85 MiB (docs/BENCHMARKS.md)."""
        with self._lock:
            twin = NoveltyIndex.__new__(NoveltyIndex)
            twin._tokenizer, twin._compare = self._tokenizer, self._compare
            twin._lock = threading.RLock()
            twin._vocab = dict(self._vocab)
            twin._first_list = list(self._first_list)
            twin._repeat_list = dict(self._repeat_list)
            twin._list_count = self._list_count
            twin._shards = {number: shard.copy() for number, shard in self._shards.items()}
            twin._keys = list(self._keys)
            twin._encoded = list(self._encoded)
            twin._slot_of = dict(self._slot_of)
            twin._lengths = self._lengths.copy()
            twin._alive = self._alive.copy()
            twin._slots, twin._removed = self._slots, self._removed
            return twin

    def add(self, key: Hashable, text: str) -> None:
        """Add one pool item; `DuplicateKey` if `key` is already present."""
        with self._lock:
            if key in self._slot_of:
                raise DuplicateKey(key)
            self._add(key, text)

    def add_many(self, items: Iterable[tuple[Hashable, str]]) -> int:
        """Add ``(key, text)`` pairs (start-up loads); returns how many were added.

        Large batches build their lists with one stable sort instead of per-token appends.
        On a `DuplicateKey` the items before the offending one stay added.
        """
        with self._lock:
            list_ids: list[int] = []
            owners: list[int] = []
            added = 0
            try:
                for key, text in items:
                    if key in self._slot_of:
                        raise DuplicateKey(key)
                    ids = self._insert(key, text)
                    list_ids.extend(ids)
                    owners.extend([self._slots - 1] * len(ids))
                    added += 1
            finally:
                if added >= _BULK_MIN:
                    self._bulk_lists(list_ids, owners)
                else:
                    for list_id, slot in zip(list_ids, owners, strict=True):
                        self._shard_of(slot).push(list_id, slot)
            return added

    def remove(self, key: Hashable) -> None:
        """Drop `key` from the pool (an edited or deleted task); `UnknownKey` if absent."""
        with self._lock:
            slot = self._slot_of.pop(key, None)
            if slot is None:
                raise UnknownKey(key)
            self._alive[slot] = False
            self._encoded[slot] = ""
            self._removed += 1

    def _add(self, key: Hashable, text: str) -> None:
        list_ids = self._insert(key, text)
        slot = self._slots - 1
        if list_ids:
            shard = self._shard_of(slot)
            for list_id in list_ids:
                shard.push(list_id, slot)

    def _insert(self, key: Hashable, text: str) -> list[int]:
        """Register the item everywhere but in the lists; returns the list ids it belongs to."""
        tokens = self._tokenizer(text)
        vocab = self._vocab
        token_ids = [vocab.get(token, -1) for token in tokens]
        if -1 in token_ids:
            for at, token in enumerate(tokens):
                tid = vocab.get(token)
                if tid is None:
                    tid = vocab[token] = len(self._first_list)
                    self._first_list.append(self._new_list_id())
                token_ids[at] = tid
        first = self._first_list
        if len(set(token_ids)) == len(token_ids):
            list_ids = [first[tid] for tid in token_ids]
        else:
            list_ids = []
            seen: dict[int, int] = {}
            for tid in token_ids:
                j = seen.get(tid, 0)
                seen[tid] = j + 1
                if j == 0:
                    list_ids.append(first[tid])
                else:
                    list_id = self._repeat_list.get((tid, j))
                    if list_id is None:
                        list_id = self._repeat_list[(tid, j)] = self._new_list_id()
                    list_ids.append(list_id)
        slot = self._slots
        if slot == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
            self._alive = np.concatenate([self._alive, np.zeros_like(self._alive)])
        self._lengths[slot] = len(token_ids)
        self._alive[slot] = True
        self._keys.append(key)
        self._encoded.append(_encode(token_ids))
        self._slot_of[key] = slot
        self._slots = slot + 1
        return list_ids

    def _new_list_id(self) -> int:
        self._list_count += 1
        return self._list_count - 1

    def _shard_of(self, slot: int) -> LengthShard:
        number = shard_number(int(self._lengths[slot]))
        shard = self._shards.get(number)
        if shard is None:
            shard = self._shards[number] = LengthShard(number)
        return shard

    def _bulk_lists(self, list_ids: list[int], owners: list[int]) -> None:
        if not list_ids:
            return
        slots = np.asarray(owners, np.intc)
        shards = np.asarray([shard_number(n) for n in range(int(self._lengths.max()) + 1)])
        composite = (np.asarray(list_ids, np.int64) << SHARD_BITS) | shards[self._lengths[slots]]
        order = np.argsort(composite, kind="stable")  # stable: slots stay ascending per list
        composite, slots = composite[order], slots[order]
        starts = np.flatnonzero(np.diff(composite, prepend=-1))
        ends = np.append(starts[1:], len(composite))
        mask = (1 << SHARD_BITS) - 1
        for start, end, key in zip(
            starts.tolist(), ends.tolist(), composite[starts].tolist(), strict=True
        ):
            number = key & mask
            shard = self._shards.get(number)
            if shard is None:
                shard = self._shards[number] = LengthShard(number)
            shard.extend(key >> SHARD_BITS, slots[start:end])

    # ----------------------------------------------------------------- queries

    def max_score(self, text: str) -> float:
        """Highest ROUGE-L F1 of `text` against the pool (0.0 for an empty pool)."""
        with self._lock:
            best = self._nearest(self._prepare(text), 1)
            return best[0][0] if best else 0.0

    def nearest(self, text: str, k: int = DEFAULT_NEIGHBOURS) -> list[Neighbour]:
        """The k pool items most similar to `text`, best first, ties in insertion order.

        Only items with a positive score are listed, so fewer than k may come back.
        """
        _check_k(k)
        with self._lock:
            return self._neighbours(self._nearest(self._prepare(text), k))

    def is_novel(self, text: str, threshold: float = DEFAULT_THRESHOLD) -> bool:
        """False when some pool item scores strictly greater than `threshold`.

        Cheaper than `check`: it stops at the first item over the threshold.
        """
        _check_threshold(threshold)
        with self._lock:
            query = self._prepare(text)
            if self._slots <= _SCAN_MAX_VERDICT:
                found = self._nearest(query, 1)
            else:
                found = self._search(query, 1, bar=threshold, stop_above=threshold)
            return not (found and self._exceeds(query, found[0], threshold))

    def check(
        self, text: str, *, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_NEIGHBOURS
    ) -> NoveltyVerdict:
        """The verdict, the exact maximum and the k nearest items, for storing with the task."""
        _check_threshold(threshold)
        _check_k(k)
        with self._lock:
            return self._verdict(self._prepare(text), threshold, k)

    def check_and_add(
        self,
        key: Hashable,
        text: str,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = DEFAULT_NEIGHBOURS,
    ) -> NoveltyVerdict:
        """`check`, then add the text under `key` when it is novel, atomically.

        This is the paper's batch loop: an accepted candidate joins the pool at once, so the
        next candidate of the same batch is compared with it.
        """
        _check_threshold(threshold)
        _check_k(k)
        with self._lock:
            if key in self._slot_of:
                raise DuplicateKey(key)
            verdict = self._verdict(self._prepare(text), threshold, k)
            if verdict.novel:
                self._add(key, text)
            return verdict

    def _verdict(self, query: _Query, threshold: float, k: int) -> NoveltyVerdict:
        found = self._nearest(query, max(k, 1))
        best = found[0][0] if found else 0.0
        return NoveltyVerdict(
            novel=not (found and self._exceeds(query, found[0], threshold)),
            max_score=best,
            threshold=threshold,
            nearest=tuple(self._neighbours(found[:k])),
        )

    def _exceeds(self, query: _Query, found: tuple[float, int], threshold: float) -> bool:
        score, slot = found
        if self._compare == "float" or abs(score - threshold) > _SLACK:
            return score > threshold
        length = int(self._lengths[slot])
        return exceeds(lcs_from_f1(score, query.length, length), query.length, length, threshold)

    def _neighbours(self, found: list[tuple[float, int]]) -> list[Neighbour]:
        return [Neighbour(self._keys[slot], score) for score, slot in found]

    def _prepare(self, text: str) -> _Query:
        tokens = self._tokenizer(text)
        unknown = len(self._first_list)  # an id no pool token has: it never matches
        token_ids = [self._vocab.get(token, unknown) for token in tokens]
        list_ids: list[int] = []
        seen: dict[int, int] = {}
        for tid in token_ids:
            if tid == unknown:
                continue
            j = seen.get(tid, 0)
            seen[tid] = j + 1
            list_id = self._first_list[tid] if j == 0 else self._repeat_list.get((tid, j))
            if list_id is not None:  # no pool item holds the token j+1 times: nothing to count
                list_ids.append(list_id)
        return _Query(len(token_ids), _encode(token_ids), list_ids)

    def _nearest(self, query: _Query, k: int) -> list[tuple[float, int]]:
        if k == 0 or not query.list_ids:
            return []
        if self._slots <= _SCAN_MAX_TOP_K:
            return self._scan(query, k)
        return self._search(query, k, bar=self._pilot_bar(query, k), stop_above=None)

    def _scan(self, query: _Query, k: int) -> list[tuple[float, int]]:
        """Top-k by scoring every item: exact by construction, and fastest for small pools."""
        lcs = process.cdist(
            [query.encoded], self._encoded, scorer=LCSseq.similarity, dtype=np.int64
        )[0]
        scores = rouge_l_f1_many(lcs, query.length, self._lengths[: self._slots])
        scored = np.flatnonzero(scores > 0)  # removed items were blanked: they score 0
        best = scored[np.lexsort((scored, -scores[scored]))[:k]]
        return [(float(scores[slot]), int(slot)) for slot in best]

    def _pilot_bar(self, query: _Query, k: int) -> float:
        """A score that k pool items are known to reach (0.0 if none found): a top-k floor.

        Scores the items sharing most of the rarest tokens, in the shards whose lengths are
        closest to the query's; the higher the floor, the more lists the real pass may skip.
        """
        length = query.length
        shards = sorted(
            self._shards.values(),
            key=lambda shard: (-best_f1(length, shard.shortest, shard.longest), shard.number),
        )
        scores: list[NDArray[np.float64]] = [np.empty(0)]
        looked = 0
        for shard in shards:
            lists = shard.lists(query.list_ids)
            if not lists:
                continue
            taken = int(np.searchsorted(np.cumsum([len(x) for x in lists]), _PILOT_BUDGET)) + 1
            slots, overlap = count(lists[:taken], self._slots)
            if self._removed:
                live = self._alive[slots]
                slots, overlap = slots[live], overlap[live]
            lengths = self._lengths[slots]
            tried = min(len(slots), max(4 * k, _PILOT_TRIED))
            if tried < len(slots):
                promise = np.minimum(overlap, lengths) / (length + lengths)
                pick = np.argpartition(-promise, tried - 1)[:tried]
                slots, lengths = slots[pick], lengths[pick]
            scores.append(rouge_l_f1_many(self._lcs(query.encoded, slots), length, lengths))
            looked += 1
            if looked == _PILOT_SHARDS:
                break
        return _kth_best(np.concatenate(scores), k)

    def _search(
        self, query: _Query, k: int, *, bar: float, stop_above: float | None
    ) -> list[tuple[float, int]]:
        """Exact top-k ``(score, slot)`` among items scoring at least `bar`, best first.

        With `stop_above`, returns as soon as one item exceeds it (the list then holds only that
        item).
        """
        survivors = self._survivors(query, bar - _SLACK)
        slots, lengths, bound = survivors.slots, survivors.lengths, survivors.bound
        found_scores: list[NDArray[np.float64]] = [np.empty(0)]
        found_slots: list[Slots] = [np.empty(0, np.intp)]
        current = bar  # rises to the k-th best exact score once k are known
        computed = 0
        for batch in _by_bound(slots, bound):
            if bound[batch[0]] < current - _SLACK:
                break  # every later item has a lower bound still
            batch = batch[bound[batch] >= current - _SLACK]
            scores = rouge_l_f1_many(
                self._lcs(query.encoded, slots[batch]), query.length, lengths[batch]
            )
            found_scores.append(scores)
            found_slots.append(slots[batch])
            computed += len(batch)
            if stop_above is not None:
                for hit in np.flatnonzero(scores > stop_above - _SLACK).tolist():
                    candidate = (float(scores[hit]), int(slots[batch][hit]))
                    if self._exceeds(query, candidate, stop_above):
                        return [candidate]
            if computed >= k:
                current = max(current, _kth_best(np.concatenate(found_scores), k))
        all_scores = np.concatenate(found_scores)
        all_slots = np.concatenate(found_slots)
        valid = (all_scores >= bar) & (all_scores > 0)  # below bar, better items may be unread
        top_scores, top_slots = all_scores[valid], all_slots[valid]
        best = np.lexsort((top_slots, -top_scores))[:k]
        return [(float(top_scores[i]), int(top_slots[i])) for i in best]

    def _survivors(self, query: _Query, floor: float) -> _Survivors:
        """Live items whose upper bound is at least `floor`; every other item scores below it."""
        length = query.length
        parts: list[_Survivors] = []
        for shard in self._shards.values():
            if best_f1(length, shard.shortest, shard.longest) < floor:
                continue
            lists = shard.lists(query.list_ids)
            skipped = skippable(length, len(lists), floor, shard.shortest, shard.longest)
            slots, overlap = count(lists[: len(lists) - skipped], self._slots)
            if self._removed:
                live = self._alive[slots]
                slots, overlap = slots[live], overlap[live]
            lengths = self._lengths[slots]
            for unread in [None, *lists[len(lists) - skipped :]]:
                if unread is not None:
                    # Searching a list for the survivors is worth it while they are fewer than
                    # its entries; then each one read lowers every survivor's bound by a token.
                    if len(slots) <= _REFINE_MIN or len(slots) > len(unread):
                        break
                    overlap = overlap + member(slots, unread)
                    skipped -= 1
                shared = np.minimum(np.minimum(overlap + skipped, lengths), length)
                bound = 2.0 * shared / (length + lengths)
                keep = np.flatnonzero(bound >= floor)
                slots, overlap, lengths, bound = (
                    slots[keep],
                    overlap[keep],
                    lengths[keep],
                    bound[keep],
                )
            parts.append(_Survivors(slots, lengths, bound))
        if not parts:
            return _Survivors(np.empty(0, np.intp), np.empty(0, np.int32), np.empty(0))
        if len(parts) == 1:
            return parts[0]
        return _Survivors(
            np.concatenate([part.slots for part in parts]),
            np.concatenate([part.lengths for part in parts]),
            np.concatenate([part.bound for part in parts]),
        )

    def _lcs(self, encoded: Encoded, slots: Slots) -> NDArray[np.int64]:
        pool = self._encoded
        choices = [pool[slot] for slot in slots.tolist()]
        if len(choices) < _CDIST_MIN:
            return np.array([LCSseq.similarity(encoded, c) for c in choices], dtype=np.int64)
        matrix = process.cdist([encoded], choices, scorer=LCSseq.similarity, dtype=np.int64)
        return np.asarray(matrix[0])


def _by_bound(slots: Slots, bound: NDArray[np.float64]) -> Iterator[NDArray[np.intp]]:
    """Positions of the items, best bound first (then insertion order), in doubling chunks."""
    order = np.lexsort((slots, -bound))
    start, size = 0, 8
    while start < len(order):
        yield order[start : start + size]
        start += size
        size *= 2


def _kth_best(scores: NDArray[np.float64], k: int) -> float:
    """The k-th highest score, or 0.0 when there are fewer than k."""
    if len(scores) < k:
        return 0.0
    return float(np.partition(scores, len(scores) - k)[len(scores) - k])


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise InvalidFilterConfig(
            f"threshold must be a ROUGE-L F1 between 0 and 1, got {threshold!r}; "
            f"the paper uses {DEFAULT_THRESHOLD}",
            field="threshold",
        )


def _check_k(k: int) -> None:
    if k < 0:
        raise InvalidFilterConfig(
            f"k (number of nearest neighbours) must be 0 or more, got {k!r}", field="k"
        )


def merge_verdicts(earlier: NoveltyVerdict, later: NoveltyVerdict, k: int) -> NoveltyVerdict:
    """One verdict for a pool checked in two parts; ties keep the earlier part's items first,
    as a single query orders them by insertion."""
    nearest = sorted(
        [*earlier.nearest, *later.nearest], key=lambda n: -n.score
    )  # stable: earlier items stay ahead on ties
    return NoveltyVerdict(
        novel=earlier.novel and later.novel,
        max_score=max(earlier.max_score, later.max_score),
        threshold=earlier.threshold,
        nearest=tuple(nearest[:k]),
    )


class RecentItems:
    """What joined a pool after its index was queried, kept tokenized, so a decision can
    bring an earlier `NoveltyIndex.check` up to date in one C++ call over the items since.

    Append-only; `skip` names keys taken out of the pool since (they are passed over).
    """

    def __init__(self, tokenizer: Callable[[str], Sequence[str]] = tokenize) -> None:
        self._tokenizer = tokenizer
        self._vocab: dict[str, int] = {}
        self.keys: list[Hashable] = []
        self._encoded: list[Encoded] = []
        self._lengths: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def _ids(self, text: str, *, grow: bool) -> list[int]:
        vocab = self._vocab
        if grow:
            return [vocab.setdefault(t, len(vocab)) for t in self._tokenizer(text)]
        unknown = len(vocab)  # never equal to a known id: it cannot match
        return [vocab.get(t, unknown) for t in self._tokenizer(text)]

    def append(self, key: Hashable, text: str) -> None:
        ids = self._ids(text, grow=True)
        self.keys.append(key)
        self._encoded.append(_encode(ids))
        self._lengths.append(len(ids))

    def check(
        self,
        text: str,
        *,
        since: int,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = DEFAULT_NEIGHBOURS,
        skip: frozenset[Hashable] | set[Hashable] = frozenset(),
    ) -> NoveltyVerdict:
        """The check of `text` against the items appended at position `since` and later."""
        _check_threshold(threshold)
        _check_k(k)
        ids = self._ids(text, grow=False)
        end = len(self.keys)
        positions: Sequence[int]
        if skip:
            positions = [i for i in range(since, end) if self.keys[i] not in skip]
            choices = [self._encoded[i] for i in positions]
            lengths = np.array([self._lengths[i] for i in positions], np.int64)
        else:  # the usual case: nothing was taken out, the items since are one slice
            positions = range(since, end)
            choices = self._encoded[since:end]
            lengths = np.array(self._lengths[since:end], np.int64)
        if not ids or not choices:
            return NoveltyVerdict(True, 0.0, threshold, ())
        encoded = _encode(ids)
        if len(choices) < _CDIST_MIN:
            lcs = np.array([LCSseq.similarity(encoded, c) for c in choices], np.int64)
        else:
            lcs = process.cdist([encoded], choices, scorer=LCSseq.similarity, dtype=np.int64)[0]
        # Scored in one numpy pass, element for element the floats `rouge_l_f1` gives; only
        # scores within float error of the threshold or above get the exact test.
        scores = rouge_l_f1_many(lcs, len(ids), lengths)
        novel = not any(
            exceeds(int(lcs[i]), len(ids), int(lengths[i]), threshold)
            for i in np.flatnonzero((lcs > 0) & (scores > threshold - _SLACK)).tolist()
        )
        shared = np.flatnonzero(lcs > 0)
        ranked = shared[np.lexsort((shared, -scores[shared]))]  # ties: the earlier item first
        best = ranked[:k].tolist()
        return NoveltyVerdict(
            novel=novel,
            max_score=float(scores[ranked[0]]) if len(ranked) else 0.0,
            threshold=threshold,
            nearest=tuple(Neighbour(self.keys[positions[i]], float(scores[i])) for i in best),
        )
