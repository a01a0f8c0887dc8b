"""Language detection: its cost per candidate against the novelty check's, and how often it is
right on the project's own seeds.

    python -m bench.language

Detection runs on every candidate, so it must cost little beside the check it sits next to.
Baseline: `NoveltyIndex.check(k=10)` (the screening check) against a pool of 10,000 real English
sentences, on the same candidates, in the same process. Candidates: real English sentences from
installed documentation and the starter pool's Chinese seeds. Accuracy: the starter seeds (their
script says which language they are in) and, when `../shared` is there, the original project's
175 English seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from filters.language import UNKNOWN, detect_language
from filters.novelty import NoveltyIndex
from testbed.corpus import real_sentences

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "app" / "seeds" / "starter_seed_tasks.jsonl"
ORIGINAL = ROOT.parent / "shared" / "data" / "selfinstruct_seed_tasks.jsonl"


def _instructions(path: Path) -> list[str]:
    return [json.loads(line)["instruction"] for line in path.read_text().splitlines() if line]


def _truth(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def _per_text_ms(fn: object, texts: list[str], repeat: int = 1) -> float:
    start = time.process_time()
    for _ in range(repeat):
        for text in texts:
            fn(text)  # type: ignore[operator]
    return 1000 * (time.process_time() - start) / (len(texts) * repeat)


def main() -> None:
    sentences = real_sentences(12_000)
    pool, documentation = sentences[:10_000], sentences[10_000:11_000]
    instructions = _instructions(STARTER) + (_instructions(ORIGINAL) if ORIGINAL.exists() else [])
    index = NoveltyIndex(enumerate(pool))
    detect_language(instructions[0])  # lingua loads its models on first use (about 1.5 s)
    check = lambda text: index.check(text, k=10)  # noqa: E731
    print("ms per candidate; baseline: NoveltyIndex.check(k=10) against 10,000 real sentences")
    for name, texts, repeat in (
        (f"{len(instructions)} seed instructions (en, zh)", instructions, 5),
        (f"{len(documentation)} documentation sentences (en, longer)", documentation, 1),
    ):
        detect_ms = _per_text_ms(detect_language, texts, repeat)
        check_ms = _per_text_ms(check, texts, repeat)
        print(
            f"{name}: detect {detect_ms:.3f}, check {check_ms:.3f}, "
            f"detect / check = {detect_ms / check_ms:.2f}"
        )

    for name, path in (("starter seeds", STARTER), ("original 175 seeds", ORIGINAL)):
        if not path.exists():
            print(f"{name}: {path} is missing, skipped")
            continue
        texts = _instructions(path)
        found = [(t, detect_language(t)) for t in texts]
        unsure = [t for t, code in found if code == UNKNOWN]
        wrong = [(t, code) for t, code in found if code not in (UNKNOWN, _truth(t))]
        right = len(texts) - len(unsure) - len(wrong)
        print(
            f"{name}: {right}/{len(texts)} right, {len(unsure)} unknown (too unsure to name), "
            f"{len(wrong)} wrong"
        )
        for text, code in wrong[:5]:
            print(f"  wrong, {code}: {text}")
        for text in unsure[:6]:
            print(f"  unknown: {text}")


if __name__ == "__main__":
    main()
