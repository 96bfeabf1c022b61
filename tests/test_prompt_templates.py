"""Every prompt is a template file: judge, student and guess prompts render byte for byte as before.

The ``OLD_*`` strings below are literal copies of the Python strings these prompts used to be (the
judge's in ``prompts/judge.py``, the students' in ``prompts/student.py``, the r-IFD guess prompt in
``scoring/batching.py``), rendered the way the code rendered them (``str.format``, f-strings). Cache
keys hash the rendered text, so any difference here would silently re-run judge and scoring calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reflectune.errors import ConfigError
from reflectune.judging.rules import judge_request, template_version
from reflectune.prompts.render import TEMPLATE_NAMES, load_template, render, render_text
from reflectune.prompts.student import STUDENT_TEMPLATES, response_separator, student_prompt
from reflectune.scoring.batching import Tokenized, guess_instruction_prompt
from reflectune.types import Message

# -- literal copies of the old strings --------------------------------------------------------------

OLD_SCORE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
OLD_SCORE_CRITERIA = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better "
    "overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 "
    "and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide "
    "a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the "
    "order in which the responses were presented does not affect your judgment."
)
OLD_SCORE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{criteria}\n\n"
)
OLD_SCORE_REMINDER = (
    "Reminder: your review must start with a single line containing only the two scores, for "
    "Assistant 1 and Assistant 2, separated by a space (for example: 8 6). Output that line first, "
    "then your explanation."
)
OLD_PAIR_V2_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider "
    "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of "
    "their responses. Begin your evaluation by comparing the two responses and provide a short "
    "explanation. Avoid any position biases and ensure that the order in which the responses were "
    "presented does not influence your decision. Do not allow the length of the responses to influence "
    "your evaluation. Do not favor certain names of the assistants. Be as objective as possible. After "
    "providing your explanation, output your final verdict by strictly following this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
OLD_PAIR_V2_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
OLD_VERDICT_REMINDER = (
    'Reminder: end your evaluation with your final verdict in exactly this format: "[[A]]" if assistant '
    'A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)

OLD_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
OLD_STUDENT = {
    "vicuna": (OLD_VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:",
               OLD_VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:"),
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    ),
    "wiz": ("{instruction}\n\n### Response:", "{instruction}\n{input}\n\n### Response:"),
}
OLD_GUESS_HEADER = ("Below is the response to an instruction, please guess the corresponding instruction "
                    "for the given response.")
OLD_GUESS_FOOTER = "Generate the instruction for the above response."


def old_judge(question: str, first: str, second: str, mode: str, reminder: bool) -> tuple[Message, ...]:
    if mode == "pair-v2":
        system, note = OLD_PAIR_V2_SYSTEM, OLD_VERDICT_REMINDER
        user = OLD_PAIR_V2_TEMPLATE.format(question=question, answer_a=first, answer_b=second)
    else:
        system, note = OLD_SCORE_SYSTEM, OLD_SCORE_REMINDER
        user = OLD_SCORE_TEMPLATE.format(question=question, answer_1=first, answer_2=second,
                                         criteria=OLD_SCORE_CRITERIA)
    messages = [Message("system", system), Message("user", user)]
    if reminder:
        messages.append(Message("user", note))
    return tuple(messages)


def old_student(template: str, instruction: str, input: str = "") -> str:
    plain, with_input = OLD_STUDENT[template]
    if input:
        return with_input.format(instruction=instruction, input=input)
    return plain.format(instruction=instruction)


def old_chat_content(instruction: str, input: str = "") -> str:
    return f"{instruction}\n\n{input}" if input else instruction


def old_guess(response: str) -> str:
    return f"{OLD_GUESS_HEADER}\n{response}\n{OLD_GUESS_FOOTER}"


#: user text that must come out verbatim: braces, Jinja syntax, edge whitespace, unicode, backslashes.
TRICKY = [
    "Name a colour.",
    "",
    " ",
    "{x} and {{ y }} and {0} and {}",
    "{% raw %}a{% endraw %} {# not a comment #} {% if x %}b{% endif %} {{ undefined_name }}",
    "{%- set z = 1 -%}{{- z -}}",
    "  leading and trailing spaces  ",
    "\n\nnewlines around\n\n",
    "windows\r\nline\rends\tand tabs\x0bvt",
    "unicode: é – 日本語 \u2028 \U0001f600",
    "back\\slash \\n \\{ %s %(name)s $x ${y}",
    "[The End of Assistant 1's Answer] [[A]] ### Response:",
]
PAIRS = [(a, b) for a in TRICKY for b in (TRICKY[0], TRICKY[3], TRICKY[7], "")]


# -- byte identity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["score", "pair-v2"])
@pytest.mark.parametrize("reminder", [False, True])
def test_judge_prompts_are_byte_identical_in_both_orders(mode: str, reminder: bool) -> None:
    for question in (TRICKY[0], TRICKY[4], TRICKY[7]):
        for a, b in PAIRS:
            for first, second in ((a, b), (b, a)):
                request = judge_request(question, first, second, mode=mode,  # type: ignore[arg-type]
                                        reminder=reminder)
                assert request.messages == old_judge(question, first, second, mode, reminder)


def test_judge_prompts_byte_identical_on_a_literal_example() -> None:
    score = judge_request("What is 2+2?", "4", "{five}\n")
    assert score.messages[1].content == (
        "[Question]\nWhat is 2+2?\n\n[The Start of Assistant 1's Answer]\n4\n\n"
        "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{five}\n\n\n"
        "[The End of Assistant 2's Answer]\n\n[System]\n" + OLD_SCORE_CRITERIA + "\n\n")
    pair = judge_request("Q", "x", "y", mode="pair-v2", reminder=True)
    assert [m.role for m in pair.messages] == ["system", "user", "user"]
    assert pair.messages[1].content == (
        "[User Question]\nQ\n\n[The Start of Assistant A's Answer]\nx\n[The End of Assistant A's Answer]"
        "\n\n[The Start of Assistant B's Answer]\ny\n[The End of Assistant B's Answer]")


@pytest.mark.parametrize("template", ["vicuna", "alpaca", "wiz"])
def test_student_templates_are_byte_identical(template: str) -> None:
    for instruction in TRICKY:
        for input in TRICKY:
            assert student_prompt(template, instruction, input) == old_student(template, instruction, input)
        assert student_prompt(template, instruction) == old_student(template, instruction)


def test_student_templates_on_literal_examples() -> None:
    assert student_prompt("wiz", "Name a colour.") == "Name a colour.\n\n### Response:"
    assert student_prompt("wiz", "Sum", "1 2") == "Sum\n1 2\n\n### Response:"
    assert student_prompt("alpaca", "Do").endswith("### Instruction:\nDo\n\n### Response:\n")
    assert student_prompt("alpaca", "Do", "it").endswith("### Input:\nit\n\n### Response:\n")
    assert student_prompt("vicuna", "Hi").endswith("questions. USER: Hi ASSISTANT:")
    assert student_prompt("vicuna", "Hi", "x").endswith("questions. USER: Hi\nInput:\nx ASSISTANT:")


class FakeChatTokenizer:
    """Records the messages the ``chat`` template is given, renders them in a fixed way."""

    chat_template = "fake"

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> str:
        assert tokenize is False and add_generation_prompt is True
        self.calls.append(messages)
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_chat_template_sends_the_same_single_user_turn() -> None:
    tokenizer = FakeChatTokenizer()
    for instruction in TRICKY:
        for input in ("", *TRICKY):
            tokenizer.calls.clear()
            prompt = student_prompt("chat", instruction, input, tokenizer=tokenizer)
            content = old_chat_content(instruction, input)
            assert tokenizer.calls == [[{"role": "user", "content": content}]]
            assert prompt == f"<user>{content}</user><assistant>"
    with pytest.raises(ValueError, match="chat template"):
        student_prompt("chat", "x")


def test_guess_prompt_is_byte_identical() -> None:
    for response in TRICKY:
        assert guess_instruction_prompt(response) == old_guess(response)
    assert guess_instruction_prompt("{y}") == (
        "Below is the response to an instruction, please guess the corresponding instruction for the "
        "given response.\n{y}\nGenerate the instruction for the above response.")


def test_separators_and_names_unchanged() -> None:
    assert STUDENT_TEMPLATES == ("vicuna", "alpaca", "wiz", "chat")
    assert response_separator("vicuna") == " "
    assert [response_separator(t) for t in ("alpaca", "wiz", "chat")] == ["", "", ""]
    with pytest.raises(ValueError, match="did you mean 'vicuna'"):
        student_prompt("vicuna2", "x")
    with pytest.raises(ValueError, match="unknown student template"):
        response_separator("nope")


# -- ids and versions -------------------------------------------------------------------------------

def test_judge_version_ids_are_unchanged() -> None:
    assert template_version("score") == "judge-score@1"
    assert template_version("pair-v2") == "judge-pair-v2@1"
    assert load_template("judge-score").id == "judge-score@1"
    assert load_template("judge-pair-v2").id == "judge-pair-v2@1"


def test_every_packaged_template_loads_with_version_1() -> None:
    ids = {name: load_template(name).id for name in TEMPLATE_NAMES}
    assert ids == {name: f"{name}@1" for name in TEMPLATE_NAMES}
    for name in ("judge-score-reminder", "judge-pair-v2-reminder", "guess_instruction",
                 *(f"student_{t}" for t in STUDENT_TEMPLATES)):
        assert name in TEMPLATE_NAMES


def test_text_and_chat_sections_are_kept_apart() -> None:
    assert load_template("student_vicuna").text is not None
    assert load_template("student_vicuna").user is None
    assert load_template("student_chat").text is None
    with pytest.raises(ConfigError, match=r"student_vicuna\.txt"):
        render(load_template("student_vicuna"), instruction="x", input="")
    with pytest.raises(ConfigError, match=r"judge-score\.txt"):
        render_text(load_template("judge-score"), question="q", answer_1="a", answer_2="b")


# -- overrides --------------------------------------------------------------------------------------

def test_judge_override_changes_text_and_version(tmp_path: Path) -> None:
    (tmp_path / "judge-score.txt").write_text(
        "version: 2\n--- system\nBe fair.\n--- user\nQ={{ question }} 1={{ answer_1 }} 2={{ answer_2 }}\n",
        encoding="utf-8")
    (tmp_path / "judge-score-reminder.txt").write_text("version: 7\n--- user\nScores first!\n",
                                                       encoding="utf-8")
    request = judge_request("q", "{a}", "b", reminder=True, prompts_dir=str(tmp_path))
    assert request.messages == (Message("system", "Be fair."), Message("user", "Q=q 1={a} 2=b"),
                                Message("user", "Scores first!"))
    assert template_version("score", str(tmp_path)) == "judge-score@2"
    # pair-v2 is not overridden in that folder: the packaged one is used
    assert template_version("pair-v2", str(tmp_path)) == "judge-pair-v2@1"
    assert judge_request("q", "a", "b", mode="pair-v2", prompts_dir=str(tmp_path)).messages == \
        old_judge("q", "a", "b", "pair-v2", False)


def test_student_and_guess_overrides(tmp_path: Path) -> None:
    (tmp_path / "student_wiz.txt").write_text(
        "version: 3\n--- text\n<<{{ instruction }}{% if input %}|{{ input }}{% endif %}>>\n",
        encoding="utf-8")
    (tmp_path / "guess_instruction.txt").write_text("version: 2\n--- text\nguess: {{ response }}\n",
                                                    encoding="utf-8")
    (tmp_path / "student_chat.txt").write_text(
        "version: 2\n--- system\nsys\n--- user\n{{ instruction }}/{{ input }}\n", encoding="utf-8")
    folder = str(tmp_path)
    assert student_prompt("wiz", "i", prompts_dir=folder) == "<<i>>"
    assert student_prompt("wiz", "i", "{{ x }}", prompts_dir=folder) == "<<i|{{ x }}>>"
    assert student_prompt("vicuna", "i", prompts_dir=folder) == old_student("vicuna", "i")
    assert guess_instruction_prompt("{r}", folder) == "guess: {r}"
    assert load_template("student_wiz", folder).id == "student_wiz@3"
    tokenizer = FakeChatTokenizer()
    student_prompt("chat", "i", "j", tokenizer=tokenizer, prompts_dir=folder)
    assert tokenizer.calls == [[{"role": "system", "content": "sys"}, {"role": "user", "content": "i/j"}]]


class WordTokenizer:
    """Just enough of a tokenizer for ``Tokenized``: one id per character, no BOS."""

    bos_token_id = None

    def __call__(self, texts: Any, add_special_tokens: bool = True) -> Any:
        class Out:
            input_ids = [[ord(c) for c in t] for t in texts] if isinstance(texts, list) else \
                [ord(c) for c in texts]
        return Out()


def test_tokenized_uses_the_overridden_templates(tmp_path: Path) -> None:
    (tmp_path / "student_wiz.txt").write_text("version: 2\n--- text\nI: {{ instruction }}\n",
                                              encoding="utf-8")
    (tmp_path / "guess_instruction.txt").write_text("version: 2\n--- text\nG: {{ response }}\n",
                                                    encoding="utf-8")
    tokenized = Tokenized(WordTokenizer(), template="wiz", max_length=512, prompts_dir=str(tmp_path))
    assert tokenized.prompt("x") == "I: x"
    assert "G: out" in tokenized.texts_of("x", "", "out")[2]
    packaged = Tokenized(WordTokenizer(), template="wiz", max_length=512)
    assert packaged.texts_of("x", "", "out")[2] == old_student("wiz", old_guess("out"))


@pytest.mark.parametrize(("content", "match"), [
    ("--- text\nno version\n", "must start with 'version: N'"),
    ("version: 2\n--- user\nchat sections in a text template\n", "needs a single '--- text' section"),
    ("version: 2\n--- text\n{% if input %}unclosed\n", "line"),
    ("version: 2\n--- text\n{{ nope }}\n", "'nope' is undefined"),
])
def test_a_bad_student_override_names_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "student_alpaca.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as info:
        student_prompt("alpaca", "x", prompts_dir=str(tmp_path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("name", "content"), [
    ("judge-pair-v2.txt", "version: 2\n--- text\ntext where chat messages are needed\n"),
    ("judge-pair-v2.txt", "version: 2\n--- system\nno user section\n"),
    ("judge-pair-v2.txt", "version: 2\n--- user\n{{ answer_1 }}\n"),
    ("judge-pair-v2-reminder.txt", "version: 2\n--- user\n{% endif %}\n"),
    ("guess_instruction.txt", "version: 2\n--- text\n{{ response }}\n--- user\nboth kinds\n"),
])
def test_a_bad_judge_or_guess_override_names_the_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        if name.startswith("guess"):
            guess_instruction_prompt("r", str(tmp_path))
        else:
            judge_request("q", "a", "b", mode="pair-v2", reminder=True, prompts_dir=str(tmp_path))
    assert str(path) in str(info.value)


def test_a_missing_prompts_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        student_prompt("wiz", "x", prompts_dir=str(tmp_path / "missing"))
