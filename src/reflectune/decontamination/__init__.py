"""Decontamination (issue 20): drop the training rows that are test prompts, before training.

``rules`` is lm-evaluation-harness's word 13-gram overlap (and the short-prompt rule), pure;
``run`` reads the test prompts and the dataset, writes the kept rows and the rejects.
"""

from reflectune.config import DecontaminateConfig
from reflectune.decontamination.rules import Match, NgramIndex, TestPrompt, ngrams, normalize, words
from reflectune.decontamination.run import DecontaminateSummary, against_prompts, decontaminate

__all__ = ["DecontaminateConfig", "DecontaminateSummary", "Match", "NgramIndex", "TestPrompt",
           "against_prompts", "decontaminate", "ngrams", "normalize", "words"]
