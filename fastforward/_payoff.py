"""Whether a stage paid for itself, the ``cost_aware`` rule of :class:`~fastforward.FastForward`.

A stage pays when the validation loss it bought beats what training buys with the same compute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch


def stage_payoff(
    stage_gain: float, evaluations: int, cost_ratio: float, training_gain_per_step: float
) -> float:
    """Training steps' worth of validation loss a stage bought, per training step it cost.

    Args:
        stage_gain: ``L_0 - L_after`` of the stage (``>= 0``: a stage never lands above ``L_0``).
        evaluations: Its validation passes, ``L_0`` included.
        cost_ratio: The cost of one validation pass, in training steps.
        training_gain_per_step: The validation loss that training lowered per optimizer step
            since the last measured point (the previous stage's landing, or the start).

    Returns:
        ``stage_gain / (training_gain_per_step * evaluations * cost_ratio)``: above 1 when the
        stage bought more than training would have with its compute. ``inf`` when training gained
        nothing (``<= 0``) and the stage gained something; 0 when the stage gained nothing.
    """
    if not stage_gain > 0:
        return 0.0
    if not training_gain_per_step > 0:
        return math.inf
    # In exact rationals, rounded once: in floats, the product of a tiny rate and the cost can
    # underflow to zero, and a gain divided by a tiny rate can overflow on the way to a
    # quotient that is finite.
    training_would_buy = Fraction(training_gain_per_step) * evaluations * Fraction(cost_ratio)
    try:
        return float(Fraction(stage_gain) / training_would_buy)
    except OverflowError:
        return math.inf


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (the CPU has no queue)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
        if accelerator is not None and hasattr(accelerator, "synchronize"):
            accelerator.synchronize(device)


@dataclass
class TrainingClock:
    """Mean wall time of one training iteration, stages and validation passes left out.

    Training is timed in segments from one synchronisation point to the next, so that on a
    device that runs asynchronously to the host the time is the device's work, not the host's
    kernel launches: a segment starts when a block of validation passes ends (or at the end of
    the first ``step()``) and ends when the next block starts, the device synchronised at both.
    Its optimizer steps are counted from the wrapper's counter, so the segments together cover
    whole iterations (forward, backward, data loading and optimizer step).

    Attributes:
        seconds: Wall time of the finished segments.
        steps: Optimizer steps taken in them.
    """

    seconds: float = 0.0
    steps: int = 0
    _started: tuple[float, int] | None = None  # (time, optimizer steps) of the running segment

    @property
    def running(self) -> bool:
        """Whether a segment is being timed."""
        return self._started is not None

    def start(self, optimizer_steps: int) -> None:
        """Begin a segment now, after ``optimizer_steps`` steps (the device synchronised)."""
        self._started = (time.perf_counter(), optimizer_steps)

    def stop(self, optimizer_steps: int) -> None:
        """End the running segment, if any, after ``optimizer_steps`` steps (synchronised)."""
        if self._started is None:
            return
        started, steps = self._started
        self.seconds += time.perf_counter() - started
        self.steps += optimizer_steps - steps
        self._started = None

    @property
    def seconds_per_step(self) -> float | None:
        """The mean over the finished segments, or None before one with a step has ended."""
        return self.seconds / self.steps if self.steps else None


# Which training pace a stage's payoff is measured against: "last", the interval before it;
# "peak", the fastest interval since the reference. A switch for the benchmarks' comparison
# of the two (issue 22); not an option of the library.
PACE = "peak"

# Whether a stage that did not pay is forgiven when the stage before it paid (the wrapper then
# steps aside only after two unpaid stages in a row, or an unpaid first one). A switch for the
# benchmarks' comparison (issue 22: bench_budget's ``Run.forgive``); not an option of the library.
FORGIVE = False


def forgiven(payoffs: list[float | None]) -> bool:
    """Whether the last stage's failure to pay is forgiven (only with :data:`FORGIVE`).

    ``payoffs``: one per stage, in order, the last below 1. Forgiven when the one before paid.
    """
    return FORGIVE and len(payoffs) >= 2 and payoffs[-2] is not None and payoffs[-2] >= 1


@dataclass
class CostAwareRule:
    """What ``cost_aware`` measures to judge a stage: training's pace, and a pass's cost.

    A stage is judged against the fastest pace training has shown (validation loss per
    optimizer step, from one measured point to the next): a stage that pre-empts training
    leaves the interval after it with less to gain, so the last interval's pace would make the
    next stage look cheap exactly when its gain is least likely to last.

    Attributes:
        cost_ratio: A validation pass's cost in training steps; ``None`` measures it with
            :attr:`clock`.
        reference: The last measured ``(optimizer step, validation loss)``: the previous
            stage's landing; before it, the pass before the first interval (Δ over the last
            step) or the first stage's pass at ``W_n - Δ`` (Δ over the interval, set by the
            wrapper before it judges that stage); ``None`` before that.
        clock: Training's wall time, stages left out (used when ``cost_ratio`` is ``None``).
        peak_pace: The fastest pace measured so far (``0.0`` before the first).
    """

    cost_ratio: float | None
    reference: tuple[int, float] | None = None
    clock: TrainingClock = field(default_factory=TrainingClock)
    peak_pace: float = 0.0

    @property
    def measures_time(self) -> bool:
        """Whether the cost of a pass is measured (no ``cost_ratio`` was given)."""
        return self.cost_ratio is None

    def judge(
        self,
        step: int,
        loss_before: float,
        loss_after: float,
        evaluations: int,
        pass_seconds: float,
        agree: Callable[[float], float] = float,
    ) -> tuple[float | None, float | None]:
        """``(payoff, cost ratio)`` of the stage after ``step``, charged ``evaluations`` passes.

        ``pass_seconds``: the mean wall time of one of its validation passes. The payoff is
        :func:`stage_payoff` at :attr:`peak_pace`, first raised to the pace from
        :attr:`reference` to ``loss_before`` if that is faster (the one mutation); 0 for a
        stage that gained nothing, with or without a reference. The ratio is ``cost_ratio``,
        or the measured cost of a pass in training steps passed through ``agree`` (the mean
        over the ranks of a process group: each rank has timed its own clock, and all must take
        the same decision). Either is None when there is nothing to measure yet: no timed
        training step on some rank (both), or no reference before ``step`` (the payoff of a
        stage that gained).
        """
        ratio = self.cost_ratio
        if ratio is None:
            step_seconds = self.clock.seconds_per_step
            measured = pass_seconds / step_seconds if step_seconds else math.nan
            ratio = agree(measured if measured > 0 else math.nan)  # every rank calls it
            if not 0 < ratio < math.inf:
                return None, None
        pace = None
        if self.reference is not None:
            reference_step, reference_loss = self.reference
            if math.isfinite(reference_loss) and step > reference_step:
                pace = (reference_loss - loss_before) / (step - reference_step)
                if math.isfinite(pace):
                    self.peak_pace = max(self.peak_pace, pace)
        gain = loss_before - loss_after
        if not gain > 0:
            return 0.0, ratio
        if pace is None:
            return None, ratio
        if PACE == "peak":
            pace = self.peak_pace
        return stage_payoff(gain, evaluations, ratio, pace), ratio
