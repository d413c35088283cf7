"""The wrapper's own entry in ``state_dict()``: what it holds, written and read back checked.

The wrapped optimizer's ``state_dict`` is returned as it is, with one extra top-level entry,
:data:`WRAPPER`, so that loading the dict into a bare optimizer of the same class only needs that
entry removed, and the base's per-parameter ``state`` never holds a key of ours. The entry holds
plain dicts, lists and numbers, for ``torch.load(..., weights_only=True)``; with
``delta_span="interval"``, inside an interval, also the snapshot of ``W`` that the interval's
stage will subtract, as tensors (a checkpoint taken right after a stage holds none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fastforward._checks import _check_int, _is_bool, _saturated_float
from fastforward._config import Config, Schedule, _saved_bool
from fastforward._search import SearchStrategy
from fastforward._stats import FastForwardStats

WRAPPER = "fastforward"
FORMAT_VERSION = 1


@dataclass
class WrapperState:
    """Everything a checkpoint restores in the wrapper: nothing of the wrapped optimizer.

    ``reference`` is ``cost_aware``'s last measured ``(step, validation loss)``;
    ``snapshot`` is ``delta_span="interval"``'s ``(step it was taken before, tensors)``: this
    rank's shards of the trainable parameters, in the order of the optimizer's groups;
    ``training_clock`` is ``cost_aware``'s timed training, ``(seconds, optimizer steps)``,
    and ``peak_pace`` the fastest training pace it has measured (``0.0`` in a checkpoint
    written before it was kept).
    """

    config: Config
    schedule: Schedule
    enabled: bool
    reference: tuple[int, float] | None
    stats: FastForwardStats
    snapshot: tuple[int, list[Tensor]] | None = None
    training_clock: tuple[float, int] | None = None
    peak_pace: float | None = None

    def to_dict(self) -> dict[str, Any]:
        optional: dict[str, Any] = {}  # entries of the opt-in policies, when they hold any
        if self.snapshot is not None:
            step, tensors = self.snapshot
            optional["interval_snapshot"] = {"step": step, "tensors": tensors}
        if self.training_clock is not None:
            optional["training_clock"] = list(self.training_clock)
        if self.peak_pace is not None:
            optional["peak_pace"] = self.peak_pace
        return {
            "version": FORMAT_VERSION,
            "hyperparameters": self.config.to_dict(),
            "enabled": self.enabled,
            **self.schedule.to_dict(),
            "reference": None if self.reference is None else list(self.reference),
            "stats": self.stats.to_dict(),
            **optional,
        }

    @classmethod
    def from_dict(cls, state: object, own_search: str | SearchStrategy) -> WrapperState:
        """Inverse of :meth:`to_dict`, every field checked; ``own_search`` as in ``Config``.

        Raises:
            ValueError: naming the first field that is missing or has a wrong type or value.
        """
        if not isinstance(state, dict):
            raise ValueError(
                f"fastforward: the {WRAPPER!r} entry of the state_dict must be a dict, "
                f"got {type(state).__name__}"
            )
        version = state.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"fastforward: state_dict format version {version!r} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        try:
            config = Config.from_dict(dict(state["hyperparameters"]), own_search)
            stats = FastForwardStats.from_dict(state["stats"])
            enabled = _saved_bool(state, "enabled")
            schedule = Schedule.from_dict(state, config, stats.optimizer_steps)
            reference = _saved_reference(state.get("reference"))
            snapshot = _saved_snapshot(state.get("interval_snapshot"), config, stats)
            clock = _saved_clock(state.get("training_clock"))
            peak_pace = _saved_pace(state.get("peak_pace", 0.0 if config.cost_aware else None))
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise ValueError(
                f"fastforward: the {WRAPPER!r} entry of the state_dict is malformed: {error!r}"
            ) from error
        return cls(config, schedule, enabled, reference, stats, snapshot, clock, peak_pace)


def _saved_pace(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"peak_pace must be a number or None, got {value!r}")
    pace = _saturated_float(value)  # an int too large for a float: inf, refused below
    if not (math.isfinite(pace) and pace >= 0):
        raise ValueError(f"peak_pace must be a finite number >= 0, got {pace!r}")
    return pace


def _saved_reference(value: object) -> tuple[int, float] | None:
    """A saved ``[step, loss]`` pair (the loss may be NaN), or None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"reference must be [step, loss] or None, got {value!r}")
    step, loss = value
    if _is_bool(loss) or not isinstance(loss, (int, float)):
        raise TypeError(f"reference loss must be a number, got {loss!r}")
    return _check_int("reference", step, 0), _saturated_float(loss)


def _saved_clock(value: object) -> tuple[float, int] | None:
    """A saved ``[seconds, steps]`` of timed training, or None (also before it was saved)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"training_clock must be [seconds, steps] or None, got {value!r}")
    seconds, steps = value
    if _is_bool(seconds) or not isinstance(seconds, (int, float)):
        raise ValueError(f"training_clock seconds must be a finite number >= 0, got {seconds!r}")
    elapsed = _saturated_float(seconds)
    if not 0 <= elapsed < math.inf:
        raise ValueError(f"training_clock seconds must be a finite number >= 0, got {elapsed!r}")
    return elapsed, _check_int("training_clock steps", steps, 0)


def _saved_snapshot(
    value: object, config: Config, stats: FastForwardStats
) -> tuple[int, list[Tensor]] | None:
    """A saved ``{"step": int, "tensors": [Tensor, ...]}``, or None."""
    if value is None:
        return None
    if config.delta_span != "interval":
        raise ValueError(
            f"interval_snapshot is saved only with delta_span='interval', not {config.delta_span!r}"
        )
    if not isinstance(value, dict) or set(value) != {"step", "tensors"}:
        raise TypeError(f"interval_snapshot must be a dict of step and tensors, got {value!r}")
    step = _check_int("interval_snapshot.step", value["step"], 1)
    if step > stats.optimizer_steps:
        raise ValueError(
            f"interval_snapshot.step {step} is after the last saved step {stats.optimizer_steps}"
        )
    tensors = value["tensors"]
    if not isinstance(tensors, list) or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError("interval_snapshot.tensors must be a list of tensors")
    return step, tensors
