"""The language of a short text: script rules first, a statistical detector for the rest.

Scripts decide where they can, in microseconds: kana means Japanese, hangul Korean, and Han
characters without either Chinese. Texts in other scripts go to lingua (a maintained detector that
works offline, built for short texts) restricted to `DETECTABLE`, which keeps it fast (about
0.3 ms a short instruction, docs/BENCHMARKS.md) and its answers among languages we can name. A
text with too few letters to tell is `UNKNOWN`, never guessed.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from filters.tokenize import CJK_CHARACTERS

UNKNOWN = "unknown"
# ISO 639-1 codes lingua may answer with, for text without CJK characters.
DETECTABLE: tuple[str, ...] = ("en", "fr", "de", "es", "it", "pt", "nl", "ru")
MIN_LETTERS = 3  # fewer letters than this: too short to tell

_KANA = re.compile(
    r"[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d]"
)
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e]")
_HAN = re.compile(rf"[{CJK_CHARACTERS}]")
_LETTER = re.compile(r"[^\W\d_]")
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _detector() -> Any:
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in DETECTABLE]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()


def detect_language(text: str) -> str:
    """An ISO 639-1 code (`en`, `zh`, `ja`, `ko`, ...) or `UNKNOWN`."""
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if _HAN.search(text):
        return "zh"
    if len(_LETTER.findall(text)) < MIN_LETTERS:
        return UNKNOWN
    with _lock:  # lingua loads its models on first use
        found = _detector().detect_language_of(text)
    if found is None:
        return UNKNOWN
    return str(found.iso_code_639_1.name).lower()


def base_language(code: str | None) -> str | None:
    """`zh-Hans` → `zh`, `en_US` → `en`; None stays None."""
    if code is None:
        return None
    return code.replace("_", "-").split("-")[0].lower()


# Words that ask for another language, so an answer in it is right.
_TRANSLATION = re.compile(
    r"translat|tradu[ci]|übersetz|翻译|翻譯|译成|译为|翻訳|번역", re.IGNORECASE
)


def asks_for_translation(instruction: str) -> bool:
    return _TRANSLATION.search(instruction) is not None


def foreign_output(instruction_language: str, instance: dict[str, str]) -> bool:
    """Whether an instance's output is in a language that neither its instruction nor its
    input is in (a model that drifted into another language), when that can be told."""
    output = detect_language(instance.get("output", ""))
    if output in (UNKNOWN, instruction_language):
        return False
    given = instance.get("input", "")
    return not (given and detect_language(given) == output)
