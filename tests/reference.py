"""Slow, obviously correct references for what a stage must do."""

from __future__ import annotations

import math

import numpy as np
import torch


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``: equal bits compare equal, so ``-0.0`` and NaN payloads count."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def quadratic_along_ray(
    a: np.ndarray, x_star: np.ndarray, w: np.ndarray, delta: np.ndarray
) -> tuple[float, float, float]:
    """Coefficients of ``φ(τ) = f(w + τΔ) = φ0 + b τ + ½ c τ²`` for ``f(x) = ½(x-x*)ᵀA(x-x*)``."""
    e = w - x_star
    return 0.5 * e @ a @ e, (a @ e) @ delta, delta @ a @ delta


def integer_minimiser(b: float, c: float, max_tau: int) -> int:
    """The first integer local minimum of ``φ`` on ``{0, ..., max_tau}`` (``c > 0``).

    ``φ(τ) < φ(τ-1)`` iff ``τ < ½ - b/c``: the τ accepted by the paper's linear search.
    """
    threshold = 0.5 - b / c
    return int(min(max_tau, max(0, math.ceil(threshold) - 1)))
