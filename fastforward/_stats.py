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
        evaluations: Number of ``val_closure`` calls the stage made, including the one at ``W_n``.
        seconds: Wall time of the stage, evaluations included.
    """

    step: int
    tau: int
    loss_before: float
    loss_after: float
    evaluations: int
    seconds: float


@dataclass
class FastForwardStats:
    """Running totals of a :class:`~fastforward.FastForward` wrapper (``ff.stats``).

    Attributes:
        optimizer_steps: Steps the wrapped optimizer took through the wrapper. Stage evaluations
            and simulated steps are not counted; a step skipped by a ``GradScaler`` never reaches
            the wrapper and is not counted either.
        stages: Stages that ran (searched along Δ), whatever ``tau`` they accepted.
        skipped_stages: Scheduled stages that did not run because Δ was all zero or not finite,
            or because the validation loss at ``W_n`` was not finite.
        simulated_steps: Sum of the accepted ``tau`` over all stages.
        evaluations: ``val_closure`` calls made by all stages.
        stage_seconds: Wall time spent in stages.
        gave_up_at_step: The optimizer step after which the give-up rule switched Fast Forward
            off for good, or ``None``.
        history: One :class:`StageRecord` per stage that ran, in order.
    """

    optimizer_steps: int = 0
    stages: int = 0
    skipped_stages: int = 0
    simulated_steps: int = 0
    evaluations: int = 0
    stage_seconds: float = 0.0
    gave_up_at_step: int | None = None
    history: list[StageRecord] = field(default_factory=list)

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


_COUNTS = {
    "optimizer_steps", "stages", "skipped_stages", "simulated_steps", "evaluations", "step",
    "tau",
}  # fmt: skip
_NUMBERS = {"stage_seconds", "loss_before", "loss_after", "seconds"}


def _check_fields(where: str, values: dict[str, Any], kind: type) -> None:
    """``values`` has exactly the fields of dataclass ``kind``, each of a plain, valid type."""
    names = {f.name for f in dataclasses.fields(kind)}
    if set(values) != names:
        missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
        raise TypeError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    for name, value in values.items():
        if (
            name in _COUNTS
            or name == "evaluations"
            or (name == "gave_up_at_step" and value is not None)
        ):
            if type(value) is not int:
                raise TypeError(f"{where}.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{where}.{name} must be >= 0, got {value}")
        elif name in _NUMBERS and type(value) not in (int, float):
            raise TypeError(f"{where}.{name} must be a number, got {value!r}")
