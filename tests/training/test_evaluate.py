"""Held-out evaluation: greedy generation scored with ROUGE-L F1."""

from __future__ import annotations

from pathlib import Path

import pytest

from filters.rouge import rouge_l
from filters.tokenize import tokenize
from training.evaluate import EvalTask, evaluate_model, load_for_eval

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat"),
    ("Write a poem about the sea", "write a short poem about the ocean"),
    ("COVID-19 cases rose 20% in 2021!", "covid 19 cases rose by 20 percent in 2021"),
    ("nothing in common", "entirely different words"),
    ("same same", "same same"),
]


@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_rouge_l_equals_rouge_score_on_english(prediction: str, reference: str) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_each_cjk_character_is_a_token() -> None:
    assert tokenize("我喜欢猫 and 2 dogs") == ["我", "喜", "欢", "猫", "and", "2", "dogs"]
    assert rouge_l("我喜欢猫", "我喜欢狗") == pytest.approx(0.75)
    assert rouge_l("", "anything") == 0.0


def test_evaluate_model_scores_every_task(tiny_model_dir: Path) -> None:
    model, tokenizer = load_for_eval(str(tiny_model_dir), device="cpu")
    tasks = [
        EvalTask("Name a colour.", "", "Red."),
        EvalTask("Translate to English.", "我喜欢猫。", "I like cats."),
        EvalTask("Add the numbers.", "2, 3", "5"),
    ]
    result = evaluate_model(model, tokenizer, tasks, max_new_tokens=4, batch_size=2)
    assert len(result.outputs) == len(result.scores) == 3
    assert all(isinstance(text, str) for text in result.outputs)
    assert all(0.0 <= s <= 1.0 for s in result.scores)
    # the novelty filter's ROUGE-L, so a held-out score means what a novelty verdict means
    assert result.scores == [
        rouge_l(o, t.output) for o, t in zip(result.outputs, tasks, strict=True)
    ]
    assert result.mean_rouge_l == pytest.approx(sum(result.scores) / 3)
    assert tokenizer.padding_side == "right", "the tokenizer is left as it was found"
