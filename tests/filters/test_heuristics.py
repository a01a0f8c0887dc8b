"""Each heuristic rule rejects with its reason code, and each can be switched off."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from filters.errors import InvalidFilterConfig
from filters.heuristics import (
    DEFAULT_BLACKLIST,
    PASS,
    HeuristicConfig,
    HeuristicVerdict,
    check_instruction,
    count_words,
    normalize_instruction,
)

GOOD = "Give three tips for staying healthy."


def reason(text: str, **options: object) -> str | None:
    return check_instruction(text, HeuristicConfig(**options)).reason  # type: ignore[arg-type]


def test_a_plain_instruction_passes() -> None:
    assert check_instruction(GOOD) == PASS
    assert check_instruction(GOOD).ok


def test_empty_text_is_rejected() -> None:
    for text in ("", "   \n"):
        verdict = check_instruction(text)
        assert verdict == HeuristicVerdict(False, "empty", "the instruction is empty")


def test_three_words_are_too_short_and_four_are_enough() -> None:
    verdict = check_instruction("Write a poem.")
    assert (verdict.ok, verdict.reason) == (False, "too_short")
    assert verdict.detail == "3 words; at least 4 are needed"
    assert check_instruction("Write a short poem.").ok
    assert reason("Write a poem.", reject_too_short=False) is None
    assert reason("Write a poem.", min_words=3) is None


def test_more_than_150_words_are_too_long() -> None:
    at_limit = " ".join(["Describe"] + ["word"] * 149)
    assert check_instruction(at_limit).ok
    verdict = check_instruction(at_limit + " more")
    assert verdict.reason == "too_long" and verdict.detail == "151 words; at most 150 are allowed"
    assert reason(at_limit + " more", reject_too_long=False) is None
    assert reason(at_limit + " more", max_words=200) is None


def test_chinese_is_counted_by_characters_so_it_is_not_too_short() -> None:
    assert count_words("写一首关于春天的诗。") == 9
    assert count_words("用Python写一个排序函数") == 9  # 8 characters and one English word
    assert count_words("写诗 。") == 2  # a lone full stop is not a word
    assert check_instruction("写一首关于春天的诗。", HeuristicConfig(language="zh")).ok
    assert reason("写首诗", language="zh") == "too_short"
    assert count_words("Write - a poem") == 4  # English keeps the paper's plain split


@pytest.mark.parametrize(
    "text",
    [
        "Draw a picture of a cat for me.",
        "Describe this IMAGE in three sentences.",
        "Please go to the store and buy some milk.",
        "Please go   to the page and read it aloud.",
        "Summarise the attached files in one paragraph.",
        "请描述这张image里的内容和颜色。",  # an English word inside Chinese text
    ],
)
def test_blacklisted_words_and_phrases_are_rejected(text: str) -> None:
    assert reason(text, language="zh" if not text.isascii() else "en") == "blacklisted_word"


@pytest.mark.parametrize(
    "text",
    [
        "Describe the imagery in this poem briefly.",  # imagery is not image
        "Explain the mapping between these two sets.",
        "Tell me whether you want to go home today.",  # "go" and "to" not adjacent
        "List the profiles of three famous writers.",
    ],
)
def test_words_that_merely_contain_a_blacklisted_word_pass(text: str) -> None:
    assert reason(text) is None


def test_the_blacklist_is_configurable() -> None:
    text = "Draw a picture of a cat for me."
    assert check_instruction(text).detail == (
        "contains 'Draw', which a text-only model cannot handle"
    )
    assert reason(text, blacklist=()) is None
    assert reason("Compose a sonnet about autumn leaves.", blacklist=("sonnet",)) == (
        "blacklisted_word"
    )
    assert "go to" in DEFAULT_BLACKLIST and "flowchart" in DEFAULT_BLACKLIST


def test_write_a_program_is_rejected_in_any_case() -> None:
    for text in ("Write a program that sorts a list.", "write a  program to add two numbers"):
        assert reason(text) == "write_a_program"
    assert reason("Write a program that sorts a list.", reject_write_a_program=False) is None
    assert reason("Explain how to write a program that sorts.") is None


@pytest.mark.parametrize(
    "text",
    [
        '"Quote" this sentence back to me.',
        "$ Convert ten dollars.",  # ASCII symbols count, as in the paper's string.punctuation
        "... and then what happens next?",
        "\u201cTranslate\u201d this into French.",  # curly quotes
    ],
)
def test_leading_punctuation_is_rejected(text: str) -> None:
    assert reason(text) == "starts_with_punctuation"
    assert reason(text, reject_punctuation_start=False) in (None, "starts_with_symbol")


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Él es un buen amigo, traduce esta frase.", "es"),
        ("Élaborez un plan de voyage pour trois jours.", "fr"),
        ("写一首关于春天的诗，要求押韵。", "zh"),
        ("春についての短い詩を書いてください。", "ja"),
        ("봄에 관한 짧은 시를 써 주세요.", "ko"),
        ("Объясните, как работает фотосинтез у растений.", "ru"),
    ],
)
def test_no_letter_is_rejected_for_its_script(text: str, language: str) -> None:
    assert reason(text, language=language) is None
    assert reason(text, language="en") is None  # whatever the language, a letter is a letter


def test_a_leading_symbol_is_rejected_in_any_script() -> None:
    assert reason("→ Explain how rainbows form in the sky.") == "starts_with_symbol"
    assert reason("★请解释彩虹是如何形成的。", language="zh") == "starts_with_symbol"
    assert reason("→ Explain how rainbows form.", reject_symbol_start=False) is None
    # the old switch still turns the rule off
    assert reason("→ Explain how rainbows form.", reject_non_ascii_start=False) is None
    assert reason("《红楼梦》的作者是谁。请简要介绍。", language="zh") == "starts_with_punctuation"


def test_lengths_are_counted_in_the_unit_of_the_language() -> None:
    assert reason("写一首诗", language="zh") == "too_short"  # 4 characters
    assert reason("写一首关于春天的诗", language="zh") is None
    assert reason("春" * 301, language="zh") == "too_long"
    assert reason("春" * 300, language="zh") is None
    assert reason("Write a poem.", language="en") == "too_short"  # the paper's 4 words


def test_blacklists_are_per_language() -> None:
    assert reason("请根据描述生成一张图片并说明。", language="zh") == "blacklisted_word"
    assert reason("请把这段视频的内容总结一下。", language="zh") == "blacklisted_word"
    assert reason("请解释一下这个image的含义是什么。", language="zh") == "blacklisted_word"
    assert reason("请解释图灵测试的基本思想。", language="zh") is None
    assert reason("Describe the picture on the wall.") == "blacklisted_word"


def test_the_starter_seeds_of_every_language_pass() -> None:
    import json
    from pathlib import Path

    from filters.language import detect_language

    path = Path(__file__).resolve().parents[2] / "app" / "seeds" / "starter_seed_tasks.jsonl"
    for line in path.read_text().splitlines():
        text = json.loads(line)["instruction"]
        assert reason(text, language=detect_language(text)) is None, text


def test_rules_apply_in_the_papers_order() -> None:
    # Too short wins over the blacklist, the blacklist over "Write a program".
    assert reason("Draw a map.") == "too_short"
    assert reason("Write a program that plots a graph.") == "blacklisted_word"


def test_normalize_instruction_strips_numbering_and_whitespace() -> None:
    assert normalize_instruction(" 12.  Write a\n poem  about\tcats ") == "Write a poem about cats"
    assert normalize_instruction("3) List three fruits.") == "List three fruits."
    assert normalize_instruction("(4) List three fruits.") == "List three fruits."
    assert normalize_instruction("5、写一首诗") == "写一首诗"
    assert normalize_instruction("- Explain gravity.") == "Explain gravity."
    assert normalize_instruction("3.5 litres of water: how many cups?") == (
        "3.5 litres of water: how many cups?"
    )
    assert normalize_instruction("3D printing: explain it.") == "3D printing: explain it."


def test_impossible_configs_are_refused_with_the_field_and_the_fix() -> None:
    with pytest.raises(ValidationError, match="raise max_words or lower min_words"):
        HeuristicConfig(min_words=10, max_words=5)
    with pytest.raises(ValidationError):
        HeuristicConfig(unknown_rule=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="blacklist entries must not be blank"):
        HeuristicConfig(blacklist=("image", "  "))
    with pytest.raises(InvalidFilterConfig) as error:
        HeuristicConfig.from_mapping({"min_words": -1})
    assert error.value.field == "min_words"
    assert "heuristics.min_words" in str(error.value) and "default" in str(error.value)
    loaded = HeuristicConfig.from_mapping({"max_words": 80, "blacklist": ["Go  To"]})
    assert loaded.max_words == 80 and loaded.blacklist == ("go to",)
    # A switched-off length rule leaves its bound unchecked against the other.
    assert HeuristicConfig(min_words=10, max_words=5, reject_too_long=False).min_words == 10
