"""The language of a short text: script rules first, a statistical detector for the rest.

Scripts decide where they can, in microseconds, by share: each Han, kana or hangul character
weighs as much as a word of another script (the length rules count the same way), so a text is
Chinese, Japanese or Korean when such characters are at least as many as its other words. "请把
machine learning 翻译成中文" (7 characters, 2 words) is Chinese; "Translate the word 猫 into
English." (1 character, 5 words) is not. Among CJK texts kana means Japanese, hangul Korean, and
Han characters alone Chinese. Texts in other scripts go to lingua (a maintained detector that
works offline, built for short texts) restricted to `DETECTABLE`, which keeps it fast (about
0.3 ms a short instruction, docs/BENCHMARKS.md) and its answers among languages we can name. A
text with too few letters to tell is `UNKNOWN`, never guessed.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from filters.tokenize import CJK_CHARACTERS, count_cjk, strip_cjk

UNKNOWN = "unknown"
# ISO 639-1 codes lingua may answer with, for text without CJK characters.
DETECTABLE: tuple[str, ...] = ("en", "fr", "de", "es", "it", "pt", "nl", "ru")
MIN_LETTERS = 3  # fewer letters than this: too short to tell
# lingua's confidence in its best language below which a text is `UNKNOWN`. Short English gets
# low values for a wrong language ("Convert 5 km to miles.": es 0.30, "Generate a haiku.": de
# 0.32, "Paris": fr 0.28) and real sentences high ones ("Write a poem about the sea.": en 0.66).
MIN_CONFIDENCE = 0.5

_KANA = re.compile(
    r"[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d]"
)
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e]")
_HAN = re.compile(rf"[{CJK_CHARACTERS}]")
_LETTER = re.compile(r"[^\W\d_]")
_ALNUM = re.compile(r"[^\W_]")
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _detector() -> Any:
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in DETECTABLE]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()


# Models repeat themselves (a prompt's own examples, the same line in several answers): the same
# text is detected once while it is among the last few thousand. The answer is a function of
# the exact text, whatever its script.
@lru_cache(maxsize=4096)
def detect_language(text: str) -> str:
    """An ISO 639-1 code (`en`, `zh`, `ja`, `ko`, ...) or `UNKNOWN`."""
    cjk = count_cjk(text)
    rest = strip_cjk(text)
    if cjk:
        other_words = sum(1 for chunk in rest.split() if _ALNUM.search(chunk))
        if cjk >= other_words:
            if _KANA.search(text):
                return "ja"
            if _HANGUL.search(text):
                return "ko"
            return "zh"
    if len(_LETTER.findall(rest)) < MIN_LETTERS:
        return UNKNOWN
    with _lock:  # lingua loads its models on first use
        ranked = _detector().compute_language_confidence_values(rest)
    if not ranked or ranked[0].value < MIN_CONFIDENCE:
        return UNKNOWN
    return str(ranked[0].language.iso_code_639_1.name).lower()


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


_CODE = re.compile(r"[{}()\[\];=<>_#$\\/]")
MIN_FOREIGN_WORDS = 6  # a shorter Latin-script output (a label, a name, a number) is not judged


def foreign_output(instruction: str, instance: dict[str, str]) -> bool:
    """Whether an instance's output is written in another script family than its instruction
    and its input (a model that drifted into Chinese on an English task, or the reverse).

    Only the script is judged, not the language within a script: labels ("True", "Neutral"),
    names and code look like other Latin-script languages to any detector, and an answer in the
    instruction's script is never dropped. Latin-script outputs must be prose of some length
    without code characters to count as foreign to a CJK task."""
    output = instance.get("output", "")
    given = instance.get("input", "")
    if _HAN.search(instruction):  # a Chinese, Japanese or Korean task
        if _HAN.search(output) or _CODE.search(output):
            return False
        if len(output.split()) < MIN_FOREIGN_WORDS or len(_LETTER.findall(output)) < 20:
            return False
        return not (given and not _HAN.search(given))
    # a Latin-or-other-script task: foreign when the output is mostly CJK characters
    letters = len(_LETTER.findall(output))
    cjk = len(_HAN.findall(output))
    if not letters or cjk / letters < 0.5:
        return False
    return not (given and _HAN.search(given))
