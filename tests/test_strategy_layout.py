"""A strategy is one module of app/strategies/: nothing else in the service names one. The
stream, the storage, the services, the CLI and the dashboard ask the registry and the strategy
(app/strategies/base.py), so a new strategy needs no edit anywhere else."""

from __future__ import annotations

import ast
import importlib
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.schemas.runs import RunCreate, run_create_model
from app.strategies import (
    BUILT_IN,
    STRATEGIES,
    Candidate,
    Strategy,
    StrictSpec,
    _load,
    strategy_names,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON_TREES = ("app", "generators", "filters", "training")
DASHBOARD = ROOT / "app" / "web" / "static"
STRATEGY_PACKAGE = ROOT / "app" / "strategies"
# Export formats share two names with strategies (the paper's file and Alpaca's): a format of a
# JSONL file, not a way of generating, and renaming them would break clients.
NOT_STRATEGIES = {("app/schemas/datasets.py", "ExportFormat")}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: prose for readers, like comments."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _exempt(tree: ast.AST, path: str) -> set[int]:
    """ids of the string nodes inside the classes NOT_STRATEGIES names."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and (path, node.name) in NOT_STRATEGIES:
            found |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Constant)}
    return found


def _naming(text: str, names: tuple[str, ...]) -> str | None:
    """The strategy a string names: the whole string, a quoted name ('x', "x", `x`), or
    "strategy x" in a message."""
    for name in names:
        if text == name:
            return name
        if re.search(rf"[\"'`]{name}[\"'`]|\bstrateg(?:y|ies):?\s+{name}\b", text, re.I):
            return name
    return None


def python_literals(names: tuple[str, ...]) -> Iterator[str]:
    for tree_name in PYTHON_TREES:
        for path in sorted((ROOT / tree_name).rglob("*.py")):
            if path.is_relative_to(STRATEGY_PACKAGE):
                continue
            relative = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            skip = _docstrings(tree) | _exempt(tree, relative)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                    continue
                if id(node) in skip:
                    continue
                name = _naming(node.value, names)
                if name is not None:
                    yield f"{relative}:{node.lineno}: {name!r} in {node.value[:80]!r}"


def dashboard_mentions(names: tuple[str, ...]) -> Iterator[str]:
    """Any use of a name as a word in the dashboard's code (comments aside): a string, a key, an
    identifier. A hyphen joins words here (CSS's grid-template-columns is no strategy)."""
    for path in sorted([*DASHBOARD.glob("*.js"), *DASHBOARD.glob("*.html")]):
        text = path.read_text(encoding="utf-8")
        code = re.sub(r"/\*.*?\*/|<!--.*?-->", "", text, flags=re.S)
        code = re.sub(r"(?<![:\"'`])//[^\n]*", "", code)
        for number, line in enumerate(code.splitlines(), 1):
            for name in names:
                if re.search(rf"(?<![\w-]){name}(?![\w-])", line):
                    yield f"{path.relative_to(ROOT)}:{number}: {name!r} in {line.strip()[:100]!r}"


def test_the_names_scanned_for_are_the_registrys() -> None:
    """Guards the scans below: with no names they would pass vacuously."""
    names = strategy_names()
    assert len(names) >= 6 and "self_instruct" in names and "magpie" in names
    assert list(python_literals(("chat_template",)))  # the Python scan finds strings at all
    assert list(dashboard_mentions(("strategySelect",)))  # and the dashboard scan words


def test_no_strategy_is_named_outside_its_module() -> None:
    """Comparing a strategy's name (`strategy == "evolve"`), listing names, or quoting one in a
    message belongs in app/strategies/; the rest asks the strategy."""
    found = [*python_literals(strategy_names()), *dashboard_mentions(strategy_names())]
    assert not found, "strategy names outside app/strategies/:\n" + "\n".join(found)


def test_each_strategy_is_one_module_listed_once() -> None:
    """Every module of app/strategies/ but the base, the pool and the registry holds exactly one
    Strategy subclass, and the registry lists each module once."""
    listed = {reference.partition(":")[0] for reference in BUILT_IN}
    assert len(listed) == len(BUILT_IN)
    shared = {"__init__", "base", "pool"}
    for path in sorted(STRATEGY_PACKAGE.glob("*.py")):
        if path.stem in shared:
            continue
        module = importlib.import_module(f"app.strategies.{path.stem}")
        own = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, Strategy)
            and value is not Strategy
            and value.__module__ == module.__name__
        ]
        assert len(own) == 1, (path.name, own)
        assert module.__name__ in listed, f"{path.name} is not in app.strategies.BUILT_IN"
        assert STRATEGIES[own[0].name] is own[0]


def test_the_run_schema_and_the_strategies_route_come_from_the_registry(client: TestClient) -> None:
    """The OpenAPI document's `strategy` enum is the registry; every field of a run's body is
    either shared or one strategy's own, and GET /v1/strategies gives each its own, with the
    same JSON Schema the run schema refers to."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    run = schemas["RunCreate"]["properties"]
    assert run["strategy"]["enum"] == list(strategy_names())
    listed = client.get("/v1/strategies").json()
    assert [s["name"] for s in listed["data"]] == list(strategy_names()) and listed["count"] >= 6
    assert [s["name"] for s in listed["data"] if s["default"]] == [run["strategy"]["default"]]
    own = {field: s["name"] for s in listed["data"] for field in s["settings"]}
    shared = set(run) - set(own)
    assert {"target", "strategy", "model", "topic", "judge", "seed"} <= shared
    assert not shared & {"alpaca_tasks", "template", "evolve", "backtranslate", "magpie"}
    evolve = next(s for s in listed["data"] if s["name"] == own["evolve"])
    assert run["evolve"] == {"$ref": "#/components/schemas/EvolveSpec"}
    operations = evolve["settings"]["evolve"]["properties"]["operations"]
    assert operations == schemas["EvolveSpec"]["properties"]["operations"]
    by_name = {s["name"]: s for s in listed["data"]}
    assert by_name[own["backtranslate"]]["needs"] == ["documents"]
    assert not by_name[own["template"]]["uses_topic"]


class _NoDefault(StrictSpec):
    loose_needed: int


class _TakesTopic(StrictSpec):
    topic: str = "x"


class _Loose(Strategy):
    """A strategy whose own field has no default: every run would have to send it."""

    name = "loose"
    summary = "a test"
    fields = _NoDefault

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        return []


class _Shadowing(_Loose):
    name = "shadowing"
    fields = _TakesTopic


class _LongName(_Loose):
    name = "a_name_longer_than_a_run_can_store"


def test_the_registry_refuses_what_would_break_other_runs() -> None:
    """A name a run cannot store, or a run field without a default or taken by another, stops
    the service at start with the strategy named, instead of breaking every run later."""
    with pytest.raises(ValueError, match="at most 32 characters"):
        _load("tests.test_strategy_layout:_LongName", "a test")
    assert _load("tests.test_strategy_layout:_Loose", "a test") is _Loose
    with pytest.raises(TypeError, match="'loose_needed' needs a default"):
        run_create_model({"loose": _Loose})
    with pytest.raises(TypeError, match="'topic', which another strategy or every run"):
        run_create_model({**STRATEGIES, "shadowing": _Shadowing})
    extended = run_create_model(STRATEGIES)
    assert set(extended.model_fields) == set(RunCreate.model_fields)
