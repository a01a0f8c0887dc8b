"""The strategies and their registry: the one list of the ways a run constructs candidates.

A strategy is one module with one `Strategy` subclass (app/strategies/base.py). The built-in ones
are listed below, one line each; a package adds its own through the entry point group
`selfinstruct.strategies` (`name = "module:Class"` in its pyproject.toml), loaded the same way.
Everything that tells strategies apart (the run schema, the CLI's choices, GET /v1/strategies and
the dashboard's form, the stream) reads this registry.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from app.strategies.base import Candidate, Strategy, StrictSpec
from app.strategies.pool import Pool

BUILT_IN = (
    "app.strategies.self_instruct:SelfInstruct",
    "app.strategies.alpaca:Alpaca",
    "app.strategies.template:Template",
    "app.strategies.evolve:Evolve",
    "app.strategies.backtranslate:Backtranslate",
    "app.strategies.magpie:Magpie",
)
ENTRY_POINT_GROUP = "selfinstruct.strategies"
DEFAULT_STRATEGY = "self_instruct"  # the paper's bootstrap
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _load(reference: str, source: str) -> type[Strategy]:
    """The Strategy subclass `module:Class` names; `source` says where the reference came from."""
    module_name, _, attribute = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"strategy {reference!r} ({source}) cannot be loaded: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise TypeError(f"{reference!r} ({source}) is not a subclass of app.strategies.Strategy")
    name = getattr(found, "name", None)
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise ValueError(
            f"{reference!r} ({source}) needs a `name` of lowercase letters, digits and _, "
            f"at most 32 characters (a run stores it), got {name!r}"
        )
    if not isinstance(getattr(found, "summary", None), str):
        raise ValueError(f"{reference!r} ({source}) needs a `summary`, a few words")
    return found


def _registry() -> dict[str, type[Strategy]]:
    found = [(ref, "built in") for ref in BUILT_IN] + [
        (ep.value, f"entry point {ep.name!r} of {ep.dist.name if ep.dist else 'a package'}")
        for ep in entry_points(group=ENTRY_POINT_GROUP)
    ]
    registry: dict[str, type[Strategy]] = {}
    for reference, source in found:
        strategy = _load(reference, source)
        if strategy.name in registry:
            raise ValueError(
                f"two strategies are named {strategy.name!r}: {registry[strategy.name]} and "
                f"{strategy} ({source}); rename one"
            )
        registry[strategy.name] = strategy
    return registry


STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(_registry())
assert DEFAULT_STRATEGY in STRATEGIES

# A strategy's name as a type: one of the registry's (the run schema's string enum, the CLI's
# choices). Type checkers cannot see the registry, so for them it is a string.
if TYPE_CHECKING:
    StrategyName = str
else:
    StrategyName = Literal[tuple(STRATEGIES)]


def strategy_names() -> tuple[str, ...]:
    """Every strategy's name, built-in ones first, in the order they are listed."""
    return tuple(STRATEGIES)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy called `name` (the run schema has already refused any other name)."""
    return STRATEGIES[name]


__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Candidate",
    "Pool",
    "Strategy",
    "StrategyName",
    "StrictSpec",
    "get_strategy",
    "strategy_names",
]
