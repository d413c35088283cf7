"""Whether a stage paid for itself, the ``cost_aware`` rule of :class:`~fastforward.FastForward`.

A stage pays when the validation loss it bought beats what training buys with the same compute.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction


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


@dataclass
class StepClock:
    """Mean wall time of one training iteration (everything between two ``step()`` calls).

    The time a stage takes inside ``step()`` is left out, so that what remains is the user's
    forward, backward, data loading and optimizer step.
    """

    seconds: float = 0.0
    steps: int = 0
    _last_call: float | None = None
    _excluded: float = 0.0

    def tick(self) -> None:
        """Called at the start of every ``step()``."""
        now = time.perf_counter()
        if self._last_call is not None:
            self.seconds += now - self._last_call - self._excluded
            self.steps += 1
        self._last_call, self._excluded = now, 0.0

    def exclude(self, seconds: float) -> None:
        """Leave out ``seconds`` (a stage's, or a validation pass's) from the current step."""
        self._excluded += seconds

    @property
    def seconds_per_step(self) -> float | None:
        """The mean so far, or None before two ``step()`` calls."""
        return self.seconds / self.steps if self.steps else None


@dataclass
class CostAwareRule:
    """What ``cost_aware`` measures to judge a stage: training's pace, and a pass's cost.

    Attributes:
        cost_ratio: A validation pass's cost in training steps; ``None`` measures it with
            :attr:`clock`.
        reference: The last measured ``(optimizer step, validation loss)``: the previous
            stage's landing, or the pass before the first stage; ``None`` before that.
        clock: The training step's wall time, stages left out.
    """

    cost_ratio: float | None
    reference: tuple[int, float] | None = None
    clock: StepClock = field(default_factory=StepClock)

    def payoff(
        self, step: int, loss_before: float, loss_after: float, evaluations: int, seconds: float
    ) -> float | None:
        """:func:`stage_payoff` of the stage after ``step`` that took ``seconds``.

        None when there is nothing to measure against yet (no finite reference before
        ``step``, or no measured training step).
        """
        if self.reference is None:
            return None
        reference_step, reference_loss = self.reference
        ratio = self.cost_ratio
        if ratio is None:
            step_seconds = self.clock.seconds_per_step
            if step_seconds is None or not step_seconds > 0:
                return None
            ratio = seconds / evaluations / step_seconds
        if not math.isfinite(reference_loss) or step <= reference_step:
            return None
        training_gain = (reference_loss - loss_before) / (step - reference_step)
        return stage_payoff(loss_before - loss_after, evaluations, ratio, training_gain)
