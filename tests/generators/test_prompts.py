"""Prompt building: structure, sampling of examples, language variants and paper defaults."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from generators.prompts import (
    ALPACA_SAMPLING,
    BOOTSTRAP_HEADERS,
    BOOTSTRAP_SAMPLING,
    BOOTSTRAP_STOP_AT,
    CLASSIFICATION_EXAMPLES,
    CLASSIFICATION_INSTANCE_SAMPLING,
    CLASSIFICATION_SAMPLING,
    INPUT_FIRST_EXAMPLES,
    INSTANCE_SAMPLING,
    OUTPUT_FIRST_EXAMPLES,
    PROMPTS_PER_BATCH,
    PromptExample,
    as_example,
    build_alpaca_prompt,
    build_bootstrap_prompt,
    build_classification_prompt,
    build_instance_prompt,
    format_number,
    sample_prompt_examples,
    to_chat_messages,
)

ORIGINAL_SEEDS = Path(__file__).resolve().parents[3] / "shared" / "data"
ORIGINAL_SEEDS = ORIGINAL_SEEDS / "selfinstruct_seed_tasks.jsonl"

SEEDS = [PromptExample(id=f"seed-{i}", instruction=f"Seed instruction {i}") for i in range(20)]
MACHINE = [PromptExample(id=f"gen-{i}", instruction=f"Machine instruction {i}") for i in range(10)]


def _origins(examples: list[PromptExample]) -> tuple[int, int]:
    machine = sum(e.id.startswith("gen-") for e in examples)
    return machine, len(examples) - machine


# --- sampling the examples ----------------------------------------------------------------------


def test_sampling_takes_two_machine_tasks_and_six_seeds_by_default() -> None:
    picked = sample_prompt_examples(SEEDS, MACHINE, rng=random.Random(0))
    assert len(picked) == 8
    assert _origins(picked) == (2, 6)
    assert len({e.id for e in picked}) == 8


def test_sampling_fills_with_seeds_when_few_machine_tasks_exist() -> None:
    assert _origins(sample_prompt_examples(SEEDS, MACHINE[:1], rng=random.Random(1))) == (1, 7)
    assert _origins(sample_prompt_examples(SEEDS, [], rng=random.Random(1))) == (0, 8)


def test_sampling_obeys_custom_counts() -> None:
    picked = sample_prompt_examples(SEEDS, MACHINE, n_total=5, n_machine=4, rng=random.Random(2))
    assert _origins(picked) == (4, 1)


def test_sampling_returns_fewer_when_the_pool_is_small_but_never_exceeds_n_machine() -> None:
    picked = sample_prompt_examples(SEEDS[:3], MACHINE, rng=random.Random(3))
    assert _origins(picked) == (2, 3)


def test_sampling_is_deterministic_for_a_seeded_rng() -> None:
    first = sample_prompt_examples(SEEDS, MACHINE, rng=random.Random(42))
    again = sample_prompt_examples(SEEDS, MACHINE, rng=random.Random(42))
    other = sample_prompt_examples(SEEDS, MACHINE, rng=random.Random(43))
    assert first == again
    assert first != other


def test_sampling_shuffles_machine_tasks_among_seeds() -> None:
    positions = set()
    for seed in range(30):
        picked = sample_prompt_examples(SEEDS, MACHINE, rng=random.Random(seed))
        positions |= {i for i, e in enumerate(picked) if e.id.startswith("gen-")}
    assert max(positions) > 1  # machine tasks are not always the first two


def test_sampling_refuses_more_machine_tasks_than_the_total() -> None:
    with pytest.raises(ValueError, match="n_machine"):
        sample_prompt_examples(SEEDS, MACHINE, n_total=2, n_machine=3, rng=random.Random(0))


# --- bootstrap prompt ---------------------------------------------------------------------------


def test_bootstrap_prompt_numbers_the_examples_and_ends_on_the_next_label() -> None:
    examples = SEEDS[:8]
    prompt = build_bootstrap_prompt(examples)
    lines = prompt.text.split("\n")
    assert lines[0] == BOOTSTRAP_HEADERS["en"]
    assert lines[1:9] == [f"{i}. Seed instruction {i - 1}" for i in range(1, 9)]
    assert lines[9] == "9."
    assert prompt.text.endswith("\n9.")
    assert prompt.next_number == 9
    assert prompt.example_ids == tuple(e.id for e in examples)
    assert prompt.template_version == "bootstrap-v1:en"
    assert prompt.stop_at == BOOTSTRAP_STOP_AT == 16
    assert prompt.stop_sequences == ("\n\n", "\n16")


def test_bootstrap_prompt_with_task_numbering_and_custom_header() -> None:
    prompt = build_bootstrap_prompt(
        SEEDS[:3], header="Ideas for tasks:", numbering="Task {n}:", stop_at=10
    )
    assert prompt.text.split("\n") == [
        "Ideas for tasks:",
        "Task 1: Seed instruction 0",
        "Task 2: Seed instruction 1",
        "Task 3: Seed instruction 2",
        "Task 4:",
    ]
    assert prompt.next_number == 4
    assert prompt.stop_sequences == ("\n\n", "\nTask 10")


def test_bootstrap_prompt_in_chinese_uses_the_chinese_header() -> None:
    examples = [PromptExample(id="z1", instruction="写一首关于秋天的短诗。")]
    prompt = build_bootstrap_prompt(examples, language="zh")
    assert prompt.text.split("\n") == [BOOTSTRAP_HEADERS["zh"], "1. 写一首关于秋天的短诗。", "2."]
    assert re.search(r"[\u4e00-\u9fff]", BOOTSTRAP_HEADERS["zh"])
    assert prompt.template_version == "bootstrap-v1:zh"


def test_bootstrap_prompt_keeps_each_instruction_on_one_line() -> None:
    examples = [{"id": "a", "instruction": "Question: when did it happen?\nAnswer:  "}]
    prompt = build_bootstrap_prompt(examples)
    assert prompt.text.split("\n")[1] == "1. Question: when did it happen? Answer:"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"numbering": "Task:"}, "numbering must contain"),
        ({"stop_at": 9}, "stop_at"),
        ({"language": "fr"}, "language must be one of"),
    ],
)
def test_bootstrap_prompt_rejects_impossible_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_bootstrap_prompt(SEEDS[:8], **kwargs)


def test_examples_may_be_dicts_or_seed_records() -> None:
    record = {
        "id": "seed_task_7",
        "instruction": "Fix the grammar.",
        "instances": [{"input": "He go home.", "output": "He goes home."}],
        "is_classification": False,
    }
    assert as_example(record) == PromptExample(
        id="seed_task_7",
        instruction="Fix the grammar.",
        input="He go home.",
        output="He goes home.",
    )
    assert as_example({"instruction": "x"}).id == ""
    with pytest.raises(ValueError, match="instruction"):
        as_example({"name": "no instruction"})


def test_format_number() -> None:
    assert format_number("{n}.", 12) == "12."
    assert format_number("Task {n}:", 3) == "Task 3:"


@pytest.mark.skipif(not ORIGINAL_SEEDS.exists(), reason=f"{ORIGINAL_SEEDS} not present")
def test_bootstrap_prompt_from_the_original_seed_tasks() -> None:
    seeds = [json.loads(line) for line in ORIGINAL_SEEDS.read_text().splitlines() if line.strip()]
    assert len(seeds) == 175
    picked = sample_prompt_examples(seeds, [], rng=random.Random(7))
    prompt = build_bootstrap_prompt(picked)
    numbered = [line for line in prompt.text.split("\n")[1:] if re.match(r"\d+\. ", line)]
    assert len(numbered) == 8
    assert prompt.text.endswith("\n9.")
    assert set(prompt.example_ids) <= {s["id"] for s in seeds}


# --- classification prompt ----------------------------------------------------------------------


def test_classification_examples_are_mixed_in_answer_and_language() -> None:
    answers = [is_clf for _, is_clf in CLASSIFICATION_EXAMPLES]
    assert 8 <= len(CLASSIFICATION_EXAMPLES) <= 12
    assert True in answers and False in answers
    assert any(re.search(r"[\u4e00-\u9fff]", text) for text, _ in CLASSIFICATION_EXAMPLES)


def test_classification_prompt_ends_on_the_question_for_the_target_task() -> None:
    prompt = build_classification_prompt("Is this tweet sarcastic?")
    assert prompt.text.endswith("Task: Is this tweet sarcastic?\nFixed set of labels?")
    assert prompt.text.count("Fixed set of labels? Yes") == sum(
        1 for _, c in CLASSIFICATION_EXAMPLES if c
    )
    assert prompt.text.count("Fixed set of labels? No") == sum(
        1 for _, c in CLASSIFICATION_EXAMPLES if not c
    )
    assert prompt.stop_sequences == ("\n", "Task")
    assert prompt.template_version == "classify-v1:en"


def test_classification_prompt_in_chinese_answers_with_shi_and_fou() -> None:
    prompt = build_classification_prompt("判断这封邮件是否为垃圾邮件。", language="zh")
    assert prompt.text.endswith("任务：判断这封邮件是否为垃圾邮件。\n标签是否固定有限：")
    assert "标签是否固定有限：是" in prompt.text
    assert "标签是否固定有限：否" in prompt.text
    assert "Fixed set of labels?" not in prompt.text
    assert prompt.stop_sequences == ("\n", "任务")


# --- instance prompts ---------------------------------------------------------------------------


def test_input_first_prompt_for_generation_tasks() -> None:
    prompt = build_instance_prompt("Write a haiku about the sea.", is_classification=False)
    assert not prompt.output_first
    assert prompt.text.endswith("\n\nTask: Write a haiku about the sea.\nExample 1\n")
    assert "Input: <noinput>" in prompt.text
    assert prompt.text.index("Input:") < prompt.text.index("Output:")
    assert "Class label:" not in prompt.text
    assert prompt.stop_sequences == ("Example 6", "\nTask:")
    assert prompt.template_version == "instances-input-first-v1:en"
    assert 3 <= len(INPUT_FIRST_EXAMPLES) <= 4


def test_output_first_prompt_for_classification_tasks_shows_the_label_before_the_input() -> None:
    prompt = build_instance_prompt("Is the review positive?", is_classification=True)
    assert prompt.output_first
    assert prompt.template_version == "instances-output-first-v1:en"
    for block in prompt.text.split("\n\n")[1:-1]:
        lines = block.split("\n")
        labels = [i for i, line in enumerate(lines) if line.startswith("Class label:")]
        inputs = [i for i, line in enumerate(lines) if line.startswith("Input:")]
        assert labels and len(labels) == len(inputs)
        assert all(label + 1 == inp for label, inp in zip(labels, inputs, strict=True))
    assert prompt.text.endswith("Task: Is the review positive?\nExample 1\n")
    assert 3 <= len(OUTPUT_FIRST_EXAMPLES) <= 4


def test_instance_prompt_in_chinese_and_with_a_custom_instance_count() -> None:
    prompt = build_instance_prompt(
        "把句子改写得更正式。", is_classification=False, language="zh", max_instances=3
    )
    assert prompt.text.endswith("任务：把句子改写得更正式。\n示例 1\n")
    assert "输入：" in prompt.text and "输出：" in prompt.text
    assert prompt.stop_sequences == ("示例 4", "\n任务：")
    labelled = build_instance_prompt("判断情绪。", is_classification=True, language="zh")
    assert "类别标签：高兴" in labelled.text


# --- alpaca prompt ------------------------------------------------------------------------------

ALPACA_EXAMPLES = [
    {"id": "a1", "instruction": "Give three tips for sleeping better.", "input": "",
     "output": "1. Keep a schedule.\n2. Avoid screens late.\n3. Keep the room cool."},
    {"id": "a2", "instruction": "Correct the spelling.", "input": "I recieved the pakage.",
     "output": "I received the package."},
    {"id": "a3", "instruction": "Classify the animal as mammal, bird or fish.", "input": "Salmon",
     "output": "Fish"},
]  # fmt: skip


def test_alpaca_prompt_lists_examples_and_opens_the_next_task() -> None:
    prompt = build_alpaca_prompt(ALPACA_EXAMPLES)
    assert prompt.next_number == 4
    assert prompt.num_tasks == 20
    assert prompt.example_ids == ("a1", "a2", "a3")
    assert "20" in prompt.text.split("\n")[0]
    assert [int(n) for n in re.findall(r"^### Task (\d+)$", prompt.text, re.M)] == [1, 2, 3, 4]
    assert prompt.text.endswith("### Task 4\nInstruction:")
    assert "Input: <noinput>" in prompt.text  # the first example takes no input
    assert "Input: I recieved the pakage." in prompt.text
    assert prompt.stop_sequences == ("### Task 21",)
    assert prompt.template_version == "alpaca-v1:en"
    rules = re.findall(r"^\d+\. .+$", prompt.text, re.M)
    assert len(rules) >= 6
    assert any("images" in rule for rule in rules)


def test_alpaca_prompt_custom_count_chinese_and_refusals() -> None:
    prompt = build_alpaca_prompt(ALPACA_EXAMPLES, num_tasks=10, language="zh")
    assert prompt.stop_sequences == ("### 任务 11",)
    assert prompt.text.endswith("### 任务 4\n指令：")
    with pytest.raises(ValueError, match="num_tasks"):
        build_alpaca_prompt(ALPACA_EXAMPLES, num_tasks=3)
    with pytest.raises(ValueError, match="need an output"):
        build_alpaca_prompt([{"id": "x", "instruction": "Do it.", "output": ""}])


# --- chat wrapping and defaults -----------------------------------------------------------------


def test_chat_messages_wrap_the_raw_prompt() -> None:
    prompt = build_bootstrap_prompt(SEEDS[:8]).text
    messages = to_chat_messages(prompt)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == prompt
    assert "continue" in messages[0]["content"].lower()
    zh = to_chat_messages(prompt, language="zh")
    assert "续写" in zh[0]["content"]
    assert to_chat_messages(prompt, system="Go on.")[0]["content"] == "Go on."


def test_paper_sampling_defaults() -> None:
    assert BOOTSTRAP_SAMPLING.as_dict() == {
        "temperature": 0.7,
        "top_p": 0.5,
        "max_tokens": 1024,
        "presence_penalty": 2.0,
        "frequency_penalty": 0.0,
    }
    assert PROMPTS_PER_BATCH == 5
    assert CLASSIFICATION_SAMPLING.temperature == INSTANCE_SAMPLING.temperature == 0.0
    assert INSTANCE_SAMPLING.max_tokens == 350
    assert CLASSIFICATION_INSTANCE_SAMPLING.max_tokens == 300


def test_defaults_and_stops_are_accepted_by_the_backend_sampling_params() -> None:
    from generators.base import SamplingParams

    pairs = [
        (BOOTSTRAP_SAMPLING, build_bootstrap_prompt(SEEDS[:8]).stop_sequences),
        (CLASSIFICATION_SAMPLING, build_classification_prompt("x").stop_sequences),
        (INSTANCE_SAMPLING, build_instance_prompt("x", is_classification=False).stop_sequences),
        (
            CLASSIFICATION_INSTANCE_SAMPLING,
            build_instance_prompt("x", is_classification=True).stop_sequences,
        ),
        (ALPACA_SAMPLING, build_alpaca_prompt(ALPACA_EXAMPLES).stop_sequences),
    ]
    for defaults, stop in pairs:
        params = SamplingParams(**defaults.as_dict(), stop=stop)
        assert params.stop == stop
        assert params.temperature == defaults.temperature
