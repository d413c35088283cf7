"""A Fast Forward stage and its search strategies as plain functions, for research code.

:class:`~fastforward.FastForward` runs exactly :func:`fast_forward_stage` after its scheduled
steps; here it works on any list of tensors with any loss callable. ``search=`` takes the name of
a built-in strategy or any :class:`SearchStrategy`: a function that evaluates points on a
:class:`Ray` and returns, after which the stage lands on the best point evaluated.
"""

from fastforward._search import (
    SEARCH_STRATEGIES,
    SearchStrategy,
    doubling_search,
    linear_search,
    parabolic_search,
    warm_start_search,
)
from fastforward._stage import Ray, StageResult, fast_forward_stage

__all__ = [
    "SEARCH_STRATEGIES",
    "Ray",
    "SearchStrategy",
    "StageResult",
    "doubling_search",
    "fast_forward_stage",
    "linear_search",
    "parabolic_search",
    "warm_start_search",
]
