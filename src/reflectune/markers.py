"""Marker strings of the reflection format (METHOD.md §2). Facts of the method: never reword them."""

NEW_INSTRUCTION = "[New Instruction]"
NEW_ANSWER = "[New Answer]"
BETTER_ANSWER = "[Better Answer]"
MERGED_INSTRUCTION = "[Merged Instruction]"
END = "[End]"

#: Every section-opening marker the parser knows, for "up to the next known marker".
SECTION_MARKERS = (NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER, MERGED_INSTRUCTION)

#: Headers of the reflection prompts themselves. They never belong in an answer: a model that writes
#: one has begun to replay the prompt, so a forced section ends there.
PROMPT_HEADERS = ("[System]", "[Instruction]", "[The Start of Answer]", "[The End of Answer]",
                  "[The Start of Input]", "[The End of Input]")

# Judge prompt headers (METHOD.md §7.1).
JUDGE_ANSWER_1 = "[The Start of Assistant 1's Answer]"
JUDGE_ANSWER_2 = "[The Start of Assistant 2's Answer]"
