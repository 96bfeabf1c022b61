"""Selection (METHOD.md §5.2): each sample keeps the version its student finds useful, by IFD and r-IFD.

``rules`` is the selection rule and the top-k cut, pure; ``run`` reads scores and writes the dataset.
"""

from reflectune.config import SelectConfig
from reflectune.selection.rules import (
    Choice,
    EmptySelection,
    TopK,
    choose_variant,
    parse_top_k,
    select_top_k,
)
from reflectune.selection.run import SelectSummary, select

__all__ = ["Choice", "EmptySelection", "SelectConfig", "SelectSummary", "TopK", "choose_variant",
           "parse_top_k", "select", "select_top_k"]
