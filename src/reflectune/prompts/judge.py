"""Judge prompt templates: pure strings, kept word for word.

Two protocols. ``score`` is the papers' pairwise review (METHOD.md §7.1): the Vicuna/FastChat
"reviewer" prompt the reference code sends, with the headers ``[Question]``, ``[The Start of
Assistant 1's Answer]`` ... ``[System]`` and a first line of two scores. ``pair-v2`` is MT-Bench's
pairwise verdict prompt (``[[A]]``, ``[[B]]``, ``[[C]]`` for a tie), for judges that compare better
than they score. The wording is part of the method and enters every cache key through the template
version: change a string, bump its version, and only the judge calls are made again.
"""

from __future__ import annotations

from reflectune.prompts.markers import JUDGE_ANSWER_1, JUDGE_ANSWER_2

__all__ = [
    "JUDGE_END_1",
    "JUDGE_END_2",
    "PAIR_V2_SYSTEM",
    "PAIR_V2_TEMPLATE",
    "PAIR_V2_VERSION",
    "SCORE_CRITERIA",
    "SCORE_REMINDER",
    "SCORE_SYSTEM",
    "SCORE_TEMPLATE",
    "SCORE_VERSION",
    "VERDICT_REMINDER",
]

JUDGE_END_1 = "[The End of Assistant 1's Answer]"
JUDGE_END_2 = "[The End of Assistant 2's Answer]"

SCORE_VERSION = "judge-score@1"
SCORE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
SCORE_CRITERIA = (
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
SCORE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    f"{JUDGE_ANSWER_1}\n{{answer_1}}\n\n{JUDGE_END_1}\n\n"
    f"{JUDGE_ANSWER_2}\n{{answer_2}}\n\n{JUDGE_END_2}\n\n"
    "[System]\n{criteria}\n\n"
)
#: Sent as a follow-up message when a review had no score line (``--retry-unparsed``).
SCORE_REMINDER = (
    "Reminder: your review must start with a single line containing only the two scores, for "
    "Assistant 1 and Assistant 2, separated by a space (for example: 8 6). Output that line first, "
    "then your explanation."
)

PAIR_V2_VERSION = "judge-pair-v2@1"
PAIR_V2_SYSTEM = (
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
PAIR_V2_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
VERDICT_REMINDER = (
    'Reminder: end your evaluation with your final verdict in exactly this format: "[[A]]" if assistant '
    'A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
