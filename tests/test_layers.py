"""Every concept has one home: no module imports itself back through others, and no package
imports what its layer forbids (docs/ARCHITECTURE.md), counting imports inside functions too.
scripts/check_layers.py does the work; `make lint` runs it as well."""

from __future__ import annotations

from pathlib import Path

from scripts.check_layers import check


def test_the_repository_has_no_import_circle_and_no_forbidden_import() -> None:
    problems = check()
    assert problems == [], "\n\n".join(problems)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_circle_hidden_in_a_function_is_named_with_each_import(tmp_path: Path) -> None:
    """Guards the check itself: the circles this repository had were all of this kind, one
    side importing inside a function, some relative, one under TYPE_CHECKING."""
    root = _tree(
        tmp_path,
        {
            "training/__init__.py": "",
            "training/train.py": "from training.distributed import wrap\n",
            "training/distributed.py": "def wrap():\n    from .train import loss_sum\n",
            "generators/__init__.py": "",
            "generators/local.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from generators import hf\n"
            ),
            "generators/hf.py": "import generators.local\n",
        },
    )
    problems = check(root)
    assert len(problems) == 2, problems
    training = next(p for p in problems if "training" in p)
    assert "training.distributed -> training.train  (training/distributed.py:2)" in training
    assert "training.train -> training.distributed  (training/train.py:1)" in training
    generators = next(p for p in problems if "generators" in p)
    assert "generators.local -> generators.hf  (generators/local.py:3)" in generators


def test_a_library_importing_the_app_or_another_library_is_refused(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/models.py": "import filters.novelty\nimport training.evaluate\n",
            "filters/__init__.py": "",
            "filters/novelty.py": "",
            "filters/rouge.py": "",
            "training/__init__.py": "",
            "training/train.py": "def f():\n    from app.models import Task\n",
            "training/evaluate.py": "from filters.rouge import rouge_l\nimport filters.novelty\n",
            "bench/__init__.py": "",
            "bench/load.py": "from tests.live import free_port\n",
            "tests/__init__.py": "",
            "tests/live.py": "",
        },
    )
    problems = check(root)
    assert len(problems) == 3, problems  # app -> libraries and training -> filters.rouge are fine
    assert problems[0].startswith("bench/load.py:1: bench.load imports tests.live")
    assert problems[1].startswith(
        "training/evaluate.py:2: training.evaluate imports filters.novelty"
    )
    assert problems[2].startswith("training/train.py:2: training.train imports app.models")


def test_a_package_reexporting_its_submodules_is_no_circle(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "generators/__init__.py": "from generators.local import LocalBackend\n",
            "generators/local.py": "from generators.base import Backend\n",
            "generators/base.py": "",
        },
    )
    assert check(root) == []
