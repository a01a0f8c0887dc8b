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

Language = Literal["en", "zh"]
LANGUAGES: tuple[str, ...] = ("en", "zh")

# Bump a version whenever its wording changes: stored tasks point at the version that made them.
BOOTSTRAP_TEMPLATE_VERSION = "bootstrap-v1"
CLASSIFICATION_TEMPLATE_VERSION = "classify-v1"
INPUT_FIRST_TEMPLATE_VERSION = "instances-input-first-v1"
OUTPUT_FIRST_TEMPLATE_VERSION = "instances-output-first-v1"
ALPACA_TEMPLATE_VERSION = "alpaca-v1"

# Paper defaults (Self-Instruct §2.2 and its released scripts).
BOOTSTRAP_PROMPT_EXAMPLES = 8  # instructions shown in one bootstrap prompt
BOOTSTRAP_MACHINE_EXAMPLES = 2  # at most this many of them machine-generated
BOOTSTRAP_STOP_AT = 16  # the model stops before writing item 16
PROMPTS_PER_BATCH = 5
MAX_INSTANCES = 5  # instances asked for (and kept) per task
DEFAULT_NUMBERING = "{n}."
ALPACA_NUM_TASKS = 20  # length of the numbered list, examples included
ALPACA_NUM_EXAMPLES = 3
NO_INPUT = "<noinput>"  # what a prompt shows for a task that takes no input


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


@dataclass(frozen=True)
class PromptExample:
    """One task shown inside a prompt; ``id`` goes into the lineage of what it helps generate."""

    id: str
    instruction: str
    input: str = ""
    output: str = ""


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
    chosen = rng.sample(list(machine), min(n_machine, len(machine)))
    chosen += rng.sample(list(seeds), min(n_total - len(chosen), len(seeds)))
    rng.shuffle(chosen)
    return chosen


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

BOOTSTRAP_HEADERS: dict[str, str] = {
    "en": (
        "Below is a numbered list of varied tasks that people ask an AI assistant to carry out. "
        "Each line is one self-contained instruction. Extend the list with new tasks that are "
        "different from every task already on it."
    ),
    "zh": (
        "下面是一份编号清单，列出了人们请 AI 助手完成的各种任务，每行是一条完整、独立的指令。"
        "请接着往下写，补充与清单中已有任务都不相同的新任务。"
    ),
}


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
) -> BootstrapPrompt:
    """Number the example instructions and end on the next bare label for the model to fill.

    Examples are shown in the order given: the caller shuffles (``sample_prompt_examples``).
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
    lines += [
        f"{format_number(numbering, i)} {_one_line(e.instruction)}"
        for i, e in enumerate(items, start=1)
    ]
    lines.append(format_number(numbering, next_number))
    return BootstrapPrompt(
        text="\n".join(lines),
        next_number=next_number,
        example_ids=tuple(e.id for e in items),
        template_version=f"{BOOTSTRAP_TEMPLATE_VERSION}:{language}",
        language=language,
        numbering=numbering,
        stop_at=stop_at,
        stop_sequences=bootstrap_stop_sequences(numbering, stop_at),
    )


# --- Classification check -----------------------------------------------------------------------

# (instruction, is_classification): mixed answers and languages, including near misses
# (open-ended questions that look like labelling, labelling tasks phrased as questions).
CLASSIFICATION_EXAMPLES: tuple[tuple[str, bool], ...] = (
    ("Tell whether the email below is spam or not spam.", True),
    ("Write a short bedtime story about a fox who is afraid of the dark.", False),
    ("Given a news headline, assign it to one of: sports, politics, science, entertainment.", True),
    ("Explain why the sky looks orange at sunset.", False),
    ("判断下面这条商品评论是好评还是差评。", True),
    ("请为一家新开的咖啡店写一句宣传口号。", False),
    ("Does the following sentence contain a grammatical error? Answer yes or no.", True),
    ("Summarize the paragraph in one sentence.", False),
    ("Rate the difficulty of the math problem as easy, medium, or hard.", True),
    ("列出去海边度假需要准备的五样东西。", False),
    ("Which of the two statements is more likely to be true? Answer A or B.", True),
    ("Translate the sentence into French.", False),
)

_CLASSIFICATION_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "header": (
            "Decide whether each task is a classification task, that is, whether every correct "
            "answer comes from a small, fixed set of labels (such as yes/no, positive/negative, "
            "or one of a few named categories). Answer Yes or No."
        ),
        "task": "Task:",
        "question": "Fixed set of labels?",
        "yes": "Yes",
        "no": "No",
    },
    "zh": {
        "header": (
            "判断下面每个任务是不是分类任务：也就是说，它的正确答案是否总是取自一小组固定的标签"
            "（例如 是/否、正面/负面，或几个指定类别之一）。请回答“是”或“否”。"
        ),
        "task": "任务：",
        "question": "标签是否固定有限：",
        "yes": "是",
        "no": "否",
    },
}


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
    words = _CLASSIFICATION_WORDS[language]
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

_INSTANCE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "input_first_header": (
            "For each task below, write a few examples. An example gives an input and then the "
            "output that correctly completes the task for that input. When a task needs no "
            f"input, write {NO_INPUT} as the input and give the output directly."
        ),
        "output_first_header": (
            "Each task below sorts its inputs into a fixed set of class labels. For each task, "
            "first choose a class label, then write an input that truly belongs to that label. "
            "Spread the examples over different labels."
        ),
        "task": "Task:",
        "example": "Example",
        "input": "Input:",
        "output": "Output:",
        "label": "Class label:",
    },
    "zh": {
        "input_first_header": (
            "请为下面每个任务写几个示例。每个示例先给出输入，再给出针对该输入正确完成任务的输出。"
            f"如果任务不需要输入，输入处写 {NO_INPUT}，然后直接给出输出。"
        ),
        "output_first_header": (
            "下面每个任务都要把输入归入一组固定的类别标签。对每个任务，先选一个类别标签，"
            "再写一个确实属于该标签的输入。示例要尽量覆盖不同的标签。"
        ),
        "task": "任务：",
        "example": "示例",
        "input": "输入：",
        "output": "输出：",
        "label": "类别标签：",
    },
}

# (instruction, [(input, output), ...]); an empty input is shown as NO_INPUT.
INPUT_FIRST_EXAMPLES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Convert the temperature from Celsius to Fahrenheit.",
        (("25 °C", "77 °F"), ("-10 °C", "14 °F")),
    ),
    (
        "Suggest a name for a small bakery that specializes in sourdough bread.",
        (("", "Rise & Crust"),),
    ),
    (
        "Rewrite the sentence in the passive voice.",
        (
            (
                "The committee approved the new budget.",
                "The new budget was approved by the committee.",
            ),
            (
                "Maria painted the fence last weekend.",
                "The fence was painted by Maria last weekend.",
            ),
        ),
    ),
    (
        "把下面的句子翻译成英文。",
        (("今天的会议推迟到下午三点。", "Today's meeting has been postponed to 3 p.m."),),
    ),
)

# (instruction, [(class label, input), ...])
OUTPUT_FIRST_EXAMPLES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Decide whether the restaurant review is positive or negative.",
        (
            ("Positive", "The ramen broth was rich and the staff remembered our names."),
            ("Negative", "We waited forty minutes and the soup arrived cold."),
        ),
    ),
    (
        "Tell whether the number is prime. Answer Yes or No.",
        (("Yes", "29"), ("No", "51")),
    ),
    (
        "Identify the language the code snippet is written in: Python, JavaScript, or SQL.",
        (
            ("SQL", "SELECT name FROM users WHERE age > 30;"),
            ("Python", "print(sum(range(10)))"),
            ("JavaScript", "const total = prices.reduce((a, b) => a + b, 0);"),
        ),
    ),
    (
        "判断这句话表达的情绪是高兴、生气还是难过。",
        (
            ("高兴", "终于收到录取通知书了！"),
            ("生气", "快递又被放错地方了，这已经是第三次了。"),
            ("难过", "陪伴我十年的猫昨天走了。"),
        ),
    ),
)


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
    words = _INSTANCE_WORDS[language]
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

_ALPACA_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "intro": (
            "You are writing a list of {n} varied tasks for training an AI assistant. Each task "
            "has an instruction, an optional input and the output a good assistant would give."
        ),
        "rules_title": "Rules:",
        "rules": (
            "Start instructions with different verbs; do not reuse the same opening twice.\n"
            "Vary the phrasing: mix commands and questions.\n"
            "Cover many kinds of work: brainstorming, rewriting, classifying, open questions, "
            "reasoning, coding, extracting information and more.\n"
            "Every task must be doable with text alone: nothing that needs images, files, audio, "
            "web browsing or actions in the physical world.\n"
            "Keep each instruction to one or two sentences.\n"
            "When a task needs an input, give a concrete, realistic one of at most 100 words, "
            "never a placeholder. When it needs none, write <noinput>.\n"
            "Make the output a correct, complete answer of at most 100 words.\n"
            "Write everything in English."
        ),
        "list_title": "List of {n} tasks:",
        "task": "Task",
        "instruction": "Instruction:",
        "input": "Input:",
        "output": "Output:",
    },
    "zh": {
        "intro": (
            "请为训练 AI 助手写一份包含 {n} 个不同任务的清单。"
            "每个任务包括一条指令、一个可选的输入，以及一个好助手应当给出的输出。"
        ),
        "rules_title": "要求：",
        "rules": (
            "指令的开头动词要各不相同，不要重复同样的开头。\n"
            "句式要有变化：命令句和疑问句都要有。\n"
            "任务类型要多样：头脑风暴、改写、分类、开放式问答、推理、编程、信息抽取等。\n"
            "每个任务都必须只靠文字就能完成：不能涉及图片、文件、音频、上网或现实中的动作。\n"
            "每条指令控制在一到两句话。\n"
            "需要输入时，给出具体、真实的输入，不超过 100 字，不要用占位符；不需要输入时写 "
            "<noinput>。\n"
            "输出必须正确、完整，不超过 100 字。\n"
            "全部用中文书写。"
        ),
        "list_title": "{n} 个任务的清单：",
        "task": "任务",
        "instruction": "指令：",
        "input": "输入：",
        "output": "输出：",
    },
}


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
    words = _ALPACA_WORDS[language]
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


# --- Chat-only models ---------------------------------------------------------------------------

CHAT_SYSTEM_MESSAGES: dict[str, str] = {
    "en": (
        "The user message is an unfinished document. Continue it from exactly where it stops, "
        "keeping its format and numbering. Reply with the continuation only: no greeting, no "
        "explanation, and do not repeat the text you were given."
    ),
    "zh": (
        "用户消息是一份没写完的文档。请从它停下的地方直接接着写，保持原有的格式和编号。"
        "只回复续写的内容：不要打招呼，不要解释，也不要重复已给出的文字。"
    ),
}


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
