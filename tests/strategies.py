"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@dataclass(frozen=True)
class QuadraticSpec:
    """``f(x) = ½ (x - x*)ᵀ A (x - x*)`` with ``A`` symmetric positive definite, in float64."""

    a: np.ndarray  # (d, d)
    x_star: np.ndarray  # (d,)
    x0: np.ndarray  # (d,), the starting point

    @property
    def dim(self) -> int:
        return self.x_star.shape[0]


def _spd(basis: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(basis)
    return (q * eigenvalues) @ q.T


@st.composite
def quadratics(draw: st.DrawFn, max_dim: int = 8, dim: int | None = None) -> QuadraticSpec:
    d = draw(st.integers(1, max_dim)) if dim is None else dim
    coords = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)
    basis = draw(hnp.arrays(np.float64, (d, d), elements=st.floats(-1.0, 1.0)))
    basis = basis + np.eye(d) * 3.0  # keeps QR well conditioned
    eigenvalues = draw(hnp.arrays(np.float64, (d,), elements=st.floats(0.1, 10.0)))
    x_star = draw(hnp.arrays(np.float64, (d,), elements=coords))
    x0 = draw(hnp.arrays(np.float64, (d,), elements=coords))
    return QuadraticSpec(a=_spd(basis, eigenvalues), x_star=x_star, x0=x0)


class Quadratic(torch.nn.Module):
    """A module whose only parameter ``x`` is scored by a :class:`QuadraticSpec`.

    ``forward()`` returns the 0-dim float64 loss. A second, frozen parameter ``frozen`` (not in the
    loss) lets tests check that a stage leaves untouched what it must not move.
    """

    def __init__(self, spec: QuadraticSpec) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(spec.x0, dtype=torch.float64))
        self.frozen = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 3, dtype=torch.float64))
        self.frozen.requires_grad_(False)
        self.register_buffer("a", torch.tensor(spec.a, dtype=torch.float64))
        self.register_buffer("x_star", torch.tensor(spec.x_star, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        e = self.x - self.x_star
        return 0.5 * e @ self.a @ e


def fixed_quadratic(dim: int = 3, seed: int = 0) -> QuadraticSpec:
    """A well-conditioned quadratic for tests that need one, not many."""
    rng = np.random.default_rng(seed)
    basis = rng.uniform(-1.0, 1.0, (dim, dim)) + 3.0 * np.eye(dim)
    return QuadraticSpec(
        a=_spd(basis, np.linspace(0.5, 2.0, dim)),
        x_star=rng.uniform(-1.0, 1.0, dim),
        x0=rng.uniform(2.0, 4.0, dim),
    )


def train(model: Quadratic, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """``steps`` plain steps on ``model``'s loss: backward, ``step()``, ``zero_grad()``."""
    for _ in range(steps):
        model().backward()
        optimizer.step()
        optimizer.zero_grad()


def through_disk(state_dict: dict) -> dict:
    """``state_dict`` after ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def dcp_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """What docs/integrations.md tells a user to give ``torch.distributed.checkpoint``."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from fastforward.dcp import WrapperState

    return {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
        "fastforward": WrapperState(optimizer),
    }
