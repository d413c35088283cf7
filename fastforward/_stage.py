"""One Fast Forward stage: the ray ``W_n + τΔ`` and the search along it."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from fastforward._functional import _set_point_


class _Ray:
    """The points ``W_n + τΔ`` (τ = 0, 1, 2, ...) of one stage and the best one evaluated so far.

    Search strategies only choose which τ to evaluate; the ray owns the parameters, so whatever
    a strategy does, :meth:`land_` leaves them bitwise at the best point evaluated (``W_n`` until
    a point beats the loss there). A loss counts as better only if it is finite and strictly
    lower, so NaN, inf and ties never move the landing point.

    Args:
        params: The parameters being moved, mutated in place. They hold ``W_n`` on entry.
        anchor: A copy of ``W_n``, read only.
        delta: ``Δ = W_n - W_{n-1}``, read only.
        loss: Evaluates the validation loss at the current parameters.
        foreach: Use the multi-tensor kernels.
    """

    def __init__(
        self,
        params: list[Tensor],
        anchor: list[Tensor],
        delta: list[Tensor],
        loss: Callable[[], float],
        *,
        foreach: bool,
    ) -> None:
        self._params, self._anchor, self._delta = params, anchor, delta
        self._loss, self._foreach = loss, foreach
        self._position: int | None = 0  # None while a move is in flight: position unknown.
        self.best_tau = 0
        self.best_loss = math.inf
        self.loss_at_anchor = math.nan
        self.evaluations = 0

    def evaluate(self, tau: int) -> float:
        """Move the parameters to ``W_n + tau * Δ`` and return the validation loss there."""
        self._move_(tau)
        self.evaluations += 1  # counted even if the call raises: its cost was paid
        loss = self._loss()
        if tau == 0:
            self.loss_at_anchor = loss
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_tau, self.best_loss = tau, loss
        return loss

    def land_(self) -> None:
        """Leave the parameters bitwise at the best point evaluated (``W_n`` if none was)."""
        self._move_(self.best_tau)

    def _move_(self, tau: int) -> None:
        if self._position == tau:
            return
        self._position = None
        _set_point_(self._params, self._anchor, self._delta, tau, foreach=self._foreach)
        self._position = tau


def _linear_search(ray: _Ray, max_tau: int) -> None:
    """The paper's search: τ = 1, 2, ... while the loss keeps improving, at most ``max_tau``.

    Expects ``ray.evaluate(0)`` to have been called. Costs ``τ* + 1`` evaluations (fewer when
    ``max_tau`` is reached).
    """
    for tau in range(1, max_tau + 1):
        ray.evaluate(tau)
        if ray.best_tau != tau:
            return
