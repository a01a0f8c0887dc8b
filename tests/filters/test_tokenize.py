"""The tokenizer is rouge-score's on everything but CJK, where each character is a token."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import tokenize as rouge_tokenize

from filters.tokenize import count_cjk, is_cjk, strip_cjk, tokenize


def rouge_tokens(text: str) -> list[str]:
    return list(rouge_tokenize.tokenize(text, None))


def test_real_sentences_tokenize_exactly_as_rouge_score_does(sentences: list[str]) -> None:
    for sentence in sentences:
        assert tokenize(sentence) == rouge_tokens(sentence)


def test_accented_latin_keeps_rouge_scores_quirks() -> None:
    # rouge-score drops non-ASCII letters and splits the word there; equality matters more than
    # prettiness, because scores must match the original pipeline's.
    assert tokenize("Café au lait") == ["caf", "au", "lait"] == rouge_tokens("Café au lait")
    assert tokenize("naïve Straße") == rouge_tokens("naïve Straße") == ["na", "ve", "stra", "e"]
    # Lowercasing comes first, as in rouge-score: the Kelvin sign lowercases to an ASCII "k".
    assert tokenize("\u212a-means") == rouge_tokens("\u212a-means") == ["k", "means"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_without_cjk_tokens_the_rest_equals_rouge_score(text: str) -> None:
    tokens = tokenize(text)
    assert [t for t in tokens if not is_cjk(t)] == rouge_tokens(text)
    assert len(tokens) == len(rouge_tokens(text)) + count_cjk(text)


def test_each_chinese_character_is_a_token_in_reading_order() -> None:
    assert tokenize("写一首关于春天的诗。") == list("写一首关于春天的诗")
    assert rouge_tokens("写一首关于春天的诗。") == []  # why the project needs its own tokenizer


def test_mixed_text_interleaves_ascii_words_and_cjk_characters() -> None:
    assert tokenize("用Python写一个sort函数, 2 times!") == [
        "用", "python", "写", "一", "个", "sort", "函", "数", "2", "times",
    ]  # fmt: skip


def test_japanese_and_korean_are_split_into_characters() -> None:
    assert tokenize("カタカナとひらがな") == ["カ", "タ", "カ", "ナ", "と", "ひ", "ら", "が", "な"]
    assert tokenize("한국어 문장") == ["한", "국", "어", "문", "장"]


def test_punctuation_and_full_width_latin_are_not_tokens() -> None:
    assert tokenize("「你好」\uff0c世界\uff01") == ["你", "好", "世", "界"]  # full-width , and !
    assert tokenize("\uff21\uff22\uff23 abc") == ["abc"]  # full-width ABC, as rouge-score
    assert tokenize("!!! ... ???") == []
    assert tokenize("") == []


def test_cjk_helpers_agree_with_the_tokenizer() -> None:
    text = "请把这段English翻译成中文"
    assert count_cjk(text) == len([t for t in tokenize(text) if is_cjk(t)]) == 9
    assert strip_cjk(text).split() == ["English"]
    assert is_cjk("\U00020000")  # extension B
    assert not is_cjk("a")
    assert not is_cjk("\u3002")  # ideographic full stop
