"""Fast Forward: cheaper low-rank finetuning by line search along the last optimizer step."""

from fastforward._stats import FastForwardStats, StageRecord
from fastforward.functional import SEARCH_STRATEGIES, StageResult, fast_forward_stage
from fastforward.validation import validation_closure
from fastforward.wrapper import FastForward

__all__ = [
    "SEARCH_STRATEGIES",
    "FastForward",
    "FastForwardStats",
    "StageRecord",
    "StageResult",
    "fast_forward_stage",
    "validation_closure",
]
__version__ = "0.2.2"
