"""Prompt building for the Self-Instruct pipeline: pure text in, text out.

Prompts are raw text for completion models (the model continues where the text stops);
``to_chat_messages`` wraps one for chat-only models. The wording is this project's own; the
counts, structure and sampling defaults follow Wang et al. 2022 (arXiv 2212.10560) and, for the
``alpaca`` strategy, Stanford Alpaca. Every prompt records a template version for lineage, so a
task can always be traced back to the exact wording that produced it.
"""

# Chinese text and full-width punctuation are deliberate here.

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from generators.prompt_text import (
    ALPACA_WORDS,
    BACKTRANSLATE_WORDS,
    BOOTSTRAP_HEADERS,
    BOOTSTRAP_LANGUAGE_NOTES,
    BOOTSTRAP_LEADS,
    CHAT_SYSTEM_MESSAGES,
    CLASSIFICATION_EXAMPLES,
    CLASSIFICATION_WORDS,
    EVOLVE_WORDS,
    INPUT_FIRST_EXAMPLES,
    INSTANCE_WORDS,
    NO_INPUT,
    OUTPUT_FIRST_EXAMPLES,
)

Language = Literal["en", "zh"]

LANGUAGES: tuple[str, ...] = ("en", "zh")

# Bump a version whenever its wording changes: stored tasks point at the version that made them.
BOOTSTRAP_TEMPLATE_VERSION = "bootstrap-v1"
CLASSIFICATION_TEMPLATE_VERSION = "classify-v1"
INPUT_FIRST_TEMPLATE_VERSION = "instances-input-first-v1"
OUTPUT_FIRST_TEMPLATE_VERSION = "instances-output-first-v1"
ALPACA_TEMPLATE_VERSION = "alpaca-v1"
EVOLVE_TEMPLATE_VERSION = "evolve-v1"
BACKTRANSLATE_TEMPLATE_VERSION = "backtranslate-v1"

# Paper defaults (Self-Instruct §2.2 and its released scripts).
BOOTSTRAP_PROMPT_EXAMPLES = 8  # instructions shown in one bootstrap prompt
BOOTSTRAP_MACHINE_EXAMPLES = 2  # at most this many of them machine-generated
BOOTSTRAP_STOP_AT = 16  # the model stops before writing item 16
PROMPTS_PER_BATCH = 5
MAX_INSTANCES = 5  # instances asked for (and kept) per task
DEFAULT_NUMBERING = "{n}."
ALPACA_NUM_TASKS = 20  # length of the numbered list, examples included
ALPACA_NUM_EXAMPLES = 3


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling parameters a prompt kind was designed for; stop sequences live on the prompt.

    Field names match ``generators.base.SamplingParams``:
    ``SamplingParams(**BOOTSTRAP_SAMPLING.as_dict(), stop=prompt.stop_sequences)``.
    """

    temperature: float
    top_p: float
    max_tokens: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for run parameters and lineage."""
        return asdict(self)


BOOTSTRAP_SAMPLING = SamplingDefaults(
    temperature=0.7, top_p=0.5, max_tokens=1024, presence_penalty=2.0
)
# The paper decodes greedily with temperature 0 and top_p 0. Under temperature 0 top_p changes
# nothing, and many servers (and generators.base.SamplingParams) refuse top_p == 0, so it is 1 here.
CLASSIFICATION_SAMPLING = SamplingDefaults(temperature=0.0, top_p=1.0, max_tokens=3)
INSTANCE_SAMPLING = SamplingDefaults(
    temperature=0.0, top_p=1.0, max_tokens=350, presence_penalty=1.5
)
# Output-first prompts are longer, so the paper leaves less room for the completion.
CLASSIFICATION_INSTANCE_SAMPLING = SamplingDefaults(
    temperature=0.0, top_p=1.0, max_tokens=300, presence_penalty=1.5
)
ALPACA_SAMPLING = SamplingDefaults(temperature=1.0, top_p=1.0, max_tokens=3072)
# Evol-Instruct samples its rewrites at temperature 1; a rewritten task is short.
EVOLVE_SAMPLING = SamplingDefaults(temperature=1.0, top_p=1.0, max_tokens=512)
BACKTRANSLATE_SAMPLING = SamplingDefaults(temperature=0.7, top_p=1.0, max_tokens=256)


@dataclass(frozen=True)
class PromptExample:
    """One task shown inside a prompt; ``id`` goes into the lineage of what it helps generate."""

    id: str
    instruction: str
    input: str = ""
    output: str = ""
    language: str = ""  # detected; a prompt in one language shows examples of that language


ExampleLike = PromptExample | Mapping[str, Any]


def as_example(obj: ExampleLike) -> PromptExample:
    """Accept a PromptExample, a dict, or a seed-file record (input/output from instances[0])."""
    if isinstance(obj, PromptExample):
        return obj
    if not isinstance(obj, Mapping) or not isinstance(obj.get("instruction"), str):
        raise ValueError(
            f"prompt example must be a PromptExample or a mapping with a string 'instruction', "
            f"got {obj!r}"
        )
    input_text, output_text = obj.get("input"), obj.get("output")
    instances = obj.get("instances")
    if input_text is None and output_text is None and instances:
        first = instances[0]
        input_text, output_text = first.get("input"), first.get("output")
    return PromptExample(
        id=str(obj.get("id", "")),
        instruction=obj["instruction"],
        input=input_text or "",
        output=output_text or "",
    )


T = TypeVar("T")


def sample_prompt_examples(
    seeds: Sequence[T],
    machine: Sequence[T],
    *,
    n_total: int = BOOTSTRAP_PROMPT_EXAMPLES,
    n_machine: int = BOOTSTRAP_MACHINE_EXAMPLES,
    rng: random.Random,
) -> list[T]:
    """Pick up to ``n_machine`` machine tasks, fill to ``n_total`` with seeds, shuffle.

    Mirrors the paper: machine tasks add diversity while seeds keep the prompt anchored to
    human-written quality. Fewer machine tasks than ``n_machine`` means more seeds; when seeds run
    out too, the list is shorter than ``n_total`` (``n_machine`` stays a cap, never exceeded).
    All randomness comes from ``rng``, so a run with a fixed seed is reproducible.
    """
    if n_total < 0 or n_machine < 0:
        raise ValueError("n_total and n_machine must be >= 0")
    if n_machine > n_total:
        raise ValueError(f"n_machine ({n_machine}) must not exceed n_total ({n_total})")
    # `sample` indexes a sequence in place: copying a pool of 1M tasks per prompt cost 5 ms.
    chosen = rng.sample(machine, min(n_machine, len(machine)))
    chosen += rng.sample(seeds, min(n_total - len(chosen), len(seeds)))
    rng.shuffle(chosen)
    return chosen


def check_prompt_language(language: str | None) -> str | None:
    """`language` when prompts exist for it (None passes); a ValueError naming them otherwise."""
    if language is None or language in LANGUAGES:
        return language
    raise ValueError(
        f"language {language!r} has no prompts; supported: {', '.join(LANGUAGES)} "
        "(leave it out to use the languages of the seeds)"
    )


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


def _field(label: str, value: str) -> str:
    """``label value``; Chinese full-width colons take no space after them."""
    return f"{label}{value}" if label.endswith("：") else f"{label} {value}"


def _one_line(text: str) -> str:
    """Collapse whitespace so one instruction is one line of a numbered list."""
    return re.sub(r"\s+", " ", text).strip()


# --- Bootstrap (strategy self_instruct) ---------------------------------------------------------


@dataclass(frozen=True)
class BootstrapPrompt:
    """A bootstrap prompt; the model writes items ``next_number`` .. ``stop_at - 1``."""

    text: str
    next_number: int
    example_ids: tuple[str, ...]
    template_version: str
    language: str
    numbering: str
    stop_at: int
    stop_sequences: tuple[str, ...]
    lead: str = ""  # written after the last label: the completion continues it


def format_number(numbering: str, n: int) -> str:
    """Render one list label, e.g. ``format_number("Task {n}:", 3) == "Task 3:"``."""
    if numbering.count("{n}") != 1:
        raise ValueError(
            f"numbering must contain '{{n}}' exactly once, e.g. '{{n}}.' or 'Task {{n}}:'; "
            f"got {numbering!r}"
        )
    return numbering.replace("{n}", str(n))


def bootstrap_stop_sequences(numbering: str, stop_at: int) -> tuple[str, ...]:
    """Stop at a blank line or where label ``stop_at`` would begin (``"\\n16"`` for ``"{n}."``)."""
    format_number(numbering, stop_at)  # validates the style
    prefix = numbering.partition("{n}")[0]
    return ("\n\n", f"\n{prefix}{stop_at}")


def build_bootstrap_prompt(
    examples: Sequence[ExampleLike],
    *,
    language: str = "en",
    header: str | None = None,
    numbering: str = DEFAULT_NUMBERING,
    stop_at: int = BOOTSTRAP_STOP_AT,
    foreign_examples: bool = False,
) -> BootstrapPrompt:
    """Number the example instructions and end on the next bare label for the model to fill.

    Examples are shown in the order given: the caller shuffles (``sample_prompt_examples``).
    With ``foreign_examples`` (tasks are wanted in ``language``, the examples are in another)
    the header says which language to write in and the next item starts with its lead words.
    """
    _check_language(language)
    items = [as_example(e) for e in examples]
    next_number = len(items) + 1
    if stop_at <= next_number:
        raise ValueError(
            f"stop_at ({stop_at}) must be greater than the continuation number ({next_number}); "
            "show fewer examples or raise stop_at"
        )
    lines = [BOOTSTRAP_HEADERS[language] if header is None else header.strip()]
    lead = BOOTSTRAP_LEADS.get(language, "") if foreign_examples else ""
    if foreign_examples:
        lines[0] += " " + BOOTSTRAP_LANGUAGE_NOTES[language]
    lines += [
        f"{format_number(numbering, i)} {_one_line(e.instruction)}"
        for i, e in enumerate(items, start=1)
    ]
    lines.append(format_number(numbering, next_number) + (f" {lead}" if lead else ""))
    return BootstrapPrompt(
        text="\n".join(lines),
        next_number=next_number,
        example_ids=tuple(e.id for e in items),
        template_version=f"{BOOTSTRAP_TEMPLATE_VERSION}:{language}"
        + ("+foreign" if foreign_examples else ""),
        language=language,
        numbering=numbering,
        stop_at=stop_at,
        stop_sequences=bootstrap_stop_sequences(numbering, stop_at),
        lead=lead,
    )


# --- Classification check -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationPrompt:
    """A prompt whose continuation is a one-word Yes/No (是/否) answer."""

    text: str
    template_version: str
    language: str
    stop_sequences: tuple[str, ...]


def build_classification_prompt(instruction: str, *, language: str = "en") -> ClassificationPrompt:
    """Few-shot prompt asking whether ``instruction`` has a finite label set."""
    _check_language(language)
    words = CLASSIFICATION_WORDS[language]
    blocks = [words["header"]]
    for example, is_clf in CLASSIFICATION_EXAMPLES:
        answer = words["yes"] if is_clf else words["no"]
        blocks.append(f"{_field(words['task'], example)}\n{_field(words['question'], answer)}")
    blocks.append(f"{_field(words['task'], _one_line(instruction))}\n{words['question']}")
    return ClassificationPrompt(
        text="\n\n".join(blocks),
        template_version=f"{CLASSIFICATION_TEMPLATE_VERSION}:{language}",
        language=language,
        stop_sequences=("\n", words["task"].rstrip(":：")),
    )


# --- Instance generation ------------------------------------------------------------------------


@dataclass(frozen=True)
class InstancePrompt:
    """A prompt whose continuation lists examples (instances) of one task."""

    text: str
    output_first: bool
    template_version: str
    language: str
    stop_sequences: tuple[str, ...]


def _instance_block(
    instruction: str,
    pairs: Sequence[tuple[str, str]],
    words: Mapping[str, str],
    *,
    output_first: bool,
) -> str:
    lines = [_field(words["task"], instruction)]
    for i, (first, second) in enumerate(pairs, start=1):
        lines.append(f"{words['example']} {i}")
        if output_first:
            lines += [_field(words["label"], first), _field(words["input"], second or NO_INPUT)]
        else:
            lines += [_field(words["input"], first or NO_INPUT), _field(words["output"], second)]
    return "\n".join(lines)


def build_instance_prompt(
    instruction: str,
    *,
    is_classification: bool,
    language: str = "en",
    max_instances: int = MAX_INSTANCES,
) -> InstancePrompt:
    """Few-shot prompt for instances: label first for classification tasks, else input first.

    Generating the label first stops the model from writing inputs that all share one label
    (the paper's fix for label imbalance). The text ends on "Example 1" so the model starts
    with the first field.
    """
    _check_language(language)
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    words = INSTANCE_WORDS[language]
    header = words["output_first_header" if is_classification else "input_first_header"]
    shots = OUTPUT_FIRST_EXAMPLES if is_classification else INPUT_FIRST_EXAMPLES
    blocks = [header]
    blocks += [
        _instance_block(task, pairs, words, output_first=is_classification) for task, pairs in shots
    ]
    blocks.append(f"{_field(words['task'], _one_line(instruction))}\n{words['example']} 1")
    version = OUTPUT_FIRST_TEMPLATE_VERSION if is_classification else INPUT_FIRST_TEMPLATE_VERSION
    return InstancePrompt(
        text="\n\n".join(blocks) + "\n",
        output_first=is_classification,
        template_version=f"{version}:{language}",
        language=language,
        stop_sequences=(f"{words['example']} {max_instances + 1}", "\n" + words["task"]),
    )


# --- Strategy alpaca ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlpacaPrompt:
    """A list of ``num_tasks`` tasks: the examples fill the first slots, the model the rest."""

    text: str
    next_number: int
    num_tasks: int
    example_ids: tuple[str, ...]
    template_version: str
    language: str
    stop_sequences: tuple[str, ...]


def build_alpaca_prompt(
    examples: Sequence[ExampleLike],
    *,
    num_tasks: int = ALPACA_NUM_TASKS,
    language: str = "en",
) -> AlpacaPrompt:
    """Ask for a numbered list of complete tasks, opened by the given example tasks.

    As in Alpaca, ``num_tasks`` counts the examples too: with 3 examples and 20 tasks the model
    writes tasks 4 to 20. The text ends on task ``next_number``'s "Instruction:" field.
    """
    _check_language(language)
    items = [as_example(e) for e in examples]
    if num_tasks <= len(items):
        raise ValueError(
            f"num_tasks ({num_tasks}) must be greater than the number of examples ({len(items)})"
        )
    words = ALPACA_WORDS[language]
    rules = "\n".join(f"{i}. {r}" for i, r in enumerate(words["rules"].split("\n"), start=1))
    parts = [
        words["intro"].format(n=num_tasks),
        f"{words['rules_title']}\n{rules}",
        words["list_title"].format(n=num_tasks),
    ]
    missing = [e.id or e.instruction for e in items if not e.output.strip()]
    if missing:
        raise ValueError(f"alpaca examples need an output; missing for: {missing}")
    tasks = [
        f"### {words['task']} {i}\n"
        f"{_field(words['instruction'], _one_line(e.instruction))}\n"
        f"{_field(words['input'], e.input.strip() or NO_INPUT)}\n"
        f"{_field(words['output'], e.output.strip())}"
        for i, e in enumerate(items, start=1)
    ]
    next_number = len(items) + 1
    tasks.append(f"### {words['task']} {next_number}\n{words['instruction']}")
    return AlpacaPrompt(
        text="\n\n".join(parts) + "\n\n" + "\n".join(tasks),
        next_number=next_number,
        num_tasks=num_tasks,
        example_ids=tuple(e.id for e in items),
        template_version=f"{ALPACA_TEMPLATE_VERSION}:{language}",
        language=language,
        stop_sequences=(f"### {words['task']} {num_tasks + 1}",),
    )


# --- Strategies evolve and backtranslate ---------------------------------------------------------

EVOLVE_OPERATIONS: tuple[str, ...] = (
    "add_constraints",
    "deepen",
    "concretize",
    "increase_reasoning",
    "complicate_input",
    "breadth",
)


@dataclass(frozen=True)
class TaskPrompt:
    """A prompt whose answer is one task: the text, where to stop and its template version."""

    text: str
    stop_sequences: tuple[str, ...]
    template_version: str
    language: str


def build_evolve_prompt(
    instruction: str, task_input: str = "", *, operation: str, language: str = "en"
) -> TaskPrompt:
    """Ask for one evolved version of a task; the text ends on the "New task:" label."""
    _check_language(language)
    if operation not in EVOLVE_OPERATIONS:
        raise ValueError(f"unknown evolve operation {operation!r}; one of {EVOLVE_OPERATIONS}")
    words = EVOLVE_WORDS[language]
    intro = (
        words["breadth"] if operation == "breadth" else words["intro"].format(goal=words[operation])
    )
    given = instruction.strip()
    if task_input.strip():
        given += f"\n{words['input']} {task_input.strip()}"
    return TaskPrompt(
        text=f"{intro}\n\n{words['given']}\n{given}\n\n{words['new']}\n",
        stop_sequences=(f"\n{words['given']}", f"\n{words['new']}"),
        template_version=f"{EVOLVE_TEMPLATE_VERSION}:{operation}:{language}",
        language=language,
    )


def build_backtranslate_prompt(passage: str, *, language: str = "en") -> TaskPrompt:
    """Ask for the instruction (and input) a passage answers; the text ends on "Instruction:"."""
    _check_language(language)
    words = BACKTRANSLATE_WORDS[language]
    return TaskPrompt(
        text=f"{words['intro']}\n\n{words['passage']}\n{passage.strip()}\n\n{words['instruction']}",
        stop_sequences=(f"\n{words['passage']}",),
        template_version=f"{BACKTRANSLATE_TEMPLATE_VERSION}:{language}",
        language=language,
    )


def strategy_wording(language: str) -> list[str]:
    """The evolve and backtranslate prompts' own sentences, which no candidate may repeat."""
    words = [*EVOLVE_WORDS.get(language, {}).values(), BACKTRANSLATE_WORDS[language]["intro"]]
    return [w.replace("{goal}", "") for w in words if len(w) > 40]


# --- Chat-only models ---------------------------------------------------------------------------


def to_chat_messages(
    prompt: str, *, language: str = "en", system: str | None = None
) -> list[dict[str, str]]:
    """Wrap a completion-style prompt for a chat-only model (system: continue; user: prompt).

    The parsers tolerate a chat model that repeats the label it was meant to continue from.
    """
    _check_language(language)
    return [
        {"role": "system", "content": CHAT_SYSTEM_MESSAGES[language] if system is None else system},
        {"role": "user", "content": prompt},
    ]
