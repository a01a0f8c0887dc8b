"""Refuse a lock line that is not a registry pin, naming its line.

A lock made by freezing a virtual environment can pin a package to a file on the machine that made
it (`name @ file:///tmp/...`): pip finds it there and nowhere else, so CI on that machine passes
while every fresh clone fails to install. `.ci/run` runs this before installing, and
tests/test_lock.py runs it in the suite. Standard library only: it runs before any install.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# `name==version`, optionally with extras and an environment marker; nothing else.
PIN = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\[[A-Za-z0-9._,-]+\])?"
    r"==[A-Za-z0-9.!+_-]+(?:\s*;\s*[^@#]+)?$"
)


def bad_lines(text: str) -> list[tuple[int, str]]:
    """Every line that is neither a comment, blank, nor a `name==version` pin, with its number."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not PIN.match(line) or "+" in line.split("==", 1)[1].split(";")[0]:
            # A local version (`torch==2.13.0+cpu`) names a build no registry index serves.
            found.append((number, raw))
    return found


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "requirements.lock")
    bad = bad_lines(path.read_text(encoding="utf-8"))
    for number, line in bad:
        print(
            f"{path}:{number}: not a registry pin (name==version): {line.strip()}\n"
            "  A path or URL works only on the machine that wrote it; regenerate the lock with "
            "scripts/lock.sh.",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
