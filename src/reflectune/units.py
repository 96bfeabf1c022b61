"""Quantities as people read them: one rule for how a duration is shown, wherever it is shown."""

from __future__ import annotations

__all__ = ["duration"]


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
