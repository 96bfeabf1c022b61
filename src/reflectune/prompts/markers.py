"""Marker strings of the reflection format (METHOD.md §2). Facts of the method: never reword them."""

NEW_INSTRUCTION = "[New Instruction]"
NEW_ANSWER = "[New Answer]"
BETTER_ANSWER = "[Better Answer]"
MERGED_INSTRUCTION = "[Merged Instruction]"
END = "[End]"

#: Every section-opening marker the parser knows, for "up to the next known marker".
SECTION_MARKERS = (NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER, MERGED_INSTRUCTION)

# Judge prompt headers (METHOD.md §7.1).
JUDGE_ANSWER_1 = "[The Start of Assistant 1's Answer]"
JUDGE_ANSWER_2 = "[The Start of Assistant 2's Answer]"
