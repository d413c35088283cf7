"""Fast Forward: cheaper low-rank finetuning by line search along the last optimizer step."""

from fastforward._stats import FastForwardStats, StageRecord
from fastforward.validation import validation_closure
from fastforward.wrapper import FastForward

__all__ = ["FastForward", "FastForwardStats", "StageRecord", "validation_closure"]
__version__ = "0.1.0"
