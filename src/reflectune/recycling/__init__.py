"""Recycling (METHOD.md §4): the oracle critiques and rewrites every pair into ori, Q, A and QA.

``rules`` holds the pure decisions (which variant a sample keeps, the output columns), ``reflector``
the per-sample chain of oracle calls, ``run`` the stage's I/O around them.
"""

from reflectune.config import RecycleConfig
from reflectune.recycling.run import Estimate, RecycleSummary, arecycle, estimate, recycle

__all__ = ["Estimate", "RecycleConfig", "RecycleSummary", "arecycle", "estimate", "recycle"]
