"""What Fast Forward did: per-stage records and running totals."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageRecord:
    """One Fast Forward stage, as passed to ``on_stage`` and kept in ``FastForwardStats.history``.

    Attributes:
        step: The optimizer step ``n`` after which the stage ran (1-based).
        tau: The accepted number of simulated steps: the parameters were left at ``W_n + tau * Δ``.
            0 means even ``tau = 1`` did not improve the validation loss.
        loss_before: Validation loss at ``W_n``, before the stage.
        loss_after: Validation loss at the point the stage landed on; never above ``loss_before``.
        evaluations: Number of ``val_closure`` calls the stage made, including the one at ``W_n``
            (and, for the first stage that leaves ``W_n`` with ``cost_aware`` and Δ over the
            interval, the one at ``W_n - Δ`` that measures the reference, which ``payoff`` does
            not charge to the stage).
        seconds: Wall time of the stage, evaluations included.
        rejected_tau: With ``tau == 0``: the best point found, if ``min_improvement`` turned
            it down; else ``None``.
        rejected_loss: Its validation loss, or ``None``.
        payoff: With ``cost_aware``: training steps' worth of validation loss the stage bought
            per training step its passes cost (below 1: it did not pay, and Fast Forward
            stepped aside); ``None`` when off or not yet measurable.
        delta_steps: Optimizer steps that Δ spans, the unit of ``tau``: 1 (the last step's
            update), or the interval with ``delta_span="interval"``. The stage simulated
            ``tau * delta_steps`` steps.
        cost_ratio: With ``cost_aware``: the cost of one validation pass in training steps
            that ``payoff`` used (``cost_ratio`` as given, or as measured, averaged over the
            ranks); ``None`` when off or not measured yet.
    """

    step: int
    tau: int
    loss_before: float
    loss_after: float
    evaluations: int
    seconds: float
    rejected_tau: int | None = None
    rejected_loss: float | None = None
    payoff: float | None = None
    delta_steps: int = 1
    cost_ratio: float | None = None


@dataclass
class FastForwardStats:
    """Running totals of a :class:`~fastforward.FastForward` wrapper (``ff.stats``).

    Attributes:
        optimizer_steps: Steps the wrapped optimizer took through the wrapper. Stage evaluations
            and simulated steps are not counted; a step skipped by a ``GradScaler`` never reaches
            the wrapper and is not counted either.
        stages: Stages that ran (searched along Δ), whatever ``tau`` they accepted.
        skipped_stages: Scheduled stages that did not run: Δ was all zero or not finite, the
            validation loss at ``W_n`` was not finite, no parameter required grad, or (with
            ``delta_span="interval"``) the interval's snapshot of ``W`` was missing.
        simulated_steps: Optimizer steps' worth the stages simulated: the sum of
            ``tau * delta_steps`` over all stages.
        evaluations: ``val_closure`` calls made by all stages.
        stage_seconds: Wall time spent in stages.
        gave_up_at_step: The optimizer step after which Fast Forward switched itself off for
            good, or ``None``.
        gave_up_because: Why: ``"patience"`` (stages in a row accepted τ = 0) or ``"payoff"``
            (``cost_aware``: a stage bought less than training would have with its compute).
        history: One :class:`StageRecord` per stage that ran, in order.
    """

    optimizer_steps: int = 0
    stages: int = 0
    skipped_stages: int = 0
    simulated_steps: int = 0
    evaluations: int = 0
    stage_seconds: float = 0.0
    gave_up_at_step: int | None = None
    gave_up_because: str | None = None
    history: list[StageRecord] = field(default_factory=list)

    def __str__(self) -> str:
        """One short line for ``print(ff.stats)``; ``repr`` keeps every field and record."""
        accepted = sum(record.tau > 0 for record in self.history)
        skipped = f" (+{self.skipped_stages} skipped)" if self.skipped_stages else ""
        because = f" ({self.gave_up_because})" if self.gave_up_because else ""
        state = "" if self.gave_up_at_step is None else f"; off since step {self.gave_up_at_step}"
        state += because
        return (
            f"Fast Forward: {_count(self.optimizer_steps, 'optimizer step')}, "
            f"{_count(self.stages, 'stage')}{skipped} ({accepted} moved the model) simulating "
            f"{_count(self.simulated_steps, 'step')}, for "
            f"{_count(self.evaluations, 'validation pass', 'es')} in "
            f"{self.stage_seconds:.1f} s{state}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and numbers only, for ``torch.load(..., weights_only=True)``."""
        totals = dataclasses.asdict(self)
        totals["history"] = [dataclasses.asdict(record) for record in self.history]
        return totals

    @classmethod
    def from_dict(cls, totals: dict[str, Any]) -> FastForwardStats:
        """Inverse of :meth:`to_dict`.

        Raises:
            TypeError: a field is missing, unknown, or of the wrong type (the message names it).
            ValueError: a count is negative.
        """
        if not isinstance(totals, dict):
            raise TypeError(f"stats must be a dict, got {type(totals).__name__}")
        _check_fields("stats", totals, cls)
        history = totals["history"]
        if not isinstance(history, list):
            raise TypeError(f"stats.history must be a list, got {type(history).__name__}")
        records = []
        for i, record in enumerate(history):
            if not isinstance(record, dict):
                raise TypeError(f"stats.history[{i}] must be a dict, got {type(record).__name__}")
            _check_fields(f"stats.history[{i}]", record, StageRecord)
            records.append(StageRecord(**record))
        return cls(**{**totals, "history": records})


def _count(n: int, noun: str, plural: str = "s") -> str:
    """``1 stage``, ``2 stages``."""
    return f"{n} {noun}{'' if n == 1 else plural}"


_COUNTS = {
    "optimizer_steps", "stages", "skipped_stages", "simulated_steps", "evaluations", "step",
    "tau", "gave_up_at_step", "rejected_tau", "delta_steps",
}  # fmt: skip
_NUMBERS = {
    "stage_seconds", "loss_before", "loss_after", "seconds", "rejected_loss", "payoff",
    "cost_ratio",
}  # fmt: skip
_REASONS = {"gave_up_because": ("patience", "payoff")}
_OPTIONAL = {
    "gave_up_at_step", "rejected_tau", "rejected_loss", "payoff", "gave_up_because", "cost_ratio",
}  # fmt: skip


def _check_fields(where: str, values: dict[str, Any], kind: type) -> None:
    """``values`` holds the fields of dataclass ``kind``, each of a plain, valid type.

    A field with a default may be missing (a checkpoint from before the field existed).
    """
    fields = dataclasses.fields(kind)
    names = {f.name for f in fields}
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if not required <= set(values) <= names:
        missing, unknown = sorted(required - set(values)), sorted(set(values) - names)
        raise TypeError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    for name, value in values.items():
        if value is None and name in _OPTIONAL:
            continue
        if name in _COUNTS:
            if type(value) is not int:
                raise TypeError(f"{where}.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{where}.{name} must be >= 0, got {value}")
        elif name in _NUMBERS and type(value) not in (int, float):
            raise TypeError(f"{where}.{name} must be a number, got {value!r}")
        elif name in _REASONS and value not in _REASONS[name]:
            raise ValueError(f"{where}.{name} must be one of {_REASONS[name]}, got {value!r}")
