"""Instance filters: each rule by itself, the task-wide conflict rule, dedupe and the cap."""

from __future__ import annotations

import pytest

from filters.errors import InvalidFilterConfig
from filters.instances import InstanceFilterConfig, filter_instances


def pair(source: str, output: str) -> dict[str, str]:
    return {"input": source, "output": output}


def test_valid_instances_are_kept_stripped_and_in_order() -> None:
    result = filter_instances([pair(" 2 + 2 ", " 4\n"), pair("", "A haiku about rain.")])
    assert result.kept == [pair("2 + 2", "4"), pair("", "A haiku about rain.")]
    assert not result.dropped and not result.conflict


def test_an_empty_output_is_dropped() -> None:
    result = filter_instances([pair("What is 2 + 2?", "  "), {"input": "x"}, pair("q", "a")])
    assert result.kept == [pair("q", "a")]
    assert result.dropped == {"empty_output": 2}


def test_an_output_that_repeats_the_input_is_dropped() -> None:
    result = filter_instances([pair("Hello world", "Hello world "), pair("Hi", "Bonjour")])
    assert result.kept == [pair("Hi", "Bonjour")]
    assert result.dropped == {"input_equals_output": 1}


def test_a_trailing_colon_on_input_or_output_is_dropped() -> None:
    result = filter_instances(
        [
            pair("Sentence:", "Positive"),
            pair("I loved it.", "Sentiment:"),
            pair("很好", "情感\uff1a"),  # full-width colon
            pair("I hated it.", "Negative"),
        ]
    )
    assert result.kept == [pair("I hated it.", "Negative")]
    assert result.dropped == {"ends_with_colon": 3}


def test_one_input_with_two_outputs_drops_the_whole_task() -> None:
    instances = [pair("2 + 2", "4"), pair("3 + 3", "6"), pair("2 + 2", "5"), pair("", "")]
    result = filter_instances(instances)
    assert result.kept == [] and result.conflict
    assert result.dropped == {"empty_output": 1, "conflicting_outputs": 3}


def test_the_empty_input_may_have_several_outputs() -> None:
    poems = [pair("", "Roses are red."), pair("", "The sea is wide."), pair("", "Roses are red.")]
    result = filter_instances(poems)
    assert result.kept == poems[:2]
    assert result.dropped == {"duplicate_instance": 1}


def test_identical_instances_are_kept_once() -> None:
    result = filter_instances([pair("2 + 2", "4"), pair(" 2 + 2", "4 "), pair("1 + 1", "2")])
    assert result.kept == [pair("2 + 2", "4"), pair("1 + 1", "2")]
    assert result.dropped == {"duplicate_instance": 1}


def test_at_most_five_instances_are_kept_by_default() -> None:
    instances = [pair(f"{n} + {n}", str(2 * n)) for n in range(8)]
    result = filter_instances(instances)
    assert result.kept == instances[:5]
    assert result.dropped == {"over_limit": 3}
    assert filter_instances(instances, max_instances=2).kept == instances[:2]
    assert (
        filter_instances(instances, config=InstanceFilterConfig(max_instances=7)).kept
        == (instances[:7])
    )


def test_every_rule_can_be_switched_off() -> None:
    instances = [pair("same", "same"), pair("Label:", "x"), pair("q", ""), pair("q", "a")] * 2
    config = InstanceFilterConfig(
        drop_empty_output=False,
        drop_input_equals_output=False,
        drop_trailing_colon=False,
        drop_conflicting=False,
        dedupe=False,
        max_instances=100,
    )
    result = filter_instances(instances, config=config)
    assert result.kept == instances and not result.dropped


def test_an_impossible_limit_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidFilterConfig, match="max_instances must be at least 1, got 0") as e:
        filter_instances([pair("q", "a")], max_instances=0)
    assert e.value.field == "max_instances"
