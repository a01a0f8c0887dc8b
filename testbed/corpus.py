"""Real English sentences from the documentation that installed packages ship.

Benchmarks and tests of the novelty index need text with a natural vocabulary (Zipf-shaped token
frequencies, shared function words, near-paraphrases); random words would make the inverted index
look far better than it is. Docstrings, READMEs and package metadata are real prose that every
machine with the virtualenv already has, so no download is needed.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

_TRIPLE_QUOTED = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r":[a-z]+:`~?([^`]*)`|``([^`]*)``|`([^`]*)`")
_WORD = re.compile(r"[A-Za-z][a-z]*(?:'[a-z]+)?[,;:]?|[0-9]+[,;:]?")
_CODE_CHARS = re.compile(r"[=<>{}\[\]_/\\*|#@$%^~]|\.\w|\(\)")
_DOC_SUFFIXES = (".md", ".rst", ".txt")


def default_roots() -> list[Path]:
    """The interpreter's standard library and site-packages: present wherever the tests run."""
    paths = sysconfig.get_paths()
    roots = {Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])}
    return sorted(root for root in roots if root.is_dir())


def _files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        for path in sorted(root.rglob("*")):
            if "test" in path.parts[-2:-1] or "tests" in path.parts:
                continue  # test fixtures are full of deliberately odd strings
            if path.suffix == ".py" or path.name == "METADATA" or path.suffix in _DOC_SUFFIXES:
                yield path


def _blocks(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if path.suffix == ".py":
        for match in _TRIPLE_QUOTED.finditer(text):
            yield match.group(1) or match.group(2) or ""
    else:
        # Prose files: paragraphs are separated by blank lines.
        yield from text.split("\n\n")


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not 5 <= len(words) <= 40 or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if not sentence.isascii() or _CODE_CHARS.search(sentence[:-1]):
        return False
    plain = sum(1 for word in words if _WORD.fullmatch(word.rstrip(".!?")))
    return plain >= 0.85 * len(words)


def iter_sentences(roots: Iterable[Path] | None = None) -> Iterator[str]:
    """Yield prose sentences in a deterministic order (sorted paths), duplicates included."""
    for path in _files(default_roots() if roots is None else roots):
        for block in _blocks(path):
            flat = " ".join(
                _MARKUP.sub(lambda m: m.group(1) or m.group(2) or m.group(3), block).split()
            )
            for sentence in _SENTENCE_END.split(flat):
                if _is_prose(sentence):
                    yield sentence


def real_sentences(limit: int | None = None, roots: Iterable[Path] | None = None) -> list[str]:
    """Distinct sentences, first occurrence wins; stops early once `limit` are found."""
    seen: dict[str, None] = {}
    for sentence in iter_sentences(roots):
        seen.setdefault(sentence, None)
        if limit is not None and len(seen) >= limit:
            break
    return list(seen)


if __name__ == "__main__":  # pragma: no cover - manual inspection aid
    found = real_sentences(int(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(len(found))
    for line in found[:: max(1, len(found) // 20)]:
        print(line)
