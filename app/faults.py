"""Fault points: named places in the job machinery where a test can have this process killed
with SIGKILL, to prove that a death at that moment loses nothing and repeats nothing.

`SELFINSTRUCT_TEST_FAULT=run:committing` kills the process the first time a run reaches the moment
its commit is written but not yet committed; `run:committing@3` the third time. Points are
`<kind>:<phase>`, kind one of run, judgement, evaluation, finetune, recipe, phase one of claimed
(the claim is committed, nothing executed yet), running (work was done, nothing of it stored),
committing (inside the transaction that stores progress) and finishing (inside the transaction
that ends the job). Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KINDS = ("run", "judgement", "evaluation", "finetune", "recipe")
PHASES = ("claimed", "running", "committing", "finishing")
ENV = "SELFINSTRUCT_TEST_FAULT"

_reached: Counter[str] = Counter()


def point(name: str) -> None:
    """Die here if the environment names this point (and this is the time it names)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, nth = spec.partition("@")
    if wanted != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
