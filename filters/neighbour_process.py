"""Nearest neighbours in a process of their own, for pools where they cost more than the verdict.

At 1M pool items an exact verdict takes about 1.3 ms but the exact top-10 a stored task carries
takes about 16 ms (docs/BENCHMARKS.md), and the index's work holds the GIL, so a thread would not
help. This process keeps its own copy of the pool, applies the same additions and removals in the
same order, and answers "top-k of this text against the pool as it was when you asked" while the
caller's process goes on deciding. Messages are FIFO, so a query sees exactly the additions sent
before it: a caller that asks just before adding a task gets the neighbours of the pool at the
moment the task was decided.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Hashable, Iterable
from typing import Any

from filters.novelty import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD, NoveltyIndex

_CHUNK = 20_000  # items per start-up message: a 1M pool goes over in about 50 messages

Result = tuple[Hashable, float, list[tuple[Hashable, float]]]


def _serve(requests: Any, results: Any, threshold: float, k: int) -> None:
    index = NoveltyIndex()
    while True:
        message = requests.get()
        kind = message[0]
        if kind == "stop":
            return
        if kind == "add_many":
            index.add_many(message[1])
        elif kind == "add":
            index.add(message[1], message[2])
        elif kind == "remove":
            if message[1] in index:
                index.remove(message[1])
        elif kind == "query":
            check = index.check(message[2], threshold=threshold, k=k)
            results.put((message[1], check.max_score, [(n.key, n.score) for n in check.nearest]))


class NeighbourProcess:
    """A child process with a copy of the pool; `query` now, collect with `results` later."""

    def __init__(
        self,
        items: Iterable[tuple[Hashable, str]],
        *,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = DEFAULT_NEIGHBOURS,
    ) -> None:
        context = mp.get_context("spawn")  # never fork a process that runs threads
        self._requests: Any = context.Queue()
        self._results: Any = context.Queue()
        self._process = context.Process(
            target=_serve,
            args=(self._requests, self._results, threshold, k),
            name="selfinstruct-neighbours",
            daemon=True,
        )
        self._process.start()
        self.pending = 0  # queries asked and not answered yet
        chunk: list[tuple[Hashable, str]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= _CHUNK:
                self._requests.put(("add_many", chunk))
                chunk = []
        if chunk:
            self._requests.put(("add_many", chunk))

    def add(self, key: Hashable, text: str) -> None:
        self._requests.put(("add", key, text))

    def remove(self, key: Hashable) -> None:
        self._requests.put(("remove", key))

    def query(self, query_id: Hashable, text: str) -> None:
        self.pending += 1
        self._requests.put(("query", query_id, text))

    def results(self, *, wait_s: float = 0.0) -> list[Result]:
        """Answers that have arrived; with `wait_s`, wait that long for the first one."""
        out: list[Result] = []
        try:
            if wait_s > 0 and self.pending:
                out.append(self._results.get(timeout=wait_s))
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        self.pending -= len(out)
        return out

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def close(self) -> None:
        if self._process.is_alive():
            self._requests.put(("stop",))
            self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._requests.close()
        self._results.close()
