"""What the wrapper logs: through the ``fastforward`` logger, naming the rank when distributed."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fastforward._config import Config
from fastforward._distributed import _world
from fastforward._stats import FastForwardStats, StageRecord

logger = logging.getLogger("fastforward")

PROGRESS_SECONDS = 10.0
"""A stage that runs this long logs an INFO line, and again after each further interval."""


def log(group: Any, level: int, message: str, *args: object) -> None:
    """Log ``message % args``, prefixed with this process's rank under torch.distributed."""
    if _world(group) > 1:
        message = f"rank {torch.distributed.get_rank(group)}: {message}"
    logger.log(level, message, *args)


@dataclass
class StageProgress:
    """Where the running block of validation passes is, for its progress lines."""

    started: float
    next_report: float  # seconds into the block
    evaluations: int = 0
    seconds: float = 0.0  # the whole block's, once it has ended

    def passed(self, group: Any, step: int, loss: float) -> None:
        """A DEBUG line per pass; an INFO line every ``PROGRESS_SECONDS`` of one block."""
        self.evaluations += 1
        if logger.isEnabledFor(logging.DEBUG):
            log(
                group,
                logging.DEBUG,
                "stage after step %d: validation pass %d: loss %.6g",
                step,
                self.evaluations,
                loss,
            )
        elapsed = time.perf_counter() - self.started
        if elapsed >= self.next_report:
            self.next_report += PROGRESS_SECONDS
            log(
                group,
                logging.INFO,
                "stage after step %d still running: %d validation passes in %.0f s",
                step,
                self.evaluations,
                elapsed,
            )


def log_stage(group: Any, record: StageRecord, min_improvement: float) -> None:
    """INFO: what a stage did, and the best point ``min_improvement`` turned down, if any."""
    rejected = ""
    if record.rejected_tau is not None and record.rejected_loss is not None:
        gain = 1 - record.rejected_loss / record.loss_before if record.loss_before else 0.0
        rejected = (
            f"; best point tau={record.rejected_tau} gained only {gain:.3%} "
            f"< min_improvement {min_improvement:.3%}"
        )
    log(
        group,
        logging.INFO,
        "stage after step %d: tau=%d, val loss %.6g -> %.6g (%d validation passes, %.1f s)%s",
        record.step,
        record.tau,
        record.loss_before,
        record.loss_after,
        record.evaluations,
        record.seconds,
        rejected,
    )


# WARNING, below: the default log level shows it; a user must know that stages stopped.
def log_out_of_patience(group: Any, step: int, failed: int, config: Config) -> None:
    log(
        group,
        logging.WARNING,
        "Fast Forward is off from step %d on: %d stages in a row accepted tau=0 "
        "(patience=%d; none beat the validation loss at W_n by min_improvement=%g); the "
        "wrapper is now the bare optimizer",
        step,
        failed,
        config.patience,
        config.min_improvement,
    )


def log_stepped_aside(group: Any, record: StageRecord) -> None:
    log(
        group,
        logging.WARNING,
        "Fast Forward steps aside from step %d on: its stage bought %.2fx the validation "
        "loss that training buys with the same compute (cost_aware; val loss %.6g -> %.6g "
        "in %d validation passes); the wrapper is now the bare optimizer",
        record.step,
        record.payoff,
        record.loss_before,
        record.loss_after,
        record.evaluations,
    )


def log_no_wrapper_entry(group: Any, entry: str, stats: FastForwardStats, active: bool) -> None:
    """WARNING: a loaded ``state_dict`` without the wrapper's entry left its schedule as it was."""
    log(
        group,
        logging.WARNING,
        "the loaded state_dict has no %r entry (saved from a bare optimizer, or through "
        "torch.distributed.checkpoint?); the wrapper keeps its own schedule (%d optimizer "
        "steps, %d stages, %s); to keep it across a checkpoint, save "
        "ff.wrapper_state_dict() (with DCP: fastforward.dcp.WrapperState(ff)) beside it",
        entry,
        stats.optimizer_steps,
        stats.stages,
        "active" if active else "off",
    )


def log_settings_replaced(group: Any, replaced: Mapping[str, tuple[object, object]]) -> None:
    """WARNING: a loaded checkpoint's settings replaced others the wrapper was built with."""
    log(
        group,
        logging.WARNING,
        "the loaded state_dict replaces settings this FastForward was built with, so that the "
        "run goes on as it was saved: %s; to keep this wrapper's settings (and its own "
        "counters), load the state_dict without its 'fastforward' entry; `enabled` may also "
        "be set after loading",
        ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in replaced.items()),
    )
