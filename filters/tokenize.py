"""ROUGE tokenization that also sees Chinese, Japanese and Korean.

rouge-score's default tokenizer lowercases the text, turns every character outside ``[a-z0-9]``
into a space and splits, so a Chinese instruction yields no tokens at all and scores 0.0 against
everything: every Chinese near-duplicate would pass the novelty filter. Here the ASCII part is
tokenized exactly as rouge-score does (``str.lower`` first, then maximal ``[a-z0-9]`` runs; no
stemming), and each CJK character is one more token, kept in reading order. Character tokens are
the usual choice for ROUGE on Chinese because words are not delimited by spaces.

Consequences worth knowing:

* On text without CJK characters the tokens are identical to rouge-score's, including its quirks
  with accented Latin: ``"café"`` gives ``["caf"]`` and ``"naïve"`` gives ``["na", "ve"]``. Scores
  therefore equal the original pipeline's on such text.
* Full-width Latin letters and digits (U+FF21 and on, common in Chinese text) are dropped, as
  rouge-score drops them; normalise them (NFKC) before indexing if they matter.
* CJK here means: CJK Unified Ideographs (U+4E00-U+9FFF, extension A U+3400-U+4DBF, extensions
  B-H U+20000-U+323AF), compatibility ideographs (U+F900-U+FAFF), the marks U+3005 and U+3007,
  Hiragana, Katakana (with the half-width forms and the prolonged-sound mark) and Hangul
  syllables.
  Punctuation (the ideographic full stop and comma, corner brackets) is never a token.
"""

from __future__ import annotations

import re

CJK_CHARACTERS = (
    "\u3005\u3007"  # iteration mark, ideographic number zero
    "\u3041-\u3096\u309d-\u309f"  # Hiragana
    "\u30a1-\u30fa\u30fc-\u30ff"  # Katakana (without the middle-dot punctuation U+30FB)
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK Unified Ideographs extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7a3"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9d"  # half-width Katakana
    "\U00020000-\U000323af"  # extensions B-H and the compatibility supplement
)
"""A regular-expression character class body (without brackets) of the one-token characters."""

_TOKEN = re.compile(rf"[a-z0-9]+|[{CJK_CHARACTERS}]")
_CJK = re.compile(rf"[{CJK_CHARACTERS}]")


def tokenize(text: str) -> list[str]:
    """Tokens of `text` for ROUGE-L: rouge-score's ASCII tokens with CJK characters interleaved.

    Lowercasing happens before matching, as in rouge-score, so characters whose lowercase form is
    ASCII (the Kelvin sign, dotted capital I) behave exactly as they do there.
    """
    return _TOKEN.findall(text.lower())


def is_cjk(char: str) -> bool:
    """Whether `char` (one character) counts as a token of its own."""
    return _CJK.fullmatch(char) is not None


def count_cjk(text: str) -> int:
    """How many characters of `text` are one-character tokens."""
    return len(_CJK.findall(text))


def strip_cjk(text: str, replacement: str = " ") -> str:
    """`text` with every one-character token replaced, e.g. to count the remaining words."""
    return _CJK.sub(replacement, text)
