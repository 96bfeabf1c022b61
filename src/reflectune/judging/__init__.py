"""Judging (METHOD.md §7.1): two answer files compared by an LLM judge, both orders.

``rules`` parses reviews and combines orders into win/tie/lose, pure; ``run`` pairs the files, sends
the calls and writes the report and chart.
"""

from reflectune.config import JudgeConfig
from reflectune.judging.run import JudgeReport, ajudge, judge

__all__ = ["JudgeConfig", "JudgeReport", "ajudge", "judge"]
