"""Builders for request payloads, so tests state only what matters to them."""

from __future__ import annotations

import itertools
import json
from typing import Any

_ids = itertools.count(1)


def seed(**overrides: Any) -> dict[str, Any]:
    n = next(_ids)
    task: dict[str, Any] = {
        "id": f"t_{n}",
        "name": f"task_{n}",
        "instruction": f"Describe step {n} of brewing green tea for a beginner.",
        "instances": [{"input": "", "output": f"Step {n}: heat the water to 80 degrees."}],
        "is_classification": False,
    }
    task.update(overrides)
    return task


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
