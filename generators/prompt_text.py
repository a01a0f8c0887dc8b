"""The words of every prompt template, per language, and the worked examples they show.

Kept apart from `generators.prompts`, which assembles prompts from them, so a template's wording
can be read and reviewed (and a language added) without reading the assembly code. Changing any
text here changes what models see: bump the matching `*_TEMPLATE_VERSION` in prompts.py.
"""

from __future__ import annotations

NO_INPUT = "<noinput>"  # what a prompt shows for a task that takes no input

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

# When a run asks for tasks in a language its examples are not in: a sentence added to the header,
# and the first words of the next item written for the model, so it starts in that language
# (the bundled 135M model otherwise follows the examples' language).
BOOTSTRAP_LANGUAGE_NOTES: dict[str, str] = {
    "en": "Write the new tasks in English.",
    "zh": "新任务请用中文书写。",
}
BOOTSTRAP_LEADS: dict[str, str] = {"en": "", "zh": "请"}

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

CLASSIFICATION_WORDS: dict[str, dict[str, str]] = {
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

INSTANCE_WORDS: dict[str, dict[str, str]] = {
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

ALPACA_WORDS: dict[str, dict[str, str]] = {
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

# --- Strategy evolve (after Evol-Instruct, Xu et al. 2023) ---------------------------------------
# One template per language; each operation fills in what the rewrite must change. `breadth`
# asks for a sibling task instead of a harder version.

EVOLVE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "intro": (
            "You rewrite tasks for training an AI assistant. Rewrite the given task into a new "
            "task that {goal} The new task must make sense on its own, be answerable with text "
            "alone and be written in the same language as the given task. Write only the new "
            "task (with its input, if it needs one); do not answer it."
        ),
        "breadth": (
            "You write tasks for training an AI assistant. Take the given task as inspiration "
            "and write a brand-new task in the same domain that is rarer and about something "
            "else, of similar length and difficulty. It must make sense on its own, be "
            "answerable with text alone and be written in the same language as the given task. "
            "Write only the new task (with its input, if it needs one); do not answer it."
        ),
        "given": "Given task:",
        "input": "Input:",
        "new": "New task:",
        "add_constraints": "adds one more constraint or requirement to it.",
        "deepen": "asks about the same subject in more depth and breadth.",
        "concretize": "replaces its general concepts with more specific ones.",
        "increase_reasoning": (
            "can only be answered by reasoning in several explicit steps, where the given task "
            "needs only a few simple ones."
        ),
        "complicate_input": (
            "works on a harder, more complex input (longer, or structured data such as a "
            "table, a list or code), written out in full in the new task."
        ),
    },
    "zh": {
        "intro": (
            "你负责改写用于训练 AI 助手的任务。请把给出的任务改写成一个新任务，要求：{goal}"
            "新任务必须本身意思完整，只靠文字就能回答，并且与给出的任务使用同一种语言。"
            "只写新任务（需要输入时连同输入一起写），不要回答它。"
        ),
        "breadth": (
            "你负责编写用于训练 AI 助手的任务。请以给出的任务为灵感，在同一领域写一个全新的、"
            "更少见的、内容不同的任务，长度和难度与之相当。新任务必须本身意思完整，只靠文字就能"
            "回答，并且与给出的任务使用同一种语言。只写新任务（需要输入时连同输入一起写），"
            "不要回答它。"
        ),
        "given": "给出的任务：",
        "input": "输入：",
        "new": "新任务：",
        "add_constraints": "在原任务基础上再增加一个限制或要求。",
        "deepen": "就同一主题提出更深入、更广泛的问题。",
        "concretize": "把原任务中笼统的概念换成更具体的概念。",
        "increase_reasoning": "必须经过多个明确的推理步骤才能回答，而原任务只需要简单几步。",
        "complicate_input": (
            "处理一个更难、更复杂的输入（更长，或是表格、列表、代码等结构化数据），"
            "并把这个输入完整写进新任务。"
        ),
    },
}

# --- Strategy backtranslate (instruction back-translation, Li et al. 2023) -----------------------

BACKTRANSLATE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "intro": (
            "Below is a passage. Write the request a user could have made to which this passage "
            "is a good, complete answer: one instruction and, only if the request needs "
            "material to work on, an input. Write them in the same language as the passage. "
            "Do not mention the passage itself."
        ),
        "passage": "Passage:",
        "instruction": "Instruction:",
        "input": "Input:",
    },
    "zh": {
        "intro": (
            "下面是一段文字。请写出用户可能提出的请求，使这段文字正好是对它完整、恰当的回答："
            "写一条指令；只有当请求需要处理的材料时，才另写一个输入。请使用与这段文字相同的语言，"
            "不要提到“这段文字”本身。"
        ),
        "passage": "文字：",
        "instruction": "指令：",
        "input": "输入：",
    },
}

# --- The judge (generators.judge_prompts): a task rated on the paper's four levels -------------
# Changing anything here changes what judges see: bump JUDGE_PROMPT_VERSION or
# PAIRWISE_PROMPT_VERSION in generators/judge_prompts.py.

JUDGE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "header": (
            "You review tasks written to train an AI assistant. Each task has an instruction, "
            "sometimes an input, and the output the assistant should give. Rate the whole task "
            "on four levels:\n"
            "A: valid and satisfying: a clear, sensible instruction, and an output that "
            "answers it correctly and completely.\n"
            "B: acceptable with minor imperfections: the output answers the instruction but "
            "could be better (slightly incomplete, awkward, or loose in format).\n"
            "C: responds to the instruction but with significant errors: the output tries to "
            "answer but is wrong, badly incomplete or misleading.\n"
            "D: irrelevant or invalid: the instruction makes no sense or cannot be done with "
            "text, or the output does not answer it at all.\n"
            'Answer with one line of JSON: {"rating": "A", "B", "C" or "D", "rationale": one '
            "sentence saying why}."
        ),
        "task": "Task",
        "instruction": "Instruction:",
        "input": "Input:",
        "output": "Output:",
        "example": "Example",
        "answer": "Judgement:",
    },
    "zh": {
        "header": (
            "你负责审核用于训练 AI 助手的任务。每个任务包含一条指令、有时还有一个输入，"
            "以及助手应给出的输出。请按四个等级给整个任务评级：\n"
            "A：有效且令人满意：指令清楚合理，输出正确、完整地回答了它。\n"
            "B：可以接受，但有小瑕疵：输出回答了指令，但还可以更好（略有遗漏、表达生硬或格式随意）。\n"
            "C：回应了指令，但有明显错误：输出试图回答，但内容错误、严重不完整或有误导。\n"
            "D：无关或无效：指令没有意义或无法只用文字完成，或者输出根本没有回答它。\n"
            '请只用一行 JSON 回答：{"rating": "A"、"B"、"C" 或 "D", '
            '"rationale": 用一句话说明理由}。'
        ),
        "task": "任务",
        "instruction": "指令：",
        "input": "输入：",
        "output": "输出：",
        "example": "示例",
        "answer": "评审：",
    },
}

# (instruction, [(input, output)], rating, rationale): one worked example per level, in an order
# that is not the scale's, so a judge does not learn to answer by position.
JUDGE_EXAMPLES: dict[str, tuple[tuple[str, tuple[tuple[str, str], ...], str, str], ...]] = {
    "en": (
        (
            "Convert the temperature from Celsius to Fahrenheit.",
            (("25 °C", "77 °F"), ("-10 °C", "14 °F")),
            "A",
            "Both conversions are correct and the instruction is clear.",
        ),
        (
            "Draw a picture of a cat sitting on a windowsill.",
            (("", "Here is the picture."),),
            "D",
            "A picture cannot be produced in text, and the output claims one that is not there.",
        ),
        (
            "Give three tips for saving money on groceries.",
            (("", "Make a shopping list before you go. Buy store brands."),),
            "B",
            "The tips are sensible but only two of the three asked for are given.",
        ),
        (
            "What is the capital of Australia?",
            (("", "The capital of Australia is Sydney."),),
            "C",
            "It answers the question, but Sydney is wrong; the capital is Canberra.",
        ),
    ),
    "zh": (
        (
            "把下面的句子改写成更礼貌的说法。",
            (("把文件给我。", "麻烦您把文件给我，好吗？"),),
            "A",
            "改写后的句子礼貌且意思不变，完全符合指令。",
        ),
        (
            "计算下面两个数的和。",
            (("17 和 25", "17 和 25 的和是 32。"),),
            "C",
            "输出回应了指令，但计算错误，正确答案是 42。",
        ),
        (
            "播放一首周杰伦的歌。",
            (("", "好的，正在播放。"),),
            "D",
            "播放音乐无法用文字完成，输出也没有给出任何有用的内容。",
        ),
        (
            "用一句话介绍长城。",
            (
                (
                    "",
                    "长城是中国古代修建的军事防御工程，全长两万多公里，是世界著名的古迹，每年吸引大量游客。",
                ),
            ),
            "B",
            "内容正确，但写成了稍长的一段，没有严格做到一句话。",
        ),
    ),
}

PAIRWISE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "header": (
            "You compare two answers to the same task written for an AI assistant. Decide "
            "which answer follows the instruction better: correct, complete and helpful, "
            "without needless padding. The order in which the answers are shown says nothing "
            "about their quality, and a longer answer is not better for being longer. If "
            "neither is better, call it a tie.\n"
            'Answer with one line of JSON: {"winner": "1", "2" or "tie", "rationale": one '
            "sentence saying why}."
        ),
        "task": "Task",
        "instruction": "Instruction:",
        "input": "Input:",
        "first": "Answer 1:",
        "second": "Answer 2:",
        "answer": "Verdict:",
    },
    "zh": {
        "header": (
            "你负责比较同一个任务的两个回答。请判断哪个回答更好地完成了指令：正确、完整、有帮助，"
            "没有多余的铺垫。回答出现的先后与质量无关，回答更长也不代表更好。如果两者不相上下，"
            "就判为平局。\n"
            '请只用一行 JSON 回答：{"winner": "1"、"2" 或 "tie", "rationale": 用一句话说明理由}。'
        ),
        "task": "任务",
        "instruction": "指令：",
        "input": "输入：",
        "first": "回答 1：",
        "second": "回答 2：",
        "answer": "裁决：",
    },
}

# (instruction, input, answer 1, answer 2, winner, rationale)
PAIRWISE_EXAMPLES: dict[str, tuple[tuple[str, str, str, str, str, str], ...]] = {
    "en": (
        (
            "Name the largest planet in the solar system.",
            "",
            "Saturn is the largest planet.",
            "Jupiter is the largest planet in the solar system.",
            "2",
            "Answer 2 is correct; Saturn is only the second largest.",
        ),
        (
            "Sort the numbers in ascending order.",
            "9, 2, 7",
            "2, 7, 9",
            "Sorting numbers means arranging them. Here they are: 9, 7, 2",
            "1",
            "Answer 1 sorts correctly; answer 2 sorts in descending order and pads the reply.",
        ),
        (
            "Give a synonym for 'happy'.",
            "",
            "Joyful",
            "Cheerful",
            "tie",
            "Both are correct synonyms given just as briefly.",
        ),
    ),
    "zh": (
        (
            "将下面的英文翻译成中文。",
            "Good morning",
            "早上好",
            "晚上好",
            "1",
            "回答 1 翻译正确，回答 2 意思错了。",
        ),
        (
            "列出三种常见的水果。",
            "",
            "苹果、香蕉",
            "苹果、香蕉、橙子",
            "2",
            "回答 2 按要求给出了三种，回答 1 只有两种。",
        ),
        (
            "用一个词形容秋天的天气。",
            "",
            "凉爽",
            "清爽",
            "tie",
            "两个词都贴切，同样简洁。",
        ),
    ),
}
