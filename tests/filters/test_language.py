"""Languages are detected, each candidate is judged in its own, and obvious junk is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from filters.heuristics import check_echo
from filters.language import UNKNOWN, asks_for_translation, detect_language, foreign_output
from filters.novelty import NoveltyIndex
from generators.prompt_text import BOOTSTRAP_HEADERS

EN_TASK = "Name the capital of France."
ZH_TASK = "请说出法国的首都。"
STARTER = Path(__file__).resolve().parents[2] / "app" / "seeds" / "starter_seed_tasks.jsonl"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Write a short poem about the autumn rain in the mountains.", "en"),
        ("请用一句话介绍北京的历史。", "zh"),
        ("春についての短い詩を書いてください。", "ja"),  # kanji with kana: Japanese
        ("봄에 관한 짧은 시를 써 주세요.", "ko"),
        ("Écrivez un court poème sur la pluie d'automne.", "fr"),
        ("Schreiben Sie ein kurzes Gedicht über den Herbstregen.", "de"),
        ("Escribe un poema corto sobre la lluvia de otoño.", "es"),
        ("Ok", UNKNOWN),  # too short to tell
        ("Convert 5 km to miles.", UNKNOWN),  # short: lingua leans Spanish, with low confidence
        ("Generate a haiku.", UNKNOWN),
        ("Paris", UNKNOWN),
        ("12 + 30 = ?", UNKNOWN),  # symbols only
        # a CJK character weighs as a word: the larger share decides, not one character
        ("Translate the word 猫 into English.", "en"),
        ("Write a short poem about the character 春 and the spring rain.", "en"),
        ("请把 machine learning 翻译成中文", "zh"),
        ("用Python写一个排序函数", "zh"),
        ("「桜」という言葉を English に訳してください。", "ja"),
    ],
)
def test_languages_are_detected_offline(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_every_starter_seed_is_detected_right() -> None:
    for line in STARTER.read_text().splitlines():
        text = json.loads(line)["instruction"]
        expected = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
        assert detect_language(text) == expected, text


def test_a_candidate_that_repeats_the_prompt_is_an_echo() -> None:
    refs = [s for h in BOOTSTRAP_HEADERS.values() for s in h.split(". ")]
    echo = check_echo("The list of tasks is a numbered list of varied tasks", refs)
    assert echo.reason == "echoes_prompt"
    zh = check_echo("下面是一份编号清单，列出了人们请 AI 助手完成的各种任务", refs)
    assert zh.reason == "echoes_prompt"
    assert check_echo("Create a numbered list of tasks for moving house.", refs).ok
    assert check_echo("请列出搬家前需要完成的五件事。", refs).ok


def test_an_output_in_a_language_nobody_asked_for_is_foreign() -> None:
    english_answer = {"input": "", "output": "The capital of France is Paris, of course."}
    chinese_answer = {"input": "", "output": "法国的首都是巴黎。"}
    assert foreign_output(EN_TASK, chinese_answer)
    assert not foreign_output(EN_TASK, english_answer)
    assert foreign_output(ZH_TASK, english_answer)
    # the input is in the output's language: answering in it is right
    assert not foreign_output(ZH_TASK, {"input": "Bonjour à tous", "output": "Bonjour à tous !"})
    assert not foreign_output(EN_TASK, {"input": "", "output": "42"})  # cannot tell
    # labels, names and code are never judged foreign, whatever they look like
    for output in ("Neutral", "True", "Paris", 'print("hello")', "def f(x): return x * 2"):
        assert not foreign_output(EN_TASK, {"input": "", "output": output})
        assert not foreign_output(ZH_TASK, {"input": "", "output": output})
    assert asks_for_translation("Translate the sentence into Chinese.")
    assert asks_for_translation("把下面的句子翻译成英文。")
    assert not asks_for_translation("Summarise the paragraph.")


@pytest.mark.parametrize(
    ("pool", "near", "unrelated"),
    [
        (
            "春についての短い詩を書いてください",
            "春についての短い詩を書いて",
            "明日の天気予報を教えて",
        ),
        (
            "カタカナで自分の名前を書いてください",
            "カタカナで自分の名前を書いて",
            "数学の問題を解いて",
        ),
        ("봄에 관한 짧은 시를 써 주세요", "봄에 관한 짧은 시를 써 줘", "내일 날씨를 알려 주세요"),
        ("请用一句话介绍北京的历史", "请用一句话介绍北京历史", "列出五种常见的水果"),
    ],
)
def test_novelty_works_in_every_script(pool: str, near: str, unrelated: str) -> None:
    index = NoveltyIndex([(1, pool)])
    assert index.check(near).max_score > 0.7 and not index.is_novel(near)
    assert index.check(unrelated).max_score < 0.7 and index.is_novel(unrelated)
