"""What one execution of a run holds, rebuilt from the database on every (re)start."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine

from app.leases import Lease
from app.llm import ModelEntry, backend_for, find_model, price_table
from app.models import Dataset, JobPart, Run, TaskOrigin, TaskStatus
from app.pipeline.loading import example_of, load_pool
from app.schemas.runs import Caps, RunCreate
from app.services.datasets import pool_languages
from app.settings import Settings
from app.strategies import Candidate, Pool, Strategy, get_strategy
from filters.heuristics import HeuristicConfig
from filters.language import UNKNOWN, detect_language
from filters.neighbour_process import NeighbourProcess
from filters.novelty import NoveltyVerdict, RecentItems
from generators.base import Backend, Generation, SamplingParams
from generators.errors import GeneratorError
from generators.judge_prompts import Judgement, JudgePrompt
from generators.prompt_text import BOOTSTRAP_HEADERS
from generators.prompts import LANGUAGES, to_chat_messages

NEIGHBOURS = 10
PENDING = "p"  # index keys of tasks accepted but not committed yet: "p1", "p2", ...


class PoolRow(NamedTuple):
    """An accepted task as another writer left it, read under the dataset's lock."""

    id: int
    instruction: str
    instances: list[dict[str, str]]
    origin: str
    language: str
    holdout_key: float | None


class CapReached(Exception):
    """A budget cap forbids another request; `reason` is the cap's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Tally:
    """Requests, tokens and what went wrong since the last commit; added to the run's counters
    in the commit that stores the candidates they produced."""

    requests: int = 0
    failed: int = 0
    retries: int = 0  # extra attempts the backend spent (429s, 5xx, timeouts), failed ones too
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    completions: int = 0  # answers to generation prompts (not classification or instances)
    unparseable: int = 0  # of those, answers that held no task at all
    last_error: str | None = None
    last_unparseable: str | None = None

    def take(self) -> Tally:
        """This tally's values, leaving it empty for the next commit group."""
        taken = Tally(**{f.name: getattr(self, f.name) for f in fields(self)})
        for f in fields(self):
            setattr(self, f.name, Tally.__dataclass_fields__[f.name].default)
        return taken

    def trouble(self) -> dict[str, Any] | None:
        """What went wrong with the model in this commit group, for the run's event log."""
        if not (self.failed or self.retries or self.unparseable):
            return None
        return {
            "requests": self.requests,
            "failed_requests": self.failed,
            "retries": self.retries,
            "unparseable_completions": self.unparseable,
            "last_error": self.last_error,
            "last_unparseable": self.last_unparseable,
        }


@dataclass
class Totals:
    """What the run (or its shard) has committed, so caps and the target see it without
    reading the database per request."""

    requests: int = 0
    tokens: int = 0
    cost: float = 0.0
    accepted: int = 0
    candidates: int = 0

    @classmethod
    def of(cls, run: Run, part: JobPart | None = None) -> Totals:
        """The run's figures, or its shard's (kept in the part's state) when it has one."""
        if part is None:
            tokens = run.prompt_tokens + run.completion_tokens
            return cls(run.requests, tokens, run.cost, run.accepted, run.candidates)
        s = part.state
        return cls(
            int(s.get("requests", 0)),
            int(s.get("prompt_tokens", 0)) + int(s.get("completion_tokens", 0)),
            float(s.get("cost", 0.0)),
            int(s.get("accepted", 0)),
            int(s.get("candidates", 0)),
        )


@dataclass(frozen=True)
class Share:
    """What one execution answers for: the whole run, or one shard of it (app/services/
    shards.py): its share of the target, of the caps and of the model's concurrency."""

    target: int
    caps: Caps
    shard: int | None = None  # None: the whole run
    shards: int = 1
    part_id: int | None = None

    @classmethod
    def of(cls, run: Run, caps: Caps, part: JobPart | None = None) -> Share:
        if part is None:
            return cls(run.target, caps)
        state = part.state
        return cls(int(state["target"]), Caps(**state["caps"]), part.part, run.shards, part.id)


@dataclass
class Verdict:
    candidate: Candidate
    status: TaskStatus
    reason: str | None = None
    detail: str | None = None
    max_rouge: float | None = None
    nearest: list[dict[str, Any]] = field(default_factory=list)
    is_classification: bool | None = None
    instances: list[dict[str, str]] = field(default_factory=list)
    key: Any = None  # the index key of an accepted candidate until it is committed
    foreign_mark: int = 0  # tasks of other writers this verdict was decided against
    query: int | None = None  # neighbours asked of the neighbour process, not received yet
    wrong_language: int = 0  # instances dropped: output in another language, not asked for
    judgement: Judgement | None = None  # the run's judge's, when it has one and it answered


@dataclass
class Item:
    """A candidate on its way through the stages."""

    candidate: Candidate
    screened: NoveltyVerdict
    added_mark: int  # pool additions the screening check saw
    label: bool | None = None
    raw_instances: list[dict[str, str]] | None = None
    kept: tuple[list[dict[str, str]], int] | None = None  # filtered instances, dropped foreign
    judgement: Judgement | None = None
    judge_failed: bool = False  # the judge request failed after its retries


class RunContext:
    """The pool, the backend, the spend and the strategy of one execution of a run."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        run: Run,
        dataset: Dataset,
        model: ModelEntry,
        loaded: tuple[Pool, list[tuple[int, str]], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.run_id: int = run.id  # type: ignore[assignment]
        self.dataset_id: int = dataset.id  # type: ignore[assignment]
        self.params = RunCreate.model_validate(run.params)
        # The dataset's change clock as read before the pool was (app/services/dataset_lock.py).
        self.pool, texts, self.clock = loaded or load_pool(engine, dataset_id=self.dataset_id)
        seeds = Counter(e.language or UNKNOWN for e in self.pool.seeds)
        # What candidates may be in, and the weights prompts are drawn in (filters.language).
        self.languages = (
            {self.params.language: 1}
            if self.params.language
            else pool_languages(dataset=dataset, seeds=dict(seeds))
        )
        self._heuristics: dict[str, HeuristicConfig] = {}
        self.language_credit: dict[str, float] = {}  # the prompt languages' round-robin
        self.topic_language = detect_language(self.params.topic) if self.params.topic else None
        self.backend = backend_for(settings, model)
        self.chat = model.mode == "chat"
        self.prices = price_table(settings)
        self.model_id = model.id
        # The judge (a run's `judge`): its own model, maybe on another server.
        self.judge: ModelEntry | None = None
        if self.params.judge is not None:
            self.judge = find_model(settings, self.params.judge.model, engine, field="judge.model")
        # The highest task id seen: a dataset's ids commit in order (the dataset's lock), so a
        # commit reads the tasks others added since by id alone.
        self.watermark = max((task_id for task_id, _ in texts), default=0)
        # Large pools: the decision uses the exact verdict alone; the top-10 a stored task
        # carries comes from a process of its own (filters/neighbour_process.py).
        self.neighbours: NeighbourProcess | None = None
        if texts and len(texts) >= settings.neighbours_process_min_pool:
            self.neighbours = NeighbourProcess(
                texts, threshold=self.params.filters.rouge_threshold, k=NEIGHBOURS
            )
        self._queries = 0
        self.lease: Lease | None = None  # the claim executing it; only its holder may store
        self.lineage = {
            "model": run.model,
            "strategy": self.params.strategy,
            "sampling": self.params.sampling.model_dump(),
            "run_id": self.run_id,
        }
        self.tally = Tally()
        self.committing = Tally()  # taken for the commit in progress, not in `committed` yet
        self.committed = Totals.of(run)
        self.share = Share.of(run, self.params.caps)  # a shard's, set by the driver
        self.in_flight = 0  # requests sent and not answered
        # Every addition to the index in order, so a decision checks only what joined the pool
        # after its candidate was screened; keys dropped later (demoted) are skipped.
        self.added = RecentItems()
        self.dropped: set[Any] = set()
        # Tasks other writers (runs in other processes, reviewers) accepted in this dataset,
        # in the order this execution learnt of them.
        # Kept tokenized: each commit checks the verdicts decided before against the part of
        # it they did not see, in one C++ call each.
        self.foreign = RecentItems()
        self.stored_ids: dict[Any, int] = {}  # pending key -> task id, once committed
        self._pending = 0
        self.last_error: str | None = None  # the latest failed request, for the run's error
        self.last_unparseable: str | None = None
        # The strategy of this execution; it loads what it needs (parents' depths, passages).
        self.strategy: Strategy = get_strategy(self.params.strategy)(self)
        extra = self.strategy.task_languages()
        if extra is not None and self.languages and not self.params.language:
            for code in extra:  # e.g. a passage's: the pool takes tasks in it
                self.languages.setdefault(code, 0)
            self.languages.pop(UNKNOWN, None)
        header = self.params.prompt.header
        self.echo_references = echo_references(header, self.strategy.echo_wording())

    def heuristics(self, language: str) -> HeuristicConfig:
        """The run's heuristics, judged in `language` (its lengths and blacklist)."""
        config = self._heuristics.get(language)
        if config is None:
            config = self.params.filters.heuristics.model_copy(update={"language": language})
            self._heuristics[language] = config
        return config

    def prompt_language(self, language: str) -> str:
        """The wording used for a task in `language`: its own where prompts exist, else English."""
        return language if language in LANGUAGES else "en"

    def pick_language(self, rng: random.Random) -> str:
        """The language of one prompt: the run's, or one of the pool's in proportion to its
        seeds.

        Smooth weighted round-robin (as nginx balances upstreams) rather than a random draw:
        every window of prompts holds each language in proportion, so a pool of 73% English and
        27% Chinese asks in Chinese about every fourth prompt, from the first ones on.
        """
        if self.params.language:
            return self.params.language
        if not self.languages:
            return "en"
        if self.topic_language in self.languages:  # a topic steers toward its own language too
            return self.topic_language
        credit = self.language_credit
        total = sum(self.languages.values())
        if not credit:  # where in the cycle a run starts comes from its seed
            credit.update({code: rng.random() * total for code in self.languages})
        for code, weight in self.languages.items():
            credit[code] += weight
        chosen = max(sorted(credit), key=lambda code: credit[code])
        credit[chosen] -= total
        return chosen

    def ask_neighbours(self, text: str) -> int:
        """Ask the neighbour process for the top-10 of `text` against the pool as it is now."""
        assert self.neighbours is not None
        self._queries += 1
        self.neighbours.query(self._queries, text)
        return self._queries

    def pool_add(self, key: Any, text: str) -> None:
        """A task joins the pool: the index, the additions since, and the neighbour process."""
        self.pool.index.add(key, text)
        self.added.append(key, text)
        if self.neighbours is not None:
            self.neighbours.add(key, text)

    def learn(self, added: list[PoolRow], changed: list[PoolRow], withdrawn: list[int]) -> None:
        """What other writers did since the last commit: tasks they accepted (`added`), tasks
        whose text or status changed to accepted (`changed`: a seed posted again, a review), and
        tasks no longer accepted (`withdrawn`). The pool follows; added and changed tasks join
        `foreign`, so verdicts decided before are checked against them at the next commit."""
        if changed or withdrawn:
            owned = {task_id: key for key, task_id in self.stored_ids.items()}
            ids = [*withdrawn, *(row.id for row in changed)]
            keys = [key for task_id in ids for key in (owned.get(task_id, task_id), task_id)]
            for key in self.pool.withdraw(keys):
                if self.neighbours is not None:
                    self.neighbours.remove(key)
            for task_id in ids:
                if task_id in owned:  # a task of this run, pooled under its pending key
                    self.strategy.renamed(owned[task_id], str(task_id))
        for row in [*added, *changed]:
            example = example_of(row.id, row.instruction, row.instances, row.language)
            seed = row.origin == TaskOrigin.seed.value
            self.pool.add_example(example, seed=seed, key=row.holdout_key)
            self.pool_add(row.id, row.instruction)
            self.foreign.append(row.id, row.instruction)

    def new_key(self) -> str:
        self._pending += 1
        return f"{PENDING}{self._pending}"

    # --- caps ---

    def capacity(self) -> int:
        """Requests this execution may have in flight: the model's concurrency, or a shard's
        share of it (each shard's worker has a client of its own for the same servers)."""
        capacity = self.backend.capacity()
        return capacity if self.share.shards == 1 else max(1, capacity // self.share.shards)

    def check_budget(self) -> None:
        """Raise CapReached when a cap (a shard's share of it) forbids one more request now."""
        caps = self.share.caps
        t, c = self.tally, self.committing
        if caps.max_requests is not None and (
            self.committed.requests + t.requests + c.requests + self.in_flight >= caps.max_requests
        ):
            raise CapReached("max_requests")
        tokens = t.prompt_tokens + t.completion_tokens + c.prompt_tokens + c.completion_tokens
        if caps.max_tokens is not None and self.committed.tokens + tokens >= caps.max_tokens:
            raise CapReached("max_tokens")
        if caps.max_cost is not None and self.committed.cost + t.cost + c.cost >= caps.max_cost:
            raise CapReached("max_cost")

    # --- LLM calls ---

    async def complete(
        self,
        text: str,
        sampling: dict[str, Any],
        stop: tuple[str, ...],
        *,
        language: str = "en",
        raw: bool = False,
    ) -> Generation | None:
        """One request; a failure after the backend's retries becomes None (and is counted).
        `raw` sends the text as it is even to a chat model (a chat template already rendered)."""
        wrap = self.chat and not raw
        prompt: Any = to_chat_messages(text, language=language) if wrap else text
        return await self._send(self.backend, self.model_id, prompt, _params(sampling, stop))

    async def ask_judge(self, prompt: JudgePrompt) -> Generation | None:
        """One judge request, counted and capped like every request of the run."""
        assert self.judge is not None
        backend = backend_for(self.settings, self.judge)
        chat = self.judge.mode == "chat"
        return await self._send(backend, self.judge.id, prompt.for_model(chat), prompt.params)

    async def _send(
        self, backend: Backend, model_id: str, prompt: Any, params: SamplingParams
    ) -> Generation | None:
        self.check_budget()
        self.in_flight += 1
        try:
            (result,) = await backend.generate([prompt], params, return_exceptions=True)
        finally:
            self.in_flight -= 1
        t = self.tally
        t.requests += 1
        if isinstance(result, GeneratorError):
            t.failed += 1
            t.retries += max(0, result.attempts - 1)
            t.last_error = self.last_error = str(result)
            return None
        t.retries += result.retries
        t.prompt_tokens += result.prompt_tokens
        t.completion_tokens += result.completion_tokens
        # Priced by the catalogue id: servers often answer with a longer model name.
        t.cost += self.prices.cost(model_id, result.prompt_tokens, result.completion_tokens)
        return result

    def count_answer(self, text: str, *, found: bool) -> None:
        """An answer to a generation prompt; one that held no candidate is unparseable (too
        many in a row stop the run)."""
        self.tally.completions += 1
        if not found:
            self.tally.unparseable += 1
            self.tally.last_unparseable = self.last_unparseable = text[:200]

    def sampling(self) -> dict[str, Any]:
        s = self.params.sampling
        return {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "seed": self.params.seed,
        }


@lru_cache(maxsize=64)
def _cached_params(sampling: tuple[tuple[str, Any], ...], stop: tuple[str, ...]) -> SamplingParams:
    return SamplingParams(**dict(sampling), stop=stop)


def _params(sampling: dict[str, Any], stop: tuple[str, ...]) -> SamplingParams:
    """The request's sampling parameters; a run asks with a handful of shapes, each validated
    once (pydantic's checks were 3% of the CPU per accepted task)."""
    try:
        return _cached_params(tuple(sampling.items()), tuple(stop))
    except TypeError:  # an unhashable value: validate it afresh
        return SamplingParams(**sampling, stop=stop)


def echo_references(header: str | None, own: Iterable[str] = ()) -> list[str]:
    """The sentences of the prompts' own wording a candidate must not repeat: the bootstrap
    headers, the run's header and what the strategy's prompts say (`own`)."""
    texts = [*BOOTSTRAP_HEADERS.values(), *own, *([header] if header else [])]
    return [s.strip() for t in texts for s in re.split(r"(?<=[.!?。！？])\s*", t) if s.strip()]
