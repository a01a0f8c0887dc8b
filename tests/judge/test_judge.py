"""The judge against a scripted OpenAI-compatible server: every level, unparseable answers,
position-swapped comparisons, the Chinese prompt, and the structured-output request shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from generators.errors import GeneratorError
from generators.judge_prompts import (
    JudgeTask,
    build_judge_prompt,
    compare,
    judge_task,
    meets,
    parse_judgement,
    parse_preference,
)
from generators.openai_compat import OpenAIBackend
from testbed.scripted_llm import Reply, ScriptedServer, completion_body

pytestmark = pytest.mark.anyio

TASK = JudgeTask(
    "Name the capital of France.", [{"input": "", "output": "Paris is the capital."}], "en"
)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    s.start()
    yield s
    s.stop()


def backend(server: ScriptedServer, structured: str = "none") -> OpenAIBackend:
    return OpenAIBackend(
        base_url=server.base_url, model="j", max_retries=2, backoff_base_s=0.0,
        structured_output=structured,
    )  # fmt: skip


@pytest.mark.parametrize("level", ["A", "B", "C", "D"])
async def test_each_level_is_read_with_its_rationale(server: ScriptedServer, level: str) -> None:
    answer = json.dumps({"rating": level, "rationale": f"Because {level}."})
    server.enqueue(Reply(body=completion_body(answer)))
    judgement = await judge_task(backend(server), TASK)
    assert judgement.rating == level
    assert judgement.rationale == f"Because {level}."
    assert judgement.prompt_version == "judge-v1:en"
    assert judgement.model == "fake-model"  # the id the server answered with


@pytest.mark.parametrize(
    "text",
    ["", "This task is good.", "A good task overall.", '{"rating": "E", "rationale": "x"}', "B+"],
)
async def test_an_answer_without_a_rating_is_unjudged_not_guessed(
    server: ScriptedServer, text: str
) -> None:
    server.enqueue(Reply(body=completion_body(text)))
    judgement = await judge_task(backend(server), TASK)
    assert judgement.rating is None and not judgement.judged
    assert "held no rating" in judgement.rationale


def test_text_answers_that_state_a_rating_are_read() -> None:
    assert parse_judgement("Rating: C, the output is wrong.") == (
        "C",
        "Rating: C, the output is wrong.",
    )
    assert parse_judgement("评级：B") is not None and parse_judgement("评级：B")[0] == "B"
    assert parse_judgement("D") == ("D", "")
    # cut off by max_tokens after the rating: the rating was stated
    assert parse_judgement('{"rating": "A", "rationale": "The outp') == ("A", "The outp")
    assert meets("A", "B") and meets("B", "B") and not meets("C", "B") and not meets(None, "D")


async def test_a_failing_judge_is_retried_then_raises(server: ScriptedServer) -> None:
    server.enqueue(
        Reply(status=503), Reply(body=completion_body('{"rating": "B", "rationale": "r"}'))
    )
    assert (await judge_task(backend(server), TASK)).rating == "B"
    server.enqueue(*[Reply(status=500)] * 3)
    with pytest.raises(GeneratorError):
        await judge_task(backend(server), TASK)


async def test_swapped_comparisons_name_the_same_answer(server: ScriptedServer) -> None:
    """The judge prefers the answer saying Paris in whichever position it is shown."""
    good, bad = "Paris.", "Lyon."

    def verdict_for(prompt: str) -> Reply:
        shown = prompt.rsplit("Answer 1:", 1)[1]
        first_is_good = shown.split("Answer 2:")[0].strip() == good
        winner = "1" if first_is_good else "2"
        return Reply(body=completion_body(json.dumps({"winner": winner, "rationale": "Paris."})))

    b = backend(server)
    results = []
    for swap in (False, True):
        prompt = _pairwise_text(good, bad, swap)
        server.by_prompt[prompt] = verdict_for(prompt)
        results.append(await compare(b, "Capital of France?", "", good, bad, swap=swap))
    assert [r.winner for r in results] == ["first", "first"]
    assert [r.shown_first for r in results] == ["first", "second"]
    sent = [r.body["prompt"] for r in server.requests_to("/completions")]  # type: ignore[index]
    assert sent[0].rsplit("Answer 1:", 1)[1].startswith(" Paris.")
    assert sent[1].rsplit("Answer 1:", 1)[1].startswith(" Lyon.")
    # a tie stays a tie; an unreadable verdict is no winner
    server.enqueue(Reply(body=completion_body("tie")), Reply(body=completion_body("Both fine")))
    assert (await compare(b, "q", "", "x", "y", swap=True)).winner == "tie"
    assert (await compare(b, "q", "", "x", "y")).winner is None
    assert parse_preference('{"winner": "2", "rationale": "r"}') == ("2", "r")


def _pairwise_text(good: str, bad: str, swap: bool) -> str:
    from generators.judge_prompts import build_pairwise_prompt

    shown = (bad, good) if swap else (good, bad)
    return build_pairwise_prompt("Capital of France?", "", *shown).text


def test_a_chinese_task_gets_the_chinese_prompt_with_an_example_of_every_level() -> None:
    prompt = build_judge_prompt(JudgeTask("计算 17 加 25。", [{"input": "", "output": "42"}], "zh"))
    assert prompt.version == "judge-v1:zh"
    assert "评审：" in prompt.text and "Judgement:" not in prompt.text
    for level in "ABCD":
        assert f'"rating": "{level}"' in prompt.text
    english = build_judge_prompt(TASK)
    assert all(f'"rating": "{level}"' in english.text for level in "ABCD")
    assert english.text.rstrip().endswith("Judgement:")


@pytest.mark.parametrize(
    ("setting", "field"),
    [("json_schema", "response_format"), ("grammar", "grammar"), ("none", None)],
)
async def test_the_answer_is_constrained_where_the_endpoint_can(
    server: ScriptedServer, setting: str, field: str | None
) -> None:
    server.default = Reply(body=completion_body('{"rating": "A", "rationale": "fine"}'))
    await judge_task(backend(server, setting), TASK)
    body = server.requests_to("/completions")[-1].body
    assert body is not None
    constrained = {k for k in ("response_format", "grammar") if k in body}
    assert constrained == ({field} if field else set())
    if field == "response_format":
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["rating"]["enum"] == ["A", "B", "C", "D"]
        assert body["response_format"]["type"] == "json_schema"
    if field == "grammar":
        assert '"\\"A\\""' in body["grammar"] and "root ::=" in body["grammar"]
