"""What a strategy is: the base class each strategy module subclasses, and the candidates it
hands the stream.

A strategy decides what one prompt asks for and how its answer becomes candidates; what follows
(screening, classification, instances, novelty, judge, storage) is the stream's and the same for
every strategy. The stream, the storage and the services ask the strategy through this class and
never compare its name, so a new strategy is one module (docs/ARCHITECTURE.md, "Adding a
strategy").
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from app.models import TaskOrigin

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from app.llm import ModelEntry
    from app.models import Dataset
    from app.strategies.pool import Pool
    from generators.base import Backend, Generation

# A run's parameters: app.schemas.runs builds RunCreate from the registered strategies' fields,
# so a strategy sees it untyped (its own fields through `setting_of`), not as an import above it.
RunCreate = Any


class RunView(Protocol):
    """What a strategy reads and calls of the run it serves. app.pipeline.context.RunContext is
    the implementation; a protocol here keeps the strategies below the pipeline, with no import
    circle between them."""

    last_error: str | None  # a strategy may say why it could not prompt

    @property
    def engine(self) -> Engine: ...
    @property
    def run_id(self) -> int: ...
    @property
    def dataset_id(self) -> int: ...
    @property
    def params(self) -> RunCreate: ...
    @property
    def pool(self) -> Pool: ...
    @property
    def lineage(self) -> dict[str, Any]: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def model_id(self) -> str: ...

    def prompt_language(self, language: str) -> str: ...
    def pick_language(self, rng: random.Random) -> str: ...
    def sampling(self) -> dict[str, Any]: ...

    async def complete(
        self,
        text: str,
        sampling: dict[str, Any],
        stop: tuple[str, ...],
        *,
        language: str = "en",
        raw: bool = False,
    ) -> Generation | None: ...

    def count_answer(self, text: str, *, found: bool) -> None: ...


class ItemView(Protocol):
    """A candidate in the stream, as a strategy that writes its own instances sees it."""

    candidate: Candidate
    raw_instances: list[dict[str, str]] | None


class StrictSpec(BaseModel):
    """A strategy's settings object: unknown keys are refused, as everywhere in a run's body."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Candidate:
    """A would-be task on its way into the stream, with the lineage of the prompt it came from."""

    instruction: str
    lineage: dict[str, Any]
    instances: list[dict[str, str]] | None = None  # when the strategy brings them (alpaca...)
    language: str = "unknown"  # detected at screening
    origin: str = TaskOrigin.generated.value
    parent: str | None = None  # the instruction it was rewritten from (checked as a rewrite)


def request_seed(rng: random.Random) -> int:
    """A sampling seed per request, drawn from the run's: the same prompt sent twice (magpie's
    always is; a passage used twice) must not get the same answer twice."""
    return rng.randrange(2**31)


def setting_of(params: RunCreate, name: str) -> Any:
    """A strategy's own field of a run's parameters. RunCreate gets those fields from the
    registry at import, so type checkers do not see them: the caller states the type."""
    return getattr(params, name)


class Strategy(ABC):
    """One way of constructing candidates.

    The class describes the strategy (its name, its fields of a run's body, what it needs) and
    is asked before a run is created; an instance runs one execution of a run and keeps what
    that execution loaded and learnt (parents' depths, passages still owed).
    """

    # What `strategy` of a run, `--strategy` of the CLI and the dashboard's form call it.
    name: ClassVar[str]
    # A few words for the `strategy` field's description, shown as "name (summary)".
    summary: ClassVar[str]
    # Its own fields of a run's body, declared on a StrictSpec subclass; RunCreate takes them
    # over (validators of that class do not come along: rules go in `check_params`). Each needs
    # a default, since a run of another strategy omits it; name them after the strategy.
    fields: ClassVar[type[BaseModel] | None] = None
    # A rule between fields that JSON Schema cannot state, in the words `check_params` refuses
    # with; it joins the run schema's description, so the document states every refusal.
    rule: ClassVar[str | None] = None
    # Whether `topic` steers it (it shows pool tasks); a run with a topic is refused otherwise.
    uses_topic: ClassVar[bool] = True
    # Whether a prompt is a model request. A local draw (no model writes the instruction) counts
    # as `prompts_per_batch` prompts toward the idle window, an empty draw is not a useless
    # answer, and the driver makes one draw per turn so candidates are decided in between.
    uses_model: ClassVar[bool] = True
    # What it needs besides a model and a pool, for clients (GET /v1/strategies): `documents`
    # (the dataset's documents), `chat_template` (the model's raw chat template).
    needs: ClassVar[tuple[str, ...]] = ()
    # Whether shards of one run may each draw from it independently (a random draw may; a
    # finite queue of sources, each to be used once, may not).
    shardable: ClassVar[bool] = True

    # --- asked before a run is created ---------------------------------------------------------

    @classmethod
    def check_params(cls, params: RunCreate) -> None:
        """Refuse parameters this strategy cannot run with: raise ValueError in `rule`'s words
        (the body's validation makes it a 422)."""
        return None

    @classmethod
    def check_model(cls, model: ModelEntry) -> None:
        """Refuse a model this strategy cannot use (raise app.errors.InvalidInput)."""
        return None

    @classmethod
    def check_dataset(cls, *, session: Session, dataset: Dataset, params: RunCreate) -> None:
        """Refuse a dataset that lacks what this strategy draws on (raise InvalidInput)."""
        return None

    @classmethod
    def settings_schema(cls) -> dict[str, Any]:
        """Its fields' JSON Schemas, self-contained (no `$ref`), for clients that build a form."""
        if cls.fields is None:
            return {}
        schema = cls.fields.model_json_schema()
        defs = schema.get("$defs", {})
        return {name: _inline(prop, defs) for name, prop in schema["properties"].items()}

    # --- one execution of a run ----------------------------------------------------------------

    def __init__(self, ctx: RunView) -> None:
        """Load what this execution needs from the database; a resumed run starts here too."""
        self.ctx = ctx

    def task_languages(self) -> Iterable[str] | None:
        """Languages its candidates may be in besides the pool's; None: the pool's only."""
        return None

    def echo_wording(self) -> Iterable[str]:
        """Texts of its own prompts that no candidate may repeat (`echoes_prompt`), besides the
        bootstrap headers and the run's header, which always count."""
        return ()

    @abstractmethod
    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        """One prompt's candidates: [] when the answer held none, None when the request failed.
        Requests go through `self.ctx.complete` (counted and capped), and what an answer held
        through `self.answered`."""

    async def write_instances(self, item: ItemView) -> bool:
        """Write the candidate's instances itself (True), or leave them to the instance prompt
        (False). Only called when the run generates instances and the candidate has none."""
        return False

    def accepted(self, key: Any, candidate: Candidate) -> None:
        """A candidate joined the pool under `key` (a pending key until it is committed)."""
        return None

    def renamed(self, key: Any, task_id: str) -> None:
        """A task this execution accepted under `key` was changed by another writer and joins
        the pool again under its task id: move what the strategy keeps of it."""
        return None

    def can_prompt(self, *, launching: int, candidates: int) -> bool:
        """Whether another prompt may start now: `launching` prompts were started and have not
        sent their request yet; the run has stored `candidates` so far."""
        return True

    def exhausted(self) -> str | None:
        """The stop reason once nothing is left to prompt with; the run then succeeds with it."""
        return None

    # --- for subclasses -----------------------------------------------------------------------

    def setting(self, name: str) -> Any:
        """This run's value of one of the strategy's own fields."""
        return setting_of(self.ctx.params, name)

    def answered(self, found: list[Candidate] | Candidate | None, text: str) -> list[Candidate]:
        """The candidates of one answer, counted as a completion; an answer that held none
        counts as unparseable (too many in a row stop the run)."""
        if isinstance(found, Candidate):
            found = [found]
        self.ctx.count_answer(text, found=bool(found))
        return found or []


def _inline(schema: Any, defs: Mapping[str, Any]) -> Any:
    """`schema` with every `$ref` to `defs` replaced by the definition itself."""
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _inline({**defs[ref.removeprefix("#/$defs/")], **rest}, defs)
    return {key: _inline(value, defs) for key, value in schema.items()}
