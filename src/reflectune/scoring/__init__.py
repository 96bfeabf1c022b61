"""Student scoring for Selective Reflection-Tuning: IFD and r-IFD per candidate (METHOD.md §5.1).

``score()`` runs a student over a recycle run folder (or a plain dataset) and writes ``scores.jsonl``;
``plan_score()`` is its dry run (the same checks, the real work counted, a measured time estimate);
``rules`` is the arithmetic of IFD and r-IFD; ``IFDScorer`` is the engine underneath, usable on its
own. torch is imported only when a model runs, so importing this package is cheap.
"""

from reflectune.config import ScoreConfig
from reflectune.scoring.plan import ScorePlan, plan_score
from reflectune.scoring.rules import CandidateScores
from reflectune.scoring.run import ScoreProgress, ScoreSummary, score
from reflectune.scoring.scorer import IFDScorer

__all__ = ["CandidateScores", "IFDScorer", "ScoreConfig", "ScorePlan", "ScoreProgress", "ScoreSummary",
           "plan_score", "score"]
