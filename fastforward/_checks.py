"""Argument checks shared by the wrapper, the functional stage and the helpers.

Each check names the argument it rejects and returns the value as a plain Python ``int``,
``float`` or ``str``: numpy scalars and ``str`` enums are accepted but never stored, so that
checkpoints hold only plain types and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch
from torch import Tensor

MAX_TAU_LIMIT = 2**53
"""The largest ``max_tau`` accepted: every τ up to it is exact as a float64 step multiplier."""


def _is_bool(value: object) -> bool:
    """``bool``, ``numpy.bool_`` or a boolean tensor: never taken for a number."""
    kind = type(value)
    if isinstance(value, bool) or (
        kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    ):
        return True
    return isinstance(value, Tensor) and value.dtype == torch.bool


def _check_bool(name: str, value: object) -> bool:
    """``value`` as a ``bool``; ``bool`` and ``numpy.bool_`` are accepted, nothing else."""
    if not _is_bool(value) or isinstance(value, Tensor):
        raise TypeError(f"fastforward: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]``; any integral type but ``bool`` is accepted."""
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"fastforward: {name} must be an int, got {type(value).__name__}")
    plain = operator.index(value)
    if plain < low:
        raise ValueError(f"fastforward: {name} must be >= {low}, got {plain}")
    if high is not None and plain > high:
        raise ValueError(f"fastforward: {name} must be <= {high}, got {plain}")
    return plain


def _check_float(name: str, value: object) -> float:
    """``value`` as a ``float``; any real type but ``bool`` is accepted."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"fastforward: {name} must be a float, got {type(value).__name__}")
    return float(value)


def _check_cost_ratio(cost_ratio: object) -> float | None:
    """None, or the cost of a validation pass in training steps: finite and positive."""
    if cost_ratio is None:
        return None
    value = _check_float("cost_ratio", cost_ratio)
    if not 0.0 < value < math.inf:
        raise ValueError(
            f"fastforward: cost_ratio must be a finite number > 0 (the cost of one validation "
            f"pass in training steps, e.g. 0.5), got {value}"
        )
    return value


def _check_min_improvement(min_improvement: object) -> float:
    value = _check_float("min_improvement", min_improvement)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"fastforward: min_improvement must be in [0, 1), got {value}")
    return value


def _check_max_tau_ratio(max_tau_ratio: object) -> float | None:
    if max_tau_ratio is None:
        return None
    if _is_bool(max_tau_ratio) or not isinstance(max_tau_ratio, numbers.Real):
        raise TypeError(
            "fastforward: max_tau_ratio must be a float or None, "
            f"got {type(max_tau_ratio).__name__}"
        )
    value = float(max_tau_ratio)
    if not 0.0 < value < math.inf:
        raise ValueError(f"fastforward: max_tau_ratio must be positive and finite, got {value}")
    return value


def _as_loss(value: object, name: str) -> float:
    """A loss as a ``float``: a Python or numpy real, or a 0-dim tensor; ``TypeError`` otherwise.

    ``name`` is the callable that returned it, for the message.
    """
    checked = _checked_loss(value, name)
    return float(checked.detach()) if isinstance(checked, Tensor) else checked


def _checked_loss(value: object, name: str) -> float | Tensor:
    """A loss as a ``float`` or a 0-dim real tensor, not read yet (no host synchronisation)."""
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise TypeError(
                f"fastforward: {name} must return a Python number or a 0-dim tensor, got a "
                f"tensor of shape {tuple(value.shape)}; reduce it, e.g. with .mean()"
            )
        if _is_bool(value) or value.is_complex():
            raise TypeError(f"fastforward: {name} returned a {value.dtype} tensor, not a loss")
        return value
    if isinstance(value, numbers.Real) and not _is_bool(value):
        return float(value)
    raise TypeError(
        f"fastforward: {name} must return a Python number or a 0-dim tensor, "
        f"got {type(value).__name__}"
    )
