"""Inverted lists of the novelty index, split into shards by text length.

A list maps one token occurrence id (see `filters.novelty`) to the ascending pool slots holding it.
Splitting the pool by length (shard n holds texts of 2**(n-1) to 2**n - 1 tokens) serves two
bounds at once: a whole shard is skipped when no length in it can reach the bar
(F1 <= 2*min(lc, lp)/(lc + lp)), and the number of frequent lists a shard may leave unread grows
with its shortest length, because an item of lp tokens sharing only s unread tokens scores at most
2*min(s, lp)/(lc + lp). On real sentences this reads about a third of the postings a single
unsplit index would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Slots = NDArray[np.intp]
SlotList = NDArray[np.intc]

SHARD_BITS = 6  # shard numbers fit in 6 bits: lengths below 2**63


def shard_number(length: int) -> int:
    """Shard of a text with `length` tokens (0 for an empty text, which is never listed)."""
    return length.bit_length()


def best_f1(length: int, shortest: int, longest: int) -> float:
    """Highest F1 a text of `length` tokens can reach with any text of a length in the range."""
    other = min(max(length, shortest), longest)
    return 2 * min(length, other) / (length + other)


def skippable(length: int, lists: int, floor: float, shortest: int, longest: int) -> int:
    """Largest s <= lists such that items sharing at most s tokens with the query stay below floor.

    For a pool length lp, sharing s tokens bounds F1 by 2*min(s, lp)/(length + lp), largest at
    lp = s clamped into the shard's range; that maximum grows with s, so bisect on it.
    """
    if floor <= 0:
        return 0

    def reachable(s: int) -> float:
        other = min(max(s, shortest), longest)
        return 2 * min(s, other) / (length + other)

    low, high = 0, lists  # reachable(low) < floor always holds (it is 0)
    while low < high:
        middle = (low + high + 1) // 2
        if reachable(middle) < floor:
            low = middle
        else:
            high = middle - 1
    return low


class LengthShard:
    """The inverted lists of the pool items whose length falls in one power-of-two range."""

    __slots__ = ("_buffers", "_lists", "longest", "number", "shortest")

    def __init__(self, number: int) -> None:
        self.number = number
        self.shortest = 1 << (number - 1)
        self.longest = (1 << number) - 1
        # Buffers grow by doubling; _lists holds the filled part of each, ready for queries.
        self._buffers: dict[int, SlotList] = {}
        self._lists: dict[int, SlotList] = {}

    def push(self, list_id: int, slot: int) -> None:
        buffer = self._buffers.get(list_id)
        used = 0 if buffer is None else len(self._lists[list_id])
        if buffer is None or used == len(buffer):
            grown = np.empty(max(4, 2 * used), np.intc)
            if buffer is not None:
                grown[:used] = buffer[:used]
            self._buffers[list_id] = buffer = grown
        buffer[used] = slot
        self._lists[list_id] = buffer[: used + 1]

    def extend(self, list_id: int, slots: SlotList) -> None:
        """Append ascending slots, all above the current ones (a bulk load)."""
        current = self._lists.get(list_id)
        if current is not None:
            slots = np.concatenate([current, slots])
        # May be a view of a shared array; its length equals its capacity, so the next `push`
        # copies it into a buffer of its own.
        self._buffers[list_id] = self._lists[list_id] = slots

    def copy(self) -> LengthShard:
        """A shard that shares the filled part of every list (never written again: the filled
        part of a buffer is only ever appended past) and owns no spare capacity, so its first
        `push` to a list copies that list (NoveltyIndex.copy)."""
        twin = LengthShard(self.number)
        twin._lists = dict(self._lists)
        twin._buffers = dict(self._lists)
        return twin

    def lists(self, list_ids: Sequence[int]) -> list[SlotList]:
        """The lists of the ids present in this shard, shortest first."""
        get = self._lists.get
        found = [slot_list for i in list_ids if (slot_list := get(i)) is not None]
        found.sort(key=len)
        return found


def count(lists: Sequence[SlotList], n_slots: int) -> tuple[Slots, NDArray[np.intp]]:
    """Distinct slots in the lists (ascending) and in how many of the lists each appears.

    Sorting the concatenation beats a dense bincount until the lists hold about half the pool,
    because bincount allocates and scans one counter per pool slot.
    """
    if not lists:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    joined = np.concatenate(lists)
    if len(joined) > n_slots // 2:
        counts = np.bincount(joined, minlength=n_slots)
        slots = np.flatnonzero(counts)
        return slots, counts[slots]
    joined.sort()
    first = np.empty(len(joined), np.bool_)
    first[0] = True
    np.not_equal(joined[1:], joined[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.empty(len(starts), np.intp)
    counts[:-1] = starts[1:] - starts[:-1]
    counts[-1] = len(joined) - starts[-1]
    return joined[starts].astype(np.intp), counts


def member(slots: Slots, slot_list: SlotList) -> NDArray[np.bool_]:
    """Which of the ascending `slots` are in the ascending `slot_list` (binary search)."""
    where = np.searchsorted(slot_list, slots.astype(slot_list.dtype))  # same dtype: no copy
    where[where == len(slot_list)] = len(slot_list) - 1
    return slot_list[where] == slots
