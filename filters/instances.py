"""Instance filters: keep the input/output pairs a model can learn from, as the paper does.

Order and rules follow the original implementation (``prepare_for_finetuning.py``):

1. Each instance on its own: dropped when its output is empty, when its input equals its output,
   or when its input or its output ends with a colon (ASCII or full-width), which marks a
   generation that stopped at a field label instead of the content.
2. If two remaining instances share a non-empty input but disagree on the output, the task is
   ambiguous and all its instances are dropped. Tasks without input (write a poem) may answer the
   empty input in several ways, so the empty input never conflicts.
3. Exact repeats are kept once.
4. At most `max_instances` stay. The paper samples them at random; the first ones are kept here so
   that a run is reproducible and the model's own order (often easiest first) survives.

Texts are compared and returned stripped of surrounding whitespace, as the paper's parser does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from filters.errors import InvalidFilterConfig

MAX_INSTANCES = 5
_COLONS = (":", "\uff1a")  # ASCII and full-width colon


class InstanceReason(StrEnum):
    """Why an instance was dropped; counts per code come back with every result."""

    EMPTY_OUTPUT = "empty_output"
    INPUT_EQUALS_OUTPUT = "input_equals_output"
    ENDS_WITH_COLON = "ends_with_colon"
    CONFLICTING_OUTPUTS = "conflicting_outputs"
    DUPLICATE_INSTANCE = "duplicate_instance"
    OVER_LIMIT = "over_limit"


class InstanceFilterConfig(BaseModel):
    """Per-run settings; the defaults are the paper's rules. Every rule can be switched off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_instances: int = Field(
        default=MAX_INSTANCES, ge=1, le=1000, description="Instances kept per task."
    )
    drop_empty_output: bool = Field(default=True, description="Drop an empty output.")
    drop_input_equals_output: bool = Field(
        default=True, description="Drop an instance whose output repeats its input."
    )
    drop_trailing_colon: bool = Field(
        default=True, description='Drop an instance whose input or output ends with ":".'
    )
    drop_conflicting: bool = Field(
        default=True, description="Drop every instance when one input has two different outputs."
    )
    dedupe: bool = Field(default=True, description="Keep identical instances once.")


DEFAULT_INSTANCE_CONFIG = InstanceFilterConfig()


@dataclass
class InstanceFilterResult:
    """The instances kept (plain ``{"input", "output"}`` dicts) and drop counts by reason."""

    kept: list[dict[str, str]]
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def conflict(self) -> bool:
        """True when the task was emptied because one input had two different outputs."""
        return self.dropped[InstanceReason.CONFLICTING_OUTPUTS.value] > 0


def _invalid(source: str, output: str, config: InstanceFilterConfig) -> InstanceReason | None:
    if config.drop_empty_output and not output:
        return InstanceReason.EMPTY_OUTPUT
    if config.drop_input_equals_output and source == output:
        return InstanceReason.INPUT_EQUALS_OUTPUT
    if config.drop_trailing_colon and (source.endswith(_COLONS) or output.endswith(_COLONS)):
        return InstanceReason.ENDS_WITH_COLON
    return None


def filter_instances(
    instances: Iterable[Mapping[str, str | None]],
    *,
    max_instances: int | None = None,
    config: InstanceFilterConfig = DEFAULT_INSTANCE_CONFIG,
) -> InstanceFilterResult:
    """Apply the rules above; `max_instances`, when given, overrides ``config.max_instances``."""
    limit = config.max_instances if max_instances is None else max_instances
    if limit < 1:
        raise InvalidFilterConfig(
            f"max_instances must be at least 1, got {limit}; use 5 for the paper's setting",
            field="max_instances",
        )
    dropped: Counter[str] = Counter()
    valid: list[tuple[str, str]] = []
    for raw in instances:
        pair = ((raw.get("input") or "").strip(), (raw.get("output") or "").strip())
        reason = _invalid(*pair, config)
        if reason is None:
            valid.append(pair)
        else:
            dropped[reason.value] += 1

    if config.drop_conflicting:
        outputs: dict[str, str] = {}
        for source, output in valid:
            if source and outputs.setdefault(source, output) != output:
                dropped[InstanceReason.CONFLICTING_OUTPUTS.value] += len(valid)
                return InstanceFilterResult([], dropped)

    kept: list[tuple[str, str]] = []
    if config.dedupe:
        seen: set[tuple[str, str]] = set()
        for pair in valid:
            if pair in seen:
                dropped[InstanceReason.DUPLICATE_INSTANCE.value] += 1
            else:
                seen.add(pair)
                kept.append(pair)
    else:
        kept = valid
    if len(kept) > limit:
        dropped[InstanceReason.OVER_LIMIT.value] += len(kept) - limit
        kept = kept[:limit]
    return InstanceFilterResult([{"input": s, "output": o} for s, o in kept], dropped)
