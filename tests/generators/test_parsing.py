"""Parsing completions: realistic, truncated, sloppy and hostile model output."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generators.parsing import (
    parse_alpaca_completion,
    parse_bootstrap_completion,
    parse_classification_answer,
    parse_instances,
)
from generators.prompts import (
    PromptExample,
    build_alpaca_prompt,
    build_bootstrap_prompt,
    build_instance_prompt,
    sample_prompt_examples,
)

ORIGINAL_SEEDS = Path(__file__).resolve().parents[3] / "shared" / "data"
ORIGINAL_SEEDS = ORIGINAL_SEEDS / "selfinstruct_seed_tasks.jsonl"

# --- bootstrap ----------------------------------------------------------------------------------

REALISTIC_CONTINUATION = (
    " Suggest a name for a podcast about urban gardening.\n"
    "10. Explain the difference between weather and climate to a ten-year-old.\n"
    "11.   Given a list of numbers,   return the second largest one.\n"
    "12. Write a polite email declining a job offer,\n"
    "    mentioning that you accepted another position.\n"
    "13. Classify the sentence as a question or a statement.\n"
    "14. Convert the recipe quantities from cups to grams.\n"
    "15. Tell me a joke about"
)


def test_bootstrap_parses_a_realistic_continuation_in_order() -> None:
    items = parse_bootstrap_completion(REALISTIC_CONTINUATION, next_number=9)
    assert items == [
        "Suggest a name for a podcast about urban gardening.",
        "Explain the difference between weather and climate to a ten-year-old.",
        "Given a list of numbers, return the second largest one.",
        "Write a polite email declining a job offer, mentioning that you accepted another "
        "position.",
        "Classify the sentence as a question or a statement.",
        "Convert the recipe quantities from cups to grams.",
        "Tell me a joke about",
    ]


def test_bootstrap_drops_the_cut_off_item_when_stopped_on_length() -> None:
    items = parse_bootstrap_completion(
        REALISTIC_CONTINUATION, next_number=9, finish_reason="length"
    )
    assert len(items) == 6
    assert items[-1] == "Convert the recipe quantities from cups to grams."


def test_bootstrap_keeps_the_last_item_when_the_stop_label_was_reached() -> None:
    # A server that ignores stop sequences: item 16 is discarded and 15 is complete.
    completion = " First task here.\n15. Last complete task.\n16. Beyond the stop\n17. more"
    items = parse_bootstrap_completion(
        completion, next_number=14, finish_reason="length", stop_at=16
    )
    assert items == ["First task here.", "Last complete task."]


def test_bootstrap_tolerates_a_repeated_label_and_a_chatty_preface() -> None:
    repeated = "9. Describe a sunrise.\n10. Name a planet."
    chatty = "Sure! Here are more tasks:\n\n9. Describe a sunrise.\n10. Name a planet.\n"
    expected = ["Describe a sunrise.", "Name a planet."]
    assert parse_bootstrap_completion(repeated, next_number=9) == expected
    assert parse_bootstrap_completion(chatty, next_number=9) == expected


def test_bootstrap_follows_a_model_that_restarts_numbering() -> None:
    completion = "1. Describe a sunrise.\n2. Name a planet.\n3. Define gravity."
    assert parse_bootstrap_completion(completion, next_number=9) == [
        "Describe a sunrise.",
        "Name a planet.",
        "Define gravity.",
    ]


def test_bootstrap_ignores_trailing_junk_after_a_blank_line() -> None:
    completion = " Describe a sunrise.\n10. Name a planet.\n\nI hope these help! Let me know."
    assert parse_bootstrap_completion(completion, next_number=9) == [
        "Describe a sunrise.",
        "Name a planet.",
    ]


def test_bootstrap_does_not_split_on_numbers_that_are_item_text() -> None:
    completion = (
        " Put the steps in order:\n1. mix\n2. bake\n"  # lower numbers: part of item 9
        "10. Explain what happened in\n2024: a review of the year.\n"  # big jump: text
        "11. Convert 3.5 kg to pounds."
    )
    assert parse_bootstrap_completion(completion, next_number=9) == [
        "Put the steps in order: 1. mix 2. bake",
        "Explain what happened in 2024: a review of the year.",
        "Convert 3.5 kg to pounds.",
    ]


def test_bootstrap_accepts_a_skipped_number() -> None:
    assert parse_bootstrap_completion(" A task.\n11. Another task.", next_number=9) == [
        "A task.",
        "Another task.",
    ]


def test_bootstrap_parses_chinese_numbering() -> None:
    completion = (
        "写一首关于雨的诗。\n10．把这段话翻译成英文。\n"
        "11、列出三种水果。\n１２．解释什么是光合作用。"
    )
    assert parse_bootstrap_completion(completion, next_number=9) == [
        "写一首关于雨的诗。",
        "把这段话翻译成英文。",
        "列出三种水果。",
        "解释什么是光合作用。",
    ]


def test_bootstrap_parses_task_numbering_style() -> None:
    completion = " Summarize the article.\nTask 5: Give an example of irony.\nTask 6:Name a color."
    assert parse_bootstrap_completion(completion, next_number=4, numbering="Task {n}:") == [
        "Summarize the article.",
        "Give an example of irony.",
        "Name a color.",
    ]


@pytest.mark.parametrize("garbage", ["", "   \n\n  ", "\x00\x01", "9.", "\n9.\n\n", None])
def test_bootstrap_returns_nothing_for_garbage(garbage: str | None) -> None:
    assert parse_bootstrap_completion(garbage, next_number=9) == []


def test_bootstrap_round_trip_through_the_prompt() -> None:
    seeds = [PromptExample(id=f"s{i}", instruction=f"Seed task number {i}.") for i in range(8)]
    prompt = build_bootstrap_prompt(seeds)
    completion = " Plan a three-day trip to Kyoto.\n10. Rewrite the sentence in plain English.\n11."
    full_text = prompt.text + completion
    generated = full_text[len(prompt.text) :]
    assert parse_bootstrap_completion(
        generated, next_number=prompt.next_number, finish_reason="length"
    ) == ["Plan a three-day trip to Kyoto.", "Rewrite the sentence in plain English."]
    # The list the prompt writes is itself readable by the parser, from item 1.
    whole_list = full_text.split("\n", 1)[1]
    assert parse_bootstrap_completion(whole_list, next_number=1) == [
        *(s.instruction for s in seeds),
        "Plan a three-day trip to Kyoto.",
        "Rewrite the sentence in plain English.",
    ]


def test_bootstrap_round_trip_in_chinese_with_task_numbering() -> None:
    seeds = [
        PromptExample(id="a", instruction="写一首诗。"),
        PromptExample(id="b", instruction="翻译句子。"),
    ]
    prompt = build_bootstrap_prompt(seeds, language="zh", numbering="任务 {n}：")
    assert prompt.text.endswith("\n任务 3：")
    completion = "给出三个学习英语的建议。\n任务 4：解释“守株待兔”的意思。\n任务 5：把下面的"
    assert parse_bootstrap_completion(
        completion, next_number=3, numbering=prompt.numbering, finish_reason="length"
    ) == ["给出三个学习英语的建议。", "解释“守株待兔”的意思。"]


@pytest.mark.skipif(not ORIGINAL_SEEDS.exists(), reason=f"{ORIGINAL_SEEDS} not present")
def test_bootstrap_round_trip_with_the_original_seed_tasks() -> None:
    seeds = [json.loads(line) for line in ORIGINAL_SEEDS.read_text().splitlines() if line.strip()]
    for seed in range(20):
        picked = sample_prompt_examples(seeds, [], rng=random.Random(seed))
        prompt = build_bootstrap_prompt(picked)
        whole_list = prompt.text.split("\n", 1)[1] + " A new task."
        expected = [re.sub(r"\s+", " ", s["instruction"]).strip() for s in picked]
        assert parse_bootstrap_completion(whole_list, next_number=1) == [*expected, "A new task."]


# --- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (" Yes", True),
        ("yes.", True),
        ("YES", True),
        ("Yes, it has a fixed set of labels.", True),
        (' "Yes"', True),
        ("**Yes**", True),
        ("Answer: Yes", True),
        (" No", False),
        ("no", False),
        ("No, the output is open-ended.", False),
        ("是", True),
        ("是的", True),
        ("否", False),
        ("不是", False),
        ("：否。", False),
        ("I think the answer is yes", True),
        ("", None),
        ("Maybe", None),
        ("It depends on yes or no", None),
        ("Not sure", None),
        ("???", None),
        (None, None),
    ],
)
def test_classification_answers(answer: str | None, expected: bool | None) -> None:
    assert parse_classification_answer(answer) is expected


# --- instances ----------------------------------------------------------------------------------


def test_input_first_instances_with_example_headers() -> None:
    completion = (
        "Input: The cat sat on the mat.\n"
        "Output: The mat was sat on by the cat.\n"
        "\n"
        "Example 2\n"
        "Input:   Tom wrote the report.  \n"
        "Output: The report was written by Tom.\n"
        "Example 3\n"
        "Input: <noinput>\n"
        "Output: Mistakes were made.\n"
    )
    assert parse_instances(completion, output_first=False) == [
        {"input": "The cat sat on the mat.", "output": "The mat was sat on by the cat."},
        {"input": "Tom wrote the report.", "output": "The report was written by Tom."},
        {"input": "", "output": "Mistakes were made."},
    ]


def test_input_first_keeps_multiline_outputs_and_handles_missing_parts() -> None:
    completion = (
        "Output:\n- Plank\n- Squats\n\n- Lunges\n"  # no Input line: the task takes none
        "Example 2\n"
        "Input: Only an input, the output never came\n"
        "Example 3\n"
        "Input: 2 + 2\n"
        "Output: 4"
    )
    assert parse_instances(completion, output_first=False) == [
        {"input": "", "output": "- Plank\n- Squats\n\n- Lunges"},
        {"input": "2 + 2", "output": "4"},
    ]


def test_instances_without_headers_split_on_a_repeated_field() -> None:
    completion = "Input: a\nOutput: A\nInput: b\nOutput: B\nInput: c\nOutput: C"
    pairs = [(i["input"], i["output"]) for i in parse_instances(completion, output_first=False)]
    assert pairs == [("a", "A"), ("b", "B"), ("c", "C")]


def test_instances_drop_the_last_one_when_stopped_on_length() -> None:
    completion = "Input: a\nOutput: A\nExample 2\nInput: b\nOutput: B is longer and was cut"
    assert parse_instances(completion, output_first=False, finish_reason="length") == [
        {"input": "a", "output": "A"}
    ]
    # Cut right after a header: the empty shell goes, the finished example stays.
    after_header = "Input: a\nOutput: A\nExample 2\n"
    assert parse_instances(after_header, output_first=False, finish_reason="length") == [
        {"input": "a", "output": "A"}
    ]


def test_instances_stop_at_the_next_task() -> None:
    completion = (
        "Input: x\nOutput: y\n\nTask: Another task entirely\nExample 1\nInput: p\nOutput: q"
    )
    assert parse_instances(completion, output_first=False) == [{"input": "x", "output": "y"}]


def test_output_first_instances_put_the_label_in_output() -> None:
    completion = (
        "Class label: Positive\n"
        "Input: The service was quick and friendly.\n"
        "Example 2\n"
        "Class label: Negative\n"
        "Input: My order arrived two hours late.\n"
        "Example 3\n"
        "Class label: Neutral\n"
        "Input: The restaurant is on"
    )
    assert parse_instances(completion, output_first=True, finish_reason="length") == [
        {"input": "The service was quick and friendly.", "output": "Positive"},
        {"input": "My order arrived two hours late.", "output": "Negative"},
    ]


def test_output_first_without_headers_and_a_label_with_no_input() -> None:
    completion = "Class label: Yes\nInput: 7\nClass label: No\nInput: 9\nClass label: Maybe\n"
    assert parse_instances(completion, output_first=True) == [
        {"input": "7", "output": "Yes"},
        {"input": "9", "output": "No"},
        {"input": "", "output": "Maybe"},
    ]


def test_chinese_instances_with_full_width_colons() -> None:
    completion = (
        "类别标签：高兴\n输入：今天考试得了满分！\n"
        "示例 2\n类别标签：难过\n输入：下雨了，野餐取消了。"
    )
    assert parse_instances(completion, output_first=True) == [
        {"input": "今天考试得了满分！", "output": "高兴"},
        {"input": "下雨了，野餐取消了。", "output": "难过"},
    ]
    generation = "输入：<无输入>\n输出：春眠不觉晓。\n示例 2\n输入：你好\n输出：Hello"
    assert parse_instances(generation, output_first=False) == [
        {"input": "", "output": "春眠不觉晓。"},
        {"input": "你好", "output": "Hello"},
    ]


def test_instances_from_a_chat_model_echoing_the_task_in_markdown() -> None:
    completion = (
        "Task: Add the numbers.\n"
        "**Example 1**\n"
        "**Input:** 2, 3\n"
        "**Output:** 5\n"
        "**Example 2**\n"
        "**Input:** 10, -4\n"
        "**Output:** 6\n"
    )
    assert parse_instances(completion, output_first=False) == [
        {"input": "2, 3", "output": "5"},
        {"input": "10, -4", "output": "6"},
    ]


@pytest.mark.parametrize("garbage", ["", "lorem ipsum", "Input:\nOutput:", "Example 1\n", None])
def test_instances_return_nothing_for_garbage(garbage: str | None) -> None:
    assert parse_instances(garbage, output_first=False) == []
    assert parse_instances(garbage, output_first=True) == []


def test_instance_round_trip_through_both_prompts() -> None:
    gen_prompt = build_instance_prompt("Reverse the word.", is_classification=False)
    gen_completion = "Input: stressed\nOutput: desserts\nExample 2\nInput: drawer\nOutput: reward"
    clf_prompt = build_instance_prompt("Is the word a palindrome?", is_classification=True)
    clf_completion = "Class label: Yes\nInput: level\nExample 2\nClass label: No\nInput: river"
    for prompt, completion, expected in [
        (gen_prompt, gen_completion, [("stressed", "desserts"), ("drawer", "reward")]),
        (clf_prompt, clf_completion, [("level", "Yes"), ("river", "No")]),
    ]:
        full_text = prompt.text + completion
        parsed = parse_instances(full_text[len(prompt.text) :], output_first=prompt.output_first)
        assert [(i["input"], i["output"]) for i in parsed] == expected
        # The last task block of the prompt, echoed back whole, parses the same way.
        last_block = full_text[full_text.rindex("Task:") :]
        echoed = parse_instances(last_block, output_first=prompt.output_first)
        assert [(i["input"], i["output"]) for i in echoed] == expected


def test_instance_round_trip_reads_the_few_shot_blocks() -> None:
    prompt = build_instance_prompt("x", is_classification=False, language="zh")
    first_block = prompt.text.split("\n\n")[1]
    assert parse_instances(first_block, output_first=False) == [
        {"input": "25 °C", "output": "77 °F"},
        {"input": "-10 °C", "output": "14 °F"},
    ]


# --- alpaca -------------------------------------------------------------------------------------

ALPACA_COMPLETION = (
    " Name three renewable energy sources.\n"
    "Input: <noinput>\n"
    "Output: Solar, wind and hydroelectric power.\n"
    "### Task 5\n"
    "Instruction: Rewrite the sentence to sound more formal.\n"
    "Input: Gonna be late, sorry.\n"
    "Output: I apologize, but I will be arriving late.\n"
    "### Task 6\n"
    "Instruction: List the steps to boil an egg.\n"
    "Input:\n"
    "Output: 1. Boil water.\n"
    "2. Add the egg.\n"
    "3. Wait nine minutes.\n"
    "### Task 7\n"
    "Instruction: Describe a color\n"
    "### Task 8\n"
    "Instruction: Translate to Spanish.\n"
    "Input: Good morning\n"
    "Output: Buenos d"
)


def test_alpaca_parses_tasks_drops_incomplete_ones_and_the_cut_off_last() -> None:
    tasks = parse_alpaca_completion(ALPACA_COMPLETION, finish_reason="length")
    assert tasks == [
        {
            "instruction": "Name three renewable energy sources.",
            "input": "",
            "output": "Solar, wind and hydroelectric power.",
        },
        {
            "instruction": "Rewrite the sentence to sound more formal.",
            "input": "Gonna be late, sorry.",
            "output": "I apologize, but I will be arriving late.",
        },
        {
            "instruction": "List the steps to boil an egg.",
            "input": "",
            "output": "1. Boil water.\n2. Add the egg.\n3. Wait nine minutes.",
        },
    ]
    assert len(parse_alpaca_completion(ALPACA_COMPLETION, finish_reason="stop")) == 4


def test_alpaca_accepts_bare_delimiters_numbered_fields_and_chinese() -> None:
    completion = (
        "###\n4. Instruction: Give a synonym for happy.\n4. Input: <noinput>\n4. Output: Joyful\n"
        "###\n5. Instruction: Sort the numbers.\n5. Input: 3, 1, 2\n5. Output: 1, 2, 3\n"
        "### 任务 6\n指令：写一句问候语。\n输入：<noinput>\n输出：早上好！\n"
        "### Task 7\nInstructions: Name a metal.\nInput: <noinput>\nResponse: Iron"
    )
    assert parse_alpaca_completion(completion) == [
        {"instruction": "Give a synonym for happy.", "input": "", "output": "Joyful"},
        {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
        {"instruction": "写一句问候语。", "input": "", "output": "早上好！"},
        {"instruction": "Name a metal.", "input": "", "output": "Iron"},
    ]


def test_alpaca_drops_a_chatty_preface() -> None:
    completion = (
        "Sure! Here are the remaining tasks.\n\n"
        "### Task 4\nInstruction: Define entropy.\nInput: <noinput>\nOutput: A measure of disorder."
    )
    assert parse_alpaca_completion(completion) == [
        {"instruction": "Define entropy.", "input": "", "output": "A measure of disorder."}
    ]


@pytest.mark.parametrize("garbage", ["", "###\n###", "Output: only", "random words", None])
def test_alpaca_returns_nothing_for_garbage(garbage: str | None) -> None:
    assert parse_alpaca_completion(garbage) == []


def test_alpaca_round_trip_through_the_prompt() -> None:
    examples = [
        {"id": "e1", "instruction": "Give a tip.", "input": "", "output": "Drink water."},
        {"id": "e2", "instruction": "Fix it.", "input": "teh", "output": "the"},
        {"id": "e3", "instruction": "Add.", "input": "1 + 1", "output": "2"},
    ]
    prompt = build_alpaca_prompt(examples, num_tasks=6)
    completion = " Name a prime.\nInput: <noinput>\nOutput: 7\n### Task 5\nInstruction: Negate."
    full_text = prompt.text + completion
    generated = parse_alpaca_completion(full_text[len(prompt.text) :], finish_reason="length")
    assert generated == [{"instruction": "Name a prime.", "input": "", "output": "7"}]
    listed = parse_alpaca_completion(full_text[full_text.index("### Task 1") :])
    assert [t["instruction"] for t in listed] == ["Give a tip.", "Fix it.", "Add.", "Name a prime."]
    assert listed[1] == {"instruction": "Fix it.", "input": "teh", "output": "the"}


def test_parsers_stay_fast_on_long_runs_of_whitespace() -> None:
    # Nested optional whitespace in a regex once made a 20k-space line take minutes.
    hostile = [" " * 20_000 + "x", " \t" * 10_000 + "x", "Example" + " " * 20_000 + "x"]
    started = time.perf_counter()
    for text in hostile:
        parse_bootstrap_completion(text, next_number=9, numbering="Task {n}:")
        parse_instances(text, output_first=False)
        parse_alpaca_completion(text)
        parse_classification_answer(text)
    assert time.perf_counter() - started < 2.0


# --- properties ---------------------------------------------------------------------------------

_any_text = st.text(
    alphabet=st.characters(codec="utf-8"), max_size=400
) | st.lists(
    st.sampled_from(
        ["9.", "10.", "１１．", "Task 3:", "Input:", "Output:", "Class label:", "Example 2",
         "###", "### Task 5", "Instruction:", "任务：", "输入：", "<noinput>", "\n", "\n\n",
         " ", "yes", "否", "**", "x" * 5, "99999999999999999999."]
    ),
    max_size=60,
).map("".join)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    text=_any_text,
    next_number=st.integers(min_value=1, max_value=40),
    finish_reason=st.sampled_from([None, "stop", "length"]),
    numbering=st.sampled_from(["{n}.", "Task {n}:", "{n})", "[{n}]", "任务 {n}：", "bad"]),
)
def test_parsers_never_raise_on_arbitrary_text(
    text: str, next_number: int, finish_reason: str | None, numbering: str
) -> None:
    items = parse_bootstrap_completion(
        text, next_number=next_number, finish_reason=finish_reason, numbering=numbering, stop_at=16
    )
    assert all(isinstance(i, str) and i == i.strip() and i for i in items)
    assert parse_classification_answer(text) in (True, False, None)
    for output_first in (False, True):
        for instance in parse_instances(
            text, output_first=output_first, finish_reason=finish_reason
        ):
            assert set(instance) == {"input", "output"} and instance["output"]
    for task in parse_alpaca_completion(text, finish_reason=finish_reason):
        assert set(task) == {"instruction", "input", "output"}
        assert task["instruction"] and task["output"]


_instruction = st.from_regex(
    r"[A-Za-z\u4e00-\u9fff][A-Za-z\u4e00-\u9fff ,?'-]{0,60}", fullmatch=True
)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(_instruction, min_size=1, max_size=7), truncated=st.booleans())
def test_bootstrap_recovers_every_item_the_model_wrote(items: list[str], truncated: bool) -> None:
    completion = " " + items[0] + "".join(f"\n{n}. {item}" for n, item in enumerate(items[1:], 10))
    parsed = parse_bootstrap_completion(
        completion, next_number=9, finish_reason="length" if truncated else "stop"
    )
    expected = [re.sub(r"\s+", " ", item).strip() for item in items]
    assert parsed == (expected[:-1] if truncated else expected)
