"""Argument checks shared by the wrapper and the functional stage: errors name the argument."""

from __future__ import annotations


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"fastforward: {name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"fastforward: {name} must be >= {low}, got {value}")


def _check_min_improvement(min_improvement: object) -> None:
    if isinstance(min_improvement, bool) or not isinstance(min_improvement, (int, float)):
        raise TypeError(
            f"fastforward: min_improvement must be a float, got {type(min_improvement).__name__}"
        )
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"fastforward: min_improvement must be in [0, 1), got {min_improvement}")
