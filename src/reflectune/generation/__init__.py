"""Generation: a model answers the papers' test sets (or any prompts), resumably, in AlpacaEval's schema."""

from reflectune.config import GenerateConfig
from reflectune.generation.run import GenerateSummary, agenerate, generate

__all__ = ["GenerateConfig", "GenerateSummary", "agenerate", "generate"]
